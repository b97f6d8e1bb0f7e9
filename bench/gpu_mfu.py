"""Model FLOPs utilisation of tokenizer and AR training steps on one GPU (achieved FLOP/s on a CPU).

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` over one step (matmuls, convolutions and attention,
forward and backward: the usual "model FLOPs"; norms, activations and the optimizer are not counted), then divided by
the median wall time of the timed steps. MFU is that rate over the GPU's dense bf16 peak (``--peak-tflops``, or the
table below by ``torch.cuda.get_device_name()``); fp32 rows are divided by the same bf16 peak, to show what bf16 buys.

What one step is:

- tokenizer: the generator update of the training loop (tokenizer forward, pixel, codebook, commitment, entropy and
  semantic losses, the adversarial term through the PatchGAN discriminator, a perceptual loss, backward, clipping,
  AdamW) and the discriminator's update. Two stand-ins keep this script to torch and this repository (the GPU
  machine has no lpips/timm): the perceptual loss is a VGG16-shaped trunk with random weights (LPIPS's network, same
  FLOPs; lpips' 1x1 calibration layers left out), and the semantic target is a fixed random feature map (the frozen
  DINOv2 forward, ~1.5% of an S-S step's FLOPs, is not run).
- AR: ``ARModel.loss`` on random tokens (teacher-forced, class dropout on), backward, clipping, AdamW.

A case with activation checkpointing (``--memory``'s "checkpointed" rows) counts the blocks' second forward too:
its rate is the hardware's, not model FLOPs; those rows are there for their peak memory. A compiled step's FLOPs
are counted on its eager form (the counter sees aten operators, not a compiled graph's kernels), after the timing.

The standard cases use the default switches, as training does (on a GPU the AR step compiled, the tokenizer eager);
``--models``/``--variants`` measure chosen models under chosen combinations of switches instead (VARIANT_SWITCHES),
each case's row and profile printed as it ends.

Sizes: on a GPU the paper profile, per-GPU batches of Table 9 / Appendix B over 8 GPUs (tokenizer S-S 16, B-L 16; AR-B
32, AR-L 32); on a CPU the tiny profile. Everything runs through ``gigatok.performance`` as the training loops do.

    python bench/gpu_mfu.py                 # on a GPU: ~2 minutes on an H100/H200
    python bench/gpu_mfu.py --quick         # fewer steps
    python bench/gpu_mfu.py --peak-tflops 989 --compile
    python bench/gpu_mfu.py --profile-ops --batches 16,32,64   # where the time goes; MFU against per-GPU batch
    python bench/gpu_mfu.py --models tokenizer:S-S:16,ar:B:32 --variants base,cl,compile
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable without installing it
    sys.path.insert(0, str(ROOT))

# torch and this repository only: nothing here may import lpips, timm, torchvision, mlflow or torch-fidelity.
from bench.common import Row, add_common_args, add_threads_arg, log_to_mlflow, print_table, set_threads  # noqa: E402
from bench.op_profile import format_profile, profile_ops  # noqa: E402
from gigatok.config import PerformanceConfig, ar_run, tokenizer_run  # noqa: E402
from gigatok.losses import generator_loss, hinge_discriminator_loss  # noqa: E402
from gigatok.models.ar import build_ar_model  # noqa: E402
from gigatok.models.discriminator import PatchDiscriminator  # noqa: E402
from gigatok.models.tokenizer import build_tokenizer  # noqa: E402
from gigatok.performance import autocast, compiles, maybe_compile, prepare_images, prepare_module  # noqa: E402
from gigatok.train.optimizer import build_ar_optimizer, build_optimizer  # noqa: E402  (the loops' own)

# Dense bf16 tensor-core peaks (no sparsity), TFLOP/s, from the vendors' data sheets; first match wins.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
)

VGG16_CHANNELS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class VGGPerceptualStandIn(nn.Module):
    """LPIPS's trunk (VGG16 conv1_1 .. relu5_3) with random frozen weights: the perceptual loss's FLOPs without lpips.

    Distance: per stage, channel-normalised features, squared difference, spatial mean, summed over the stages.
    """

    def __init__(self) -> None:
        super().__init__()
        stages, c_in = [], 3
        for widths in VGG16_CHANNELS:
            layers: list[nn.Module] = [nn.MaxPool2d(2)] if stages else []
            for c_out in widths:
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True)]
                c_in = c_out
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        distance = x.new_zeros(x.shape[0])
        for stage in self.stages:
            x, y = stage(x), stage(y)
            diff = F.normalize(x, dim=1) - F.normalize(y, dim=1)
            distance = distance + diff.pow(2).sum(1).mean(dim=(1, 2))
        return distance


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "tokenizer" (a training step), "tokenize" (inference) or "ar" (a training step)
    model: str  # tokenizer name ("S-S") or AR size ("B")
    batch: int
    perf: PerformanceConfig
    memory_check: bool = False  # also print gigatok.launch.memory's estimate for this step beside the measured peak


def tokenizer_step(case: Case, profile: str, device: torch.device) -> Callable[[], None]:
    cfg = tokenizer_run(case.model, profile=profile, batch_size=case.batch, performance=case.perf)
    # The full objective's cost, perceptual term included (tiny's 'auto' would drop it without the VGG16 file).
    cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, perceptual="lpips"))
    perf = cfg.performance
    model = prepare_module(build_tokenizer(cfg.tokenizer, device), perf)
    disc = prepare_module(PatchDiscriminator(cfg.loss.disc_channels, cfg.loss.disc_layers).to(device), perf)
    perceptual = prepare_module(VGGPerceptualStandIn().to(device), perf)
    o = cfg.optim
    opt_g, opt_d = build_optimizer(cfg, model.parameters()), build_optimizer(cfg, disc.parameters())
    net, disc_net = maybe_compile(model, perf, device, "tokenizer"), maybe_compile(disc, perf, device, "tokenizer")
    size, grid = cfg.tokenizer.image_size, cfg.tokenizer.grid_size
    g = torch.Generator(device).manual_seed(0)
    images = prepare_images(torch.rand(case.batch, 3, size, size, device=device, generator=g) * 2 - 1, perf)
    sem = cfg.tokenizer.semantic
    target = torch.randn(case.batch, sem.feature_dim, grid, grid, device=device, generator=g) if sem.enabled else None

    def step() -> None:
        with autocast(perf, device):
            out = net(images)
            terms = generator_loss(cfg, images, out, perceptual, target, disc(out.reconstruction))
        opt_g.zero_grad(set_to_none=True)
        terms["total_loss"].backward()
        nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        opt_g.step()
        with autocast(perf, device):
            d_loss = hinge_discriminator_loss(disc_net(images), disc_net(out.reconstruction.detach()))
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        nn.utils.clip_grad_norm_(disc.parameters(), o.grad_clip)
        opt_d.step()

    return step


def tokenize_step(case: Case, profile: str, device: torch.device) -> Callable[[], None]:
    """Tokenizing a batch (no gradients): what the token cache saves each AR epoch."""
    cfg = tokenizer_run(case.model, profile=profile, performance=case.perf)
    model = prepare_module(build_tokenizer(cfg.tokenizer, device), cfg.performance).eval()
    size = cfg.tokenizer.image_size
    g = torch.Generator(device).manual_seed(0)
    images = prepare_images(torch.rand(case.batch, 3, size, size, device=device, generator=g) * 2 - 1, cfg.performance)

    @torch.no_grad()
    def step() -> None:
        with autocast(cfg.performance, device):
            model.tokenize(images)

    return step


def ar_step(case: Case, profile: str, device: torch.device) -> Callable[[], None]:
    cfg = ar_run(tokenizer_run("S-S", profile=profile), case.model, batch_size=case.batch, performance=case.perf)
    perf, t = cfg.performance, cfg.train
    model = prepare_module(build_ar_model(cfg.model, device), perf).train()
    opt = build_ar_optimizer(model, t)
    loss_fn = maybe_compile(model.loss, perf, device, "ar")
    g = torch.Generator(device).manual_seed(0)
    tokens = torch.randint(0, cfg.model.vocab_size, (case.batch, cfg.model.num_tokens), device=device, generator=g)
    labels = torch.randint(0, cfg.model.num_classes, (case.batch,), device=device, generator=g)

    def step() -> None:
        with autocast(perf, device):
            loss = loss_fn(tokens, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        opt.step()

    return step


def memory_cases(device: torch.device) -> list[Case]:
    """The two models that need FSDP at the paper's batch, at a per-GPU batch that fits one GPU unsharded: their
    measured peak against the estimate the dry run prints (``--estimate``) for the same step."""
    bf16 = PerformanceConfig(autocast="bf16")
    checkpointed = dataclasses.replace(bf16, activation_checkpointing=True)
    if device.type == "cuda":
        return [
            Case("tokenizer XL-XXL bf16 memory", "tokenizer", "XL-XXL", 8, bf16, memory_check=True),
            Case("tokenizer XL-XXL bf16 checkpointed memory", "tokenizer", "XL-XXL", 8, checkpointed, True),
            Case("AR-XXL bf16 memory", "ar", "XXL", 16, bf16, memory_check=True),
            Case("AR-XXL bf16 checkpointed memory", "ar", "XXL", 16, checkpointed, memory_check=True),
        ]
    fp32 = PerformanceConfig(autocast="off")
    return [
        Case("tokenizer XL-XXL fp32 memory", "tokenizer", "XL-XXL", 4, fp32, memory_check=True),
        Case(
            "AR-XXL fp32 checkpointed memory",
            "ar",
            "XXL",
            4,
            dataclasses.replace(fp32, activation_checkpointing=True),
            True,
        ),
    ]


def estimated_gib(case: Case, profile: str) -> float:
    """gigatok.launch.memory's estimate of one process running ``case`` alone (bf16 autocast, as on a GPU)."""
    from gigatok.launch import memory

    if case.kind == "ar":
        tokenizer = tokenizer_run("S-S", profile=profile)
        cfg = ar_run(tokenizer, case.model, batch_size=case.batch, performance=case.perf)
        estimate = memory.ar_memory(cfg, gpus=1)
    else:
        cfg = tokenizer_run(case.model, profile=profile, batch_size=case.batch, performance=case.perf)
        estimate = memory.tokenizer_memory(
            dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, perceptual="lpips")), gpus=1
        )
    return memory.single_process_bytes(estimate) / memory.GIB


def cases(device: torch.device, with_compile: bool) -> tuple[str, list[Case]]:
    """The standard cases. "bf16" is what training runs on a GPU (the default switches: the AR step compiled by
    compile="auto", the tokenizer eager); "eager" and fp32 cases are not compiled unless --compile adds them."""
    bf16, fp32 = PerformanceConfig(autocast="bf16"), PerformanceConfig(autocast="off", compile=False)
    eager = dataclasses.replace(bf16, compile=False)
    if device.type == "cuda":
        out = [
            Case("tokenizer S-S bf16", "tokenizer", "S-S", 16, bf16),
            Case(
                "tokenizer S-S bf16 channels-last",
                "tokenizer",
                "S-S",
                16,
                dataclasses.replace(bf16, channels_last=True),
            ),
            Case("tokenizer S-S fp32", "tokenizer", "S-S", 16, fp32),
            Case("tokenizer B-L bf16", "tokenizer", "B-L", 16, bf16),
            Case("tokenize S-S bf16", "tokenize", "S-S", 64, bf16),
            Case("AR-B bf16", "ar", "B", 32, bf16),
            Case("AR-B bf16 eager", "ar", "B", 32, eager),
            Case("AR-B fp32", "ar", "B", 32, fp32),
            Case("AR-L bf16", "ar", "L", 32, bf16),
            Case("AR-L bf16 eager", "ar", "L", 32, eager),
        ]
        profile = "paper"
    else:
        out = [
            Case("tokenizer S-S fp32", "tokenizer", "S-S", 16, fp32),
            Case("tokenize S-S fp32", "tokenize", "S-S", 32, fp32),
            Case("AR-B fp32", "ar", "B", 32, fp32),
        ]
        profile = "tiny"
    if with_compile:
        out += [
            dataclasses.replace(c, name=f"{c.name} compiled", perf=dataclasses.replace(c.perf, compile=True))
            for c in out
            if c.name in ("tokenizer S-S bf16", "tokenizer S-S fp32", "AR-B fp32")
        ]
    return profile, out


# The switches a --variants entry joins with "+" ("cudnn+cl+norm"): each sets PerformanceConfig fields on top of
# bf16 autocast, eager, with everything else at its default ("base": nothing more; "fp32": autocast off; "auto":
# compile as the default does).
VARIANT_SWITCHES: dict[str, dict[str, object]] = {
    "base": {},
    "auto": {"compile": "auto"},
    "fp32": {"autocast": "off"},
    "cudnn": {"cudnn_benchmark": True},
    "cl": {"channels_last": True},
    "norm": {"low_precision_norms": True},  # the default since 2026-12-04; "fp32norm" is autocast's fp32 GroupNorm
    "fp32norm": {"low_precision_norms": False},
    "compile": {"compile": True},
    "ro": {"compile": True, "compile_mode": "reduce-overhead"},
    "blocks": {"compile": True, "compile_scope": "blocks"},  # each block compiled on its own
    "ckpt": {"activation_checkpointing": True},
}


def variant_perf(spec: str) -> PerformanceConfig:
    """The PerformanceConfig a variant names: its "+"-joined switches over bf16 autocast (see VARIANT_SWITCHES)."""
    fields: dict[str, object] = {"autocast": "bf16", "compile": False}
    for switch in spec.split("+"):
        if switch not in VARIANT_SWITCHES:
            raise ValueError(f"--variants: unknown switch {switch!r} in {spec!r}; known: {', '.join(VARIANT_SWITCHES)}")
        fields.update(VARIANT_SWITCHES[switch])
    return PerformanceConfig(**fields)  # type: ignore[arg-type]


def variant_cases(models: str, variants: str) -> list[Case]:
    """Each model of ``models`` ("tokenizer:S-S:16,ar:B:32": kind, size, per-GPU batch) under each variant of
    ``variants`` ("base,cudnn+cl"), named "<kind> <size> <precision> <variant>"."""
    out = []
    for model in (m.strip() for m in models.split(",") if m.strip()):
        parts = model.split(":")
        if len(parts) != 3 or parts[0] not in ("tokenizer", "tokenize", "ar") or not parts[2].isdigit():
            raise ValueError(f"--models: expected kind:size:batch (kind tokenizer, tokenize or ar), got {model!r}")
        kind, size, batch = parts[0], parts[1], int(parts[2])
        label = f"AR-{size}" if kind == "ar" else f"{kind} {size}"
        for spec in (v.strip() for v in variants.split(",") if v.strip()):
            perf = variant_perf(spec)
            precision = "fp32" if perf.autocast == "off" else "bf16"
            out.append(Case(f"{label} {precision} {spec}", kind, size, batch, perf))
    return out


def peak_tflops(device: torch.device, flag: float | None) -> tuple[float | None, str]:
    if flag:
        return flag, "--peak-tflops"
    if device.type != "cuda":
        return None, "CPU: no peak"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS:
        if key in name:
            return value, f"table ({key})"
    return None, f"{name!r} not in the table; pass --peak-tflops"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    step: Callable[[], None],
    device: torch.device,
    warmup: int,
    repeats: int,
    count: Callable[[], Callable[[], None]] | None = None,
) -> tuple[float, float]:
    """(FLOPs of one step, median seconds of ``repeats`` steps after ``warmup``). The FLOPs are counted on the
    step ``count`` builds where given (the eager form of a compiled step: a compiled graph's kernels are not aten
    operators for the counter to see), else on ``step``."""
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    # Counted last: a dispatch mode over a compiled step may make it recompile or leave its CUDA graphs, which must
    # not land in the timed steps.
    counted = count() if count is not None else step
    with FlopCounterMode(display=False) as counter:
        counted()
    sync(device)
    return float(counter.get_total_flops()), statistics.median(times)


def token_cache_ratios(per_sample: dict[str, float]) -> list[Row]:
    """An AR epoch tokenizing on the fly against one from the token cache, from the measured seconds per sample:
    (tokenize + AR step) / AR step, at the same precision (bench/token_cache.py measures it end to end on a CPU)."""
    out = []
    for tokenize in (n for n in per_sample if n.startswith("tokenize ")):
        precision = tokenize.split()[-1]
        for ar in (n for n in per_sample if n.startswith("AR-") and n.endswith(precision)):
            ratio = (per_sample[tokenize] + per_sample[ar]) / per_sample[ar]
            note = f"per sample: tokenize {per_sample[tokenize] * 1e3:.3g} ms, AR step {per_sample[ar] * 1e3:.3g} ms"
            out.append(Row(f"token cache: {ar} epoch on the fly / from cache", ratio, "x", {"note": note}))
    return out


def with_batches(todo: list[Case], batches: list[int]) -> list[Case]:
    """Each training case at each per-GPU batch of ``batches`` (its name says which): MFU against batch size."""
    if not batches:
        return todo
    out = []
    for case in todo:
        if case.kind == "tokenize":
            out.append(case)
            continue
        out += [dataclasses.replace(case, name=f"{case.name} batch {b}", batch=b) for b in batches]
    return out


def run_case(
    case: Case, profile: str, device: torch.device, steps: tuple[int, int], peak: float | None, ops: bool
) -> tuple[Row, float | None, str]:
    """One case: (its table row, seconds per sample or None when it failed, its operator profile or "")."""
    gpu = device.type == "cuda"
    compiled = compiles(case.perf, device, "ar" if case.kind == "ar" else "tokenizer")
    start = time.perf_counter()
    if gpu:
        torch.cuda.reset_peak_memory_stats(device)
    try:
        build = {"tokenizer": tokenizer_step, "tokenize": tokenize_step, "ar": ar_step}[case.kind]
        step = build(case, profile, device)
        warmup, repeats = steps
        eager = dataclasses.replace(case, perf=dataclasses.replace(case.perf, compile=False))
        count = (lambda: build(eager, profile, device)) if compiled else None
        # Compiled steps compile at the first call and, with CUDA graphs, record at a later one: one more warm-up.
        flops, seconds = measure(step, device, warmup + 1 if compiled else warmup, repeats, count)
        extra: dict[str, object] = {
            "batch": case.batch,
            "TFLOP/step": f"{flops / 1e12:.3g}",
            "step ms": f"{seconds * 1e3:.1f}",
            "samples/s": f"{case.batch / seconds:.1f}",
            "MFU": f"{flops / seconds / (peak * 1e12):.1%}" if peak else "n/a",
        }
        if gpu:
            extra["peak GiB"] = f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f}"
        if case.memory_check:
            extra["estimated GiB"] = f"{estimated_gib(case, profile):.1f}"
        text = format_profile(case.name, *profile_ops(step, device)) if ops else ""
    except Exception as err:  # one case failing (OOM, a compile error) must not cost the others
        traceback.print_exc()
        return Row(case.name, float("nan"), "TFLOP/s", {"error": f"{type(err).__name__}: {err}"[:80]}), None, ""
    finally:
        if compiled:  # each case compiles its own modules: no guards or graphs carried into the next
            torch._dynamo.reset()
        gc.collect()
        if gpu:
            torch.cuda.empty_cache()
    # The whole row as soon as the case ends: a part cut short by its time limit keeps every case it finished.
    details = ", ".join(f"{k} {v}" for k, v in extra.items())
    took = time.perf_counter() - start
    print(f"  {case.name}: {flops / seconds / 1e12:.3g} TFLOP/s; {details} ({took:.0f} s)", flush=True)
    return Row(case.name, flops / seconds / 1e12, "TFLOP/s", extra), seconds / case.batch, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer warm-up and timed steps")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's dense bf16 peak; default: looked up from the device name",
    )
    parser.add_argument("--compile", action="store_true", help="also the compiled forms (minutes of compilation)")
    parser.add_argument("--only", default=None, help="run only the cases whose name contains this text")
    parser.add_argument(
        "--batches", default="", help="comma-separated per-GPU batches: each training case at each (default: its own)"
    )
    parser.add_argument(
        "--profile-ops",
        action="store_true",
        help="also profile two steps of each case: time by kind of work and the most expensive kernels",
    )
    parser.add_argument(
        "--memory",
        action="store_true",
        help="also XL-XXL and AR-XXL at a batch one GPU holds: peak memory beside the dry run's estimate",
    )
    parser.add_argument(
        "--models",
        default="",
        help="instead of the standard cases: kind:size:batch list (tokenizer:S-S:16,ar:B:32), each under --variants",
    )
    parser.add_argument(
        "--variants",
        default="base",
        help=f"with --models: comma-separated variants, each '+'-joined switches of {', '.join(VARIANT_SWITCHES)}",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_common_args(parser)
    add_threads_arg(parser, default=0 if torch.cuda.is_available() else 1)  # 0: torch's own choice
    args = parser.parse_args()
    set_threads(args.threads)
    device = torch.device(args.device)
    try:
        batches = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        parser.error(f"--batches: not a comma-separated list of integers: {args.batches!r}")
    if any(b < 1 for b in batches):
        parser.error(f"--batches: batches must be >= 1, got {args.batches!r}")
    profile, todo = cases(device, args.compile)
    if args.models:
        try:
            todo = variant_cases(args.models, args.variants)
        except ValueError as err:
            parser.error(str(err))
    todo += memory_cases(device) if args.memory else []
    todo = with_batches([c for c in todo if not args.only or args.only in c.name], batches)
    peak, peak_source = peak_tflops(device, args.peak_tflops)
    gpu = device.type == "cuda"
    warmup, repeats = ((2, 5) if args.quick else (3, 10)) if gpu else ((1, 2) if args.quick else (1, 3))
    name = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"{name}, torch {torch.__version__}, {profile} profile, peak "
        f"{f'{peak:g} TFLOP/s bf16' if peak else 'n/a'} ({peak_source}); {warmup} warm-up + {repeats} timed steps",
        flush=True,
    )
    rows, per_sample = [], {}
    for case in todo:
        row, seconds, text = run_case(case, profile, device, (warmup, repeats), peak, args.profile_ops)
        rows.append(row)
        if seconds is not None:
            per_sample[case.name] = seconds
        if text:  # printed as the case ends, like its row: a part cut short by its time limit keeps it
            print("Where its step's time goes (torch.profiler, two steps):\n" + text, flush=True)
    rows += token_cache_ratios(per_sample)
    print_table(f"Training-step FLOP/s and MFU ({name}, {profile} profile)", rows)
    log_to_mlflow(args.mlflow, "gpu_mfu", rows, {"device": name, "peak_tflops": peak, "profile": profile})


if __name__ == "__main__":
    main()

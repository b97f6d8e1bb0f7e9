"""Tokenizer training-step throughput, and the speed-up of each performance switch against the plain path.

One step is what the training loop runs (``gigatok.train.tokenizer_loop.training_step``): the semantic target, the
tokenizer forward, LPIPS, pixel/codebook/entropy/semantic losses, the generator's adversarial term, backward,
clipping and AdamW, then the discriminator's update. The GAN is on (the step is past ``gan_start_step``), as for all
but the first 2% of a paper-length run. Images are random: the cost of a step does not depend on their content.

Variants, each a :class:`~gigatok.config.PerformanceConfig` (the runs' own switches), measured interleaved:
``plain`` (written-out attention, NCHW, fp32, eager) is the baseline; then each switch alone, all of them, and the
library's default on this device. On a CPU, bf16 autocast gets a short pass of its own against the baseline at tiny
only: CPUs without AVX512-BF16 or AMX emulate it, an order of magnitude slower (the default enables it on CUDA only).
At paper scale a CPU step takes ~100 s at batch 1, so there it is batch 1 and two timed steps per variant.

    python bench/tokenizer_step.py                      # tiny S-S (batch 16) and paper S-S (256 px, batch 1 on CPU)
    python bench/tokenizer_step.py --quick              # fewer repeats, tiny only
    python bench/tokenizer_step.py --compile            # also torch.compile (minutes of compilation first)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable without installing it
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    Row,
    add_common_args,
    add_threads_arg,
    interleaved,
    log_to_mlflow,
    median,
    paired_ratio,
    print_table,
    set_threads,
)
from gigatok.config import PerformanceConfig, TokenizerRunConfig, tokenizer_run  # noqa: E402
from gigatok.models.attention import set_fused_attention  # noqa: E402
from gigatok.models.discriminator import PatchDiscriminator  # noqa: E402
from gigatok.models.tokenizer import build_tokenizer  # noqa: E402
from gigatok.perceptual import build_perceptual_loss  # noqa: E402
from gigatok.performance import autocast_dtype, compiles, maybe_compile, prepare_module  # noqa: E402
from gigatok.semantic_encoders import build_semantic_encoder  # noqa: E402
from gigatok.semantic_targets import SemanticTargets  # noqa: E402
from gigatok.train.optimizer import build_optimizer  # noqa: E402
from gigatok.train.tokenizer_loop import StepModules, training_step  # noqa: E402

PLAIN = PerformanceConfig(fused_attention=False, channels_last=False, autocast="off", compile=False)


@dataclass(frozen=True)
class Setting:
    label: str
    profile: str
    batch: int
    repeats: int
    warmup: int


def variants(device: torch.device, with_compile: bool, with_bf16: bool) -> dict[str, PerformanceConfig]:
    """The plain baseline, each switch alone, all together, and the library default (when it is none of those)."""
    out = {
        "plain (baseline)": PLAIN,
        "fused attention (SDPA)": dataclasses.replace(PLAIN, fused_attention=True),
        "channels-last": dataclasses.replace(PLAIN, channels_last=True),
    }
    if with_bf16:
        out["bf16 autocast"] = dataclasses.replace(PLAIN, autocast="bf16")
    if with_compile:
        out["torch.compile"] = dataclasses.replace(PLAIN, compile=True)
    out["all switches"] = PerformanceConfig(
        fused_attention=True, channels_last=True, autocast="bf16" if with_bf16 else "off", compile=with_compile
    )
    default = PerformanceConfig()
    same = [name for name, perf in out.items() if resolved(perf, device) == resolved(default, device)]
    if same:
        out = {(f"{n} = library default" if n == same[0] else n): p for n, p in out.items()}
    else:
        out["library default"] = default
    return out


def resolved(perf: PerformanceConfig, device: torch.device) -> tuple[object, ...]:
    """What ``perf`` does on ``device`` (autocast 'auto' resolved), to recognise the default among the variants."""
    return perf.fused_attention, perf.channels_last, autocast_dtype(perf, device), compiles(perf, device, "tokenizer")


def build_modules(
    cfg: TokenizerRunConfig, perf: PerformanceConfig, semantic: SemanticTargets | None, device: torch.device
) -> StepModules:
    """The loop's modules, prepared as ``train_tokenizer`` prepares them for ``perf``."""
    torch.manual_seed(0)
    model = prepare_module(build_tokenizer(cfg.tokenizer).to(device), perf)
    disc = prepare_module(PatchDiscriminator(cfg.loss.disc_channels, cfg.loss.disc_layers).to(device), perf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-trunk LPIPS substitute costs what LPIPS costs
        perceptual = prepare_module(build_perceptual_loss(allow_substitute=True).to(device), perf)
    opt_g, opt_d = build_optimizer(cfg, model.parameters()), build_optimizer(cfg, disc.parameters())
    return StepModules(
        model,
        disc,
        perceptual,
        semantic,
        opt_g,
        opt_d,
        maybe_compile(model, perf, device, "tokenizer"),
        maybe_compile(disc, perf, device, "tokenizer"),
    )


def semantic_targets(cfg: TokenizerRunConfig, images: torch.Tensor, device: torch.device) -> SemanticTargets | None:
    """The frozen encoder's targets: looked up from the feature cache when the profile caches them (tiny), computed
    every step otherwise (paper: flipped images, no cache)."""
    sem = cfg.tokenizer.semantic
    if not sem.enabled:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoder = build_semantic_encoder(sem.encoder, sem.encoder_resolution, allow_substitute=True).to(device)
    targets = SemanticTargets(encoder, cfg.tokenizer.grid_size, device)
    if sem.cache_features:
        targets.cache = targets.compute(images).cpu()
    return targets


def bench_setting(setting: Setting, args: argparse.Namespace, device: torch.device) -> list[Row]:
    cfg = tokenizer_run("S-S", profile=setting.profile, batch_size=setting.batch)
    # The full objective's cost, perceptual term included (tiny's 'auto' would drop it without the VGG16 file).
    cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, perceptual="lpips"))
    size = cfg.tokenizer.image_size
    images = torch.rand(setting.batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device) * 2 - 1
    indices = torch.arange(setting.batch)
    step = cfg.loss.gan_start_step  # the GAN's two extra discriminator passes included
    semantic = semantic_targets(cfg, images, device)
    # bf16 on a CPU without native bf16 is emulated (~14x slower at tiny): it gets its own short pass against the
    # baseline there, at tiny only, and "all switches" leaves it out, as the default does.
    cpu_bf16 = device.type != "cuda" and args.bf16 is not False and setting.profile == "tiny"
    main_group = variants(device, args.compile, with_bf16=device.type == "cuda" and args.bf16 is not False)
    if args.only:  # the baseline, and the variants whose names contain one of the given texts
        keep = [text.strip() for text in args.only.split(",")]
        main_group = {n: p for i, (n, p) in enumerate(main_group.items()) if i == 0 or any(k in n for k in keep)}
    groups = [main_group]
    if cpu_bf16:
        groups.append(
            {"plain (baseline, bf16 pass)": PLAIN, "bf16 autocast (CPU)": dataclasses.replace(PLAIN, autocast="bf16")}
        )

    # One set of modules per memory layout and compilation (both fixed at build time); the attention kernel and
    # autocast are switched per call on the shared modules.
    built: dict[tuple[bool, bool], StepModules] = {}
    rows = []
    for group_index, perfs in enumerate(groups):
        calls = {}
        for name, perf in perfs.items():
            key = (perf.channels_last, compiles(perf, device, "tokenizer"))
            if key not in built:
                built[key] = build_modules(cfg, perf, semantic, device)
            modules, run_cfg = built[key], dataclasses.replace(cfg, performance=perf)

            def call(modules: StepModules = modules, run_cfg: TokenizerRunConfig = run_cfg) -> None:
                set_fused_attention(modules.model, run_cfg.performance.fused_attention)  # this variant's kernel
                terms = training_step(run_cfg, modules, images, indices, step)
                float(terms["total_loss"].detach())  # waits for the device

            calls[name] = call
        repeats, warmup = (setting.repeats, setting.warmup) if group_index == 0 else (1, 0)
        times = interleaved(calls, repeats=repeats, warmup=warmup)
        base = times[next(iter(perfs))]
        for name, perf in perfs.items():
            ratio, low, high = paired_ratio(base, times[name])
            rows.append(
                Row(
                    f"{setting.label}: {name}",
                    setting.batch / median(times[name]),
                    "images/s",
                    {
                        "speed-up vs plain": f"{ratio:.2f}x",
                        "min-max over rounds": f"{low:.2f}-{high:.2f}",
                        "median step s": f"{median(times[name]):.3f}",
                        "autocast": str(autocast_dtype(perf, device)).replace("torch.", ""),
                        "repeats": repeats,
                    },
                )
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny profile only, 2 repeats")
    parser.add_argument(
        "--profile",
        choices=["tiny", "paper", "both"],
        default=None,
        help="which settings to run (default: both; --quick: tiny)",
    )
    parser.add_argument(
        "--tiny-batch",
        type=int,
        default=16,
        help="tiny S-S batch (default 16, as earlier measurements; the profile trains S-S on 8)",
    )
    parser.add_argument(
        "--paper-batch",
        type=int,
        default=None,
        help="paper S-S batch (default 1 on CPU, 8 on GPU; Table 9 trains with 128 over GPUs)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per variant")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile (slow to compile)")
    parser.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure bf16 autocast (default: on; on CPU at tiny only, in a short pass of its own)",
    )
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated texts: measure only the variants whose names contain one (and plain)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_common_args(parser)
    add_threads_arg(parser)
    args = parser.parse_args()
    set_threads(args.threads)
    device = torch.device(args.device)
    profile = args.profile or ("tiny" if args.quick else "both")
    # CPU at paper scale: ~100 s a step at batch 1, so two timed steps each and no warm-up step.
    cpu = device.type != "cuda"
    settings = [
        s
        for s in (
            Setting("tiny S-S", "tiny", args.tiny_batch, args.repeats or (2 if args.quick else 5), 1),
            Setting(
                "paper S-S 256px",
                "paper",
                args.paper_batch or (1 if cpu else 8),
                args.repeats or (2 if cpu else 5),
                0 if cpu else 1,
            ),
        )
        if profile in ("both", s.profile)
    ]
    print(
        f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    rows: list[Row] = []
    for setting in settings:
        print(f"measuring {setting.label}, batch {setting.batch} ...", flush=True)
        rows += bench_setting(setting, args, device)
    print_table("Tokenizer training step (1D S-S, GAN on); ratios are what to quote", rows)
    log_to_mlflow(args.mlflow, "tokenizer_step", rows, {"device": device, "settings": [s.label for s in settings]})


if __name__ == "__main__":
    main()

"""The workbench's paper S-S 1D tokenizer against the authors' own code, on the same work, side by side.

Cases: forward (encode + decode, eval mode, no grad) and a training step (forward, L2 pixel loss + codebook and
commitment losses, backward, gradient clipping at 10, AdamW). Sides:

- ``ours``: the default performance settings, in a process that keeps freed host memory as every CPU job of the
  workbench does (:mod:`gigatok.host_memory`);
- ``ours-glibc``: the same with the C library's allocator defaults: our code alone;
- ``ours-nhwc``: ``ours`` with ``performance.channels_last=true`` (NHWC convolutions, applied as the training
  loop applies them);
- ``theirs``: the authors' code as it runs, with the C library's defaults;
- ``theirs-kept``: their code in a process with our allocator setting: like for like with ``ours``.

No LPIPS, GAN, semantic or shortcut term on either side: ours runs ``training_step`` from the training loop at a
step past the shortcut and before the GAN with the perceptual and semantic terms off; theirs runs
``VQVitModelPlus(..., rec_loss=False)`` built from configs/vq/VQ_SS256.yaml's options with the same loss terms,
clipping and AdamW settings.

Each case runs in a fresh process (one warm-up call, then ``--steps`` timed calls), and the cases are interleaved
round by round (ours, ours-nhwc, theirs, then the reverse order), so that a shared machine's load swings fall
on both sides; the table gives medians over rounds, the min-max spread, and the per-round ratio theirs / ours.

    python bench/reference_step.py --authors /path/to/GigaTok              # 256 px, batch 2, 2 threads, 3 rounds
    python bench/reference_step.py --authors /path/to/GigaTok --quick      # 128 px, 64 tokens: for iterating
    python bench/reference_step.py --authors /path/to/GigaTok --profile    # one profiled training step per side
    python bench/reference_step.py --authors /path/to/GigaTok --sides ours,theirs   # some sides only

Without ``--authors`` (or with a path that is not a git checkout of the authors' code) it says so and exits 0.
Needs ``einops`` (the authors' code imports it; the project does not).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable without installing it
    sys.path.insert(0, str(ROOT))

from bench.common import Row, add_common_args, log_to_mlflow, median, paired_ratio, print_table  # noqa: E402

VQ_MODULE = "tokenizer.tokenizer_image.vq.vq_vit_model"
VQ_FILE = Path("tokenizer/tokenizer_image/vq/vq_vit_model.py")
CONFIG_FILE = Path("configs/vq/VQ_SS256.yaml")
SIDES = ("ours", "ours-glibc", "ours-nhwc", "theirs", "theirs-kept")
KEPT_MEMORY_SIDES = ("ours", "ours-nhwc", "theirs-kept")  # processes that keep freed host memory
MODES = ("forward", "train")


@dataclasses.dataclass(frozen=True)
class Work:
    """What both sides compute: image side, latent tokens, batch."""

    image_size: int
    num_tokens: int
    batch: int


def skip_reason(authors: Path | None) -> str | None:
    """Why the comparison cannot run (None when it can)."""
    if authors is None:
        return "no --authors checkout given"
    if not (authors / VQ_FILE).is_file() or not (authors / CONFIG_FILE).is_file():
        return f"--authors {authors}: no {VQ_FILE} and {CONFIG_FILE} there (not a checkout of the authors' code)"
    if subprocess.run(["git", "-C", str(authors), "rev-parse", "HEAD"], capture_output=True).returncode:
        return f"--authors {authors}: not a git checkout"
    try:
        importlib.import_module("einops")
    except ImportError:
        return "the authors' code needs einops (pip install einops)"
    return None


# ------------------------------------------------------------------------------------------------------------
# The two sides: each returns (forward call, training-step call)
# ------------------------------------------------------------------------------------------------------------


def ours(
    work: Work, channels_last: bool = False
) -> tuple[Callable[[torch.Tensor], Any], Callable[[torch.Tensor], Any]]:
    from gigatok.config import tokenizer_run
    from gigatok.models.discriminator import PatchDiscriminator
    from gigatok.models.tokenizer import build_tokenizer
    from gigatok.performance import prepare_images, prepare_module
    from gigatok.train.optimizer import build_optimizer
    from gigatok.train.tokenizer_loop import StepModules, training_step

    cfg = tokenizer_run("S-S", profile="paper", batch_size=work.batch, semantic_weight=0.0)
    tok = dataclasses.replace(cfg.tokenizer, image_size=work.image_size, num_tokens=work.num_tokens)
    perf = dataclasses.replace(cfg.performance, channels_last=channels_last)
    cfg = dataclasses.replace(
        cfg, tokenizer=tok, loss=dataclasses.replace(cfg.loss, perceptual="off"), performance=perf
    )
    step = cfg.loss.shortcut_end_step  # past the shortcut, before the GAN: L2 + codebook + commitment only
    assert step < cfg.loss.gan_start_step
    model = prepare_module(build_tokenizer(cfg.tokenizer), perf)
    disc = PatchDiscriminator(cfg.loss.disc_channels, cfg.loss.disc_layers)  # built as the loop does; unused here
    m = StepModules(
        model, disc, None, None, build_optimizer(cfg, model.parameters()), build_optimizer(cfg, disc.parameters()),
        model, disc,
    )  # fmt: skip
    indices = torch.arange(work.batch)

    def forward(images: torch.Tensor) -> Any:
        model.eval()
        with torch.no_grad():
            return model.decode(model.encode(prepare_images(images, perf)).quantized)

    def train(images: torch.Tensor) -> Any:
        model.train()
        return float(training_step(cfg, m, images, indices, step)["total_loss"].detach())  # prepares the images

    return forward, train


def import_authors(root: Path, work: Work) -> Any:
    """Their model module, with their ViTs' image size bound to ``work.image_size`` (their default is 256)."""
    sys.path.insert(0, str(root))
    vq = importlib.import_module(VQ_MODULE)
    blocks = sys.modules["tokenizer.tokenizer_image.vq.blocks"]
    for name in ("ViTEncoder", "ViTDecoder"):
        setattr(vq, name, functools.partial(getattr(blocks, name), image_size=work.image_size))
    return vq


def theirs(root: Path, work: Work) -> tuple[Callable[[torch.Tensor], Any], Callable[[torch.Tensor], Any]]:
    import torch.nn.functional as F
    import yaml

    vq = import_authors(root, work)
    spec = yaml.safe_load((root / CONFIG_FILE).read_text())
    fields = set(vq.VQVitModelPlusArgs.__dataclass_fields__)
    args = {k: v for k, v in spec["model"]["init_args"].items() if k in fields}
    args["num_latent_tokens"] = work.num_tokens
    torch.manual_seed(0)
    model = vq.VQVitModelPlus(vq.VQVitModelPlusArgs(**args))
    # Their usage buffer is registered as an nn.Parameter; moved to a GPU it becomes a plain tensor their in-place
    # updates can write to, which on the CPU it does not: the same values, without the grad flag.
    model.quantize.codebook_used = model.quantize.codebook_used.detach().clone()
    trainer = spec["trainer"]
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=float(trainer["lr"]),
        betas=(float(trainer["beta1"]), float(trainer["beta2"])),
        weight_decay=float(trainer["weight_decay"]),
    )
    codebook_weight = float(spec["loss"]["params"]["codebook_weight"])

    def forward(images: torch.Tensor) -> Any:
        model.eval()
        with torch.no_grad():
            return model(images)[0]

    def train(images: torch.Tensor) -> Any:
        model.train()
        # rec_loss=False: no shortcut decoding or feature loss (ours is past the shortcut too).
        (dec, _), (diff, _) = model(images, rec_loss=False)
        vq_loss, commit_loss, entropy_loss, _ = diff
        loss = F.mse_loss(dec, images) + codebook_weight * (vq_loss + commit_loss + entropy_loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), float(trainer["max_grad_norm"]))
        opt.step()
        return float(loss.detach())

    return forward, train


# ------------------------------------------------------------------------------------------------------------
# One case in this process (the worker), and the interleaved driver
# ------------------------------------------------------------------------------------------------------------


def run_case(args: argparse.Namespace) -> None:
    """Worker: build one side, one warm-up call, ``--steps`` timed calls; prints one JSON line."""
    torch.set_num_threads(args.threads)
    side, mode = args.worker.split(":")
    if side in KEPT_MEMORY_SIDES:
        from gigatok.host_memory import keep_freed_host_memory

        status = keep_freed_host_memory()
        if status != "kept":
            sys.exit(f"{side}: freed host memory cannot be kept here: {status}")
    work = Work(args.image_size, args.num_tokens, args.batch)
    nhwc = side == "ours-nhwc"
    calls = theirs(args.authors, work) if side.startswith("theirs") else ours(work, channels_last=nhwc)
    fn = calls[MODES.index(mode)]
    images = torch.rand(work.batch, 3, work.image_size, work.image_size, generator=torch.Generator().manual_seed(0))
    images = images * 2 - 1
    fn(images)
    if args.profile:
        print(profile_table(fn, images, args.profile_rows))
        return
    times, cpu = [], []
    for _ in range(args.steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn(images)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    print(json.dumps({"times": times, "cpu": cpu}))


def profile_table(fn: Callable[[torch.Tensor], Any], images: torch.Tensor, rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn(images)
    averages = prof.key_averages()
    table = averages.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=60)
    shapes = prof.key_averages(group_by_input_shape=True).table(
        sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=50, max_shapes_column_width=70
    )
    return f"{table}\nby input shape:\n{shapes}"


def worker_command(args: argparse.Namespace, case: str) -> list[str]:
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker", case,
        "--authors", str(args.authors),
        "--threads", str(args.threads),
        "--image-size", str(args.image_size),
        "--num-tokens", str(args.num_tokens),
        "--batch", str(args.batch),
        "--steps", str(args.steps),
        *(["--profile", "--profile-rows", str(args.profile_rows)] if args.profile else []),
    ]  # fmt: skip


def spawn(args: argparse.Namespace, case: str) -> dict[str, list[float]]:
    """One case in a fresh process: its wall-clock and CPU seconds per timed call."""
    out = subprocess.run(worker_command(args, case), capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{case} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    if args.profile:
        print(f"\n===== {case}: one call, torch.profiler, top ops by self CPU time =====\n{out.stdout}", flush=True)
        return {}
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def measure(args: argparse.Namespace, modes: list[str]) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall-clock and CPU seconds per call of each case, one fresh process per case and round (per round the
    median of its calls)."""
    times: dict[str, list[float]] = {f"{s}:{m}": [] for m in modes for s in args.sides}
    cpu: dict[str, list[float]] = {case: [] for case in times}
    for r in range(args.rounds):
        for mode in modes:
            for side in args.sides if r % 2 == 0 else args.sides[::-1]:
                case = f"{side}:{mode}"
                result = spawn(args, case)
                times[case].append(median(result["times"]))
                cpu[case].append(median(result["cpu"]))
                print(
                    f"round {r + 1}/{args.rounds} {case}: {times[case][-1]:.2f} s ({cpu[case][-1]:.2f} s CPU)",
                    flush=True,
                )
    return times, cpu


def rows_for(
    times: dict[str, list[float]], cpu: dict[str, list[float]], modes: list[str], sides: list[str], work: Work
) -> list[Row]:
    rows = []
    for mode in modes:
        for side in sides:
            t = times[f"{side}:{mode}"]
            ratio, low, high = paired_ratio(times[f"theirs:{mode}"], t)
            cpu_ratio = median(cpu[f"theirs:{mode}"]) / median(cpu[f"{side}:{mode}"])
            rows.append(
                Row(
                    f"{mode} ({work.image_size} px, batch {work.batch}): {side}",
                    median(t),
                    "s",
                    {
                        "min-max s": f"{min(t):.2f}-{max(t):.2f}",
                        "theirs / this (per round)": f"{ratio:.2f}x ({low:.2f}-{high:.2f})",
                        "CPU s": f"{median(cpu[f'{side}:{mode}']):.2f}",
                        "theirs / this (CPU)": f"{cpu_ratio:.2f}x",
                        "rounds": len(t),
                    },
                )
            )
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--authors", type=Path, default=None, help="a git checkout of the authors' GigaTok code")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads in each case's process")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of all cases (default 3; --quick 5)")
    parser.add_argument("--steps", type=int, default=1, help="timed calls per process after one warm-up call")
    parser.add_argument("--quick", action="store_true", help="128 px and 64 tokens (an 8x8 grid) for iterating")
    parser.add_argument("--image-size", type=int, default=None, help="image side (default 256; --quick 128)")
    parser.add_argument("--num-tokens", type=int, default=None, help="latent tokens (default 256; --quick 64)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--only", choices=MODES, default=None, help="measure only the forward or the training step")
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table of one training step")
    parser.add_argument("--profile-rows", type=int, default=25)
    parser.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated, among {', '.join(SIDES)}")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    add_common_args(parser)
    args = parser.parse_args(argv)
    args.image_size = args.image_size or (128 if args.quick else 256)
    args.num_tokens = args.num_tokens or (64 if args.quick else 256)
    args.rounds = args.rounds or (5 if args.quick else 3)
    args.sides = [side.strip() for side in args.sides.split(",") if side.strip()]
    unknown = sorted(set(args.sides) - set(SIDES))
    if unknown or "theirs" not in args.sides:
        what = ", ".join(unknown) or "theirs missing"
        parser.error(f"--sides: {what} (known: {', '.join(SIDES)}; the ratios need theirs)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        run_case(args)
        return
    reason = skip_reason(args.authors)
    if reason:
        print(f"skipping the side-by-side with the authors' code: {reason}")
        return
    work = Work(args.image_size, args.num_tokens, args.batch)
    modes = [args.only] if args.only else list(MODES)
    print(f"torch {torch.__version__}, {args.threads} threads per case, {work}; fresh process per case")
    if args.profile:
        for side in args.sides:
            spawn(args, f"{side}:{args.only or 'train'}")
        return
    times, cpu = measure(args, modes)
    rows = rows_for(times, cpu, modes, args.sides, work)
    print_table("Paper S-S 1D tokenizer, ours vs the authors' code (medians over rounds)", rows)
    log_to_mlflow(args.mlflow, "reference_step", rows, {"work": work, "threads": args.threads})


if __name__ == "__main__":
    main()

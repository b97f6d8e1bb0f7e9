"""Train an AR probe on a finished tokenizer run: ``python studies/train_ar.py runs/tokenizer-HASH --size B``.

Tokenizes the run's dataset once into its token cache (reused by every AR run on it), trains the Llama-style AR
model with the profile's settings (AR probe: 50 epochs at a constant rate at paper profile; ``--system``: the
system-level recipe, 300 epochs with a sqrt-decay WSD schedule), and reports the teacher-forced
validation loss and the linear-probe accuracy of its middle layer. Re-running resumes.

The run is tracked in MLflow as a study's run is (the run pipeline's token_cache, ar and ar_probe stages), in the
experiment ``single`` (``single-tiny`` at tiny; ``--experiment NAME`` for another), with the flags of
``studies/run.py`` for folders, tracking and weights. The tokenizer run must be ``RUNS_DIR/tokenizer-<hash>``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from gigatok import launch, logs
from gigatok.config import ar_run
from gigatok.pipeline import RunContext, RunSpec
from gigatok.tracking import experiment_name
from studies.options import EXIT_BAD_INPUT, add_single_run_options


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="studies/train_ar.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("tokenizer_run", type=Path, help="a finished tokenizer run directory, RUNS_DIR/tokenizer-<hash>")
    p.add_argument("--size", default="B", help="AR size of Table 8: B, L, XL or XXL")
    p.add_argument("--epochs", type=float, default=None, help="default: the profile's (50 for the AR probe)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--max-steps", type=int, default=None, help="cap the schedule (smoke runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-probe", action="store_true", help="skip the linear probe")
    p.add_argument(
        "--system",
        action="store_true",
        help="the system-level recipe of this size (paper: 300 epochs, WSD sqrt decay, XXL batch 512)",
    )
    add_single_run_options(p, data=False)  # the AR model reads the data its tokenizer was trained on
    return p.parse_args(argv)


def plan(args: argparse.Namespace) -> tuple[RunSpec, RunContext]:
    """The AR run on the tokenizer run ``args.tokenizer_run``, and where it runs; bad input raises."""
    from gigatok.train.trained import read_run_config

    if not (args.tokenizer_run / "summary.json").is_file():
        raise launch.UsageError(f"{args.tokenizer_run}: not a finished tokenizer run (no summary.json)")
    tokenizer = read_run_config(args.tokenizer_run)
    cfg = ar_run(
        tokenizer,
        args.size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        max_steps=args.max_steps,
        system=args.system,
    )
    ctx = launch.run_context(args.runs_dir, args.tracking_uri, args.weights_dir, args.substitutes, args.device)
    if ctx.tokenizer_dir(tokenizer) != args.tokenizer_run.resolve():
        raise launch.UsageError(
            f"{args.tokenizer_run}: the run pipeline reads this tokenizer at {ctx.tokenizer_dir(tokenizer)}; pass "
            f"--runs-dir {args.tokenizer_run.resolve().parent}"
        )
    stages = ("token_cache", "ar") if args.no_probe else ("token_cache", "ar", "ar_probe")
    factors = {"tokenizer": tokenizer.tokenizer.name, "ar_size": args.size, "seed": args.seed}
    return launch.single_spec(args.experiment, factors, tokenizer, cfg, stages), ctx


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logs.configure(args.verbosity)
    try:
        spec, ctx = plan(args)
        assert spec.ar is not None
        print(f"AR run {spec.ar.hash()} on tokenizer {spec.tokenizer.hash()} -> {ctx.ar_dir(spec.ar)}")
        result = launch.run_single(spec, ctx, data=None, source=f"studies/train_ar.py --size {args.size}")
    except launch.SINGLE_RUN_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(
        f"MLflow run {result.run_id} (experiment {experiment_name(args.experiment, spec.profile)}, {ctx.tracking_uri})"
    )
    vocab = math.log(spec.ar.model.vocab_size)
    print(f"validation loss {result.metrics['ar_val_loss']:.4f} (log vocabulary = {vocab:.3f})")
    if "ar_probe_acc" in result.metrics:
        print(f"linear probe accuracy {result.metrics['ar_probe_acc']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

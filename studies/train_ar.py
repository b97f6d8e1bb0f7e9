"""Train an AR probe on a finished tokenizer run: ``python studies/train_ar.py runs/tokenizer-HASH --size B``.

Tokenizes the run's dataset once into its token cache (reused by every AR run on it), trains the Llama-style AR
model with the profile's settings (AR probe: 50 epochs at a constant rate at paper profile; ``--system``: the
system-level recipe, 300 epochs with a sqrt-decay WSD schedule), and reports the teacher-forced
validation loss and the linear-probe accuracy of its middle layer. Re-running resumes.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from gigatok.config import ConfigError, ar_run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tokenizer_run", type=Path, help="a finished tokenizer run directory")
    p.add_argument("--size", default="B", help="AR size of Table 8: B, L, XL or XXL")
    p.add_argument("--epochs", type=float, default=None, help="default: the profile's (50 for the AR probe)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--max-steps", type=int, default=None, help="cap the schedule (smoke runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs-dir", default="runs", help="AR run directories are RUNS_DIR/ar-HASH")
    p.add_argument("--no-probe", action="store_true", help="skip the linear probe")
    p.add_argument(
        "--system",
        action="store_true",
        help="the system-level recipe of this size (paper: 300 epochs, WSD sqrt decay, XXL batch 512)",
    )
    args = p.parse_args(argv)

    from gigatok.train.trained import read_run_config

    if not (args.tokenizer_run / "summary.json").is_file():
        print(f"error: {args.tokenizer_run}: not a finished tokenizer run (no summary.json)", file=sys.stderr)
        return 2
    try:
        cfg = ar_run(
            read_run_config(args.tokenizer_run),
            args.size,
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=args.seed,
            max_steps=args.max_steps,
            system=args.system,
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from gigatok.metrics.linear_probe import ar_features, linear_probe
    from gigatok.token_cache import build_token_cache, view_set
    from gigatok.train.ar_loop import train_ar
    from gigatok.train.trained import load_trained_ar

    run_dir = Path(args.runs_dir) / f"ar-{cfg.hash()}"
    print(f"AR run {cfg.hash()} on tokenizer {cfg.tokenizer.hash()} -> {run_dir}")
    result = train_ar(cfg, run_dir, args.tokenizer_run)
    if not result.finished:
        print(f"stopped at step {result.steps}")
        return 0
    print(f"validation loss {result.val_loss:.4f} (log vocabulary = {math.log(cfg.model.vocab_size):.3f})")
    if not args.no_probe:
        model = load_trained_ar(run_dir)
        views = cfg.train.views
        train = build_token_cache(args.tokenizer_run, "train", views=views).one_view(view_set(views).plain)
        val = build_token_cache(args.tokenizer_run, "val")
        name = f"AR-{cfg.size} layer {cfg.model.depth // 2}"
        probe = linear_probe(ar_features(model, train), ar_features(model, val), name)
        print(f"linear probe accuracy {probe.accuracy:.3f} (chance {probe.chance:.3f}, {probe.num_val} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train one tokenizer: ``python studies/train_tokenizer.py S-S --profile tiny``.

A thin command line over :func:`gigatok.train.tokenizer_loop.train_tokenizer`; whole studies come with
``studies/run.py``. Re-running the same command resumes from the newest checkpoint in the run directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gigatok.config import ConfigError, tokenizer_run
from gigatok.weights import MissingWeightsError, WeightsHashError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="tokenizer size as ENC-DEC, e.g. S-S, S-B, B-L, XL-XXL")
    p.add_argument("--profile", default="tiny", help="tiny (CPU, built-in data) or paper (Table 9, ImageNet)")
    p.add_argument("--kind", default="1d", choices=["1d", "2d"], help="Q-Former (1d) or ViT (2d) transformer")
    p.add_argument("--semantic-weight", type=float, default=None, help="lambda; 0 = no semantic regularization")
    p.add_argument("--align-layer", type=int, default=3, help="decoder layer aligned to the semantic encoder")
    p.add_argument("--semantic-encoder", default=None, help="dinov2-b, clip, siglip or inception")
    p.add_argument("--entropy-weight", type=float, default=None, help="entropy loss weight (Table 9 default)")
    p.add_argument("--epochs", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--max-steps", type=int, default=None, help="cap the schedule (smoke runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--data-root",
        default=None,
        help="image folder (train/, val/; ImageNet at paper), in place of "
        "tiny's built-in dataset; or GIGATOK_DATA_ROOT",
    )
    p.add_argument("--weights-dir", default=None, help="pretrained files; or GIGATOK_WEIGHTS_DIR")
    p.add_argument(
        "--allow-substitutes",
        action="store_true",
        help="let randomly initialised stand-ins replace missing pretrained networks (marked in results)",
    )
    p.add_argument("--runs-dir", default="runs", help="run directories are RUNS_DIR/tokenizer-HASH")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = tokenizer_run(
            args.name,
            profile=args.profile,
            kind=args.kind,
            semantic_weight=args.semantic_weight,
            align_layer=args.align_layer,
            semantic_encoder=args.semantic_encoder,
            entropy_weight=args.entropy_weight,
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=args.seed,
            data_root=args.data_root,
            max_steps=args.max_steps,
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from gigatok.perceptual import resolve_perceptual

    cfg = resolve_perceptual(cfg, args.weights_dir)  # the folder is named by the objective actually trained
    run_dir = Path(args.runs_dir) / f"tokenizer-{cfg.hash()}"
    print(f"run {cfg.hash()} -> {run_dir}")
    from gigatok.data.errors import DataError
    from gigatok.train.tokenizer_loop import train_tokenizer

    try:
        result = train_tokenizer(cfg, run_dir, weights_dir=args.weights_dir, allow_substitutes=args.allow_substitutes)
    except (MissingWeightsError, WeightsHashError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    state = "finished" if result.finished else "stopped"
    print(f"{state} at step {result.steps}: " + ", ".join(f"{k}={v:.4g}" for k, v in result.final_metrics.items()))
    if result.substitutes:
        print(
            "SUBSTITUTE networks were used (results are not comparable to the paper): " + ", ".join(result.substitutes)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train one tokenizer: ``python studies/train_tokenizer.py S-S --profile tiny``.

A thin command line over the run pipeline's tokenizer stage; whole studies come with ``studies/run.py``, whose flags
for data, folders, tracking and weights it shares (``--data``, ``--runs-dir``, ``--tracking-uri``,
``--weights-dir``). The run is tracked in MLflow as a study's run is (tags, params, config artifact, curves, timing),
in the experiment ``single`` (``single-tiny`` at tiny; ``--experiment NAME`` for another). Re-running the same command
resumes from the newest checkpoint in the run directory, under the same MLflow run.
"""

from __future__ import annotations

import argparse
import sys

from gigatok import launch, logs
from gigatok.config import tokenizer_run
from gigatok.tracking import experiment_name
from gigatok.train.run_dir import read_summary
from studies.options import EXIT_BAD_INPUT, add_profile_option, add_single_run_options


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="studies/train_tokenizer.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("name", help="tokenizer size as ENC-DEC, e.g. S-S, S-B, B-L, XL-XXL")
    add_profile_option(p)
    p.add_argument("--kind", default="1d", choices=["1d", "2d"], help="Q-Former (1d) or ViT (2d) transformer")
    p.add_argument("--semantic-weight", type=float, default=None, help="lambda; 0 = no semantic regularization")
    p.add_argument("--align-layer", type=int, default=3, help="decoder layer aligned to the semantic encoder")
    p.add_argument("--semantic-encoder", default=None, help="dinov2-b, clip, siglip or inception")
    p.add_argument("--entropy-weight", type=float, default=None, help="entropy loss weight (Table 9 default)")
    p.add_argument("--epochs", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--max-steps", type=int, default=None, help="cap the schedule (smoke runs)")
    p.add_argument("--seed", type=int, default=0)
    add_single_run_options(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logs.configure(args.verbosity)
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
            data_root=launch.data_root(args.data),
            max_steps=args.max_steps,
        )
        from gigatok.perceptual import resolve_perceptual

        cfg = resolve_perceptual(cfg, args.weights_dir)  # the folder is named by the objective actually trained
        ctx = launch.run_context(args.runs_dir, args.tracking_uri, args.weights_dir, args.substitutes, args.device)
        launch.require_paper_data(args.profile, args.data, "trains on")
        factors = {"size": args.name, "kind": args.kind, "seed": args.seed}
        spec = launch.single_spec(args.experiment, factors, cfg, None, ("tokenizer",))
        run_dir = ctx.tokenizer_dir(cfg)
        print(f"run {cfg.hash()} -> {run_dir}")
        result = launch.run_single(spec, ctx, data=args.data, source=f"studies/train_tokenizer.py {args.name}")
    except launch.SINGLE_RUN_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(
        f"MLflow run {result.run_id} (experiment {experiment_name(args.experiment, args.profile)}, {ctx.tracking_uri})"
    )
    summary = read_summary(run_dir) or {}
    state = "finished" if result.ran else "already finished"
    final = summary.get("final_metrics", {})
    print(f"{state} at step {summary.get('steps')}: " + ", ".join(f"{k}={v:.4g}" for k, v in final.items()))
    if summary.get("substitutes"):
        print(
            "SUBSTITUTE networks were used (results are not comparable to the paper): "
            + ", ".join(summary["substitutes"])
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

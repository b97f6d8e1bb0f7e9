"""Run one of the paper's studies: plan its runs, dispatch them, track every number in MLflow.

    python studies/run.py --list                          the studies, their run counts, what they reproduce
    python studies/run.py scaling_1d_vs_2d --dry-run      the plan: hashes, factors, parameter counts, what is done
    python studies/run.py scaling_1d_vs_2d --profile paper --dry-run --estimate
                                                          its training FLOPs, GPU-hours and wall time (--gpu, --gpus)
    python studies/run.py scaling_1d_vs_2d                run it (tiny profile, locally, ./mlflow.db)
    python studies/run.py scaling_1d_vs_2d --seeds 3      every run at seeds 0, 1, 2 (default: the profile's)
    python studies/run.py scaling_1d_vs_2d --status       each run's state from MLflow (and Slurm)
    python studies/run.py cfg_search --study scaling_1d_vs_2d --only size=S-S,kind=1d
                                                          search one run's CFG scale (cfg_search --help)
    python studies/run.py scaling_1d_vs_2d --profile paper --data /datasets/imagenet --executor slurm \\
        --partition gpu --gpus-per-node 8 --time-min 2880

Re-running a study skips finished runs (one MLflow query for the whole study) and resumes unfinished ones from
their checkpoints. ``--set key=value`` changes any config field (``tokenizer.train.max_steps=20``,
``ar.train.epochs=1``, ``eval.gen_samples=500``); a changed config is a different run with a different hash.
``--seeds N`` replicates every run over seeds 0 .. N-1 (the factor ``seed``: a tokenizer and its AR probe share
it); seed 0 is the run as planned with one seed, so raising N later adds runs and keeps the finished ones. Both
profiles plan one seed per point by default, except scaling_1d_vs_2d at tiny: two seeds, within 20 minutes on two
cores, so its Fig. 9 shows the seed spread.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gigatok import launch, logs
from gigatok.calibration import GPU_TYPES
from gigatok.config import get_profile
from gigatok.dispatch import check_executor_name
from gigatok.launch.estimate import DEFAULT_GPU, DEFAULT_GPUS
from gigatok.launch.local_estimate import estimate_here
from gigatok.launch.memory import memory_lines
from gigatok.pipeline import RunContext, RunSpec
from gigatok.study import SEED_FACTOR, get_study
from gigatok.tracking_schema import study_view_path
from studies import cfg_search
from studies.estimate_report import print_estimate, print_local_estimate
from studies.options import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    PROFILE_HELP,
    add_place_options,
    add_seeds_option,
    add_slurm_options,
    add_substitute_and_device_options,
    add_verbosity_options,
    load_catalog,
)

log = logs.logger("studies.run")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="studies/run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("study", nargs="?", help="study name (see --list)")
    p.add_argument("--list", action="store_true", help="list the studies and exit")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit; nothing is written")
    p.add_argument("--json", action="store_true", help="with --list, --dry-run or --status: machine-readable output")
    p.add_argument(
        "--show-config", action="store_true", help="with --dry-run: each run's resolved config as JSON (use --only)"
    )
    p.add_argument(
        "--estimate",
        action="store_true",
        help="with --dry-run: training FLOPs, GPU-hours and wall time of each run still to do, from the measured "
        "throughput of gigatok/calibration.py",
    )
    p.add_argument(
        "--gpu", choices=GPU_TYPES, default=None, help=f"with --estimate: the GPU type (default {DEFAULT_GPU})"
    )
    p.add_argument(
        "--gpus", type=int, default=None, help=f"with --estimate: GPUs the plan runs on (default {DEFAULT_GPUS})"
    )
    p.add_argument(
        "--here",
        action="store_true",
        help="with --estimate: time each training step of the plan on this machine, as a local worker runs it, and "
        "forecast the local workers' wall time (instead of pricing GPU-hours)",
    )
    p.add_argument("--status", action="store_true", help="show each run's state from MLflow and Slurm and exit")
    p.add_argument("--profile", default="tiny", help=PROFILE_HELP)
    add_place_options(p)
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. tokenizer.train.max_steps=20 (repeatable)",
    )
    p.add_argument(
        "--sweep",
        dest="sweeps",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="run the study at each value, as a factor, e.g. tokenizer.optim.lr=1e-4,3e-4 (repeatable: a grid)",
    )
    p.add_argument(
        "--only",
        default=None,
        help="comma-separated run hashes (or prefixes) or factor=value filters, e.g. size=S-S,seed=0",
    )
    add_seeds_option(p)
    add_substitute_and_device_options(p)
    p.add_argument("--no-wait", action="store_true", help="local executor: submit and return (default: wait)")
    p.add_argument("--wait", action="store_true", help="slurm executor: wait for the jobs and show progress")
    p.add_argument(
        "--local-parallel",
        type=int,
        default=None,
        help="local executor: worker processes (default: one per GPU, or 2 sharing the CPU cores)",
    )
    p.add_argument("--local-tasks", type=int, default=1, help="local executor: DDP processes per run (default 1)")
    add_slurm_options(p)
    add_verbosity_options(p)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------------------
# Commands: the work is gigatok.launch's; here are the flags and what is printed
# ----------------------------------------------------------------------------------------------------------


def _millions(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f}M"


def print_plan(study: str, profile: str, rows: list[dict[str, Any]]) -> None:
    seeds = len({r["factors"].get(SEED_FACTOR, 0) for r in rows})
    each = f", {seeds} seeds per point" if seeds > 1 else ""
    print(f"study {study} at profile {profile}: {len(rows)} runs ({get_study(study).reproduces}){each}")
    print(f"{'hash':12}  {'factors':34} {'tok params':>10} {'AR params':>9}  {'done':18} mlflow")
    for r in rows:
        factors = " ".join(f"{k}={v}" for k, v in r["factors"].items())
        done = f"{len(r['stages_done'])}/{len(r['stages'])} stages"
        print(
            f"{r['hash']:12}  {factors:34} {_millions(r['tokenizer_params']):>10} {_millions(r['ar_params']):>9}  "
            f"{done:18} {r['mlflow_status'] or '-'}"
        )


def cmd_list(args: argparse.Namespace) -> int:
    load_catalog()
    rows = launch.catalog_rows(args.profile, args.seeds)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['study']:18} {r['runs']:3} runs  {r['reproduces']:16} {r['about']}")
    return 0


def cmd_dry_run(args: argparse.Namespace, specs: list[RunSpec], ctx: RunContext) -> int:
    if args.show_config:  # everything a run is made of, as its hash sees it
        print(json.dumps([{"hash": s.hash, **s.to_dict()} for s in specs], indent=2))
        return 0
    tracked, problem = launch.peek_tracked(ctx.tracking_uri, args.study, args.profile)
    if args.estimate:
        return cmd_estimate(args, specs, ctx, tracked, problem)
    rows = launch.plan_rows(specs, ctx, tracked)
    if args.json:
        print(
            json.dumps(
                {"study": args.study, "profile": args.profile, "tracking_uri": ctx.tracking_uri, "runs": rows}, indent=2
            )
        )
    else:
        print_plan(args.study, args.profile, rows)
        if problem:
            print(f"(MLflow status not shown: {problem})")
    return 0


def cmd_estimate(
    args: argparse.Namespace, specs: list[RunSpec], ctx: RunContext, tracked: dict[str, Any], problem: str | None
) -> int:
    if args.here:
        return cmd_estimate_here(args, specs, ctx, tracked, problem)
    gpus = DEFAULT_GPUS if args.gpus is None else args.gpus
    est = launch.estimate_plan(specs, ctx, tracked, args.gpu or DEFAULT_GPU, gpus)
    if args.json:
        print(json.dumps({"study": args.study, "profile": args.profile, **est.to_dict()}, indent=2))
        return 0
    print_estimate(args.study, args.profile, est)
    print("\n".join(memory_lines(specs, gpus)))
    if problem:
        print(f"(MLflow not read, so runs FINISHED there are priced too: {problem})")
    return 0


def cmd_estimate_here(
    args: argparse.Namespace, specs: list[RunSpec], ctx: RunContext, tracked: dict[str, Any], problem: str | None
) -> int:
    workers, threads = launch.local_workers(args.local_parallel)
    est = estimate_here(specs, ctx, tracked, workers, ctx.threads or threads)
    if args.json:
        print(json.dumps({"study": args.study, "profile": args.profile, **est.to_dict()}, indent=2))
        return 0
    print_local_estimate(args.study, args.profile, est)
    if problem:
        print(f"(MLflow not read, so runs FINISHED there are timed too: {problem})")
    return 0


def cmd_status(args: argparse.Namespace, specs: list[RunSpec], ctx: RunContext) -> int:
    rows = launch.status_rows(specs, ctx, args.study, args.profile)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        where = f" stage={r['stage']}" if r["stage"] and r["status"] != "FINISHED" else ""
        slurm = f" slurm={r['slurm_job_id']}:{r['slurm_state']}" if r["slurm_job_id"] else ""
        print(f"{r['hash']}  {r['label']:34} {r['status']:13}{where}{slurm}")
        if r["error"]:
            print(f"    error: {r['error']}")
        if r["tracking_pending"]:  # its job spooled tracking during an outage; sent when the store answers
            print(f"    {r['tracking_pending']}")
    return 0


def announce(args: argparse.Namespace, study: launch.StudyLaunch) -> None:
    profile, ctx = get_profile(args.profile), study.ctx
    print(
        f"study {args.study} ({get_study(args.study).reproduces}): {len(study.todo)} runs to go, "
        f"{len(study.finished)} already finished; profile {args.profile}, executor {study.executor}, "
        f"tracking {ctx.tracking_uri}"
    )
    if study.spooled and study.spooled.sent:
        print(f"  sent the tracking that {len(study.spooled.sent)} run(s) spooled while the store was away")
    view = study_view_path(study.experiment_id)
    if ctx.tracking_uri.startswith("http"):
        print(f"  the study's columns (sizes, factors, metrics) in the MLflow UI: {ctx.tracking_uri}{view}")
    else:
        print(f"  the study in the MLflow UI: mlflow ui --backend-store-uri {ctx.tracking_uri}, then {view}")
    executor = study.executor
    if executor == "slurm" and ctx.tracking_uri.startswith("sqlite:"):
        log.warning(
            "  tracking in a SQLite file: fine for a few jobs on one machine; for job arrays on a cluster start a "
            "server (scripts/mlflow-server up) and pass --tracking-uri"
        )
    if args.profile != "paper":
        log.info(
            f"  {args.profile} profile: {profile.image_size}px images, {profile.num_tokens} tokens, CPU-sized models "
            "on the built-in dataset; numbers show the pipeline and trends, not the paper's values."
        )
        log.info(
            f"  paper scale: python studies/run.py {args.study} --profile paper --data /path/to/imagenet "
            "--executor slurm --partition PART --gpus-per-node 8 --weights-dir /path/to/weights"
        )
    from gigatok.perceptual import vgg16_missing_reason

    if (missing := vgg16_missing_reason(ctx.weights_dir)) is not None:
        if profile.loss.perceptual == "auto":  # tiny; the paper profile asks for LPIPS by name
            log.info(
                f"  {missing}: tiny runs train without the perceptual term and report LPIPS as unavailable "
                "(tagged gigatok.perceptual; put the file there for LPIPS)"
            )
        if ctx.allow_substitutes:
            log.warning(
                "  --allow-substitutes: a random SUBSTITUTE VGG16 stands in wherever LPIPS is asked for, and every "
                "affected run is tagged gigatok.substitutes"
            )


def cmd_run(args: argparse.Namespace, specs: list[RunSpec], ctx: RunContext) -> int:
    study = launch.StudyLaunch.prepare(
        args.study,
        args.profile,
        specs,
        ctx,
        executor=args.executor,
        local_parallel=args.local_parallel,
        slurm_flags=args,
        data=args.data,
        local_tasks=args.local_tasks,
    )
    ctx = study.ctx
    announce(args, study)
    if study.executor == "local" and not args.no_wait:
        log.info(
            f"  {min(study.local_workers, len(study.groups))} local worker process(es), {study.threads} "
            f"thread(s) each; job logs in {ctx.root / 'jobs'}"
        )
    if not study.todo:
        print("nothing to do: every run of the plan is FINISHED in MLflow")
        return 0
    study.register()
    with study.submitting():
        if study.executor == "slurm":
            jobs = study.submit_slurm()
            print(f"submitted {len(jobs)} Slurm jobs: " + " ".join(j.job_id for j in jobs))
            if not args.wait:
                store = f" --tracking-uri {args.tracking_uri}" if args.tracking_uri else ""
                print(f"follow with: python studies/run.py {args.study} --profile {args.profile}{store} --status")
                return 0
            return follow(study)
        if study.executor == "debug":
            for exc in study.run_here():
                print(f"error: {exc}".splitlines()[0], file=sys.stderr)
            return report(study)
        # local: the groups spread over worker processes, each running its runs one after the other
        if args.no_wait:
            for group, job in study.start_local():
                print(f"started local job {job.job_id} for {len(group)} runs (logs in {ctx.root / 'jobs'})")
            return 0
        return follow(study)


def follow(study: launch.StudyLaunch) -> int:
    """A progress bar of the study until every job has ended (each active run's stage and step), then the report."""
    from tqdm.auto import tqdm

    try:
        with (
            launch.cancel_on_interrupt(study.running_jobs, sigterm=True),
            tqdm(total=len(study.todo), unit="run", desc="study", dynamic_ncols=True) as bar,
        ):
            for progress in study.follow():  # each active run's stage and training step
                bar.n = progress.done
                if progress.active:
                    bar.set_postfix_str(
                        "; ".join(
                            f"{spec.label}: {stage}{'' if step is None else f' step {step}'}"
                            for spec, stage, step in progress.active
                        ),
                        refresh=False,
                    )
                bar.refresh()
    except launch.Interrupted:
        print("interrupted: the runs resume from their checkpoints on the next invocation", file=sys.stderr)
        return EXIT_INTERRUPTED
    return report(study)


def report(study: launch.StudyLaunch) -> int:
    """One line per run: status and headline metrics; exit status 1 if any run did not finish."""
    outcomes = study.outcomes()
    failed = 0
    for o in outcomes:
        values = " ".join(f"{k}={v:.4g}" for k, v in o.metrics.items())
        print(f"{o.spec.hash}  {o.spec.label:34} {o.status:9} {values}")
        if o.status != "FINISHED":
            failed += 1
            if o.error:
                print(f"    error: {o.error}")
    if failed:
        print(f"{failed} of {len(outcomes)} runs did not finish", file=sys.stderr)
    return 1 if failed else 0


def check_dry_run_flags(args: argparse.Namespace) -> None:
    """Flags that only shape a dry run's output are refused without one (they would be silently ignored)."""
    if args.show_config and not args.dry_run:
        raise launch.UsageError("--show-config goes with --dry-run: it prints the plan, it runs nothing")
    if args.estimate and not args.dry_run:
        raise launch.UsageError("--estimate goes with --dry-run: it prices the plan, it runs nothing")
    if args.estimate and args.show_config:
        raise launch.UsageError("--estimate and --show-config: choose one")
    if args.here and not args.estimate:
        raise launch.UsageError("--here goes with --dry-run --estimate: it times the plan's steps on this machine")
    if args.here and (args.gpu is not None or args.gpus is not None):
        raise launch.UsageError("--here times the plan on this machine: leave out --gpu and --gpus")
    for flag, value in (("--gpu", args.gpu), ("--gpus", args.gpus)):
        if value is not None and not args.estimate:
            raise launch.UsageError(f"{flag} goes with --dry-run --estimate: it is the hardware the plan is priced on")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["cfg_search"]:
        return cfg_search.main(argv[1:])
    args = parse_args(argv)
    logs.configure(args.verbosity)
    try:
        get_profile(args.profile)
        check_executor_name(args.executor)
        if args.list:
            return cmd_list(args)
        load_catalog()
        specs = launch.plan_study(
            args.study, args.profile, args.data, args.overrides, args.seeds, args.weights_dir, args.only, args.sweeps
        )
        ctx = launch.run_context(args.runs_dir, args.tracking_uri, args.weights_dir, args.substitutes, args.device)
        check_dry_run_flags(args)
        if args.dry_run:
            return cmd_dry_run(args, specs, ctx)
        if args.status:
            return cmd_status(args, specs, ctx)
        return cmd_run(args, specs, ctx)
    except launch.INPUT_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())

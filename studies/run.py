"""Run one of the paper's studies: plan its runs, dispatch them, track every number in MLflow.

    python studies/run.py --list                          the studies, their run counts, what they reproduce
    python studies/run.py scaling_1d_vs_2d --dry-run      the plan: hashes, factors, parameter counts, what is done
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
profiles plan one seed per point by default (the tiny six-run study fits 20 minutes on two cores; two seeds do not).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gigatok import launch
from gigatok.config import get_profile
from gigatok.dispatch import check_executor_name
from gigatok.pipeline import RunContext, RunSpec
from gigatok.study import SEED_FACTOR, get_study

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="studies/run.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("study", nargs="?", help="study name (see --list)")
    p.add_argument("--list", action="store_true", help="list the studies and exit")
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit; nothing is written")
    p.add_argument("--json", action="store_true", help="with --list, --dry-run or --status: machine-readable output")
    p.add_argument("--status", action="store_true", help="show each run's state from MLflow and Slurm and exit")
    p.add_argument("--profile", default="tiny", help="tiny (CPU, built-in data; default) or paper (Table 9, ImageNet)")
    p.add_argument("--executor", default="auto", help="auto (slurm if sbatch exists, else local), slurm, local, debug")
    p.add_argument(
        "--data",
        default=None,
        help="image folder with train/ and val/ class folders: ImageNet at the "
        "paper profile; at tiny, your images in place of the built-in dataset",
    )
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    p.add_argument("--runs-dir", default="runs", help="stage outputs and job logs (default ./runs)")
    p.add_argument("--weights-dir", default=None, help="pretrained files (default $GIGATOK_WEIGHTS_DIR)")
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
    return p.parse_args(argv)


def add_seeds_option(p: argparse.ArgumentParser) -> None:
    # Read as text and checked by parse_seeds, so a bad value is a one-line error like every other (also in --dry-run).
    p.add_argument(
        "--seeds",
        default=None,
        metavar="N",
        help="replicate every run over seeds 0..N-1 (default: the profile's seeds, 1 at tiny and paper)",
    )


def add_substitute_and_device_options(p: argparse.ArgumentParser) -> None:
    """What every command that runs stages takes: whether stand-ins may replace missing networks, and the device."""
    subs = p.add_mutually_exclusive_group()
    subs.add_argument(
        "--allow-substitutes",
        dest="substitutes",
        action="store_true",
        default=False,
        help="let random stand-ins replace missing pretrained networks (tests and smoke runs; every "
        "affected run is tagged gigatok.substitutes)",
    )
    subs.add_argument(
        "--no-substitutes",
        dest="substitutes",
        action="store_false",
        help="refuse substitutes (the default at every profile)",
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def add_slurm_options(p: argparse.ArgumentParser) -> None:
    slurm = p.add_argument_group("Slurm (flags override --cluster-config)")
    slurm.add_argument("--cluster-config", default=None, help="TOML file with the keys below ([slurm] table)")
    for name in ("partition", "account", "qos", "constraint"):
        slurm.add_argument(f"--{name}")
    slurm.add_argument("--nodes", type=int)
    slurm.add_argument("--gpus-per-node", type=int, help="one DDP process per GPU (default 1; 0 at tiny)")
    slurm.add_argument("--cpus-per-task", type=int)
    slurm.add_argument("--mem-gb", type=int)
    slurm.add_argument("--time-min", type=int, help="time limit per job, minutes")
    slurm.add_argument("--array-parallelism", type=int, help="at most this many jobs of the array run at once")
    slurm.add_argument("--slurm-extra", action="append", metavar="KEY=VALUE", help="any other sbatch option (repeat)")


# ----------------------------------------------------------------------------------------------------------
# Commands: the work is gigatok.launch's; here are the flags and what is printed
# ----------------------------------------------------------------------------------------------------------


def load_catalog() -> None:
    import studies.catalog  # noqa: F401  (registers the studies)


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
    tracked, problem = launch.peek_tracked(ctx.tracking_uri, args.study, args.profile)
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
    return 0


def announce(args: argparse.Namespace, executor: str, ctx: RunContext, n_run: int, n_done: int) -> None:
    profile = get_profile(args.profile)
    print(
        f"study {args.study} ({get_study(args.study).reproduces}): {n_run} runs to go, {n_done} already "
        f"finished; profile {args.profile}, executor {executor}, tracking {ctx.tracking_uri}"
    )
    if executor == "slurm" and ctx.tracking_uri.startswith("sqlite:"):
        print(
            "  tracking in a SQLite file: fine for a few jobs on one machine; for job arrays on a cluster start a "
            "server (scripts/mlflow-server up) and pass --tracking-uri"
        )
    if args.profile == "tiny":
        print(
            f"  tiny profile: {profile.image_size}px images, {profile.num_tokens} tokens, CPU-sized models on the "
            "built-in dataset; numbers show the pipeline and trends, not the paper's values."
        )
        print(
            f"  paper scale: python studies/run.py {args.study} --profile paper --data /path/to/imagenet "
            "--executor slurm --partition PART --gpus-per-node 8 --weights-dir /path/to/weights"
        )
    from gigatok.perceptual import vgg16_missing_reason

    if (missing := vgg16_missing_reason(ctx.weights_dir)) is not None:
        if args.profile == "tiny":
            print(
                f"  {missing}: tiny runs train without the perceptual term and report LPIPS as unavailable "
                "(tagged gigatok.perceptual; put the file there for LPIPS)"
            )
        if ctx.allow_substitutes:
            print(
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
    announce(args, study.executor, ctx, len(study.todo), len(study.finished))
    if study.executor == "local" and not args.no_wait:
        print(
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


# ----------------------------------------------------------------------------------------------------------
# cfg_search: the Optuna search of one run's CFG scale
# ----------------------------------------------------------------------------------------------------------

SEARCH_DOC = """Search the CFG scale of one trained run with Optuna (Appendix B: steps of 0.25, lowest gFID wins).

    python studies/run.py cfg_search --study scaling_1d_vs_2d --only size=S-S,kind=1d --dry-run
    python studies/run.py cfg_search --study scaling_1d_vs_2d --only size=S-S,kind=1d --range 1.0:3.0
    python studies/run.py cfg_search --only 3f2a9c --schedule step --fraction-range 0.1:0.3   (a run-hash prefix)
    python studies/run.py cfg_search --only MLFLOW_RUN_ID --dry-run     (the run's MLflow run id: 32 hex digits)
    python studies/run.py cfg_search --study system_level --only size=B-L,ar_size=B --profile paper \\
        --data /datasets/imagenet --executor slurm --workers 8 --partition gpu

The run is chosen like a study's runs (--study and --only, with the same --profile and --set as the study was run
with); its AR model must be trained. Defaults come from the run's eval.cfg_search settings, so a search started
here is the one the run's own cfg_search stage would make (system_level, ar_probe_vs_large), and either resumes
the other. Each point is scored on a small budget first; a median pruner stops points worse than the median of
those scored in full. Workers share one Optuna study (a journal file beside the AR model by default); invoking
the search again runs only what is missing, and retries failed trials. Every trial is a child MLflow run of the
study's run; the run gets cfg_best_scale and cfg_best_gfid.
"""


def parse_search_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="studies/run.py cfg_search", description=SEARCH_DOC, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--study", default=None, help="the run's study (without it, --only is a run hash or MLflow run id)")
    p.add_argument("--only", default=None, help="one run: size=S-S,kind=1d, a run-hash prefix, or its MLflow run id")
    p.add_argument("--dry-run", action="store_true", help="print the trials it would run and exit; nothing is written")
    p.add_argument("--json", action="store_true", help="with --dry-run: machine-readable output")
    search = p.add_argument_group("what is searched (default: the run's eval.cfg_search settings)")
    search.add_argument("--range", default=None, metavar="LO:HI", help="CFG scales searched, e.g. 1.0:3.0")
    search.add_argument("--step", type=float, default=None, help="grid step of the scale (the paper's: 0.25)")
    search.add_argument(
        "--schedule",
        choices=("constant", "step"),
        default=None,
        help="CFG schedule (default: the run's; step = the first 18%% of tokens unguided)",
    )
    search.add_argument(
        "--fraction-range",
        default=None,
        metavar="LO:HI",
        help="with --schedule step: search the unguided share of tokens too, e.g. 0.1:0.3",
    )
    search.add_argument("--fraction-step", type=float, default=None, help="grid step of the fraction")
    search.add_argument("--sampler", choices=("grid", "tpe"), default=None, help="grid (every point once) or tpe")
    search.add_argument("--trials", type=int, default=None, help="with --sampler tpe: the budget of trials")
    search.add_argument(
        "--low-samples",
        type=int,
        default=None,
        help="small budget every point is scored on first (default: eval.cfg_search.low_fraction of the full budget)",
    )
    search.add_argument(
        "--full-samples",
        type=int,
        default=None,
        help="full budget of the points that survive (default: the run's eval.gen_samples)",
    )
    search.add_argument("--pruner", choices=("median", "none"), default=None, help="stop points early (median)")
    search.add_argument(
        "--storage",
        default=None,
        help="Optuna storage: a journal file path or an RDB URL (default: $OPTUNA_STORAGE when set, else "
        "RUNS/ar-<hash>/cfg-search/optuna.journal)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes or Slurm tasks pulling trials (default: local 2 on a CPU machine or one "
        "per GPU, slurm min(8, points), debug 1)",
    )
    p.add_argument("--executor", default="auto", help="auto (slurm if sbatch exists, else local), slurm, local, debug")
    p.add_argument("--wait", action="store_true", help="slurm executor: wait for the workers and show the trials")
    p.add_argument("--profile", default="tiny", help="the profile the run was planned at (default tiny)")
    p.add_argument(
        "--data",
        default=None,
        help="image folder with train/ and val/ class folders: ImageNet at the "
        "paper profile; at tiny, your images in place of the built-in dataset",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="the overrides the study was run with (they are part of the run's hash)",
    )
    add_seeds_option(p)
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    p.add_argument("--runs-dir", default="runs", help="stage outputs and job logs (default ./runs)")
    p.add_argument("--weights-dir", default=None, help="pretrained files (default $GIGATOK_WEIGHTS_DIR)")
    add_substitute_and_device_options(p)
    add_slurm_options(p)
    return p.parse_args(argv)


def print_search_preview(preview: dict[str, Any]) -> None:
    p = preview
    print(f"CFG search of run {p['run_hash']} ({p['run']}) of study {p['study']}, profile {p['profile']}")
    print(f"  Optuna study  {p['study_name']}")
    print(f"  storage       {p['storage']} ({'exists' if p['storage_exists'] else 'new'})")
    print(f"  AR model      {'trained' if p['ar_trained'] else 'NOT TRAINED: the search would refuse to start'}")
    parent = (
        f"{p['parent_run_id']} ({p['parent_status']})"
        if p["parent_run_id"]
        else "none: run the study first (the search would refuse to start)"
    )
    print(f"  MLflow run    {parent}")
    dims = f"scale {', '.join(f'{s:g}' for s in p['scales'])}"
    if p["fractions"]:
        dims += f" x fraction {', '.join(f'{f:g}' for f in p['fractions'])}"
    sampler = "grid" if p["sampler"] == "grid" else f"TPE, {p['trials']} trials"
    print(f"  space         {p['schedule']} schedule; {sampler} over {dims}")
    low = f"{p['low_samples']} samples first, then " if p["low_samples"] else ""
    pruner = f"; {p['pruner']} pruner after {p['startup_trials']} points" if p["low_samples"] else ""
    print(f"  budget        {low}{p['full_samples']} samples (the run's gen_samples: {p['gen_samples']}){pruner}")
    for point in p["points"]:
        where = f"cfg {point['cfg_scale']:g}" + (f" fraction {point['step_fraction']:g}" if p["fractions"] else "")
        gfid = f"  gFID {point['gfid']:.4g}" if point["gfid"] is not None else ""
        print(f"    {where:26} {point['state']}{gfid}")
    done = f"; finished: {p['result']}" if p["result"] else ""
    print(f"  {p['to_run']} trials to run, {p['trials_recorded']} recorded{done}")


def print_search_summary(plan: Any, summary: dict[str, Any]) -> None:
    best = f"cfg {summary['best_scale']:g}"
    if summary.get("fractions"):
        best += f" fraction {summary['best_step_fraction']:g}"
    print(
        f"best: {best}: gFID {summary['best_gfid']:.4g} on {summary['best_gfid_samples']} samples "
        f"(trial {summary['best_trial']}); summary in {plan.result_path}"
    )
    if summary.get("best_at_edge"):
        print(
            f"warning: the best scale is at the edge of the range {summary['scales'][0]:g}:{summary['scales'][-1]:g};"
            " the minimum may lie beyond it (widen --range)"
        )


def cmd_cfg_search(args: argparse.Namespace) -> int:
    get_profile(args.profile)
    check_executor_name(args.executor)
    load_catalog()
    ctx = launch.run_context(args.runs_dir, args.tracking_uri, args.weights_dir, args.substitutes, args.device)
    spec = launch.search_target(
        args.profile, args.data, args.overrides, args.seeds, args.weights_dir, args.study, args.only, ctx.tracking_uri
    )
    plan = launch.search_plan(args, spec, ctx)
    if args.workers is not None and args.workers < 1:
        raise launch.UsageError(f"--workers {args.workers}: must be >= 1")
    if args.dry_run:
        preview = launch.search_preview(plan)
        if args.json:
            print(json.dumps(preview, indent=2))
        else:
            print_search_preview(preview)
        return 0

    # Everything that can be wrong is checked before the first write (the study, in start()).
    search = launch.SearchLaunch.prepare(
        plan, executor=args.executor, slurm_flags=args, profile=args.profile, data=args.data
    )
    recovery = search.start()
    print(f"CFG search {plan.study_name} of run {spec.hash} ({spec.label}); storage {plan.storage_location}")
    if recovery.requeued:
        print(f"  {len(recovery.requeued)} failed points queued again")
    unit = "point" if plan.search.sampler == "grid" else "trial"
    state = search.state()
    if state.complete:
        summary = search.finish()
        print(f"nothing to do: search {plan.study_name} has a result for every {unit}")
        if summary is not None:
            print_search_summary(search.plan, summary)
        return 0
    workers = search.size(args.workers, state.remaining)
    print(f"  {state.remaining} {unit}s to go; {workers} {search.executor} worker(s); job logs in {ctx.root / 'jobs'}")
    jobs = search.submit()
    if search.executor == "slurm":
        print(f"submitted {len(jobs)} Slurm workers: " + " ".join(j.job_id for j in jobs))
        if not args.wait:
            print("the last worker to end writes the result; follow with the same command and --dry-run")
            return 0
    try:
        errors = search.follow()
    except launch.Interrupted:
        print("interrupted: the search resumes on the next invocation", file=sys.stderr)
        return EXIT_INTERRUPTED
    for job, error in zip(jobs, errors, strict=True):  # a worker that could not work at all (a trial's error is
        if error is not None:  # recorded on the trial)
            print(f"worker {job.job_id} failed: {str(error).strip().splitlines()[-1][:300]}", file=sys.stderr)
    summary = search.finish()
    if summary is None:
        print(search.incomplete_reason(), file=sys.stderr)
        return 1
    print_search_summary(search.plan, summary)
    return 0


def search_main(argv: list[str]) -> int:
    args = parse_search_args(argv)
    try:
        return cmd_cfg_search(args)
    except launch.INPUT_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["cfg_search"]:
        return search_main(argv[1:])
    args = parse_args(argv)
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

"""``python studies/run.py cfg_search ...`` (also ``gigatok cfg-search``): the Optuna search of one run's CFG
scale. The flags and what is printed; the work is :mod:`gigatok.launch`'s."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from gigatok import launch, logs
from gigatok.config import get_profile
from gigatok.dispatch import check_executor_name
from studies.options import (
    EXIT_BAD_INPUT,
    EXIT_INTERRUPTED,
    add_place_options,
    add_seeds_option,
    add_slurm_options,
    add_substitute_and_device_options,
    add_verbosity_options,
    load_catalog,
)

log = logs.logger("studies.cfg_search")

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
    p.add_argument("--wait", action="store_true", help="slurm executor: wait for the workers and show the trials")
    p.add_argument("--profile", default="tiny", help="the profile the run was planned at (default tiny)")
    add_place_options(p)
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="the overrides the study was run with (they are part of the run's hash)",
    )
    add_seeds_option(p)
    add_substitute_and_device_options(p)
    add_slurm_options(p)
    add_verbosity_options(p)
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
        log.info(f"  {len(recovery.requeued)} failed points queued again")
    unit = "point" if plan.search.sampler == "grid" else "trial"
    state = search.state()
    if state.complete:
        summary = search.finish()
        print(f"nothing to do: search {plan.study_name} has a result for every {unit}")
        if summary is not None:
            print_search_summary(search.plan, summary)
        return 0
    workers = search.size(args.workers, state.remaining)
    jobs_dir = ctx.root / "jobs"
    log.info(f"  {state.remaining} {unit}s to go; {workers} {search.executor} worker(s); job logs in {jobs_dir}")
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


def main(argv: list[str]) -> int:
    args = parse_search_args(argv)
    logs.configure(args.verbosity)
    try:
        return cmd_cfg_search(args)
    except launch.INPUT_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT

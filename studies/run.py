"""Run one of the paper's studies: plan its runs, dispatch them, track every number in MLflow.

    python studies/run.py --list                          the studies, their run counts, what they reproduce
    python studies/run.py scaling_1d_vs_2d --dry-run      the plan: hashes, factors, parameter counts, what is done
    python studies/run.py scaling_1d_vs_2d                run it (tiny profile, locally, ./mlflow.db)
    python studies/run.py scaling_1d_vs_2d --status       each run's state from MLflow (and Slurm)
    python studies/run.py scaling_1d_vs_2d --profile paper --data /datasets/imagenet --executor slurm \\
        --partition gpu --gpus-per-node 8 --time-min 2880

Re-running a study skips finished runs (one MLflow query for the whole study) and resumes unfinished ones from
their checkpoints. ``--set key=value`` changes any config field (``tokenizer.train.max_steps=20``,
``ar.train.epochs=1``, ``eval.gen_samples=500``); a changed config is a different run with a different hash.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from gigatok.config import ConfigError, get_profile
from gigatok.pipeline import RunContext, RunSpec, completed_stages
from gigatok.study import STUDIES, Planner, check_override_keys, get_study, parse_override

EXIT_BAD_INPUT = 2


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit code 2."""


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
    p.add_argument("--data", default=None, help="ImageNet folder with train/ and val/ (paper profile)")
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    p.add_argument("--runs-dir", default="runs", help="stage outputs and job logs (default ./runs)")
    p.add_argument("--weights-dir", default=None, help="pretrained files (default $GIGATOK_WEIGHTS_DIR)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. tokenizer.train.max_steps=20 (repeatable)")
    p.add_argument("--only", default=None,
                   help="comma-separated run hashes (or prefixes) or factor=value filters, e.g. size=S-S,kind=1d")
    subs = p.add_mutually_exclusive_group()
    subs.add_argument("--allow-substitutes", dest="substitutes", action="store_true", default=None,
                      help="let random stand-ins replace missing pretrained networks (default at tiny profile)")
    subs.add_argument("--no-substitutes", dest="substitutes", action="store_false",
                      help="refuse substitutes (default at paper profile)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-wait", action="store_true", help="local executor: submit and return (default: wait)")
    p.add_argument("--wait", action="store_true", help="slurm executor: wait for the jobs and show progress")
    p.add_argument("--local-parallel", type=int, default=None,
                   help="local executor: worker processes (default: one per GPU, or 2 sharing the CPU cores)")
    p.add_argument("--local-tasks", type=int, default=1, help="local executor: DDP processes per run (default 1)")
    slurm = p.add_argument_group("Slurm (flags override --cluster-config)")
    slurm.add_argument("--cluster-config", default=None, help="TOML file with the keys below ([slurm] table)")
    slurm.add_argument("--partition")
    slurm.add_argument("--account")
    slurm.add_argument("--qos")
    slurm.add_argument("--constraint")
    slurm.add_argument("--nodes", type=int)
    slurm.add_argument("--gpus-per-node", type=int, help="one DDP process per GPU")
    slurm.add_argument("--cpus-per-task", type=int)
    slurm.add_argument("--mem-gb", type=int)
    slurm.add_argument("--time-min", type=int, help="time limit per job, minutes")
    slurm.add_argument("--array-parallelism", type=int, help="at most this many jobs of the array run at once")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------------------
# Planning
# ----------------------------------------------------------------------------------------------------------


def load_catalog() -> None:
    import studies.catalog  # noqa: F401  (registers the studies)


def select(specs: list[RunSpec], only: str | None) -> list[RunSpec]:
    if not only:
        return specs
    filters = [f.strip() for f in only.split(",") if f.strip()]
    by_factor: dict[str, set[str]] = {}
    prefixes = []
    for f in filters:
        if "=" in f:
            key, value = f.split("=", 1)
            by_factor.setdefault(key, set()).add(value)
        else:
            prefixes.append(f)
    known_factors = {k for s in specs for k, _ in s.factors}
    unknown = sorted(set(by_factor) - known_factors)
    if unknown:
        raise UsageError(f"--only: unknown factor {unknown[0]!r}; this study varies {sorted(known_factors)}")

    def keep(spec: RunSpec) -> bool:
        factors = {k: str(v) for k, v in spec.factors}
        if any(factors.get(k) not in values for k, values in by_factor.items()):
            return False
        return not prefixes or any(spec.hash.startswith(p) for p in prefixes)

    chosen = [s for s in specs if keep(s)]
    if not chosen:
        raise UsageError(f"--only {only!r} matches none of the {len(specs)} planned runs")
    return chosen


def plan(args: argparse.Namespace) -> list[RunSpec]:
    load_catalog()
    if not args.study:
        raise UsageError("name a study (see --list)")
    try:
        study = get_study(args.study)
    except KeyError as exc:
        raise UsageError(exc.args[0]) from None
    overrides = tuple(parse_override(o) for o in args.overrides)
    check_override_keys(overrides, args.profile)
    if args.data is not None and not Path(args.data).is_dir():
        raise UsageError(f"--data {args.data}: no such directory")
    data_root = str(Path(args.data).resolve()) if args.data else None
    return select(study.plan(Planner(args.profile, data_root, overrides)), args.only)


_param_cache: dict[str, int] = {}


def parameter_count(kind: str, cfg: Any) -> int:
    """Parameters of the tokenizer (without discriminator) or AR model, built on the meta device."""
    key = f"{kind}-{cfg.hash()}"
    if key not in _param_cache:
        if kind == "tokenizer":
            from gigatok.models.tokenizer import build_tokenizer

            _param_cache[key] = build_tokenizer(cfg.tokenizer, "meta").parameter_counts()["total"]
        else:
            from gigatok.models.ar import build_ar_model

            model = build_ar_model(cfg.model, "meta")
            _param_cache[key] = sum(p.numel() for p in model.parameters())
    return _param_cache[key]


def plan_rows(specs: list[RunSpec], ctx: RunContext, tracked: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for spec in specs:
        record = tracked.get(spec.hash)
        rows.append({
            "hash": spec.hash,
            "factors": spec.factor_dict,
            "tokenizer": spec.tokenizer.tokenizer.name,
            "kind": spec.tokenizer.tokenizer.kind,
            "tokenizer_hash": spec.tokenizer.hash(),
            "tokenizer_params": parameter_count("tokenizer", spec.tokenizer),
            "ar_size": spec.ar.size if spec.ar else None,
            "ar_hash": spec.ar.hash() if spec.ar else None,
            "ar_params": parameter_count("ar", spec.ar) if spec.ar else None,
            "stages": spec.ordered_stages(),
            "stages_done": completed_stages(spec, ctx),
            "mlflow_status": record.status if record else None,
            "mlflow_run_id": record.run_id if record else None,
        })
    return rows


def _millions(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f}M"


def print_plan(study: str, profile: str, rows: list[dict[str, Any]]) -> None:
    print(f"study {study} at profile {profile}: {len(rows)} runs ({get_study(study).reproduces})")
    header = f"{'hash':12}  {'factors':34} {'tok params':>10} {'AR params':>9}  {'done':18} mlflow"
    print(header)
    for r in rows:
        factors = " ".join(f"{k}={v}" for k, v in r["factors"].items())
        done = f"{len(r['stages_done'])}/{len(r['stages'])} stages"
        print(f"{r['hash']:12}  {factors:34} {_millions(r['tokenizer_params']):>10} {_millions(r['ar_params']):>9}  "
              f"{done:18} {r['mlflow_status'] or '-'}")


# ----------------------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    load_catalog()
    rows = []
    for name, s in STUDIES.items():
        count = len(s.plan(Planner(args.profile)))
        rows.append({"study": name, "runs": count, "reproduces": s.reproduces, "about": s.about})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        print(f"{r['study']:18} {r['runs']:3} runs  {r['reproduces']:16} {r['about']}")
    return 0


def _tracked_if_store_exists(uri: str) -> tuple[Any, str | None]:
    """A dry run reads the store only if there is one: it must not create a database."""
    from gigatok.tracking import TrackingError, connect

    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return None, None
    try:
        client = connect(uri)
    except TrackingError as exc:
        return None, str(exc)
    return client, None


def tracked_runs(client: Any, study: str, profile: str) -> tuple[str | None, dict[str, Any]]:
    from gigatok.tracking import experiment_name, study_runs

    experiment = client.get_experiment_by_name(experiment_name(study, profile))
    if experiment is None:
        return None, {}
    return experiment.experiment_id, study_runs(client, experiment.experiment_id)


def cmd_dry_run(args: argparse.Namespace, specs: list[RunSpec], ctx: RunContext) -> int:
    client, problem = _tracked_if_store_exists(ctx.tracking_uri)
    tracked = tracked_runs(client, args.study, args.profile)[1] if client else {}
    rows = plan_rows(specs, ctx, tracked)
    if args.json:
        print(json.dumps({"study": args.study, "profile": args.profile, "tracking_uri": ctx.tracking_uri,
                          "runs": rows}, indent=2))
    else:
        print_plan(args.study, args.profile, rows)
        if problem:
            print(f"(MLflow status not shown: {problem})")
    return 0


def cmd_status(args: argparse.Namespace, specs: list[RunSpec], ctx: RunContext) -> int:
    from gigatok.tracking import connect

    client = connect(ctx.tracking_uri)
    _, tracked = tracked_runs(client, args.study, args.profile)
    rows = []
    for spec in specs:
        record = tracked.get(spec.hash)
        tags = record.tags if record else {}
        rows.append({
            "hash": spec.hash, "label": spec.label, "status": record.status if record else "NOT SUBMITTED",
            "stage": tags.get("gigatok.stage"), "error": tags.get("gigatok.error"),
            "slurm_job_id": tags.get("gigatok.slurm_job_id"),
            "slurm_state": slurm_state(tags.get("gigatok.slurm_job_id")),
            "metrics": record.metrics if record else {},
        })
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


def slurm_state(job_id: str | None) -> str | None:
    """The job's state from sacct, or None where there is no Slurm or no such job."""
    import shutil
    import subprocess

    if not job_id or shutil.which("sacct") is None:
        return None
    try:
        out = subprocess.run(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "State"], capture_output=True,
                             text=True, timeout=20).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return out[-1] if out else None


def announce(args: argparse.Namespace, executor: str, ctx: RunContext, n_run: int, n_done: int) -> None:
    profile = get_profile(args.profile)
    print(f"study {args.study} ({get_study(args.study).reproduces}): {n_run} runs to go, {n_done} already "
          f"finished; profile {args.profile}, executor {executor}, tracking {ctx.tracking_uri}")
    if args.profile == "tiny":
        print(f"  tiny profile: {profile.image_size}px images, {profile.num_tokens} tokens, CPU-sized models on the "
              "built-in dataset; numbers show the pipeline and trends, not the paper's values.")
        print(f"  paper scale: python studies/run.py {args.study} --profile paper --data /path/to/imagenet "
              "--executor slurm --partition PART --gpus-per-node 8 --weights-dir /path/to/weights")
    if ctx.allow_substitutes:
        from gigatok.weights import find_weight

        missing = [n for n in ("vgg16",) if find_weight(n, ctx.weights_dir) is None]
        if missing:
            print(f"  missing pretrained files {missing}: random SUBSTITUTE networks stand in, and every affected "
                  "run is tagged gigatok.substitutes (pass --no-substitutes to refuse)")


def cmd_run(args: argparse.Namespace, specs: list[RunSpec], ctx: RunContext) -> int:
    from gigatok.dispatch import (
        RunJob,
        SlurmSettings,
        default_local_workers,
        group_by_tokenizer,
        make_executor,
        resolve_executor,
        spread,
    )
    from gigatok.tracking import (
        TAG,
        connect,
        ensure_experiment,
        experiment_name,
        git_commit,
        log_params,
        study_runs,
    )

    executor_name = resolve_executor(args.executor)
    if args.local_parallel is not None and args.local_parallel < 1:
        raise UsageError(f"--local-parallel {args.local_parallel}: must be >= 1")
    local_workers, threads = default_local_workers()
    if args.local_parallel is not None:
        local_workers, threads = args.local_parallel, max(1, (os.cpu_count() or 1) // args.local_parallel)
    if executor_name == "local":
        ctx = dataclasses.replace(ctx, threads=threads)
    if executor_name == "debug":  # in this process: the training loops' own progress bars are the display
        ctx = dataclasses.replace(ctx, progress=True)
    slurm = None
    if executor_name == "slurm":
        flags = {k: getattr(args, k) for k in ("partition", "account", "qos", "constraint", "nodes", "gpus_per_node",
                                                "cpus_per_task", "mem_gb", "time_min", "array_parallelism")}
        if args.cluster_config:
            slurm = SlurmSettings.from_file(args.cluster_config, **flags)
        else:
            slurm = SlurmSettings(**{k: v for k, v in flags.items() if v is not None})
    if args.profile == "paper" and args.data is None and not os.environ.get("GIGATOK_DATA_ROOT"):
        raise UsageError("the paper profile trains on ImageNet: pass --data /path/to/imagenet "
                         "(or set GIGATOK_DATA_ROOT)")

    client = connect(ctx.tracking_uri)  # fails fast, before anything is written
    study = get_study(args.study)
    experiment_id = ensure_experiment(
        client, experiment_name(args.study, args.profile), f"{study.reproduces}: {study.about}",
        {TAG + "study": args.study, TAG + "profile": args.profile},
    )
    tracked = study_runs(client, experiment_id)  # the one query that decides what is left to do
    finished = [s for s in specs if tracked.get(s.hash) and tracked[s.hash].status == "FINISHED"]
    todo = [s for s in specs if s not in finished]
    announce(args, executor_name, ctx, len(todo), len(finished))
    if executor_name == "local" and not args.no_wait:
        print(f"  {min(local_workers, len(group_by_tokenizer(todo)))} local worker process(es), {threads} thread(s) "
              f"each; job logs in {ctx.root / 'jobs'}")
    if not todo:
        print("nothing to do: every run of the plan is FINISHED in MLflow")
        return 0

    commit = git_commit()
    run_ids: dict[str, str] = {}
    created: list[str] = []
    for spec in todo:
        record = tracked.get(spec.hash)
        if record is not None:  # an unfinished run resumes under its own MLflow run
            run_ids[spec.hash] = record.run_id
            client.update_run(record.run_id, status="SCHEDULED")
            continue
        tags = {
            TAG + "study": args.study, TAG + "run_hash": spec.hash, TAG + "profile": args.profile,
            TAG + "tokenizer_hash": spec.tokenizer.hash(), TAG + "git_commit": commit,
            TAG + "factors": json.dumps(spec.factor_dict), TAG + "executor": executor_name,
            **({TAG + "ar_hash": spec.ar.hash()} if spec.ar else {}),
            **{f"{TAG}factor.{k}": str(v) for k, v in spec.factors},
        }
        run = client.create_run(experiment_id, run_name=spec.label, tags=tags)
        created.append(run.info.run_id)
        run_ids[spec.hash] = run.info.run_id
        log_params(client, run.info.run_id, spec.params())
        client.update_run(run.info.run_id, status="SCHEDULED")

    groups = group_by_tokenizer(todo)
    executor = make_executor(executor_name, ctx.root / "jobs", slurm, local_tasks=args.local_tasks)
    jobs = []
    try:
        if executor_name == "slurm":
            with executor.batch():
                for group in groups:
                    jobs.append((group, executor.submit(RunJob(group, ctx, [run_ids[s.hash] for s in group]))))
            for group, job in jobs:
                for spec in group:
                    client.set_tag(run_ids[spec.hash], TAG + "slurm_job_id", job.job_id)
            print(f"submitted {len(jobs)} Slurm jobs: " + " ".join(j.job_id for _, j in jobs))
            if not args.wait:
                print(f"follow with: python studies/run.py {args.study} --profile {args.profile} --status")
                return 0
            return wait_for(client, experiment_id, todo, jobs, ctx, parallel=len(jobs))
        if executor_name == "debug":
            for group in groups:
                job = executor.submit(RunJob(group, ctx, [run_ids[s.hash] for s in group]))
                jobs.append((group, job))
                try:
                    job.result()
                except Exception as exc:
                    print(f"error: {exc}".splitlines()[0], file=sys.stderr)
            return report(client, experiment_id, todo)
        # local: the groups spread over worker processes, each running its runs one after the other
        workers = spread(groups, local_workers)
        return wait_for(client, experiment_id, todo, workers, ctx, parallel=len(workers),
                        submit=lambda g: executor.submit(RunJob(g, ctx, [run_ids[s.hash] for s in g])),
                        no_wait=args.no_wait)
    except BaseException:
        # Submission itself failed: runs no job will ever pick up must not linger as SCHEDULED.
        if not jobs:
            for run_id in created:
                client.delete_run(run_id)
        raise


def _training_step(spec: RunSpec, ctx: RunContext, stage: str | None) -> str:
    """'step N' of the stage being trained, from the tail of its metrics.jsonl (cheap to read)."""
    if stage == "tokenizer":
        path = ctx.tokenizer_dir(spec.tokenizer) / "metrics.jsonl"
    elif stage == "ar" and spec.ar is not None:
        path = ctx.ar_dir(spec.ar) / "metrics.jsonl"
    else:
        return ""
    try:
        last = path.read_text().strip().splitlines()[-1]
        return f" step {json.loads(last)['step']}"
    except (OSError, IndexError, ValueError, KeyError):
        return ""


def wait_for(client: Any, experiment_id: str, specs: list[RunSpec], work: list[Any], ctx: RunContext,
             parallel: int, submit: Any = None, no_wait: bool = False) -> int:
    """Show progress until every job has ended; with ``submit``, feed it groups ``parallel`` at a time."""
    pending = list(work) if submit is not None else []
    running: list[tuple[Any, Any]] = [] if submit is not None else list(work)
    if no_wait:
        for group in pending:
            job = submit(group)
            print(f"started local job {job.job_id} for {len(group)} runs (logs in {ctx.root / 'jobs'})")
        return 0
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)  # a terminated study stops its local jobs as Ctrl-C does
    try:
        _follow(client, experiment_id, specs, ctx, parallel, submit, pending, running)
    except KeyboardInterrupt:
        # Local jobs are this command's children: stop them too. Their runs resume on the next invocation.
        for _group, job in running:
            with contextlib.suppress(Exception):
                job.cancel(check=False)
        print("interrupted: the runs resume from their checkpoints on the next invocation", file=sys.stderr)
        return 130
    return report(client, experiment_id, specs)


def _follow(client: Any, experiment_id: str, specs: list[RunSpec], ctx: RunContext, parallel: int, submit: Any,
            pending: list[Any], running: list[tuple[Any, Any]]) -> None:
    from tqdm.auto import tqdm

    from gigatok.tracking import study_runs

    terminal = {"FINISHED", "FAILED", "KILLED"}
    with tqdm(total=len(specs), unit="run", desc="study", dynamic_ncols=True) as bar:
        while True:
            running[:] = [(g, j) for g, j in running if not j.done()]
            while pending and len(running) < parallel:
                group = pending.pop(0)
                running.append((group, submit(group)))
            tracked = study_runs(client, experiment_id)  # one query per poll, whatever the study's size
            states = {s.hash: tracked[s.hash] for s in specs if s.hash in tracked}
            done = sum(1 for r in states.values() if r.status in terminal)
            bar.n = done
            active = [s for s in specs if s.hash in states and states[s.hash].status == "RUNNING"]
            if active:
                stages = {s.hash: states[s.hash].tags.get("gigatok.stage") for s in active}
                bar.set_postfix_str("; ".join(f"{s.label}: {stages[s.hash]}{_training_step(s, ctx, stages[s.hash])}"
                                              for s in active), refresh=False)
            bar.refresh()
            if not running and not pending:
                break
            time.sleep(2.0)


def report(client: Any, experiment_id: str, specs: list[RunSpec]) -> int:
    """One line per run: status and headline metrics; exit status 1 if any run did not finish."""
    from gigatok.tracking import study_runs

    tracked = study_runs(client, experiment_id)
    failed = 0
    keys = ("rfid", "lpips", "gfid", "ar_val_loss", "ar_probe_acc", "decode_fraction")
    for spec in specs:
        record = tracked.get(spec.hash)
        status = record.status if record else "MISSING"
        values = " ".join(f"{k}={record.metrics[k]:.4g}" for k in keys if record and k in record.metrics)
        print(f"{spec.hash}  {spec.label:34} {status:9} {values}")
        if status != "FINISHED":
            failed += 1
            if record and record.tags.get("gigatok.error"):
                print(f"    error: {record.tags['gigatok.error']}")
    if failed:
        print(f"{failed} of {len(specs)} runs did not finish", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from gigatok.dispatch import DispatchError
    from gigatok.tracking import TrackingError, resolve_tracking_uri

    try:
        get_profile(args.profile)
        if args.list:
            return cmd_list(args)
        specs = plan(args)
        allow = args.substitutes if args.substitutes is not None else args.profile == "tiny"
        ctx = RunContext(
            runs_dir=str(Path(args.runs_dir).resolve()), tracking_uri=resolve_tracking_uri(args.tracking_uri),
            weights_dir=args.weights_dir, allow_substitutes=allow, device=args.device,
            progress=False,  # job output goes to the job's log file; the study shows its own progress
        )
        if args.dry_run:
            return cmd_dry_run(args, specs, ctx)
        if args.status:
            return cmd_status(args, specs, ctx)
        return cmd_run(args, specs, ctx)
    except (UsageError, ConfigError, DispatchError, TrackingError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())

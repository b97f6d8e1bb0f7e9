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
import contextlib
import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from gigatok.config import ConfigError, TokenizerRunConfig, get_profile
from gigatok.pipeline import RunContext, RunSpec, ar_dir_of, completed_stages
from gigatok.study import SEED_FACTOR, STUDIES, Planner, check_override_keys, get_study, parse_override, parse_seeds

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
    p.add_argument("--data", default=None, help="image folder with train/ and val/ class folders: ImageNet at the "
                   "paper profile; at tiny, your images in place of the built-in dataset")
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    p.add_argument("--runs-dir", default="runs", help="stage outputs and job logs (default ./runs)")
    p.add_argument("--weights-dir", default=None, help="pretrained files (default $GIGATOK_WEIGHTS_DIR)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. tokenizer.train.max_steps=20 (repeatable)")
    p.add_argument("--only", default=None,
                   help="comma-separated run hashes (or prefixes) or factor=value filters, e.g. size=S-S,seed=0")
    add_seeds_option(p)
    add_substitute_and_device_options(p)
    p.add_argument("--no-wait", action="store_true", help="local executor: submit and return (default: wait)")
    p.add_argument("--wait", action="store_true", help="slurm executor: wait for the jobs and show progress")
    p.add_argument("--local-parallel", type=int, default=None,
                   help="local executor: worker processes (default: one per GPU, or 2 sharing the CPU cores)")
    p.add_argument("--local-tasks", type=int, default=1, help="local executor: DDP processes per run (default 1)")
    add_slurm_options(p)
    return p.parse_args(argv)


def add_seeds_option(p: argparse.ArgumentParser) -> None:
    # Read as text and checked by parse_seeds, so a bad value is a one-line error like every other (also in --dry-run).
    p.add_argument("--seeds", default=None, metavar="N",
                   help="replicate every run over seeds 0..N-1 (default: the profile's seeds, 1 at tiny and paper)")


def add_substitute_and_device_options(p: argparse.ArgumentParser) -> None:
    """What every command that runs stages takes: whether stand-ins may replace missing networks, and the device."""
    subs = p.add_mutually_exclusive_group()
    subs.add_argument("--allow-substitutes", dest="substitutes", action="store_true", default=False,
                      help="let random stand-ins replace missing pretrained networks (tests and smoke runs; every "
                      "affected run is tagged gigatok.substitutes)")
    subs.add_argument("--no-substitutes", dest="substitutes", action="store_false",
                      help="refuse substitutes (the default at every profile)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def add_slurm_options(p: argparse.ArgumentParser) -> None:
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
    unknown = sorted(set(by_factor) - known_factors - {SEED_FACTOR})
    if unknown:
        raise UsageError(f"--only: unknown factor {unknown[0]!r}; this study varies {sorted(known_factors)}")

    def keep(spec: RunSpec) -> bool:
        # seed=N picks replicas whether or not the plan varies the seed (one seed: every run is seed 0)
        factors = {SEED_FACTOR: str(spec.tokenizer.train.seed), **{k: str(v) for k, v in spec.factors}}
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
    seeds = parse_seeds(args.seeds)
    if seeds is not None and seeds > 1 and not study.seeded:
        raise UsageError(f"--seeds {seeds}: study {study.name} trains nothing, so every seed would repeat the same run")
    planner = Planner(args.profile, data_root, overrides, seeds=seeds, weights_dir=args.weights_dir)
    return select(study.plan(planner), args.only)


_param_cache: dict[Any, int] = {}


def parameter_count(kind: str, cfg: Any) -> int:
    """Parameters of the tokenizer (without discriminator) or AR model, built on the meta device."""
    # Keyed by the architecture, not the run: a sweep over seeds or schedules builds each model shape once (a
    # meta-device build costs 0.1-1 s; a 1,000-run sweep has a few dozen shapes).
    key = (kind, cfg.tokenizer if kind == "tokenizer" else cfg.model)
    if key not in _param_cache:
        if kind == "tokenizer":
            from gigatok.models.tokenizer import build_tokenizer

            _param_cache[key] = build_tokenizer(cfg.tokenizer, "meta").parameter_counts()["total"]
        else:
            from gigatok.models.ar import ar_parameter_count

            _param_cache[key] = ar_parameter_count(cfg.model)
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
    seeds = len({r["factors"].get(SEED_FACTOR, 0) for r in rows})
    each = f", {seeds} seeds per point" if seeds > 1 else ""
    print(f"study {study} at profile {profile}: {len(rows)} runs ({get_study(study).reproduces}){each}")
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
    planner = Planner(args.profile, seeds=parse_seeds(args.seeds))
    for name, s in STUDIES.items():
        count = len(s.plan(planner))
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
    if executor == "slurm" and ctx.tracking_uri.startswith("sqlite:"):
        print("  tracking in a SQLite file: fine for a few jobs on one machine; for job arrays on a cluster start a "
              "server (scripts/mlflow-server up) and pass --tracking-uri")
    if args.profile == "tiny":
        print(f"  tiny profile: {profile.image_size}px images, {profile.num_tokens} tokens, CPU-sized models on the "
              "built-in dataset; numbers show the pipeline and trends, not the paper's values.")
        print(f"  paper scale: python studies/run.py {args.study} --profile paper --data /path/to/imagenet "
              "--executor slurm --partition PART --gpus-per-node 8 --weights-dir /path/to/weights")
    from gigatok.perceptual import vgg16_missing_reason

    if (missing := vgg16_missing_reason(ctx.weights_dir)) is not None:
        if args.profile == "tiny":
            print(f"  {missing}: tiny runs train without the perceptual term and report LPIPS as unavailable "
                  "(tagged gigatok.perceptual; put the file there for LPIPS)")
        if ctx.allow_substitutes:
            print("  --allow-substitutes: a random SUBSTITUTE VGG16 stands in wherever LPIPS is asked for, and every "
                  "affected run is tagged gigatok.substitutes")


def pretrained_files_needed(cfg: TokenizerRunConfig) -> list[tuple[str, ...]]:
    """The registry files training ``cfg``'s tokenizer loads, each as interchangeable alternatives."""
    from gigatok.models.discriminator import DINO_WEIGHTS
    from gigatok.perceptual import VGG16
    from gigatok.semantic_encoders import ENCODER_SPECS

    needed: list[tuple[str, ...]] = []
    if cfg.loss.perceptual == "lpips" and cfg.loss.perceptual_weight > 0:
        needed.append((VGG16,))
    if cfg.tokenizer.semantic.enabled:
        needed.append(tuple(ENCODER_SPECS[cfg.tokenizer.semantic.encoder].weights))
    if cfg.loss.discriminator == "dino":
        needed.append((DINO_WEIGHTS,))
    return needed


def check_pretrained_inputs(specs: list[RunSpec], ctx: RunContext) -> None:
    """Refuse, before MLflow is touched, tokenizers to train whose pretrained networks are missing (unless random
    stand-ins are allowed): otherwise the job would fail at its first step, hours later on a busy cluster."""
    from gigatok.weights import find_weight, get_weight_file, weights_folder

    if ctx.allow_substitutes:
        return
    for spec in specs:
        cfg = spec.tokenizer
        if cfg.source or (ctx.tokenizer_dir(cfg) / "summary.json").is_file():
            continue  # converted, or trained already
        for names in pretrained_files_needed(cfg):
            if all(find_weight(name, ctx.weights_dir) is None for name in names):
                entry = get_weight_file(names[0])
                raise UsageError(f"pretrained file '{entry.name}' ({entry.filename}) not found in "
                                 f"{weights_folder(ctx.weights_dir)}, needed to train {spec.label}: put it there "
                                 f"(from {entry.source}) or pass --allow-substitutes for a labelled random stand-in")


def check_converted_inputs(specs: list[RunSpec], ctx: RunContext) -> None:
    """Refuse, before MLflow is touched, runs of released checkpoints whose files are neither converted nor there."""
    from gigatok.convert.released import missing_inputs

    stages = []
    for spec in specs:
        stages.append((spec.tokenizer, ctx.tokenizer_dir(spec.tokenizer)))
        if spec.ar is not None:
            stages.append((spec.ar, ar_dir_of(spec, ctx)))
    problems = missing_inputs(stages, ctx.weights_dir)
    if problems:
        more = f" (and {len(problems) - 1} more released file(s) missing)" if len(problems) > 1 else ""
        raise UsageError(problems[0] + more)


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

    check_converted_inputs(specs, ctx)
    check_pretrained_inputs(specs, ctx)
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
                store = f" --tracking-uri {args.tracking_uri}" if args.tracking_uri else ""
                print(f"follow with: python studies/run.py {args.study} --profile {args.profile}{store} --status")
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
        path = ar_dir_of(spec, ctx) / "metrics.jsonl"
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


# ----------------------------------------------------------------------------------------------------------
# cfg_search: the Optuna search of one run's CFG scale
# ----------------------------------------------------------------------------------------------------------

SEARCH_DOC = """Search the CFG scale of one trained run with Optuna (Appendix B: steps of 0.25, lowest gFID wins).

    python studies/run.py cfg_search --study scaling_1d_vs_2d --only size=S-S,kind=1d --dry-run
    python studies/run.py cfg_search --study scaling_1d_vs_2d --only size=S-S,kind=1d --range 1.0:3.0
    python studies/run.py cfg_search --only 3f2a9c --schedule step --fraction-range 0.1:0.3   (a run-hash prefix)
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
    p = argparse.ArgumentParser(prog="studies/run.py cfg_search", description=SEARCH_DOC,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study", default=None, help="the study the run belongs to (without it, --only is a run hash)")
    p.add_argument("--only", default=None, help="filters that pick one run: size=S-S,kind=1d, or a run-hash prefix")
    p.add_argument("--dry-run", action="store_true", help="print the trials it would run and exit; nothing is written")
    p.add_argument("--json", action="store_true", help="with --dry-run: machine-readable output")
    search = p.add_argument_group("what is searched (default: the run's eval.cfg_search settings)")
    search.add_argument("--range", default=None, metavar="LO:HI", help="CFG scales searched, e.g. 1.0:3.0")
    search.add_argument("--step", type=float, default=None, help="grid step of the scale (the paper's: 0.25)")
    search.add_argument("--schedule", choices=("constant", "step"), default=None,
                        help="CFG schedule (default: the run's; step = the first 18%% of tokens unguided)")
    search.add_argument("--fraction-range", default=None, metavar="LO:HI",
                        help="with --schedule step: search the unguided share of tokens too, e.g. 0.1:0.3")
    search.add_argument("--fraction-step", type=float, default=None, help="grid step of the fraction")
    search.add_argument("--sampler", choices=("grid", "tpe"), default=None, help="grid (every point once) or tpe")
    search.add_argument("--trials", type=int, default=None, help="with --sampler tpe: the budget of trials")
    search.add_argument("--low-samples", type=int, default=None,
                        help="small budget every point is scored on first (default: eval.cfg_search.low_fraction "
                             "of the full budget)")
    search.add_argument("--full-samples", type=int, default=None,
                        help="full budget of the points that survive (default: the run's eval.gen_samples)")
    search.add_argument("--pruner", choices=("median", "none"), default=None, help="stop points early (median)")
    search.add_argument("--storage", default=None,
                        help="Optuna storage: a journal file path or an RDB URL (default: RUNS/ar-<hash>/cfg-search/"
                             "optuna.journal)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes or Slurm tasks pulling trials (default: local 2 on a CPU machine or one "
                        "per GPU, slurm min(8, points), debug 1)")
    p.add_argument("--executor", default="auto", help="auto (slurm if sbatch exists, else local), slurm, local, debug")
    p.add_argument("--wait", action="store_true", help="slurm executor: wait for the workers and show the trials")
    p.add_argument("--profile", default="tiny", help="the profile the run was planned at (default tiny)")
    p.add_argument("--data", default=None, help="image folder with train/ and val/ class folders: ImageNet at the "
                   "paper profile; at tiny, your images in place of the built-in dataset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="the overrides the study was run with (they are part of the run's hash)")
    add_seeds_option(p)
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    p.add_argument("--runs-dir", default="runs", help="stage outputs and job logs (default ./runs)")
    p.add_argument("--weights-dir", default=None, help="pretrained files (default $GIGATOK_WEIGHTS_DIR)")
    add_substitute_and_device_options(p)
    add_slurm_options(p)
    return p.parse_args(argv)


def _parse_range(flag: str, text: str) -> tuple[float, float]:
    low, sep, high = text.partition(":")
    try:
        lo, hi = float(low), float(high)
    except ValueError:
        lo = hi = float("nan")
    if not sep or lo != lo or hi != hi:
        raise UsageError(f"{flag} {text}: expected LO:HI, e.g. 1.0:3.0")
    if lo > hi:
        raise UsageError(f"{flag} {text}: the range is empty ({lo:g} is above {hi:g})")
    return lo, hi


def search_target(args: argparse.Namespace) -> RunSpec:
    """The one run a search tunes: --study with --only filters, or --only run-hash prefixes across all studies."""
    load_catalog()
    overrides = tuple(parse_override(o) for o in args.overrides)
    check_override_keys(overrides, args.profile)
    if args.data is not None and not Path(args.data).is_dir():
        raise UsageError(f"--data {args.data}: no such directory")
    planner = Planner(args.profile, str(Path(args.data).resolve()) if args.data else None, overrides,
                      seeds=parse_seeds(args.seeds), weights_dir=args.weights_dir)
    if args.study:
        try:
            specs = select(get_study(args.study).plan(planner), args.only)
        except KeyError as exc:
            raise UsageError(exc.args[0]) from None
    else:
        prefixes = [f.strip() for f in (args.only or "").split(",") if f.strip()]
        if not prefixes or any("=" in f for f in prefixes):
            raise UsageError("name the run: --study NAME --only FILTERS, or --only RUN_HASH (a prefix of its hash)")
        specs = [s for st in STUDIES.values() for s in st.plan(planner) if any(s.hash.startswith(x) for x in prefixes)]
        if not specs:
            raise UsageError(f"--only {args.only}: no run of any study at profile {args.profile} has such a hash "
                             "(pass the --set overrides the study was run with)")
    if len(specs) > 1 and len({s.hash for s in specs}) == 1:
        # One configuration, planned (and tracked) by several studies: the trials need one MLflow parent.
        raise UsageError(f"run {specs[0].hash} belongs to {len(specs)} studies "
                         f"({', '.join(s.study for s in specs)}): choose one with --study")
    if len(specs) > 1:
        where = f"study {args.study}" if args.study else "the studies"
        shown = ", ".join(f"{s.study}: {s.label} ({s.hash})" for s in specs[:4])
        raise UsageError(f"a CFG search tunes one run, and {where} has {len(specs)} matching --only "
                         f"{args.only or '(none)'}: {shown}{', ...' if len(specs) > 4 else ''}; narrow --only")
    spec = specs[0]
    if spec.ar is None:
        raise UsageError(f"run {spec.hash} ({spec.label}) of study {spec.study} trains no AR model: nothing to search")
    return spec


def search_plan(args: argparse.Namespace, spec: RunSpec, ctx: RunContext) -> Any:
    """The run's own search settings, changed by the flags."""
    from gigatok.cfg_search import SearchPlan

    base = spec.eval.cfg_search
    changes: dict[str, Any] = {}
    if args.range is not None:
        changes["scale_min"], changes["scale_max"] = _parse_range("--range", args.range)
    if args.fraction_range is not None:
        changes["fraction_min"], changes["fraction_max"] = _parse_range("--fraction-range", args.fraction_range)
    for flag, name, value in (("--step", "scale_step", args.step), ("--fraction-step", "fraction_step",
                                                                    args.fraction_step)):
        if value is not None:
            if value <= 0:
                raise UsageError(f"{flag} {value:g}: must be > 0")
            changes[name] = value
    schedule = args.schedule or spec.eval.cfg_schedule
    fraction_searched = changes.get("fraction_min", base.fraction_min) is not None
    if fraction_searched and schedule != "step":
        raise UsageError("--fraction-range: the unguided share of tokens belongs to the step schedule; "
                         "add --schedule step")
    sampler = args.sampler or base.sampler
    changes["sampler"] = sampler
    if sampler == "tpe":
        trials = args.trials if args.trials is not None else base.trials
        if trials is None:
            raise UsageError("--sampler tpe needs a budget: --trials N")
        if trials < 1:
            raise UsageError(f"--trials {trials}: must be >= 1")
        changes["trials"] = trials
    else:
        if args.trials is not None:
            raise UsageError("--trials applies to --sampler tpe (a grid runs every point once)")
        changes["trials"] = None
    if args.full_samples is not None:
        if args.full_samples < 2:
            raise UsageError(f"--full-samples {args.full_samples}: must be >= 2 (FID needs a covariance)")
        changes["full_samples"] = args.full_samples
    if args.pruner is not None:
        changes["pruner"] = args.pruner
    search = dataclasses.replace(base, **changes)
    storage = args.storage
    if storage is not None and "://" not in storage:
        storage = str(Path(storage).resolve())  # workers may start elsewhere
    return SearchPlan(spec, ctx, search, schedule, storage=storage, low_samples_override=args.low_samples)


def search_preview(plan: Any, parent: Any) -> dict[str, Any]:
    """What the search would do: its settings, whether it can start, and each point's state in the storage."""
    from gigatok.cfg_search.trials import find_study, points_by_state
    from gigatok.pipeline import stage_result_path

    trials = find_study(plan) or []
    by_point = points_by_state(plan, trials)
    points = []
    for point in plan.points:
        group = sorted(by_point.get(point, []), key=lambda t: t.number)
        last = group[-1] if group else None
        points.append({
            "cfg_scale": point.cfg_scale, "step_fraction": point.step_fraction,
            "state": last.state.name if last else "TO RUN",
            "gfid": last.value if last is not None and last.state.name == "COMPLETE" else None,
        })
    to_run = sum(p["state"] in ("TO RUN", "FAIL", "WAITING") for p in points)
    if plan.search.sampler == "tpe":
        assert plan.search.trials is not None
        to_run = max(0, plan.search.trials - sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials))
    return {
        **plan.describe(),
        "storage_exists": bool(trials) or (not plan.is_rdb and Path(plan.storage_location).is_file()),
        "ar_trained": stage_result_path(plan.spec, plan.ctx, "ar").is_file(),
        "parent_run_id": parent.run_id if parent else None, "parent_status": parent.status if parent else None,
        "points": points if plan.search.sampler == "grid" else [], "trials_recorded": len(trials),
        "to_run": to_run, "result": str(plan.result_path) if plan.result_path.is_file() else None,
    }


def print_search_preview(preview: dict[str, Any]) -> None:
    p = preview
    print(f"CFG search of run {p['run_hash']} ({p['run']}) of study {p['study']}, profile {p['profile']}")
    print(f"  Optuna study  {p['study_name']}")
    print(f"  storage       {p['storage']} ({'exists' if p['storage_exists'] else 'new'})")
    print(f"  AR model      {'trained' if p['ar_trained'] else 'NOT TRAINED: the search would refuse to start'}")
    parent = f"{p['parent_run_id']} ({p['parent_status']})" if p["parent_run_id"] else \
        "none: run the study first (the search would refuse to start)"
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


def _search_parent(client: Any, spec: RunSpec) -> Any:
    from gigatok.tracking import experiment_name

    _, tracked = tracked_runs(client, spec.study, spec.profile)
    record = tracked.get(spec.hash)
    if record is None:
        raise UsageError(f"run {spec.hash} ({spec.label}) has no MLflow run in experiment "
                         f"{experiment_name(spec.study, spec.profile)}: run `python studies/run.py {spec.study} "
                         f"--only {spec.hash}` (with the same --profile and --set) first")
    return record


def print_search_summary(plan: Any, summary: dict[str, Any]) -> None:
    best = f"cfg {summary['best_scale']:g}"
    if summary.get("fractions"):
        best += f" fraction {summary['best_step_fraction']:g}"
    print(f"best: {best}: gFID {summary['best_gfid']:.4g} on {summary['best_gfid_samples']} samples "
          f"(trial {summary['best_trial']}); summary in {plan.result_path}")
    if summary.get("best_at_edge"):
        print(f"warning: the best scale is at the edge of the range {summary['scales'][0]:g}:{summary['scales'][-1]:g};"
              " the minimum may lie beyond it (widen --range)")


def cmd_cfg_search(args: argparse.Namespace) -> int:
    from gigatok.cfg_search import (
        GenerationScorer,
        SearchWorker,
        check_ready,
        current_state,
        finish_here,
        follow,
        incomplete_reason,
        prepare,
    )
    from gigatok.dispatch import SlurmSettings, default_local_workers, make_executor, resolve_executor
    from gigatok.tracking import connect, resolve_tracking_uri

    get_profile(args.profile)
    spec = search_target(args)
    allow = args.substitutes  # random stand-ins only when asked for, at every profile
    ctx = RunContext(runs_dir=str(Path(args.runs_dir).resolve()), tracking_uri=resolve_tracking_uri(args.tracking_uri),
                     weights_dir=args.weights_dir, allow_substitutes=allow, device=args.device, progress=False)
    plan = search_plan(args, spec, ctx)
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers {args.workers}: must be >= 1")
    if args.dry_run:
        client, _ = _tracked_if_store_exists(ctx.tracking_uri)
        parent = tracked_runs(client, spec.study, spec.profile)[1].get(spec.hash) if client else None
        preview = search_preview(plan, parent)
        if args.json:
            print(json.dumps(preview, indent=2))
        else:
            print_search_preview(preview)
        return 0

    # Everything that can be wrong is checked before the first write (the study, in prepare()).
    check_ready(plan)
    executor_name = resolve_executor(args.executor)
    slurm = None
    if executor_name == "slurm":
        flags = {k: getattr(args, k) for k in ("partition", "account", "qos", "constraint", "nodes", "gpus_per_node",
                                                "cpus_per_task", "mem_gb", "time_min", "array_parallelism")}
        slurm = (SlurmSettings.from_file(args.cluster_config, **flags) if args.cluster_config
                 else SlurmSettings(**{k: v for k, v in flags.items() if v is not None}))
    if args.profile == "paper" and args.data is None and not os.environ.get("GIGATOK_DATA_ROOT"):
        raise UsageError("the paper profile scores against ImageNet: pass --data /path/to/imagenet "
                         "(or set GIGATOK_DATA_ROOT)")
    client = connect(ctx.tracking_uri)
    plan = dataclasses.replace(plan, parent_run_id=_search_parent(client, spec).run_id)

    recovery = prepare(plan)
    print(f"CFG search {plan.study_name} of run {spec.hash} ({spec.label}); storage {plan.storage_location}")
    if recovery.requeued:
        print(f"  {len(recovery.requeued)} failed points queued again")
    scorers: dict[str, Any] = {}

    def rescore(point: Any, samples: int) -> dict[str, float]:  # the real model, loaded only if needed
        if "generation" not in scorers:
            scorers["generation"] = GenerationScorer(plan)
        return scorers["generation"].rescore(point, samples)

    state = current_state(plan)
    if state.complete:
        summary = finish_here(plan, rescore)
        unit = "point" if plan.search.sampler == "grid" else "trial"
        print(f"nothing to do: search {plan.study_name} has a result for every {unit}")
        if summary is not None:
            print_search_summary(plan, summary)
        return 0

    remaining = state.remaining
    if executor_name == "debug":
        workers = 1
    elif args.workers is not None:
        workers = min(args.workers, remaining)
    elif executor_name == "local":
        workers = min(default_local_workers()[0], remaining)
    else:
        workers = min(8, remaining)
    if executor_name == "local":
        plan = dataclasses.replace(plan, ctx=dataclasses.replace(ctx, threads=max(1, (os.cpu_count() or 1) // workers)))
    print(f"  {remaining} {'points' if plan.search.sampler == 'grid' else 'trials'} to go; {workers} {executor_name} "
          f"worker(s); job logs in {ctx.root / 'jobs'}")
    executor = make_executor(executor_name, ctx.root / "jobs", slurm)
    if executor_name == "slurm":
        with executor.batch():
            jobs = [executor.submit(SearchWorker(plan, i)) for i in range(workers)]
        print(f"submitted {len(jobs)} Slurm workers: " + " ".join(j.job_id for j in jobs))
        if not args.wait:
            print("the last worker to end writes the result; follow with the same command and --dry-run")
            return 0
    else:
        jobs = [executor.submit(SearchWorker(plan, i)) for i in range(workers)]
    try:
        if executor_name == "debug":  # runs the worker here; its trials print as they end
            errors = [jobs[0].exception()]
        else:
            follow(plan, jobs)
            errors = [job.exception() for job in jobs]
    except KeyboardInterrupt:
        for job in jobs:  # local workers are this command's children; their trials are retried next time
            with contextlib.suppress(Exception):
                job.cancel(check=False)
        print("interrupted: the search resumes on the next invocation", file=sys.stderr)
        return 130
    for job, error in zip(jobs, errors, strict=True):  # a worker that could not work at all (a trial's error is
        if error is not None:                            # recorded on the trial)
            print(f"worker {job.job_id} failed: {str(error).strip().splitlines()[-1][:300]}", file=sys.stderr)
    summary = finish_here(plan, rescore)
    if summary is None:
        print(incomplete_reason(plan, current_state(plan)), file=sys.stderr)
        return 1
    print_search_summary(plan, summary)
    return 0


def search_main(argv: list[str]) -> int:
    args = parse_search_args(argv)
    from gigatok.dispatch import DispatchError
    from gigatok.tracking import TrackingError

    try:
        return cmd_cfg_search(args)
    except (UsageError, ConfigError, DispatchError, TrackingError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["cfg_search"]:
        return search_main(argv[1:])
    args = parse_args(argv)
    from gigatok.dispatch import DispatchError
    from gigatok.tracking import TrackingError, resolve_tracking_uri

    try:
        get_profile(args.profile)
        if args.list:
            return cmd_list(args)
        specs = plan(args)
        allow = args.substitutes  # random stand-ins only when asked for, at every profile
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

"""Orchestration at scale: plan, dry-run, submit and skip-check a 1,000-run study, without training anything.

    python bench/orchestration.py               a 1,000-run study
    python bench/orchestration.py --quick       a 200-run study, one repeat
    python bench/orchestration.py --runs 5000 --mlflow sqlite:///bench.db
    python bench/orchestration.py --baseline none      the submission of this tree only

Targets (issues 8 and 20): planning and submitting a 1,000-run study (dry run, and local-executor submission
without training, under 10 s) in seconds; the skip-check of finished runs is one MLflow query per study. The targets
are absolute, so the table prints seconds: they are this machine's (see the README for which machine).

The study is registered here with the ``@study`` decorator, as the catalog's are: 1,000 standard probe runs over
sizes x 1D/2D x lambda x seed (:func:`bench.common.synthetic_sweep`), each with its own tokenizer, so each is its
own job group. Every step goes through ``studies/run.py``'s ``main`` as a user's command does:

1. planning: the study function and the planner's validation (in process);
2. ``--dry-run`` in a fresh process (imports, plan, parameter counts, the stages already on disk);
3. ``--executor local --no-wait`` on an empty SQLite store (made once, copied for each submission; making one is
   timed on its own), each submission in a fresh process that has imported the catalog: the time of opening the
   store (MLflow's import) and of ``main``. The MLflow runs are created (tags, the ~160 config params and the size
   metrics each) and the local Submitit jobs submitted. The job class is swapped for :class:`NoOpRunJob`, a
   ``RunJob`` that returns at once, so the jobs are started, unpickle their run specs and end without training.
   The same submission of the ``--baseline`` commit (default d4b8591, before the runs were written in one
   transaction; materialised with ``git archive``) runs interleaved with this tree's, and the two stores are
   compared: the same runs, names, params, metrics and tag names;
4. the runs are then marked FINISHED in the store (as if trained) and the same command is run again: the
   skip-check. Every read of a study's runs goes through ``gigatok.tracking.experiment_runs`` (on SQLite a direct
   read of MLflow's tables: three SELECTs, whatever the number of runs; elsewhere one ``search_runs``); both it and
   ``MlflowClient.search_runs`` are wrapped to count calls, which must be one per study. The table also times
   ``gigatok.tracking.study_runs``, that one query, on its own, with the direct read and through MLflow's search.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable without installing it
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    Row,
    add_common_args,
    log_to_mlflow,
    median,
    paired_ratio,
    print_table,
    synthetic_sweep,
)
from gigatok.dispatch import RunJob  # noqa: E402

STUDY_PREFIX = "bench_sweep_"
BASELINE = "d4b8591"  # the commit before submission wrote a study's runs in one transaction (issue 20)
TARGET_S = 10.0  # issue 20: a 1,000-run study submitted in under 10 s

# One submission in a fresh process, run from the tree at argv[1] (this one or the baseline's): the catalog imported
# first (the dry run times imports), then the store opened (MLflow's import), then studies/run.py's main.
SUBMIT = """
import json, sys, time
root, runs, uri, runs_dir = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
sys.path.insert(0, root)
from bench.orchestration import no_op_jobs, register_study, run_main
import studies.run
name = register_study(runs)
start = time.perf_counter()
from gigatok.tracking import connect
connect(uri)
open_s = time.perf_counter() - start
with no_op_jobs():
    main_s, out = run_main([name, "--executor", "local", "--no-wait", "--local-parallel", "2",
                            "--tracking-uri", uri, "--runs-dir", runs_dir])
print(json.dumps({"open_s": open_s, "main_s": main_s, "jobs": out.count("started local job")}))
"""


class NoOpRunJob(RunJob):
    """A RunJob that trains nothing: the job starts, holds its run specs, and returns."""

    def __call__(self) -> dict[str, dict[str, float]]:
        return {}


def register_study(runs: int) -> str:
    """Register the synthetic study of ``runs`` runs (once per process) and return its name."""
    from gigatok.study import STUDIES, study

    name = f"{STUDY_PREFIX}{runs}"
    if name not in STUDIES:
        study(name, reproduces="bench/orchestration.py", about=f"{runs} synthetic probe runs")(
            lambda p: synthetic_sweep(p, runs)
        )
    return name


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/orchestration.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="a 200-run study, one repeat")
    p.add_argument("--runs", type=int, default=None, help="runs in the study (default 1,000; --quick 200)")
    p.add_argument("--repeats", type=int, default=None, help="repeats of each measurement (default 3)")
    p.add_argument(
        "--baseline",
        default=BASELINE,
        metavar="REV",
        help=f"the commit whose submission is timed beside this tree's (default {BASELINE}; 'none' skips it)",
    )
    add_common_args(p)
    return p.parse_args(argv)


def _env(root: Path = ROOT) -> dict[str, str]:
    # Submitit's job processes unpickle bench.orchestration.NoOpRunJob: the project root must be importable there.
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}


def run_main(argv: list[str]) -> tuple[float, str]:
    """``studies/run.py`` ``main`` in this process: seconds and what it printed; raises if it failed."""
    from studies import run

    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out):
        status = run.main(argv)
    seconds = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"studies/run.py {' '.join(argv)} exited with {status}:\n{out.getvalue()[-2000:]}")
    return seconds, out.getvalue()


def _seconds(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def dry_run_fresh_process(runs: int, argv: list[str]) -> float:
    """The dry run as a user starts it: a new interpreter that registers the study and calls main."""
    code = (
        "import sys; from bench.orchestration import register_study; from studies.run import main; "
        f"register_study({runs}); sys.exit(main({argv!r}))"
    )
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def materialise(rev: str, dest: Path) -> Path | None:
    """The tree of commit ``rev`` in ``dest`` (``git archive``); None, with a note, where git cannot give it."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", rev], check=True, capture_output=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        reason = exc.stderr.decode().strip() if isinstance(exc, subprocess.CalledProcessError) else str(exc)
        print(f"note: no baseline submission: git archive {rev} failed ({reason})", flush=True)
        return None
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def submit_fresh(root: Path, runs: int, empty_store: Path, folder: Path) -> dict[str, Any]:
    """One local --no-wait submission of the tree at ``root``, in a fresh process, on a copy of the empty store;
    returns its times once its no-op jobs have ended (they must not load the next measurement)."""
    folder.mkdir(parents=True)
    shutil.copyfile(empty_store, folder / "mlflow.db")
    argv = [str(root), str(runs), f"sqlite:///{folder / 'mlflow.db'}", str(folder / "runs")]
    done = subprocess.run(
        [sys.executable, "-c", SUBMIT, *argv], cwd=root, env=_env(root), capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"the submission from {root} failed:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["total_s"] = result["open_s"] + result["main_s"]
    result["ended_s"] = wait_for_jobs(folder / "runs" / "jobs", result["jobs"])
    return result


def store_records(db: Path) -> dict[str, Any]:
    """Each run's name, params, metrics (name, value, step) and tag names, by run hash: what two submissions of the
    same study must agree on (the ids, times and the git commit they ran at aside)."""
    from gigatok import tracking_schema as schema

    with contextlib.closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)) as conn:
        hashes = dict(conn.execute('SELECT run_uuid, value FROM tags WHERE "key" = ?', (schema.RUN_HASH,)))
        runs: dict[str, Any] = {h: {"params": set(), "metrics": set(), "tags": set()} for h in hashes.values()}
        for run_id, name, status in conn.execute("SELECT run_uuid, name, status FROM runs"):
            runs[hashes[run_id]]["run"] = (name, status)
        for run_id, key, value in conn.execute('SELECT run_uuid, "key", value FROM params'):
            runs[hashes[run_id]]["params"].add((key, value))
        for run_id, key, value, step in conn.execute('SELECT run_uuid, "key", value, step FROM metrics'):
            runs[hashes[run_id]]["metrics"].add((key, value, step))
        for run_id, key in conn.execute(
            'SELECT run_uuid, "key" FROM tags WHERE "key" != ?', (schema.MLFLOW_GIT_COMMIT,)
        ):
            runs[hashes[run_id]]["tags"].add(key)
    return runs


def compare_records(before: dict[str, Any], now: dict[str, Any]) -> str:
    """Whether two submissions left the same records. A config field added since the baseline (a param key no run of
    the baseline has) is a change of the config, not of how runs are written: it is named, not counted against."""
    if before == now:
        return "yes"
    if before.keys() != now.keys():
        return "NO: different runs"
    old_keys = {key for record in before.values() for key, _ in record["params"]}
    added = {key for record in now.values() for key, _ in record["params"]} - old_keys
    trimmed = {h: {**r, "params": {p for p in r["params"] if p[0] not in added}} for h, r in now.items()}
    if added and trimmed == before:
        return f"yes, besides params added since: {', '.join(sorted(added))}"
    return "NO"


def submission_rows(runs: int, repeats: int, baseline: str, tmp: Path) -> tuple[list[Row], Path]:
    """The submission of this tree and of ``baseline`` (unless 'none'), interleaved: their rows, and the store of
    this tree's last submission (for the skip-check)."""
    from gigatok.tracking import connect

    empty_store = tmp / "empty" / "mlflow.db"
    make_s = _seconds(lambda: connect(f"sqlite:///{empty_store}"))
    trees = {"now": ROOT}
    if baseline != "none" and (old := materialise(baseline, tmp / "baseline")) is not None:
        trees = {"before": old, **trees}
    results: dict[str, list[dict[str, Any]]] = {label: [] for label in trees}
    for repeat in range(repeats):
        for label, root in trees.items():
            print(f"timing: --executor local --no-wait, {label} ({root}), round {repeat + 1} ...", flush=True)
            results[label].append(submit_fresh(root, runs, empty_store, tmp / f"{label}-{repeat}"))
    rows = [Row("create an empty MLflow store (MLflow's import and migrations; once per store)", make_s, "s")]
    for label, measured in results.items():
        total = median([r["total_s"] for r in measured])
        extra = {
            "runs": runs,
            "jobs": measured[-1]["jobs"],
            "of it MLflow import + open": f"{median([r['open_s'] for r in measured]):.1f} s",
        }
        if label == "now":
            extra["target < 10 s"] = "yes" if total < TARGET_S else "NO"
        if "before" in results and label == "now":
            ratio = paired_ratio([r["total_s"] for r in results["before"]], [r["total_s"] for r in measured])
            extra["speed-up"] = f"{ratio[0]:.1f}x ({ratio[1]:.1f}-{ratio[2]:.1f})"
            extra["same runs as before"] = compare_records(
                store_records(tmp / f"before-{repeats - 1}" / "mlflow.db"),
                store_records(tmp / f"now-{repeats - 1}" / "mlflow.db"),
            )
        name = "submit, local executor, " + (f"before ({baseline})" if label == "before" else "this tree")
        rows.append(Row(name, total, "s", extra))
        rows.append(
            Row(f"  its no-op jobs ended after submission ({label})", median([r["ended_s"] for r in measured]), "s")
        )
    return rows, tmp / f"now-{repeats - 1}" / "mlflow.db"


@contextlib.contextmanager
def no_op_jobs() -> Iterator[None]:
    """studies/run.py submits NoOpRunJob instead of RunJob (gigatok.launch looks RunJob up in gigatok.dispatch at each
    submission)."""
    import gigatok.dispatch

    original = gigatok.dispatch.RunJob
    gigatok.dispatch.RunJob = NoOpRunJob  # type: ignore[misc]
    try:
        yield
    finally:
        gigatok.dispatch.RunJob = original  # type: ignore[misc]


@contextlib.contextmanager
def counting_queries() -> Iterator[dict[str, int]]:
    """Counts the study's store queries: gigatok.tracking.experiment_runs (every read of a study's runs goes through
    it: a direct read of a SQLite store, MLflow's search elsewhere) and MlflowClient.search_runs itself."""
    from mlflow import MlflowClient

    import gigatok.tracking

    calls = {"experiment_runs": 0, "search_runs": 0}
    originals = gigatok.tracking.experiment_runs, MlflowClient.search_runs

    def study_query(*args: Any, **kwargs: Any) -> Any:
        calls["experiment_runs"] += 1
        return originals[0](*args, **kwargs)

    def search(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["search_runs"] += 1
        return originals[1](self, *args, **kwargs)

    gigatok.tracking.experiment_runs = study_query
    MlflowClient.search_runs = search  # type: ignore[method-assign]
    try:
        yield calls
    finally:
        gigatok.tracking.experiment_runs, MlflowClient.search_runs = originals  # type: ignore[method-assign]


@contextlib.contextmanager
def without_direct_read() -> Iterator[None]:
    """gigatok.tracking as on a store it cannot read directly: every query goes through MLflow's search_runs."""
    import gigatok.tracking

    original = gigatok.tracking.sqlite_runs

    def unreadable(*args: Any, **kwargs: Any) -> Any:
        raise sqlite3.OperationalError("bench: direct read disabled")

    gigatok.tracking.sqlite_runs = unreadable
    try:
        yield
    finally:
        gigatok.tracking.sqlite_runs = original


def wait_for_jobs(jobs_dir: Path, count: int, timeout_s: float = 600.0) -> float:
    """Seconds until ``count`` Submitit job folders hold a result (the local jobs have ended)."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        if len(list(jobs_dir.glob("*/*_result.pkl"))) >= count:
            return time.perf_counter() - start
        time.sleep(0.5)
    raise TimeoutError(f"{count} local jobs did not end within {timeout_s:.0f} s (see {jobs_dir})")


def mark_finished(db: Path, experiment: str) -> int:
    """Every run of ``experiment`` FINISHED, as if trained (one SQL update: only the state matters to what follows)."""
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        cursor = conn.execute(
            "UPDATE runs SET status = 'FINISHED', end_time = start_time + 1 WHERE experiment_id = "
            "(SELECT experiment_id FROM experiments WHERE name = ?)",
            (experiment,),
        )
        return cursor.rowcount


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs = args.runs or (200 if args.quick else 1_000)
    repeats = args.repeats or (1 if args.quick else 3)
    import studies.run  # noqa: F401  (the catalog and the CLI, imported before anything is timed)
    from gigatok.study import Planner, get_study
    from gigatok.tracking import connect, experiment_name, study_runs

    name = register_study(runs)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gigatok-bench-orchestration-") as tmp:
        dry = ["--tracking-uri", f"sqlite:///{Path(tmp) / 'dry' / 'mlflow.db'}", "--runs-dir", str(Path(tmp) / "dry")]

        print(f"timing: planning the {runs}-run study {name} ...", flush=True)
        plan_s = median([_seconds(lambda: get_study(name).plan(Planner("tiny"))) for _ in range(repeats)])
        rows.append(Row("plan (study function + validation)", plan_s, "s", {"runs": runs}))

        print("timing: --dry-run in a fresh process ...", flush=True)
        dry_s = median([dry_run_fresh_process(runs, [name, "--dry-run", *dry]) for _ in range(repeats)])
        rows.append(Row("--dry-run, fresh process (imports, plan, parameter counts)", dry_s, "s", {"runs": runs}))

        submitted, db = submission_rows(runs, repeats, args.baseline, Path(tmp))
        rows += submitted
        common = ["--tracking-uri", f"sqlite:///{db}", "--runs-dir", str(db.parent / "runs")]

        experiment = experiment_name(name, "tiny")
        marked = mark_finished(db, experiment)
        print(f"timing: skip-check of {marked} FINISHED runs ...", flush=True)
        skip_times, queries = [], []
        for _ in range(repeats):
            with counting_queries() as calls:
                seconds, out = run_main([name, "--executor", "local", *common])
            if "nothing to do" not in out:
                raise RuntimeError(f"the skip-check did not skip the finished runs:\n{out[-2000:]}")
            skip_times.append(seconds)
            queries.append(calls)
        one = all(q["experiment_runs"] == 1 for q in queries)
        rows.append(
            Row(
                "re-submit, every run FINISHED (skip-check command)",
                median(skip_times),
                "s",
                {
                    "runs": marked,
                    "study queries": queries[-1]["experiment_runs"],
                    "MLflow search_runs calls": queries[-1]["search_runs"],
                    "one query": "yes" if one else "NO",
                },
            )
        )
        client = connect(f"sqlite:///{db}")
        experiment_id = client.get_experiment_by_name(experiment).experiment_id
        direct = [_seconds(lambda: study_runs(client, experiment_id)) for _ in range(repeats)]
        with without_direct_read(), counting_queries() as calls:
            searched = [_seconds(lambda: study_runs(client, experiment_id)) for _ in range(repeats)]
        rows += [
            Row("study_runs, the one query: direct SQLite read", median(direct), "s", {"runs": marked}),
            Row(
                "study_runs, the one query: MLflow search_runs",
                median(searched),
                "s",
                {
                    "runs": marked,
                    "MLflow search_runs calls": calls["search_runs"] // repeats,
                    "speed-up of the direct read": f"{median(searched) / median(direct):.0f}x",
                },
            ),
        ]
    machine = f"{os.cpu_count()}-core CPU"
    print_table(
        f"Orchestration of a {runs}-run study, median of {repeats}; absolute seconds of this {machine} "
        f"(load average {os.getloadavg()[0]:.1f})",
        rows,
    )
    log_to_mlflow(args.mlflow, "orchestration", rows, {"runs": runs, "repeats": repeats})
    return 0


if __name__ == "__main__":
    sys.exit(main())

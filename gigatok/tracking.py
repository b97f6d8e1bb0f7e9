"""MLflow tracking: one experiment per study, one MLflow run per planned run, every number with its provenance.

The default store is a SQLite file in the working directory (``sqlite:///./mlflow.db``); any tracking server URI
works the same way. Everything goes through :class:`mlflow.MlflowClient` with explicit run ids, never through
MLflow's process-global "active run", so one process can serve several runs and jobs never cross-talk.

Tags (all ``gigatok.*``, named in :mod:`gigatok.tracking_schema`): study, run hash, tokenizer and AR hashes, profile,
git commit, Slurm job id, the stage a run is in, the error of a failed run, the substitute networks used, and one
``gigatok.provenance.<metric>`` per metric saying which feature network and which sets produced it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gigatok import tracking_schema as schema
from gigatok.file_locks import held
from gigatok.tracking_delivery import Delivery, http_settings
from gigatok.tracking_spool import Spool, metric_op

DEFAULT_DB_NAME = "mlflow.db"
SEARCH_PAGE = 50_000  # the SQL stores' largest page: a study's runs come back in one query
PARAM_CHUNK = 100  # MLflow's limit of params per log_batch call
MAX_BATCH_METRICS = 1000  # MLflow's limit of metrics per log_batch call
PARAM_VALUE_LIMIT = 6000  # MLflow's longest param value: a longer one is cut


class TrackingError(RuntimeError):
    """The tracking store cannot be used (unreachable server, bad URI)."""


def default_tracking_uri(directory: str | os.PathLike[str] | None = None) -> str:
    path = Path(directory or Path.cwd()).resolve() / DEFAULT_DB_NAME
    return f"sqlite:///{path}"


def resolve_tracking_uri(uri: str | None) -> str:
    """The URI given, else ``$MLFLOW_TRACKING_URI``, else the SQLite file in the working directory."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def _quiet_mlflow() -> None:
    # MLflow's alembic migrations of a new SQLite file would otherwise print a page of INFO lines. The study
    # command keeps MLflow's own HTTP retries (7, over about 4 minutes): a server busy with a job array's writes, or
    # restarted, must not fail it (measured: with no retries and a 10 s time-out, the study's poll of a one-worker
    # server busy with four concurrent writers timed out). Only connect()'s check fails fast; a job's logging uses
    # short retries and spools through an outage (gigatok.tracking_delivery).
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # figures fetch arrays quietly
    import logging

    # -v (gigatok.logs: the gigatok logger at DEBUG) lets them speak
    level = logging.INFO if logging.getLogger("gigatok").isEnabledFor(logging.DEBUG) else logging.WARNING
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent", "mlflow.system_metrics"):
        logging.getLogger(name).setLevel(level)


def _fail_fast() -> contextlib.AbstractContextManager[None]:
    """No retries and a 30 s time-out, for this block only (MLflow reads both per request): a dead server or a
    wrong URI is reported in seconds rather than after minutes of retries. Values the user exported win."""
    return http_settings({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"})


def connect(uri: str | None, check: bool = True) -> Any:
    """An :class:`mlflow.MlflowClient` for ``uri``; with ``check``, fail fast if the store cannot be reached."""
    _quiet_mlflow()
    from mlflow import MlflowClient

    uri = resolve_tracking_uri(uri)
    opening: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        # MLflow creates and migrates a SQLite store on first use: two processes doing it at once (two launches of a
        # study on a fresh store) collide in the migration. They take turns.
        opening = held(db.parent / f".{db.name}.open.lock", f"the MLflow store {db}")
    try:
        with opening:
            client = MlflowClient(tracking_uri=uri)
            if check:
                with _fail_fast():
                    client.search_experiments(max_results=1)
    except Exception as exc:  # MLflow raises several types for a dead server or a bad URI
        if not check:
            raise
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise TrackingError(f"tracking store {uri} is unreachable: {reason}") from None
    return client


def experiment_name(study: str, profile: str) -> str:
    """One experiment per study and profile: tiny and paper runs of a study never share a table."""
    return study if profile == "paper" else f"{study}-{profile}"


def ensure_experiment(client: Any, name: str, description: str, tags: dict[str, str] | None = None) -> str:
    """The experiment's id, created on first use (artifacts beside a SQLite store, in ``mlartifacts/``)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    artifact_location = None
    uri = client.tracking_uri if hasattr(client, "tracking_uri") else client._tracking_client.tracking_uri
    if uri.startswith("sqlite:///"):
        artifact_location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / name).as_uri()
    all_tags = {"mlflow.note.content": description, **(tags or {})}
    try:
        return client.create_experiment(name, artifact_location=artifact_location, tags=all_tags)
    except Exception:  # a concurrent process created it first
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


@dataclass(frozen=True)
class TrackedRun:
    run_id: str
    run_hash: str
    status: str  # MLflow's: SCHEDULED, RUNNING, FINISHED, FAILED, KILLED
    name: str
    tags: dict[str, str]
    metrics: dict[str, float]


def study_runs(client: Any, experiment_id: str) -> dict[str, TrackedRun]:
    """Every run of a study keyed by run hash: one query (:func:`experiment_runs`), whatever the study's size."""
    found: dict[str, TrackedRun] = {}
    for run in experiment_runs(client, experiment_id, params=()):
        run_hash = run.data.tags.get(schema.RUN_HASH)
        if run_hash is None:
            continue
        record = TrackedRun(
            run.info.run_id,
            run_hash,
            run.info.status,
            run.info.run_name,
            dict(run.data.tags),
            dict(run.data.metrics),
        )
        previous = found.get(run_hash)
        # A hash can appear twice only if a submission died between creating and tagging; prefer the
        # finished one, then the newest.
        if previous is None or (record.status == "FINISHED" and previous.status != "FINISHED"):
            found[run_hash] = record
    return found


def experiment_runs(
    client: Any, experiment_id: str, params: Sequence[str] | None = None, curves: bool = True
) -> Iterable[Any]:
    """Every active run of one experiment, newest first, shaped as MLflow's ``Run``: one query per study.

    On a local SQLite store the tables are read directly (:func:`sqlite_runs`). MLflow's search builds an ORM object
    per param, tag and metric row, about 12 ms a run here (a study run has ~120 params): 12 s for a 1,000-run
    study, two minutes for 10,000 runs, where the tables read in a second. ``params`` names the params wanted
    from such a read (None: all of them) and ``curves=False`` leaves out the latest values of the ``stage/key``
    training curves. Other stores, and a SQLite file this code cannot read, go through MLflow's ``search_runs``
    (paged only past 50,000 runs), which returns everything.
    """
    uri = client.tracking_uri if hasattr(client, "tracking_uri") else client._tracking_client.tracking_uri
    if uri.startswith("sqlite:///"):
        try:
            return sqlite_runs(Path(uri.removeprefix("sqlite:///")), experiment_id, params, curves)
        except (sqlite3.Error, UntestedSchemaError):  # locked past the time-out, or a layout not read here before
            pass
    return api_runs(client, experiment_id)


def api_runs(client: Any, experiment_id: str) -> Iterator[Any]:
    token = None
    while True:
        page = client.search_runs([experiment_id], max_results=SEARCH_PAGE, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


# The MLflow store schemas (alembic revisions) whose tables :func:`sqlite_runs` was checked against MLflow's own
# search: dc11669786a5 is the head of MLflow 3.17 (tests/test_tracking.py compares the two reads). A store of another
# revision is read through MLflow's API instead, since a changed table could be misread without any error.
TESTED_SCHEMAS = frozenset({"dc11669786a5"})


class UntestedSchemaError(RuntimeError):
    """The SQLite store's schema revision is not one the direct reader was tested on."""


def store_schema(db: sqlite3.Connection) -> str | None:
    """The store's alembic revision (None for a file without MLflow's version table)."""
    try:
        row = db.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        return None
    return row[0] if row else None


@dataclass(frozen=True)
class SqlRunInfo:
    run_id: str
    run_name: str | None
    status: str
    start_time: int | None
    end_time: int | None


@dataclass(frozen=True)
class SqlRunData:
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]  # the latest value of each key, as in MLflow's Run.data.metrics


@dataclass(frozen=True)
class SqlRun:
    info: SqlRunInfo
    data: SqlRunData


def sqlite_runs(
    path: Path, experiment_id: str, params: Sequence[str] | None = None, curves: bool = True
) -> list[SqlRun]:
    """What MLflow's ``search_runs`` returns for one experiment of a SQLite store, read from its tables.

    The same runs (active ones), in the same order (newest first, then run id), with the same latest metrics (NaN
    restored from ``is_nan``); of the params only ``params`` (None: all), and without the curves' latest values
    when ``curves`` is False. Read-only: a read never writes to, or creates, a store.
    """
    experiment = int(experiment_id)
    with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
        schema_revision = store_schema(db)
        if schema_revision not in TESTED_SCHEMAS:
            raise UntestedSchemaError(f"{path}: MLflow schema {schema_revision} is not one of {sorted(TESTED_SCHEMAS)}")

        def rows_of(table: str, columns: str, where: str = "", args: Sequence[str] = ()) -> Any:
            # CROSS JOIN fixes SQLite's join order (the experiment's runs, then each run's rows by index); left to
            # itself the planner can walk the params key index over every run of the store, 10x slower at 10,000.
            return db.execute(
                f"SELECT x.run_uuid, {columns} FROM runs r CROSS JOIN {table} x "
                "ON x.run_uuid = r.run_uuid WHERE r.experiment_id = ? AND r.lifecycle_stage = 'active'"
                f"{where}",
                (experiment, *args),
            )

        infos = [
            SqlRunInfo(*row)
            for row in db.execute(
                "SELECT run_uuid, name, status, start_time, end_time FROM runs WHERE experiment_id = ? "
                "AND lifecycle_stage = 'active' ORDER BY start_time DESC, run_uuid",
                (experiment,),
            )
        ]
        tags: dict[str, dict[str, str]] = {info.run_id: {} for info in infos}
        values: dict[str, dict[str, str]] = {info.run_id: {} for info in infos}
        metrics: dict[str, dict[str, float]] = {info.run_id: {} for info in infos}
        for run_id, key, value in rows_of("tags", 'x."key", x.value'):
            tags[run_id][key] = value
        if params is None or params:
            only = "" if params is None else f' AND x."key" IN ({", ".join("?" * len(params))})'
            for run_id, key, value in rows_of("params", 'x."key", x.value', only, params or ()):
                values[run_id][key] = value
        for run_id, key, value, is_nan in rows_of(
            "latest_metrics", 'x."key", x.value, x.is_nan', "" if curves else " AND instr(x.\"key\", '/') = 0"
        ):
            metrics[run_id][key] = math.nan if is_nan else value
    return [SqlRun(info, SqlRunData(tags[info.run_id], values[info.run_id], metrics[info.run_id])) for info in infos]


def restart_clock(client: Any, run_id: str, start_ms: int) -> bool:
    """Move the run's ``start_time`` (where MLflow's Duration column counts from) to ``start_ms``; False where the
    store does not allow it.

    MLflow 3.17 has no public way: ``create_run`` fixes ``start_time`` and ``update_run`` (REST ``UpdateRun``) takes
    only status, end time and name. On a local SQLite store of a schema :func:`sqlite_runs` was tested on, the
    ``runs`` row is updated directly (one column, in one transaction, through SQLite's own locking); a tracking
    server's store is out of reach, and there the run keeps its creation time.
    """
    uri = client.tracking_uri if hasattr(client, "tracking_uri") else client._tracking_client.tracking_uri
    if not uri.startswith("sqlite:///"):
        return False
    path = Path(uri.removeprefix("sqlite:///"))
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=20)) as db:
            if store_schema(db) not in TESTED_SCHEMAS:
                return False
            with db:  # a transaction: committed on leaving
                updated = db.execute(
                    "UPDATE runs SET start_time = ? WHERE run_uuid = ? AND lifecycle_stage = 'active'",
                    (int(start_ms), run_id),
                ).rowcount
    except sqlite3.Error:
        return False
    return updated == 1


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config dicts as dotted MLflow params; lists as JSON."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, list | tuple):
            out[name] = json.dumps(value)
        else:
            out[name] = str(value)
    return out


def log_params(client: Any, run_id: str, params: dict[str, str], metrics: dict[str, float] | None = None) -> None:
    """``params``, and ``metrics`` at step 0 in the first batch (one write more per run would show in the
    submission of a 1,000-run study)."""
    from mlflow.entities import Metric, Param

    items = [Param(k, str(v)[:PARAM_VALUE_LIMIT]) for k, v in sorted(params.items())]
    now = int(time.time() * 1000)
    values = [Metric(k, v, now, 0) for k, v in sorted((metrics or {}).items())]
    for start in range(0, max(len(items), 1), PARAM_CHUNK):
        batch = items[start : start + PARAM_CHUNK]
        client.log_batch(run_id, params=batch, metrics=values if start == 0 else [], synchronous=True)


def current_user() -> str:
    """Who launched, for MLflow's User column; ``unknown`` where the system cannot say (a container's odd uid)."""
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def git_commit() -> str:
    """The project's commit, with ``-dirty`` when the tree has changes; ``unknown`` outside a git checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def _metric_list(records: Iterable[tuple[int, dict[str, float]]], prefix: str) -> list[Any]:
    """MLflow Metric entities of (step, values) records; NaN and non-numbers are left out (MLflow cannot plot them)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [
        Metric(prefix + key, float(value), now, step)
        for step, values in records
        for key, value in values.items()
        if isinstance(value, int | float) and value == value
    ]


class RunLogger:
    """Writes to one MLflow run from inside a job: every operation queued, sent in order by a background thread.

    Training loops call :meth:`metrics` at every logging step and never wait for the store: the values are queued in
    batches of at most one per ``batch_seconds`` (the values of a fast loop wait in a buffer until then; a slow
    loop's go out at once). Every batch is one store transaction, about 12 ms of CPU on SQLite whatever its size up
    to ~10 steps: one per step costs a fast loop several percent of a core, one per five seconds nothing measurable
    (``bench/tracking_overhead.py``). Tags, artifacts and the status go through the same queue, so they reach the
    store in the order they were made. :meth:`flush` sends the buffer and waits for the queue (called at the end of
    every stage). A job killed without a flush loses at most its last ``batch_seconds`` of curve points from
    MLflow; the run directory's ``metrics.jsonl`` has every one.

    With a ``spool`` (:class:`gigatok.tracking_spool.Spool`), a store that stops answering costs the job nothing
    but the bounded wait of one attempt: what cannot be sent is kept in the spool and replayed, without duplicate
    points, once the store answers (:mod:`gigatok.tracking_delivery`).
    """

    def __init__(
        self,
        client: Any,
        run_id: str,
        batch_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        spool: Spool | None = None,
        retry_seconds: float | None = None,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.batch_seconds = batch_seconds
        self._clock = clock
        self._buffer: list[Any] = []
        self._last_sent = -math.inf
        self.delivery = Delivery(client, run_id, spool, retry_seconds)

    def metrics(self, values: dict[str, float], step: int = 0, prefix: str = "") -> None:
        self._buffer.extend(_metric_list([(step, values)], prefix))
        if self._buffer and (
            len(self._buffer) >= MAX_BATCH_METRICS or self._clock() - self._last_sent >= self.batch_seconds
        ):
            self._send()

    def _send(self) -> None:
        buffer, self._buffer = self._buffer, []
        self._queue_metrics(buffer)
        self._last_sent = self._clock()

    def _queue_metrics(self, metrics: list[Any]) -> None:
        for start in range(0, len(metrics), MAX_BATCH_METRICS):
            self.delivery.put(metric_op(metrics[start : start + MAX_BATCH_METRICS]))

    def metric_records(self, records: Iterable[tuple[int, dict[str, float]]], prefix: str = "") -> None:
        """Many (step, values) records in as few batches as MLflow allows (1000 metrics per batch)."""
        self._queue_metrics(_metric_list(records, prefix))

    def tags(self, values: dict[str, Any]) -> None:
        self.delivery.put({"op": "tags", "tags": {key: str(value)[:5000] for key, value in values.items()}})

    def artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        self.delivery.put({"op": "artifact", "path": str(Path(path).resolve()), "artifact_path": artifact_path})

    def last_step(self, key: str) -> int:
        """Highest step already logged for ``key`` (-1 if none): a resumed stage logs only what comes after. A read,
        made at once (at a job's start, when the store has just answered)."""
        history = self.client.get_metric_history(self.run_id, key)
        return max((m.step for m in history), default=-1)

    def flush(self) -> None:
        if self._buffer:
            self._send()
        self.delivery.flush()

    def set_status(self, status: str) -> None:
        if self._buffer:
            self._send()
        self.delivery.put({"op": "status", "status": status})
        self.flush()

    def close(self) -> None:
        """Send what is queued (or spool it) and stop the sending thread: the last call on a logger."""
        if self._buffer:
            self._send()
        self.delivery.close()

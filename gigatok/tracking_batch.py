"""Many MLflow runs written at once: the runs a study's launch creates (tags, ~120 params, the size metrics, a
status) and the unfinished runs it marks SCHEDULED again.

Through MLflow's API a new run is four calls (``create_run``, two ``log_batch`` for its params, ``update_run``),
about ten SQLite transactions, 0.1 s a run here: 105 s for a 1,000-run study (``bench/orchestration.py``). On a
local SQLite store of a schema revision :mod:`gigatok.tracking`'s direct reader was tested on
(:data:`gigatok.tracking.TESTED_SCHEMAS`), the rows MLflow would write (``runs``, ``tags``, ``params``, ``metrics``,
``latest_metrics``) are inserted directly, all runs in one transaction: all of them are written or none. Elsewhere (a
tracking server, a store of another revision, a store locked past the time-out, an experiment not active) the same
runs go through MLflow's API, one run at a time, as before.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sqlite3
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gigatok import tracking_schema as schema
from gigatok.tracking import PARAM_VALUE_LIMIT, TESTED_SCHEMAS, UntestedSchemaError, log_params, store_schema

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 20  # as MLflow's own SQLite sessions: a job's write in progress is waited for, not an error


@dataclass(frozen=True)
class NewRun:
    """One MLflow run to create: its name (the UI's Run Name), tags, params and metrics (logged at step 0)."""

    name: str
    tags: dict[str, str]
    params: dict[str, str]
    metrics: dict[str, float]


class NotWritten(RuntimeError):
    """The direct write was refused (nothing was written): the API path takes over and reports what is wrong."""


def create_runs(
    client: Any, experiment_id: str, runs: Sequence[NewRun], status: str, clock_tag: str | None = None
) -> list[str]:
    """Create ``runs`` in the experiment with ``status``; their run ids, in order. ``clock_tag``, when given, is a
    tag set to the time (ms since the epoch) each run is written."""
    path = sqlite_store(client)
    if path is not None and runs:
        try:
            return insert_runs(path, experiment_id, runs, status, clock_tag)
        except (sqlite3.Error, UntestedSchemaError, NotWritten) as exc:
            log.debug("MLflow runs created through the API (direct write of %s refused: %s)", path, exc)
    return [api_create(client, experiment_id, run, status, clock_tag) for run in runs]


def reschedule(client: Any, run_ids: Sequence[str], status: str, clock_tag: str | None = None) -> None:
    """Set existing runs' ``status`` (and ``clock_tag`` to the time each is written, when given)."""
    path = sqlite_store(client)
    if path is not None and run_ids:
        try:
            update_runs(path, run_ids, status, clock_tag)
            return
        except (sqlite3.Error, UntestedSchemaError, NotWritten) as exc:
            log.debug("MLflow runs updated through the API (direct write of %s refused: %s)", path, exc)
    for run_id in run_ids:
        if clock_tag is not None:
            client.set_tag(run_id, clock_tag, str(now_ms()))
        client.update_run(run_id, status=status)


def api_create(client: Any, experiment_id: str, run: NewRun, status: str, clock_tag: str | None) -> str:
    """One run through MLflow's API: ``create_run`` with its tags, its params and metrics, then its status."""
    tags = dict(run.tags) if clock_tag is None else {**run.tags, clock_tag: str(now_ms())}
    run_id: str = client.create_run(experiment_id, run_name=run.name, tags=tags).info.run_id
    log_params(client, run_id, run.params, run.metrics)
    client.update_run(run_id, status=status)
    return run_id


def now_ms() -> int:
    return int(time.time() * 1000)


def sqlite_store(client: Any) -> Path | None:
    """The file of a client's local SQLite store, else None."""
    uri = client.tracking_uri if hasattr(client, "tracking_uri") else client._tracking_client.tracking_uri
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


@contextlib.contextmanager
def write_transaction(path: Path) -> Iterator[sqlite3.Connection]:
    """One write transaction on an existing store of a tested schema, taken at once (``BEGIN IMMEDIATE``: waits for
    other writers up to the time-out); committed on leaving, rolled back on any error."""
    uri = f"{path.resolve().as_uri()}?mode=rw"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)) as db:
        revision = store_schema(db)
        if revision not in TESTED_SCHEMAS:
            raise UntestedSchemaError(f"{path}: MLflow schema {revision} is not one of {sorted(TESTED_SCHEMAS)}")
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


def metric_value(value: float) -> tuple[float, int]:
    """A metric as MLflow's SQL store keeps it: (value, is_nan); NaN as 0 and infinities as the largest doubles."""
    value = float(value)
    if math.isnan(value):
        return 0.0, 1
    if math.isinf(value):
        return math.copysign(1.7976931348623157e308, value), 0
    return value, 0


def insert_runs(
    path: Path, experiment_id: str, runs: Sequence[NewRun], status: str, clock_tag: str | None
) -> list[str]:
    """What ``create_run``, ``log_batch`` (params, metrics at step 0) and ``update_run(status)`` of each run write,
    as rows inserted in one transaction (MLflow 3.17's ``SqlAlchemyStore``: the run's user is its ``mlflow.user``
    tag, its artifacts under the experiment's location, its name also as the ``mlflow.runName`` tag)."""
    from mlflow.utils.uri import append_to_uri_path

    ids: list[str] = []
    rows: dict[str, list[tuple[Any, ...]]] = {"runs": [], "tags": [], "params": [], "metrics": []}
    with write_transaction(path) as db:
        found = db.execute(
            "SELECT artifact_location, lifecycle_stage FROM experiments WHERE experiment_id = ?", (int(experiment_id),)
        ).fetchone()
        if found is None or found[1] != "active":
            raise NotWritten(f"experiment {experiment_id} is not an active experiment of {path}")
        for run in runs:
            run_id, start = uuid.uuid4().hex, now_ms()
            ids.append(run_id)
            rows["runs"].append(
                (run_id, run.name, run.tags.get(schema.MLFLOW_USER, "unknown"), status, start)
                + (append_to_uri_path(found[0], run_id, "artifacts"), int(experiment_id))
            )
            tags = {**run.tags, schema.MLFLOW_RUN_NAME: run.name}
            if clock_tag is not None:
                tags[clock_tag] = str(start)
            rows["tags"] += [(key, value, run_id) for key, value in tags.items()]
            rows["params"] += [(key, str(value)[:PARAM_VALUE_LIMIT], run_id) for key, value in run.params.items()]
            rows["metrics"] += [(key, *metric_value(value), start, run_id) for key, value in run.metrics.items()]
        db.executemany(
            "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, status, "
            "start_time, end_time, source_version, lifecycle_stage, artifact_uri, experiment_id, deleted_time) "
            "VALUES (?, ?, 'UNKNOWN', '', '', ?, ?, ?, NULL, '', 'active', ?, ?, NULL)",
            rows["runs"],
        )
        db.executemany('INSERT INTO tags ("key", value, run_uuid) VALUES (?, ?, ?)', rows["tags"])
        db.executemany('INSERT INTO params ("key", value, run_uuid) VALUES (?, ?, ?)', rows["params"])
        for table in ("metrics", "latest_metrics"):
            db.executemany(
                f'INSERT INTO {table} ("key", value, is_nan, timestamp, run_uuid, step) VALUES (?, ?, ?, ?, ?, 0)',
                rows["metrics"],
            )
    return ids


def update_runs(path: Path, run_ids: Sequence[str], status: str, clock_tag: str | None) -> None:
    """What ``set_tag(clock_tag)`` and ``update_run(status)`` of each run write, in one transaction; refused (nothing
    written) if any of the runs is not an active run of the store."""
    with write_transaction(path) as db:
        for run_id in run_ids:
            updated = db.execute(
                "UPDATE runs SET status = ? WHERE run_uuid = ? AND lifecycle_stage = 'active'", (status, run_id)
            ).rowcount
            if updated != 1:
                raise NotWritten(f"MLflow run {run_id} is not an active run of {path}")
            if clock_tag is not None:
                db.execute(
                    'INSERT OR REPLACE INTO tags ("key", value, run_uuid) VALUES (?, ?, ?)',
                    (clock_tag, str(now_ms()), run_id),
                )

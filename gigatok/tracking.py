"""MLflow tracking: one experiment per study, one MLflow run per planned run, every number with its provenance.

The default store is a SQLite file in the working directory (``sqlite:///./mlflow.db``); any tracking server URI
works the same way. Everything goes through :class:`mlflow.MlflowClient` with explicit run ids, never through
MLflow's process-global "active run", so one process can serve several runs and jobs never cross-talk.

Tags (all ``gigatok.*``): study, run hash, tokenizer and AR hashes, profile, git commit, Slurm job id, the stage a
run is in, the error of a failed run, the substitute networks used, and one ``gigatok.provenance.<metric>`` per
metric saying which feature network and which sets produced it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TAG = "gigatok."
DEFAULT_DB_NAME = "mlflow.db"
SEARCH_PAGE = 50_000  # the SQL stores' largest page: a study's runs come back in one query
PARAM_CHUNK = 100  # MLflow's limit of params per log_batch call


class TrackingError(RuntimeError):
    """The tracking store cannot be used (unreachable server, bad URI)."""


def default_tracking_uri(directory: str | os.PathLike[str] | None = None) -> str:
    path = Path(directory or Path.cwd()).resolve() / DEFAULT_DB_NAME
    return f"sqlite:///{path}"


def resolve_tracking_uri(uri: str | None) -> str:
    """The URI given, else ``$MLFLOW_TRACKING_URI``, else the SQLite file in the working directory."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def _quiet_mlflow() -> None:
    # A dead server should fail in seconds, not after MLflow's default minutes of retries; and MLflow's alembic
    # migrations of a new SQLite file would otherwise print a page of INFO lines.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    import logging

    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
        logging.getLogger(name).setLevel(logging.WARNING)


def connect(uri: str | None, check: bool = True) -> Any:
    """An :class:`mlflow.MlflowClient` for ``uri``; with ``check``, fail fast if the store cannot be reached."""
    _quiet_mlflow()
    from mlflow import MlflowClient

    uri = resolve_tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=uri)
    if check:
        try:
            client.search_experiments(max_results=1)
        except Exception as exc:  # MLflow raises several types for a dead server or a bad URI
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
    """Every run of a study keyed by run hash: one search query (paged only past 50,000 runs)."""
    found: dict[str, TrackedRun] = {}
    token = None
    while True:
        page = client.search_runs([experiment_id], max_results=SEARCH_PAGE, page_token=token)
        for run in page:
            run_hash = run.data.tags.get(TAG + "run_hash")
            if run_hash is None:
                continue
            record = TrackedRun(
                run.info.run_id, run_hash, run.info.status, run.info.run_name, dict(run.data.tags),
                dict(run.data.metrics),
            )
            previous = found.get(run_hash)
            # A hash can appear twice only if a submission died between creating and tagging; prefer the
            # finished one, then the newest.
            if previous is None or (record.status == "FINISHED" and previous.status != "FINISHED"):
                found[run_hash] = record
        token = page.token
        if not token:
            return found


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


def log_params(client: Any, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v[:6000]) for k, v in sorted(params.items())]
    for start in range(0, len(items), PARAM_CHUNK):
        client.log_batch(run_id, params=items[start : start + PARAM_CHUNK], synchronous=True)


def git_commit() -> str:
    """The project's commit, with ``-dirty`` when the tree has changes; ``unknown`` outside a git checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True,
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
    """Writes to one MLflow run from inside a job: metrics batched and sent asynchronously.

    Training loops call :meth:`metrics` at every logging step; the call queues the values on MLflow's async
    logging queue and returns at once, so tracking costs the loop next to nothing. :meth:`flush` waits for the
    queue (called at the end of every stage, so a stage counts as logged only once its numbers are stored).
    """

    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self._pending: list[Any] = []

    def metrics(self, values: dict[str, float], step: int = 0, prefix: str = "") -> None:
        batch = _metric_list([(step, values)], prefix)
        if batch:
            self._pending.append(self.client.log_batch(self.run_id, metrics=batch, synchronous=False))

    def metric_records(self, records: Iterable[tuple[int, dict[str, float]]], prefix: str = "") -> None:
        """Many (step, values) records in as few calls as MLflow allows (1000 metrics per batch)."""
        batch = _metric_list(records, prefix)
        for start in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[start : start + 1000], synchronous=True)

    def tags(self, values: dict[str, Any]) -> None:
        for key, value in values.items():
            self.client.set_tag(self.run_id, key, str(value)[:5000])

    def artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def last_step(self, key: str) -> int:
        """Highest step already logged for ``key`` (-1 if none): a resumed stage logs only what comes after."""
        history = self.client.get_metric_history(self.run_id, key)
        return max((m.step for m in history), default=-1)

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        for operation in pending:
            if operation is not None:
                operation.wait()

    def set_status(self, status: str) -> None:
        self.flush()
        if status in ("FINISHED", "FAILED", "KILLED"):
            self.client.set_terminated(self.run_id, status)
        else:
            self.client.update_run(self.run_id, status=status)

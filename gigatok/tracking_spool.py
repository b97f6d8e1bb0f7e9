"""What a job could not send to MLflow, kept in the runs folder until the store answers again.

One JSONL file per MLflow run, ``RUNS/tracking-spool/<mlflow run id>.jsonl``: the tracking operations (metric
batches, tags, artifacts, a status) in the order the job made them, one JSON object a line::

    {"op": "metrics", "metrics": [[key, value, timestamp_ms, step], ...]}
    {"op": "tags", "tags": {key: value}}
    {"op": "artifact", "path": "/abs/file.json", "artifact_path": "eval/rfid"}
    {"op": "status", "status": "FINISHED"}

:meth:`Spool.replay` sends them in that order and empties the file. MLflow keeps a second point of the same metric
and step as a duplicate, so a replay leaves out every (key, step) the run already holds: a replay cut short and
started again, or one of a batch that reached the store before its answer was lost, stores each point once. Tags,
artifacts and statuses sent twice leave the run as sent once. An exclusive lock on the file keeps a job's own retry
and a study command's reconciliation (:func:`reconcile`) from replaying it at the same time; the file is emptied,
never removed, so a lock taken on it always guards the file in use.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

SPOOL_DIR = "tracking-spool"
T = TypeVar("T")

# MLflow error codes that retrying cannot fix (a rejected value, a deleted run): the operation is dropped with a
# warning instead of holding every later one back. Anything else (no connection, a time-out, a 5xx, a locked SQLite
# file) is an outage: the operation waits in the spool.
PERMANENT_ERRORS = frozenset({"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE", "BAD_REQUEST"})


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` from a tracking call is the store being unavailable (worth retrying) rather than a refusal."""
    return getattr(exc, "error_code", None) not in PERMANENT_ERRORS


def spool_path(runs_root: str | os.PathLike[str], run_id: str) -> Path:
    return Path(runs_root) / SPOOL_DIR / f"{run_id}.jsonl"


def metric_op(metrics: Iterable[Any]) -> dict[str, Any]:
    """A metrics operation of MLflow ``Metric`` entities."""
    return {"op": "metrics", "metrics": [[m.key, m.value, m.timestamp, m.step] for m in metrics]}


def once_more_if_duplicate(call: Callable[[], T]) -> T:
    """``call()``, again once when it failed on a row another process inserted at the same moment. MLflow's SQL store
    looks a row up and inserts it in two steps (a run's tag; an experiment's dataset, which every run of a study logs
    as its input), so two jobs doing the same at once can both try the insert, and the second is refused (BAD_REQUEST,
    "UNIQUE constraint failed", or "duplicate key" on PostgreSQL). The second attempt finds the row and uses it."""
    from mlflow.exceptions import MlflowException

    try:
        return call()
    except MlflowException as exc:
        if "UNIQUE constraint failed" not in str(exc) and "duplicate key" not in str(exc).lower():
            raise
        return call()


def set_tag(client: Any, run_id: str, key: str, value: str) -> None:
    """``client.set_tag``, again once when another process set the same tag of the run at the same moment (two jobs
    of one run, or a launch tagging the run its job has just started): the second attempt updates."""
    once_more_if_duplicate(lambda: client.set_tag(run_id, key, value))


def send(client: Any, run_id: str, op: dict[str, Any], stored: dict[str, set[int]] | None = None) -> None:
    """Apply one operation to the MLflow run ``run_id``. With ``stored`` (the steps the run holds per key, read
    with :func:`stored_steps`), metric points already there are left out, and those sent are added to it."""
    kind = op["op"]
    if kind == "metrics":
        from mlflow.entities import Metric

        points = op["metrics"]
        if stored is not None:
            points = [p for p in points if p[3] not in stored_steps(client, run_id, p[0], stored)]
        if points:
            client.log_batch(run_id, metrics=[Metric(k, v, t, s) for k, v, t, s in points], synchronous=True)
        if stored is not None:
            for key, _, _, step in points:
                stored[key].add(step)
    elif kind == "tags":
        for key, value in op["tags"].items():
            set_tag(client, run_id, key, value)
    elif kind == "artifact":
        if not Path(op["path"]).is_file():  # gone since (a cleaned runs folder): no retry can send it
            warnings.warn(f"tracking: {op['path']} no longer exists; not logged to run {run_id}", stacklevel=2)
            return
        client.log_artifact(run_id, op["path"], op.get("artifact_path"))
    elif kind == "status":
        if op["status"] in ("FINISHED", "FAILED", "KILLED"):
            client.set_terminated(run_id, op["status"])
        else:
            client.update_run(run_id, status=op["status"])
    else:
        raise ValueError(f"tracking spool: unknown operation {kind!r}")


def stored_steps(client: Any, run_id: str, key: str, stored: dict[str, set[int]]) -> set[int]:
    """The steps of ``key`` the run holds, read once per replay."""
    if key not in stored:
        stored[key] = {m.step for m in client.get_metric_history(run_id, key)}
    return stored[key]


@dataclass(frozen=True)
class Spool:
    """The spool file of one MLflow run."""

    path: Path

    @classmethod
    def of(cls, runs_root: str | os.PathLike[str], run_id: str) -> Spool:
        return cls(spool_path(runs_root, run_id))

    @property
    def run_id(self) -> str:
        return self.path.stem

    def pending(self) -> bool:
        """Whether operations wait in the file."""
        try:
            return self.path.stat().st_size > 0
        except FileNotFoundError:
            return False

    @contextlib.contextmanager
    def _locked(self, block: bool = True) -> Iterator[Any]:
        """The file open for reading and appending under an exclusive lock; None where ``block`` is False and
        another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
            except BlockingIOError:
                yield None
                return
            try:
                yield handle
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def append(self, op: dict[str, Any]) -> None:
        """Add one operation, on disk (fsynced) before this returns: a job killed next loses nothing it spooled."""
        line = json.dumps(op, separators=(",", ":")) + "\n"
        with self._locked() as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def operations(self) -> list[dict[str, Any]]:
        """The operations in the file, in order (a last line still being written, or cut short by a crash, is left
        out). Read without the lock: a reader never waits for a job's replay."""
        try:
            with open(self.path) as handle:
                return _read(handle)
        except FileNotFoundError:
            return []

    def final_status(self) -> str | None:
        """The last status the spool holds (FINISHED for a job that ended while the store was away), if any."""
        statuses = [op["status"] for op in self.operations() if op["op"] == "status"]
        return statuses[-1] if statuses else None

    def replay(self, client: Any, block: bool = True) -> int | None:
        """Send every operation, in order, and empty the file; the number sent. An outage raises, leaving the
        file as it was (the next replay starts again at its top; what this one stored is not stored twice).
        ``block=False``: None at once if another process holds the file."""
        with self._locked(block) as handle:
            if handle is None:
                return None
            ops = _read(handle)
            stored: dict[str, set[int]] = {}
            for op in ops:
                try:
                    send(client, self.run_id, op, stored)
                except Exception as exc:
                    if is_outage(exc):
                        raise
                    warnings.warn(f"tracking: {_describe(op)} refused by the store, dropped: {exc}", stacklevel=2)
            handle.truncate(0)
            return len(ops)


def _read(handle: Any) -> list[dict[str, Any]]:
    handle.seek(0)
    ops = []
    for line in handle.read().splitlines(keepends=True):
        if not line.endswith("\n"):  # the write a crash cut short; appends are whole lines otherwise
            break
        ops.append(json.loads(line))
    return ops


def _describe(op: dict[str, Any]) -> str:
    detail = {"metrics": lambda: f"{len(op['metrics'])} metric points", "tags": lambda: ", ".join(op["tags"])}
    return f"{op['op']} ({detail.get(op['op'], lambda: op.get('path') or op.get('status'))()})"


@dataclass(frozen=True)
class Reconciled:
    """What :func:`reconcile` did: runs whose spool it sent, and runs whose spool still waits (a job holds it, or
    the store failed during the replay) with the status the spool would give them."""

    sent: list[str]
    pending: dict[str, str | None]


def reconcile(client: Any, runs_root: str | os.PathLike[str], run_ids: Iterable[str]) -> Reconciled:
    """Replay the spool of each of ``run_ids`` that has one (a study command's start, ``--status``); a spool a live
    job is writing is left to it."""
    sent, pending = [], {}
    for run_id in run_ids:
        spool = Spool.of(runs_root, run_id)
        if not spool.pending():
            continue
        try:
            done = spool.replay(client, block=False)
        except Exception as exc:
            if not is_outage(exc):
                raise
            done = None
        if done is None:
            pending[run_id] = spool.final_status()
        else:
            sent.append(run_id)
    return Reconciled(sent, pending)

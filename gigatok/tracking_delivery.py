"""Sending a run's tracking operations from a background thread, so that training never waits for the store.

Operations (:mod:`gigatok.tracking_spool`'s: metric batches, tags, artifacts, a status) are queued by the job and
sent in order by one thread. When a send fails because the store is away, that operation and every later one go to
the run's spool file instead of the network (their order kept), and the thread tries the store again at most every
``retry_seconds``, also while nothing new is queued: once the spool replays, sending resumes directly. A failing
attempt costs at most one request's time-outs and retries (the job sets them short, :func:`job_http_settings`);
after it, operations are spooled at disk speed. What the job ends with still spooled is sent by the next invocation
(the job's next start, the study command's start and ``--status``).
"""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from gigatok.tracking_spool import Spool, is_outage, send

RETRY_SECONDS = 30.0  # between attempts to reach a store that is away
RETRY_ENV = "GIGATOK_TRACKING_RETRY_S"  # another interval, in seconds (a test's outage need not last 30 s)


def retry_seconds() -> float:
    """The interval between attempts: ``$GIGATOK_TRACKING_RETRY_S``, else :data:`RETRY_SECONDS`."""
    value = os.environ.get(RETRY_ENV)
    if value is None:
        return RETRY_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"${RETRY_ENV}={value!r}: must be a number of seconds > 0")
    return seconds


# A job's MLflow HTTP settings: one request waits at most 20 s for an answer and is retried twice (at once, then after
# 2-3 s: urllib3's backoff with MLflow's jitter), so a dead server costs an attempt about 3 s and a hung one about a
# minute, against MLflow's default of 7 retries over about 4 minutes at 120 s each. A server that is away is the
# spool's business, not the request's. Values the user exported win.
JOB_HTTP_SETTINGS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


@contextlib.contextmanager
def http_settings(defaults: dict[str, str]) -> Iterator[None]:
    """MLflow's HTTP settings ``defaults`` for this block (MLflow reads them at each request); values the user
    exported win."""
    added = [k for k in defaults if k not in os.environ]
    os.environ.update({k: defaults[k] for k in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def job_http_settings() -> contextlib.AbstractContextManager[None]:
    """:data:`JOB_HTTP_SETTINGS` for this block."""
    return http_settings(JOB_HTTP_SETTINGS)


_STOP = object()


def _say(message: str) -> None:
    print(f"tracking: {message}", file=sys.stderr, flush=True)


class Delivery:
    """The sending thread of one MLflow run. Without a spool (tools that log outside a job) an outage is not
    absorbed: its error is raised by the next :meth:`flush`."""

    def __init__(
        self,
        client: Any,
        run_id: str,
        spool: Spool | None = None,
        retry: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.spool = spool
        self.retry_seconds = retry_seconds() if retry is None else retry
        self._clock = clock
        self._queue: queue.Queue[Any] = queue.Queue()
        # An earlier job's leftovers go first: while they wait, so does everything after them.
        self._down = spool is not None and spool.pending()
        self._next_try = clock()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"tracking-{run_id[:8]}", daemon=True)
        self._thread.start()

    @property
    def down(self) -> bool:
        """Whether operations are being spooled (the store did not answer at the last attempt)."""
        return self._down

    def put(self, op: dict[str, Any]) -> None:
        self._queue.put(op)

    def flush(self) -> None:
        """Wait until every queued operation is sent or spooled (bounded: one attempt at most)."""
        self._queue.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        """Flush, try the store once more if operations are spooled, and stop the thread."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    def _run(self) -> None:
        while True:
            timeout = max(0.0, self._next_try - self._clock()) if self._down else None
            try:
                op = self._queue.get(timeout=timeout)
            except queue.Empty:
                self._retry()
                continue
            try:
                if op is _STOP:
                    self._retry(force=True)
                    return
                self._deliver(op)
            except Exception as exc:  # a spool that cannot be written (full disk): the run's own files stay
                _say(f"run {self.run_id}: operation lost: {type(exc).__name__}: {exc}")
            finally:
                self._queue.task_done()

    def _retry(self, force: bool = False) -> None:
        """Replay the spool when the time for another attempt has come (or ``force``); success ends the outage."""
        if not self._down or self.spool is None or (not force and self._clock() < self._next_try):
            return
        try:
            sent = self.spool.replay(self.client)
        except Exception as exc:
            self._next_try = self._clock() + self.retry_seconds
            if force:
                _say(
                    f"run {self.run_id}: store still unreachable ({_reason(exc)}); {self.spool.path} is sent by the "
                    "next invocation (the study command's start or --status)"
                )
            return
        self._down = False
        _say(f"run {self.run_id}: the store answers again; {sent} spooled operations sent")

    def _deliver(self, op: dict[str, Any]) -> None:
        self._retry()
        if self._down:
            assert self.spool is not None
            self.spool.append(op)
            return
        try:
            send(self.client, self.run_id, op)
        except Exception as exc:
            if not is_outage(exc):
                _say(f"run {self.run_id}: {op['op']} refused by the store, dropped: {_reason(exc)}")
            elif self.spool is None:
                self._error = exc
            else:
                self._down = True
                self._next_try = self._clock() + self.retry_seconds
                self.spool.append(op)
                _say(
                    f"run {self.run_id}: store unreachable ({_reason(exc)}); training goes on, tracking is spooled "
                    f"to {self.spool.path} and retried every {self.retry_seconds:g} s"
                )


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

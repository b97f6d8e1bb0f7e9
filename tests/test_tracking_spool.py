"""A tracking store that goes away mid-run: the job goes on, what it logs waits in the run's spool file, and is sent
once, in order, when the store answers again (in the same job, or at the next invocation).

A fake store here (it fails while ``up`` is False, and can store a batch before losing its answer); the real server
killed and restarted under a training run is tests/test_tracking_outage.py.
"""

from __future__ import annotations

import fcntl
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from gigatok.tracking import RunLogger
from gigatok.tracking_spool import Spool, reconcile, spool_path

RUN = "0123456789abcdef0123456789abcdef"


class Point:
    def __init__(self, step: int) -> None:
        self.step = step


class FakeStore:
    """An MLflow client of one run that records what it stores, in order; raises MLflow's error for a dead server
    while ``up`` is False. ``lose_answer``: the next batch is stored, then the call fails as if the answer was lost."""

    def __init__(self) -> None:
        self.up = True
        self.lose_answer = False
        self.events: list[tuple[str, Any]] = []  # ("metric", (key, step)), ("tag", (key, value)), ...
        self.calls = 0

    def _check(self) -> None:
        from mlflow.exceptions import MlflowException

        self.calls += 1
        if not self.up:
            raise MlflowException("API request to http://127.0.0.1:1/api failed: Connection refused")

    def log_batch(self, run_id: str, metrics: list[Any], synchronous: bool) -> None:
        self._check()
        self.events.extend(("metric", (m.key, m.step)) for m in metrics)
        if self.lose_answer:
            self.lose_answer = False
            from mlflow.exceptions import MlflowException

            raise MlflowException("API request failed: Read timed out")

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self._check()
        self.events.append(("tag", (key, value)))

    def log_artifact(self, run_id: str, path: str, artifact_path: str | None) -> None:
        self._check()
        self.events.append(("artifact", (Path(path).name, artifact_path)))

    def set_terminated(self, run_id: str, status: str) -> None:
        self._check()
        self.events.append(("status", status))

    def update_run(self, run_id: str, status: str) -> None:
        self.set_terminated(run_id, status)

    def get_metric_history(self, run_id: str, key: str) -> list[Point]:
        self._check()
        return [Point(step) for kind, (k, step) in self.metric_events() if k == key]

    def metric_events(self) -> list[tuple[str, tuple[str, int]]]:
        return [e for e in self.events if e[0] == "metric"]

    def steps(self, key: str) -> list[int]:
        return [step for _, (k, step) in self.metric_events() if k == key]


def _log(logger: RunLogger, steps: range) -> None:
    for step in steps:
        logger.metrics({"loss": 1.0 / (step + 1), "lr": 0.1}, step=step, prefix="tokenizer/")


def _wait_until(condition: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_an_outage_is_spooled_and_replayed_once_in_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store, spool = FakeStore(), Spool.of(tmp_path, RUN)
    logger = RunLogger(store, RUN, batch_seconds=0.0, spool=spool, retry_seconds=0.5)
    _log(logger, range(1, 4))
    logger.flush()
    store.up = False  # the server dies
    _log(logger, range(4, 7))
    logger.tags({"gigatok.logged.tokenizer": "1"})
    started = time.monotonic()
    logger.flush()  # the stage's end: bounded, whatever the store does
    assert time.monotonic() - started < 2.0
    assert logger.delivery.down and spool.pending()
    assert [op["op"] for op in spool.operations()] == ["metrics", "metrics", "metrics", "tags"]
    attempts = store.calls
    time.sleep(1.2)  # while away, the store is tried again at most every retry_seconds
    assert store.calls - attempts <= 3
    store.up = True  # back on the same address
    _wait_until(lambda: not logger.delivery.down)  # the idle thread finds it without anything new being logged
    _log(logger, range(7, 9))
    logger.set_status("FINISHED")
    logger.close()
    assert store.steps("tokenizer/loss") == list(range(1, 9)) == store.steps("tokenizer/lr")  # once each, in order
    kinds = [kind for kind, _ in store.events]
    assert kinds.index("tag") > max(i for i, e in enumerate(store.events) if e[1] == ("tokenizer/loss", 6))
    assert store.events[-1] == ("status", "FINISHED") and not spool.pending()
    err = capsys.readouterr().err
    assert "store unreachable" in err and "training goes on" in err and "4 spooled operations sent" in err


def test_a_batch_stored_before_its_answer_was_lost_is_not_stored_twice(tmp_path: Path) -> None:
    """The server committed the batch and died before answering: the job spools it; the replay finds its points
    in the run's history and leaves them out."""
    store, spool = FakeStore(), Spool.of(tmp_path, RUN)
    logger = RunLogger(store, RUN, batch_seconds=0.0, spool=spool, retry_seconds=0.2)
    _log(logger, range(1, 3))
    logger.flush()
    store.lose_answer = True
    _log(logger, range(3, 4))
    logger.flush()
    assert logger.delivery.down and store.steps("tokenizer/loss") == [1, 2, 3]
    _log(logger, range(4, 6))
    time.sleep(0.3)
    logger.close()
    assert store.steps("tokenizer/loss") == [1, 2, 3, 4, 5]
    assert not Counter(e for _, e in store.metric_events()) - Counter(set(e for _, e in store.metric_events()))


def test_a_job_that_ends_during_an_outage_is_finished_by_the_next_invocation(tmp_path: Path) -> None:
    store, spool = FakeStore(), Spool.of(tmp_path, RUN)
    logger = RunLogger(store, RUN, batch_seconds=0.0, spool=spool, retry_seconds=60.0)
    _log(logger, range(1, 3))
    logger.flush()
    store.up = False
    _log(logger, range(3, 5))
    result = tmp_path / "rfid.json"
    result.write_text("{}")
    logger.artifact(result, "eval/rfid")
    logger.tags({"gigatok.stage": "done"})
    logger.set_status("FINISHED")
    logger.close()  # one last attempt fails: the spool stays for the next invocation
    assert spool.final_status() == "FINISHED" and store.events[-1][0] == "metric"
    # A study command's start (or --status) on another day, the store back
    store.up = True
    done = reconcile(store, tmp_path, [RUN, "a-run-with-no-spool"])
    assert done.sent == [RUN] and done.pending == {}
    assert store.steps("tokenizer/loss") == [1, 2, 3, 4]
    assert store.events[-3:] == [
        ("artifact", ("rfid.json", "eval/rfid")),
        ("tag", ("gigatok.stage", "done")),
        ("status", "FINISHED"),
    ]
    assert reconcile(store, tmp_path, [RUN]).sent == []  # nothing twice


def test_a_replay_cut_short_and_started_again_stores_each_point_once(tmp_path: Path) -> None:
    spool = Spool.of(tmp_path, RUN)
    for step in range(1, 5):
        spool.append({"op": "metrics", "metrics": [["loss", 1.0, 0, step]]})
    spool.append({"op": "status", "status": "FINISHED"})

    class FailsAfterTwo(FakeStore):
        def log_batch(self, run_id: str, metrics: list[Any], synchronous: bool) -> None:
            if len(self.metric_events()) == 2:
                self.up = False
            super().log_batch(run_id, metrics, synchronous)

    store = FailsAfterTwo()
    with pytest.raises(Exception, match="Connection refused"):
        spool.replay(store)
    assert store.steps("loss") == [1, 2] and len(spool.operations()) == 5  # the spool is kept whole
    store.up, store.log_batch = True, FakeStore.log_batch.__get__(store)  # type: ignore[method-assign]
    assert spool.replay(store) == 5
    assert store.steps("loss") == [1, 2, 3, 4] and not spool.pending()


def test_a_refused_operation_is_dropped_and_the_rest_sent(tmp_path: Path) -> None:
    """A value the store refuses (not an outage) cannot succeed later: it must not hold the spool back forever."""
    from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

    class Refuses(FakeStore):
        def set_tag(self, run_id: str, key: str, value: str) -> None:
            if key == "bad":
                raise MlflowException("tag value too long", error_code=INVALID_PARAMETER_VALUE)
            super().set_tag(run_id, key, value)

    spool = Spool.of(tmp_path, RUN)
    spool.append({"op": "tags", "tags": {"bad": "x"}})
    spool.append({"op": "status", "status": "FINISHED"})
    store = Refuses()
    with pytest.warns(UserWarning, match="refused by the store, dropped"):
        assert spool.replay(store) == 2
    assert store.events == [("status", "FINISHED")]


def test_a_last_line_cut_short_by_a_crash_is_left_out(tmp_path: Path) -> None:
    spool = Spool.of(tmp_path, RUN)
    spool.append({"op": "status", "status": "RUNNING"})
    with spool.path.open("a") as f:
        f.write('{"op": "metrics", "metr')
    assert spool.operations() == [{"op": "status", "status": "RUNNING"}]


def test_a_spool_a_live_job_holds_is_left_to_it_and_shown_pending(tmp_path: Path) -> None:
    spool = Spool.of(tmp_path, RUN)
    spool.append({"op": "status", "status": "FINISHED"})
    store = FakeStore()
    with spool.path.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a job replaying it right now
        assert reconcile(store, tmp_path, [RUN]).pending == {RUN: "FINISHED"} and store.events == []
    assert reconcile(store, tmp_path, [RUN]).sent == [RUN] and store.events == [("status", "FINISHED")]


def test_status_says_finished_on_disk_until_the_spool_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``studies/run.py STUDY --status`` on a real SQLite store: a run whose job finished while the store was away is
    shown as such while a job holds its spool, and FINISHED, with its spooled metrics once, after."""
    from services import SMALL_RUN, run_cli

    from gigatok.launch import StudyLaunch, plan_study, run_context
    from studies.options import load_catalog

    load_catalog()
    args = ["entropy_loss", "--only", "entropy=True", *SMALL_RUN]
    monkeypatch.chdir(tmp_path)
    overrides = [value for flag, value in zip(SMALL_RUN[::2], SMALL_RUN[1::2], strict=True) if flag == "--set"]
    specs = plan_study("entropy_loss", "tiny", None, overrides, "1", None, "entropy=True")
    ctx = run_context("runs", None, None, False, None)
    study = StudyLaunch.prepare(
        "entropy_loss", "tiny", specs, ctx, executor="debug", local_parallel=None, slurm_flags=None, data=None
    )
    study.register()
    (run_id,) = study.run_ids.values()
    spool = Spool.of(ctx.root, run_id)
    spool.append({"op": "metrics", "metrics": [["tokenizer/loss", 0.5, 0, 2], ["tokenizer/loss", 0.4, 0, 4]]})
    spool.append({"op": "tags", "tags": {"gigatok.stage": "done"}})
    spool.append({"op": "status", "status": "FINISHED"})
    with spool.path.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        code, out, _ = run_cli([*args, "--status"], tmp_path, monkeypatch, capsys)
        assert code == 0 and "SCHEDULED" in out
        assert f"finished on disk, tracking pending ({spool_path(ctx.root, run_id)})" in out
    code, out, _ = run_cli([*args, "--status", "--json"], tmp_path, monkeypatch, capsys)
    (row,) = json.loads(out)
    assert code == 0 and row["status"] == "FINISHED" and row["tracking_pending"] is None
    history = study.client.get_metric_history(run_id, "tokenizer/loss")
    assert sorted(m.step for m in history) == [2, 4]


def test_a_bad_retry_interval_is_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from gigatok.tracking_delivery import RETRY_ENV, RETRY_SECONDS, retry_seconds

    monkeypatch.delenv(RETRY_ENV, raising=False)
    assert retry_seconds() == RETRY_SECONDS
    monkeypatch.setenv(RETRY_ENV, "5")
    assert retry_seconds() == 5.0
    for bad in ("0", "soon"):
        monkeypatch.setenv(RETRY_ENV, bad)
        with pytest.raises(ValueError, match=rf"^\${RETRY_ENV}='{bad}': must be a number of seconds > 0$"):
            retry_seconds()

"""RunLogger's batching: what a training loop logs reaches MLflow in few transactions, all of it, in order, without
the loop waiting for the store."""

from __future__ import annotations

import contextlib
import math
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gigatok.tracking import MAX_BATCH_METRICS, RunLogger


class FakeClient:
    """Records every log_batch call: (run id, metric (key, step) pairs)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[str, int]]]] = []

    def log_batch(self, run_id: str, metrics: list[Any], synchronous: bool) -> None:
        self.calls.append((run_id, [(m.key, m.step) for m in metrics]))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_fast_loop_sends_one_batch_per_interval_and_flush_sends_the_rest() -> None:
    client, clock = FakeClient(), Clock()
    logger = RunLogger(client, "run", batch_seconds=5.0, clock=clock)
    for step in range(1, 11):  # ten steps, one second apart
        logger.metrics({"loss": 1.0 / step, "lr": 0.1}, step=step, prefix="ar/")
        clock.now += 1.0
    logger.delivery.flush()  # what the sending thread was given so far, sent
    # Step 1 goes at once (nothing was sent yet); steps 2-6 wait until five seconds have passed since then.
    assert [sorted({s for _, s in metrics}) for _, metrics in client.calls] == [[1], [2, 3, 4, 5, 6]]
    logger.flush()
    sent = [pair for _, metrics in client.calls for pair in metrics]
    assert sorted(sent) == sorted((f"ar/{k}", s) for s in range(1, 11) for k in ("loss", "lr"))  # all, once each
    assert len(client.calls) == 3
    logger.close()


def test_the_loop_never_waits_for_the_store() -> None:
    """A store that takes its time (here: until released) holds up the sending thread, not the training loop."""
    import threading
    import time

    release = threading.Event()

    class SlowClient(FakeClient):
        def log_batch(self, run_id: str, metrics: list[Any], synchronous: bool) -> None:
            release.wait(60)
            super().log_batch(run_id, metrics, synchronous)

    client = SlowClient()
    logger = RunLogger(client, "run", batch_seconds=0.0)
    start = time.monotonic()
    for step in range(50):
        logger.metrics({"loss": 1.0}, step=step)
    assert time.monotonic() - start < 2.0 and client.calls == []
    release.set()
    logger.flush()
    assert [s for _, metrics in client.calls for _, s in metrics] == list(range(50))  # all, in order
    logger.close()


def test_a_slow_loop_sends_every_step_at_once() -> None:
    client, clock = FakeClient(), Clock()
    logger = RunLogger(client, "run", batch_seconds=5.0, clock=clock)
    for step in range(3):
        logger.metrics({"loss": 1.0}, step=step)
        clock.now += 60.0  # a minute between logging steps: nothing may wait for the next one
    logger.delivery.flush()
    assert [[s for _, s in metrics] for _, metrics in client.calls] == [[0], [1], [2]]
    logger.close()


def test_batches_respect_mlflow_limit_and_nan_is_left_out() -> None:
    client, clock = FakeClient(), Clock()
    logger = RunLogger(client, "run", batch_seconds=1e9, clock=clock)
    logger.metrics({"first": 0.0}, step=0)  # sent at once; every later call stays in the buffer until its size says
    wide = {f"k{i}": float(i) for i in range(300)}
    for step in range(1, 5):
        logger.metrics({**wide, "nan": float("nan")}, step=step)
    logger.flush()
    sizes = [len(metrics) for _, metrics in client.calls]
    assert max(sizes) <= MAX_BATCH_METRICS and sum(sizes) == 1 + 4 * 300
    assert all(key != "nan" for _, metrics in client.calls for key, _ in metrics)
    logger.close()


def test_sqlite_tables_read_as_mlflow_search_returns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.entities import Metric, Param, RunTag

    from gigatok.tracking import api_runs, connect, sqlite_runs, study_runs

    db = tmp_path / "mlflow.db"
    client = connect(f"sqlite:///{db}")
    experiment = client.create_experiment("study-tiny")
    other = client.create_experiment("other")  # runs of another experiment stay out
    client.create_run(other, tags={"gigatok.run_hash": "h1"})

    def logged(run_hash: str, status: str, start: int, metrics: dict[str, float]) -> str:
        run_id = client.create_run(
            experiment, start_time=start, run_name=f"run {run_hash}", tags={"gigatok.run_hash": run_hash}
        ).info.run_id
        client.log_batch(
            run_id,
            metrics=[Metric(k, v, start, 3) for k, v in metrics.items()],
            params=[Param("a", "1"), Param("b", "two")],
            tags=[RunTag("gigatok.stage", "done")],
        )
        client.set_terminated(run_id, status)
        return run_id

    finished = logged("h1", "FINISHED", 1_000, {"rfid": 9.0, "gfid": math.nan, "tokenizer/total_loss": 0.5})
    logged("h1", "FAILED", 2_000, {"rfid": 1.0})  # a newer attempt of the same config, which failed
    other_hash = logged("h2", "FINISHED", 3_000, {"rfid": 8.0})
    client.delete_run(logged("h3", "FINISHED", 4_000, {}))  # deleted runs stay out

    def shape(run: Any) -> tuple:
        metrics = {k: "nan" if math.isnan(v) else v for k, v in run.data.metrics.items()}
        return (
            run.info.run_id,
            run.info.run_name,
            run.info.status,
            run.info.start_time,
            run.info.end_time,
            dict(run.data.tags),
            dict(run.data.params),
            metrics,
        )

    searched = [shape(r) for r in api_runs(client, experiment)]
    assert [shape(r) for r in sqlite_runs(db, experiment)] == searched  # same runs, order, values, NaN
    subset = sqlite_runs(db, experiment, params=("b",), curves=False)
    assert [r.data.params for r in subset] == [{"b": "two"}] * 3
    assert all("tokenizer/total_loss" not in r.data.metrics for r in subset)

    runs = study_runs(client, experiment)
    assert {h: r.run_id for h, r in runs.items()} == {"h1": finished, "h2": other_hash}  # FINISHED wins
    assert runs["h1"].metrics["tokenizer/total_loss"] == 0.5

    # A store whose schema the direct read was not tested on goes through MLflow's API, with the same result.
    from gigatok import tracking

    assert tracking.store_schema(sqlite3.connect(db)) in tracking.TESTED_SCHEMAS  # this MLflow's, tested
    with monkeypatch.context() as patch:
        patch.setattr(tracking, "TESTED_SCHEMAS", frozenset({"some-other-revision"}))
        with pytest.raises(tracking.UntestedSchemaError, match="is not one of"):
            sqlite_runs(db, experiment)
        assert [shape(r) for r in tracking.experiment_runs(client, experiment)] == searched
    doctored = tmp_path / "doctored.db"  # a copy as a newer MLflow would leave it: the direct read refuses it
    shutil.copy(db, doctored)
    with contextlib.closing(sqlite3.connect(doctored)) as conn, conn:
        conn.execute("UPDATE alembic_version SET version_num = 'ffffffffffff'")
    with pytest.raises(tracking.UntestedSchemaError, match="ffffffffffff"):
        sqlite_runs(doctored, experiment)

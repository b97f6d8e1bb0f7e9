"""Runs written at once (gigatok.tracking_batch): on a SQLite store of a tested schema, one transaction that leaves
exactly what MLflow's own calls leave; anywhere else, MLflow's API as before."""

from __future__ import annotations

import math
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import studies.catalog  # noqa: F401  (registers the studies)
from gigatok import tracking_batch
from gigatok import tracking_schema as schema
from gigatok.tracking import connect, ensure_experiment
from gigatok.tracking_batch import NewRun, create_runs, reschedule

RUNS = [
    NewRun(
        "first",
        {schema.MLFLOW_USER: "someone", schema.RUN_HASH: "aaa", "note": "x" * 7000},
        {"lr": "0.001", "long": "y" * 7000, "layers": "[1, 2]"},
        {"params_tokenizer": 1234.0, "nan": math.nan, "big": math.inf, "small": -math.inf},
    ),
    NewRun("second", {schema.RUN_HASH: "bbb"}, {}, {}),  # no user: MLflow's "unknown"; nothing to log
]


class Spy:
    """A client that counts the MLflow calls made through it; ``uri`` is the tracking URI it reports."""

    def __init__(self, client: Any, uri: str | None = None) -> None:
        self.client, self.tracking_uri, self.calls = client, uri or client.tracking_uri, 0

    def __getattr__(self, name: str) -> Any:
        self.calls += 1
        return getattr(self.client, name)


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow store, made once: creating one (MLflow's migrations) takes seconds, copying it nothing."""
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    connect(f"sqlite:///{path}")
    return path


def copy_of(empty_store: Path, folder: Path) -> str:
    folder.mkdir(parents=True)
    shutil.copyfile(empty_store, folder / "mlflow.db")
    return f"sqlite:///{folder / 'mlflow.db'}"


def store(empty_store: Path, folder: Path) -> tuple[Any, str]:
    client = connect(copy_of(empty_store, folder))
    return client, ensure_experiment(client, "batch", "runs written at once")


def untested(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every store's schema revision unknown to the direct writer: the API path is taken."""
    monkeypatch.setattr(tracking_batch, "TESTED_SCHEMAS", frozenset())


def stored(client: Any, run_ids: list[str]) -> list[dict[str, Any]]:
    """What MLflow returns of each run, less what differs between any two writes (ids, times)."""
    out = []
    for run_id in run_ids:
        run = client.get_run(run_id)
        info = run.info
        assert info.artifact_uri.endswith(f"/{run_id}/artifacts") and info.start_time > 0 and info.end_time is None
        history = {k: [(str(m.value), m.step) for m in client.get_metric_history(run_id, k)] for k in run.data.metrics}
        tags = dict(run.data.tags)
        out.append(
            {
                "info": (info.run_name, info.status, info.user_id, info.lifecycle_stage, info.experiment_id),
                "tags": {k: v for k, v in tags.items() if k != schema.SCHEDULED_AT},
                "scheduled_at": abs(int(tags[schema.SCHEDULED_AT]) - info.start_time) < 1000,  # when it was written
                "params": dict(run.data.params),
                "metrics": {k: str(v) for k, v in run.data.metrics.items()},  # NaN compares as text
                "history": history,
            }
        )
    return out


def test_the_direct_write_stores_what_mlflow_api_stores(
    empty_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    direct_client, direct_experiment = store(empty_store, tmp_path / "direct")
    spy = Spy(direct_client)
    direct = create_runs(spy, direct_experiment, RUNS, "SCHEDULED", schema.SCHEDULED_AT)
    assert spy.calls == 0  # no MLflow call: the rows went in directly
    untested(monkeypatch)
    api_client, api_experiment = store(empty_store, tmp_path / "api")
    spy = Spy(api_client)
    through_api = create_runs(spy, api_experiment, RUNS, "SCHEDULED", schema.SCHEDULED_AT)
    assert spy.calls >= 3 * len(RUNS)  # create_run, log_batch, update_run for each run
    assert stored(direct_client, direct) == stored(api_client, through_api)
    first = stored(direct_client, direct)[0]
    assert first["info"][:3] == ("first", "SCHEDULED", "someone") and first["scheduled_at"]
    assert first["metrics"]["big"] == "1.7976931348623157e+308" and first["metrics"]["nan"] == "nan"
    assert len(first["params"]["long"]) == 6000 and len(first["tags"]["note"]) == 7000
    assert first["tags"][schema.MLFLOW_RUN_NAME] == "first" and stored(direct_client, direct)[1]["info"][2] == "unknown"


def test_a_failed_direct_write_leaves_no_run(
    empty_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, experiment = store(empty_store, tmp_path / "store")
    calls = []

    def fails_at_the_second_run(value: float) -> tuple[float, int]:
        calls.append(value)
        if len(calls) > len(RUNS[0].metrics):
            raise ValueError("a failure halfway")
        return (value, 0)

    monkeypatch.setattr(tracking_batch, "metric_value", fails_at_the_second_run)
    twice = [RUNS[0], RUNS[0]]
    with pytest.raises(ValueError, match="halfway"):
        create_runs(client, experiment, twice, "SCHEDULED")
    assert client.search_runs([experiment]) == []


def test_a_server_or_an_untested_schema_goes_through_mlflow_api(
    empty_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, experiment = store(empty_store, tmp_path / "store")
    as_server = Spy(client, "http://127.0.0.1:5000")  # routed by its URI; the calls still reach this store
    (run_id,) = create_runs(as_server, experiment, RUNS[1:], "SCHEDULED")
    assert as_server.calls == 3 and client.get_run(run_id).info.status == "SCHEDULED"
    reschedule(as_server, [run_id], "RUNNING", schema.SCHEDULED_AT)
    assert as_server.calls == 5 and client.get_run(run_id).info.status == "RUNNING"
    untested(monkeypatch)
    spy = Spy(client)
    reschedule(spy, [run_id], "SCHEDULED")
    assert spy.calls == 1 and client.get_run(run_id).info.status == "SCHEDULED"


def test_rescheduling_marks_every_run_or_none(empty_store: Path, tmp_path: Path) -> None:
    client, experiment = store(empty_store, tmp_path / "store")
    run_ids = create_runs(client, experiment, RUNS, "SCHEDULED", schema.SCHEDULED_AT)
    for run_id in run_ids:
        client.set_terminated(run_id, "FAILED")
    before = int(client.get_run(run_ids[0]).data.tags[schema.SCHEDULED_AT])
    spy = Spy(client)
    reschedule(spy, run_ids, "SCHEDULED", schema.SCHEDULED_AT)
    assert spy.calls == 0
    for run_id in run_ids:
        run = client.get_run(run_id)
        assert run.info.status == "SCHEDULED" and int(run.data.tags[schema.SCHEDULED_AT]) >= before
    client.delete_run(run_ids[1])
    path = tmp_path / "store" / "mlflow.db"
    with pytest.raises(tracking_batch.NotWritten):
        tracking_batch.update_runs(path, run_ids, "KILLED", None)
    assert client.get_run(run_ids[0]).info.status == "SCHEDULED"  # rolled back as a whole
    with pytest.raises(Exception, match="must be in the 'active' state"):  # the API's own error, after the refusal
        reschedule(client, run_ids[1:], "KILLED")


def test_the_direct_write_needs_an_active_experiment(empty_store: Path, tmp_path: Path) -> None:
    client, experiment = store(empty_store, tmp_path / "store")
    client.delete_experiment(experiment)
    with pytest.raises(Exception, match="must be in the 'active' state"):
        create_runs(client, experiment, RUNS, "SCHEDULED")
    with sqlite3.connect(tmp_path / "store" / "mlflow.db") as db:
        assert db.execute("SELECT count(*) FROM runs").fetchone() == (0,)


def launch(tmp_path: Path, store_name: str, empty_store: Path | None = None) -> Any:
    """A launch of two runs of a catalog study, on a copy of the empty store if given (else the one already there)."""
    from gigatok import launch

    specs = launch.plan_study("scaling_1d_vs_2d", "tiny", None, [], None, None, "size=S-S,seed=0")
    uri = (
        f"sqlite:///{tmp_path / store_name / 'mlflow.db'}"
        if empty_store is None
        else copy_of(empty_store, tmp_path / store_name)
    )
    ctx = launch.run_context(str(tmp_path / "runs"), uri, None, False, None)
    return launch.StudyLaunch.prepare(
        "scaling_1d_vs_2d", "tiny", specs, ctx, executor="local", local_parallel=1, slurm_flags=None, data=None
    )


def test_a_study_registers_the_same_runs_either_way(
    empty_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    direct = launch(tmp_path, "direct", empty_store)
    direct.register()
    untested(monkeypatch)
    through_api = launch(tmp_path, "api", empty_store)
    through_api.register()
    assert len(direct.created) == len(direct.todo) == 2 and set(direct.run_ids) == set(through_api.run_ids)
    hashes = sorted(direct.run_ids)
    assert stored(direct.client, [direct.run_ids[h] for h in hashes]) == stored(
        through_api.client, [through_api.run_ids[h] for h in hashes]
    )


def test_a_second_launch_takes_the_first_ones_runs(empty_store: Path, tmp_path: Path) -> None:
    """Two launches prepared at once (neither saw the other's runs): the second registers none of its own."""
    first, second = launch(tmp_path, "store", empty_store), launch(tmp_path, "store")
    first.register()
    second.register()
    assert second.run_ids == first.run_ids and second.created == []
    assert len(first.client.search_runs([first.experiment_id])) == len(first.todo)
    run_id = next(iter(first.run_ids.values()))
    first.client.set_terminated(run_id, "FAILED")
    third = launch(tmp_path, "store")  # a relaunch: the failed run is SCHEDULED again, under its own MLflow run
    third.register()
    assert third.run_ids == first.run_ids and third.created == []
    assert first.client.get_run(run_id).info.status == "SCHEDULED"

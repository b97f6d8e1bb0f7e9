"""A real MLflow tracking server on loopback, and the SQLite default, under concurrent writer processes.

Parallel Slurm jobs (or local workers) each log their own run while the study command polls the store; these tests
run that load as separate processes through the code path the training loops use (RunLogger: asynchronous batches),
and count every metric afterwards.

Measured (MLflow 3.17, two busy cores): four writers of 150 steps x 6 metrics, with the poller, lose nothing on
either store. MLflow gives each SQLite session a 20 s busy time-out, which is what keeps local concurrent runs from
failing with "database is locked"; a store on a shared filesystem under a whole job array is a different matter,
hence the recommendation of the server for Slurm (README, "Tracking on a cluster").
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from services import WRITER_KEYS, MlflowServer, listening_addresses, start_writers

from gigatok.tracking import connect, ensure_experiment, study_runs

pytestmark = pytest.mark.server

WRITERS = 4
STEPS = 150


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    with MlflowServer(tmp_path_factory.mktemp("mlflow-server")) as running:
        yield running


def _concurrent_runs(uri: str) -> None:
    """Runs created up front (as ``studies/run.py`` does before dispatch), then written by WRITERS processes at
    once while this process polls the study's runs as ``--wait`` does."""
    client = connect(uri)
    experiment_id = ensure_experiment(client, "concurrency-tiny", "concurrent writers")
    run_ids = [
        client.create_run(experiment_id, run_name=f"writer {i}", tags={"gigatok.run_hash": f"h{i}"}).info.run_id
        for i in range(WRITERS)
    ]
    writers = start_writers(uri, run_ids, STEPS)
    polls = 0
    try:
        while any(w.poll() is None for w in writers):
            study_runs(client, experiment_id)  # a reader among the writers, as the study command is
            polls += 1
            time.sleep(0.5)
    finally:
        for writer in writers:
            if writer.poll() is None:
                writer.kill()
    outputs = [w.communicate()[0] for w in writers]
    for writer, output in zip(writers, outputs, strict=True):
        assert writer.returncode == 0, output
    assert polls > 0
    for run_id in run_ids:
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        for key in WRITER_KEYS:
            history = client.get_metric_history(run_id, f"tokenizer/{key}")
            assert sorted(m.step for m in history) == list(range(1, STEPS + 1)), f"{run_id} {key}: metrics lost"
        assert run.data.metrics["tokenizer/loss"] == STEPS  # the latest value is the last step's


def test_server_binds_loopback_only(server: MlflowServer) -> None:
    assert listening_addresses(server.port) == {"127.0.0.1"}


def test_concurrent_writers_through_the_server_lose_no_metric(server: MlflowServer) -> None:
    _concurrent_runs(server.uri)


def test_concurrent_writers_on_the_sqlite_default_lose_no_metric(tmp_path: Path) -> None:
    _concurrent_runs(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_server_stops_cleanly_and_twice(server: MlflowServer) -> None:
    """Last in this module: stops the module's server (its fixture's stop is then a third, harmless one)."""
    pid = int((server.folder / "server.pid").read_text())
    server.stop()
    server.stop()
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    assert listening_addresses(server.port) == set()

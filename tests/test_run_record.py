"""What a run records about itself in MLflow when its job starts: config artifact, dataset inputs, system metrics,
its wait in the queue and a start time at its first stage."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import studies.catalog  # noqa: F401  (registers the studies)
from gigatok import tracking_schema as schema
from gigatok.launch import plan_study
from gigatok.runs.run_record import describe_run, record_start, system_metrics
from gigatok.runs.spec import RunContext, RunSpec
from gigatok.tracking import restart_clock


@pytest.fixture
def tracked(tmp_path: Path) -> tuple[object, str, RunSpec, RunContext]:
    from mlflow import MlflowClient

    ctx = RunContext(str(tmp_path / "runs"), f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient(ctx.tracking_uri)
    experiment = client.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    spec = plan_study("scaling_1d_vs_2d", "tiny", None, [], None, None, "size=S-S,kind=1d")[0]
    return client, client.create_run(experiment).info.run_id, spec, ctx


def test_a_run_describes_its_config_and_data_once(tracked: tuple, tmp_path: Path) -> None:
    client, run_id, spec, ctx = tracked
    describe_run(client, run_id, spec, {})
    run = client.get_run(run_id)
    inputs = {
        (i.dataset.name, {t.key: t.value for t in i.tags}["mlflow.data.context"]) for i in run.inputs.dataset_inputs
    }
    assert inputs == {
        ("builtin-v2 train", "training"),
        ("builtin-v2 val", "validation"),
        ("builtin-v2 val (FID reference)", "fid_reference"),
    }
    assert run.data.tags[schema.DESCRIBED] == schema.LOGGED
    config = Path(client.download_artifacts(run_id, f"config/{spec.hash}.json", str(tmp_path / "dl")))
    assert RunSpec.from_dict({k: v for k, v in json.loads(config.read_text()).items() if k != "hash"}) == spec
    describe_run(client, run_id, spec, dict(run.data.tags))  # a resumed job: nothing twice
    assert len(client.get_run(run_id).inputs.dataset_inputs) == 3


def test_system_metrics_are_sampled_while_the_stages_run(tracked: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    client, run_id, _, ctx = tracked
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    with system_metrics(run_id, ctx.tracking_uri, rank=0):
        time.sleep(1.5)
    metrics = client.get_run(run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics and "system/system_memory_usage_megabytes" in metrics


def _scheduled_run(client: object, experiment_id: str, waited_ms: int) -> object:
    """A run as a launch leaves it: created, then SCHEDULED, ``waited_ms`` before now."""
    created = int(time.time() * 1000) - waited_ms
    run_id = client.create_run(experiment_id, start_time=created).info.run_id  # type: ignore[attr-defined]
    client.update_run(run_id, status="SCHEDULED")  # type: ignore[attr-defined]
    return client.get_run(run_id)  # type: ignore[attr-defined]


def _started_at_first_stage(client: object, experiment_id: str) -> bool:
    """A job picks up a run that waited 5 s: its queue_s is about 5, and whether its start time moved to now."""
    run = _scheduled_run(client, experiment_id, 5000)
    now = int(time.time() * 1000)
    record_start(client, run, now)
    after = client.get_run(run.info.run_id)  # type: ignore[attr-defined]
    assert 4.9 <= after.data.metrics[schema.QUEUE_S] <= 6.0
    assert after.info.start_time in (now, run.info.start_time)
    return bool(after.info.start_time == now)


def test_a_run_starts_its_clock_at_its_first_stage_on_sqlite(tracked: tuple) -> None:
    client, run_id, _, _ = tracked
    experiment_id = client.get_run(run_id).info.experiment_id
    assert _started_at_first_stage(client, experiment_id)
    # a run started before (a host tag) keeps its first start; one not SCHEDULED (a requeued job) logs no wait
    run = _scheduled_run(client, experiment_id, 5000)
    client.set_tag(run.info.run_id, schema.HOST, "node1")
    record_start(client, client.get_run(run.info.run_id), int(time.time() * 1000))
    assert client.get_run(run.info.run_id).info.start_time == run.info.start_time
    client.update_run(run.info.run_id, status="RUNNING")
    record_start(client, client.get_run(run.info.run_id), int(time.time() * 1000))
    assert len(client.get_metric_history(run.info.run_id, schema.QUEUE_S)) == 1


def test_a_rescheduled_run_waits_from_its_new_schedule(tracked: tuple) -> None:
    client, run_id, _, _ = tracked
    experiment_id = client.get_run(run_id).info.experiment_id
    run = _scheduled_run(client, experiment_id, 3_600_000)  # created an hour ago, scheduled again 2 s ago
    client.set_tag(run.info.run_id, schema.SCHEDULED_AT, str(int(time.time() * 1000) - 2000))
    record_start(client, client.get_run(run.info.run_id), int(time.time() * 1000))
    assert 1.9 <= client.get_run(run.info.run_id).data.metrics[schema.QUEUE_S] <= 3.0


def test_restart_clock_is_refused_where_the_store_cannot_take_it(tmp_path: Path) -> None:
    from types import SimpleNamespace

    assert not restart_clock(SimpleNamespace(tracking_uri="http://127.0.0.1:1"), "abc", 0)
    assert not restart_clock(SimpleNamespace(tracking_uri=f"sqlite:///{tmp_path / 'none.db'}"), "abc", 0)
    assert not (tmp_path / "none.db").exists()  # nor is a store created


@pytest.mark.server
def test_through_a_server_the_wait_is_logged_and_the_start_kept(tmp_path: Path) -> None:
    from services import MlflowServer

    from gigatok.tracking import connect, ensure_experiment

    with MlflowServer(tmp_path / "mlflow-server") as server:
        client = connect(server.uri)
        assert not _started_at_first_stage(client, ensure_experiment(client, "clock", "start times"))


def test_a_tag_another_job_deleted_first_is_not_an_error(tmp_path: Path) -> None:
    """Two launches of one study at once start two jobs for a run; both see its old error tag, one deletes it."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from gigatok.runs.execute import delete_tag_if_present

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    client.set_tag(run_id, "gigatok.error", "old")
    delete_tag_if_present(client, run_id, "gigatok.error")
    delete_tag_if_present(client, run_id, "gigatok.error")  # the second job: already gone
    assert "gigatok.error" not in client.get_run(run_id).data.tags

    def unreachable(run_id: str, key: str) -> None:
        raise MlflowException("the store is down", error_code="TEMPORARILY_UNAVAILABLE")

    with pytest.raises(MlflowException, match="store is down"):  # any other failure still surfaces
        delete_tag_if_present(SimpleNamespace(delete_tag=unreachable), run_id, "gigatok.error")

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


# One side of the race below, in its own process: describe its run of each experiment at the moment the test sets.
_DESCRIBER = """
import json, sys, time
from pathlib import Path
from mlflow import MlflowClient
from gigatok.runs.run_record import describe_run
from gigatok.runs.spec import RunSpec

folder, side = Path(sys.argv[1]), int(sys.argv[2])
plan = json.loads((folder / "plan.json").read_text())
spec = RunSpec.from_dict(plan["spec"])
client = MlflowClient(plan["uri"])
(folder / f"ready{side}").touch()
while not (folder / "go").exists():
    time.sleep(0.01)
start = float((folder / "go").read_text())
failures = []
for i, runs in enumerate(plan["runs"]):
    time.sleep(max(0.0, start + 0.3 * i - time.time()))
    try:
        describe_run(client, runs[side], spec, {})
    except Exception as exc:
        failures.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
print(json.dumps(failures))
"""


def test_runs_started_together_each_log_the_experiments_dataset(tracked: tuple, tmp_path: Path) -> None:
    """The jobs of a study's array start together, and each run logs the study's dataset, which MLflow keeps once per
    experiment: two runs describing themselves at the same moment both try to create it. Both runs must get their
    inputs; the loser of that race was refused (BAD_REQUEST, UNIQUE constraint failed), which failed its run before
    it started, its MLflow record left RUNNING."""
    import subprocess
    import sys

    from services import ROOT

    from gigatok.runs.run_record import data_inputs

    client, _, spec, ctx = tracked
    runs = []
    for i in range(6):  # each a fresh experiment, so that each describe creates its dataset
        experiment = client.create_experiment(f"e{i}", artifact_location=(tmp_path / f"artifacts{i}").as_uri())
        runs.append([client.create_run(experiment).info.run_id for _ in range(2)])
    plan = {"uri": ctx.tracking_uri, "runs": runs, "spec": spec.to_dict()}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    sides = [
        subprocess.Popen(
            [sys.executable, "-c", _DESCRIBER, str(tmp_path), str(side)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for side in (0, 1)
    ]
    deadline = time.monotonic() + 300
    while not all((tmp_path / f"ready{side}").exists() for side in (0, 1)):
        assert all(p.poll() is None for p in sides), [p.communicate() for p in sides]
        assert time.monotonic() < deadline, "the describing processes never got ready"
        time.sleep(0.05)
    (tmp_path / "go.tmp").write_text(str(time.time() + 0.5))
    (tmp_path / "go.tmp").rename(tmp_path / "go")  # whole when it appears: a side never reads it half-written
    outputs = [p.communicate(timeout=300) for p in sides]
    assert [p.returncode for p in sides] == [0, 0], outputs
    assert [json.loads(out) for out, _ in outputs] == [[], []], outputs
    for pair in runs:
        for run_id in pair:
            assert len(client.get_run(run_id).inputs.dataset_inputs) == len(data_inputs(spec))


def test_a_run_that_fails_to_start_is_failed_with_its_error(tracked: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tracking call refused while the job opens its run (here the description) fails the run as any stage would:
    FAILED, at stage ``start``, with the error, instead of a run left RUNNING that no job works on."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import BAD_REQUEST

    from gigatok.runs import execute

    client, run_id, spec, ctx = tracked

    def refused(*args: object) -> None:
        raise MlflowException("refused for the test", error_code=BAD_REQUEST)  # a refusal, not an outage

    def no_stage(stage: str, sc: object) -> None:
        pytest.fail(f"stage {stage} ran after the run failed to start")

    monkeypatch.setattr(execute, "describe_run", refused)
    monkeypatch.setattr(execute, "run_stage", no_stage)
    monkeypatch.setattr(execute, "keep_freed_host_memory", lambda: "system (test)")  # leave this process's malloc
    with pytest.raises(MlflowException, match="refused for the test"):
        execute.execute_run(spec, ctx, run_id)
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags[schema.FAILED_STAGE] == "start"
    assert run.data.tags[schema.ERROR] == "start: MlflowException: refused for the test"

"""What a run records about itself in MLflow when its job starts: config artifact, dataset inputs, system metrics."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import studies.catalog  # noqa: F401  (registers the studies)
from gigatok import tracking_schema as schema
from gigatok.launch import plan_study
from gigatok.runs.run_record import describe_run, system_metrics
from gigatok.runs.spec import RunContext, RunSpec


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

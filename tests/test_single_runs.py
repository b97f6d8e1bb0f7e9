"""The single-run scripts (studies/train_tokenizer.py, studies/train_ar.py): the study command's flags, and their
run tracked in MLflow as a study's run is (tags, params, config artifact, curves)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gigatok import tracking_schema as schema
from gigatok.host_memory import keep_freed_host_memory
from gigatok.tracking import experiment_name
from studies import train_ar, train_tokenizer

STEPS = "2"


@pytest.fixture(scope="module")
def single_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A two-step tiny S-S tokenizer trained through ``train_tokenizer.main`` into a temporary SQLite store."""
    root = tmp_path_factory.mktemp("single")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    argv = ["S-S", "--profile", "tiny", "--max-steps", STEPS, "--runs-dir", str(root / "runs"), "--tracking-uri", uri]
    assert train_tokenizer.main([*argv, "--allow-substitutes", "-q"]) == 0
    return {"root": root, "uri": uri, "argv": argv}


def _runs(uri: str, experiment: str) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment_name(experiment, "tiny"))
    assert found is not None, f"no experiment {experiment}"
    return list(client.search_runs([found.experiment_id]))


def test_the_tokenizer_run_is_tracked_like_a_study_run(single_tokenizer: dict[str, Any], tmp_path: Path) -> None:
    from mlflow import MlflowClient

    (run,) = _runs(single_tokenizer["uri"], "single")
    tags, metrics = run.data.tags, run.data.metrics
    assert run.info.status == "FINISHED"
    assert tags[schema.STUDY] == "single" and tags[schema.PROFILE] == "tiny"
    assert tags[schema.factor("size")] == "S-S" and tags[schema.logged("tokenizer")] == schema.LOGGED
    assert tags[schema.DESCRIBED] == schema.LOGGED and tags[schema.MLFLOW_SOURCE_NAME].startswith("studies/train_tok")
    assert run.data.params["tokenizer.train.max_steps"] == STEPS
    assert metrics[schema.PARAMS_TOKENIZER] > 0
    history = MlflowClient(single_tokenizer["uri"]).get_metric_history(run.info.run_id, "tokenizer/total_loss")
    assert [m.step for m in history] == [int(STEPS)]
    config = MlflowClient(single_tokenizer["uri"]).list_artifacts(run.info.run_id, "config")
    assert [Path(f.path).name for f in config] == [f"{tags[schema.RUN_HASH]}.json"]
    tokenizer_dir = Path(tags[schema.TOKENIZER_DIR])
    assert (tokenizer_dir / "summary.json").is_file() and tokenizer_dir.parent == single_tokenizer["root"] / "runs"


def test_a_second_invocation_reuses_the_finished_run(
    single_tokenizer: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert train_tokenizer.main([*single_tokenizer["argv"], "--allow-substitutes", "-q"]) == 0
    assert "already finished at step 2" in capsys.readouterr().out
    assert len(_runs(single_tokenizer["uri"], "single")) == 1


def test_the_flags_are_the_study_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = train_tokenizer.parse_args(["S-S", "--data-root", "/imgs", "--experiment", "mine", "-v"])
    assert (args.data, args.experiment, args.verbosity, args.runs_dir) == ("/imgs", "mine", 1, "runs")
    assert train_tokenizer.parse_args(["S-S", "--data", "/imgs"]).data == "/imgs"
    with pytest.raises(SystemExit):
        train_tokenizer.parse_args(["S-S", "--profile", "huge"])
    assert "invalid choice: 'huge'" in capsys.readouterr().err
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = train_tokenizer.main(["S-S", "--data", str(tmp_path / "none"), "--tracking-uri", uri])
    assert code == 2 and capsys.readouterr().err.startswith(f"error: --data {tmp_path / 'none'}: no such directory")
    assert not (tmp_path / "mlflow.db").exists()  # refused before anything was written


def test_train_ar_needs_its_tokenizer_under_runs_dir(
    single_tokenizer: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tokenizer_dir,) = (single_tokenizer["root"] / "runs").glob("tokenizer-*")
    code = train_ar.main([str(tokenizer_dir), "--runs-dir", str(tmp_path / "elsewhere")])
    assert code == 2
    assert f"pass --runs-dir {tokenizer_dir.parent}" in capsys.readouterr().err


@pytest.mark.slow
def test_train_ar_is_tracked_in_the_named_experiment(single_tokenizer: dict[str, Any]) -> None:
    (tokenizer_dir,) = (single_tokenizer["root"] / "runs").glob("tokenizer-*")
    argv = [str(tokenizer_dir), "--max-steps", "1", "--no-probe", "--experiment", "probes"]
    argv += ["--runs-dir", str(tokenizer_dir.parent), "--tracking-uri", single_tokenizer["uri"], "-q"]
    assert train_ar.main(argv) == 0
    (run,) = _runs(single_tokenizer["uri"], "probes")
    assert run.info.status == "FINISHED" and run.data.tags[schema.factor("ar_size")] == "B"
    assert run.data.metrics["ar_val_loss"] > 0


def test_the_run_logs_its_measured_cost(single_tokenizer: dict[str, Any]) -> None:
    from gigatok.runs.timing import read_times

    (run,) = _runs(single_tokenizer["uri"], "single")
    metrics, tags = run.data.metrics, run.data.tags
    assert tags[schema.DEVICE_TYPE] == "cpu" and metrics[schema.DEVICES] == 1
    # a CPU job keeps freed host memory for reuse (gigatok.host_memory), and says so: timings compare at equal values
    assert tags[schema.HOST_ALLOCATOR] == keep_freed_host_memory()
    times = read_times(single_tokenizer["root"] / "runs" / "timing" / f"{tags[schema.RUN_HASH]}.json")
    assert times["tokenizer"].seconds > 0
    assert metrics[schema.stage_wall_s("tokenizer")] == pytest.approx(times["tokenizer"].seconds)
    assert metrics[schema.stage_device_hours("tokenizer")] == pytest.approx(times["tokenizer"].seconds / 3600)
    assert metrics[schema.WALL_S] == pytest.approx(times["tokenizer"].seconds)
    assert metrics[schema.QUEUE_S] >= 0
    # its Duration counts from the first stage: the start moved past the registration's size metrics
    assert run.info.start_time >= min(m.timestamp for m in _history(single_tokenizer["uri"], run, schema.SIZE_RANK))


def _history(uri: str, run: Any, key: str) -> list[Any]:
    from mlflow import MlflowClient

    return list(MlflowClient(uri).get_metric_history(run.info.run_id, key))

"""Crashes and bad input: a killed worker, a diverging loss, damaged checkpoints and weights, a corrupt image.

What an operator relies on after any of these: a run that finished is never shown as unfinished, one that did not
finish is never shown as finished, the error names the file or step at fault, and no damaged or diverged state
replaces a good checkpoint.

Checkpoint policy (gigatok/train/checkpoint.py): writes are atomic, so a truncated checkpoint can only come from
outside the loop (a cut-short copy, a failing disk). Resuming then falls back to the newest checkpoint that loads,
with a warning naming the damaged file; when none loads, the run fails naming it rather than silently starting
over.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from services import ROOT, SMALL_RUN, SMALL_STEPS, study_cli

from gigatok.config import tokenizer_run
from gigatok.io import atomic_write_bytes
from gigatok.train.checkpoint import (
    CheckpointError,
    list_checkpoints,
    load_latest_checkpoint,
    save_checkpoint,
)
from gigatok.train.run_dir import NonFiniteLossError, prepare_run_dir, require_finite
from gigatok.train.trained import load_trained_tokenizer

LOGGED = list(range(2, SMALL_STEPS + 1, 2))


def _mlflow_runs(folder: Path, experiment: str) -> dict[str, object]:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    return {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}


def _steps(path: Path) -> list[int]:
    return [json.loads(x)["step"] for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ------------------------------------------------------------------------------------------------------------
# Checkpoint files (fast)
# ------------------------------------------------------------------------------------------------------------


def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path: Path) -> None:
    for step in (4, 8):
        save_checkpoint(tmp_path, step, {"step": step, "w": torch.full((64,), float(step))}, keep=2)
    newest = list_checkpoints(tmp_path)[-1]
    _truncate(newest)
    with pytest.warns(RuntimeWarning, match=re.escape(str(newest))):
        path, state = load_latest_checkpoint(tmp_path)
    assert path.name == "step-00000004.pt" and state["step"] == 4
    assert newest.exists()  # left for inspection; the resumed run overwrites it when it gets there


def test_no_loadable_checkpoint_is_an_error_naming_the_file(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 4, {"step": 4}, keep=2)
    only = list_checkpoints(tmp_path)[0]
    only.write_bytes(b"not a checkpoint")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(CheckpointError, match=re.escape(str(only))):
            load_latest_checkpoint(tmp_path)
    assert load_latest_checkpoint(tmp_path / "empty") is None


def test_a_save_killed_mid_write_never_replaces_the_good_checkpoint(tmp_path: Path) -> None:
    """A process SIGKILLed half-way through writing a checkpoint leaves the old one whole and no partial file that
    resuming would pick up."""
    save_checkpoint(tmp_path, 4, {"step": 4, "w": torch.ones(1000)}, keep=2)
    target = tmp_path / "checkpoints" / "step-00000004.pt"
    good = target.read_bytes()
    script = f"""
import os, signal
from pathlib import Path
from gigatok.io import atomic_write_bytes
def half_then_die(f):
    f.write(b"x" * 100_000)
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
atomic_write_bytes(Path({str(target)!r}), half_then_die)
"""
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL
    assert target.read_bytes() == good
    assert list_checkpoints(tmp_path) == [target]  # the temporary file of the killed write is not a checkpoint
    path, state = load_latest_checkpoint(tmp_path)
    assert path == target and state["step"] == 4


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "tokenizer.pt"
    atomic_write_bytes(target, lambda f: f.write(b"old"))

    def fail(f: object) -> None:
        f.write(b"partial")  # type: ignore[attr-defined]
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(target, fail)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.pt"]


def test_missing_or_truncated_final_weights_are_named(tmp_path: Path) -> None:
    cfg = tokenizer_run("S-S", profile="tiny")
    prepare_run_dir(tmp_path, cfg.hash(), cfg.to_dict(), lambda d: d)
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / 'tokenizer.pt'}: weights file not found")):
        load_trained_tokenizer(tmp_path)
    (tmp_path / "tokenizer.pt").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / 'tokenizer.pt'}: cannot load weights")):
        load_trained_tokenizer(tmp_path)


def test_non_finite_values_are_refused_with_the_step() -> None:
    require_finite({"total_loss": 0.5, "grad_norm": 3.0}, 10, Path("runs/tok"))
    with pytest.raises(
        NonFiniteLossError,
        match=r"runs/tok: training diverged by step 12 \(grad_norm=inf, "
        r"total_loss=nan\)",
    ):
        require_finite({"total_loss": float("nan"), "grad_norm": float("inf"), "lr": 1e-4}, 12, Path("runs/tok"))


# ------------------------------------------------------------------------------------------------------------
# Whole runs (slow)
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_nan_loss_fails_the_run_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The weights blow up after step 7 (as a too-high learning rate makes them); checkpoints every 3 steps, a log
    record every 5. Step 8's loss is NaN, and the check before the step-9 checkpoint stops the run: FAILED with the
    step in its error, checkpoints 3 and 6 intact. The same run without the fault then resumes from step 6 -- and,
    with step 6's file damaged, from step 3 -- and finishes."""
    import studies.run as study_run
    from gigatok.train import tokenizer_loop

    real_step = tokenizer_loop.training_step

    def diverging(cfg, m, images, indices, step):  # noqa: ANN001, ANN202 - the training_step signature
        terms = real_step(cfg, m, images, indices, step)
        if step + 1 == 7:
            with torch.no_grad():
                next(m.model.parameters()).fill_(float("nan"))
        return terms

    monkeypatch.setattr(tokenizer_loop, "training_step", diverging)
    argv = [
        "entropy_loss",
        "--only",
        "entropy=True",
        "--executor",
        "debug",
        "--runs-dir",
        str(tmp_path / "runs"),
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'mlflow.db'}",
        *SMALL_RUN,
        "--set",
        "tokenizer.train.log_every=5",
        "--set",
        "tokenizer.train.checkpoint_every=3",
    ]
    assert study_run.main(argv) == 1

    (run,) = _mlflow_runs(tmp_path, "entropy_loss-tiny").values()
    assert run.info.status == "FAILED" and run.data.tags["gigatok.failed_stage"] == "tokenizer"
    assert re.search(
        r"NonFiniteLossError: .*training diverged by step 9 \(.*total_loss=nan", run.data.tags["gigatok.error"]
    ), run.data.tags["gigatok.error"]
    (tok_dir,) = (tmp_path / "runs").glob("tokenizer-*")
    assert [p.name for p in list_checkpoints(tok_dir)] == ["step-00000003.pt", "step-00000006.pt"]
    for ckpt in list_checkpoints(tok_dir):
        weights = torch.load(ckpt, weights_only=True)["model"]
        assert all(torch.isfinite(w).all() for w in weights.values() if w.is_floating_point()), ckpt
    assert _steps(tok_dir / "metrics.jsonl") == [5]
    assert not (tok_dir / "summary.json").exists() and not (tok_dir / "tokenizer.pt").exists()

    monkeypatch.setattr(tokenizer_loop, "training_step", real_step)  # the fault is gone (say, a fixed kernel)
    _truncate(tok_dir / "checkpoints" / "step-00000006.pt")  # and the newest checkpoint was damaged meanwhile
    with pytest.warns(RuntimeWarning, match="step-00000006.pt"):
        assert study_run.main(argv) == 0
    (run,) = _mlflow_runs(tmp_path, "entropy_loss-tiny").values()
    assert run.info.status == "FINISHED" and "gigatok.error" not in run.data.tags
    assert _steps(tok_dir / "metrics.jsonl") == [5, 10, 12]
    from mlflow import MlflowClient

    history = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_metric_history(
        run.info.run_id, "tokenizer/total_loss"
    )
    assert sorted(m.step for m in history) == [5, 10, 12]


@pytest.mark.slow
def test_sigkilled_local_worker_resumes_and_finished_runs_stay_finished(tmp_path: Path) -> None:
    """Two runs in one local worker process (``--local-parallel 1``), the worker SIGKILLed in the middle of the
    second run's training: the first stays FINISHED, the second is not shown finished anywhere, and the next
    invocation runs only the second, from its checkpoint, with no step logged twice."""
    args = ["entropy_loss", "--executor", "local", "--local-parallel", "1", *SMALL_RUN]
    plan = json.loads(study_cli(["entropy_loss", "--dry-run", "--json", *SMALL_RUN], tmp_path, 300).stdout)
    first, second = plan["runs"]  # the order the worker runs them in
    metrics = tmp_path / "runs" / f"tokenizer-{second['tokenizer_hash']}" / "metrics.jsonl"
    cli = _study_at_step_6(args, tmp_path, metrics)
    try:
        (worker,) = _training_processes(cli.pid)
        os.kill(worker, signal.SIGKILL)  # as the kernel's OOM killer would
        assert cli.wait(timeout=300) == 1  # the study reports a run that did not finish
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()

    runs = _mlflow_runs(tmp_path, "entropy_loss-tiny")
    by_hash = {r.data.tags["gigatok.run_hash"]: r for r in runs.values()}
    assert by_hash[first["hash"]].info.status == "FINISHED"
    assert by_hash[second["hash"]].info.status == "RUNNING"  # SIGKILL leaves no chance to say more
    assert (tmp_path / "runs" / f"tokenizer-{first['tokenizer_hash']}" / "summary.json").exists()
    assert not (metrics.parent / "summary.json").exists() and not (metrics.parent / "tokenizer.pt").exists()
    status = study_cli(["entropy_loss", "--status", "--json", *SMALL_RUN], tmp_path, 300)
    assert {r["hash"]: r["status"] for r in json.loads(status.stdout)} == {
        first["hash"]: "FINISHED",
        second["hash"]: "RUNNING",
    }

    resumed = study_cli(args, tmp_path, timeout=1200)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "1 runs to go, 1 already finished" in resumed.stdout
    job_logs = "".join(p.read_text() for p in (tmp_path / "runs" / "jobs").glob("*/*_log.*"))
    assert re.search(rf"resuming tokenizer-{second['tokenizer_hash']} from step-0000000[48]\.pt", job_logs)
    runs = _mlflow_runs(tmp_path, "entropy_loss-tiny")
    assert {r.info.status for r in runs.values()} == {"FINISHED"} and len(runs) == 2
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = by_hash[second["hash"]].info.run_id
    assert sorted(m.step for m in client.get_metric_history(run_id, "tokenizer/total_loss")) == LOGGED
    assert _steps(metrics) == LOGGED


@pytest.mark.slow
def test_sigterm_to_the_study_command_stops_its_local_worker_and_the_run_resumes(tmp_path: Path) -> None:
    """``studies/run.py`` terminated (SIGTERM, as ``kill`` or a batch system's time limit sends it) while its local
    worker trains: the command cancels the worker and exits 130, no training process is left running, the run is
    shown KILLED (not RUNNING, not FINISHED), and the next invocation resumes it from its checkpoint to FINISHED with
    no step logged twice."""
    args = ["entropy_loss", "--executor", "local", "--local-parallel", "1", "--only", "entropy=True", *SMALL_RUN]
    plan = json.loads(study_cli([*args, "--dry-run", "--json"], tmp_path, 300).stdout)
    (run,) = plan["runs"]
    metrics = tmp_path / "runs" / f"tokenizer-{run['tokenizer_hash']}" / "metrics.jsonl"
    cli = _study_at_step_6(args, tmp_path, metrics)
    try:
        (worker,) = _training_processes(cli.pid)
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=120) == 130, (tmp_path / "first.log").read_text()
        deadline = time.monotonic() + 60
        while _alive(worker):
            assert time.monotonic() < deadline, "the training process outlived the command by a minute"
            time.sleep(0.2)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert "interrupted: the runs resume from their checkpoints" in (tmp_path / "first.log").read_text()
    (record,) = _mlflow_runs(tmp_path, "entropy_loss-tiny").values()
    assert record.info.status == "KILLED"
    assert not (metrics.parent / "summary.json").exists()

    resumed = study_cli(args, tmp_path, timeout=1200)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    job_logs = "".join(p.read_text() for p in (tmp_path / "runs" / "jobs").glob("*/*_log.*"))
    assert re.search(rf"resuming tokenizer-{run['tokenizer_hash']} from step-0000000[48]\.pt", job_logs)
    (record,) = _mlflow_runs(tmp_path, "entropy_loss-tiny").values()
    assert record.info.status == "FINISHED"
    assert _steps(metrics) == LOGGED


def _study_at_step_6(args: list[str], folder: Path, metrics: Path) -> subprocess.Popen[bytes]:
    """``studies/run.py ARGS`` started in ``folder`` (its output in first.log), returned once the run whose
    ``metrics`` file is given has logged step 6: past its first checkpoint (step 4)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with (folder / "first.log").open("w") as log:
        cli = subprocess.Popen(
            [sys.executable, str(ROOT / "studies" / "run.py"), *args],
            cwd=folder,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 1200
    while not (steps := _steps(metrics)) or steps[-1] < 6:  # one read of the file a poll
        if cli.poll() is not None or time.monotonic() > deadline:
            cli.kill()
            cli.wait()
            raise AssertionError("the run never reached step 6: " + (folder / "first.log").read_text())
        time.sleep(0.2)
    return cli


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a process that has not ended (an ended one not yet reaped is a zombie, state Z)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return not any(line.startswith("State:") and "Z" in line.split()[1] for line in status.splitlines())


def _training_processes(pid: int) -> list[int]:
    """The processes under ``pid`` that run a job (the local executor starts a controller, which starts them)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    below, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - below
        below |= frontier
    jobs = []
    for p in below:
        try:
            if b"submitit.core._submit" in Path(f"/proc/{p}/cmdline").read_bytes():
                jobs.append(p)
        except OSError:
            continue
    return jobs


@pytest.mark.slow
def test_corrupt_image_fails_the_run_naming_the_file(tmp_path: Path) -> None:
    from PIL import Image

    data = tmp_path / "data"
    for split, count in (("train", 6), ("val", 4)):
        for label in ("a", "b"):
            folder = data / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (40, 40), (40 * i, 100, 200 if label == "a" else 20)).save(folder / f"{i}.png")
    bad = data / "train" / "b" / "3.png"
    _truncate(bad)
    result = study_cli(
        ["entropy_loss", "--only", "entropy=True", "--executor", "debug", *SMALL_RUN, "--data", str(data)],
        tmp_path,
        timeout=900,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    (run,) = _mlflow_runs(tmp_path, "entropy_loss-tiny").values()
    assert run.info.status == "FAILED"
    assert run.data.tags["gigatok.error"].startswith(f"tokenizer: DataError: cannot read image {bad}")
    assert not list((tmp_path / "runs").glob("tokenizer-*/summary.json"))

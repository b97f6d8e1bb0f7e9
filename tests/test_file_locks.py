"""File locks between launches: a stage's lock makes a second process wait and say so; file systems whose locks
hold on one machine only are named at start-up; two launches of one study at once train each model once."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from services import ROOT, SMALL_RUN, SMALL_STEPS

from gigatok import file_locks
from gigatok.file_locks import held, lock_warning, mount_of

MOUNTS = """\
/dev/sda1 / ext4 rw,relatime 0 0
server:/export/home /home nfs4 rw,vers=4.2,local_lock=none 0 0
server:/export/scratch /scratch nfs rw,vers=3,local_lock=flock 0 0
mds@tcp:/lustre /lustre lustre rw,localflock 0 0
mds@tcp:/lustre2 /lustre2 lustre rw,flock 0 0
"""


def test_second_holder_waits_for_the_first_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging.getLogger("gigatok"), "propagate", True)  # to caplog, whatever configured it before
    lock = tmp_path / ".stage.lock"
    order: list[str] = []
    inside = threading.Event()

    def first() -> None:
        with held(lock, "the stage"):
            order.append("first in")
            inside.set()
            time.sleep(0.5)
            order.append("first out")

    thread = threading.Thread(target=first)
    thread.start()
    inside.wait(10)
    with caplog.at_level(logging.INFO, logger="gigatok.file_locks"), held(lock, "the stage"):
        order.append("second in")
    thread.join()
    assert order == ["first in", "first out", "second in"]
    assert f"waiting for the stage: another process holds {lock}" in caplog.text


def test_mount_of_takes_the_longest_mount_point() -> None:
    assert mount_of(Path("/scratch/me/runs"), MOUNTS) == ("/scratch", "nfs", {"rw", "vers=3", "local_lock=flock"})
    assert mount_of(Path("/scratchy"), MOUNTS)[0] == "/"  # type: ignore[index]


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        ("/home/me/runs", None),
        ("/scratch/me/runs", "on nfs mounted with local_lock=flock at /scratch: file locks hold on this machine only"),
        ("/lustre/me/runs", "on Lustre at /lustre without the flock mount option"),
        ("/lustre2/me/runs", None),
        ("/tmp/runs", None),
    ],
)
def test_lock_warning_names_file_systems_whose_locks_stay_on_one_machine(
    folder: str, expected: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The probe runs in a real folder; the mount table says where that folder would be.
    monkeypatch.setattr(file_locks, "mount_of", lambda path, mounts: mount_of(Path(folder), mounts))
    warning = lock_warning(tmp_path / "runs", MOUNTS)
    assert (warning is None) if expected is None else (expected in str(warning)), warning
    assert not (tmp_path / "runs" / ".lock-probe").exists()


def test_lock_warning_when_flock_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_locks(handle: object, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(file_locks.fcntl, "flock", no_locks)
    warning = lock_warning(tmp_path, "")
    assert warning == f"file locks do not work in {tmp_path} ({os.strerror(errno.ENOLCK)})"


def test_this_machines_runs_folder_has_working_locks(tmp_path: Path) -> None:
    assert lock_warning(tmp_path) is None  # CI's clone sits on a local disk


@pytest.mark.slow
def test_two_launches_of_one_study_at_once_train_each_model_once(tmp_path: Path) -> None:
    """Two `studies/run.py` of the same run started together, sharing the runs folder and the MLflow store: one
    MLflow run, the tokenizer trained by one job while the other waits for it, every step logged once, and both
    launches report the run FINISHED."""
    args = [
        sys.executable,
        str(ROOT / "studies" / "run.py"),
        "entropy_loss",
        "--only",
        "entropy=True",
        "--executor",
        "local",
        *SMALL_RUN,
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    logs = [tmp_path / f"launch{i}.log" for i in (1, 2)]
    launches = []
    for log in logs:
        with log.open("w") as out:
            launches.append(subprocess.Popen(args, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT))
    try:
        codes = [p.wait(timeout=1500) for p in launches]
    finally:
        for p in launches:
            if p.poll() is None:
                p.kill()
    outputs = [log.read_text() for log in logs]
    assert codes == [0, 0], outputs
    assert all("FINISHED" in out for out in outputs), outputs

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("entropy_loss-tiny")
    (run,) = client.search_runs([experiment.experiment_id])  # one MLflow run for the one planned run
    assert run.info.status == "FINISHED"
    logged = list(range(2, SMALL_STEPS + 1, 2))
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "tokenizer/total_loss")) == logged
    (tokenizer,) = (tmp_path / "runs").glob("tokenizer-*/metrics.jsonl")
    assert [json.loads(line)["step"] for line in tokenizer.read_text().splitlines()] == logged
    job_logs = "".join(p.read_text() for p in (tmp_path / "runs" / "jobs").glob("*/*_log.*"))
    # The second job waited for the first one to run and log a stage (the tokenizer's, unless it started late).
    assert re.search(r"waiting for the \w+ stage of MLflow run \w+: another process holds", job_logs), job_logs

"""A full file system: the write fails with one line naming the file, the previous checkpoint stays good, and no
partial file is left that a later run could take for a finished one.

On a real small file system (a 1 MiB tmpfs, mounted for the test: root only; CI runs as root), not a mock of
``write``: what the kernel does when a file cannot grow is what matters (partial writes, errors at fsync).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from services import need
from toy_loop import ToyTrain, train

from gigatok.io import WriteError, append_line, atomic_write_json
from gigatok.train.checkpoint import list_checkpoints, load_checkpoint
from gigatok.train.run_dir import read_metrics

pytestmark = pytest.mark.root

SIZE_KIB = 1024
WIDTH = 160_000  # 640 KB of weights: one checkpoint fits in the file system, a second one does not


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    need(os.geteuid() == 0 and shutil.which("mount") is not None, "mounting a tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE_KIB}k", "tmpfs", str(mount)], capture_output=True, text=True
    )
    need(done.returncode == 0, f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_checkpoint_into_a_full_disk_names_the_file_and_keeps_the_last_good_one(small_fs: Path) -> None:
    run_dir = small_fs / "run"
    with pytest.raises(WriteError) as failed:
        train(run_dir, train=ToyTrain(log_every=5, checkpoint_every=10), width=WIDTH)
    message = str(failed.value)
    assert "\n" not in message and "No space left on device" in message, message
    assert f"cannot write {run_dir / 'checkpoints' / 'step-00000020.pt'}" in message, message
    # The step-10 checkpoint is the run's newest and loads; no half-written file is there to be found.
    (good,) = list_checkpoints(run_dir)
    assert good.name == "step-00000010.pt" and load_checkpoint(good)["step"] == 10
    assert leftovers(small_fs) == []
    assert [r["step"] for r in read_metrics(run_dir)] == [5, 10, 15, 20]

    # With space again (the run moved to a larger disk), it resumes from step 10 and finishes as it would have.
    moved = small_fs.parent / "moved"
    shutil.copytree(run_dir, moved)
    resumed = train(moved, train=ToyTrain(log_every=5, checkpoint_every=10), width=WIDTH)
    reference = train(small_fs.parent / "reference", train=ToyTrain(log_every=5, checkpoint_every=10), width=WIDTH)
    assert torch.equal(resumed.weight, reference.weight)


def fill(folder: Path, leave: int = 0) -> Path:
    """Fill the file system of ``folder``, then free ``leave`` bytes (whole pages) again."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as f:  # unbuffered: nothing is left to fail at close
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    with filler.open("r+b") as f:
        f.truncate(max(0, filler.stat().st_size - leave))
    return filler


def test_result_file_into_a_full_disk_leaves_nothing(small_fs: Path) -> None:
    fill(small_fs)
    summary = small_fs / "run" / "summary.json"
    summary.parent.mkdir()
    with pytest.raises(WriteError, match=f"cannot write {summary}: No space left on device"):
        atomic_write_json(summary, {"hash": "x", "final_metrics": {"loss": 1.0}, "padding": "x" * 20_000})
    assert not summary.exists() and leftovers(small_fs) == []


def test_log_line_cut_short_by_a_full_disk_is_taken_back(small_fs: Path) -> None:
    log = small_fs / "metrics.jsonl"
    append_line(log, json.dumps({"step": 1}))
    fill(small_fs, leave=4096)  # room for part of the next line, not all of it
    with pytest.raises(WriteError, match=f"cannot write {log}"):
        append_line(log, json.dumps({"step": 2, "padding": "x" * 20_000}))
    assert log.read_text() == '{"step": 1}\n'  # every line whole: the run's log still reads

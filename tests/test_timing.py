"""Measured stage cost: wall time and device-hours summed over a stage's attempts, written while it runs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gigatok import tracking_schema as schema
from gigatok.runs.timing import StageTime, read_times, stage_clock, stage_metrics, total_metrics


def test_a_resumed_stage_adds_to_its_earlier_attempts(tmp_path: Path) -> None:
    path = tmp_path / "timing" / "h.json"
    with stage_clock(path, "tokenizer", devices=1):
        time.sleep(0.3)
    first = read_times(path)["tokenizer"]
    assert 0.3 <= first.seconds < 2 and first.device_seconds == pytest.approx(first.seconds)
    with stage_clock(path, "tokenizer", devices=4):  # resumed on a job holding four devices
        time.sleep(0.2)
    with stage_clock(path, "reconstruction", devices=4):
        pass
    times = read_times(path)
    second = times["tokenizer"].seconds - first.seconds
    assert 0.2 <= second < 2
    assert times["tokenizer"].device_seconds == pytest.approx(first.seconds + 4 * second)
    metrics = stage_metrics(times, "tokenizer")
    assert metrics[schema.stage_device_hours("tokenizer")] == pytest.approx(times["tokenizer"].device_seconds / 3600)
    total = total_metrics(times, ["tokenizer", "reconstruction"])
    assert total[schema.WALL_S] == pytest.approx(times["tokenizer"].seconds + times["reconstruction"].seconds)


def test_a_killed_attempt_keeps_what_its_heartbeat_wrote(tmp_path: Path) -> None:
    path = tmp_path / "h.json"
    with stage_clock(path, "ar", devices=2, heartbeat_s=0.1):
        time.sleep(0.5)
        during = read_times(path)["ar"]  # on disk before the block ends: a SIGKILL now loses at most a beat
    assert 0.2 <= during.seconds <= 0.6 and during.device_seconds == pytest.approx(2 * during.seconds)


def test_a_damaged_file_counts_from_zero(tmp_path: Path) -> None:
    path = tmp_path / "h.json"
    path.write_text("{not json")
    assert read_times(path) == {}
    assert read_times(tmp_path / "absent.json") == {}
    assert total_metrics({"ar": StageTime(3600.0, 7200.0)}, ["tokenizer", "ar"]) == {
        schema.WALL_S: 3600.0,
        schema.DEVICE_HOURS: 2.0,
    }

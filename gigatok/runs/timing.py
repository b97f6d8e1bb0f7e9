"""What each stage of a run costs, measured: its wall time and device-hours, summed over every attempt.

A stage preempted half-way and resumed by a later job counts both parts: the seconds of each attempt are added to
``RUNS/timing/<run hash>.json`` while the stage runs (every :data:`HEARTBEAT_S`, and at its end), so a job killed
without warning loses at most that much of its count. Device-hours are wall hours times the devices the job holds
(one GPU per rank on CUDA, else one per process), kept per attempt, since a resumed job may hold another number.
Only rank 0 measures (the other ranks run the same stages in step, or wait for it).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gigatok import tracking_schema as schema
from gigatok.io import atomic_write_json, read_json
from gigatok.runs.spec import RunContext, RunSpec

HEARTBEAT_S = 60.0


@dataclass(frozen=True)
class StageTime:
    seconds: float = 0.0
    device_seconds: float = 0.0


def timing_path(spec: RunSpec, ctx: RunContext) -> Path:
    return ctx.root / "timing" / f"{spec.hash}.json"


def read_times(path: Path) -> dict[str, StageTime]:
    """Each stage's time so far (none for a run never measured, or a file cut short)."""
    try:
        data = read_json(path)
        return {stage: StageTime(**values) for stage, values in data.items()}
    except (OSError, ValueError, TypeError):
        return {}


def devices_in_use() -> int:
    """The devices this job holds: one per rank of a multi-process job (each rank drives one GPU on CUDA), else 1."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@contextlib.contextmanager
def stage_clock(path: Path, stage: str, devices: int, heartbeat_s: float = HEARTBEAT_S) -> Iterator[None]:
    """Add the block's wall time (and times ``devices``) to ``stage``'s count in ``path``, as it runs."""
    before = read_times(path).get(stage, StageTime())
    start = time.monotonic()
    stop = threading.Event()

    def write() -> None:
        elapsed = time.monotonic() - start
        times = read_times(path)
        times[stage] = StageTime(before.seconds + elapsed, before.device_seconds + elapsed * devices)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, {name: vars(t) for name, t in times.items()})

    def beat() -> None:
        while not stop.wait(heartbeat_s):
            with contextlib.suppress(OSError):  # a full disk must not end the stage; the end writes again
                write()

    thread = threading.Thread(target=beat, name=f"clock-{stage}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        write()


def stage_metrics(times: dict[str, StageTime], stage: str) -> dict[str, float]:
    """One stage's wall seconds and device-hours, as logged."""
    t = times.get(stage, StageTime())
    return {schema.stage_wall_s(stage): t.seconds, schema.stage_device_hours(stage): t.device_seconds / 3600}


def total_metrics(times: dict[str, StageTime], stages: list[str]) -> dict[str, float]:
    """The run's wall seconds and device-hours over ``stages`` (its own: a file never holds another run's)."""
    counted = [times[s] for s in stages if s in times]
    return {
        schema.WALL_S: sum(t.seconds for t in counted),
        schema.DEVICE_HOURS: sum(t.device_seconds for t in counted) / 3600,
    }

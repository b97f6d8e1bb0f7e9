"""Two ranks of one job under Submitit's local executor, as the DDP and FSDP tests run them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


def run_two_ranks(folder: Path, fn: Callable[..., dict[str, Any]], *args: Any) -> list[dict[str, Any]]:
    """``fn(*args)`` on two local processes (gloo), their results sorted by the ``rank`` each returns."""
    import submitit

    executor = submitit.LocalExecutor(folder=folder)
    executor.update_parameters(tasks_per_node=2, nodes=1, timeout_min=15)
    job = executor.submit(fn, *args)
    return sorted(job.results(), key=lambda r: r["rank"])

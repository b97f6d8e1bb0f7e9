"""What every benchmark shares: timing side by side, a printed table, and optional logging to MLflow.

Benchmarks compare variants measured in the same process, interleaved (A, B, A, B, ...) so that the noise of a
shared machine falls on both sides of a ratio; absolute times are printed but only ratios are meant to be quoted.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Row:
    """One line of a benchmark's table: a named measurement with its unit, and free-form extra columns."""

    name: str
    value: float
    unit: str
    extra: dict[str, Any] = field(default_factory=dict)


def interleaved(variants: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each variant, measured round-robin ``repeats`` times after ``warmup`` untimed calls."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def paired_ratio(base: Sequence[float], other: Sequence[float]) -> tuple[float, float, float]:
    """Median, min and max over rounds of ``base[i] / other[i]`` (times from :func:`interleaved`).

    Each round measures the variants back to back, so a per-round ratio cancels the load swings of a shared
    machine that a ratio of two medians keeps; the min-max spread shows how far to trust it.
    """
    ratios = [b / o for b, o in zip(base, other, strict=True)]
    return median(ratios), min(ratios), max(ratios)


def print_table(title: str, rows: Sequence[Row]) -> None:
    extra_keys = list(dict.fromkeys(k for r in rows for k in r.extra))  # first-seen order: the rows' own
    header = ["measurement", "value", "unit", *extra_keys]
    lines = [[r.name, f"{r.value:.4g}", r.unit, *(str(r.extra.get(k, "")) for k in extra_keys)] for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |")


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mlflow",
        metavar="URI",
        default=None,
        help="also log the results as one MLflow run in experiment 'benchmarks' at this URI",
    )


def add_threads_arg(parser: argparse.ArgumentParser, default: int = 1) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        default=default,
        help=f"torch CPU threads (default {default}: on a shared machine more threads than free "
        "cores oversubscribe, and a 2-thread step then runs ~3x slower and far noisier)",
    )


def set_threads(threads: int | None) -> None:
    """Apply ``--threads`` (a no-op for None or on GPU-bound runs that do not use CPU kernels)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def log_to_mlflow(uri: str | None, benchmark: str, rows: Sequence[Row], params: dict[str, Any] | None = None) -> None:
    """Record a benchmark's rows as metrics of one MLflow run (names made MLflow-safe)."""
    if not uri:
        return
    import re

    from gigatok import tracking_schema as schema
    from gigatok.tracking import connect, ensure_experiment, git_commit

    client = connect(uri)
    experiment_id = ensure_experiment(client, "benchmarks", "bench/ results, one run per invocation")
    run = client.create_run(
        experiment_id, run_name=benchmark, tags={schema.BENCHMARK: benchmark, schema.GIT_COMMIT: git_commit() or ""}
    )
    for key, value in (params or {}).items():
        client.log_param(run.info.run_id, key, str(value)[:500])
    for row in rows:
        key = re.sub(r"[^0-9A-Za-z_\-./ ]", "_", row.name)
        client.log_metric(run.info.run_id, key, float(row.value))
    client.set_terminated(run.info.run_id, "FINISHED")


# ----------------------------------------------------------------------------------------------------------
# A large synthetic study, for the benchmarks of planning, dispatch and analysis at scale
# ----------------------------------------------------------------------------------------------------------

SWEEP_SIZES = ("S-S", "S-B", "S-L", "B-L")
SWEEP_KINDS = ("1d", "2d")
SWEEP_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def synthetic_sweep(planner: Any, runs: int) -> list[Any]:
    """``runs`` standard probe runs (tokenizer + AR probe) over sizes x 1D/2D x lambda x seed, as a study function
    would plan them: real configs and hashes, every run with its own tokenizer (a seed is a new tokenizer)."""
    grid = [(size, kind, w) for size in SWEEP_SIZES for kind in SWEEP_KINDS for w in SWEEP_WEIGHTS]
    specs = []
    for i in range(runs):
        size, kind, weight = grid[i % len(grid)]
        seed = i // len(grid)
        tokenizer = planner.tokenizer(size, kind=kind, semantic_weight=weight, seed=seed)
        specs.append(planner.probe({"size": size, "kind": kind, "lambda": weight, "seed": seed}, tokenizer))
    return specs

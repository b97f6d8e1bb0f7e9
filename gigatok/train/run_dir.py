"""Run directories: config.json bound to the config hash, metrics.jsonl, interval means, summary.json."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from gigatok.io import append_line, atomic_write_bytes, atomic_write_json, read_json


def prepare_run_dir(
    run_dir: Path, config_hash: str, config: dict[str, Any], from_dict: Callable[[dict[str, Any]], Any]
) -> None:
    """Write config.json, or check that the one already there is this config (same hash, still valid)."""
    path = run_dir / "config.json"
    if path.is_file():
        existing = read_json(path)
        if existing.get("hash") != config_hash:
            raise ValueError(
                f"{run_dir}: holds run {existing.get('hash')}, not {config_hash}; use a fresh run directory"
            )
        from_dict(existing["config"])
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"hash": config_hash, "config": config})


def read_config(run_dir: Path, from_dict: Callable[[dict[str, Any]], Any]) -> Any:
    """The (validated) config a run directory was made for."""
    return from_dict(read_json(Path(run_dir) / "config.json")["config"])


def finished_summary(run_dir: Path, config_hash: str) -> dict[str, Any] | None:
    """The summary of a finished run of this very config, or None; checked before any data is opened."""
    path = Path(run_dir) / "config.json"
    if not path.is_file() or read_json(path).get("hash") != config_hash:
        return None
    return read_summary(run_dir)


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    """A finished run's summary.json (its presence is what "finished" means), or None."""
    path = Path(run_dir) / "summary.json"
    return read_json(path) if path.is_file() else None


class MetricsLog:
    """Append-only JSON lines; on resume, records logged after the checkpoint are dropped (they will be redone)."""

    def __init__(self, path: Path, resume_step: int) -> None:
        self.path = path
        if path.is_file():
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= resume_step]
            atomic_write_bytes(path, lambda f: f.write("".join(k + "\n" for k in kept).encode()))

    def append(self, record: dict[str, Any]) -> None:
        append_line(self.path, json.dumps(record))


class MeanWindow:
    """Running sums of each logged term since the last log, so a record is the mean over its interval.

    Kept on the device between logs (no per-step synchronisation) and saved in checkpoints, so a resumed run
    logs exactly the means an uninterrupted one would. Terms that start mid-window (the discriminator loss when
    the GAN starts) are averaged over the steps that had them.
    """

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor | float] = {}
        self.counts: dict[str, int] = {}

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.detach().float()
            self.counts[k] = self.counts.get(k, 0) + 1

    def means(self) -> dict[str, float]:
        return {k: float(v) / self.counts[k] for k, v in self.sums.items()}

    def reset(self) -> None:
        self.sums, self.counts = {}, {}

    def state(self) -> dict[str, Any]:
        return {"sums": {k: float(v) for k, v in self.sums.items()}, "counts": dict(self.counts)}

    def load(self, state: dict[str, Any]) -> None:
        self.sums, self.counts = dict(state["sums"]), dict(state["counts"])


class NonFiniteLossError(FloatingPointError):
    """Training diverged: a loss or gradient norm is NaN or infinite. Raised before anything of it is written."""


def require_finite(values: Mapping[str, float], step: int, run_dir: Path) -> None:
    """Raise :class:`NonFiniteLossError` if any value is NaN or infinite.

    Called where the loops read their running means anyway (a log record) and before weights are saved, so a
    GPU is never synchronised per step for it, and no checkpoint ever holds the weights of a diverged step.
    """
    bad = sorted((k, v) for k, v in values.items() if not math.isfinite(v))
    if bad:
        terms = ", ".join(f"{k}={v}" for k, v in bad)
        raise NonFiniteLossError(
            f"{run_dir}: training diverged by step {step} ({terms}); nothing after the newest checkpoint in "
            f"{Path(run_dir) / 'checkpoints'} was saved (lower the learning rate or raise the gradient clipping)"
        )


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []

"""Checkpoints on disk: atomic saves, discovery of the latest at start-up, safe loading.

A run resumes from what is in its directory, never from state captured when the job was submitted, so a requeued
job always picks up the newest checkpoint.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch

from gigatok.io import atomic_write_bytes

__all__ = [
    "CheckpointError",
    "checkpoint_dir",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_latest_checkpoint",
    "load_weights",
    "save_checkpoint",
]

_CKPT = re.compile(r"^step-(\d{8,})\.pt$")


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Save ``state`` as ``checkpoints/step-NNNNNNNN.pt`` and delete all but the newest ``keep``."""
    path = checkpoint_dir(run_dir) / f"step-{step:08d}.pt"
    atomic_write_bytes(path, lambda f: torch.save(state, f))
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary files of an interrupted save are ignored)."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _CKPT.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


class CheckpointError(RuntimeError):
    """A checkpoint or weights file that cannot be read; the one-line message names the file."""


def _load(path: Path, what: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {what} file not found") from None
    except Exception as exc:  # a truncated or foreign file: name it
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(f"{path}: cannot load {what} ({type(exc).__name__}: {reason})") from exc


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load with ``weights_only=True``: tensors and plain containers only, no arbitrary unpickling."""
    return _load(path, "checkpoint")


def load_weights(path: Path) -> dict[str, Any]:
    """A finished run's final weights (``tokenizer.pt``, ``ar.pt``); CheckpointError names a missing or bad file."""
    return _load(path, "weights")


def load_latest_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that loads, with its state; None when the run has none.

    Checkpoints are written atomically, so a damaged one came from outside the training loop (a truncated copy,
    a failing disk). An older good checkpoint is then used, with a warning naming the damaged file, which is left
    in place for inspection (the resumed run overwrites it when it reaches that step again). When no checkpoint
    loads, the error names the newest: starting over from step 0 would silently discard the run's progress.
    """
    newest_error: CheckpointError | None = None
    for path in reversed(list_checkpoints(run_dir)):
        try:
            state = load_checkpoint(path)
        except CheckpointError as exc:
            newest_error = newest_error or exc
            warnings.warn(f"{exc}; trying the previous checkpoint", RuntimeWarning, stacklevel=2)
            continue
        return path, state
    if newest_error is not None:
        raise CheckpointError(
            f"{newest_error}; no older checkpoint loads either: remove the damaged file(s) "
            "to restart the stage from step 0"
        ) from newest_error
    return None

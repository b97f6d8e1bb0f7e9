"""Checkpoints on disk: atomic saves, discovery of the latest at start-up, safe loading.

A run resumes from what is in its directory, never from state captured when the job was submitted, so a requeued
job always picks up the newest checkpoint.

Two formats, by the run's parallelism: ``step-NNNNNNNN.pt``, one file rank 0 writes (DDP and one process), and
``step-NNNNNNNN.dcp/``, a sharded checkpoint every rank writes its part of (FSDP: gigatok.train.sharded). Both are
listed, kept and pruned together, by step; a folder appears under its name only once complete.
"""

from __future__ import annotations

import re
import shutil
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
    "prune_checkpoints",
    "save_checkpoint",
]

_CKPT = re.compile(r"^step-(\d{8,})\.(pt|dcp)$")
SHARDED_SUFFIX = ".dcp"
# In a sharded checkpoint's folder, beside torch.distributed.checkpoint's files: the scaffold's entries (step, RNG,
# log window, config hash), written by rank 0 after every rank's shards.
SCAFFOLD_FILE = "scaffold.pt"
# The key under which a loaded sharded checkpoint's state names its folder (the modules are read from there).
SHARDED_KEY = "sharded_checkpoint"


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Save ``state`` as ``checkpoints/step-NNNNNNNN.pt`` and delete all but the newest ``keep``."""
    path = checkpoint_dir(run_dir) / f"step-{step:08d}.pt"
    atomic_write_bytes(path, lambda f: torch.save(state, f))
    prune_checkpoints(run_dir, keep)
    return path


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints, of either format."""
    for old in list_checkpoints(run_dir)[:-keep]:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


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
    """Load with ``weights_only=True``: tensors and plain containers only, no arbitrary unpickling.

    A sharded checkpoint gives its scaffold entries and, under ``SHARDED_KEY``, its folder: the modules' shards are
    read from there by every rank together (gigatok.train.sharded.load_sharded), into modules of any world size."""
    if path.suffix != SHARDED_SUFFIX:
        return _load(path, "checkpoint")
    if not (path / ".metadata").is_file():
        raise CheckpointError(f"{path}: sharded checkpoint without its .metadata file")
    return {**_load(path / SCAFFOLD_FILE, "checkpoint"), SHARDED_KEY: str(path)}


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

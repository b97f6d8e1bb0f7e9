"""Generic file and state helpers: atomic writes, JSON files, the torch generators' state.

They live here, below every package, so that data, distributed and semantic-target code can use them without
importing the training package (whose checkpoint module builds on them).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_write_bytes", "atomic_write_json", "read_json", "restore_rng", "rng_state"]


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Write via a temporary file in the same folder, fsync, then rename: readers see old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    """Indented, sorted keys, trailing newline: the run directories' JSON files diff cleanly."""
    atomic_write_bytes(path, lambda f: f.write(json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """The generator states a resumed run needs to continue the same random stream (dropout, class dropout)."""
    state = {"rng_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["rng_cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["rng_cpu"])
    if device.type == "cuda" and "rng_cuda" in state:
        torch.cuda.set_rng_state(state["rng_cuda"], device)

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

__all__ = [
    "WriteError",
    "append_line",
    "atomic_write_bytes",
    "atomic_write_json",
    "read_json",
    "restore_rng",
    "rng_state",
]


class WriteError(OSError):
    """A file could not be written (a full disk, a quota, a read-only mount); the one-line message names the file,
    which an OSError from ``write`` does not."""

    @classmethod
    def of(cls, path: Path, exc: OSError) -> WriteError:
        reason = exc.strerror or str(exc)
        return cls(exc.errno or 0, f"cannot write {path}: {reason}")


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Write via a temporary file in the same folder, fsync, then rename: readers see old or new, never half."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except WriteError:
        raise
    except OSError as exc:
        raise WriteError.of(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)  # nothing half-written is left to be taken for a finished file
        if (cause := os_error_in(exc)) is not None and not isinstance(exc, WriteError):
            raise WriteError.of(path, cause) from exc
        raise


def os_error_in(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc``, if any: ``torch.save`` into a full disk raises the zip writer's RuntimeError
    ("unexpected pos") while handling the OSError of the write itself."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def append_line(path: Path, line: str) -> None:
    """Append ``line`` and a newline; if the write fails (a full disk), the file is cut back to where it was, so a
    reader never meets half a line."""
    data = memoryview(line.encode() + b"\n")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            while data:  # unbuffered: a failure surfaces here, not in a later flush
                data = data[os.write(fd, data) :]
        except OSError as exc:
            os.ftruncate(fd, start)
            raise WriteError.of(Path(path), exc) from exc
    finally:
        os.close(fd)


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

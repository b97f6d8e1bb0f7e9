"""Where a run's stages keep their results on disk, and how they read, write and lock them.

A stage's folder is named by the hash of what it depends on::

    RUNS/tokenizer-<tokenizer hash>/                  the tokenizer, its token cache and its evaluations
    RUNS/tokenizer-<hash>/snapshots/epoch-N/          a tokenizer snapshot a run evaluates instead of the final one
    RUNS/ar-<AR hash>[-epoch-N]/                      the AR probe (on a snapshot: one folder per snapshot)
    .../eval/<stage>-<settings key>.json              an evaluation's result; its presence means the stage is done

Each stage's own result file is named by the stage (see :mod:`gigatok.runs.stages`); the helpers here are what
the stages share.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gigatok.config import ProbeConfig
from gigatok.file_locks import held
from gigatok.runs.spec import RunContext, RunSpec, short_hash


def tokenizer_dir_of(spec: RunSpec, ctx: RunContext) -> Path:
    """The tokenizer run directory a spec evaluates: the trained tokenizer's, or that of its snapshot."""
    from gigatok.train.tokenizer_loop import snapshot_dir

    base = ctx.tokenizer_dir(spec.tokenizer)
    return base if spec.tokenizer_snapshot is None else snapshot_dir(base, spec.tokenizer_snapshot)


def ar_dir_of(spec: RunSpec, ctx: RunContext) -> Path:
    """The AR run directory of a spec: one per AR config and tokenizer snapshot."""
    assert spec.ar is not None
    base = ctx.ar_dir(spec.ar)
    return base if spec.tokenizer_snapshot is None else base.with_name(f"{base.name}-epoch-{spec.tokenizer_snapshot:g}")


def eval_key(spec: RunSpec, *names: str) -> str:
    """The key of an evaluation's result file: the hash of the ``eval`` settings it depends on."""
    return short_hash({n: getattr(spec.eval, n) for n in names})


def probe_key(spec: RunSpec) -> str:
    """The probe stages' key: the protocol joins it only when it is not the default (old results keep their names)."""
    probe = spec.eval.probe
    extra = {} if probe == ProbeConfig() else {"probe": dataclasses.asdict(probe)}
    return short_hash({"probe_max_iter": spec.eval.probe_max_iter, **extra})


@contextlib.contextmanager
def stage_lock(path: Path, rank: int | None = None) -> Iterator[None]:
    """An exclusive lock beside a stage's result: a second process waits, then finds the stage done. ``rank``: a
    training stage's, each rank locking its own file (:mod:`gigatok.file_locks`)."""
    name = path.stem if rank is None else f"{path.stem}.rank{rank}"
    with held(path.parent / f".{name}.lock", f"{path.parent.name}/{path.name}"):
        yield


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Write a stage's result atomically: a reader never sees half a file, so a present file means done."""
    from gigatok.io import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, result)


def read_result(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def result_files(path: Path) -> list[Path]:
    """A stage's result JSON and, when the stage drew one, its image grid beside it (the artifacts to log)."""
    grid = path.with_suffix(".png")
    return [path, grid] if grid.is_file() else [path]


def val_subset(spec: RunSpec, count: int | None, split: str = "val") -> tuple[Any, str]:
    """The first ``count`` images of ``split`` and the description every FID records (and caches under)."""
    from torch.utils.data import Subset

    from gigatok.data import build_dataset
    from gigatok.metrics.images import describe_dataset

    tok = spec.tokenizer
    val = build_dataset(tok.data, split, tok.tokenizer.image_size, seed=tok.train.seed)
    description = describe_dataset(val)
    if count is not None and count < len(val):
        return Subset(val, range(count)), f"first {count} of {description}"
    return val, description


def save_grid(images: Any, path: Path, nrow: int = 8) -> Path:
    """An image grid beside a stage's result (``images`` in [-1, 1]), logged with it as an artifact."""
    from torchvision.utils import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image((images.float().clamp(-1, 1) + 1) / 2, path, nrow=nrow)
    return path

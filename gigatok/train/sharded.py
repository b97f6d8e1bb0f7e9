"""Sharded checkpoints (torch.distributed.checkpoint) for FSDP runs: every rank writes its own shards, and a run
resumes from them with any number of processes, sharded or not.

A checkpoint is the folder ``checkpoints/step-NNNNNNNN.dcp/``: DCP's files (``.metadata`` and one ``.distcp`` file
per writing rank) hold each module and optimizer under the key it has in the one-file format ("model", "opt_g",
...), by parameter name (``get_state_dict``: the same names for a sharded model, a DDP-wrapped one and a bare one,
and optimizer states keyed by those names, not by position); ``scaffold.pt`` holds the loop scaffold's entries
(step, generators, log window, config hash), written by rank 0. DCP reshards on load, so a checkpoint written by 2
ranks resumes on 1 or 8, and one written by a single process resumes on several.

Atomic as the one-file checkpoints are (gigatok.io): everything is written into ``.step-NNNNNNNN.dcp.partial/``, and
only when every rank's shards and the scaffold are there (and synced) does rank 0 rename it to its name; a job killed
mid-save leaves a hidden partial folder that no listing takes for a checkpoint, and the next save of that step
replaces it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from gigatok.distributed import DistEnv, barrier, is_main
from gigatok.io import atomic_write_bytes
from gigatok.train.checkpoint import SCAFFOLD_FILE, SHARDED_SUFFIX, checkpoint_dir, prune_checkpoints

__all__ = ["Pair", "load_sharded", "save_sharded", "sharded_path"]


class Pair(NamedTuple):
    """A module and the optimizer over its parameters, with the keys they are saved under."""

    module_key: str
    module: nn.Module  # the bare (or FSDP-sharded) module, never a DDP wrapper
    optimizer_key: str
    optimizer: torch.optim.Optimizer


def _states(pairs: Sequence[Pair]) -> dict[str, Any]:
    """Each pair's model and optimizer state dicts by parameter name (sharded where the module is)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    states: dict[str, Any] = {}
    for pair in pairs:
        states[pair.module_key], states[pair.optimizer_key] = get_state_dict(pair.module, pair.optimizer)
    return states


def _no_group() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized())


def sharded_path(run_dir: Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step-{step:08d}{SHARDED_SUFFIX}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(partial: Path, final: Path) -> None:
    """Rename the complete ``partial`` folder to ``final``; an older folder of that name (a step reached again after
    a resume from an earlier checkpoint) is moved aside first, then deleted."""
    stale = final.with_name(f".{final.name}.old")
    shutil.rmtree(stale, ignore_errors=True)
    if final.exists():
        final.rename(stale)
    partial.rename(final)
    _fsync_dir(final.parent)
    shutil.rmtree(stale, ignore_errors=True)


def save_sharded(
    run_dir: Path, step: int, pairs: Sequence[Pair], scaffold: dict[str, Any] | None, keep: int, env: DistEnv
) -> Path:
    """Save the checkpoint of ``step`` (every rank calls it; ``scaffold`` is rank 0's, None elsewhere) and delete all
    but the newest ``keep`` checkpoints."""
    import torch.distributed.checkpoint as dcp

    final = sharded_path(run_dir, step)
    partial = final.with_name(f".{final.name}.partial")
    if is_main(env):  # a partial folder left by a killed save is never reused: its shards may be of another state
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    barrier(env)
    # Collective; returns once .metadata is written after every rank's shards. One process has no group to gather.
    dcp.save(_states(pairs), checkpoint_id=partial, no_dist=_no_group())
    if is_main(env):
        atomic_write_bytes(partial / SCAFFOLD_FILE, lambda f: torch.save(scaffold, f))
        _fsync_dir(partial)
        _publish(partial, final)
        prune_checkpoints(run_dir, keep)
    barrier(env)
    return final


def load_sharded(path: str | Path, pairs: Sequence[Pair]) -> None:
    """Load the modules and optimizers of ``pairs`` from the sharded checkpoint ``path`` (every rank calls it),
    resharded to this run's world size and sharding."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    states = _states(pairs)  # the targets: DCP loads in place, each rank the slices its shards cover
    dcp.load(states, checkpoint_id=Path(path), no_dist=_no_group())
    for pair in pairs:
        set_state_dict(
            pair.module,
            pair.optimizer,
            model_state_dict=states[pair.module_key],
            optim_state_dict=states[pair.optimizer_key],
        )

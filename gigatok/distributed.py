"""Multi-process data parallelism: process-group set-up from the launcher's environment, and the few collectives
the training loops need.

A run is multi-process when its environment says so: ``torchrun`` (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT), or a Submitit job with more than one task (Slurm ``tasks_per_node`` x ``nodes``, or the local
executor's ``tasks_per_node``), whose variables are translated to torchrun's. Anything else is one process, and
nothing here does anything for it, so single-process runs behave exactly as without this module.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Sampler

from gigatok.io import restore_rng, rng_state

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None  # None: one process, no process group


def _export_submitit_env() -> None:
    """Inside a multi-task Submitit job, set torchrun's variables from the job's (rank, task count, first node)."""
    if not os.environ.get("SUBMITIT_EXECUTOR") or "WORLD_SIZE" in os.environ:
        return
    import submitit

    if submitit.JobEnvironment().num_tasks > 1:
        # Keep CUDA_VISIBLE_DEVICES: Slurm may already have bound one GPU per task; local_device() copes with both.
        # overwrite: a MASTER_PORT set by the user is read (not replaced) by TorchDistributedEnvironment itself.
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)


def init_distributed(device_type: str) -> DistEnv:
    """The process group this process belongs to, initialised now if the environment describes more than one process.

    NCCL for ``cuda``, gloo otherwise. Idempotent: a second call (say, AR training after tokenizer training in the
    same job) returns the group already there.
    """
    if dist.is_available() and dist.is_initialized():
        rank = dist.get_rank()
        return DistEnv(rank, int(os.environ.get("LOCAL_RANK", rank)), dist.get_world_size(), dist.get_backend())
    _export_submitit_env()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistEnv()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_device(DistEnv(rank, local_rank, world_size, backend), "cuda"))
    dist.init_process_group(backend, rank=rank, world_size=world_size)  # env://: MASTER_ADDR and MASTER_PORT
    return DistEnv(rank, local_rank, world_size, backend)


def local_device(env: DistEnv, device: torch.device | str) -> torch.device:
    """This rank's device: with several processes on CUDA, the GPU of its local rank (modulo the GPUs it can see, as
    Slurm may show each task only its own)."""
    device = torch.device(device)
    if env.world_size == 1 or device.type != "cuda":
        return device
    return torch.device("cuda", env.local_rank % torch.cuda.device_count())


def is_main(env: DistEnv) -> bool:
    """Rank 0 writes the run directory, logs and shows progress; the other ranks only compute."""
    return env.rank == 0


def barrier(env: DistEnv) -> None:
    if env.world_size > 1:
        dist.barrier()


def cleanup() -> None:
    """Tear down the process group, if any; for the job's entry point once it has run all its training."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main_first(env: DistEnv, fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0, then on every other rank: for steps whose first call writes a file that later calls only
    read (run directory, feature and token caches). A failure on rank 0 is raised on every rank rather than leaving
    the others waiting at a collective."""
    if env.world_size == 1:
        return fn()
    result: T | None = None
    failure: list[str | None] = [None]
    if is_main(env):
        try:
            result = fn()
        except Exception as exc:
            failure = [f"{type(exc).__name__}: {exc}"]
            dist.broadcast_object_list(failure, src=0)
            raise
    dist.broadcast_object_list(failure, src=0)
    if is_main(env):
        return cast(T, result)  # fn() ran and returned it (T may itself admit None)
    if failure[0] is not None:
        raise RuntimeError(f"rank 0 failed: {failure[0]}")
    return fn()


def wrap_ddp(module: nn.Module, env: DistEnv) -> nn.Module:
    """``module`` behind DistributedDataParallel (gradients averaged over ranks in backward), or itself alone.

    Keep the unwrapped module for ``state_dict()``: checkpoints then have the same keys for 1 and N processes.
    """
    if env.world_size == 1:
        return module
    device_ids = [torch.cuda.current_device()] if env.backend == "nccl" else None
    return DistributedDataParallel(module, device_ids=device_ids)


def mean_across_ranks(values: Mapping[str, torch.Tensor | float], env: DistEnv) -> dict[str, float]:
    """Each scalar averaged over the ranks (all ranks must pass the same keys); the values as floats for one."""
    if env.world_size == 1 or not values:
        return {k: float(v) for k, v in values.items()}
    keys = sorted(values)
    device = torch.device("cuda", torch.cuda.current_device()) if env.backend == "nccl" else torch.device("cpu")
    stacked = torch.stack([torch.as_tensor(values[k], dtype=torch.float64).to(device).reshape(()) for k in keys])
    dist.all_reduce(stacked)
    return dict(zip(keys, (stacked / env.world_size).tolist(), strict=True))


class RankShard(Sampler[list[Any]]):
    """This rank's share, ``indices[rank::world_size]``, of each global batch of ``batches`` (a batch is a list of
    keys: dataset indices, or the (index, crop seed) pairs of :class:`~gigatok.train.sampling.KeyedBatches`).

    The global batch (and so the recipe) is the same for any number of processes (one process reads it whole);
    gradients averaged over equal shards are the gradient of the global batch's mean loss. Terms computed from
    batch statistics (the quantizer's entropy loss and usage, the discriminator's BatchNorm) see one shard each.
    """

    def __init__(self, batches: Iterable[list[Any]], batch_size: int, env: DistEnv) -> None:
        if batch_size % env.world_size:
            raise ValueError(f"batch size {batch_size} does not split evenly over {env.world_size} processes")
        self.batches = batches
        self.env = env

    def __len__(self) -> int:
        return len(cast(Sized, self.batches))  # a batch sampler: it has a length

    def __iter__(self) -> Iterator[list[Any]]:
        for batch in self.batches:
            yield batch[self.env.rank :: self.env.world_size]


def rank_rng_states(env: DistEnv, device: torch.device) -> dict[str, Any]:
    """Every rank's generator states, for the checkpoint: each rank draws its own dropout, and a resumed run should
    continue each stream. Empty for one process, so single-process checkpoints are unchanged."""
    if env.world_size == 1:
        return {}
    states: list[Any] = [None] * env.world_size
    dist.all_gather_object(states, rng_state(device))
    return {"rng_ranks": states}


def restore_rank_rng(state: Mapping[str, Any], env: DistEnv, device: torch.device, seed: int) -> None:
    """Restore this rank's generator states from a checkpoint written by ``rank_rng_states`` (or by one process)."""
    restore_rng(state, device)  # rank 0's, which is also the only stream of a single-process checkpoint
    if is_main(env):
        return
    saved = state.get("rng_ranks")
    if saved is not None and len(saved) == env.world_size:
        restore_rng(saved[env.rank], device)
    else:  # written by another number of processes: a fresh stream, distinct per rank and per resume step
        torch.manual_seed(seed_for_rank(seed, env) + 1_000_003 * int(state["step"]))


def seed_for_rank(seed: int, env: DistEnv) -> int:
    """Rank 0 keeps the run's seed (so one process is unchanged); the others get their own random streams."""
    return seed + env.rank

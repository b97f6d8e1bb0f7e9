"""Fully sharded data parallelism (FSDP2, ``torch.distributed.fsdp.fully_shard``) for the large models.

With ``performance.parallelism`` settled to "fsdp" (:func:`gigatok.config.tokenizer_parallelism`,
:func:`~gigatok.config.ar_parallelism`) and several processes, a model's parameters, gradients and optimizer states
are split over the ranks: each transformer block is one unit (all-gathered for its forward and backward, resharded
after), and the root holds the rest (CNNs, embeddings, heads). That is the authors' wrapping (their FSDP scripts
wrap ``get_fsdp_wrap_module_list()``: the transformer layers) in FSDP2's per-parameter form, whose state dicts keep
the module's own parameter names, so a sharded model saves the keys a replicated one does.

Mixed precision follows ``performance.autocast``: where it computes in bf16 (CUDA), parameters are all-gathered in
bf16 and gradients reduced in fp32 (the authors reduce in bf16 too: docs/fidelity.md); in fp32 (a CPU) nothing is
cast. The quantizer is a unit of its own kept in fp32: it picks codes by the argmax of fp32 similarities
(:class:`~gigatok.models.quantizer.VectorQuantizer`), which a bf16 codebook would change.

One process never shards (there is nothing to split), so single-process runs are unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gigatok.distributed import DistEnv

__all__ = ["clip_gradients", "full_state_dict", "is_sharded", "shard_model"]


def is_sharded(module: nn.Module) -> bool:
    """Whether ``module`` was sharded by :func:`shard_model` (its parameters are DTensors)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def _broadcast_from_rank0(module: nn.Module) -> None:
    """Every rank's copy of ``module`` set to rank 0's, as DDP's constructor does: each rank built its own from its
    own seed, and sharding keeps each rank's slice of its own copy, which would mix the ranks' initialisations."""
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor.data, src=0)


def shard_model(
    module: nn.Module,
    blocks: Iterable[nn.Module],
    env: DistEnv,
    device: torch.device,
    compute_dtype: torch.dtype | None,
    fp32_units: Iterable[nn.Module] = (),
) -> nn.Module:
    """``module`` sharded in place over the ranks of ``env`` (returned for convenience), before its optimizer is
    built: one FSDP unit per block of ``blocks``, one per module of ``fp32_units`` (kept in fp32 whatever the
    compute dtype), then the root. ``compute_dtype`` None: fp32 throughout. One process: ``module`` untouched."""
    if env.world_size == 1:
        return module
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    _broadcast_from_rank0(module)
    mesh = init_device_mesh(device.type, (env.world_size,))
    fp32 = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)
    policy = MixedPrecisionPolicy(param_dtype=compute_dtype or torch.float32, reduce_dtype=torch.float32)
    for unit in fp32_units:
        fully_shard(unit, mesh=mesh, mp_policy=fp32)
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(module, mesh=mesh, mp_policy=policy)
    return module


def clip_gradients(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` for replicated and sharded parameters alike: with DTensor gradients the norm is reduced
    over the shards (the norm of the whole gradient, as one process computes it) and returned as a plain tensor."""
    from torch.distributed.tensor import DTensor

    norm = nn.utils.clip_grad_norm_(list(parameters), max_norm)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def full_state_dict(module: nn.Module, main: bool) -> Mapping[str, Any]:
    """The whole model's state dict on the main rank, with the keys of the unwrapped module, for the final weights
    and snapshots (the format evaluation and conversion read, whatever the parallelism). Every rank must call it:
    a sharded model's parameters are gathered from every rank (onto the CPU, one at a time). Empty off main."""
    if not is_sharded(module):
        return module.state_dict() if main else {}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state if main else {}

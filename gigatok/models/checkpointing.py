"""Activation checkpointing of transformer blocks: a block keeps only its input through the forward pass and runs
again during backward to rebuild what its backward needs, trading one more forward of the transformers for their
activations (``PerformanceConfig.activation_checkpointing``).

The checkpoint goes inside each block's call (its ``forward`` replaced on the instance), so an FSDP unit's hooks,
which wrap the call, gather the block's weights before the recomputation as before the forward, as torchtitan
composes the two. State dict keys do not change, so checkpoints load either way. Dropout draws the same masks when
the block runs again (the RNG state is kept), so gradients are those of the plain forward.
"""

from __future__ import annotations

import types
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def checkpoint_units(module: nn.Module) -> Iterator[nn.Module]:
    """The blocks of every transformer inside ``module``: the tokenizer's encoder and decoder stacks, the AR layers."""
    from gigatok.models.ar import ARModel
    from gigatok.models.transformer import TransformerStack

    for child in module.modules():
        if isinstance(child, TransformerStack):
            yield from child.blocks
        elif isinstance(child, ARModel):
            yield from child.layers


def enable_activation_checkpointing(module: nn.Module) -> int:
    """Checkpoint every block of :func:`checkpoint_units` while gradients are on (sampling and evaluation run as
    before). Returns how many blocks; a second call changes nothing."""
    count = 0
    for block in checkpoint_units(module):
        if not getattr(block, "_gigatok_checkpointed", False):
            # A method bound to the block (not a closure over its old forward): a deep copy binds it to the copy.
            block.forward = types.MethodType(_checkpointed_forward, block)
            block._gigatok_checkpointed = True  # type: ignore[assignment]
        count += 1
    return count


def _checkpointed_forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
    forward = type(self).forward.__get__(self)  # the class's forward (FSDP's subclass keeps it)
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)

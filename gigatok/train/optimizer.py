"""AdamW as both training loops build it: fused where torch has the kernel, with each loop's settings and parameter
groups. Torch only, so the GPU benchmark builds the same optimizers as training."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from gigatok.config import ARTrainConfig, TokenizerRunConfig


def adamw(params: Iterable[Any], **settings: Any) -> torch.optim.AdamW:
    """AdamW over ``params`` (tensors or param groups), fused where every tensor is on a CPU or CUDA device.

    The fused kernel makes one pass per parameter tensor; torch's default on a CPU is ~10 elementwise ops per
    tensor, each a parallel region. On a shared 2-core CPU those regions wait for a descheduled thread: the S-S
    paper-profile step spent 5-16 s of wall time in AdamW (0.8 s fused). Same update, to float rounding.
    """
    params = list(params)
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(isinstance(p, torch.Tensor) and p.device.type in ("cpu", "cuda") for p in tensors)
    return torch.optim.AdamW(params, fused=True if fused else None, **settings)


def build_optimizer(cfg: TokenizerRunConfig, params: Any) -> torch.optim.AdamW:
    """The tokenizer loop's AdamW (generator and discriminator alike) with the run's settings."""
    o = cfg.optim
    return adamw(params, lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)


def build_ar_optimizer(model: nn.Module, train: ARTrainConfig) -> torch.optim.AdamW:
    """Weight decay on matrices and embeddings, not on norm gains (LlamaGen's grouping); fused AdamW."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return adamw(groups, lr=train.lr, betas=(train.beta1, train.beta2))

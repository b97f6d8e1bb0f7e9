"""AdamW as both training loops build it: fused where torch has the kernel."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


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

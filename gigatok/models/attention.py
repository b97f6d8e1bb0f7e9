"""One attention call for every model here, fused or written out, switchable per model.

Fused is ``F.scaled_dot_product_attention``: flash / memory-efficient kernels on GPU, one fused op on CPU, and no
(B, heads, N, N) score tensor kept for backward. The written-out path computes softmax(q k^T / sqrt(d)) v as three
ops: the reference the fused kernels are checked against, and the baseline ``bench/tokenizer_step.py`` measures.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def math_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """What ``F.scaled_dot_product_attention`` computes, op by op (a boolean mask marks the keys a query sees)."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if is_causal:  # top-left aligned, as scaled_dot_product_attention's is_causal
        attn_mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    weights = F.dropout(scores.softmax(dim=-1), p=dropout_p) if dropout_p > 0 else scores.softmax(dim=-1)
    return weights @ v


class AttentionModule(nn.Module):
    """Base of the models' attention layers: ``attend`` goes through the kernel chosen by ``fused_attention``."""

    fused_attention: bool = True

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        dropout_p: float = 0.0,
    ) -> torch.Tensor:
        kernel = F.scaled_dot_product_attention if self.fused_attention else math_attention
        return kernel(q, k, v, attn_mask=attn_mask, is_causal=is_causal, dropout_p=dropout_p)


def set_fused_attention(model: nn.Module, fused: bool) -> nn.Module:
    """Switch every attention layer of ``model`` to the fused kernel (True) or the written-out one (False)."""
    for module in model.modules():
        if isinstance(module, AttentionModule):
            module.fused_attention = fused
    return model

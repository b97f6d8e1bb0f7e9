"""Transformer blocks of the tokenizer: pre-norm ViT blocks (2D) and Q-Former blocks (1D).

A Q-Former block is: query self-attention, cross-attention from the queries to the other side's tokens, then a 4x
MLP, each pre-norm with a residual. :class:`DetrBlock` is the authors' variant of it (positions in every layer).
Attention goes through ``scaled_dot_product_attention`` so fused kernels are used where the hardware has them (see
:mod:`gigatok.models.attention` for the switch to the written-out reference).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gigatok.models.attention import AttentionModule


class Attention(AttentionModule):
    """Multi-head attention; self-attention when ``context`` is None, cross-attention otherwise."""

    def __init__(self, width: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        context = x if context is None else context
        q = self.q(x).view(b, n, self.heads, c // self.heads).transpose(1, 2)
        k, v = self.kv(context).view(b, context.shape[1], 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        return self._attend_heads(q, k, v)

    def forward_qkv(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Attention whose keys and values come from different inputs (keys carry position embeddings, values do
        not), as ``nn.MultiheadAttention(query, key, value)``."""
        b, n, c = query.shape
        w_k, w_v = self.kv.weight.chunk(2)
        b_k, b_v = self.kv.bias.chunk(2)
        q = self.q(query).view(b, n, self.heads, c // self.heads).transpose(1, 2)
        k = F.linear(key, w_k, b_k).view(b, key.shape[1], self.heads, c // self.heads).transpose(1, 2)
        v = F.linear(value, w_v, b_v).view(b, value.shape[1], self.heads, c // self.heads).transpose(1, 2)
        return self._attend_heads(q, k, v)

    def _attend_heads(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, _, n, _ = q.shape
        out = self.attend(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class MLP(nn.Module):
    def __init__(self, width: int, ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = int(width * ratio)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(F.gelu(self.fc1(x))))


class ViTBlock(nn.Module):
    """Pre-norm self-attention + MLP over one token set (the 2D grid)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class QFormerBlock(nn.Module):
    """Pre-norm query self-attention, cross-attention to ``context``, MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.self_attn = Attention(width, heads, dropout)
        self.norm_q = nn.LayerNorm(width)
        self.norm_context = nn.LayerNorm(width)
        self.cross_attn = Attention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        assert context is not None, "a Q-Former block cross-attends to a context"
        x = x + self.self_attn(self.norm1(x))
        x = x + self.cross_attn(self.norm_q(x), self.norm_context(context))
        return x + self.mlp(self.norm2(x))


class DetrBlock(nn.Module):
    """DETR's pre-norm decoder layer (the authors' ``TransformerDecoderLayer``, blocks.py): position embeddings
    enter every layer, added to the self-attention queries and keys and to the cross-attention queries
    (``query_pos``) and keys (``context_pos``); values carry none, and the context is not normalised.
    With ``context`` None the layer attends to its own input (the authors' 2D use).
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.self_attn = Attention(width, heads, dropout)
        self.norm_q = nn.LayerNorm(width)
        self.cross_attn = Attention(width, heads, dropout)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_ratio, dropout)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None, query_pos: torch.Tensor, context_pos: torch.Tensor
    ) -> torch.Tensor:
        context = x if context is None else context
        h = self.norm1(x)
        x = x + self.self_attn.forward_qkv(h + query_pos, h + query_pos, h)
        h = self.norm_q(x)
        x = x + self.cross_attn.forward_qkv(h + query_pos, context + context_pos, context)
        return x + self.mlp(self.norm2(x))


class TransformerStack(nn.Module):
    """A stack of blocks that can also return the output of one intermediate layer (for semantic alignment)."""

    def __init__(
        self, block: type[nn.Module], width: int, depth: int, heads: int, mlp_ratio: float, dropout: float
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(block(width, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        capture_layer: int | None = None,
        positions: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns (final normalised output, output of 1-based layer ``capture_layer`` or None).

        ``positions`` (query positions, context positions) go to every layer of a :class:`DetrBlock` stack.
        """
        captured = None
        for i, block in enumerate(self.blocks, start=1):
            x = block(x, context) if positions is None else block(x, context, *positions)
            if i == capture_layer:
                captured = x
        return self.norm(x), captured


def init_transformer_weights(module: nn.Module) -> None:
    """Truncated-normal linear weights and zero biases, the usual ViT initialisation."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

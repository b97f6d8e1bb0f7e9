"""Llama-style class-conditional AR model over tokenizer codes (the AR probe and the LlamaGen models of Table 8).

RMSNorm, SwiGLU, no biases, a learned 1D absolute position embedding (the paper's AR models use 1D absolute
positions), and the class as a one-token prefix: the input [class, t_0, ..., t_{N-2}] predicts t_0, ..., t_{N-1}.
During training the class is replaced by the null class with probability ``class_dropout`` so the same model gives
the unconditional logits that classifier-free guidance needs.

It computes the same function as the authors' ``autoregressive/models/gpt_1d.py`` Transformer (LlamaGen's GPT with
1D absolute positions, the class of their GPT probes and system-level models): tests/test_parity_ar.py checks the
logits, probe features and CFG sampling against numbers their code computed, and :mod:`gigatok.convert.ar` loads
their checkpoints. Their position table has one more row (cls_token_num + block_size) that no input reaches.
"""

from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from gigatok.config import ARConfig
from gigatok.models.attention import AttentionModule
from gigatok.models.placement import placed


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class KVCache:
    """Per-layer key/value buffers for incremental decoding: (B, heads, max_len, head_dim) each."""

    def __init__(self, cfg: ARConfig, batch: int, device: torch.device, dtype: torch.dtype) -> None:
        shape = (batch, cfg.heads, cfg.num_tokens, cfg.width // cfg.heads)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.depth)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.depth)]


class Attention(AttentionModule):
    def __init__(self, cfg: ARConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.wqkv = nn.Linear(cfg.width, 3 * cfg.width, bias=False)
        self.wo = nn.Linear(cfg.width, cfg.width, bias=False)
        self.dropout = cfg.attention_dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, start: int = 0) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.wqkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        if cache is None:
            out = self.attend(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        else:
            cache.keys[layer][:, :, start : start + t] = k
            cache.values[layer][:, :, start : start + t] = v
            k, v = cache.keys[layer][:, :, : start + t], cache.values[layer][:, :, : start + t]
            # Query i (absolute position start + i) sees keys 0 .. start + i; a single query sees them all, and
            # without a mask the fused kernels can take their decoding fast path.
            mask = None if t == 1 else torch.ones(t, start + t, dtype=torch.bool, device=x.device).tril(start)
            out = self.attend(q, k, v, attn_mask=mask)
        return self.resid_dropout(self.wo(out.transpose(1, 2).reshape(b, t, c)))


class FeedForward(nn.Module):
    def __init__(self, cfg: ARConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(cfg.width, cfg.ffn_hidden, bias=False)
        self.w3 = nn.Linear(cfg.width, cfg.ffn_hidden, bias=False)
        self.w2 = nn.Linear(cfg.ffn_hidden, cfg.width, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class Block(nn.Module):
    def __init__(self, cfg: ARConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(cfg.width)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.width)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, start: int = 0) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cache, layer, start)
        return x + self.feed_forward(self.ffn_norm(x))


class ARModel(nn.Module):
    def __init__(self, cfg: ARConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.width)
        self.class_embeddings = nn.Embedding(cfg.num_classes + 1, cfg.width)  # index num_classes = null class
        self.pos_embeddings = nn.Parameter(torch.zeros(1, cfg.num_tokens, cfg.width))
        self.embed_dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = RMSNorm(cfg.width)
        self.output = nn.Linear(cfg.width, cfg.vocab_size, bias=False)
        self.apply(self._init)
        if cfg.init == "llamagen":
            # The authors' Transformer.initialize_weights (gpt_1d.py): a zero output head, so every code starts
            # equally likely, and positions drawn as randn * width**-0.5 (their positional_embedding).
            nn.init.zeros_(self.output.weight)
            nn.init.normal_(self.pos_embeddings, std=cfg.width**-0.5)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    @property
    def null_class(self) -> int:
        return self.cfg.num_classes

    def drop_classes(self, labels: torch.Tensor) -> torch.Tensor:
        """Training-time class dropout: each label becomes the null class with probability ``class_dropout``."""
        if not self.training or self.cfg.class_dropout == 0:
            return labels
        drop = torch.rand(labels.shape, device=labels.device) < self.cfg.class_dropout
        return torch.where(drop, torch.full_like(labels, self.null_class), labels)

    def embed(self, tokens: torch.Tensor | None, labels: torch.Tensor | None, start: int = 0) -> torch.Tensor:
        """Embeddings of the sequence [class?, tokens...] placed at absolute positions start, start + 1, ..."""
        parts = []
        if labels is not None:
            parts.append(self.class_embeddings(labels).unsqueeze(1))
        if tokens is not None and tokens.shape[1] > 0:
            parts.append(self.tok_embeddings(tokens))
        x = torch.cat(parts, dim=1)
        return self.embed_dropout(x + self.pos_embeddings[:, start : start + x.shape[1]])

    def hidden(self, tokens: torch.Tensor, labels: torch.Tensor, upto_layer: int | None = None) -> torch.Tensor:
        """Hidden states after ``upto_layer`` blocks (all when None) for teacher-forced input."""
        x = self.embed(tokens[:, :-1], labels)
        for i, layer in enumerate(self.layers):
            if upto_layer is not None and i >= upto_layer:
                return x
            x = layer(x)
        return x

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, N, vocab): position i predicts tokens[:, i] from the class and tokens < i."""
        return self.output(self.norm(self.hidden(tokens, self.drop_classes(labels))))

    def loss(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self(tokens, labels)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens.reshape(-1))

    def features(self, tokens: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Linear-probe features: layer n_layer // 2, mean-pooled over positions, with the null class token."""
        if labels is None:
            labels = torch.full((tokens.shape[0],), self.null_class, dtype=torch.long, device=tokens.device)
        return self.hidden(tokens, labels, upto_layer=self.cfg.depth // 2).mean(dim=1)

    def new_cache(self, batch: int, device: torch.device, dtype: torch.dtype = torch.float32) -> KVCache:
        return KVCache(self.cfg, batch, device, dtype)

    def decode_step(self, x: torch.Tensor, cache: KVCache | None, start: int) -> torch.Tensor:
        """Logits for the last position of the embedded chunk ``x`` placed at ``start``, filling the cache.

        Without a cache ``x`` must be the whole sequence so far (``start`` 0): every position is recomputed.
        """
        assert cache is not None or start == 0, "without a KV cache the chunk must start at position 0"
        for i, layer in enumerate(self.layers):
            x = layer(x, cache, i, start)
        return self.output(self.norm(x[:, -1]))


def build_ar_model(cfg: ARConfig, device: torch.device | str | None = None) -> ARModel:
    """Build the AR model; ``device='meta'`` allocates and initialises nothing (for parameter counts)."""
    with placed(device):
        return ARModel(cfg)


@cache
def ar_parameter_count(cfg: ARConfig) -> int:
    """Parameters of the model ``cfg`` describes, counted on the meta device (Table 8 counts these); cached by the
    architecture, as a sweep has many runs and few shapes."""
    return sum(p.numel() for p in build_ar_model(cfg, "meta").parameters())

"""The GigaTok tokenizer: CNN encoder -> Transformer (2D ViT or 1D Q-Former) -> VQ -> Transformer -> CNN decoder,
with the semantic-regularization projector on decoder layer ``l``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gigatok.config import TokenizerConfig, pooling_regions
from gigatok.models.cnn import CNNDecoder, CNNEncoder
from gigatok.models.placement import placed
from gigatok.models.quantizer import QuantizerOutput, VectorQuantizer
from gigatok.models.transformer import (
    Attention,
    DetrBlock,
    QFormerBlock,
    TransformerStack,
    ViTBlock,
    init_transformer_weights,
)


def multilevel_pool(features: torch.Tensor, num_tokens: int, first_split: str = "height") -> torch.Tensor:
    """1D query initialisation (Appendix C, Fig. 11): (B, C, h, w) -> (B, num_tokens, C).

    One global token, then levels k = 0..L-1 that split the grid into 2^k regions each, average-pooled and
    flattened row-major: groups of 1, 1, 2, 4, ... tokens, 2^L in all. ``first_split`` says which axis level 1
    halves (see :func:`pooling_regions`).
    """
    levels = int(math.log2(num_tokens))
    pooled = [features.mean(dim=(2, 3)).unsqueeze(1)]
    for level in range(levels):
        rows, cols = pooling_regions(level, first_split)
        region = F.adaptive_avg_pool2d(features, (rows, cols))
        pooled.append(region.flatten(2).transpose(1, 2))
    return torch.cat(pooled, dim=1)


def multilevel_unpool(tokens: torch.Tensor, grid_size: int, first_split: str = "height") -> torch.Tensor:
    """The transpose of :func:`multilevel_pool`, averaged: (B, num_tokens, C) -> (B, grid_size**2, C), each cell the
    mean over levels of the token whose region contains it (the global token at every cell)."""
    levels = int(math.log2(tokens.shape[1]))
    cells = tokens[:, :1].expand(-1, grid_size**2, -1)
    start = 1
    for level in range(levels):
        rows, cols = pooling_regions(level, first_split)
        region = tokens[:, start : start + rows * cols].transpose(1, 2).unflatten(2, (rows, cols))
        cells = cells + F.interpolate(region, size=(grid_size, grid_size), mode="nearest").flatten(2).transpose(1, 2)
        start += rows * cols
    return cells / (levels + 1)


def _to_grid(tokens: torch.Tensor, size: int) -> torch.Tensor:
    """(B, size*size, C) row-major tokens -> (B, C, size, size), contiguous.

    The transposed view has channels-last strides: a convolution fed with it runs channels-last and so does every
    layer after it, which put the CNN decoder's lowest level in NHWC (~25% slower there on a CPU, GroupNorm most).
    The copy is one (B, C, size, size) tensor, as the authors' ``.contiguous()`` before their ``conv_out``.
    """
    return tokens.transpose(1, 2).unflatten(2, (size, size)).contiguous()


class _Stack(nn.Module):
    """A transformer stack with its input/output projections and learned absolute position embeddings.

    ``queries_from_context`` (1D only): no separate query input projection; the queries are derived from the
    embedded context (the authors' layout). ``out_kernel`` 3 makes the output projection a 3x3 conv on the grid.
    """

    def __init__(
        self,
        cfg: TokenizerConfig,
        width: int,
        depth: int,
        heads: int,
        one_d: bool,
        num_queries: int,
        num_context: int,
        queries_from_context: bool = False,
        out_kernel: int = 1,
    ) -> None:
        super().__init__()
        c = cfg.cnn.latent_channels
        self.input_norm = nn.LayerNorm(c) if cfg.input_norm else None
        self.proj_in = None if queries_from_context else nn.Linear(c, width)
        self.query_pos = nn.Parameter(torch.zeros(1, num_queries, width))
        self.one_d = one_d
        self.detr = (cfg.block_1d if one_d else cfg.block_2d) == "detr"
        if one_d:
            self.context_in = nn.Linear(c, width)
            self.context_pos = nn.Parameter(torch.zeros(1, num_context, width))
        block = DetrBlock if self.detr else QFormerBlock if one_d else ViTBlock
        self.stack = TransformerStack(block, width, depth, heads, cfg.mlp_ratio, cfg.dropout)
        self.proj_out: nn.Module = (
            nn.Conv2d(width, c, out_kernel, padding=out_kernel // 2) if out_kernel > 1 else nn.Linear(width, c)
        )
        for p in (self.query_pos, *((self.context_pos,) if one_d else ())):
            nn.init.trunc_normal_(p, std=0.02)
        init_transformer_weights(self)

    def _norm_in(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.input_norm is None else self.input_norm(x)

    def _run_2d(self, tokens: torch.Tensor, capture_layer: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        assert self.proj_in is not None  # only 1D stacks may derive their queries from the context
        x = self.proj_in(tokens)
        if self.detr:  # each layer attends to its own input, positions added inside
            return self.stack(x, None, capture_layer, positions=(self.query_pos, self.query_pos))
        return self.stack(x + self.query_pos, capture_layer=capture_layer)

    def _run_1d(
        self, queries: torch.Tensor, context: torch.Tensor, capture_layer: int | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.detr:
            return self.stack(queries, context, capture_layer, positions=(self.query_pos, self.context_pos))
        return self.stack(queries + self.query_pos, context + self.context_pos, capture_layer)


class TransformerEncoder(_Stack):
    """CNN features (B, C, h, w) -> latent tokens (B, N, C): N = h*w for 2D, ``num_tokens`` for 1D."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        size, one_d = cfg.encoder, cfg.kind == "1d"
        from_context = one_d and cfg.queries_from_context
        super().__init__(
            cfg,
            size.width,
            size.depth,
            size.heads,
            one_d,
            cfg.num_tokens,
            cfg.grid_size**2,
            queries_from_context=from_context,
        )
        self.num_tokens = cfg.num_tokens
        self.grid_size = cfg.grid_size
        self.first_split = cfg.pool_first_split
        # The authors' global_proj: pooled embedded grid -> queries.
        self.query_proj = nn.Linear(size.width, size.width) if from_context else None
        if self.query_proj is not None:
            init_transformer_weights(self.query_proj)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        grid = self._norm_in(features.flatten(2).transpose(1, 2))  # (B, h*w, C)
        if not self.one_d:
            out, _ = self._run_2d(grid, None)
            return self.proj_out(out)
        context = self.context_in(grid)
        if self.query_proj is not None:
            pooled = multilevel_pool(_to_grid(context, self.grid_size), self.num_tokens, self.first_split)
            queries = self.query_proj(pooled)
        else:
            assert self.proj_in is not None  # without query_proj the queries have their own projection
            pooled = multilevel_pool(_to_grid(grid, self.grid_size), self.num_tokens, self.first_split)
            queries = self.proj_in(pooled)
        out, _ = self._run_1d(queries, context, None)
        return self.proj_out(out)


class TransformerDecoder(_Stack):
    """Latent tokens (B, N, C) -> 2D features (B, C, h, w); also returns decoder layer ``capture_layer``'s output.

    1D: the 2D queries are the first latent token (embedded by the query projection, or the embedded context's
    first token with ``queries_from_context``), or with ``decoder_queries_1d="unpooled"`` the latent tokens unpooled
    onto the grid (:func:`multilevel_unpool`), plus a learned 2D position embedding, cross-attending to the latent
    tokens.
    """

    def __init__(self, cfg: TokenizerConfig) -> None:
        size, one_d = cfg.decoder, cfg.kind == "1d"
        super().__init__(
            cfg,
            size.width,
            size.depth,
            size.heads,
            one_d,
            cfg.grid_size**2,
            cfg.num_tokens,
            queries_from_context=one_d and cfg.queries_from_context,
            out_kernel=cfg.decoder_out_kernel,
        )
        self.grid_size = cfg.grid_size
        self.unpooled_queries = cfg.decoder_queries_1d == "unpooled"
        self.first_split = cfg.pool_first_split

    def _queries_1d(self, tokens: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if self.unpooled_queries:
            if self.proj_in is None:
                return multilevel_unpool(context, self.grid_size, self.first_split)
            return self.proj_in(multilevel_unpool(tokens, self.grid_size, self.first_split))
        first = context[:, :1] if self.proj_in is None else self.proj_in(tokens[:, :1])
        return first.expand(-1, self.grid_size**2, -1)

    def forward(
        self, tokens: torch.Tensor, capture_layer: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        tokens = self._norm_in(tokens)
        if self.one_d:
            context = self.context_in(tokens)
            out, captured = self._run_1d(self._queries_1d(tokens, context), context, capture_layer)
        else:
            out, captured = self._run_2d(tokens, capture_layer)
        if isinstance(self.proj_out, nn.Conv2d):
            return self.proj_out(_to_grid(out, self.grid_size)), captured
        return _to_grid(self.proj_out(out), self.grid_size), captured


class SemanticProjector(nn.Module):
    """phi of Eq. 1: decoder width -> 4w -> 4w -> semantic feature width, SiLU between (the REPA projector)."""

    def __init__(self, width: int, out_dim: int) -> None:
        super().__init__()
        hidden = 4 * width
        self.net = nn.Sequential(
            nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, out_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def semantic_loss(projected: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 1 as a loss: mean over images and grid positions of -cos(phi(f_dec), f_sem).

    projected: (B, h*w, D) from the projector; target: (B, D, h, w) frozen-encoder features on the token grid.
    """
    target = target.flatten(2).transpose(1, 2)
    return -F.cosine_similarity(projected, target.to(projected.dtype), dim=-1).mean()


@dataclass
class TokenizerOutput:
    reconstruction: torch.Tensor
    quant: QuantizerOutput
    semantic_projection: torch.Tensor | None  # (B, h*w, D) when semantic regularization is on
    # The two ends of the transformer path, both (B, latent_channels, h, w): the CNN encoder's output and the
    # transformer decoder's output (the CNN decoder's input). The small tokenizers' shortcut (fidelity item 1)
    # decodes the first directly and pulls the second towards it.
    cnn_features: torch.Tensor | None = None
    decoder_features: torch.Tensor | None = None


class GigaTokenizer(nn.Module):
    def __init__(self, cfg: TokenizerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.cnn_encoder = CNNEncoder(cfg.cnn)
        self.encoder = TransformerEncoder(cfg)
        self.quantizer = VectorQuantizer(cfg.quantizer, cfg.cnn.latent_channels)
        self.decoder = TransformerDecoder(cfg)
        self.cnn_decoder = CNNDecoder(cfg.cnn)
        self.semantic_projector = (
            SemanticProjector(cfg.decoder.width, cfg.semantic.feature_dim) if cfg.semantic.enabled else None
        )
        if cfg.init == "authors":
            apply_authors_init(self)

    def encode(self, images: torch.Tensor) -> QuantizerOutput:
        return self.quantizer(self.encoder(self.cnn_encoder(images)))

    def decode(self, quantized: torch.Tensor) -> torch.Tensor:
        features, _ = self.decoder(quantized)
        return self.cnn_decoder(features)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        return self.decode(self.quantizer.embed(indices))

    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images).indices

    def forward(self, images: torch.Tensor) -> TokenizerOutput:
        cnn_features = self.cnn_encoder(images)
        quant = self.quantizer(self.encoder(cnn_features))
        capture = self.cfg.semantic.layer if self.semantic_projector is not None else None
        features, captured = self.decoder(quant.quantized, capture_layer=capture)
        projection = self.semantic_projector(captured) if self.semantic_projector is not None else None
        return TokenizerOutput(self.cnn_decoder(features), quant, projection, cnn_features, features)

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part and in total (the discriminator is separate, as in the paper's counts)."""
        parts = {
            "cnn_encoder": self.cnn_encoder,
            "encoder_transformer": self.encoder,
            "quantizer": self.quantizer,
            "decoder_transformer": self.decoder,
            "cnn_decoder": self.cnn_decoder,
        }
        if self.semantic_projector is not None:
            parts["semantic_projector"] = self.semantic_projector
        counts = {name: sum(p.numel() for p in m.parameters()) for name, m in parts.items()}
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts


def apply_authors_init(model: GigaTokenizer) -> None:
    """The authors' initialisation (vq_vit_model.py ``_init_weights``, applied before the quantizer is built).

    Truncated normal (std 0.02) on every Linear and Conv2d weight with zero biases, LayerNorms at 1/0, the
    attention input projections Xavier-uniform over the stacked (3w, w) matrix as ``nn.MultiheadAttention``
    initialises its ``in_proj_weight``; position embeddings width^-0.5 * N(0, 1); the codebook uniform in
    +-1/size, L2-normalised. The quantizer's projections keep PyTorch's default (theirs are built after the
    init runs).
    """
    quant_proj = {id(model.quantizer.proj_in), id(model.quantizer.proj_out)}
    with torch.no_grad():
        for m in model.modules():
            if id(m) in quant_proj:
                continue
            if isinstance(m, nn.Linear | nn.Conv2d):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in model.modules():  # after the Linear pass, which also visited the attention's q/kv layers
            if isinstance(m, Attention):
                width = m.q.weight.shape[1]
                bound = math.sqrt(6.0 / (width + 3 * width))
                for lin in (m.q, m.kv):
                    nn.init.uniform_(lin.weight, -bound, bound)
                    lin.bias.zero_()
        for stack in (model.encoder, model.decoder):
            for name in ("query_pos", "context_pos"):
                pos = getattr(stack, name, None)
                if pos is not None:
                    pos.normal_(0.0, pos.shape[-1] ** -0.5)
        codebook = model.quantizer.codebook.weight
        size = codebook.shape[0]
        codebook.uniform_(-1.0 / size, 1.0 / size)
        codebook.copy_(F.normalize(codebook, dim=-1))


def build_tokenizer(cfg: TokenizerConfig, device: torch.device | str | None = None) -> GigaTokenizer:
    """Build the tokenizer; ``device='meta'`` allocates and initialises nothing (for parameter counts of paper-scale
    models)."""
    with placed(device):
        return GigaTokenizer(cfg)

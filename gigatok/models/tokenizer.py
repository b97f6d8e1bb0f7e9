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
from gigatok.models.quantizer import QuantizerOutput, VectorQuantizer
from gigatok.models.transformer import QFormerBlock, TransformerStack, ViTBlock, init_transformer_weights


def multilevel_pool(features: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """1D query initialisation (Appendix C, Fig. 11): (B, C, h, w) -> (B, num_tokens, C).

    One global token, then levels k = 0..L-1 that split the grid into 2^k regions each, average-pooled and
    flattened: groups of 1, 1, 2, 4, ... tokens, 2^L in all.
    """
    levels = int(math.log2(num_tokens))
    pooled = [features.mean(dim=(2, 3)).unsqueeze(1)]
    for level in range(levels):
        rows, cols = pooling_regions(level)
        region = F.adaptive_avg_pool2d(features, (rows, cols))
        pooled.append(region.flatten(2).transpose(1, 2))
    return torch.cat(pooled, dim=1)


class _Stack(nn.Module):
    """A transformer stack with its input/output projections and learned absolute position embeddings."""

    def __init__(self, cfg: TokenizerConfig, width: int, depth: int, heads: int, one_d: bool,
                 num_queries: int, num_context: int) -> None:
        super().__init__()
        c = cfg.cnn.latent_channels
        self.proj_in = nn.Linear(c, width)
        self.query_pos = nn.Parameter(torch.zeros(1, num_queries, width))
        self.one_d = one_d
        if one_d:
            self.context_in = nn.Linear(c, width)
            self.context_pos = nn.Parameter(torch.zeros(1, num_context, width))
        block = QFormerBlock if one_d else ViTBlock
        self.stack = TransformerStack(block, width, depth, heads, cfg.mlp_ratio, cfg.dropout)
        self.proj_out = nn.Linear(width, c)
        for p in (self.query_pos, *((self.context_pos,) if one_d else ())):
            nn.init.trunc_normal_(p, std=0.02)
        init_transformer_weights(self)


class TransformerEncoder(_Stack):
    """CNN features (B, C, h, w) -> latent tokens (B, N, C): N = h*w for 2D, ``num_tokens`` for 1D."""

    def __init__(self, cfg: TokenizerConfig) -> None:
        size, one_d = cfg.encoder, cfg.kind == "1d"
        super().__init__(cfg, size.width, size.depth, size.heads, one_d, cfg.num_tokens, cfg.grid_size**2)
        self.num_tokens = cfg.num_tokens

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        grid = features.flatten(2).transpose(1, 2)  # (B, h*w, C)
        if self.one_d:
            queries = self.proj_in(multilevel_pool(features, self.num_tokens)) + self.query_pos
            context = self.context_in(grid) + self.context_pos
            out, _ = self.stack(queries, context)
        else:
            out, _ = self.stack(self.proj_in(grid) + self.query_pos)
        return self.proj_out(out)


class TransformerDecoder(_Stack):
    """Latent tokens (B, N, C) -> 2D features (B, C, h, w); also returns decoder layer ``capture_layer``'s output.

    1D: the 2D queries are the first latent token plus a learned 2D position embedding, cross-attending to the
    latent tokens.
    """

    def __init__(self, cfg: TokenizerConfig) -> None:
        size, one_d = cfg.decoder, cfg.kind == "1d"
        super().__init__(cfg, size.width, size.depth, size.heads, one_d, cfg.grid_size**2, cfg.num_tokens)
        self.grid_size = cfg.grid_size

    def forward(
        self, tokens: torch.Tensor, capture_layer: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.one_d:
            context = self.context_in(tokens) + self.context_pos
            first = self.proj_in(tokens[:, :1])
            queries = first.expand(-1, self.grid_size**2, -1) + self.query_pos
            out, captured = self.stack(queries, context, capture_layer)
        else:
            out, captured = self.stack(self.proj_in(tokens) + self.query_pos, capture_layer=capture_layer)
        features = self.proj_out(out).transpose(1, 2).unflatten(2, (self.grid_size, self.grid_size))
        return features, captured


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


def build_tokenizer(cfg: TokenizerConfig, device: torch.device | str | None = None) -> GigaTokenizer:
    """Build the tokenizer; ``device='meta'`` allocates nothing (for parameter counts of paper-scale models)."""
    with torch.device(device or "cpu"):
        return GigaTokenizer(cfg)

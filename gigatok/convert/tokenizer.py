"""The authors' tokenizer checkpoints (``VQVitModelPlus`` 1D, ``VQVitModel2DPlus`` 2D) as workbench tokenizer weights.

Their released tokenizers (``VQ_SS256_e100.pt``, ``VQ_SB256_e200.pt``, ``VQ_BL256_e200.pt``,
``VQ_BL256_dino_disc.pt``, ``VQ_XLXXL256_e300.pt``) are training checkpoints of ``vq_train.py``: the weights under
``"model"`` (and ``"ema"`` when EMA was on, preferred here), beside the discriminator and optimizer states. With
the paper profile's layout (:data:`gigatok.config.AUTHORS_LAYOUT` and its CNN) the workbench tokenizer computes
the same function (tests/test_parity_tokenizer.py); only the key names and a few shapes differ (their fused
attention input projection, (N, 1, width) position embeddings, 1x1 convs where the workbench has linears).

What the shapes say: 1D or 2D (``s2to1encoder`` / ``s2dencoder``), the transformer widths and depths, DETR or ViT
layers (a ``multihead_attn`` in the layers), the number of 1D tokens and the grid (position embeddings), the CNN's
base channels, levels, channel multipliers and blocks per level, adaptive GroupNorm and depth-to-space upsampling,
the latent channels, the codebook, the decoder's output kernel and the semantic projector's output width. What they
cannot say is the number of heads (their fused ``in_proj_weight`` is (3w, w) for any head count): it comes from
the authors' size table (``ViTEncoder`` in blocks.py) by width, every entry of which has 64-wide heads, from
width / 64 for other multiples of 64, or from the ``heads`` argument. Neither can they say the semantic
alignment layer: their configs all use ``distill_depth`` 3, which is taken. Recipe values the weights do not
determine are the ``paper`` profile's.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from gigatok.config import (
    PAPER_TRANSFORMER_SIZES,
    SEMANTIC_ENCODER_DIMS,
    CNNConfig,
    ConfigError,
    SemanticConfig,
    TokenizerConfig,
    TransformerSize,
    tokenizer_run,
)
from gigatok.convert import ConversionError, checkpoint_weights, read_checkpoint

# blocks.py ViTEncoder's size table: width -> heads ("tiny" .. "xxxl"); every entry has 64-wide heads.
AUTHORS_HEADS_BY_WIDTH = {256: 4, 512: 8, 768: 12, 1024: 16, 1280: 20, 1536: 24, 2560: 40}
HEAD_WIDTH = 64
AUTHORS_NORM_GROUPS = 32  # blocks.py Normalize and AdaptiveGroupNorm: GroupNorm(32, ...)
AUTHORS_DISTILL_DEPTH = 3  # configs/vq/VQ_*256.yaml distill_depth
# Not weights: the quantizer's rolling codebook-usage window.
IGNORED = ("quantize.codebook_used",)
# Features of their tokenizer classes the workbench does not implement (off in every released model).
UNSUPPORTED = {
    "q_proj.weight": "QK-norm / flash attention layers (use_qk_norm, use_flash_attn)",
    "q_norm": "QK-norm (use_qk_norm)",
    "query_1d": "learned 1D queries (learnable_1d_query_init)",
    "q_2d": "learned 2D queries (learnable_2d_query_init)",
    "prior_model": "the AR prior model (with_prior_model)",
    "codebook_transform": "SimVQ (simvq)",
    "upsampler.": "Q-Former upsampling (q_upsample)",
    "encoder.distill_mlp": "encoder-side distillation (encoder_2d_distill)",
    "attn.0.": "CNN attention blocks (use_attn True)",
    "mid.1.q.weight": "CNN attention blocks (use_attn True)",
}
AR_MARKERS = ("tok_embeddings.weight", "cls_embedding.embedding_table.weight")


def load_authors_tokenizer(
    source: str | Path | Mapping[str, Any], *, heads: tuple[int, int] | None = None
) -> tuple[TokenizerConfig, dict[str, torch.Tensor]]:
    """A workbench :class:`TokenizerConfig` and a state dict that ``GigaTokenizer(config)`` loads with strict=True.

    ``source``: a file path, a loaded training checkpoint (``"ema"`` preferred over ``"model"``) or a bare state
    dict. ``heads`` (encoder, decoder) overrides the head counts the shapes cannot determine. Raises
    :class:`ConversionError` with a one-line message for anything that is not an authors' tokenizer.
    """
    name = str(source) if isinstance(source, str | Path) else "checkpoint"
    checkpoint = read_checkpoint(Path(source)) if isinstance(source, str | Path) else source
    # "ema" first: the authors evaluate the EMA weights (reconstruction_ddp.py)
    weights = checkpoint_weights(checkpoint, name, ("ema", "model"), lambda key: key in IGNORED)
    _check_layout(weights, name)
    cfg = _infer_config(weights, name, heads)
    return cfg, _map(weights, cfg, name)


# --------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------


def _check_layout(weights: Mapping[str, torch.Tensor], name: str) -> None:
    keys = list(weights)
    if any(k in weights for k in AR_MARKERS) or any(k.startswith("layers.") for k in keys):
        raise ConversionError(
            f"{name}: this is an AR (GPT) checkpoint, not an authors' tokenizer; convert it with gigatok.convert.ar"
        )
    if not any(k.startswith(("s2to1encoder.", "s2dencoder.")) for k in keys):
        raise ConversionError(f"{name}: not an authors' tokenizer state dict (no s2to1encoder.* or s2dencoder.* keys)")
    for marker, feature in UNSUPPORTED.items():
        if any(marker in k for k in keys):
            raise ConversionError(f"{name}: the tokenizer uses {feature}, which the workbench does not implement")


# --------------------------------------------------------------------------------------------------------------
# Architecture from shapes
# --------------------------------------------------------------------------------------------------------------


def _get(weights: Mapping[str, torch.Tensor], key: str, name: str) -> torch.Tensor:
    if key not in weights:
        raise ConversionError(f"{name}: missing {key} (a truncated or foreign state dict?)")
    return weights[key]


def _indices(weights: Mapping[str, torch.Tensor], pattern: str) -> int:
    """How many consecutive indices ``i`` the keys matching ``pattern`` (one group) cover."""
    found = {int(m.group(1)) for k in weights if (m := re.match(pattern, k))}
    count = 0
    while count in found:
        count += 1
    return count


def _heads(width: int, which: str, override: int | None, name: str) -> int:
    if override is not None:
        return override
    if width in AUTHORS_HEADS_BY_WIDTH:
        return AUTHORS_HEADS_BY_WIDTH[width]
    if width % HEAD_WIDTH == 0:
        return width // HEAD_WIDTH
    raise ConversionError(
        f"{name}: the {which} width {width} is not in the authors' size table and not a multiple "
        f"of {HEAD_WIDTH}; pass heads=(encoder, decoder)"
    )


def _size_name(width: int) -> str:
    """The paper's size of that width (Table 1); a reduced-width stand-in is named S."""
    return next((n for n, s in PAPER_TRANSFORMER_SIZES.items() if s.width == width), "S")


def _infer_cnn(weights: Mapping[str, torch.Tensor], latent: int, name: str) -> CNNConfig:
    base = _get(weights, "encoder.conv_in.weight", name).shape[0]
    levels = _indices(weights, r"decoder\.conv_blocks\.(\d+)\.")
    if levels == 0:
        raise ConversionError(f"{name}: no decoder.conv_blocks.* keys (a truncated or foreign state dict?)")
    # Decoder block i works at level L-1-i; its first block's output channels are base * mult of that level.
    mults = [
        _get(weights, f"decoder.conv_blocks.{levels - 1 - level}.res.0.conv1.weight", name).shape[0] // base
        for level in range(levels)
    ]
    upsample: Literal["nearest", "depth_to_space"] = (
        "depth_to_space" if "decoder.conv_blocks.0.upsample.conv1.weight" in weights else "nearest"
    )
    try:
        return CNNConfig(
            base_channels=base,
            channel_mult=tuple(mults),
            encoder_res_blocks=_indices(weights, r"encoder\.conv_blocks\.0\.res\.(\d+)\."),
            decoder_res_blocks=_indices(weights, r"decoder\.conv_blocks\.0\.res\.(\d+)\."),
            encoder_attention=False,
            latent_channels=latent,
            norm_groups=AUTHORS_NORM_GROUPS,
            decoder_attention=False,
            decoder_adaptive_norm="decoder.adaptive.0.gamma.weight" in weights,
            upsample=upsample,
        )
    except ConfigError as e:
        raise ConversionError(f"{name}: the CNN's shapes make no valid configuration ({e})") from None


def _infer_config(weights: Mapping[str, torch.Tensor], name: str, heads: tuple[int, int] | None) -> TokenizerConfig:
    one_d = any(k.startswith("s2to1encoder.") for k in weights)
    enc, dec = ("s2to1encoder", "s1to2decoder") if one_d else ("s2dencoder", "s2ddecoder")
    embed = _get(weights, f"{enc}.encoder_embed.weight", name)
    enc_width, latent = embed.shape
    dec_width = _get(weights, f"{dec}.decoder_embed.weight", name).shape[0]
    enc_depth = _indices(weights, rf"{enc}\.transformer\.(\d+)\.")
    dec_depth = _indices(weights, rf"{dec}\.transformer\.(\d+)\.")
    if not enc_depth or not dec_depth:
        raise ConversionError(f"{name}: no transformer layers under {enc} or {dec}")
    enc_heads, dec_heads = heads if heads is not None else (None, None)
    grid_cells = _get(weights, f"{enc}.positional_embedding", name).shape[0]
    grid = round(grid_cells**0.5)
    if grid * grid != grid_cells:
        raise ConversionError(f"{name}: {enc}.positional_embedding has {grid_cells} rows, not a square grid")
    num_tokens = _get(weights, f"{enc}.latent_token_positional_embedding", name).shape[0] if one_d else grid_cells
    cnn = _infer_cnn(weights, latent, name)
    codebook = _get(weights, "quantize.embedding.weight", name)
    detr_2d = f"{enc}.transformer.0.multihead_attn.in_proj_weight" in weights
    semantic = _infer_semantic(weights, dec, name)
    enc_name, dec_name = _size_name(enc_width), _size_name(dec_width)
    try:
        base = tokenizer_run(f"{enc_name}-{dec_name}", profile="paper", kind="1d" if one_d else "2d").tokenizer
        return dataclasses.replace(
            base,
            encoder=TransformerSize(enc_width, enc_depth, _heads(enc_width, "encoder", enc_heads, name)),
            decoder=TransformerSize(dec_width, dec_depth, _heads(dec_width, "decoder", dec_heads, name)),
            image_size=grid * cnn.downsample,
            num_tokens=num_tokens,
            cnn=cnn,
            quantizer=dataclasses.replace(
                base.quantizer, codebook_size=codebook.shape[0], codebook_dim=codebook.shape[1]
            ),
            semantic=dataclasses.replace(base.semantic, **semantic),
            block_1d="detr" if one_d else base.block_1d,
            block_2d="detr" if detr_2d and not one_d else base.block_2d,
            decoder_out_kernel=_get(weights, f"{dec}.conv_out.weight", name).shape[-1],
        )
    except ConfigError as e:
        raise ConversionError(f"{name}: the shapes make no valid tokenizer configuration ({e})") from None


def _infer_semantic(weights: Mapping[str, torch.Tensor], dec: str, name: str) -> dict[str, Any]:
    """Their decoder's distill_mlp is the semantic projector; its output width names the frozen encoder."""
    key = f"{dec}.distill_mlp.4.weight"
    if key not in weights:
        return {"weight": 0.0}
    out_dim = weights[key].shape[0]
    encoders = [e for e, d in SEMANTIC_ENCODER_DIMS.items() if d == out_dim]
    if not encoders:
        raise ConversionError(
            f"{name}: the semantic projector outputs {out_dim} channels, which no known semantic "
            f"encoder has ({SEMANTIC_ENCODER_DIMS})"
        )
    default = SemanticConfig()
    encoder = default.encoder if default.encoder in encoders else encoders[0]
    return {"weight": default.weight, "layer": AUTHORS_DISTILL_DEPTH, "encoder": encoder}


# --------------------------------------------------------------------------------------------------------------
# Key mapping
# --------------------------------------------------------------------------------------------------------------


class _Mapper:
    """Moves tensors from their names to ours, remembering which of theirs were used."""

    def __init__(self, weights: Mapping[str, torch.Tensor], name: str) -> None:
        self.weights, self.name = weights, name
        self.out: dict[str, torch.Tensor] = {}
        self.source: dict[str, str] = {}  # our key -> theirs, for messages
        self.used: set[str] = set()

    def take(self, theirs: str) -> torch.Tensor:
        self.used.add(theirs)
        return _get(self.weights, theirs, self.name)

    def put(self, ours: str, theirs: str, value: torch.Tensor) -> None:
        self.out[ours], self.source[ours] = value, theirs

    def copy(self, theirs: str, ours: str, params: tuple[str, ...] = ("weight", "bias")) -> None:
        for p in params:
            self.put(f"{ours}.{p}", f"{theirs}.{p}", self.take(f"{theirs}.{p}"))

    def linear_from_conv(self, theirs: str, ours: str) -> None:
        """A 1x1 conv (out, in, 1, 1) as a linear (out, in)."""
        weight = self.take(f"{theirs}.weight")
        self.put(f"{ours}.weight", f"{theirs}.weight", weight.flatten(1) if weight.ndim == 4 else weight)
        self.copy(theirs, ours, ("bias",))

    def position(self, theirs: str, ours: str) -> None:
        self.put(ours, theirs, self.take(theirs).transpose(0, 1))  # (N, 1, w) -> (1, N, w)

    def attention(self, theirs: str, ours: str) -> None:
        """nn.MultiheadAttention (fused in_proj, out_proj) -> q, kv, proj."""
        weight, bias = self.take(f"{theirs}.in_proj_weight"), self.take(f"{theirs}.in_proj_bias")
        width = weight.shape[1]
        self.put(f"{ours}.q.weight", f"{theirs}.in_proj_weight", weight[:width])
        self.put(f"{ours}.kv.weight", f"{theirs}.in_proj_weight", weight[width:])
        self.put(f"{ours}.q.bias", f"{theirs}.in_proj_bias", bias[:width])
        self.put(f"{ours}.kv.bias", f"{theirs}.in_proj_bias", bias[width:])
        self.copy(f"{theirs}.out_proj", f"{ours}.proj")

    def resnet(self, theirs: str, ours: str) -> None:
        for part in ("norm1", "conv1", "norm2", "conv2"):
            self.copy(f"{theirs}.{part}", f"{ours}.{part}")
        if f"{theirs}.nin_shortcut.weight" in self.weights:
            self.copy(f"{theirs}.nin_shortcut", f"{ours}.shortcut")

    def leftover(self) -> list[str]:
        return sorted(set(self.weights) - self.used)


def _map_cnn(m: _Mapper, cnn: CNNConfig) -> None:
    levels = len(cnn.channel_mult)
    m.copy("encoder.conv_in", "cnn_encoder.conv_in")
    index = 0
    for level in range(levels):
        for block in range(cnn.encoder_res_blocks):
            m.resnet(f"encoder.conv_blocks.{level}.res.{block}", f"cnn_encoder.down.{index}")
            index += 1
        if level != levels - 1:
            m.copy(f"encoder.conv_blocks.{level}.downsample.conv", f"cnn_encoder.down.{index}.conv")
            index += 1
    m.resnet("encoder.mid.0", "cnn_encoder.mid.0")
    m.resnet("encoder.mid.1", "cnn_encoder.mid.2")  # the workbench keeps an Identity where attention would be
    m.copy("encoder.norm_out", "cnn_encoder.norm_out")
    m.copy("encoder.conv_out", "cnn_encoder.conv_out")

    m.copy("decoder.conv_in", "cnn_decoder.conv_in")
    m.resnet("decoder.mid.0", "cnn_decoder.mid.0")
    m.resnet("decoder.mid.1", "cnn_decoder.mid.2")
    index = 0
    for i in range(levels):  # their decoder block i is level L-1-i
        if cnn.decoder_adaptive_norm:
            m.copy(f"decoder.adaptive.{i}.gamma", f"cnn_decoder.up.{index}.gamma")
            m.copy(f"decoder.adaptive.{i}.beta", f"cnn_decoder.up.{index}.beta")
            index += 1
        for block in range(cnn.decoder_res_blocks):
            m.resnet(f"decoder.conv_blocks.{i}.res.{block}", f"cnn_decoder.up.{index}")
            index += 1
        if i != levels - 1:
            conv = "conv1" if cnn.upsample == "depth_to_space" else "conv"
            m.copy(f"decoder.conv_blocks.{i}.upsample.{conv}", f"cnn_decoder.up.{index}.conv")
            index += 1
    m.copy("decoder.norm_out", "cnn_decoder.norm_out")
    m.copy("decoder.conv_out", "cnn_decoder.conv_out")


def _map_layers(m: _Mapper, theirs: str, ours: str, depth: int, detr: bool) -> None:
    for i in range(depth):
        t, o = f"{theirs}.transformer.{i}", f"{ours}.stack.blocks.{i}"
        m.copy(f"{t}.linear1", f"{o}.mlp.fc1")
        m.copy(f"{t}.linear2", f"{o}.mlp.fc2")
        m.copy(f"{t}.norm1", f"{o}.norm1")
        if detr:
            m.attention(f"{t}.self_attn", f"{o}.self_attn")
            m.attention(f"{t}.multihead_attn", f"{o}.cross_attn")
            m.copy(f"{t}.norm2", f"{o}.norm_q")
            m.copy(f"{t}.norm3", f"{o}.norm2")
        else:
            m.attention(f"{t}.self_attn", f"{o}.attn")
            m.copy(f"{t}.norm2", f"{o}.norm2")
    m.copy(f"{theirs}.ln_post", f"{ours}.stack.norm")
    m.copy(f"{theirs}.ln_pre", f"{ours}.input_norm")


def _map(weights: Mapping[str, torch.Tensor], cfg: TokenizerConfig, name: str) -> dict[str, torch.Tensor]:
    m = _Mapper(weights, name)
    _map_cnn(m, cfg.cnn)
    one_d = cfg.kind == "1d"
    enc, dec = ("s2to1encoder", "s1to2decoder") if one_d else ("s2dencoder", "s2ddecoder")
    _map_layers(m, enc, "encoder", cfg.encoder.depth, one_d or cfg.block_2d == "detr")
    _map_layers(m, dec, "decoder", cfg.decoder.depth, one_d or cfg.block_2d == "detr")
    if one_d:
        m.copy(f"{enc}.encoder_embed", "encoder.context_in")
        m.copy(f"{enc}.global_proj", "encoder.query_proj")
        m.position(f"{enc}.positional_embedding", "encoder.context_pos")
        m.position(f"{enc}.latent_token_positional_embedding", "encoder.query_pos")
        m.copy(f"{dec}.decoder_embed", "decoder.context_in")
        m.position(f"{dec}.positional_embedding", "decoder.query_pos")
        m.position(f"{dec}.latent_token_positional_embedding", "decoder.context_pos")
    else:
        m.copy(f"{enc}.encoder_embed", "encoder.proj_in")
        m.position(f"{enc}.positional_embedding", "encoder.query_pos")
        m.copy(f"{dec}.decoder_embed", "decoder.proj_in")
        m.position(f"{dec}.positional_embedding", "decoder.query_pos")
    m.linear_from_conv(f"{enc}.conv_out", "encoder.proj_out")
    if cfg.decoder_out_kernel == 1:
        m.linear_from_conv(f"{dec}.conv_out", "decoder.proj_out")
    else:
        m.copy(f"{dec}.conv_out", "decoder.proj_out")
    m.linear_from_conv("quant_conv", "quantizer.proj_in")
    m.linear_from_conv("post_quant_conv", "quantizer.proj_out")
    m.copy("quantize.embedding", "quantizer.codebook", ("weight",))
    if cfg.semantic.enabled:
        for i in (0, 2, 4):
            m.copy(f"{dec}.distill_mlp.{i}", f"semantic_projector.net.{i}")
    leftover = m.leftover()
    if leftover:
        more = f" and {len(leftover) - 1} more" if len(leftover) > 1 else ""
        raise ConversionError(f"{name}: unexpected key {leftover[0]}{more} for the inferred architecture")
    _check_against_model(m, cfg)
    return {k: v.float() if v.is_floating_point() else v for k, v in m.out.items()}


def _check_against_model(m: _Mapper, cfg: TokenizerConfig) -> None:
    """Compare with the workbench model built on the meta device: same keys, same shapes."""
    from gigatok.models.tokenizer import build_tokenizer

    expected = {k: tuple(v.shape) for k, v in build_tokenizer(cfg, "meta").state_dict().items()}
    missing = sorted(set(expected) - set(m.out))
    if missing:
        raise ConversionError(f"{m.name}: the converted weights lack {missing[0]} ({len(missing)} in all)")
    extra = sorted(set(m.out) - set(expected))
    if extra:
        raise ConversionError(f"{m.name}: the converted weights have an unexpected {extra[0]} ({len(extra)} in all)")
    for key, shape in expected.items():
        if tuple(m.out[key].shape) != shape:
            raise ConversionError(
                f"{m.name}: {m.source[key]} gives {key} the shape {tuple(m.out[key].shape)}, the "
                f"inferred architecture needs {shape} (a mismatched state dict?)"
            )

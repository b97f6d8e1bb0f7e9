"""Run configuration: frozen dataclasses, the paper's size tables, the two profiles and the config hash.

Every number has one home. The paper's tables (Table 1 transformer sizes, Table 9 training settings) are the
``PAPER`` profile; the ``TINY`` profile maps the same experiment names onto CPU-sized numbers. Study code names only
what varies (sizes, 1D/2D, lambda, layer, encoder, epochs) and calls :func:`tokenizer_run`.

All dataclasses validate themselves in ``__post_init__``, so an invalid configuration is rejected when it is built,
before any work starts, with a :class:`ConfigError` that names the field at fault.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

CONFIG_SCHEMA_VERSION = 1


# The hash-compatibility rule (the one place it is written down). A run's identity is the hash of its config, and
# finished runs are found again by that hash, so adding a field must not change the hash of any run planned before:
#   1. A new config field defaults to the behaviour before it existed, and carries ``metadata=NEW_FIELD``: it then
#      enters the hash only when set to something else (``hashed_fields``), so old runs keep their hashes and a run
#      that uses the new behaviour gets a new one.
#   2. A new part of a run that is not a config field (a stage's settings, a snapshot) enters RunSpec.hash the same
#      way: only where the run uses it (RunSpec.hash in gigatok/runs/spec.py: the CFG-search settings only with the
#      cfg_search stage, tokenizer_snapshot only when set).
#   3. A deliberate change of what existing runs are (a new default) bumps nothing silently: it rewrites
#      tests/fixtures/pinned_run_hashes.json on purpose (``python tests/test_run_hashes.py --write``), and the
#      commit says why; CONFIG_SCHEMA_VERSION changes only if the hashed payload's shape does.
UNLESS_DEFAULT = "unless-default"
NEW_FIELD = {"hash": UNLESS_DEFAULT}  # rule 1 above: in the hash only when not at its default


class ConfigError(ValueError):
    """An invalid configuration value; the message starts with the dotted field name."""


def _require(condition: bool, field_name: str, why: str) -> None:
    if not condition:
        raise ConfigError(f"{field_name}: {why}")


# --------------------------------------------------------------------------------------------------------------
# Size tables
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TransformerSize:
    """Width, depth and heads of one transformer stack (a tokenizer encoder or decoder)."""

    width: int
    depth: int
    heads: int

    def __post_init__(self) -> None:
        _require(self.width > 0 and self.depth > 0 and self.heads > 0, "size", "width, depth, heads must be > 0")
        _require(self.width % self.heads == 0, "size", f"width {self.width} not divisible by {self.heads} heads")


SIZE_NAMES = ("S", "B", "L", "XL", "XXL")

# Table 1 of the paper: width / depth / heads.
PAPER_TRANSFORMER_SIZES: dict[str, TransformerSize] = {
    "S": TransformerSize(512, 6, 8),
    "B": TransformerSize(768, 12, 12),
    "L": TransformerSize(1024, 24, 16),
    "XL": TransformerSize(1280, 36, 20),
    "XXL": TransformerSize(1536, 48, 24),
}

# CPU scale: same ordering of capacity (wider and deeper with the size name), head width 16. Depth of S is 4 so
# that the default alignment layer l = 3 exists at every size, as in the paper.
TINY_TRANSFORMER_SIZES: dict[str, TransformerSize] = {
    "S": TransformerSize(64, 4, 4),
    "B": TransformerSize(96, 5, 6),
    "L": TransformerSize(128, 6, 8),
    "XL": TransformerSize(160, 7, 10),
    "XXL": TransformerSize(192, 8, 12),
}

# Output channels of each frozen semantic encoder's patch features (the projector's output width).
# dinov2-b: DINOv2 ViT-B/14; clip: DFN CLIP ViT-L/14; siglip: SigLIP So400m/14; inception: the 2015 TF-Inception's
# Mixed_6e block (the only ImageNet-pretrained network installable offline, used by the tiny profile).
SEMANTIC_ENCODER_DIMS: dict[str, int] = {"dinov2-b": 768, "clip": 1024, "siglip": 1152, "inception": 768}


def parse_tokenizer_name(name: str) -> tuple[str, str]:
    """'S-B' -> ('S', 'B'): an X-Y tokenizer has an X encoder and a Y decoder."""
    parts = name.split("-")
    _require(len(parts) == 2, "tokenizer name", f"{name!r} is not of the form ENC-DEC, e.g. 'S-B'")
    for part in parts:
        _require(part in SIZE_NAMES, "tokenizer name", f"unknown size {part!r} in {name!r}; known: {SIZE_NAMES}")
    return parts[0], parts[1]


# --------------------------------------------------------------------------------------------------------------
# Model configuration
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CNNConfig:
    """The CNN encoder/decoder, of fixed size across tokenizer sizes.

    The encoder has no attention blocks (the transformer after it does the global mixing): 26.1M at the defaults,
    the authors' size. The default decoder is the workbench's original one (4 residual blocks per level, attention
    at the lowest resolution, nearest-neighbour upsampling: 51.2M). The paper profile sets the authors' decoder
    (blocks.py ``Decoder`` as configs/vq/VQ_*256.yaml build it: 3 blocks per level, no attention, adaptive
    GroupNorm, depth-to-space upsampling), 50.2M as they publish.
    """

    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    encoder_res_blocks: int = 2
    decoder_res_blocks: int = 4
    encoder_attention: bool = False
    latent_channels: int = 256
    norm_groups: int = 32
    # The authors' decoder (configs/vq/VQ_*256.yaml: use_attn False, adaptive_gn True, d2s_up True; blocks.py
    # Decoder): no attention blocks, an adaptive GroupNorm conditioned on the decoder's input at the start of each
    # level (MAGVIT-v2), and depth-to-space upsampling (a conv to 4x channels, then DCR depth_to_space).
    decoder_attention: bool = field(default=True, metadata=NEW_FIELD)
    decoder_adaptive_norm: bool = field(default=False, metadata=NEW_FIELD)
    upsample: Literal["nearest", "depth_to_space"] = field(default="nearest", metadata=NEW_FIELD)

    def __post_init__(self) -> None:
        _require(self.base_channels > 0, "cnn.base_channels", "must be > 0")
        _require(
            self.upsample in ("nearest", "depth_to_space"),
            "cnn.upsample",
            f"must be 'nearest' or 'depth_to_space', got {self.upsample!r}",
        )
        _require(len(self.channel_mult) >= 1, "cnn.channel_mult", "needs at least one level")
        _require(all(m > 0 for m in self.channel_mult), "cnn.channel_mult", "multipliers must be > 0")
        for m in self.channel_mult:
            _require(
                (self.base_channels * m) % self.norm_groups == 0,
                "cnn.norm_groups",
                f"{self.norm_groups} groups do not divide {self.base_channels * m} channels",
            )
        # 0 leaves only the downsampling convs between levels (and the middle blocks): a reduced-size stand-in.
        _require(self.encoder_res_blocks >= 0, "cnn.encoder_res_blocks", "must be >= 0")
        _require(self.decoder_res_blocks >= 1, "cnn.decoder_res_blocks", "must be >= 1")
        _require(self.latent_channels > 0, "cnn.latent_channels", "must be > 0")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


@dataclass(frozen=True)
class QuantizerConfig:
    codebook_size: int = 16384
    codebook_dim: int = 8
    commitment_beta: float = 0.25
    codebook_weight: float = 1.0
    entropy_weight: float = 0.0
    entropy_temperature: float = 0.01
    rotation_trick: bool = True
    # The authors' entropy loss takes log(p + 1e-5) of the batch-averaged code distribution
    # (vq_vit_model.py compute_entropy_loss); 0 keeps log(max(p, 1e-10)).
    entropy_log_offset: float = field(default=0.0, metadata=NEW_FIELD)

    def __post_init__(self) -> None:
        _require(self.codebook_size >= 2, "quantizer.codebook_size", "must be >= 2")
        _require(self.codebook_dim >= 1, "quantizer.codebook_dim", "must be >= 1")
        _require(self.commitment_beta >= 0, "quantizer.commitment_beta", "must be >= 0 (a negative weight)")
        _require(self.codebook_weight >= 0, "quantizer.codebook_weight", "must be >= 0 (a negative weight)")
        _require(self.entropy_weight >= 0, "quantizer.entropy_weight", "must be >= 0 (a negative weight)")
        _require(self.entropy_temperature > 0, "quantizer.entropy_temperature", "must be > 0")
        _require(self.entropy_log_offset >= 0, "quantizer.entropy_log_offset", "must be >= 0")


@dataclass(frozen=True)
class SemanticConfig:
    """Semantic regularization (Eq. 1-2): decoder layer ``layer`` -> MLP -> cosine with a frozen encoder."""

    weight: float = 0.5  # lambda; 0 turns the regularization (and its projector) off
    layer: int = 3  # 1-based index of the decoder transformer layer whose output is aligned
    encoder: str = "dinov2-b"
    encoder_resolution: int = 224  # images are resized to this before the frozen encoder
    cache_features: bool = False  # the encoder is frozen: reuse its features per sample when data is unaugmented

    def __post_init__(self) -> None:
        _require(self.weight >= 0, "semantic.weight", f"lambda must be >= 0, got {self.weight} (a negative weight)")
        _require(self.layer >= 1, "semantic.layer", f"alignment layer must be >= 1, got {self.layer}")
        _require(
            self.encoder in SEMANTIC_ENCODER_DIMS,
            "semantic.encoder",
            f"unknown semantic encoder {self.encoder!r}; known: {sorted(SEMANTIC_ENCODER_DIMS)}",
        )
        _require(self.encoder_resolution >= 32, "semantic.encoder_resolution", "must be >= 32")

    @property
    def enabled(self) -> bool:
        return self.weight > 0

    @property
    def feature_dim(self) -> int:
        return SEMANTIC_ENCODER_DIMS[self.encoder]


Kind = Literal["1d", "2d"]


@dataclass(frozen=True)
class TokenizerConfig:
    """The hybrid CNN-Transformer VQ tokenizer. ``name`` is 'X-Y' (X encoder, Y decoder)."""

    name: str
    kind: Kind
    encoder: TransformerSize
    decoder: TransformerSize
    image_size: int = 256
    num_tokens: int = 256
    cnn: CNNConfig = field(default_factory=CNNConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    semantic: SemanticConfig = field(default_factory=SemanticConfig)
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    # Transformer layout. Defaults are the workbench's original layout; the paper profile sets the authors'
    # (tokenizer_image/vq/blocks.py ViTEncoder / ViTDecoder / ViTEncoder2D / ViTDecoder2D).
    # block_1d "detr": DETR's decoder layer (their TransformerDecoderLayer): query positions added to the queries
    # and keys of self-attention and to the cross-attention queries, context positions to the cross-attention
    # keys, in every layer; the context is not normalised. "qformer": positions added once at the input, the
    # context normalised in every layer.
    block_1d: Literal["qformer", "detr"] = field(default="qformer", metadata=NEW_FIELD)
    # block_2d "detr": the same layer attending to the grid itself (the authors' S-S 2D config); "vit": pre-norm
    # self-attention blocks with positions added once (their TransformerLayer, the S-B and B-L 2D configs).
    block_2d: Literal["vit", "detr"] = field(default="vit", metadata=NEW_FIELD)
    # A LayerNorm over the latent channels before each transformer's input projection (their ln_pre).
    input_norm: bool = field(default=False, metadata=NEW_FIELD)
    # 1D queries derived from the embedded context, with no query input projection of their own: the encoder pools
    # the embedded grid and applies a width x width linear (their global_proj), the decoder repeats the first
    # embedded latent token (their decoder_embed serves both).
    queries_from_context: bool = field(default=False, metadata=NEW_FIELD)
    # Which axis the multi-level pooling splits first: "height" gives 2x1 regions at level 1, "width" 1x2 (their
    # sample_multi_level_1d_tokens with first_grow="row").
    pool_first_split: Literal["height", "width"] = field(default="height", metadata=NEW_FIELD)
    # The 1D decoder's 2D queries before their position embedding. "first": the first latent token repeated at
    # every cell (the paper's App. C and the authors'). "unpooled": the transpose of the encoder's multi-level
    # pooling, each cell the mean of the latent tokens whose pooling regions contain it, so that at initialisation a
    # cell's query already carries its own region's tokens (the tiny profile's, see docs/fidelity.md).
    decoder_queries_1d: Literal["first", "unpooled"] = field(default="first", metadata=NEW_FIELD)
    # Kernel of the decoder's output projection to the latent channels (their ViTDecoder conv_out is 3x3).
    decoder_out_kernel: int = field(default=1, metadata=NEW_FIELD)
    # "authors": their _init_weights over the whole model (truncated normal 0.02 on every Linear and Conv2d, zero
    # biases), position embeddings width^-0.5 * N(0, 1), an L2-normalised uniform codebook init.
    init: Literal["workbench", "authors"] = field(default="workbench", metadata=NEW_FIELD)

    def __post_init__(self) -> None:
        parse_tokenizer_name(self.name)
        _require(self.kind in ("1d", "2d"), "tokenizer.kind", f"must be '1d' or '2d', got {self.kind!r}")
        _require(self.block_1d in ("qformer", "detr"), "tokenizer.block_1d", f"unknown block {self.block_1d!r}")
        _require(self.block_2d in ("vit", "detr"), "tokenizer.block_2d", f"unknown block {self.block_2d!r}")
        _require(
            self.decoder_queries_1d in ("first", "unpooled"),
            "tokenizer.decoder_queries_1d",
            f"must be 'first' or 'unpooled', got {self.decoder_queries_1d!r}",
        )
        _require(
            self.pool_first_split in ("height", "width"),
            "tokenizer.pool_first_split",
            f"must be 'height' or 'width', got {self.pool_first_split!r}",
        )
        _require(
            self.decoder_out_kernel in (1, 3),
            "tokenizer.decoder_out_kernel",
            f"must be 1 or 3, got {self.decoder_out_kernel}",
        )
        _require(self.init in ("workbench", "authors"), "tokenizer.init", f"unknown init {self.init!r}")
        ds = self.cnn.downsample
        _require(self.image_size > 0, "tokenizer.image_size", "must be > 0")
        _require(
            self.image_size % ds == 0,
            "tokenizer.image_size",
            f"{self.image_size} is not divisible by the downsample factor {ds}",
        )
        grid_cells = self.grid_size**2
        if self.kind == "2d":
            _require(
                self.num_tokens == grid_cells,
                "tokenizer.num_tokens",
                f"a 2D tokenizer has one token per grid cell: {self.grid_size}x{self.grid_size} = {grid_cells}, "
                f"got {self.num_tokens}",
            )
        else:
            n = self.num_tokens
            _require(
                n >= 2 and n & (n - 1) == 0,
                "tokenizer.num_tokens",
                f"multi-level average pooling produces 2^L tokens; {n} is not a power of two >= 2",
            )
            # The finest level splits the grid into num_tokens/2 regions; each needs at least one grid cell.
            rows, cols = pooling_regions(int(math.log2(n)) - 1, self.pool_first_split)
            _require(
                rows <= self.grid_size and cols <= self.grid_size,
                "tokenizer.num_tokens",
                f"{n} tokens need a {rows}x{cols} pooling level, finer than the "
                f"{self.grid_size}x{self.grid_size} feature grid",
            )
        _require(self.mlp_ratio > 0, "tokenizer.mlp_ratio", "must be > 0")
        _require(0 <= self.dropout < 1, "tokenizer.dropout", "must be in [0, 1)")
        if self.semantic.enabled:
            _require(
                self.semantic.layer <= self.decoder.depth,
                "semantic.layer",
                f"alignment layer {self.semantic.layer} is deeper than the decoder ({self.decoder.depth} layers)",
            )

    @property
    def grid_size(self) -> int:
        return self.image_size // self.cnn.downsample


def pooling_regions(level: int, first_split: str = "height") -> tuple[int, int]:
    """Rows x cols of the 2^level regions that level ``level`` of the 1D-query pooling splits the grid into.

    Level k halves alternately along rows then columns: 1x1, 2x1, 2x2, 4x2, 4x4, ...; with ``first_split``
    "width", along columns first: 1x1, 1x2, 2x2, 2x4, ...
    """
    finer, coarser = 2 ** ((level + 1) // 2), 2 ** (level // 2)
    return (finer, coarser) if first_split == "height" else (coarser, finer)


# --------------------------------------------------------------------------------------------------------------
# Training configuration
# --------------------------------------------------------------------------------------------------------------


PERCEPTUAL_CHOICES = ("lpips", "inception", "off", "auto")


@dataclass(frozen=True)
class LossConfig:
    """The VQGAN objective's weights; the quantizer and semantic weights live with their modules."""

    pixel_weight: float = 1.0  # L2 on pixels
    perceptual_weight: float = 1.0  # LPIPS (VGG)
    gan_weight: float = 0.5  # hinge GAN, generator side (the authors' disc_weight; no adaptive weight)
    gan_start_step: int = 20_000
    disc_channels: int = 64  # PatchGAN only
    disc_layers: int = 3  # PatchGAN only
    # "dino": the frozen-DINO discriminator of VQ_BL256_dino_disc.yaml (disc_type "dinodisc"; Table 3's B-L row
    # marked with a double dagger), with DiffAug on its inputs; see gigatok/models/discriminator.py.
    discriminator: Literal["patchgan", "dino"] = field(default="patchgan", metadata=NEW_FIELD)
    # The small tokenizers' shortcut (the authors' configs/vq/VQ_{SS,SB,BL}256.yaml: aux_loss_end,
    # use_direct_rec_loss, fea_rec_loss_weight with fea_rec_loss_type mse; Appendix C "additional implementation
    # details"). While on, the CNN decoder also decodes the CNN encoder's features directly (pixel L2, LPIPS and,
    # should the GAN already be on, the adversarial terms, at the main weights) and the transformer decoder's output
    # is pulled towards the CNN encoder's by MSE. On at 1-based steps t < shortcut_end_step, as the authors count
    # (their global_step = train_steps + 1); 0 turns it off.
    shortcut_end_step: int = field(default=0, metadata=NEW_FIELD)
    shortcut_decode: bool = field(default=True, metadata=NEW_FIELD)  # use_direct_rec_loss: the direct decoding
    shortcut_feature_weight: float = field(default=1.0, metadata=NEW_FIELD)  # fea_rec_loss_weight
    # vq_loss.py scales the discriminator's own hinge loss by disc_weight too; under Adam a constant factor only moves
    # where the 10.0 gradient clip bites (at 0.5, a gradient twice as large in unscaled terms).
    disc_loss_weight: float = field(default=1.0, metadata=NEW_FIELD)
    # Which perceptual network the loss uses: "lpips" (LPIPS-VGG16; the registry's vgg16 file must be there),
    # "inception" (not LPIPS: an LPIPS-style distance on the early blocks of the TF-Inception that FID uses, the one
    # ImageNet-pretrained network an offline machine has; gigatok.perceptual.InceptionDistance), "off" (no
    # perceptual term), or "auto": "lpips" where the vgg16 file is found, else "off", never a random network. "auto"
    # is settled into "lpips" or "off" before a run is hashed (gigatok.perceptual.resolve_perceptual), so a run
    # trained without the term never shares a hash or a folder with one trained with it.
    perceptual: Literal["lpips", "inception", "off", "auto"] = field(default="lpips", metadata=NEW_FIELD)

    def __post_init__(self) -> None:
        _require(
            self.discriminator in ("patchgan", "dino"),
            "loss.discriminator",
            f"must be 'patchgan' or 'dino', got {self.discriminator!r}",
        )
        _require(
            self.perceptual in PERCEPTUAL_CHOICES,
            "loss.perceptual",
            f"must be one of {PERCEPTUAL_CHOICES}, got {self.perceptual!r}",
        )
        for name in ("pixel_weight", "perceptual_weight", "gan_weight", "shortcut_feature_weight", "disc_loss_weight"):
            value = getattr(self, name)
            _require(value >= 0, f"loss.{name}", f"must be >= 0, got {value} (a negative weight)")
        _require(self.gan_start_step >= 0, "loss.gan_start_step", "must be >= 0")
        _require(self.disc_channels > 0 and self.disc_layers > 0, "loss.disc_channels", "must be > 0")
        _require(self.shortcut_end_step >= 0, "loss.shortcut_end_step", "must be >= 0 (0: no shortcut)")


# VQ_BL256_dino_disc.yaml starts its DINO discriminator at step 80,000, four times VQ_BL256.yaml's PatchGAN start
# (disc_start 20,000): a profile's DINO start is four times its PatchGAN start.
DINO_GAN_START_FACTOR = 4


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-4
    min_lr: float = 1e-5
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 1e-4
    warmup_steps: int = 0
    grad_clip: float = 10.0
    # The LR multiplier the warm-up starts from: scheduler.py's _warmup_lr starts at base_lr / init_div_factor
    # (100) and rises linearly to base_lr; 0 rises from (step + 1) / warmup_steps.
    warmup_start_factor: float = field(default=0.0, metadata=NEW_FIELD)

    def __post_init__(self) -> None:
        _require(self.lr > 0, "optim.lr", "must be > 0")
        _require(0 <= self.min_lr <= self.lr, "optim.min_lr", f"must be in [0, lr={self.lr}]")
        _require(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "optim.beta1", "betas must be in [0, 1)")
        _require(self.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        _require(self.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
        _require(self.grad_clip > 0, "optim.grad_clip", "must be > 0")
        _require(0 <= self.warmup_start_factor < 1, "optim.warmup_start_factor", "must be in [0, 1)")


@dataclass(frozen=True)
class DataConfig:
    """``builtin``: the offline photo dataset shipped inside installed packages; ``imagefolder``: ImageNet layout."""

    dataset: Literal["builtin", "imagefolder"] = "imagefolder"
    # imagefolder: folder holding train/ and val/ class folders; None reads GIGATOK_DATA_ROOT when the data is
    # opened. A machine-local path, so it is left out of the config hash.
    root: str | None = field(default=None, metadata={"hash": False})
    crops_per_image: int = 64  # builtin: training crops per source photograph (validation: a quarter)
    # builtin: 1, the 14 photographs without augmentation that runs hashed before version 2 read; 2, every real
    # photograph with a stated licence in the installed wheels (18), training crops at several scales and mirrored,
    # items interleaved across photographs (gigatok/data/builtin.py, docs/datasets.md).
    builtin_version: int = field(default=1, metadata=NEW_FIELD)
    hflip: bool = True  # random horizontal flips of training images (half of each batch, drawn per step)
    num_workers: int = 8
    # How an image-folder training image is cut to a square: "center", the ADM centre crop that evaluation uses
    # everywhere; "random", the ADM random_crop_arr the authors train tokenizers on (vq_train.py), covering a random
    # fraction in ``crop_fraction`` of the short side. Validation data is always centre-cropped; the builtin dataset
    # is precomputed crops and takes only "center".
    train_crop: Literal["center", "random"] = field(default="center", metadata=NEW_FIELD)
    crop_fraction: tuple[float, float] = field(default=(0.8, 1.0), metadata=NEW_FIELD)

    def __post_init__(self) -> None:
        _require(self.dataset in ("builtin", "imagefolder"), "data.dataset", f"unknown dataset {self.dataset!r}")
        _require(self.dataset != "builtin" or self.root is None, "data.root", "the builtin dataset takes no root")
        _require(self.crops_per_image >= 1, "data.crops_per_image", "must be >= 1")
        _require(self.builtin_version in (1, 2), "data.builtin_version", f"1 or 2, got {self.builtin_version!r}")
        _require(self.num_workers >= 0, "data.num_workers", "must be >= 0")
        _require(
            self.train_crop in ("center", "random"), "data.train_crop", f"'center' or 'random', got {self.train_crop!r}"
        )
        _require(
            self.train_crop == "center" or self.dataset == "imagefolder",
            "data.train_crop",
            "the builtin dataset is precomputed crops; random crops need dataset='imagefolder'",
        )
        low, high = self.crop_fraction if len(self.crop_fraction) == 2 else (0.0, -1.0)
        _require(
            0 < low <= high <= 1,
            "data.crop_fraction",
            f"needs (min, max) with 0 < min <= max <= 1, got {self.crop_fraction}",
        )

    @property
    def augments(self) -> bool:
        """Whether training images differ from one read to the next (flips or random crops)."""
        return self.hflip or self.train_crop != "center"


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = 100.0
    batch_size: int = 128
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 5_000
    keep_checkpoints: int = 2
    # Also checkpoint once this many minutes have passed since the last checkpoint (None: by steps only), so a job
    # killed without warning loses minutes of training, not ``checkpoint_every`` steps. When a run checkpoints does
    # not change what it trains (a resume is exact at any step): not hashed.
    checkpoint_minutes: float | None = field(default=10.0, metadata={"hash": False})
    max_steps: int | None = None  # caps the schedule (smoke runs); None trains the whole ``epochs``
    # Epochs at which the model is also kept as a snapshot that runs can evaluate (Fig. 13: probes over training).
    snapshot_epochs: tuple[float, ...] = field(default=(), metadata=NEW_FIELD)
    # The logged codebook usage is the share of codes among the last ``usage_window`` indices of all ranks, as the
    # authors measure it (vq_vit_model.py, codebook_show_usage: a 65,536-index buffer); None: 4x the codebook size,
    # the authors' ratio (65,536 for 16,384 codes).
    usage_window: int | None = field(default=None, metadata=NEW_FIELD)
    # Steps that make one epoch; None: one pass over the training split (dataset size // batch size). A fixed count
    # keeps a schedule, and so a study's cost, the same when the dataset grows (the tiny profile's built-in set).
    steps_per_epoch: int | None = field(default=None, metadata=NEW_FIELD)

    def __post_init__(self) -> None:
        _require(self.epochs > 0, "train.epochs", "must be > 0")
        _require(
            self.steps_per_epoch is None or self.steps_per_epoch >= 1,
            "train.steps_per_epoch",
            "must be None (one pass over the data) or >= 1",
        )
        _require(
            all(0 < e <= self.epochs for e in self.snapshot_epochs),
            "train.snapshot_epochs",
            f"each must be in (0, epochs={self.epochs:g}], got {list(self.snapshot_epochs)}",
        )
        _require(
            len(set(self.snapshot_epochs)) == len(self.snapshot_epochs), "train.snapshot_epochs", "has a repeated epoch"
        )
        _require(self.batch_size >= 1, "train.batch_size", "must be >= 1")
        _require(self.log_every >= 1, "train.log_every", "must be >= 1")
        _require(self.checkpoint_every >= 1, "train.checkpoint_every", "must be >= 1")
        _require(
            self.checkpoint_minutes is None or self.checkpoint_minutes > 0,
            "train.checkpoint_minutes",
            "must be None (by steps only) or > 0",
        )
        _require(self.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1")
        _require(self.max_steps is None or self.max_steps >= 1, "train.max_steps", "must be >= 1")
        _require(
            self.usage_window is None or self.usage_window >= 1,
            "train.usage_window",
            "must be None (4x the codebook size) or >= 1",
        )


@dataclass(frozen=True)
class PerformanceConfig:
    """How a run is computed, never what it computes: every switch keeps the model, the data and the objective, and
    changes at most the rounding. Run configs hold it with ``metadata={"hash": False}``, so a run keeps its hash (and
    resumes) whichever switches it is computed with. ``bench/tokenizer_step.py`` measures each one.

    ``channels_last`` is off by default. On an H200 it made the tokenizer step 0.87x (``bench/gpu_mfu.py``), measured
    while the authors' decoder's depth-to-space still returned NCHW (every later block then converted formats), so it
    is to be measured again there. On a CPU it now pays at 256 px: the paper S-S step 1.07x the default's, 1.31x the
    authors' against 1.22x (``bench/reference_step.py``); at tiny 1.04-1.11x, which would change the rounding of
    every tiny number in the README.
    """

    fused_attention: bool = True  # F.scaled_dot_product_attention; False: the explicit softmax(q k^T) v reference
    channels_last: bool = False  # NHWC activations and convolution weights in the CNNs, LPIPS and the discriminator
    autocast: Literal["auto", "bf16", "off"] = "auto"  # auto: bf16 on CUDA, fp32 elsewhere (CPU bf16 is emulated)
    # torch.compile of the training forward (gigatok.performance.compiles): True, False, or "auto": the AR step on
    # CUDA, unsharded, and nothing else. One H200 (bench/gpu_mfu.py, 2026-12-04): AR-B at batch 32 15.6 ms a step
    # compiled against 40.1 ms eager (2.6x; 33% MFU against 13%), ~30 s of compilation. Not the tokenizer: Inductor
    # (torch 2.11) failed on its backward, and without that pass it compiled for over 150 s; to measure again. Not
    # on a CPU: minutes of C++ compilation for a tiny run of minutes.
    compile: bool | Literal["auto"] = "auto"
    # How several processes share the model (gigatok.fsdp): "ddp" replicates it and averages gradients; "fsdp" shards
    # parameters, gradients and optimizer states over the ranks (FSDP2, one unit per transformer block) and saves
    # sharded checkpoints; "auto" is fsdp for the models the authors train with FSDP (tokenizers with an XL or XXL
    # part, AR-XXL) at the paper profile and ddp below and at tiny. One process trains the same either way; only the
    # checkpoint format follows it.
    parallelism: Literal["auto", "ddp", "fsdp"] = "auto"
    # Keep only each transformer block's input through the forward and run the block again in backward
    # (gigatok.models.checkpointing): the transformers' activations for one more forward of them. For per-GPU
    # batches that do not fit otherwise (the dry run's --estimate prints both); off by default.
    activation_checkpointing: bool = False
    # torch.backends.cudnn.benchmark: cuDNN times its convolution algorithms at each new shape and keeps the fastest.
    # Process-wide; set by prepare_module. GPU only. Off: on one H200 the tokenizer S-S step took 264 ms with it
    # against 215 ms without (bench/gpu_mfu.py, 2026-12-04).
    cudnn_benchmark: bool = False
    # The CNNs' GroupNorms take and return the autocast dtype instead of autocast's fp32 (gigatok.models.norms):
    # statistics still in fp32, only the output's rounding changes. On one H200 (2026-12-04) the tokenizer step's
    # peak memory fell 35% (S-S batch 16: 28.5 -> 18.5 GiB; B-L 41.5 -> 32.8 GiB) at the same speed (264.1 vs
    # 263.7 ms). No effect without autocast (the CPU default).
    low_precision_norms: bool = True
    # torch.compile's mode when compile is on: "reduce-overhead" adds CUDA graphs (launch-bound steps), and
    # "max-autotune-no-cudagraphs" searches kernels (much longer compilation).
    compile_mode: Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs"] = "default"
    # What compile covers: "model" the whole training forward (one graph); "blocks" each transformer block and each
    # CNN residual and attention block on its own (torchtitan's per-block compile: smaller graphs, compiled once per
    # block shape, so much shorter compilation, and nothing fused across blocks). Not measured on a GPU yet.
    compile_scope: Literal["model", "blocks"] = "model"

    def __post_init__(self) -> None:
        _require(
            self.compile in (True, False, "auto"), "performance.compile", f"true, false or 'auto', got {self.compile!r}"
        )
        _require(
            self.compile_scope in ("model", "blocks"),
            "performance.compile_scope",
            f"'model' or 'blocks', got {self.compile_scope!r}",
        )
        _require(
            self.compile_mode in ("default", "reduce-overhead", "max-autotune-no-cudagraphs"),
            "performance.compile_mode",
            f"'default', 'reduce-overhead' or 'max-autotune-no-cudagraphs', got {self.compile_mode!r}",
        )
        _require(
            self.autocast in ("auto", "bf16", "off"),
            "performance.autocast",
            f"'auto', 'bf16' or 'off', got {self.autocast!r}",
        )
        _require(
            self.parallelism in ("auto", "ddp", "fsdp"),
            "performance.parallelism",
            f"'auto', 'ddp' or 'fsdp', got {self.parallelism!r}",
        )


Parallelism = Literal["ddp", "fsdp"]
Part = Literal["tokenizer", "ar"]  # the two trained models, as the performance switches and the pricing name them


def compiles_step(perf: PerformanceConfig, part: Part, cuda: bool, sharded: bool) -> bool:
    """Whether ``part``'s training forward is compiled: ``perf.compile``, where "auto" is the AR step on CUDA when
    it is not sharded (measured there; FSDP's compiled step is not). Torch-free, for the dry run's pricing too."""
    if perf.compile == "auto":
        return part == "ar" and cuda and not sharded
    return bool(perf.compile)


FSDP_TOKENIZER_SIZES = ("XL", "XXL")  # a tokenizer with an encoder or decoder of these sizes shards by default
FSDP_AR_SIZES = ("XXL",)


def tokenizer_parallelism(cfg: TokenizerRunConfig) -> Parallelism:
    """DDP or FSDP for this tokenizer run: ``performance.parallelism``, with "auto" settled by the profile and the
    tokenizer's size name (fsdp at the paper profile when its encoder or decoder is XL or XXL, as the authors' XL-XXL
    runs use vq_train_fsdp.py; the tiny profile's models are small whatever their names, and stay on DDP)."""
    if cfg.performance.parallelism != "auto":
        return cfg.performance.parallelism
    parts = cfg.tokenizer.name.split("-")
    large = any(part in FSDP_TOKENIZER_SIZES for part in parts)
    return "fsdp" if large and cfg.profile == "paper" else "ddp"


def ar_parallelism(cfg: ARRunConfig) -> Parallelism:
    """DDP or FSDP for this AR run: ``performance.parallelism``, with "auto" fsdp for AR-XXL at the paper profile."""
    if cfg.performance.parallelism != "auto":
        return cfg.performance.parallelism
    return "fsdp" if cfg.size in FSDP_AR_SIZES and cfg.profile == "paper" else "ddp"


@dataclass(frozen=True)
class TokenizerRunConfig:
    """Everything that determines one tokenizer training run (and so its hash)."""

    profile: str
    tokenizer: TokenizerConfig
    loss: LossConfig
    optim: OptimConfig
    data: DataConfig
    train: TrainConfig
    # How, not what: left out of the hash (see PerformanceConfig).
    performance: PerformanceConfig = field(default_factory=PerformanceConfig, metadata={"hash": False})
    # "" when the workbench trains the tokenizer; else the released checkpoint its weights are converted from
    # (gigatok.convert.released), so converted and trained weights never share a run folder.
    source: str = field(default="", metadata=NEW_FIELD)

    def __post_init__(self) -> None:
        _require(self.profile in PROFILES, "profile", f"unknown profile {self.profile!r}; known: {sorted(PROFILES)}")
        # The paper's objective has LPIPS (Eq. 2): a paper run without it must be asked for ("off"), never fall out
        # of a missing file.
        _require(
            self.profile != "paper" or self.loss.perceptual != "auto",
            "loss.perceptual",
            "'auto' is not allowed at the paper profile (a missing vgg16 file must be an error there); "
            "use 'lpips', or 'off' to train without the perceptual term on purpose",
        )
        if self.tokenizer.semantic.enabled and self.tokenizer.semantic.cache_features:
            _require(
                not self.data.augments,
                "semantic.cache_features",
                "cached semantic features assume unaugmented images; turn data.hflip off, data.train_crop to "
                "'center', or the cache off",
            )

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def hash(self) -> str:
        return run_hash(self)


# --------------------------------------------------------------------------------------------------------------
# AR models (Table 8) and their training
# --------------------------------------------------------------------------------------------------------------

AR_SIZE_NAMES = ("B", "L", "XL", "XXL")

# Table 8: LlamaGen sizes, width / depth (blocks) / heads.
PAPER_AR_SIZES: dict[str, TransformerSize] = {
    "B": TransformerSize(768, 12, 12),
    "L": TransformerSize(1024, 24, 16),
    "XL": TransformerSize(1280, 36, 20),
    "XXL": TransformerSize(1536, 48, 24),
}

# CPU scale, same ordering; depth >= 4 so the linear probe's middle layer (depth // 2) is a real middle.
TINY_AR_SIZES: dict[str, TransformerSize] = {
    "B": TransformerSize(128, 4, 4),
    "L": TransformerSize(160, 6, 5),
    "XL": TransformerSize(192, 8, 6),
    "XXL": TransformerSize(256, 8, 8),
}


@dataclass(frozen=True)
class ARConfig:
    width: int
    depth: int
    heads: int
    vocab_size: int
    num_tokens: int  # tokens per image
    num_classes: int
    dropout: float = 0.1  # token-embedding, residual and FFN dropout (LlamaGen's token/resid/ffn_dropout_p)
    class_dropout: float = 0.1
    ffn_multiple_of: int = 256
    # Dropout on the attention probabilities; None: the same as ``dropout``. The authors' ModelArgs.attn_dropout_p
    # is 0.0 and train_c2i.py never sets it (gpt_1d.py).
    attn_dropout: float | None = field(default=None, metadata=NEW_FIELD)
    # "normal": every Linear and Embedding N(0, 0.02), positions zero. "llamagen": the authors'
    # Transformer.initialize_weights (gpt_1d.py): the same N(0, 0.02), but the output head zero and the positions
    # N(0, 1) * width**-0.5.
    init: Literal["normal", "llamagen"] = field(default="normal", metadata=NEW_FIELD)

    def __post_init__(self) -> None:
        for name in ("width", "depth", "heads", "vocab_size", "num_tokens", "num_classes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"ar.{name}: must be >= 1, got {getattr(self, name)}")
        if self.width % self.heads:
            raise ConfigError(f"ar.heads: width {self.width} is not divisible by {self.heads} heads")
        for name in ("dropout", "class_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"ar.{name}: must be in [0, 1), got {getattr(self, name)}")
        if self.attn_dropout is not None and not 0 <= self.attn_dropout < 1:
            raise ConfigError(f"ar.attn_dropout: must be None or in [0, 1), got {self.attn_dropout}")
        if self.init not in ("normal", "llamagen"):
            raise ConfigError(f"ar.init: 'normal' or 'llamagen', got {self.init!r}")
        if self.ffn_multiple_of < 1:
            raise ConfigError(f"ar.ffn_multiple_of: must be >= 1, got {self.ffn_multiple_of}")

    @property
    def attention_dropout(self) -> float:
        return self.dropout if self.attn_dropout is None else self.attn_dropout

    @property
    def ffn_hidden(self) -> int:
        """LlamaGen's SwiGLU width: 2/3 of 4*width, rounded up to a multiple of ``ffn_multiple_of``."""
        hidden = int(2 * 4 * self.width / 3)
        return self.ffn_multiple_of * -(-hidden // self.ffn_multiple_of)


# Which views of each training image the token cache holds (gigatok.token_views.VIEW_SETS): "flip" the image and its
# mirror; "ten_crop" LlamaGen's recipe, torchvision's TenCrop of a centre crop 1.1x the image size (the four corners
# and the centre, and the same five of the mirrored crop); "centre_pair" two of those ten, the centre and its
# mirrored counterpart (the same tokenizing cost as "flip").
TokenViews = Literal["flip", "ten_crop", "centre_pair"]


@dataclass(frozen=True)
class ARTrainConfig:
    """AdamW with weight decay 0.05 and clipping 1.0; WSD schedule: warm-up, constant, decay over the last
    ``decay_fraction`` of the steps (``decay_fraction`` 0: constant after the warm-up)."""

    epochs: float = 50.0
    batch_size: int = 256
    lr: float = 1e-4
    min_lr: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    warmup_epochs: float = 1.0
    decay_fraction: float = 0.2
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 5_000
    keep_checkpoints: int = 2
    # Also checkpoint once this many minutes have passed since the last checkpoint (None: by steps only), so a job
    # killed without warning loses minutes of training, not ``checkpoint_every`` steps. When a run checkpoints does
    # not change what it trains (a resume is exact at any step): not hashed.
    checkpoint_minutes: float | None = field(default=10.0, metadata={"hash": False})
    max_steps: int | None = None
    # The warm-up in optimizer steps (the authors' WARM_ITER), in place of ``warmup_epochs``; None: warmup_epochs.
    warmup_steps: int | None = field(default=None, metadata=NEW_FIELD)
    # The warm-up's first factor: None ramps (step + 1) / warmup; f ramps f + (1 - f) * step / warmup, the authors'
    # _warmup_lr with init_div_factor=100 at f = 0.01.
    warmup_from: float | None = field(default=None, metadata=NEW_FIELD)
    # The cool-down's shape: "linear" 1 - p, or "sqrt" 1 - sqrt(p) of the decay's progress p (the authors' wsd_lr,
    # tokenizer/tokenizer_image/scheduler.py, whose decay_type defaults to sqrt), from lr down to min_lr.
    decay_shape: Literal["linear", "sqrt"] = field(default="linear", metadata=NEW_FIELD)
    views: TokenViews = field(default="flip", metadata=NEW_FIELD)
    # False: every cached view is a sample of its own (an epoch is images x views samples). True: an epoch visits
    # each image once, at one of its views drawn uniformly (LlamaGen's CustomDataset over ten-crop codes).
    one_view_per_image: bool = field(default=False, metadata=NEW_FIELD)

    def __post_init__(self) -> None:
        _require(self.epochs > 0, "ar_train.epochs", "must be > 0")
        _require(self.batch_size >= 1, "ar_train.batch_size", "must be >= 1")
        _require(self.lr > 0 and 0 <= self.min_lr <= self.lr, "ar_train.lr", "need lr > 0 and 0 <= min_lr <= lr")
        _require(self.weight_decay >= 0, "ar_train.weight_decay", "must be >= 0")
        _require(self.grad_clip > 0, "ar_train.grad_clip", "must be > 0")
        _require(self.warmup_epochs >= 0, "ar_train.warmup_epochs", "must be >= 0")
        _require(
            self.warmup_steps is None or self.warmup_steps >= 0,
            "ar_train.warmup_steps",
            f"must be None or >= 0, got {self.warmup_steps}",
        )
        _require(
            self.warmup_from is None or 0 <= self.warmup_from <= 1,
            "ar_train.warmup_from",
            f"must be None or in [0, 1], got {self.warmup_from}",
        )
        _require(0 <= self.decay_fraction <= 1, "ar_train.decay_fraction", "must be in [0, 1]")
        _require(
            self.checkpoint_minutes is None or self.checkpoint_minutes > 0,
            "ar_train.checkpoint_minutes",
            "must be None (by steps only) or > 0",
        )
        _require(
            self.decay_shape in ("linear", "sqrt"),
            "ar_train.decay_shape",
            f"'linear' or 'sqrt', got {self.decay_shape!r}",
        )
        _require(
            self.views in typing.get_args(TokenViews),
            "ar_train.views",
            f"one of {list(typing.get_args(TokenViews))}, got {self.views!r}",
        )
        _require(self.max_steps is None or self.max_steps >= 1, "ar_train.max_steps", "must be >= 1")


@dataclass(frozen=True)
class ARRunConfig:
    """One AR probe (or system-level AR model) trained on the token cache of one tokenizer run."""

    profile: str
    size: str
    tokenizer: TokenizerRunConfig
    model: ARConfig
    train: ARTrainConfig
    # How, not what: left out of the hash (see PerformanceConfig).
    performance: PerformanceConfig = field(default_factory=PerformanceConfig, metadata={"hash": False})
    source: str = field(default="", metadata=NEW_FIELD)  # as TokenizerRunConfig.source, for a released AR model

    def __post_init__(self) -> None:
        _require(self.size in AR_SIZE_NAMES, "ar.size", f"unknown AR size {self.size!r}; known: {AR_SIZE_NAMES}")
        codebook = self.tokenizer.tokenizer.quantizer.codebook_size
        _require(
            self.model.vocab_size == codebook,
            "ar.vocab_size",
            f"{self.model.vocab_size} differs from the tokenizer's codebook ({codebook})",
        )
        _require(
            self.model.num_tokens == self.tokenizer.tokenizer.num_tokens,
            "ar.num_tokens",
            f"{self.model.num_tokens} differs from the tokenizer's {self.tokenizer.tokenizer.num_tokens} tokens",
        )

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    def hash(self) -> str:
        return run_hash(self)


# --------------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CfgSearchConfig:
    """The search for the CFG scale of a run whose stages include ``cfg_search`` (:mod:`gigatok.cfg_search`).

    Appendix B: the scale is searched in steps of 0.25 and the lowest gFID is reported. Each point is scored first on
    ``low_fraction`` of the full budget (``full_samples``, default the run's ``gen_samples``); the median pruner stops
    a point whose small-budget gFID is worse than the median of the points already scored in full, and the rest are
    scored on the full budget. ``fraction_min``/``fraction_max`` add the step schedule's unguided share of tokens as
    a second dimension (None: the run's ``step_fraction``, 0.18).
    """

    scale_min: float = 1.0
    scale_max: float = 3.0
    scale_step: float = 0.25
    fraction_min: float | None = None
    fraction_max: float | None = None
    fraction_step: float = 0.02
    sampler: Literal["grid", "tpe"] = "grid"
    trials: int | None = None  # the TPE sampler's budget of trials; a grid runs every point once
    low_fraction: float = 0.1  # 0: no small-budget rung (every point is scored in full)
    full_samples: int | None = None
    pruner: Literal["median", "none"] = "median"
    startup_trials: int = 3  # points scored in full before the pruner may stop any
    seed: int = 0  # the samplers' seed (the grid's visiting order, TPE's proposals)

    def __post_init__(self) -> None:
        name = "eval.cfg_search"
        _require(self.scale_min >= 0, f"{name}.scale_min", f"must be >= 0, got {self.scale_min}")
        _require(self.scale_step > 0, f"{name}.scale_step", f"must be > 0, got {self.scale_step}")
        _require(
            self.scale_min <= self.scale_max,
            f"{name}.scale_max",
            f"the range {self.scale_min}:{self.scale_max} is empty (scale_max is below scale_min)",
        )
        _require(
            (self.fraction_min is None) == (self.fraction_max is None),
            f"{name}.fraction_min",
            "set fraction_min and fraction_max together (or neither)",
        )
        if self.fraction_min is not None and self.fraction_max is not None:
            _require(
                0 <= self.fraction_min <= self.fraction_max <= 1,
                f"{name}.fraction_max",
                f"the range {self.fraction_min}:{self.fraction_max} must be non-empty and inside [0, 1]",
            )
        _require(self.fraction_step > 0, f"{name}.fraction_step", f"must be > 0, got {self.fraction_step}")
        _require(self.sampler in ("grid", "tpe"), f"{name}.sampler", f"'grid' or 'tpe', got {self.sampler!r}")
        _require(
            self.sampler != "tpe" or self.trials is not None,
            f"{name}.trials",
            "the TPE sampler needs a budget of trials",
        )
        _require(
            self.sampler != "grid" or self.trials is None,
            f"{name}.trials",
            "only the TPE sampler takes a budget of trials (a grid runs every point once)",
        )
        _require(self.trials is None or self.trials >= 1, f"{name}.trials", f"must be >= 1, got {self.trials}")
        _require(0 <= self.low_fraction < 1, f"{name}.low_fraction", f"must be in [0, 1), got {self.low_fraction}")
        _require(
            self.full_samples is None or self.full_samples >= 2,
            f"{name}.full_samples",
            "must be None (the run's gen_samples) or >= 2",
        )
        _require(self.pruner in ("median", "none"), f"{name}.pruner", f"'median' or 'none', got {self.pruner!r}")
        _require(self.startup_trials >= 0, f"{name}.startup_trials", f"must be >= 0, got {self.startup_trials}")


@dataclass(frozen=True)
class ProbeConfig:
    """How a linear probe (tokenizer encoder or AR layer n/2) is trained on frozen features.

    ``logistic_regression``: standardised features and scikit-learn's multinomial logistic regression on the CPU
    (``EvalConfig.probe_max_iter`` iterations of L-BFGS), the workbench's first probe. ``lars``: the authors'
    protocol (``autoregressive/lin_probe/lin_probe.py`` and ``tokenizer/lin_probe/lin_probe.py``, after MAE's
    ``main_linprobe.py``) on the run's device: BatchNorm without affine (eps 1e-6) and a linear head
    (trunc-normal std 0.01), cross-entropy, LARS (momentum 0.9, trust coefficient 0.001, no weight decay or
    scaling of 1-D tensors) at ``base_lr * batch_size / 256``, a linear warm-up of ``warmup_epochs`` then a
    half-cycle cosine to ``min_lr``, set every step. Their scripts (``scripts/composite_cmd/train_*_lin_probe_and_
    eval.sh``): 90 epochs, ``--blr 0.1``, 128 per GPU on 64 GPUs (8192; "we mostly use 128*64 global batch
    size"); ``lin_probe.py`` defaults: warm-up 10 epochs, weight decay 0, min lr 0.

    ``views``: ``random_crop`` trains on a fresh ADM random crop (fraction 0.8-1.0) plus a random horizontal flip
    of each training image at every step, running the frozen model inside the loop as the authors do (image
    folders only); ``fixed`` extracts the features of one centre-cropped view once. Validation is one centre crop.
    """

    method: Literal["logistic_regression", "lars"] = "logistic_regression"
    epochs: float = 90.0
    warmup_epochs: float = 10.0
    batch_size: int = 8192  # one optimiser step's batch; clipped to the training set when that is smaller
    base_lr: float = 0.1
    min_lr: float = 0.0
    weight_decay: float = 0.0
    momentum: float = 0.9
    trust_coefficient: float = 1e-3
    views: Literal["fixed", "random_crop"] = "fixed"
    seed: int = 0

    def __post_init__(self) -> None:
        name = "eval.probe"
        _require(
            self.method in ("logistic_regression", "lars"),
            f"{name}.method",
            f"'logistic_regression' or 'lars', got {self.method!r}",
        )
        _require(
            self.views in ("fixed", "random_crop"), f"{name}.views", f"'fixed' or 'random_crop', got {self.views!r}"
        )
        _require(self.epochs > 0, f"{name}.epochs", f"must be > 0, got {self.epochs}")
        _require(
            0 <= self.warmup_epochs < self.epochs,
            f"{name}.warmup_epochs",
            f"must be in [0, epochs={self.epochs}), got {self.warmup_epochs}",
        )
        _require(self.batch_size >= 2, f"{name}.batch_size", f"must be >= 2 (BatchNorm), got {self.batch_size}")
        _require(self.base_lr > 0, f"{name}.base_lr", f"must be > 0, got {self.base_lr}")
        _require(0 <= self.min_lr <= self.base_lr, f"{name}.min_lr", f"must be in [0, base_lr], got {self.min_lr}")
        _require(self.weight_decay >= 0, f"{name}.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _require(0 <= self.momentum < 1, f"{name}.momentum", f"must be in [0, 1), got {self.momentum}")
        _require(self.trust_coefficient > 0, f"{name}.trust_coefficient", f"must be > 0, got {self.trust_coefficient}")
        _require(
            self.method == "lars" or self.views == "fixed",
            f"{name}.views",
            "random crops need the 'lars' probe (the logistic regression fits fixed features once)",
        )


# The authors' linear probe (ProbeConfig's docstring): the paper profile's.
AUTHORS_PROBE = ProbeConfig(method="lars", views="random_crop")


@dataclass(frozen=True)
class EvalConfig:
    """How a run is scored once trained: sample counts, the Inception input, the sampler and the probes.

    ``recon_images`` / ``reference_images`` None means the whole split (rFID: 50k ImageNet val).

    ``gen_reference`` is what gFID, precision and recall are scored against: ``val`` the validation split (the
    workbench's first choice); ``adm`` ADM's ImageNet-train reference batch ``VIRTUAL_imagenet256_labeled.npz``
    from the weights registry, as the authors score (``evaluations/c2i/evaluator.py``; ``reference_images`` does
    not apply); ``train`` the run's training split with the same ADM centre crop, for when that file is absent.
    The sampler fields mirror :class:`gigatok.sampling.SamplingConfig`; the CFG scale here is the fixed one used
    until a CFG search has recorded a better scale for the AR run.
    """

    recon_images: int | None = None
    reference_images: int | None = None
    gen_samples: int = 50_000
    batch_size: int = 64
    inception_input: int = 299
    cfg_scale: float = 2.0
    cfg_schedule: Literal["constant", "step"] = "constant"
    step_fraction: float = 0.18
    # Where the step schedule's step falls: "workbench" (the first ceil(step_fraction * N) tokens unguided) or
    # "authors" (autoregressive/models/generate.py: the first token guided, then j / (N - 1) >= step_fraction).
    cfg_step_rule: Literal["workbench", "authors"] = field(default="workbench", metadata=NEW_FIELD)
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    probe_max_iter: int = 2000
    grid_images: int = 16  # reconstruction / sample grids logged as artifacts
    # Only runs with the cfg_search stage depend on it (RunSpec.hash leaves it out of the others).
    cfg_search: CfgSearchConfig = field(default_factory=CfgSearchConfig)
    # Fig. 8: PCA of the first decoder layer's features over a group of same-class validation images.
    pca_images: int = field(default=8, metadata=NEW_FIELD)
    pca_class: int | None = field(default=None, metadata=NEW_FIELD)  # None: the class with most validation images
    # Both linear probes' protocol (``probe_max_iter`` applies to the logistic regression only).
    probe: ProbeConfig = field(default=ProbeConfig(), metadata=NEW_FIELD)
    gen_reference: Literal["val", "adm", "train"] = field(default="val", metadata=NEW_FIELD)

    def __post_init__(self) -> None:
        for name in ("recon_images", "reference_images"):
            value = getattr(self, name)
            _require(value is None or value >= 2, f"eval.{name}", "must be None (whole split) or >= 2")
        _require(self.gen_samples >= 2, "eval.gen_samples", "must be >= 2 (FID needs a covariance)")
        _require(self.batch_size >= 1, "eval.batch_size", "must be >= 1")
        _require(75 <= self.inception_input <= 1024, "eval.inception_input", "must be in [75, 1024] (299 = FID)")
        _require(self.cfg_scale >= 0, "eval.cfg_scale", "must be >= 0")
        _require(self.cfg_schedule in ("constant", "step"), "eval.cfg_schedule", "'constant' or 'step'")
        _require(0 <= self.step_fraction <= 1, "eval.step_fraction", "must be in [0, 1]")
        _require(self.cfg_step_rule in ("workbench", "authors"), "eval.cfg_step_rule", "'workbench' or 'authors'")
        _require(self.temperature > 0, "eval.temperature", "must be > 0")
        _require(self.top_k >= 0, "eval.top_k", "must be >= 0")
        _require(0 < self.top_p <= 1, "eval.top_p", "must be in (0, 1]")
        _require(self.probe_max_iter >= 1, "eval.probe_max_iter", "must be >= 1")
        _require(self.grid_images >= 0, "eval.grid_images", "must be >= 0")
        _require(
            self.gen_reference in ("val", "adm", "train"),
            "eval.gen_reference",
            f"'val', 'adm' (ADM's ImageNet-train reference batch) or 'train', got {self.gen_reference!r}",
        )
        _require(self.pca_images >= 2, "eval.pca_images", "must be >= 2 (a PCA across images)")
        _require(self.pca_class is None or self.pca_class >= 0, "eval.pca_class", "must be None or a class index")


# --------------------------------------------------------------------------------------------------------------
# Profiles
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """How one experiment maps onto numbers: the paper's scale or CPU scale."""

    name: str
    sizes: dict[str, TransformerSize]
    image_size: int
    num_tokens: int
    cnn: CNNConfig
    codebook_size: int
    codebook_dim: int
    semantic_encoder: str
    semantic_resolution: int
    cache_semantic_features: bool
    data: DataConfig
    loss: LossConfig
    optim: OptimConfig
    # Table 9, per tokenizer name: training epochs and batch size; XL-XXL adds warm-up and entropy loss.
    epochs: dict[str, float]
    batch_size: dict[str, int]
    entropy_weight: float  # below XL
    entropy_weight_2d: dict[str, float]  # per tokenizer name, a 2D tokenizer's entropy weight where it differs
    large_warmup_steps: int
    large_entropy_weight: float
    # How the tokenizers below XL are stabilised by default (see tokenizer_run's ``stabiliser``): "shortcut", the
    # shortcut path for ``shortcut_steps`` steps; None, the profile's own entropy_weight and warm-up alone.
    small_stabiliser: Literal["shortcut"] | None
    shortcut_steps: int
    log_every: int
    checkpoint_every: int
    # AR probing (Table 8, Appendix B)
    ar_sizes: dict[str, TransformerSize]
    num_classes: int
    ar_train: ARTrainConfig
    # Scoring, and how many of this profile's epochs stand for one of the paper's (studies that vary the training
    # length name paper epochs: Fig. 12's 40-120 epochs).
    eval: EvalConfig
    epochs_per_paper_epoch: float
    # The system-level AR models (Sec. 5.4, Appendix B), per AR size ("default" for the others): what
    # ``ar_run(..., system=True)`` trains.
    system_ar_train: dict[str, ARTrainConfig]
    # Every gFID a study reports is the best of a CFG search (the authors' train_c2i_and_eval.sh searches the probe's
    # scale too); False: runs without the cfg_search stage sample at eval.cfg_scale.
    cfg_search_every_gfid: bool
    # ARConfig fields this profile sets beyond the size table (the paper: the authors' gpt_1d recipe).
    ar_model_options: dict[str, Any] = field(default_factory=dict)
    # The authors' transformer layout and initialisation (TokenizerConfig.block_1d ... init) and their entropy-loss
    # log offset; off keeps the workbench's original layout.
    authors_layout: bool = False
    # TokenizerConfig fields this profile sets on its 1D tokenizers beyond the layout (tiny: the unpooled decoder
    # queries); its 2D tokenizers, which these fields do not touch, keep their hashes.
    tokenizer_options_1d: dict[str, Any] = field(default_factory=dict)
    # How many seeds every run of a study is replicated over by default (studies/run.py --seeds): seed 0, 1, ...
    # of the tokenizer and its AR probe, so a figure can show which differences stand above seed noise.
    seeds: int = 1
    # Studies whose default differs from ``seeds`` (study name -> seeds): at tiny, the README's main study.
    study_seeds: dict[str, int] = field(default_factory=dict)
    # Training images that make one of this profile's epochs, whatever the split's size: a run of batch b trains
    # images_per_epoch // b steps an epoch (TrainConfig.steps_per_epoch), so Table 9's per-size batches and epochs
    # keep their ratios. None: one pass over the training split (the paper's epoch).
    images_per_epoch: int | None = None

    def paper_epochs(self, epochs: float) -> float:
        """This profile's length of a run the paper trains for ``epochs`` epochs."""
        return epochs * self.epochs_per_paper_epoch

    def default_epochs(self, name: str) -> float:
        return self.epochs.get(name, self.epochs["default"])

    def default_batch_size(self, name: str) -> int:
        return self.batch_size.get(name, self.batch_size["default"])

    def system_ar_train_for(self, size: str) -> ARTrainConfig:
        return self.system_ar_train.get(size, self.system_ar_train["default"])


_LARGE = ("XL", "XXL")

Stabiliser = Literal["shortcut", "warmup_entropy"]
STABILISERS: tuple[str, ...] = ("shortcut", "warmup_entropy")
# The authors' tokenizer layout (vq_vit_model.py VQVitModelPlus / VQVitModel2DPlus with blocks.py). 2D stays on
# ViT blocks: their S-B and B-L 2D configs use TransformerLayer and Table 1's 2D sizes (19M, 86M) count ViT blocks;
# only VQ_SS256_2d.yaml leaves the DETR layer on (block_2d="detr" builds that one).
AUTHORS_LAYOUT: dict[str, Any] = {
    "block_1d": "detr",
    "block_2d": "vit",
    "input_norm": True,
    "queries_from_context": True,
    "pool_first_split": "width",
    "decoder_out_kernel": 3,
    "init": "authors",
}

# The AR probe (scripts/composite_cmd/train_vq_and_eval.sh): LM_EPOCH=300, LM_BSZ=256, LR=1e-4, WARM_ITER=0, a WSD
# schedule whose decay starts at 80% of the 300 epochs (FRACT_DECAY=0.2), stopped at LM_STOP_ITER=250000 = 50
# epochs of 5000 steps: 50 epochs at a constant learning rate, no warm-up. It trains on ten-crop token caches, one
# view of each image an epoch (extract_codes_c2i.py --ten-crop --crop-range 1.1, dataset/imagenet.py): the
# authors' pre-computed codes (LlamaGen's recipe), which their instructions suggest for large AR models; their
# scripts' default (DATASET=imagenet) tokenizes each step's images on the fly, random_crop_arr and a flip.
PAPER_AR_PROBE = ARTrainConfig(
    epochs=50, batch_size=256, lr=1e-4, warmup_epochs=0.0, decay_fraction=0.0, views="ten_crop", one_view_per_image=True
)
# System level (Appendix B; Detailed_instructions.md, train_c2i_and_eval.sh): 300 epochs, WSD with 20% decay of
# the sqrt shape (wsd_lr's default) to 0, warm-up WARM_ITER=5000 steps (1 epoch at batch 256) for B, L, XL, and
# for XXL batch 512 with WARM_ITER=200 (the paper's text says 1 epoch; the authors' command says 200 steps).
PAPER_SYSTEM_AR = dataclasses.replace(
    PAPER_AR_PROBE, epochs=300, warmup_steps=5_000, warmup_from=0.01, decay_fraction=0.2, decay_shape="sqrt"
)
PAPER_SYSTEM_AR_XXL = dataclasses.replace(PAPER_SYSTEM_AR, batch_size=512, warmup_steps=200)

# The tiny probe samples one of two views an image each epoch (centre_pair tokenizes each image twice, as "flip"
# did), so 4 epochs of 28 steps with a 2-epoch warm-up are the 112 steps and 56 warm-up steps of the 2 epochs over
# both views it had before.
TINY_AR_PROBE = ARTrainConfig(
    epochs=4,
    batch_size=32,
    lr=1e-3,
    warmup_epochs=2.0,
    log_every=10,
    checkpoint_every=50,
    views="centre_pair",
    one_view_per_image=True,
)

PAPER = Profile(
    name="paper",
    sizes=PAPER_TRANSFORMER_SIZES,
    image_size=256,
    num_tokens=256,
    # The authors' CNN (configs/vq/VQ_*256.yaml with blocks.py Encoder/Decoder): encoder without attention, decoder
    # with num_res_blocks + 1 = 3 blocks per level, no attention, adaptive GroupNorm, depth-to-space upsampling.
    cnn=CNNConfig(decoder_res_blocks=3, decoder_attention=False, decoder_adaptive_norm=True, upsample="depth_to_space"),
    codebook_size=16384,
    codebook_dim=8,
    semantic_encoder="dinov2-b",
    semantic_resolution=224,
    cache_semantic_features=False,
    # vq_train.py: random_crop_arr (crop fraction 0.8-1.0) and RandomHorizontalFlip on the training images.
    data=DataConfig(dataset="imagefolder", hflip=True, num_workers=8, train_crop="random", crop_fraction=(0.8, 1.0)),
    loss=LossConfig(disc_loss_weight=0.5),  # vq_loss.py: disc_weight * disc_loss(...) for the discriminator too
    optim=OptimConfig(warmup_start_factor=0.01),  # scheduler.py: init_div_factor 100
    epochs={"S-S": 100, "S-B": 200, "S-L": 200, "B-L": 200, "XL-XXL": 300, "default": 100},
    batch_size={"S-S": 128, "S-B": 128, "S-L": 256, "B-L": 256, "XL-XXL": 256, "default": 128},
    entropy_weight=0.0,
    entropy_weight_2d={"B-L": 5e-3},  # configs/vq/VQ_BL256_2d.yaml: entropy_loss_ratio 0.005 beside the shortcut
    large_warmup_steps=5_000,
    large_entropy_weight=5e-3,
    # configs/vq/VQ_{SS,SB,BL}256.yaml: aux_loss_end 15000 with the direct decoding on; Table 9's "warm-up 0,
    # entropy 0" below XL-XXL assumes it (S-L has no published config; it gets its neighbours' recipe).
    small_stabiliser="shortcut",
    shortcut_steps=15_000,
    log_every=50,
    checkpoint_every=5_000,
    ar_sizes=PAPER_AR_SIZES,
    num_classes=1000,
    ar_train=PAPER_AR_PROBE,
    # 50k samples against ADM's ImageNet-train reference batch (rFID: the whole val split), 299 px Inception;
    # Fig. 8 shows "golden retriever" (207).
    eval=EvalConfig(pca_class=207, probe=AUTHORS_PROBE, gen_reference="adm", cfg_step_rule="authors"),
    epochs_per_paper_epoch=1.0,
    system_ar_train={"default": PAPER_SYSTEM_AR, "XXL": PAPER_SYSTEM_AR_XXL},
    cfg_search_every_gfid=True,
    # The authors' gpt_1d.py: ModelArgs.attn_dropout_p 0.0 (train_c2i.py sets only token/resid/ffn dropout, 0.1)
    # and Transformer.initialize_weights (zero output head, positions scaled by width**-0.5).
    ar_model_options={"attn_dropout": 0.0, "init": "llamagen"},
    authors_layout=True,
)

# The tiny profile's Table 9: the paper's per-size epochs and batch sizes divided by these (its 100 epochs are one
# here, its batch of 128 is 8), so the sizes keep the paper's ratios of steps and images. Every Table 9 entry is a
# multiple of both.
TINY_EPOCH_DIVISOR = 100
TINY_BATCH_DIVISOR = 16

TINY = Profile(
    name="tiny",
    sizes=TINY_TRANSFORMER_SIZES,
    # 32x32 images at downsample 4 (an 8x8 grid, 64 tokens): LPIPS-VGG dominates a CPU step, and at 64x64 a step
    # of batch 16 takes ~3 s on two cores against ~1 s at 32 px. The 8x8 grid (three CNN levels, not four) gives
    # four times the bits per image of the earlier 4x4 grid at the same step time: S-B 1D, shortcut on, 150 steps,
    # validation PSNR 18.4 dB and 89% of the codebook in use against 16.9 dB with 16 tokens (1.8-2.0 s a step
    # single-threaded on a busy machine against 2.3 s).
    image_size=32,
    num_tokens=64,
    # The CNN is most of a tiny step (B-L 1D, batch 16: decoder 47% of the forward FLOPs, encoder 17%, the
    # transformers 26%), so it is cut to one decoder block a level, no decoder attention (as the authors' decoder)
    # and widths 32/64/64: 28-35% fewer forward FLOPs for the six tokenizers of Fig. 9 (B-L 1D 18.0 -> 13.2 GFLOP a
    # batch), which is what lets two seeds a point fit 20 minutes. Validation PSNR at 150 steps (96 crops, seeds
    # 0 / 1) with the earlier CNN (2 decoder blocks, attention, widths 32/64/128) and with this one: S-S 1D 19.6 /
    # 17.6 -> 18.1 / 17.7 dB, 2D 19.0 / 21.3 -> 18.9 / 19.2; B-L 1D 17.5 / 18.5 -> 17.4 / 19.5, 2D 20.8 / 18.8 ->
    # 20.7 / 19.1: differences inside the two-seed spread, which is itself ~2 dB.
    cnn=CNNConfig(
        base_channels=32,
        channel_mult=(1, 2, 2),
        encoder_res_blocks=1,
        decoder_res_blocks=1,
        decoder_attention=False,
        latent_channels=64,
        norm_groups=8,
    ),
    # 1,024 codes gave B-L 1D 18.2 dB at 150 steps against 18.0 with 256: not worth a 4x larger AR vocabulary.
    codebook_size=256,
    codebook_dim=8,
    semantic_encoder="inception",
    semantic_resolution=139,  # the smallest input whose Mixed_6e map is still spatial (7x7)
    cache_semantic_features=True,
    # Version 2 of the built-in set: 18 photographs, training crops at several scales and mirrored, fixed per
    # (seed, index) so the cached semantic features stay valid (hence no per-step hflip). 50 crops a photo make a
    # pass of 900 crops (a tiny epoch is a fixed image count below, whatever the set's size); building both
    # splits takes ~0.8 s on one core at 32 px (train ~0.4 s, val ~0.1 s, decoding the photos ~0.3 s).
    data=DataConfig(dataset="builtin", root=None, crops_per_image=50, hflip=False, num_workers=0, builtin_version=2),
    # LPIPS where the vgg16 file is on the machine; else no perceptual term, and LPIPS reported as unavailable
    # (a random VGG16 would train towards random features and report a number that means nothing). The GAN starts
    # at step 400, after every run of Fig. 9 (200-400 steps, 0-based): started at step 90 (the authors' 20k after
    # their 15k-step shortcut, scaled to its 67), B-L 2D (seed 0, 200 steps) fell from 21.2 to 9.9 dB with 25% of the
    # codebook at the GAN weight 0.5, and to 15.5 / 15.7 dB at 0.1 / 0.05, whose reconstructions of training crops
    # score precision 0.06 and recall 0 (tools/prc_calibration.py) against 0.55 and 0 without it. Not the Inception
    # distance (perceptual="inception"): at this length it moved rFID (B-L 2D 302 / 297 -> 245 / 244, seeds 0 / 1) but
    # not PSNR (21.0 / 21.6 dB) or recall (0), and it made 40 B-L 2D steps take 31.4 s against 21.5 s; it pays on a
    # tokenizer trained five times longer, where the samples reach recall 0.18 / 0.15 (README).
    loss=LossConfig(gan_start_step=400, perceptual="auto"),
    # lr 1e-3 is no better on the 8x8 grid with the shortcut: B-L 1D 14.8 / 17.2 dB at 50 / 100 steps (8% / 17% of
    # the codebook), 2D 17.0 / 17.2 dB, against 16.5 / 17.0 and 16.9 / 18.3 dB at 3e-4.
    optim=OptimConfig(lr=3e-4, min_lr=3e-5, warmup_steps=10, grad_clip=10.0),
    # Table 9's recipe scaled down: batch sizes /16 (S-S and S-B 128 -> 8, B-L 256 -> 16) and epochs /100 (S-S 100
    # -> 1, S-B and B-L 200 -> 2), an epoch being a fixed 1,600 images (images_per_epoch), not a pass over the
    # built-in set, so the study's cost does not move when photographs are added. As in the paper, S-S and B-L train
    # the same number of steps (200 here) on batches of half and full size, S-B twice the steps (400) of S-S's batch;
    # the smallest tokenizer sees half the images of the two larger ones, and the paper's Fig. 9 sizes are compared
    # at these recipes. Validation PSNR (96 crops, seeds 0 / 1, one thread a run): every size at 200 steps of batch
    # 16 (the profile until 2026-12-03): S-S 1D 21.6 / 21.2 dB, 2D 20.3 / 20.9; S-B 1D 20.8 / 21.2, 2D 21.1 /
    # 21.9; B-L 1D 20.9 / 21.2, 2D 21.2 / 21.7: the 1D sizes not ordered beyond the seeds. At Table 9's recipe: S-S
    # 1D 19.1 / 18.9, 2D 19.0 / 19.1 (tokenizer training 45-53 s, S-S 1D at 16: 87-96 s); S-B 1D 21.1 / 21.4, 2D 21.5 /
    # 21.6 (98-119 s); B-L unchanged. So the order of the sizes at tiny is mostly the smaller tokenizer's shorter
    # training, as far as two seeds show. Earlier measurements, 150 steps of 16: S-B 1D validation PSNR (224 crops),
    # shortcut for 50 steps, 8x8 grid: 15.6 / 16.6 / 17.6 / 18.2 / 18.1 / 18.4 dB at 25 / 50 / 75 / 100 / 125 / 150
    # steps (still rising). B-L, pixel and quantizer terms only: 1D 16.5 / 17.0 / 18.0 dB, 2D 16.9 / 18.3 / 19.4 dB
    # at 50 / 100 / 150 steps. On the earlier 4x4 grid, shortcut for 100 steps: 16.1 / 16.7 / 16.9 dB at 50 / 100 /
    # 150; without the shortcut 13.1 / 13.3 / 13.1 / 13.7 dB at 50-200 steps, the dataset-mean image. 150 -> 200
    # steps of 16 lifted every 2D tokenizer by 0.3-2.6 dB (S-S 2D 18.9 / 19.2 -> 20.3 / 20.9, B-L 2D 20.7 / 19.1 ->
    # 21.2 / 21.7).
    epochs={name: e // TINY_EPOCH_DIVISOR for name, e in PAPER.epochs.items()},
    images_per_epoch=1_600,
    batch_size={name: b // TINY_BATCH_DIVISOR for name, b in PAPER.batch_size.items()},
    # Without the entropy loss a tiny tokenizer collapses onto one code, with or without the shortcut (S-B 1D,
    # 4x4 grid, shortcut on: 1 code of 256 in use at step 50, 13.0 dB). With the shortcut, 5e-3 keeps 8% / 19% of
    # the codebook at 50 / 200 steps (16.4 / 17.3 dB), 0.05 keeps 42% / 72% at 50 / 150 (16.1 / 16.9 dB); 89% at
    # 150 steps on the 8x8 grid. At Table 9's recipe (the whole study, seeds 0 / 1) 0.01 lifts the 2D tokenizers (S-S
    # 19.7 / 19.9 dB against 19.0 / 19.1, S-B 22.1 / 22.9 against 21.5 / 21.6, B-L 22.4 / 22.4 against 21.2 / 21.7)
    # but not the 1D ones: B-L 1D 19.3 / 21.8 dB against 20.9 / 21.2, with 49% / 70% of the codebook in use, below
    # 20 dB and no longer above S-S 1D (20.6 / 19.4) beyond the seeds. Not adopted; recall stayed 0 in every run.
    entropy_weight=0.05,
    entropy_weight_2d={},
    large_warmup_steps=50,
    large_entropy_weight=0.05,
    # The authors' shortcut for the small tokenizers (their S-S, S-B and B-L recipe), because at 0.05 the entropy
    # term's gradient on the encoders is 2.7-6.6x the reconstruction's at initialisation (all six tokenizers of
    # Fig. 9), so without a direct reconstruction signal the encoders learn to spread codes, not to describe
    # images: S-B 1D (4x4 grid) stays at the dataset-mean image (13.1 dB at 150 steps, mean-colour error 0.36 in
    # [-1, 1]); with it, 16.9 dB and error 0.17. The shortcut's direct decoding doubles to triples the CNN
    # encoder's reconstruction gradient at initialisation. Zero-initialised residual branches do not help (14.9 dB
    # at 50 steps, back to 13.3 at 100).
    small_stabiliser="shortcut",
    # A third of the 200-step run (the authors': 15,000 of ~1M steps). B-L 1D at 150 steps: 18.0 dB with 50, 18.3 dB
    # with 100, a gain no larger than seed-to-seed differences (~2 dB between two seeds at tiny).
    shortcut_steps=67,
    # The 1D decoder's queries unpooled from the latent tokens, not the first token repeated (TokenizerConfig
    # .decoder_queries_1d): after the shortcut the repeated-token queries left the 1D pixel loss flat (B-L 0.13 ->
    # 0.10-0.12 over steps 70-190, 2D 0.08-0.10 -> 0.05), every cell's query the same until cross-attention learns
    # to route. Validation PSNR (96 crops, 200 steps, seeds 0 / 1), repeated -> unpooled: S-S 1D 19.7 / 19.1 ->
    # 21.6 / 21.2 dB, B-L 1D 17.9 / 19.7 -> 20.9 / 21.2, no slower (B-L 1D, 40 steps on one thread, alternated:
    # 32.5 / 31.1 s repeated, 34.1 / 31.7 s unpooled). Measured and not adopted (B-L 1D, then S-S 1D): queries
    # repeated, the authors' layout 16.1 / 16.9, 17.2 / 16.5 dB (codebook usage 9-50%) and DETR blocks alone
    # 17.3 / 19.2, 17.8 / 19.4; queries unpooled, zero-initialised residual branches 19.4 / 21.5, 21.2 / 21.2, a
    # 33-step shortcut 20.5 / 21.0, 20.9 / 20.4, and lr 5e-4 20.7 / 21.3, 21.2 / 19.1. None orders B-L above S-S.
    tokenizer_options_1d={"decoder_queries_1d": "unpooled"},
    log_every=10,
    checkpoint_every=20,  # a killed tiny run loses at most ~25 s
    ar_sizes=TINY_AR_SIZES,
    num_classes=18,  # the built-in dataset's source photographs (version 2)
    # 112 steps; with 64 tokens an image they took 110 s single-threaded on a busy machine (B-L 1D's tokens).
    # Longer buys no recall (seed 0, B-L 2D, no guidance): 560 steps gave gFID 302 against 299 at 112, recall 0
    # in both; on a five-times-trained B-L 2D (25.5 dB), 1,120 steps sample photograph-like crops at precision
    # 0.39 / 0.42 and recall 0.01 / 0.01 (seeds 0 / 1; README), at ~5 minutes a run more.
    ar_train=TINY_AR_PROBE,
    # FID at its standard 299 px input on 96 images: Inception costs ~0.2 s an image on a CPU core pair, so the
    # counts, not the resolution, are cut. Numbers this small are for plumbing and trends, never for comparison.
    # Sampling hotter buys no recall: the B-L 2D probes of a whole study (seeds 0 / 1) resampled at guidance 1 and
    # 2, temperature 1, 1.3 and 1.6, scored recall 0 in every case (precision 0.49-0.75), and at guidance 2 against
    # 96 training crops as the reference too: the samples are as blurry as the tokenizers' reconstructions.
    eval=EvalConfig(
        recon_images=96,
        reference_images=96,
        gen_samples=96,
        batch_size=48,
        cfg_scale=2.0,
        probe_max_iter=500,
        # Five scales (1.0-2.0), each scored first on one batch of 48 samples.
        cfg_search=CfgSearchConfig(scale_max=2.0, low_fraction=0.5, startup_trials=2),
    ),
    epochs_per_paper_epoch=1 / TINY_EPOCH_DIVISOR,
    system_ar_train={"default": dataclasses.replace(TINY_AR_PROBE, epochs=40)},  # 1,120 steps
    # A search at tiny (five scales) took 147 s where sampling at the fixed scale took 42 s (S-S probe, one thread
    # of a loaded pair of cores): about +10 minutes over the six runs of scaling_1d_vs_2d, past its 20-minute budget.
    # ar_probe_vs_large and system_level search their scale as a stage.
    cfg_search_every_gfid=False,
    # One seed by default for every study but the README's main one: scaling_1d_vs_2d took 11 min 39 s for its six runs
    # on two cores with the earlier CNN (fresh caches, no VGG16 file) and 20 min 43 s over two seeds, at the 20-minute
    # budget; with the lighter CNN above and 200 steps its two seeds took 17 min 46 s, and 18 min 56 s and 20 min 4 s
    # on a slower day, then 17 min 38 s with Table 9's per-size recipe (README, "What the tiny profile shows"), and
    # two seeds are what let Fig. 9 show which differences stand above seed noise. Other tiny studies draw the spread
    # with `--seeds 2` (about double their time).
    seeds=1,
    study_seeds={"scaling_1d_vs_2d": 2},
)

# The tiny models trained five times longer, with a perceptual term, and probed by a longer AR model sampled without
# guidance: the recipe whose generated samples pass precision and recall 0.1 (README, "What the tiny profile shows").
# Its models and data are tiny's; its runs take about five times as long, too long for the 20 minutes ``tiny`` keeps
# scaling_1d_vs_2d within. The measurements below are B-L 2D, seeds 0 / 1, one thread a run.
TINY_LONG = dataclasses.replace(
    TINY,
    name="tiny-long",
    # Every size 2,000 steps of batch 8 (16,000 images, five times tiny's B-L), not Table 9's per-size ratios. At this
    # length without the perceptual term B-L 2D reached 25.5 / 25.5 dB (tiny: 21.2 / 21.7), and its reconstructions of
    # training crops score recall 0.09 (tools/prc_calibration.py; tiny's: 0). Half of it (1,000 steps of 8, with the
    # term below) left the samples at recall 0.02 / 0.01 (seeds 0 / 1; 25.9 dB for seed 1), and S-B 2D's at 0.04 (seed
    # 0, 24.7 dB, precision 0.45), so the half-length tokenizer does not keep recall beyond S-S. Cheaper variants
    # measured on S-S 2D (this profile otherwise; at it 26.3 / 26.1 dB, sample recall 0.12 / 0.09, seeds 0 / 1): 1,000
    # steps of 8 25.4 / 21.6 dB, recall 0.10 / 0.115; the same at lr 1e-3 24.5 dB, recall 0.06; 1,000 steps of 4
    # (0.66-0.73x its training time) 23.9 / 22.2 dB, recall 0.08 / 0.06. Neither a higher rate nor smaller batches buys
    # back the images, and the half-length tokenizer's AR probe at 280 steps (not 560) samples at precision 0.42, recall
    # 0.07. At 16 px (CNN multipliers 1, 2: the same 8x8 grid, a token per 2x2 pixels), this profile otherwise
    # (2026-12-05, seeds 0 / 1): half the tokenizer training keeps recall, S-S 2D 26.5 / 27.7 dB, precision 0.68 /
    # 0.64, recall 0.20 / 0.14 (S-S 1D 24.6 / 25.7 dB, recall 0.03 / 0.22), but tiny's tokenizer training does not,
    # even with this term and AR probe (seed 0: S-S 2D 20.5 dB, recall 0; B-L 2D 22.0 dB, recall 0.02). A half-length
    # 16 px S-S run took 21-22 min on the slower machine kind (tokenizer 695-744 s, 1,000 steps; AR 441-471 s), and the
    # 560 AR steps alone, twelve times, cost more than the whole tiny study there (5,107 s): no 16 px recipe fits it.
    epochs={"default": 10},
    batch_size={"default": 8},
    epochs_per_paper_epoch=10 / 200,  # B-L's 200 paper epochs are this profile's 10
    # The Inception distance (perceptual="inception", not LPIPS) at weight 1, whether or not the VGG16 file is there:
    # at this length it lifts the reconstructions' recall from 0.09 to 0.385 / 0.333 and PSNR to 26.2 / 26.9 dB. At
    # weight 0.3 (seed 0): recall 0.375, 26.5 dB, but samples at recall 0.10 against 0.18. No GAN in any run of this
    # profile (the start is past every run's last step): at tiny it cost B-L 2D 5.5-11 dB (TINY.loss above).
    loss=dataclasses.replace(TINY.loss, perceptual="inception", perceptual_weight=1.0, gan_start_step=20_000),
    # The shortcut for the first 134 steps: twice tiny's 67, the first 7% of the run.
    shortcut_steps=134,
    # 0.01, not tiny's 0.05: at 2,000 steps the codebook stays in use with the weaker term (86% / 91% of it).
    entropy_weight=0.01,
    # 560 AR steps (20 epochs of 28), sampled at CFG scale 1: on the tokenizer above, 112 steps at scale 2 gave
    # recall 0.09 (seed 0); 560 steps at scale 1 gave 0.18 / 0.15 at precision 0.46 / 0.56.
    ar_train=dataclasses.replace(TINY_AR_PROBE, epochs=20),
    eval=dataclasses.replace(TINY.eval, cfg_scale=1.0),
)

PROFILES: dict[str, Profile] = {"paper": PAPER, "tiny": TINY, "tiny-long": TINY_LONG}


def get_profile(name: str) -> Profile:
    _require(name in PROFILES, "profile", f"unknown profile {name!r}; known: {sorted(PROFILES)}")
    return PROFILES[name]


def _chosen_stabiliser(prof: Profile, stabiliser: Stabiliser | None, *, large: bool) -> Stabiliser | None:
    """The stabiliser asked for, else the size's default: XL-XXL's warm-up and entropy loss for a large tokenizer,
    the profile's ``small_stabiliser`` below XL (None: the profile's own entropy weight and warm-up alone)."""
    _require(
        stabiliser in (None, *STABILISERS), "stabiliser", f"unknown stabiliser {stabiliser!r}; known: {STABILISERS}"
    )
    return stabiliser if stabiliser is not None else ("warmup_entropy" if large else prof.small_stabiliser)


def _quantizer_config(
    prof: Profile, name: str, kind: Kind, *, warmup_entropy: bool, entropy_weight: float | None
) -> QuantizerConfig:
    """The profile's quantizer. Its entropy weight: the caller's if given; else the large-tokenizer weight under the
    warm-up + entropy stabiliser; else the profile's (a 2D tokenizer's per name, where Table 9 differs)."""
    base_entropy = prof.entropy_weight_2d.get(name, prof.entropy_weight) if kind == "2d" else prof.entropy_weight
    return QuantizerConfig(
        codebook_size=prof.codebook_size,
        codebook_dim=prof.codebook_dim,
        entropy_weight=(prof.large_entropy_weight if warmup_entropy else base_entropy)
        if entropy_weight is None
        else entropy_weight,
        entropy_log_offset=1e-5 if prof.authors_layout else 0.0,
    )


def _tokenizer_config(
    prof: Profile, name: str, kind: Kind, quantizer: QuantizerConfig, semantic: SemanticConfig
) -> TokenizerConfig:
    """The tokenizer ``name`` at the profile's sizes: a 1D one has the profile's token count, a 2D one a token per
    cell of the CNN's feature map."""
    enc_name, dec_name = parse_tokenizer_name(name)
    return TokenizerConfig(
        name=name,
        kind=kind,
        encoder=prof.sizes[enc_name],
        decoder=prof.sizes[dec_name],
        image_size=prof.image_size,
        num_tokens=prof.num_tokens if kind == "1d" else (prof.image_size // prof.cnn.downsample) ** 2,
        cnn=prof.cnn,
        quantizer=quantizer,
        semantic=semantic,
        **{**(AUTHORS_LAYOUT if prof.authors_layout else {}), **(prof.tokenizer_options_1d if kind == "1d" else {})},
    )


def _loss_config(prof: Profile, chosen: Stabiliser | None, discriminator: Literal["patchgan", "dino"]) -> LossConfig:
    """The profile's loss, with the shortcut path on for the profile's ``shortcut_steps`` under the "shortcut"
    stabiliser, and the frozen-DINO discriminator started as late as the authors start it."""
    loss = prof.loss
    if chosen == "shortcut":
        loss = dataclasses.replace(loss, shortcut_end_step=prof.shortcut_steps)
    if discriminator == "dino":
        loss = dataclasses.replace(
            loss, discriminator="dino", gan_start_step=loss.gan_start_step * DINO_GAN_START_FACTOR
        )
    return loss


def _train_config(
    prof: Profile, name: str, *, epochs: float | None, batch_size: int | None, seed: int, max_steps: int | None
) -> TrainConfig:
    """The training loop's settings: Table 9's epochs and batch size for ``name`` unless given."""
    batch = prof.default_batch_size(name) if batch_size is None else batch_size
    return TrainConfig(
        epochs=prof.default_epochs(name) if epochs is None else epochs,
        batch_size=batch,
        seed=seed,
        log_every=prof.log_every,
        checkpoint_every=prof.checkpoint_every,
        max_steps=max_steps,
        steps_per_epoch=None if prof.images_per_epoch is None else max(1, prof.images_per_epoch // batch),
    )


def tokenizer_run(
    name: str = "S-S",
    *,
    profile: str = "tiny",
    kind: Kind = "1d",
    semantic_weight: float | None = None,
    align_layer: int = 3,
    semantic_encoder: str | None = None,
    entropy_weight: float | None = None,
    epochs: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    data_root: str | None = None,
    max_steps: int | None = None,
    performance: PerformanceConfig | None = None,
    discriminator: Literal["patchgan", "dino"] = "patchgan",
    stabiliser: Stabiliser | None = None,
) -> TokenizerRunConfig:
    """Build a tokenizer run from what varies; everything else comes from the profile (Table 9 at ``paper``).

    ``semantic_weight`` None means the paper's default lambda = 0.5; pass 0 for a vanilla tokenizer.

    ``stabiliser`` picks how early training is kept from collapsing onto few codes: "shortcut", the authors'
    shortcut path for the profile's ``shortcut_steps`` (their recipe below XL-XXL); "warmup_entropy", the
    profile's large-tokenizer warm-up and entropy loss (XL-XXL's recipe, which Appendix C recommends for every
    size). None: the profile's default for the size. ``entropy_weight`` overrides the entropy weight either way.
    ``discriminator="dino"`` trains against the frozen-DINO discriminator, started as late as the authors start it.
    """
    prof = get_profile(profile)
    enc_name, dec_name = parse_tokenizer_name(name)
    chosen = _chosen_stabiliser(prof, stabiliser, large=enc_name in _LARGE or dec_name in _LARGE)
    warmup_entropy = chosen == "warmup_entropy"
    quantizer = _quantizer_config(prof, name, kind, warmup_entropy=warmup_entropy, entropy_weight=entropy_weight)
    semantic = SemanticConfig(
        weight=0.5 if semantic_weight is None else semantic_weight,
        layer=align_layer,
        encoder=semantic_encoder or prof.semantic_encoder,
        encoder_resolution=prof.semantic_resolution,
        cache_features=prof.cache_semantic_features,
    )
    tokenizer = _tokenizer_config(prof, name, kind, quantizer, semantic)
    # A data root means an image folder, whatever the profile's default (tiny trains on the built-in dataset
    # unless one is given): the profile's sizes and schedule on the user's images.
    data = prof.data if data_root is None else dataclasses.replace(prof.data, dataset="imagefolder", root=data_root)
    optim = prof.optim
    if warmup_entropy:
        optim = dataclasses.replace(optim, warmup_steps=prof.large_warmup_steps)
    loss = _loss_config(prof, chosen, discriminator)
    train = _train_config(prof, name, epochs=epochs, batch_size=batch_size, seed=seed, max_steps=max_steps)
    return TokenizerRunConfig(
        profile=profile,
        tokenizer=tokenizer,
        loss=loss,
        optim=optim,
        data=data,
        train=train,
        performance=performance or PerformanceConfig(),
    )


def ar_run(
    tokenizer: TokenizerRunConfig,
    size: str = "B",
    *,
    epochs: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    max_steps: int | None = None,
    performance: PerformanceConfig | None = None,
    system: bool = False,
) -> ARRunConfig:
    """An AR model of Table 8 size ``size`` trained on ``tokenizer``'s tokens, numbers from its profile.

    ``system`` False trains it with the AR probe's recipe (``ar_train``), True with the system-level recipe of that
    size (``system_ar_train``: 300 epochs at ``paper``). ``performance`` None computes it as the tokenizer run is
    computed.
    """
    prof = get_profile(tokenizer.profile)
    _require(size in prof.ar_sizes, "ar.size", f"unknown AR size {size!r}; known: {AR_SIZE_NAMES}")
    dims = prof.ar_sizes[size]
    model = ARConfig(
        width=dims.width,
        depth=dims.depth,
        heads=dims.heads,
        vocab_size=tokenizer.tokenizer.quantizer.codebook_size,
        num_tokens=tokenizer.tokenizer.num_tokens,
        num_classes=prof.num_classes,
        **prof.ar_model_options,
    )
    recipe = prof.system_ar_train_for(size) if system else prof.ar_train
    train = dataclasses.replace(
        recipe,
        epochs=recipe.epochs if epochs is None else epochs,
        batch_size=recipe.batch_size if batch_size is None else batch_size,
        seed=seed,
        max_steps=max_steps,
    )
    return ARRunConfig(
        profile=tokenizer.profile,
        size=size,
        tokenizer=tokenizer,
        model=model,
        train=train,
        performance=performance or tokenizer.performance,
    )


# --------------------------------------------------------------------------------------------------------------
# Serialisation and hashing
# --------------------------------------------------------------------------------------------------------------


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, JSON-able dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def canonical_hash(payload: Any, length: int = 12) -> str:
    """The hex prefix of the sha256 of ``payload`` as canonical JSON (sorted keys, fixed separators, no NaN): every
    hash the workbench names runs, folders and result files with."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def config_hash(cfg: Any, length: int = 12) -> str:
    """Stable content hash of a config: :func:`canonical_hash` of its hashed fields, type and schema version.

    It depends only on the field values and the schema version, never on object identity, dict order or the
    process, so the same config hashes the same on every machine.
    """
    return canonical_hash(
        {"schema": CONFIG_SCHEMA_VERSION, "type": type(cfg).__name__, "config": hashed_fields(cfg)}, length
    )


def run_hash(cfg: Any) -> str:
    """:func:`config_hash` of a frozen run config, computed once per object: the config cannot change, and planning
    or dry-running a 1,000-run study asks for the same hashes ~10,000 times (~1 ms each)."""
    cached = cfg.__dict__.get("_run_hash")
    if cached is None:
        cached = config_hash(cfg)
        object.__setattr__(cfg, "_run_hash", cached)  # not a field: equality, to_dict and replace() ignore it
    return cached


def hashed_fields(cfg: Any) -> Any:
    """The config as plain data, without fields marked ``metadata={"hash": False}`` (machine-local paths).

    A field marked ``metadata={"hash": "unless-default"}`` counts only when set to something other than its
    default: a field added later then leaves the hashes of existing runs (and their files on disk) untouched.
    """
    if dataclasses.is_dataclass(cfg):
        return {
            f.name: hashed_fields(getattr(cfg, f.name))
            for f in dataclasses.fields(cfg)
            if f.metadata.get("hash", True)
            and not (f.metadata.get("hash") == UNLESS_DEFAULT and getattr(cfg, f.name) == f.default)
        }
    if isinstance(cfg, tuple | list):
        return [hashed_fields(v) for v in cfg]
    if isinstance(cfg, dict):
        return {str(k): hashed_fields(v) for k, v in cfg.items()}
    return cfg


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a (nested) frozen dataclass from :func:`to_dict` output, validating as it goes."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        kwargs[f.name] = _coerce(hints[f.name], data[f.name])
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any) -> Any:
    if isinstance(tp, type) and dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return from_dict(tp, value)
    origin = typing.get_origin(tp)
    if origin is tuple and isinstance(value, list):
        return tuple(value)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if isinstance(arg, type) and dataclasses.is_dataclass(arg) and isinstance(value, dict):
                return from_dict(arg, value)
    return value


def run_config_from_dict(data: dict[str, Any]) -> TokenizerRunConfig:
    return from_dict(TokenizerRunConfig, data)


def ar_run_config_from_dict(data: dict[str, Any]) -> ARRunConfig:
    return from_dict(ARRunConfig, data)

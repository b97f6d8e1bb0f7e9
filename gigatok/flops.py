"""Analytic FLOP model of training and sampling: closed-form counts from a run's config, no model built.

Conventions (docs/flops.md has the measured agreement with ``torch.utils.flop_counter.FlopCounterMode``):

- Counted: every matrix multiply and convolution, one multiply-add = 2 FLOPs (bias additions left out), and
  attention's two activation matmuls, Q K^T and A V (4 n_q n_kv width FLOPs a layer forward). Causal attention is
  counted over the full n x n square, as the written-out kernel and FlopCounterMode count it (fused causal kernels
  skip about half of it). Left out: elementwise work, normalisations, softmax, pooling, resizing, DiffAug, the
  losses themselves, embedding lookups, the optimizer step, gradient clipping and spectral norm's power iteration
  (matrix-vector products).
- Backward, per layer, as autograd runs it: a weight layer (matmul or convolution with a weight operand) costs its
  forward FLOPs once for the gradient w.r.t. its weights, when they train, and once for the gradient w.r.t. its
  input, when anything before it needs a gradient; an activation matmul (attention) costs twice its forward
  whenever a gradient flows through it. So a trained network costs the usual 3x its forward (backward = 2x), less
  one forward of its first layer when that layer reads data (the CNN encoder's first conv on images, the
  discriminator's first layer on its own update); a frozen network that passes a gradient back to the generator
  (LPIPS, the DINO discriminator's ViT on the generator's update) costs its forward plus one forward of its weight
  layers plus two of its attention; a frozen network off the gradient path (the semantic teacher; the DINO ViT on
  the discriminator's update) costs its forward alone.
- One step is one optimizer step on the whole global batch (``train.batch_size``, split over ranks). The
  generator-side discriminator pass computes the discriminator's weight gradients too (autograd does; the
  discriminator's optimizer zeroes them before its own update), so it is counted as a trained pass.
- The tokenizer's step depends on its phase: the shortcut's direct decoding (a second CNN-decoder, LPIPS and, with
  the GAN, discriminator pass) before ``loss.shortcut_end_step``, the GAN from ``loss.gan_start_step``.
  :func:`tokenizer_step_flops` gives the steady state (GAN on, shortcut over) unless asked for a step;
  :func:`run_training_flops` sums the phases over the run's steps.

No torch at import time: a planner computes this for every run of a study. The step counts come from
:mod:`gigatok.train.steps` (the loops' own); the phase predicates, the builtin dataset's size and the token cache's
views are read lazily from the modules that own them.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING

from gigatok.config import ARConfig, ARRunConfig, CNNConfig, DataConfig, TokenizerConfig, TokenizerRunConfig
from gigatok.train.steps import ar_steps_per_epoch, ar_total_steps, tokenizer_total_steps

if TYPE_CHECKING:
    from gigatok.runs.spec import RunSpec

# ImageNet-1k's training split (the paper's data; ADM's reference batch counts the same images): the size an
# ``imagefolder`` run's schedule is counted over, since the folder itself is only read when the run starts.
IMAGENET_TRAIN_IMAGES = 1_281_167


@dataclass(frozen=True)
class Forward:
    """A network pass's forward FLOPs, split by what its backward has to compute.

    ``weight``: matmuls and convolutions with a weight operand; ``attention``: matmuls of two activations;
    ``first``: the part of ``weight`` in the layers that read the pass's input directly.
    """

    weight: float = 0.0
    attention: float = 0.0
    first: float = 0.0

    def __add__(self, other: Forward) -> Forward:
        return Forward(self.weight + other.weight, self.attention + other.attention, self.first + other.first)

    def __mul__(self, k: float) -> Forward:
        return Forward(self.weight * k, self.attention * k, self.first * k)

    @property
    def total(self) -> float:
        return self.weight + self.attention

    def with_backward(self, trained: bool, input_grad: bool) -> float:
        """Forward plus backward: ``trained`` whether the weights get gradients, ``input_grad`` whether the input
        needs one (see the module's conventions)."""
        through = trained or input_grad  # a gradient flows through the layers
        grad_inputs = (self.weight - (0.0 if input_grad else self.first)) if through else 0.0
        grad_weights = self.weight if trained else 0.0
        return self.total + grad_inputs + grad_weights + (2 * self.attention if through else 0.0)


def linear(tokens: float, n_in: int, n_out: int) -> float:
    return 2.0 * tokens * n_in * n_out


def conv(pixels_out: float, c_in: int, c_out: int, kernel: int | tuple[int, int] = 3) -> float:
    """A convolution with a k x k (or kh x kw) kernel producing ``pixels_out`` pixels (1D: kh = 1)."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    return 2.0 * pixels_out * c_in * c_out * kh * kw


# --------------------------------------------------------------------------------------------------------------
# Transformers
# --------------------------------------------------------------------------------------------------------------


def attention_layer(width: int, n_q: float, n_kv: float, batch: int) -> Forward:
    """Multi-head attention, queries from ``n_q`` tokens, keys and values from ``n_kv``: q, kv, out projections
    and Q K^T, A V."""
    weights = 2 * linear(batch * n_q, width, width) + linear(batch * n_kv, width, 2 * width)
    return Forward(weights, 4.0 * batch * n_q * n_kv * width)


def mlp_layer(width: int, hidden: int, tokens: float) -> Forward:
    return Forward(2 * linear(tokens, width, hidden))


def tokenizer_blocks(cfg: TokenizerConfig, width: int, depth: int, n_q: int, n_kv: int, batch: int) -> Forward:
    """A stack of tokenizer blocks: 2D ViT blocks (self-attention over ``n_q``), or Q-Former / DETR blocks
    (self-attention over the ``n_q`` queries, cross-attention to ``n_kv`` tokens; a 2D DETR stack attends to its own
    grid)."""
    hidden = int(width * cfg.mlp_ratio)
    block = attention_layer(width, n_q, n_q, batch) + mlp_layer(width, hidden, batch * n_q)
    if cfg.kind == "1d" or cfg.block_2d == "detr":
        block = block + attention_layer(width, n_q, n_kv, batch)
    return block * depth


def transformer_encoder_forward(cfg: TokenizerConfig, batch: int) -> Forward:
    """CNN features -> latent tokens (gigatok.models.tokenizer.TransformerEncoder)."""
    c, w, grid, n = cfg.cnn.latent_channels, cfg.encoder.width, cfg.grid_size**2, cfg.num_tokens
    if cfg.kind == "2d":
        io = linear(batch * grid, c, w) + linear(batch * grid, w, c)
        return Forward(io) + tokenizer_blocks(cfg, w, cfg.encoder.depth, grid, grid, batch)
    queries = linear(batch * n, w, w) if cfg.queries_from_context else linear(batch * n, c, w)
    io = linear(batch * grid, c, w) + queries + linear(batch * n, w, c)
    return Forward(io) + tokenizer_blocks(cfg, w, cfg.encoder.depth, n, grid, batch)


def transformer_decoder_forward(cfg: TokenizerConfig, batch: int) -> Forward:
    """Latent tokens -> 2D features (gigatok.models.tokenizer.TransformerDecoder)."""
    c, w, grid, n = cfg.cnn.latent_channels, cfg.decoder.width, cfg.grid_size**2, cfg.num_tokens
    out = conv(batch * grid, w, c, cfg.decoder_out_kernel)
    if cfg.kind == "2d":
        return Forward(linear(batch * grid, c, w) + out) + tokenizer_blocks(
            cfg, w, cfg.decoder.depth, grid, grid, batch
        )
    # The query projection embeds the first latent token once, or every unpooled cell (the unpooling's averages are
    # not multiply-adds a FLOP counter sees).
    queries = grid if cfg.decoder_queries_1d == "unpooled" else 1
    query = 0.0 if cfg.queries_from_context else linear(batch * queries, c, w)
    io = linear(batch * n, c, w) + query + out
    return Forward(io) + tokenizer_blocks(cfg, w, cfg.decoder.depth, grid, n, batch)


def semantic_projector_forward(cfg: TokenizerConfig, batch: int) -> Forward:
    """The REPA projector on every grid position of the captured decoder layer: w -> 4w -> 4w -> D."""
    w, tokens = cfg.decoder.width, batch * cfg.grid_size**2
    return Forward(
        linear(tokens, w, 4 * w) + linear(tokens, 4 * w, 4 * w) + linear(tokens, 4 * w, cfg.semantic.feature_dim)
    )


def quantizer_flops(cfg: TokenizerConfig, batch: int) -> float:
    """Projections in and out (trained) and the nearest-code search, N x K dot products of the codebook width;
    the search is differentiated only through the entropy loss (the code choice itself is an argmax)."""
    q, tokens = cfg.quantizer, batch * cfg.num_tokens
    projections = Forward(linear(tokens, cfg.cnn.latent_channels, q.codebook_dim) * 2)
    search = linear(tokens, q.codebook_dim, q.codebook_size)
    return projections.with_backward(True, True) + search * (3 if q.entropy_weight > 0 else 1)


# --------------------------------------------------------------------------------------------------------------
# CNNs
# --------------------------------------------------------------------------------------------------------------


def resnet_block(c_in: int, c_out: int, pixels: float) -> float:
    shortcut = conv(pixels, c_in, c_out, 1) if c_in != c_out else 0.0
    return conv(pixels, c_in, c_out) + conv(pixels, c_out, c_out) + shortcut


def spatial_attention(channels: int, pixels: int, batch: int) -> Forward:
    """gigatok.models.cnn.AttnBlock: single-head self-attention over the pixels, 1x1 projections."""
    return Forward(conv(batch * pixels, channels, 4 * channels, 1), 4.0 * batch * pixels * pixels * channels)


def cnn_encoder_forward(cnn: CNNConfig, image_size: int, batch: int) -> Forward:
    """gigatok.models.cnn.CNNEncoder; ``first`` is its conv on the images."""
    first = conv(batch * image_size**2, 3, cnn.base_channels)
    total, c_in, side = Forward(first, first=first), cnn.base_channels, image_size
    last = len(cnn.channel_mult) - 1
    for level, mult in enumerate(cnn.channel_mult):
        c_out = cnn.base_channels * mult
        for _ in range(cnn.encoder_res_blocks):
            total += Forward(resnet_block(c_in, c_out, batch * side**2))
            c_in = c_out
            if level == last and cnn.encoder_attention:
                total += spatial_attention(c_in, side**2, batch)
        if level != last:
            side //= 2
            total += Forward(conv(batch * side**2, c_in, c_in))  # the stride-2 conv
    total += Forward(2 * resnet_block(c_in, c_in, batch * side**2))  # the middle block
    if cnn.encoder_attention:
        total += spatial_attention(c_in, side**2, batch)
    return total + Forward(conv(batch * side**2, c_in, cnn.latent_channels))


def cnn_decoder_forward(cnn: CNNConfig, grid_size: int, batch: int) -> Forward:
    """gigatok.models.cnn.CNNDecoder (the adaptive norm's two linears on the input's per-channel statistics
    included)."""
    c_in, side = cnn.base_channels * cnn.channel_mult[-1], grid_size
    total = Forward(conv(batch * side**2, cnn.latent_channels, c_in) + 2 * resnet_block(c_in, c_in, batch * side**2))
    if cnn.decoder_attention:
        total += spatial_attention(c_in, side**2, batch)
    last = len(cnn.channel_mult) - 1
    for level in reversed(range(len(cnn.channel_mult))):
        c_out = cnn.base_channels * cnn.channel_mult[level]
        if cnn.decoder_adaptive_norm:
            total += Forward(2 * linear(batch, cnn.latent_channels, c_in))
        for _ in range(cnn.decoder_res_blocks):
            total += Forward(resnet_block(c_in, c_out, batch * side**2))
            c_in = c_out
            if level == last and cnn.decoder_attention:
                total += spatial_attention(c_in, side**2, batch)
        if level != 0:
            if cnn.upsample == "depth_to_space":
                total += Forward(conv(batch * side**2, c_in, 4 * c_in))
                side *= 2
            else:
                side *= 2
                total += Forward(conv(batch * side**2, c_in, c_in))
    return total + Forward(conv(batch * side**2, c_in, 3))


# --------------------------------------------------------------------------------------------------------------
# Frozen networks and the discriminators
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViTDims:
    """A plain ViT's shape: what its FLOPs depend on."""

    width: int
    depth: int
    mlp_hidden: int
    patch: int
    prefix_tokens: int  # class (and register) tokens


# The timm architectures of gigatok.semantic_encoders.ENCODER_SPECS (tests/test_flops.py builds each and checks).
SEMANTIC_VITS: dict[str, ViTDims] = {
    "dinov2-b": ViTDims(768, 12, 3072, 14, 1),  # vit_base_patch14_dinov2
    "clip": ViTDims(1024, 24, 4096, 14, 1),  # vit_large_patch14_clip_quickgelu_224
    "siglip": ViTDims(1152, 27, 4304, 14, 0),  # vit_so400m_patch14_siglip_224, no pooling head
}
# The DINO discriminator's frozen ViT-S/16 at 224 px, its heads' width and kernel, and how many readouts it takes
# (gigatok.models.discriminator.DinoArch; checked by the tests).
DINO_VIT = ViTDims(384, 12, 1536, 16, 1)
DINO_INPUT, DINO_BLOCKS_RUN, DINO_READOUTS, DINO_KERNEL = 224, 12, 5, 9


def vit_forward(dims: ViTDims, input_size: int, batch: int, blocks: int | None = None) -> Forward:
    """A ViT's patch embedding and its first ``blocks`` blocks (all when None); ``first`` is the patch embedding."""
    patches = (input_size // dims.patch) ** 2
    n = batch * (patches + dims.prefix_tokens)
    embed = conv(batch * patches, 3, dims.width, dims.patch)
    w = dims.width
    block = Forward(linear(n, w, 4 * w) + 2 * linear(n, w, dims.mlp_hidden), 4.0 * n * (n / batch) * w)
    return Forward(embed, first=embed) + block * (dims.depth if blocks is None else blocks)


def inception_forward(resolution: int, batch: int, through_mixed_5d: bool = False) -> Forward:
    """TF-Inception (FID's Inception-v3) up to Mixed_6e on a square ``resolution`` input (the tiny profile's
    semantic teacher): the stem, Mixed_5b-d, Mixed_6a, Mixed_6b-e; ``through_mixed_5d`` stops after Mixed_5d (the
    blocks the Inception distance compares, gigatok.perceptual)."""
    s1 = (resolution - 3) // 2 + 1  # sides after each stride-2 or unpadded layer (gigatok.semantic_encoders)
    s2 = s1 - 2
    s3 = (s2 - 3) // 2 + 1
    s4 = s3 - 2
    s5 = (s4 - 3) // 2 + 1
    s6 = (s5 - 3) // 2 + 1
    p1, p2, p3, p4, p5, p6 = (batch * s**2 for s in (s1, s2, s3, s4, s5, s6))
    first = conv(p1, 3, 32)
    total = first + conv(p2, 32, 32) + conv(p2, 32, 64) + conv(p3, 64, 80, 1) + conv(p4, 80, 192)
    c = 192
    for pool in (32, 64, 64):  # Mixed_5b-d: 1x1 branches (64, 48, 64, pool), 5x5 48->64, 3x3 64->96->96
        total += conv(p5, c, 64 + 48 + 64 + pool, 1) + conv(p5, 48, 64, 5) + conv(p5, 64, 96) + conv(p5, 96, 96)
        c = 64 + 64 + 96 + pool
    if through_mixed_5d:
        return Forward(total, first=first)
    total += conv(p6, c, 384) + conv(p5, c, 64, 1) + conv(p5, 64, 96) + conv(p6, 96, 96)  # Mixed_6a
    c = 768
    for c7 in (128, 160, 160, 192):  # Mixed_6b-e: 1x1 branches (192, c7, c7, 192), then 1x7 and 7x1 convs
        sevens = conv(p6, c7, c7, (1, 7)) * 4 + conv(p6, c7, 192, (1, 7)) * 2
        total += conv(p6, c, 192 + c7 + c7 + 192, 1) + sevens
    return Forward(total, first=first)


def semantic_teacher_forward(cfg: TokenizerConfig, batch: int) -> Forward:
    """The frozen semantic encoder on ``batch`` images resized to its input (gigatok.semantic_encoders)."""
    sem = cfg.semantic
    if sem.encoder == "inception":
        return inception_forward(sem.encoder_resolution, batch)
    dims = SEMANTIC_VITS[sem.encoder]
    return vit_forward(dims, sem.encoder_resolution // dims.patch * dims.patch, batch)


# VGG16's 13 convolutions by resolution level (LPIPS uses them all), then LPIPS's 1x1 calibration layers' inputs.
VGG16_LEVELS: tuple[tuple[tuple[int, int], ...], ...] = (
    ((3, 64), (64, 64)),
    ((64, 128), (128, 128)),
    ((128, 256), (256, 256), (256, 256)),
    ((256, 512), (512, 512), (512, 512)),
    ((512, 512), (512, 512), (512, 512)),
)


def lpips_flops(image_size: int, batch: int) -> float:
    """One LPIPS-VGG16 call on (reconstruction, image): VGG16 forward on both, the calibration layers once, and the
    backward to the reconstruction alone (inputs' gradients of the frozen convs and calibration layers)."""
    vgg, calibration, side = 0.0, 0.0, image_size
    for level, convs in enumerate(VGG16_LEVELS):
        side = image_size >> level
        vgg += sum(conv(batch * side**2, c_in, c_out) for c_in, c_out in convs)
        calibration += conv(batch * side**2, convs[-1][1], 1, 1)
    return 3 * vgg + 2 * calibration  # forward: VGG twice, calibration once; backward: once each, inputs only


def inception_distance_flops(batch: int) -> float:
    """One Inception-distance call on (reconstruction, image) (gigatok.perceptual.InceptionDistance): the trunk
    through Mixed_5d on both at its input size, and the backward to the reconstruction alone (inputs' gradients)."""
    from gigatok.perceptual import INCEPTION_DISTANCE_RESOLUTION

    trunk = inception_forward(INCEPTION_DISTANCE_RESOLUTION, batch, through_mixed_5d=True)
    return trunk.total + trunk.with_backward(trained=False, input_grad=True)


def perceptual_flops(cfg: TokenizerRunConfig, batch: int) -> float:
    """One call of ``cfg``'s perceptual network (LPIPS-VGG16 or the Inception distance) on a batch."""
    if cfg.loss.perceptual == "inception":
        return inception_distance_flops(batch)
    return lpips_flops(cfg.tokenizer.image_size, batch)


def patchgan_forward(channels: int, layers: int, image_size: int, batch: int) -> Forward:
    """gigatok.models.discriminator.PatchDiscriminator: 4x4 convs, stride 2 but for the last two."""
    side = (image_size + 2 - 4) // 2 + 1
    first = conv(batch * side**2, 3, channels, 4)
    total, mult = first, 1
    for n in range(1, layers + 1):
        prev, mult = mult, min(2**n, 8)
        side = (side + 2 - 4) // (2 if n < layers else 1) + 1
        total += conv(batch * side**2, channels * prev, channels * mult, 4)
    side = side + 2 - 4 + 1
    return Forward(total + conv(batch * side**2, channels * mult, 1, 4), first=first)


def dino_heads_forward(batch: int) -> Forward:
    """The DINO discriminator's trainable heads, one per readout over the tokens: a 1-wide conv, a residual
    9-wide conv, a 1-wide conv to one channel; ``first`` is the 1-wide conv that reads the ViT's tokens."""
    # One position per patch (the class token is added to each patch token, not kept as a position).
    w, tokens = DINO_VIT.width, batch * (DINO_INPUT // DINO_VIT.patch) ** 2
    first = linear(tokens, w, w) * DINO_READOUTS
    rest = (linear(tokens, w * DINO_KERNEL, w) + linear(tokens, w, 1)) * DINO_READOUTS
    return Forward(first + rest, first=first)


def discriminator_flops(cfg: TokenizerRunConfig, batch: int, generator_side: bool) -> float:
    """One discriminator pass on ``batch`` images with its backward: on the generator's update (the gradient
    reaches the images; a PatchGAN's or the heads' weight gradients are computed too) or on its own (no gradient
    to the images, none through the frozen ViT)."""
    loss = cfg.loss
    if loss.discriminator == "patchgan":
        net = patchgan_forward(loss.disc_channels, loss.disc_layers, cfg.tokenizer.image_size, batch)
        return net.with_backward(True, generator_side)
    vit = vit_forward(DINO_VIT, DINO_INPUT, batch, DINO_BLOCKS_RUN)
    return vit.with_backward(False, generator_side) + dino_heads_forward(batch).with_backward(True, generator_side)


# --------------------------------------------------------------------------------------------------------------
# One training step, one run
# --------------------------------------------------------------------------------------------------------------

TOKENIZER_PARTS = (
    "cnn_encoder",
    "transformer_encoder",
    "quantizer",
    "transformer_decoder",
    "cnn_decoder",
    "semantic_projector",
    "semantic_teacher",
    "perceptual",
    "discriminator_g",
    "discriminator_d",
)


def steady_state_step(cfg: TokenizerRunConfig) -> int:
    """The first step at which the tokenizer's step stops changing: the GAN on, the shortcut over."""
    return max(cfg.loss.gan_start_step, cfg.loss.shortcut_end_step)


def tokenizer_step_flops(cfg: TokenizerRunConfig, step: int | None = None) -> dict[str, float]:
    """FLOPs of one tokenizer optimizer step on the global batch, per part and in ``total`` (conventions: the
    module's docstring).

    ``step`` (0-based, as the loop counts) picks the phase; None is the steady state after ``loss.gan_start_step``
    (and after the shortcut). Parts: the trained tokenizer's (forward + backward; the CNN decoder twice while the
    shortcut decodes directly), ``semantic_teacher`` (forward only, 0 when its features are cached), ``perceptual``
    (LPIPS-VGG16 or the Inception distance, one call per decoded image set, 0 without the perceptual term),
    ``discriminator_g`` (the discriminator on the generator's update, once the GAN is on) and ``discriminator_d``
    (its own update: the real images and each decoded set). A ``loss.perceptual`` of "auto" must be settled first
    (gigatok.perceptual.resolve_perceptual).
    """
    from gigatok.losses import adversarial_active, shortcut_direct_active
    from gigatok.perceptual import perceptual_active

    at = steady_state_step(cfg) if step is None else step
    tok, b = cfg.tokenizer, cfg.train.batch_size
    decodes = 2 if shortcut_direct_active(cfg, at) else 1
    gan = adversarial_active(cfg, at)
    sem = tok.semantic
    parts = {
        "cnn_encoder": cnn_encoder_forward(tok.cnn, tok.image_size, b).with_backward(True, False),
        "transformer_encoder": transformer_encoder_forward(tok, b).with_backward(True, True),
        "quantizer": quantizer_flops(tok, b),
        "transformer_decoder": transformer_decoder_forward(tok, b).with_backward(True, True),
        "cnn_decoder": decodes * cnn_decoder_forward(tok.cnn, tok.grid_size, b).with_backward(True, True),
        "semantic_projector": semantic_projector_forward(tok, b).with_backward(True, True) if sem.enabled else 0.0,
        "semantic_teacher": semantic_teacher_forward(tok, b).total if sem.enabled and not sem.cache_features else 0.0,
        "perceptual": decodes * perceptual_flops(cfg, b) if perceptual_active(cfg) else 0.0,
        "discriminator_g": decodes * discriminator_flops(cfg, b, generator_side=True) if gan else 0.0,
        "discriminator_d": (1 + decodes) * discriminator_flops(cfg, b, generator_side=False) if gan else 0.0,
    }
    return {**parts, "total": sum(parts.values())}


def ar_forward(model: ARConfig, batch: int, positions: int) -> Forward:
    """The AR model's teacher-forced forward over ``positions`` positions: per block the qkv, output and SwiGLU
    projections and causal attention (the full square), then the output head."""
    w, tokens = model.width, batch * positions
    block = Forward(linear(tokens, w, 4 * w) + 3 * linear(tokens, w, model.ffn_hidden), 4.0 * tokens * positions * w)
    return block * model.depth + Forward(linear(tokens, w, model.vocab_size))


def ar_step_flops(cfg: ARRunConfig) -> float:
    """One AR optimizer step on the global batch: forward and backward over ``num_tokens`` positions, the class
    token first (the input [class, t_0, ..., t_{N-2}] predicts t_0, ..., t_{N-1}); every layer trains and the
    embeddings take gradients, so backward is twice the forward."""
    return ar_forward(cfg.model, cfg.train.batch_size, cfg.model.num_tokens).with_backward(True, True)


def ar_sampling_flops(cfg: ARRunConfig, samples: int, cfg_guidance: bool = True) -> float:
    """Sampling ``samples`` token sequences with the KV cache (gigatok.sampling.sample_tokens): one position a step
    (the class token first, then each sampled token), N steps, attending to every cached position; the batch is
    doubled under classifier-free guidance. Decoding the tokens to pixels (the tokenizer's decoder) is not in it."""
    model, n = cfg.model, cfg.model.num_tokens
    rows = samples * (2 if cfg_guidance else 1)
    w = model.width
    per_position = model.depth * (linear(1, w, 4 * w) + 3 * linear(1, w, model.ffn_hidden)) + linear(
        1, w, model.vocab_size
    )
    attention = model.depth * 4.0 * w * n * (n + 1) / 2  # step i's query against i + 1 keys
    return rows * (n * per_position + attention)


def train_split_size(data: DataConfig) -> int:
    """Images in the training split: the builtin dataset's crops, else ImageNet's (:data:`IMAGENET_TRAIN_IMAGES`)."""
    if data.dataset == "builtin":
        from gigatok.data import sources_for

        return data.crops_per_image * len(sources_for(data.builtin_version))
    return IMAGENET_TRAIN_IMAGES


def tokenizer_phases(cfg: TokenizerRunConfig, dataset_size: int | None = None) -> list[tuple[int, int]]:
    """The tokenizer's schedule (:func:`gigatok.train.steps.tokenizer_total_steps`) as ``(start, end)`` step ranges
    between the phase changes (shortcut over, GAN on): the steps of one range cost the same."""
    steps = tokenizer_total_steps(cfg.train, train_split_size(cfg.data) if dataset_size is None else dataset_size)
    changes = {cfg.loss.shortcut_end_step - 1, cfg.loss.gan_start_step}
    return list(pairwise(sorted({0, steps, *(s for s in changes if 0 < s < steps)})))


def tokenizer_training_flops(cfg: TokenizerRunConfig, dataset_size: int | None = None) -> float:
    """Every step of the tokenizer's schedule, each at its phase (:func:`tokenizer_phases`)."""
    phases = tokenizer_phases(cfg, dataset_size)
    return sum((end - start) * tokenizer_step_flops(cfg, start)["total"] for start, end in phases)


def ar_training_steps(cfg: ARRunConfig, dataset_size: int | None = None) -> int:
    """The AR schedule's steps (:mod:`gigatok.train.steps`) over the token cache of the training split, one row per
    view of each image (gigatok.token_views)."""
    from gigatok.token_views import view_set

    images = train_split_size(cfg.tokenizer.data) if dataset_size is None else dataset_size
    rows = images * len(view_set(cfg.train.views).crops)
    return ar_total_steps(cfg.train, ar_steps_per_epoch(cfg.train, images, rows))


def ar_training_flops(cfg: ARRunConfig, dataset_size: int | None = None) -> float:
    """Every step of the AR schedule (:func:`ar_training_steps`)."""
    return ar_training_steps(cfg, dataset_size) * ar_step_flops(cfg)


def run_training_flops(spec: RunSpec, dataset_size: int | None = None) -> dict[str, float]:
    """Training FLOPs of a run's two stages and their sum: ``tokenizer``, ``ar`` (0 without an AR model) and
    ``total``. ``dataset_size`` overrides the training split's size (:func:`train_split_size`).

    What the configs train, whether the workbench trains them or converts released weights; building the token
    cache (the tokenizer's encoder over the training split's views), filling the semantic-feature cache and the
    evaluations are not training and are left out."""
    tokenizer = tokenizer_training_flops(spec.tokenizer, dataset_size)
    ar = ar_training_flops(spec.ar, dataset_size) if spec.ar is not None else 0.0
    return {"tokenizer": tokenizer, "ar": ar, "total": tokenizer + ar}

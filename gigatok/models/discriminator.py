"""The tokenizer's GAN discriminators: the PatchGAN, and the frozen-DINO discriminator of Table 3's B-L row.

* ``patchgan``: Isola et al. 2017 as taming-transformers and LlamaGen use it (the authors'
  ``discriminator_patchgan.py`` ``NLayerDiscriminator``, kernel 4, BatchNorm).
* ``dino``: the authors' ``discriminator_dino.py`` ``DinoDisc`` (from VAR), used by ``VQ_BL256_dino_disc.yaml``: a
  frozen DINO ViT-S/16 whose token activations before the first block and after blocks 2, 5, 8, 11 each feed a
  small trainable head of spectrally normalised 1-D convolutions over the token sequence; the logits are the
  heads' outputs side by side (B x 5*196). The authors' ``VQLoss`` passes every image through DiffAug (StyleGAN-T's
  translation, colour and cutout augmentation, ``diffaug.py``) before this discriminator; here the module applies
  it itself, so the training loop treats both discriminators alike.

The DINO weights come from the registry's ``dino-vits16`` file; without it, ``allow_substitute=True`` builds the
same ViT randomly initialised with a fixed seed and labels it SUBSTITUTE, as the perceptual loss does.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from gigatok.weights import MissingWeightsError, file_sha256, resolve_weight

if TYPE_CHECKING:  # timm is imported where it is used: importing it takes seconds
    from timm.models.vision_transformer import VisionTransformer

SUBSTITUTE_TAG = "[SUBSTITUTE: random init]"
SUBSTITUTE_SEED = 0
DINO_WEIGHTS = "dino-vits16"

# ImageNet statistics of DINO's own preprocessing, applied to images in [-1, 1].
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------------------------------------
# PatchGAN
# ----------------------------------------------------------------------------------------------------------


class PatchDiscriminator(nn.Module):
    """``layers`` strided conv blocks doubling channels (capped at 8x), then a stride-1 block and a 1-channel map.

    With 64 channels and 3 layers this is the 2.77M-parameter discriminator of the reference.
    """

    def __init__(self, channels: int = 64, layers: int = 3) -> None:
        super().__init__()
        seq: list[nn.Module] = [nn.Conv2d(3, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < layers else 1
            seq += [
                nn.Conv2d(channels * prev, channels * mult, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(channels * mult),
                nn.LeakyReLU(0.2, True),
            ]
        seq.append(nn.Conv2d(channels * mult, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*seq)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ----------------------------------------------------------------------------------------------------------
# DiffAug (the authors' diffaug.py at prob 1.0, cutout 0.2, no warm-up blur, as their VQLoss calls it)
# ----------------------------------------------------------------------------------------------------------


def diff_augment(x: torch.Tensor, prob: float = 1.0, cutout: float = 0.2) -> torch.Tensor:
    """Random translation (up to 1/8 of the side, zero fill), brightness/saturation/contrast, and a cutout square.

    Each of the three is applied with probability ``prob``, drawn once per call; the amounts are per sample. The
    random draws (``torch.rand(3)`` then ``torch.rand(7, B, 1, 1)``) are the authors' in number and order, so the
    same seed gives the same augmentation. Differentiable in ``x``.
    """
    x = x.float()
    translate, colour, cut = (torch.rand(3) <= prob).tolist()
    if not (translate or colour or cut):
        return x
    r = torch.rand(7, x.shape[0], 1, 1, device=x.device)
    if translate:
        x = _translate(x, r[0], r[1])
    if colour:
        x = x + (r[2].unsqueeze(-1) - 0.5)  # brightness
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (r[3].unsqueeze(-1) * 2) + mean  # saturation
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * (r[4].unsqueeze(-1) + 0.5) + mean  # contrast
    if cut and cutout > 0:
        x = x * _cutout_mask(x, r[5], r[6], cutout).unsqueeze(1)
    return x


def _translate(x: torch.Tensor, r_h: torch.Tensor, r_w: torch.Tensor) -> torch.Tensor:
    """Shift each image by a whole number of pixels in [-h/8, h/8] x [-w/8, w/8]; what enters is zero."""
    b, _, h, w = x.shape
    dh, dw = round(h * 0.125), round(w * 0.125)
    shift_h = (r_h * (2 * dh + 1)).floor().long() - dh  # B x 1 x 1
    shift_w = (r_w * (2 * dw + 1)).floor().long() - dw
    # Index a one-pixel zero border: a source row outside the image reads the border.
    rows = (torch.arange(h, device=x.device).view(1, h, 1) + shift_h + 1).clamp(0, h + 1)
    cols = (torch.arange(w, device=x.device).view(1, 1, w) + shift_w + 1).clamp(0, w + 1)
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    padded = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1)
    return padded[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def _cutout_mask(x: torch.Tensor, r_h: torch.Tensor, r_w: torch.Tensor, fraction: float) -> torch.Tensor:
    """B x H x W ones with a zeroed square of side ``fraction`` of the image around a random centre."""
    b, _, h, w = x.shape
    ch, cw = round(h * fraction), round(w * fraction)
    centre_h = (r_h * (h + (1 - ch % 2))).floor().long()  # B x 1 x 1
    centre_w = (r_w * (w + (1 - cw % 2))).floor().long()
    rows = (torch.arange(ch, device=x.device).view(1, ch, 1) + centre_h - ch // 2).clamp(0, h - 1)
    cols = (torch.arange(cw, device=x.device).view(1, 1, cw) + centre_w - cw // 2).clamp(0, w - 1)
    mask = torch.ones(b, h, w, dtype=x.dtype, device=x.device)
    mask[torch.arange(b, device=x.device).view(b, 1, 1), rows, cols] = 0
    return mask


# ----------------------------------------------------------------------------------------------------------
# DINO discriminator
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DinoArch:
    """The frozen ViT and its heads. Defaults: DINO ViT-S/16 and ``DinoDisc``'s arguments as ``VQLoss`` builds it
    (kernel 9, readouts after blocks 2, 5, 8, 11, local batch norm over groups of 8, spectral norm)."""

    width: int = 384
    depth: int = 12
    heads: int = 6
    patch_size: int = 16
    image_size: int = 224  # the ViT's input: larger images are randomly cropped or area-resized, smaller upsampled
    key_depths: tuple[int, ...] = (2, 5, 8, 11)
    kernel_size: int = 9
    virtual_batch: int = 8
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.width % self.heads:
            raise ValueError(f"DinoArch: width {self.width} not divisible by {self.heads} heads")
        if not self.key_depths or not all(0 <= d < self.depth for d in self.key_depths):
            raise ValueError(f"DinoArch: key_depths {self.key_depths} must lie in [0, depth={self.depth})")


def create_dino_vit(arch: DinoArch) -> VisionTransformer:
    """timm's ViT-S/16 (the DINO checkpoint's key layout) with the tanh-approximate GELU that the authors' frozen
    copy uses (``MLPNoDrop``: ``nn.GELU(approximate='tanh')``), randomly initialised."""
    import timm  # deferred: importing timm takes seconds and only this discriminator needs it here

    model = timm.create_model(
        "vit_small_patch16_224",
        pretrained=False,
        num_classes=0,
        act_layer="gelu_tanh",
        img_size=arch.image_size,
        patch_size=arch.patch_size,
        embed_dim=arch.width,
        depth=arch.depth,
        num_heads=arch.heads,
    )
    return cast("VisionTransformer", model)  # what timm builds for a vit_* name


def dino_state_for_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A DINO ViT state dict (the official file, or the authors' frozen copy with its two preprocessing buffers)
    as the ViT loads it, with the key biases zeroed as the authors' loader does (softmax ignores them anyway)."""
    out = {k: v.clone() for k, v in state.items() if k not in ("x_scale", "x_shift")}
    for key, bias in out.items():
        if key.endswith(".attn.qkv.bias"):
            width = bias.numel() // 3
            bias[width : 2 * width] = 0
    return out


class _FrozenDino(nn.Module):
    """The ViT as a feature extractor: never trained, always in eval mode; gradients reach the input."""

    def __init__(self, vit: VisionTransformer, arch: DinoArch) -> None:
        super().__init__()
        self.vit = vit
        self.key_depths = frozenset(arch.key_depths)
        self.last_block = max(arch.key_depths)
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> _FrozenDino:
        return super().train(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """B x C x L readouts (each patch token plus the class token) before the blocks and after each key block."""
        vit = self.vit
        assert vit.cls_token is not None and vit.pos_embed is not None  # DINO's ViT has both
        tokens = vit.patch_embed(x)
        with torch.autocast(x.device.type, enabled=False):
            cls = vit.cls_token.expand(tokens.shape[0], -1, -1)
            tokens = torch.cat((cls, tokens.float()), dim=1) + vit.pos_embed
            readouts = [_readout(tokens)]
        for i, block in enumerate(vit.blocks[: self.last_block + 1]):
            tokens = block(tokens)
            if i in self.key_depths:
                readouts.append(_readout(tokens.float()))
        return readouts


def _readout(tokens: torch.Tensor) -> torch.Tensor:
    return (tokens[:, 1:] + tokens[:, :1]).transpose(1, 2)


class LocalBatchNorm(nn.Module):
    """Batch norm over groups of ``virtual_batch`` samples (statistics over the group and the sequence), no running
    statistics: the authors' ``BatchNormLocal``. The batch must split into equal groups."""

    def __init__(self, channels: int, virtual_batch: int = 8, eps: float = 1e-6) -> None:
        super().__init__()
        self.virtual_batch = virtual_batch
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, length = x.shape
        groups = math.ceil(b / self.virtual_batch)
        if b % groups:
            raise ValueError(
                f"DINO discriminator: batch {b} does not split into {groups} equal groups of at most "
                f"{self.virtual_batch} (use a batch that does, e.g. a multiple of {self.virtual_batch})"
            )
        g = x.float().view(groups, b // groups, c, length)
        mean = g.mean(dim=(1, 3), keepdim=True)
        var = g.var(dim=(1, 3), keepdim=True, unbiased=False)
        g = (g - mean) / torch.sqrt(var + self.eps)
        g = g * self.weight[None, :, None] + self.bias[None, :, None]
        return g.view(b, c, length)


class _Residual(nn.Module):
    """(fn(x) + x) / sqrt(2), keeping the residual stream's scale."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.fn(x) + x) * (1 / math.sqrt(2))


def _sn_conv(c_in: int, c_out: int, kernel: int) -> nn.Conv1d:
    # Circular padding: the token sequence wraps around, as in the authors' heads.
    conv = nn.Conv1d(c_in, c_out, kernel, padding=kernel // 2, padding_mode="circular")
    return nn.utils.spectral_norm(conv, n_power_iterations=1, eps=1e-12, dim=0)


def _conv_block(arch: DinoArch, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        _sn_conv(arch.width, arch.width, kernel),
        LocalBatchNorm(arch.width, arch.virtual_batch, arch.norm_eps),
        nn.LeakyReLU(0.2, inplace=True),
    )


def _head(arch: DinoArch) -> nn.Sequential:
    residual = _Residual(_conv_block(arch, arch.kernel_size))
    return nn.Sequential(_conv_block(arch, 1), residual, _sn_conv(arch.width, 1, 1))


class DinoDiscriminator(nn.Module):
    """Frozen DINO ViT plus one trainable head per readout; ``forward`` on images in [-1, 1] gives B x (n*L) logits.

    ``augment`` applies :func:`diff_augment` to every input first, as the authors' ``VQLoss`` does to both real and
    reconstructed images. The state dict is the trainable heads only, with the authors' ``DinoDisc`` keys
    (``heads.*``; they hold the ViT outside the module): checkpoints do not repeat the frozen pretrained file, and
    the authors' discriminator checkpoints load as they are. The ViT (timm's = DINO's layout) is ``backbone.vit``.
    """

    x_scale: torch.Tensor  # buffers, registered in __init__
    x_shift: torch.Tensor

    def __init__(
        self,
        vit: VisionTransformer,
        arch: DinoArch = DinoArch(),
        augment: bool = True,
        substitute: bool = False,
        network_name: str = "dino-vits16",
    ) -> None:
        super().__init__()
        self.arch = arch
        self.augment = augment
        self.substitute = substitute
        self.network_name = network_name
        self.backbone = _FrozenDino(vit, arch)
        self.heads = nn.ModuleList(_head(arch) for _ in range(len(arch.key_depths) + 1))
        # x in [-1, 1] -> ((x + 1) / 2 - mean) / std, as one scale and shift (the authors' x_scale, x_shift).
        mean, std = torch.tensor(_IMAGENET_MEAN), torch.tensor(_IMAGENET_STD)
        self.register_buffer("x_scale", (0.5 / std).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("x_shift", ((0.5 - mean) / std).reshape(1, 3, 1, 1), persistent=False)
        self.register_state_dict_post_hook(_drop_backbone)
        self.register_load_state_dict_post_hook(_backbone_not_missing)

    def sample_crop(self, x: torch.Tensor) -> tuple[int, int] | None:
        """Where to crop a larger-than-input image, or None to resize it: a crop half of the time, as the authors'
        ``FrozenDINOSmallNoDrop`` (which draws the coin from Python's ``random``; here it is torch's)."""
        h, w = x.shape[-2:]
        size = self.arch.image_size
        if h > size and w > size and torch.rand(()).item() <= 0.5:
            top = int(torch.randint(0, h - size + 1, (1,)).item())
            left = int(torch.randint(0, w - size + 1, (1,)).item())
            return top, left
        return None

    def view(self, x: torch.Tensor, crop_at: tuple[int, int] | None) -> torch.Tensor:
        """Normalised ViT input: the crop at ``crop_at``, else the image area-resized (larger) or bicubic (not)."""
        size = self.arch.image_size
        with torch.autocast(x.device.type, enabled=False):
            x = self.x_scale * x.float() + self.x_shift
            if crop_at is not None:
                top, left = crop_at
                return x[..., top : top + size, left : left + size]
            mode = "area" if x.shape[-2] > size else "bicubic"
            return F.interpolate(x, size=(size, size), mode=mode)

    def logits(self, x: torch.Tensor, crop_at: tuple[int, int] | None) -> torch.Tensor:
        """The discriminator on ``x`` as given (no augmentation) at a fixed view."""
        readouts = self.backbone(self.view(x, crop_at))
        return torch.cat([head(r).view(x.shape[0], -1) for head, r in zip(self.heads, readouts, strict=True)], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.augment:
            x = diff_augment(x)
        return self.logits(x, self.sample_crop(x))


def _is_backbone_key(key: str) -> bool:
    return key.startswith("backbone.") or ".backbone." in key


def _drop_backbone(module: nn.Module, state: dict[str, torch.Tensor], prefix: str, metadata: object) -> None:
    for key in [k for k in state if k.startswith(prefix) and _is_backbone_key(k[len(prefix) :])]:
        del state[key]


def _backbone_not_missing(module: nn.Module, incompatible: Any) -> None:
    # The frozen ViT is built from the registry file, never from a checkpoint: its absence there is expected.
    incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if not _is_backbone_key(k)]


def build_dino_discriminator(
    weights_dir: str | os.PathLike[str] | None = None, allow_substitute: bool = False, arch: DinoArch = DinoArch()
) -> DinoDiscriminator:
    """The DINO discriminator with the registry's ViT-S/16; a labelled random-ViT SUBSTITUTE if it is absent and
    ``allow_substitute``. A file with the wrong hash always raises."""
    try:
        path = resolve_weight(DINO_WEIGHTS, weights_dir)
    except MissingWeightsError as err:
        if not allow_substitute:
            raise
        warnings.warn(
            f"the DINO discriminator uses a randomly initialised ViT-S/16 {SUBSTITUTE_TAG}: {err}", stacklevel=2
        )
        with torch.random.fork_rng(devices=[]):  # a fixed stand-in, without disturbing the run's random stream
            torch.manual_seed(SUBSTITUTE_SEED)
            vit = create_dino_vit(arch)
        return DinoDiscriminator(vit, arch, substitute=True, network_name=f"dino-vits16 {SUBSTITUTE_TAG}")
    vit = create_dino_vit(arch)
    vit.load_state_dict(dino_state_for_timm(torch.load(path, map_location="cpu", weights_only=True)), strict=True)
    # No public sha256 pins this file: the name carries the hash of the copy used, and the run records the name.
    return DinoDiscriminator(vit, arch, network_name=f"{DINO_WEIGHTS} (sha256 {file_sha256(path)})")


def build_discriminator(
    kind: str,
    *,
    channels: int = 64,
    layers: int = 3,
    weights_dir: str | os.PathLike[str] | None = None,
    allow_substitute: bool = False,
) -> PatchDiscriminator | DinoDiscriminator:
    """The discriminator a run's ``loss.discriminator`` names (``channels``/``layers`` size the PatchGAN)."""
    if kind == "patchgan":
        return PatchDiscriminator(channels, layers)
    if kind == "dino":
        return build_dino_discriminator(weights_dir, allow_substitute)
    raise ValueError(f"loss.discriminator: unknown discriminator {kind!r}; known: patchgan, dino")

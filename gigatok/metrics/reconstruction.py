"""Reconstruction metrics of a tokenizer over a whole validation set, streamed in batches.

:func:`evaluate_reconstruction` encodes and decodes every image once and reports, with provenance:

* PSNR and SSIM (:mod:`gigatok.metrics.pixel`), mean over images, and beside them ``ssim_authors``, SSIM as the
  authors' evaluation computes it (7x7 uniform window, data range 2.0), a comparison number only;
* LPIPS (VGG) from :mod:`gigatok.perceptual`, mean over images; whether its VGG trunk was a random SUBSTITUTE;
  without the VGG16 file (and no substitute asked for) ``lpips`` is None and the provenance says why;
* codebook usage (fraction of codes used at least once) and perplexity (exp of the entropy of the code
  histogram) over the whole set, not averaged per batch: a per-batch figure is capped by the batch's token count;
* rFID of the reconstructions against the same validation images (Inception features streamed; the validation
  side can be cached with :func:`~gigatok.metrics.generation.reference_summary`'s key, and is shared with gFID
  evaluations against the same split).

Every metric sees the images as they would be saved: reconstructions clamped to [-1, 1] and quantised to uint8,
like the originals. Nothing but per-set sums and FID moments is kept, so memory does not grow with the set.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm

from gigatok.metrics.accumulators import FeatureMoments, FeatureReservoir
from gigatok.metrics.features import FeatureNetwork, load_feature_network
from gigatok.metrics.generation import (
    DEFAULT_PRC_CAPACITY,
    FeatureSummary,
    frechet_distance,
    network_provenance,
    reference_cache_path,
)
from gigatok.metrics.images import dataset_length, describe_dataset, image_batches, to_uint8
from gigatok.metrics.pixel import psnr, ssim, ssim_authors
from gigatok.models.tokenizer import GigaTokenizer
from gigatok.perceptual import LPIPSUnavailable, PerceptualLoss, lpips_for_metrics

__all__ = ["codebook_statistics", "evaluate_reconstruction", "psnr", "ssim"]


def codebook_statistics(counts: torch.Tensor) -> tuple[float, float]:
    """(usage, perplexity) of a code histogram: share of codes used at least once, exp(entropy)."""
    counts = counts.double()
    total = counts.sum()
    if total <= 0:
        raise ValueError("empty code histogram")
    p = counts / total
    entropy = -(p[p > 0] * p[p > 0].log()).sum()
    return float((counts > 0).double().mean()), float(entropy.exp())


class _SetMeans:
    """Running sums of per-image values."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, count: int, **values: torch.Tensor) -> None:
        self.count += count
        for name, v in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(v.double().sum())

    def means(self) -> dict[str, float]:
        return {name: total / self.count for name, total in self.sums.items()}


def _lpips_provenance(perceptual: PerceptualLoss | LPIPSUnavailable) -> dict[str, Any]:
    if isinstance(perceptual, LPIPSUnavailable):
        return {"network": None, "substitute": False, "unavailable": perceptual.reason}
    return {"network": perceptual.network_name, "substitute": perceptual.substitute}


@torch.inference_mode()
def evaluate_reconstruction(
    tokenizer: GigaTokenizer,
    dataset: Dataset,
    *,
    batch_size: int = 32,
    max_images: int | None = None,
    description: str | None = None,
    rfid: bool = True,
    feature_network: FeatureNetwork | None = None,
    perceptual: PerceptualLoss | LPIPSUnavailable | None = None,
    weights_dir: str | os.PathLike[str] | None = None,
    allow_substitute_lpips: bool = False,
    reference_cache_dir: str | os.PathLike[str] | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """PSNR, SSIM, LPIPS, codebook usage/perplexity and rFID of ``tokenizer`` on ``dataset`` (images in [-1, 1]).

    ``max_images`` evaluates the first images only (the description says so). ``feature_network`` defaults to
    :func:`~gigatok.metrics.features.load_feature_network` ("auto", 299 px, pool3) on the tokenizer's device;
    ``perceptual`` to LPIPS-VGG from the registry (a random-trunk SUBSTITUTE only with
    ``allow_substitute_lpips``, recorded in the result); without the VGG16 file LPIPS is unavailable: ``lpips`` is
    None, never a number from a random network. With ``reference_cache_dir`` the validation images'
    Inception statistics are read from (or written to) the cache shared with gFID evaluations.
    """
    description = description or describe_dataset(dataset)
    if max_images is not None and max_images < dataset_length(dataset):
        dataset = Subset(dataset, range(max_images))
        description = f"first {max_images} of {description}"
    device = next(tokenizer.parameters()).device
    if perceptual is None:
        perceptual = lpips_for_metrics(weights_dir, allow_substitute=allow_substitute_lpips)
    lpips_net = perceptual.to(device) if isinstance(perceptual, PerceptualLoss) else None
    fid = None
    if rfid:
        if feature_network is None:
            feature_network = load_feature_network("auto", weights_dir, device=device)
        fid = _RfidAccumulator(feature_network, description, reference_cache_dir)

    counts, means = _stream_reconstructions(
        tokenizer, dataset, device, lpips_net, fid, batch_size=batch_size, num_workers=num_workers, progress=progress
    )

    usage, perplexity = codebook_statistics(counts)
    result: dict[str, Any] = {
        "lpips": None,  # unavailable unless computed below
        **means.means(),
        "codebook_usage": usage,
        "codebook_perplexity": perplexity,
        "rfid": None,
        "count": means.count,
        "lpips_network": perceptual.network_name,
    }
    provenance = _provenance(tokenizer, description, means.count, perceptual)
    if fid is not None:
        result["rfid"], provenance["rfid"] = fid.finish()
    result["provenance"] = provenance
    return result


def _stream_reconstructions(
    tokenizer: GigaTokenizer,
    dataset: Dataset,
    device: torch.device,
    lpips_net: PerceptualLoss | None,
    fid: _RfidAccumulator | None,
    *,
    batch_size: int,
    num_workers: int,
    progress: bool,
) -> tuple[torch.Tensor, _SetMeans]:
    """Encode and decode every image once, the tokenizer in eval mode (its mode restored afterwards; called under
    :func:`evaluate_reconstruction`'s inference mode): the code histogram over the whole set and the running sums of
    the per-image scores; ``fid`` gets both sides' images."""
    codebook_size = tokenizer.cfg.quantizer.codebook_size
    counts = torch.zeros(codebook_size, dtype=torch.long)
    means = _SetMeans()
    was_training = tokenizer.training
    tokenizer.eval()
    try:
        with tqdm(
            total=dataset_length(dataset), unit="img", desc="reconstruction metrics", disable=not progress, leave=False
        ) as bar:
            for images in image_batches(dataset, batch_size, num_workers):
                x = images.to(device, torch.float32)
                quant = tokenizer.encode(x)
                recon = tokenizer.decode(quant.quantized)
                counts += torch.bincount(quant.indices.flatten().cpu(), minlength=codebook_size)

                real_u8, recon_u8 = to_uint8(x), to_uint8(recon)
                means.add(x.shape[0], **_image_scores(real_u8, recon_u8, lpips_net))
                if fid is not None:
                    fid.update(real_u8, recon_u8)
                bar.update(x.shape[0])
    finally:
        tokenizer.train(was_training)
    return counts, means


def _image_scores(
    real_u8: torch.Tensor, recon_u8: torch.Tensor, lpips_net: PerceptualLoss | None
) -> dict[str, torch.Tensor]:
    """Per-image PSNR, SSIM and the authors' SSIM of a uint8 batch, and LPIPS (on [-1, 1] again) where it is on."""
    scores = {
        "psnr": psnr(real_u8, recon_u8),
        "ssim": ssim(real_u8, recon_u8),
        "ssim_authors": ssim_authors(real_u8, recon_u8),
    }
    if lpips_net is not None:
        scores["lpips"] = lpips_net(real_u8.float() / 127.5 - 1.0, recon_u8.float() / 127.5 - 1.0)
    return scores


class _RfidAccumulator:
    """rFID's two sides as batches arrive: the reconstructions' moments, and the validation images' unless a cached
    summary of them exists (then read from, or written to, ``reference_cache_dir``)."""

    def __init__(
        self, network: FeatureNetwork, description: str, reference_cache_dir: str | os.PathLike[str] | None
    ) -> None:
        self.network, self.description = network, description
        dim = int(network.info.layer)
        self.recon_moments = FeatureMoments(dim)
        self.reference: FeatureSummary | None = None
        self.reference_path = None
        if reference_cache_dir is not None:
            self.reference_path = reference_cache_path(
                reference_cache_dir, network.info, description, DEFAULT_PRC_CAPACITY, seed=0
            )
            if self.reference_path.is_file():
                self.reference = FeatureSummary.load(self.reference_path)
        self.real_moments = self.real_reservoir = None
        if self.reference is None:
            self.real_moments = FeatureMoments(dim)
            self.real_reservoir = FeatureReservoir(DEFAULT_PRC_CAPACITY, dim, seed=0)

    def update(self, real_u8: torch.Tensor, recon_u8: torch.Tensor) -> None:
        self.recon_moments.update(self.network(recon_u8)[0])
        if self.real_moments is not None:
            real_features = self.network(real_u8)[0]
            self.real_moments.update(real_features)
            assert self.real_reservoir is not None  # set with real_moments
            self.real_reservoir.update(real_features)

    def finish(self) -> tuple[float, dict[str, Any]]:
        """rFID and its provenance; the reference summary is cached on the way when it was computed here."""
        info, reference = self.network.info, self.reference
        if reference is None:
            assert self.real_moments is not None and self.real_reservoir is not None  # set when there is no reference
            reference = FeatureSummary(
                network=info,
                description=self.description,
                count=self.real_moments.count,
                mean=self.real_moments.mean,
                covariance=self.real_moments.covariance,
                prc_features=self.real_reservoir.features,
                prc_seed=0,
            )
            if self.reference_path is not None:
                reference = FeatureSummary.load(reference.save(self.reference_path))
        moments = self.recon_moments
        recon_summary = FeatureSummary(
            network=info,
            description=f"reconstructions of {self.description}",
            count=moments.count,
            mean=moments.mean,
            covariance=moments.covariance,
            prc_features=np.zeros((0, moments.dim), np.float32),
            prc_seed=0,
        )
        provenance = {
            "feature_network": network_provenance(info),
            "inception_input_size": info.input_size,
            "reference": {
                "description": reference.description,
                "count": reference.count,
                "cache": reference.cache_path,
            },
            "samples": {"description": recon_summary.description, "count": recon_summary.count},
        }
        return frechet_distance(recon_summary, reference), provenance


def _provenance(
    tokenizer: GigaTokenizer, description: str, count: int, perceptual: PerceptualLoss | LPIPSUnavailable
) -> dict[str, Any]:
    """What each reconstruction metric was computed on and how (rFID's part is added by the accumulator)."""
    cfg = tokenizer.cfg
    return {
        "dataset": description,
        "count": count,
        "tokenizer": {
            "name": cfg.name,
            "kind": cfg.kind,
            "image_size": cfg.image_size,
            "num_tokens": cfg.num_tokens,
            "codebook_size": cfg.quantizer.codebook_size,
        },
        "images": "originals and reconstructions (clamped to [-1, 1]) quantised to uint8, round((x + 1) * 127.5), "
        "as saved to PNG, before every metric",
        "psnr": "per image over all RGB pixels, data range 255 on uint8 (= 1.0 on [0, 1]); mean over images",
        "ssim": "Wang et al.: Gaussian 11x11 window, sigma 1.5, K1 0.01, K2 0.03, data range 255 on uint8, valid "
        "positions, mean over channels; mean over images",
        "ssim_authors": "for comparison with the paper only: SSIM as tokenizer/tokenizer_image/reconstruction_ddp.py "
        "computes it (scikit-image defaults: 7x7 uniform window, sample covariance; data_range=2.0 on [0, 1] images, "
        "which inflates it); mean over images",
        "lpips": _lpips_provenance(perceptual),
        "codebook": f"usage and perplexity of the code histogram over all {count} images",
    }

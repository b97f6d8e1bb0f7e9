"""What reconstruction quality the tiny profile's precision and recall can see: real crops degraded by a known
amount (downsampled to r px and back), scored like a run's generation stage, beside a trained tokenizer's
reconstructions when ``--tokenizer`` names its run folder.

    python tools/prc_calibration.py                                   the built-in set at 32 px, r = 32, 16, 12, 8
    python tools/prc_calibration.py --tokenizer runs/tokenizer-92d91a25a3c0
    python tools/prc_calibration.py --patch-codes 256,1024     patch k-means with the tokenizers' bits

Generated samples cannot score better than the reconstructions of the tokenizer that decodes them, so this answers
"how good must a tokenizer be before recall can leave 0?". The patch k-means rows answer "what do the tiny
tokenizers' bits allow?": each grid cell's pixels (a 4x4 patch at 32 px on the 8x8 grid) replaced by the nearest
of K centroids fitted by k-means to every training crop's patches, one code of K a cell as a tokenizer spends, with
no encoder, decoder or context. Samples: ``--images`` training crops (seeded draw); reference: the first
``--images`` validation crops, as the generation stage's reference at tiny. Features: the profile's FID network
(TF-Inception at 299 px), precision and recall with k = 3 (Kynkaanniemi et al.).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from gigatok.config import TINY, ConfigError

TOKEN_GRID = math.isqrt(TINY.num_tokens)  # the 2D tokenizers' grid side (8), whatever the image size


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over images of each image's PSNR (gigatok.metrics.pixel.psnr), images in [-1, 1]."""
    from gigatok.metrics.pixel import psnr as per_image_psnr

    return float(per_image_psnr(x.clamp(-1, 1), y, data_range=2.0).mean())


def degrade(images: torch.Tensor, size: int) -> torch.Tensor:
    """Area-downsample to ``size`` px and bilinearly back: detail finer than ``size`` px removed, colours kept."""
    full = images.shape[-1]
    if size >= full:
        return images
    small = F.interpolate(images, size=size, mode="area")
    return F.interpolate(small, size=full, mode="bilinear", align_corners=False)


def patches(images: torch.Tensor, cell: int) -> torch.Tensor:
    """Non-overlapping ``cell`` x ``cell`` patches of NCHW images as rows (N * cells, C * cell * cell)."""
    _, c, h, w = images.shape
    if h % cell or w % cell:
        raise ValueError(f"a {cell} px patch grid does not tile {h}x{w} images")
    return images.unfold(2, cell, cell).unfold(3, cell, cell).permute(0, 2, 3, 1, 4, 5).reshape(-1, c * cell * cell)


def from_patches(rows: torch.Tensor, shape: torch.Size, cell: int) -> torch.Tensor:
    """The inverse of :func:`patches` for images of ``shape``."""
    n, c, h, w = shape
    grid = rows.reshape(n, h // cell, w // cell, c, cell, cell).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(n, c, h, w)


def patch_quantizer(
    train_images: torch.Tensor, cell: int, codes: int, seed: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """k-means with ``codes`` centroids on every ``cell`` px patch of ``train_images``; returns the map replacing each
    patch of a batch by its nearest centroid."""
    from sklearn.cluster import KMeans

    kmeans = KMeans(codes, n_init=1, random_state=seed).fit(patches(train_images, cell).numpy())
    centroids = torch.from_numpy(kmeans.cluster_centers_).to(train_images.dtype)

    def quantize(images: torch.Tensor) -> torch.Tensor:
        nearest = torch.cdist(patches(images, cell), centroids).argmin(dim=1)
        return from_patches(centroids[nearest], images.shape, cell)

    return quantize


def int_list(text: str) -> list[int]:
    """A comma-separated list of integers; "" is the empty list."""
    return [int(v) for v in text.split(",")] if text else []


def checked_lists(args: argparse.Namespace) -> tuple[list[int], list[int]]:
    """``--sizes`` and ``--patch-codes`` as integers, every argument checked; ValueError with a one-line message
    naming the flag at fault."""
    lists = []
    for flag, text in (("--sizes", args.sizes), ("--patch-codes", args.patch_codes)):
        try:
            lists.append(int_list(text))
        except ValueError:
            raise ValueError(f"{flag}: not a comma-separated list of integers: {text!r}") from None
    sizes, patch_codes = lists
    if any(k < 2 for k in patch_codes):
        raise ValueError(f"--patch-codes: a codebook needs at least 2 codes, got {args.patch_codes!r}")
    if patch_codes and args.image_size % TOKEN_GRID:
        raise ValueError(
            f"--image-size: {args.image_size} px is not a multiple of the {TOKEN_GRID}x{TOKEN_GRID} token grid"
        )
    if args.images <= 3:
        raise ValueError(f"--images: precision and recall with k = 3 need more than 3 images, got {args.images}")
    return sizes, patch_codes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image-size", type=int, default=TINY.image_size)
    ap.add_argument("--sizes", default="32,16,12,8", help="comma-separated sizes r to degrade to (px)")
    ap.add_argument("--images", type=int, default=TINY.eval.gen_samples, help="samples and reference images")
    ap.add_argument("--tokenizer", help="a trained tokenizer's run folder: also score its reconstructions")
    ap.add_argument(
        "--patch-codes",
        default="",
        help="comma-separated codebook sizes K: also score patch k-means with K codes a grid cell (e.g. 256)",
    )
    ap.add_argument("--weights-dir", help="pretrained files (default $GIGATOK_WEIGHTS_DIR)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        sizes, patch_codes = checked_lists(args)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2

    from gigatok.data import build_dataset
    from gigatok.metrics.features import load_feature_network
    from gigatok.metrics.generation import frechet_distance, precision_recall, summarize_stream

    device = torch.device("cpu")
    try:
        train = build_dataset(TINY.data, "train", args.image_size, seed=args.seed, augment=False)
        val = build_dataset(TINY.data, "val", args.image_size, seed=args.seed, augment=False)
    except (ConfigError, ValueError) as err:
        print(f"built-in dataset: {err}", file=sys.stderr)
        return 2
    count = min(args.images, len(train), len(val))
    reference_images = torch.stack([val[i][0] for i in range(count)])
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))[:count]
    images = torch.stack([train[int(i)][0] for i in order])
    network = load_feature_network("auto", args.weights_dir, device=device, input_size=TINY.eval.inception_input)

    def summary(batch: torch.Tensor, description: str, seed: int) -> object:
        return summarize_stream(iter([batch]), network, description, batch_size=len(batch), seed=seed, progress=False)

    reference = summary(reference_images, f"first {count} validation crops", 0)
    rows: list[tuple[str, torch.Tensor]] = [
        (f"training crops at {s} px" if s < args.image_size else "training crops", degrade(images, s)) for s in sizes
    ]
    cell = args.image_size // TOKEN_GRID
    every_training_crop = torch.stack([train[i][0] for i in range(len(train))]) if patch_codes else images
    for codes in patch_codes:
        quantize = patch_quantizer(every_training_crop, cell, codes, args.seed)
        rows.append((f"patch k-means, {codes} codes a {cell}x{cell} cell", quantize(images)))
    if args.tokenizer:
        from gigatok.train.trained import load_trained_tokenizer

        tokenizer = load_trained_tokenizer(args.tokenizer, device)
        with torch.no_grad():
            name = f"reconstructions ({Path(args.tokenizer).name})"
            rows.append((name, tokenizer(images).reconstruction.clamp(-1, 1)))
    print(
        f"{count} samples against the first {count} validation crops, {network.info.title} at "
        f"{TINY.eval.inception_input} px, k = 3"
    )
    print(f"{'samples':48s} {'PSNR dB':>8s} {'precision':>10s} {'recall':>7s} {'FID':>7s}")
    for name, batch in rows:
        s = summary(batch, name, 1)
        p, r = precision_recall(s, reference)
        value = "exact" if batch is images else f"{psnr(batch, images):.2f}"
        print(f"{name:48s} {value:>8s} {p:10.3f} {r:7.3f} {frechet_distance(s, reference):7.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

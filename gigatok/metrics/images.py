"""Image batches for the metrics: value ranges, uint8 quantisation, streaming and describing a dataset.

Every metric here consumes images batch by batch from an iterable (a generator, a DataLoader, or a Dataset that
is wrapped in one), so the number of images in memory never depends on the size of the set. A batch is a
``B x 3 x H x W`` tensor, or a ``(images, labels, ...)`` tuple/list whose first element is one (what a DataLoader
over this project's datasets yields).

Value ranges: uint8 tensors are always read as 0..255; float tensors are read in the declared ``value_range``,
``"[-1,1]"`` by default (the range of the datasets and of the tokenizer's reconstructions) or ``"[0,1]"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sized
from typing import Any, Literal, cast

import torch
from torch.utils.data import DataLoader, Dataset

ValueRange = Literal["[-1,1]", "[0,1]"]
VALUE_RANGES: tuple[str, ...] = ("[-1,1]", "[0,1]")

ImageSource = Iterable[Any] | Dataset


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"expected a B x 3 x H x W image batch, got {shape}")


def to_unit_float(images: torch.Tensor, value_range: ValueRange = "[-1,1]") -> torch.Tensor:
    """A batch as float32 in [0, 1] (clamped: decoders overshoot their range)."""
    _check_images(images)
    if images.dtype == torch.uint8:
        return images.to(torch.float32) / 255.0
    if not images.is_floating_point():
        raise ValueError(f"image batches must be uint8 or floating point, got {images.dtype}")
    if value_range not in VALUE_RANGES:
        raise ValueError(f"unknown value range {value_range!r}; known: {VALUE_RANGES}")
    x = images.to(torch.float32)
    if value_range == "[-1,1]":
        x = (x + 1.0) / 2.0
    return x.clamp(0.0, 1.0)


def to_uint8(images: torch.Tensor, value_range: ValueRange = "[-1,1]") -> torch.Tensor:
    """A batch quantised to uint8 as an image file would store it: round(255 x), clamped.

    For [-1, 1] data this is round((x + 1) * 127.5), which inverts the datasets' ``u / 127.5 - 1`` exactly.
    """
    if images.dtype == torch.uint8:
        _check_images(images)
        return images
    return torch.round(to_unit_float(images, value_range) * 255.0).to(torch.uint8)


def image_batches(source: ImageSource, batch_size: int = 64, num_workers: int = 0) -> Iterator[torch.Tensor]:
    """The image tensors of ``source`` one batch at a time.

    A map-style Dataset (has ``__len__`` and ``__getitem__``, like this project's datasets) is read in order
    through a DataLoader of ``batch_size`` (``num_workers`` decode in parallel); any other iterable is taken to
    yield batches already, and may be a generator of unknown length. Labels and other tuple members are dropped.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batches: Iterable[Any]
    if isinstance(source, Dataset) and hasattr(source, "__len__"):
        batches = DataLoader(source, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    else:
        batches = cast(Iterable[Any], source)  # an iterable (an IterableDataset too), as the docstring says
    for item in batches:
        images = item[0] if isinstance(item, tuple | list) else item
        _check_images(images)
        yield images


def dataset_length(dataset: Dataset) -> int:
    """``len(dataset)`` of a map-style dataset: torch's ``Dataset`` declares no ``__len__``, though this project's
    datasets (and ``Subset``) all have one."""
    return len(cast(Sized, dataset))


def source_length(source: ImageSource) -> int | None:
    """Number of images a source will yield, when it says so (a Dataset, a DataLoader); None for generators."""
    if isinstance(source, Dataset) and hasattr(source, "__len__"):
        return len(source)
    if isinstance(source, DataLoader) and hasattr(source.dataset, "__len__"):
        return len(source.dataset)
    return None


def describe_dataset(dataset: Any) -> str:
    """A one-line description of a dataset for provenance: which data, split, size and how many images.

    The reference set changes rFID by a factor of two or more (validation vs train images, 32 vs 256 px, 1k vs
    50k images), so every FID records this string.
    """
    name = type(dataset).__name__
    count = len(dataset) if hasattr(dataset, "__len__") else "?"
    if name == "BuiltinImages":
        return (
            f"builtin {dataset.split} {dataset.image_size}px, {count} images "
            f"({dataset.crops_per_source} crops/source, seed {dataset.seed}, sources {dataset.fingerprint})"
        )
    if name == "ImageFolderDataset":
        return f"imagefolder {dataset.root}/{dataset.split} {dataset.image_size}px ADM centre crop, {count} images"
    return f"{name}, {count} images"

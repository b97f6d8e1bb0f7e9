"""Datasets: the ImageNet-style image folder and the built-in offline photo dataset."""

from __future__ import annotations

import os

from gigatok.config import DataConfig
from gigatok.data.augment import train_crop, train_transform
from gigatok.data.builtin import ALL_SOURCES, SOURCES, BuiltinImages, BuiltinSource, sources_for
from gigatok.data.errors import DataError
from gigatok.data.imagefolder import ImageFolderDataset
from gigatok.data.transforms import adm_center_crop, adm_random_crop

DATA_ROOT_ENV = "GIGATOK_DATA_ROOT"

__all__ = [
    "ALL_SOURCES",
    "DATA_ROOT_ENV",
    "SOURCES",
    "BuiltinImages",
    "BuiltinSource",
    "DataError",
    "ImageFolderDataset",
    "adm_center_crop",
    "adm_random_crop",
    "build_dataset",
    "resolve_data_root",
    "sources_for",
    "train_crop",
    "train_transform",
]


def resolve_data_root(data_cfg: DataConfig) -> str:
    """``data_cfg.root``, else $GIGATOK_DATA_ROOT; read at open time, since the root is machine-local."""
    root = data_cfg.root or os.environ.get(DATA_ROOT_ENV)
    if not root:
        raise DataError(
            f"imagefolder dataset needs a root: set data.root or the {DATA_ROOT_ENV} environment variable "
            "to a folder holding train/ and val/"
        )
    return root


def build_dataset(
    data_cfg: DataConfig, split: str, image_size: int, seed: int = 0, *, augment: bool = False
) -> BuiltinImages | ImageFolderDataset:
    """The dataset ``data_cfg`` names, for ``split`` ('train' or 'val'); every one exposes ``.num_classes``.

    ``seed`` picks the builtin dataset's crops; the image folder is deterministic and ignores it. ``augment``
    (training split only) cuts image-folder images with ``data_cfg.train_crop`` instead of the centre crop; flips
    are left to the caller. The builtin dataset's precomputed crops are never re-cropped.
    """
    if augment and split != "train":
        raise DataError(f"augmentation is for the training split only, not {split!r}")
    if data_cfg.dataset == "builtin":
        return BuiltinImages(split, image_size, data_cfg.crops_per_image, seed=seed, version=data_cfg.builtin_version)
    if data_cfg.dataset == "imagefolder":
        crop = train_crop(data_cfg, image_size) if augment and data_cfg.train_crop != "center" else None
        return ImageFolderDataset(resolve_data_root(data_cfg), split, image_size, crop=crop)
    raise DataError(f"unknown dataset {data_cfg.dataset!r}")

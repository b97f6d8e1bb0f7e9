"""ImageNet-style folder dataset: ``root/<split>/<class>/<image>``, ADM centre crop (or a training crop), values in
[-1, 1]."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from gigatok.data.check import IMAGE_SUFFIXES, class_folders
from gigatok.data.errors import DataError
from gigatok.data.transforms import adm_center_crop, to_unit_range, uint8_to_tensor


def _is_image(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES


class ImageFolderDataset(Dataset):
    """Images under ``root/<split>/<class>/``; labels index the sorted class names.

    The class list comes from ``root/train`` when it exists, whatever the split, so that a class keeps its
    label in every split even if the validation folder lacks some classes; a validation class unknown to
    train is an error. Without a train folder (evaluation-only data) the split's own folders define it.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        image_size: int,
        crop: Callable[[Image.Image, random.Random | None], Image.Image] | None = None,
    ) -> None:
        """``crop`` replaces the centre crop (training augmentation); it draws from the RNG :meth:`item` gives it."""
        if image_size < 1:
            raise DataError(f"image folder: image_size must be >= 1, got {image_size}")
        self.root = Path(root)
        self.split = split
        self.image_size = image_size
        self.crop = crop
        if not self.root.is_dir():
            raise DataError(f"image folder root does not exist or is not a folder: {self.root}")
        split_dir = self.root / split
        if not split_dir.is_dir():
            raise DataError(f"image folder split {split!r} missing: {split_dir}")

        train_dir = self.root / "train"
        self.classes = class_folders(train_dir if train_dir.is_dir() else split_dir)
        index = {name: i for i, name in enumerate(self.classes)}
        self.samples: list[tuple[Path, int]] = []
        for name in class_folders(split_dir):
            if name not in index:
                raise DataError(f"image folder class not in {train_dir}: {split_dir / name}")
            files = sorted(p for p in (split_dir / name).iterdir() if _is_image(p))
            self.samples.extend((path, index[name]) for path in files)
        if not self.samples:
            raise DataError(f"image folder split has no images (expected {split_dir}/<class>/<image>): {split_dir}")
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> Image.Image:
        """The image at ``index`` decoded to RGB; DataError names the file if it cannot be read."""
        path = self.samples[index][0]
        try:
            with Image.open(path) as image:
                # convert() forces the full decode here, so truncated files fail inside the try.
                return image.convert("RGB")
        # PIL reports damage as OSError (truncated, unidentified), or SyntaxError / EOFError / ValueError
        # from some format plugins.
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
            message = str(exc).replace("\n", " ")
            raise DataError(f"cannot read image {path}: {type(exc).__name__}: {message}") from exc

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.item(index)

    def item(self, index: int, rng: random.Random | None = None) -> tuple[torch.Tensor, int]:
        """Image ``index`` cropped (a training crop draws from ``rng``, else from the process's ``random``)."""
        image = self.load(index)
        image = adm_center_crop(image, self.image_size) if self.crop is None else self.crop(image, rng)
        return to_unit_range(uint8_to_tensor(np.asarray(image))), self.samples[index][1]

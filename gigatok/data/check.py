"""Is a folder usable as a run's data? Checked when a study is planned, before a dry run prints and before any MLflow
run exists, so a wrong ``--data`` costs one line, not a registered run that fails in its job.

What a run needs of an image folder (:class:`gigatok.data.ImageFolderDataset`): ``train/`` and ``val/`` split
folders, each with class folders; every validation class also a training class (labels index the training classes);
and in every class folder at least one image that PIL can read. Only the first readable image of each class is opened
(``Image.verify``, which parses the file without decoding it), and class folders are scanned lazily, so ImageNet's
2,000 class folders cost about as many file opens, not a listing of 1.3M files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from gigatok.data.errors import DataError

SPLITS = ("train", "val")
IMAGE_SUFFIXES = frozenset({".jpeg", ".jpg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


def class_folders(split_dir: Path) -> list[str]:
    """The class folders of a split, sorted, hidden ones left out (as the dataset reads them)."""
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def image_files(class_dir: Path) -> Iterator[Path]:
    """The class folder's image files, in directory order (lazily: the check stops at the first readable one)."""
    with os.scandir(class_dir) as entries:
        for entry in entries:
            name = entry.name
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES and entry.is_file():
                yield Path(entry.path)


def readable(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return False
    return True


def check_class_folder(class_dir: Path) -> None:
    seen = 0
    for path in image_files(class_dir):
        if readable(path):
            return
        seen += 1
    if seen:
        raise DataError(f"class folder has no readable image ({seen} unreadable): {class_dir}")
    raise DataError(f"class folder has no image ({', '.join(sorted(IMAGE_SUFFIXES))}): {class_dir}")


def check_image_folder(root: str | Path, splits: tuple[str, ...] = SPLITS) -> None:
    """Raise :class:`DataError`, one line naming the path at fault, unless ``root`` holds every split with class
    folders, each with a readable image, and the validation classes are training classes."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder does not exist or is not a folder: {root}")
    classes: dict[str, list[str]] = {}
    for split in splits:
        split_dir = root / split
        if not split_dir.is_dir():
            raise DataError(f"data folder has no {split}/ split (expected {root}/{split}/<class>/<image>): {split_dir}")
        classes[split] = class_folders(split_dir)
        if not classes[split]:
            raise DataError(f"{split}/ split has no class folders (expected {split_dir}/<class>/<image>): {split_dir}")
    if "train" in classes and "val" in classes:
        unknown = sorted(set(classes["val"]) - set(classes["train"]))
        if unknown:
            raise DataError(f"val/ class not among the train/ classes: {root / 'val' / unknown[0]}")
    for split, names in classes.items():
        for name in names:
            check_class_folder(root / split / name)

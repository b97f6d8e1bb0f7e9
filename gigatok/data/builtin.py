"""The built-in offline dataset of the CPU ``tiny`` profile: crops of real photographs shipped inside wheels.

No download is ever made: every source is a file inside an installed package's wheel, read straight from the
package folder (the same files ``skimage.data.<name>()``, ``sklearn.datasets.load_sample_images()`` and
``matplotlib.cbook.get_sample_data`` return; scikit-image images that it fetches with pooch are not used).
Each source photograph is one class; labels index the sorted list of class names ``<package>/<name>``.

Licences, as the installed packages state them (the package's own code licence, BSD / PSF-style, does not
cover these images; each image's terms are its own):

- matplotlib/grace_hopper: public domain. Official U.S. Navy portrait of Grace Murray Hopper; the wheel
  ships no notice (matplotlib issue #4930), matplotlib PR #1599 added it as a public-domain image.
- skimage/astronaut: public domain, "no known copyright restrictions" (NASA Great Images database).
- skimage/brick: CC0 (CC0Textures "Bricks25"); perspective-warped, rotated and cropped by scikit-image.
- skimage/camera: CC0 by the photographer, Lav Varshney.
- skimage/chelsea: CC0 by the photographer, Stefan van der Walt.
- skimage/clock: public domain, released by the photographer, Stefan van der Walt.
- skimage/coffee: CC0 by the photographer, Rachel Michetti (courtesy of Pikolo Espresso Bar).
- skimage/coins: no known copyright restrictions (Brooklyn Museum Collection).
- skimage/grass: CC0 (DeviantArt, linolafett "Grass-01"); cropped and made grayscale by scikit-image.
- skimage/gravel: CC0 (CC0Textures "Gravel04"); rescaled, cropped and made grayscale by scikit-image.
- skimage/hubble_deep_field: public domain (NASA / HubbleSite, Hubble eXtreme Deep Field, 2012).
- skimage/rocket: public domain. SpaceX launch photo of DSCOVR on Falcon 9; SpaceX released its photos into
  the public domain (scikit-image issue #5095 discusses the contradicting CC BY-NC tag on Flickr).
- sklearn/china: CC BY 2.0, danielbuechele on Flickr (retrieved 2011 by Robert Layton).
- sklearn/flower: CC BY 2.0, vultilion on Flickr (retrieved 2011 by Robert Layton). The wheel's README
  repeats "danielbuechele" in the attribution line but links vultilion's photostream.

Left out on purpose: scikit-image's moon and stereo_motorcycle (no licence stated in the package), microscopy,
medical, scanned-text, synthetic and tiny images (cell, immunohistochemistry, retina, microaneurysms, page,
text, horse, logo, colorwheel, chessboard, phantom, lfw_subset), ``cat`` (the same file as chelsea), and
matplotlib's icons / MRI slice.

Split scheme. Each photo is cut by a vertical line: the left 80% of its width is train territory, the right
20% validation territory, and a crop never leaves its territory, so no validation pixel is seen in training.
Both splits draw crop sides from the same range, up to ``min(height, validation strip width)`` (77-200 px
across the sources) and at least half that or ``image_size``, whichever is larger: validation then measures
unseen pixels at the training zoom level rather than at another zoom, and crops are not upsampled where the
strip is wide enough. Validation takes ``max(1, crops_per_image // 4)`` crops per photo: its strip is a
quarter of the train area, so this keeps the number of crops per pixel the same in both splits. The strips
are narrow, so the dataset suits the small image sizes of the CPU profile: above 77 px some sources, and
above 200 px all, are upsampled.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from gigatok.data.errors import DataError
from gigatok.data.transforms import to_unit_range, uint8_to_tensor

VAL_FRACTION = 0.2  # right-hand share of each photo's width reserved for validation
SPLITS = ("train", "val")


@dataclass(frozen=True)
class BuiltinSource:
    """One source photograph: a file inside an installed package, and its licence terms."""

    package: str  # import name of the package whose wheel ships the file
    name: str
    relpath: str  # path inside the package folder
    licence: str
    credit: str

    @property
    def class_name(self) -> str:
        return f"{self.package}/{self.name}"

    def path(self) -> Path:
        # find_spec locates the package without importing it (importing sklearn or matplotlib costs seconds).
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise DataError(f"builtin source {self.class_name}: package {self.package!r} is not installed")
        return Path(next(iter(spec.submodule_search_locations))) / self.relpath


def _skimage(name: str, filename: str, licence: str, credit: str) -> BuiltinSource:
    return BuiltinSource("skimage", name, f"data/{filename}", licence, credit)


# Sorted by class name: the label of a crop is the index of its source here.
SOURCES: tuple[BuiltinSource, ...] = (
    BuiltinSource(
        "matplotlib",
        "grace_hopper",
        "mpl-data/sample_data/grace_hopper.jpg",
        "public domain",
        "U.S. Navy portrait of Grace Murray Hopper (no notice in the wheel; matplotlib PR #1599)",
    ),
    _skimage("astronaut", "astronaut.png", "public domain", "NASA Great Images database"),
    _skimage("brick", "brick.png", "CC0", "CC0Textures Bricks25"),
    _skimage("camera", "camera.png", "CC0", "Lav Varshney"),
    _skimage("chelsea", "chelsea.png", "CC0", "Stefan van der Walt"),
    _skimage("clock", "clock_motion.png", "public domain", "Stefan van der Walt"),
    _skimage("coffee", "coffee.png", "CC0", "Rachel Michetti, courtesy of Pikolo Espresso Bar"),
    _skimage("coins", "coins.png", "no known copyright restrictions", "Brooklyn Museum Collection"),
    _skimage("grass", "grass.png", "CC0", "linolafett on DeviantArt, Grass-01"),
    _skimage("gravel", "gravel.png", "CC0", "CC0Textures Gravel04"),
    _skimage("hubble_deep_field", "hubble_deep_field.jpg", "public domain", "NASA / HubbleSite"),
    _skimage("rocket", "rocket.jpg", "public domain", "SpaceX"),
    BuiltinSource("sklearn", "china", "datasets/images/china.jpg", "CC BY 2.0", "danielbuechele on Flickr"),
    BuiltinSource("sklearn", "flower", "datasets/images/flower.jpg", "CC BY 2.0", "vultilion on Flickr"),
)


def val_crops_per_image(crops_per_image: int) -> int:
    """Validation crops per photo: a quarter of the train count, as its territory is a quarter of the area."""
    return max(1, crops_per_image // 4)


def territory(width: int, split: str) -> tuple[int, int]:
    """Columns [x0, x1) of a photo that crops of ``split`` may use; the two splits' columns never overlap."""
    split_x = round(width * (1 - VAL_FRACTION))
    return (0, split_x) if split == "train" else (split_x, width)


def crop_side_range(height: int, width: int, image_size: int) -> tuple[int, int]:
    """Inclusive range of crop sides, shared by both splits so that they see the same zoom levels.

    Up to the validation strip's width (or the height, if smaller); at least half of that, and at least
    ``image_size`` where the strip allows, so that crops are downsampled rather than blurred by upsampling.
    """
    x0, x1 = territory(width, "val")
    largest = min(height, x1 - x0)
    return min(largest, max(largest // 2, image_size, 1)), largest


def crop_boxes(
    height: int, width: int, split: str, count: int, image_size: int, rng: np.random.Generator
) -> list[tuple[int, int, int]]:
    """``count`` square crops (left, top, side) inside ``split``'s territory of a height x width photo."""
    x0, x1 = territory(width, split)
    low, high = crop_side_range(height, width, image_size)
    boxes = []
    for _ in range(count):
        side = int(rng.integers(low, high + 1))
        left = int(rng.integers(x0, x1 - side + 1))
        top = int(rng.integers(0, height - side + 1))
        boxes.append((left, top, side))
    return boxes


@functools.cache
def _decode(source: BuiltinSource) -> tuple[Image.Image, str]:
    """The photo as RGB (grayscale replicated to 3 channels) and its file's sha256; cached per process."""
    path = source.path()
    try:
        data = path.read_bytes()
        with Image.open(path) as image:
            rgb = image.convert("RGB")
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read builtin source {path}: {exc}".replace("\n", " ")) from exc
    return rgb, hashlib.sha256(data).hexdigest()


class BuiltinImages(Dataset):
    """Deterministic square crops of the :data:`SOURCES` photos, held in memory as uint8.

    ``__getitem__`` returns ``(float32 3 x image_size x image_size in [-1, 1], label)``. ``boxes[i]`` is
    ``(source_idx, left, top, side)`` of item ``i`` in its source's pixel coordinates.
    """

    def __init__(self, split: str, image_size: int, crops_per_image: int, seed: int = 0) -> None:
        if split not in SPLITS:
            raise DataError(f"builtin dataset: unknown split {split!r}; known: {SPLITS}")
        if image_size < 1 or crops_per_image < 1 or seed < 0:
            raise DataError(
                f"builtin dataset: need image_size >= 1, crops_per_image >= 1, seed >= 0; "
                f"got {image_size}, {crops_per_image}, {seed}"
            )
        self.split = split
        self.image_size = image_size
        self.seed = seed
        self.sources = SOURCES
        self.class_names = [s.class_name for s in SOURCES]
        self.num_classes = len(SOURCES)
        self.crops_per_source = crops_per_image if split == "train" else val_crops_per_image(crops_per_image)

        self.source_sizes: list[tuple[int, int]] = []  # (height, width) of each source photo
        self.boxes: list[tuple[int, int, int, int]] = []
        crops: list[torch.Tensor] = []
        digest = hashlib.sha256()
        for idx, source in enumerate(SOURCES):
            photo, file_sha = _decode(source)
            digest.update(f"{source.class_name}:{file_sha};".encode())
            self.source_sizes.append((photo.height, photo.width))
            # One stream per (seed, source, split): the crops of one photo do not depend on the others.
            rng = np.random.default_rng([seed, idx, SPLITS.index(split)])
            for left, top, side in crop_boxes(
                photo.height, photo.width, split, self.crops_per_source, image_size, rng
            ):
                crop = photo.crop((left, top, left + side, top + side))
                # PIL's BICUBIC widens its kernel when shrinking, so downsampling is antialiased.
                crop = crop.resize((image_size, image_size), resample=Image.Resampling.BICUBIC)
                crops.append(uint8_to_tensor(np.asarray(crop)))
                self.boxes.append((idx, left, top, side))
        self.crops = torch.stack(crops)  # N x 3 x S x S uint8
        self.labels = torch.tensor([box[0] for box in self.boxes], dtype=torch.long)
        # Identifies the source files, so a run can record exactly which pixels it trained on.
        self.fingerprint = digest.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return to_unit_range(self.crops[index]), int(self.labels[index])

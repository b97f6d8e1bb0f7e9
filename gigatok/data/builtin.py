"""The built-in offline dataset of the CPU ``tiny`` profile: crops of real photographs shipped inside wheels.

No download is ever made: every source is a file inside an installed package's wheel, read straight from the
package folder (the same files ``skimage.data.<name>()``, ``sklearn.datasets.load_sample_images()`` and
``matplotlib.cbook.get_sample_data`` return; scikit-image images that it fetches with pooch are not used).
Each source photograph is one class; labels index the sorted list of class names ``<package>/<name>``.

Two versions, chosen by ``DataConfig.builtin_version`` (docs/datasets.md has the table of images and licences):

- 1: 14 photographs, crops in source order, no augmentation (what runs hashed before version 2 trained on).
- 2: every real photograph with a stated licence that the installed wheels ship (18), items interleaved across
  the photographs, and training crops augmented: several scales and horizontal flips, drawn per (seed, index).

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
- skimage/immunohistochemistry (version 2): no known copyright restrictions (Center for Microscopy And
  Molecular Imaging, CMMI); a bright-field micrograph of stained colonic glands.
- skimage/microaneurysms (version 2): CC0 by the owner, Andreas Maier; a 102 px detail (green channel) of
  fundus photograph 07_dr of the High-Resolution Fundus (HRF) Image Database.
- skimage/retina (version 2): CC0 (Wikimedia Commons, "Fundus photograph of normal left eye", Mikael
  Häggström).
- skimage/rocket: public domain. SpaceX launch photo of DSCOVR on Falcon 9; SpaceX released its photos into
  the public domain (scikit-image issue #5095 discusses the contradicting CC BY-NC tag on Flickr).
- skimage/text (version 2): public domain (Wikipedia, File:Corner.png); a photograph of handwritten
  formulas on paper.
- sklearn/china: CC BY 2.0, danielbuechele on Flickr (retrieved 2011 by Robert Layton).
- sklearn/flower: CC BY 2.0, vultilion on Flickr (retrieved 2011 by Robert Layton). The wheel's README
  repeats "danielbuechele" in the attribution line but links vultilion's photostream.

Left out on purpose: real photographs whose licence the package does not state (scikit-image's moon,
stereo_motorcycle, page and lfw_subset), images that are not photographs (cell, a phase image computed from
a hologram; horse, logo, colorwheel, chessboard, phantom, the tiny GIF and TIFFs), ``cat`` (the same file as
chelsea), matplotlib's icons, logos, clip art, elevation grids and MRI slice.

Split scheme. Each photo is cut by a vertical line: the left 80% of its width is train territory, the right
20% validation territory, and a crop never leaves its territory, so no validation pixel is seen in training.
Every photo keeps a validation strip, so every class is present in both splits (the linear probe, the AR
model's class conditioning and its validation tokens need that). Validation crops draw their sides from
``crop_side_range``: up to ``min(height, validation strip width)`` (20-282 px across the sources) and at least
half that or ``image_size``, whichever is larger. Version 1 training crops draw from the same range; version 2
training crops draw log-uniformly from that lower bound up to twice the validation range's top (bounded by
the train territory), so training sees the validation zoom and one octave coarser, and half of them are
mirrored. Validation is never augmented. Validation takes ``max(1, crops_per_image // 4)`` crops per photo:
its strip is a quarter of the train area. The strips are narrow, so the dataset suits the small image sizes
of the CPU profile: above 77 px some sources are upsampled (microaneurysms' 20 px strip at any size above 20).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import math
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
VERSIONS = (1, 2)
LATEST_VERSION = 2
# Version 2 training crops reach this many times the largest validation crop side: one octave coarser.
TRAIN_SCALE_SPAN = 2.0
FLIP_PROBABILITY = 0.5  # version 2 training crops mirrored left-right


@dataclass(frozen=True)
class BuiltinSource:
    """One source photograph: a file inside an installed package, and its licence terms."""

    package: str  # import name of the package whose wheel ships the file
    name: str
    relpath: str  # path inside the package folder
    licence: str
    credit: str
    since: int = 1  # the first dataset version that uses it

    @property
    def class_name(self) -> str:
        return f"{self.package}/{self.name}"

    def path(self) -> Path:
        # find_spec locates the package without importing it (importing sklearn or matplotlib costs seconds).
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise DataError(f"builtin source {self.class_name}: package {self.package!r} is not installed")
        return Path(next(iter(spec.submodule_search_locations))) / self.relpath


def _skimage(name: str, filename: str, licence: str, credit: str, since: int = 1) -> BuiltinSource:
    return BuiltinSource("skimage", name, f"data/{filename}", licence, credit, since)


# Every source of the latest version, sorted by class name; a version's labels index its own subset, in order.
ALL_SOURCES: tuple[BuiltinSource, ...] = (
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
    _skimage(
        "immunohistochemistry",
        "ihc.png",
        "no known copyright restrictions",
        "Center for Microscopy And Molecular Imaging (CMMI)",
        since=2,
    ),
    _skimage("microaneurysms", "microaneurysms.png", "CC0", "Andreas Maier; HRF Image Database, image 07_dr", since=2),
    _skimage("retina", "retina.jpg", "CC0", "Mikael Häggström, Wikimedia Commons", since=2),
    _skimage("rocket", "rocket.jpg", "public domain", "SpaceX"),
    _skimage("text", "text.png", "public domain", "Wikipedia, File:Corner.png", since=2),
    BuiltinSource("sklearn", "china", "datasets/images/china.jpg", "CC BY 2.0", "danielbuechele on Flickr"),
    BuiltinSource("sklearn", "flower", "datasets/images/flower.jpg", "CC BY 2.0", "vultilion on Flickr"),
)


def sources_for(version: int) -> tuple[BuiltinSource, ...]:
    """The photographs of dataset ``version``, sorted by class name (label order)."""
    if version not in VERSIONS:
        raise DataError(f"builtin dataset: unknown version {version!r}; known: {VERSIONS}")
    return tuple(s for s in ALL_SOURCES if s.since <= version)


SOURCES: tuple[BuiltinSource, ...] = sources_for(1)  # what ``BuiltinImages`` reads by default (version 1)


def val_crops_per_image(crops_per_image: int) -> int:
    """Validation crops per photo: a quarter of the train count, as its territory is a quarter of the area."""
    return max(1, crops_per_image // 4)


def territory(width: int, split: str) -> tuple[int, int]:
    """Columns [x0, x1) of a photo that crops of ``split`` may use; the two splits' columns never overlap."""
    split_x = round(width * (1 - VAL_FRACTION))
    return (0, split_x) if split == "train" else (split_x, width)


def crop_side_range(height: int, width: int, image_size: int) -> tuple[int, int]:
    """Inclusive range of validation crop sides (and version 1's training crop sides).

    Up to the validation strip's width (or the height, if smaller); at least half of that, and at least
    ``image_size`` where the strip allows, so that crops are downsampled rather than blurred by upsampling.
    """
    x0, x1 = territory(width, "val")
    largest = min(height, x1 - x0)
    return min(largest, max(largest // 2, image_size, 1)), largest


def train_side_range(height: int, width: int, image_size: int) -> tuple[int, int]:
    """Inclusive range of version 2 training crop sides: the validation range's bottom up to
    ``TRAIN_SCALE_SPAN`` times its top, within the train territory."""
    low, high = crop_side_range(height, width, image_size)
    x0, x1 = territory(width, "train")
    return low, max(low, min(height, x1 - x0, round(TRAIN_SCALE_SPAN * high)))


def crop_boxes(
    height: int, width: int, split: str, count: int, image_size: int, rng: np.random.Generator
) -> list[tuple[int, int, int]]:
    """Version 1: ``count`` square crops (left, top, side) inside ``split``'s territory of a height x width photo."""
    x0, x1 = territory(width, split)
    low, high = crop_side_range(height, width, image_size)
    boxes = []
    for _ in range(count):
        side = int(rng.integers(low, high + 1))
        left = int(rng.integers(x0, x1 - side + 1))
        top = int(rng.integers(0, height - side + 1))
        boxes.append((left, top, side))
    return boxes


def item_crop(
    height: int, width: int, split: str, image_size: int, rng: np.random.Generator
) -> tuple[int, int, int, bool]:
    """Version 2: one crop (left, top, side, mirrored) inside ``split``'s territory.

    Training sides are log-uniform over :func:`train_side_range` (each octave of zoom equally likely) and half
    the crops are mirrored; validation sides are uniform over :func:`crop_side_range` and never mirrored.
    """
    x0, x1 = territory(width, split)
    if split == "train":
        low, high = train_side_range(height, width, image_size)
        side = min(high, max(low, round(math.exp(rng.uniform(math.log(low), math.log(high + 1))))))
    else:
        low, high = crop_side_range(height, width, image_size)
        side = int(rng.integers(low, high + 1))
    left = int(rng.integers(x0, x1 - side + 1))
    top = int(rng.integers(0, height - side + 1))
    mirrored = split == "train" and bool(rng.random() < FLIP_PROBABILITY)
    return left, top, side, mirrored


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


def _render(photo: Image.Image, left: int, top: int, side: int, image_size: int, mirrored: bool) -> torch.Tensor:
    crop = photo.crop((left, top, left + side, top + side))
    # PIL's BICUBIC widens its kernel when shrinking, so downsampling is antialiased.
    crop = crop.resize((image_size, image_size), resample=Image.Resampling.BICUBIC)
    if mirrored:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return uint8_to_tensor(np.asarray(crop))


class BuiltinImages(Dataset):
    """Deterministic square crops of the photos of dataset ``version``, held in memory as uint8.

    ``__getitem__`` returns ``(float32 3 x image_size x image_size in [-1, 1], label)``. ``boxes[i]`` is
    ``(source_idx, left, top, side)`` of item ``i`` in its source's pixel coordinates; ``mirrored[i]`` says
    whether the crop was flipped left-right (version 2 training items only).

    Version 1 lists each photo's crops together, drawn per (seed, photo, split). Version 2 interleaves the
    photos (item ``i`` comes from photo ``i % num_classes``) so that any prefix, such as the first images that
    FID and the sample grids use, covers every photo evenly; item ``i`` is drawn from (seed, split, i) alone, so
    it does not depend on ``crops_per_image``. Its validation split ignores ``seed`` (``self.seed`` is 0).
    """

    def __init__(self, split: str, image_size: int, crops_per_image: int, seed: int = 0, version: int = 1) -> None:
        if split not in SPLITS:
            raise DataError(f"builtin dataset: unknown split {split!r}; known: {SPLITS}")
        if image_size < 1 or crops_per_image < 1 or seed < 0:
            raise DataError(
                f"builtin dataset: need image_size >= 1, crops_per_image >= 1, seed >= 0; "
                f"got {image_size}, {crops_per_image}, {seed}"
            )
        self.split = split
        self.image_size = image_size
        # From version 2 the validation crops are one fixed set whatever the run's seed: runs that differ only
        # in seed are scored on the same images (and share their FID reference), so the seed spread is training's.
        self.seed = 0 if split == "val" and version > 1 else seed
        self.version = version
        self.sources = sources_for(version)
        self.class_names = [s.class_name for s in self.sources]
        self.num_classes = len(self.sources)
        self.crops_per_source = crops_per_image if split == "train" else val_crops_per_image(crops_per_image)

        photos = [_decode(source) for source in self.sources]
        self.source_sizes: list[tuple[int, int]] = [(photo.height, photo.width) for photo, _ in photos]
        boxes, mirrored = self._version1_boxes() if version == 1 else self._interleaved_boxes()
        self.boxes: list[tuple[int, int, int, int]] = boxes
        self.mirrored = torch.tensor(mirrored, dtype=torch.bool)
        crops = [
            _render(photos[idx][0], left, top, side, image_size, flip)
            for (idx, left, top, side), flip in zip(boxes, mirrored, strict=True)
        ]
        self.crops = torch.stack(crops)  # N x 3 x S x S uint8
        self.labels = torch.tensor([box[0] for box in self.boxes], dtype=torch.long)
        self.fingerprint = self._fingerprint([sha for _, sha in photos])

    def _version1_boxes(self) -> tuple[list[tuple[int, int, int, int]], list[bool]]:
        boxes = []
        for idx, (height, width) in enumerate(self.source_sizes):
            # One stream per (seed, source, split): the crops of one photo do not depend on the others.
            rng = np.random.default_rng([self.seed, idx, SPLITS.index(self.split)])
            for left, top, side in crop_boxes(height, width, self.split, self.crops_per_source, self.image_size, rng):
                boxes.append((idx, left, top, side))
        return boxes, [False] * len(boxes)

    def _interleaved_boxes(self) -> tuple[list[tuple[int, int, int, int]], list[bool]]:
        boxes, mirrored = [], []
        for index in range(self.crops_per_source * self.num_classes):
            idx = index % self.num_classes
            # One stream per (seed, split, item): a resumed or longer run reads the same item at the same index.
            rng = np.random.default_rng([self.seed, SPLITS.index(self.split), index, self.version])
            left, top, side, flip = item_crop(*self.source_sizes[idx], self.split, self.image_size, rng)
            boxes.append((idx, left, top, side))
            mirrored.append(flip)
        return boxes, mirrored

    def _fingerprint(self, file_shas: list[str]) -> str:
        """Identifies the source files and the crop scheme, so a run records exactly which pixels it used.

        Version 1 hashes the files alone (as before version 2 existed); later versions add their number and the
        augmentation constants, so a change of scheme changes every description that quotes it.
        """
        digest = hashlib.sha256()
        for source, sha in zip(self.sources, file_shas, strict=True):
            digest.update(f"{source.class_name}:{sha};".encode())
        if self.version > 1:
            digest.update(f"version {self.version}; span {TRAIN_SCALE_SPAN}; flip {FLIP_PROBABILITY};".encode())
        return digest.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return to_unit_range(self.crops[index]), int(self.labels[index])

"""Training-time augmentation of image-folder data: the authors' random crop and horizontal flip.

The authors train tokenizers (tokenizer/tokenizer_image/vq/vq_train.py) and linear probes on
``random_crop_arr`` (ADM: the short side resized so the square crop covers 80-100% of it, at a random position)
followed by ``RandomHorizontalFlip``; evaluation and token caches use the ADM centre crop. ``DataConfig.train_crop``
picks the crop and ``DataConfig.crop_fraction`` its range; validation data is never augmented.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from PIL import Image

from gigatok.config import DataConfig
from gigatok.data.transforms import adm_center_crop, adm_random_crop

# (image, rng) -> image; an rng of None draws from the process's ``random`` (seeded per DataLoader worker).
ImageTransform = Callable[[Image.Image, random.Random | None], Image.Image]


def train_crop(data_cfg: DataConfig, image_size: int) -> ImageTransform:
    """``data_cfg``'s training crop of a decoded image to ``image_size`` squared, drawing from the given RNG."""
    if data_cfg.train_crop == "center":
        return lambda image, rng: adm_center_crop(image, image_size)
    low, high = data_cfg.crop_fraction

    def crop(image: Image.Image, rng: random.Random | None) -> Image.Image:
        return adm_random_crop(image, image_size, low, high, rng=rng)

    return crop


def train_transform(data_cfg: DataConfig, image_size: int, *, hflip: bool | None = None) -> ImageTransform:
    """The whole training augmentation of an image-folder image: ``data_cfg``'s crop, then a horizontal flip with
    probability 1/2 when ``hflip`` (default ``data_cfg.hflip``); PIL image in, PIL image out.

    For training loops that read the image folder themselves (the linear probe). The tokenizer loop flips whole
    batches itself, from (seed, step), and so asks its dataset for the crop alone (``build_dataset(augment=True)``).
    """
    crop = train_crop(data_cfg, image_size)
    flip = data_cfg.hflip if hflip is None else hflip

    def transform(image: Image.Image, rng: random.Random | None) -> Image.Image:
        image = crop(image, rng)
        if flip and (rng or random).random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return image

    return transform

"""Image preprocessing shared by the datasets: the ADM centre and random crops and the uint8 -> [-1, 1] conversion."""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from PIL import Image


def adm_center_crop(image: Image.Image, image_size: int) -> Image.Image:
    """The centre crop of guided-diffusion (ADM) ``center_crop_arr``, as the paper's ImageNet pipeline uses.

    Halving with a BOX filter while the short side is at least twice the target keeps the final BICUBIC
    resize a small step, so large photos are downsampled without aliasing; the BICUBIC resize then sets the
    short side to ``image_size`` and the centre square is cut out.
    """
    image = _halve_then_resize(image, image_size)
    left = (image.width - image_size) // 2
    top = (image.height - image_size) // 2
    return image.crop((left, top, left + image_size, top + image_size))


def _halve_then_resize(image: Image.Image, short_side: int) -> Image.Image:
    """BOX-halve while the short side is at least twice ``short_side``, then BICUBIC to exactly ``short_side``."""
    while min(image.size) >= 2 * short_side:
        image = image.resize((image.width // 2, image.height // 2), resample=Image.Resampling.BOX)
    scale = short_side / min(image.size)
    return image.resize((round(image.width * scale), round(image.height * scale)), resample=Image.Resampling.BICUBIC)


def adm_random_crop(
    image: Image.Image,
    image_size: int,
    min_crop_frac: float = 0.8,
    max_crop_frac: float = 1.0,
    rng: random.Random | None = None,
) -> Image.Image:
    """The training crop of guided-diffusion (ADM) ``random_crop_arr``, which the authors' tokenizer and linear
    probe training use: the short side is resized to a random length in
    [ceil(image_size / max_crop_frac), ceil(image_size / min_crop_frac)], so the square cut out at a random
    position covers between ``min_crop_frac`` and ``max_crop_frac`` of it.
    """
    if not 0 < min_crop_frac <= max_crop_frac <= 1:
        raise ValueError(f"random crop fractions need 0 < min <= max <= 1, got {min_crop_frac}, {max_crop_frac}")
    randrange = random.randrange if rng is None else rng.randrange  # the global generator unless given one
    low, high = math.ceil(image_size / max_crop_frac), math.ceil(image_size / min_crop_frac)
    image = _halve_then_resize(image, randrange(low, high + 1))
    left = randrange(image.width - image_size + 1)
    top = randrange(image.height - image_size + 1)
    return image.crop((left, top, left + image_size, top + image_size))


def uint8_to_tensor(array: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 array -> 3xHxW uint8 tensor (kept uint8 so in-memory datasets stay 4x smaller)."""
    # np.array copies: PIL-backed arrays are read-only, which torch.from_numpy warns about.
    return torch.from_numpy(np.array(array, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def to_unit_range(image: torch.Tensor) -> torch.Tensor:
    """uint8 CxHxW -> float32 in [-1, 1], the range the tokenizer reconstructs."""
    return image.to(torch.float32) / 127.5 - 1.0

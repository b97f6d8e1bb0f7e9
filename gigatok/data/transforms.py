"""Image preprocessing shared by the datasets: the ADM centre crop and the uint8 -> [-1, 1] conversion."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def adm_center_crop(image: Image.Image, image_size: int) -> Image.Image:
    """The centre crop of guided-diffusion (ADM) ``center_crop_arr``, as the paper's ImageNet pipeline uses.

    Halving with a BOX filter while the short side is at least twice the target keeps the final BICUBIC
    resize a small step, so large photos are downsampled without aliasing; the BICUBIC resize then sets the
    short side to ``image_size`` and the centre square is cut out.
    """
    while min(image.size) >= 2 * image_size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.Resampling.BOX)
    scale = image_size / min(image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.Resampling.BICUBIC)
    left = (image.width - image_size) // 2
    top = (image.height - image_size) // 2
    return image.crop((left, top, left + image_size, top + image_size))


def uint8_to_tensor(array: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 array -> 3xHxW uint8 tensor (kept uint8 so in-memory datasets stay 4x smaller)."""
    # np.array copies: PIL-backed arrays are read-only, which torch.from_numpy warns about.
    return torch.from_numpy(np.array(array, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def to_unit_range(image: torch.Tensor) -> torch.Tensor:
    """uint8 CxHxW -> float32 in [-1, 1], the range the tokenizer reconstructs."""
    return image.to(torch.float32) / 127.5 - 1.0

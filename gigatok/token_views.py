"""The views of each image a token cache holds: the view sets by name (``ARTrainConfig.views``), without torch.

Apart from :mod:`gigatok.token_cache`, which builds and reads the caches, so that the FLOP model
(:mod:`gigatok.flops`, a launch's size metrics and a dry run's estimate) counts the rows of a cache without
importing torchvision (which imports torch._dynamo: seconds).
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_VIEWS = "flip"
MIRRORED = 5  # torchvision's ten_crop: outputs 0-4 are the crops of the image, 5-9 the same crops of its mirror
CENTRE = 4  # five_crop's order: top-left, top-right, bottom-left, bottom-right, centre


@dataclass(frozen=True)
class ViewSet:
    """Views of one image: a centre crop ``crop_range`` x the image size, then some of torchvision's ten_crop of it.

    ``crops`` index ten_crop's outputs; ``plain`` is the position in ``crops`` of the unmirrored centre view, the one
    view per image that a linear probe reads.
    """

    name: str
    crop_range: float
    crops: tuple[int, ...]
    plain: int

    def crop_size(self, image_size: int) -> int:
        # int() as extract_codes_c2i.py: int(256 * 1.1) = 281
        return int(image_size * self.crop_range)


VIEW_SETS: dict[str, ViewSet] = {
    # The image and its mirror (at crop range 1.0 every one of the five crops is the whole image).
    "flip": ViewSet("flip", 1.0, (CENTRE, MIRRORED + CENTRE), 0),
    # LlamaGen's and GigaTok's extract_codes_c2i.py --ten-crop --crop-range 1.1: centre_crop_arr to 1.1x the image
    # size, then transforms.TenCrop(image_size).
    "ten_crop": ViewSet("ten_crop", 1.1, tuple(range(10)), CENTRE),
    # Two of ten_crop's views, the centre and the centre of the mirror: the tokenizing cost of "flip".
    "centre_pair": ViewSet("centre_pair", 1.1, (CENTRE, MIRRORED + CENTRE), 0),
}
PLAIN = ViewSet("plain", 1.0, (CENTRE,), 0)  # the validation split: the image alone


def view_set(name: str) -> ViewSet:
    if name not in VIEW_SETS:
        raise ValueError(f"token cache views {name!r}: unknown; known: {sorted(VIEW_SETS)}")
    return VIEW_SETS[name]

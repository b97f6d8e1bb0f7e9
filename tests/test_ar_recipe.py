"""The AR training recipe of each profile: learning-rate schedules, token-cache views and how training samples them,
and the study plans at the paper profile (fast: nothing is trained)."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch

import studies.catalog  # noqa: F401  (registers the studies)
from gigatok.config import ARTrainConfig, ConfigError, ar_run, get_profile, hashed_fields, tokenizer_run
from gigatok.study import STUDIES, Planner, get_study
from gigatok.token_cache import TokenCache, _tokenize, cache_path, crop_views
from gigatok.token_views import VIEW_SETS, view_set
from gigatok.train.ar_loop import OneViewPerImage, wsd_schedule
from gigatok.train.sampling import ResumableBatchSampler


def authors_wsd_sqrt(step: int, total: int, fract_decay: float = 0.2) -> float:
    """The authors' wsd_lr factor (decay_type sqrt, final factor 0, no warm-up), written from its definition."""
    n_anneal = int(fract_decay * total)
    n_hold = total - n_anneal
    if step < n_hold:
        return 1.0
    return max(1 - math.sqrt((step - n_hold) / n_anneal), 0.0)


# -- schedules -------------------------------------------------------------------------------------------------


def test_paper_probe_is_constant_without_warmup() -> None:
    train = ar_run(tokenizer_run("S-S", profile="paper")).train
    assert (train.epochs, train.batch_size, train.lr) == (50, 256, 1e-4)
    total = 50 * 5_004  # ImageNet's 1,281,167 images at batch 256
    f = wsd_schedule(train, total, 5_004)
    assert all(f(s) == 1.0 for s in (0, 1, 4_999, 5_000, total // 2, total - 2, total - 1))


def test_wsd_sqrt_decay_follows_the_authors() -> None:
    train = dataclasses.replace(ARTrainConfig(), warmup_epochs=0.0, decay_shape="sqrt")
    total = 1_000
    f = wsd_schedule(train, total, 10)
    assert [f(s) for s in (0, 500, 799)] == [1.0, 1.0, 1.0]  # the decay starts at 80%
    assert f(800) == pytest.approx(1 - math.sqrt(1 / 200))
    assert f(899) == pytest.approx(1 - math.sqrt(0.5))
    assert f(total - 1) == pytest.approx(0.0, abs=1e-12)
    # The authors' factor one step later: their scheduler is called after the optimizer step.
    for s in range(780, total):
        assert f(s) == pytest.approx(authors_wsd_sqrt(s + 1, total)), s
    linear = wsd_schedule(dataclasses.replace(train, decay_shape="linear"), total, 10)
    assert linear(899) == pytest.approx(0.5) and linear(899) < f(899) + 0.3


def test_warmup_in_steps_overrides_epochs() -> None:
    train = dataclasses.replace(ARTrainConfig(), warmup_steps=200, warmup_epochs=5.0)
    f = wsd_schedule(train, 10_000, 1_000)
    assert f(0) == pytest.approx(1 / 200) and f(99) == pytest.approx(0.5) and f(199) == 1.0 and f(200) == 1.0
    assert wsd_schedule(dataclasses.replace(train, warmup_steps=None), 10_000, 1_000)(200) < 1.0
    with pytest.raises(ConfigError, match="ar_train.decay_shape"):
        ARTrainConfig(decay_shape="cosine")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="ar_train.views"):
        ARTrainConfig(views="five_crop")  # type: ignore[arg-type]


def test_new_fields_at_their_defaults_leave_hashes_alone() -> None:
    hashed = hashed_fields(ARTrainConfig())
    assert not {"warmup_steps", "warmup_from", "decay_shape", "views", "one_view_per_image"} & set(hashed)
    assert "views" in hashed_fields(ARTrainConfig(views="ten_crop"))


def test_tiny_probe_keeps_its_step_schedule() -> None:
    """Tiny samples one of two views an image per epoch: twice the epochs make the steps it had over both views."""
    train = ar_run(tokenizer_run("S-S")).train
    assert train.views == "centre_pair" and train.one_view_per_image
    images = 896  # the built-in training split: 14 photos x 64 crops
    steps_per_epoch = images // train.batch_size
    total = math.ceil(train.epochs * steps_per_epoch)
    before = dataclasses.replace(train, epochs=2, warmup_epochs=1.0, views="flip", one_view_per_image=False)
    total_before = math.ceil(2 * (2 * images // train.batch_size))
    assert total == total_before == 112
    now, then = wsd_schedule(train, total, steps_per_epoch), wsd_schedule(before, total, 2 * steps_per_epoch)
    assert [now(s) for s in range(total)] == [then(s) for s in range(total)]


# -- system level and the study plans at paper -------------------------------------------------------------------


def test_system_level_recipe_at_paper() -> None:
    specs = get_study("system_level").plan(Planner("paper"))
    for spec in specs:
        t = spec.ar.train
        assert (t.epochs, t.decay_fraction, t.decay_shape, t.min_lr) == (300, 0.2, "sqrt", 0.0)
        assert t.views == "ten_crop" and t.one_view_per_image
        assert (t.batch_size, t.warmup_steps) == ((512, 200) if spec.ar.size == "XXL" else (256, 5_000))
        assert spec.eval.cfg_schedule == "step" and spec.eval.step_fraction == 0.18
    assert {s.ar.size for s in specs} == {"B", "XXL"}


def test_fig6_compares_the_probe_with_a_trained_ar_xl() -> None:
    for profile in ("paper", "tiny"):
        specs = get_study("ar_probe_vs_large").plan(Planner(profile))
        assert sorted({s.ar.size for s in specs}) == ["B", "XL"]
        xl = [s for s in specs if s.ar.size == "XL"]
        probe = [s for s in specs if s.ar.size == "B"]
        # Each replica trains at its own seed (tiny plans two), with the recipe otherwise the profile's.
        assert all(
            dataclasses.replace(s.ar.train, seed=0) == get_profile(profile).system_ar_train_for("XL") for s in xl
        )
        assert all(dataclasses.replace(s.ar.train, seed=0) == get_profile(profile).ar_train for s in probe)
    paper = get_study("ar_probe_vs_large").plan(Planner("paper"))
    assert {(s.ar.model.width, s.ar.model.depth) for s in paper if s.ar.size == "XL"} == {(1280, 36)}
    assert {s.ar.train.epochs for s in paper if s.ar.size == "XL"} == {300}


def test_every_paper_gfid_is_cfg_searched() -> None:
    reporting = 0
    for name in STUDIES:
        for spec in get_study(name).plan(Planner("paper")):
            if "generation" in spec.stages:
                reporting += 1
                assert "cfg_search" in spec.stages, (name, spec.label)
                # System-level models (and the released ones beyond the GPT-B probes) use the step schedule.
                system = name == "system_level" or (name == "released_checkpoints" and spec.ar.size != "B")
                assert spec.eval.cfg_schedule == ("step" if system else "constant"), name
            if spec.ar is not None and spec.ar.size == "B" and name not in ("system_level", "released_checkpoints"):
                assert spec.ar.train.decay_fraction == 0.0 and spec.ar.train.warmup_epochs == 0.0, name
    assert reporting > 50
    # Tiny searches only in the two studies that did before (a search costs ~3.5x the sampling it replaces).
    tiny = {
        name: {"cfg_search" in s.stages for s in get_study(name).plan(Planner("tiny")) if "generation" in s.stages}
        for name in STUDIES
    }
    assert tiny["scaling_1d_vs_2d"] == {False} and tiny["ar_probe_vs_large"] == tiny["system_level"] == {True}


# -- token-cache views -------------------------------------------------------------------------------------------


def test_ten_crop_views_are_torchvision_tencrop_of_a_larger_centre_crop() -> None:
    views = view_set("ten_crop")
    assert views.crop_size(256) == 281 and views.crop_size(32) == 35  # int(1.1 x size), extract_codes_c2i.py
    images = torch.arange(2 * 3 * 35 * 35, dtype=torch.float32).reshape(2, 3, 35, 35)
    crops = crop_views(images, views, 32)
    assert len(crops) == 10 and all(c.shape == (2, 3, 32, 32) for c in crops)
    assert torch.equal(crops[0], images[..., :32, :32]) and torch.equal(crops[3], images[..., 3:, 3:])
    # torchvision's centre crop rounds (35 - 32) / 2 = 1.5 to 2
    assert torch.equal(crops[4], images[..., 2:34, 2:34])
    assert torch.equal(crops[5], images.flip(-1)[..., :32, :32])  # the second five are crops of the mirror
    pair = crop_views(images, view_set("centre_pair"), 32)
    assert torch.equal(pair[0], crops[4]) and torch.equal(pair[1], crops[9])
    flip = crop_views(images[..., :32, :32], view_set("flip"), 32)
    assert torch.equal(flip[0], images[..., :32, :32]) and torch.equal(flip[1], images[..., :32, :32].flip(-1))


class _PixelTokenizer:
    """Stands in for a trained tokenizer: its tokens are the top-left pixels of the first channel."""

    def __init__(self, image_size: int) -> None:
        self.cfg = SimpleNamespace(image_size=image_size, quantizer=SimpleNamespace(codebook_size=4096))

    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        return images[:, 0, 0, :4].long()


def _dataset(count: int, size: int) -> list[tuple[torch.Tensor, int]]:
    return [(torch.arange(3 * size * size).reshape(3, size, size).float() + 1000 * i, i % 3) for i in range(count)]


@pytest.mark.parametrize("name", ["flip", "ten_crop", "centre_pair"])
def test_cache_rows_name_their_image_and_view(name: str) -> None:
    views = VIEW_SETS[name]
    count = 5
    data = _dataset(count, views.crop_size(8))
    cache = _tokenize(_PixelTokenizer(8), data, 2, views, torch.device("cpu"), progress=False)  # type: ignore[arg-type]
    v = len(views.crops)
    assert len(cache) == count * v and cache.num_images == count
    table = cache.view_table()
    assert table.shape == (count, v)
    for i in range(count):
        for position, k in enumerate(views.crops):
            row = int(table[i, position])
            expected = crop_views(data[i][0][None], views, 8)[position]
            assert torch.equal(cache.tokens[row].long(), expected[0, 0, 0, :4].long())
            assert int(cache.labels[row]) == i % 3 and bool(cache.flipped[row]) == (k >= 5)
    plain = cache.one_view(views.plain)
    assert len(plain) == count and not plain.flipped.any()
    assert torch.equal(plain.image, torch.arange(count))
    if name == "flip":  # the layout the cache always had: each loader batch, then its mirror
        assert cache.flipped.tolist() == [False] * 2 + [True] * 2 + [False] * 2 + [True] * 2 + [False, True]


def test_training_split_has_one_file_per_view_set(tmp_path) -> None:
    assert cache_path(tmp_path, "train").name == "train.pt"  # the "flip" cache keeps its file
    assert cache_path(tmp_path, "train", "ten_crop").name == "train-ten_crop.pt"
    assert cache_path(tmp_path, "val", "ten_crop").name == "val.pt"
    with pytest.raises(ValueError, match="unknown"):
        view_set("five_crop")


def test_one_view_per_image_visits_each_image_once_an_epoch_and_resumes() -> None:
    images, views, batch = 40, 10, 8
    tokens = torch.arange(images * views)[:, None]
    cache = TokenCache(
        tokens,
        torch.zeros(images * views, dtype=torch.long),
        torch.arange(images * views) % 10 >= 5,
        torch.arange(images * views) // views,
        torch.arange(images * views) % views,
    )
    steps = 3 * images // batch
    full = list(OneViewPerImage(ResumableBatchSampler(images, batch, 0, 0, steps), cache, seed=0))
    assert len(full) == steps
    for epoch in range(3):
        rows = [r for b in full[epoch * 5 : (epoch + 1) * 5] for r in b]
        assert sorted(r // views for r in rows) == list(range(images))  # every image once
    chosen = torch.tensor([r % views for b in full for r in b])
    assert len(set(chosen.tolist())) == views  # every view drawn somewhere, not one fixed view
    resumed = list(OneViewPerImage(ResumableBatchSampler(images, batch, 0, 7, steps), cache, seed=0))
    assert resumed == full[7:]
    other = list(OneViewPerImage(ResumableBatchSampler(images, batch, 1, 0, steps), cache, seed=1))
    assert other != full


def test_legacy_cache_without_image_index_refuses_view_sampling() -> None:
    cache = TokenCache(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), torch.tensor([False, False, True, True]))
    assert cache.num_images == 2 and len(cache.one_view(0)) == 2
    with pytest.raises(ValueError, match="rebuild"):
        cache.view_table()


# -- the step CFG schedule ---------------------------------------------------------------------------------------


def test_system_level_samples_with_the_authors_step_rule(tmp_path) -> None:
    from gigatok.pipeline import RunContext, stage_result_path

    spec = get_study("system_level").plan(Planner("paper"))[0]
    assert spec.eval.cfg_step_rule == "authors" and spec.eval.cfg_schedule == "step"
    ctx = RunContext(runs_dir=str(tmp_path), tracking_uri=f"file://{tmp_path}/mlruns")
    plain = dataclasses.replace(
        spec, eval=dataclasses.replace(spec.eval, cfg_step_rule="workbench"), stages=("generation",)
    )
    authors = dataclasses.replace(plain, eval=spec.eval)
    assert stage_result_path(plain, ctx, "generation") != stage_result_path(authors, ctx, "generation")


def test_system_warmup_ramps_from_a_hundredth_as_the_authors() -> None:
    train = get_study("system_level").plan(Planner("paper"))[0].ar.train
    assert (train.warmup_steps, train.warmup_from) == (5_000, 0.01)
    f = wsd_schedule(train, 1_500_000, 5_004)
    for step in (0, 1, 2_500, 4_999):  # the authors' _warmup_lr(base, 5000, step, init_div_factor=100) / base
        assert f(step) == pytest.approx(step / 5_000 + (1 - step / 5_000) / 100), step
    assert f(5_000) == 1.0 and f(1_199_999) == 1.0 and f(1_200_000) < 1.0
    assert wsd_schedule(ARTrainConfig(warmup_steps=10), 100, 10)(0) == pytest.approx(0.1)  # the default ramp

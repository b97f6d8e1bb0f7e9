"""The tiny-long profile: tiny's models and data, trained five times longer with the Inception distance and probed by
a longer AR model sampled without guidance (the recipe of the README's recall measurements, gigatok/config.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import studies.catalog  # noqa: F401  (registers the studies)
from gigatok.config import ar_run, get_profile, tokenizer_run
from gigatok.study import STUDIES, Planner, get_study
from gigatok.train.steps import tokenizer_total_steps

FIG9_SIZES = ("S-S", "S-B", "B-L")


@pytest.mark.parametrize("kind", ["1d", "2d"])
@pytest.mark.parametrize("name", FIG9_SIZES)
def test_tiny_long_changes_the_schedule_objective_and_probe_only(name: str, kind: str) -> None:
    tiny, long = tokenizer_run(name, kind=kind), tokenizer_run(name, kind=kind, profile="tiny-long")
    quantizer = dataclasses.replace(tiny.tokenizer.quantizer, entropy_weight=0.01)
    assert long.tokenizer == dataclasses.replace(tiny.tokenizer, quantizer=quantizer)
    assert (long.data, long.optim, long.performance) == (tiny.data, tiny.optim, tiny.performance)
    assert long.loss == dataclasses.replace(
        tiny.loss, perceptual="inception", perceptual_weight=1.0, shortcut_end_step=134, gan_start_step=20_000
    )
    # Every size the same 2,000 steps of 8 (tiny: Table 9's 200-400 steps of 8 or 16).
    assert long.train.batch_size == 8 and tokenizer_total_steps(long.train, dataset_size=900) == 2_000
    assert tokenizer_total_steps(tiny.train, dataset_size=900) in (200, 400)
    tiny_ar, long_ar = ar_run(tiny), ar_run(long)
    assert long_ar.model == tiny_ar.model
    assert long_ar.train == dataclasses.replace(tiny_ar.train, epochs=20)  # 560 steps against 112


def test_tiny_long_samples_without_guidance_and_scores_as_tiny() -> None:
    tiny, long = get_profile("tiny"), get_profile("tiny-long")
    assert long.eval == dataclasses.replace(tiny.eval, cfg_scale=1.0) and tiny.eval.cfg_scale == 2.0
    assert long.study_seeds == tiny.study_seeds == {"scaling_1d_vs_2d": 2}


def test_no_tiny_long_run_of_any_study_reaches_the_gan(tmp_path: Path) -> None:
    """The GAN start is past every tokenizer run the profile plans: at tiny the GAN cost B-L 2D up to 11 dB."""
    checked = 0
    for study in sorted(STUDIES):
        for spec in get_study(study).plan(Planner("tiny-long", study=study, weights_dir=str(tmp_path))):
            cfg = spec.tokenizer
            steps = tokenizer_total_steps(cfg.train, dataset_size=900)
            assert steps < cfg.loss.gan_start_step, f"{study} {spec.label}: {steps} steps reach the GAN"
            checked += 1
    assert checked > 50

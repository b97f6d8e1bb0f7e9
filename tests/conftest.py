"""Shared fixtures: one short tiny-profile tokenizer run, trained once per session for every slow test."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from gigatok.config import TokenizerRunConfig, tokenizer_run

TINY_STEPS = 150


def tiny_run(steps: int, log_every: int = 10, **kwargs: object) -> TokenizerRunConfig:
    """A tiny S-S tokenizer run capped at ``steps``, logging every ``log_every`` steps."""
    # Eight epochs of schedule so that ``steps`` (not the profile's short default) ends the run; batch 16, the
    # batch the thresholds of tests/test_training.py were measured at (the profile's S-S trains on 8).
    kwargs = {"epochs": 8, "batch_size": 16, **kwargs}
    cfg = tokenizer_run("S-S", profile="tiny", max_steps=steps, **kwargs)  # type: ignore[arg-type]
    train = dataclasses.replace(cfg.train, log_every=log_every, checkpoint_every=10)
    return dataclasses.replace(cfg, train=train)


@pytest.fixture(scope="session")
def make_tiny_run() -> object:
    """The :func:`tiny_run` builder, for tests that vary a short run."""
    return tiny_run


@pytest.fixture(scope="session")
def trained_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> tuple[TokenizerRunConfig, Path]:
    """A 150-step tiny S-S run with semantic regularization (about 3 minutes on two cores)."""
    from gigatok.perceptual import resolve_perceptual
    from gigatok.train.tokenizer_loop import train_tokenizer

    # Settled as a study settles it ("auto" becomes "lpips" or "off"), so AR runs built on ``cfg`` name the
    # tokenizer that was trained.
    cfg = resolve_perceptual(tiny_run(TINY_STEPS))
    run_dir = tmp_path_factory.mktemp("tokenizer")
    result = train_tokenizer(cfg, run_dir, allow_substitutes=True, progress=False)
    assert result.finished and result.steps == TINY_STEPS
    return cfg, run_dir


@pytest.fixture(scope="module")
def worker_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One thread per process, and a fresh feature cache so rank 0 really fills it while rank 1 waits."""
    with pytest.MonkeyPatch.context() as mp:  # the local executor passes os.environ on to the job
        mp.setenv("OMP_NUM_THREADS", "1")
        mp.setenv("GIGATOK_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield

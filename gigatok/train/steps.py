"""How many optimizer steps a training run takes: the one place the tokenizer and AR loops, and the FLOP model
(:mod:`gigatok.flops`), compute it. No torch, so a planner can count the steps of a thousand runs."""

from __future__ import annotations

import math

from gigatok.config import ARTrainConfig, TrainConfig


def tokenizer_total_steps(train: TrainConfig, dataset_size: int) -> int:
    """A tokenizer run's steps: ``epochs`` of ``steps_per_epoch`` (else one pass over ``dataset_size`` images, the
    ragged last batch dropped), capped by ``max_steps``."""
    per_epoch = train.steps_per_epoch or dataset_size // train.batch_size
    steps = math.ceil(train.epochs * per_epoch)
    return min(steps, train.max_steps) if train.max_steps else steps


def ar_steps_per_epoch(train: ARTrainConfig, num_images: int, num_rows: int) -> int:
    """An AR epoch's steps over a token cache of ``num_images`` images held as ``num_rows`` rows (one per view):
    every row, or with ``one_view_per_image`` every image once at one of its views."""
    return (num_images if train.one_view_per_image else num_rows) // train.batch_size


def ar_total_steps(train: ARTrainConfig, steps_per_epoch: int) -> int:
    """An AR run's steps: ``epochs`` of ``steps_per_epoch``, capped by ``max_steps``."""
    steps = math.ceil(train.epochs * steps_per_epoch)
    return min(steps, train.max_steps) if train.max_steps else steps

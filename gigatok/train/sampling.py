"""Deterministic, resumable data order: the batch at step s depends only on (seed, s).

Each epoch is a permutation drawn from a generator seeded by (seed, epoch); step s reads slice s % steps_per_epoch
of permutation s // steps_per_epoch. Resuming at step s therefore reads exactly the batches an uninterrupted run
would have read, whatever the number of DataLoader workers.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sized
from typing import cast

import torch
from torch.utils.data import Dataset, Sampler


def _mix(*key: int) -> int:
    seed = 0
    for k in key:  # a simple, platform-independent mix of the key parts
        seed = (seed * 1_000_003 + int(k)) % (2**63 - 1)
    return seed


def _generator(*key: int) -> torch.Generator:
    return torch.Generator().manual_seed(_mix(*key))


class ResumableBatchSampler(Sampler[list[int]]):
    def __init__(self, dataset_size: int, batch_size: int, seed: int, start_step: int, total_steps: int) -> None:
        if dataset_size < batch_size:
            raise ValueError(f"train.batch_size: {batch_size} is larger than the dataset ({dataset_size} images)")
        self.n = dataset_size
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step
        self.total_steps = total_steps
        self.steps_per_epoch = dataset_size // batch_size  # drop the ragged last batch

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)

    def __iter__(self) -> Iterator[list[int]]:
        perm: torch.Tensor | None = None
        perm_epoch = -1
        for step in range(self.start_step, self.total_steps):
            epoch, offset = divmod(step, self.steps_per_epoch)
            if epoch != perm_epoch:
                perm, perm_epoch = torch.randperm(self.n, generator=_generator(self.seed, epoch)), epoch
            assert perm is not None  # set on the first step: perm_epoch starts at -1
            yield perm[offset * self.batch_size : (offset + 1) * self.batch_size].tolist()


def flip_mask(seed: int, step: int, batch_size: int) -> torch.Tensor:
    """Which images of step ``step``'s batch are horizontally flipped: a function of (seed, step) only."""
    return torch.rand(batch_size, generator=_generator(seed, step, 7)) < 0.5


def crop_seed(seed: int, step: int, index: int) -> int:
    """The seed of the random crop of image ``index`` in step ``step``'s batch: a function of these alone."""
    return _mix(seed, step, index, 11)


class KeyedBatches(Sampler[list[tuple[int, int]]]):
    """The batches of ``batches`` with each index paired with its :func:`crop_seed`, so that random crops, like the
    batches and the flips, depend only on (seed, step): a resumed run reads exactly the crops an uninterrupted one
    would have, whatever the number of DataLoader workers."""

    def __init__(self, batches: ResumableBatchSampler) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        seed = self.batches.seed
        for step, batch in enumerate(self.batches, start=self.batches.start_step):
            yield [(i, crop_seed(seed, step, i)) for i in batch]


def view_choice(seed: int, step: int, batch_size: int, views: int) -> torch.Tensor:
    """Which of ``views`` cached views of each image of step ``step``'s batch is trained on: uniform, a function of
    (seed, step) only, so a resumed run draws what an uninterrupted one would."""
    return torch.randint(views, (batch_size,), generator=_generator(seed, step, 13))


class IndexedDataset(Dataset):
    """Yields (image, label, index) so per-sample caches can be keyed by dataset index.

    A key (index, crop seed) from :class:`KeyedBatches` reads the image through the dataset's ``item`` with a
    ``random.Random`` of that seed (the image folder's training crop).
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(cast(Sized, self.dataset))  # map-style: torch's Dataset declares no __len__, ours have one

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        if isinstance(key, tuple):
            index, seed = key
            image, label = self.dataset.item(index, random.Random(seed))  # type: ignore[attr-defined]
        else:
            index = key
            image, label = self.dataset[index]
        return image, label, index

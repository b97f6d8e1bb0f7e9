"""Deterministic, resumable data order: the batch at step s depends only on (seed, s).

Each epoch is a permutation drawn from a generator seeded by (seed, epoch); step s reads slice s % steps_per_epoch
of permutation s // steps_per_epoch. Resuming at step s therefore reads exactly the batches an uninterrupted run
would have read, whatever the number of DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, Sampler


def _generator(*key: int) -> torch.Generator:
    seed = 0
    for k in key:  # a simple, platform-independent mix of the key parts
        seed = (seed * 1_000_003 + int(k)) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


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
        perm, perm_epoch = None, -1
        for step in range(self.start_step, self.total_steps):
            epoch, offset = divmod(step, self.steps_per_epoch)
            if epoch != perm_epoch:
                perm, perm_epoch = torch.randperm(self.n, generator=_generator(self.seed, epoch)), epoch
            yield perm[offset * self.batch_size : (offset + 1) * self.batch_size].tolist()


def flip_mask(seed: int, step: int, batch_size: int) -> torch.Tensor:
    """Which images of step ``step``'s batch are horizontally flipped: a function of (seed, step) only."""
    return torch.rand(batch_size, generator=_generator(seed, step, 7)) < 0.5


def view_choice(seed: int, step: int, batch_size: int, views: int) -> torch.Tensor:
    """Which of ``views`` cached views of each image of step ``step``'s batch is trained on: uniform, a function of
    (seed, step) only, so a resumed run draws what an uninterrupted one would."""
    return torch.randint(views, (batch_size,), generator=_generator(seed, step, 11))


class IndexedDataset(Dataset):
    """Yields (image, label, index) so per-sample caches can be keyed by dataset index."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image, label = self.dataset[index]
        return image, label, index

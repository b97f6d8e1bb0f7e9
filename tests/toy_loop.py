"""A training loop on the shared scaffold (gigatok.train.loop) around a linear regression: the scaffold's checkpoint,
resume and stop behaviour in about a second, for the preemption and disk-full tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gigatok.train.loop import Cadence, checkpointer, claim_run_dir, load_saved, resume, saved_states, start_run
from gigatok.train.loop import train_steps as scaffold_steps

STEPS = 30


@dataclass(frozen=True)
class ToyTrain:
    """The train-config fields the scaffold reads."""

    log_every: int = 5
    checkpoint_every: int = 1000
    checkpoint_minutes: float | None = None


def batches(start: int, width: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Step ``s``'s batch depends on ``s`` alone, so a resumed run sees what an uninterrupted one does."""
    target = torch.linspace(-2.0, 3.0, width)
    for step in range(start, STEPS):
        g = torch.Generator().manual_seed(step)
        x = torch.randn(8, width, generator=g)
        yield x, x @ target + 0.1 * torch.randn(8, generator=g)


def train(
    run_dir: Path,
    on_step: Callable[[int], None] | None = None,
    train: ToyTrain = ToyTrain(),
    width: int = 4,
) -> nn.Linear:
    """Train (or resume) the toy run in ``run_dir``; ``on_step(at)`` is called at the start of each step. A
    checkpoint holds about ``4 * width`` bytes of weights (plain SGD keeps no state)."""
    run = start_run(run_dir, "cpu", progress=False)
    claim_run_dir(run, "toy", {"toy": True}, lambda d: d, seed=0)
    model = nn.Linear(width, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05 / width**0.5)
    saved: dict[str, nn.Module | torch.optim.Optimizer] = {"model": model, "opt": opt}
    resume(run, 0, lambda state: load_saved(saved, state))

    def step(batch: tuple[torch.Tensor, torch.Tensor], at: int) -> dict[str, torch.Tensor]:
        if on_step is not None:
            on_step(at)
        x, y = batch
        loss = ((model(x).squeeze(1) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": loss}

    scaffold_steps(
        run,
        batches(run.step, width),
        step,
        Cadence.of(train, STEPS, None),
        checkpointer(run, "toy", 2, lambda: saved_states(saved)),
        lr_at=lambda at: opt.param_groups[0]["lr"],
        optimizers=(opt,),
        desc="toy",
        postfix=lambda last: {},
    )
    return model

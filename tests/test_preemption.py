"""A preemption warning stops a training loop at a step boundary with a checkpoint; a timer checkpoints too.

The loop here is the shared scaffold (gigatok.train.loop) around a small regression model, so the whole story runs in
about a second: a handler stands in for Submitit's (its "requeue"), the signal arrives in the middle of a step far from
any periodic checkpoint, and the resumed run ends with the weights and curve of an uninterrupted one. The Slurm test
in tests/test_cluster.py does the same with a real job and a real requeue.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import pytest
import torch
from torch import nn

from gigatok.train import preemption
from gigatok.train.checkpoint import latest_checkpoint
from gigatok.train.loop import Cadence, checkpointer, claim_run_dir, load_saved, resume, saved_states, start_run
from gigatok.train.loop import train_steps as scaffold_steps
from gigatok.train.run_dir import read_metrics

STEPS = 30
SIGNAL_AT = 17  # the signal arrives during this step (0-based); periodic checkpoints are every 1000 steps


@dataclass(frozen=True)
class ToyTrain:
    log_every: int = 5
    checkpoint_every: int = 1000
    checkpoint_minutes: float | None = None


def batches(start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for step in range(start, STEPS):
        g = torch.Generator().manual_seed(step)
        x = torch.randn(8, 4, generator=g)
        yield x, x @ torch.tensor([1.0, -2.0, 3.0, 0.5]) + 0.1 * torch.randn(8, generator=g)


def train(run_dir: Path, on_step=None, train: ToyTrain = ToyTrain()) -> nn.Linear:  # noqa: ANN001
    run = start_run(run_dir, "cpu", progress=False)
    claim_run_dir(run, "toy", {"toy": True}, lambda d: d, seed=0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    saved = {"model": model, "opt": opt}
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
        batches(run.step),
        step,
        Cadence.of(train, STEPS, None),
        checkpointer(run, "toy", 2, lambda: saved_states(saved)),
        lr_at=lambda at: 0.05,
        optimizers=(opt,),
        desc="toy",
        postfix=lambda last: {},
    )
    return model


@pytest.fixture
def submitit_handler() -> Iterator[list[int]]:
    """A handler on the preemption signal, as a Submitit job has: it records each call (its requeue)."""
    calls: list[int] = []
    signum = preemption.preempt_signal()

    def requeue(s: int, frame: FrameType | None) -> None:
        calls.append(s)

    previous = signal.signal(signum, requeue)
    try:
        yield calls
    finally:
        signal.signal(signum, previous)


def send_signal_at(step: int):  # noqa: ANN201
    def on_step(at: int) -> None:
        if at == step:
            os.kill(os.getpid(), preemption.preempt_signal())

    return on_step


def test_signal_in_a_step_stops_at_its_end_with_a_checkpoint_and_the_resume_repeats_nothing(
    tmp_path: Path, submitit_handler: list[int]
) -> None:
    reference = train(tmp_path / "uninterrupted")
    with preemption.deferred() as deferral, pytest.raises(preemption.Preempted) as stopped:
        assert deferral is not None
        train(tmp_path / "run", on_step=send_signal_at(SIGNAL_AT))
    assert stopped.value.step == SIGNAL_AT + 1  # the step the signal came in was finished, then checkpointed
    assert latest_checkpoint(tmp_path / "run").name == f"step-{SIGNAL_AT + 1:08d}.pt"
    assert submitit_handler == []  # inside the loop the signal waits for the step; the job hands it over after

    resumed = train(tmp_path / "run")
    assert torch.equal(resumed.weight, reference.weight) and torch.equal(resumed.bias, reference.bias)
    steps = [r["step"] for r in read_metrics(tmp_path / "run")]
    assert steps == list(range(5, STEPS + 1, 5))  # every logged step once: no gap, no duplicate
    for got, want in zip(read_metrics(tmp_path / "run"), read_metrics(tmp_path / "uninterrupted"), strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-6)


def test_signal_outside_a_training_loop_goes_to_submitit_at_once(submitit_handler: list[int]) -> None:
    with preemption.deferred() as deferral:
        assert deferral is not None
        os.kill(os.getpid(), preemption.preempt_signal())  # an evaluation, say: no loop listens
    assert submitit_handler == [preemption.preempt_signal()]
    assert signal.getsignal(preemption.preempt_signal()).__name__ == "requeue"  # Submitit's handler is back


def test_hand_over_calls_submitit_and_exits_if_it_did_not(submitit_handler: list[int]) -> None:
    with preemption.deferred() as deferral:
        assert deferral is not None
        with pytest.raises(SystemExit, match="not requeued"):
            deferral.hand_over(preemption.Preempted(7, preemption.preempt_signal()), rank=0)
    assert submitit_handler == [preemption.preempt_signal()]


def test_no_submitit_handler_no_deferral() -> None:
    signum = preemption.preempt_signal()
    previous = signal.signal(signum, signal.SIG_DFL)
    try:
        with preemption.deferred() as deferral:
            assert deferral is None
    finally:
        signal.signal(signum, previous)


def test_timer_checkpoints_between_periodic_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    monkeypatch.setattr(preemption, "now", lambda: now[0])

    def tick(at: int) -> None:
        now[0] += 60.0  # a minute a step

    seen: list[str] = []
    real = preemption.CheckpointClock.reset

    def reset(self: preemption.CheckpointClock) -> None:
        seen.append(str(latest_checkpoint(tmp_path / "run").name))
        real(self)

    monkeypatch.setattr(preemption.CheckpointClock, "reset", reset)
    train(tmp_path / "run", on_step=tick, train=ToyTrain(checkpoint_minutes=10))
    assert seen == [f"step-{s:08d}.pt" for s in (10, 20, 30)]


def test_unknown_preempt_signal_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(preemption.PREEMPT_SIGNAL_ENV, "NOPE")
    with pytest.raises(ValueError, match=r"SUBMITIT_PREEMPT_SIGNAL: unknown signal SIGNOPE"):
        preemption.preempt_signal()

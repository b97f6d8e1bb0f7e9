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
from pathlib import Path
from types import FrameType

import pytest
import torch
from toy_loop import STEPS, ToyTrain, train

from gigatok.train import preemption
from gigatok.train.checkpoint import latest_checkpoint
from gigatok.train.run_dir import read_metrics

SIGNAL_AT = 17  # the signal arrives during this step (0-based); periodic checkpoints are every 1000 steps


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

"""Stop training at a step boundary with a checkpoint when the job is about to go, and checkpoint on a timer.

Slurm warns a job before it preempts it or its time runs out (Submitit asks for the signal ``slurm_signal_delay_s``
seconds ahead, USR2 unless ``$SUBMITIT_PREEMPT_SIGNAL`` says otherwise). Submitit's own handler requeues the job at
once and exits, wherever the process is: a training loop would lose every step since its last periodic checkpoint
(up to ``checkpoint_every`` steps, hours at the paper's sizes). While a job runs, :func:`deferred` puts a handler in
front of Submitit's:

- inside a training loop (:func:`listening`), the signal only sets a flag. The loop finishes its step, all ranks agree
  on that step (:func:`agreed`), it writes a checkpoint, flushes its log and raises :class:`Preempted`; the job then
  hands the signal to Submitit's handler (:meth:`Deferral.hand_over`), which requeues it. The requeued job resumes
  from that checkpoint, so nothing is trained twice.
- anywhere else (an evaluation, the token cache), Submitit's handler runs at once, as before: those stages resume
  from their own files.

Independently, :class:`CheckpointClock` asks for a checkpoint when ``checkpoint_minutes`` have passed since the last
one, so a job killed without warning (a node failure, ``scancel``) loses minutes, not ``checkpoint_every`` steps.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch only where a multi-process loop needs it: the launcher imports this module too
    from gigatok.distributed import DistEnv

__all__ = ["CheckpointClock", "Deferral", "Preempted", "agreed", "deferred", "listening", "preempt_signal"]

# Submitit's setting of which signal warns of a preemption or time-out (submitit.core.job_environment).
PREEMPT_SIGNAL_ENV = "SUBMITIT_PREEMPT_SIGNAL"


class Preempted(BaseException):  # noqa: N818 (not an error: the job stops to be requeued)
    """A training loop stopped at ``step``, checkpointed, because the job was told it will be stopped. A
    BaseException, like the SystemExit Submitit's handler raises: no ``except Exception`` on the way takes it for a
    failure of the run."""

    def __init__(self, step: int, signum: int) -> None:
        super().__init__(f"stopped at step {step} on {signal.Signals(signum).name}, checkpointed, to be requeued")
        self.step = step
        self.signum = signum


@dataclass
class Deferral:
    """The handler in front of Submitit's while a job runs: what was received, and whether a loop listens."""

    signum: int
    previous: Callable[[int, FrameType | None], Any] | int | None
    received: int | None = None
    listeners: int = 0

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.listeners:
            if self.received is None:
                print(f"{signal.Signals(signum).name} received: checkpointing at the end of this step", flush=True)
            self.received = signum
            return
        self.call_previous(signum, frame)

    def call_previous(self, signum: int, frame: FrameType | None) -> None:
        if callable(self.previous):  # always, where a deferral exists: deferred() sets none over SIG_DFL or SIG_IGN
            self.previous(signum, frame)

    def hand_over(self, stop: Preempted, rank: int) -> None:
        """After a loop stopped: Submitit's handler requeues the job and exits (rank 0). The other ranks wait for
        the requeue to stop them, as Submitit's own handler has them do (an exit could end rank 0's task too)."""
        if rank == 0:  # in the job log, beside Submitit's "this job is preempted"
            print(f"training {stop}", flush=True)
        self.call_previous(stop.signum, None)
        if rank != 0:
            time.sleep(float(os.environ.get("GIGATOK_PREEMPT_WAIT_S", "600")))
        sys.exit(f"{stop}; the job was not requeued")


_active: Deferral | None = None


def preempt_signal() -> int:
    """The signal Submitit treats as "about to be preempted or timed out" in this process."""
    name = "SIG" + os.environ.get(PREEMPT_SIGNAL_ENV, "USR2")
    found = getattr(signal, name, None)
    if not isinstance(found, signal.Signals):
        raise ValueError(f"${PREEMPT_SIGNAL_ENV}: unknown signal {name}")
    return int(found)


@contextmanager
def deferred() -> Iterator[Deferral | None]:
    """While the block runs, a preemption signal reaching a training loop stops it at a step boundary (module
    docstring). Only where a handler is already set for it (a Submitit job); yields None elsewhere, and off the
    main thread, where no handler can be set."""
    global _active
    signum = preempt_signal()
    previous = signal.getsignal(signum)
    if previous in (signal.SIG_DFL, signal.SIG_IGN, None) or _active is not None:
        yield None
        return
    deferral = Deferral(signum, previous)
    try:
        signal.signal(signum, deferral.handle)
    except ValueError:  # not the main thread
        yield None
        return
    _active = deferral
    try:
        yield deferral
    finally:
        _active = None
        signal.signal(signum, previous)


@contextmanager
def listening() -> Iterator[Callable[[], int | None]]:
    """A training loop's steps: a preemption signal now waits for the end of a step. Yields the check, which
    returns the signal received (or None)."""
    deferral = _active
    if deferral is None:
        yield lambda: None
        return
    deferral.listeners += 1
    try:
        yield lambda: deferral.received
    finally:
        deferral.listeners -= 1


def now() -> float:
    return time.monotonic()


@dataclass
class CheckpointClock:
    """Whether ``minutes`` have passed since the last checkpoint (None: never)."""

    minutes: float | None
    last: float = field(default_factory=lambda: now())

    def due(self) -> bool:
        return self.minutes is not None and now() - self.last >= self.minutes * 60

    def reset(self) -> None:
        self.last = now()


def agreed(flags: tuple[bool, bool], env: DistEnv) -> tuple[bool, bool]:
    """(stop, checkpoint) as every rank sees it: true on all ranks if true on any, so all ranks stop or checkpoint
    at the same step. One process: the flags themselves. Several: a max-reduce of two numbers over a CPU (gloo)
    group, so the check never waits for the GPU."""
    if env.world_size == 1:
        return flags
    import torch
    import torch.distributed as dist

    values = torch.tensor([float(flags[0]), float(flags[1])])
    dist.all_reduce(values, op=dist.ReduceOp.MAX, group=control_group(env))
    return bool(values[0]), bool(values[1])


_control: dict[str, Any] = {}


def control_group(env: DistEnv) -> Any:
    """The group the stop flags travel on: the default one where it is gloo, else a gloo group over every rank,
    made once per process group (all ranks reach the first call together: each checks after the same step)."""
    import torch.distributed as dist

    if env.backend == "gloo":
        return None
    default = dist.group.WORLD
    if _control.get("for") is not default:
        _control.update({"for": default, "group": dist.new_group(backend="gloo")})
    return _control["group"]

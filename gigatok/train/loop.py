"""The scaffold both training loops share: a resumable, checkpointed, multi-process run around a loop's own step.

A loop (tokenizer_loop, ar_loop) builds its models, optimizers and data, and says what one step does; everything
that makes the run survive preemption and agree across processes is here, once:

- :func:`start_run`: the device, and the process group when the launcher started several processes;
- :func:`claim_run_dir`: config.json written (or checked) by rank 0, then this rank's seed;
- :func:`resume`: the newest checkpoint that loads, into the loop's modules, the generators, the step and the open
  log window; then the metrics log, cut back to that step;
- :func:`checkpointer`: the closure that saves a checkpoint, in the one layout both loops write;
- :func:`saved_states` and :func:`load_saved`: a loop's modules and optimizers, by the key each is saved under, into a
  checkpoint and back out of one, so each loop names what its checkpoints hold once; an FSDP run's checkpoints are
  sharded (:mod:`gigatok.train.sharded`), and either format loads into a run of either parallelism but one: a
  one-file checkpoint into a sharded model;
- :func:`train_steps`: the step loop with its cadence (a log record every ``log_every`` steps, the finite check
  before any weights are saved, a checkpoint every ``checkpoint_every`` steps, every ``checkpoint_minutes`` and at the
  stop, and a stop with a checkpoint at the end of the step a preemption signal arrives in
  (:mod:`gigatok.train.preemption`);
- :func:`save_final`: the final weights, then summary.json (its presence is what "finished" means).

These are plain functions over a small :class:`Run` record, not a trainer class: each loop stays readable top to
bottom, and what differs between them (a discriminator, snapshots, the validation loss) stays in the loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias, TypeVar

import torch
from torch import nn
from tqdm.auto import tqdm

from gigatok.distributed import (
    DistEnv,
    barrier,
    init_distributed,
    is_main,
    local_device,
    main_first,
    mean_across_ranks,
    rank_rng_states,
    restore_rank_rng,
    seed_for_rank,
)
from gigatok.fsdp import full_state_dict, is_sharded
from gigatok.io import atomic_write_bytes, atomic_write_json, rng_state
from gigatok.train.checkpoint import SHARDED_KEY, CheckpointError, load_latest_checkpoint, save_checkpoint
from gigatok.train.preemption import CheckpointClock, Preempted, agreed, listening, preempt_signal
from gigatok.train.run_dir import MeanWindow, MetricsLog, prepare_run_dir, require_finite
from gigatok.train.sharded import Pair, load_sharded, save_sharded

log = logging.getLogger(__name__)

__all__ = [
    "Cadence",
    "LogFn",
    "Pair",
    "Run",
    "Stateful",
    "checkpointer",
    "claim_run_dir",
    "load_saved",
    "resume",
    "save_final",
    "saved_states",
    "start_run",
    "train_steps",
]

B = TypeVar("B")
LogFn = Callable[[int, dict[str, float]], None]
# What a checkpoint holds of a loop, besides the scaffold's own entries: anything with a state dict to save and load.
Stateful: TypeAlias = nn.Module | torch.optim.Optimizer


@dataclass
class Run:
    """This process's part in a run: where the run lives, which rank this is, and the state every loop carries."""

    dir: Path
    env: DistEnv
    device: torch.device
    progress: bool  # this process shows progress bars: rank 0 alone, and only when asked
    step: int = 0  # steps done: the resumed checkpoint's, then advanced by train_steps
    # Running sums of the logged terms since the last record; saved in checkpoints so that a resumed run logs the
    # means an uninterrupted one would.
    window: MeanWindow = field(default_factory=MeanWindow)
    log: MetricsLog | None = None  # rank 0's metrics.jsonl, opened by resume (after it knows the step)

    @property
    def main(self) -> bool:
        return is_main(self.env)


def start_run(run_dir: str | Path, device: str | torch.device | None, progress: bool) -> Run:
    """The device (CUDA when there is one) and, under a multi-process launcher, the process group and this rank's
    GPU. Nothing is read or written yet, so a finished run can still return before any data is opened."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    env = init_distributed(device.type)
    return Run(Path(run_dir), env, local_device(env, device), progress and is_main(env))


def claim_run_dir(
    run: Run, config_hash: str, config: dict[str, Any], from_dict: Callable[[dict[str, Any]], Any], seed: int
) -> None:
    """Rank 0 writes config.json (or checks that the one there is this run's) before any rank goes on; then each
    rank seeds its own generator (rank 0 the run's seed, so one process is unchanged; the others their own dropout,
    as DDP starts them all from rank 0's weights). Seeded here, before the loop builds its models, so their
    initialisation draws from it."""
    main_first(run.env, lambda: prepare_run_dir(run.dir, config_hash, config, from_dict))
    torch.manual_seed(seed_for_rank(seed, run.env))


def resume(run: Run, seed: int, load: Callable[[dict[str, Any]], None]) -> None:
    """Continue from the newest checkpoint in the run directory that loads, if any, then open the metrics log.

    ``load`` puts the checkpoint's entries into the loop's own modules and optimizers; the generators, the step and
    the open log window are restored here. A run resumes from its directory, never from state captured when the job
    was submitted, so a requeued job always picks up the newest checkpoint.
    """
    if (found := load_latest_checkpoint(run.dir)) is not None:
        path, state = found
        if run.main:  # in the job log: where a requeued job picked up
            log.info(f"resuming {run.dir.name} from {path.name}")
        load(state)
        restore_rank_rng(state, run.env, run.device, seed)
        run.step = int(state["step"])
        run.window.load(state["log_window"])
    barrier(run.env)  # every rank has read the checkpoint before rank 0 may write a newer one
    run.log = MetricsLog(run.dir / "metrics.jsonl", run.step) if run.main else None


def checkpointer(
    run: Run,
    config_hash: str,
    keep: int,
    modules: Callable[[], dict[str, Any]],
    gathered: Callable[[], dict[str, Any]] = dict,
    sharded: Sequence[Pair] = (),
) -> Callable[[int], None]:
    """The function that saves the checkpoint of step ``at`` (every rank calls it; rank 0 writes).

    ``modules`` gives the loop's module and optimizer states, read on rank 0 only. ``gathered`` gives state collected
    from every rank (a collective, so every rank calls it), saved after the log window. The modules saved are the
    unwrapped ones, so a checkpoint resumes with any number of processes. With ``sharded`` (an FSDP run: its
    modules and optimizers, by pair) the checkpoint is a sharded one every rank writes its part of, in place of
    ``modules``'s file.
    """

    def checkpoint(at: int) -> None:
        if run.env.world_size > 1:  # the open window's rank means: a resumed run logs what an uninterrupted one would
            run.window.sums = dict(mean_across_ranks(run.window.sums, run.env))
        rank_states = rank_rng_states(run.env, run.device)
        shared = gathered()
        if sharded:
            scaffold = {"step": at, "config_hash": config_hash, "log_window": run.window.state(), **shared}
            scaffold.update(rng_state(run.device), **rank_states)
            save_sharded(run.dir, at, sharded, scaffold if run.main else None, keep, run.env)
            return
        if run.main:  # the keys in the order the loops always wrote them: a checkpoint's bytes are unchanged
            state = {
                "step": at,
                **modules(),
                "config_hash": config_hash,
                "log_window": run.window.state(),
                **shared,
                **rng_state(run.device),
                **rank_states,
            }
            save_checkpoint(run.dir, at, state, keep)
        barrier(run.env)

    return checkpoint


def saved_states(saved: Mapping[str, Stateful]) -> dict[str, Any]:
    """The state dicts of ``saved``, each under its key, in the mapping's order (a checkpoint's entries keep the
    order the loops always wrote them in, so its bytes are unchanged)."""
    return {key: part.state_dict() for key, part in saved.items()}


def load_saved(saved: Mapping[str, Stateful], state: Mapping[str, Any], pairs: Sequence[Pair] = ()) -> None:
    """The inverse of :func:`saved_states`: each module and optimizer of ``saved`` loads its entry of ``state``; from
    a sharded checkpoint, each of ``pairs`` (the same modules and optimizers, paired) loads its shards (every rank
    together)."""
    if (path := state.get(SHARDED_KEY)) is not None:
        if not pairs:
            raise CheckpointError(f"{path}: a sharded checkpoint, and this loop names no modules to load it into")
        load_sharded(path, pairs)
        return
    if any(is_sharded(pair.module) for pair in pairs):
        raise CheckpointError(
            f"checkpoint of step {state['step']}: a one-file (ddp) checkpoint cannot load into a sharded model; "
            "resume this run with performance.parallelism 'ddp'"
        )
    for key, part in saved.items():
        part.load_state_dict(state[key])


@dataclass(frozen=True)
class Cadence:
    """When steps are logged and checkpointed. ``end`` is where this call stops: the schedule's last step, or an
    earlier ``stop_at_step`` (a preemption, as the tests stage it), which still gets its checkpoint."""

    total_steps: int
    log_every: int
    checkpoint_every: int
    end: int
    checkpoint_minutes: float | None = None  # also checkpoint when this long has passed since the last one

    @classmethod
    def of(cls, train: Any, total_steps: int, stop_at_step: int | None) -> Cadence:
        """From a loop's train config (``log_every``, ``checkpoint_every``, ``checkpoint_minutes``)."""
        end = total_steps if stop_at_step is None else min(total_steps, stop_at_step)
        return cls(total_steps, train.log_every, train.checkpoint_every, end, train.checkpoint_minutes)


def train_steps(
    run: Run,
    batches: Iterable[B],
    step: Callable[[B, int], dict[str, torch.Tensor]],
    cadence: Cadence,
    checkpoint: Callable[[int], None],
    *,
    lr_at: Callable[[int], float],
    optimizers: Sequence[torch.optim.Optimizer],
    desc: str,
    postfix: Callable[[dict[str, float]], Mapping[str, str]],
    log_fn: LogFn | None = None,
    logged: Callable[[], dict[str, float]] = dict,
    record: Mapping[str, Any] | None = None,
    snapshot_steps: Collection[int] = (),
    snapshot: Callable[[int, dict[str, float]], object] | None = None,  # every rank calls it; what it returns is unused
) -> dict[str, float]:
    """Run ``step(batch, step_index)`` on each batch at the LR ``lr_at(step_index)``; returns the last log record's
    metrics (empty when none was logged).

    A log record (every ``log_every`` steps and at the last step of the schedule) holds the interval means of the
    step's terms over all ranks, then ``logged()`` (read at the log step alone), then the LR; ``record`` adds fixed
    fields to metrics.jsonl only. A stop before the end (preemption) logs nothing partial: the open window is saved
    with the checkpoint. Before weights are saved (a checkpoint, or a snapshot at ``snapshot_steps``, which every
    rank calls and rank 0 writes) the steps since the last record must have been finite: a GPU is never synchronised
    per step for that check, and no checkpoint ever holds the weights of a diverged step.
    """
    env, window = run.env, run.window
    last: dict[str, float] = {}
    clock = CheckpointClock(cadence.checkpoint_minutes)
    bar = tqdm(total=cadence.total_steps, initial=run.step, desc=desc, disable=not run.progress)
    with bar, listening() as received:
        for batch in batches:
            lr = lr_at(run.step)
            for opt in optimizers:
                for group in opt.param_groups:
                    group["lr"] = lr
            window.add(step(batch, run.step))
            run.step += 1
            at = run.step
            bar.update(1)
            if at % cadence.log_every == 0 or at == cadence.total_steps:
                last = {**mean_across_ranks(window.means(), env), **logged(), "lr": lr}
                require_finite(last, at, run.dir)
                window.reset()
                if run.log is not None:
                    run.log.append({"step": at, **last, **(record or {})})
                if log_fn is not None and run.main:
                    log_fn(at, last)
                bar.set_postfix(postfix(last))
            stop, on_time = agreed((received() is not None, clock.due()), env)
            snapshot_due = at in snapshot_steps
            checkpoint_due = at % cadence.checkpoint_every == 0 or at == cadence.end or stop or on_time
            if snapshot_due or checkpoint_due:
                require_finite(mean_across_ranks(window.means(), env), at, run.dir)
            if snapshot_due and snapshot is not None:  # every rank (a sharded model is gathered); before this
                # checkpoint: a resume never skips it
                snapshot(at, last)
            if checkpoint_due:
                checkpoint(at)
                clock.reset()
            if stop:  # the job was told it will be stopped: requeued, it resumes from this step's checkpoint
                raise Preempted(at, received() or preempt_signal())
    return last


def save_final(run: Run, weights_file: str, model: nn.Module, summary: dict[str, Any]) -> None:
    """Rank 0 writes the final weights (the whole model's state dict, gathered if sharded: the same file for any
    parallelism), then summary.json (written last: its presence means finished); no rank returns before the run's
    files are there."""
    weights = full_state_dict(model, run.main)  # every rank: a collective for a sharded model
    if run.main:
        atomic_write_bytes(run.dir / weights_file, lambda f: torch.save(weights, f))
        atomic_write_json(run.dir / "summary.json", summary)
    barrier(run.env)

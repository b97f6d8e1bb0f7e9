"""Dispatch with Submitit: Slurm job arrays on a cluster, local processes otherwise, in-process for debugging.

A job is a group of runs that share a tokenizer (so the tokenizer is trained once, by the job that needs it,
and never by two jobs at once); a Slurm submission is one job array over the groups, capped by
``array_parallelism``. Each job is a :class:`RunJob`, a Submitit ``Checkpointable``: on time-out or preemption
Submitit requeues it with the same arguments (the run specs), and it resumes from the checkpoints on disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import os
import re
import shutil
import sys
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import submitit

from gigatok.job_threads import use_threads
from gigatok.runs.execute import execute_run
from gigatok.runs.spec import RunContext, RunSpec
from gigatok.train.preemption import Preempted, deferred

if TYPE_CHECKING:  # torch is imported where it is used: the launcher need not load it
    from torch.distributed import ProcessGroup

    from gigatok.config import ARRunConfig, TokenizerRunConfig

ExecutorName = Literal["auto", "slurm", "local", "debug"]
EXECUTORS = ("auto", "slurm", "local", "debug")


class DispatchError(RuntimeError):
    """The requested executor cannot be used here."""


@dataclass(frozen=True)
class SlurmSettings:
    """Slurm resources of one job (one run group); from flags, or a TOML cluster file with the same keys."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    nodes: int = 1
    gpus_per_node: int = 1  # one DDP process per GPU
    cpus_per_task: int = 10
    mem_gb: int | None = None
    time_min: int = 24 * 60
    array_parallelism: int = 64
    setup: tuple[str, ...] = ()  # shell lines run before the job (module load, conda activate, ...)
    # Further sbatch options, passed through as ``--key=value`` (exclude, reservation, mail-type, gres, ...): the
    # cluster TOML's ``[slurm.extra]`` table or ``--slurm-extra key=value``. Sorted (key, value) pairs.
    extra: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        for name in ("nodes", "cpus_per_task", "time_min", "array_parallelism"):
            if getattr(self, name) < 1:
                raise ValueError(f"slurm.{name}: must be >= 1, got {getattr(self, name)}")
        if self.gpus_per_node < 0:
            raise ValueError(f"slurm.gpus_per_node: must be >= 0, got {self.gpus_per_node}")
        for key, value in self.extra:
            check_extra_option(key, value)

    @classmethod
    def from_file(
        cls, path: str | os.PathLike[str], defaults: dict[str, Any] | None = None, **overrides: Any
    ) -> SlurmSettings:
        """Settings from a TOML file (``[slurm]`` table or top level) over ``defaults``, then ``overrides`` that
        are not None."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"{path}: cluster config file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: not valid TOML ({exc})") from None
        data = data.get("slurm", data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown keys {unknown}; known: {sorted(known)}")
        if "setup" in data:
            data["setup"] = tuple(data["setup"])
        data = {**(defaults or {}), **data}
        if "extra" in data:
            if not isinstance(data["extra"], dict):
                raise ValueError(f"{path}: 'extra' must be a table of sbatch options, e.g. [slurm.extra]")
            data["extra"] = extra_options(data["extra"])
        extra = overrides.pop("extra", None)
        data.update({k: v for k, v in overrides.items() if v is not None})
        if extra:  # flags add to the file's options and replace those of the same name
            data["extra"] = extra_options({**dict(data.get("extra", ())), **dict(extra)})
        return cls(**data)

    def submitit_parameters(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            "nodes": self.nodes,
            "tasks_per_node": max(1, self.gpus_per_node),
            "cpus_per_task": self.cpus_per_task,
            "timeout_min": self.time_min,
            "slurm_array_parallelism": self.array_parallelism,
            "slurm_signal_delay_s": 120,  # time to write a checkpoint before the job is stopped
        }
        if self.gpus_per_node:
            params["gpus_per_node"] = self.gpus_per_node
        if self.mem_gb is not None:
            params["mem_gb"] = self.mem_gb
        for name in ("partition", "account", "qos", "constraint"):
            if getattr(self, name):
                params[f"slurm_{name}"] = getattr(self, name)
        if self.setup:
            params["slurm_setup"] = list(self.setup)
        if self.extra:
            params["slurm_additional_parameters"] = dict(self.extra)
        return params


# sbatch options the settings above (or Submitit) already write: passing them again as extras would be ambiguous.
OWNED_SBATCH_OPTIONS = frozenset(
    ("partition", "account", "qos", "constraint", "nodes", "ntasks-per-node", "gpus-per-node", "cpus-per-task")
    + ("mem", "time", "array", "job-name", "output", "error", "open-mode", "signal", "requeue", "wckey")
)
_EXTRA_KEY = re.compile(r"[a-z][a-z0-9-]*")


def check_extra_option(key: str, value: str) -> None:
    """An extra sbatch option must look like one (``exclude``, ``mail-type``) and carry a one-line value."""
    if not _EXTRA_KEY.fullmatch(key):
        raise ValueError(f"slurm extra option {key!r}: not an sbatch option name (lower-case letters, digits, '-')")
    if key in OWNED_SBATCH_OPTIONS:
        raise ValueError(f"slurm extra option {key!r}: set by the workbench; use its own flag or cluster-file key")
    if not isinstance(value, str) or not value.strip() or "\n" in value:
        raise ValueError(f"slurm extra option {key!r}: needs a one-line value, got {value!r}")


def extra_options(options: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """Normalised extras: ``mail_type`` and ``mail-type`` are one option; values as strings; sorted."""
    out = {str(k).replace("_", "-"): v if isinstance(v, str) else str(v) for k, v in options.items()}
    for key, value in out.items():
        check_extra_option(key, value)
    return tuple(sorted(out.items()))


def parse_extra_flags(flags: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``--slurm-extra key=value`` flags as normalised options."""
    options: dict[str, str] = {}
    for flag in flags:
        key, sep, value = flag.partition("=")
        if not sep:
            raise ValueError(f"--slurm-extra {flag!r}: expected key=value, e.g. exclude=node07")
        options[key.strip()] = value.strip()
    return extra_options(options)


def job_name(prefix: str, specs: Sequence[RunSpec], limit: int = 64) -> str:
    """``<prefix>:<factors>`` for squeue: the factors every run of the submission shares (a job array has one
    name for all its tasks), trimmed to ``limit`` characters."""
    shared = specs[0].factor_dict if specs else {}
    for spec in specs[1:]:
        theirs = spec.factor_dict
        shared = {k: v for k, v in shared.items() if k in theirs and theirs[k] == v}
    factors = ",".join(f"{k}={v}" for k, v in shared.items())
    name = f"{prefix}:{factors}" if factors else prefix
    return name if len(name) <= limit else name[: limit - 1] + "~"


def slurm_available() -> bool:
    return shutil.which("sbatch") is not None


def check_executor_name(name: str) -> None:
    """A typo in ``--executor`` is refused before anything else, a dry run included."""
    if name not in EXECUTORS:
        raise DispatchError(f"unknown executor {name!r}; known: {', '.join(EXECUTORS)}")


def resolve_executor(name: str) -> str:
    """``auto`` is Slurm where ``sbatch`` exists and local processes elsewhere."""
    check_executor_name(name)
    if name == "auto":
        return "slurm" if slurm_available() else "local"
    if name == "slurm" and not slurm_available():
        raise DispatchError("Slurm was requested (--executor slurm) but sbatch is not on PATH: no cluster here")
    return name


@contextlib.contextmanager
def sbatch_errors() -> Iterator[None]:
    """sbatch refusing a submission (an unknown partition, a GPU request on a CPU-only cluster) becomes one
    :class:`DispatchError` line with sbatch's own reason, not Submitit's traceback and echo of stderr."""
    echoed = io.StringIO()
    try:
        with contextlib.redirect_stderr(echoed):
            yield
    except submitit.core.utils.FailedJobError as exc:  # its message is sbatch's stderr, echoed already
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or ["no reason given"]
        raise DispatchError(f"sbatch refused the submission: {lines[-1]}") from None
    except BaseException:
        sys.stderr.write(echoed.getvalue())
        raise
    sys.stderr.write(echoed.getvalue())


def make_executor(
    name: str,
    folder: str | os.PathLike[str],
    slurm: SlurmSettings | None = None,
    local_tasks: int = 1,
    timeout_min: int = 24 * 60,
    slurm_name: str = "gigatok",
) -> submitit.Executor:
    """A Submitit executor writing its logs and pickles under ``folder/%j``; ``slurm_name`` names its Slurm jobs."""
    folder = Path(folder) / "%j"
    if name == "debug":
        return submitit.DebugExecutor(folder=folder)
    if name == "local":
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=timeout_min, tasks_per_node=local_tasks)
        return executor
    if name == "slurm":
        slurm_executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        slurm_executor.update_parameters(name=slurm_name, **(slurm or SlurmSettings()).submitit_parameters())
        return slurm_executor
    raise DispatchError(f"unknown executor {name!r}; known: {', '.join(EXECUTORS)}")


def group_by_tokenizer(specs: Sequence[RunSpec]) -> list[list[RunSpec]]:
    """Runs that share a tokenizer go to one job, in plan order."""
    groups: dict[str, list[RunSpec]] = {}
    for spec in specs:
        groups.setdefault(spec.tokenizer.hash(), []).append(spec)
    return list(groups.values())


def seedless_tokenizer(cfg: TokenizerRunConfig) -> TokenizerRunConfig:
    """``cfg`` at seed 0: a study's replicas of one tokenizer cost the same, so their costs are keyed by this."""
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=0))


def group_training_flops(group: Sequence[RunSpec]) -> float:
    """What a group's job trains, in FLOPs (:mod:`gigatok.flops`): its shared tokenizer once, each AR model."""
    tokenizer = seedless_tokenizer(group[0].tokenizer)
    return _tokenizer_flops(tokenizer) + sum(
        _ar_flops(dataclasses.replace(spec.ar, tokenizer=tokenizer, train=dataclasses.replace(spec.ar.train, seed=0)))
        for spec in group
        if spec.ar is not None
    )


# Memoized on the config without its seed: a study's replicas cost the same, and the analytic model takes ~0.5 ms a
# tokenizer, which a 1,000-run local submission (bench/orchestration.py, under 10 s) would feel.
@functools.cache
def _tokenizer_flops(cfg: TokenizerRunConfig) -> float:
    from gigatok.flops import tokenizer_training_flops

    return tokenizer_training_flops(cfg)


@functools.cache
def _ar_flops(cfg: ARRunConfig) -> float:
    from gigatok.flops import ar_training_flops

    return ar_training_flops(cfg)


def spread(
    groups: Sequence[list[RunSpec]], workers: int, cost: Callable[[Sequence[RunSpec]], float] = group_training_flops
) -> list[list[RunSpec]]:
    """Groups dealt onto ``workers`` local worker processes, each running its runs in turn (one process per
    worker: imports and networks are loaded once, not once per run).

    The dealing balances the workers' estimated ``cost``: the costliest group first, each to the worker with the
    least so far (longest-processing-time first), so that one worker is not left running alone at the end. Dealt
    round-robin in plan order, the two workers of a CPU machine took all the 1D runs of ``scaling_1d_vs_2d`` and
    all the 2D ones, and one finished 49 s before the other. Replicas of one run (``--seeds``) cost the same and
    so go to different workers. Each worker runs its groups in plan order."""
    bins: list[list[int]] = [[] for _ in range(min(workers, len(groups)))]
    loads = [0.0] * len(bins)
    costs = [cost(group) for group in groups]
    for index in sorted(range(len(groups)), key=lambda i: -costs[i]):  # stable: ties keep plan order
        lightest = loads.index(min(loads))
        bins[lightest].append(index)
        loads[lightest] += costs[index]
    return [[spec for index in sorted(indices) for spec in groups[index]] for indices in bins]


def default_local_workers() -> tuple[int, int]:
    """(workers, threads each): one worker per GPU; on a CPU machine two workers sharing the cores, which
    overlaps one worker's single-threaded stretches (start-up, sampling, probes, tracking) with the other's work."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count(), max(1, (os.cpu_count() or 1) // torch.cuda.device_count())
    cpus = os.cpu_count() or 1
    workers = 2 if cpus >= 2 else 1
    return workers, max(1, cpus // workers)


class RunJob(submitit.helpers.Checkpointable):
    """One job: the runs of one group, one after the other. Holds configs only; all state is on disk.

    A failing run is recorded (FAILED in MLflow, with its error) and the job goes on with the next run; the
    job itself fails at the end if any run did, so Slurm's accounting shows it too.
    """

    def __init__(self, specs: Sequence[RunSpec], ctx: RunContext, run_ids: Sequence[str | None]) -> None:
        self.specs = list(specs)
        self.ctx = ctx
        self.run_ids = list(run_ids)

    def __call__(self) -> dict[str, dict[str, float]]:
        import torch

        from gigatok.distributed import cleanup, init_distributed
        from gigatok.logs import configure_job

        configure_job()  # the job's log file says what its command was asked to (-v, -q)
        # Slurm without CPU binding (task/none) leaves torch one thread per core of the node: several jobs on one
        # node would each take every core. A job uses the CPUs it was given, in torch and in NumPy/SciPy/sklearn.
        threads = self.ctx.threads or int(os.environ.get("SLURM_CPUS_PER_TASK", "0"))
        if threads:
            use_threads(threads)

        env = init_distributed("cuda" if torch.cuda.is_available() and self.ctx.device != "cpu" else "cpu")
        # Rank 0 alone evaluates (50k samples can take hours); the other ranks wait for it before the next run's
        # training on a gloo group whose time-out outlasts any evaluation, not at a collective that times out.
        sync: ProcessGroup | None = None
        if env.world_size > 1:
            import datetime

            import torch.distributed as dist

            # Every rank is in the group, so this rank gets a group, never the non-member marker.
            sync = cast("ProcessGroup", dist.new_group(backend="gloo", timeout=datetime.timedelta(hours=48)))
        results: dict[str, dict[str, float]] = {}
        failures: list[str] = []
        # A preemption warning that reaches a training loop stops it at a step boundary with a checkpoint, then the
        # job is requeued (gigatok.train.preemption); anywhere else Submitit's handler requeues it at once.
        with deferred() as deferral:
            try:
                for spec, run_id in zip(self.specs, self.run_ids, strict=True):
                    try:
                        results[spec.hash] = execute_run(spec, self.ctx, run_id, rank=env.rank)
                    except Exception as exc:  # recorded in MLflow by execute_run; the other runs go on
                        failures.append(f"{spec.label} ({spec.hash}): {type(exc).__name__}: {exc}")
                    finally:
                        if sync is not None:
                            dist.barrier(group=sync)
            except Preempted as stop:
                cleanup()  # before the hand-over: the other ranks may wait there for the requeue to stop them
                if deferral is None:  # only a deferral's handler raises it
                    raise
                deferral.hand_over(stop, env.rank)
            finally:
                cleanup()
        if failures:
            raise RuntimeError(f"{len(failures)} of {len(self.specs)} runs failed: " + "; ".join(failures))
        return results

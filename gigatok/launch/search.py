"""A CFG search's launch: the run's search settings changed by the flags, what a dry run shows, the MLflow run the
trials hang under, and the workers (Slurm tasks, local processes, or this process) pulling points from the one
Optuna study."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gigatok.dispatch import (
    SlurmSettings,
    default_local_workers,
    job_name,
    make_executor,
    resolve_executor,
    sbatch_errors,
)
from gigatok.launch.common import (
    UsageError,
    cancel_on_interrupt,
    peek_tracked,
    require_paper_data,
    slurm_settings,
    threads_per_worker,
    tracked_runs,
)
from gigatok.pipeline import RunContext, RunSpec

STORAGE_ENV = "OPTUNA_STORAGE"  # the storage a search uses when --storage is not given (else the default journal)


def parse_range(flag: str, text: str) -> tuple[float, float]:
    """``LO:HI`` of ``flag``, checked."""
    low, sep, high = text.partition(":")
    try:
        lo, hi = float(low), float(high)
    except ValueError:
        lo = hi = float("nan")
    if not sep or lo != lo or hi != hi:
        raise UsageError(f"{flag} {text}: expected LO:HI, e.g. 1.0:3.0")
    if lo > hi:
        raise UsageError(f"{flag} {text}: the range is empty ({lo:g} is above {hi:g})")
    return lo, hi


def _sampler_changes(flags: Any, base: Any) -> dict[str, Any]:
    sampler = flags.sampler or base.sampler
    if sampler == "tpe":
        trials = flags.trials if flags.trials is not None else base.trials
        if trials is None:
            raise UsageError("--sampler tpe needs a budget: --trials N")
        if trials < 1:
            raise UsageError(f"--trials {trials}: must be >= 1")
        return {"sampler": sampler, "trials": trials}
    if flags.trials is not None:
        raise UsageError("--trials applies to --sampler tpe (a grid runs every point once)")
    return {"sampler": sampler, "trials": None}


def search_plan(flags: Any, spec: RunSpec, ctx: RunContext) -> Any:
    """The run's own search settings (``eval.cfg_search``), changed by the flags (the ``cfg_search`` command's
    argparse namespace: range, step, schedule, fraction_range, fraction_step, sampler, trials, low_samples,
    full_samples, pruner, storage; without --storage, ``$OPTUNA_STORAGE`` if set)."""
    from gigatok.cfg_search import SearchPlan

    base = spec.eval.cfg_search
    changes: dict[str, Any] = {}
    if flags.range is not None:
        changes["scale_min"], changes["scale_max"] = parse_range("--range", flags.range)
    if flags.fraction_range is not None:
        changes["fraction_min"], changes["fraction_max"] = parse_range("--fraction-range", flags.fraction_range)
    for flag, name, value in (
        ("--step", "scale_step", flags.step),
        ("--fraction-step", "fraction_step", flags.fraction_step),
    ):
        if value is not None:
            if value <= 0:
                raise UsageError(f"{flag} {value:g}: must be > 0")
            changes[name] = value
    schedule = flags.schedule or spec.eval.cfg_schedule
    fraction_searched = changes.get("fraction_min", base.fraction_min) is not None
    if fraction_searched and schedule != "step":
        raise UsageError(
            "--fraction-range: the unguided share of tokens belongs to the step schedule; add --schedule step"
        )
    changes.update(_sampler_changes(flags, base))
    if flags.full_samples is not None:
        if flags.full_samples < 2:
            raise UsageError(f"--full-samples {flags.full_samples}: must be >= 2 (FID needs a covariance)")
        changes["full_samples"] = flags.full_samples
    if flags.pruner is not None:
        changes["pruner"] = flags.pruner
    search = dataclasses.replace(base, **changes)
    storage = flags.storage if flags.storage is not None else os.environ.get(STORAGE_ENV) or None
    if storage is not None and "://" not in storage:
        storage = str(Path(storage).resolve())  # workers may start elsewhere
    return SearchPlan(spec, ctx, search, schedule, storage=storage, low_samples_override=flags.low_samples)


def search_preview(plan: Any) -> dict[str, Any]:
    """What the search would do: its settings, whether it can start, and each point's state in the storage. Reads
    the study's MLflow runs only if the store exists."""
    from gigatok.cfg_search.trials import find_study, points_by_state
    from gigatok.pipeline import stage_result_path

    parent = peek_tracked(plan.ctx.tracking_uri, plan.spec.study, plan.spec.profile)[0].get(plan.spec.hash)
    trials = find_study(plan) or []
    by_point = points_by_state(plan, trials)
    points = []
    for point in plan.points:
        group = sorted(by_point.get(point, []), key=lambda t: t.number)
        last = group[-1] if group else None
        points.append(
            {
                "cfg_scale": point.cfg_scale,
                "step_fraction": point.step_fraction,
                "state": last.state.name if last else "TO RUN",
                "gfid": last.value if last is not None and last.state.name == "COMPLETE" else None,
            }
        )
    to_run = sum(p["state"] in ("TO RUN", "FAIL", "WAITING") for p in points)
    if plan.search.sampler == "tpe":
        assert plan.search.trials is not None
        to_run = max(0, plan.search.trials - sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials))
    return {
        **plan.describe(),
        "storage_exists": bool(trials) or (not plan.is_rdb and Path(plan.storage_location).is_file()),
        "ar_trained": stage_result_path(plan.spec, plan.ctx, "ar").is_file(),
        "parent_run_id": parent.run_id if parent else None,
        "parent_status": parent.status if parent else None,
        "points": points if plan.search.sampler == "grid" else [],
        "trials_recorded": len(trials),
        "to_run": to_run,
        "result": str(plan.result_path) if plan.result_path.is_file() else None,
    }


def search_parent(client: Any, spec: RunSpec) -> Any:
    """The run's MLflow run, which every trial's run hangs under; the run must have been launched."""
    from gigatok.tracking import experiment_name

    _, tracked = tracked_runs(client, spec.study, spec.profile)
    record = tracked.get(spec.hash)
    if record is None:
        raise UsageError(
            f"run {spec.hash} ({spec.label}) has no MLflow run in experiment "
            f"{experiment_name(spec.study, spec.profile)}: run `python studies/run.py {spec.study} "
            f"--only {spec.hash}` (with the same --profile and --set) first"
        )
    return record


@dataclass
class SearchLaunch:
    """One launch of a search: its plan (with its MLflow parent), executor and workers."""

    plan: Any  # gigatok.cfg_search.SearchPlan
    executor: str  # resolved: slurm, local or debug
    slurm: SlurmSettings | None = None
    workers: int = 0
    jobs: list[Any] = field(default_factory=list)
    _scorers: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def prepare(cls, plan: Any, *, executor: str, slurm_flags: Any, profile: str, data: str | None) -> SearchLaunch:
        """Check everything that can be wrong before the first write (the Optuna study, in :meth:`start`)."""
        from gigatok.cfg_search import check_ready
        from gigatok.tracking import connect

        check_ready(plan)
        executor_name = resolve_executor(executor)
        slurm = slurm_settings(slurm_flags, profile) if executor_name == "slurm" else None
        require_paper_data(profile, data, "scores against")
        client = connect(plan.ctx.tracking_uri)
        plan = dataclasses.replace(plan, parent_run_id=search_parent(client, plan.spec).run_id)
        return cls(plan, executor_name, slurm)

    def start(self) -> Any:
        """Create (or load) the Optuna study and queue failed points again; returns the recovery."""
        from gigatok.cfg_search import prepare

        return prepare(self.plan)

    def state(self) -> Any:
        from gigatok.cfg_search import current_state

        return current_state(self.plan)

    def finish(self) -> dict[str, Any] | None:
        """The summary once every point has a result (the best point scored again at the run's ``gen_samples``
        if the search's full budget was smaller), else None."""
        from gigatok.cfg_search import finish_here

        return finish_here(self.plan, self._rescore)

    def incomplete_reason(self) -> str:
        from gigatok.cfg_search import incomplete_reason

        return incomplete_reason(self.plan, self.state())

    def _rescore(self, point: Any, samples: int) -> dict[str, float]:  # the real model, loaded only if needed
        from gigatok.cfg_search import GenerationScorer

        if "generation" not in self._scorers:
            self._scorers["generation"] = GenerationScorer(self.plan)
        return self._scorers["generation"].rescore(point, samples)

    def size(self, requested: int | None, remaining: int) -> int:
        """Workers for ``remaining`` points: debug 1; else ``requested`` (``--workers``) or local one per GPU (two
        on a CPU machine), Slurm 8; never more than there are points. Local workers share the cores."""
        if self.executor == "debug":
            self.workers = 1
        elif requested is not None:
            self.workers = min(requested, remaining)
        elif self.executor == "local":
            self.workers = min(default_local_workers()[0], remaining)
        else:
            self.workers = min(8, remaining)
        if self.executor == "local":
            ctx = dataclasses.replace(self.plan.ctx, threads=threads_per_worker(self.workers))
            self.plan = dataclasses.replace(self.plan, ctx=ctx)
        return self.workers

    def submit(self) -> list[Any]:
        """Start the workers: one Slurm array, local processes, or (debug) one worker run when followed."""
        from gigatok.cfg_search import SearchWorker

        name = job_name(f"cfg_search:{self.plan.spec.study}", [self.plan.spec])
        executor = make_executor(self.executor, self.plan.ctx.root / "jobs", self.slurm, slurm_name=name)
        if self.executor == "slurm":
            with sbatch_errors(), executor.batch():
                self.jobs = [executor.submit(SearchWorker(self.plan, i)) for i in range(self.workers)]
        else:
            self.jobs = [executor.submit(SearchWorker(self.plan, i)) for i in range(self.workers)]
        return self.jobs

    def follow(self) -> list[BaseException | None]:
        """Each worker's error (None if it could work), once all have ended; each trial is printed as it ends.
        Ctrl-C cancels the workers (their trials are retried next time) and raises Interrupted."""
        from gigatok.cfg_search import follow

        with cancel_on_interrupt(lambda: self.jobs):
            if self.executor == "debug":  # runs the worker here; its trials print as they end
                return [self.jobs[0].exception()]
            follow(self.plan, self.jobs)
            return [job.exception() for job in self.jobs]

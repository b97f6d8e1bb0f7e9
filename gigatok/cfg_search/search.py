"""Running a CFG search: the launcher's preparation, workers that pull trials from the shared study, and the
finished search's summary on disk and on the parent MLflow run."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
import submitit
from optuna.trial import FrozenTrial, TrialState

from gigatok.cfg_search.plan import SearchError, SearchPlan, SearchPoint
from gigatok.cfg_search.records import TrialRecorder, trial_metrics
from gigatok.cfg_search.scoring import GenerationScorer, Scorer
from gigatok.cfg_search.trials import (
    GRACE_S,
    HEARTBEAT_S,
    TRIAL_RUN_ATTR,
    Heartbeat,
    Recovery,
    SearchState,
    claim,
    claim_lock,
    create_study,
    earlier_result,
    find_study,
    load_study,
    new_worker_id,
    open_storage,
    recover,
    search_state,
)
from gigatok.host_memory import keep_freed_host_memory
from gigatok.job_threads import use_threads
from gigatok.runs.context import run_device
from gigatok.runs.layout import read_result, write_result

log = logging.getLogger(__name__)

Log = Callable[[str], None]


@dataclass(frozen=True)
class WorkerOptions:
    heartbeat_s: float = HEARTBEAT_S
    grace_s: float = GRACE_S
    # A worker stops after this many failed trials in a row: a broken set-up fails every point alike, and each
    # failure can cost a full sampling run.
    max_failures_in_a_row: int = 3


@dataclass
class WorkerReport:
    worker_id: str
    trials: list[tuple[int, str]] = field(default_factory=list)  # (trial number, state) in the order run
    errors: list[str] = field(default_factory=list)


def _quiet_optuna() -> None:
    # Optuna logs every trial at INFO; the search prints its own one line per trial.
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def trial_line(plan: SearchPlan, t: FrozenTrial) -> str:
    point = plan.point_of(t.params) if t.params else None
    where = point.label(plan.searches_fraction) if point else "(no point)"
    scores = [f"gFID {v:.4g} at {step}" for step, v in sorted(t.intermediate_values.items())]
    if t.state == TrialState.COMPLETE and t.value is not None:
        scores.append(f"gFID {t.value:.4g} at {plan.full_samples}")
    note = t.user_attrs.get("error") or (
        f"same point as trial {t.user_attrs['duplicate_of']}" if "duplicate_of" in t.user_attrs else ""
    )
    return f"trial {t.number:3d}  {where:28} {t.state.name:9} {', '.join(scores)}" + (f"  ({note})" if note else "")


# ----------------------------------------------------------------------------------------------------------
# A worker
# ----------------------------------------------------------------------------------------------------------


def run_worker(
    plan: SearchPlan,
    scorer: Scorer | None = None,
    worker_index: int = 0,
    options: WorkerOptions = WorkerOptions(),
    log: Log = print,
    record_parent: bool = True,
) -> WorkerReport:
    """Claim and score trials until the study has none left to start; then finish the search if it is complete
    (the last worker to end writes the summary, so a Slurm search needs no launcher waiting for it)."""
    _quiet_optuna()
    storage = open_storage(plan)
    study = load_study(plan, storage, worker_index)
    recorder = TrialRecorder.for_plan(plan)
    score = scorer if scorer is not None else GenerationScorer(plan)
    report = WorkerReport(new_worker_id())
    in_a_row = 0
    with Heartbeat(plan.heartbeat_dir, report.worker_id, options.heartbeat_s):
        while in_a_row < options.max_failures_in_a_row:
            with claim_lock(plan):
                recovery = recover(plan, study, storage, retry_failed=False, grace_s=options.grace_s)
                for number in recovery.lost:
                    log(f"trial {number}: its worker stopped; marked FAIL and queued again")
                claimed = claim(plan, study, report.worker_id)
                if claimed is None:
                    break
                trial, point = claimed
                earlier = earlier_result(plan, study.get_trials(deepcopy=False), point, trial.number)
                if earlier is not None:
                    _reuse(study, trial, earlier)
                    report.trials.append((trial.number, "DUPLICATE"))
                    continue
                run_id = recorder.start(trial.number, point) if recorder else None
                if run_id is not None:  # the trial leads to its run (the study run's id is set at the claim)
                    trial.set_user_attr(TRIAL_RUN_ATTR, run_id)
            state, metrics, error = _evaluate(plan, trial, point, score, recorder, run_id)
            with claim_lock(plan):  # serialised with sync(), which would otherwise complete the child run twice
                _tell(study, trial, state, metrics, error)
                if recorder is not None and run_id is not None:
                    recorder.finish(run_id, state, metrics, error)
            log(trial_line(plan, next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)))
            report.trials.append((trial.number, state.name))
            if error:
                report.errors.append(f"trial {trial.number} ({point.label(plan.searches_fraction)}): {error}")
            in_a_row = in_a_row + 1 if state == TrialState.FAIL else 0
    rescore = score.rescore if isinstance(score, GenerationScorer) else None
    finish(plan, study, recorder, rescore=rescore, record_parent=record_parent)
    return report


def _evaluate(
    plan: SearchPlan,
    trial: optuna.Trial,
    point: SearchPoint,
    score: Scorer,
    recorder: TrialRecorder | None,
    run_id: str | None,
) -> tuple[TrialState, dict[str, float] | None, str | None]:
    def report(samples: int, gfid: float) -> None:
        trial.report(gfid, samples)
        if recorder is not None and run_id is not None:
            recorder.intermediate(run_id, samples, gfid)
        if trial.should_prune():
            raise optuna.TrialPruned(f"gFID {gfid:.4g} at {samples} samples is above the median of finished points")

    try:
        metrics = score(point, report)
    except optuna.TrialPruned:
        return TrialState.PRUNED, None, None
    except Exception as exc:  # recorded on the trial and its run; the worker goes on with other points
        return TrialState.FAIL, None, f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
    except BaseException as exc:  # interrupted (Ctrl-C, a job's time limit): say so, queue the point again, stop
        error = f"interrupted ({type(exc).__name__})"
        with claim_lock(plan):
            _tell(trial.study, trial, TrialState.FAIL, None, error)
            if plan.search.sampler == "grid":  # not the point's fault: the next worker (or invocation) takes it
                trial.study.enqueue_trial(plan.params_of(point), user_attrs={"retry_of": trial.number})
            if recorder is not None and run_id is not None:
                recorder.finish(run_id, TrialState.FAIL, None, error)
        raise
    gfid = metrics.get("gfid")
    if gfid is None or not math.isfinite(gfid):
        return TrialState.FAIL, None, f"the score gave no finite gfid: {metrics}"
    return TrialState.COMPLETE, metrics, None


def _tell(
    study: optuna.Study, trial: optuna.Trial, state: TrialState, metrics: dict[str, float] | None, error: str | None
) -> None:
    if state == TrialState.COMPLETE:
        assert metrics is not None
        trial.set_user_attr("metrics", {k: float(v) for k, v in metrics.items() if k != "gfid"})
        study.tell(trial, metrics["gfid"])
        return
    if error:
        trial.set_user_attr("error", error)
    study.tell(trial, state=state)


def _reuse(study: optuna.Study, trial: optuna.Trial, earlier: FrozenTrial) -> None:
    """A proposal of a point already scored takes the earlier result instead of sampling again."""
    trial.set_user_attr("duplicate_of", earlier.number)
    if earlier.state == TrialState.COMPLETE:
        trial.set_user_attr("metrics", earlier.user_attrs.get("metrics", {}))
        study.tell(trial, earlier.value)
        return
    for step, value in earlier.intermediate_values.items():
        trial.report(value, step)
    study.tell(trial, state=TrialState.PRUNED)


class SearchWorker(submitit.helpers.Checkpointable):
    """One worker as a Submitit job: a local process, a Slurm array task, or a call in this process. On time-out
    or preemption Submitit requeues it with the same arguments; its unfinished trial is failed and queued again
    once its heartbeat is stale."""

    def __init__(
        self,
        plan: SearchPlan,
        worker_index: int,
        scorer: Scorer | None = None,
        options: WorkerOptions = WorkerOptions(),
    ) -> None:
        self.plan, self.worker_index, self.scorer, self.options = plan, worker_index, scorer, options

    def __call__(self) -> WorkerReport:
        import torch

        from gigatok.logs import configure_job

        configure_job()
        if self.plan.ctx.threads:
            use_threads(self.plan.ctx.threads)
        if run_device(self.plan.ctx).type == "cpu":
            keep_freed_host_memory()  # sampling and Inception features reuse their freed memory (gigatok.host_memory)
        local = os.environ.get("SLURM_LOCALID")
        if local is not None and torch.cuda.is_available():  # one worker per GPU of a multi-GPU task
            torch.cuda.set_device(int(local) % torch.cuda.device_count())
        return run_worker(self.plan, self.scorer, self.worker_index, self.options, log=log.info)


# ----------------------------------------------------------------------------------------------------------
# The launcher's part, and the end of a search
# ----------------------------------------------------------------------------------------------------------


def prepare(plan: SearchPlan) -> Recovery:
    """Create the study (or load it: a resumed search) and queue again every point whose trials failed."""
    _quiet_optuna()
    storage = open_storage(plan)
    study = create_study(plan, storage)
    with claim_lock(plan):
        return recover(plan, study, storage, retry_failed=True)


def current_state(plan: SearchPlan) -> SearchState:
    return search_state(plan, find_study(plan) or [])


def finish(
    plan: SearchPlan,
    study: optuna.Study,
    recorder: TrialRecorder | None,
    rescore: Callable[[SearchPoint, int], dict[str, float]] | None = None,
    record_parent: bool = True,
) -> dict[str, Any] | None:
    """Bring MLflow in line with the study and, once the search is complete, write its summary (the ``cfg_search``
    stage's result) and the best point on the parent run. Idempotent; returns the summary, None if incomplete."""
    with claim_lock(plan):
        trials = study.get_trials(deepcopy=True)
        if recorder is not None:
            recorder.sync(trials)
        state = search_state(plan, trials)
        if not state.complete:
            return None
        if plan.result_path.is_file():
            summary = read_result(plan.result_path)
        else:
            if state.best is None:
                raise SearchError(f"search {plan.study_name}: no point was scored on the full budget")
            summary = summarize(plan, state, rescore)
            write_result(plan.result_path, summary)
        if record_parent and recorder is not None:
            recorder.record_best(summary)
        return summary


def summarize(
    plan: SearchPlan, state: SearchState, rescore: Callable[[SearchPoint, int], dict[str, float]] | None
) -> dict[str, Any]:
    """The search's result: the best point and its gFID at the run's own sample count (scored again when the
    search's full budget was smaller), and every trial."""
    assert state.best is not None and state.best.value is not None
    best = plan.point_of(state.best.params)
    gfid, samples = float(state.best.value), plan.full_samples
    if plan.full_samples < plan.spec.eval.gen_samples and rescore is not None:
        gfid, samples = rescore(best, plan.spec.eval.gen_samples)["gfid"], plan.spec.eval.gen_samples
    scales = plan.scales
    return {
        **plan.describe(),
        "best_trial": state.best.number,
        "best_scale": best.cfg_scale,
        "best_step_fraction": best.step_fraction,
        "best_gfid": gfid,
        "best_gfid_samples": samples,
        "search_best_gfid": float(state.best.value),
        # The paper searches "until a local minimum": a best point on the range's edge may not be one.
        "best_at_edge": len(scales) > 1 and best.cfg_scale in (scales[0], scales[-1]),
        "trials": [
            {
                "number": t.number,
                "state": t.state.name,
                **(t.params or {}),
                "gfid_small": t.intermediate_values.get(plan.low_samples) if plan.low_samples else None,
                "gfid": t.value if t.state == TrialState.COMPLETE else None,
                "metrics": trial_metrics(t),
                "error": t.user_attrs.get("error"),
                "duplicate_of": t.user_attrs.get("duplicate_of"),
            }
            for t in state.trials
        ],
    }


def finish_here(
    plan: SearchPlan, rescore: Callable[[SearchPoint, int], dict[str, float]] | None = None, record_parent: bool = True
) -> dict[str, Any] | None:
    """:func:`finish` from the launcher (after its workers ended)."""
    _quiet_optuna()
    storage = open_storage(plan)
    return finish(plan, load_study(plan, storage), TrialRecorder.for_plan(plan), rescore, record_parent)


def sync_records(plan: SearchPlan) -> None:
    """Give the plan's parent run a child run for every ended trial (nothing to do without a parent or a study)."""
    recorder = TrialRecorder.for_plan(plan)
    trials = find_study(plan)
    if recorder is None or trials is None:
        return
    with claim_lock(plan):
        recorder.sync(trials)


def incomplete_reason(plan: SearchPlan, state: SearchState) -> str:
    parts = [
        f"search {plan.study_name} is incomplete: {state.remaining} "
        f"{'points' if plan.search.sampler == 'grid' else 'trials'} without a result"
    ]
    if state.failed:
        t = state.failed[-1]
        parts.append(
            f"{len(state.failed)} failed (last: trial {t.number}: {t.user_attrs.get('error', '?')}); "
            "run the search again to retry them"
        )
    if state.running:
        parts.append(f"{len(state.running)} still running")
    return "; ".join(parts)


def run_here(
    plan: SearchPlan,
    scorer: Scorer | None = None,
    workspace: Any = None,
    record_parent: bool = True,
    options: WorkerOptions = WorkerOptions(),
    log: Log = print,
) -> dict[str, Any]:
    """The whole search in this process, one worker: the run's ``cfg_search`` stage and the debug executor. Raises
    :class:`SearchError` when it cannot complete (failed trials: running it again retries them)."""
    prepare(plan)
    if scorer is None:
        scorer = GenerationScorer(plan, workspace)
    run_worker(plan, scorer, 0, options, log, record_parent)
    rescore = scorer.rescore if isinstance(scorer, GenerationScorer) else None
    summary = finish_here(plan, rescore, record_parent)
    if summary is None:
        raise SearchError(incomplete_reason(plan, current_state(plan)))
    return summary


def follow(plan: SearchPlan, jobs: Sequence[Any], log: Log = print, poll_s: float = 2.0) -> None:
    """Print each trial as it ends, until every job has ended."""
    shown: set[int] = set()
    while True:
        finished_jobs = all(job.done() for job in jobs)
        for t in find_study(plan) or []:
            if t.number not in shown and t.state.is_finished():
                shown.add(t.number)
                log(trial_line(plan, t))
        if finished_jobs:
            return
        time.sleep(poll_s)

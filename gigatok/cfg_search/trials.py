"""The Optuna side of a CFG search: storage, sampler and pruner, and how workers share one study.

Several workers (processes on one machine or Slurm tasks on a shared filesystem) pull trials from one study. Two
rules keep them from losing or repeating work:

- **Claims are serialised.** A worker creates its next trial (``study.ask``) only while holding a lock file beside
  the study (:func:`claim_lock`), and only if some point has no trial yet; the new trial is RUNNING in the storage
  before the lock is released, so the next worker sees the point as taken. Optuna's grid sampler on its own lets
  two workers draw the same point near the end of a grid (its documentation says so).
- **A lost trial is noticed.** Each worker touches a heartbeat file while it runs (:class:`Heartbeat`). A RUNNING
  trial whose worker has not touched its file for ``grace_s`` seconds was killed (preempted, out of memory): the
  next worker to claim marks it FAIL and puts its point back in the queue.

A trial that fails with an error keeps its point out of the current invocation (a broken setting should not spin);
the next invocation of the search puts every failed point back (:func:`recover` with ``retry_failed``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from gigatok.cfg_search.plan import SearchPlan, SearchPoint

HEARTBEAT_S = 20.0
GRACE_S = 120.0  # a worker silent this long is gone (several heartbeats, and longer than a slow filesystem's lag)
DONE = (TrialState.COMPLETE, TrialState.PRUNED)
TAKEN = (TrialState.RUNNING, TrialState.WAITING)
METRIC_NAME = "gfid"  # the objective's name in the storage
# A trial's user attributes that lead to MLflow: the study run searched (its id and run hash) and the trial's own run.
PARENT_RUN_ATTR, RUN_HASH_ATTR, TRIAL_RUN_ATTR = "mlflow_run_id", "run_hash", "mlflow_trial_run_id"


class _ExhaustiveGrid(optuna.samplers.GridSampler):
    """Optuna's grid sampler without its own stopping rule: it calls ``study.stop()`` after the last point, which
    raises outside ``study.optimize``; here the workers' claim decides when the grid is done."""

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        return None


def open_storage(plan: SearchPlan) -> optuna.storages.BaseStorage:
    """The study's storage: a journal file (safe on a shared filesystem) or an RDB URL."""
    if plan.is_rdb:
        return optuna.storages.RDBStorage(plan.storage_location)
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    path = Path(plan.storage_location)
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def make_sampler(plan: SearchPlan, worker_index: int = 0) -> optuna.samplers.BaseSampler:
    s = plan.search
    if s.sampler == "grid":
        # Every worker must shuffle the grid the same way: grid ids index the shuffled list.
        return _ExhaustiveGrid(plan.search_space, seed=s.seed)
    assert s.trials is not None
    # Workers differ in seed (the same seed would draw the same random start-up points); constant_liar makes a
    # worker's proposal account for the trials other workers are still running.
    return optuna.samplers.TPESampler(
        seed=s.seed + worker_index,
        constant_liar=True,
        multivariate=True,
        n_startup_trials=min(10, max(2, s.trials // 3)),
    )


def make_pruner(plan: SearchPlan) -> optuna.pruners.BasePruner:
    """The median rule compares small-budget gFIDs only with each other (FID is biased upward at small sample
    counts, so only scores of one budget are comparable) and needs no threshold in gFID units, which would differ
    between a 16-token tiny model and the paper's; it stops a point only when it is worse than the median of the
    points already scored in full, so the few best points, the ones the answer is chosen among, always survive."""
    if plan.search.pruner == "none" or plan.low_samples is None:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=plan.search.startup_trials, n_warmup_steps=0)


def create_study(plan: SearchPlan, storage: optuna.storages.BaseStorage) -> optuna.Study:
    """Create the study, or load it if it exists (a resumed search)."""
    study = optuna.create_study(
        storage=storage,
        study_name=plan.study_name,
        direction="minimize",
        sampler=make_sampler(plan),
        pruner=make_pruner(plan),
        load_if_exists=True,
    )
    if "settings" not in study.user_attrs:
        study.set_user_attr("settings", plan.describe())
    name_objective(study)
    return study


def load_study(plan: SearchPlan, storage: optuna.storages.BaseStorage, worker_index: int = 0) -> optuna.Study:
    study = optuna.load_study(
        study_name=plan.study_name, storage=storage, sampler=make_sampler(plan, worker_index), pruner=make_pruner(plan)
    )
    name_objective(study)
    return study


def name_objective(study: optuna.Study) -> None:
    """Name the objective ``gfid`` (optuna-dashboard and ``optuna studies`` show it instead of "Objective 0"); a
    study created before the name came gets it when loaded. Written only when missing: a journal grows by each write."""
    if study.metric_names != [METRIC_NAME]:
        with warnings.catch_warnings():  # experimental since Optuna 3.2, unchanged since
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([METRIC_NAME])


def find_study(plan: SearchPlan) -> list[FrozenTrial] | None:
    """The trials of the plan's study, read without writing anything; None if there is no such study yet."""
    location = plan.storage_location
    if location.startswith("sqlite:///") and not Path(location.removeprefix("sqlite:///")).is_file():
        return None
    if not plan.is_rdb and not Path(location).is_file():
        return None
    try:
        study = optuna.load_study(study_name=plan.study_name, storage=open_storage(plan))
    except KeyError:  # Optuna's "no such study"
        return None
    return study.get_trials(deepcopy=False)


# ----------------------------------------------------------------------------------------------------------
# Sharing a study between workers
# ----------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def claim_lock(plan: SearchPlan) -> Iterator[None]:
    """Exclusive among the search's workers, on every machine that shares the runs folder (POSIX locks)."""
    plan.lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(plan.lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


class Heartbeat:
    """Touches ``<heartbeat_dir>/<worker>.alive`` every ``interval_s`` from a daemon thread while a worker runs; the
    file is removed when the worker ends normally."""

    def __init__(self, directory: Path, worker_id: str, interval_s: float = HEARTBEAT_S) -> None:
        self.path = directory / f"{worker_id}.alive"
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="cfg-search-heartbeat")

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            with contextlib.suppress(OSError):  # a filesystem hiccup must not end the worker
                self.path.touch()

    def __enter__(self) -> Heartbeat:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.path.unlink(missing_ok=True)


def last_heartbeat(plan: SearchPlan, trial: FrozenTrial) -> float:
    """When the trial's worker last showed it is alive (its start, if it never wrote a heartbeat)."""
    worker = trial.user_attrs.get("worker")
    if worker:
        with contextlib.suppress(OSError):
            return (plan.heartbeat_dir / f"{worker}.alive").stat().st_mtime
    return trial.datetime_start.timestamp() if trial.datetime_start else 0.0


def points_by_state(plan: SearchPlan, trials: list[FrozenTrial]) -> dict[SearchPoint, list[FrozenTrial]]:
    by_point: dict[SearchPoint, list[FrozenTrial]] = {}
    for t in trials:
        if t.params or t.state == TrialState.WAITING:
            params = t.params or t.system_attrs.get("fixed_params", {})
            if params:
                by_point.setdefault(plan.point_of(params), []).append(t)
    return by_point


@dataclass
class Recovery:
    lost: list[int]  # trials whose worker died, now FAIL
    requeued: list[SearchPoint]  # points put back in the queue


def recover(
    plan: SearchPlan,
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    retry_failed: bool,
    grace_s: float = GRACE_S,
) -> Recovery:
    """Fail the trials of dead workers and queue their points again; with ``retry_failed`` (a new invocation of the
    search), queue every point whose trials all failed. Call under :func:`claim_lock`."""
    now = time.time()
    trials = study.get_trials(deepcopy=False)
    study_id = storage.get_study_id_from_name(plan.study_name)
    lost = []
    for t in trials:
        if t.state == TrialState.RUNNING and now - last_heartbeat(plan, t) > grace_s:
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            worker = t.user_attrs.get("worker", "unknown")
            storage.set_trial_user_attr(trial_id, "error", f"lost: worker {worker} stopped sending heartbeats")
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
            lost.append(t.number)
    requeued: list[SearchPoint] = []
    if plan.search.sampler != "grid":
        return Recovery(lost, requeued)  # TPE does not count failed trials against its budget: it just goes on
    trials = study.get_trials(deepcopy=False)
    for point, group in points_by_state(plan, trials).items():
        if any(t.state != TrialState.FAIL for t in group):
            continue
        if retry_failed or any(t.number in lost for t in group):
            study.enqueue_trial(plan.params_of(point), user_attrs={"retry_of": max(t.number for t in group)})
            requeued.append(point)
    return Recovery(lost, requeued)


def claim(plan: SearchPlan, study: optuna.Study, worker_id: str) -> tuple[optuna.Trial, SearchPoint] | None:
    """The next trial for this worker and its point, or None when nothing is left to start. Call under
    :func:`claim_lock`."""
    trials = study.get_trials(deepcopy=False)
    if plan.search.sampler == "grid":
        if not any(t.state == TrialState.WAITING for t in trials):  # a queued point goes first
            tried = set(points_by_state(plan, trials))
            untried = [p for p in plan.points if p not in tried]
            if not untried:
                return None
            # Trial n < grid size takes grid point n; past that (after retries) the grid sampler would draw at
            # random among unfinished points, running ones included: name the point instead.
            if len(trials) >= len(plan.points):
                study.enqueue_trial(plan.params_of(untried[0]))
    else:
        assert plan.search.trials is not None
        if sum(t.state != TrialState.FAIL for t in trials) >= plan.search.trials:
            return None
    trial = study.ask()
    trial.set_user_attr("worker", worker_id)
    trial.set_user_attr(RUN_HASH_ATTR, plan.spec.hash)
    if plan.parent_run_id is not None:
        trial.set_user_attr(PARENT_RUN_ATTR, plan.parent_run_id)
    point = suggest(plan, trial)
    return trial, point


def suggest(plan: SearchPlan, trial: optuna.Trial) -> SearchPoint:
    s = plan.search
    scales, fractions = plan.scales, plan.fractions
    params = {"cfg_scale": trial.suggest_float("cfg_scale", scales[0], scales[-1], step=s.scale_step)}
    if plan.searches_fraction:
        params["step_fraction"] = trial.suggest_float(
            "step_fraction", fractions[0], fractions[-1], step=s.fraction_step
        )
    return plan.point_of(params)


def earlier_result(plan: SearchPlan, trials: list[FrozenTrial], point: SearchPoint, number: int) -> FrozenTrial | None:
    """A finished trial of the same point (TPE proposes points it has seen), whose result a new trial can reuse."""
    for t in trials:
        if t.number != number and t.state in DONE and t.params and plan.point_of(t.params) == point:
            return t
    return None


# ----------------------------------------------------------------------------------------------------------
# Where a search stands
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchState:
    trials: list[FrozenTrial]
    complete: bool  # every grid point scored (or pruned), or TPE's budget spent
    best: FrozenTrial | None  # the lowest full-budget gFID
    failed: list[FrozenTrial]  # FAIL trials whose point has no result and no retry under way
    running: list[FrozenTrial]
    remaining: int  # points (grid) or trials (TPE) with no result yet


def search_state(plan: SearchPlan, trials: list[FrozenTrial]) -> SearchState:
    by_point = points_by_state(plan, trials)
    done = {p for p, group in by_point.items() if any(t.state in DONE for t in group)}
    if plan.search.sampler == "grid":
        remaining = sum(p not in done for p in plan.points)
    else:
        assert plan.search.trials is not None
        remaining = max(0, plan.search.trials - sum(t.state in DONE for t in trials))
    completed = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    best = min(completed, key=lambda t: (t.value, plan.point_of(t.params)), default=None)
    pending = {p for p, group in by_point.items() if any(t.state in TAKEN for t in group)}
    failed = [
        t for t in trials if t.state == TrialState.FAIL and t.params and plan.point_of(t.params) not in done | pending
    ]
    running = [t for t in trials if t.state == TrialState.RUNNING]
    return SearchState(list(trials), remaining == 0, best, failed, running, remaining)

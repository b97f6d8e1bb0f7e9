"""The CFG-scale search: Optuna over the guidance scale of one trained AR model, multi-fidelity, resumable, parallel.

The paper reports gFID at the best CFG scale, found by a search in steps of 0.25 (Appendix B), with the constant
schedule for AR probing and the step schedule (the first 18% of tokens unguided) for the system-level results.

- :mod:`~gigatok.cfg_search.plan`: the points (a 0.25 grid over a range; optionally the step fraction as well),
  the budgets, and the Optuna study name ``cfg-<AR hash>-<schedule>-<settings hash>``, so the same search started
  again loads the same study; the default storage is a journal file beside the AR model.
- :mod:`~gigatok.cfg_search.trials`: grid or TPE sampler, median pruner, and how workers share one study (claims
  under a lock, heartbeats to notice a dead worker's trial).
- :mod:`~gigatok.cfg_search.scoring`: a trial's score is the run's generation stage at that point; its first
  ``low_samples`` images give the small-budget score the pruner judges.
- :mod:`~gigatok.cfg_search.records`: one MLflow child run per trial, the best point on the parent run.
- :mod:`~gigatok.cfg_search.search`: workers, the launcher's preparation, the summary.

``python studies/run.py cfg_search --study NAME --only ...`` runs a search with any executor; a run whose stages
include ``cfg_search`` (``system_level``, ``ar_probe_vs_large``, and at the ``paper`` profile every run that reports
gFID) runs its own in-process and reports gFID at the best point.
"""

from gigatok.cfg_search.plan import SearchError, SearchPlan, SearchPoint, check_ready
from gigatok.cfg_search.records import TRIAL_KIND, TrialRecorder
from gigatok.cfg_search.scoring import GenerationScorer, Scorer
from gigatok.cfg_search.search import (
    SearchWorker,
    WorkerOptions,
    WorkerReport,
    current_state,
    finish_here,
    follow,
    incomplete_reason,
    prepare,
    run_here,
    run_worker,
    sync_records,
    trial_line,
)

__all__ = [
    "TRIAL_KIND",
    "GenerationScorer",
    "Scorer",
    "SearchError",
    "SearchPlan",
    "SearchPoint",
    "SearchWorker",
    "TrialRecorder",
    "WorkerOptions",
    "WorkerReport",
    "check_ready",
    "current_state",
    "finish_here",
    "follow",
    "incomplete_reason",
    "prepare",
    "run_here",
    "run_worker",
    "sync_records",
    "trial_line",
]

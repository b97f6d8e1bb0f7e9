"""Launching: what ``studies/run.py`` does besides reading flags and printing.

- :mod:`~gigatok.launch.common`: what both launches share: their errors, Slurm settings from flags and a TOML file,
  the paper-data check, the run context, threads per local worker, cancelling jobs on Ctrl-C, a study's runs in
  MLflow.
- :mod:`~gigatok.launch.planning`: a study's plan narrowed by ``--only``, the one run a CFG search tunes, a dry
  run's and a status's rows, the pretrained and released inputs checked before MLflow is touched.
- :mod:`~gigatok.launch.submission`: :class:`StudyLaunch`: what is left to do (one MLflow query), an MLflow run for
  each run, the runs grouped by tokenizer and submitted per executor, followed, and taken back when submission
  fails.
- :mod:`~gigatok.launch.estimate`: a plan's training FLOPs, GPU-hours and wall time from the measured throughput of
  :mod:`gigatok.calibration` (``--dry-run --estimate``), stages done or shared costing nothing.
- :mod:`~gigatok.launch.local_estimate`: the same plan forecast for this machine's local workers from its training
  steps timed here (``--dry-run --estimate --here``).
- :mod:`~gigatok.launch.single`: a single run outside a study (``studies/train_tokenizer.py``, ``train_ar.py``),
  registered and tracked as a study's run, executed in this process.
- :mod:`~gigatok.launch.search`: :class:`SearchLaunch`: a CFG search's settings from flags, its dry-run preview, its
  MLflow parent, its workers.
"""

from gigatok.launch.common import (
    INPUT_ERRORS,
    SLURM_FLAGS,
    Interrupted,
    UsageError,
    cancel_on_interrupt,
    local_workers,
    peek_tracked,
    require_paper_data,
    run_context,
    slurm_settings,
    threads_per_worker,
    tracked_runs,
)
from gigatok.launch.estimate import Estimate, StageCost, estimate_plan
from gigatok.launch.planning import (
    catalog_rows,
    check_converted_inputs,
    check_pretrained_inputs,
    make_planner,
    parameter_count,
    plan_rows,
    plan_study,
    pretrained_files_needed,
    search_target,
    select,
    slurm_state,
    status_rows,
)
from gigatok.launch.search import SearchLaunch, parse_range, search_parent, search_plan, search_preview
from gigatok.launch.single import SINGLE_EXPERIMENT, SINGLE_RUN_ERRORS, SingleResult, data_root, run_single, single_spec
from gigatok.launch.submission import HEADLINE_METRICS, Outcome, Progress, StudyLaunch, training_step

__all__ = [
    "HEADLINE_METRICS",
    "INPUT_ERRORS",
    "Estimate",
    "SINGLE_EXPERIMENT",
    "SINGLE_RUN_ERRORS",
    "SLURM_FLAGS",
    "Interrupted",
    "Outcome",
    "Progress",
    "SearchLaunch",
    "StageCost",
    "SingleResult",
    "StudyLaunch",
    "UsageError",
    "cancel_on_interrupt",
    "catalog_rows",
    "check_converted_inputs",
    "check_pretrained_inputs",
    "estimate_plan",
    "data_root",
    "local_workers",
    "make_planner",
    "parameter_count",
    "parse_range",
    "peek_tracked",
    "plan_rows",
    "plan_study",
    "pretrained_files_needed",
    "require_paper_data",
    "run_context",
    "run_single",
    "search_parent",
    "search_plan",
    "search_preview",
    "search_target",
    "select",
    "single_spec",
    "slurm_settings",
    "slurm_state",
    "status_rows",
    "threads_per_worker",
    "tracked_runs",
    "training_step",
]

"""The ``cfg_search`` stage of a run, as the run registry (:mod:`gigatok.runs.stages`) lists it, and what the
search decides for the run's generation stage.

A run with this stage searches its CFG scale in-process (resuming a search the CLI started, or finding one
finished) and reports gFID at the best point: :func:`generation_eval` is the setting its generation stage samples at.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from gigatok import tracking_schema as schema
from gigatok.cfg_search.plan import SearchPlan
from gigatok.cfg_search.search import run_here, sync_records
from gigatok.config import EvalConfig
from gigatok.runs.context import Stage, StageContext, StageOutcome
from gigatok.runs.layout import read_result
from gigatok.runs.spec import RunContext, RunSpec

log = logging.getLogger(__name__)


def cfg_search_result_path(spec: RunSpec, ctx: RunContext) -> Path:
    return SearchPlan.for_run(spec, ctx).result_path


def cfg_search_stage(sc: StageContext) -> StageOutcome:
    plan = SearchPlan.for_run(sc.spec, sc.ctx, parent_run_id=sc.run_id)
    if plan.result_path.is_file():
        sync_records(plan)  # the trial runs under this run, when another run's search did the work
    else:
        # One worker in this process; a search started (or finished) by the cfg_search CLI resumes here. The
        # best point goes to the parent run with this stage's metrics, not from inside the search.
        run_here(plan, workspace=sc.workspace, record_parent=False, log=lambda line: log.info(f"cfg_search: {line}"))
    best = read_result(plan.result_path)
    metrics = {schema.CFG_BEST_SCALE: best["best_scale"], schema.CFG_BEST_GFID: best["best_gfid"]}
    if best.get("fractions"):
        metrics[schema.CFG_BEST_STEP_FRACTION] = best["best_step_fraction"]
    tags = {schema.CFG_SEARCH: plan.study_name, schema.CFG_SCHEDULE: plan.schedule}
    return StageOutcome("cfg_search", metrics, tags, [plan.result_path])


def generation_eval(spec: RunSpec, ctx: RunContext) -> EvalConfig | None:
    """The settings the generation stage samples with: the run's own, or with the cfg_search stage the best
    point its search found (None until that search has finished)."""
    if "cfg_search" not in spec.stages:
        return spec.eval
    path = cfg_search_result_path(spec, ctx)
    if not path.is_file():
        return None
    best = read_result(path)
    return dataclasses.replace(
        spec.eval, cfg_scale=best["best_scale"], step_fraction=best["best_step_fraction"], cfg_schedule=best["schedule"]
    )


CFG_SEARCH = Stage("cfg_search", cfg_search_result_path, cfg_search_stage)

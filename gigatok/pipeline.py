"""Old home of the run pipeline, kept so that old imports keep working: it only re-exports public names.

New code imports from :mod:`gigatok.runs` (see its docstring for the map): the run's identity from
:mod:`gigatok.runs.spec`, folders, results and locks from :mod:`gigatok.runs.layout`, the stage registry from
:mod:`gigatok.runs.stages`, and :func:`~gigatok.runs.execute.execute_run` from :mod:`gigatok.runs.execute`.
"""

from gigatok.cfg_search.stage import generation_eval
from gigatok.runs.context import StageContext, StageOutcome, Workspace, workspace_for
from gigatok.runs.execute import execute_run
from gigatok.runs.generation_stage import generation_reference
from gigatok.runs.layout import ar_dir_of, read_result, stage_lock, tokenizer_dir_of, write_result
from gigatok.runs.spec import (
    NEEDS_AR,
    PROBE_STAGES,
    STAGE_METRICS,
    STAGES,
    TOKENIZER_STAGES,
    TRAINING_STAGES,
    RunContext,
    RunSpec,
    settle_perceptual,
    short_hash,
)
from gigatok.runs.stages import completed_stages, run_stage, stage_result_path

__all__ = [
    "NEEDS_AR",
    "PROBE_STAGES",
    "STAGES",
    "STAGE_METRICS",
    "TOKENIZER_STAGES",
    "TRAINING_STAGES",
    "RunContext",
    "RunSpec",
    "StageContext",
    "StageOutcome",
    "Workspace",
    "ar_dir_of",
    "completed_stages",
    "execute_run",
    "generation_eval",
    "generation_reference",
    "read_result",
    "run_stage",
    "settle_perceptual",
    "short_hash",
    "stage_lock",
    "stage_result_path",
    "tokenizer_dir_of",
    "workspace_for",
    "write_result",
]

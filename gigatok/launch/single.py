"""A single run outside a study (``studies/train_tokenizer.py``, ``studies/train_ar.py``), tracked as a study's run
is: a one-run launch in the experiment ``single`` (or the one named with ``--experiment``), registered with the
same tags and params, executed in this process by the same stages (config artifact, dataset inputs, system
metrics, curves, final metrics, timing).

Its identity is a :class:`~gigatok.runs.spec.RunSpec` like any study run's, so a re-run of the same command
resumes under the same MLflow run, and one already FINISHED there is not run again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gigatok.config import ARRunConfig, TokenizerRunConfig, get_profile
from gigatok.launch.common import INPUT_ERRORS, UsageError
from gigatok.launch.submission import StudyLaunch
from gigatok.pipeline import RunContext, RunSpec
from gigatok.weights import MissingWeightsError, WeightsHashError

SINGLE_EXPERIMENT = "single"  # the default experiment of single runs (single-tiny at the tiny profile)
# What a single-run command reports as one line with exit status 2: bad input, and a pretrained file missing or
# corrupt once the run has started (then recorded FAILED in MLflow with the same message).
SINGLE_RUN_ERRORS = (*INPUT_ERRORS, MissingWeightsError, WeightsHashError)
ABOUT = "single runs launched outside a study (studies/train_tokenizer.py, studies/train_ar.py)"


@dataclass(frozen=True)
class SingleResult:
    """How a single run ended: its MLflow run, whether it ran now (False: FINISHED before), its final metrics."""

    run_id: str
    experiment_id: str
    ran: bool
    metrics: dict[str, float]


def data_root(data: str | None) -> str | None:
    """``--data`` checked and made absolute (a job elsewhere reads the same folder), as a study's planner does."""
    if data is None:
        return None
    if not Path(data).is_dir():
        raise UsageError(f"--data {data}: no such directory")
    return str(Path(data).resolve())


def single_spec(
    experiment: str,
    factors: dict[str, Any],
    tokenizer: TokenizerRunConfig,
    ar: ARRunConfig | None,
    stages: tuple[str, ...],
) -> RunSpec:
    """The run: its configs, the profile's scoring settings, and the stages it executes."""
    return RunSpec(experiment, tuple(factors.items()), tokenizer, ar, get_profile(tokenizer.profile).eval, stages)


def run_single(spec: RunSpec, ctx: RunContext, *, data: str | None, source: str) -> SingleResult:
    """Register ``spec`` in MLflow (or find it there) and execute its stages here, with progress bars.

    Everything that can be wrong is checked before the first write (:meth:`StudyLaunch.prepare`); a stage that
    fails marks the run FAILED with its error and re-raises.
    """
    from gigatok.runs.execute import execute_run

    launch = StudyLaunch.prepare(
        spec.study,
        spec.profile,
        [spec],
        ctx,
        executor="debug",  # in this process
        local_parallel=None,
        slurm_flags=None,
        data=data,
        about=ABOUT,
        source=source,
    )
    if not launch.todo:
        record = launch.tracked[spec.hash]
        return SingleResult(record.run_id, launch.experiment_id, False, dict(record.metrics))
    launch.register()
    run_id = launch.run_ids[spec.hash]
    return SingleResult(run_id, launch.experiment_id, True, execute_run(spec, launch.ctx, run_id))

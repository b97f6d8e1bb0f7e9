"""What one CFG search evaluates: its points and budgets, its Optuna study name and storage, and the checks made
before anything is written."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from gigatok.config import CfgSearchConfig
from gigatok.runs.layout import ar_dir_of
from gigatok.runs.spec import RunContext, RunSpec, short_hash
from gigatok.runs.train_stages import ar_result_path

DIGITS = 6  # points are rounded so that 1.0 + 3 x 0.25 and TPE's 1.7500000000000002 are the same point
JOURNAL_NAME = "optuna.journal"


class SearchError(ValueError):
    """A CFG search cannot start or cannot finish; the message is one line that names what is at fault."""


@dataclass(frozen=True, order=True)
class SearchPoint:
    """One setting of the sampler: the guidance scale and the step schedule's unguided share of tokens."""

    cfg_scale: float
    step_fraction: float

    def label(self, with_fraction: bool) -> str:
        return f"cfg {self.cfg_scale:g}" + (f" fraction {self.step_fraction:g}" if with_fraction else "")


def grid_values(low: float, high: float, step: float) -> tuple[float, ...]:
    """``low``, ``low + step``, ... up to ``high`` (inclusive, up to rounding)."""
    count = math.floor((high - low) / step + 1e-9) + 1
    return tuple(round(low + i * step, DIGITS) for i in range(count))


@dataclass(frozen=True)
class SearchPlan:
    """A search over the sampler settings of one run's AR model, and where it keeps its state.

    The Optuna study is named after the AR model and everything that changes a trial's score (``study_name``), so
    the same search started again, by the CLI or by the run's ``cfg_search`` stage, loads the same study and runs
    only what is missing; changed settings are a new study in the same storage.
    """

    spec: RunSpec
    ctx: RunContext
    search: CfgSearchConfig
    schedule: Literal["constant", "step"]  # the CFG schedule searched: the run's own unless the CLI says otherwise
    storage: str | None = None  # a journal file path or an Optuna RDB URL; None: the journal beside the AR model
    parent_run_id: str | None = None  # the MLflow run the trials are recorded under; None: no MLflow records
    low_samples_override: int | None = None  # an explicit small budget in samples, instead of low_fraction

    def __post_init__(self) -> None:
        if self.spec.ar is None:
            raise SearchError(f"run {self.spec.hash} ({self.spec.label}) has no AR model to search a CFG scale for")
        if self.schedule not in ("constant", "step"):
            raise SearchError(f"CFG schedule {self.schedule!r}: 'constant' or 'step'")
        if self.search.fraction_min is not None and self.schedule != "step":
            raise SearchError(
                "the step fraction is a dimension of the step schedule only: search it with the step "
                "schedule, or leave its range unset"
            )
        low = self.low_samples_override
        if low is not None and not 2 <= low < self.full_samples:
            raise SearchError(
                f"small budget {low} samples: must be at least 2 and below the full budget "
                f"({self.full_samples} samples)"
            )

    @classmethod
    def for_run(cls, spec: RunSpec, ctx: RunContext, parent_run_id: str | None = None) -> SearchPlan:
        """The search a run's ``cfg_search`` stage makes: its own settings, in the default storage."""
        return cls(spec, ctx, spec.eval.cfg_search, spec.eval.cfg_schedule, parent_run_id=parent_run_id)

    # -- the points and budgets ------------------------------------------------------------------------------
    @property
    def full_samples(self) -> int:
        return self.search.full_samples or self.spec.eval.gen_samples

    @property
    def low_samples(self) -> int | None:
        """The small budget every trial is scored on first; None when there is no rung below the full budget."""
        if self.low_samples_override is not None:
            return self.low_samples_override
        low = round(self.full_samples * self.search.low_fraction)
        return low if 2 <= low < self.full_samples else None

    @property
    def scales(self) -> tuple[float, ...]:
        return grid_values(self.search.scale_min, self.search.scale_max, self.search.scale_step)

    @property
    def searches_fraction(self) -> bool:
        return self.search.fraction_min is not None

    @property
    def fractions(self) -> tuple[float, ...]:
        s = self.search
        if s.fraction_min is None or s.fraction_max is None:
            return (self.spec.eval.step_fraction,)
        return grid_values(s.fraction_min, s.fraction_max, s.fraction_step)

    @property
    def points(self) -> list[SearchPoint]:
        return [SearchPoint(c, f) for c in self.scales for f in self.fractions]

    @property
    def search_space(self) -> dict[str, list[float]]:
        """Optuna's parameters: the scale, and the fraction only when it is searched."""
        space = {"cfg_scale": list(self.scales)}
        if self.searches_fraction:
            space["step_fraction"] = list(self.fractions)
        return space

    def params_of(self, point: SearchPoint) -> dict[str, float]:
        params = {"cfg_scale": point.cfg_scale}
        if self.searches_fraction:
            params["step_fraction"] = point.step_fraction
        return params

    def point_of(self, params: dict[str, Any]) -> SearchPoint:
        fraction = params.get("step_fraction", self.spec.eval.step_fraction)
        return SearchPoint(round(float(params["cfg_scale"]), DIGITS), round(float(fraction), DIGITS))

    # -- identity and places ----------------------------------------------------------------------------------
    @property
    def ar_dir(self) -> Path:
        """The AR model searched (``ar-<AR hash>``, or ``ar-<AR hash>-epoch-N`` on a tokenizer snapshot)."""
        return ar_dir_of(self.spec, self.ctx)

    @cached_property
    def key(self) -> str:
        """Everything that changes what a trial scores, hashed."""
        e, s = self.spec.eval, self.search
        return short_hash(
            {
                "ar": self.ar_dir.name,
                "schedule": self.schedule,
                "space": self.search_space,
                "fixed_fraction": e.step_fraction if self.schedule == "step" and not self.searches_fraction else None,
                "sampler": s.sampler,
                "trials": s.trials,
                "seed": s.seed,
                "pruner": s.pruner,
                "startup_trials": s.startup_trials,
                "low": self.low_samples,
                "full": self.full_samples,
                "sampling": [e.temperature, e.top_k, e.top_p],
                "reference": [
                    e.reference_images,
                    e.inception_input,
                    *([e.gen_reference] if e.gen_reference != "val" else []),
                ],
                "batch_size": e.batch_size,  # the samples drawn depend on how the generator's stream is batched
                # only when set, so the searches made before the field came keep their keys
            }
        )

    @property
    def study_name(self) -> str:
        return f"cfg-{self.ar_dir.name.removeprefix('ar-')}-{self.schedule}-{self.key}"

    @property
    def search_dir(self) -> Path:
        """Beside the AR model: the default journal, the claim locks and the workers' heartbeats."""
        return self.ar_dir / "cfg-search"

    @property
    def storage_location(self) -> str:
        return self.storage or str(self.search_dir / JOURNAL_NAME)

    @property
    def is_rdb(self) -> bool:
        return "://" in self.storage_location

    @property
    def result_path(self) -> Path:
        """The finished search's summary (the ``cfg_search`` stage's result)."""
        return self.ar_dir / "eval" / f"cfg-search-{self.key}.json"

    @property
    def lock_path(self) -> Path:
        return self.search_dir / f"{self.study_name}.lock"

    @property
    def heartbeat_dir(self) -> Path:
        return self.search_dir / "workers"

    def trial_spec(self, point: SearchPoint, samples: int) -> RunSpec:
        """The run reduced to its generation stage at ``point``: a trial's full-budget score is that stage's result,
        so the run's own generation stage finds the best point's result on disk instead of sampling again."""
        e = dataclasses.replace(
            self.spec.eval,
            cfg_scale=point.cfg_scale,
            step_fraction=point.step_fraction,
            cfg_schedule=self.schedule,
            gen_samples=samples,
        )
        return dataclasses.replace(self.spec, eval=e, stages=("generation",))

    def describe(self) -> dict[str, Any]:
        """The settings, as recorded in the study, the result file and the dry run."""
        return {
            "study_name": self.study_name,
            "storage": self.storage_location,
            "run_hash": self.spec.hash,
            "run": self.spec.label,
            "study": self.spec.study,
            "profile": self.spec.profile,
            "schedule": self.schedule,
            "sampler": self.search.sampler,
            "trials": self.search.trials,
            "pruner": self.search.pruner,
            "startup_trials": self.search.startup_trials,
            "scales": list(self.scales),
            "fractions": list(self.fractions) if self.searches_fraction else None,
            "step_fraction": None if self.searches_fraction else self.spec.eval.step_fraction,
            "low_samples": self.low_samples,
            "full_samples": self.full_samples,
            "gen_samples": self.spec.eval.gen_samples,
        }


# ----------------------------------------------------------------------------------------------------------
# Checks before anything is written
# ----------------------------------------------------------------------------------------------------------


def check_ready(plan: SearchPlan) -> None:
    """Refuse a search that cannot run, before anything is written: no trained AR model, or a storage or search
    folder that cannot be written."""
    spec = plan.spec
    summary = ar_result_path(spec, plan.ctx)
    if not summary.is_file():
        raise SearchError(
            f"run {spec.hash} ({spec.label}) has no trained AR model ({summary} is missing): run "
            f"`python studies/run.py {spec.study} --only {spec.hash}` first"
        )
    location = plan.storage_location
    if location.startswith("sqlite:///"):
        check_writable_file(Path(location.removeprefix("sqlite:///")), f"storage {location}")
    elif not plan.is_rdb:
        check_writable_file(Path(location), f"storage {location}")
    # A server URL is checked by connecting to it, when the study is created (the first write).
    check_writable_file(plan.lock_path, f"search folder {plan.search_dir}")


def check_writable_file(path: Path, what: str) -> None:
    """``path`` can be created or appended to (as far as can be told without writing)."""
    if path.is_dir():
        raise SearchError(f"{what}: {path} is a directory, not a file")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise SearchError(f"{what}: {path} is not writable")
        return
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise SearchError(f"{what}: not writable ({parent} is a file, not a directory)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SearchError(f"{what}: not writable ({parent} is read-only)")

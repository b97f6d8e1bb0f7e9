"""Scoring a point of a CFG search: gFID of the trained AR model sampled at that point's settings.

A scorer is any callable ``score(point, report) -> metrics``: it returns the full-budget metrics (at least
``gfid``) and, part-way, calls ``report(samples, gfid)``, which raises :class:`optuna.TrialPruned` when the pruner
stops the point. The search driver takes the scorer as a parameter; :class:`GenerationScorer` is the real one.

The real score is the run's own generation stage at the point's settings (:meth:`SearchPlan.trial_spec`), so a
trial's full-budget result is the very file the run's generation stage reads at the best point. The small-budget
score is the FID of the first ``low_samples`` images of that same stream, taken from the Inception features on
their way into the full statistics: the small rung costs nothing beyond the Frechet distance itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from gigatok.cfg_search.plan import SearchPlan, SearchPoint
from gigatok.runs.context import StageContext, Workspace, workspace_for
from gigatok.runs.generation_stage import generation_at, generation_reference, generation_result_path
from gigatok.runs.layout import stage_lock
from gigatok.runs.spec import RunSpec

Report = Callable[[int, float], None]


class Scorer(Protocol):
    def __call__(self, point: SearchPoint, report: Report) -> dict[str, float]: ...


class _SmallBudgetFid:
    """Accumulates the first ``samples`` feature rows of a stream and reports their FID against the reference."""

    def __init__(self, reference: Any, samples: int, report: Report) -> None:
        from gigatok.metrics.accumulators import FeatureMoments

        self.reference = reference
        self.samples = samples
        self.report = report
        self.moments = FeatureMoments(reference.mean.shape[0])
        self.rows: list[Any] = []  # kept while fewer than the feature dimension: the fast FID route needs them

    def __call__(self, features: Any) -> None:
        import numpy as np

        from gigatok.metrics.fid import frechet_distance_gaussians

        missing = self.samples - self.moments.count
        if missing <= 0:
            return
        batch = np.asarray(
            features[:missing].detach().cpu() if hasattr(features, "detach") else features[:missing], dtype=np.float32
        )
        self.moments.update(batch)
        if self.samples < self.moments.dim:
            self.rows.append(batch)
        if self.moments.count == self.samples:
            fid = frechet_distance_gaussians(
                self.moments.mean,
                self.moments.covariance,
                self.reference.mean,
                self.reference.covariance,
                rows1=np.concatenate(self.rows) if self.rows else None,
                rows2=self.reference.all_rows(),
            )
            self.report(self.samples, fid)  # raises optuna.TrialPruned to stop the stream here


class GenerationScorer:
    """gFID of ``plan``'s AR model at a point, through the run's generation stage."""

    def __init__(self, plan: SearchPlan, workspace: Workspace | None = None) -> None:
        self.plan = plan
        self.workspace = workspace
        self.reference: Any = None

    def prepare(self) -> None:
        """Load the networks and the reference statistics. The reference is computed once, by whichever worker
        comes first (the others wait on its lock), and cached where every trial and the generation stage read it."""
        if self.reference is not None:
            return
        if self.workspace is None:
            self.workspace = workspace_for(self.plan.ctx)
        ctx, e = self.plan.ctx, self.plan.spec.eval
        network = self.workspace.feature_network(e.inception_input)
        # The same call as the generation stage's, so both find the same cache file.
        with stage_lock(ctx.reference_dir / "reference"):
            self.reference = generation_reference(self.plan.spec, ctx, network, e)

    def __call__(self, point: SearchPoint, report: Report) -> dict[str, float]:
        self.prepare()
        spec = self.plan.trial_spec(point, self.plan.full_samples)
        low = self.plan.low_samples
        # The reference is cached by prepare(), so the features the stage streams are the generated images' only.
        small_budget = None if low is None else _SmallBudgetFid(self.reference, low, report)
        return self._generation(spec, on_features=small_budget)

    def rescore(self, point: SearchPoint, samples: int) -> dict[str, float]:
        """The run's generation stage at ``point`` with ``samples`` samples (the best point at the run's budget)."""
        self.prepare()
        return self._generation(self.plan.trial_spec(point, samples))

    def _generation(self, spec: RunSpec, on_features: Callable[[Any], None] | None = None) -> dict[str, float]:
        """The generation stage of a trial spec, under its lock. A trial spec has no cfg_search stage: it samples at
        its own settings, ``spec.eval``."""
        assert self.workspace is not None
        with stage_lock(generation_result_path(spec, self.plan.ctx, spec.eval)):
            outcome = generation_at(
                StageContext(spec, self.plan.ctx, self.workspace), spec.eval, on_features=on_features
            )
        return dict(outcome.metrics)

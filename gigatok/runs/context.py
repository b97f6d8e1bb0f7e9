"""What a stage is, what its function is given and what it returns.

A stage is a name, the file whose presence means it is done, and a function that computes it (or reads it back
when it is done). The function gets a :class:`StageContext` (the run, where it runs, the per-process networks, and
where live training curves go) and returns a :class:`StageOutcome` (the final metrics, tags and artifacts that
:func:`gigatok.runs.execute.execute_run` logs to MLflow).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gigatok.runs.layout import ar_dir_of, tokenizer_dir_of
from gigatok.runs.spec import RunContext, RunSpec

if TYPE_CHECKING:
    import torch

# Live training curves: (stage, step, values), sent while a training stage runs.
CurveLog = Callable[[str, int, dict[str, float]], None]


@dataclass
class StageOutcome:
    stage: str
    metrics: dict[str, float]
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)
    records: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # training curves
    substitutes: list[str] = field(default_factory=list)


class Workspace:
    """Per-process objects that the stages of every run in a job share (the Inception and LPIPS networks).

    The LPIPS network of the metrics is :class:`gigatok.perceptual.LPIPSUnavailable` where the vgg16 file is missing
    and no substitute was asked for.
    """

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.device = run_device(ctx)
        self._networks: dict[int, Any] = {}
        self._perceptual: Any = None

    def perceptual(self) -> Any:
        from gigatok.perceptual import PerceptualLoss, lpips_for_metrics

        if self._perceptual is None:
            network = lpips_for_metrics(self.ctx.weights_dir, self.ctx.allow_substitutes)
            self._perceptual = network.to(self.device) if isinstance(network, PerceptualLoss) else network
        return self._perceptual

    def feature_network(self, input_size: int) -> Any:
        from gigatok.metrics.features import load_feature_network

        if input_size not in self._networks:
            self._networks[input_size] = load_feature_network(
                "auto", self.ctx.weights_dir, device=self.device, input_size=input_size
            )
        return self._networks[input_size]


@functools.cache
def run_device(ctx: RunContext) -> torch.device:
    """The device a job of ``ctx`` runs on: the one asked for, else a GPU where there is one."""
    import torch

    return torch.device(ctx.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def workspace_for(ctx: RunContext) -> Workspace:
    """One workspace per process and context: a job's runs load each network once."""
    return Workspace(ctx)


@dataclass(frozen=True)
class StageContext:
    """What a stage function is given: the run, where it executes, the shared networks, and (for training
    stages) where live curves go."""

    spec: RunSpec
    ctx: RunContext
    workspace: Workspace
    log: CurveLog | None = None
    run_id: str | None = None  # the MLflow run (the parent of a CFG search's trial runs); None: not tracked

    @property
    def tok_dir(self) -> Path:
        """The tokenizer the run evaluates (its snapshot's folder when the spec names one)."""
        return tokenizer_dir_of(self.spec, self.ctx)

    @property
    def train_dir(self) -> Path:
        """Where the tokenizer trains (the same as ``tok_dir`` unless the spec evaluates a snapshot)."""
        return self.ctx.tokenizer_dir(self.spec.tokenizer)

    @property
    def ar_dir(self) -> Path:
        assert self.spec.ar is not None
        return ar_dir_of(self.spec, self.ctx)

    def curve(self, stage: str, step: int, values: dict[str, float]) -> None:
        """Send one step of a training curve to ``log``, if there is one."""
        if self.log is not None:
            self.log(stage, step, values)


@dataclass(frozen=True)
class Stage:
    """One stage of a run: its name (one of :data:`gigatok.runs.spec.STAGES`), the file whose presence means it is
    done, and the function that computes it or, when done, reads its outcome back from that file."""

    name: str
    result_path: Callable[[RunSpec, RunContext], Path]
    compute: Callable[[StageContext], StageOutcome]

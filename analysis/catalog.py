"""Every figure ``analysis/plot_scaling.py`` makes: its name, the paper figure it reproduces and the study it draws.

A figure is a function of the study's runs (one profile) and a :class:`~analysis.sources.Source` for what the runs
table does not hold (curves, CFG trials, stored arrays); it returns a :class:`~analysis.figures.Plot`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from analysis.fig_cfg import cfg_curve
from analysis.fig_curves import fig5_entropy_curves
from analysis.fig_features import fig8_feature_pca
from analysis.fig_fits import fit_plot
from analysis.fig_frontier import FRONTIER_STUDIES, frontier_plot
from analysis.figures import (
    Plot,
    fig6_ar_probe_vs_large,
    fig9_1d_vs_2d,
    fig12_train_duration,
    fig13_checkpoint_probes,
    scaling_semreg,
    scaling_vanilla,
)
from analysis.fit_scaling import FIT_STUDIES, FitStudy
from analysis.sources import Source


@dataclass(frozen=True)
class FigureSpec:
    name: str
    reproduces: str
    study: str | None  # the study whose runs it draws; None: every study's runs (the CFG curve)
    make: Callable[[pd.DataFrame, Source], Plot]
    # Whether it fetches from the Source (curves, trials, arrays). Those are drawn in the process that holds the
    # store's Source, which remembers the fetches for a snapshot; the others can be drawn in worker processes.
    reads_source: bool = False

    def __reduce__(self) -> tuple[Callable[[str], FigureSpec], tuple[str]]:
        # Pickled by name (``make`` is often a lambda), for worker processes: the catalog there is the same.
        return figure_spec, (self.name,)


def _runs_only(make: Callable[[pd.DataFrame], Plot]) -> Callable[[pd.DataFrame, Source], Plot]:
    return lambda runs, _source: make(runs)


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("fig3_scaling_vanilla", "Fig. 3", "scaling_vanilla", _runs_only(scaling_vanilla)),
    FigureSpec("fig5_entropy_curves", "Fig. 5", "entropy_loss", fig5_entropy_curves, reads_source=True),
    FigureSpec("fig6_ar_probe_vs_large", "Fig. 6", "ar_probe_vs_large", _runs_only(fig6_ar_probe_vs_large)),
    FigureSpec("fig7_scaling_semreg", "Figs. 1 and 7", "scaling_semreg", _runs_only(scaling_semreg)),
    FigureSpec("fig8_feature_pca", "Fig. 8", "feature_pca", fig8_feature_pca, reads_source=True),
    FigureSpec("fig9_1d_vs_2d", "Fig. 9", "scaling_1d_vs_2d", _runs_only(fig9_1d_vs_2d)),
    FigureSpec("fig12_train_duration", "Fig. 12", "train_duration", _runs_only(fig12_train_duration)),
    FigureSpec("fig13_checkpoint_probes", "Fig. 13", "tokenizer_checkpoints", _runs_only(fig13_checkpoint_probes)),
    FigureSpec("cfg_curve", "App. B (CFG search)", None, cfg_curve, reads_source=True),
)


def _fits(spec: FitStudy) -> Callable[[pd.DataFrame, Source], Plot]:
    return lambda runs, _source: fit_plot(runs, spec)


def _frontier(spec: FitStudy) -> Callable[[pd.DataFrame, Source], Plot]:
    return lambda runs, _source: frontier_plot(runs, spec)


# Beyond the paper: a power law fitted to every study with a size or compute axis (its plot carries the fits, which
# make the exponent table), and the compute frontier of the studies that vary size and training length.
FIT_FIGURES: tuple[FigureSpec, ...] = tuple(
    FigureSpec(f"fits_{s.study}", "scaling-law fit", s.study, _fits(s)) for s in FIT_STUDIES
)
FRONTIER_FIGURES: tuple[FigureSpec, ...] = tuple(
    FigureSpec(f"frontier_{s.study}", "compute frontier", s.study, _frontier(s)) for s in FRONTIER_STUDIES
)
FIGURES += FIT_FIGURES + FRONTIER_FIGURES


def figure_spec(name: str) -> FigureSpec:
    """The figure of the catalog named ``name`` (KeyError if none is)."""
    for spec in FIGURES:
        if spec.name == name:
            return spec
    raise KeyError(f"no figure named {name!r} in analysis/catalog.py")

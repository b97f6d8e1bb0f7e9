"""The paper's scaling figures, drawn from the runs table of :mod:`analysis.load`.

Every function returns a :class:`Plot`: the matplotlib figure and a tidy table of exactly what was drawn (one row
per point), so tests and tables check numbers, not pixels. Rules every figure follows:

- only FINISHED runs are drawn (a re-run of the same configuration counts once: the newest);
- one profile per figure, named in the title: tiny-profile trends must never pass for the paper's numbers;
- a run scored with random SUBSTITUTE networks is drawn hollow and hatched, and the title and legend say so;
- a metric that no run logged leaves its panel empty with a note instead of failing the whole figure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullFormatter

SUBSTITUTE_NOTE = "SUBSTITUTE networks"


@dataclass(frozen=True)
class Panel:
    metric: str
    title: str
    ylabel: str
    scale: float = 1.0  # drawn value = logged value * scale (probe accuracies are logged as fractions)


RFID = Panel("rfid", "Reconstruction", "rFID (lower is better)")
GFID = Panel("gfid", "AR Probing: generation", "gFID (lower is better)")
VAL_LOSS = Panel("ar_val_loss", "AR Probing: validation loss", "validation loss (nats/token)")
LIN_ACC = Panel("ar_probe_acc", "AR Probing: linear probe", "top-1 accuracy (%)", scale=100.0)


@dataclass(frozen=True, eq=False)
class Plot:
    name: str
    figure: Figure
    data: pd.DataFrame  # one row per drawn point: panel, series, size, x (M params), value as logged, y as drawn
    notes: tuple[str, ...] = ()  # panels skipped and runs left out, for the caller to report

    def save(self, out_dir: str | Path, stem: str | None = None) -> list[Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / f"{stem or self.name}.{ext}" for ext in ("png", "pdf")]
        for path in paths:
            self.figure.savefig(path, dpi=150)
        return paths


DATA_COLUMNS = ["figure", "panel", "series", "run_id", "run_name", "size", "x", "value", "y", "substitute"]


def missing_runs_reason(runs: pd.DataFrame, study: str) -> str | None:
    """Why ``runs`` (one study at one profile) cannot feed a figure or table, or None when FINISHED runs exist."""
    if runs.empty:
        return f"no runs of study {study}"
    if finished_runs(runs).empty:
        states = ", ".join(f"{n} {s}" for s, n in runs["status"].value_counts().sort_index().items())
        return f"no FINISHED runs of study {study} ({states})"
    return None


def finished_runs(df: pd.DataFrame) -> pd.DataFrame:
    """FINISHED runs only; where one configuration (run hash) finished twice, the newest run."""
    done = df[df["status"] == "FINISHED"]
    if "start_time" not in done or "run_hash" not in done:
        return done
    hashed = done["run_hash"].notna()  # a run without a hash is its own configuration, never merged with others
    newest = done[hashed].sort_values("start_time").drop_duplicates(subset=["study", "run_hash"], keep="last")
    return pd.concat([done[~hashed], newest]).sort_index()


def scaling_plot(
    df: pd.DataFrame,
    *,
    name: str,
    title: str,
    study: str | None,
    series: Callable[[pd.DataFrame], pd.Series],
    order: Sequence[str],
    panels: Sequence[Panel],
) -> Plot:
    """Metrics against tokenizer parameters: one panel per metric, one line per series, points named by size.

    ``series`` maps each run to its line's label, one of ``order`` (which also fixes the colours, so 1D is the
    same colour in every figure); a run it maps to NA is left out.
    """
    runs = finished_runs(df if study is None else df[df["study"] == study])
    if runs.empty:
        raise ValueError(f"{name}: no FINISHED runs" + (f" of study {study}" if study else ""))
    profiles = sorted(runs["profile"].dropna().unique())
    if len(profiles) > 1:
        raise ValueError(f"{name}: runs of several profiles ({', '.join(profiles)}); pass one profile's runs")
    profile = profiles[0] if profiles else "unknown"
    notes: list[str] = []
    unplaced = runs["tokenizer_params"].isna()
    if unplaced.any():
        notes.append(f"left out, no parameter count: {', '.join(runs.loc[unplaced, 'run_name'].astype(str))}")
    runs = runs[~unplaced].assign(series=series(runs[~unplaced]), x=lambda r: r["tokenizer_params"] / 1e6)
    runs = runs[runs["series"].notna()]
    if runs.empty:
        raise ValueError(f"{name}: no FINISHED run has both a parameter count and a line to belong to")
    labels = [label for label in order if (runs["series"] == label).any()]
    substitutes = bool(runs["substitute"].any())

    fig = Figure(figsize=(4.3 * len(panels), 4.0), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    records: list[dict] = []
    legend_drawn = False
    for ax, panel in zip(axes, panels, strict=True):
        values = runs[panel.metric] if panel.metric in runs else pd.Series(float("nan"), index=runs.index)
        logged = runs[values.notna()]
        if logged.empty:
            ax.set_axis_off()
            ax.text(0.5, 0.5, f"{panel.title}\n\nskipped: no run logged {panel.metric}", ha="center", va="center",
                    transform=ax.transAxes, fontsize=9, color="0.4")
            notes.append(f"panel '{panel.title}' skipped: no run logged {panel.metric}")
            continue
        if len(logged) < len(runs):
            lacking = runs.loc[values.isna(), "run_name"]
            notes.append(f"panel '{panel.title}': {', '.join(lacking.astype(str))} did not log {panel.metric}")
        for label in labels:
            points = logged[logged["series"] == label].sort_values("x")
            if not points.empty:
                records.extend(_draw_series(ax, points, panel, label, f"C{list(order).index(label)}", name))
        _style_axes(ax, panel, logged["x"])
        if not legend_drawn:
            _legend(ax, substitutes)
            legend_drawn = True
    heading = f"{title} ({profile} profile)"
    if profile != "paper":
        heading += f": {profile}-scale models, trends only, not the paper's numbers"
    if substitutes:
        heading += f"\nhollow hatched points: runs scored with {SUBSTITUTE_NOTE}, not comparable to real ones"
    fig.suptitle(heading, fontsize=10)
    data = pd.DataFrame.from_records(records, columns=DATA_COLUMNS)
    return Plot(name, fig, data, tuple(notes))


def _draw_series(ax: Axes, points: pd.DataFrame, panel: Panel, label: str, color: str, figure: str) -> list[dict]:
    x, y = points["x"], points[panel.metric] * panel.scale
    ax.plot(x, y, "-", color=color, label=label, zorder=2)
    real = ~points["substitute"].astype(bool)
    ax.scatter(x[real], y[real], marker="o", s=36, color=color, zorder=3)
    # Substitute networks give numbers that mean nothing against real ones: a different marker, hollow and hatched.
    ax.scatter(x[~real], y[~real], marker="s", s=80, facecolors="none", edgecolors=color, hatch="////",
               linewidths=1.2, zorder=3)
    for xi, yi, size in zip(x, y, points["tokenizer_name"], strict=True):
        ax.annotate(str(size), (xi, yi), textcoords="offset points", xytext=(4, 5), fontsize=7)
    return [
        {"figure": figure, "panel": panel.metric, "series": label, "run_id": r.run_id, "run_name": r.run_name,
         "size": r.tokenizer_name, "x": r.x, "value": getattr(r, panel.metric),
         "y": getattr(r, panel.metric) * panel.scale, "substitute": bool(r.substitute)}
        for r in points.itertuples(index=False)
    ]


def _style_axes(ax: Axes, panel: Panel, x: pd.Series) -> None:
    ax.set_xscale("log")
    ticks = log_ticks(float(x.min()), float(x.max()))
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("tokenizer parameters (M, log scale)")
    ax.set_ylabel(panel.ylabel)
    ax.set_title(panel.title, fontsize=10)
    ax.grid(alpha=0.3)


def log_ticks(low: float, high: float) -> list[float]:
    """At least three round ticks (1-2-5, then every digit) over [low, high]: a tiny-profile study spans less than
    a decade, where matplotlib's log axis would label one tick or none."""
    decades = range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
    ticks: list[float] = []
    for digits in ((1,), (1, 2, 5), (1, 2, 3, 5), tuple(range(1, 10))):
        ticks = [float(f"{d * 10.0**e:.6g}") for e in decades for d in digits if low / 1.1 <= d * 10.0**e <= high * 1.1]
        if len(ticks) >= 3:
            break
    return ticks or [float(f"{low:.3g}")]


def _legend(ax: Axes, substitutes: bool) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if substitutes:
        handles.append(Line2D([], [], marker="s", linestyle="none", markerfacecolor="none", markeredgecolor="0.3",
                              markersize=8))
        labels.append(SUBSTITUTE_NOTE)
    ax.legend(handles, labels, fontsize=7)


# ----------------------------------------------------------------------------------------------------------
# The figures
# ----------------------------------------------------------------------------------------------------------

KIND_LABELS = {"1d": "1D tokenizer (Q-Former)", "2d": "2D tokenizer (ViT)"}
SEMREG_LABELS = {False: "vanilla (no semantic reg.)", True: "with semantic regularization"}


def kind_series(runs: pd.DataFrame) -> pd.Series:
    return runs["tokenizer_kind"].astype("object").map(KIND_LABELS)


def semreg_series(runs: pd.DataFrame) -> pd.Series:
    """The study's ``semreg`` factor where it has one, else whether the semantic weight is above zero."""
    on = runs["semantic_weight"].gt(0).where(runs["semantic_weight"].notna())
    if "factor_semreg" in runs:
        on = runs["factor_semreg"].astype("object").where(runs["factor_semreg"].notna(), on)
    return on.map(lambda v: SEMREG_LABELS.get(bool(v)) if pd.notna(v) else None)


def fig9_1d_vs_2d(df: pd.DataFrame, study: str | None = "scaling_1d_vs_2d") -> Plot:
    """Fig. 9: 1D (Q-Former) against 2D (ViT) tokenizers, S-S to B-L, with semantic regularization."""
    return scaling_plot(df, name="fig9_1d_vs_2d", title="Fig. 9: 1D vs 2D tokenizers", study=study,
                        series=kind_series, order=list(KIND_LABELS.values()), panels=(RFID, GFID, VAL_LOSS, LIN_ACC))


def scaling_semreg(df: pd.DataFrame, study: str | None = "scaling_semreg") -> Plot:
    """Figs. 1 and 7: scaling with and without semantic regularization (the reconstruction vs generation dilemma)."""
    return scaling_plot(df, name="fig7_scaling_semreg", title="Figs. 1 and 7: scaling with and without semantic "
                        "regularization", study=study, series=semreg_series, order=list(SEMREG_LABELS.values()),
                        panels=(RFID, GFID, VAL_LOSS, LIN_ACC))


def scaling_vanilla(df: pd.DataFrame, study: str | None = "scaling_vanilla") -> Plot:
    """Fig. 3: vanilla 1D tokenizers, where reconstruction improves with size and generation does not."""
    return scaling_plot(df, name="fig3_scaling_vanilla", title="Fig. 3: scaling vanilla 1D tokenizers", study=study,
                        series=semreg_series, order=list(SEMREG_LABELS.values()), panels=(RFID, GFID, VAL_LOSS))


@dataclass(frozen=True)
class FigureSpec:
    name: str
    reproduces: str
    study: str  # the study whose runs it draws
    make: Callable[[pd.DataFrame], Plot]


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("fig3_scaling_vanilla", "Fig. 3", "scaling_vanilla", scaling_vanilla),
    FigureSpec("fig7_scaling_semreg", "Figs. 1 and 7", "scaling_semreg", scaling_semreg),
    FigureSpec("fig9_1d_vs_2d", "Fig. 9", "scaling_1d_vs_2d", fig9_1d_vs_2d),
)

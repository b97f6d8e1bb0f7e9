"""The paper's scaling figures, drawn from the runs table of :mod:`analysis.load`.

Every function returns a :class:`Plot`: the matplotlib figure and a tidy table of exactly what was drawn (one row
per point), so tests and tables check numbers, not pixels. Rules every figure follows:

- only FINISHED runs are drawn (a re-run of the same configuration counts once: the newest);
- runs that differ only by seed are one point: the mean, with a 95% confidence band over seeds and each seed a faint
  dot (:mod:`analysis.seeds`), and the Plot's ``spread`` says which differences the figure shows stand above the
  seed spread; a study run with one seed is drawn as single points, as before;
- one profile per figure, named in the title: tiny-profile trends must never pass for the paper's numbers;
- a run scored with random SUBSTITUTE networks is drawn hollow and hatched, and the title and legend say so;
- a metric that no run logged leaves its panel empty with a note instead of failing the whole figure;
- a metric a run could not compute (its ``provenance.<metric>`` says "unavailable (why)", e.g. LPIPS without the
  VGG16 file) is no point at all, never a zero, and the note says so.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import NullLocator

from analysis.load import ar_parameters
from analysis.seeds import beyond_spread, ci95, newest_per_seed, summary
from analysis.theme import house_theme

SUBSTITUTE_NOTE = "SUBSTITUTE networks"
UNAVAILABLE = "n/a"  # a metric its run could not compute (no real network for it on that machine)


@dataclass(frozen=True)
class Panel:
    metric: str
    title: str
    ylabel: str
    scale: float = 1.0  # drawn value = logged value * scale (probe accuracies are logged as fractions)
    twin: bool = False  # the second series on a right-hand y axis of its own


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
    # Over seeds: for each difference the figure shows, whether it stands above the seed spread (one line a panel),
    # and the same as a table (COMPARISON_COLUMNS). Empty when every point has one seed.
    spread: tuple[str, ...] = ()
    comparisons: pd.DataFrame | None = None

    def save(self, out_dir: str | Path, stem: str | None = None, formats: Sequence[str] = ("png",)) -> list[Path]:
        """The figure as ``<stem>.<format>`` for each of ``formats`` (PNG alone by default: a PDF costs as much
        drawing again, most of the time of a figure)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / f"{stem or self.name}.{ext}" for ext in formats]
        for path in paths:
            self.figure.savefig(path, dpi=150)
        return paths


DATA_COLUMNS = ["figure", "panel", "series", "run_id", "run_name", "size", "x", "value", "y", "substitute"]
# A scaling figure's rows also carry the run's seed and its point's statistics over seeds, in drawn units.
SEED_COLUMNS = ["seed", "n", "mean", "std", "ci_low", "ci_high"]
COMPARISON_COLUMNS = ["panel", "compares", "a", "b", "at", "mean_a", "mean_b", "n_a", "n_b", "beyond_spread"]


def unavailable_reason(run: pd.Series, metric: str) -> str | None:
    """Why ``run`` (a row of the runs table) has no ``metric``, when it recorded one (provenance "unavailable
    (...)"), else None."""
    provenance = run.get(f"provenance.{metric}")
    if isinstance(provenance, str) and provenance.startswith("unavailable"):
        return provenance
    return None


def unavailable_reasons(runs: pd.DataFrame, metric: str) -> set[str]:
    """The :func:`unavailable_reason` of every run of ``runs`` that has one, read from the provenance column at once
    (a row-by-row walk built a Series of the whole wide row per run)."""
    provenance = runs.get(f"provenance.{metric}")
    if provenance is None:
        return set()
    return {p for p in provenance.dropna() if isinstance(p, str) and p.startswith("unavailable")}


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


@dataclass(frozen=True)
class XAxis:
    column: str  # the runs-table column placing each run
    label: str
    log: bool = False
    unit: float = 1.0  # drawn x = column value / unit
    what: str = "a parameter count"  # for the note on runs that lack it
    point: str | None = None  # how the notes name a position, e.g. "{x:g} epochs"; None: the tokenizer size


TOKENIZER_PARAMS = XAxis("tokenizer_params", "tokenizer parameters (M, log scale)", log=True, unit=1e6)


def scaling_plot(
    df: pd.DataFrame,
    *,
    name: str,
    title: str,
    study: str | None,
    series: Callable[[pd.DataFrame], pd.Series],
    order: Sequence[str],
    panels: Sequence[Panel],
    x_axis: XAxis = TOKENIZER_PARAMS,
    correlate: bool = False,
) -> Plot:
    """Metrics against ``x_axis`` (tokenizer parameters by default): one panel per metric, one line per series,
    points named by tokenizer size.

    ``series`` maps each run to its line's label, one of ``order`` (which also fixes the colours, so 1D is the
    same colour in every figure); a run it maps to NA is left out. A panel with ``twin`` draws its second series
    on its own right-hand y axis (the paper does so where two series live on different scales).
    """
    runs = finished_runs(df if study is None else df[df["study"] == study])
    if runs.empty:
        raise ValueError(f"{name}: no FINISHED runs" + (f" of study {study}" if study else ""))
    profile = single_profile(runs, name)
    notes: list[str] = []
    column = runs[x_axis.column] if x_axis.column in runs else pd.Series(pd.NA, index=runs.index)
    unplaced = column.isna()
    if unplaced.any():
        notes.append(f"left out, no {x_axis.what}: {', '.join(runs.loc[unplaced, 'run_name'].astype(str))}")
    placed = runs[~unplaced]
    runs = placed.assign(series=series(placed), x=column[~unplaced].astype("float64") / x_axis.unit)
    runs = runs[runs["series"].notna()]
    if runs.empty:
        raise ValueError(f"{name}: no FINISHED run has both {x_axis.what} and a line to belong to")
    # One run per seed at each point: runs that differ only by seed are the point's replicas.
    runs, older = newest_per_seed(runs, ["series", "x"])
    if not older.empty:
        notes.append(f"left out, a newer run has the same point and seed: {', '.join(older['run_name'].astype(str))}")
    labels = [label for label in order if (runs["series"] == label).any()]
    substitutes = bool(runs["substitute"].any())
    seeds = int(runs.groupby(["series", "x"]).size().max())
    with house_theme():
        fig, records, panel_notes = _draw_panels(runs, panels, labels, order, name, x_axis, correlate, substitutes)
    notes.extend(panel_notes)
    over = f"\nlines: mean over up to {seeds} seeds; bands: {CI_NOTE}; faint dots: single seeds" if seeds > 1 else ""
    fig.suptitle(profile_heading(title, profile, substitutes, "hollow hatched points") + over, fontsize=10)
    data = pd.DataFrame.from_records(records, columns=[*DATA_COLUMNS, *SEED_COLUMNS])
    comparisons = seed_comparisons(data, [p for p in panels if p.metric in set(data["panel"])], labels, x_axis)
    spread = spread_notes(comparisons, panels) if seeds > 1 else ()
    return Plot(name, fig, data, tuple(notes), spread, comparisons)


CI_NOTE = "95% bootstrap CI of the mean"


def _draw_panels(
    runs: pd.DataFrame,
    panels: Sequence[Panel],
    labels: list[str],
    order: Sequence[str],
    name: str,
    x_axis: XAxis,
    correlate: bool,
    substitutes: bool,
) -> tuple[Figure, list[dict], list[str]]:
    notes: list[str] = []
    fig = Figure(figsize=(4.3 * len(panels), 4.0), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    records: list[dict] = []
    legend_drawn = False
    for ax, panel in zip(axes, panels, strict=True):
        values = runs[panel.metric] if panel.metric in runs else pd.Series(float("nan"), index=runs.index)
        logged = runs[values.notna()]
        reasons = sorted(unavailable_reasons(runs[values.isna()], panel.metric))
        why = f" ({UNAVAILABLE}: {'; '.join(reasons)})" if reasons else ""
        if logged.empty:
            notes.append(skip_panel(ax, panel.title, panel.metric) + why)
            continue
        if len(logged) < len(runs):
            lacking = runs.loc[values.isna(), "run_name"]
            notes.append(f"panel '{panel.title}': {', '.join(lacking.astype(str))} did not log {panel.metric}{why}")
        twin = None
        for label in labels:
            points = logged[logged["series"] == label].sort_values("x")
            if points.empty:
                continue
            color = f"C{list(order).index(label)}"
            target = ax
            if panel.twin and len({r["series"] for r in records if r["panel"] == panel.metric}) == 1:
                twin = target = ax.twinx()
                twin.set_ylabel(f"{panel.ylabel}, {label}", color=color, fontsize=8)
            records.extend(_draw_series(ax=target, points=points, panel=panel, label=label, color=color, figure=name))
        _style_axes(ax, panel, logged["x"], x_axis)
        if correlate and (r := series_correlation(records, panel.metric)) is not None:
            ax.set_title(f"{panel.title}\nPearson r = {r[0]:.2f} over {r[1]} points", fontsize=10)
        if twin is not None:
            first = next(r["series"] for r in records if r["panel"] == panel.metric)
            ax.set_ylabel(f"{panel.ylabel}, {first}", color=f"C{list(order).index(first)}", fontsize=8)
        if not legend_drawn:
            _legend(ax, substitutes, twin)
            legend_drawn = True
    return fig, records, notes


def skip_panel(ax: Axes, title: str, key: str) -> str:
    """Blank a panel whose metric no run logged, saying so on the figure; returns the note for the figure's index."""
    ax.set_axis_off()
    ax.text(
        0.5,
        0.5,
        f"{title}\n\nskipped: no run logged {key}",
        ha="center",
        va="center",
        transform=ax.transAxes,
        fontsize=9,
        color="0.4",
    )
    return f"panel '{title}' skipped: no run logged {key}"


def single_profile(runs: pd.DataFrame, name: str) -> str:
    """The one profile of a figure's runs ("unknown" if none says); several profiles are refused."""
    profiles = sorted(runs["profile"].dropna().unique())
    if len(profiles) > 1:
        raise ValueError(f"{name}: runs of several profiles ({', '.join(profiles)}); pass one profile's runs")
    return profiles[0] if profiles else "unknown"


def profile_heading(title: str, profile: str, substitutes: bool, marked_as: str) -> str:
    """A figure's title naming its profile, and saying how runs scored with substitute networks are drawn."""
    heading = f"{title} ({profile} profile)"
    if profile != "paper":
        heading += f": {profile}-scale models, trends only, not the paper's numbers"
    if substitutes:
        heading += f"\n{marked_as}: runs scored with {SUBSTITUTE_NOTE}, not comparable to real ones"
    return heading


def _draw_series(*, ax: Axes, points: pd.DataFrame, panel: Panel, label: str, color: str, figure: str) -> list[dict]:
    """One line: a point per x (the mean over its seeds), a 95% band where a point has several seeds."""
    points = points.assign(y=points[panel.metric] * panel.scale)
    stats = {x: summary(group["y"]) for x, group in points.groupby("x")}
    means = points.groupby("x", as_index=False).agg(
        y=("y", "mean"), substitute=("substitute", "any"), size=("tokenizer_name", "first")
    )
    if max(s["n"] for s in stats.values()) > 1:
        # seaborn draws the mean line and its band; the interval is the one the notes and tables judge by.
        sns.lineplot(
            data=points,
            x="x",
            y="y",
            estimator="mean",
            errorbar=ci95,
            err_style="band",
            color=color,
            label=label,
            ax=ax,
            zorder=2,
            legend=False,
            err_kws={"alpha": 0.2, "linewidth": 0},
        )
        ax.scatter(points["x"], points["y"], s=14, color=color, alpha=0.35, linewidths=0, zorder=3)
    else:
        ax.plot(means["x"], means["y"], "-", color=color, label=label, zorder=2)
    x, y = means["x"], means["y"]
    real = ~means["substitute"].astype(bool)
    ax.scatter(x[real], y[real], marker="o", s=36, color=color, zorder=4)
    # Substitute networks give numbers that mean nothing against real ones: a different marker, hollow and hatched.
    ax.scatter(
        x[~real],
        y[~real],
        marker="s",
        s=80,
        facecolors="none",
        edgecolors=color,
        hatch="////",
        linewidths=1.2,
        zorder=4,
    )
    for xi, yi, size in zip(x, y, means["size"], strict=True):
        ax.annotate(str(size), (xi, yi), textcoords="offset points", xytext=(4, 5), fontsize=7)
    return [
        {
            "figure": figure,
            "panel": panel.metric,
            "series": label,
            "run_id": r.run_id,
            "run_name": r.run_name,
            "size": r.tokenizer_name,
            "x": r.x,
            "value": getattr(r, panel.metric),
            "y": r.y,
            "substitute": bool(r.substitute),
            "seed": int(r.seed),
            **stats[r.x],
        }
        for r in points.itertuples(index=False)
    ]


def seed_comparisons(data: pd.DataFrame, panels: Sequence[Panel], labels: Sequence[str], x_axis: XAxis) -> pd.DataFrame:
    """The differences a scaling figure shows, each judged against the seed spread: neighbouring series at each
    position (1D against 2D at S-B: a position is a tokenizer size, whose 1D and 2D counts differ a little), and
    along each series neighbouring positions and the first against the last (S-S against B-L).
    ``beyond_spread`` is NA where a point has one seed."""
    rows = []
    for panel in panels:
        points = data[data["panel"] == panel.metric].drop_duplicates(["series", "x"]).sort_values("x")
        if points.empty:
            continue
        points = points.assign(
            at=[
                str(size) if x_axis.point is None else x_axis.point.format(x=x)
                for size, x in zip(points["size"], points["x"], strict=True)
            ]
        )

        def compare(
            compares: str, a: pd.Series, b: pd.Series, at: str, names: tuple[str, str], metric: str = panel.metric
        ) -> None:
            rows.append(
                {
                    "panel": metric,
                    "compares": compares,
                    "a": names[0],
                    "b": names[1],
                    "at": at,
                    "mean_a": a["mean"],
                    "mean_b": b["mean"],
                    "n_a": int(a["n"]),
                    "n_b": int(b["n"]),
                    "beyond_spread": beyond_spread(a, b),
                }
            )

        here = [label for label in labels if (points["series"] == label).any()]
        # Series on two y axes of their own (twin) are on different scales: only their shapes are compared.
        for at in [] if panel.twin else list(dict.fromkeys(points["at"])):
            present = points[points["at"] == at].set_index("series")
            ordered = [label for label in here if label in present.index]
            for first, second in zip(ordered, ordered[1:], strict=False):
                compare("series", present.loc[first], present.loc[second], at, (_short(first), _short(second)))
        for label in here:
            line = [row for _, row in points[points["series"] == label].iterrows()]
            pairs = list(zip(line, line[1:], strict=False)) + ([(line[0], line[-1])] if len(line) > 2 else [])
            for first, second in pairs:
                compare("positions", first, second, _short(label), (first["at"], second["at"]))
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS).astype({"beyond_spread": "boolean"})


def _short(label: str) -> str:
    """A series' name for the notes: its label up to any parenthesis ("1D tokenizer")."""
    return label.split(" (")[0]


def spread_notes(comparisons: pd.DataFrame, panels: Sequence[Panel]) -> tuple[str, ...]:
    """One line a panel: which of the figure's differences stand above the seed spread and which do not."""
    lines = []
    for panel in panels:
        rows = comparisons[comparisons["panel"] == panel.metric]
        if rows.empty:
            continue
        parts = {True: [], False: [], None: []}
        for r in rows.itertuples(index=False):
            what = (
                f"{r.a} vs {r.b} at {r.at} ({r.mean_a:.4g} vs {r.mean_b:.4g})"
                if r.compares == "series"
                else f"{r.at} {r.a} to {r.b} ({r.mean_a:.4g} to {r.mean_b:.4g})"
            )
            parts[None if pd.isna(r.beyond_spread) else bool(r.beyond_spread)].append(what)
        n = sorted(set(rows["n_a"]) | set(rows["n_b"]))
        seeds = f"{n[0]}" if len(n) == 1 else f"{n[0]}-{n[-1]}"
        line = f"{panel.title}, {panel.metric}, {seeds} seeds a point (beyond = their 95% intervals do not overlap): "
        line += "; ".join(
            filter(
                None,
                [
                    f"beyond the seed spread: {', '.join(parts[True])}"
                    if parts[True]
                    else "beyond the seed spread: none",
                    f"within it: {', '.join(parts[False])}" if parts[False] else "",
                    f"one seed, not judged: {', '.join(parts[None])}" if parts[None] else "",
                ],
            )
        )
        lines.append(line)
    return tuple(lines)


def series_correlation(records: list[dict], metric: str) -> tuple[float, int] | None:
    """Pearson r between the first two series of a panel over the x positions both have (None below 3 points)."""
    drawn = pd.DataFrame.from_records([r for r in records if r["panel"] == metric], columns=DATA_COLUMNS)
    labels = list(dict.fromkeys(drawn["series"]))
    if len(labels) < 2:
        return None
    table = drawn.pivot_table(index="x", columns="series", values="value", aggfunc="mean")[labels[:2]].dropna()
    if len(table) < 3 or table.std().eq(0).any():
        return None
    return float(table[labels[0]].corr(table[labels[1]])), len(table)


def _style_axes(ax: Axes, panel: Panel, x: pd.Series, x_axis: XAxis) -> None:
    if x_axis.log:
        ax.set_xscale("log")
        ticks = log_ticks(float(x.min()), float(x.max()))
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        # No minor ticks: unlabelled, and the theme draws no tick marks, so they showed nothing; laying out their
        # dozens of empty labels was a tenth of the time of drawing a log-axis figure.
        ax.xaxis.set_minor_locator(NullLocator())
    else:
        ticks = sorted(x.unique())
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.set_xlabel(x_axis.label)
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


def _legend(ax: Axes, substitutes: bool, twin: Axes | None = None) -> None:
    handles, labels = ax.get_legend_handles_labels()
    if twin is not None:
        more = twin.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    if substitutes:
        handles.append(
            Line2D([], [], marker="s", linestyle="none", markerfacecolor="none", markeredgecolor="0.3", markersize=8)
        )
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
    return scaling_plot(
        df,
        name="fig9_1d_vs_2d",
        title="Fig. 9: 1D vs 2D tokenizers",
        study=study,
        series=kind_series,
        order=list(KIND_LABELS.values()),
        panels=(RFID, GFID, VAL_LOSS, LIN_ACC),
    )


def scaling_semreg(df: pd.DataFrame, study: str | None = "scaling_semreg") -> Plot:
    """Figs. 1 and 7: scaling with and without semantic regularization (the reconstruction vs generation dilemma)."""
    return scaling_plot(
        df,
        name="fig7_scaling_semreg",
        title="Figs. 1 and 7: scaling with and without semantic regularization",
        study=study,
        series=semreg_series,
        order=list(SEMREG_LABELS.values()),
        panels=(RFID, GFID, VAL_LOSS, LIN_ACC),
    )


def scaling_vanilla(df: pd.DataFrame, study: str | None = "scaling_vanilla") -> Plot:
    """Fig. 3: vanilla 1D tokenizers, where reconstruction improves with size and generation does not."""
    return scaling_plot(
        df,
        name="fig3_scaling_vanilla",
        title="Fig. 3: scaling vanilla 1D tokenizers",
        study=study,
        series=semreg_series,
        order=list(SEMREG_LABELS.values()),
        panels=(RFID, GFID, VAL_LOSS),
    )


AR_SIZES = ("B", "L", "XL", "XXL")
TOKENIZER_PROBE = Panel("tokenizer_probe_acc", "Tokenizer encoder: linear probe", "top-1 accuracy (%)", scale=100.0)
EPOCHS = XAxis("factor_epochs", "tokenizer training (paper epochs)", what="a training length", point="{x:g} epochs")
CHECKPOINT = XAxis(
    "factor_checkpoint",
    "tokenizer checkpoint (paper epochs of training)",
    what="a checkpoint epoch",
    point="checkpoint {x:g}",
)


def ar_size_label(profile: str, size: str) -> str:
    """'AR-B probe (111M)' at the paper profile, with the parameter count of the profile's own model of that size
    (a tiny-profile figure must not print the paper's sizes)."""
    count = ar_parameters(profile, size)
    name = f"AR-{size} probe" if size == "B" else f"AR-{size}"
    return name if count is None else f"{name} ({human_count(count)})"


def human_count(count: int) -> str:
    if count >= 1e9:
        return f"{count / 1e9:.1f}B"
    return f"{count / 1e6:.0f}M" if count >= 1e7 else f"{count / 1e6:.1f}M" if count >= 1e6 else f"{count / 1e3:.0f}k"


def ar_size_series(runs: pd.DataFrame) -> pd.Series:
    sizes = runs["factor_ar_size"] if "factor_ar_size" in runs else runs["ar_size"]
    return pd.Series(
        [
            ar_size_label(str(p), s) if isinstance(s, str) else None
            for p, s in zip(runs["profile"], sizes.astype("object"), strict=True)
        ],
        index=runs.index,
    )


def size_series(runs: pd.DataFrame) -> pd.Series:
    return runs["tokenizer_name"].astype("object").map(lambda v: f"{v} tokenizer" if pd.notna(v) else None)


def fig6_ar_probe_vs_large(df: pd.DataFrame, study: str | None = "ar_probe_vs_large") -> Plot:
    """Fig. 6: the AR probe's metrics against the larger AR-XL's, over the same tokenizers (two y axes each)."""
    twin = [dataclasses.replace(p, twin=True) for p in (GFID, VAL_LOSS, LIN_ACC)]
    return scaling_plot(
        df,
        name="fig6_ar_probe_vs_large",
        title="Fig. 6: AR probing against a larger AR model",
        study=study,
        series=ar_size_series,
        order=ar_size_order(df),
        panels=twin,
        correlate=True,
    )


def ar_size_order(df: pd.DataFrame) -> list[str]:
    return [ar_size_label(str(p), s) for p in sorted(df["profile"].dropna().unique()) for s in AR_SIZES]


def fig12_train_duration(df: pd.DataFrame, study: str | None = "train_duration") -> Plot:
    """Fig. 12: S-S tokenizers trained 40-120 epochs, with and without semantic regularization."""
    panels = (RFID, GFID, dataclasses.replace(VAL_LOSS, twin=True), dataclasses.replace(LIN_ACC, twin=True))
    return scaling_plot(
        df,
        name="fig12_train_duration",
        title="Fig. 12: tokenizer training duration",
        study=study,
        series=semreg_series,
        order=list(SEMREG_LABELS.values()),
        panels=panels,
        x_axis=EPOCHS,
    )


def fig13_checkpoint_probes(df: pd.DataFrame, study: str | None = "tokenizer_checkpoints") -> Plot:
    """Fig. 13: tokenizer-encoder against AR-probe linear-probe accuracy (and gFID) over training checkpoints."""
    return scaling_plot(
        df,
        name="fig13_checkpoint_probes",
        title="Fig. 13: linear probes over tokenizer training",
        study=study,
        series=size_series,
        order=[f"{n} tokenizer" for n in SIZE_ORDER],
        panels=(TOKENIZER_PROBE, LIN_ACC, GFID),
        x_axis=CHECKPOINT,
    )


SIZE_ORDER = ("S-S", "S-B", "B-S", "S-L", "B-L", "XL-XXL")

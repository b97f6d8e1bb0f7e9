"""Regenerate the paper's scaling figures from the runs tracked in MLflow.

    python analysis/plot_scaling.py                             every figure with FINISHED runs: ./mlflow.db -> figures/
    python analysis/plot_scaling.py --study scaling_1d_vs_2d --out figs
    python analysis/plot_scaling.py --formats png,pdf           PDF beside each PNG (for a paper)
    python analysis/plot_scaling.py --snapshot runs.parquet      also save the loaded runs, to redraw without the store
    python analysis/plot_scaling.py --from-snapshot runs.parquet redraw from a saved snapshot

Each figure is written per profile as PNG (``fig9_1d_vs_2d-tiny.png``: a tiny-profile figure never overwrites a
paper one; ``--formats png,pdf`` adds a PDF, ``svg`` is the third choice), and each table of ``analysis/tables.py``
as markdown and LaTeX (``table5_align_layer-tiny.md``).
Beyond the paper: for each study with a size or compute axis a power-law fit figure (``fits_scaling_semreg-tiny``:
points, fitted curve, 95% bootstrap band, extrapolation, refused fits' notes; :mod:`analysis.fit_scaling`) and the
exponent table of every fit (``exponents-tiny.csv`` and ``.md``); for the studies that vary size and training
length a compute-frontier figure (``frontier_train_duration-tiny``).
``index.md`` lists the figures and tables, the runs behind them and what was skipped and why. Where a study ran
several seeds per point, figures draw the mean with a 95% band and tables show mean ± std (n); the index and the
output say, for each difference a figure shows, whether it stands above the seed spread.
Exit status 2, with a one-line error, when the store cannot be read or holds no matching runs, or ``--formats``
names a format not offered.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from analysis.catalog import FIGURES, FigureSpec
from analysis.fig_fits import FitPlot
from analysis.figures import missing_runs_reason
from analysis.fit_scaling import StudyFit, write_exponents
from analysis.load import StoreError, load_runs
from analysis.sources import NoSource, SnapshotSource, Source, StoreSource, save_snapshot_bundle
from analysis.tables import SkippedTable, WrittenTable, index_lines, write_tables
from analysis.theme import house_theme

EXIT_NO_RUNS = 2
EXIT_USAGE = 2
# Image formats a figure can be saved in. PNG alone by default: each format draws the whole figure again, and a PDF
# cost as much as the PNG (0.6-0.8 s a four-panel figure here), so it is made only when asked for.
FORMATS = ("png", "pdf", "svg")


@dataclass(frozen=True)
class Made:
    spec: FigureSpec
    profile: str
    paths: tuple[Path, ...]
    runs: int
    notes: tuple[str, ...]
    spread: tuple[str, ...] = ()  # which differences stand above the seed spread (several seeds a point)
    fits: tuple[StudyFit, ...] = ()  # a fit figure's fits, for the exponent table


@dataclass(frozen=True)
class Skipped:
    spec: FigureSpec
    profile: str
    reason: str


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="analysis/plot_scaling.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    p.add_argument("--study", action="append", default=[], help="only the figures of this study (repeatable)")
    p.add_argument("--profile", default=None, help="only runs of this profile (default: every profile, separately)")
    p.add_argument("--out", type=Path, default=Path("figures"), help="output folder (default ./figures)")
    p.add_argument("--snapshot", type=Path, default=None, help="also save the loaded runs to this parquet file")
    p.add_argument("--from-snapshot", type=Path, default=None, help="read runs from a snapshot instead of MLflow")
    p.add_argument(
        "--formats",
        default="png",
        help=f"image formats of each figure, comma-separated, of {', '.join(FORMATS)} (default png; e.g. png,pdf)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=default_jobs(),
        help="processes drawing figures at once (default: the CPUs this process may use, here %(default)s; 1: "
        "all in this process)",
    )
    return p.parse_args(argv)


def default_jobs() -> int:
    """The CPUs this process may run on (its affinity where the OS tells it, else the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parse_formats(text: str) -> tuple[str, ...]:
    """The formats of ``--formats`` in the order given, without repeats; ValueError naming a format not offered."""
    formats = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"--formats {text!r}: {', '.join(unknown) or 'no format'} is not one of {', '.join(FORMATS)}")
    return formats


def read_runs(args: argparse.Namespace) -> tuple[pd.DataFrame, str, Source]:
    """The runs, where they came from, and the source of their curves, trials and arrays; raises
    :class:`StoreError` when there are no runs."""
    if args.from_snapshot is None:
        df = load_runs(args.tracking_uri, args.study or None, args.profile)
        return df, df.attrs.get("source", "MLflow"), StoreSource(args.tracking_uri)
    source = SnapshotSource(args.from_snapshot)
    df = source.runs()
    if args.study:
        df = df[df["study"].isin(args.study)]
    if args.profile:
        df = df[df["profile"] == args.profile]
    if df.empty:
        raise StoreError(f"snapshot {args.from_snapshot} holds no runs of the requested studies and profile")
    return df, f"snapshot {args.from_snapshot}", source


@dataclass(frozen=True, eq=False)
class Job:
    """One figure to draw: its spec, profile and runs."""

    spec: FigureSpec
    profile: str
    runs: pd.DataFrame


def figure_jobs(df: pd.DataFrame, studies: Sequence[str] = ()) -> list[Job | Skipped]:
    """Every figure once per profile, in the catalog's order: a Job where FINISHED runs exist, else why not."""
    slots: list[Job | Skipped] = []
    for profile in sorted(df["profile"].dropna().unique()):
        at_profile = df[df["profile"] == profile]
        for spec in FIGURES:
            if studies and spec.study is not None and spec.study not in studies:
                continue
            runs = at_profile if spec.study is None else at_profile[at_profile["study"] == spec.study]
            if spec.study is not None and (reason := missing_runs_reason(runs, spec.study)) is not None:
                slots.append(Skipped(spec, profile, reason))
            else:
                slots.append(Job(spec, profile, runs))
    return slots


def draw(job: Job, source: Source, out: Path, formats: Sequence[str]) -> Made | Skipped:
    """Draw and save one figure; a figure its runs cannot make (ValueError) is skipped with the reason."""
    spec, profile = job.spec, job.profile
    try:
        with house_theme():
            plot = spec.make(job.runs, source)
    except ValueError as exc:
        return Skipped(spec, profile, str(exc))
    paths = plot.save(out, f"{spec.name}-{profile}", formats)
    fits = plot.fits if isinstance(plot, FitPlot) else ()
    return Made(spec, profile, tuple(paths), plot.data["run_id"].nunique(), plot.notes, plot.spread, fits)


def draw_all(todo: Sequence[Job], source: Source, out: Path, formats: Sequence[str], jobs: int) -> list[Made | Skipped]:
    """:func:`draw` of each job, in order. With ``jobs`` > 1 (where processes can be forked: the workers then start
    with the imports and runs already in memory) the figures drawn from the runs table alone go to ``jobs`` worker
    processes while this one draws those that read ``source``, which remembers what they fetched for a snapshot.
    Drawing is CPU-bound matplotlib work, so processes, not threads; the files are the same either way."""
    apart = [i for i, job in enumerate(todo) if not job.spec.reads_source]
    if jobs < 2 or len(apart) < 2 or "fork" not in mp.get_all_start_methods():
        return [draw(job, source, out, formats) for job in todo]
    with ProcessPoolExecutor(min(jobs, len(apart)), mp_context=mp.get_context("fork")) as pool:
        futures = {i: pool.submit(draw, todo[i], NoSource(), out, formats) for i in apart}
        here = {i: draw(job, source, out, formats) for i, job in enumerate(todo) if i not in futures}
        return [here[i] if i in here else futures[i].result() for i in range(len(todo))]


def make_figures(
    df: pd.DataFrame,
    out: Path,
    source: Source,
    studies: Sequence[str] = (),
    formats: Sequence[str] = ("png",),
    jobs: int = 1,
) -> tuple[list[Made], list[Skipped]]:
    """Every figure, once per profile, for which FINISHED runs exist; the others with the reason they were not.
    ``jobs`` > 1 draws them in that many processes (:func:`draw_all`)."""
    slots = figure_jobs(df, studies)
    drawn = iter(draw_all([s for s in slots if isinstance(s, Job)], source, out, formats, jobs))
    results = [next(drawn) if isinstance(slot, Job) else slot for slot in slots]
    return [r for r in results if isinstance(r, Made)], [r for r in results if isinstance(r, Skipped)]


def _cell(value: object, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and value != value) or value is pd.NA:
        return "-"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value).replace("|", "/")


def write_index(
    out: Path,
    df: pd.DataFrame,
    source: str,
    made: list[Made],
    skipped: list[Skipped],
    tables: Sequence[WrittenTable] = (),
    skipped_tables: Sequence[SkippedTable] = (),
    exponents: dict[str, tuple[Path, ...]] | None = None,
) -> Path:
    lines = [
        "# Scaling figures",
        "",
        f"From {source}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, by `analysis/plot_scaling.py`.",
        "",
    ]
    for profile in sorted(df["profile"].dropna().unique()):
        lines += [f"## Profile `{profile}`", ""]
        if profile != "paper":
            lines += [f"{profile}-scale models: the trends of the pipeline, not the paper's numbers.", ""]
        here = [m for m in made if m.profile == profile]
        if here:
            lines += ["| figure | reproduces | study | runs drawn | files | notes |", "|---|---|---|---|---|---|"]
            for m in here:
                files = " ".join(f"[{p.suffix[1:]}]({p.name})" for p in m.paths)
                lines.append(
                    f"| {m.spec.name} | {m.spec.reproduces} | {m.spec.study or 'all with CFG trials'} | "
                    f"{m.runs} | {files} | "
                    f"{'; '.join(m.notes) or '-'} |"
                )
            lines.append("")
            lines += [f"![{m.spec.name}]({m.paths[0].name})" for m in here] + [""]
            for m in (m for m in here if m.spread):
                lines += [f"Seed spread in {m.spec.name} ({m.spec.reproduces}):", ""]
                lines += [f"- {line}" for line in m.spread] + [""]
        gaps = [s for s in skipped if s.profile == profile]
        if gaps:
            lines += ["Skipped:", ""] + [f"- {s.spec.name} ({s.spec.reproduces}): {s.reason}" for s in gaps] + [""]
        lines += index_lines(profile, tables, skipped_tables)
        if exponents and profile in exponents:
            files = " ".join(f"[{p.suffix[1:]}]({p.name})" for p in exponents[profile])
            lines += [f"Scaling-law exponents of every fit figure (alpha, E, A with 95% intervals): {files}", ""]
        runs = df[df["profile"] == profile].sort_values(["study", "run_name"])
        lines += [
            "### Runs",
            "",
            "| study | run | status | hash | tokenizer params (M) | rFID | gFID | AR val loss | AR probe acc "
            "| substitutes |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in runs.itertuples(index=False):
            params = r.tokenizer_params / 1e6 if pd.notna(r.tokenizer_params) else None
            lines.append(
                " | ".join(
                    [
                        f"| {r.study}",
                        _cell(r.run_name),
                        _cell(r.status),
                        _cell(r.run_hash),
                        _cell(params, 4),
                        *(_cell(getattr(r, m)) for m in ("rfid", "gfid", "ar_val_loss", "ar_probe_acc")),
                        _cell(r.substitutes) + " |",
                    ]
                )
            )
        lines.append("")
    path = out / "index.md"
    path.write_text("\n".join(lines))
    return path


def write_exponent_tables(made: Sequence[Made], out: Path) -> dict[str, tuple[Path, ...]]:
    """``exponents-<profile>.csv`` and ``.md`` from the fits of the fit figures made, per profile that has any."""
    fits = [f for m in made for f in m.fits]
    return {profile: write_exponents(fits, out, profile) for profile in dict.fromkeys(f.profile for f in fits)}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        formats = parse_formats(args.formats)
        if args.jobs < 1:
            raise ValueError(f"--jobs {args.jobs}: must be at least 1")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        df, origin, source = read_runs(args)
        args.out.mkdir(parents=True, exist_ok=True)
        made, skipped = make_figures(df, args.out, source, args.study, formats, args.jobs)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NO_RUNS
    if args.snapshot is not None and isinstance(source, StoreSource):
        written = save_snapshot_bundle(df, source, args.snapshot)
        print(f"snapshot of {len(df)} runs and what the figures fetched: {', '.join(map(str, written))}")
    if isinstance(source, StoreSource):
        source.close()
    for m in made:
        print(f"{m.spec.name} ({m.spec.reproduces}, {m.profile}, {m.runs} runs): {', '.join(map(str, m.paths))}")
        for note in m.notes:
            print(f"    note: {note}")
        for line in m.spread:
            print(f"    spread: {line}")
    for s in skipped:
        print(f"skipped {s.spec.name} ({s.spec.reproduces}, {s.profile}): {s.reason}")
    tables, skipped_tables = write_tables(df, args.out, args.study)
    for t in tables:
        print(f"{t.spec.name} ({t.spec.source}, {t.profile}, {t.runs} runs): {', '.join(map(str, t.paths))}")
    for s in skipped_tables:
        print(f"skipped {s.spec.name} ({s.spec.source}, {s.profile}): {s.reason}")
    exponents = write_exponent_tables(made, args.out)
    for paths in exponents.values():
        print(f"exponent table: {', '.join(map(str, paths))}")
    print(f"index: {write_index(args.out, df, origin, made, skipped, tables, skipped_tables, exponents)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

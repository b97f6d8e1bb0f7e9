"""What figures need beyond the runs table: training curves, CFG-search trials and stored arrays.

A figure asks a :class:`Source` for them, so the same figure code draws from a live MLflow store
(:class:`StoreSource`, which fetches only what is asked for) or from a snapshot folder written by
:func:`save_snapshot_bundle` (:class:`SnapshotSource`), without the store.

A snapshot is ``NAME.parquet`` (the runs table) with, beside it, ``NAME.curves.parquet``, ``NAME.trials.parquet``
and ``NAME.artifacts/<run id>/<path>`` holding exactly what the figures fetched when it was written.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import pandas as pd

from analysis.load import TRIAL_COLUMNS, StoreError, load_curves, load_snapshot, load_trials, open_store, save_snapshot

CURVE_COLUMNS = ["run_id", "key", "step", "value", "timestamp"]


class Source(Protocol):
    def curves(self, run_ids: Sequence[str], keys: Sequence[str]) -> pd.DataFrame: ...

    def trials(self, experiments: Sequence[str]) -> pd.DataFrame: ...

    def artifact(self, run_id: str, path: str) -> Path | None: ...


class StoreSource:
    """Fetches from MLflow on request and remembers what it fetched (for a snapshot)."""

    def __init__(self, tracking_uri: str | None) -> None:
        self.tracking_uri = tracking_uri
        self._curves: list[pd.DataFrame] = []
        self._trials: list[pd.DataFrame] = []
        self._artifacts: dict[tuple[str, str], Path] = {}
        self._tmp: Path | None = None

    def curves(self, run_ids: Sequence[str], keys: Sequence[str]) -> pd.DataFrame:
        df = load_curves(self.tracking_uri, run_ids, keys)
        self._curves.append(df)
        return df

    def trials(self, experiments: Sequence[str]) -> pd.DataFrame:
        df = load_trials(self.tracking_uri, experiments)
        self._trials.append(df)
        return df

    def artifact(self, run_id: str, path: str) -> Path | None:
        if (run_id, path) in self._artifacts:
            return self._artifacts[run_id, path]
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="gigatok-artifacts-"))
        client = open_store(self.tracking_uri)
        try:
            local = Path(client.download_artifacts(run_id, path, str(self._tmp / run_id)))
        except Exception:  # MLflow raises several types for an artifact that is not there
            return None
        self._artifacts[run_id, path] = local
        return local

    def fetched(self) -> tuple[pd.DataFrame, pd.DataFrame, dict[tuple[str, str], Path]]:
        curves = pd.concat(self._curves, ignore_index=True) if self._curves else pd.DataFrame(columns=CURVE_COLUMNS)
        trials = pd.concat(self._trials, ignore_index=True) if self._trials else pd.DataFrame(columns=TRIAL_COLUMNS)
        return curves.drop_duplicates(), trials.drop_duplicates(subset="run_id"), dict(self._artifacts)

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


class NoSource:
    """The source of a figure drawn from the runs table alone (in a worker process): a fetch is a mistake in the
    catalog (a figure that reads its source must say so, ``FigureSpec.reads_source``), so it raises."""

    def curves(self, run_ids: Sequence[str], keys: Sequence[str]) -> pd.DataFrame:
        raise RuntimeError("a figure drawn from the runs table alone asked for curves (catalog: reads_source)")

    def trials(self, experiments: Sequence[str]) -> pd.DataFrame:
        raise RuntimeError("a figure drawn from the runs table alone asked for CFG trials (catalog: reads_source)")

    def artifact(self, run_id: str, path: str) -> Path | None:
        raise RuntimeError("a figure drawn from the runs table alone asked for an artifact (catalog: reads_source)")


def _siblings(path: Path) -> tuple[Path, Path, Path]:
    stem = path.with_suffix("")
    return (
        stem.with_name(stem.name + ".curves.parquet"),
        stem.with_name(stem.name + ".trials.parquet"),
        stem.with_name(stem.name + ".artifacts"),
    )


def save_snapshot_bundle(df: pd.DataFrame, source: StoreSource, path: str | Path) -> list[Path]:
    """The runs table and everything ``source`` fetched for the figures, so they can be redrawn without MLflow."""
    path = Path(path)
    written = [save_snapshot(df, path)]
    curves_path, trials_path, artifacts_dir = _siblings(path)
    curves, trials, artifacts = source.fetched()
    curves.to_parquet(curves_path, index=False)
    trials.to_parquet(trials_path, index=False)
    written += [curves_path, trials_path]
    shutil.rmtree(artifacts_dir, ignore_errors=True)
    for (run_id, name), local in artifacts.items():
        target = artifacts_dir / run_id / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, target)
    if artifacts:
        written.append(artifacts_dir)
    return written


class SnapshotSource:
    """Serves what a snapshot holds; a figure whose inputs were not captured gets empty frames or None."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        curves_path, trials_path, self.artifacts_dir = _siblings(self.path)
        self._curves = _read(curves_path, CURVE_COLUMNS)
        self._trials = _read(trials_path, TRIAL_COLUMNS)

    def runs(self) -> pd.DataFrame:
        return load_snapshot(self.path)

    def curves(self, run_ids: Sequence[str], keys: Sequence[str]) -> pd.DataFrame:
        df = self._curves
        return df[df["run_id"].isin(list(run_ids)) & df["key"].isin(list(keys))].reset_index(drop=True)

    def trials(self, experiments: Sequence[str]) -> pd.DataFrame:
        return self._trials

    def artifact(self, run_id: str, path: str) -> Path | None:
        local = self.artifacts_dir / run_id / path
        return local if local.is_file() else None


def _read(path: Path, columns: Iterable[str]) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame(columns=list(columns))
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not parquet
        raise StoreError(f"{path} is not a snapshot file: {str(exc).splitlines()[0][:200]}") from None

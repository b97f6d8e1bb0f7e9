"""Fig. 8: the first three PCA components of the tokenizer's decoder features as RGB, with and without semantic
regularization, for one group of same-class validation images (arrays stored by the ``feature_pca`` stage).

Top row: the images; then one row per tokenizer, its PCA maps upsampled (nearest) to the image size.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.figures import (
    SEMREG_LABELS,
    SUBSTITUTE_NOTE,
    Plot,
    finished_runs,
    profile_heading,
    semreg_series,
    single_profile,
)
from analysis.seeds import run_seeds
from analysis.sources import Source
from gigatok.feature_pca import FeaturePCA

ARTIFACT_COLUMN = "artifact.feature_pca"
DATA_COLUMNS = [
    "figure",
    "series",
    "run_id",
    "run_name",
    "size",
    "image",
    "class_index",
    "component",
    "mean",
    "explained_variance_ratio",
    "substitute",
]


def fig8_feature_pca(df: pd.DataFrame, source: Source, study: str | None = "feature_pca") -> Plot:
    name = "fig8_feature_pca"
    runs = finished_runs(df if study is None else df[df["study"] == study])
    if runs.empty:
        raise ValueError(f"{name}: no FINISHED runs" + (f" of study {study}" if study else ""))
    profile = single_profile(runs, name)
    if ARTIFACT_COLUMN not in runs:
        raise ValueError(f"{name}: no run of study {study} stored its PCA maps (stage feature_pca)")
    order = list(SEMREG_LABELS.values())
    runs = runs.assign(series=semreg_series(runs)).dropna(subset=["series", ARTIFACT_COLUMN])
    runs = runs.sort_values("series", key=lambda s: s.map(order.index))
    notes: list[str] = []
    # A picture, not a statistic: one seed's maps (the built-in dataset's crops, and so the images, follow the seed).
    seeds = run_seeds(runs)
    if seeds.nunique() > 1:
        notes.append(f"seed {seeds.min()} shown; left out: {', '.join(runs.loc[seeds != seeds.min(), 'run_name'])}")
        runs = runs[seeds == seeds.min()]
    loaded: list[tuple[pd.Series, FeaturePCA]] = []
    for _, run in runs.iterrows():
        local = source.artifact(run["run_id"], run[ARTIFACT_COLUMN])
        if local is None:
            notes.append(f"{run['run_name']}: artifact {run[ARTIFACT_COLUMN]} is missing")
            continue
        loaded.append((run, FeaturePCA.load(local)))
    if not loaded:
        raise ValueError(f"{name}: none of the runs' PCA maps could be read ({'; '.join(notes)})")
    images = loaded[0][1].images
    same_images = [np.array_equal(pca.images, images) for _, pca in loaded]
    if not all(same_images):  # the rows must show the same group of images to be compared
        raise ValueError(f"{name}: the runs' PCA maps are of different images (different data or pca_class)")
    count = len(images)
    fig = Figure(figsize=(1.6 * count, 1.7 * (len(loaded) + 1)), layout="constrained")
    axes = fig.subplots(len(loaded) + 1, count, squeeze=False)
    records: list[dict] = []
    for col in range(count):
        axes[0, col].imshow(images[col])
    axes[0, 0].set_ylabel("images", fontsize=8)
    substitutes = False
    for row, (run, pca) in enumerate(loaded, start=1):
        substitutes |= bool(run["substitute"])
        height = images.shape[1]
        for col in range(count):
            maps = pca.components[col]
            repeat = max(1, height // maps.shape[0])
            axes[row, col].imshow(np.repeat(np.repeat(maps, repeat, axis=0), repeat, axis=1), interpolation="nearest")
            records += [
                {
                    "figure": name,
                    "series": run["series"],
                    "run_id": run["run_id"],
                    "run_name": run["run_name"],
                    "size": run["tokenizer_name"],
                    "image": col,
                    "class_index": pca.class_index,
                    "component": c,
                    "mean": float(maps[..., c].mean()),
                    "explained_variance_ratio": float(pca.explained_variance_ratio[c]),
                    "substitute": bool(run["substitute"]),
                }
                for c in range(3)
            ]
        label = f"{run['tokenizer_name']}\n{run['series']}"
        label += f"\n({float(pca.explained_variance_ratio.sum()) * 100:.0f}% var.)"
        if run["substitute"]:
            label += f"\n{SUBSTITUTE_NOTE}"
        axes[row, 0].set_ylabel(label, fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    first = loaded[0][1]
    title = (
        f"Fig. 8: decoder layer {first.layer} features, first 3 PCA components as RGB, "
        f"{count} images of class {first.class_index}"
    )
    fig.suptitle(profile_heading(title, profile, substitutes, "rows labelled SUBSTITUTE"), fontsize=9)
    return Plot(name, fig, pd.DataFrame.from_records(records, columns=DATA_COLUMNS), tuple(notes))

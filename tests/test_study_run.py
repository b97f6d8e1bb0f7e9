"""A tiny study end to end: local Submitit processes, the run pipeline and MLflow; re-runs and failures.

Killed and preempted runs are in tests/test_crash.py (a SIGKILLed local worker) and tests/test_cluster.py (a
requeued Slurm job).

Runs are shortened with ``--set`` (a few steps, 20 images scored) so each test takes a minute or two on two cores;
the code path is the one ``python studies/run.py NAME`` takes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from services import study_cli

SHORT = [
    "--set",
    "tokenizer.train.max_steps=6",
    "--set",
    "tokenizer.train.log_every=2",
    "--set",
    "tokenizer.train.checkpoint_every=2",
    "--set",
    "ar.train.max_steps=6",
    "--set",
    "ar.train.log_every=2",
    "--set",
    "eval.recon_images=20",
    "--set",
    "eval.reference_images=20",
    "--set",
    "eval.gen_samples=20",
    "--set",
    "eval.batch_size=20",
    "--set",
    "eval.probe_max_iter=200",
    # Two CFG points per AR run: the search's own tests (tests/test_cfg_search.py) cover wider grids.
    "--set",
    "eval.cfg_search.scale_max=1.25",
    "--seeds",
    "1",  # one replica of each run, whatever the profile's default
]
FINAL_METRICS = {
    "rfid",
    "lpips",
    "psnr",
    "ssim",
    "codebook_usage",
    "codebook_perplexity",
    "tokenizer_probe_acc",
    "ar_val_loss",
    "gfid",
    "precision",
    "recall",
    "ar_probe_acc",
}

pytestmark = pytest.mark.slow


def mlflow_runs(cwd: Path, experiment: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment}"
    runs = client.search_runs([exp.experiment_id])
    # CFG-search trials are child runs of a study run, not runs of the study
    return [r for r in runs if r.data.tags.get("gigatok.kind") != "cfg_trial"], client


def test_tiny_study_end_to_end_with_local_processes(tmp_path: Path) -> None:
    # Two AR probes (B and L) of one tokenizer: the tokenizer is trained once, by one job.
    args = ["ar_probe_vs_large", "--only", "size=S-S", "--executor", "local", *SHORT]
    first = study_cli(args, tmp_path, timeout=1500)
    assert first.returncode == 0, first.stdout + first.stderr
    # the plan's headline is output (stdout); the profile's hints are log lines (stderr, gone with -q)
    assert "2 runs to go" in first.stdout and "tiny profile" in first.stderr and "--profile paper" in first.stderr

    runs, client = mlflow_runs(tmp_path, "ar_probe_vs_large-tiny")
    assert len(runs) == 2
    assert {r.data.tags["gigatok.factor.ar_size"] for r in runs} == {"B", "XL"}
    from gigatok.weights import find_weight

    expected = FINAL_METRICS if find_weight("vgg16") is not None else FINAL_METRICS - {"lpips"}
    for run in runs:
        assert run.info.status == "FINISHED"
        assert ("lpips" in run.data.metrics) == ("lpips" in expected)  # never a number from a random network
        missing = expected - set(run.data.metrics)
        assert not missing, f"{run.info.run_name}: missing {missing}"
        tags = run.data.tags
        for key in ("study", "run_hash", "profile", "tokenizer_hash", "ar_hash", "git_commit"):
            assert tags.get(f"gigatok.{key}"), key
        assert "299 px" in tags["gigatok.provenance.gfid"] and "299 px" in tags["gigatok.provenance.rfid"]
        assert tags["gigatok.provenance.inception_score"]  # the score, or why the network cannot give it
        assert "gigatok.substitutes" not in tags  # no random network, with or without the VGG16 file
        if find_weight("vgg16") is None:  # a fresh machine: no perceptual term, no LPIPS, and each says why
            assert tags["gigatok.perceptual"].startswith("unavailable (vgg16 not found at")
            assert tags["gigatok.provenance.lpips"].startswith("unavailable (vgg16 not found at")
            assert run.data.params["tokenizer.loss.perceptual"] == "off"
        params = run.data.params
        assert params["tokenizer.tokenizer.name"] == "S-S" and params["tokenizer.train.max_steps"] == "6"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "tokenizer/total_loss")]
        assert steps == [2, 4, 6]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "ar/train_loss")] == [2, 4, 6]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "images")}
        assert any("reconstruction" in a for a in artifacts) and any("generation" in a for a in artifacts)
    tokenizer_dirs = list((tmp_path / "runs").glob("tokenizer-*"))
    assert len(tokenizer_dirs) == 1  # shared, trained once
    assert [json.loads(line)["step"] for line in (tokenizer_dirs[0] / "metrics.jsonl").read_text().splitlines()] == [
        2,
        4,
        6,
    ]
    assert len(list((tmp_path / "runs").glob("ar-*"))) == 2

    # A second invocation finds both runs FINISHED with one query and starts no job and no training.
    jobs_before = sorted((tmp_path / "runs" / "jobs").iterdir())
    stamp = (tokenizer_dirs[0] / "summary.json").stat().st_mtime_ns
    second = study_cli(args, tmp_path, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "nothing to do" in second.stdout
    assert sorted((tmp_path / "runs" / "jobs").iterdir()) == jobs_before
    assert (tokenizer_dirs[0] / "summary.json").stat().st_mtime_ns == stamp
    assert len(mlflow_runs(tmp_path, "ar_probe_vs_large-tiny")[0]) == 2

    status = study_cli(["ar_probe_vs_large", "--only", "size=S-S", "--status", "--json", *SHORT], tmp_path, timeout=300)
    assert status.returncode == 0, status.stderr
    assert [r["status"] for r in json.loads(status.stdout)] == ["FINISHED", "FINISHED"]


@pytest.mark.parametrize("executor", ["debug"])
def test_failed_run_is_recorded_with_its_error(tmp_path: Path, executor: str) -> None:
    """A VGG16 file with the wrong contents passes the up-front check (which only looks for files) but not the hash
    check when training loads it: the run is FAILED, says why, and the study exits non-zero; the error is in the
    status view."""
    from gigatok.weights import REGISTRY

    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / REGISTRY["vgg16"].filename).write_bytes(b"not the VGG16 weights")
    chosen = [
        "--only",
        "lambda=0.5,lambda=1.0",
        "--weights-dir",
        str(weights),
        "--set",
        "tokenizer.loss.perceptual=lpips",
        *SHORT,
    ]
    result = study_cli(["reg_weight", "--no-substitutes", "--executor", executor, *chosen], tmp_path, timeout=600)
    assert result.returncode == 1
    runs, _ = mlflow_runs(tmp_path, "reg_weight-tiny")
    assert len(runs) == 2
    for run in runs:
        assert run.info.status == "FAILED"
        assert "vgg16" in run.data.tags["gigatok.error"] and run.data.tags["gigatok.failed_stage"] == "tokenizer"
    status = study_cli(["reg_weight", "--status", *chosen], tmp_path, timeout=300)
    assert status.stdout.count("FAILED") == 2 and status.stdout.count("error: tokenizer: WeightsHashError") == 2


def test_fig9_at_two_seeds_draws_the_spread(tmp_path: Path) -> None:
    """``studies/run.py scaling_1d_vs_2d --seeds 2`` then ``analysis/plot_scaling.py``, shortened: Fig. 9 with a
    band per line and the seed spread written out per metric. The figure is kept under $GIGATOK_CI_ARTIFACTS to
    look at."""
    import os
    import shutil

    from analysis import plot_scaling

    fast = ["--set", "tokenizer.tokenizer.semantic.weight=0", "--set", "eval.inception_input=75"]
    fast += ["--set", "tokenizer.tokenizer.encoder.depth=1", "--set", "tokenizer.tokenizer.decoder.depth=1"]
    for key in ("recon_images", "reference_images", "gen_samples", "batch_size"):  # 12 runs: a third of SHORT's
        fast += ["--set", f"eval.{key}=8"]
    args = ["scaling_1d_vs_2d", "--executor", "local", *SHORT[:-2], *fast, "--seeds", "2"]
    result = study_cli(args, tmp_path, timeout=2400)
    assert result.returncode == 0, result.stdout + result.stderr
    runs, _ = mlflow_runs(tmp_path, "scaling_1d_vs_2d-tiny")
    assert len(runs) == 12 and {r.data.tags["gigatok.factor.seed"] for r in runs} == {"0", "1"}

    out = tmp_path / "figures"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert plot_scaling.main(["--tracking-uri", uri, "--out", str(out), "--study", "scaling_1d_vs_2d"]) == 0
    figure = out / "fig9_1d_vs_2d-tiny.png"
    assert figure.stat().st_size > 10_000
    index = (out / "index.md").read_text()
    assert "Seed spread in fig9_1d_vs_2d (Fig. 9):" in index, index
    assert "- Reconstruction, rfid, 2 seeds a point" in index
    assert "| fig9_1d_vs_2d | Fig. 9 | scaling_1d_vs_2d | 12 |" in index  # every run drawn
    # The scaling-law fits of the same runs: a figure and the exponent table, in parameters and training FLOPs.
    fits = out / "fits_scaling_1d_vs_2d-tiny.png"
    assert fits.stat().st_size > 10_000
    exponents = (out / "exponents-tiny.md").read_text()
    for axis in ("params", "flops"):
        assert f"| scaling_1d_vs_2d | 1D tokenizer (Q-Former) | rfid | {axis} |" in exponents, exponents
    if os.environ.get("GIGATOK_CI_ARTIFACTS"):
        artifacts = Path(os.environ["GIGATOK_CI_ARTIFACTS"])
        shutil.copy(figure, artifacts / "fig9-two-seeds.png")
        shutil.copy(fits, artifacts / "fits-two-seeds.png")
        shutil.copy(out / "exponents-tiny.md", artifacts / "exponents-two-seeds.md")

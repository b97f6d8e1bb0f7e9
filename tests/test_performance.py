"""Performance switches: each computes what the plain path computes, none changes a run's hash, and the training
loops apply them. (Their speed is measured by bench/, never here.)"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gigatok.config import PerformanceConfig, ar_run, ar_run_config_from_dict, run_config_from_dict, tokenizer_run
from gigatok.models.ar import build_ar_model
from gigatok.models.attention import AttentionModule, math_attention, set_fused_attention
from gigatok.models.cnn import CNNDecoder, depth_to_space
from gigatok.models.norms import GroupNorm
from gigatok.models.quantizer import VectorQuantizer
from gigatok.models.tokenizer import build_tokenizer
from gigatok.performance import (
    autocast,
    autocast_dtype,
    compile_units,
    compiles,
    maybe_compile,
    prepare_images,
    prepare_module,
)

PLAIN = PerformanceConfig(fused_attention=False, channels_last=False, autocast="off")
ALL_ON = PerformanceConfig(fused_attention=True, channels_last=True, autocast="bf16")


def test_performance_switches_leave_the_hash_alone() -> None:
    base = tokenizer_run("S-S", profile="paper")
    for perf in (PLAIN, ALL_ON, PerformanceConfig(compile=True)):
        other = tokenizer_run("S-S", profile="paper", performance=perf)
        assert other.hash() == base.hash() and other.performance == perf
        assert ar_run(other, "B").hash() == ar_run(base, "B").hash()
    assert ar_run(base, "B", performance=ALL_ON).performance == ALL_ON
    assert ar_run(tokenizer_run(performance=PLAIN)).performance == PLAIN  # AR follows its tokenizer by default


def test_performance_round_trips_and_old_configs_still_load() -> None:
    cfg = tokenizer_run("S-S", performance=ALL_ON)
    assert run_config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    ar = ar_run(cfg)
    assert ar_run_config_from_dict(json.loads(json.dumps(ar.to_dict()))) == ar
    old = cfg.to_dict()
    del old["performance"]  # a config.json written before the switches existed
    assert run_config_from_dict(old).performance == PerformanceConfig()


def test_invalid_autocast_is_rejected() -> None:
    with pytest.raises(ValueError, match="performance.autocast"):
        PerformanceConfig(autocast="fp16")  # type: ignore[arg-type]


def test_autocast_defaults_to_bf16_on_cuda_only() -> None:
    auto = PerformanceConfig()
    assert autocast_dtype(auto, torch.device("cuda")) is torch.bfloat16
    assert autocast_dtype(auto, torch.device("cpu")) is None
    assert autocast_dtype(PerformanceConfig(autocast="bf16"), torch.device("cpu")) is torch.bfloat16
    assert autocast_dtype(PerformanceConfig(autocast="off"), torch.device("cuda")) is None


@pytest.mark.parametrize(
    "shape_q, shape_kv, causal, masked",
    [
        ((2, 3, 5, 8), (2, 3, 5, 8), False, False),
        ((2, 3, 4, 8), (2, 3, 7, 8), False, False),
        ((2, 3, 6, 8), (2, 3, 6, 8), True, False),
        ((2, 3, 3, 8), (2, 3, 7, 8), False, True),
    ],
)
def test_math_attention_matches_sdpa(shape_q: tuple, shape_kv: tuple, causal: bool, masked: bool) -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(shape_q, generator=g), torch.randn(shape_kv, generator=g), torch.randn(shape_kv, generator=g)
    mask = torch.ones(shape_q[2], shape_kv[2], dtype=torch.bool).tril(shape_kv[2] - shape_q[2]) if masked else None
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    assert torch.allclose(math_attention(q, k, v, attn_mask=mask, is_causal=causal), expected, atol=1e-5)


@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_tokenizer_is_the_same_function_under_every_kernel_and_layout(kind: str) -> None:
    torch.manual_seed(0)
    cfg = tokenizer_run("S-B", kind=kind).tokenizer
    model = build_tokenizer(cfg).eval()
    images = torch.rand(2, 3, cfg.image_size, cfg.image_size) * 2 - 1
    with torch.no_grad():
        fused = model(images)
        prepare_module(model, PLAIN)
        kernels = {m.fused_attention for m in model.modules() if isinstance(m, AttentionModule)}
        plain = model(images)
        prepare_module(model, ALL_ON)
        nhwc = model(prepare_images(images, ALL_ON))
    assert kernels == {False}  # the transformers' and the CNN decoder's attention alike
    for other in (plain, nhwc):
        assert torch.equal(other.quant.indices, fused.quant.indices)
        assert torch.allclose(other.reconstruction, fused.reconstruction, atol=1e-4)
    assert prepare_images(images, ALL_ON).is_contiguous(memory_format=torch.channels_last)


def test_channels_last_reaches_every_decoder_block() -> None:
    """Under channels-last each block of the authors' CNN decoder (adaptive norms, depth-to-space upsampling) hands
    the next one NHWC activations. Depth-to-space used to return NCHW, so every later residual add and convolution
    converted formats: the paper S-S step ran slower in channels-last on a CPU instead of faster
    (bench/reference_step.py)."""
    torch.manual_seed(0)
    cnn = dataclasses.replace(
        tokenizer_run("S-S", profile="paper").tokenizer.cnn, base_channels=16, channel_mult=(1, 2, 2), norm_groups=4
    )
    assert cnn.upsample == "depth_to_space" and cnn.decoder_adaptive_norm
    decoder = CNNDecoder(cnn).eval()
    z = torch.randn(2, cnn.latent_channels, 4, 4)
    with torch.no_grad():
        nchw = decoder(z)
        prepare_module(decoder, ALL_ON)
        formats: list[bool] = []
        hooks = [
            layer.register_forward_hook(
                lambda m, i, out: formats.append(out.is_contiguous(memory_format=torch.channels_last))
            )
            for layer in decoder.up
        ]
        nhwc = decoder(prepare_images(z, ALL_ON))
    for hook in hooks:
        hook.remove()
    assert len(formats) == len(decoder.up) and all(formats)
    assert nhwc.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(nhwc, nchw, atol=1e-5)


def test_depth_to_space_keeps_the_memory_format() -> None:
    x = torch.randn(2, 64, 5, 7)
    nchw = depth_to_space(x, 2)
    nhwc = depth_to_space(x.contiguous(memory_format=torch.channels_last), 2)
    assert torch.equal(nhwc, nchw)
    assert nhwc.is_contiguous(memory_format=torch.channels_last) and nchw.is_contiguous()


def test_ar_model_is_the_same_function_under_both_kernels() -> None:
    torch.manual_seed(0)
    model = build_ar_model(ar_run(tokenizer_run("S-S")).model).eval()
    tokens = torch.randint(0, model.cfg.vocab_size, (3, model.cfg.num_tokens))
    labels = torch.tensor([0, 1, model.null_class])
    with torch.no_grad():
        fused = model(tokens, labels)
        plain = set_fused_attention(model, False)(tokens, labels)
    assert torch.allclose(plain, fused, atol=1e-5)


def test_quantizer_searches_codes_in_fp32_under_bf16_autocast() -> None:
    torch.manual_seed(0)
    cfg = tokenizer_run("S-S", profile="paper").tokenizer.quantizer
    quantizer = VectorQuantizer(cfg, 64).eval()
    z = torch.randn(2, 256, 64)
    with torch.no_grad():
        exact = quantizer(z)
        with autocast(PerformanceConfig(autocast="bf16"), torch.device("cpu")):
            mixed = quantizer(z.bfloat16().float())  # the same latent, as a bf16 encoder would hand it over
    reference = quantizer(z.bfloat16().float())
    assert mixed.quantized.dtype == torch.float32
    assert torch.equal(mixed.indices, reference.indices)
    assert (mixed.indices == exact.indices).float().mean() > 0.9  # only the input's rounding moved any code


def test_low_precision_norms_round_only_the_output() -> None:
    """Under bf16 autocast the switched GroupNorm returns bf16, equal to the fp32 norm rounded to bf16 (statistics in
    fp32); switched off, or outside autocast, it is nn.GroupNorm exactly."""
    torch.manual_seed(0)
    norm = GroupNorm(4, 16, eps=1e-6)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = (torch.randn(2, 16, 8, 8) * 3 + 1).bfloat16()  # a bf16 convolution's output
    reference = F.group_norm(x.float(), 4, norm.weight, norm.bias, 1e-6)
    bf16 = PerformanceConfig(autocast="bf16")
    assert bf16.low_precision_norms  # the default
    prepare_module(norm, bf16)
    assert norm.compute_in_autocast_dtype
    with autocast(bf16, torch.device("cpu")):
        low = norm(x)
    assert low.dtype == torch.bfloat16
    assert torch.allclose(low.float(), reference, rtol=2**-7, atol=2**-7)  # within bf16's rounding of the output
    assert torch.equal(norm(x.float()), reference)  # no autocast: the fp32 module
    prepare_module(norm, PerformanceConfig(autocast="bf16", low_precision_norms=False))
    with autocast(bf16, torch.device("cpu")):  # switch off: autocast's own policy for group_norm, as before
        assert torch.equal(norm(x), F.group_norm(x, 4, norm.weight, norm.bias, 1e-6))
    assert torch.backends.cudnn.benchmark is False


def test_cudnn_benchmark_and_compile_mode_are_applied() -> None:
    prepare_module(torch.nn.Linear(2, 2), PerformanceConfig(cudnn_benchmark=True))
    try:
        assert torch.backends.cudnn.benchmark is True
    finally:
        prepare_module(torch.nn.Linear(2, 2), PerformanceConfig())
    assert torch.backends.cudnn.benchmark is False
    with pytest.raises(ValueError, match="performance.compile_mode"):
        PerformanceConfig(compile_mode="fast")  # type: ignore[arg-type]


def test_compile_auto_is_the_unsharded_ar_step_on_cuda_only() -> None:
    """ "auto" (the default) compiles where it was measured to pay: the AR step on a GPU, not under FSDP, not the
    tokenizer, nothing on a CPU; True and False are what they say, and --set reads all three."""
    from gigatok.study import _convert

    auto, cuda, cpu = PerformanceConfig(), torch.device("cuda"), torch.device("cpu")
    assert auto.compile == "auto"
    assert compiles(auto, cuda, "ar") and not compiles(auto, cuda, "ar", sharded=True)
    assert not compiles(auto, cuda, "tokenizer") and not compiles(auto, cpu, "ar")
    assert compiles(PerformanceConfig(compile=True), cpu, "tokenizer")
    assert not compiles(PerformanceConfig(compile=False), cuda, "ar")
    hint = typing.get_type_hints(PerformanceConfig)["compile"]
    assert [_convert(hint, raw, "ar.performance.compile") for raw in ("auto", "true", "false")] == ["auto", True, False]
    with pytest.raises(ValueError, match="performance.compile"):
        PerformanceConfig(compile="yes")  # type: ignore[arg-type]


def test_block_scope_compiles_each_block_in_place() -> None:
    """compile_scope="blocks" compiles every transformer and CNN block of the module behind the step (a module, or
    a module's method as the AR loop passes) and hands the step back uncompiled; "model" compiles the step itself.
    (Nothing is run here: compiling costs minutes on a CPU; bench/gpu_mfu.py measures it on a GPU.)"""
    perf = PerformanceConfig(compile=True, compile_scope="blocks")
    cpu = torch.device("cpu")
    tokenizer = build_tokenizer(tokenizer_run("S-S", kind="2d").tokenizer)
    units = list(compile_units(tokenizer))
    kinds = {type(u).__name__ for u in units}
    assert {"ResnetBlock", "ViTBlock"} <= kinds and len(units) == len({id(u) for u in units})
    assert maybe_compile(tokenizer, perf, cpu, "tokenizer") is tokenizer
    assert all(u._compiled_call_impl is not None for u in units)
    ar = build_ar_model(ar_run(tokenizer_run("S-S"), "B").model)
    assert maybe_compile(ar.loss, perf, cpu, "ar") == ar.loss
    assert all(layer._compiled_call_impl is not None for layer in ar.layers)
    whole = maybe_compile(ar.loss, dataclasses.replace(perf, compile_scope="model"), cpu, "ar")
    assert whole != ar.loss  # a compiled callable
    with pytest.raises(TypeError, match="compile_scope='blocks'"):
        maybe_compile(lambda x: x, perf, cpu, "ar")
    with pytest.raises(ValueError, match="performance.compile_scope"):
        PerformanceConfig(compile_scope="layers")  # type: ignore[arg-type]


def _spy(monkeypatch: pytest.MonkeyPatch, module: object) -> list[PerformanceConfig]:
    """Record the PerformanceConfig every ``prepare_module``/``autocast`` call of a loop module receives."""
    seen: list[PerformanceConfig] = []
    for name in ("prepare_module", "autocast"):
        real = getattr(module, name)

        def spy(*args: object, _real=real) -> object:
            seen.extend(a for a in args if isinstance(a, PerformanceConfig))
            return _real(*args)

        monkeypatch.setattr(module, name, spy)
    return seen


@pytest.mark.slow
def test_training_loops_apply_the_run_performance_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both loops train with every non-default switch (on CPU: written-out attention, NHWC, bf16 autocast)."""
    import gigatok.train.ar_loop as ar_loop
    import gigatok.train.tokenizer_loop as tokenizer_loop

    perf = PerformanceConfig(fused_attention=False, channels_last=True, autocast="bf16")
    cfg = tokenizer_run("S-S", semantic_weight=0, max_steps=2, performance=perf)
    # The GAN step runs too, and LPIPS (a labelled stand-in where the VGG16 file is absent) is the third module.
    cfg = dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, gan_start_step=1, perceptual="lpips"))
    seen = _spy(monkeypatch, tokenizer_loop)
    result = tokenizer_loop.train_tokenizer(cfg, tmp_path / "tok", allow_substitutes=True, progress=False)
    assert result.finished and all(torch.isfinite(torch.tensor(v)) for v in result.final_metrics.values())
    assert seen == [perf] * 6  # 3 modules prepared; autocast at both steps and at the discriminator's one

    ar_cfg = ar_run(cfg, "B", max_steps=2)
    seen = _spy(monkeypatch, ar_loop)
    ar_result = ar_loop.train_ar(ar_cfg, tmp_path / "ar", tmp_path / "tok", progress=False)
    assert ar_result.finished and ar_result.val_loss is not None and ar_result.val_loss > 0
    assert seen == [perf] * 3  # the model prepared; autocast at both steps

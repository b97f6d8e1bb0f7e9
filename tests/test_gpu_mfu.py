"""bench/gpu_mfu.py's --models/--variants: what a GPU session measures is named by switches, and a typo is an
error before any GPU time is spent."""

from __future__ import annotations

import pytest

from bench.gpu_mfu import variant_cases, variant_perf
from gigatok.config import PerformanceConfig


def test_variants_are_eager_bf16_plus_their_switches() -> None:
    assert variant_perf("base") == PerformanceConfig(autocast="bf16", compile=False)
    assert variant_perf("auto") == PerformanceConfig(autocast="bf16")  # the default switches on a GPU
    perf = variant_perf("cudnn+cl+fp32norm")
    switches = (perf.cudnn_benchmark, perf.channels_last, perf.low_precision_norms, perf.compile)
    assert switches == (True, True, False, False)
    assert variant_perf("norm") == variant_perf("base")  # bf16 GroupNorm is the default
    ro = variant_perf("ro")
    assert (ro.compile, ro.compile_mode) == (True, "reduce-overhead")
    assert variant_perf("fp32").autocast == "off"


def test_variant_cases_cross_models_with_variants() -> None:
    cases = variant_cases("tokenizer:S-S:16, ar:B:32", "base,compile")
    assert [(c.name, c.kind, c.model, c.batch) for c in cases] == [
        ("tokenizer S-S bf16 base", "tokenizer", "S-S", 16),
        ("tokenizer S-S bf16 compile", "tokenizer", "S-S", 16),
        ("AR-B bf16 base", "ar", "B", 32),
        ("AR-B bf16 compile", "ar", "B", 32),
    ]


@pytest.mark.parametrize(
    ("models", "variants", "message"),
    [
        ("ar:B", "base", "--models: expected kind:size:batch"),
        ("vae:S-S:16", "base", "--models: expected kind:size:batch"),
        ("ar:B:32", "base+fast", "--variants: unknown switch 'fast'"),
    ],
)
def test_bad_models_or_variants_name_the_fault(models: str, variants: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        variant_cases(models, variants)

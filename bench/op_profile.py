"""Where a training step spends its time, by kind of work: one ``torch.profiler`` pass over a few steps, its operator
times summed into categories (convolution, matmul, attention, normalisation, elementwise, optimizer, copies and
casts, other), device time on a GPU and CPU time on a CPU.

Used by ``bench/gpu_mfu.py --profile-ops``: the profile that says which change to try next (per-GPU batch where
convolutions and GEMMs are small, fused kernels where elementwise work and casts dominate, compile where launches do).
Torch only, like ``gpu_mfu.py``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

# First match wins; names are aten operators (CPU) or CUDA kernels (GPU), lower-cased.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("optimizer", ("adam", "foreach", "multi_tensor", "clip_grad")),
    ("attention", ("attention", "flash", "fmha", "sdpa")),
    ("convolution", ("conv", "cudnn", "fprop", "dgrad", "wgrad", "implicit_gemm", "winograd")),
    ("matmul", ("mm", "matmul", "linear", "gemm", "cublas", "cutlass", "xmma")),
    ("normalisation", ("norm", "moments", "gammabeta", "fusedparams")),
    ("softmax and loss", ("softmax", "nll", "cross_entropy")),
    (
        "copies and casts",
        ("copy", "contiguous", "cat", "clone", "memcpy", "memset", "fill", "zero_", "nchwtonhwc", "nhwctonchw"),
    ),
    (
        "elementwise",
        (
            "elementwise",
            "add",
            "mul",
            "sub",
            "div",
            "silu",
            "gelu",
            "relu",
            "sigmoid",
            "tanh",
            "pow",
            "sqrt",
            "exp",
            "log",
            "where",
            "bernoulli",
            "dropout",
            "reduce",
            "sum",
            "mean",
        ),
    ),
)


@dataclass(frozen=True)
class OpShare:
    name: str
    ms_per_step: float
    share: float


def category(op_name: str) -> str:
    name = op_name.lower()
    for label, keys in CATEGORIES:
        if any(key in name for key in keys):
            return label
    return "other"


def profile_ops(
    step: Callable[[], None], device: torch.device, steps: int = 2
) -> tuple[list[OpShare], list[OpShare], float]:
    """(time per category, the ten most expensive operators or kernels, wall ms per step), over ``steps`` steps.

    CPU: each aten operator's self time. GPU: each kernel's device time; their sum against the wall time shows how
    long the GPU waited on the host (launches, synchronisation, the data), which no category holds.
    """
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize(device)
        wall_ms = (time.perf_counter() - start) * 1e3 / steps
    per_op: dict[str, float] = {}
    for event in prof.key_averages():
        if cuda:  # kernels carry device time; the aten operators above them would count it again
            micros = event.self_device_time_total if event.device_type == DeviceType.CUDA else 0
        else:
            micros = event.self_cpu_time_total
        if micros > 0:
            per_op[event.key] = per_op.get(event.key, 0.0) + micros / 1e3 / steps
    total = sum(per_op.values()) or 1.0
    by_category: dict[str, float] = {}
    for name, ms in per_op.items():
        by_category[category(name)] = by_category.get(category(name), 0.0) + ms
    categories = sorted((OpShare(n, ms, ms / total) for n, ms in by_category.items()), key=lambda s: -s.ms_per_step)
    top = sorted((OpShare(n, ms, ms / total) for n, ms in per_op.items()), key=lambda s: -s.ms_per_step)[:10]
    return categories, top, wall_ms


def format_profile(case: str, categories: list[OpShare], top: list[OpShare], wall_ms: float) -> str:
    busy = sum(s.ms_per_step for s in categories)
    lines = [f"  {case}: {wall_ms:.1f} ms a step (profiled), {busy:.1f} ms of it in operators ({busy / wall_ms:.0%})"]
    lines += [f"    {s.name:18} {s.ms_per_step:9.2f} ms {s.share:6.1%}" for s in categories]
    lines.append("    most expensive:")
    lines += [f"      {s.name[:72]:72} {s.ms_per_step:9.2f} ms {s.share:6.1%}" for s in top]
    return "\n".join(lines)

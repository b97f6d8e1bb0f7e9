"""Applying a :class:`~gigatok.config.PerformanceConfig`: the attention kernel, activation checkpointing, the memory
format of convolutions, cuDNN autotuning, the norms' precision, bf16 autocast and ``torch.compile``.

The training loops, ``bench/tokenizer_step.py`` and ``bench/gpu_mfu.py`` all go through these few functions, so a
benchmark measures what training runs. Imports torch and this package's models only (the GPU benchmark runs where
nothing else is installed).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
from torch import nn

from gigatok.config import Part, PerformanceConfig, compiles_step
from gigatok.models.attention import set_fused_attention
from gigatok.models.checkpointing import checkpoint_units, enable_activation_checkpointing
from gigatok.models.cnn import AttnBlock, ResnetBlock
from gigatok.models.norms import set_low_precision_norms

M = TypeVar("M", bound=nn.Module)


def autocast_dtype(perf: PerformanceConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype on ``device``, or None for full fp32. ``auto`` is bf16 on CUDA only: CPUs without
    AVX512-BF16/AMX emulate bf16 matmuls and run them slower than fp32."""
    if perf.autocast == "off" or (perf.autocast == "auto" and device.type != "cuda"):
        return None
    return torch.bfloat16


def autocast(perf: PerformanceConfig, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """The context the forward pass and the loss run in (backward and the optimizer step run outside it)."""
    dtype = autocast_dtype(perf, device)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def prepare_module(module: M, perf: PerformanceConfig) -> M:
    """Set ``module``'s attention kernel, norm precision, activation checkpointing and convolution memory format in
    place (before building its optimizer), and the process-wide cuDNN autotuning: every loop and benchmark prepares
    its modules before the first step, so this is the one place the switch needs."""
    torch.backends.cudnn.benchmark = perf.cudnn_benchmark
    set_fused_attention(module, perf.fused_attention)
    set_low_precision_norms(module, perf.low_precision_norms)
    if perf.activation_checkpointing:
        enable_activation_checkpointing(module)
    if perf.channels_last:
        module.to(memory_format=torch.channels_last)
    return module


def prepare_images(images: torch.Tensor, perf: PerformanceConfig) -> torch.Tensor:
    """Images in the memory format the convolutions expect."""
    return images.contiguous(memory_format=torch.channels_last) if perf.channels_last else images


def compiles(perf: PerformanceConfig, device: torch.device, part: Part, sharded: bool = False) -> bool:
    """Whether ``part``'s training forward is compiled on ``device`` (:func:`gigatok.config.compiles_step`)."""
    return compiles_step(perf, part, device.type == "cuda", sharded)


def compile_units(module: nn.Module) -> Iterator[nn.Module]:
    """What ``compile_scope="blocks"`` compiles: every transformer block (those activation checkpointing wraps) and
    every residual and attention block of the CNNs."""
    yield from checkpoint_units(module)
    yield from (child for child in module.modules() if isinstance(child, ResnetBlock | AttnBlock))


def maybe_compile(
    fn: Callable[..., Any], perf: PerformanceConfig, device: torch.device, part: Part, sharded: bool = False
) -> Callable[..., Any]:
    """``torch.compile(fn)`` where :func:`compiles` says so. The loops compile the DDP-wrapped module: compile then
    splits its graph at DDP's gradient buckets, so the all-reduces still overlap the backward pass. With
    ``compile_scope="blocks"`` the blocks of the module behind ``fn`` (a module, a DDP wrapper's module, or a bound
    method's owner) are compiled in place instead and ``fn`` is returned as it is."""
    if not compiles(perf, device, part, sharded):
        return fn
    if perf.compile_scope == "model":
        return torch.compile(fn, mode=perf.compile_mode)
    owner = fn if isinstance(fn, nn.Module) else getattr(fn, "__self__", None)
    if not isinstance(owner, nn.Module):
        raise TypeError(f"performance.compile_scope='blocks': {fn!r} is neither a module nor a module's method")
    for unit in compile_units(getattr(owner, "module", owner)):  # DDP keeps the model as .module
        unit.compile(mode=perf.compile_mode)
    return fn

"""Keeping freed host memory for reuse in a CPU job, instead of giving it back to the kernel after every tensor.

glibc's malloc serves every block above its mmap threshold (128 KiB, raised on its own to at most 32 MiB) with a
fresh ``mmap`` and unmaps it on ``free``. A CPU training step allocates and frees the same large activations every
step, so each one is faulted in page by page and zeroed by the kernel again. Measured on two cores, paper S-S 1D
tokenizer step (256 px, batch 2, ``bench/reference_step.py``): ~9 million page faults and 24 s of system time in a
one-warm-up-two-step process, a step of 19.4-20.2 s; with the thresholds below 1.8 million faults, 9 s, and a step
of 13.6-16.1 s. Tiny profile, one S-S 2D run: reconstruction metrics 17.0 -> 13.6 s and generation 16.2 -> 13.0 s
(Inception at 299 px), training unchanged. What is computed does not change (same bytes out).

The cost is memory the process keeps: freed blocks stay in its heap for the next step (peak resident memory of
that paper step 7.0 -> 7.6 GB). Applied only to jobs that run on the CPU; ``GIGATOK_HOST_ALLOCATOR=system`` leaves
the C library's defaults. No effect outside glibc (macOS, musl): the status says so.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

ENV_VAR = "GIGATOK_HOST_ALLOCATOR"  # "system": leave the C library's defaults
# mallopt(3) parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
# mallopt takes an int: the largest threshold it accepts. Blocks above it (2 GiB) are still mapped and unmapped.
KEEP_UP_TO = 2**31 - 1
TOP_PAD = 256 << 20  # grow the heap in steps of 256 MiB, not a block's size at a time


@functools.cache
def keep_freed_host_memory() -> str:
    """Raise glibc's mmap and trim thresholds for this process (once); returns what was done, for the job's log
    and the run's ``gigatok.host_allocator`` tag: ``kept``, ``system (<why>)`` or ``partial (<why>)``."""
    if os.environ.get(ENV_VAR, "").strip().lower() == "system":
        return f"system ({ENV_VAR}=system)"
    libc = glibc()
    if libc is None:
        return f"system (not glibc: {sys.platform})"
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    settings = ((M_MMAP_THRESHOLD, KEEP_UP_TO), (M_TRIM_THRESHOLD, KEEP_UP_TO), (M_TOP_PAD, TOP_PAD))
    refused = [param for param, value in settings if libc.mallopt(param, value) != 1]
    return "kept" if not refused else f"partial (mallopt refused parameters {refused})"


def glibc() -> ctypes.CDLL | None:
    """This process's C library where it is glibc (whose mallopt thresholds this module sets), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the symbols this process already has, the C library's among them
    except OSError:
        return None
    # glibc only: musl's mallopt is a stub that does nothing
    return libc if hasattr(libc, "gnu_get_libc_version") else None

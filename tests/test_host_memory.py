"""A CPU job keeps freed host memory for reuse (gigatok.host_memory): counted in page faults, never in seconds, and
applied by the job only where it runs on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gigatok import host_memory

# Allocate, fill and free a 64 MiB tensor 30 times, as a training step does its activations; print the minor page
# faults of the last 10 (steady state: glibc's heap grows over the first few, 8 measured here).
FAULTS = """
import json, resource, sys, torch
if sys.argv[1] == "kept":
    from gigatok.host_memory import keep_freed_host_memory
    assert keep_freed_host_memory() == "kept"
for step in range(30):
    if step == 20:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(16 * 2**20).fill_(1.0)
    del x
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
"""

glibc_only = pytest.mark.skipif(host_memory.glibc() is None, reason="glibc's allocator only")


def page_faults(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != host_memory.ENV_VAR}
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], env=env, capture_output=True, text=True, check=True)
    return int(json.loads(out.stdout.strip().splitlines()[-1]))


@glibc_only
def test_freed_tensors_are_reused_instead_of_faulted_in_again() -> None:
    pages = 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    system, kept = page_faults("system"), page_faults("kept")
    # glibc's defaults: each of the 10 tensors is mapped afresh and faulted in page by page.
    assert system >= 9 * pages, (system, pages)
    # Kept: they reuse the heap's pages.
    assert kept <= pages // 2, (kept, pages)


def test_the_environment_variable_leaves_the_system_defaults() -> None:
    status = "from gigatok.host_memory import keep_freed_host_memory; print(keep_freed_host_memory())"
    env = {**os.environ, host_memory.ENV_VAR: "system"}
    out = subprocess.run([sys.executable, "-c", status], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"system ({host_memory.ENV_VAR}=system)"

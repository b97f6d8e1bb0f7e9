"""A job keeps to the threads it was given: torch's pool and the BLAS/OpenMP pools NumPy, SciPy and scikit-learn
load (checked in a fresh process: the limit is process-wide)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json
from threadpoolctl import threadpool_info
import torch
from gigatok.job_threads import use_threads
before = {d["internal_api"]: d["num_threads"] for d in threadpool_info()}
use_threads(1)
import numpy as np
from sklearn.linear_model import LogisticRegression
x = np.random.default_rng(0).normal(size=(64, 8)); y = np.arange(64) % 3
LogisticRegression(max_iter=50).fit(x, y)
pools = [(d["internal_api"], d["num_threads"]) for d in threadpool_info()]
print(json.dumps({"before": before, "pools": pools, "torch": torch.get_num_threads()}))
"""


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: every pool has one thread already")
def test_a_job_given_one_thread_runs_blas_and_openmp_on_one() -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert max(seen["before"].values()) > 1  # left alone, the libraries take every core
    apis = {api for api, _ in seen["pools"]}
    assert {"openblas", "openmp"} <= apis or {"mkl", "openmp"} <= apis, seen["pools"]
    assert all(threads == 1 for _, threads in seen["pools"]), seen["pools"]
    assert seen["torch"] == 1

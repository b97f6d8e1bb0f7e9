"""Headless Chromium opens the MLflow UI of a study's experiment and finds its runs there.

The study is ``decode_cost`` cut to two runs with batches of two images: it trains nothing, so its runs exist and
finish in seconds. The runs are written through a real MLflow server on loopback (``scripts/mlflow-server``); the
UI is a JavaScript application, so the page is read after Chromium has run its scripts (``--virtual-time-budget``
lets the page's requests complete before the DOM is dumped). The screenshot is kept: under
``$GIGATOK_CI_ARTIFACTS`` when set (``.ci/run`` sets ``ci-artifacts/``), else in the test's temporary folder.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from PIL import Image, ImageStat
from services import MlflowServer, chromium, need, study_cli

from gigatok.tracking_schema import (
    FLOPS_TRAIN,
    MLFLOW_GIT_COMMIT,
    MLFLOW_USER,
    PARAMS_AR,
    PARAMS_TOKENIZER,
    SIZE_RANK,
    study_view_path,
)

pytestmark = pytest.mark.browser

ARGS = ["decode_cost", "--only", "decoder=B,ar_size=B,ar_size=L", "--set", "eval.batch_size=2", "--executor", "debug"]


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    browser = chromium()
    assert browser is not None
    flags = [
        "--headless",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--virtual-time-budget=30000",
        # Its sandbox refuses root and needs user namespaces that CI containers rarely grant; the page is our
        # own UI on loopback.
        "--no-sandbox",
    ]
    return subprocess.run([browser, *flags, *args], capture_output=True, text=True, timeout=180)


def test_mlflow_ui_lists_the_runs_of_a_study(tmp_path: Path) -> None:
    need(chromium() is not None, "no Chromium here (apt-get install chromium)")
    with MlflowServer(tmp_path / "mlflow-server") as server:
        result = study_cli([*ARGS, "--tracking-uri", server.uri], tmp_path, timeout=900)
        assert result.returncode == 0, result.stdout + result.stderr

        from mlflow import MlflowClient

        client = MlflowClient(server.uri)
        experiment = client.get_experiment_by_name("decode_cost-tiny")
        runs = client.search_runs([experiment.experiment_id])
        names = {r.info.run_name for r in runs}
        assert names == {"decoder=B ar_size=B", "decoder=B ar_size=L"}
        # The study's shared view (an experiment tag the launch writes): MLflow's User, Source and Version columns,
        # the factors and the size metrics a scaling chart needs, beside the run names.
        page = server.uri + study_view_path(experiment.experiment_id)

        dom = _chromium(tmp_path, "--window-size=5000,900", "--dump-dom", page)  # every column in the DOM
        assert dom.returncode == 0, dom.stderr[-2000:]
        assert "decode_cost-tiny" in dom.stdout, dom.stdout[-2000:]
        missing = [n for n in names if n not in dom.stdout]
        assert not missing, f"runs not on the experiment page: {missing}"
        headers = {
            " ".join(re.sub(r"<[^>]+>", " ", m.group(1)).split()).split(" ")[0]
            for m in re.finditer(r'role="columnheader"[^>]*>(.{0,200})', dom.stdout)
        }
        wanted = {"User", "Source", "Version", PARAMS_TOKENIZER, PARAMS_AR, SIZE_RANK, FLOPS_TRAIN}
        wanted.add("gigatok.factor.decoder")
        assert wanted <= headers, f"columns missing from the study view: {wanted - headers} (shown: {headers})"
        run = runs[0]
        assert run.data.tags[MLFLOW_USER] in dom.stdout and "run.py" in dom.stdout
        if MLFLOW_GIT_COMMIT in run.data.tags:  # a clean checkout (CI's clone): the Version column shows it
            assert run.data.tags[MLFLOW_GIT_COMMIT][:6] in dom.stdout

        folder = Path(os.environ.get("GIGATOK_CI_ARTIFACTS") or tmp_path)
        folder.mkdir(parents=True, exist_ok=True)
        screenshot = folder / "mlflow-experiment-page.png"
        screenshot.unlink(missing_ok=True)
        shot = _chromium(tmp_path, "--window-size=1400,900", f"--screenshot={screenshot}", page)
        assert shot.returncode == 0, shot.stderr[-2000:]
    with Image.open(screenshot) as image:
        assert image.size == (1400, 900)
        assert max(ImageStat.Stat(image.convert("L")).stddev) > 10  # a rendered page, not a blank one

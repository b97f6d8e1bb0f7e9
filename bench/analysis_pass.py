"""One timed pass of the analysis for ``bench/analysis_load.py``, run in a fresh process per pass:

    python bench/analysis_pass.py ROOT URI OUT [analysis/plot_scaling.py options ...]

imports ``analysis`` from the tree at ROOT (this checkout, or a copy of the baseline commit: both are timed the same
way), loads every run once untimed (imports, the cache of parameter counts, the store's file in the page cache), then
times ``load_runs`` of every run and ``analysis/plot_scaling.py``'s ``main`` with the options given, writing to OUT.
Prints one JSON line: wall and CPU seconds of each (CPU counts the worker processes the figures are drawn in).

Nothing of the project is imported before ROOT is first on the path, so the baseline runs its own code throughout.
"""

from __future__ import annotations

import contextlib
import io
import json
import resource
import sys
import time
from pathlib import Path


def cpu_seconds() -> float:
    """User + system CPU of this process and of its children that have ended (the figures' worker processes)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn: object) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), cpu_seconds()
    out = fn()  # type: ignore[operator]
    return time.perf_counter() - wall, cpu_seconds() - cpu, out


def main(argv: list[str]) -> int:
    root, uri, out, options = Path(argv[0]).resolve(), argv[1], argv[2], argv[3:]
    sys.path.insert(0, str(root))
    import matplotlib

    matplotlib.use("Agg")
    from analysis import plot_scaling
    from analysis.load import load_runs

    if not Path(plot_scaling.__file__).resolve().is_relative_to(root):
        raise SystemExit(f"analysis came from {plot_scaling.__file__}, not from {root}")
    runs = len(load_runs(uri))  # untimed: warms what a second load in the same session finds warm
    load_s, load_cpu, _ = timed(lambda: load_runs(uri))
    with contextlib.redirect_stdout(io.StringIO()):
        figures_s, figures_cpu, status = timed(
            lambda: plot_scaling.main(["--tracking-uri", uri, "--out", out, *options])
        )
    if status != 0:
        raise SystemExit(f"analysis/plot_scaling.py of {root} exited with {status}")
    made = sorted(p.name for p in Path(out).iterdir() if p.suffix in (".png", ".pdf", ".svg"))
    result = {"runs": runs, "load_s": load_s, "load_cpu": load_cpu, "figures_s": figures_s, "figures_cpu": figures_cpu}
    print(json.dumps({**result, "files": made}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

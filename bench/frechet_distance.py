"""The Frechet distance of FID: the r x r route from feature rows against the two d x d eigendecompositions.

    python bench/frechet_distance.py             20, 96, 500 and 1,500 rows per side at 2048-d, 3 rounds
    python bench/frechet_distance.py --quick     20 and 96 rows, 2 rounds

``gigatok.metrics.fid.frechet_distance_gaussians`` takes the trace term tr sqrt(S1 S2) from an r x r eigenproblem
when a side's every feature row is known and there are fewer rows than dimensions, and from two d x d symmetric
eigendecompositions otherwise. The rows route is what the tiny profile (96 images), a CFG trial's small budget and
short checks take; the d x d route is what any paper-scale evaluation (50,000 samples) takes, and its cost does not
depend on the number of samples. Both routes run on the same synthetic 2048-d moments, interleaved; the table gives
the time of each, the paired ratio, and each route's relative error against the exact value computed a third way
(the singular values of F1 F2^T, from the rows in float64). Both formulas are exact; their round-off differs: the
square roots of a singular d x d covariance lose digits that the r x r route keeps.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the project importable without installing it
    sys.path.insert(0, str(ROOT))

from bench.common import Row, add_common_args, interleaved, log_to_mlflow, median, paired_ratio, print_table  # noqa: E402

DIM = 2048


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 and 96 rows, 2 rounds")
    parser.add_argument("--rows", type=int, nargs="+", default=None, help="rows per side (each < 2048)")
    parser.add_argument("--rounds", type=int, default=None)
    add_common_args(parser)
    args = parser.parse_args(argv)
    args.rows = args.rows or ([20, 96] if args.quick else [20, 96, 500, 1500])
    args.rounds = args.rounds or (2 if args.quick else 3)
    bad = [r for r in args.rows if not 2 <= r < DIM]
    if bad:
        parser.error(f"--rows: each must be in [2, {DIM - 1}] (the rows route needs fewer rows than dimensions): {bad}")
    return args


def measure(count: int, rounds: int, seed: int) -> list[Row]:
    """Both routes on one pair of synthetic streams of ``count`` rows, interleaved."""
    import functools

    import numpy as np

    from gigatok.metrics.accumulators import FeatureMoments
    from gigatok.metrics.fid import frechet_distance_gaussians

    rng = np.random.default_rng(seed)
    # Correlated, non-negative features with a spread like Inception's pool features, the two sides apart.
    mixing = np.abs(rng.standard_normal((64, DIM))).astype(np.float32) / 8
    sides = [
        np.maximum(rng.standard_normal((count, 64)).astype(np.float32) @ mixing + shift, 0) for shift in (0.0, 0.05)
    ]
    moments = []
    for x in sides:
        acc = FeatureMoments(DIM)
        acc.update(x)
        moments += [acc.mean, acc.covariance]
    full = functools.partial(frechet_distance_gaussians, *moments)
    from_rows = functools.partial(frechet_distance_gaussians, *moments, rows1=sides[0], rows2=sides[1])
    times = interleaved({"full": full, "rows": from_rows}, repeats=rounds, warmup=0)
    ratio, low, high = paired_ratio(times["full"], times["rows"])
    # The exact value, independently: the nonzero eigenvalues of S1 S2 are the squared singular values of F1 F2^T.
    mu1, s1, mu2, s2 = moments
    f1, f2 = ((x - mu) / np.sqrt(count - 1) for x, mu in ((sides[0], mu1), (sides[1], mu2)))
    exact = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.linalg.svd(f1 @ f2.T).S.sum()
    extra = {
        "rows route": f"{median(times['rows']) * 1e3:.1f} ms",
        "ratio range": f"{low:.0f}-{high:.0f}x",
        "error, d x d": f"{abs(full() - exact) / exact:.0e}",
        "error, rows": f"{abs(from_rows() - exact) / exact:.0e}",
    }
    return [
        Row(f"{count} rows per side, 2048-d: d x d route", median(times["full"]), "s", extra),
        Row(f"{count} rows per side: d x d over rows route", ratio, "x", {}),
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows = [row for count in args.rows for row in measure(count, args.rounds, seed=count)]
    print_table(
        f"Frechet distance at {DIM}-d, median of {args.rounds} interleaved rounds (load average "
        f"{os.getloadavg()[0]:.1f})",
        rows,
    )
    log_to_mlflow(args.mlflow, "frechet_distance", rows, {"rounds": args.rounds, "rows": args.rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A saturating power law ``y = E + A * N**(-alpha)`` fitted to scattered runs, with bootstrap intervals.

The fit works in ``x = log(N / N_ref)`` (``N_ref`` the geometric mean of the distinct N), where the model is
``E + A_ref * exp(-alpha * x)``: parameter counts and FLOPs span decades, and in log N the three parameters are of
comparable scale. ``A`` is reported for N in its own units (``A = A_ref * N_ref**alpha``).

Bounds: ``E >= 0`` (every metric fitted here, rFID, gFID, a loss, a probe's error, is non-negative),
``ALPHA_MIN <= alpha <= ALPHA_MAX``, ``A`` of either sign (``A < 0``: the metric worsens with N, towards E from
below; the paper's vanilla gFID does).

For a fixed alpha the model is linear in E and A, so the least-squares problem is a one-dimensional search over
alpha with a 2x2 solve at each value (variable projection). That search, on a fine grid refined by a parabola,
gives the starting point of :func:`scipy.optimize.curve_fit` (trust-region, bounded), which makes the point fit,
and it refits the 1,000 bootstrap resamples at once (vectorised; 1,000 ``curve_fit`` calls would take seconds per
fit, minutes per figure). Both minimise the same bounded sum of squares.

The bootstrap resamples runs with replacement (each seed a run, so seed noise is in the interval; a single-seed
study still gets one, wider); a resample with fewer than 3 distinct N cannot be fitted and is drawn again.
Intervals are the 2.5th and 97.5th percentiles, of the parameters and, at each N, of the predicted curve.

A fit is refused, with a note saying why, when the runs hold fewer distinct N than parameters, or no more runs
than parameters (no residual left for a bootstrap to resample), or when ``curve_fit`` does not converge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import curve_fit

N_PARAMS = 3  # E, A, alpha
N_BOOT = 1000
BOOT_SEED = 0
CI_LEVEL = 95
EXTRAPOLATE = 4.0  # the curve runs on to this multiple of the largest N trained
ALPHA_MIN, ALPHA_MAX = 1e-3, 3.0
MIN_BOOT = 100  # fewer usable resamples than this: no interval (the note says so)
GRID_POINTS = 120  # points of the drawn curve, geometric over [N min, EXTRAPOLATE * N max]
_ALPHA_GRID = np.linspace(ALPHA_MIN, ALPHA_MAX, 300)  # a step of 0.01, refined by a parabola


@dataclass(frozen=True, eq=False)
class PowerLawFit:
    """One fit: parameters with 95% intervals, the curve on ``grid`` (N) with its band, and why it was not made."""

    fitted: bool
    note: str  # "" for a clean fit; the reason when not fitted; caveats (bounds, lost resamples) otherwise
    n_points: int  # distinct N
    n_runs: int
    E: float = math.nan
    A: float = math.nan
    alpha: float = math.nan
    E_ci: tuple[float, float] = (math.nan, math.nan)
    A_ci: tuple[float, float] = (math.nan, math.nan)
    alpha_ci: tuple[float, float] = (math.nan, math.nan)
    n_boot: int = 0  # resamples that could be fitted
    n_max: float = math.nan  # the largest N trained: beyond it the curve is extrapolated
    grid: np.ndarray = field(default_factory=lambda: np.empty(0))
    curve: np.ndarray = field(default_factory=lambda: np.empty(0))
    band: tuple[np.ndarray, np.ndarray] = field(default_factory=lambda: (np.empty(0), np.empty(0)))
    alpha_boot: np.ndarray = field(default_factory=lambda: np.empty(0))  # for intervals of differences

    def predict(self, n: np.ndarray | float) -> np.ndarray:
        return self.E + self.A * np.asarray(n, dtype="float64") ** (-self.alpha)

    @property
    def extrapolates(self) -> bool:
        """Whether the curve says anything beyond the largest N trained: alpha inside its bounds, with a bootstrap
        interval that does not span them. Otherwise the curve only joins the points it was fitted to."""
        if not self.fitted or math.isnan(self.alpha_ci[0]):
            return False
        at_bound = self.alpha <= ALPHA_MIN * 1.01 or self.alpha >= ALPHA_MAX * 0.999
        return not at_bound and not _spans_bounds(self.alpha_ci)


def refused(note: str, n_points: int, n_runs: int) -> PowerLawFit:
    return PowerLawFit(False, f"not fitted: {note}", n_points, n_runs)


def model(x: np.ndarray, e: float, a: float, alpha: float) -> np.ndarray:
    """The law in ``x = log(N / N_ref)``: ``E + A_ref * exp(-alpha * x)``."""
    return e + a * np.exp(-alpha * x)


def _jacobian(x: np.ndarray, e: float, a: float, alpha: float) -> np.ndarray:
    decay = np.exp(-alpha * x)
    return np.stack([np.ones_like(x), decay, -a * x * decay], axis=1)


def profile_fit(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least squares over alpha, solved for every row of ``weights`` (resamples x runs: how often each run is
    drawn) at once: E, A_ref, alpha of each row (NaN where a row cannot be fitted)."""
    basis = np.exp(-np.outer(_ALPHA_GRID, x))  # alphas x runs
    sse, e, a = _projected(basis, y, weights)
    best = np.argmin(np.where(np.isfinite(sse), sse, np.inf), axis=1)
    alpha = _refine(sse, best)
    _, e, a = _projected(np.exp(-np.outer(alpha, x))[:, None, :], y, weights[:, None, :], diagonal=True)
    lost = ~np.isfinite(sse[np.arange(len(best)), best])
    return (np.where(lost, np.nan, e[:, 0]), np.where(lost, np.nan, a[:, 0]), np.where(lost, np.nan, alpha))


def _projected(
    basis: np.ndarray, y: np.ndarray, weights: np.ndarray, diagonal: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For fixed alphas (``basis`` = exp(-alpha x), alphas x runs), the weighted least-squares E >= 0 and A of each
    (resample, alpha): sums of squares, E, A (resamples x alphas). ``diagonal``: ``basis`` and ``weights`` are
    (resamples, 1, runs), one alpha per resample."""
    if diagonal:
        s_f, s_ff = (weights * basis).sum(-1), (weights * basis**2).sum(-1)
        s_fy = (weights * basis * y).sum(-1)
    else:
        s_f, s_ff, s_fy = weights @ basis.T, weights @ (basis**2).T, (weights * y) @ basis.T
    s_w, s_y, s_yy = weights.sum(-1), (weights * y).sum(-1), (weights * y**2).sum(-1)
    if not diagonal:
        s_w, s_y, s_yy = s_w[:, None], s_y[:, None], s_yy[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        det = s_w * s_ff - s_f**2
        a = (s_w * s_fy - s_f * s_y) / det
        e = (s_y - a * s_f) / s_w
        # E below its bound: the best E >= 0 is E = 0, with A fitted alone.
        a = np.where(e < 0, s_fy / s_ff, a)
        e = np.where(e < 0, 0.0, e)
        sse = s_yy - 2 * e * s_y - 2 * a * s_fy + e**2 * s_w + 2 * e * a * s_f + a**2 * s_ff
    sse = np.where(det > 1e-12 * s_w * s_ff, sse, np.nan)  # alpha ~ 0 leaves E and A inseparable
    return sse, e, a


def _refine(sse: np.ndarray, best: np.ndarray) -> np.ndarray:
    """The alpha of least squares between grid points: the vertex of the parabola through the best grid point and
    its neighbours (the grid point itself at the grid's ends)."""
    rows = np.arange(len(best))
    inner = np.clip(best, 1, len(_ALPHA_GRID) - 2)
    left, mid, right = sse[rows, inner - 1], sse[rows, inner], sse[rows, inner + 1]
    step = _ALPHA_GRID[1] - _ALPHA_GRID[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        curvature = left - 2 * mid + right
        shift = np.where(curvature > 0, 0.5 * (left - right) / curvature, 0.0)
    alpha = _ALPHA_GRID[inner] + np.clip(np.nan_to_num(shift), -1, 1) * step
    at_end = (best == 0) | (best == len(_ALPHA_GRID) - 1)
    return np.where(at_end, _ALPHA_GRID[best], np.clip(alpha, ALPHA_MIN, ALPHA_MAX))


def _point_fit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """The least-squares E, A_ref, alpha: ``curve_fit`` (bounded trust region) from the profile search's optimum.
    Raises RuntimeError when it does not converge, ValueError when nothing can be fitted."""
    start = [float(v[0]) for v in profile_fit(x, y, np.ones((1, len(x))))]
    if not all(math.isfinite(v) for v in start):
        raise ValueError("the points admit no fit (every N alike?)")
    start[0] = max(start[0], 1e-12)
    bounds = ([0.0, -np.inf, ALPHA_MIN], [np.inf, np.inf, ALPHA_MAX])
    start[2] = min(max(start[2], ALPHA_MIN), ALPHA_MAX)
    params, _ = curve_fit(model, x, y, p0=start, jac=_jacobian, bounds=bounds, method="trf", maxfev=5000)
    fitted = [float(p) for p in params]
    # The grid's optimum where the local search stopped worse (a flat valley): both satisfy the bounds.
    if np.sum((model(x, *start) - y) ** 2) < np.sum((model(x, *fitted) - y) ** 2):
        fitted = start
    return fitted[0], fitted[1], fitted[2]


def _interval(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    low, high = np.percentile(values, [(100 - CI_LEVEL) / 2, 50 + CI_LEVEL / 2], axis=axis)
    return low, high


def fit_power_law(
    n: np.ndarray | list[float],
    y: np.ndarray | list[float],
    n_boot: int = N_BOOT,
    seed: int = BOOT_SEED,
    extrapolate: float = EXTRAPOLATE,
) -> PowerLawFit:
    """Fit ``y = E + A * n**(-alpha)`` to runs (``n`` > 0, one value per run; repeated n are seeds), with bootstrap
    intervals over runs (``n_boot`` resamples, numpy generator ``seed``: the same numbers on every redraw)."""
    n, y = np.asarray(n, dtype="float64"), np.asarray(y, dtype="float64")
    keep = np.isfinite(n) & np.isfinite(y) & (n > 0)
    n, y = n[keep], y[keep]
    points = len(np.unique(n))
    if points < N_PARAMS:
        return refused(f"{points} points < {N_PARAMS} parameters", points, len(n))
    if len(n) <= N_PARAMS:
        return refused(f"{len(n)} runs, no residual for the bootstrap (needs > {N_PARAMS})", points, len(n))
    n_ref = float(np.exp(np.log(np.unique(n)).mean()))
    x = np.log(n / n_ref)
    try:
        e, a_ref, alpha = _point_fit(x, y)
    except (RuntimeError, ValueError) as exc:
        return refused(f"the fit did not converge ({str(exc).splitlines()[0][:120]})", points, len(n))
    grid = np.geomspace(n.min(), extrapolate * n.max(), GRID_POINTS)
    fit = PowerLawFit(True, "", points, len(n), e, a_ref * n_ref**alpha, alpha, n_max=float(n.max()), grid=grid)
    return _with_bootstrap(fit, x, y, n, n_ref, n_boot, seed)


def _with_bootstrap(
    fit: PowerLawFit, x: np.ndarray, y: np.ndarray, n: np.ndarray, n_ref: float, n_boot: int, seed: int
) -> PowerLawFit:
    e, a_ref, alpha = profile_fit(x, y, resample_weights(n, n_boot, seed))
    ok = np.isfinite(e) & np.isfinite(a_ref) & np.isfinite(alpha)
    e, a_ref, alpha = e[ok], a_ref[ok], alpha[ok]
    curve = fit.predict(fit.grid)
    if len(e) < MIN_BOOT:
        return _replace(fit, note="; ".join(_caveats(fit, len(e), n_boot, fit.alpha_ci)), curve=curve, n_boot=len(e))
    alpha_ci = tuple(float(v) for v in _interval(alpha))
    xs = np.log(fit.grid / n_ref)
    curves = e[:, None] + a_ref[:, None] * np.exp(-alpha[:, None] * xs[None, :])
    return _replace(
        fit,
        note="; ".join(_caveats(fit, len(e), n_boot, alpha_ci)),
        curve=curve,
        n_boot=len(e),
        E_ci=tuple(float(v) for v in _interval(e)),
        A_ci=tuple(float(v) for v in _interval(a_ref * n_ref**alpha)),
        alpha_ci=alpha_ci,
        band=_interval(curves),
        alpha_boot=alpha,
    )


def resample_weights(n: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """``n_boot`` bootstrap resamples of the runs, as how often each run is drawn (resamples x runs). A resample
    holding fewer than :data:`N_PARAMS` distinct N cannot be fitted and is drawn again (up to 20 rounds)."""
    rng = np.random.default_rng(seed)
    _, point = np.unique(n, return_inverse=True)
    kept: list[np.ndarray] = []
    for _ in range(20):
        draws = rng.integers(0, len(n), size=(n_boot, len(n)))
        weights = np.zeros((n_boot, len(n)))
        np.add.at(weights, (np.arange(n_boot)[:, None], draws), 1.0)
        at_point = weights @ (point[:, None] == np.arange(point.max() + 1)).astype("float64")
        kept.extend(weights[(at_point > 0).sum(axis=1) >= N_PARAMS])
        if len(kept) >= n_boot:
            break
    return np.array(kept[:n_boot]).reshape(-1, len(n))


def _spans_bounds(interval: tuple[float, float]) -> bool:
    return interval[0] <= ALPHA_MIN + 0.01 * (ALPHA_MAX - ALPHA_MIN) and interval[1] >= 0.99 * ALPHA_MAX


def _caveats(fit: PowerLawFit, usable: int, n_boot: int, alpha_ci: tuple[float, float]) -> list[str]:
    notes = []
    if fit.alpha <= ALPHA_MIN * 1.01:
        notes.append(f"alpha at its lower bound {ALPHA_MIN:g}: no curvature in log N")
    elif fit.alpha >= ALPHA_MAX * 0.999:
        notes.append(f"alpha at its upper bound {ALPHA_MAX:g}: a step, not a power law")
    if fit.E <= 1e-9:
        notes.append("E at its bound 0")
    if fit.A < 0:
        notes.append("A < 0: worsens with N")
    if usable >= MIN_BOOT and _spans_bounds(alpha_ci):
        notes.append("alpha undetermined: its interval spans its bounds")
    if usable < MIN_BOOT:
        notes.append(f"no interval: {usable} of {n_boot} resamples could be fitted")
    elif usable < n_boot:
        notes.append(f"interval from {usable} of {n_boot} resamples")
    return notes


def _replace(fit: PowerLawFit, **changes: object) -> PowerLawFit:
    import dataclasses

    return dataclasses.replace(fit, **changes)  # type: ignore[arg-type]

"""
Robust weighted fit of ``y ~ scale * r + shift`` on samples with a per-sample noise model.

RANSAC (two-point hypotheses, scale > 0) finds the inliers, then iteratively reweighted least
squares with Tukey's biweight on the standardised residuals ``(s r + t - y) / sqrt(var)``
refines the fit. An optional anchor (a pseudo-sample with a fixed total weight, e.g. the sky
at inverse depth 0) enters every least-squares step and is never down-weighted.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import cv2
import numpy as np

TUKEY_C = 4.685        # 95 % efficiency under Gaussian noise
MAD_TO_SIGMA = 1.4826
SCORE_SAMPLES = 1024   # RANSAC scores hypotheses on at most this many samples
# numpy before 1.22 interpolated percentiles as a weighted sum, later ones by a lerp exact at
# both ends: ``percentile`` follows the installed numpy (the same value to the last bit).
_WEIGHTED_SUM_LERP = tuple(int(v) for v in np.__version__.split('.')[:2]) < (1, 22)


class Fit(NamedTuple):
    """Result of ``robust_affine``."""

    scale: float
    shift: float
    inliers: np.ndarray     # bool, per sample: |residual| <= tolerance
    kappa: float            # robust spread of the standardised residuals (1: model holds)
    weights: np.ndarray     # final per-sample weights (Tukey / var)


class Anchor(NamedTuple):
    """A pseudo-sample: ``scale * r + shift ~ y`` with weight ``weight`` x the samples' sum."""

    r: float
    y: float
    weight: float


def median(x: np.ndarray):
    """
    Return ``np.median`` of a 1-D array without NaN.

    The same value (in the array's precision), by
    one partition: np.median's checks and dispatch cost several times the partition itself
    on the few thousand samples of a fit.
    """
    n = x.size
    k = n // 2
    if n % 2:
        return np.partition(x, k)[k]
    part = np.partition(x, (k - 1, k))
    # The pair's sum in the array's precision, halved (exact), as np.median's mean does.
    return x.dtype.type((part[k - 1] + part[k]) / 2)


def percentile(x: np.ndarray, q: float) -> float:
    """Return the linear-interpolation percentile ``q`` of a 1-D float64 array without NaN."""
    n = x.size
    pos = q / 100.0 * (n - 1)
    lo = int(np.floor(pos))
    hi = min(lo + 1, n - 1)
    part = np.partition(x, (lo, hi)) if hi > lo else np.partition(x, lo)
    a, b = float(part[lo]), float(part[hi])
    t = pos - lo
    if _WEIGHTED_SUM_LERP:
        return a * (1.0 - t) + b * t
    return b - (b - a) * (1.0 - t) if t >= 0.5 else a + (b - a) * t


def weighted_affine(r, y, w, anchor: Optional[Anchor] = None) -> Optional[Tuple[float, float]]:
    """Closed-form weighted least squares of y ~ s*r + t; None when degenerate."""
    sw = float(w.sum())
    if not sw > 0:
        return None
    wr = w * r
    sr, sy = float(wr.sum()), float((w * y).sum())
    srr, sry = float((wr * r).sum()), float((wr * y).sum())     # (w r) r = w r r
    if anchor is not None and anchor.weight > 0:
        wa = anchor.weight * sw
        sw, sr, sy = sw + wa, sr + wa * anchor.r, sy + wa * anchor.y
        srr, sry = srr + wa * anchor.r * anchor.r, sry + wa * anchor.r * anchor.y
    mr, my = sr / sw, sy / sw
    var = srr - sw * mr * mr
    if not var > 1e-300:
        return None
    s = (sry - sw * mr * my) / var
    return float(s), float(my - s * mr)


def ransac_affine(r, y, tol, rng, iterations) -> Optional[Tuple[float, float]]:
    """Best two-point hypothesis (scale > 0) by inlier count, ``|s r + t - y| <= tol``."""
    n = r.size
    # One draw for both ends: the same numbers as two draws of ``iterations`` (RandomState's
    # bounded integers are drawn one by one from the stream).
    ij = rng.randint(0, n, 2 * iterations)
    i, j = ij[:iterations], ij[iterations:]
    dr = r[i] - r[j]
    with np.errstate(divide='ignore', invalid='ignore'):
        s = (y[i] - y[j]) / dr
        t = y[i] - s * r[i]
        good = np.isfinite(s) & np.isfinite(t) & (s > 0) & (np.abs(dr) > 1e-12)
    if not good.any():
        return None
    s, t = s[good], t[good]
    sub = slice(None) if n <= SCORE_SAMPLES else rng.randint(0, n, SCORE_SAMPLES)
    rs, ys, ts = r[sub], y[sub], tol[sub]
    # |s r + t - y| per hypothesis and sample, in place (one [hypotheses, samples] buffer).
    res = np.multiply.outer(s, rs)
    res += t[:, None]
    res -= ys[None, :]
    np.abs(res, out=res)
    # Inlier counts per hypothesis: OpenCV's row sums of the boolean bytes (2-4x faster
    # than counting along an axis in numpy).
    inside = (res <= ts[None, :]).view(np.uint8)
    best = int(np.argmax(cv2.reduce(inside, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S).ravel()))
    return float(s[best]), float(t[best])


def robust_affine(r, y, var, tol, rng, iterations: int, irls_iterations: int,
                  anchor: Optional[Anchor] = None, start=None) -> Optional[Fit]:
    """
    RANSAC + Tukey IRLS fit of ``y ~ s r + t``.

    :param r, y: float64 samples.
    :param var: per-sample noise variance of ``y`` (its scale is re-estimated: ``kappa``).
    :param tol: per-sample inlier tolerance on ``|s r + t - y|``.
    :param start: optional (s, t) used instead of RANSAC (e.g. a previous fit to refine).
    :returns: Fit, or None when no hypothesis with a positive scale exists.
    """
    if r.size < 2:
        return None
    st = start if start is not None else ransac_affine(r, y, tol, rng, iterations)
    if st is None:
        return None
    inl = _abs_residual(st, r, y) <= tol
    if inl.sum() < 2:
        return None
    inv_var = 1.0 / var
    inv_sd = np.sqrt(inv_var)
    w = inl * inv_var
    kappa = 1.0
    for _ in range(irls_iterations + 1):
        st2 = weighted_affine(r, y, w, anchor)
        if st2 is None or not st2[0] > 0:
            break
        st = st2
        e = _abs_residual(st, r, y)
        inl = e <= tol
        if not inl.any():
            break
        u = np.multiply(e, inv_sd, out=e)          # |standardised residual|
        kappa = max(MAD_TO_SIGMA * float(median(u[inl])), 1e-6)
        # Tukey's biweight (0 beyond c): (1 - min(u / (c kappa), 1)^2)^2 / var, in place.
        x = np.multiply(u, 1.0 / (TUKEY_C * kappa), out=u)
        np.minimum(x, 1.0, out=x)
        x *= x
        np.subtract(1.0, x, out=x)
        np.square(x, out=x)
        w = np.multiply(x, inv_var, out=x)
    return Fit(st[0], st[1], inl, kappa, w)


def _abs_residual(st, r, y):
    """|s r + t - y| (float64, the same operations in the same order, in one buffer)."""
    e = np.multiply(r, st[0])
    e += st[1]
    e -= y
    return np.abs(e, out=e)


__all__ = ['Anchor', 'Fit', 'median', 'percentile', 'robust_affine', 'ransac_affine',
           'weighted_affine']

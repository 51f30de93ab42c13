"""
Robust weighted fit of ``y ~ scale * r + shift`` on samples with a per-sample noise model.

RANSAC (two-point hypotheses, scale > 0) finds the inliers, then iteratively reweighted least
squares with Tukey's biweight on the standardised residuals ``(s r + t - y) / sqrt(var)``
refines the fit. An optional anchor (a pseudo-sample with a fixed total weight, e.g. the sky
at inverse depth 0) enters every least-squares step and is never down-weighted.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import numpy as np

TUKEY_C = 4.685        # 95 % efficiency under Gaussian noise
MAD_TO_SIGMA = 1.4826
SCORE_SAMPLES = 1024   # RANSAC scores hypotheses on at most this many samples


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
    Return ``np.median`` of a 1-D array without NaN (the same value), by one partition.

    Kept for speed: np.median's checks and dispatch cost 0.8 ms per frame over the 18 medians
    of the fit and the noise model, 3 % of the stage, which the stage's 10 % bound needs.
    """
    k = x.size // 2
    if x.size % 2:
        return np.partition(x, k)[k]
    part = np.partition(x, (k - 1, k))
    return (part[k - 1] + part[k]) / 2


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
    i = rng.randint(0, n, iterations)
    j = rng.randint(0, n, iterations)
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
    # |s r + t - y| per hypothesis and sample, in one [hypotheses, samples] buffer (three
    # temporaries of it cost 0.2 ms per frame).
    res = np.multiply.outer(s, rs)
    res += t[:, None]
    res -= ys[None, :]
    np.abs(res, out=res)
    best = int(np.argmax(np.count_nonzero(res <= ts[None, :], axis=1)))
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
        u = e * inv_sd                                # |standardised residual|
        kappa = max(MAD_TO_SIGMA * float(median(u[inl])), 1e-6)
        # Tukey's biweight (0 beyond c kappa), over the noise variance.
        w = (1.0 - np.minimum(u / (TUKEY_C * kappa), 1.0) ** 2) ** 2 * inv_var
    return Fit(st[0], st[1], inl, kappa, w)


def _abs_residual(st, r, y):
    """Return ``|s r + t - y|`` (float64)."""
    return np.abs(st[0] * r + st[1] - y)


__all__ = ['Anchor', 'Fit', 'median', 'robust_affine', 'ransac_affine', 'weighted_affine']

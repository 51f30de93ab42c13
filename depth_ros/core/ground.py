"""
The ground plane the stereo sees, and its horizon: where the sky can be.

A plane ``n . X = -h`` (``n`` its unit normal toward the camera, ``h`` the camera's height
above it) is, in inverse depth, an affine function of the pixel: ``1/z = a u + b v + c``
(``n . X = z n . r`` with ``r = ((u - cx)/fx, (v - cy)/fy, 1)``). The stereo's noise is
constant in inverse depth, so the plane is fitted there: RANSAC over three-sample hypotheses,
then least squares on the inliers, to the trusted stereo samples of the fit lattice. Its
normal is ``-h (a fx, b fy, c + a cx + b cy)``, ``h = 1 / |(a fx, b fy, c + a cx + b cy)|``.

The plane counts as ground when enough samples lie on it (``MIN_FRACTION`` of the lattice)
and its normal is within ``MAX_TILT_DEG`` of the camera's up axis (``-y`` in the optical frame,
REP 103): a wall, a ceiling or a table seen from the side is not ground. Its points are below
its horizon, the line ``a u + b v + c = 0`` where inverse depth reaches 0: the rays parallel
to the plane. Nothing on the plane or beyond it is sky; the sky is above that line, or, with
a crest ahead (the road falls away behind it), a little below it: ``sky_rows`` gives, per
column, the row above which a ray rises more than ``-margin`` degrees over the plane.

The plane locates the horizon, and MetricAligner bounds the far output by it (step 12, the
ground bound: below the horizon nothing is farther than the plane along its ray).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

MAX_TILT_DEG = 30.0        # the ground's normal is within this of the camera's up axis
MIN_FRACTION = 0.05        # ... and at least this fraction of the fit lattice lies on it
HYPOTHESES = 64            # RANSAC hypotheses (three samples each)
SCORE_SAMPLES = 256        # ... scored on this many samples
RELATIVE_TOLERANCE = 0.03  # an inlier is within 3 sigma of the stereo noise + 3 % of 1/z
# Fixed draws (the same stereo gives the same plane; no state, no generator per frame):
# uniform in [0, 1), scaled to the sample count.
_DRAWS = np.random.RandomState(12345).random_sample(3 * HYPOTHESES + SCORE_SAMPLES)


class Ground(NamedTuple):
    """A ground plane in inverse depth, ``1/z = a u + b v + c`` (pixels of the stereo size)."""

    a: float
    b: float
    c: float
    height_m: float          # the camera's height above it (m)
    tilt_deg: float          # its normal's angle from the camera's up axis
    inliers: int             # lattice samples on it


def fit_ground(u, v, y, tol, n_total, fx, fy, cx, cy) -> Optional[Ground]:
    """
    Fit the ground plane to trusted stereo samples; None when no ground-like plane holds.

    :param u, v: [n] float64 pixel columns and rows of the samples (stereo size).
    :param y: [n] float64 their stereo inverse depth (1/m, > 0).
    :param tol: [n] float64 or scalar: their inlier tolerance in inverse depth (1/m).
    :param n_total: the lattice's size (the samples are its trusted part).
    :param fx, fy, cx, cy: the camera's intrinsics at the stereo size (pixels).
    """
    n = y.size
    need = max(3, int(np.ceil(MIN_FRACTION * n_total)))
    if n < need:
        return None
    tol = np.asarray(tol, np.float64)
    if tol.shape != y.shape:
        tol = np.full(y.shape, float(tol))
    cos_max = np.cos(np.radians(MAX_TILT_DEG))
    idx = (_DRAWS[:3 * HYPOTHESES] * n).astype(np.intp).reshape(3, HYPOTHESES)
    pu, pv, py = u[idx], v[idx], y[idx]                       # [3, K] each
    # The plane through three points of (u, v, y): its normal is the cross product of two
    # edges; y = y0 - (nu (u - u0) + nv (v - v0)) / ny.
    eu, ev, ey = pu[1:] - pu[0], pv[1:] - pv[0], py[1:] - py[0]
    nu = ev[0] * ey[1] - ey[0] * ev[1]
    nv = ey[0] * eu[1] - eu[0] * ey[1]
    ny = eu[0] * ev[1] - ev[0] * eu[1]
    with np.errstate(divide='ignore', invalid='ignore'):
        a, b = -nu / ny, -nv / ny
        c = py[0] - a * pu[0] - b * pv[0]
        good = np.isfinite(a) & np.isfinite(b) & np.isfinite(c) & \
            _ground_like(a, b, c, fx, fy, cx, cy, cos_max)
    if not good.any():
        return None
    planes = np.stack([a[good], b[good], c[good]])            # [3, K']
    # The hypotheses scored on a subset (the best of them is refined on all samples).
    sub = (_DRAWS[3 * HYPOTHESES:] * n).astype(np.intp) if n > SCORE_SAMPLES else \
        np.arange(n)
    pred = np.stack([u[sub], v[sub], np.ones(sub.size)], axis=1).dot(planes)   # [S, K']
    resid = np.abs(pred - y[sub, None])
    coef = planes[:, int(np.argmax((resid <= tol[sub, None]).sum(axis=0)))]
    for step in range(3):       # least squares on the inliers, twice; then the inliers
        inl = (np.abs(y - (coef[0] * u + coef[1] * v + coef[2])) <= tol).astype(np.float64)
        count = int(inl.sum())
        if count < need:
            return None
        if step < 2:
            coef = _plane_lsq(u, v, y, inl)
            if coef is None:
                return None
    a, b, c = (float(x) for x in coef)
    if not _ground_like(a, b, c, fx, fy, cx, cy, cos_max):
        return None
    norm = np.sqrt((a * fx) ** 2 + (b * fy) ** 2 + (c + a * cx + b * cy) ** 2)
    tilt = float(np.degrees(np.arccos(min(1.0, b * fy / norm))))
    return Ground(a, b, c, float(1.0 / norm), tilt, count)


def _plane_lsq(u, v, y, w):
    """Least-squares ``y = a u + b v + c`` over the samples ``w`` (0 or 1), or None if singular."""
    # Centred normal equations from plain sums (dot products: no copies of the inliers).
    n = w.sum()
    wu, wv = w * u, w * v
    mu, mv, my = wu.sum() / n, wv.sum() / n, w.dot(y) / n
    suu, svv, suv = wu.dot(u) - n * mu * mu, wv.dot(v) - n * mv * mv, wu.dot(v) - n * mu * mv
    su, sv = wu.dot(y) - n * mu * my, wv.dot(y) - n * mv * my
    det = suu * svv - suv * suv
    if not det > 1e-12 * max(suu * svv, 1e-300):
        return None
    a = (svv * su - suv * sv) / det
    b = (suu * sv - suv * su) / det
    return a, b, my - a * mu - b * mv


def _ground_like(a, b, c, fx, fy, cx, cy, cos_max):
    """Whether each plane's normal is within the tilt of the up axis (bool array)."""
    # Normal -(a fx, b fy, c + a cx + b cy) / |.|; up is (0, -1, 0): cos = b fy / |.|.
    norm = np.sqrt((a * fx) ** 2 + (b * fy) ** 2 + (c + a * cx + b * cy) ** 2)
    return (b > 0) & (b * fy >= cos_max * norm)


def sky_rows(ground: Ground, margin_deg, cols, fx, fy, cx, cy):
    """
    Return, per column ``cols`` (pixels, stereo size), the row above which the sky may be.

    Rows (pixel centres) strictly less than the returned value (float64 [len(cols)]) see rays
    that rise more than ``-margin_deg`` over the plane; those at or past it see the plane
    itself or points below its horizon by more than the margin.
    """
    cols = np.asarray(cols, np.float64)
    a, b, c = ground.a, ground.b, ground.c
    v_h = -(a * cols + c) / b                                 # the horizon (1/z = 0)
    if margin_deg <= 0:
        return v_h
    # sin(elevation) = -h (a u + b v + c) / |r|: the margin's row at the horizon's |r|.
    r = np.sqrt(((cols - cx) / fx) ** 2 + ((v_h - cy) / fy) ** 2 + 1.0)
    return v_h + np.sin(np.radians(margin_deg)) * r / (ground.height_m * b)


__all__ = ['Ground', 'HYPOTHESES', 'MAX_TILT_DEG', 'MIN_FRACTION', 'fit_ground', 'sky_rows']

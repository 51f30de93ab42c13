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

import functools
from typing import NamedTuple, Optional

import cv2
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


# The ground contact (MetricAligner step 12, ``ground_contact``): constants of the detection,
# on the working grid (about CONTACT_GRID rows and columns: the relative map averaged over
# blocks of its pixels; its own pixels at the network's size).
CONTACT_GRID = (360, 320)
CONTACT_FLAT = 0.35        # |slope ratio| below this: a vertical surface (two rows in a row)
CONTACT_GROUND = (0.7, 1.4)    # slope ratio in this range: the ground (two rows in a row) ...
CONTACT_RATIO = (0.3, 2.0)     # ... whose mono / the plane's inverse depth is in this range
CONTACT_GAP = 10           # at most this many rows between the face's and the ground's rows
CONTACT_TOLERANCE = 0.3    # the face: mono within this (relative) of its level at the contact
CONTACT_JUMP = 0.15        # face's mono / plane at most this above the ground's below
# The contact's 1 sigma, in grid rows of the plane's slope: on development road scenes 10-29,
# 68 % of the set pixels' errors (ground truth within 80 m) were within 1.33 rows' worth,
# 1.16 times (core.alignment.SIGMA_CALIBRATION, applied to every reported sigma) 1.15.
CONTACT_SIGMA_ROWS = 1.15


def ground_contact(rel, scale, shift, sky_threshold, ground: Ground, shape, y_lo, y_hi):
    """
    Return, per output column, the vertical face standing on the ground beyond the stereo.

    An object standing on the ground touches it at its lowest row: every pixel of its
    vertical face above is at about the plane's depth at that row (the stixel model of
    driving perception). In each column of the aligned mono (``m = scale * rel + shift``,
    inverse depth; the network's compression of the far range changes its values, hardly
    its shape), the slope ratio ``s = (m[i+1] - m[i-1]) / (plane[i+1] - plane[i-1])`` is about
    1 on the ground and 0 on a vertical face. The network blurs the contact, and a face
    biased against the road adds a step there, which shifts where ``s`` crosses 1/2 by the
    step over the plane's slope; the blurred transition is symmetric about the contact, so
    the contact is the midpoint between the face's lowest flat rows (``|s| <
    CONTACT_FLAT``, two rows) and the ground's highest rows below (``s`` within
    ``CONTACT_GROUND`` and the mono within ``CONTACT_RATIO`` of the plane, two rows), at
    most ``CONTACT_GAP`` rows apart, with nothing flat or ground-like between them. Of a
    column's contacts where the plane's inverse depth lies in ``[y_lo, y_hi]``, the lowest
    (nearest) is taken. The face is the rows above the contact whose mono stays within
    ``CONTACT_TOLERANCE`` of its level at its lowest flat row (a depth jump, a sky-like or
    an unknown value ends it); its level must be within ``CONTACT_RATIO`` of the plane's at
    the contact, and its ratio to the plane's there at most ``CONTACT_JUMP`` above the
    ground's mono / plane ratio at the ground's highest rows: at a true contact the face's
    foot and the ground there are one point, while under an overhang (a trailer, a barrier
    above the road) the road seen below is farther than the face, and its "contact" would
    push the face away.

    :param rel: [hr, wr] float32 relative disparity (NaN unknown), any size with the
        output's aspect ratio; ``sky_threshold``: relative values at or below it are
        sky-like (None: no sky rule).
    :param scale, shift: the frame's affine (``m = scale * rel + shift``, 1/m).
    :param ground: the plane, in pixels of the output ``shape`` (H, W).
    :param y_lo, y_hi: the plane's inverse depth (1/m) at a contact lies in this range.
    :returns: (top, bottom, y, sigma): float64 [W] each, output rows ``top <= v <= bottom``
        of each output column take inverse depth ``y`` (the plane's at the contact row
        ``bottom``; NaN in columns without a contact); ``sigma`` the contact's 1 sigma in
        inverse depth (1/m; ``CONTACT_SIGMA_ROWS`` grid rows of the plane's slope).
    """
    H, W = shape
    hr, wr = rel.shape
    fr, fc = max(1, hr // CONTACT_GRID[0]), max(1, wr // CONTACT_GRID[1])
    h, w = hr // fr, wr // fc
    sy, sx = H * fr / float(hr), W * fc / float(wr)      # output pixels per grid pixel
    a, b, c = ground.a, ground.b, ground.c
    sigma = CONTACT_SIGMA_ROWS * b * sy
    # The grid rows where the plane lies in [y_lo, y_hi] at some column (a grid row's centre
    # is the output row (i + 0.5) sy - 0.5), and the rows around them the test reads.
    v_far = min((y_lo - a * 0.0 - c) / b, (y_lo - a * (W - 1.0) - c) / b)
    v_near = max((y_hi - a * 0.0 - c) / b, (y_hi - a * (W - 1.0) - c) / b)
    i0 = max(int(np.floor((v_far + 0.5) / sy - 0.5)), 0)
    i1 = min(int(np.ceil((v_near + 0.5) / sy - 0.5)), h - 1)
    r0 = max(i0 - CONTACT_GAP - 2, 1)
    r1 = min(i1 + CONTACT_GAP + 3, h - 1)                   # rows r0 .. r1 - 1 have s
    found = None
    if r1 - r0 >= 4 and i1 >= i0:
        axes = _grid_axes(h, w, W, sy, sx)
        with np.errstate(invalid='ignore', divide='ignore'):   # NaN (unknown) compares False
            found = _contacts(rel, np.float32(scale), np.float32(shift), sky_threshold, ground,
                              (fr, fc, w, sy, axes), (i0, i1, r0, r1), y_lo, y_hi)
    if found is None:
        nan = np.full(W, np.nan)
        return nan, nan, nan, sigma
    # Per grid column, then per output column (its grid column); y is the plane's at the
    # contact in each (NaN where none).
    top_g, bottom_g = found
    oc, out_cols = axes[2], axes[3]
    top, bottom = top_g[oc], bottom_g[oc]
    y = a * out_cols + b * bottom + c
    return top, bottom, y, sigma


# Row numbers 1 .. (int16: the working grid has fewer than 2 * CONTACT_GRID[0] rows).
_ROW_NUMBERS = np.arange(1, 2 ** 15, dtype=np.int16)
_ROW_NUMBERS.setflags(write=False)


@functools.lru_cache(maxsize=8)
def _grid_axes(h, w, W, sy, sx):
    """
    Return the working grid's axes for its size and the output's (cached; read-only arrays).

    (cols, rows, oc, out_cols): its columns' and rows' centres in output pixels, the grid
    column of each output column, the output columns (int64).
    """
    cols = (np.arange(w) + 0.5) * sx - 0.5
    rows = (np.arange(h) + 0.5) * sy - 0.5
    out_cols = np.arange(W)
    oc = np.minimum(out_cols // int(round(sx)), w - 1) if sx == round(sx) else \
        np.clip(np.rint((out_cols + 0.5) / sx - 0.5), 0, w - 1).astype(np.intp)
    for x in (cols, rows, oc, out_cols):
        x.setflags(write=False)
    return cols, rows, oc, out_cols


@functools.lru_cache(maxsize=4)
def _window(rows):
    """Return a dilation's kernel: ``rows`` rows, one column (cached, read-only)."""
    k = np.ones((rows, 1), np.uint8)
    k.setflags(write=False)
    return k


def _contacts(rel, scale, shift, sky_threshold, ground, grid, band, y_lo, y_hi):
    """
    Return ``ground_contact``'s faces per grid column, or None where no column has one.

    (top, bottom): float64 [w] each, the face's first row and its contact row in output rows
    (NaN where none).

    :param scale, shift: float32; ``grid``: (fr, fc, w, sy, ``_grid_axes``); ``band``: (i0,
        i1, r0, r1).
    """
    fr, fc, w, sy, (cols, vrows, _, _) = grid
    i0, i1, r0, r1 = band
    a, b, c = ground.a, ground.b, ground.c
    # The mono on grid rows r0 - 1 .. r1 (block means).
    part = rel[(r0 - 1) * fr:(r1 + 1) * fr, :w * fc]
    if fr > 1 or fc > 1:
        part = cv2.resize(part, (w, r1 - r0 + 2), interpolation=cv2.INTER_AREA)
    m = part * scale                                        # [r1 - r0 + 2, w] 1/m
    m += shift
    s = np.subtract(m[2:], m[:-2])                          # rows r0 .. r1 - 1
    s *= np.float32(1.0 / (2.0 * b * sy))
    yp = np.add(a * cols[None, :], b * vrows[r0:r1, None])
    yp += c
    ratio = np.divide(m[1:-1], yp.astype(np.float32))
    # The face: flat, finite, not sky-like; the ground: the plane's slope, near its level.
    flat = np.abs(s) < CONTACT_FLAT
    flat &= np.isfinite(part[1:-1])
    if sky_threshold is not None:
        flat &= part[1:-1] > sky_threshold
    grd = s >= CONTACT_GROUND[0]
    grd &= s <= CONTACT_GROUND[1]
    grd &= ratio >= CONTACT_RATIO[0]
    grd &= ratio <= CONTACT_RATIO[1]
    flat[1:] &= flat[:-1]           # this row and the one above: the face's lowest rows
    grd[:-1] &= grd[1:]             # this row and the one below: the ground's highest rows
    flat[0] = False
    grd[-1] = False
    # Each column's lowest contact, its row (f + g) / 2 within the plane's band.
    found = _lowest_contacts(flat, grd, 2 * (i0 - r0), 2 * (i1 - r0))
    if found is None:
        return None
    j, gi, fi = found                                       # rows (from r0): ground, face
    vc = ((fi + gi) * 0.5 + r0 + 0.5) * sy - 0.5            # the contact, output rows
    yc = a * cols[j] + b * vc + c
    # The face's level (its lowest flat row), plausibly the plane's at the contact, and
    # continuous with the ground below: at most CONTACT_JUMP above the plane's there times
    # the ground's mono / plane ratio at its highest row (the same point at a true contact;
    # under an overhang the road seen below is farther than the face: a jump).
    ref = m[fi + 1, j]
    keep = (ref >= CONTACT_RATIO[0] * yc) & (ref <= CONTACT_RATIO[1] * yc) & \
        (yc >= y_lo) & (yc <= y_hi)
    keep &= ref <= (1.0 + CONTACT_JUMP) * yc * ratio[gi, j]
    if not keep.any():
        return None
    j, ref, vc, ff = j[keep], ref[keep], vc[keep], fi[keep] + r0
    top_g, bottom_g = np.full(w, np.nan), np.full(w, np.nan)
    top_g[j] = _face_tops(rel, scale, shift, sky_threshold, fr, fc, j, ref, ff) * sy
    bottom_g[j] = vc
    return top_g, bottom_g


def _lowest_contacts(flat, grd, lo, hi):
    """
    Return each column's lowest contact (j, g, f): intp columns, ground and face rows; or None.

    A contact is a ground row g (``grd``) under a face row f, the nearest ``flat`` row above
    it, at most ``CONTACT_GAP`` rows above and with no ground row in f .. g - 1; ``lo <= f +
    g <= hi``.

    :param flat, grd: [n, w] bool: the faces' lowest rows, the ground's highest rows.
    """
    # Row numbers + 1 (0: none; at most 2 * CONTACT_GRID[0] rows: 16 bits) of the flat / ground
    # rows, and for each row the nearest of them at or above it within CONTACT_GAP rows (a
    # running maximum over CONTACT_GAP rows, a dilation): a face's row f more than
    # CONTACT_GAP rows above a ground row g cannot make a contact, and a ground row between
    # them lies within those rows.
    idx1 = _ROW_NUMBERS[:flat.shape[0], None]
    window = _window(CONTACT_GAP)
    near_flat = cv2.dilate(np.multiply(flat, idx1), window, anchor=(0, CONTACT_GAP - 1),
                           borderType=cv2.BORDER_CONSTANT, borderValue=0)
    near_grd = cv2.dilate(np.multiply(grd, idx1), window, anchor=(0, CONTACT_GAP - 1),
                          borderType=cv2.BORDER_CONSTANT, borderValue=0)
    # At ground row g = 1 .., f + 1 = f1 (0: none) and g + 1 = g1.
    f1 = near_flat[:-1]
    g1 = idx1[1:]
    cand = near_grd[:-1] < f1                               # f1 > 0 too
    cand &= grd[1:]
    twice = np.add(f1, g1)                                  # f + g + 2
    cand &= twice >= lo + 2
    cand &= twice <= hi + 2
    low1 = np.multiply(cand, g1).max(axis=0)                # the lowest contact's g + 1 (0: none)
    j = np.nonzero(low1)[0]
    if j.size == 0:
        return None
    g = low1[j].astype(np.intp) - 1
    return j, g, f1[g - 1, j].astype(np.intp) - 1


def _face_tops(rel, scale, shift, sky_threshold, fr, fc, j, ref, ff):
    """
    Return the faces' first grid rows (int16) in grid columns ``j``.

    Up from their lowest flat rows ``ff`` while the mono stays within ``CONTACT_TOLERANCE``
    of ``ref``, on the relative map's pixel at each grid pixel's centre (no block means).
    """
    pr = rel[fr // 2:(ff.max() + 1) * fr:fr, j * fc + fc // 2]       # [ff.max() + 1, len(j)]
    rows = pr * scale
    rows += shift
    near = rows >= ref * (1.0 - CONTACT_TOLERANCE)          # NaN compares False
    near &= rows <= ref * (1.0 + CONTACT_TOLERANCE)
    if sky_threshold is not None:
        near &= pr > sky_threshold
    # One below the highest break under the lowest flat row (0: none).
    ridx1 = _ROW_NUMBERS[:rows.shape[0], None]
    breaks = np.logical_not(near, out=near)
    breaks &= ridx1 <= ff.astype(np.int16)
    return np.multiply(breaks, ridx1).max(axis=0)


__all__ = ['Ground', 'HYPOTHESES', 'MAX_TILT_DEG', 'MIN_FRACTION', 'fit_ground', 'ground_contact',
           'sky_rows']

"""
Depth discontinuities for edge-clean point clouds.

A point is on the far side of a jump when one of its 8 neighbours is nearer by more than a
factor: ``z > factor * min(z_neighbour)``. Interpolated depth across a boundary (flying points
between foreground and background) is such a point at every step of the ramp; on a sharp edge
only the background pixel next to it goes, and the foreground (the obstacle) stays.

The test runs on inverse depth with a 3x3 dilation (the nearest neighbour has the largest
inverse depth); invalid points (0, NaN, out of range) have inverse depth 0 and never count
as a neighbour.
"""
from __future__ import annotations

import cv2
import numpy as np

_KERNEL = np.ones((3, 3), np.uint8)
# OpenCV 4.5's THRESH_TOZERO turns NaN into 0 (5.0 keeps it): after ``_range`` a patchNaNs
# is then redundant.
TOZERO_ZEROES_NAN = bool(cv2.threshold(np.full((2, 40), np.nan, np.float32), 0.0, 0.0,
                                       cv2.THRESH_TOZERO)[1].max() == 0.0)


def _range(src, dst, lo, hi):
    """
    Set dst = src inside (lo, hi], else 0 (NaN stays NaN on OpenCV 5, is 0 on 4.5).

    ``hi`` None: no upper bound, and +inf stays +inf (the cloud's z / z makes it NaN as it
    makes 0 NaN, and its inverse depth is 0 as 0's is: one pass less than a bound).
    ``src`` may be a strided view (the cloud's stride): copied into ``dst`` first.
    """
    if src.strides[-1] != src.itemsize:
        np.copyto(dst, src)
        src = dst
    if hi is not None:
        cv2.threshold(src, hi, 0.0, cv2.THRESH_TOZERO_INV, dst=dst)
        src = dst
    cv2.threshold(src, lo, 0.0, cv2.THRESH_TOZERO, dst=dst)
    return dst


def far_side_of_jumps(z, r0, r1, lo, hi, factor, buf):
    """
    Range-tested depth of rows [r0, r1) of ``z`` with far-side-of-jump points set to 0.

    Rows r0 - 1 and r1 are read for the neighbours. ``buf`` holds ``ext``, ``inv``, ``mx``
    (strip rows + 2) and ``edge`` (strip rows) scratch planes; ``q`` is used as scratch.
    Returns a view of ``buf.ext`` (contiguous rows).
    """
    h = z.shape[0]
    e0, e1 = max(r0 - 1, 0), min(r1 + 1, h)
    ne, n, top = e1 - e0, r1 - r0, r0 - e0
    ext = _range(z[e0:e1], buf.ext[:ne], lo, hi)
    if not TOZERO_ZEROES_NAN:
        cv2.patchNaNs(ext, 0.0)
    inv = buf.inv[:ne]
    with np.errstate(divide='ignore'):
        np.divide(np.float32(1.0), ext, out=inv)
    cv2.threshold(inv, 1e30, 0.0, cv2.THRESH_TOZERO_INV, dst=inv)    # 1/0 = inf -> 0
    mx = cv2.dilate(inv, _KERNEL, dst=buf.mx[:ne])
    # numpy, not cv2.multiply: OpenCV reads a 4 x 1 plane next to a number as a scalar.
    scaled = np.multiply(inv[top:top + n], np.float32(factor), out=buf.q[:n])
    edge = cv2.compare(scaled, mx[top:top + n], cv2.CMP_LT, dst=buf.edge[:n])
    out = ext[top:top + n]
    cv2.subtract(out, out, dst=out, mask=edge)
    return out


def jump_mask(depth: np.ndarray, threshold: float) -> np.ndarray:
    """
    Bool [H, W]: pixels whose depth exceeds a neighbour's by more than ``1 + threshold``.

    A reference implementation of the cloud's edge test for one image (numpy, not tuned).
    """
    with np.errstate(invalid='ignore'):         # NaN > 0 is False, as meant
        z = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float64)
    with np.errstate(divide='ignore'):
        inv = np.where(z > 0, 1.0 / np.where(z > 0, z, 1.0), 0.0)
    p = np.pad(inv, 1, mode='constant')
    h, w = z.shape
    mx = np.zeros_like(inv)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if dy == 1 and dx == 1:
                continue
            mx = np.maximum(mx, p[dy:dy + h, dx:dx + w])
    return (z > 0) & (inv * (1.0 + threshold) < mx)


__all__ = ['far_side_of_jumps', 'jump_mask']

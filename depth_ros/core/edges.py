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


def not_far_side(z, r0, r1, lo, hi, factor, buf):
    """
    Return the points of rows [r0, r1) of ``z`` that are in range and not behind a jump.

    A uint8 mask [r1 - r0, W] (a view of ``buf.keep``): 255 where ``lo <= z <= hi`` (NaN
    fails) and no 8-neighbour in range is nearer by more than ``factor``. Rows r0 - 1 and r1 are
    read for the neighbours. ``buf`` holds the strip planes ``valid``, ``ext``, ``inv``, ``mx``
    (strip rows + 2) and ``q``, ``keep`` (strip rows).
    """
    h = z.shape[0]
    e0, e1 = max(r0 - 1, 0), min(r1 + 1, h)
    ne, n, top = e1 - e0, r1 - r0, r0 - e0
    valid = cv2.inRange(z[e0:e1], lo, hi, dst=buf.valid[:ne])      # [ne, W] 255: in range
    ext = buf.ext[:ne]                       # [ne, W] float32 metres, 0 out of range
    ext.fill(0.0)
    cv2.copyTo(z[e0:e1], valid, ext)
    inv = buf.inv[:ne]                       # [ne, W] float32 1/m, 0 out of range
    with np.errstate(divide='ignore'):
        np.divide(np.float32(1.0), ext, out=inv)
    cv2.threshold(inv, 1e30, 0.0, cv2.THRESH_TOZERO_INV, dst=inv)    # 1/0 = inf -> 0
    mx = cv2.dilate(inv, _KERNEL, dst=buf.mx[:ne])   # the nearest neighbour's inverse depth
    # numpy, not cv2.multiply: OpenCV reads a 4 x 1 plane next to a number as a scalar.
    scaled = np.multiply(inv[top:top + n], np.float32(factor), out=buf.q[:n])
    keep = cv2.compare(scaled, mx[top:top + n], cv2.CMP_GE, dst=buf.keep[:n])
    return cv2.bitwise_and(keep, valid[top:top + n], dst=keep)


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


__all__ = ['jump_mask', 'not_far_side']

"""False-colour display of depth, disparity or any scalar image (BGR uint8, for cv2 and ROS)."""
from __future__ import annotations

import threading
from typing import Optional, Sequence, Tuple

import cv2
from depth_ros.core.checks import check_image
from depth_ros.util import check_number_as
import numpy as np

# The automatic range uses these percentiles of the finite values, on a subsample: one stray
# pixel must not wash out the picture, and a full-frame percentile costs tens of ms.
AUTO_PERCENTILES = (2.0, 98.0)
_AUTO_SAMPLES = 20000


class _Planes(threading.local):
    """Planes of one image size, allocated once per thread (two nodes may share a process)."""

    def __init__(self):
        self.shape = None

    def get(self, shape):
        if shape != self.shape:
            self.bgra = np.empty(shape, np.int32)       # B, G, R, 0 bytes per pixel ...
            # ... and, before them, the clipped values: one plane less streams through the
            # cache (0.25 ms of the stage at 1280x720).
            self.clipped = self.bgra.view(np.float32)
            self.gray = np.empty(shape, np.uint8)
            self.nan = np.empty(shape, bool)
            self.shape = shape
        return self


_PLANES = _Planes()
_TABLES = {}


def _table(cmap):
    """
    Return the lookup table of an OpenCV colour map as [1, 256] int32.

    Each entry holds the bytes B, G, R, 0 of one colour (one 8u -> 32s LUT gives BGRA
    pixels, a cvtColor drops A).
    """
    table = _TABLES.get(cmap)
    if table is None:
        ramp = np.arange(256, dtype=np.uint8).reshape(1, 256)
        lut = cv2.applyColorMap(ramp, cmap)[0]            # [256, 3] BGR
        bgra = np.zeros((256, 4), np.uint8)
        bgra[:, :3] = lut
        table = _TABLES[cmap] = bgra.view(np.int32).reshape(1, 256).copy()
    return table


def auto_range(values: np.ndarray,
               percentiles: Tuple[float, float] = AUTO_PERCENTILES) -> Tuple[float, float]:
    """(vmin, vmax) from percentiles of the finite values (fixed subsample); (0, 1) if none."""
    v = np.asarray(values)
    step = max(1, int(np.sqrt(v.size / float(_AUTO_SAMPLES))))
    sub = v[::step, ::step] if v.ndim == 2 else v.ravel()[::step * step]
    sub = sub[np.isfinite(sub)]
    if sub.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(sub, percentiles)
    return float(lo), float(hi)


def colorize(values: np.ndarray, vmin: Optional[float] = None, vmax: Optional[float] = None,
             invalid_color: Sequence[int] = (0, 0, 0), cmap: int = cv2.COLORMAP_TURBO,
             reverse: bool = False) -> np.ndarray:
    """
    [H, W] scalar image -> [H, W, 3] uint8 BGR through an OpenCV colour map.

    :param values: [H, W] float or integer image (depth, disparity, uncertainty ...).
    :param vmin, vmax: display range; values outside are clipped to the end colours (so +inf
        depth, "too far", shows as the far colour). None: the 2nd / 98th percentile.
    :param invalid_color: BGR colour of NaN pixels.
    :param cmap: an OpenCV COLORMAP_* constant (default TURBO: blue low, red high).
    :param reverse: flip the map, e.g. for depth so that near is red.
    :returns: a new BGR uint8 image.
    """
    check_image('values', values)
    if values.dtype.kind not in 'fiub':
        raise ValueError('`values` must be a real-valued image, got dtype {}'.format(
            values.dtype))
    try:
        colour = tuple(int(c) for c in invalid_color)
    except (TypeError, ValueError):
        colour = ()
    if len(colour) != 3 or not all(0 <= c <= 255 for c in colour):
        raise ValueError('`invalid_color` must be 3 integers in [0, 255] (B, G, R), got '
                         '{!r}'.format(invalid_color))
    vmin, vmax = (check_number_as('`{name}` must be a finite number or None, got {value!r}',
                                  name, value, allow_none=True)
                  for name, value in (('vmin', vmin), ('vmax', vmax)))
    if vmin is None or vmax is None:
        lo, hi = auto_range(values)
        vmin = lo if vmin is None else vmin
        vmax = hi if vmax is None else vmax
    vmin, vmax = float(vmin), float(vmax)
    if vmax < vmin:
        raise ValueError('`vmax` ({!r}) must be >= `vmin` ({!r})'.format(vmax, vmin))
    alpha = 255.0 / (vmax - vmin if vmax > vmin else 1.0)
    v = values if values.dtype == np.float32 else values.astype(np.float32)
    planes = _PLANES.get(values.shape)
    clipped, total = _clip(v, vmin, vmax, reverse, planes.clipped)
    if reverse:
        gray = cv2.convertScaleAbs(clipped, dst=planes.gray, alpha=-alpha, beta=vmax * alpha)
    else:
        gray = cv2.convertScaleAbs(clipped, dst=planes.gray, alpha=alpha, beta=-vmin * alpha)
    # applyColorMap's pixels, by one LUT of packed BGRA entries and a BGRA -> BGR conversion:
    # it saves 6 % of the stage with OpenCV 4.5.4 (the Jetson's), where applyColorMap is 3x
    # slower.
    cv2.LUT(gray, _table(cmap), dst=planes.bgra)
    bgra = planes.bgra.view(np.uint8).reshape(values.shape + (4,))         # [H, W, 4] uint8
    out = cv2.cvtColor(bgra, cv2.COLOR_BGRA2BGR)                          # [H, W, 3] uint8
    if total != total:
        nan = np.isnan(v, out=planes.nan)
        out[nan] = colour
    return out


def _clip(v, vmin, vmax, reverse, out):
    """
    Return ``v`` clipped to [vmin, vmax] (in ``out``) and the sum of the values capped at vmax.

    Clipped first, so that the scaled values lie in [0, 255] (+inf depth, "too far", takes the
    far colour); NaN is painted over at the end, whatever OpenCV made of it. The sum is NaN
    exactly when a value is NaN.
    """
    if v.size <= 4:
        # OpenCV reads an array of 1 or 4 values as a scalar: those take np.clip.
        return np.clip(v, vmin, vmax, out=out), float(np.sum(v, dtype=np.float64))
    # cv2, not np.clip: the Jetson's numpy 1.17 clips 2.5x slower (5 % of the stage).
    # THRESH_TRUNC caps at vmax and keeps NaN (cv2.min makes NaN vmax on OpenCV 4.5).
    clipped = cv2.threshold(v, vmax, 0.0, cv2.THRESH_TRUNC, dst=out)[1]
    total = cv2.sumElems(clipped)[0]
    if not (reverse and _saturates_below(total, v.size, vmin, vmax)):
        cv2.max(clipped, vmin, dst=clipped)
    return clipped, total


def _saturates_below(total, n, vmin, vmax):
    """
    Tell whether a reversed map needs no lift to vmin (its values are already <= vmax).

    Below vmin, ``alpha (vmax - v)`` exceeds 255 and convertScaleAbs saturates it to 255, the
    colour of vmin itself, as long as it stays far inside the int range and v is finite. The
    sum ``total`` of the n values bounds the smallest: it is >= ``total - (n - 1) vmax``. A
    depth map (no -inf, no huge negative value) then skips one pass over the image.
    """
    if not np.isfinite(total) or vmax <= vmin:
        return False
    smallest = total - (n - 1) * vmax
    return 255.0 / (vmax - vmin) * (vmax - smallest) < 2.0 ** 30


__all__ = ['AUTO_PERCENTILES', 'auto_range', 'colorize']

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


class _Scratch(threading.local):
    def __init__(self):
        self.shape = None

    def get(self, shape):
        if shape != self.shape:
            # One plane for the clipped values and, after them, the packed B, G, R, 0 bytes
            # per pixel: a frame's working set streams one plane less through the cache.
            self.bgra = np.empty(shape, np.int32)
            self.clipped = self.bgra.view(np.float32)
            self.gray = np.empty(shape, np.uint8)
            self.shape = shape
        return self


_TABLES = {}


def _table(cmap):
    """
    Return the lookup table of an OpenCV colour map as [1, 256] int32.

    Each entry holds the bytes
    B, G, R, 0 of one colour (one 8u -> 32s LUT gives BGRA pixels, a cvtColor drops A).
    """
    table = _TABLES.get(cmap)
    if table is None:
        ramp = np.arange(256, dtype=np.uint8).reshape(1, 256)
        lut = cv2.applyColorMap(ramp, cmap)[0]            # [256, 3] BGR
        bgra = np.zeros((256, 4), np.uint8)
        bgra[:, :3] = lut
        table = _TABLES[cmap] = bgra.view(np.int32).reshape(1, 256).copy()
    return table


_SCRATCH = _Scratch()


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
    span = vmax - vmin if vmax > vmin else 1.0
    buf = _SCRATCH.get(values.shape)
    v = values if values.dtype == np.float32 else values.astype(np.float32)
    # Clip first so the scaled values lie in [0, 255] and convertScaleAbs's abs is a no-op;
    # NaN passes the clip and becomes 0 there, so it is repainted below.
    # cv2 rather than np.clip: several times faster on the Jetson's numpy 1.17. TRUNC caps at
    # vmax (+inf too), max() lifts to vmin (-inf too); NaN stays NaN through both.
    cv2.threshold(v, vmax, 0.0, cv2.THRESH_TRUNC, dst=buf.clipped)
    alpha = 255.0 / span
    # After TRUNC the sum is NaN iff a value is NaN, -inf iff one is -inf (and no NaN).
    total = cv2.sumElems(buf.clipped)[0]
    if not _lift_is_redundant(reverse and vmax > vmin, total, values.size, vmax, alpha):
        cv2.max(buf.clipped, vmin, dst=buf.clipped)
    if reverse:
        cv2.convertScaleAbs(buf.clipped, buf.gray, -alpha, vmax * alpha)
    else:
        cv2.convertScaleAbs(buf.clipped, buf.gray, alpha, -vmin * alpha)
    # One 8u -> 32s LUT (a BGRA pixel per entry) and a BGRA -> BGR conversion give
    # applyColorMap's exact result 3-8x faster (OpenCV 5.0 / 4.5); three 1-channel LUTs
    # and a merge took 2.5x as long.
    cv2.LUT(buf.gray, _table(cmap), dst=buf.bgra)
    out = cv2.cvtColor(buf.bgra.view(np.uint8).reshape(values.shape + (4,)),
                       cv2.COLOR_BGRA2BGR, dst=np.empty(values.shape + (3,), np.uint8))
    if total != total:
        # np.isnan, not cv2.compare(v, v, CMP_NE): OpenCV answers that for the same array
        # without looking at the values (no NaN found, beyond a few pixels).
        out[np.isnan(v)] = colour
    return out


def _lift_is_redundant(reverse, total, n, vmax, alpha):
    """
    Tell whether ``max(values, vmin)`` changes no pixel of a reversed map with vmax > vmin.

    There
    every value below vmin saturates to 255 in convertScaleAbs as vmin itself does (alpha
    (vmax - vmin) = 255), unless ``alpha (vmax - v)`` leaves the int range (or v is -inf or
    NaN). Every value is <= vmax after TRUNC, so
    the smallest is >= ``total - (n - 1) vmax``: the sum bounds it without another pass.
    """
    if not reverse or not np.isfinite(total):
        return False
    smallest = total - (n - 1) * float(vmax)
    return alpha * (vmax - smallest) < 2.0 ** 30


__all__ = ['AUTO_PERCENTILES', 'auto_range', 'colorize']

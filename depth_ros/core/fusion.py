"""
Per-pixel inverse-variance fusion of stereo and aligned mono, in inverse depth.

Noise models (inverse depth ``y = 1 / z``, 1 sigma):

* stereo: ``sigma_z = z^2 sigma_d / (f B)`` is, in inverse depth, the constant
  ``sigma_s = sigma_d / (f B)`` (disparity noise ``sigma_d`` in px, focal ``f`` in px, baseline
  ``B`` in m), times ``1 + gain * (c - 1) / 99`` for a ZED confidence ``c`` (1..100);
* aligned mono: ``sigma_m = rho * y``, a relative error ``rho`` (a map) estimated per frame
  from the fit residuals after the local correction, larger at the mono's edges and where
  the correction had little stereo support.

Where stereo is trusted and consistent with the mono (``(y_s - y_m)^2 <= outlier_sigma^2
(sigma_m^2 + sigma_s^2)``), ``y = y_m + k (y_s - y_m)`` with ``k = sigma_m^2 / (sigma_m^2 +
sigma_s^2)``; elsewhere ``y = y_m``. The fused variance is ``sigma_m^2 (1 - k)``. With a
``consistency`` band the test is also capped at ``(consistency y + 2 sigma_s)^2``; stereo
inside its trusted region (``interior_stereo``), in a frame with few isolated outliers, is
tested against a wider band and more sigmas.

The variances are smooth (the mono's from its low-resolution map, the stereo's from the
confidence), so ``k`` and the gate's bound, with its consistency cap from the mono sampled at
the same size, are computed at the statistics size and upsampled; the difference, the gate
and the blend are per pixel. The gate is a uint8 mask (255: fused),
and the blend a masked add of ``k d`` in place.
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

_KERNEL = np.ones((3, 3), np.uint8)
# Interior stereo (its 3 x 3 neighbourhood on the variances' grid trusted) is tested against
# INTERIOR_BOUND_GAIN times the gate's bound (4: twice the band, twice the sigmas), in a frame
# whose interior stereo has few isolated outliers (at most INTERIOR_MAX_OUTLIERS of it further
# than the band from the median of its 3 x 3 neighbourhood, on every other sample of the grid
# each way): a confident mono then vetoes less of the stereo that is right (a biased object, a
# missing thin structure), and a frame with many gross outliers keeps the narrow gate.
# Development scenes: Middlebury 0.0287 -> 0.0277, indoor 0.0185 -> 0.0180, road unchanged
# (docs/accuracy-findings.md, phase F).
INTERIOR_BOUND_GAIN = 4.0
INTERIOR_MAX_OUTLIERS = 0.05
# ``Fusion.fuse(interior=...)``'s default: the interior stereo is found there.
FIND_INTERIOR = 'find'


def interior_stereo(stereo_inv_small, trusted_small, consistency):
    """
    Return where the stereo is interior ([h, w] uint8, 255), or None in a frame of many outliers.

    :param stereo_inv_small: [h, w] float32 stereo inverse depth on a grid (0 untrusted).
    :param trusted_small: [h, w] uint8 where it is trusted (nonzero).
    :param consistency: the relative band of an isolated outlier against its neighbours.
    """
    # The rate on every other sample of the grid each way (a quarter of the time).
    ys = np.ascontiguousarray(stereo_inv_small[::2, ::2])
    inner = cv2.erode(np.ascontiguousarray(trusted_small[::2, ::2]), _KERNEL)
    n = cv2.countNonZero(inner)
    if n == 0:
        return None
    med = cv2.medianBlur(ys, 3)
    far = cv2.compare(cv2.absdiff(ys, med), cv2.multiply(med, consistency), cv2.CMP_GT)
    if cv2.countNonZero(cv2.bitwise_and(far, inner)) > INTERIOR_MAX_OUTLIERS * n:
        return None
    return cv2.erode(trusted_small, _KERNEL)


def stereo_inverse_sigma(disparity_noise_px: float, focal_px: float, baseline_m: float) -> float:
    """Inverse-depth noise (1/m, 1 sigma) of stereo: sigma_d / (f B)."""
    return float(disparity_noise_px) / (float(focal_px) * float(baseline_m))


def stereo_variance(sigma_s: float, confidence: Optional[np.ndarray], gain: float):
    """Stereo inverse-depth variance: a number, or a plane from the ZED confidence."""
    if confidence is None or gain <= 0:
        return sigma_s * sigma_s
    # sigma_s (1 + gain (c - 1) / 99), squared, in one buffer (1/m^2).
    s = confidence - 1.0
    s *= gain
    s /= 99.0
    s += 1.0
    s *= sigma_s
    s *= s
    return s


def _finite(x):
    """Whether every value of a float32 array is finite (an empty one: True)."""
    # A sum is finite exactly when every value is (float32 values cannot overflow a double
    # sum): one read of the array; OpenCV reads 4 or fewer values as a scalar.
    return bool(np.isfinite(cv2.sumElems(x)[0] if x.size > 4 else np.sum(x, dtype=np.float64)))


class Fusion(object):
    """Full-resolution scratch planes of the fusion, allocated once per shape."""

    def __init__(self, height: int, width: int):
        shape = (height, width)
        self.shape = shape
        # Three float planes pass through the cache instead of five: the bound's plane takes
        # the gain once the gate is made, and the difference overwrites the stereo's plane
        # (5 % of the stage with alignment_node's settings, bench_core on both Pythons).
        self.bound_gain = np.empty(shape, np.float32)   # the gate's bound, then the gain k
        self.sq = np.empty(shape, np.float32)           # squares, products
        self.gate = np.empty(shape, np.uint8)           # 255 where stereo is fused, else 0

    def _up(self, small, out, first=0, end=None):
        """
        Upsample ``small`` bilinearly into ``out``; only rows [first, end) are meant.

        At a whole scale that is a power of two (the statistics grid of a frame whose height
        the grid's step divides; the default step is 4) only the grid rows those rows read are
        resized, one more each side: the same values there (the other rows of ``out`` are
        left as they are or wrong). At other scales OpenCV 4.5.4 rounds a row's weight to
        float32 from its position in the part, an ulp off the whole's at k = 3, 7, 9: the
        whole grid is resized.
        """
        h, w = self.shape
        end = h if end is None else end
        sh = small.shape[0]
        k = h // sh
        if (first > 0 or end < h) and h % sh == 0 and k & (k - 1) == 0:
            s0, s1 = max(first // k - 1, 0), min((end - 1) // k + 2, sh)
            cv2.resize(small[s0:s1], (w, (s1 - s0) * k), dst=out[s0 * k:s1 * k],
                       interpolation=cv2.INTER_LINEAR)
            return out
        return cv2.resize(small, (w, h), dst=out, interpolation=cv2.INTER_LINEAR)

    def fuse(self, mono_inv: np.ndarray, stereo_inv: np.ndarray, trusted: np.ndarray,
             mono_var_small: np.ndarray, stereo_var_small, outlier_sigma: float,
             consistency: Optional[float], out_inv: np.ndarray,
             out_var: Optional[np.ndarray] = None,
             mono_inv_small: Optional[np.ndarray] = None, bands=None,
             interior=FIND_INTERIOR, rows=None) -> int:
        """
        Fuse into ``out_inv`` (and the variance into ``out_var``); return the fused pixels.

        :param mono_inv: [H, W] float32 aligned mono inverse depth (0 sky, NaN unknown).
        :param stereo_inv: [H, W] float32 stereo inverse depth, finite (accumulateProduct
            reads NaN and inf outside its mask); it holds the difference ``stereo_inv -
            mono_inv`` afterwards ...
        :param trusted: ... fused only where this [H, W] uint8 mask is nonzero.
        :param mono_var_small: [h, w] float32 mono inverse-depth variance at a lower size.
        :param stereo_var_small: the stereo variance, a number or an [h, w] plane.
        :param outlier_sigma: stereo further than this many combined sigmas is an outlier.
        :param consistency: the relative band that caps the mono's share of the outlier
            test: stereo further than ``consistency * y + 2 sigma_s`` from the mono is an
            outlier even where the mono is very uncertain (its edges); None: no cap. Interior
            stereo (``interior_stereo``) is tested against ``INTERIOR_BOUND_GAIN`` times the
            bound instead.
        :param out_inv: [H, W] float32 result; may be ``mono_inv`` itself (in place).
        :param out_var: optional [H, W] float32 result, the fused variance ``vm (1 - k)``.
        :param mono_inv_small: [h, w] float32 the mono inverse depth at the variances' size
            (the consistency band's ``y``; NaN is 0); default: ``mono_inv`` resized.
        :param interior: ``interior_stereo`` of ``stereo_inv`` and ``trusted`` on the
            variances' grid (nearest), when found before (the aligner's ``prepare``: it needs
            only the stereo); by default found here.
        :param bands: a ``RowBands`` to run the full-resolution per-pixel passes on (the same
            result for any number of threads); None: one piece.
        :param rows: (first, end): no row of ``trusted`` outside them has a nonzero pixel (the
            aligner's ``prepare`` finds them): the gate and the blend skip those rows, where
            nothing is fused (``stereo_inv`` keeps its values there); None: every row.
        """
        den = mono_var_small + stereo_var_small          # [h, w] combined variance
        # 1. The bound of the gate (on the variances' grid), and the gain k there.
        bound = self._bound(den, mono_inv, stereo_inv, trusted, stereo_var_small,
                            outlier_sigma, consistency, mono_inv_small, interior)
        gain_small = (mono_var_small / den).astype(np.float32, copy=False)   # k, [h, w]
        first, end = self._rows(rows, gain_small, mono_inv)
        bound = self._up(bound.astype(np.float32, copy=False), self.bound_gain, first, end)
        run_all = bands.run if bands is not None else (lambda fn, n: [fn(0, n)])

        def run(fn):
            # The per-pixel passes on the rows that hold trusted stereo only.
            if end <= first:
                return []
            return run_all(lambda r0, r1: fn(first + r0, first + r1), end - first)
        if out_inv is not mono_inv:
            np.copyto(out_inv, mono_inv)
        diff, sq, gate = stereo_inv, self.sq, self.gate

        def gate_band(r0, r1):
            # 2. The gate: trusted stereo within the bound (NaN fails).
            d = cv2.subtract(stereo_inv[r0:r1], mono_inv[r0:r1], dst=diff[r0:r1])  # y_s - y_m
            cv2.multiply(d, d, dst=sq[r0:r1])
            cv2.compare(sq[r0:r1], bound[r0:r1], cv2.CMP_LT, dst=gate[r0:r1])
            cv2.bitwise_and(gate[r0:r1], trusted[r0:r1], dst=gate[r0:r1])
        run(gate_band)
        # 3. The blend: y = y_m + k (y_s - y_m) where gated; elsewhere y_m.
        gain = self._up(gain_small, self.bound_gain, first, end)
        if out_var is not None:
            self._up(mono_var_small, out_var)

        def blend_band(r0, r1):
            g = gate[r0:r1]
            cv2.accumulateProduct(gain[r0:r1], diff[r0:r1], out_inv[r0:r1], mask=g)
            if out_var is not None:
                # 4. The fused variance: vm (1 - k) = vm - vm k where gated; elsewhere vm.
                v = out_var[r0:r1]
                cv2.multiply(v, gain[r0:r1], dst=sq[r0:r1])
                cv2.subtract(v, sq[r0:r1], dst=v, mask=g)
            return cv2.countNonZero(g)
        return sum(run(blend_band))

    def _bound(self, den, mono_inv, stereo_inv, trusted, stereo_var_small, outlier_sigma,
               consistency, mono_inv_small, interior):
        """Return the gate's bound on the variances' grid (``fuse``'s step 1)."""
        # outlier_sigma combined sigmas, squared ...
        bound = den * (outlier_sigma * outlier_sigma)
        if consistency is None:
            return bound
        # ... and at most (consistency y + 2 sigma_s)^2 (edges), from the mono at the
        # variances' size, upsampled with them.
        size = den.shape[::-1]
        if mono_inv_small is None:
            mono_inv_small = cv2.resize(mono_inv, size, interpolation=cv2.INTER_NEAREST)
        s2 = 2.0 * np.sqrt(float(np.min(stereo_var_small)))
        # The smallest y around: never a wider band than the pixels' own (edges).
        y = cv2.erode(cv2.patchNaNs(mono_inv_small.copy(), 0.0), _KERNEL)
        cap = y * np.float32(consistency) + np.float32(s2)
        bound = np.minimum(bound, cap * cap)
        inner = interior
        if isinstance(inner, str) and inner == FIND_INTERIOR:
            inner = interior_stereo(
                cv2.resize(stereo_inv, size, interpolation=cv2.INTER_NEAREST),
                cv2.resize(trusted, size, interpolation=cv2.INTER_NEAREST), consistency)
        if inner is not None:
            cv2.add(bound, cv2.multiply(bound, INTERIOR_BOUND_GAIN - 1.0), dst=bound,
                    mask=inner)
        return bound

    def _rows(self, rows, gain_small, mono_inv):
        """Return the rows (first, end) the per-pixel passes run on (``fuse``'s ``rows``)."""
        h = self.shape[0]
        if rows is None or (rows[0] <= 0 and rows[1] >= h):
            return 0, h
        first, end = rows
        # OpenCV's masked accumulateProduct adds k (y_s - y_m) times the mask: a product that
        # is not finite makes the mono NaN where the gate is closed too. Rows are skipped only
        # where it is finite (a finite gain and mono there: every frame but an overflowing or
        # unknown mono).
        if _finite(gain_small) and _finite(mono_inv[:first]) and _finite(mono_inv[end:]):
            return first, end
        return 0, h


__all__ = ['FIND_INTERIOR', 'Fusion', 'interior_stereo', 'stereo_inverse_sigma', 'stereo_variance']

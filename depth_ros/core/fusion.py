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
sigma_s^2)``; elsewhere ``y = y_m``. The fused variance is ``sigma_m^2 (1 - k)``.

The variances are smooth (the mono's from its low-resolution map, the stereo's from the
confidence), so ``k`` and the gate's bound are computed at a quarter of the resolution and
upsampled; the difference, the gate and the blend are per pixel. The gate is a uint8 mask
(``cv2.compare``, ANDed with the stereo trust mask), and the blend one masked
``cv2.accumulateProduct`` (``y += k d`` where gated) in place: eight float passes and two
uint8 ones at full resolution (two more for the variance).
"""
from __future__ import annotations

from typing import Optional, Tuple

import cv2
import numpy as np


def stereo_inverse_sigma(disparity_noise_px: float, focal_px: float, baseline_m: float) -> float:
    """Inverse-depth noise (1/m, 1 sigma) of stereo: sigma_d / (f B)."""
    return float(disparity_noise_px) / (float(focal_px) * float(baseline_m))


def stereo_variance(sigma_s: float, confidence: Optional[np.ndarray], gain: float):
    """Stereo inverse-depth variance: a number, or a plane from the ZED confidence."""
    if confidence is None or gain <= 0:
        return sigma_s * sigma_s
    g = gain / 99.0
    s = cv2.addWeighted(confidence, sigma_s * g, confidence, 0.0, sigma_s * (1.0 - g))
    return cv2.multiply(s, s)


def _smallest(v) -> float:
    """Return the smallest value of a number or a plane (minMaxLoc: numpy 1.17's is slow)."""
    if isinstance(v, np.ndarray) and v.ndim == 2 and v.dtype == np.float32 and v.size > 4:
        return float(cv2.minMaxLoc(v)[0])
    return float(np.min(v))


class Fusion(object):
    """Full-resolution buffers of the fusion, allocated once per shape (three float planes)."""

    def __init__(self, height: int, width: int):
        shape = (height, width)
        self.shape = shape
        self.k = np.empty(shape, np.float32)       # the bound, then the weight of the stereo
        self.diff = np.empty(shape, np.float32)
        self.tmp = np.empty(shape, np.float32)
        self.gate = np.empty(shape, np.uint8)      # 255 where stereo is fused, else 0
        self.trust = np.empty(shape, np.uint8)
        self._vm_small = None

    def _up(self, small, out):
        h, w = self.shape
        return cv2.resize(small, (w, h), dst=out, interpolation=cv2.INTER_LINEAR)

    def fuse(self, mono_inv: np.ndarray, stereo_inv: np.ndarray, mono_var_small: np.ndarray,
             stereo_var_small, outlier_sigma: float, out_inv: np.ndarray,
             mono_small: Optional[np.ndarray] = None, consistency: Optional[float] = None,
             trusted: Optional[np.ndarray] = None,
             diff: Optional[np.ndarray] = None) -> Tuple[np.ndarray, int]:
        """
        Fuse into ``out_inv``; return (out_inv, number of pixels that fused stereo).

        :param mono_inv: [H, W] float32 aligned mono inverse depth (0 sky, NaN unknown).
        :param stereo_inv: [H, W] float32 stereo inverse depth, finite; 0 where untrusted.
        :param mono_var_small: [h, w] float32 mono inverse-depth variance at a lower size.
        :param stereo_var_small: the stereo variance, a number or an [h, w] plane.
        :param out_inv: [H, W] float32 result; may be ``mono_inv`` itself (in place).
        :param mono_small: unused (kept for callers of the earlier signature).
        :param consistency: the relative band that caps the mono's share of the outlier
            test: stereo further than ``consistency * y + 2 sigma_s`` from the mono is an
            outlier even where the mono is very uncertain (its edges).
        :param trusted: optional [H, W] uint8 mask, nonzero where the stereo is trusted (the
            caller's, if it has one; else ``stereo_inv > 0``).
        :param diff: optional [H, W] float32 buffer for ``stereo_inv - mono_inv``; may be
            ``stereo_inv`` itself when the caller no longer needs it (one plane less to
            stream through the cache).
        """
        den = mono_var_small + stereo_var_small
        self._vm_small = mono_var_small
        bound, tmp = self.k, self.tmp
        diff = self.diff if diff is None else diff
        self._up((den * (outlier_sigma * outlier_sigma)).astype(np.float32), bound)
        if consistency is not None:
            # Per pixel (edges): bound = min(bound, (consistency y + 2 sigma_s)^2).
            s2 = 2.0 * np.sqrt(_smallest(stereo_var_small))
            cv2.addWeighted(mono_inv, consistency, mono_inv, 0.0, s2, dst=tmp)
            cv2.multiply(tmp, tmp, dst=tmp)
            cv2.min(bound, tmp, dst=bound)
        if trusted is None:
            trusted = cv2.compare(stereo_inv, 0.0, cv2.CMP_GT, dst=self.trust)
        cv2.subtract(stereo_inv, mono_inv, dst=diff)
        # Gate: diff^2 < bound (NaN fails), and trusted stereo.
        cv2.multiply(diff, diff, dst=tmp)
        cv2.compare(tmp, bound, cv2.CMP_LT, dst=self.gate)
        cv2.bitwise_and(self.gate, trusted, dst=self.gate)
        if out_inv is not mono_inv:
            np.copyto(out_inv, mono_inv)
        k = self._up((mono_var_small / den).astype(np.float32), self.k)   # the bound is spent
        # y = y_m + k (y_s - y_m) where gated; elsewhere y_m, untouched.
        cv2.accumulateProduct(k, diff, out_inv, mask=self.gate)
        return out_inv, cv2.countNonZero(self.gate)

    def variance(self, out_var: np.ndarray) -> np.ndarray:
        """Fused inverse-depth variance ``vm (1 - k)`` of the last ``fuse`` (>= 0)."""
        self._up(self._vm_small, out_var)
        cv2.multiply(out_var, self.k, dst=self.tmp, scale=-1.0)
        cv2.accumulate(self.tmp, out_var, mask=self.gate)
        return out_var


__all__ = ['Fusion', 'stereo_inverse_sigma', 'stereo_variance']

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
upsampled; the difference, the gate and the blend are per pixel. Eleven full-resolution
OpenCV passes (three more for the variance), no masks on float planes (masked operations
are several times slower): the gate is a 0/1 float plane from ``cv2.threshold``.
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


class Fusion(object):
    """Full-resolution buffers of the fusion, allocated once per shape."""

    def __init__(self, height: int, width: int):
        shape = (height, width)
        self.shape = shape
        self.k = np.empty(shape, np.float32)       # weight of the stereo, then gated
        self.bound = np.empty(shape, np.float32)   # outlier_sigma^2 (vm + vs)
        self.vm = np.empty(shape, np.float32)      # mono variance (for the fused variance)
        self.diff = np.empty(shape, np.float32)
        self.tmp = np.empty(shape, np.float32)
        self.gate = np.empty(shape, np.float32)    # 1 where stereo is fused, else 0
        self._vm_small = None

    def _up(self, small, out):
        h, w = self.shape
        return cv2.resize(small, (w, h), dst=out, interpolation=cv2.INTER_LINEAR)

    def fuse(self, mono_inv: np.ndarray, stereo_inv: np.ndarray, mono_var_small: np.ndarray,
             stereo_var_small, outlier_sigma: float, out_inv: np.ndarray,
             mono_small: Optional[np.ndarray] = None,
             consistency: Optional[float] = None) -> Tuple[np.ndarray, int]:
        """
        Fuse into ``out_inv``; return (out_inv, number of pixels that fused stereo).

        :param mono_inv: [H, W] float32 aligned mono inverse depth (0 sky, NaN unknown).
        :param stereo_inv: [H, W] float32 stereo inverse depth, finite; 0 where untrusted.
        :param mono_var_small: [h, w] float32 mono inverse-depth variance at a lower size.
        :param stereo_var_small: the stereo variance, a number or an [h, w] plane.
        :param mono_small, consistency: the mono inverse depth at the lower size, and the
            relative band that caps the mono's share of the outlier test: stereo further
            than ``consistency * y + 2 sigma_s`` from the mono is an outlier even where the
            mono is very uncertain (its edges).
        """
        den = mono_var_small + stereo_var_small
        self._vm_small = mono_var_small
        self._up((mono_var_small / den).astype(np.float32), self.k)
        self._up((den * (outlier_sigma * outlier_sigma)).astype(np.float32), self.bound)
        if consistency is not None:
            # Per pixel (edges): bound = min(bound, (consistency y + 2 sigma_s)^2).
            s2 = 2.0 * np.sqrt(float(np.min(stereo_var_small)))
            cv2.addWeighted(mono_inv, consistency, mono_inv, 0.0, s2, dst=self.tmp)
            cv2.multiply(self.tmp, self.tmp, dst=self.tmp)
            cv2.min(self.bound, self.tmp, dst=self.bound)
        cv2.subtract(stereo_inv, mono_inv, dst=self.diff)
        # Gate: diff^2 <= bound, and trusted stereo (> 0); NaN fails.
        cv2.multiply(self.diff, self.diff, dst=self.tmp)
        cv2.subtract(self.bound, self.tmp, dst=self.tmp)
        cv2.threshold(self.tmp, 0.0, 1.0, cv2.THRESH_BINARY, dst=self.gate)
        cv2.threshold(stereo_inv, 0.0, 1.0, cv2.THRESH_BINARY, dst=self.tmp)
        cv2.multiply(self.gate, self.tmp, dst=self.gate)
        cv2.multiply(self.k, self.gate, dst=self.k)
        cv2.multiply(self.k, self.diff, dst=self.tmp)
        cv2.add(mono_inv, self.tmp, dst=out_inv)
        return out_inv, cv2.countNonZero(self.gate)

    def variance(self, out_var: np.ndarray) -> np.ndarray:
        """Fused inverse-depth variance ``vm (1 - k)`` of the last ``fuse`` (>= 0)."""
        self._up(self._vm_small, self.vm)
        cv2.multiply(self.vm, self.k, dst=self.tmp)
        return cv2.subtract(self.vm, self.tmp, dst=out_var)


__all__ = ['Fusion', 'stereo_inverse_sigma', 'stereo_variance']

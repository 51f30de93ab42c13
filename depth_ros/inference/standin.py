"""
STAND-IN backend for tests and benchmarks only. It is NOT a depth model.

``StandInDepthModel`` behaves like a backend (same ``predict(bgr)`` interface, latency stats)
but computes a fixed, deterministic "disparity" from the image itself and then waits until a
configured latency has passed. It lets the ROS graph, its tests and its benchmark run with a
known inference time and known outputs, with no weights and no GPU. Its output says nothing
about the scene's depth and must never be presented as a prediction.

Modes:
- ``intensity``: ``0.1 + 0.9 * gray / 255`` with OpenCV's BGR->gray weights (brighter = "nearer");
- ``gradient``: ``0.1 + 0.9 * row / (H - 1)``, a vertical ramp (lower rows "nearer", like a floor).
"""
from __future__ import annotations

import time

import cv2
from depth_ros.core.checks import check_image
from depth_ros.inference.base import DepthModel
import numpy as np

MODES = ('intensity', 'gradient')


def standin_disparity(bgr: np.ndarray, mode: str = 'intensity') -> np.ndarray:
    """Compute the stand-in's deterministic output for ``bgr``: [H, W] float32 in [0.1, 1.0]."""
    check_image('bgr', bgr, channels=3, dtypes=(np.uint8,))
    if mode == 'intensity':
        gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(np.float32)
        return 0.1 + gray * np.float32(0.9 / 255.0)
    if mode == 'gradient':
        h, w = bgr.shape[:2]
        ramp = np.linspace(0.1, 1.0, h, dtype=np.float32) if h > 1 else \
            np.full((1,), 0.1, np.float32)
        return np.ascontiguousarray(np.broadcast_to(ramp[:, None], (h, w)))
    raise ValueError('`mode` must be one of {}, got {!r}'.format('|'.join(MODES), mode))


class StandInDepthModel(DepthModel):
    """
    Stand-in backend: fixed latency, deterministic output (see the module docstring).

    :param latency_ms: total time ``predict`` takes (sleeps for what the computation leaves).
    :param mode: 'intensity' or 'gradient'.
    """

    backend = 'standin'

    def __init__(self, latency_ms: float = 0.0, mode: str = 'intensity'):
        super(StandInDepthModel, self).__init__(name='STAND-IN (not a model): {}, {} ms'.format(
            mode, latency_ms))
        try:
            ok = float(latency_ms) >= 0 and np.isfinite(latency_ms)
        except (TypeError, ValueError):
            ok = False
        if not ok or isinstance(latency_ms, bool):
            raise ValueError('`latency_ms` must be a finite number >= 0, got {!r}'.format(
                latency_ms))
        if mode not in MODES:
            raise ValueError('`mode` must be one of {}, got {!r}'.format('|'.join(MODES), mode))
        self.latency_ms = float(latency_ms)
        self.mode = mode

    def predict(self, bgr: np.ndarray) -> np.ndarray:
        """[H, W, 3] uint8 BGR -> [H, W] float32 stand-in disparity, after ``latency_ms``."""
        t0 = time.perf_counter()
        out = standin_disparity(bgr, self.mode)
        remaining = self.latency_ms * 1e-3 - (time.perf_counter() - t0)
        if remaining > 0:
            time.sleep(remaining)
        ms = (time.perf_counter() - t0) * 1e3
        self.infer_latency.add(ms)
        self.latency.add(ms)
        return out

"""
STAND-IN backend for tests and benchmarks only. It is NOT a depth model.

``StandInDepthModel`` behaves like a backend (same ``predict(bgr)`` interface, latency stats)
but computes a fixed, deterministic "disparity" from the image itself and then waits until a
configured latency has passed. It lets the ROS graph, its tests and the benchmarks run with a
known inference time and known outputs, with no weights and no GPU. Its output says nothing
about the scene's depth and must never be presented as a prediction.

Modes:
- ``intensity``: ``0.1 + 0.9 * gray / 255`` with OpenCV's BGR->gray weights (brighter = "nearer");
- ``gradient``: ``0.1 + 0.9 * row / (H - 1)``, a vertical ramp (lower rows "nearer", like a floor).

``predict`` computes this at the image size. Code that times pre-processing, inference and
post-processing apart (depth_ros.tools.bench) calls ``_infer`` on the prepared batch instead,
which computes the same function at the model input size.
"""
from __future__ import annotations

import time
from typing import Optional, Tuple

import cv2
from depth_ros.core.checks import check_image, check_number
from depth_ros.core.preprocess import DEFAULT_SIZE, IMAGENET_MEAN, IMAGENET_STD
from depth_ros.inference.base import DepthModel
import numpy as np

MODES = ('intensity', 'gradient')
# OpenCV's BGR -> gray weights (ITU-R BT.601), in the RGB order of a prepared batch.
_GRAY_RGB = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError('`mode` must be one of {}, got {!r}'.format('|'.join(MODES), mode))
    return mode


def _from_gray(gray: np.ndarray, mode: str) -> np.ndarray:
    """[H, W] float32 gray in 0..255 -> [H, W] float32 stand-in disparity in [0.1, 1.0]."""
    if _check_mode(mode) == 'intensity':
        return 0.1 + gray * np.float32(0.9 / 255.0)
    h, w = gray.shape
    ramp = np.linspace(0.1, 1.0, h, dtype=np.float32) if h > 1 else \
        np.full((1,), 0.1, np.float32)
    return np.ascontiguousarray(np.broadcast_to(ramp[:, None], (h, w)))


def standin_disparity(bgr: np.ndarray, mode: str = 'intensity') -> np.ndarray:
    """Compute the stand-in's deterministic output for ``bgr``: [H, W] float32 in [0.1, 1.0]."""
    check_image('bgr', bgr, channels=3, dtypes=(np.uint8,))
    _check_mode(mode)
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(np.float32)
    return _from_gray(gray, mode)


class StandInDepthModel(DepthModel):
    """
    Stand-in backend: fixed latency, deterministic output (see the module docstring).

    :param latency_ms: total time ``predict`` takes (sleeps for what the computation leaves).
    :param mode: 'intensity' or 'gradient'.
    :param input_size: (width, height) of the prepared batch ``_infer`` takes.
    :param name: what messages and reports call it; default says it is a stand-in.
    """

    backend = 'standin'

    def __init__(self, latency_ms: float = 0.0, mode: str = 'intensity',
                 input_size: Tuple[int, int] = DEFAULT_SIZE, name: Optional[str] = None):
        super(StandInDepthModel, self).__init__(
            input_size=input_size,
            name=name or 'STAND-IN (not a model): {}, {} ms'.format(mode, latency_ms))
        self.latency_ms = check_number('latency_ms', latency_ms, low=0)
        self.mode = _check_mode(mode)

    def _wait(self, t0: float) -> float:
        """Sleep until ``latency_ms`` has passed since ``t0``; return the elapsed ms."""
        remaining = self.latency_ms * 1e-3 - (time.perf_counter() - t0)
        if remaining > 0:
            time.sleep(remaining)
        return (time.perf_counter() - t0) * 1e3

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        """[1, 3, h, w] prepared batch -> [h, w] stand-in disparity, after ``latency_ms``."""
        t0 = time.perf_counter()
        rgb = batch[0] * IMAGENET_STD[:, None, None] + IMAGENET_MEAN[:, None, None]  # 0..1
        gray = np.tensordot(_GRAY_RGB * np.float32(255.0), rgb, axes=1)           # [h, w]
        out = _from_gray(gray.astype(np.float32, copy=False), self.mode)
        self._wait(t0)
        return out

    def predict(self, bgr: np.ndarray) -> np.ndarray:
        """[H, W, 3] uint8 BGR -> [H, W] float32 stand-in disparity, after ``latency_ms``."""
        t0 = time.perf_counter()
        out = standin_disparity(bgr, self.mode)
        ms = self._wait(t0)
        self.infer_latency.add(ms)
        self.latency.add(ms)
        return out

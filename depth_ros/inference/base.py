"""
The one small interface every backend implements.

``DepthModel.predict(bgr)`` takes an [H, W, 3] uint8 BGR image and returns an [H, W] float32
relative (affine-invariant) inverse depth at the image size. Pre- and post-processing are the
shared code in depth_ros.core.preprocess; a backend only implements ``_infer``.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Tuple

from depth_ros.core.checks import check_image
from depth_ros.core.preprocess import (check_input_size, DEFAULT_SIZE, prepare_input,
                                       restore_output)
import numpy as np

LOG = logging.getLogger('depth_ros.inference')


class LatencyStats(object):
    """Rolling latency window (milliseconds), for logs and /diagnostics."""

    def __init__(self, window: int = 100):
        self._samples = collections.deque(maxlen=int(window))
        self.count = 0

    def add(self, ms: float) -> None:
        self._samples.append(float(ms))
        self.count += 1

    @property
    def last_ms(self) -> float:
        return self._samples[-1] if self._samples else float('nan')

    @property
    def mean_ms(self) -> float:
        return float(np.mean(self._samples)) if self._samples else float('nan')

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self._samples, q)) if self._samples else float('nan')


class Closable(object):
    """``with model:`` closes the model on exit; subclasses implement ``close``."""

    def close(self) -> None:
        """Release backend resources."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class DepthModel(Closable):
    """
    Base class of the backends (onnxruntime, tensorrt, torch).

    :param input_size: model input (width, height), multiples of 14.
    :param name: what was loaded (path or hub id), for messages.
    """

    backend = 'base'

    def __init__(self, input_size: Tuple[int, int] = DEFAULT_SIZE, name: str = ''):
        self.input_size = check_input_size(*input_size)
        self.name = name
        self.latency = LatencyStats()          # whole predict(), ms
        self.infer_latency = LatencyStats()    # backend call only, ms
        self._input = None                     # [1, 3, h, w] float32, allocated once
        # predict() reuses the input (and some backends' output) buffers: one call at a time.
        self._predict_lock = threading.Lock()

    def _input_buffer(self) -> np.ndarray:
        """Preallocated input; backends with page-locked memory override this."""
        if self._input is None:
            w, h = self.input_size
            self._input = np.empty((1, 3, h, w), dtype=np.float32)
        return self._input

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        """[1, 3, h, w] float32 -> [h, w] (or [1, h, w]) relative disparity."""
        raise NotImplementedError

    def predict(self, bgr: np.ndarray) -> np.ndarray:
        """[H, W, 3] uint8 BGR -> [H, W] float32 relative inverse depth (larger = nearer)."""
        check_image('bgr', bgr, channels=3, dtypes=(np.uint8,))
        with self._predict_lock:
            t0 = time.perf_counter()
            batch = prepare_input(bgr, self.input_size, out=self._input_buffer())
            t1 = time.perf_counter()
            raw = self._infer(batch)
            t2 = time.perf_counter()
            out = restore_output(raw, bgr.shape[0], bgr.shape[1])   # a new array
            t3 = time.perf_counter()
        self.infer_latency.add((t2 - t1) * 1e3)
        self.latency.add((t3 - t0) * 1e3)
        LOG.debug('%s predict %.1f ms (pre %.1f, infer %.1f, post %.1f)', self.backend,
                  (t3 - t0) * 1e3, (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3)
        return out

    def __repr__(self) -> str:
        return '{}(name={!r}, input_size={})'.format(type(self).__name__, self.name,
                                                     self.input_size)

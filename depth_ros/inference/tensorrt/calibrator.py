"""
INT8 calibration data: recorded frames -> shared preprocess -> fixed-size batches, and a cache.

This is the pure-Python half of the entropy calibrator; trt_api wraps it in TensorRT's
``IInt8EntropyCalibrator2``. Frames go through depth_ros.core.preprocess.prepare_input, the very
transform used at inference, so the calibrated ranges are those the engine will see.
"""
from __future__ import annotations

import logging
import os
from typing import List, Optional, Tuple

import cv2
from depth_ros.core.checks import check_number
from depth_ros.core.preprocess import check_input_size, prepare_input
from depth_ros.util import write_atomic
import numpy as np

LOG = logging.getLogger('depth_ros.tensorrt')

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.ppm')


def list_images(folder: str) -> List[str]:
    """Image files directly in ``folder``, sorted by name (ValueError when there are none)."""
    if not os.path.isdir(folder):
        raise ValueError('`calib_dir` must be a folder of images, got {!r} (not a folder)'.format(
            folder))
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise ValueError('`calib_dir` {!r} holds no images ({})'.format(
            folder, ', '.join(IMAGE_EXTENSIONS)))
    return [os.path.join(folder, n) for n in names]


class CalibrationCache(object):
    """
    The calibration table TensorRT writes after calibrating, read back on the next build.

    An empty or missing file reads as None, which makes TensorRT calibrate from the frames.
    """

    def __init__(self, path: Optional[str]):
        self.path = path

    def read(self) -> Optional[bytes]:
        """Return the cached table, or None when there is none (or no path is configured)."""
        if not self.path or not os.path.isfile(self.path):
            return None
        with open(self.path, 'rb') as f:
            data = f.read()
        if not data:
            LOG.warning('calibration cache %s is empty; calibrating from the frames', self.path)
            return None
        LOG.info('using calibration cache %s (%d bytes); delete it to recalibrate', self.path,
                 len(data))
        return data

    def write(self, data: bytes) -> None:
        """Store the table atomically (no half-written cache after an interrupted build)."""
        if not self.path:
            return
        write_atomic(self.path, data)
        LOG.info('calibration cache written to %s (%d bytes)', self.path, len(data))


class CalibrationSource(object):
    """
    Feeds the entropy calibrator: batches of preprocessed frames and the cache.

    :param images: image paths (BGR files readable by OpenCV).
    :param input_size: model input (width, height).
    :param batch_size: images per calibration batch (> 0); clamped to the number of images.
    :param cache_path: calibration cache file, or None for no cache.

    Batches are [batch_size, 3, h, w] float32 in one buffer allocated once. A final partial batch
    is dropped: TensorRT asks for exactly ``get_batch_size()`` images per batch. Unreadable
    images are skipped with a warning.
    """

    def __init__(self, images: List[str], input_size: Tuple[int, int], batch_size: int = 8,
                 cache_path: Optional[str] = None):
        self.input_size = check_input_size(*input_size)
        batch_size = check_number('batch_size', batch_size, low=0, low_open=True, integer=True)
        self.images = list(images)
        if not self.images and not CalibrationCache(cache_path).read():
            raise ValueError('`images` is empty and there is no calibration cache: INT8 needs '
                             'frames to calibrate on')
        if self.images and batch_size > len(self.images):
            LOG.warning('calibration batch size %d is more than the %d images; using %d',
                        batch_size, len(self.images), len(self.images))
            batch_size = len(self.images)
        self.batch_size = batch_size
        self.cache = CalibrationCache(cache_path)
        w, h = self.input_size
        self._batch = np.zeros((batch_size, 3, h, w), dtype=np.float32)
        self._next = 0
        self.batches_served = 0
        self.skipped = []  # type: List[str]

    @classmethod
    def from_folder(cls, folder: str, input_size: Tuple[int, int], batch_size: int = 8,
                    cache_path: Optional[str] = None, max_images: Optional[int] = None):
        """All images of ``folder`` (sorted), at most ``max_images``."""
        images = list_images(folder)
        max_images = check_number('max_images', max_images, low=0, low_open=True,
                                  integer=True, allow_none=True)
        if max_images is not None:
            images = images[:max_images]
        return cls(images, input_size, batch_size=batch_size, cache_path=cache_path)

    @property
    def batch_nbytes(self) -> int:
        """Bytes of one batch (the device buffer the calibrator allocates once)."""
        return int(self._batch.nbytes)

    @property
    def num_batches(self) -> int:
        """Full batches available (an upper bound when some images turn out unreadable)."""
        return len(self.images) // self.batch_size

    def reset(self) -> None:
        """Start again from the first image."""
        self._next = 0
        self.batches_served = 0

    def next_batch(self) -> Optional[np.ndarray]:
        """Return the next [B, 3, h, w] float32 batch (one reused buffer), or None at the end."""
        filled = 0
        while filled < self.batch_size:
            if self._next >= len(self.images):
                if filled:
                    LOG.info('calibration: dropping a final partial batch of %d images', filled)
                return None
            path = self.images[self._next]
            self._next += 1
            bgr = cv2.imread(path, cv2.IMREAD_COLOR)
            if bgr is None:
                LOG.warning('calibration: cannot read image %s, skipping it', path)
                self.skipped.append(path)
                continue
            prepare_input(bgr, self.input_size, out=self._batch[filled:filled + 1])
            filled += 1
        self.batches_served += 1
        LOG.info('calibration batch %d/%d', self.batches_served, self.num_batches)
        return self._batch

    def read_cache(self) -> Optional[bytes]:
        """Calibration table from the cache file, or None to calibrate from frames."""
        return self.cache.read()

    def write_cache(self, data: bytes) -> None:
        """Store the table TensorRT produced."""
        self.cache.write(data)

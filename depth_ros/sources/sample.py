"""
The bundled sample: scikit-image's Middlebury 2014 Motorcycle pair, with ground truth.

scikit-image ships the pair (500x741, a 4x downsampled version of the benchmark images) with
its ground-truth disparity, so the demo and the graph run with no camera and no download. The
calibration is the one in ``skimage.data.stereo_motorcycle``'s docstring (valid for the
downsampled images). Depth = baseline * f / (disparity + doffs).
"""
from __future__ import annotations

from dataclasses import dataclass
import logging
import time
from typing import Optional

import cv2
from depth_ros.core.camera import PinholeCamera
from depth_ros.core.stereo import check_sgbm_options, sgbm_depth
from depth_ros.sources.base import Frame, FrameSource, SourceConfigError
import numpy as np

LOG = logging.getLogger('depth_ros.sources.sample')

FOCAL_PX = 994.978
CX = 311.193
CY = 254.877
DOFFS_PX = 31.086
BASELINE_M = 0.193001
# Largest ground-truth disparity is ~60 px; 64 covers it with room for SGBM's border.
NUM_DISPARITIES = 64
WIDTH = 741  # of the pair that scikit-image ships


@dataclass
class SampleData:
    """The Middlebury Motorcycle pair and its ground truth."""

    left: np.ndarray          # [500, 741, 3] uint8 BGR
    right: np.ndarray         # [500, 741, 3] uint8 BGR
    gt_disparity: np.ndarray  # [500, 741] float32 px, NaN where the benchmark has none
    gt_depth: np.ndarray      # [500, 741] float32 metres, NaN invalid
    camera: PinholeCamera
    baseline_m: float
    doffs: float


_CACHE = {}


def load_sample() -> SampleData:
    """Load the bundled pair (scikit-image, no download). Arrays are fresh copies."""
    data = _CACHE.get('sample')
    if data is None:
        try:
            from skimage import data as skdata
        except ImportError as exc:
            raise ImportError('the bundled sample needs scikit-image: install '
                              'depth_ros[tools] (pip install scikit-image)') from exc
        left_rgb, right_rgb, disp = skdata.stereo_motorcycle()
        disp = np.asarray(disp, dtype=np.float32)
        disp = np.where(np.isfinite(disp), disp, np.float32(np.nan))  # inf = no ground truth
        height, width = disp.shape
        with np.errstate(invalid='ignore'):
            gt_depth = (np.float32(BASELINE_M * FOCAL_PX) / (disp + np.float32(DOFFS_PX)))
        data = SampleData(
            left=cv2.cvtColor(left_rgb, cv2.COLOR_RGB2BGR),
            right=cv2.cvtColor(right_rgb, cv2.COLOR_RGB2BGR),
            gt_disparity=disp, gt_depth=gt_depth.astype(np.float32),
            camera=PinholeCamera(FOCAL_PX, FOCAL_PX, CX, CY, width, height),
            baseline_m=BASELINE_M, doffs=DOFFS_PX)
        _CACHE['sample'] = data
    return SampleData(left=data.left.copy(), right=data.right.copy(),
                      gt_disparity=data.gt_disparity.copy(), gt_depth=data.gt_depth.copy(),
                      camera=data.camera, baseline_m=data.baseline_m, doffs=data.doffs)


def sample_stereo_depth(sample: SampleData, **sgbm_options):
    """SGBM depth and confidence of the sample pair (what the ZED SDK would give)."""
    options = dict(num_disparities=NUM_DISPARITIES)
    options.update(sgbm_options)
    return sgbm_depth(sample.left, sample.right, sample.camera, sample.baseline_m,
                      doffs=sample.doffs, **options)


class SampleSource(FrameSource):
    """
    Yields the sample pair as ZED-like frames: left image, SGBM depth, confidence.

    Every frame holds the same read-only planes (no copy per frame, as a rosbag's records).

    :param count: frames per pass (the same image with increasing stamps).
    :param loop: repeat forever (``count`` is then ignored).
    :param fps: spacing of the synthetic stamps, which start at the wall-clock time of open().
    :param frame_id: optical frame id, '' lets the node choose.
    :param sgbm_options: passed to depth_ros.core.stereo.sgbm_depth.
    """

    name = 'sample'

    def __init__(self, count: int = 1, loop: bool = False, fps: float = 10.0,
                 frame_id: str = '', **sgbm_options):
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError('`count` must be an integer >= 1, got {!r}'.format(count))
        if not (isinstance(fps, (int, float)) and np.isfinite(fps) and fps > 0):
            raise ValueError('`fps` must be a finite number > 0, got {!r}'.format(fps))
        self.count = count
        self.loop = bool(loop)
        self.fps = float(fps)
        self.frame_id = frame_id
        self.sgbm_options = check_sgbm_options(sgbm_options)
        # StereoSGBM needs width > num_disparities + max(min_disparity, 0); OpenCV 4.5.4 ends
        # the process instead of raising.
        reach = int(self.sgbm_options.get('num_disparities') or NUM_DISPARITIES) + \
            max(int(self.sgbm_options.get('min_disparity', 0)), 0)
        if reach >= WIDTH:
            raise SourceConfigError('source `sample`: num_disparities + min_disparity = {} must '
                                    'be below the sample\'s width, {} px'.format(reach, WIDTH))
        self._sample: Optional[SampleData] = None
        self._depth = None
        self._confidence = None
        self._confidence_finite = False
        self._index = 0
        self._t0 = 0

    def open(self) -> None:
        if self._sample is None:
            t0 = time.perf_counter()
            self._sample = load_sample()
            self._depth, self._confidence = sample_stereo_depth(self._sample,
                                                                **self.sgbm_options)
            # Every frame is this pair: its planes are handed out read-only, never copied
            # (as a rosbag's records), and the confidence is checked here once.
            for plane in (self._sample.left, self._sample.right, self._depth,
                          self._confidence):
                plane.setflags(write=False)
            self._confidence_finite = bool(np.isfinite(self._confidence).all())
            LOG.debug('sample loaded, SGBM depth in %.0f ms', (time.perf_counter() - t0) * 1e3)
        self._index = 0
        self._t0 = time.time_ns()

    def read(self) -> Optional[Frame]:
        if self._sample is None:
            self.open()
        if not self.loop and self._index >= self.count:
            return None
        stamp = self._t0 + int(round(self._index * 1e9 / self.fps))
        self._index += 1
        s = self._sample
        # No copies: the pair's read-only planes (open); a consumer that would write into a
        # frame gets numpy's error, and the next frame is intact.
        return Frame(left=s.left, depth=self._depth, confidence=self._confidence,
                     camera=s.camera, stamp_ns=stamp, frame_id=self.frame_id, right=s.right,
                     baseline_m=s.baseline_m, confidence_finite=self._confidence_finite)

    def close(self) -> None:
        self._index = 0

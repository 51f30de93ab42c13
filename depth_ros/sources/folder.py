"""
A folder of rectified stereo pairs plus a calibration YAML; depth from SGBM.

Layout::

    FOLDER/
      calibration.yaml      fx, fy, cx, cy, baseline (metres), width, height; optional doffs
      left/000000.png ...   rectified left images (png, jpg, bmp, tif)
      right/000000.png ...  the right images, with the same file names

Pairs are taken in sorted file-name order. A file name whose stem is an integer (e.g.
``1700000000123456789.png``) is that frame's stamp in nanoseconds; otherwise stamps are
synthetic, ``1 / fps`` apart from the wall-clock time of open().

A missing folder, sub-folder or calibration, or a bad calibration, raises SourceConfigError at
construction (one line naming the parameter and the value); an image that cannot be read or
matched raises FrameError from ``read()``, and the next ``read()`` goes on with the next pair.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Dict, List, Optional

import cv2
from depth_ros.core.camera import PinholeCamera
from depth_ros.core.stereo import check_sgbm_options, default_num_disparities, sgbm_depth
from depth_ros.sources.base import Frame, FrameError, FrameSource, one_line, \
    SourceConfigError
import numpy as np

LOG = logging.getLogger('depth_ros.sources.folder')

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')
CALIBRATION_NAMES = ('calibration.yaml', 'calibration.yml')
REQUIRED_KEYS = ('fx', 'fy', 'cx', 'cy', 'baseline', 'width', 'height')


class StereoCalibration(object):
    """Rectified stereo calibration: left intrinsics, baseline (m), principal-point offset."""

    def __init__(self, camera: PinholeCamera, baseline_m: float, doffs: float = 0.0):
        self.camera = camera
        self.baseline_m = float(baseline_m)
        self.doffs = float(doffs)

    def __repr__(self) -> str:
        return 'StereoCalibration({!r}, baseline_m={:.6g}, doffs={:.6g})'.format(
            self.camera, self.baseline_m, self.doffs)


def _number(path: str, data: Dict, key: str, positive: bool) -> float:
    value = data[key]
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) \
        and bool(np.isfinite(value)) and (value > 0 or not positive)
    if not ok:
        raise SourceConfigError('calibration {}: key `{}` must be a finite number{}, got '
                                '{!r}'.format(path, key, ' > 0' if positive else '', value))
    return float(value)


def load_calibration(path: str) -> StereoCalibration:
    """
    Read and validate a calibration YAML.

    :raises SourceConfigError: (a ValueError) one line naming the file and the key.
    """
    import yaml  # PyYAML: package.xml's python3-yaml, or the `base` extra

    if not os.path.isfile(path):
        raise SourceConfigError('calibration file not found: {}'.format(path))
    try:
        with open(path, 'r') as stream:
            data = yaml.safe_load(stream)
    except yaml.YAMLError as exc:
        raise SourceConfigError('calibration {}: not valid YAML: {}'.format(
            path, ' '.join(str(exc).split()))) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceConfigError('calibration {}: cannot read it: {}'.format(
            path, one_line(exc))) from None
    if not isinstance(data, dict):
        raise SourceConfigError('calibration {}: expected a mapping of keys {}, got {!r}'.format(
            path, ', '.join(REQUIRED_KEYS), data))
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise SourceConfigError('calibration {}: missing key(s) {}'.format(
            path, ', '.join('`{}`'.format(k) for k in missing)))
    for key in ('width', 'height'):
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise SourceConfigError('calibration {}: key `{}` must be an integer > 0, got '
                                    '{!r}'.format(path, key, value))
    values = {k: _number(path, data, k, positive=k in ('fx', 'fy', 'baseline'))
              for k in ('fx', 'fy', 'cx', 'cy', 'baseline')}
    doffs = _number(path, data, 'doffs', positive=False) if 'doffs' in data else 0.0
    camera = PinholeCamera(values['fx'], values['fy'], values['cx'], values['cy'],
                           data['width'], data['height'])
    return StereoCalibration(camera, values['baseline'], doffs)


def _images(folder: str) -> Dict[str, str]:
    return {name: os.path.join(folder, name) for name in os.listdir(folder)
            if name.lower().endswith(IMAGE_EXTENSIONS)}


def _check_layout(path, calibration: Optional[str]) -> str:
    """Return the calibration file to use; SourceConfigError names everything missing."""
    if not isinstance(path, str) or not path:
        raise SourceConfigError('source `folder`: `path` must name a folder, got {!r}'.format(
            path))
    if not os.path.exists(path):
        raise SourceConfigError('source `folder`: `path` {!r} does not exist'.format(path))
    if not os.path.isdir(path):
        raise SourceConfigError('source `folder`: `path` {!r} is not a folder'.format(path))
    missing = [name + '/' for name in ('left', 'right')
               if not os.path.isdir(os.path.join(path, name))]
    if calibration is None:
        found = [os.path.join(path, n) for n in CALIBRATION_NAMES
                 if os.path.isfile(os.path.join(path, n))]
        if found:
            calibration = found[0]
        else:
            missing.append(CALIBRATION_NAMES[0])
    elif not os.path.isfile(calibration):
        raise SourceConfigError('source `folder`: `calibration` file {!r} does not exist'.format(
            calibration))
    if missing:
        raise SourceConfigError('stereo folder {!r} has no {} (it needs left/, right/ and '
                                'calibration.yaml; see docs/sources.md)'.format(
                                    path, ', '.join(missing)))
    return calibration


class FolderSource(FrameSource):
    """
    Stereo pairs from ``path/left`` and ``path/right`` with ``path/calibration.yaml``.

    :param path: the folder.
    :param calibration: calibration YAML path (default: ``path/calibration.yaml``).
    :param fps: spacing of synthetic stamps when file names are not stamps.
    :param frame_id: optical frame id, '' lets the node choose.
    :param sgbm_options: passed to depth_ros.core.stereo.sgbm_depth.
    :raises SourceConfigError: (a ValueError) the layout or the calibration is wrong.
    """

    name = 'folder'

    def __init__(self, path: str, calibration: Optional[str] = None, fps: float = 10.0,
                 frame_id: str = '', **sgbm_options):
        calibration = _check_layout(path, calibration)
        if not (isinstance(fps, (int, float)) and np.isfinite(fps) and fps > 0):
            raise ValueError('`fps` must be a finite number > 0, got {!r}'.format(fps))
        self.path = path
        self.calibration = load_calibration(calibration)
        left = _images(os.path.join(path, 'left'))
        right = _images(os.path.join(path, 'right'))
        unpaired = sorted(set(left) ^ set(right))
        if unpaired:
            raise SourceConfigError('stereo folder {}: images without a partner in the other '
                                    'view: {}'.format(path, ', '.join(unpaired[:5])
                                                      + (' ...' if len(unpaired) > 5 else '')))
        if not left:
            raise SourceConfigError('stereo folder {}: no images ({}) in left/ and '
                                    'right/'.format(path, ' '.join(IMAGE_EXTENSIONS)))
        self.names: List[str] = sorted(left)
        self._left, self._right = left, right
        self.fps = float(fps)
        self.frame_id = frame_id
        self.sgbm_options = check_sgbm_options(sgbm_options)
        self._index = 0
        self._t0 = 0

    def __len__(self) -> int:
        return len(self.names)

    def open(self) -> None:
        self._index = 0
        self._t0 = time.time_ns()

    def _stamp(self, name: str, index: int) -> int:
        stem = os.path.splitext(name)[0]
        if stem.isdigit():
            return int(stem)
        return self._t0 + int(round(index * 1e9 / self.fps))

    def read(self) -> Optional[Frame]:
        if self._t0 == 0:
            self.open()
        if self._index >= len(self.names):
            return None
        name = self.names[self._index]
        stamp = self._stamp(name, self._index)
        self._index += 1  # a bad pair is skipped: the next read() goes on with the next one
        try:
            return self._frame(name, stamp)
        except FrameError:
            raise
        except Exception as exc:  # SGBM, OpenCV or a file vanishing: this frame only
            raise FrameError('{}: {}'.format(name, one_line(exc))) from None

    def _frame(self, name: str, stamp: int) -> Frame:
        left = cv2.imread(self._left[name], cv2.IMREAD_COLOR)
        right = cv2.imread(self._right[name], cv2.IMREAD_COLOR)
        for path, image in ((self._left[name], left), (self._right[name], right)):
            if image is None:
                raise FrameError('cannot read image {}'.format(path))
        if left.shape != right.shape:
            raise FrameError('{}: left is {}x{} but right is {}x{}'.format(
                name, left.shape[1], left.shape[0], right.shape[1], right.shape[0]))
        self._check_width(name, left.shape[1])
        camera = self.calibration.camera
        if (camera.width, camera.height) != (left.shape[1], left.shape[0]):
            # Images saved at another resolution than calibrated (e.g. downscaled): the
            # intrinsics scale with them; the baseline does not.
            camera = camera.scaled(left.shape[1], left.shape[0])
            doffs = self.calibration.doffs * left.shape[1] / self.calibration.camera.width
        else:
            doffs = self.calibration.doffs
        depth, confidence = sgbm_depth(left, right, camera, self.calibration.baseline_m,
                                       doffs=doffs, **self.sgbm_options)
        return Frame(left=left, depth=depth, confidence=confidence, camera=camera,
                     stamp_ns=stamp, frame_id=self.frame_id, right=right,
                     baseline_m=self.calibration.baseline_m)

    def _check_width(self, name: str, width: int) -> None:
        # OpenCV's StereoSGBM needs width > num_disparities + max(min_disparity, 0); below that
        # OpenCV 4.5.4 (JetPack 5) ends the whole process with std::terminate or a segfault
        # instead of raising, so a folder of small images would kill the node.
        disparities = self.sgbm_options.get('num_disparities') or default_num_disparities(width)
        reach = disparities + max(int(self.sgbm_options.get('min_disparity', 0)), 0)
        if width <= reach:
            raise FrameError('{}: {} px wide, but SGBM needs more than num_disparities + '
                             'min_disparity = {} px'.format(name, width, reach))

    def close(self) -> None:
        self._t0 = 0
        self._index = 0

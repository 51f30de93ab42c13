"""
A ZED / ZED2 camera through pyzed (ZED SDK 3.8+ and 4.x), live or from an SVO file.

Depth comes in metres (``coordinate_units = METER``) as the SDK gives it: NaN where there is no
match, -inf too close, +inf too far (REP 117). The confidence map is the SDK's (1..100, larger =
less reliable). ``publish_downscale`` asks the SDK for smaller image, depth and confidence
(it resizes on the GPU) and scales the intrinsics with PinholeCamera.scaled.

SDK differences handled here:
- calibration: ``get_camera_information().camera_configuration.calibration_parameters`` (4.x)
  vs ``get_camera_information().calibration_parameters`` (3.x);
- camera resolution: ``camera_configuration.resolution`` (4.x) vs ``camera_resolution`` (3.x);
- fill mode: ``RuntimeParameters.enable_fill_mode`` (4.x) vs ``sensing_mode = FILL`` (3.x).
"""
from __future__ import annotations

import logging
from typing import Optional

import cv2
from depth_ros.core.camera import PinholeCamera
from depth_ros.sources.base import Frame, FrameSource, SourceError
import numpy as np

LOG = logging.getLogger('depth_ros.sources.zed')

RESOLUTIONS = ('HD2K', 'HD1080', 'HD1200', 'HD720', 'SVGA', 'VGA', 'AUTO')
DEPTH_MODES = ('NONE', 'PERFORMANCE', 'QUALITY', 'ULTRA', 'NEURAL', 'NEURAL_PLUS')
NO_PYZED = ('pyzed not installed: install the ZED SDK (3.8+ or 4.x) and its Python API '
            '(python3 /usr/local/zed/get_python_api.py), or use source:=sample|folder|bag')


def import_sl():
    """``pyzed.sl``, or ImportError with what to do."""
    try:
        import pyzed.sl as sl
    except ImportError as exc:
        raise ImportError(NO_PYZED) from exc
    return sl


def _check_range(name: str, value, low: float, high: float):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) \
        and bool(np.isfinite(value)) and low <= value <= high
    if not ok:
        raise ValueError('`{}` must be a number in [{}, {}], got {!r}'.format(
            name, low, high, value))
    return value


def read_calibration(info):
    """(left-camera calibration, (width, height) it is for, baseline in coordinate units)."""
    config = getattr(info, 'camera_configuration', None)
    if config is not None and hasattr(config, 'calibration_parameters'):  # SDK 4.x
        calib = config.calibration_parameters
        size = config.resolution
    else:  # SDK 3.x
        calib = info.calibration_parameters
        size = info.camera_resolution
    if hasattr(calib, 'get_camera_baseline'):
        baseline = float(calib.get_camera_baseline())
    else:  # the translation of the right camera, in coordinate units
        baseline = abs(float(calib.T[0]))
    return calib.left_cam, (int(size.width), int(size.height)), baseline


class ZedSource(FrameSource):
    """
    ZED camera frames (see the module docstring).

    :param svo_path: an SVO file to play instead of the live camera.
    :param resolution: one of RESOLUTIONS (live only).
    :param fps: camera frame rate (live only).
    :param depth_mode: one of DEPTH_MODES.
    :param min_depth, max_depth: depth range in metres.
    :param confidence_threshold: SDK confidence threshold (1..100; 100 keeps everything).
    :param texture_confidence_threshold: SDK texture threshold (1..100).
    :param fill_mode: ask the SDK for a hole-filled depth map.
    :param publish_downscale: output size factor in (0, 1] (0.5 = half width and height).
    :param loop: restart an SVO at its end (stamps keep increasing).
    :param serial_number: which camera, 0 = the first found.
    :param camera_name: for the frame id ``<camera_name>_left_camera_optical_frame``.
    """

    live = True

    def __init__(self, svo_path: Optional[str] = None, resolution: str = 'HD720', fps: int = 30,
                 depth_mode: str = 'PERFORMANCE', min_depth: float = 0.3,
                 max_depth: float = 20.0, confidence_threshold: int = 95,
                 texture_confidence_threshold: int = 100, fill_mode: bool = False,
                 publish_downscale: float = 1.0, loop: bool = False, serial_number: int = 0,
                 camera_name: str = 'zed'):
        if resolution not in RESOLUTIONS:
            raise ValueError('`resolution` must be one of {}, got {!r}'.format(
                '|'.join(RESOLUTIONS), resolution))
        if depth_mode not in DEPTH_MODES:
            raise ValueError('`depth_mode` must be one of {}, got {!r}'.format(
                '|'.join(DEPTH_MODES), depth_mode))
        if isinstance(fps, bool) or not isinstance(fps, int) or not 0 <= fps <= 120:
            raise ValueError('`fps` must be an integer in [0, 120], got {!r}'.format(fps))
        _check_range('min_depth', min_depth, 0.01, 1000.0)
        _check_range('max_depth', max_depth, 0.01, 1000.0)
        if max_depth <= min_depth:
            raise ValueError('`max_depth` ({!r}) must be larger than `min_depth` ({!r})'.format(
                max_depth, min_depth))
        _check_range('confidence_threshold', confidence_threshold, 1, 100)
        _check_range('texture_confidence_threshold', texture_confidence_threshold, 1, 100)
        if not (isinstance(publish_downscale, (int, float)) and 0 < publish_downscale <= 1):
            raise ValueError('`publish_downscale` must be in (0, 1], got {!r}'.format(
                publish_downscale))
        self.svo_path = svo_path
        self.live = svo_path is None
        self.name = 'svo' if svo_path else 'live'
        self.resolution = resolution
        self.fps = fps
        self.depth_mode = depth_mode
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.confidence_threshold = int(confidence_threshold)
        self.texture_confidence_threshold = int(texture_confidence_threshold)
        self.fill_mode = bool(fill_mode)
        self.publish_downscale = float(publish_downscale)
        self.loop = bool(loop)
        self.serial_number = int(serial_number)
        self.frame_id = '{}_left_camera_optical_frame'.format(camera_name)
        self._sl = None
        self._zed = None
        self._runtime = None
        self._mats = None
        self._camera = None       # intrinsics at the output size
        self._out_size = None     # sl.Resolution of the output, or None for full size
        self._baseline_m = None
        self._offset_ns = 0       # added to SVO stamps after a loop
        self._last_ns = None
        self._period_ns = None

    def open(self) -> None:
        sl = import_sl()
        self.close()
        init = sl.InitParameters()
        init.depth_mode = getattr(sl.DEPTH_MODE, self.depth_mode)
        init.coordinate_units = sl.UNIT.METER
        init.depth_minimum_distance = self.min_depth
        init.depth_maximum_distance = self.max_depth
        if self.svo_path:
            init.set_from_svo_file(self.svo_path)
            init.svo_real_time_mode = False  # pacing is the caller's (ReplaySource rate)
        else:
            init.camera_resolution = getattr(sl.RESOLUTION, self.resolution)
            init.camera_fps = self.fps
            if self.serial_number:
                init.set_from_serial_number(self.serial_number)
        zed = sl.Camera()
        err = zed.open(init)
        if err != sl.ERROR_CODE.SUCCESS:
            what = 'SVO {}'.format(self.svo_path) if self.svo_path else 'ZED camera'
            raise SourceError('cannot open {}: {}'.format(what, err))
        runtime = sl.RuntimeParameters()
        runtime.confidence_threshold = self.confidence_threshold
        runtime.texture_confidence_threshold = self.texture_confidence_threshold
        if hasattr(runtime, 'enable_fill_mode'):  # SDK 4.x
            runtime.enable_fill_mode = self.fill_mode
        elif hasattr(sl, 'SENSING_MODE'):  # SDK 3.x
            runtime.sensing_mode = sl.SENSING_MODE.FILL if self.fill_mode \
                else sl.SENSING_MODE.STANDARD
        left_cam, (width, height), baseline = read_calibration(zed.get_camera_information())
        camera = PinholeCamera(left_cam.fx, left_cam.fy, left_cam.cx, left_cam.cy, width, height)
        if self.publish_downscale < 1.0:
            out_w = max(1, int(round(width * self.publish_downscale)))
            out_h = max(1, int(round(height * self.publish_downscale)))
            camera = camera.scaled(out_w, out_h)
            self._out_size = sl.Resolution(out_w, out_h)
        else:
            self._out_size = sl.Resolution(0, 0)  # the SDK's "full size"
        self._sl, self._zed, self._runtime, self._camera = sl, zed, runtime, camera
        self._baseline_m = baseline
        self._mats = (sl.Mat(), sl.Mat(), sl.Mat())  # allocated once, reused every frame
        LOG.info('opened %s: %dx%d, output %dx%d, depth %s, baseline %.4f m',
                 self.svo_path or 'ZED camera', width, height, camera.width, camera.height,
                 self.depth_mode, baseline)

    def close(self) -> None:
        if self._zed is not None:
            try:
                self._zed.close()
            finally:
                self._zed = None

    def read(self) -> Optional[Frame]:
        if self._zed is None:
            self.open()
        sl, zed = self._sl, self._zed
        err = zed.grab(self._runtime)
        if err == sl.ERROR_CODE.END_OF_SVOFILE_REACHED and self.svo_path:
            if not self.loop:
                return None
            zed.set_svo_position(0)
            first = True
            err = zed.grab(self._runtime)
        else:
            first = False
        if err != sl.ERROR_CODE.SUCCESS:
            raise SourceError('ZED grab failed: {}'.format(err))
        image, depth, confidence = self._mats
        res = self._out_size
        zed.retrieve_image(image, sl.VIEW.LEFT, sl.MEM.CPU, res)
        zed.retrieve_measure(depth, sl.MEASURE.DEPTH, sl.MEM.CPU, res)
        zed.retrieve_measure(confidence, sl.MEASURE.CONFIDENCE, sl.MEM.CPU, res)
        stamp = int(zed.get_timestamp(sl.TIME_REFERENCE.IMAGE).get_nanoseconds())
        if first and self._last_ns is not None:
            # An SVO replayed again: shift its stamps to go on after the last one.
            self._offset_ns = self._last_ns + (self._period_ns or 1) - stamp
        stamp += self._offset_ns
        if self._last_ns is not None and stamp > self._last_ns:
            self._period_ns = stamp - self._last_ns
        self._last_ns = stamp
        # get_data() views SDK memory that the next grab overwrites: copy out.
        bgra = image.get_data()
        left = cv2.cvtColor(bgra, cv2.COLOR_BGRA2BGR) if bgra.ndim == 3 and bgra.shape[2] == 4 \
            else np.array(bgra, copy=True)
        depth_m = np.array(depth.get_data(), dtype=np.float32, copy=True)
        conf = np.array(confidence.get_data(), dtype=np.float32, copy=True)
        camera = self._camera
        if (left.shape[1], left.shape[0]) != (camera.width, camera.height):
            raise SourceError('ZED returned a {}x{} image, expected {}x{}'.format(
                left.shape[1], left.shape[0], camera.width, camera.height))
        return Frame(left=left, depth=depth_m, confidence=conf, camera=camera, stamp_ns=stamp,
                     frame_id=self.frame_id, baseline_m=self._baseline_m)

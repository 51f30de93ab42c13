"""
A ZED / ZED2 camera through pyzed (ZED SDK 3.8, 4.x and 5.x), live or from an SVO file.

Depth comes in metres (``coordinate_units = METER``) as the SDK gives it: NaN where there is no
match, -inf too close, +inf too far (REP 117). The confidence map is the SDK's (1..100, larger =
less reliable). ``publish_downscale`` asks the SDK for smaller image, depth and confidence
(it resizes on the GPU) and scales the intrinsics with PinholeCamera.scaled.

SDK differences, as zed-python-api's ``sl.pyx`` has them at tags v3.8, v4.0, v4.1, v4.2 and
v5.0, handled by looking at what the installed pyzed has, not at its version string:

- ``get_camera_information().camera_configuration`` exists in both; its size and rate are
  ``camera_resolution`` / ``camera_fps`` on 3.8 and ``resolution`` / ``fps`` from 4.0 (3.8's
  CameraInformation also has ``calibration_parameters`` itself; 4.0 moved everything into
  ``camera_configuration``, whose ``calibration_parameters`` both have);
- fill mode: ``RuntimeParameters.sensing_mode = SENSING_MODE.FILL`` on 3.8,
  ``RuntimeParameters.enable_fill_mode`` from 4.0 (SENSING_MODE is gone);
- RESOLUTION HD1200, SVGA and AUTO came with 4.0, DEPTH_MODE NEURAL_PLUS with 4.1 (NEURAL is in
  3.8). A value that the installed SDK lacks is refused at open with SourceConfigError, one
  line naming the parameter, the value, the SDK version and the choices that SDK has;
- ERROR_CODE: 4.0 added CAMERA_REBOOTING, 5.x warnings such as CONFIGURATION_FALLBACK (open
  succeeded with a fallback) and CORRUPTED_FRAME (this frame is bad). Codes are read by name.

Errors (see depth_ros/sources/base.py): a configuration or installation that cannot work raises
SourceConfigError; a bad frame FrameError; anything else in open() or read(), whatever pyzed
raised, SourceError with a one-line message.

Image first (``read_image_first``, what zed_node uses): the frame comes with its image as soon
as the image is retrieved and copied; its depth and confidence are retrieved when the caller
completes ``Frame.pending``, after handing the image on, so that the network starts one
retrieve and two plane copies earlier. ``read`` returns the whole frame, as before.

The GIL: zed-python-api calls the SDK inside ``with nogil:`` (``grab``, ``retrieve_image``,
``retrieve_measure``) only from v5.0.2 on; up to v5.0.1 (3.8, 4.x: JetPack 5.1's SDKs) those
calls keep the GIL, and a live camera's ``grab()`` waits for the camera's next frame in them:
no other Python thread of the process (depth_node's and alignment_node's workers, composed)
runs meanwhile. With such an SDK a live camera's grabs are timed to its frames
(:class:`GrabPacer`): the grab thread sleeps, the GIL released, until ``GRAB_LEAD_S`` before
the next frame's capture time (the last frame's stamp plus one period), so that the GIL is
kept only from just before the capture until the SDK has the frame and has worked on it.
"""
from __future__ import annotations

import collections
import logging
import os
import re
import time
from typing import Callable, Optional

import cv2
from depth_ros.core.camera import PinholeCamera
from depth_ros.sources.base import Frame, FrameError, FrameSource, one_line, \
    SourceConfigError, SourceError, StereoPending
from depth_ros.util import window_mean
import numpy as np

LOG = logging.getLogger('depth_ros.sources.zed')

# zed-python-api releases the GIL around grab and the retrieves from this version on (sl.pyx's
# ``with nogil:`` blocks appear at tag v5.0.2; v3.8 ... v5.0.1-rc have none).
RELEASES_GIL_FROM = (5, 0, 2)
GRAB_LEAD_S = 0.003     # a paced grab is called this long before the next frame's capture

RESOLUTIONS = ('HD2K', 'HD1080', 'HD1200', 'HD720', 'SVGA', 'VGA', 'AUTO')
DEPTH_MODES = ('NONE', 'PERFORMANCE', 'QUALITY', 'ULTRA', 'NEURAL', 'NEURAL_PLUS')
# The first zed-python-api tag whose sl.pyx has the value (for the refusal message).
ADDED_IN = {'HD1200': '4.0', 'SVGA': '4.0', 'AUTO': '4.0', 'NEURAL_PLUS': '4.1'}
NO_PYZED = ('pyzed not installed: install the ZED SDK (3.8+ or 4.x) and its Python API '
            '(python3 /usr/local/zed/get_python_api.py), or use source:=sample|folder|bag')
# open() codes that no retry can fix: the file, the SDK install, the GPU or a parameter.
FATAL_OPEN_CODES = ('INVALID_SVO_FILE', 'SVO_UNSUPPORTED_COMPRESSION',
                    'CORRUPTED_SDK_INSTALLATION', 'INCOMPATIBLE_SDK_VERSION',
                    'NVIDIA_DRIVER_OUT_OF_DATE', 'NO_GPU_COMPATIBLE',
                    'INVALID_FUNCTION_PARAMETERS', 'INVALID_RESOLUTION',
                    'MODULE_NOT_COMPATIBLE_WITH_CUDA_VERSION')
# SDK 5 warnings: the call worked (open: with a fallback configuration; grab: the frame is good).
OPEN_WARNINGS = ('CONFIGURATION_FALLBACK', 'POTENTIAL_CALIBRATION_ISSUE')
GRAB_WARNINGS = ('POTENTIAL_CALIBRATION_ISSUE', 'SENSORS_DATA_REQUIRED',
                 'CONFIGURATION_FALLBACK')


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


def sdk_version(sl) -> str:
    """Return the installed ZED SDK's version (from Camera.get_sdk_version), or 'unknown'."""
    try:
        return str(sl.Camera.get_sdk_version())
    except Exception:  # an SDK without it, or one that fails without a GPU
        return 'unknown'


def code_name(code) -> str:
    """Return an ERROR_CODE's name ('SUCCESS'); str() of one is the SDK's prose."""
    name = getattr(code, 'name', None)
    return name if isinstance(name, str) else str(code)


def sdk_choices(sl, enum_name: str, ours) -> list:
    """Return the values of ``ours`` that the SDK's ``sl.<enum_name>`` has, in our order."""
    members = getattr(sl, enum_name, None)
    return [v for v in ours if hasattr(members, v)]


def check_sdk(sl, resolution: Optional[str], depth_mode: str) -> None:
    """
    Refuse a resolution or depth mode that the installed SDK lacks.

    :param resolution: None to skip (an SVO has the resolution it was recorded at).
    :raises SourceConfigError: one line with the parameter, the value, the SDK version and the
        values this SDK has.
    """
    for param, value, enum_name, ours in (('resolution', resolution, 'RESOLUTION', RESOLUTIONS),
                                          ('depth_mode', depth_mode, 'DEPTH_MODE', DEPTH_MODES)):
        if value is None:
            continue
        have = sdk_choices(sl, enum_name, ours)
        if value not in have:
            since = ' (it came with SDK {})'.format(ADDED_IN[value]) if value in ADDED_IN else ''
            raise SourceConfigError('`{}` {} is not available in ZED SDK {}{}; choose one of '
                                    '{}'.format(param, value, sdk_version(sl), since,
                                                '|'.join(have)))


def releases_gil(version: str) -> bool:
    """Whether pyzed of this SDK version releases the GIL in grab and retrieve (not known: no)."""
    numbers = [int(n) for n in re.findall(r'\d+', str(version))[:3]]
    return len(numbers) >= 2 and tuple(numbers + [0] * (3 - len(numbers))) >= RELEASES_GIL_FROM


class GrabPacer(object):
    """
    Time a GIL-keeping ``grab()`` to a live camera's frames (the module docstring).

    After each grab, :meth:`grabbed` takes the frame's capture stamp (the SDK's, wall clock
    nanoseconds); :meth:`wait` then sleeps (the GIL released) until ``lead_s`` before the next
    capture, the stamp plus one period. The target depends on the camera's stamps only, not on
    when grab was called, so a late call (the caller busy) does not move the next one. Stamps
    that are not on this machine's wall clock (more than a second old or a period ahead) turn
    the pacing off until one is.

    :param fps: the camera's frame rate.
    """

    def __init__(self, fps: float, lead_s: float = GRAB_LEAD_S,
                 wall_ns: Callable[[], int] = time.time_ns,
                 sleep: Callable[[float], None] = time.sleep):
        if not fps > 0:
            raise ValueError('GrabPacer needs a frame rate > 0, got {!r}'.format(fps))
        self.period_ns = int(round(1e9 / fps))
        self.lead_ns = int(round(lead_s * 1e9))
        self._wall_ns, self._sleep = wall_ns, sleep
        self._next_ns = None
        self.paced = 0               # grabs that were preceded by a sleep (/diagnostics)

    def wait(self) -> float:
        """Sleep until the next grab's time (at most one period); return the seconds slept."""
        if self._next_ns is None:
            return 0.0
        delay = min(self._next_ns - self._wall_ns(), self.period_ns) * 1e-9
        if delay <= 0:
            return 0.0
        self._sleep(delay)
        self.paced += 1
        return delay

    def grabbed(self, stamp_ns: int) -> None:
        """Take the capture stamp of the frame a grab returned."""
        age = self._wall_ns() - stamp_ns
        if -self.period_ns <= age <= 1000000000:
            self._next_ns = stamp_ns + self.period_ns - self.lead_ns
        else:
            self._next_ns = None


def read_calibration(info):
    """
    (left-camera calibration, (width, height) it is for, baseline, fps) of a CameraInformation.

    Either layout: 3.8's ``camera_configuration.camera_resolution`` / ``camera_fps`` or 4.0+'s
    ``camera_configuration.resolution`` / ``fps``. The baseline is in the coordinate units.
    """
    config = info.camera_configuration
    if hasattr(config, 'resolution'):  # SDK 4.0+
        size, fps = config.resolution, config.fps
    else:  # SDK 3.8
        size, fps = config.camera_resolution, config.camera_fps
    calib = config.calibration_parameters
    baseline = float(calib.get_camera_baseline())
    return calib.left_cam, (int(size.width), int(size.height)), baseline, float(fps)


class ZedSource(FrameSource):
    """
    ZED camera frames (see the module docstring).

    :param svo_path: an SVO file to play instead of the live camera.
    :param resolution: one of RESOLUTIONS (live only; the installed SDK may have fewer).
    :param fps: camera frame rate (live only).
    :param depth_mode: one of DEPTH_MODES (the installed SDK may have fewer).
    :param min_depth, max_depth: depth range in metres.
    :param confidence_threshold: SDK confidence threshold (1..100; 100 keeps everything).
    :param texture_confidence_threshold: SDK texture threshold (1..100).
    :param fill_mode: ask the SDK for a hole-filled depth map.
    :param publish_downscale: output size factor in (0, 1] (0.5 = half width and height).
    :param loop: restart an SVO at its end (stamps keep increasing).
    :param serial_number: which camera, 0 = the first found.
    :param camera_name: for the frame id ``<camera_name>_left_camera_optical_frame``.
    :raises ValueError: a bad option; SourceConfigError (a ValueError) for an SVO path that is
        not a file.
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
        if svo_path:
            if not os.path.exists(svo_path):
                raise SourceConfigError('source `svo`: `path` {!r} does not exist'.format(
                    svo_path))
            if not os.path.isfile(svo_path):
                raise SourceConfigError('source `svo`: `path` {!r} is not a file'.format(
                    svo_path))
        self.svo_path = svo_path
        self.live = not svo_path
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
        self.sdk_version = None   # the installed SDK's, once opened
        self._sl = None
        self._zed = None
        self._runtime = None
        self._mats = None
        self._camera = None       # intrinsics at the output size
        self._out_size = None     # sl.Resolution of the output, (0, 0) for full size
        self._baseline_m = None
        self._offset_ns = 0       # added to SVO stamps after a loop
        self._last_ns = None
        self._period_ns = None
        self._warned = set()      # SDK warning codes already logged
        self.pacer = None         # GrabPacer of a live camera whose pyzed keeps the GIL
        # Seconds in the SDK's calls of the last frames (the GIL kept there before 5.0.2).
        self._grab_s = collections.deque(maxlen=50)
        self._retrieve_s = collections.deque(maxlen=50)

    def _what(self) -> str:
        return 'SVO {}'.format(self.svo_path) if self.svo_path else 'ZED camera'

    def check_sdk(self) -> None:
        """
        Import pyzed and refuse options that the installed SDK lacks, without opening anything.

        :raises ImportError: no pyzed. SourceConfigError: see ``check_sdk(sl, ...)``.
        """
        check_sdk(import_sl(), None if self.svo_path else self.resolution, self.depth_mode)

    def open(self) -> None:
        """
        Open the camera or SVO.

        :raises ImportError: no pyzed. SourceConfigError: an option the SDK lacks, or an open
            error that no retry fixes (INVALID_SVO_FILE, the SDK install, the GPU).
            SourceError: anything else (no camera yet, USB trouble), with one line.
        """
        sl = import_sl()
        self.close()
        check_sdk(sl, None if self.svo_path else self.resolution, self.depth_mode)
        self.sdk_version = sdk_version(sl)
        try:
            zed = sl.Camera()
            err = zed.open(self._init_parameters(sl))
        except Exception as exc:  # pyzed raising, not returning a code
            raise SourceError('cannot open {}: {}'.format(self._what(), one_line(exc))) from None
        name = code_name(err)
        if name in OPEN_WARNINGS:
            LOG.warning('%s opened with SDK warning %s', self._what(), name)
        elif name in FATAL_OPEN_CODES:
            raise SourceConfigError('cannot open {}: {} (ZED SDK {})'.format(
                self._what(), name, self.sdk_version))
        elif name != 'SUCCESS':
            raise SourceError('cannot open {}: {}'.format(self._what(), name))
        try:
            self._configure(sl, zed)
        except Exception as exc:
            try:
                zed.close()
            except Exception:  # closing a half-open camera may fail too
                pass
            raise SourceError('{} opened, but reading its configuration failed (ZED SDK {}): '
                              '{}'.format(self._what(), self.sdk_version, one_line(exc))) \
                from None

    def _init_parameters(self, sl):
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
        return init

    def _runtime_parameters(self, sl):
        runtime = sl.RuntimeParameters()
        runtime.confidence_threshold = self.confidence_threshold
        runtime.texture_confidence_threshold = self.texture_confidence_threshold
        runtime.enable_depth = self.depth_mode != 'NONE'
        if hasattr(runtime, 'enable_fill_mode'):  # SDK 4.0+
            runtime.enable_fill_mode = self.fill_mode
        elif hasattr(sl, 'SENSING_MODE'):  # SDK 3.8
            runtime.sensing_mode = sl.SENSING_MODE.FILL if self.fill_mode \
                else sl.SENSING_MODE.STANDARD
        elif self.fill_mode:
            LOG.warning('ZED SDK %s has neither enable_fill_mode nor SENSING_MODE: fill_mode '
                        'ignored', self.sdk_version)
        return runtime

    def _configure(self, sl, zed) -> None:
        runtime = self._runtime_parameters(sl)
        left_cam, (width, height), baseline, fps = read_calibration(zed.get_camera_information())
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
        LOG.info('opened %s with ZED SDK %s: %dx%d at %.0f fps, output %dx%d, depth %s, '
                 'baseline %.4f m', self._what(), self.sdk_version, width, height, fps,
                 camera.width, camera.height, self.depth_mode, baseline)
        self.pacer = None
        if not self.svo_path and not releases_gil(self.sdk_version) and fps > 0:
            self.pacer = GrabPacer(fps)
            LOG.info('ZED SDK %s: its pyzed keeps the GIL in grab() and the retrieves (before '
                     '5.0.2), so grabs are timed to the camera\'s frames (%.0f ms before each) '
                     'and the other threads of this process run while it waits',
                     self.sdk_version, GRAB_LEAD_S * 1e3)

    def close(self) -> None:
        if self._zed is not None:
            zed, self._zed = self._zed, None
            zed.close()

    def read(self) -> Optional[Frame]:
        """
        Return the next frame; None at the end of an SVO without ``loop``.

        :raises SourceError: (or a subclass, module docstring) and nothing else, one line.
        """
        frame = self.read_image_first()
        if frame is not None and frame.pending is not None:
            frame.pending.complete(frame)
            frame.pending = None
        return frame

    def read_image_first(self) -> Optional[Frame]:
        """
        Return the next frame with its image; its depth and confidence when completed.

        ``Frame.pending`` (base.py) retrieves and copies them out of the SDK's buffers, which
        the next grab overwrites: complete it before the next ``read``. None with
        ``depth_mode`` NONE. Raises as :meth:`read` does, the completion too.
        """
        return self._guarded(self._read)

    @staticmethod
    def _guarded(call):
        try:
            return call()
        except SourceError:
            raise
        except ImportError as exc:
            raise SourceConfigError(str(exc)) from None
        except Exception as exc:  # whatever pyzed or the layout raised: the node retries
            raise SourceError('ZED grab failed: {}'.format(one_line(exc))) from None

    def _grab(self):
        """Grab; return 'SUCCESS' (after rewinding a looping SVO), None at the SVO's end."""
        if self.pacer is not None:
            self.pacer.wait()
        t0 = time.perf_counter()
        name = code_name(self._zed.grab(self._runtime))
        self._grab_s.append(time.perf_counter() - t0)
        self._first = False
        if name == 'END_OF_SVOFILE_REACHED' and self.svo_path:
            if not self.loop:
                return None
            self._zed.set_svo_position(0)
            self._first = True
            name = code_name(self._zed.grab(self._runtime))
        if name in GRAB_WARNINGS:
            if name not in self._warned:
                self._warned.add(name)
                LOG.warning('ZED grab reports %s (logged once); frames go on', name)
            return 'SUCCESS'
        if name == 'CORRUPTED_FRAME':
            raise FrameError('ZED grab: CORRUPTED_FRAME (frame dropped)')
        if name != 'SUCCESS':
            raise SourceError('ZED grab failed: {}'.format(name))
        return name

    def status_values(self) -> dict:
        """
        For zed_node's /diagnostics: the SDK, whether its pyzed keeps the GIL, the SDK calls' time.

        ``grab_ms_mean`` (per grab) and ``retrieve_ms_mean`` (per retrieve call, three a frame):
        means over the last 50 calls; with ``pyzed_keeps_gil``, no other Python thread of the
        process runs during them. ``grab_paced``: grabs timed to the camera's frames;
        ``grabs_timed``: how many waited for their time.
        """
        def mean_ms(values):
            return 1e3 * window_mean(values)
        return {'zed_sdk': self.sdk_version or 'not opened',
                'pyzed_keeps_gil': self.sdk_version is not None and
                not releases_gil(self.sdk_version),
                'grab_paced': self.pacer is not None,
                'grabs_timed': 0 if self.pacer is None else self.pacer.paced,
                'grab_ms_mean': mean_ms(self._grab_s),
                'retrieve_ms_mean': mean_ms(self._retrieve_s)}

    def _retrieve(self, mat, method, what):
        sl = self._sl
        t0 = time.perf_counter()
        name = code_name(getattr(self._zed, method)(mat, what, sl.MEM.CPU, self._out_size))
        self._retrieve_s.append(time.perf_counter() - t0)
        if name != 'SUCCESS':
            raise SourceError('ZED {}({}) failed: {}'.format(method, code_name(what), name))

    def _check_shape(self, what, array):
        camera = self._camera
        if array.shape[:2] != (camera.height, camera.width):
            raise SourceError('ZED returned a {}x{} {}, expected {}x{}'.format(
                array.shape[1], array.shape[0], what, camera.width, camera.height))

    def _retrieve_stereo(self):
        """(depth, confidence), copied out of the SDK's buffers (the next grab reuses them)."""
        sl = self._sl
        _, depth, confidence = self._mats
        self._retrieve(depth, 'retrieve_measure', sl.MEASURE.DEPTH)
        self._retrieve(confidence, 'retrieve_measure', sl.MEASURE.CONFIDENCE)
        depth_m = np.array(depth.get_data(), dtype=np.float32, copy=True)
        conf = np.array(confidence.get_data(), dtype=np.float32, copy=True)
        self._check_shape('depth', depth_m)
        self._check_shape('confidence', conf)
        return depth_m, conf

    def _read(self) -> Optional[Frame]:
        if self._zed is None:
            self.open()
        if self._grab() is None:
            return None
        # The image first: the network can start on it while the stereo is retrieved.
        image = self._mats[0]
        self._retrieve(image, 'retrieve_image', self._sl.VIEW.LEFT)
        # get_data() views SDK memory that the next grab overwrites: copy out.
        bgra = image.get_data()
        left = cv2.cvtColor(bgra, cv2.COLOR_BGRA2BGR) if bgra.ndim == 3 and bgra.shape[2] == 4 \
            else np.array(bgra, copy=True)
        stamp = int(self._zed.get_timestamp(self._sl.TIME_REFERENCE.IMAGE).get_nanoseconds())
        if self.pacer is not None:
            self.pacer.grabbed(stamp)
        if self._first and self._last_ns is not None:
            # An SVO replayed again: shift its stamps to go on after the last one.
            self._offset_ns = self._last_ns + (self._period_ns or 1) - stamp
        stamp += self._offset_ns
        if self._last_ns is not None and stamp > self._last_ns:
            self._period_ns = stamp - self._last_ns
        self._last_ns = stamp
        self._check_shape('image', left)
        pending = None if self.depth_mode == 'NONE' else \
            StereoPending(lambda: self._guarded(self._retrieve_stereo),
                          keeps_gil=not releases_gil(self.sdk_version))
        return Frame(left=left, depth=None, confidence=None, camera=self._camera,
                     stamp_ns=stamp, frame_id=self.frame_id, baseline_m=self._baseline_m,
                     pending=pending)

"""
A stand-in for ``pyzed.sl`` in the layouts of zed-python-api's sl.pyx at v3.8, v4.0, v4.1, v5.0.

The layouts are those that src/pyzed/sl.pyx has at these tags (v5.0.2 for v5.0). No ZED and no
GPU are needed.

It covers only what depth_ros.sources.zed touches, but with each tag's attribute sets:

- a class has exactly the properties that sl.pyx gives it at that tag. Assigning any other
  attribute raises AttributeError, as it does on a cdef class; the information containers are
  read-only;
- enum-typed properties and arguments refuse values of another type with TypeError, as the
  setters and ``retrieve_*`` do;
- enums are ``enum.Enum`` with that tag's members (RESOLUTION HD1200/SVGA/AUTO from v4.0,
  DEPTH_MODE NEURAL_PLUS from v4.1, SENSING_MODE only in v3.8, ERROR_CODE CAMERA_REBOOTING from
  v4.0, and the v5 warnings).

The scene, for independent checks in the tests (``true_depth``, ``true_confidence``):

- depth in metres at pixel (x, y) of frame i: ``0.25 * (x + 1) + 0.5 * i``;
- confidence ``1 + 99 * y / (H - 1)``.

As the SDK documents, a depth is returned in ``InitParameters.coordinate_units`` (default
MILLIMETER). It is -inf below ``depth_minimum_distance``, +inf beyond
``depth_maximum_distance``, and NaN where the confidence exceeds
``RuntimeParameters.confidence_threshold``. Images are BGRA uint8: B = 3x mod 256, G = i,
R = y. ``Mat.get_data()`` returns a view of a buffer that the next retrieve overwrites in place,
as the SDK's CPU memory is.

``make_sl(layout, frames=3, grab_codes=None, open_code='SUCCESS', fail=None)`` returns a module.
``sl.double`` records what the code under test did: the init and runtime values it passed,
opens, closes.

A live camera of a given size and calibration (benchmarks): ``make_sl(layout,
scene=Scene(...))`` serves the Scene's precomputed frames (BGRA image, depth in metres,
confidence) in a loop, at the Scene's size and intrinsics, as a live ZED does:

- ``grab()`` blocks until the camera's next frame at ``InitParameters.camera_fps`` (0: the
  resolution's default rate, as the SDK's), counted from ``open()``; a caller slower than the
  camera gets the newest frame (those in between are dropped), never one twice. A live camera
  has no end. ``Scene(paced=False)``: every grab returns the next frame at once;
- ``get_timestamp(IMAGE)``: the frame's capture time, wall clock (``time.time_ns`` at open
  plus whole periods), as the SDK stamps a live image;
- ``retrieve_*`` copy the frame into the Mat's buffer (the real SDK's CPU side: a GPU->CPU
  copy); the depth in ``coordinate_units`` with the range and confidence rules above is
  computed once per frame and settings, not at every retrieve. A smaller ``resolution`` is
  resized as in the default scene;
- ``Scene.load(path)`` / ``Scene.save(path)``: the frames as one .npz, for a node process.

The GIL, as each tag's sl.pyx has it: from v5.0.2 ``grab``, ``retrieve_image`` and
``retrieve_measure`` call the SDK inside ``with nogil:``; up to v5.0.1 (v3.8, v4.0, v4.1 here)
they hold the GIL for the whole call, so no other Python thread of the process runs while a
live camera's ``grab()`` waits for its next frame or a retrieve copies. The double does the same
(``LAYOUTS[layout]['releases_gil']``): its waits and copies are then C calls made with the GIL
held (ctypes' ``PyDLL``, ``PYFUNCTYPE``), not ``time.sleep`` and numpy copies, which release it.
"""
from __future__ import annotations

import ctypes
import enum
import time
import types

import cv2
import numpy as np

WIDTH, HEIGHT = 64, 36
FX, FY, CX, CY = 350.0, 351.0, 31.5, 17.5
BASELINE_M = 0.12
STAMP0_NS, PERIOD_NS = 1000000000, 33333333

_ERRORS_38 = (
    'SUCCESS', 'FAILURE', 'NO_GPU_COMPATIBLE', 'NOT_ENOUGH_GPU_MEMORY', 'CAMERA_NOT_DETECTED',
    'SENSORS_NOT_INITIALIZED', 'SENSORS_NOT_AVAILABLE', 'INVALID_RESOLUTION',
    'LOW_USB_BANDWIDTH', 'CALIBRATION_FILE_NOT_AVAILABLE', 'INVALID_CALIBRATION_FILE',
    'INVALID_SVO_FILE', 'SVO_RECORDING_ERROR', 'END_OF_SVOFILE_REACHED',
    'SVO_UNSUPPORTED_COMPRESSION', 'INVALID_COORDINATE_SYSTEM', 'INVALID_FIRMWARE',
    'INVALID_FUNCTION_PARAMETERS', 'CUDA_ERROR', 'CAMERA_NOT_INITIALIZED',
    'NVIDIA_DRIVER_OUT_OF_DATE', 'INVALID_FUNCTION_CALL', 'CORRUPTED_SDK_INSTALLATION',
    'INCOMPATIBLE_SDK_VERSION', 'INVALID_AREA_FILE', 'INCOMPATIBLE_AREA_FILE',
    'CAMERA_FAILED_TO_SETUP', 'CAMERA_DETECTION_ISSUE', 'CANNOT_START_CAMERA_STREAM',
    'NO_GPU_DETECTED', 'PLANE_NOT_FOUND', 'MODULE_NOT_COMPATIBLE_WITH_CAMERA',
    'MOTION_SENSORS_REQUIRED', 'MODULE_NOT_COMPATIBLE_WITH_CUDA_VERSION', 'LAST')
_ERRORS_40 = ('CAMERA_REBOOTING',) + _ERRORS_38
_ERRORS_50 = ('CONFIGURATION_FALLBACK', 'SENSORS_DATA_REQUIRED', 'CORRUPTED_FRAME') + _ERRORS_40

_INIT_FIELDS = (
    'camera_disable_self_calib', 'camera_fps', 'camera_image_flip', 'camera_resolution',
    'coordinate_system', 'coordinate_units', 'depth_maximum_distance', 'depth_minimum_distance',
    'depth_mode', 'depth_stabilization', 'enable_image_enhancement', 'enable_right_side_measure',
    'open_timeout_sec', 'optional_opencv_calibration_file', 'optional_settings_path',
    'sdk_gpu_id', 'sdk_verbose', 'sdk_verbose_log_file', 'sensors_required',
    'svo_real_time_mode')
_INIT_FIELDS_41 = _INIT_FIELDS + ('async_grab_camera_recovery', 'async_image_retrieval',
                                  'enable_image_validity_check', 'grab_compute_capping_fps')

LAYOUTS = {
    'v3.8': dict(
        sdk='3.8.2', resolutions=('HD2K', 'HD1080', 'HD720', 'VGA'),
        depth_modes=('NONE', 'PERFORMANCE', 'QUALITY', 'ULTRA', 'NEURAL'),
        errors=_ERRORS_38, sensing_mode=True, init=_INIT_FIELDS, new_info=False,
        default_resolution='HD720', default_depth='PERFORMANCE', default_confidence=100,
        releases_gil=False),
    'v4.0': dict(
        sdk='4.0.8', resolutions=('HD2K', 'HD1080', 'HD1200', 'HD720', 'SVGA', 'VGA', 'AUTO'),
        depth_modes=('NONE', 'PERFORMANCE', 'QUALITY', 'ULTRA', 'NEURAL'),
        errors=_ERRORS_40, sensing_mode=False, init=_INIT_FIELDS + ('async_grab_camera_recovery',),
        new_info=True, default_resolution='HD720', default_depth='PERFORMANCE',
        default_confidence=100, releases_gil=False),
    'v4.1': dict(
        sdk='4.1.4', resolutions=('HD2K', 'HD1080', 'HD1200', 'HD720', 'SVGA', 'VGA', 'AUTO'),
        depth_modes=('NONE', 'PERFORMANCE', 'QUALITY', 'ULTRA', 'NEURAL', 'NEURAL_PLUS'),
        errors=_ERRORS_40, sensing_mode=False, init=_INIT_FIELDS_41, new_info=True,
        default_resolution='HD720', default_depth='PERFORMANCE', default_confidence=100,
        releases_gil=False),
    'v5.0': dict(
        sdk='5.0.2', resolutions=('HD4K', 'QHDPLUS', 'HD2K', 'HD1080', 'HD1200', 'HD1536', 'HD720',
                                  'SVGA', 'VGA', 'AUTO'),
        depth_modes=('NONE', 'PERFORMANCE', 'QUALITY', 'ULTRA', 'NEURAL_LIGHT', 'NEURAL',
                     'NEURAL_PLUS'),
        errors=_ERRORS_50, sensing_mode=False, init=_INIT_FIELDS_41 + (
            'maximum_working_resolution',), new_info=True, default_resolution='AUTO',
        default_depth='NEURAL', default_confidence=95, releases_gil=True),
}

# C calls that keep the GIL (sl.pyx before v5.0.2 calls the SDK without ``with nogil``):
# ctypes releases the GIL around a call through CDLL / CFUNCTYPE, not through PyDLL / PYFUNCTYPE.
_LIBC = ctypes.PyDLL(None)
_LIBC.usleep.argtypes = [ctypes.c_uint]
_MEMMOVE_HOLDING_GIL = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                         ctypes.c_size_t)(ctypes._memmove_addr)


def sleep_holding_gil(seconds):
    """Wait as a C call that keeps the GIL does: no other Python thread runs meanwhile."""
    end = time.monotonic() + seconds
    left = seconds
    while left > 0:
        _LIBC.usleep(min(int(left * 1e6) + 1, 999999))
        left = end - time.monotonic()


def copy_holding_gil(dst, src):
    """``dst[...] = src`` (same shape and dtype, C-contiguous) with the GIL kept throughout."""
    src = np.ascontiguousarray(src)
    assert dst.flags.c_contiguous and dst.shape == src.shape and dst.dtype == src.dtype
    _MEMMOVE_HOLDING_GIL(dst.ctypes.data, src.ctypes.data, src.nbytes)


UNIT_SCALE = {'MILLIMETER': 1000.0, 'CENTIMETER': 100.0, 'METER': 1.0, 'INCH': 1 / 0.0254,
              'FOOT': 1 / 0.3048}


def true_depth(i: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """[H, W] float32 metres of frame i at full size (before range and confidence rules)."""
    x = np.arange(width, dtype=np.float32)[None, :]
    return np.repeat(0.25 * (x + 1) + 0.5 * i, height, axis=0).astype(np.float32)


def true_confidence(width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """[H, W] float32 in 1..100, larger = less reliable, as MEASURE.CONFIDENCE."""
    y = np.arange(height, dtype=np.float32)[:, None]
    return np.repeat(1 + 99 * y / (height - 1), width, axis=1).astype(np.float32)


def _enum(name, members):
    return enum.Enum(name, [(m, k) for k, m in enumerate(members)])


def _record(name, fields):
    """Make a read-only container class with exactly ``fields`` (a cdef class's getters)."""
    def getter(field):
        return property(lambda self: self._v[field])
    namespace = {'__slots__': ('_v',), '__init__': lambda self, **v: setattr(self, '_v', v)}
    namespace.update({f: getter(f) for f in fields})
    cls = type(name, (object,), namespace)
    return cls


def _params(name, fields, defaults, enums, methods=None):
    """Make a parameters class of exactly ``fields``; enum fields refuse other types."""
    def prop(field):
        def get(self):
            return self._v[field]

        def put(self, value):
            kind = enums.get(field)
            if kind is not None and not isinstance(value, kind):
                raise TypeError('Argument must be of {} type.'.format(kind.__name__))
            self._v[field] = value
        return property(get, put)

    def init(self):
        object.__setattr__(self, '_v', dict(defaults))
    namespace = {'__slots__': ('_v',), '__init__': init}
    namespace.update({f: prop(f) for f in fields})
    namespace.update(methods or {})
    return type(name, (object,), namespace)


# The SDK's default rate of a resolution (InitParameters.camera_fps = 0).
DEFAULT_FPS = {'HD4K': 15, 'QHDPLUS': 15, 'HD2K': 15, 'HD1080': 30, 'HD1200': 30,
               'HD1536': 30, 'HD720': 60, 'SVGA': 60, 'VGA': 100, 'AUTO': 30}


class Scene(object):
    """
    Precomputed frames that a live camera of the double serves in a loop (module docstring).

    :param images: [N, H, W, 4] uint8 BGRA (as ``retrieve_image(VIEW.LEFT)`` gives them).
    :param depths: [N, H, W] float32 metres (NaN, +-inf as the SDK's; the unit and the range and
        confidence rules are applied when retrieved, as for the default scene).
    :param confidences: [N, H, W] float32, 1..100.
    :param camera: (fx, fy, cx, cy) of the left camera at this size.
    :param baseline_m: the stereo baseline in metres.
    :param paced: grab() waits for the camera's next frame (True, a live camera) or returns
        the next frame at once (False).
    """

    def __init__(self, images, depths, confidences, camera, baseline_m=BASELINE_M, paced=True):
        images = np.ascontiguousarray(images, np.uint8)
        depths = np.ascontiguousarray(depths, np.float32)
        confidences = np.ascontiguousarray(confidences, np.float32)
        if images.ndim != 4 or images.shape[3] != 4 or len(images) == 0:
            raise ValueError('images must be [N, H, W, 4] BGRA, got {}'.format(images.shape))
        if depths.shape != images.shape[:3] or confidences.shape != images.shape[:3]:
            raise ValueError('depths {} and confidences {} must be [N, H, W] of images {}'.format(
                depths.shape, confidences.shape, images.shape))
        self.images, self.depths, self.confidences = images, depths, confidences
        self.camera = tuple(float(v) for v in camera)
        self.baseline_m = float(baseline_m)
        self.paced = bool(paced)
        self.height, self.width = images.shape[1:3]
        self._measures = {}   # (index, units, min, max, threshold) -> the SDK's depth

    def __len__(self):
        return len(self.images)

    @classmethod
    def from_bgr(cls, frames, camera, baseline_m=BASELINE_M, paced=True):
        """Build from (bgr, depth metres, confidence) triples (BGR -> BGRA as the SDK gives)."""
        images, depths, confs = [], [], []
        for bgr, depth, conf in frames:
            images.append(cv2.cvtColor(np.asarray(bgr, np.uint8), cv2.COLOR_BGR2BGRA))
            depths.append(depth)
            confs.append(conf)
        return cls(np.stack(images), np.stack(depths), np.stack(confs), camera, baseline_m,
                   paced)

    def save(self, path):
        """Write the scene as one uncompressed .npz (``Scene.load`` reads it back)."""
        np.savez(path, images=self.images, depths=self.depths, confidences=self.confidences,
                 camera=np.asarray(self.camera, np.float64),
                 baseline_m=np.float64(self.baseline_m), paced=np.bool_(self.paced))
        return path

    @classmethod
    def load(cls, path):
        """Read a scene that ``save`` wrote."""
        with np.load(path) as z:
            return cls(z['images'], z['depths'], z['confidences'], tuple(z['camera']),
                       float(z['baseline_m']), bool(z['paced']))

    def depth(self, index, units, minimum, maximum, threshold):
        """Return the SDK's depth of frame ``index`` for these settings (computed once, kept)."""
        key = (index, units, minimum, maximum, threshold)
        out = self._measures.get(key)
        if out is None:
            depth = self.depths[index]
            out = depth * np.float32(UNIT_SCALE[units])
            with np.errstate(invalid='ignore'):
                if minimum > 0:
                    out[depth < minimum] = -np.inf
                if maximum > 0:
                    out[depth > maximum] = np.inf
                out[self.confidences[index] > threshold] = np.nan
            self._measures[key] = out
        return out


class Resolution(object):
    """sl.Resolution (the same in every layout)."""

    __slots__ = ('width', 'height')

    def __init__(self, width=0, height=0):
        self.width, self.height = width, height

    def area(self):
        return self.width * self.height


class Timestamp(object):
    """sl.Timestamp (the same in every layout)."""

    __slots__ = ('data_ns',)

    def __init__(self, ns=0):
        self.data_ns = ns

    def get_nanoseconds(self):
        return self.data_ns

    def get_milliseconds(self):
        return self.data_ns // 1000000


class Mat(object):
    """sl.Mat on the CPU: get_data() views a buffer that the next retrieve overwrites."""

    __slots__ = ('_data',)

    def __init__(self):
        self._data = np.zeros((0, 0), np.float32)

    def _fill(self, array, holding_gil=False):
        if self._data.shape != array.shape or self._data.dtype != array.dtype:
            self._data = np.empty_like(array)
        # The SDK reuses its buffer: views see the new frame.
        if holding_gil:
            copy_holding_gil(self._data, array)
        else:
            self._data[...] = array

    def get_data(self, memory_type=None, deep_copy=False):
        return self._data.copy() if deep_copy else self._data

    def get_width(self):
        return self._data.shape[1]

    def get_height(self):
        return self._data.shape[0]


def _set_from_svo_file(self, path):
    self._v['_input'] = ('svo', path)


def _set_from_serial_number(self, serial, *bus_type):
    self._v['_input'] = ('serial', serial)


def _enums(sl, layout, spec):
    sl.ERROR_CODE = _enum('ERROR_CODE', spec['errors'])
    sl.RESOLUTION = _enum('RESOLUTION', spec['resolutions'] + ('LAST',))
    sl.DEPTH_MODE = _enum('DEPTH_MODE', spec['depth_modes'] + ('LAST',))
    sl.UNIT = _enum('UNIT', ('MILLIMETER', 'CENTIMETER', 'METER', 'INCH', 'FOOT', 'LAST'))
    sl.MEASURE = _enum('MEASURE', ('DISPARITY', 'DEPTH', 'CONFIDENCE', 'XYZ', 'LAST'))
    sl.VIEW = _enum('VIEW', ('LEFT', 'RIGHT', 'LEFT_GRAY', 'RIGHT_GRAY', 'LAST'))
    sl.MEM = _enum('MEM', ('CPU',) if layout != 'v5.0' else ('CPU', 'GPU', 'BOTH'))
    sl.TIME_REFERENCE = _enum('TIME_REFERENCE', ('IMAGE', 'CURRENT', 'LAST'))
    if spec['sensing_mode']:
        sl.SENSING_MODE = _enum('SENSING_MODE', ('STANDARD', 'FILL', 'LAST'))


def _parameter_classes(sl, spec):
    init_defaults = {f: None for f in spec['init']}
    init_defaults.update(
        camera_resolution=sl.RESOLUTION[spec['default_resolution']], camera_fps=0,
        depth_mode=sl.DEPTH_MODE[spec['default_depth']], coordinate_units=sl.UNIT.MILLIMETER,
        depth_minimum_distance=-1.0, depth_maximum_distance=-1.0, svo_real_time_mode=False,
        _input=('camera', 0))
    sl.InitParameters = _params(
        'InitParameters', spec['init'], init_defaults,
        {'camera_resolution': sl.RESOLUTION, 'depth_mode': sl.DEPTH_MODE,
         'coordinate_units': sl.UNIT},
        {'set_from_svo_file': _set_from_svo_file,
         'set_from_serial_number': _set_from_serial_number})
    fields = ['confidence_threshold', 'enable_depth', 'measure3D_reference_frame',
              'remove_saturated_areas', 'texture_confidence_threshold']
    defaults = dict(confidence_threshold=spec['default_confidence'], enable_depth=True,
                    measure3D_reference_frame=None, remove_saturated_areas=True,
                    texture_confidence_threshold=100)
    enums = {}
    if spec['sensing_mode']:
        fields += ['sensing_mode', 'textureness_confidence_threshold']
        defaults.update(sensing_mode=sl.SENSING_MODE.STANDARD,
                        textureness_confidence_threshold=100)
        enums['sensing_mode'] = sl.SENSING_MODE
    else:
        fields += ['enable_fill_mode']
        defaults['enable_fill_mode'] = False
    sl.RuntimeParameters = _params('RuntimeParameters', fields, defaults, enums)


def _information_classes(sl, spec):
    sl.CameraParameters = _record('CameraParameters', [
        'cx', 'cy', 'd_fov', 'disto', 'fx', 'fy', 'h_fov', 'image_size', 'v_fov'])
    calib = _record('CalibrationParameters', ['left_cam', 'right_cam', 'stereo_transform']
                    + ([] if spec['new_info'] else ['R', 'T']))
    calib.get_camera_baseline = lambda self: self._v['_baseline']
    sl.CalibrationParameters = calib
    if spec['new_info']:
        sl.CameraConfiguration = _record('CameraConfiguration', [
            'calibration_parameters', 'calibration_parameters_raw', 'firmware_version', 'fps',
            'resolution'])
        sl.CameraInformation = _record('CameraInformation', [
            'camera_configuration', 'camera_model', 'input_type', 'sensors_configuration',
            'serial_number'])
    else:
        sl.CameraConfiguration = _record('CameraConfiguration', [
            'calibration_parameters', 'calibration_parameters_raw', 'camera_fps',
            'camera_resolution', 'firmware_version'])
        sl.CameraInformation = _record('CameraInformation', [
            'calibration_parameters', 'calibration_parameters_raw', 'camera_configuration',
            'camera_firmware_version', 'camera_fps', 'camera_imu_transform', 'camera_model',
            'camera_resolution', 'input_type', 'sensors_configuration',
            'sensors_firmware_version', 'serial_number'])


def _information(sl, spec, units, fps, scene=None):
    """Build the information that this layout's get_camera_information returns."""
    if scene is None:
        size, (fx, fy, cx, cy), baseline_m = Resolution(WIDTH, HEIGHT), (FX, FY, CX, CY), \
            BASELINE_M
    else:
        size, (fx, fy, cx, cy), baseline_m = Resolution(scene.width, scene.height), \
            scene.camera, scene.baseline_m
    left = sl.CameraParameters(fx=fx, fy=fy, cx=cx, cy=cy, image_size=size, disto=[0.0] * 5,
                               h_fov=0.0, v_fov=0.0, d_fov=0.0)
    baseline = baseline_m * units
    calib = {'left_cam': left, 'right_cam': left, 'stereo_transform': None,
             '_baseline': baseline}
    if not spec['new_info']:
        calib.update(R=[0.0, 0.0, 0.0], T=[-baseline, 0.0, 0.0])
    calib = sl.CalibrationParameters(**calib)
    if spec['new_info']:
        config = sl.CameraConfiguration(calibration_parameters=calib,
                                        calibration_parameters_raw=calib,
                                        firmware_version=1523, fps=fps, resolution=size)
        return sl.CameraInformation(camera_configuration=config, camera_model='ZED2',
                                    input_type='USB', sensors_configuration=None,
                                    serial_number=12345)
    config = sl.CameraConfiguration(calibration_parameters=calib,
                                    calibration_parameters_raw=calib, camera_fps=fps,
                                    camera_resolution=size, firmware_version=1523)
    return sl.CameraInformation(
        calibration_parameters=calib, calibration_parameters_raw=calib,
        camera_configuration=config, camera_firmware_version=1523, camera_fps=fps,
        camera_imu_transform=None, camera_model='ZED2', camera_resolution=size,
        input_type='USB', sensors_configuration=None, sensors_firmware_version=777,
        serial_number=12345)


def _measure(sl, init, runtime, measure, i):
    """Compute a full-size MEASURE array as the SDK would (module docstring)."""
    conf = true_confidence()
    if measure == sl.MEASURE.CONFIDENCE:
        return conf
    depth = true_depth(i)
    out = depth * np.float32(UNIT_SCALE[init['coordinate_units'].name])
    if init['depth_minimum_distance'] > 0:
        out[depth < init['depth_minimum_distance']] = -np.inf
    if init['depth_maximum_distance'] > 0:
        out[depth > init['depth_maximum_distance']] = np.inf
    out[conf > runtime['confidence_threshold']] = np.nan
    return out


def _image(i):
    bgra = np.zeros((HEIGHT, WIDTH, 4), np.uint8)
    bgra[:, :, 0] = (np.arange(WIDTH)[None, :] * 3) % 256
    bgra[:, :, 1] = i % 256
    bgra[:, :, 2] = np.arange(HEIGHT)[:, None]
    bgra[:, :, 3] = 255
    return bgra


class _Camera(object):
    """sl.Camera; make_sl() subclasses it with the layout and the scenario as class attributes."""

    __slots__ = ('_init', '_i', '_open', '_t0', '_w0', '_fps')
    sl = spec = double = scene = None
    frames, grab_codes, open_code, fail = 0, {}, 'SUCCESS', {}
    grab_work_s = 0.0

    def __init__(self):
        self._init, self._i, self._open = None, -1, False
        self._t0 = self._w0 = self._fps = None

    @classmethod
    def get_sdk_version(cls):
        return cls.spec['sdk']

    def _code(self, name):
        return self.sl.ERROR_CODE[name]

    def _check_fail(self, name):
        if name in self.fail:
            raise self.fail[name]

    def open(self, py_init=None):
        self._check_fail('open')
        if not isinstance(py_init, self.sl.InitParameters):
            raise TypeError('Argument must be of InitParameters type.')
        self.double.opens.append(dict(py_init._v))
        self._init = dict(py_init._v)
        self._open = self.open_code in ('SUCCESS', 'CONFIGURATION_FALLBACK')
        if self.scene is not None:
            # The camera streams from here: frame k is captured at open + k periods.
            self._fps = float(self._init['camera_fps'] or
                              DEFAULT_FPS.get(self._init['camera_resolution'].name, 30))
            self._t0, self._w0, self._i = time.monotonic(), time.time_ns(), -1
        return self._code(self.open_code)

    def close(self):
        self.double.closes += 1
        self._open = False

    def get_camera_information(self, resizer=None):
        self._check_fail('get_camera_information')
        units = UNIT_SCALE[self._init['coordinate_units'].name]
        if self.scene is not None:
            return _information(self.sl, self.spec, units, self._fps, self.scene)
        return _information(self.sl, self.spec, units, float(self._init['camera_fps'] or 30))

    def grab(self, py_runtime=None):
        self._check_fail('grab')
        if not isinstance(py_runtime, self.sl.RuntimeParameters):
            raise TypeError('Argument must be of RuntimeParameters type.')
        if not self._open:
            return self._code('CAMERA_NOT_INITIALIZED')
        self.double.runtime = dict(py_runtime._v)
        self.double.grabs += 1
        nxt = self._i + 1
        if nxt in self.grab_codes:
            return self._code(self.grab_codes.pop(nxt))
        if self.scene is not None:  # a live camera: no end
            self._i = self._live_next()
            if self.grab_work_s > 0:     # the SDK's own work on the frame (depth on the GPU)
                if self.spec['releases_gil']:
                    time.sleep(self.grab_work_s)
                else:
                    sleep_holding_gil(self.grab_work_s)
            return self._code('SUCCESS')
        if nxt >= self.frames:
            return self._code('END_OF_SVOFILE_REACHED')
        self._i = nxt
        return self._code('SUCCESS')

    def _live_next(self):
        """Wait for the camera's next frame; return its number (the newest if we are late)."""
        if not self.scene.paced:
            return self._i + 1
        period = 1.0 / self._fps
        now = time.monotonic()
        k = max(self._i + 1, int((now - self._t0) / period))  # frames 0..k captured by now
        wait = self._t0 + k * period - now
        if wait > 0:
            if self.spec['releases_gil']:
                time.sleep(wait)
            else:
                sleep_holding_gil(wait)     # sl.pyx before v5.0.2: grab() keeps the GIL
        return k

    def set_svo_position(self, frame_number):
        self._i = frame_number - 1
        return self._code('SUCCESS') if self.double.layout == 'v5.0' else None

    def _native(self):
        return (WIDTH, HEIGHT) if self.scene is None else (self.scene.width, self.scene.height)

    def _size(self, resolution):
        if resolution is None or (resolution.width, resolution.height) == (0, 0):
            return self._native()
        return resolution.width, resolution.height

    def _retrieve(self, method, kind, value, mem, resolution, enum_cls):
        self._check_fail(method)
        if not isinstance(value, enum_cls) or not isinstance(mem, self.sl.MEM):
            raise TypeError('Argument is not of {} or MEM type.'.format(kind))
        w, h = self._size(resolution)
        native_w, native_h = self._native()
        return None if w > native_w or h > native_h else (w, h)

    def retrieve_image(self, py_mat, view=None, type=None, resolution=None):
        size = self._retrieve('retrieve_image', 'VIEW', view, type, resolution, self.sl.VIEW)
        if size is None:
            return self._code('INVALID_RESOLUTION')
        if self.scene is not None:
            image = self.scene.images[self._i % len(self.scene)]
            if size != self._native():
                image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            # The SDK's GPU->CPU copy into the Mat's buffer (the GIL kept before v5.0.2).
            py_mat._fill(image, holding_gil=not self.spec['releases_gil'])
            return self._code('SUCCESS')
        py_mat._fill(cv2.resize(_image(self._i), size, interpolation=cv2.INTER_AREA))
        return self._code('SUCCESS')

    def retrieve_measure(self, py_mat, measure=None, type=None, resolution=None):
        size = self._retrieve('retrieve_measure', 'MEASURE', measure, type, resolution,
                              self.sl.MEASURE)
        if size is None:
            return self._code('INVALID_RESOLUTION')
        if self.scene is not None:
            index = self._i % len(self.scene)
            if measure == self.sl.MEASURE.CONFIDENCE:
                value = self.scene.confidences[index]
            else:
                init = self._init
                value = self.scene.depth(index, init['coordinate_units'].name,
                                         init['depth_minimum_distance'],
                                         init['depth_maximum_distance'],
                                         self.double.runtime['confidence_threshold'])
            if size != self._native():
                value = cv2.resize(value, size, interpolation=cv2.INTER_NEAREST)
            py_mat._fill(value, holding_gil=not self.spec['releases_gil'])
            return self._code('SUCCESS')
        value = _measure(self.sl, self._init, self.double.runtime, measure, self._i)
        py_mat._fill(cv2.resize(value, size, interpolation=cv2.INTER_NEAREST))
        return self._code('SUCCESS')

    def get_timestamp(self, time_reference):
        if not isinstance(time_reference, self.sl.TIME_REFERENCE):
            raise TypeError('Argument is not of TIME_REFERENCE type.')
        if self.scene is not None:  # the capture time, wall clock
            return Timestamp(self._w0 + int(round(self._i * 1e9 / self._fps)))
        return Timestamp(STAMP0_NS + PERIOD_NS * self._i)


def make_sl(layout='v4.0', frames=3, grab_codes=None, open_code='SUCCESS', fail=None,
            scene=None, grab_work_s=0.0):
    """
    Build the module (see the module docstring).

    :param frames: frames in the recording; grab() then returns END_OF_SVOFILE_REACHED.
    :param grab_codes: {frame index: ERROR_CODE name} that grab() returns instead of a frame
        (the frame is not consumed, so a later grab delivers it).
    :param open_code: what Camera.open() returns.
    :param fail: {method name: exception} raised by that Camera method (a pyzed that throws).
    :param scene: a Scene: a live camera serving its frames in a loop, at its size and
        intrinsics, paced at the camera's rate (``frames`` is then unused).
    :param grab_work_s: with a scene, the SDK's own work in each grab() after the frame came
        (rectification and depth): the GIL kept, as the wait, before v5.0.2.
    """
    spec = LAYOUTS[layout]
    sl = types.ModuleType('pyzed.sl')
    _enums(sl, layout, spec)
    _parameter_classes(sl, spec)
    _information_classes(sl, spec)
    sl.double = types.SimpleNamespace(opens=[], closes=0, runtime=None, grabs=0, layout=layout)
    sl.Resolution, sl.Timestamp, sl.Mat = Resolution, Timestamp, Mat
    sl.Camera = type('Camera', (_Camera,), {
        '__slots__': (), 'sl': sl, 'spec': spec, 'double': sl.double, 'frames': frames,
        'grab_codes': dict(grab_codes or {}), 'open_code': open_code, 'fail': dict(fail or {}),
        'scene': scene, 'grab_work_s': float(grab_work_s)})
    return sl

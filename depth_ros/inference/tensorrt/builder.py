"""
Build TensorRT engines from the exported ONNX, through the engine cache.

``build_engine`` validates the options, keys the cache (GPU, compute capability, TensorRT version,
ONNX sha256, input shape, precision, DLA core), reuses a matching cached engine, and otherwise
builds with the TensorRT Python builder (through trt_api) and writes engine + JSON record.

Precision policy: FP16 (the Jetson default), FP32, or INT8 with an entropy calibrator on recorded
frames. In FP16/INT8 builds LayerNorm and Softmax stay in FP32: in a ViT the LayerNorm variance
reduction overflows FP16 (TensorRT 8.5 warns about it), which shows up as flat or NaN depth.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import time
from typing import Dict, Optional, Tuple

from depth_ros.core.preprocess import check_input_size
from depth_ros.inference.tensorrt.cache import (check_precision, compare_key, EngineCache,
                                                EngineCacheError, file_sha256, make_key,
                                                onnx_stem)
from depth_ros.inference.tensorrt.calibrator import CalibrationCache, CalibrationSource

LOG = logging.getLogger('depth_ros.tensorrt')

DEFAULT_WORKSPACE_MB = 1024  # Xavier NX: 8 GB shared by CPU and GPU; leave room for ROS + ZED
DEFAULT_CALIB_BATCH = 8

# Layer types whose FP16 execution overflows or loses too much in a ViT. NORMALIZATION exists from
# TensorRT 8.6 (LayerNormalization as one node, opset >= 17); on 8.5 the ONNX LayerNormalization
# is decomposed into REDUCE / ELEMENTWISE / UNARY layers that keep the ONNX node names, so those
# are recognised by the name of the norm module they come from.
_ALWAYS_FP32_TYPES = ('NORMALIZATION', 'SOFTMAX')
_DECOMPOSED_TYPES = ('REDUCE', 'ELEMENTWISE', 'UNARY')
_NORM_NAME = re.compile(r'(^|[/._:])(layer_?norm\w*|norm\d*|ln_?\d*)([/._:]|$)', re.IGNORECASE)
_SOFTMAX_NAME = re.compile(r'softmax', re.IGNORECASE)


def keep_fp32(layer_name: str, layer_type: str) -> bool:
    """
    Tell whether a layer is pinned to FP32 in FP16/INT8 builds: LayerNorm and Softmax.

    :param layer_name: TensorRT layer name (the ONNX node name, e.g.
        '/backbone/encoder/layer.0/norm1/ReduceMean').
    :param layer_type: TensorRT LayerType name ('REDUCE', 'NORMALIZATION', ...).
    """
    if layer_type in _ALWAYS_FP32_TYPES:
        return True
    if layer_type in _DECOMPOSED_TYPES:
        return bool(_NORM_NAME.search(layer_name) or _SOFTMAX_NAME.search(layer_name))
    return False


def check_workspace_mb(workspace_mb) -> int:
    """Validate the builder workspace limit in MiB."""
    if isinstance(workspace_mb, bool) or not isinstance(workspace_mb, int) or workspace_mb <= 0:
        raise ValueError('`workspace_mb` must be an integer > 0 (MiB), got {!r}'.format(
            workspace_mb))
    if workspace_mb > 64 * 1024:
        raise ValueError('`workspace_mb` must be at most 65536 MiB, got {!r}'.format(workspace_mb))
    return workspace_mb


def check_dla_core(dla_core) -> Optional[int]:
    """Validate a DLA core index (None = GPU only)."""
    if dla_core is None:
        return None
    if isinstance(dla_core, bool) or not isinstance(dla_core, int) or dla_core < 0:
        raise ValueError('`dla_core` must be None or an integer >= 0, got {!r}'.format(dla_core))
    return dla_core


class Heartbeat(object):
    """Logs 'still building, N s elapsed' every ``interval_s`` until stopped (TensorRT 8.5)."""

    def __init__(self, what: str, interval_s: float = 15.0, log=None):
        if not interval_s > 0:
            raise ValueError('`interval_s` must be > 0, got {!r}'.format(interval_s))
        self.what = what
        self.interval_s = float(interval_s)
        self.beats = 0
        self._log = log or LOG
        self._stop = threading.Event()
        self._thread = None
        self._t0 = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.beats += 1
            self._log.info('%s: %.0f s elapsed', self.what, time.monotonic() - self._t0)

    def __enter__(self):
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, name='trt-heartbeat', daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False


class PhaseLogger(object):
    """
    Python side of TensorRT 10's IProgressMonitor: logs phases with elapsed time.

    Thread-safe (TensorRT calls it from several threads). ``cancel()`` makes the next
    ``step_complete`` return False, which asks TensorRT to stop the build.
    """

    def __init__(self, log=None):
        self._log = log or LOG
        self._lock = threading.Lock()
        self._steps = {}  # type: Dict[str, Tuple[int, int, Optional[str]]]
        self._t0 = time.monotonic()
        self._cancelled = False
        self.events = []  # (kind, phase) in call order, for tests and post-mortems

    def _depth(self, parent: Optional[str]) -> int:
        depth = 0
        while parent is not None and parent in self._steps:
            depth += 1
            parent = self._steps[parent][2]
        return depth

    def phase_start(self, phase_name: str, parent_phase: Optional[str], num_steps: int) -> None:
        with self._lock:
            self._steps[phase_name] = (0, int(num_steps), parent_phase)
            self.events.append(('start', phase_name))
            self._log.info('%s%s (%d steps) +%.0f s', '  ' * self._depth(parent_phase),
                           phase_name, num_steps, time.monotonic() - self._t0)

    def step_complete(self, phase_name: str, step: int) -> bool:
        with self._lock:
            _, total, parent = self._steps.get(phase_name, (0, 0, None))
            self._steps[phase_name] = (int(step) + 1, total, parent)
            self.events.append(('step', phase_name))
            self._log.debug('%s: step %d/%d', phase_name, int(step) + 1, total)
            return not self._cancelled

    def phase_finish(self, phase_name: str) -> None:
        with self._lock:
            parent = self._steps.pop(phase_name, (0, 0, None))[2]
            self.events.append(('finish', phase_name))
            self._log.info('%sdone: %s +%.0f s', '  ' * self._depth(parent), phase_name,
                           time.monotonic() - self._t0)

    def cancel(self) -> None:
        """Ask TensorRT to stop at its next step."""
        self._cancelled = True


class BuildResult(object):
    """What build_engine did: the engine path, its key, and whether it was built now."""

    def __init__(self, engine_path: str, key: Dict[str, object], built: bool, seconds: float,
                 fp32_layers: int = 0):
        self.engine_path = engine_path
        self.key = key
        self.built = built
        self.seconds = seconds
        self.fp32_layers = fp32_layers

    def __repr__(self) -> str:
        return 'BuildResult({!r}, built={}, {:.1f} s)'.format(
            self.engine_path, self.built, self.seconds)


def _input_shape(parsed, onnx_path: str, input_size: Optional[Tuple[int, int]]):
    inputs = parsed.inputs()
    if len(inputs) != 1:
        raise ValueError('ONNX file {} must have one input (the image), has {}: {}'.format(
            onnx_path, len(inputs), inputs))
    shape = list(inputs[0].shape)
    if len(shape) != 4 or shape[1] not in (3, -1) or shape[0] not in (1, -1):
        raise ValueError('ONNX file {} input must be [1, 3, h, w], got {}'.format(
            onnx_path, shape))
    if input_size is not None:
        w, h = check_input_size(*input_size)
        for have, want, name in ((shape[2], h, 'height'), (shape[3], w, 'width')):
            if have >= 0 and have != want:
                raise ValueError('`input_size` {} does not match ONNX file {} input {} {}'
                                 .format(tuple(input_size), onnx_path, name, have))
        return [1, 3, h, w]
    if min(shape) < 0:
        raise ValueError('ONNX file {} has a dynamic input shape {}; give input_size (width, '
                         'height), e.g. --input-size 518x294'.format(onnx_path, shape))
    check_input_size(shape[3], shape[2])
    return shape


def build_engine(onnx_path: str, precision: str = 'fp16', cache_dir: Optional[str] = None,
                 workspace_mb: int = DEFAULT_WORKSPACE_MB, dla_core: Optional[int] = None,
                 calib_dir: Optional[str] = None, calib_batch_size: int = DEFAULT_CALIB_BATCH,
                 calib_max_images: Optional[int] = None,
                 input_size: Optional[Tuple[int, int]] = None, device: int = 0,
                 force: bool = False, heartbeat_s: float = 15.0, api=None) -> BuildResult:
    """
    Return the cached engine for ``onnx_path`` and these options, building it if needed.

    :param precision: 'fp16' (default), 'fp32' or 'int8'.
    :param cache_dir: engine cache directory (default: see cache.default_cache_dir).
    :param workspace_mb: builder workspace (tactic scratch memory) limit, MiB.
    :param dla_core: run on this DLA core, with GPU fallback for unsupported layers.
    :param calib_dir: folder of recorded frames for INT8 calibration.
    :param input_size: (width, height); needed only when the ONNX input is dynamic.
    :param force: rebuild even when a matching engine is cached.
    :param api: trt_api or a test double of it.
    """
    check_precision(precision)
    check_workspace_mb(workspace_mb)
    check_dla_core(dla_core)
    if dla_core is not None and precision == 'fp32':
        # The DLA runs FP16 and INT8 only; an FP32 build would silently fall back to the GPU.
        raise ValueError('`dla_core` {} needs precision fp16 or int8 (the DLA has no FP32), '
                         'got fp32'.format(dla_core))
    if not os.path.isfile(onnx_path):
        raise FileNotFoundError('ONNX file {} does not exist; export one with `depth-ros model '
                                'export`'.format(onnx_path))
    if api is None:
        from depth_ros.inference.tensorrt import trt_api as api
    cache = EngineCache(cache_dir)
    onnx_sha = file_sha256(onnx_path)
    gpu = api.open_device(device)
    try:
        with gpu.activate():
            runtime = gpu.info()
            parsed = api.parse_onnx(onnx_path)
            shape = _input_shape(parsed, onnx_path, input_size)
            key = make_key(runtime, onnx_sha, shape, precision, dla_core)
            path = cache.path_for(onnx_path, key)
            if os.path.exists(path) and not force:
                try:
                    real, _ = cache.validate(path, key)
                    LOG.info('cached engine %s matches (TensorRT %s, %s, %s); not rebuilding',
                             real, key['tensorrt_version'], key['gpu_name'], precision)
                    return BuildResult(real, key, built=False, seconds=0.0)
                except (EngineCacheError, FileNotFoundError) as exc:
                    LOG.warning('%s; rebuilding', exc)
            for other in cache.candidates(onnx_path):
                if os.path.abspath(other) == os.path.abspath(path):
                    continue
                try:
                    differences = compare_key(cache.read_record(other)['key'], key)
                except EngineCacheError as exc:
                    differences = [str(exc)]
                LOG.info('not reusing %s: %s', other, '; '.join(differences) or 'same key')
            if dla_core is not None and dla_core >= parsed.num_dla_cores():
                raise ValueError('`dla_core` {} does not exist: this platform has {} DLA cores'
                                 .format(dla_core, parsed.num_dla_cores()))
            source = None
            if precision == 'int8':
                # TensorRT ignores a table written by another version (its header says which),
                # so the version is part of the name, like the model and the input size.
                calib_cache = os.path.join(cache.cache_dir, '{}_{}x{}_{}_trt{}.calib'.format(
                    onnx_stem(onnx_path), shape[3], shape[2], onnx_sha[:12],
                    key['tensorrt_version']))
                if calib_dir is not None:
                    source = CalibrationSource.from_folder(
                        calib_dir, (shape[3], shape[2]), batch_size=calib_batch_size,
                        cache_path=calib_cache, max_images=calib_max_images)
                elif CalibrationCache(calib_cache).read() is not None:
                    source = CalibrationSource([], (shape[3], shape[2]), cache_path=calib_cache)
                else:
                    raise ValueError('precision int8 needs `calib_dir` (a folder of recorded '
                                     'frames); no calibration cache {} exists'.format(
                                         calib_cache))
            LOG.info('building %s engine from %s (input %s, workspace %d MiB%s); this takes '
                     'minutes on a Jetson', precision, onnx_path, shape, workspace_mb,
                     '' if dla_core is None else ', DLA core {} + GPU fallback'.format(dla_core))
            t0 = time.monotonic()
            if api.has_progress_monitor():
                plan, pinned = api.build_serialized(
                    parsed, precision, workspace_mb << 20, dla_core, shape, keep_fp32,
                    calibration_source=source, progress=PhaseLogger())
            else:
                with Heartbeat('building {} engine'.format(precision), heartbeat_s):
                    plan, pinned = api.build_serialized(
                        parsed, precision, workspace_mb << 20, dla_core, shape, keep_fp32,
                        calibration_source=source, progress=None)
            seconds = time.monotonic() - t0
            if precision != 'fp32':
                LOG.info('%d LayerNorm/Softmax layers kept in FP32', pinned)
            extra = {'workspace_mb': workspace_mb, 'onnx_path': os.path.abspath(onnx_path),
                     'fp32_layers': pinned, 'build_seconds': round(seconds, 1)}
            if source is not None:
                extra['calibration'] = {'images': len(source.images),
                                        'batch_size': source.batch_size,
                                        'cache': source.cache.path}
            written = cache.write(path, plan, key, extra)
            LOG.info('built in %.0f s; engine written to %s', seconds, written)
            return BuildResult(written, key, built=True, seconds=seconds, fp32_layers=pinned)
    finally:
        gpu.close()

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

import contextlib
from dataclasses import dataclass
import logging
import os
import re
import threading
import time
from typing import Dict, Optional, Tuple

from depth_ros.core.preprocess import check_input_size
from depth_ros.inference.tensorrt.cache import (check_dla_core, check_precision, compare_key,
                                                EngineCache, EngineCacheError, make_key,
                                                onnx_stem)
from depth_ros.inference.tensorrt.calibrator import CalibrationCache, CalibrationSource
from depth_ros.util import check_number_as, file_sha256, log_heartbeat

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


MAX_WORKSPACE_MB = 64 * 1024


def check_workspace_mb(workspace_mb) -> int:
    """Validate the builder workspace limit in MiB."""
    workspace_mb = check_number_as('`{name}` must be an integer > 0 (MiB), got {value!r}',
                                   'workspace_mb', workspace_mb, low=1, integer=True)
    if workspace_mb > MAX_WORKSPACE_MB:
        raise ValueError('`workspace_mb` must be at most {} MiB, got {!r}'.format(
            MAX_WORKSPACE_MB, workspace_mb))
    return workspace_mb


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


@dataclass(repr=False)
class BuildResult:
    """What build_engine did: the engine path, its key, and whether it was built now."""

    engine_path: str
    key: Dict[str, object]
    built: bool
    seconds: float
    fp32_layers: int = 0

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


def _check_request(onnx_path: str, precision: str, workspace_mb: int,
                   dla_core: Optional[int]) -> None:
    """Validate build_engine's options before any GPU work."""
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


def _reuse_cached(cache: EngineCache, path: str,
                  key: Dict[str, object]) -> Optional[BuildResult]:
    """Return the cached engine at ``path`` when it matches ``key``, else None."""
    if os.path.exists(path):
        try:
            real, _ = cache.validate(path, key)
            LOG.info('cached engine %s matches (TensorRT %s, %s, %s); not rebuilding',
                     real, key['tensorrt_version'], key['gpu_name'], key['precision'])
            return BuildResult(real, key, built=False, seconds=0.0)
        except (EngineCacheError, FileNotFoundError) as exc:
            LOG.warning('%s; rebuilding', exc)
    return None


def _log_other_engines(cache: EngineCache, onnx_path: str, path: str,
                       key: Dict[str, object]) -> None:
    """Log, for every other cached engine of this ONNX, why it is not used."""
    for other in cache.candidates(onnx_path):
        if os.path.abspath(other) == os.path.abspath(path):
            continue
        try:
            differences = compare_key(cache.read_record(other)['key'], key)
        except EngineCacheError as exc:
            differences = [str(exc)]
        LOG.info('not reusing %s: %s', other, '; '.join(differences) or 'same key')


def _calibration_source(cache: EngineCache, onnx_path: str, key: Dict[str, object],
                        calib_dir: Optional[str], batch_size: int,
                        max_images: Optional[int]) -> Optional[CalibrationSource]:
    """INT8: frames of ``calib_dir``, else the cached table; None for other precisions."""
    if key['precision'] != 'int8':
        return None
    h, w = key['input_shape'][2], key['input_shape'][3]
    # TensorRT ignores a table written by another version (its header says which), so the
    # version is part of the name, like the model and the input size.
    calib_cache = os.path.join(cache.cache_dir, '{}_{}x{}_{}_trt{}.calib'.format(
        onnx_stem(onnx_path), w, h, key['onnx_sha256'][:12], key['tensorrt_version']))
    if calib_dir is not None:
        return CalibrationSource.from_folder(calib_dir, (w, h), batch_size=batch_size,
                                             cache_path=calib_cache, max_images=max_images)
    if CalibrationCache(calib_cache).read() is not None:
        return CalibrationSource([], (w, h), cache_path=calib_cache)
    raise ValueError('precision int8 needs `calib_dir` (a folder of recorded frames); no '
                     'calibration cache {} exists'.format(calib_cache))


def _run_builder(api, parsed, onnx_path: str, key: Dict[str, object], workspace_mb: int,
                 source: Optional[CalibrationSource], heartbeat_s: float,
                 heartbeat_what: Optional[str] = None):
    """Build the plan, with TensorRT's progress or a heartbeat; returns (plan, pinned, s)."""
    precision, dla_core, shape = key['precision'], key['dla_core'], key['input_shape']
    LOG.info('building %s engine from %s (input %s, workspace %d MiB%s); this takes minutes '
             'on a Jetson', precision, onnx_path, shape, workspace_mb,
             '' if dla_core is None else ', DLA core {} + GPU fallback'.format(dla_core))
    t0 = time.monotonic()
    progress = PhaseLogger() if api.has_progress_monitor() else None
    if heartbeat_what:
        # A caller that waits on the build (a node at its first start) wants a line every
        # heartbeat_s whatever TensorRT reports.
        waiting = log_heartbeat(LOG, heartbeat_what, heartbeat_s)
    elif progress is not None:
        waiting = contextlib.nullcontext()
    else:
        waiting = log_heartbeat(LOG, 'building {} engine'.format(precision), heartbeat_s)
    with waiting:
        plan, pinned = api.build_serialized(
            parsed, precision, workspace_mb << 20, dla_core, shape, keep_fp32,
            calibration_source=source, progress=progress)
    seconds = time.monotonic() - t0
    if precision != 'fp32':
        LOG.info('%d LayerNorm/Softmax layers kept in FP32', pinned)
    return plan, pinned, seconds


def _write_engine(cache: EngineCache, path: str, plan: bytes, key: Dict[str, object],
                  extra: Dict[str, object], source: Optional[CalibrationSource]) -> str:
    """Write engine and record (with the calibration's figures); returns the engine path."""
    if source is not None:
        extra = dict(extra, calibration={'images': len(source.images),
                                         'batch_size': source.batch_size,
                                         'cache': source.cache.path})
    written = cache.write(path, plan, key, extra)
    LOG.info('built in %.0f s; engine written to %s', extra['build_seconds'], written)
    return written


def build_engine(onnx_path: str, precision: str = 'fp16', cache_dir: Optional[str] = None,
                 workspace_mb: int = DEFAULT_WORKSPACE_MB, dla_core: Optional[int] = None,
                 calib_dir: Optional[str] = None, calib_batch_size: int = DEFAULT_CALIB_BATCH,
                 calib_max_images: Optional[int] = None,
                 input_size: Optional[Tuple[int, int]] = None, device: int = 0,
                 force: bool = False, heartbeat_s: float = 15.0,
                 heartbeat_what: Optional[str] = None,
                 record: Optional[Dict[str, object]] = None, api=None) -> BuildResult:
    """
    Return the cached engine for ``onnx_path`` and these options, building it if needed.

    Steps: check the options, key the cache (GPU, TensorRT, ONNX sha256, input shape,
    precision, DLA core), reuse a matching engine, set up INT8 calibration, build, write the
    engine and its record.

    :param precision: 'fp16' (default), 'fp32' or 'int8'.
    :param cache_dir: engine cache directory (default: see cache.default_cache_dir).
    :param workspace_mb: builder workspace (tactic scratch memory) limit, MiB.
    :param dla_core: run on this DLA core, with GPU fallback for unsupported layers.
    :param calib_dir: folder of recorded frames for INT8 calibration.
    :param input_size: (width, height); needed only when the ONNX input is dynamic.
    :param device: CUDA device index.
    :param force: rebuild even when a matching engine is cached.
    :param heartbeat_s: seconds between progress lines.
    :param heartbeat_what: text of a progress line logged every ``heartbeat_s`` with the
        elapsed time, also where TensorRT reports its own progress; None: TensorRT's progress,
        or 'building <precision> engine: N s elapsed' where it has none.
    :param record: extra fields for the engine's JSON record (e.g. the model id and the
        sha256 of the ONNX the prepared file was made from); not part of the key.
    :param api: trt_api or a test double of it.
    """
    _check_request(onnx_path, precision, workspace_mb, dla_core)
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
            cached = None if force else _reuse_cached(cache, path, key)
            if cached is not None:
                return cached
            _log_other_engines(cache, onnx_path, path, key)
            if dla_core is not None and dla_core >= parsed.num_dla_cores():
                raise ValueError('`dla_core` {} does not exist: this platform has {} DLA cores'
                                 .format(dla_core, parsed.num_dla_cores()))
            source = _calibration_source(cache, onnx_path, key, calib_dir, calib_batch_size,
                                         calib_max_images)
            plan, pinned, seconds = _run_builder(api, parsed, onnx_path, key, workspace_mb,
                                                 source, heartbeat_s, heartbeat_what)
            extra = dict(record or {})
            extra.update({'workspace_mb': workspace_mb,
                          'onnx_path': os.path.abspath(onnx_path), 'fp32_layers': pinned,
                          'build_seconds': round(seconds, 1)})
            written = _write_engine(cache, path, plan, key, extra, source)
            return BuildResult(written, key, built=True, seconds=seconds, fp32_layers=pinned)
    finally:
        gpu.close()

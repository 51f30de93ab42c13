"""
TensorRTDepthModel: a cached, key-checked engine behind the DepthModel interface.

Pre- and post-processing are DepthModel's (depth_ros.core.preprocess), the same code as the CPU
path: the only difference is that the [1, 3, h, w] input is written straight into the page-locked
host buffer the engine copies from. Buffers, the execution context and the stream are created once;
``predict`` allocates nothing on the GPU.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Dict, Optional, Tuple

from depth_ros.core.preprocess import check_input_size
from depth_ros.inference.base import DepthModel
from depth_ros.inference.tensorrt.cache import (check_dla_core, check_precision, EngineCache,
                                                EngineCacheError)
from depth_ros.util import file_sha256
import numpy as np

LOG = logging.getLogger('depth_ros.tensorrt')

_OUTPUT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))


def _output_hw(shape: Tuple[int, ...]) -> Optional[Tuple[int, int]]:
    """(h, w) of a [h, w], [1, h, w] or [1, 1, h, w] output; None for anything else."""
    if len(shape) < 2 or any(d != 1 for d in shape[:-2]) or min(shape) <= 0:
        return None
    return shape[-2], shape[-1]


class TensorRTDepthModel(DepthModel):
    """
    Depth Anything V2 from a serialized TensorRT engine in the engine cache.

    :param engine_path: engine file; must resolve (symlinks followed) inside ``cache_dir``.
    :param cache_dir: the configured engine cache directory.
    :param onnx: optional ONNX file the engine must have been built from (sha256 compared).
    :param precision: optional expected precision ('fp16', 'fp32', 'int8').
    :param input_size: optional expected (width, height).
    :param dla_core: optional expected DLA core (checked only when given).
    :param device: CUDA device index.
    :param verify_hash: check the engine's sha256 against its record before loading.
    :param api: trt_api, or a test double of it.
    """

    backend = 'tensorrt'

    def __init__(self, engine_path: str, cache_dir: Optional[str] = None,
                 onnx: Optional[str] = None, precision: Optional[str] = None,
                 input_size: Optional[Tuple[int, int]] = None, dla_core: Optional[int] = None,
                 device: int = 0, verify_hash: bool = True, api=None):
        if api is None:
            from depth_ros.inference.tensorrt import trt_api as api
        self._api = api
        self._lock = threading.Lock()
        self._gpu = None
        self._handle = self._context = self._stream = None
        self._host = {}  # type: Dict[str, np.ndarray]
        self._device_buffers = {}
        cache = EngineCache(cache_dir)
        real = cache.resolve(engine_path)  # refuse paths outside the cache before touching a GPU
        if not os.path.isfile(real):
            raise FileNotFoundError('engine file not found: {} (engine cache {})'.format(
                real, cache.cache_dir))

        wanted = {}  # type: Dict[str, object]
        if onnx is not None:
            wanted['onnx_sha256'] = file_sha256(onnx)
        if precision is not None:
            wanted['precision'] = check_precision(precision)
        if input_size is not None:
            w, h = check_input_size(*input_size)
            wanted['input_shape'] = [1, 3, h, w]
        if dla_core is not None:
            wanted['dla_core'] = check_dla_core(dla_core)

        self._gpu = api.open_device(device)
        try:
            runtime = self._gpu.info()
            wanted.update(runtime)
            real, record = cache.validate(real, wanted, verify_hash=verify_hash)
            self.record = record
            with self._gpu.activate():
                self._load(real, record)
        except BaseException:
            self.close()
            raise
        key = record['key']
        super(TensorRTDepthModel, self).__init__(
            input_size=(key['input_shape'][3], key['input_shape'][2]), name=real)
        self.precision = key['precision']
        LOG.info('TensorRT engine %s loaded: %s, input %s, TensorRT %s on %s (sm %s)', real,
                 self.precision, key['input_shape'], runtime['tensorrt_version'],
                 runtime['gpu_name'], runtime['compute_capability'])

    def _load(self, real: str, record: Dict[str, object]) -> None:
        api = self._api
        key = record['key']
        with open(real, 'rb') as f:
            data = f.read()
        self._handle = api.deserialize_engine(data, dla_core=key['dla_core'])
        if self._handle is None:
            raise EngineCacheError(
                'TensorRT could not deserialize engine file {} (see the TensorRT error above; '
                "'magicTag' or 'Version tag' errors mean it was built by another TensorRT or "
                'for another GPU); rebuild it with `depth-ros model build`'.format(real))
        specs = api.engine_io(self._handle)
        inputs = [s for s in specs if s.is_input]
        outputs = [s for s in specs if not s.is_input]
        want_in = tuple(int(d) for d in key['input_shape'])
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].dtype != np.float32 \
                or any(have not in (want, -1) for have, want in zip(inputs[0].shape, want_in)):
            raise EngineCacheError('engine file {} must have one float32 input of shape {} '
                                   '(its record), has {}'.format(real, list(want_in), inputs))
        self._context = api.create_execution_context(self._handle)
        shapes = {s.name: s.shape for s in specs}
        if min(inputs[0].shape) < 0:
            # Built from a dynamic ONNX with a one-shape profile: fix the shape once, then the
            # context resolves the output shapes.
            api.set_input_shape(self._context, inputs[0].name, want_in)
            shapes = {s.name: api.context_tensor_shape(self._context, s.name) for s in specs}
        if not outputs or _output_hw(shapes[outputs[0].name]) is None \
                or outputs[0].dtype not in _OUTPUT_DTYPES:
            raise EngineCacheError('engine file {} must output a [1, h, w] float depth map, has '
                                   '{}'.format(real, outputs))
        self._input_name = inputs[0].name
        self._output_name = outputs[0].name
        self._stream = api.create_stream()
        for spec in specs:
            # Every I/O tensor gets memory and an address, also extra outputs we do not read:
            # execute_async_v3 fails when any address is unset.
            host = api.pagelocked_empty(shapes[spec.name], spec.dtype)
            dev = api.device_alloc(host.nbytes)
            self._host[spec.name] = host
            self._device_buffers[spec.name] = dev
            api.set_tensor_address(self._context, spec.name, int(dev))
        self._outputs = [s.name for s in outputs]

    def _input_buffer(self) -> np.ndarray:
        """Return the page-locked [1, 3, h, w] float32 input; preprocess writes straight in."""
        return self._host[self._input_name]

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        if batch is not self._host[self._input_name]:
            np.copyto(self._host[self._input_name], batch)
        api = self._api
        with self._lock, self._gpu.activate():
            t0 = time.perf_counter()
            api.memcpy_htod_async(self._device_buffers[self._input_name],
                                  self._host[self._input_name], self._stream)
            if not api.execute_async_v3(self._context, self._stream):
                api.synchronize(self._stream)
                raise RuntimeError('TensorRT execute_async_v3 failed for engine {} (see the '
                                   'TensorRT error above)'.format(self.name))
            api.memcpy_dtoh_async(self._host[self._output_name],
                                  self._device_buffers[self._output_name], self._stream)
            api.synchronize(self._stream)
            LOG.debug('tensorrt engine %.2f ms (copy in, execute, copy out)',
                      (time.perf_counter() - t0) * 1e3)
        # restore_output copies (or resizes) this, so returning the pinned buffer is safe.
        return self._host[self._output_name]

    def diagnostics(self) -> Dict[str, object]:
        """Key-value status for /diagnostics: engine, precision, rolling latency."""
        key = self.record['key']
        return {'backend': self.backend, 'engine': self.name, 'precision': key['precision'],
                'tensorrt_version': key['tensorrt_version'], 'gpu': key['gpu_name'],
                'input_shape': 'x'.join(str(d) for d in key['input_shape']),
                'latency_mean_ms': round(self.latency.mean_ms, 2),
                'infer_mean_ms': round(self.infer_latency.mean_ms, 2),
                'frames': self.latency.count}

    def close(self) -> None:
        """Free the context, buffers, engine and the CUDA context reference (idempotent)."""
        # Order matters: the context before the engine, the engine before the runtime.
        self._context = None
        self._device_buffers = {}
        self._host = {}
        self._stream = None
        self._handle = None
        if self._gpu is not None:
            self._gpu.close()
            self._gpu = None

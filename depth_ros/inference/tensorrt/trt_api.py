"""
The one module that imports ``tensorrt`` and ``pycuda``: a thin, documented-API-only layer.

Everything else in depth_ros.inference.tensorrt (backend, builder, cache, calibrator) calls these
functions and never touches TensorRT or CUDA itself, so unit tests can stand a test double in for
this module (``api=`` arguments) and the rest is tested for real without a GPU.

Versions: TensorRT 8.5 (JetPack 5.1) and 10.x. Only APIs present in both are used on the common
path - the name-based tensor API (``num_io_tensors``, ``get_tensor_name/mode/shape/dtype``,
``set_tensor_address``, ``execute_async_v3``), ``build_serialized_network`` and
``set_memory_pool_limit``. Version differences (``IProgressMonitor`` and
``LayerType.NORMALIZATION`` exist only in newer releases, ``EXPLICIT_BATCH`` is deprecated in 10)
are resolved here with ``hasattr`` checks, never by parsing version strings elsewhere.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

LOG = logging.getLogger('depth_ros.tensorrt')

INSTALL_HINT = ('install depth_ros[tensorrt]: on a Jetson TensorRT comes with JetPack '
                '(apt install python3-libnvinfer) and pycuda from pip (pip install pycuda); '
                'on a desktop, pip install tensorrt pycuda')

_TRT = None
_CUDA = None


def _trt():
    global _TRT
    if _TRT is None:
        try:
            import tensorrt
        except ImportError as exc:
            raise ImportError('the TensorRT backend needs the tensorrt Python package ({}); '
                              '{}'.format(exc, INSTALL_HINT))
        _TRT = tensorrt
    return _TRT


def _cuda():
    global _CUDA
    if _CUDA is None:
        try:
            import pycuda.driver as driver
        except ImportError as exc:
            raise ImportError('the TensorRT backend needs pycuda ({}); {}'.format(
                exc, INSTALL_HINT))
        driver.init()
        _CUDA = driver
    return _CUDA


class TensorSpec(object):
    """One engine I/O tensor: name, direction, shape (engine shape, -1 = dynamic), numpy dtype."""

    __slots__ = ('name', 'is_input', 'shape', 'dtype')

    def __init__(self, name: str, is_input: bool, shape: Sequence[int], dtype):
        self.name = str(name)
        self.is_input = bool(is_input)
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)

    def __repr__(self) -> str:
        return 'TensorSpec({!r}, {}, {}, {})'.format(
            self.name, 'input' if self.is_input else 'output', self.shape, self.dtype.name)


# ----------------------------------------------------------------------------- logging bridge

class _Logger(object):
    """Factory for a trt.ILogger that forwards to Python logging (created lazily)."""

    _instance = None

    @classmethod
    def get(cls):
        if cls._instance is None:
            trt = _trt()

            class PyLogger(trt.ILogger):
                def __init__(self):
                    trt.ILogger.__init__(self)

                def log(self, severity, msg):
                    if severity in (trt.ILogger.INTERNAL_ERROR, trt.ILogger.ERROR):
                        LOG.error('TensorRT: %s', msg)
                    elif severity == trt.ILogger.WARNING:
                        LOG.warning('TensorRT: %s', msg)
                    elif severity == trt.ILogger.INFO:
                        LOG.info('TensorRT: %s', msg)
                    else:
                        LOG.debug('TensorRT: %s', msg)

            cls._instance = PyLogger()
        return cls._instance


# ----------------------------------------------------------------------------- device

def tensorrt_version() -> str:
    """``tensorrt.__version__``, e.g. '8.5.2.2'."""
    return str(_trt().__version__)


def probe(index: int = 0) -> Tuple[bool, str]:
    """
    Tell whether TensorRT can run here: (True, what was found) or (False, why not).

    True when the tensorrt and pycuda modules import, CUDA initialises and device ``index``
    exists; nothing is allocated. For ``backend: auto``.
    """
    try:
        trt = _trt()
    except ImportError:
        return False, 'the tensorrt Python module is not installed'
    try:
        cuda = _cuda()
        count = cuda.Device.count()
    except ImportError:
        return False, 'pycuda is not installed'
    except Exception as exc:  # noqa: B902 - pycuda's driver errors (no driver, no device)
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return False, 'CUDA does not answer: {}'.format(text)
    if not 0 <= int(index) < count:
        return False, 'no CUDA device {} ({} found)'.format(index, count)
    device = cuda.Device(int(index))
    major, minor = device.compute_capability()
    return True, 'TensorRT {} and GPU {!r} (compute capability {}.{})'.format(
        trt.__version__, str(device.name()), major, minor)


class CudaDevice(object):
    """
    The primary CUDA context of one GPU, made current only inside ``activate()``.

    pycuda contexts are per thread; inference runs off the ROS executor thread, so every call
    pushes the context and pops it again instead of relying on ``pycuda.autoinit``.
    """

    def __init__(self, index: int = 0):
        cuda = _cuda()
        if not 0 <= int(index) < cuda.Device.count():
            raise ValueError('`device` must be a CUDA device index in [0, {}), got {!r}'.format(
                cuda.Device.count(), index))
        self.index = int(index)
        self._device = cuda.Device(self.index)
        self._context = self._device.retain_primary_context()

    @contextlib.contextmanager
    def activate(self):
        """Make this device's context current on the calling thread for the block."""
        self._context.push()
        try:
            yield self
        finally:
            self._context.pop()

    def info(self) -> Dict[str, str]:
        """GPU name, compute capability ('7.2') and TensorRT version: the runtime cache key."""
        major, minor = self._device.compute_capability()
        return {'gpu_name': str(self._device.name()),
                'compute_capability': '{}.{}'.format(major, minor),
                'tensorrt_version': tensorrt_version()}

    def close(self) -> None:
        """Drop the reference to the primary context (pycuda releases it when unused)."""
        self._context = None


def open_device(index: int = 0) -> CudaDevice:
    """Open CUDA device ``index`` (pycuda); raises ImportError without pycuda."""
    return CudaDevice(index)


# ----------------------------------------------------------------------------- runtime

class _Engine(object):
    """An ICudaEngine together with the IRuntime that must outlive it."""

    def __init__(self, runtime, engine):
        self.runtime = runtime
        self.engine = engine


def deserialize_engine(data: bytes, dla_core: Optional[int] = None) -> Optional[_Engine]:
    """
    Deserialize a plan; None when TensorRT refuses it (it logs why, e.g. 'magicTag').

    :param dla_core: for DLA engines, the core to run on (``IRuntime.DLA_core``, which must be
        set before deserializing).
    """
    trt = _trt()
    runtime = trt.Runtime(_Logger.get())
    if dla_core is not None:
        runtime.DLA_core = int(dla_core)
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        return None
    return _Engine(runtime, engine)


def engine_io(handle: _Engine) -> List[TensorSpec]:
    """List the engine's I/O tensors, in engine order (``num_io_tensors``, TensorRT >= 8.5)."""
    trt = _trt()
    engine = handle.engine
    specs = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        specs.append(TensorSpec(name, is_input, tuple(engine.get_tensor_shape(name)),
                                trt.nptype(engine.get_tensor_dtype(name))))
    return specs


def create_execution_context(handle: _Engine):
    """Create the execution context of an engine (raises when TensorRT returns None)."""
    context = handle.engine.create_execution_context()
    if context is None:
        raise RuntimeError('TensorRT could not create an execution context (out of GPU memory?)')
    return context


def set_input_shape(context, name: str, shape: Sequence[int]) -> None:
    """``context.set_input_shape`` (TensorRT >= 8.5); needed only for dynamic-shape engines."""
    if not context.set_input_shape(name, tuple(int(d) for d in shape)):
        raise RuntimeError('TensorRT refused input shape {} for {!r}'.format(tuple(shape), name))


def context_tensor_shape(context, name: str) -> Tuple[int, ...]:
    """Shape of an I/O tensor in this context (outputs resolved once input shapes are set)."""
    return tuple(int(d) for d in context.get_tensor_shape(name))


def set_tensor_address(context, name: str, address: int) -> None:
    """Bind one I/O tensor to device memory (``context.set_tensor_address``)."""
    if not context.set_tensor_address(name, int(address)):
        raise RuntimeError('TensorRT refused the address of tensor {!r}'.format(name))


def execute_async_v3(context, stream) -> bool:
    """Enqueue inference on ``stream``; False when TensorRT rejects it (it logs why)."""
    return bool(context.execute_async_v3(stream.handle))


# ----------------------------------------------------------------------------- memory

def pagelocked_empty(shape: Sequence[int], dtype) -> np.ndarray:
    """Page-locked (pinned) host array, for fast asynchronous copies."""
    return _cuda().pagelocked_empty(tuple(int(d) for d in shape), np.dtype(dtype))


def device_alloc(nbytes: int):
    """Device allocation; ``int(alloc)`` is its address. Freed when garbage-collected."""
    return _cuda().mem_alloc(int(nbytes))


def create_stream():
    """Create a CUDA stream (``.handle`` is what execute_async_v3 takes)."""
    return _cuda().Stream()


def memcpy_htod_async(device_buffer, host: np.ndarray, stream) -> None:
    """Copy a (page-locked) host array to device memory, asynchronously on ``stream``."""
    _cuda().memcpy_htod_async(device_buffer, host, stream)


def memcpy_dtoh_async(host: np.ndarray, device_buffer, stream) -> None:
    """Copy device memory into a (page-locked) host array, asynchronously on ``stream``."""
    _cuda().memcpy_dtoh_async(host, device_buffer, stream)


def synchronize(stream) -> None:
    """Wait for all work queued on ``stream``."""
    stream.synchronize()


# ----------------------------------------------------------------------------- builder

class ParsedNetwork(object):
    """A parsed ONNX network with the builder that owns it."""

    def __init__(self, builder, network, parser):
        self.builder = builder
        self.network = network
        self.parser = parser

    def inputs(self) -> List[TensorSpec]:
        """Network inputs with their ONNX shapes (-1 where dynamic)."""
        trt = _trt()
        return [TensorSpec(t.name, True, tuple(t.shape), trt.nptype(t.dtype))
                for t in (self.network.get_input(i) for i in range(self.network.num_inputs))]

    def layers(self) -> List[Tuple[str, str]]:
        """(name, type name) of every layer, e.g. ('/blocks.0/norm1/ReduceMean', 'REDUCE')."""
        out = []
        for i in range(self.network.num_layers):
            layer = self.network.get_layer(i)
            out.append((str(layer.name), str(layer.type).split('.')[-1]))
        return out

    def num_dla_cores(self) -> int:
        """DLA cores of this platform (0 on desktops)."""
        return int(self.builder.num_DLA_cores)


def parse_onnx(path: str) -> ParsedNetwork:
    """Parse an ONNX file into an explicit-batch network; RuntimeError lists parser errors."""
    trt = _trt()
    logger = _Logger.get()
    builder = trt.Builder(logger)
    flags = 0
    explicit = getattr(trt.NetworkDefinitionCreationFlag, 'EXPLICIT_BATCH', None)
    if explicit is not None:  # required in 8.x, deprecated (and implied) in 10
        flags = 1 << int(explicit)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errors = '; '.join(str(parser.get_error(i)) for i in range(parser.num_errors))
        hint = ''
        if 'LayerNormalization' in errors and not hasattr(trt.LayerType, 'NORMALIZATION'):
            # TensorRT < 8.6 (JetPack 5) has no importer for the opset-17 LayerNormalization node.
            hint = (' - TensorRT {} cannot import the ONNX LayerNormalization node (8.6+ can): '
                    'export with opset 16, where LayerNorm is decomposed and the builder keeps '
                    'it in FP32'.format(trt.__version__))
        raise RuntimeError('TensorRT could not parse ONNX file {}: {}{}'.format(
            path, errors or 'no parser error recorded', hint))
    return ParsedNetwork(builder, network, parser)


def has_progress_monitor() -> bool:
    """Tell whether ``tensorrt.IProgressMonitor`` exists (TensorRT 10; not in 8.5)."""
    return hasattr(_trt(), 'IProgressMonitor')


def _make_progress_monitor(sink):
    trt = _trt()

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            sink.phase_start(phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name, step):
            return bool(sink.step_complete(phase_name, step))

        def phase_finish(self, phase_name):
            sink.phase_finish(phase_name)

    return Monitor()


def _make_entropy_calibrator(source):
    """
    Wrap a pure-Python calibration source in an ``IInt8EntropyCalibrator2``.

    ``source`` provides ``batch_size``, ``batch_nbytes``, ``next_batch()`` (contiguous float32
    [B, 3, h, w] or None at the end), ``read_cache()`` (bytes or None) and ``write_cache(bytes)``.
    """
    trt = _trt()

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._device = device_alloc(source.batch_nbytes)  # allocated once, reused per batch

        def get_batch_size(self):
            return int(source.batch_size)

        def get_batch(self, names):
            batch = source.next_batch()
            if batch is None:
                return None
            _cuda().memcpy_htod(self._device, np.ascontiguousarray(batch))
            return [int(self._device)] * len(names)

        def read_calibration_cache(self):
            return source.read_cache()

        def write_calibration_cache(self, cache):
            source.write_cache(bytes(cache))

    return EntropyCalibrator()


def _set_layer_fp32(layer, trt) -> bool:
    # Only float layers: pinning a shape (int32) computation would make the build fail.
    floats = (trt.float32, trt.float16)
    if any(layer.get_output(j).dtype not in floats for j in range(layer.num_outputs)):
        return False
    layer.precision = trt.float32
    for j in range(layer.num_outputs):
        layer.set_output_type(j, trt.float32)
    return True


def build_serialized(parsed: ParsedNetwork, precision: str, workspace_bytes: int,
                     dla_core: Optional[int], input_shape: Sequence[int],
                     fp32_layer: Callable[[str, str], bool],
                     calibration_source=None, progress=None) -> Tuple[bytes, int]:
    """
    Configure the builder and run ``build_serialized_network``.

    :param precision: 'fp32', 'fp16' or 'int8' (int8 also enables fp16 for layers TensorRT
        cannot quantise).
    :param input_shape: [1, 3, h, w]; used for an optimisation profile when the ONNX input is
        dynamic.
    :param fp32_layer: (layer name, layer type name) -> True to pin that layer to FP32.
    :param progress: object with phase_start/step_complete/phase_finish; used only where
        ``has_progress_monitor()``.
    :returns: (serialized plan bytes, number of layers pinned to FP32).
    """
    trt = _trt()
    builder, network = parsed.builder, parsed.network
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))

    profile = None
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        if any(int(d) < 0 for d in tensor.shape):
            profile = builder.create_optimization_profile()
            shape = tuple(int(d) for d in input_shape)
            profile.set_shape(tensor.name, shape, shape, shape)
            config.add_optimization_profile(profile)

    pinned = 0
    if precision in ('fp16', 'int8'):
        config.set_flag(trt.BuilderFlag.FP16)
        # OBEY (8.2+) makes the FP32 pins binding; PREFER would let TensorRT drop them.
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if fp32_layer(str(layer.name), str(layer.type).split('.')[-1]) \
                    and _set_layer_fp32(layer, trt):
                pinned += 1
    calibrator = None
    if precision == 'int8':
        config.set_flag(trt.BuilderFlag.INT8)
        calibrator = _make_entropy_calibrator(calibration_source)
        config.int8_calibrator = calibrator
        if profile is not None:  # a dynamic input must be calibrated at a fixed shape
            config.set_calibration_profile(profile)
    if dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(dla_core)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    monitor = None
    if progress is not None and has_progress_monitor():
        monitor = _make_progress_monitor(progress)  # must outlive the build
        config.progress_monitor = monitor
    plan = builder.build_serialized_network(network, config)
    del calibrator, monitor
    if plan is None:
        raise RuntimeError('TensorRT failed to build the engine (see the TensorRT errors above)')
    return bytes(plan), pinned

"""
A test double for depth_ros.inference.tensorrt.trt_api, and tests that it keeps the API's rules.

Only trt_api is ever replaced. The double follows the documented TensorRT / pycuda behaviour that
the code under test relies on:
- ``deserialize_engine`` returns None for bytes that are not a plan (TensorRT logs 'magicTag').
- ``engine_io`` lists the engine's own shapes (``get_tensor_shape`` returns the engine shape).
- ``execute_async_v3`` returns False unless every I/O tensor has an address
  (``set_tensor_address``), and it and the copies only take effect once the stream is
  synchronised (asynchronous semantics).
- Copies need a current CUDA context (``CudaDevice.activate``), as CUDA does.
- The INT8 calibrator protocol: read_calibration_cache first; only when it is None, get_batch
  until it returns None, then write_calibration_cache.

The fake "engine" computes ``out[0, y, x] = sum_c w[c] * in[0, c, y, x] + b``: simple enough to
compute independently in the tests. A fake "ONNX" file is JSON (inputs, layers, weights). A real
ONNX file is parsed too (its input shape, and one layer per node, named after the node, of the
type TensorRT's ONNX importer makes), and refused as TensorRT's parser refuses it: before 8.6
there is no importer for LayerNormalization, and no cubic Resize.
"""
from __future__ import annotations

import contextlib
import json
import threading

from depth_ros.inference.tensorrt.trt_api import TensorSpec
import numpy as np
import pytest

PLAN_MAGIC = b'FAKEPLAN'


def write_fake_onnx(path, shape=(1, 3, 28, 42), weights=(0.5, -0.25, 1.0), bias=0.125,
                    layers=None):
    """Write the double's stand-in for an ONNX file (JSON), return its path as str."""
    if layers is None:
        layers = [['/backbone/embeddings/Conv', 'CONVOLUTION'],
                  ['/backbone/encoder/layer.0/norm1/ReduceMean', 'REDUCE'],
                  ['/backbone/encoder/layer.0/norm1/Sqrt', 'UNARY'],
                  ['/backbone/encoder/layer.0/attention/MatMul', 'MATRIX_MULTIPLY'],
                  ['/backbone/encoder/layer.0/attention/Softmax', 'SOFTMAX'],
                  ['/head/conv1/Conv', 'CONVOLUTION']]
    doc = {'inputs': [['pixel_values', list(shape)]], 'layers': layers,
           'weights': list(weights), 'bias': bias}
    with open(str(path), 'w') as f:
        json.dump(doc, f)
    return str(path)


def fake_plan(input_shape=(1, 3, 28, 42), weights=(0.5, -0.25, 1.0), bias=0.125,
              extra_output=False, output_dtype='float32', pad=4096, profile=None):
    """
    Serialize a fake engine: magic + JSON header + padding (engines are big and binary).

    A dynamic ``input_shape`` (-1 dims) needs ``profile``, the one shape its optimisation
    profile allows, as an engine built from a dynamic ONNX has.
    """
    n, c, h, w = input_shape
    outputs = [['predicted_depth', [1, h, w], output_dtype]]
    if extra_output:
        outputs.append(['features', [1, 8, 2, 3], 'float32'])
    header = json.dumps({'input': ['pixel_values', list(input_shape)], 'outputs': outputs,
                         'weights': list(weights), 'bias': bias,
                         'profile': None if profile is None else list(profile)}).encode('utf-8')
    padding = bytes(range(256)) * (pad // 256)
    return PLAN_MAGIC + len(header).to_bytes(4, 'little') + header + padding


class FakeAllocation(object):
    """pycuda DeviceAllocation stand-in: int() is the address."""

    def __init__(self, api, nbytes):
        self.nbytes = int(nbytes)
        self.address = api._next_address
        api._next_address += max(self.nbytes, 1) + 256
        self.memory = np.zeros(self.nbytes, dtype=np.uint8)
        api._memory[self.address] = self

    def __int__(self):
        return self.address


class FakeStream(object):
    def __init__(self):
        self.pending = []
        self.handle = id(self)


class FakeDevice(object):
    def __init__(self, api, index):
        self.api = api
        self.index = index
        self.closed = False

    @contextlib.contextmanager
    def activate(self):
        self.api._current.depth = getattr(self.api._current, 'depth', 0) + 1
        try:
            yield self
        finally:
            self.api._current.depth -= 1

    def info(self):
        return dict(self.api.runtime)

    def close(self):
        self.closed = True


class FakeEngine(object):
    def __init__(self, header, dla_core=None):
        self.header = header
        self.dla_core = dla_core


class FakeContext(object):
    def __init__(self, engine):
        self.engine = engine
        self.addresses = {}
        self.input_shape = None  # set_input_shape, for dynamic engines


class FakeParsed(object):
    def __init__(self, doc):
        self.doc = doc
        self.dla_cores = 0

    def inputs(self):
        return [TensorSpec(name, True, shape, np.float32) for name, shape in self.doc['inputs']]

    def layers(self):
        return [tuple(layer) for layer in self.doc['layers']]

    def num_dla_cores(self):
        return self.dla_cores


# ONNX op -> the TensorRT layer type its importer creates (the ops of a DA-V2 graph).
ONNX_LAYER_TYPES = {
    'ReduceMean': 'REDUCE', 'Sub': 'ELEMENTWISE', 'Pow': 'ELEMENTWISE', 'Add': 'ELEMENTWISE',
    'Div': 'ELEMENTWISE', 'Mul': 'ELEMENTWISE', 'Sqrt': 'UNARY', 'Erf': 'UNARY',
    'Softmax': 'SOFTMAX', 'LayerNormalization': 'NORMALIZATION', 'MatMul': 'MATRIX_MULTIPLY',
    'Conv': 'CONVOLUTION', 'ConvTranspose': 'DECONVOLUTION', 'Relu': 'ACTIVATION',
    'Resize': 'RESIZE', 'Reshape': 'SHUFFLE', 'Transpose': 'SHUFFLE', 'Squeeze': 'SHUFFLE',
    'Unsqueeze': 'SHUFFLE', 'Slice': 'SLICE', 'Concat': 'CONCATENATION', 'Gather': 'GATHER'}


def _parse_real_onnx(path, version):
    """Parse a real ONNX file as TensorRT's ONNX parser would, into the double's document."""
    import onnx
    from onnx import helper

    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # noqa: B902 - TensorRT's parser: one error for any bad file
        raise RuntimeError('TensorRT could not parse ONNX file {}: {}'.format(path, exc))
    older = tuple(int(p) for p in version.split('.')[:2]) < (8, 6)
    for node in proto.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if older and node.op_type == 'LayerNormalization':
            raise RuntimeError('TensorRT could not parse ONNX file {}: In node {} ({}): '
                               'UNSUPPORTED_NODE: No importer registered for op: '
                               'LayerNormalization'.format(path, node.name, node.op_type))
        if older and node.op_type == 'Resize' and attrs.get('mode') == b'cubic':
            raise RuntimeError('TensorRT could not parse ONNX file {}: In node {} (importResize):'
                               ' UNSUPPORTED_NODE: Assertion failed: mode != "cubic"'.format(
                                   path, node.name))
    inits = {i.name for i in proto.graph.initializer}
    image = [v for v in proto.graph.input if v.name not in inits][0]
    shape = [d.dim_value if d.HasField('dim_value') else -1
             for d in image.type.tensor_type.shape.dim]
    layers = [[n.name, ONNX_LAYER_TYPES.get(n.op_type, 'PLUGIN')] for n in proto.graph.node]
    return {'inputs': [[image.name, shape]], 'layers': layers, 'weights': [0.5, -0.25, 1.0],
            'bias': 0.125, 'onnx_nodes': len(proto.graph.node)}


class FakeTrtApi(object):
    """Stands in for the trt_api module (same function names and semantics)."""

    def __init__(self, tensorrt_version='8.5.2.2', gpu_name='Xavier', compute_capability='7.2',
                 progress_monitor=False, dla_cores=0, available=True, build_seconds=0.0,
                 build_error=None):
        self.runtime = {'gpu_name': gpu_name, 'compute_capability': compute_capability,
                        'tensorrt_version': tensorrt_version}
        # probe(): whether TensorRT, pycuda and the GPU answer ('' or the reason they do not).
        self.available = available
        self.build_seconds = build_seconds   # a build takes this long (heartbeat tests)
        self.build_error = build_error       # build_serialized raises this (failed builds)
        self.progress_monitor = progress_monitor
        self.dla_cores = dla_cores
        self._memory = {}
        self._next_address = 0x10000
        self._current = threading.local()
        self.calls = {'pagelocked_empty': 0, 'device_alloc': 0, 'execute': 0, 'build': 0}
        self.builds = []
        self.calibration_batches = []

    # -- helpers of the double -------------------------------------------------------------
    def _require_context(self, what):
        if getattr(self._current, 'depth', 0) <= 0:
            raise RuntimeError('cuda: {}: invalid device context (no current context)'.format(
                what))

    def _view(self, address, nbytes):
        for base, alloc in self._memory.items():
            if base <= address and address + nbytes <= base + alloc.nbytes:
                return alloc.memory[address - base:address - base + nbytes]
        raise RuntimeError('cuda: illegal address {:#x}'.format(address))

    # -- device ----------------------------------------------------------------------------
    def tensorrt_version(self):
        return self.runtime['tensorrt_version']

    def open_device(self, index=0):
        return FakeDevice(self, index)

    def probe(self, index=0):
        if self.available is not True:
            return False, self.available
        return True, 'TensorRT {} and GPU {!r} (compute capability {})'.format(
            self.runtime['tensorrt_version'], self.runtime['gpu_name'],
            self.runtime['compute_capability'])

    # -- runtime ---------------------------------------------------------------------------
    def deserialize_engine(self, data, dla_core=None):
        data = bytes(data)
        if not data.startswith(PLAN_MAGIC) or len(data) < len(PLAN_MAGIC) + 4:
            return None  # TensorRT: 'magicTag does not match', returns nullptr
        n = int.from_bytes(data[8:12], 'little')
        try:
            header = json.loads(data[12:12 + n].decode('utf-8'))
        except ValueError:
            return None
        return FakeEngine(header, dla_core)

    def engine_io(self, handle):
        name, shape = handle.header['input']
        specs = [TensorSpec(name, True, shape, np.float32)]
        for out_name, out_shape, dtype in handle.header['outputs']:
            specs.append(TensorSpec(out_name, False, out_shape, dtype))
        return specs

    def create_execution_context(self, handle):
        return FakeContext(handle)

    def set_tensor_address(self, context, name, address):
        names = [s.name for s in self.engine_io(context.engine)]
        if name not in names:
            raise RuntimeError('TensorRT refused the address of tensor {!r}'.format(name))
        context.addresses[name] = int(address)

    def set_input_shape(self, context, name, shape):
        spec = self.engine_io(context.engine)[0]
        profile = context.engine.header.get('profile') or list(spec.shape)
        if name != spec.name or list(shape) != list(profile):
            raise RuntimeError('TensorRT refused input shape {} for {!r}'.format(
                tuple(shape), name))
        context.input_shape = tuple(int(d) for d in shape)

    def context_tensor_shape(self, context, name):
        specs = {s.name: s for s in self.engine_io(context.engine)}
        spec = specs[name]
        if min(spec.shape) >= 0:
            return spec.shape
        if context.input_shape is None:
            return spec.shape  # TensorRT: unresolved (-1) until the input shape is set
        if spec.is_input:
            return context.input_shape
        return (1,) + context.input_shape[2:]

    def execute_async_v3(self, context, stream):
        specs = self.engine_io(context.engine)
        if any(s.name not in context.addresses for s in specs):
            return False  # TensorRT: 'Neither address or allocator is set for ...'
        if min(specs[0].shape) < 0 and context.input_shape is None:
            return False  # TensorRT: all dynamic input shapes must be specified
        self._require_context('execute_async_v3')
        self.calls['execute'] += 1

        def run():
            header = context.engine.header
            inp = specs[0]
            in_shape = self.context_tensor_shape(context, inp.name)
            x = self._view(context.addresses[inp.name], int(np.prod(in_shape)) * 4)
            x = x.view(np.float32).reshape(in_shape)
            w = np.asarray(header['weights'], dtype=np.float32)
            y = np.tensordot(w, x[0], axes=(0, 0)) + np.float32(header['bias'])
            for spec in specs[1:]:
                shape = self.context_tensor_shape(context, spec.name)
                nbytes = int(np.prod(shape)) * spec.dtype.itemsize
                out = self._view(context.addresses[spec.name], nbytes).view(spec.dtype)
                if spec.name == specs[1].name:
                    out[:] = y.astype(spec.dtype).ravel()
                else:
                    out[:] = 7
        stream.pending.append(run)
        return True

    # -- memory ----------------------------------------------------------------------------
    def pagelocked_empty(self, shape, dtype):
        self.calls['pagelocked_empty'] += 1
        return np.empty(tuple(shape), dtype=dtype)

    def device_alloc(self, nbytes):
        self.calls['device_alloc'] += 1
        return FakeAllocation(self, nbytes)

    def create_stream(self):
        return FakeStream()

    def memcpy_htod_async(self, device_buffer, host, stream):
        self._require_context('memcpy_htod_async')
        src = np.ascontiguousarray(host).view(np.uint8).ravel().copy()
        view = self._view(int(device_buffer), src.nbytes)
        stream.pending.append(lambda: view.__setitem__(slice(None), src))

    def memcpy_dtoh_async(self, host, device_buffer, stream):
        self._require_context('memcpy_dtoh_async')
        view = self._view(int(device_buffer), host.nbytes)
        flat = host.reshape(-1).view(np.uint8)
        stream.pending.append(lambda: flat.__setitem__(slice(None), view))

    def synchronize(self, stream):
        while stream.pending:
            stream.pending.pop(0)()

    # -- builder ---------------------------------------------------------------------------
    def parse_onnx(self, path):
        with open(str(path), 'rb') as f:
            head = f.read(1)
        if head != b'{':
            doc = _parse_real_onnx(path, self.runtime['tensorrt_version'])
        else:
            try:
                with open(str(path)) as f:
                    doc = json.load(f)
            except ValueError as exc:
                raise RuntimeError('TensorRT could not parse ONNX file {}: {}'.format(path, exc))
        parsed = FakeParsed(doc)
        parsed.dla_cores = self.dla_cores
        return parsed

    def has_progress_monitor(self):
        return self.progress_monitor

    def build_serialized(self, parsed, precision, workspace_bytes, dla_core, input_shape,
                         fp32_layer, calibration_source=None, progress=None):
        self._require_context('build_serialized_network')
        self.calls['build'] += 1
        if self.build_seconds:
            import time
            time.sleep(self.build_seconds)
        if self.build_error is not None:
            raise self.build_error
        pinned = 0
        if precision in ('fp16', 'int8'):
            pinned = sum(1 for name, kind in parsed.layers() if fp32_layer(name, kind))
        if precision == 'int8':
            # IInt8EntropyCalibrator2 protocol: cache first, frames only without a cache.
            table = calibration_source.read_cache()
            if table is None:
                while True:
                    batch = calibration_source.next_batch()
                    if batch is None:
                        break
                    if batch.shape != (calibration_source.batch_size,) + tuple(input_shape[1:]):
                        raise RuntimeError('calibrator batch shape {}'.format(batch.shape))
                    self.calibration_batches.append(batch.copy())
                calibration_source.write_cache(b'TRT-8502-EntropyCalibration2\nfake: 3c010a14\n')
        if progress is not None and self.progress_monitor:
            progress.phase_start('Building engine', None, 2)
            progress.phase_start('Tactic selection', 'Building engine', 1)
            progress.step_complete('Tactic selection', 0)
            progress.phase_finish('Tactic selection')
            progress.step_complete('Building engine', 0)
            progress.step_complete('Building engine', 1)
            progress.phase_finish('Building engine')
        self.builds.append({'precision': precision, 'workspace_bytes': workspace_bytes,
                            'dla_core': dla_core, 'input_shape': list(input_shape)})
        doc = parsed.doc
        onnx_shape = tuple(doc['inputs'][0][1])
        if min(onnx_shape) < 0:  # the engine keeps the dynamic dims, with a one-shape profile
            return fake_plan(onnx_shape, doc['weights'], doc['bias'],
                             profile=input_shape), pinned
        return fake_plan(tuple(input_shape), doc['weights'], doc['bias']), pinned


def fake_forward(batch, weights=(0.5, -0.25, 1.0), bias=0.125):
    """Independent computation of the fake engine: [1, 3, h, w] -> [h, w]."""
    w = np.asarray(weights, dtype=np.float64)
    return (w[:, None, None] * batch[0].astype(np.float64)).sum(axis=0) + bias


# ----------------------------------------------------------------------------- the double's rules

def _bound_context(api, plan):
    handle = api.deserialize_engine(plan)
    context = api.create_execution_context(handle)
    specs = api.engine_io(handle)
    buffers = {s.name: api.device_alloc(int(np.prod(s.shape)) * s.dtype.itemsize) for s in specs}
    return handle, context, specs, buffers


def test_double_refuses_non_plans_like_tensorrt():
    api = FakeTrtApi()
    assert api.deserialize_engine(b'\x00' * 100) is None
    assert api.deserialize_engine(fake_plan()[:10]) is None
    assert api.deserialize_engine(fake_plan()) is not None


def test_double_reports_engine_shapes():
    api = FakeTrtApi()
    specs = api.engine_io(api.deserialize_engine(fake_plan((1, 3, 14, 28))))
    got = [(s.name, s.is_input, s.shape) for s in specs]
    assert got == [('pixel_values', True, (1, 3, 14, 28)), ('predicted_depth', False, (1, 14, 28))]


def test_double_execute_needs_every_address_and_a_synchronize():
    api = FakeTrtApi()
    handle, context, specs, buffers = _bound_context(api, fake_plan((1, 3, 14, 28)))
    stream = api.create_stream()
    dev = FakeDevice(api, 0)
    with dev.activate():
        api.set_tensor_address(context, specs[0].name, int(buffers[specs[0].name]))
        assert api.execute_async_v3(context, stream) is False, 'output address unset'
        api.set_tensor_address(context, specs[1].name, int(buffers[specs[1].name]))
        x = np.random.default_rng(0).standard_normal((1, 3, 14, 28)).astype(np.float32)
        out = np.full((1, 14, 28), -1.0, dtype=np.float32)
        api.memcpy_htod_async(buffers[specs[0].name], x, stream)
        assert api.execute_async_v3(context, stream) is True
        api.memcpy_dtoh_async(out, buffers[specs[1].name], stream)
        assert np.all(out == -1.0), 'nothing may land before synchronize'
        api.synchronize(stream)
    np.testing.assert_allclose(out[0], fake_forward(x), rtol=1e-6, atol=1e-6)


def test_double_needs_a_current_context_for_copies():
    api = FakeTrtApi()
    alloc = api.device_alloc(16)
    with pytest.raises(RuntimeError, match='invalid device context'):
        api.memcpy_htod_async(alloc, np.zeros(4, np.float32), api.create_stream())


def test_double_rejects_unknown_tensor_names():
    api = FakeTrtApi()
    _, context, _, _ = _bound_context(api, fake_plan())
    with pytest.raises(RuntimeError, match="'nope'"):
        api.set_tensor_address(context, 'nope', 0x10000)


def test_double_dynamic_engine_needs_its_input_shape():
    api = FakeTrtApi()
    plan = fake_plan((1, 3, -1, -1), profile=(1, 3, 14, 28))
    handle = api.deserialize_engine(plan)
    context = api.create_execution_context(handle)
    assert api.context_tensor_shape(context, 'predicted_depth') == (1, -1, -1)
    for spec in api.engine_io(handle):
        api.set_tensor_address(context, spec.name, int(api.device_alloc(14 * 28 * 12)))
    assert api.execute_async_v3(context, api.create_stream()) is False, 'shape not set yet'
    with pytest.raises(RuntimeError, match='refused input shape'):
        api.set_input_shape(context, 'pixel_values', (1, 3, 28, 28))  # outside the profile
    api.set_input_shape(context, 'pixel_values', (1, 3, 14, 28))
    assert api.context_tensor_shape(context, 'predicted_depth') == (1, 14, 28)
    with FakeDevice(api, 0).activate():
        assert api.execute_async_v3(context, api.create_stream()) is True

"""
Preparing a Depth Anything V2 ONNX with dynamic sizes (the public file's layout) for the backends.

The source is model_files.community_onnx: transformers' network with random weights, exported
as the public ``onnx-community/depth-anything-v2-small`` file is (pixel_values /
predicted_depth, dynamic batch, height and width, opset 17, bicubic position embedding). Its
outputs are compared with each other, never read as depth. Tests that need ONNX Runtime skip
where it is missing (the Python 3.8 tier: no onnxruntime release for opset 17 installs with
numpy 1.17.4); the graph surgery and its checks use onnx alone.
"""
import collections
import os
import subprocess
import sys
import time

from model_files import community_onnx, find_layernorms, ROOT
import numpy as np
import pytest

onnx = pytest.importorskip('onnx')
from onnx import helper, TensorProto  # noqa: E402,I100

from depth_ros.inference import onnx_prepare  # noqa: E402,I100
from depth_ros.inference.onnx_prepare import PreparationError  # noqa: E402
from depth_ros.inference.onnx_tools import tensorrt85_issues  # noqa: E402
from depth_ros.inference.tensorrt.builder import keep_fp32  # noqa: E402

SIZE = (518, 294)
# ONNX op -> the TensorRT layer type its importer creates (as in test_trt_fp32_layers).
TRT_LAYER_TYPE = {'ReduceMean': 'REDUCE', 'Sub': 'ELEMENTWISE', 'Pow': 'ELEMENTWISE',
                  'Add': 'ELEMENTWISE', 'Div': 'ELEMENTWISE', 'Mul': 'ELEMENTWISE',
                  'Sqrt': 'UNARY', 'Erf': 'UNARY', 'Softmax': 'SOFTMAX', 'MatMul':
                  'MATRIX_MULTIPLY', 'Conv': 'CONVOLUTION', 'Relu': 'ACTIVATION'}


def _ort():
    return pytest.importorskip('onnxruntime', reason='onnxruntime >= 1.13 (opset 17) needs '
                               'numpy >= 1.21.6; the Jetson tier pins numpy 1.17.4')


def _has_ort():
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _dims(value):
    return [d.dim_value if d.HasField('dim_value') else d.dim_param
            for d in value.type.tensor_type.shape.dim]


def _resize_modes(proto):
    return sorted({helper.get_attribute_value(a).decode() for n in proto.graph.node
                   if n.op_type == 'Resize' for a in n.attribute if a.name == 'mode'})


def _run(path, x):
    ort = _ort()
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _rel_err(got, ref):
    got = np.asarray(got, np.float64).reshape(ref.shape[-2:])
    ref = np.asarray(ref, np.float64).reshape(ref.shape[-2:])
    return float(np.abs(got - ref).max() / np.abs(ref).max())


@pytest.fixture(scope='module')
def source():
    return community_onnx('tiny')


@pytest.fixture(scope='module')
def prepared(source, tmp_path_factory):
    _ort()
    out = tmp_path_factory.mktemp('prepared')
    return {profile: onnx_prepare.prepare_onnx(source, str(out / (profile + '.onnx')), SIZE,
                                               profile)
            for profile in onnx_prepare.PROFILES}


# ----------------------------------------------------------------------- the source file
def test_the_test_file_is_shaped_like_the_public_one(source):
    proto = onnx.load(source)
    assert [(v.name, _dims(v)) for v in proto.graph.input] == \
        [('pixel_values', ['batch_size', 3, 'height', 'width'])]
    assert [(v.name, _dims(v)) for v in proto.graph.output] == \
        [('predicted_depth', ['batch_size', 'height', 'width'])]
    assert [o.version for o in proto.opset_import if o.domain in ('', 'ai.onnx')] == [17]
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    assert ops['LayerNormalization'] == 12 and ops['Shape'] > 0, dict(ops)
    cubic = [n for n in proto.graph.node if n.op_type == 'Resize' and
             helper.get_attribute_value(n.attribute[[a.name for a in n.attribute]
                                                    .index('mode')]) == b'cubic']
    inits = {i.name for i in proto.graph.initializer}
    # One bicubic position embedding, its sizes computed at run time from the input shape.
    assert len(cubic) == 1 and '/embeddings/' in cubic[0].name and \
        cubic[0].input[3] not in inits, [(n.name, list(n.input)) for n in cubic]
    # The output follows the input size, as the public file's does.
    if _has_ort():
        for h, w in ((56, 98), (126, 224)):
            assert _run(source, np.zeros((1, 3, h, w), np.float32)).shape == (1, h, w)
    # Exactly what the backends refused before (the issue's error) and TensorRT 8.5 rejects.
    assert onnx_prepare.needs_preparation(source, SIZE, 'default') == \
        ["input 'pixel_values' has dynamic dims ['batch_size', 3, 'height', 'width']"]
    issues = onnx_prepare.needs_preparation(source, SIZE, 'tensorrt8.5')
    assert len(issues) == 1 + 12 + 1 and "mode 'cubic'" in ' '.join(issues), issues


# ------------------------------------------------------------------------ the prepared files
def test_default_profile_is_fixed_folded_and_matches_the_original(source, prepared):
    done = prepared['default']
    proto = onnx.load(done.path)
    onnx.checker.check_model(proto, full_check=True)
    assert [(v.name, _dims(v)) for v in proto.graph.input] == \
        [('pixel_values', [1, 3, SIZE[1], SIZE[0]])]
    assert [(v.name, _dims(v)) for v in proto.graph.output] == \
        [('predicted_depth', [1, SIZE[1], SIZE[0]])]
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    for op in ('Shape', 'Gather', 'Constant', 'ConstantOfShape', 'Cast', 'Identity', 'Where'):
        assert ops[op] == 0, 'shape arithmetic left: {}'.format(dict(ops))
    assert ops['LayerNormalization'] == 12, 'the default profile keeps LayerNormalization'
    assert _resize_modes(proto) == ['linear'], _resize_modes(proto)
    assert done.nodes_before == len(onnx.load(source).graph.node) > done.nodes_after
    meta = {p.key: p.value for p in proto.metadata_props}
    assert {k: meta[k] for k in ('prepared_by', 'profile', 'input_size', 'opset')} == \
        {'prepared_by': 'depth_ros', 'profile': 'default', 'input_size': '518x294',
         'opset': '17'}, meta
    # Parity, independently of the preparation's own check: another input, both files in ORT.
    x = np.random.RandomState(7).standard_normal((1, 3, SIZE[1], SIZE[0])).astype(np.float32)
    ref = _run(source, x)
    got = _run(done.path, x)
    err = _rel_err(got, ref)
    assert got.shape == (1, SIZE[1], SIZE[0]) and err <= 1e-4, (got.shape, err)
    assert float(meta['parity_max_rel_err']) == pytest.approx(done.max_rel_err, rel=0.01)


def test_tensorrt85_profile_has_no_layernorm_node_no_cubic_resize_and_pinned_norms(
        source, prepared):
    done = prepared['tensorrt8.5']
    proto = onnx.load(done.path)
    onnx.checker.check_model(proto, full_check=True)
    assert [o.version for o in proto.opset_import if o.domain in ('', 'ai.onnx')] == [16]
    assert tensorrt85_issues(proto) == []
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    assert ops['LayerNormalization'] == 0 and ops['Shape'] == 0, dict(ops)
    assert _resize_modes(proto) == ['linear']
    # The decomposed LayerNorms, found by data flow alone: 2 per block + 4 output taps.
    norms = find_layernorms(proto.graph)
    assert len(norms) == done.layernorms == 12, (len(norms), done.layernorms)
    names = {n.name for chain in norms for n in chain}
    pinned = {n.name for n in proto.graph.node
              if n.op_type in TRT_LAYER_TYPE and keep_fp32(n.name, TRT_LAYER_TYPE[n.op_type])}
    softmax = {n.name for n in proto.graph.node if n.op_type == 'Softmax'}
    assert names <= pinned, 'LayerNorm nodes left in FP16: {}'.format(sorted(names - pinned)[:5])
    assert pinned == names | softmax, sorted(pinned - names - softmax)[:5]
    assert all('/norm1/' in c[0].name or '/norm2/' in c[0].name or '/layernorm' in c[0].name
               for c in norms), [c[0].name for c in norms]
    x = np.random.RandomState(8).standard_normal((1, 3, SIZE[1], SIZE[0])).astype(np.float32)
    err = _rel_err(_run(done.path, x), _run(source, x))
    assert err <= 1e-4, err


def test_other_names_and_a_4d_output_are_prepared_too(source, tmp_path):
    _ort()
    proto = onnx.load(source)
    onnx.utils  # noqa: B018 - the renaming below is plain protobuf
    old_in, old_out = proto.graph.input[0].name, proto.graph.output[0].name
    for node in proto.graph.node:
        node.input[:] = ['image' if i == old_in else i for i in node.input]
        node.output[:] = ['depth_raw' if o == old_out else o for o in node.output]
    proto.graph.input[0].name = 'image'
    # A consumer adds a channel axis: [batch, 1, height, width], as some exports have.
    proto.graph.node.append(helper.make_node('Unsqueeze', ['depth_raw', 'axis1'], ['depth'],
                                             name='/unsqueeze'))
    proto.graph.initializer.append(helper.make_tensor('axis1', TensorProto.INT64, [1], [1]))
    proto.graph.output[0].name = 'depth'
    dims = proto.graph.output[0].type.tensor_type.shape
    dims.dim.insert(1, onnx.TensorShapeProto.Dimension(dim_value=1))
    path = str(tmp_path / 'renamed.onnx')
    onnx.save(proto, path)
    done = onnx_prepare.prepare_onnx(path, str(tmp_path / 'p.onnx'), (98, 56), 'tensorrt8.5')
    out = onnx.load(done.path)
    assert [(v.name, _dims(v)) for v in out.graph.output] == [('depth', [1, 1, 56, 98])]
    assert done.max_rel_err <= 1e-4


@pytest.mark.slow  # ViT-S: export once (cached in test/.models), then ~6-12 s to prepare
def test_vits_public_layout_prepares_for_tensorrt85_with_parity_at_518x294(tmp_path):
    # The TensorRT 8.5 profile runs every step of the default one (fix, fold, check, parity)
    # and decomposes the LayerNorms; the tiny tests above cover both profiles.
    _ort()
    source = community_onnx('vits')
    assert os.path.getsize(source) > 95e6, 'the ViT-S export is the public file\'s size'
    t0 = time.monotonic()
    done = onnx_prepare.prepare_onnx(source, str(tmp_path / 'vits.onnx'), SIZE, 'tensorrt8.5')
    sys.stdout.write('ViT-S tensorrt8.5: {} -> {} nodes, {} LayerNorms decomposed, max rel err '
                     '{:.1e}, {:.1f} s\n'.format(done.nodes_before, done.nodes_after,
                                                 done.layernorms, done.max_rel_err,
                                                 time.monotonic() - t0))
    assert done.max_rel_err <= 1e-4
    proto = onnx.load(done.path)
    assert tensorrt85_issues(proto) == [] and len(find_layernorms(proto.graph)) == 28
    assert [(v.name, _dims(v)) for v in proto.graph.output] == \
        [('predicted_depth', [1, SIZE[1], SIZE[0]])]


# --------------------------------------------------------------------------- errors
def _graph(inputs, outputs, nodes, inits=(), opset=17):
    graph = helper.make_graph(nodes, 'g', inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid('', opset)])


def test_files_that_are_not_depth_anything_graphs_are_named(tmp_path):
    vi = helper.make_tensor_value_info
    bad = tmp_path / 'bad.onnx'
    bad.write_bytes(b'\x00\xffnot a protobuf')
    with pytest.raises(PreparationError, match=r'bad.onnx: cannot load as an ONNX model'):
        onnx_prepare.prepare_onnx(str(bad), str(tmp_path / 'o.onnx'), (28, 28))
    two = _graph([vi('a', TensorProto.FLOAT, [1, 3, 'h', 'w']),
                  vi('b', TensorProto.FLOAT, [1, 3, 'h', 'w'])],
                 [vi('y', TensorProto.FLOAT, [1, 3, 'h', 'w'])],
                 [helper.make_node('Add', ['a', 'b'], ['y'])])
    path = str(tmp_path / 'two.onnx')
    onnx.save(two, path)
    with pytest.raises(PreparationError, match=r"two.onnx: a Depth Anything V2 graph has one "
                                               r"input \(the image\), this one has 2: \['a', "
                                               r"'b'\]"):
        onnx_prepare.needs_preparation(path)
    flat = _graph([vi('x', TensorProto.FLOAT, ['n', 3, 'h', 'w'])],
                  [vi('y', TensorProto.FLOAT, ['n', 'k'])],
                  [helper.make_node('Flatten', ['x'], ['y'])])
    path = str(tmp_path / 'flat.onnx')
    onnx.save(flat, path)
    with pytest.raises(PreparationError, match=r"flat.onnx: output 'y' must be \[batch, "
                                               r"height, width\] or \[batch, 1, height, "
                                               r"width\], got dims \['n', 'k'\]"):
        onnx_prepare.prepare_onnx(path, str(tmp_path / 'o.onnx'), (28, 28))
    fixed = _graph([vi('x', TensorProto.FLOAT, [1, 3, 28, 42])],
                   [vi('y', TensorProto.FLOAT, [1, 28, 42])],
                   [helper.make_node('ReduceMean', ['x'], ['y'], axes=[1], keepdims=0)])
    path = str(tmp_path / 'fixed.onnx')
    onnx.save(fixed, path)
    with pytest.raises(PreparationError, match=r"fixed.onnx: input 'x' has a fixed height of "
                                               r"28, not 56 \(the requested size is 98x56\)"):
        onnx_prepare.prepare_onnx(path, str(tmp_path / 'o.onnx'), (98, 56))
    with pytest.raises(ValueError, match='multiples of 14|multiple of 14'):
        onnx_prepare.prepare_onnx(path, str(tmp_path / 'o.onnx'), (100, 56))
    assert not (tmp_path / 'o.onnx').exists()


# ------------------------------------------------------ LayerNorm decomposition (onnx only)
def test_layernorm_decomposition_matches_the_node_in_onnx_reference():
    from onnx.reference import ReferenceEvaluator
    vi = helper.make_tensor_value_info
    rng = np.random.RandomState(3)
    scale = rng.standard_normal(8).astype(np.float32)
    bias = rng.standard_normal(8).astype(np.float32)
    nodes = [helper.make_node('LayerNormalization', ['x', 's', 'b'], ['n1'],
                              name='/backbone/encoder/layer.0/norm1/LayerNormalization',
                              epsilon=1e-6),
             # A name with no norm in it (as the dynamo exporter writes: node_<n>).
             helper.make_node('LayerNormalization', ['n1', 's2'], ['y'], name='node_17',
                              axis=1, epsilon=1e-5)]
    proto = _graph([vi('x', TensorProto.FLOAT, [2, 5, 8])], [vi('y', TensorProto.FLOAT,
                                                                [2, 5, 8])], nodes,
                   [onnx.numpy_helper.from_array(scale, 's'),
                    onnx.numpy_helper.from_array(bias, 'b'),
                    onnx.numpy_helper.from_array(rng.standard_normal((5, 8)).astype(
                        np.float32), 's2')])
    x = rng.standard_normal((2, 5, 8)).astype(np.float32) * 3 + 1
    want = ReferenceEvaluator(proto).run(None, {'x': x})[0]
    assert onnx_prepare.decompose_layernorm(proto) == 2
    proto = onnx_prepare.convert_opset(proto, 16)
    onnx.checker.check_model(proto, full_check=True)
    assert [o.version for o in proto.opset_import if o.domain in ('', 'ai.onnx')] == [16]
    assert tensorrt85_issues(proto) == []
    got = ReferenceEvaluator(proto).run(None, {'x': x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    axes = [helper.get_attribute_value(a) for n in proto.graph.node if n.op_type == 'ReduceMean'
            for a in n.attribute if a.name == 'axes']
    assert axes == [[-1], [-1], [1, 2], [1, 2]], axes
    kinds = {'ReduceMean': 'REDUCE', 'Sqrt': 'UNARY'}
    names = [n.name for n in proto.graph.node]
    assert all(keep_fp32(n.name, kinds.get(n.op_type, 'ELEMENTWISE')) for n in proto.graph.node)
    # Named after the norm module, or under a 'layernorm' scope when its name says nothing.
    assert names[0] == '/backbone/encoder/layer.0/norm1/LayerNormalization/ReduceMean'
    assert names[9] == 'node_17/layernorm/ReduceMean', names[9]
    assert len(set(names)) == len(names) == 17


# ---------------------------------------------------------------- cache, atomic files, lock
def test_cache_is_keyed_by_source_hash_and_size_and_reused(source, tmp_path, caplog):
    _ort()
    from depth_ros.util import file_sha256
    sha = file_sha256(source)
    first = onnx_prepare.ensure_prepared(source, (98, 56), cache_dir=str(tmp_path),
                                         label='onnx-community/depth-anything-v2-small')
    assert os.path.basename(first.path) == \
        'onnx-community--depth-anything-v2-small-{}-98x56-default.onnx'.format(sha[:12])
    assert os.path.dirname(first.path) == str(tmp_path / 'onnx') and not first.reused
    again = onnx_prepare.ensure_prepared(source, (98, 56), cache_dir=str(tmp_path),
                                         label='onnx-community/depth-anything-v2-small')
    assert again.reused and again.path == first.path
    other_size = onnx_prepare.ensure_prepared(source, (70, 42), cache_dir=str(tmp_path))
    assert other_size.path != first.path and '-70x42-default' in other_size.path
    # Another source (other bytes: one weight changed) is another file.
    proto = onnx.load(source)
    init = proto.graph.initializer[0]
    arr = onnx.numpy_helper.to_array(init).copy()
    arr.flat[0] += 1.0
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    changed = str(tmp_path / 'changed.onnx')
    onnx.save(proto, changed)
    other = onnx_prepare.ensure_prepared(changed, (98, 56), cache_dir=str(tmp_path))
    assert other.path != first.path and file_sha256(changed)[:12] in other.path
    # A truncated file under the final name (a half-copied file) is never used: prepared again.
    with open(first.path, 'r+b') as f:
        f.truncate(1000)
    assert not onnx_prepare.is_prepared(first.path, sha, (98, 56), 'default')
    redone = onnx_prepare.ensure_prepared(source, (98, 56), cache_dir=str(tmp_path),
                                          label='onnx-community/depth-anything-v2-small')
    assert not redone.reused and onnx_prepare.is_prepared(redone.path, sha, (98, 56),
                                                          'default')


def test_a_failed_preparation_leaves_no_file(source, tmp_path, monkeypatch):
    _ort()
    from depth_ros.util import file_sha256

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(onnx_prepare, 'parity', interrupted)
    with pytest.raises(KeyboardInterrupt):
        onnx_prepare.ensure_prepared(source, (98, 56), cache_dir=str(tmp_path))
    left = sorted(os.listdir(str(tmp_path / 'onnx')))
    # Only the (empty) lock file: no temporary, no half-written model.
    stem = os.path.splitext(os.path.basename(source))[0]
    assert left == ['.' + onnx_prepare.prepared_name(stem, file_sha256(source), (98, 56),
                                                     'default') + '.lock'], left


def test_parity_failure_refuses_the_file(source, tmp_path, monkeypatch):
    _ort()
    monkeypatch.setattr(onnx_prepare, 'parity', lambda *a, **k: 3e-3)
    with pytest.raises(PreparationError, match=r'differs from the original in ONNX Runtime at '
                                               r'98x56: max relative error 3.00e-03 > 1e-04'):
        onnx_prepare.ensure_prepared(source, (98, 56), cache_dir=str(tmp_path))
    assert [n for n in os.listdir(str(tmp_path / 'onnx')) if n.endswith('.onnx')] == []


def test_two_processes_preparing_at_once_share_one_file(source, tmp_path):
    _ort()
    from filelock import FileLock

    from depth_ros.util import file_sha256
    size = (98, 56)
    target = os.path.join(str(tmp_path), 'onnx', onnx_prepare.prepared_name(
        'm', file_sha256(source), size, 'default'))
    os.makedirs(os.path.dirname(target))
    code = ('import logging, sys\n'
            'logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")\n'
            'from depth_ros.inference import onnx_prepare\n'
            'done = onnx_prepare.ensure_prepared(sys.argv[1], (98, 56), cache_dir=sys.argv[2],'
            ' label="m")\n'
            'print("RESULT", done.path, done.reused)\n')
    hold = FileLock(onnx_prepare.lock_path(target))
    hold.acquire()
    procs = []
    try:
        for _ in range(2):
            procs.append(subprocess.Popen([sys.executable, '-c', code, source, str(tmp_path)],
                                          cwd=ROOT, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT))
        # Both must reach the lock before it is released: each says it waits.
        logs = [[] for _ in procs]
        deadline = time.monotonic() + 60
        for proc, log in zip(procs, logs):
            for raw in iter(proc.stdout.readline, b''):
                log.append(raw.decode())
                if 'another process is preparing' in log[-1] or time.monotonic() > deadline:
                    break
        assert all(any('waiting for it' in line for line in log) for log in logs), logs
    finally:
        hold.release()
    outs = [''.join(log) + p.communicate(timeout=120)[0].decode() for p, log in
            zip(procs, logs)]
    assert all(p.returncode == 0 for p in procs), outs
    results = [line.split()[1:] for out in outs for line in out.splitlines()
               if line.startswith('RESULT')]
    assert sorted(r[1] for r in results) == ['False', 'True'], outs
    assert {r[0] for r in results} == {target}, results
    assert sum(out.count('prepared {}'.format(source)) for out in outs) == 1, outs
    assert onnx_prepare.is_prepared(target, file_sha256(source), size, 'default')


# ---------------------------------------------------- the backends take the public layout
def test_onnxruntime_backend_runs_the_public_layout_as_the_original_would(source, tmp_path,
                                                                          monkeypatch):
    _ort()
    from depth_ros.core.preprocess import prepare_input, restore_output
    from depth_ros.inference import load_depth_model
    monkeypatch.setenv('DEPTH_ROS_CACHE', str(tmp_path))
    model = load_depth_model(source, input_size=(98, 56))
    assert model.input_size == (98, 56) and str(tmp_path) in model.path, model.path
    bgr = np.random.RandomState(5).randint(0, 256, (60, 90, 3)).astype(np.uint8)
    got = model.predict(bgr)
    # Independent: the ORIGINAL file in ONNX Runtime on the same pre-processing.
    want = restore_output(_run(source, prepare_input(bgr, (98, 56))), 60, 90)
    assert got.shape == (60, 90) and _rel_err(got, want) <= 1e-4, _rel_err(got, want)
    # Without a size the default 518x294 is used for a dynamic file.
    assert load_depth_model(source).input_size == SIZE

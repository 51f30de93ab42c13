"""onnx_tools on small hand-built graphs: TensorRT 8.5 checks, folding, metadata, atomic saves."""
from __future__ import annotations

import os

import numpy as np
import pytest

onnx = pytest.importorskip('onnx')
from onnx import helper, TensorProto  # noqa: E402, I100

from depth_ros.inference import onnx_tools  # noqa: E402, I100


def _graph(nodes, initializers=(), opset=17, name='g'):
    x = helper.make_tensor_value_info('x', TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info('y', TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph(nodes, name, [x], [y], initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid('', opset)],
                             producer_name='test', producer_version='1')


def _const(name, values):
    return helper.make_tensor(name, TensorProto.FLOAT, [len(values)], values)


def test_tensorrt85_issues_lists_what_the_parser_rejects():
    nodes = [
        helper.make_node('LayerNormalization', ['x', 's', 'b'], ['a'], name='ln'),
        helper.make_node('IsNaN', ['a'], ['n'], name='nan_guard'),
        helper.make_node('Resize', ['a', '', 'sc'], ['r1'], name='cubic', mode='cubic'),
        helper.make_node('Resize', ['a', '', 'sc'], ['r2'], name='ok', mode='linear',
                         coordinate_transformation_mode='align_corners'),
        helper.make_node('Resize', ['a', '', 'sc'], ['r3'], name='odd', mode='nearest',
                         coordinate_transformation_mode='tf_crop_and_resize'),
        helper.make_node('Gelu', ['r2'], ['y'], name='custom', domain='com.microsoft'),
    ]
    proto = _graph(nodes, [_const('s', [1.0] * 4), _const('b', [0.0] * 4),
                           _const('sc', [1.0, 1.0])])
    got = onnx_tools.tensorrt85_issues(proto)
    want = ["LayerNormalization node 'ln': no importer before TensorRT 8.6",
            "IsNaN node 'nan_guard': no importer before TensorRT 8.6",
            "Resize node 'cubic': mode 'cubic' (TensorRT 8.5 imports nearest, linear)",
            "Resize node 'odd': coordinate_transformation_mode 'tf_crop_and_resize'",
            "Gelu node 'custom' in domain 'com.microsoft'"]
    assert got == want, 'expected {}, received {}'.format(want, got)
    plain = _graph([helper.make_node('Relu', ['x'], ['y'], name='r')])
    assert onnx_tools.tensorrt85_issues(plain) == []


def test_fold_constants_folds_constant_arithmetic_and_keeps_io():
    pytest.importorskip('onnxruntime')
    # y = x + (a * b): the product of two initializers is a constant.
    nodes = [helper.make_node('Mul', ['a', 'b'], ['ab'], name='const_mul'),
             helper.make_node('Add', ['x', 'ab'], ['y'], name='/net/add')]
    proto = _graph(nodes, [_const('a', [1.0, 2.0, 3.0, 4.0]), _const('b', [2.0] * 4)])
    folded = onnx_tools.fold_constants(proto)
    assert [n.op_type for n in folded.graph.node] == ['Add'], folded.graph.node
    assert folded.graph.node[0].name == '/net/add', 'node names are kept'
    assert [i.name for i in folded.graph.input] == ['x']
    assert [o.name for o in folded.graph.output] == ['y']
    assert (folded.producer_name, folded.producer_version) == ('test', '1')
    import onnxruntime as ort
    sess = ort.InferenceSession(folded.SerializeToString(), providers=['CPUExecutionProvider'])
    x = np.arange(4, dtype=np.float32)[None]
    got = sess.run(None, {'x': x})[0]
    np.testing.assert_allclose(got, x + np.array([2.0, 4.0, 6.0, 8.0], np.float32))


def test_metadata_round_trip_and_errors(tmp_path):
    proto = _graph([helper.make_node('Relu', ['x'], ['y'])])
    helper.set_model_props(proto, {'trained': 'false', 'variant': 'tiny'})
    path = str(tmp_path / 'm.onnx')
    onnx_tools.save_atomic(proto, path)
    assert onnx_tools.read_metadata(path) == {'trained': 'false', 'variant': 'tiny'}
    with pytest.raises(FileNotFoundError, match='ONNX model not found: .*none.onnx'):
        onnx_tools.read_metadata(str(tmp_path / 'none.onnx'))
    bad = tmp_path / 'bad.onnx'
    bad.write_bytes(b'\xff\x00 not a protobuf')
    with pytest.raises(ValueError, match=r'bad.onnx: cannot load as an ONNX model: '):
        onnx_tools.read_metadata(str(bad))


def test_save_atomic_failure_keeps_the_old_model(tmp_path, monkeypatch):
    proto = _graph([helper.make_node('Relu', ['x'], ['y'])])
    target = tmp_path / 'model.onnx'
    target.write_bytes(b'previous model')

    def fail(model, path, *args, **kwargs):
        with open(path, 'wb') as f:
            f.write(b'partial')
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx, 'save_model', fail)
    with pytest.raises(KeyboardInterrupt):
        onnx_tools.save_atomic(proto, str(target))
    assert os.listdir(str(tmp_path)) == ['model.onnx'] and \
        target.read_bytes() == b'previous model'

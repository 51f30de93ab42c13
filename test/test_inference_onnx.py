"""
ONNX Runtime backend: load_depth_model(..., backend='onnxruntime'), parity with PyTorch.

Untrained networks: outputs are compared with the PyTorch reference, never read as depth.
"""
import os
import time

import numpy as np
import pytest

torch = pytest.importorskip('torch')
onnx = pytest.importorskip('onnx')
pytest.importorskip('onnxruntime')
pytest.importorskip('onnxscript')

from depth_ros.inference import (checkpoints, export, load_depth_model,  # noqa: E402,I100
                                 model_store, onnx_tools, torch_model)
from depth_ros.inference.onnx_backend import OnnxDepthModel  # noqa: E402,I100

torch.set_num_threads(1)


@pytest.fixture(scope='module')
def tiny_onnx(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('onnx') / 'tiny_70x42.onnx')
    export.export_onnx(torch_model.build_model('tiny', seed=11), path, input_size=(70, 42),
                       show_progress=False, metadata={'variant': 'tiny'})
    return path


def image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_predict_shape_dtype_and_parity_with_torch(tiny_onnx):
    model = load_depth_model(tiny_onnx, intra_op_threads=1)
    assert isinstance(model, OnnxDepthModel) and model.input_size == (70, 42)
    assert model.metadata['variant'] == 'tiny' and model.providers == ['CPUExecutionProvider']
    ref = load_depth_model('tiny', backend='torch', random_weights=True, seed=11,
                           input_size=(70, 42))
    for shape in ((60, 100), (42, 70), (121, 37)):
        bgr = image(*shape, seed=shape[0])
        got, want = model.predict(bgr), ref.predict(bgr)
        assert got.shape == shape and got.dtype == np.float32, (got.shape, got.dtype)
        err = np.abs(got - want).max() / np.abs(want).max()
        assert err < 1e-4, '{}: max relative error {} (expected < 1e-4)'.format(shape, err)
    assert model.latency.count == 3 and model.infer_latency.mean_ms > 0


def test_input_size_must_match_the_file(tiny_onnx):
    assert load_depth_model(tiny_onnx, input_size=(70, 42)).input_size == (70, 42)
    with pytest.raises(ValueError) as err:
        load_depth_model(tiny_onnx, input_size=(518, 294))
    assert str(err.value) == '`input_size` (518, 294) does not match {}, which was exported ' \
                             'at 70x42'.format(tiny_onnx)


def test_options_are_checked(tiny_onnx):
    with pytest.raises(ValueError, match=r"`providers` \['NoSuchExecutionProvider'\] not "
                                         r"available"):
        load_depth_model(tiny_onnx, providers=['NoSuchExecutionProvider'])
    with pytest.raises(ValueError, match=r'`intra_op_threads` must be an integer >= 0, got -1'):
        load_depth_model(tiny_onnx, intra_op_threads=-1)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['device'\] for backend "
                                         r"'onnxruntime'"):
        load_depth_model(tiny_onnx, device='cuda')


def test_missing_file_is_named(tmp_path):
    path = str(tmp_path / 'absent.onnx')
    with pytest.raises(FileNotFoundError) as err:
        load_depth_model(path)
    assert str(err.value) == 'ONNX model not found: {}'.format(path)


def test_corrupt_file_is_named(tmp_path, tiny_onnx):
    garbage = tmp_path / 'garbage.onnx'
    garbage.write_bytes(b'this is not protobuf \x00\xff' * 20)
    truncated = tmp_path / 'truncated.onnx'
    with open(tiny_onnx, 'rb') as f:
        truncated.write_bytes(f.read()[:5000])
    for path in (garbage, truncated):
        with pytest.raises(ValueError) as err:
            load_depth_model(str(path))
        assert str(err.value).startswith('{}: cannot load as an ONNX model: '.format(path)), \
            str(err.value)


def _save(graph_inputs, graph_outputs, nodes, path):
    g = onnx.helper.make_graph(nodes, 'g', graph_inputs, graph_outputs)
    m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid('', 17)])
    onnx.save_model(m, path)
    return path


def test_wrong_architecture_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv('DEPTH_ROS_CACHE', str(tmp_path / 'cache'))
    f32 = onnx.TensorProto.FLOAT
    vi = onnx.helper.make_tensor_value_info
    ident = onnx.helper.make_node('Identity', ['x'], ['y'])
    # A feature extractor: [1, 3, 28, 28] -> [1, 2352].
    p = _save([vi('x', f32, [1, 3, 28, 28])], [vi('y', f32, [1, 2352])],
              [onnx.helper.make_node('Flatten', ['x'], ['y'])],
              str(tmp_path / 'classifier.onnx'))
    with pytest.raises(ValueError, match=r"{}: output 'y' must be \[1, h, w\] at the input "
                                         r"size 28x28, got \[1, 2352\]".format(p)):
        load_depth_model(p)
    # Dynamic input shape: the file is prepared at 518x294 (onnx_prepare), and then its
    # output is seen not to be a depth map.
    p = _save([vi('x', f32, [1, 3, 'h', 'w'])], [vi('y', f32, [1, 3, 'h', 'w'])], [ident],
              str(tmp_path / 'dynamic.onnx'))
    with pytest.raises(ValueError, match=r"{}: output 'y' must be \[1, 294, 518\] \(or "
                                         r"\[1, 1, 294, 518\]\) at the input size 518x294, got "
                                         r"\[1, 3, 294, 518\]".format(p)):
        load_depth_model(p)
    assert not [n for n in os.listdir(str(tmp_path / 'cache' / 'onnx'))
                if n.endswith('.onnx')], 'a failed preparation must leave no file'
    # A static input of another type is still refused by the backend itself.
    p = _save([vi('x', onnx.TensorProto.INT64, [1, 3, 28, 28])], [vi('y', f32, [1, 28, 28])],
              [onnx.helper.make_node('Cast', ['x'], ['y'], to=f32)], str(tmp_path / 'int.onnx'))
    with pytest.raises(ValueError, match=r"{}: input 'x' must be a fixed \[1, 3, h, w\] float "
                                         r"tensor, got tensor\(int64\)".format(p)):
        load_depth_model(p)
    # Two inputs.
    p = _save([vi('x', f32, [1, 3, 28, 28]), vi('z', f32, [1, 3, 28, 28])],
              [vi('y', f32, [1, 3, 28, 28])], [onnx.helper.make_node('Add', ['x', 'z'], ['y'])],
              str(tmp_path / 'two.onnx'))
    with pytest.raises(ValueError, match=r"{}: expected 1 input and 1 output .*got inputs "
                                         r"\['x', 'z'\]".format(p)):
        load_depth_model(p)


def test_tensorrt_is_dispatched_lazily(monkeypatch, tmp_path):
    # The tensorrt package is another engineer's; check only that load_depth_model forwards
    # path, size and options to its documented entry point.
    import depth_ros.inference.tensorrt as trt_pkg
    seen = {}

    def fake_load(path, **options):
        seen.update(path=path, **options)
        return 'engine-model'

    monkeypatch.setattr(trt_pkg, 'load_engine_model', fake_load)
    got = load_depth_model(str(tmp_path / 'm.engine'), backend='tensorrt',
                           input_size=(518, 294), precision='fp16')
    assert got == 'engine-model'
    assert seen == {'path': str(tmp_path / 'm.engine'), 'input_size': (518, 294),
                    'precision': 'fp16'}, seen


@pytest.mark.slow
def test_vits_onnx_matches_pytorch_at_518x294(tmp_path):
    """
    The full ViT-S architecture (untrained, seeded) at the default size, as the demo gets it.

    Offline, with torch installed and the default model nowhere, the demo exports an untrained
    ViT-S (seed 0, model_store.untrained_vits); ONNX Runtime must then match PyTorch with the
    same weights.
    """
    path, desc, trained = model_store.untrained_vits(str(tmp_path / 'cache'), (518, 294),
                                                     'offline')
    assert trained is False and desc.startswith('UNTRAINED'), desc
    net = torch_model.build_model('vits', seed=0)
    assert onnx_tools.read_metadata(path)['source_sha256'] == checkpoints.state_dict_hash(net)
    proto = onnx.load(path)
    n_ln = sum(n.op_type == 'LayerNormalization' for n in proto.graph.node)
    # 12 blocks x 2, plus the output norm on the 4 taps. With fresh weights (all LayerNorms
    # weight 1, bias 0) the exporter's optimiser merges the tap norm with the next block's
    # norm1 on the same tensor for 3 taps: 25. Trained weights keep all 28.
    assert n_ln >= 25, 'expected >= 25 LayerNormalization nodes, received {}'.format(n_ln)
    model = load_depth_model(path, intra_op_threads=1)
    assert model.input_size == (518, 294)
    x = np.random.default_rng(0).standard_normal((1, 3, 294, 518)).astype(np.float32)
    with torch.no_grad():
        want = net(pixel_values=torch.from_numpy(x)).predicted_depth.numpy()
    got = model.session.run(None, {'image': x})[0]
    err = np.abs(got - want).max() / np.abs(want).max()
    assert got.shape == (1, 294, 518) and err < 1e-3, \
        'shape {}, max relative error {} (expected < 1e-3)'.format(got.shape, err)
    # Through predict() on a 1280x720 frame as well (shared pre/post-processing).
    ref = torch_model.TorchDepthModel(net, device='cpu', dtype=torch.float32)
    bgr = image(720, 1280)
    a, b = model.predict(bgr), ref.predict(bgr)
    err = np.abs(a - b).max() / np.abs(b).max()
    assert a.shape == (720, 1280) and err < 1e-3, (a.shape, err)
    t0 = time.perf_counter()
    model.predict(bgr)
    print('ViT-S ORT CPU 1 thread, 518x294, predict at 1280x720: {:.0f} ms'.format(
        (time.perf_counter() - t0) * 1e3))

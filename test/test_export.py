"""
ONNX export, the `model export` command, hub offline detection and the demo model resolver.

Models are tiny and untrained: outputs are compared with PyTorch, never presented as depth.
"""
import collections
import contextlib
import os
import socket

import numpy as np
import pytest

torch = pytest.importorskip('torch')
onnx = pytest.importorskip('onnx')
ort = pytest.importorskip('onnxruntime')
pytest.importorskip('onnxscript')

from depth_ros.inference import (checkpoints, export, hub, model_store,  # noqa: E402,I100,I202
                                 onnx_tools, torch_model)
from depth_ros.util import file_sha256  # noqa: E402
from model_files import find_layernorms  # noqa: E402
from test_util import forbid_network  # noqa: E402

torch.set_num_threads(1)

SIZE = (56, 42)  # (width, height), multiples of 14


@pytest.fixture(scope='module')
def tiny_export(tmp_path_factory):
    model = torch_model.build_model('tiny', seed=0)
    path = str(tmp_path_factory.mktemp('export') / 'tiny.onnx')
    export.export_onnx(model, path, input_size=SIZE, show_progress=False,
                       metadata={'variant': 'tiny', 'source_sha256': 'abc123'})
    return model, path


def test_graph_io_opset_and_single_node_layernorm(tiny_export):
    _, path = tiny_export
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    opset = [o.version for o in proto.opset_import if o.domain in ('', 'ai.onnx')]
    assert opset == [17], 'expected opset [17], received {}'.format(opset)
    # 4 blocks x 2 norms + the output norm on 4 taps, 3 of which the optimiser merges with the
    # next block's identical fresh norm1 (weight 1, bias 0): 9. None decomposed (ReduceMean).
    assert ops['LayerNormalization'] >= 9, 'LayerNormalization nodes: {}'.format(dict(ops))
    assert ops['ReduceMean'] == 0, 'LayerNorm decomposed: {}'.format(dict(ops))
    # Eager attention: no NaN guards of the SDPA decomposition (TensorRT 8.5 lacks IsNaN).
    assert ops['IsNaN'] == 0 and ops['Softmax'] == 4, dict(ops)
    (inp,), (out,) = proto.graph.input, proto.graph.output
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert (inp.name, dims, inp.type.tensor_type.elem_type) == \
        ('image', [1, 3, 42, 56], onnx.TensorProto.FLOAT), (inp.name, dims)
    dims = [d.dim_value for d in out.type.tensor_type.shape.dim]
    assert (out.name, dims) == ('relative_disparity', [1, 42, 56]), (out.name, dims)


def test_metadata(tiny_export):
    _, path = tiny_export
    meta = onnx_tools.read_metadata(path)
    want = {'variant': 'tiny', 'source_sha256': 'abc123', 'input_size': '56x42',
            'input': 'image', 'output': 'relative_disparity', 'producer': 'depth_ros'}
    got = {k: meta.get(k) for k in want}
    assert got == want, 'expected {}, received {}'.format(want, got)


def test_onnxruntime_matches_torch(tiny_export):
    model, path = tiny_export
    x = np.random.default_rng(1).standard_normal((1, 3, 42, 56)).astype(np.float32)
    with torch.no_grad():
        ref = model(pixel_values=torch.from_numpy(x)).predicted_depth.numpy()
    sess = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    got = sess.run(None, {'image': x})[0]
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert got.shape == (1, 42, 56) and err < 1e-4, \
        'shape {}, max relative error {} (expected < 1e-4)'.format(got.shape, err)


def test_export_argument_errors(tmp_path):
    model = torch_model.build_model('tiny', seed=0)
    with pytest.raises(ValueError, match=r'input `height` must be a positive multiple of 14, '
                                         r'got 300'):
        export.export_onnx(model, str(tmp_path / 'a.onnx'), input_size=(518, 300))
    top = export.max_opset()
    for bad in (13, 15, top + 1, '17', True):
        want = ('`opset` must be an integer from 16 to {} (16: LayerNorm decomposed, for '
                'TensorRT < 8.6; >= 17: one LayerNormalization node), got {!r}'.format(top, bad))
        with pytest.raises(ValueError) as info:
            export.export_onnx(model, str(tmp_path / 'a.onnx'), opset=bad)
        assert str(info.value) == want, 'expected {!r}, received {!r}'.format(
            want, str(info.value))
    assert os.listdir(str(tmp_path)) == []


def test_failed_write_leaves_no_file(tmp_path, monkeypatch, tiny_export):
    # Atomic write: a failure while saving must leave neither a temporary file nor a
    # half-written model, and must not touch an existing model.
    proto = onnx.load(tiny_export[1])
    target = tmp_path / 'model.onnx'
    target.write_bytes(b'previous model')
    real_save = onnx.save_model

    def fail(model, path, *args, **kwargs):
        with open(path, 'wb') as f:
            f.write(b'partial')
        raise OSError('disk full')

    monkeypatch.setattr(onnx, 'save_model', fail)
    with pytest.raises(OSError, match='disk full'):
        onnx_tools.save_atomic(proto, str(target))
    assert sorted(os.listdir(str(tmp_path))) == ['model.onnx']
    assert target.read_bytes() == b'previous model'
    monkeypatch.setattr(onnx, 'save_model', real_save)
    onnx_tools.save_atomic(proto, str(target))
    assert sorted(os.listdir(str(tmp_path))) == ['model.onnx']
    assert onnx.load(str(target)).graph.input[0].name == 'image'


def test_cli_export_random_weights(tmp_path, caplog):
    from depth_ros.cli import main
    out = str(tmp_path / 'cli.onnx')
    rc = main(['model', 'export', '--variant', 'tiny', '--random-weights', '--seed', '3',
               '--width', '28', '--height', '42', '--out', out])
    assert rc == 0 and os.path.isfile(out)
    meta = onnx_tools.read_metadata(out)
    want = checkpoints.state_dict_hash(torch_model.build_model('tiny', seed=3))
    got = (meta['variant'], meta['trained'], meta['source_sha256'], meta['input_size'])
    assert got == ('tiny', 'false', want, '28x42'), 'received {}'.format(got)
    assert 'UNTRAINED' in caplog.text


def test_cli_export_errors(tmp_path, capsys):
    from depth_ros.cli import main
    folder = tmp_path / 'ckpt'
    torch_model.build_model('tiny', seed=4).save_pretrained(str(folder))
    assert main(['model', 'export', '--checkpoint', str(folder), '--variant', 'vits',
                 '--out', str(tmp_path / 'x.onnx')]) == 2
    err = capsys.readouterr().err
    assert 'holds a tiny model, not the requested variant vits' in err, err
    assert main(['model', 'export', '--random-weights', '--width', '500',
                 '--out', str(tmp_path / 'x.onnx')]) == 2
    err = capsys.readouterr().err
    # Was "input `width` must be ...": the library's name, not the option.
    assert err == 'depth-ros model export: error: `--width` must be a positive multiple of ' \
        '14, got 500\n', err
    assert main(['model', 'export', '--random-weights', '--height', '0',
                 '--out', str(tmp_path / 'x.onnx')]) == 2
    err = capsys.readouterr().err
    assert err.endswith('error: `--height` must be a positive multiple of 14, got 0\n'), err
    assert main(['model', 'export', '--random-weights', '--opset', '13',
                 '--out', str(tmp_path / 'x.onnx')]) == 2
    err = capsys.readouterr().err
    want = ('--opset must be an integer from 16 to {} (16: LayerNorm decomposed, for TensorRT '
            '< 8.6; >= 17: one LayerNormalization node), got 13'.format(export.max_opset()))
    assert want in err, 'expected {!r} in {!r}'.format(want, err)
    assert main(['model', 'export', '--checkpoint', str(tmp_path / 'none.pth'),
                 '--out', str(tmp_path / 'x.onnx')]) == 2
    err = capsys.readouterr().err
    assert 'checkpoint not found: {}'.format(tmp_path / 'none.pth') in err, err
    with pytest.raises(SystemExit):  # argparse: --checkpoint and --random-weights exclusive
        main(['model', 'export', '--checkpoint', str(folder), '--random-weights',
              '--out', str(tmp_path / 'x.onnx')])
    with pytest.raises(SystemExit):  # argparse choices
        main(['model', 'export', '--random-weights', '--target', 'tensorrt7',
              '--out', str(tmp_path / 'x.onnx')])
    err = capsys.readouterr().err
    assert "invalid choice: 'tensorrt7'" in err, err
    assert not os.path.exists(str(tmp_path / 'x.onnx'))
    # A path through a file: refused naming --out before the export (it was an unnamed
    # "[Errno 17] File exists" after it).
    (tmp_path / 'a_file').write_text('')
    with pytest.raises(SystemExit):
        main(['model', 'export', '--random-weights', '--out', str(tmp_path / 'a_file' / 'x.onnx')])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith("argument --out: '{}': {} is a file, not a folder".format(
        tmp_path / 'a_file' / 'x.onnx', tmp_path / 'a_file')), err


# ------------------------------------------------------------------------------------------
# Opset 16 for TensorRT 8.5 (JetPack 5.1): no LayerNormalization node, LayerNorm pinned to FP32

# ONNX op -> the TensorRT layer type its ONNX parser importer creates (TensorRT 8.5 docs).
TRT_LAYER_TYPE = {'ReduceMean': 'REDUCE', 'Sub': 'ELEMENTWISE', 'Pow': 'ELEMENTWISE',
                  'Add': 'ELEMENTWISE', 'Div': 'ELEMENTWISE', 'Mul': 'ELEMENTWISE',
                  'Sqrt': 'UNARY', 'Erf': 'UNARY', 'Softmax': 'SOFTMAX', 'MatMul':
                  'MATRIX_MULTIPLY', 'Conv': 'CONVOLUTION', 'Relu': 'ACTIVATION',
                  'LayerNormalization': 'NORMALIZATION'}


@pytest.fixture(scope='module')
def tiny_export16(tmp_path_factory, tiny_export):
    model, _ = tiny_export
    path = str(tmp_path_factory.mktemp('export16') / 'tiny16.onnx')
    export.export_onnx(model, path, input_size=SIZE, opset=16, show_progress=False)
    return model, path


def test_opset16_graph_has_decomposed_layernorm_pinned_to_fp32(tiny_export16):
    from depth_ros.inference.tensorrt.builder import keep_fp32

    model, path = tiny_export16
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    opset = [o.version for o in proto.opset_import if o.domain in ('', 'ai.onnx')]
    assert opset == [16], 'expected opset [16], received {}'.format(opset)
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    # TensorRT 8.5's ONNX parser has importers for neither.
    assert ops['LayerNormalization'] == 0 and ops['IsNaN'] == 0, dict(ops)
    backbone = model.config.backbone_config
    want = 2 * backbone.num_hidden_layers + len(backbone.out_indices)  # norm1/2 + output taps
    norms = find_layernorms(proto.graph)
    assert len(norms) == want, 'expected {} decomposed LayerNorms, received {}'.format(
        want, len(norms))
    assert ops['ReduceMean'] == 2 * want and ops['Sqrt'] == want, dict(ops)
    pinned = {n.name for n in proto.graph.node
              if n.op_type in TRT_LAYER_TYPE and keep_fp32(n.name, TRT_LAYER_TYPE[n.op_type])}
    ln_nodes = {n.name for chain in norms for n in chain}
    missing = sorted(ln_nodes - pinned)
    assert not missing, 'LayerNorm nodes the builder would leave in FP16: {}'.format(missing[:5])
    softmax = {n.name for n in proto.graph.node if n.op_type == 'Softmax'}
    assert pinned == ln_nodes | softmax, 'pinned beyond LayerNorm/Softmax: {}'.format(
        sorted(pinned - ln_nodes - softmax)[:5])
    assert len(pinned) == 9 * want + backbone.num_hidden_layers, len(pinned)
    assert all('/norm1/' in c[0].name or '/norm2/' in c[0].name or '/layernorm' in c[0].name
               for c in norms), [c[0].name for c in norms]


def test_opset_and_exporter_in_metadata(tiny_export, tiny_export16):
    got = [{k: onnx_tools.read_metadata(p)[k] for k in ('opset', 'exporter')}
           for p in (tiny_export[1], tiny_export16[1])]
    want = [{'opset': '17', 'exporter': 'dynamo'}, {'opset': '16', 'exporter': 'torchscript'}]
    assert got == want, 'expected {}, received {}'.format(want, got)


def test_opset16_onnxruntime_matches_torch_and_opset17(tiny_export, tiny_export16):
    model, path16 = tiny_export16
    x = np.random.default_rng(2).standard_normal((1, 3, 42, 56)).astype(np.float32)
    with torch.no_grad():
        ref = model(pixel_values=torch.from_numpy(x)).predicted_depth.numpy()
    out = {}
    for opset, path in ((16, path16), (17, tiny_export[1])):
        sess = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
        out[opset] = sess.run(None, {'image': x})[0]
    scale = np.abs(ref).max()
    err_torch = np.abs(out[16] - ref).max() / scale
    err_17 = np.abs(out[16] - out[17]).max() / scale
    assert out[16].shape == (1, 42, 56) and err_torch < 1e-4 and err_17 < 1e-4, \
        'shape {}, max relative error vs torch {}, vs opset 17 {} (expected < 1e-4)'.format(
            out[16].shape, err_torch, err_17)


def test_resolve_opset_targets_and_explicit_opset_wins(caplog):
    got = {t: export.resolve_opset(target=t)
           for t in ('tensorrt8.5', 'tensorrt8.6', 'tensorrt10', 'onnxruntime')}
    want = {'tensorrt8.5': 16, 'tensorrt8.6': 17, 'tensorrt10': 17, 'onnxruntime': 17}
    assert got == want, 'expected {}, received {}'.format(want, got)
    assert export.resolve_opset() == 17
    assert export.resolve_opset(16) == 16
    assert export.resolve_opset(16, 'tensorrt8.5') == 16 and not caplog.records
    assert export.resolve_opset(17, 'tensorrt8.5') == 17
    assert 'opset 17 overrides target tensorrt8.5 (opset 16): TensorRT 8.5 cannot parse the ' \
        'LayerNormalization node' in caplog.text, caplog.text
    assert (export.exporter_for(16), export.exporter_for(17)) == ('torchscript', 'dynamo')
    with pytest.raises(ValueError) as info:
        export.resolve_opset(target='tensorrt7')
    want = ("`target` must be one of onnxruntime, tensorrt10, tensorrt8.5, tensorrt8.6, "
            "got 'tensorrt7'")
    assert str(info.value) == want, 'expected {!r}, received {!r}'.format(want, str(info.value))


def test_cli_target_tensorrt85_writes_opset16(tmp_path):
    from depth_ros.cli import main
    out = str(tmp_path / 'trt85.onnx')
    rc = main(['model', 'export', '--variant', 'tiny', '--random-weights', '--target',
               'tensorrt8.5', '--width', '28', '--height', '28', '--out', out])
    assert rc == 0
    proto = onnx.load(out)
    opset = [o.version for o in proto.opset_import if o.domain in ('', 'ai.onnx')]
    ops = {n.op_type for n in proto.graph.node}
    meta = {p.key: p.value for p in proto.metadata_props}
    got = (opset, 'LayerNormalization' in ops, meta['opset'], meta['exporter'], meta['target'])
    want = ([16], False, '16', 'torchscript', 'tensorrt8.5')
    assert got == want, 'expected {}, received {}'.format(want, got)


# ------------------------------------------------------------------------------------------
# TensorRT 8.5: constant position embeddings (no cubic Resize), folded shape arithmetic


def resize_modes(proto):
    """Return the sorted (mode, coordinate_transformation_mode) pairs of the Resize nodes."""
    pairs = set()
    for node in proto.graph.node:
        if node.op_type == 'Resize':
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            pairs.add((attrs.get('mode', b'nearest').decode(),
                       attrs.get('coordinate_transformation_mode', b'half_pixel').decode()))
    return sorted(pairs)


def constants(proto):
    """Return the graph's initializers and Constant node values as numpy arrays."""
    arrays = [onnx.numpy_helper.to_array(t) for t in proto.graph.initializer]
    for node in proto.graph.node:
        if node.op_type == 'Constant':
            arrays += [onnx.numpy_helper.to_array(a.t) for a in node.attribute
                       if a.name == 'value']
    return arrays


def bicubic_position_embeddings(model, height, width):
    """Resize the DINOv2 position embeddings by hand: [1, 1 + h/14 * w/14, dim]."""
    pos = model.backbone.embeddings.position_embeddings.detach()  # [1, 1 + g*g, dim]
    grid = int(round((pos.shape[1] - 1) ** 0.5))
    patches = pos[:, 1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
    patches = torch.nn.functional.interpolate(patches, size=(height // 14, width // 14),
                                              mode='bicubic', align_corners=False)
    return torch.cat([pos[:, :1], patches.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])],
                     dim=1).numpy()


@pytest.fixture(scope='module')
def tiny_export16_previous(tmp_path_factory, tiny_export):
    """Export opset 16 as before: position embeddings resized in the graph, nothing folded."""
    model, _ = tiny_export
    path = str(tmp_path_factory.mktemp('export16prev') / 'tiny16prev.onnx')
    real = export.constant_position_embeddings
    export.constant_position_embeddings = lambda *args: contextlib.nullcontext(0)
    try:
        export.export_onnx(model, path, input_size=SIZE, opset=16, show_progress=False,
                           fold=False)
    finally:
        export.constant_position_embeddings = real
    return model, path


def test_no_cubic_resize_and_tensorrt85_resize_modes(tiny_export, tiny_export16):
    model = tiny_export[0]
    want_pos = bicubic_position_embeddings(model, SIZE[1], SIZE[0])  # [1, 13, 32]
    for opset, path in ((17, tiny_export[1]), (16, tiny_export16[1])):
        proto = onnx.load(path)
        # The DPT neck and head upsample bilinearly with align_corners=True.
        modes = resize_modes(proto)
        assert modes == [('linear', 'align_corners')], 'opset {}: expected only linear ' \
            'align_corners Resize, received {}'.format(opset, modes)
        assert all(m in onnx_tools.TRT85_RESIZE_MODES and c in onnx_tools.TRT85_RESIZE_COORDINATES
                   for m, c in modes), modes
        # The resized position embedding is in the graph as a constant.
        found = [a for a in constants(proto) if a.shape == want_pos.shape]
        assert any(np.allclose(a, want_pos, rtol=0, atol=1e-6) for a in found), \
            'opset {}: no constant equals the bicubic-resized position embeddings {}; ' \
            'constants of that shape: {}'.format(opset, want_pos.shape, len(found))
    # Both exports restored the model: at another size it computes what a fresh copy does.
    assert 'interpolate_pos_encoding' not in vars(model.backbone.embeddings)
    x = torch.from_numpy(np.random.default_rng(5).standard_normal((1, 3, 28, 70))
                         .astype(np.float32))
    with torch.no_grad():
        got = model(pixel_values=x).predicted_depth
        want = torch_model.build_model('tiny', seed=0)(pixel_values=x).predicted_depth
    assert torch.equal(got, want), 'max difference {}'.format((got - want).abs().max())
    issues = onnx_tools.tensorrt85_issues(onnx.load(tiny_export16[1]))
    assert issues == [], 'opset 16 graph: TensorRT 8.5 issues {}'.format(issues)
    issues = onnx_tools.tensorrt85_issues(onnx.load(tiny_export[1]))
    assert len(issues) == 9 and all('LayerNormalization' in i for i in issues), issues


def test_previous_path_had_a_cubic_resize_the_check_reports(tiny_export16_previous):
    proto = onnx.load(tiny_export16_previous[1])
    modes = resize_modes(proto)
    assert modes == [('cubic', 'half_pixel'), ('linear', 'align_corners')], modes
    want = ["Resize node '/net/backbone/embeddings/Resize': mode 'cubic' (TensorRT 8.5 "
            "imports nearest, linear)"]
    got = onnx_tools.tensorrt85_issues(proto)
    assert got == want, 'expected {}, received {}'.format(want, got)


def test_opset16_folded_graph_matches_torch_and_the_previous_graph(
        tiny_export16, tiny_export16_previous):
    model, path = tiny_export16
    folded, previous = onnx.load(path), onnx.load(tiny_export16_previous[1])
    ops = collections.Counter(n.op_type for n in folded.graph.node)
    shape_ops = ('Shape', 'Gather', 'Unsqueeze', 'Constant', 'ConstantOfShape', 'Where',
                 'Expand', 'Equal', 'Identity', 'Cast')
    left = {op: ops[op] for op in shape_ops if ops[op]}
    assert not left, 'shape arithmetic left after folding: {}'.format(left)
    domains = sorted(o.domain for o in folded.opset_import)
    assert domains == [''] and {n.domain for n in folded.graph.node} == {''}, domains
    meta = onnx_tools.read_metadata(path)
    got = (int(meta['exported_nodes']), int(meta['nodes']))
    assert got[1] == len(folded.graph.node) and got[1] < got[0] < len(previous.graph.node), \
        'nodes exported, after folding: {}; previous path: {}'.format(
            got, len(previous.graph.node))
    x = np.random.default_rng(3).standard_normal((1, 3, 42, 56)).astype(np.float32)
    with torch.no_grad():
        ref = model(pixel_values=torch.from_numpy(x)).predicted_depth.numpy()
    out = [ort.InferenceSession(p, providers=['CPUExecutionProvider']).run(None, {'image': x})[0]
           for p in (path, tiny_export16_previous[1])]
    scale = np.abs(ref).max()
    err_torch, err_prev = (np.abs(out[0] - ref).max() / scale,
                           np.abs(out[0] - out[1]).max() / scale)
    assert err_torch < 1e-4 and err_prev < 1e-4, \
        'max relative error vs torch {}, vs the previous graph {} (expected < 1e-4)'.format(
            err_torch, err_prev)


def test_no_fold_keeps_the_exported_graph(tmp_path):
    from depth_ros.cli import main
    out = str(tmp_path / 'nofold.onnx')
    assert main(['model', 'export', '--variant', 'tiny', '--random-weights', '--opset', '16',
                 '--no-fold', '--width', '28', '--height', '28', '--out', out]) == 0
    proto = onnx.load(out)
    meta = onnx_tools.read_metadata(out)
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    got = (int(meta['nodes']), ops['Resize'] > 0, ops['Shape'] > 0)
    want = (int(meta['exported_nodes']), True, True)
    assert got == want and ('cubic', 'half_pixel') not in resize_modes(proto), \
        'expected {}, received {} {}'.format(want, got, resize_modes(proto))


def test_position_embedding_patch_is_exact_and_restored_even_on_error(tmp_path, monkeypatch):
    model = torch_model.build_model('tiny', seed=5)
    emb = model.backbone.embeddings
    x = torch.from_numpy(np.random.default_rng(4).standard_normal((1, 3, 28, 70))
                         .astype(np.float32))
    with torch.no_grad():
        before = model(pixel_values=x).predicted_depth
        with export.constant_position_embeddings(model, SIZE[1], SIZE[0]) as patched:
            tokens = torch.zeros(1, 13, emb.position_embeddings.shape[-1])
            fixed = emb.interpolate_pos_encoding(tokens, SIZE[1], SIZE[0])
            other = emb.interpolate_pos_encoding(torch.zeros(1, 11, tokens.shape[-1]), 28, 70)
            inside = model(pixel_values=x).predicted_depth  # another size: the original code
    want = bicubic_position_embeddings(model, SIZE[1], SIZE[0])
    assert patched == 1 and np.array_equal(fixed.numpy(), want), \
        'patched {}, max difference {}'.format(patched, np.abs(fixed.numpy() - want).max())
    assert np.array_equal(other.numpy(), bicubic_position_embeddings(model, 28, 70))
    assert torch.equal(inside, before)
    assert 'interpolate_pos_encoding' not in vars(emb), 'patch left on the module'

    def fail(*args, **kwargs):
        raise RuntimeError('exporter failed')

    monkeypatch.setattr(export, '_export_torchscript', fail)
    attn = model.config.backbone_config._attn_implementation
    with pytest.raises(RuntimeError, match='exporter failed'):
        export.export_onnx(model, str(tmp_path / 'x.onnx'), input_size=SIZE, opset=16,
                           show_progress=False)
    assert 'interpolate_pos_encoding' not in vars(emb), 'patch left after a failed export'
    assert model.config.backbone_config._attn_implementation == attn
    assert os.listdir(str(tmp_path)) == []
    with torch.no_grad():
        after = model(pixel_values=x).predicted_depth  # 70x28, not the export size
    assert torch.equal(after, before), 'the model changed after a failed export'


@pytest.mark.slow
def test_vits_opset16_for_tensorrt85_matches_pytorch_at_518x294(tmp_path):
    """The full ViT-S (untrained, seeded) as `--target tensorrt8.5` exports it."""
    net = torch_model.build_model('vits', seed=0)
    path = str(tmp_path / 'vits16.onnx')
    export.export_onnx(net, path, opset=16, show_progress=False)
    proto = onnx.load(path)
    issues = onnx_tools.tensorrt85_issues(proto)
    assert issues == [] and resize_modes(proto) == [('linear', 'align_corners')], \
        (issues, resize_modes(proto))
    backbone = net.config.backbone_config
    want = 2 * backbone.num_hidden_layers + len(backbone.out_indices)  # 28
    assert len(find_layernorms(proto.graph)) == want
    x = np.random.default_rng(0).standard_normal((1, 3, 294, 518)).astype(np.float32)
    with torch.no_grad():
        ref = net(pixel_values=torch.from_numpy(x)).predicted_depth.numpy()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    got = ort.InferenceSession(path, options, providers=['CPUExecutionProvider']).run(
        None, {'image': x})[0]
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert got.shape == (1, 294, 518) and err < 1e-3, \
        'shape {}, max relative error {} (expected < 1e-3)'.format(got.shape, err)


# ------------------------------------------------------------------------------------------
# Hub


def test_hub_offline_env_is_honoured_at_once(monkeypatch):
    # At once: offline means no connection attempt at all (none to time out).
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    forbid_network(monkeypatch)
    ok, reason = hub.check_reachable()
    assert (ok, reason) == (False, 'HF_HUB_OFFLINE is set')
    with pytest.raises(hub.HubUnavailable, match='HF_HUB_OFFLINE is set'):
        hub.download('depth-anything/Depth-Anything-V2-Small-hf', cache_dir='/nonexistent')


def test_unreachable_endpoint_is_found_within_the_connect_timeout(monkeypatch):
    monkeypatch.delenv('HF_HUB_OFFLINE', raising=False)
    monkeypatch.delenv('TRANSFORMERS_OFFLINE', raising=False)
    # A refused port answers at once.
    ok, reason = hub.check_reachable(url='http://127.0.0.1:9')
    assert not ok and 'cannot reach 127.0.0.1:9' in reason, reason
    # A black-holed address (TEST-NET-1, RFC 5737) costs at most the timeout: the connect is
    # given it, and its expiry is a plain "unreachable".
    asked = []

    def silent(address, timeout=None, *args, **kwargs):
        asked.append((address, timeout))
        raise socket.timeout('timed out')

    monkeypatch.setattr(hub.socket, 'create_connection', silent)
    ok, reason = hub.check_reachable(timeout_s=0.5, url='https://192.0.2.1')
    assert asked == [(('192.0.2.1', 443), 0.5)], 'expected one connect with timeout 0.5, ' \
        'received {}'.format(asked)
    assert not ok and reason.startswith('cannot reach 192.0.2.1:443 (timed out'), reason


def test_hub_id_detection(tmp_path):
    assert hub.looks_like_hub_id('depth-anything/Depth-Anything-V2-Small-hf')
    for value in ('model.onnx', 'a/b/c', '/abs/path', 'x/y.pth', '', str(tmp_path)):
        assert not hub.looks_like_hub_id(value), value
    assert hub.find_cached('depth-anything/Depth-Anything-V2-Small-hf',
                           cache_dir=str(tmp_path)) is None


# ------------------------------------------------------------------------------------------
# Demo model resolver


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')


def test_untrained_fallback_is_plainly_labelled_and_cached(tmp_path, monkeypatch):
    # The demo's documented fallback (torch installed, the default model nowhere). A tiny
    # network stands in for ViT-S so the test takes seconds; the logic is the same.
    real_build = torch_model.build_model
    monkeypatch.setattr(torch_model, 'build_model',
                        lambda variant, seed=None: real_build('tiny', seed=seed))
    calls = []
    real_export = export.export_onnx

    def counting_export(*args, **kwargs):
        calls.append(args[1])
        return real_export(*args, **dict(kwargs, show_progress=False))

    monkeypatch.setattr(export, 'export_onnx', counting_export)
    cache = str(tmp_path / 'cache')
    forbid_network(monkeypatch)   # nothing here looks at the hub
    path, desc, trained = model_store.untrained_vits(cache, (28, 28), 'the reason')
    assert trained is False
    assert desc.startswith('UNTRAINED network') and 'NOT a depth estimate' in desc \
        and 'because the reason.' in desc and 'run `depth-ros model setup`' in desc, desc
    assert path.startswith(os.path.join(cache, 'onnx')) and path.endswith('-28x28-op17.onnx')
    assert onnx_tools.read_metadata(path)['trained'] == 'false'
    path2, _, trained2 = model_store.untrained_vits(cache, (28, 28), 'the reason')
    assert (path2, trained2, len(calls)) == (path, False, 1), \
        'second run must reuse {} without exporting, exports: {}'.format(path, calls)
    # The cache key holds checkpoint hash and size: another size is another file.
    sha = checkpoints.state_dict_hash(real_build('tiny', seed=0))
    assert path == model_store.cached_onnx_path(cache, 'vits', sha, (28, 28))
    assert model_store.cached_onnx_path(cache, 'vits', sha, (42, 28)) != path


def test_resolver_exports_a_given_checkpoint_folder(tmp_path, offline):
    models = tmp_path / 'models'
    torch_model.build_model('tiny', seed=9).save_pretrained(
        str(models / 'Depth-Anything-V2-Small-hf'))
    folder = str(models / 'Depth-Anything-V2-Small-hf')
    path, desc, trained = model_store.resolve_demo_model(
        folder, cache_dir=str(tmp_path / 'cache'), input_size=(28, 28),
        hub_cache_dir=str(tmp_path / 'hf'))
    assert trained is True and 'Depth-Anything-V2-Small-hf' in desc, desc
    meta = onnx_tools.read_metadata(path)
    want = {'trained': 'true', 'variant': 'tiny', 'source': folder,
            'source_sha256': file_sha256(os.path.join(folder, 'model.safetensors'))}
    got = {k: meta.get(k) for k in want}
    assert got == want, 'expected {}, received {}'.format(want, got)
    with pytest.raises(ValueError, match='`model` must be an .onnx file, a checkpoint or a hub '
                       'id, got None'):
        model_store.resolve_demo_model(None, cache_dir=str(tmp_path / 'cache'))


def test_resolver_with_an_onnx_file(tmp_path, tiny_export):
    _, onnx_path = tiny_export
    assert model_store.resolve_demo_model(onnx_path, cache_dir=str(tmp_path)) == \
        (onnx_path, 'ONNX model {}'.format(onnx_path), True)
    with pytest.raises(FileNotFoundError, match='ONNX model not found: .*missing.onnx'):
        model_store.resolve_demo_model(str(tmp_path / 'missing.onnx'), cache_dir=str(tmp_path))


def test_cached_hub_checkpoint_is_used_offline(tmp_path, monkeypatch):
    # The Hugging Face cache layout: models--owner--name/{refs/main, snapshots/<commit>/...}.
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    commit = '0123456789abcdef0123456789abcdef01234567'
    repo = tmp_path / 'hf' / 'models--someone--tiny-da2'
    snapshot = repo / 'snapshots' / commit
    torch_model.build_model('tiny', seed=6).save_pretrained(str(snapshot))
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text(commit)
    cache = str(tmp_path / 'hf')
    assert hub.find_cached('someone/tiny-da2', cache_dir=cache) == str(snapshot)
    assert hub.download('someone/tiny-da2', cache_dir=cache) == str(snapshot)
    model, info = checkpoints.load_checkpoint('someone/tiny-da2', cache_dir=cache)
    assert (info['variant'], info['source'], info['path']) == \
        ('tiny', 'someone/tiny-da2', str(snapshot)), info
    want = checkpoints.state_dict_hash(torch_model.build_model('tiny', seed=6))
    assert checkpoints.state_dict_hash(model) == want

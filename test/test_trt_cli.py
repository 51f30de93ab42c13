"""
`depth-ros model build|verify`: argument and error handling, and verify's figures.

The engine side runs on the trt_api double; the ONNX reference runs for real in ONNX Runtime on a
small ONNX graph that computes what the double's engine computes (a 1x1 convolution).
"""
from __future__ import annotations

import json
import os

import cv2
from depth_ros import cli
from depth_ros.commands import model_build, model_verify
from depth_ros.inference.tensorrt import builder
from depth_ros.inference.tensorrt.cache import EngineCache, make_key
from depth_ros.util import file_sha256
import numpy as np
import pytest
from test_trt_double import fake_plan, FakeTrtApi, write_fake_onnx

WEIGHTS = (0.5, -0.25, 1.0)
BIAS = 0.125
SHAPE = (1, 3, 28, 42)


def _parse(argv):
    return cli.build_parser().parse_args(argv)


def _main(argv, capsys):
    rc = cli.main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _error_text(err):
    # cli.main prefixes 'depth-ros model: error: ' (it names the command, not the action).
    prefix, _, message = err.partition(': error: ')
    assert prefix.startswith('depth-ros model'), 'expected a model error, got {!r}'.format(err)
    return message


# ----------------------------------------------------------------------------- build

def test_build_defaults_match_the_builder():
    assert model_build.DEFAULT_WORKSPACE_MB == builder.DEFAULT_WORKSPACE_MB
    assert model_build.DEFAULT_CALIB_BATCH == builder.DEFAULT_CALIB_BATCH
    args = _parse(['model', 'build', '--onnx', 'm.onnx'])
    assert (args.precision, args.workspace_mb, args.dla_core, args.calib_dir) == \
        ('fp16', 1024, None, None)


@pytest.mark.parametrize('extra, message', [
    (['--precision', 'fp8'], "argument --precision: invalid choice: 'fp8'"),
    (['--workspace-mb', '0'], "argument --workspace-mb: must be an integer > 0, got '0'"),
    (['--dla-core', '-1'], "argument --dla-core: must be an integer >= 0, got '-1'"),
    (['--input-size', '518by294'],
     "argument --input-size: size must be WIDTHxHEIGHT, e.g. 518x294, got '518by294'"),
])
def test_build_argument_errors(capsys, extra, message):
    with pytest.raises(SystemExit) as info:
        cli.main(['model', 'build', '--onnx', 'm.onnx'] + extra)
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err, 'expected {!r} in {!r}'.format(message, err)


def test_build_missing_onnx_is_one_line_error(tmp_path, capsys):
    rc, out, err = _main(['model', 'build', '--onnx', str(tmp_path / 'no.onnx'), '--cache-dir',
                          str(tmp_path)], capsys)
    expected = ('ONNX file {} does not exist; export one with `depth-ros model export`\n'
                .format(tmp_path / 'no.onnx'))
    assert rc == 2 and _error_text(err) == expected, 'expected {!r}, received {!r}'.format(
        expected, err)


def test_build_calib_dir_needs_int8(tmp_path, capsys):
    rc, _, err = _main(['model', 'build', '--onnx', 'm.onnx', '--calib-dir', str(tmp_path)],
                       capsys)
    assert rc == 2 and _error_text(err) == ('--calib-dir is only used with --precision int8, '
                                            'got --precision fp16\n'), err


def test_build_without_tensorrt_says_what_to_install(tmp_path, capsys):
    try:
        import tensorrt  # noqa: F401
        pytest.skip('tensorrt is installed here')
    except ImportError:
        pass
    onnx = write_fake_onnx(tmp_path / 'm.onnx')
    rc, _, err = _main(['model', 'build', '--onnx', onnx, '--cache-dir', str(tmp_path)], capsys)
    assert rc == 2 and 'install depth_ros[tensorrt]' in err, err


@pytest.mark.parametrize('action', [['build', '--onnx', 'm.onnx'],
                                    ['verify', '--engine', 'e.engine', '--reference', 'onnx',
                                     '--images', 'sample']])
def test_gpu_is_the_cuda_index_and_device_is_its_deprecated_spelling(action):
    args = _parse(['model'] + action + ['--gpu', '1'])
    assert args.gpu == 1 and not getattr(args, 'deprecations', None), vars(args)
    assert _parse(['model'] + action).gpu == 0
    args = _parse(['model'] + action + ['--device', '2'])
    assert args.gpu == 2 and args.deprecations == [
        '--device is deprecated, use --gpu (same value)'], vars(args)


def test_build_on_the_given_gpu_and_the_deprecation_is_logged(tmp_path, caplog, monkeypatch):
    onnx = write_fake_onnx(tmp_path / 'm.onnx')
    api = FakeTrtApi()
    opened = []
    real_open = api.open_device
    monkeypatch.setattr(api, 'open_device', lambda index=0: opened.append(index) or
                        real_open(index))
    argv = ['model', 'build', '--onnx', onnx, '--cache-dir', str(tmp_path / 'c'), '--gpu', '3']
    assert model_build.run(_parse(argv), api=api) == 0 and opened == [3], opened
    monkeypatch.setattr(model_build, 'run', lambda args: 0)   # only the parsing and the warning
    assert cli.main(['model', 'build', '--onnx', onnx, '--device', '1']) == 0
    assert '--device is deprecated, use --gpu (same value)' in caplog.text, caplog.text


def test_build_prints_the_engine_path_and_reuses_it(tmp_path, capsys):
    onnx = write_fake_onnx(tmp_path / 'm.onnx')
    api = FakeTrtApi()
    argv = ['model', 'build', '--onnx', onnx, '--cache-dir', str(tmp_path / 'c'),
            '--workspace-mb', '256']
    assert model_build.run(_parse(argv), api=api) == 0
    first = capsys.readouterr().out.strip()
    assert os.path.isfile(first) and first.startswith(str(tmp_path / 'c'))
    assert api.builds[0]['workspace_bytes'] == 256 << 20
    assert model_build.run(_parse(argv), api=api) == 0
    assert capsys.readouterr().out.strip() == first and api.calls['build'] == 1
    assert model_build.run(_parse(argv + ['--force']), api=api) == 0
    assert api.calls['build'] == 2


def test_build_int8_from_the_command_line(tmp_path, capsys):
    frames = tmp_path / 'frames'
    frames.mkdir()
    for i in range(4):
        cv2.imwrite(str(frames / '{}.png'.format(i)), np.full((20, 30, 3), 40 * i, np.uint8))
    onnx = write_fake_onnx(tmp_path / 'm.onnx')
    api = FakeTrtApi()
    argv = ['model', 'build', '--onnx', onnx, '--cache-dir', str(tmp_path / 'c'), '--precision',
            'int8', '--calib-dir', str(frames), '--calib-batch', '2']
    assert model_build.run(_parse(argv), api=api) == 0
    assert len(api.calibration_batches) == 2
    assert '_int8_' in capsys.readouterr().out


# ----------------------------------------------------------------------------- verify: figures

def _lstsq_metrics(pred, ref):
    """Independent: disparity-space fit s*pred+t ~ ref, depth = 1/fit, vs depth 1/ref."""
    a = np.stack([pred.ravel(), np.ones(pred.size)], axis=1).astype(np.float64)
    (s, t), _, _, _ = np.linalg.lstsq(a, ref.ravel().astype(np.float64), rcond=None)
    gt = 1.0 / ref.astype(np.float64)
    depth = 1.0 / np.clip(s * pred + t, 1.0 / gt.max(), 1e3)
    abs_rel = float(np.mean(np.abs(depth - gt) / gt))
    delta1 = float(np.mean(np.maximum(depth / gt, gt / depth) < 1.25))
    return abs_rel, delta1


def test_compare_prediction_against_independent_figures():
    rng = np.random.default_rng(5)
    ref = rng.uniform(0.5, 2.0, (30, 40)).astype(np.float32)
    same = model_verify.compare_prediction(ref, ref)
    assert same['max_abs_diff'] == 0.0 and same['mean_abs_diff'] == 0.0
    assert same['abs_rel'] < 1e-6 and same['delta1'] == 1.0
    affine = model_verify.compare_prediction(2 * ref + 1, ref)
    assert affine['max_abs_diff'] == pytest.approx(float(np.max(ref + 1)), rel=1e-6)
    assert affine['abs_rel'] < 1e-6 and affine['delta1'] == 1.0, 'affine changes are aligned away'
    noisy = ref + rng.normal(0, 0.3, ref.shape).astype(np.float32)
    got = model_verify.compare_prediction(noisy, ref)
    abs_rel, delta1 = _lstsq_metrics(noisy, ref)
    assert got['abs_rel'] == pytest.approx(abs_rel, rel=1e-6), (got['abs_rel'], abs_rel)
    assert got['delta1'] == pytest.approx(delta1, abs=1e-9), (got['delta1'], delta1)
    assert got['mean_abs_diff'] == pytest.approx(float(np.mean(np.abs(noisy - ref))), rel=1e-6)


def test_compare_prediction_without_valid_reference_is_nan_not_an_error():
    got = model_verify.compare_prediction(np.ones((4, 4)), np.zeros((4, 4)))
    assert got['max_abs_diff'] == 1.0 and np.isnan(got['abs_rel']) and np.isnan(got['delta1'])
    with pytest.raises(ValueError, match=r'engine output has shape \(4, 4\) but the reference '
                                         r'has \(4, 5\)'):
        model_verify.compare_prediction(np.ones((4, 4)), np.ones((4, 5)))


class _Const(object):
    def __init__(self, offset):
        self.offset = offset

    def predict(self, bgr):
        return bgr[:, :, 0].astype(np.float32) / 255.0 + 0.5 + self.offset


def test_verify_models_rows_summary_and_table():
    frames = [('a.png', np.tile(np.arange(40, dtype=np.uint8), (20, 1))[:, :, None].repeat(3, 2)),
              ('b.png', np.tile(np.arange(0, 80, 2, dtype=np.uint8), (20, 1))[:, :, None]
               .repeat(3, 2))]
    report = model_verify.verify_models(_Const(0.25), _Const(0.0), frames)
    assert [r['frame'] for r in report['frames']] == ['a.png', 'b.png']
    assert report['summary']['max_abs_diff'] == pytest.approx(0.25, abs=1e-6)
    assert report['summary']['mean_abs_diff'] == pytest.approx(0.25, abs=1e-6)
    assert report['summary']['delta1'] == 1.0
    table = model_verify.format_table(dict(report, engine='E', reference='R'))
    lines = table.splitlines()
    assert lines[0] == 'engine     E' and lines[1] == 'reference  R'
    assert lines[3].split() == ['frame', 'max|d|', 'mean|d|', 'AbsRel', 'delta1', 'engine', 'ms',
                                'ref', 'ms']
    assert [ln.split()[0] for ln in lines[5:8]] == ['a.png', 'b.png', 'all']


# ----------------------------------------------------------------------------- verify: CLI

def _linear_onnx(path):
    """Write a real ONNX graph computing the double's engine: 1x1 conv 3->1, then [1, h, w]."""
    onnx = pytest.importorskip('onnx')
    from onnx import helper, numpy_helper, TensorProto
    w = numpy_helper.from_array(np.array(WEIGHTS, np.float32).reshape(1, 3, 1, 1), 'w')
    b = numpy_helper.from_array(np.array([BIAS], np.float32), 'b')
    axes = numpy_helper.from_array(np.array([1], np.int64), 'axes')
    graph = helper.make_graph(
        [helper.make_node('Conv', ['image', 'w', 'b'], ['y']),
         helper.make_node('Squeeze', ['y', 'axes'], ['relative_disparity'])],
        'linear', [helper.make_tensor_value_info('image', TensorProto.FLOAT, list(SHAPE))],
        [helper.make_tensor_value_info('relative_disparity', TensorProto.FLOAT,
                                       [1, SHAPE[2], SHAPE[3]])],
        initializer=[w, b, axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def _engine_for(tmp_path, onnx, weights=WEIGHTS):
    key = make_key({'gpu_name': 'Xavier', 'compute_capability': '7.2',
                    'tensorrt_version': '8.5.2.2'}, file_sha256(onnx), SHAPE, 'fp16')
    cache = EngineCache(str(tmp_path / 'cache'))
    return cache.write(cache.path_for(onnx, key), fake_plan(SHAPE, weights, BIAS), key,
                       {'onnx_path': onnx})


def _images(folder, n=3):
    folder.mkdir()
    rng = np.random.default_rng(2)
    for i in range(n):
        cv2.imwrite(str(folder / '{}.png'.format(i)),
                    rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))
    return str(folder)


def test_verify_engine_against_onnxruntime_json(tmp_path, capsys):
    pytest.importorskip('onnxruntime')
    onnx = _linear_onnx(tmp_path / 'lin.onnx')
    engine = _engine_for(tmp_path, onnx)
    args = _parse(['model', 'verify', '--engine', engine, '--cache-dir', str(tmp_path / 'cache'),
                   '--reference', 'onnx', '--images', _images(tmp_path / 'img'), '--json'])
    assert model_verify.run(args, api=FakeTrtApi()) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report['frames']) == 3 and report['reference'] == 'onnxruntime ' + onnx
    summary = report['summary']
    assert summary['max_abs_diff'] < 1e-4, summary
    assert summary['abs_rel'] < 1e-5 and summary['delta1'] == 1.0, summary


def test_verify_reports_a_real_difference_as_a_table(tmp_path, capsys):
    pytest.importorskip('onnxruntime')
    onnx = _linear_onnx(tmp_path / 'lin.onnx')
    engine = _engine_for(tmp_path, onnx, weights=(0.5, -0.25, 1.1))  # a 'quantised' engine
    args = _parse(['model', 'verify', '--engine', engine, '--cache-dir', str(tmp_path / 'cache'),
                   '--reference', 'onnx', '--images', _images(tmp_path / 'img', 1)])
    assert model_verify.run(args, api=FakeTrtApi()) == 0
    out = capsys.readouterr().out
    row = [ln for ln in out.splitlines() if ln.startswith('all')][0].split()
    bgr = cv2.imread(os.path.join(str(tmp_path / 'img'), '0.png'))
    from depth_ros.core.preprocess import prepare_input, restore_output
    x = prepare_input(bgr, (SHAPE[3], SHAPE[2]))[0]
    expected = restore_output((0.1 * x[2]).astype(np.float32), 50, 70)  # the weight change
    assert float(row[1]) == pytest.approx(float(np.abs(expected).max()), rel=1e-3), row


def test_verify_sample_images(tmp_path, capsys):
    pytest.importorskip('onnxruntime')
    pytest.importorskip('skimage')
    onnx = _linear_onnx(tmp_path / 'lin.onnx')
    engine = _engine_for(tmp_path, onnx)
    args = _parse(['model', 'verify', '--engine', engine, '--cache-dir', str(tmp_path / 'cache'),
                   '--reference', 'onnx', '--images', 'sample', '--json'])
    assert model_verify.run(args, api=FakeTrtApi()) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r['frame'] for r in report['frames']] == ['sample']
    assert report['summary']['max_abs_diff'] < 1e-4


@pytest.mark.parametrize('extra, message', [
    (['--reference', 'torch', '--onnx', 'x.onnx'],
     '--onnx is for --reference onnx; use --checkpoint with --reference torch'),
    (['--reference', 'onnx', '--checkpoint', 'vits'],
     '--checkpoint/--random-weights are for --reference torch'),
    (['--reference', 'onnx', '--max-images', '0'], '--max-images must be an integer > 0, got 0'),
])
def test_verify_argument_errors(tmp_path, capsys, extra, message):
    argv = ['model', 'verify', '--engine', 'e.engine', '--images', _images(tmp_path / 'i', 1)]
    rc, _, err = _main(argv + extra, capsys)
    assert rc == 2 and _error_text(err) == message + '\n', \
        'expected {!r}, received {!r}'.format(message, err)


def test_verify_missing_images_folder(tmp_path, capsys):
    rc, _, err = _main(['model', 'verify', '--engine', 'e.engine', '--reference', 'onnx',
                        '--images', str(tmp_path / 'none')], capsys)
    assert rc == 2 and "--images must be a folder of images, got '{}'".format(
        tmp_path / 'none') in err, err


def test_verify_refuses_an_engine_outside_the_cache(tmp_path, capsys):
    stray = tmp_path / 'stray.engine'
    stray.write_bytes(b'x')
    rc, _, err = _main(['model', 'verify', '--engine', str(stray), '--cache-dir',
                        str(tmp_path / 'cache'), '--reference', 'onnx', '--images',
                        _images(tmp_path / 'i', 1)], capsys)
    assert rc == 2 and 'outside the engine cache directory' in err, err


def test_verify_mismatched_engine_names_the_key(tmp_path, capsys):
    onnx = write_fake_onnx(tmp_path / 'm.onnx')
    engine = _engine_for(tmp_path, onnx)
    args = _parse(['model', 'verify', '--engine', engine, '--cache-dir', str(tmp_path / 'cache'),
                   '--reference', 'onnx', '--images', _images(tmp_path / 'i', 1)])
    with pytest.raises(RuntimeError, match='engine built with TensorRT 8.5.2.2 but this is '
                                           '10.3.0'):
        model_verify.run(args, api=FakeTrtApi(tensorrt_version='10.3.0'))


def test_verify_missing_engine_is_named_before_any_gpu_is_touched(tmp_path, capsys):
    # No pycuda/tensorrt here: the error must be about the file, not the missing GPU stack.
    cache = tmp_path / 'engines'
    cache.mkdir()
    frames = tmp_path / 'frames'
    frames.mkdir()
    cv2.imwrite(str(frames / 'f0.png'), np.zeros((28, 42, 3), np.uint8))
    rc, _, err = _main(['model', 'verify', '--engine', 'nope.engine', '--cache-dir', str(cache),
                        '--reference', 'onnx', '--images', str(frames)], capsys)
    assert rc == 2, err
    message = _error_text(err)
    assert message.startswith('engine file not found: {}'.format(
        os.path.realpath(str(cache / 'nope.engine')))), message
    assert 'pycuda' not in message, message

"""`depth-ros eval`: the zero-shot protocol on data made here, checked against numpy by hand."""
import hashlib
import json
import os

import cv2
from depth_ros import cli
from depth_ros.tools import evaluation as ev
import numpy as np
import pytest


class LookupModel(object):
    """Stands in for a network: returns the prediction stored for each exact input image."""

    def __init__(self, kind='disparity'):
        self.relative_kind = kind
        self.name = 'lookup'
        self.table = {}

    def add(self, bgr, pred):
        self.table[hashlib.sha1(bgr.tobytes()).hexdigest()] = pred.astype(np.float32)

    def predict(self, bgr):
        return self.table[hashlib.sha1(bgr.tobytes()).hexdigest()]


def _scene(h, w, seed, near=0.5, far=9.0):
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(near, far, (4, 5)).astype(np.float32)
    depth = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)
    bgr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return bgr, depth


def _write_pair(root, name, bgr, depth, png_mm=False):
    os.makedirs(os.path.join(root, 'rgb'), exist_ok=True)
    os.makedirs(os.path.join(root, 'depth'), exist_ok=True)
    cv2.imwrite(os.path.join(root, 'rgb', name + '.png'), bgr)
    if png_mm:
        cv2.imwrite(os.path.join(root, 'depth', name + '.png'),
                    np.round(depth * 1000).astype(np.uint16))
        return np.round(depth * 1000).astype(np.uint16).astype(np.float32) / 1000.0
    np.save(os.path.join(root, 'depth', name + '.npy'), depth)
    return depth


def _reference(pred, gt, mask, space, lo, hi):
    """
    Independent protocol: lstsq scale/shift on mask, to depth, clip to range, score.

    Disparity is clipped to [1/hi, 1/lo] before inversion (as in the papers' code), with hi =
    the largest ground truth when the cap is infinite (1/inf = 0 would mean infinite depth);
    a prediction that is not finite and > 0 then counts as a 100 % error and a delta1 miss.
    """
    p = pred[mask].astype(np.float64)
    g = gt[mask].astype(np.float64)
    if space == 'disparity' and np.isinf(hi):
        hi = g.max()
    target = 1.0 / g if space == 'disparity' else g
    a = np.stack([p, np.ones_like(p)], axis=1)
    (s, t), *_ = np.linalg.lstsq(a, target, rcond=None)
    fit = s * p + t
    with np.errstate(divide='ignore'):
        d = 1.0 / np.clip(fit, 1.0 / hi, 1.0 / lo) if space == 'disparity' \
            else np.clip(fit, lo, hi)
    ok = np.isfinite(d) & (d > 0)
    rel = np.where(ok, np.abs(d - g) / g, 1.0)
    hit = ok & (np.maximum(d / g, g / d) < 1.25)
    return {'abs_rel': rel.mean(), 'delta1': hit.mean(),
            'rmse': np.sqrt(np.mean((d[ok] - g[ok]) ** 2))}


def _check_close(got, want, tol):
    for key in ('abs_rel', 'delta1', 'rmse'):
        assert abs(got[key] - want[key]) <= tol, '{}: expected {}, received {}'.format(
            key, want[key], got[key])


def test_affine_of_truth_is_perfect_with_eigen_crop_and_cap(tmp_path):
    # NYUv2 frames: 480x640, uint16 mm PNG; prediction = affine of the true disparity inside
    # the Eigen crop and below 10 m, garbage outside: the protocol must ignore the garbage.
    root = str(tmp_path / 'nyu')
    model = LookupModel('disparity')
    for i in range(2):
        bgr, depth = _scene(480, 640, i)
        depth[100:140, 200:260] = 25.0          # beyond NYU's 10 m cap
        gt = _write_pair(root, 'f%d' % i, bgr, depth, png_mm=True)
        pred = 3.0 / gt + 0.2
        pred[:45] = 50.0                        # above the Eigen crop
        pred[:, 601:] = -7.0                    # right of it
        pred[100:140, 200:260] = 123.0          # where gt is beyond the cap
        model.add(bgr, pred)
    spec = ev.dataset_spec('nyu')
    res = ev.evaluate(model, ev.load_pairs(root, spec), spec, progress=False)
    assert res.crop == 'eigen' and res.space == 'disparity'
    assert res.mean['images'] == 2
    assert res.mean['abs_rel'] < 1e-5, 'expected 0, received {}'.format(res.mean['abs_rel'])
    assert res.mean['delta1'] == 1.0, 'expected 1, received {}'.format(res.mean['delta1'])
    assert res.mean['rmse'] < 1e-4, 'expected 0, received {}'.format(res.mean['rmse'])
    # Without the crop, the garbage counts and the figures are far from perfect.
    bad = ev.evaluate(model, ev.load_pairs(root, spec), spec, crop=None, progress=False)
    assert bad.mean['abs_rel'] > 0.05, 'received {}'.format(bad.mean['abs_rel'])


@pytest.mark.parametrize('space', ['depth', 'disparity'])
def test_perturbed_prediction_matches_independent_computation(tmp_path, space):
    root = str(tmp_path / 'folder')
    model = LookupModel(space)
    spec = ev.dataset_spec('folder')
    refs = []
    for i in range(3):
        bgr, depth = _scene(30, 40, 10 + i)
        depth[0, :5] = 0.0                       # invalid gt
        depth[1, :5] = np.nan
        gt = _write_pair(root, 'p%d' % i, bgr, depth)
        noise = np.random.default_rng(i).normal(0, 0.08, gt.shape).astype(np.float32)
        with np.errstate(divide='ignore', invalid='ignore'):
            pred = (0.3 * gt * (1 + noise) + 2.0) if space == 'depth' else \
                (0.5 / (gt * (1 + noise)) - 0.1)
        model.add(bgr, pred)
        mask = np.isfinite(gt) & (gt > 1e-3)
        refs.append(_reference(pred, gt, mask, space, 1e-3, np.inf))
    res = ev.evaluate(model, ev.load_pairs(root, spec), spec, progress=False)
    assert res.space == space
    for row, ref in zip(res.rows, refs):
        _check_close(row, ref, 1e-5)
        assert row['valid_pixels'] == 30 * 40 - 10
    mean = {k: np.mean([r[k] for r in refs]) for k in ('abs_rel', 'delta1', 'rmse')}
    _check_close(res.mean, mean, 1e-5)
    assert 0.01 < mean['abs_rel'] < 0.5 and mean['delta1'] < 1.0   # perturbation is visible


def test_kitti_crops_and_diode_layout_with_mask(tmp_path):
    spec = ev.dataset_spec('kitti')
    gt = np.full((375, 1242), 20.0, np.float32)
    garg = ev.valid_mask(gt, spec, 'garg')
    eigen = ev.valid_mask(gt, spec, 'eigen')
    want_garg = (int(0.99189189 * 375) - int(0.40810811 * 375)) * \
        (int(0.96405229 * 1242) - int(0.03594771 * 1242))
    assert garg.sum() == want_garg, 'expected {}, received {}'.format(want_garg, garg.sum())
    assert eigen[int(0.34 * 375), 600] and not garg[int(0.34 * 375), 600]
    gt[200:, :] = 90.0                           # beyond KITTI's 80 m cap
    assert not ev.valid_mask(gt, spec, 'garg')[250].any()

    # DIODE: scene tree with NAME.png, NAME_depth.npy ([H, W, 1]) and NAME_depth_mask.npy.
    folder = tmp_path / 'diode' / 'val' / 'indoors' / 'scene_1'
    folder.mkdir(parents=True)
    bgr, depth = _scene(24, 32, 5, near=1.0, far=40.0)
    cv2.imwrite(str(folder / 'x.png'), bgr)
    np.save(str(folder / 'x_depth.npy'), depth[:, :, None])
    mask = np.ones_like(depth)
    mask[:, :8] = 0
    np.save(str(folder / 'x_depth_mask.npy'), mask)
    model = LookupModel('depth')
    pred = 2.0 * depth - 1.0
    pred[:, :8] = 1e4                            # masked out by the dataset mask
    model.add(bgr, pred)
    res = ev.evaluate(model, ev.load_pairs(str(tmp_path / 'diode'), ev.dataset_spec('diode')),
                      ev.dataset_spec('diode'), progress=False)
    assert res.rows[0]['valid_pixels'] == int(((depth > 0.6) & (mask > 0)).sum())
    assert res.mean['abs_rel'] < 1e-5, 'received {}'.format(res.mean['abs_rel'])


def test_report_files_and_cli(tmp_path, monkeypatch):
    pytest.importorskip('matplotlib', reason='the plot needs matplotlib (depth_ros[tools])')
    root = str(tmp_path / 'data')
    model = LookupModel('disparity')
    for i in range(2):
        bgr, depth = _scene(20, 24, 30 + i)
        gt = _write_pair(root, 'r%d' % i, bgr, depth)
        model.add(bgr, 1.0 / gt)
    from depth_ros.commands import _args
    monkeypatch.setattr(_args, 'load_model', lambda *a, **k: model)
    out = str(tmp_path / 'out')
    rc = cli.main(['eval', root, '--dataset', 'folder', '--out', out])
    assert rc == 0
    with open(os.path.join(out, 'results.json')) as f:
        data = json.load(f)
    assert data[0]['mean']['images'] == 2 and data[0]['space'] == 'disparity'
    assert [r['name'] for r in data[0]['images']] == ['r0', 'r1']
    md = open(os.path.join(out, 'results.md')).read()
    assert '| folder | onnxruntime:lookup | disparity | - | 2 | 0.0000 | 1.0000 |' in md, md
    png = cv2.imread(os.path.join(out, 'eval.png'))
    assert png is not None and png.shape[2] == 3


def test_bad_arguments_name_the_value(tmp_path, capsys):
    with pytest.raises(ValueError) as err:
        ev.dataset_spec('nyuv3')
    assert str(err.value) == ("`dataset` must be one of ['diode', 'eth3d', 'folder', 'kitti', "
                              "'middlebury', 'nyu'], got 'nyuv3'")
    with pytest.raises(FileNotFoundError, match='does not exist'):
        ev.list_pairs(str(tmp_path / 'missing'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='no image \\+ ground-truth pairs'):
        ev.list_pairs(str(tmp_path / 'empty'))
    rc = cli.main(['eval', str(tmp_path / 'empty'), '--dataset', 'kitti', '--crop', 'nyu'])
    assert rc == 2
    assert "`--crop` must be one of ['eigen', 'garg'] for KITTI, got 'nyu'" in \
        capsys.readouterr().err
    with pytest.raises(ValueError, match="`space` must be one of"):
        ev.evaluate_prediction(np.ones((2, 2)), np.ones((2, 2)), np.ones((2, 2), bool), 'log',
                               0.1, 10)


@pytest.mark.parametrize('argv,message', [
    # 'backend 'onnxruntime' needs a model file or id, got None' named no option.
    ([], '`--backend onnxruntime` needs `--model` (an ONNX file, engine, checkpoint or hub id)'),
    # '... not a checkpoint; pass random_weights=True ...': the library's argument, not ours.
    (['--backend', 'torch', '--model', 'vits'], '`--model vits` is a variant name, not a '
     'checkpoint: add `--random-weights` to build it untrained (the figures then mean nothing)'),
])
def test_cli_model_errors_name_the_options(tmp_path, capsys, argv, message):
    rc = cli.main(['eval', '--dataset', 'middlebury', '--out', str(tmp_path)] + argv)
    err = capsys.readouterr().err
    assert rc == 2 and err == 'depth-ros eval: error: {}\n'.format(message), (rc, err)


@pytest.mark.parametrize('argv,message', [
    # Told by the loader as "cannot load marigold backend: ValueError: `ensemble_size` must be
    # 1 or an integer >= 3, got 2", after the dataset was read.
    (['--ensemble', '2'], "argument --ensemble: must be 1 or an integer >= 3, got '2'"),
    (['--ensemble', '0'], "argument --ensemble: must be an integer > 0, got '0'"),
    (['--steps', '0'], "argument --steps: must be an integer > 0, got '0'"),
    (['--processing-resolution', '-1'], "argument --processing-resolution: must be an "
                                        "integer >= 0, got '-1'"),
])
def test_cli_marigold_settings_name_the_option(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as done:
        cli.main(['eval', '--dataset', 'middlebury', '--backend', 'marigold',
                  '--out', str(tmp_path)] + argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and err[-1] == 'depth-ros eval: error: ' + message, err


def test_bundled_middlebury_sample():
    sample_mod = pytest.importorskip('depth_ros.sources.sample')
    sample = sample_mod.load_sample()
    gt = np.asarray(sample.gt_depth, dtype=np.float32)
    model = LookupModel('disparity')
    with np.errstate(divide='ignore', invalid='ignore'):
        disp = np.where(np.isfinite(gt) & (gt > 0), 1.0 / gt, 0.0)
    model.add(sample.left, 4.0 * disp + 0.01)
    spec = ev.dataset_spec('middlebury')
    res = ev.evaluate(model, ev.sample_samples(), spec, progress=False)
    assert res.rows[0]['valid_pixels'] > 0.5 * gt.size
    assert res.mean['abs_rel'] < 1e-4 and res.mean['delta1'] == 1.0, res.mean
    # A model that returns image brightness: metrics equal the independent computation.
    gray = cv2.cvtColor(sample.left, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255.0
    model.add(sample.left, gray)
    res = ev.evaluate(model, ev.sample_samples(), spec, progress=False)
    mask = ev.valid_mask(gt, spec)
    _check_close(res.rows[0], _reference(gray, gt, mask, 'disparity', 1e-3, np.inf), 1e-4)


def test_cli_marigold_backend_on_middlebury(tmp_path):
    # The whole Marigold path (tiny untrained pipeline: the figures are noise) through the CLI.
    pytest.importorskip('diffusers')
    import torch
    torch.set_num_threads(1)
    out = str(tmp_path / 'm')
    rc = cli.main(['eval', '--dataset', 'middlebury', '--backend', 'marigold', '--model',
                   'tiny-random', '--steps', '1', '--out', out])
    assert rc == 0
    data = json.load(open(os.path.join(out, 'results.json')))[0]
    assert data['space'] == 'depth' and data['dataset'] == 'Middlebury'
    assert data['model'] == 'marigold:tiny-random'
    row = data['images'][0]
    assert 0 <= row['delta1'] <= 1 and np.isfinite(row['abs_rel']) and row['valid_pixels'] > 0


# --device: `eval|bench|process-bag --backend onnxruntime --device cuda` ran on the CPU and said
# nothing (only torch and marigold took a device): GPU figures that were the CPU's.
@pytest.mark.parametrize('backend,device,available,want', [
    ('torch', None, None, ('cpu', None)),
    ('marigold', 'cuda:1', None, ('cuda:1', None)),
    ('onnxruntime', None, None, (None, None)),
    ('onnxruntime', 'cpu', None, (None, None)),
    ('onnxruntime', 'cuda', ['CUDAExecutionProvider', 'CPUExecutionProvider'],
     (None, [('CUDAExecutionProvider', {'device_id': 0}), ('CPUExecutionProvider', {})])),
    ('onnxruntime', 'cuda:2', ['CUDAExecutionProvider', 'CPUExecutionProvider'],
     (None, [('CUDAExecutionProvider', {'device_id': 2}), ('CPUExecutionProvider', {})])),
    ('tensorrt', None, None, (None, None)),
])
def test_device_gives_the_torch_device_or_onnxruntimes_providers(backend, device, available,
                                                                 want):
    from depth_ros.commands._args import _device_options
    assert _device_options(backend, device, available) == want


@pytest.mark.parametrize('backend,device,available,message', [
    ('onnxruntime', 'gpu0', None, "`--device` must be cpu, cuda or cuda:N, got 'gpu0'"),
    ('torch', 'cuda:x', None, "`--device` must be cpu, cuda or cuda:N, got 'cuda:x'"),
    ('onnxruntime', 'cuda:1', ['CPUExecutionProvider'],
     "`--device cuda:1` needs ONNX Runtime's CUDA provider (onnxruntime-gpu); this onnxruntime "
     'has CPUExecutionProvider'),
    ('tensorrt', 'cuda', None,
     '`--device` applies to torch, marigold and onnxruntime, not to --backend tensorrt'),
])
def test_device_that_cannot_apply_is_refused_naming_it(backend, device, available, message):
    from depth_ros.commands._args import _device_options
    with pytest.raises(ValueError) as err:
        _device_options(backend, device, available)
    assert str(err.value) == message


def test_cli_onnxruntime_on_cuda_is_refused_where_its_provider_is_missing(tmp_path, capsys):
    onnxruntime = pytest.importorskip('onnxruntime', reason='onnxruntime is not installed '
                                      '(depth_ros[onnx])')
    if 'CUDAExecutionProvider' in onnxruntime.get_available_providers():
        pytest.skip('this onnxruntime has the CUDA provider')
    rc = cli.main(['eval', '--dataset', 'middlebury', '--out', str(tmp_path), '--backend',
                   'onnxruntime', '--model', str(tmp_path / 'm.onnx'), '--device', 'cuda'])
    err = capsys.readouterr().err
    assert rc == 2 and err == (
        "depth-ros eval: error: `--device cuda` needs ONNX Runtime's CUDA provider "
        '(onnxruntime-gpu); this onnxruntime has {}\n'.format(
            ', '.join(onnxruntime.get_available_providers()))), (rc, err)


def test_cli_onnxruntime_cuda_that_does_not_start_is_an_error(tmp_path, capsys, monkeypatch):
    # onnxruntime-gpu lists its CUDA provider where CUDA cannot start; the session then runs
    # on the CPU. The providers asked for reach the loader, and the fallback is told.
    import depth_ros.inference as inference
    onnxruntime = pytest.importorskip('onnxruntime', reason='onnxruntime is not installed '
                                      '(depth_ros[onnx])')

    asked = {}

    class CpuSession(object):
        providers = ['CPUExecutionProvider']
        name = 'fallback'

    def load(backend, model, **options):
        asked.update(options, backend=backend, model=model)
        return CpuSession()

    monkeypatch.setattr(onnxruntime, 'get_available_providers',
                        lambda: ['CUDAExecutionProvider', 'CPUExecutionProvider'])
    monkeypatch.setattr(inference, 'load_model', load)
    rc = cli.main(['eval', '--dataset', 'middlebury', '--out', str(tmp_path), '--backend',
                   'onnxruntime', '--model', 'm.onnx', '--device', 'cuda:1'])
    err = capsys.readouterr().err
    assert rc == 2 and err == ("depth-ros eval: error: `--device cuda:1`: ONNX Runtime's CUDA "
                               'provider did not start (the session runs on '
                               'CPUExecutionProvider)\n'), (rc, err)
    assert (asked['backend'], asked['model'], asked['providers'], asked['device']) == (
        'onnxruntime', 'm.onnx',
        [('CUDAExecutionProvider', {'device_id': 1}), ('CPUExecutionProvider', {})], None)


def test_onnxruntime_takes_the_providers_given(tmp_path):
    from depth_ros.inference import load_model
    from test_cli_demo import _stand_in_onnx
    path = _stand_in_onnx(tmp_path / 'm.onnx', trained=True)
    model = load_model('onnxruntime', path, providers=[('CPUExecutionProvider', {})])
    assert model.providers == ['CPUExecutionProvider']
    with pytest.raises(Exception, match='not available in this onnxruntime'):
        load_model('onnxruntime', path, providers=[('NoSuchExecutionProvider', {})])

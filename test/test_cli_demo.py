"""`depth-ros demo` end to end: outputs exist, agree with each other and with the report."""
from __future__ import annotations

import json
import os

from depth_ros.cli import main
from depth_ros.commands.demo import UNTRAINED_LABEL
import numpy as np
import pytest

H, W = 500, 741


def _stand_in_onnx(path, trained, width=56, height=42):
    """
    Build an ONNX stand-in (not DA-V2): relative = channel mean of the normalised input.

    It has the DA-V2 interface ([1, 3, h, w] -> [1, h, w]) and the exporter's metadata, which
    is all the demo pipeline needs; it runs in milliseconds.
    """
    for module in ('onnx', 'onnxruntime'):
        pytest.importorskip(module, reason='the ONNX stand-in is built with onnx and run '
                            'with onnxruntime (depth_ros[onnx])')
    import onnx
    from onnx import helper, TensorProto

    x = helper.make_tensor_value_info('image', TensorProto.FLOAT, [1, 3, height, width])
    y = helper.make_tensor_value_info('relative_disparity', TensorProto.FLOAT,
                                      [1, height, width])
    axes = helper.make_tensor('axes', TensorProto.INT64, [1], [1])
    mean = helper.make_node('ReduceMean', ['image', 'axes'], ['m'], keepdims=0)
    # Shift to positive values: a relative disparity is > 0 where the scene is finite.
    three = helper.make_tensor('three', TensorProto.FLOAT, [], [3.0])
    add = helper.make_node('Add', ['m', 'three'], ['relative_disparity'])
    graph = helper.make_graph([mean, add], 'stand_in', [x], [y], initializer=[axes, three])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 18)])
    model.ir_version = 8
    helper.set_model_props(model, {'variant': 'stand-in', 'trained': 'true' if trained
                                   else 'false'})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp('demo')
    model = _stand_in_onnx(root / 'stand_in.onnx', trained=False)
    out = str(root / 'out')
    lines = []
    from depth_ros.commands import demo
    report = demo.run_demo(model, out, show_progress=False, echo=lines.append)
    return out, lines, report


def test_demo_says_untrained_first(demo_run, capsys):
    out, lines, report = demo_run
    assert UNTRAINED_LABEL in lines[0], 'expected the label first, received {!r}'.format(
        lines[:2])
    assert report['trained'] is False and report['label'] == UNTRAINED_LABEL
    with open(os.path.join(out, 'report.md')) as f:
        md = f.read()
    assert '**{}.**'.format(UNTRAINED_LABEL) in md.splitlines()[2], md[:300]


def test_demo_outputs_are_consistent(demo_run):
    from depth_ros.core.ply import read_ply

    out, _, report = demo_run
    for name in report['files']:
        path = os.path.join(out, name)
        assert os.path.isfile(path) and os.path.getsize(path) > 0, 'missing {}'.format(path)
    depth = np.load(os.path.join(out, 'depth.npy'))
    assert depth.dtype == np.float32 and depth.shape == (H, W), \
        'expected float32 {}, received {} {}'.format((H, W), depth.dtype, depth.shape)
    with open(os.path.join(out, 'alignment.json')) as f:
        alignment = json.load(f)
    for key in ('scale', 'shift', 'inlier_ratio', 'valid_fraction', 'status'):
        assert key in alignment, 'alignment.json lacks {}: {}'.format(key, sorted(alignment))
    assert alignment['status'] == 'ok', alignment['status']
    assert alignment == report['alignment']
    with open(os.path.join(out, 'points.ply'), 'rb') as f:
        header = f.read(400).split(b'end_header')[0].decode('ascii')
    n_header = int([ln for ln in header.splitlines()
                    if ln.startswith('element vertex')][0].split()[-1])
    kept = _edge_clean(depth, 0.1)
    n_kept = int(kept.sum())
    assert n_header == n_kept == alignment['points'], \
        'expected {} vertices (finite depth off edges), header says {}, json {}'.format(
            n_kept, n_header, alignment['points'])
    xyz, rgb = read_ply(os.path.join(out, 'points.ply'))
    # The PLY z values are the kept depths, in row-major order.
    np.testing.assert_allclose(xyz[:, 2], depth[kept], rtol=1e-6)


def _edge_clean(depth, threshold):
    """
    Finite pixels that are not the far side of a depth jump (written here, not the core's).

    A pixel is dropped when its depth is more than (1 + threshold) times that of one of its
    eight finite neighbours.
    """
    h, w = depth.shape
    finite = np.isfinite(depth)
    keep = finite.copy()
    pad = np.full((h + 2, w + 2), np.nan)
    pad[1:-1, 1:-1] = np.where(finite, depth, np.nan)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                other = pad[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
                with np.errstate(invalid='ignore'):
                    keep &= ~(depth > (1.0 + threshold) * other)
    return keep


def _metrics(pred, gt, region=None):
    """Independent of depth_ros.core.metrics: plain numpy on the covered pixels."""
    gt_ok = np.isfinite(gt) & (gt > 0)
    if region is not None:
        gt_ok &= region
    with np.errstate(invalid='ignore'):
        covered = gt_ok & np.isfinite(pred) & (pred > 0)
    p, g = pred[covered].astype(np.float64), gt[covered].astype(np.float64)
    return {'abs_rel': float(np.mean(np.abs(p - g) / g)),
            'delta1': float(np.mean(np.maximum(p / g, g / p) < 1.25)),
            'density': float(covered.sum()) / float(gt_ok.sum())}


def test_demo_report_numbers_recomputed_from_files(demo_run):
    from skimage import data as skdata

    out, _, report = demo_run
    with open(os.path.join(out, 'report.json')) as f:
        saved = json.load(f)
    gt = np.load(os.path.join(out, 'gt_depth.npy'))
    disp = skdata.stereo_motorcycle()[2]
    with np.errstate(invalid='ignore'):
        want_gt = np.where(np.isfinite(disp), 0.193001 * 994.978 / (disp + 31.086), np.nan)
    np.testing.assert_allclose(gt, want_gt, rtol=1e-6)
    stereo = np.load(os.path.join(out, 'stereo_depth.npy'))
    fused = np.load(os.path.join(out, 'depth.npy'))
    holes = ~np.isfinite(stereo)
    for key, pred, region in (('stereo', stereo, None), ('fused', fused, None),
                              ('fused_in_stereo_holes', fused, holes)):
        want = _metrics(pred, gt, region)
        got = saved['metrics'][key]
        for name, value in want.items():
            assert abs(got[name] - value) < 1e-9, '{} {}: expected {}, received {}'.format(
                key, name, value, got[name])
    # Real SGBM quality on Motorcycle (independent of the network).
    assert saved['metrics']['stereo']['abs_rel'] < 0.03, saved['metrics']['stereo']
    assert saved['metrics']['stereo']['density'] > 0.8, saved['metrics']['stereo']
    # Fusion fills the holes: the fused map covers every ground-truth pixel here.
    assert saved['metrics']['fused']['density'] > saved['metrics']['stereo']['density']
    with open(os.path.join(out, 'report.md')) as f:
        md = f.read()
    row = '| stereo (SGBM) | {:.4f} |'.format(saved['metrics']['stereo']['abs_rel'])
    assert row in md, 'expected {!r} in report.md'.format(row)


def test_demo_cli_trained_model_and_errors(tmp_path, capsys):
    model = _stand_in_onnx(tmp_path / 'trained.onnx', trained=True)
    rc = main(['demo', '--model', model, '--out', str(tmp_path / 'o'), '--no-progress'])
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    assert 'UNTRAINED' not in stdout, stdout
    assert stdout.splitlines()[0] == 'model: ONNX model {}'.format(model), stdout
    with open(str(tmp_path / 'o' / 'report.json')) as f:
        assert json.load(f)['trained'] is True

    rc = main(['demo', '--model', str(tmp_path / 'missing.onnx'), '--out', str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and 'ONNX model not found: {}'.format(tmp_path / 'missing.onnx') in err, err
    rc = main(['demo', '--input-size', '500x300', '--out', str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "--input-size '500x300': input `width` must be a positive multiple of 14" in err, err
    corrupt = tmp_path / 'corrupt.onnx'
    corrupt.write_bytes(b'not a model\x00\x01\x02')
    rc = main(['demo', '--model', str(corrupt), '--out', str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert '{}: cannot load as an ONNX model'.format(corrupt) in err, err
    assert 'Traceback' not in err, err


# ------------------------------------------------- no --model: depth_node's model auto
@pytest.fixture
def offline_caches(tmp_path, monkeypatch):
    """Empty caches of this test only, the hub offline, no models folder in the way."""
    for name in ('hub', 'cache', 'engines'):
        (tmp_path / name).mkdir()
    env = {'HF_HUB_CACHE': str(tmp_path / 'hub'), 'HF_HUB_OFFLINE': '1',
           'DEPTH_ROS_CACHE': str(tmp_path / 'cache'),
           'DEPTH_ROS_ENGINE_CACHE': str(tmp_path / 'engines')}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:   # huggingface_hub reads HF_HUB_CACHE once, when first imported
        from huggingface_hub import constants
        monkeypatch.setattr(constants, 'HF_HUB_CACHE', env['HF_HUB_CACHE'])
    except ImportError:
        pass
    monkeypatch.delenv('DEPTH_ROS_MODELS', raising=False)
    monkeypatch.chdir(str(tmp_path))   # ./models is searched too: keep it this test's
    return tmp_path


def _hide_torch(monkeypatch):
    """
    Make torch and transformers uninstalled for this test, as on the robot (depth_ros[onnx]).

    None in sys.modules: ``import torch`` raises ImportError and importlib.util.find_spec says
    None. The ONNX Runtime-only venv (make test-humble-firstrun-cli) has neither anyway.
    """
    import sys
    for name in ('torch', 'transformers'):
        monkeypatch.setitem(sys.modules, name, None)


def _offline_with_hub_model(offline_caches, monkeypatch):
    """
    Set up the robot's install offline after `depth-ros model setup`; return the hub cache's ONNX.

    The public ONNX in the Hugging Face cache (a tiny random-weight stand-in in its layout), no
    torch, no network.
    """
    from model_files import community_onnx, make_hub_cache
    from test_util import forbid_network
    source = community_onnx('tiny')
    make_hub_cache(str(offline_caches / 'hub'), source)
    _hide_torch(monkeypatch)
    forbid_network(monkeypatch)
    return source


def test_demo_without_model_runs_the_default_model_from_the_hub_cache(offline_caches,
                                                                      monkeypatch, capsys):
    # The robot's install (onnxruntime, no torch), offline, `depth-ros model setup` done: the
    # public ONNX in the Hugging Face cache (a tiny random-weight stand-in in its layout).
    pytest.importorskip('onnxruntime', reason='the default backend here is ONNX Runtime')
    from depth_ros.core.preprocess import prepare_input, restore_output
    from depth_ros.util import file_sha256
    import cv2
    import onnxruntime as ort

    source = _offline_with_hub_model(offline_caches, monkeypatch)
    rc = main(['demo', '--out', 'out', '--threads', '1', '--no-progress'])
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    assert 'UNTRAINED' not in stdout and 'RANDOM' not in stdout, stdout
    first = stdout.splitlines()[0]
    sha = file_sha256(source)
    want = ('model: Depth Anything V2 Small (onnx-community/depth-anything-v2-small, '
            'Apache-2.0): backend onnxruntime (auto: ')
    assert first.startswith(want) and '-518x350-default.onnx (Hugging Face cache, source ' \
        'sha256 {}...); input 518x350'.format(sha[:12]) in first, first
    with open(str(offline_caches / 'out' / 'report.json')) as f:
        report = json.load(f)
    assert (report['trained'], report['backend'], report['input_size']) == \
        (True, 'onnxruntime', [518, 350]), report
    prepared = report['onnx']
    assert os.path.dirname(prepared) == str(offline_caches / 'cache' / 'onnx'), prepared
    for name in report['files']:
        assert os.path.getsize(str(offline_caches / 'out' / name)) > 0, name
    # The network that ran is the hub cache's file: its output, computed here by running the
    # original (dynamic, unprepared) file in ONNX Runtime on the sample, is relative.npy.
    left = cv2.imread(str(offline_caches / 'out' / 'left.png'))
    session = ort.InferenceSession(source, providers=['CPUExecutionProvider'])
    pred = session.run(None, {'pixel_values': prepare_input(left, (518, 350))})[0]
    want_relative = restore_output(pred[0], H, W)
    relative = np.load(str(offline_caches / 'out' / 'relative.npy'))
    err = np.abs(relative - want_relative).max() / np.abs(want_relative).max()
    assert relative.shape == (H, W) and err < 1e-4, (relative.shape, err)
    assert np.load(str(offline_caches / 'out' / 'depth.npy')).shape == (H, W)


def test_demo_without_model_offline_and_without_torch_is_one_line(offline_caches):
    # The robot's install with nothing prepared and no internet: one line naming the fix, exit
    # 2, no traceback, no random network, torch never imported. A fresh interpreter, so that
    # what it prints is what the user reads; torch and transformers hidden as on the robot.
    import subprocess
    import sys
    import time

    code = ("import sys; sys.modules['torch'] = sys.modules['transformers'] = None; "
            "from depth_ros.cli import main; sys.exit(main(sys.argv[1:]))")
    import depth_ros   # the same depth_ros in the child, wherever this one comes from
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(depth_ros.__file__)))]
        + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p])
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, '-c', code, 'demo', '--out', 'out', '--no-progress'],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                          universal_newlines=True, timeout=120)
    seconds = time.monotonic() - t0
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 2 and len(lines) == 1, (done.returncode, done.stderr)
    line = lines[0]
    assert line.startswith('depth-ros demo: error: no Depth Anything V2 Small model '
                           '(onnx-community/depth-anything-v2-small, onnx/model.onnx) on this '
                           'machine: looked in '), line
    for part in ('the Hugging Face cache {}'.format(offline_caches / 'hub'),
                 'the hub (HF_HUB_OFFLINE is set)', 'torch/transformers not installed',
                 'fix: run `depth-ros model setup`'):
        assert part in line, 'expected {!r} in {!r}'.format(part, line)
    # An import of torch would have failed on the None in sys.modules, and said so.
    for word in ('Traceback', 'halted', "No module named 'torch'", 'RANDOM', 'UNTRAINED'):
        assert word not in done.stderr + done.stdout, done.stderr + done.stdout
    assert not os.path.exists(str(offline_caches / 'out' / 'report.json'))
    assert seconds < 60, 'the offline answer took {:.1f} s'.format(seconds)


@pytest.mark.slow
def test_demo_without_onnxruntime_runs_pytorch_and_offline_says_untrained(
        offline_caches, monkeypatch):
    # backend auto's last resort on a machine with torch only: the PyTorch checkpoint; offline
    # (nothing cached) the documented fallback, an untrained ViT-S, labelled first.
    import sys
    for name in ('torch', 'transformers'):
        pytest.importorskip(name, reason='the PyTorch backend needs depth_ros[export]')
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)
    from depth_ros.commands.demo import open_default_model
    lines = []
    net, description, trained, onnx_path, backend = open_default_model(
        (28, 28), echo=lines.append)
    assert (backend, trained, onnx_path) == ('torch', False, None), description
    assert lines[0] == '*** {} ***'.format(UNTRAINED_LABEL), lines
    assert 'RANDOM weights: cannot load torch model ' in lines[1] and \
        'depth-anything/Depth-Anything-V2-Small-hf' in lines[1] and 'fix: install ' \
        'depth_ros[onnx] and run `depth-ros model setup`' in lines[1], lines[1]
    assert description.startswith('UNTRAINED network') and description.endswith('(PyTorch)')
    assert net.input_size == (28, 28)
    relative = net.predict(np.zeros((30, 40, 3), np.uint8))
    assert relative.shape == (30, 40) and relative.dtype == np.float32


def test_demo_threads_go_to_the_backend_that_runs():
    from depth_ros.commands.demo import apply_threads
    lines = []
    apply_threads(3, 'onnxruntime', lines.append)     # given to the session when it opened
    apply_threads(3, 'tensorrt', lines.append)
    apply_threads(None, 'tensorrt', lines.append)
    assert lines == ['--threads 3: not used by TensorRT (the network runs on the GPU)'], lines
    torch = pytest.importorskip('torch', reason='the PyTorch backend needs depth_ros[export]')
    before = torch.get_num_threads()
    try:
        apply_threads(1 if before != 1 else 2, 'torch', lines.append)
        assert torch.get_num_threads() == (1 if before != 1 else 2)
        assert len(lines) == 1, lines
    finally:
        torch.set_num_threads(before)


def test_default_input_size():
    from depth_ros.commands.demo import default_input_size

    assert default_input_size(741, 500) == (518, 350)
    assert default_input_size(1280, 720) == (518, 294)


@pytest.mark.slow
def test_demo_default_path_offline(offline_caches, capsys):
    # The `make demo` path on a machine without internet and nothing cached: the documented
    # fallback where torch is installed, an untrained ViT-S, exported once.
    tmp_path = offline_caches
    torch = pytest.importorskip('torch', reason='offline, the demo exports an untrained ViT-S '
                                'with torch (depth_ros[export])')
    torch.set_num_threads(1)
    rc = main(['demo', '--out', 'out', '--cache-dir', str(tmp_path / 'cache'), '--threads', '1',
               '--no-progress'])
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    first = stdout.splitlines()[:2]
    assert UNTRAINED_LABEL in first[0] and 'RANDOM weights' in first[1], first
    # The documented fallback says why (depth_node's resolver found nothing) and the fix.
    assert 'no Depth Anything V2 Small model' in first[1] and \
        'fix: run `depth-ros model setup`' in first[1], first[1]
    with open(str(tmp_path / 'out' / 'report.json')) as f:
        report = json.load(f)
    assert report['trained'] is False and report['input_size'] == [518, 350]
    assert np.load(str(tmp_path / 'out' / 'depth.npy')).shape == (H, W)


# ------------------------------------------------------------------ --backend
@pytest.mark.parametrize('name', ['standin', 'tensorflow', 'marigold'])
def test_demo_backend_takes_depth_nodes_networks_only(name, capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(['demo', '--backend', name, '--out', str(tmp_path / 'out')])
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    line = [ln for ln in err.splitlines() if 'error:' in ln]
    assert len(line) == 1 and "argument --backend: invalid choice: '{}'".format(name) in \
        line[0], err
    for choice in ('auto', 'onnxruntime', 'tensorrt', 'torch'):
        assert choice in line[0].split('choose from')[1], line[0]


def test_demo_backend_onnxruntime_runs_the_default_model_from_the_hub_cache(offline_caches,
                                                                            monkeypatch, capsys):
    # depth_node's backend: onnxruntime, chosen (not auto's choice): the same model, said so.
    pytest.importorskip('onnxruntime', reason='--backend onnxruntime needs onnxruntime')
    from depth_ros.util import file_sha256
    source = _offline_with_hub_model(offline_caches, monkeypatch)
    rc = main(['demo', '--backend', 'onnxruntime', '--out', 'out', '--threads', '1',
               '--no-progress'])
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    first = stdout.splitlines()[0]
    assert first.startswith('model: Depth Anything V2 Small (onnx-community/depth-anything-v2-'
                            'small, Apache-2.0): backend onnxruntime (given); model ') and \
        '(Hugging Face cache, source sha256 {}...); input 518x350'.format(
            file_sha256(source)[:12]) in first, first
    with open(str(offline_caches / 'out' / 'report.json')) as f:
        report = json.load(f)
    assert (report['trained'], report['backend'], report['input_size']) == \
        (True, 'onnxruntime', [518, 350]), report
    # And a --model file, on the backend given.
    model = _stand_in_onnx(offline_caches / 'given.onnx', trained=True)
    rc = main(['demo', '--backend', 'onnxruntime', '--model', model, '--out', 'out2',
               '--no-progress'])
    stdout = capsys.readouterr().out
    assert rc == 0 and stdout.splitlines()[0] == 'model: ONNX model {}'.format(model), stdout
    with open(str(offline_caches / 'out2' / 'report.json')) as f:
        assert json.load(f)['backend'] == 'onnxruntime'


@pytest.mark.parametrize('backend, hidden, line', [
    ('torch', ('torch', 'transformers'), '--backend torch: PyTorch is not installed here (no '
     'module named torch or transformers); install depth_ros[export], or leave --backend auto'),
    ('onnxruntime', ('onnxruntime',), '--backend onnxruntime: ONNX Runtime is not installed '
     'here (no module named onnxruntime); install depth_ros[onnx], or leave --backend auto'),
    ('tensorrt', ('tensorrt', 'pycuda'), '--backend tensorrt: TensorRT is not installed here '
     '(no module named tensorrt or pycuda); install TensorRT and pycuda (JetPack: apt install '
     'python3-libnvinfer; pip install pycuda), or leave --backend auto'),
])
def test_demo_backend_not_installed_is_one_line(backend, hidden, line, monkeypatch, capsys,
                                                tmp_path):
    # Hidden as on a robot without them (None in sys.modules: find_spec says None), before
    # anything runs: no sample, no model search.
    import sys
    for name in hidden:
        monkeypatch.setitem(sys.modules, name, None)
    out = tmp_path / 'out'
    rc = main(['demo', '--backend', backend, '--out', str(out), '--no-progress'])
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert rc == 2 and lines == ['depth-ros demo: error: ' + line], (rc, captured.err)
    assert captured.out == '' and not os.path.exists(str(out / 'report.json')), captured.out


def test_demo_backend_torch_takes_a_checkpoint_not_an_onnx_file(tmp_path, capsys):
    import importlib.util
    if importlib.util.find_spec('torch') is None or \
            importlib.util.find_spec('transformers') is None:
        pytest.skip('--backend torch needs torch and transformers (depth_ros[export])')
    model = str(tmp_path / 'm.onnx')
    rc = main(['demo', '--backend', 'torch', '--model', model, '--out', str(tmp_path / 'o')])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip() == 'depth-ros demo: error: --backend torch runs a checkpoint ' \
        '(a folder, .pth or hub id), got the ONNX file {}: run it with --backend ' \
        'onnxruntime'.format(model), err

"""`depth-ros fuse` end to end on a synthetic scene, and its one-line errors (exit 2)."""
import json

import cv2
from depth_ros.cli import main
from depth_ros.commands.fuse import fuse_and_write, OUTPUT_FILES
from depth_ros.core.alignment import MetricAligner
from depth_ros.core.camera import PinholeCamera
from depth_ros.core.ply import read_ply
from depth_ros.core.pointcloud import depth_to_cloud
import numpy as np
import pytest

H, W = 60, 80


def scene():
    rng = np.random.RandomState(0)
    z = np.full((H, W), 5.0)
    z[20:40, 20:40] = 2.0
    z[:10] = np.inf
    rel = ((1.0 / z - 0.01) / 0.3).astype(np.float32)
    st = (z * (1 + 0.01 * rng.randn(H, W))).astype(np.float32)
    st[:10] = np.nan
    st[45:55, 50:70] = np.nan
    bgr = rng.randint(0, 256, (H, W, 3)).astype(np.uint8)
    return bgr, rel, st, z


@pytest.fixture
def inputs(tmp_path):
    bgr, rel, st, z = scene()
    cv2.imwrite(str(tmp_path / 'left.png'), bgr)
    np.save(str(tmp_path / 'rel.npy'), rel)
    np.save(str(tmp_path / 'st.npy'), st)
    np.save(str(tmp_path / 'conf.npy'), np.full((H, W), 10.0, np.float32))
    return tmp_path


def argv(d, **over):
    args = {'--image': d / 'left.png', '--relative': d / 'rel.npy',
            '--stereo-depth': d / 'st.npy', '--intrinsics': '60,60,39.5,29.5',
            '--out': d / 'out'}
    args.update(over)
    out = ['fuse']
    for k, v in args.items():
        if v is not None:
            out += [k, str(v)]
    return out


def test_fuse_writes_the_four_outputs_matching_the_core(inputs, capsys):
    assert main(argv(inputs, **{'--confidence': inputs / 'conf.npy'})) == 0
    out = inputs / 'out'
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    bgr, rel, st, z = scene()
    expected = MetricAligner().update(rel, st, np.full((H, W), 10.0, np.float32))
    depth = np.load(str(out / 'depth.npy'))
    assert depth.dtype == np.float32 and depth.shape == (H, W)
    np.testing.assert_array_equal(depth, expected.depth)
    assert np.isposinf(depth[:10]).all(), 'sky is +inf (too far)'
    report = json.loads((out / 'alignment.json').read_text())
    assert report['status'] == 'ok'
    assert abs(report['scale'] - expected.scale) < 1e-12
    for key in ('scale', 'shift', 'inlier_ratio', 'valid_fraction', 'status'):
        assert key in report, key
    png = cv2.imread(str(out / 'depth.png'))
    assert png.shape == (H, W, 3)
    xyz, rgb = read_ply(str(out / 'points.ply'))
    cam = PinholeCamera(60, 60, 39.5, 29.5, W, H)
    cloud = depth_to_cloud(expected.depth, cam, bgr=bgr)
    keep = np.isfinite(cloud['z']).ravel()
    # Every finite point but the 10 sky rows and the far side of the box's edge: the one-pixel
    # ring of the 5 m plane around the 20x20 box at 2 m (22*22 - 20*20 = 84 points, the
    # flying points of an interpolated cloud) is NaN in the cloud.
    assert xyz.shape == (keep.sum(), 3) == (H * W - 10 * W - 84, 3)
    np.testing.assert_array_equal(rgb, bgr.reshape(-1, 3)[keep][:, ::-1])
    assert 'status ok' in capsys.readouterr().out


def test_integer_stereo_depth_is_read_as_millimetres(inputs, caplog):
    # REP 118: 16UC1 depth is millimetres with 0 = no reading.
    bgr, rel, st, z = scene()
    mm = np.where(np.isfinite(st), np.round(st * 1000.0), 0).astype(np.uint16)
    np.save(str(inputs / 'st_mm.npy'), mm)
    with caplog.at_level('WARNING'):
        assert main(argv(inputs, **{'--stereo-depth': inputs / 'st_mm.npy'})) == 0
    assert 'reading it as millimetres' in caplog.text, caplog.text
    metres = mm.astype(np.float32) / np.float32(1000.0)
    metres[mm == 0] = np.nan
    expected = MetricAligner().update(rel, metres)
    np.testing.assert_array_equal(np.load(str(inputs / 'out' / 'depth.npy')), expected.depth)


def test_fuse_and_write_reuses_an_aligner(tmp_path):
    bgr, rel, st, _ = scene()
    cam = PinholeCamera(60, 60, 39.5, 29.5, W, H)
    aligner = MetricAligner()
    fuse_and_write(bgr, rel, st, None, cam, str(tmp_path / 'a'), aligner=aligner)
    r = fuse_and_write(bgr, rel, np.full((H, W), np.nan, np.float32), None, cam,
                       str(tmp_path / 'b'), aligner=aligner)
    assert r['alignment']['status'] == 'held'
    assert r['points'] == H * W - 10 * W - 84     # sky rows and the box's far-side ring


def test_fuse_without_any_stereo_reports_no_fit(inputs):
    np.save(str(inputs / 'st.npy'), np.full((H, W), np.nan, np.float32))
    assert main(argv(inputs)) == 0
    report = json.loads((inputs / 'out' / 'alignment.json').read_text())
    assert report['status'] == 'no_fit' and report['scale'] is None
    assert np.isnan(np.load(str(inputs / 'out' / 'depth.npy'))).all()


@pytest.mark.parametrize('over, message', [
    ({'--intrinsics': '60,60,39.5'}, "--intrinsics must be fx,fy,cx,cy (4 numbers), got "
                                     "'60,60,39.5'"),
    ({'--intrinsics': '60,0,39.5,29.5'}, "--intrinsics '60,0,39.5,29.5': `fy` must be a "
                                         "finite number > 0, got 0.0"),
    ({'--image': 'missing.png'}, '--image missing.png: no such file'),
    # np.load's own refusal said "This file contains pickled (object) data. If you trust the
    # file you can load it unsafely using the `allow_pickle=` keyword argument ...".
    ({'--relative': 'rel.txt'}, "--relative rel.txt: not a .npy array (numpy.save writes one; "
                                "this file starts with b'not an'"),
    ({'--stereo-depth': 'left.png'}, "--stereo-depth left.png: not a .npy array (numpy.save "
                                     "writes one; this file starts with b'\\x89PNG\\r\\n'"),
    ({'--relative': 'rel.npz'}, '--relative rel.npz: a .npz archive (disparity), expected one '
                                'HxW .npy array'),
    # The aligner's option names were given ("option `min_depth` ..."), not the command's.
    ({'--min-depth': 'nan'}, '`--min-depth` must be a finite number > 0.0, got nan'),
    ({'--min-depth': '5', '--max-depth': '1'},
     '`--max-depth` (1.0) must be > `--min-depth` (5.0)'),
    ({'--confidence-threshold': '500'}, '`--confidence-threshold` must be a finite number in '
                                        '[0.0, 100.0], got 500.0'),
])
def test_user_errors_are_one_line_exit_2(inputs, capsys, over, message, monkeypatch):
    monkeypatch.chdir(inputs)
    (inputs / 'rel.txt').write_text('not an array')
    np.savez(str(inputs / 'rel.npz'), disparity=np.ones((H, W), np.float32))
    assert main(argv(inputs, **over)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('depth-ros fuse: error: ') and message in err, err
    assert len(err.splitlines()) == 1


def test_mismatched_sizes_and_shapes(inputs, capsys):
    np.save(str(inputs / 'small.npy'), np.ones((H - 1, W), np.float32))
    np.save(str(inputs / 'cube.npy'), np.ones((H, W, 3), np.float32))
    assert main(argv(inputs, **{'--stereo-depth': inputs / 'small.npy'})) == 2
    assert '--image is 80x60 but --stereo-depth is 80x59' in capsys.readouterr().err
    assert main(argv(inputs, **{'--relative': inputs / 'cube.npy'})) == 2
    assert 'expected a non-empty HxW numeric array, got shape (60, 80, 3)' in \
        capsys.readouterr().err
    assert main(argv(inputs, **{'--confidence': inputs / 'small.npy'})) == 2
    assert '--confidence has shape (59, 80)' in capsys.readouterr().err


@pytest.mark.parametrize('failure', [RuntimeError('disk full'), KeyboardInterrupt()])
def test_a_failed_write_leaves_the_previous_outputs_whole(tmp_path, monkeypatch, failure):
    # A later write that fails (or Ctrl-C) must not leave a mix of new and old files.
    from depth_ros.commands import fuse as fuse_cmd
    from depth_ros.core import ply
    bgr, rel, st, _ = scene()
    cam = PinholeCamera(60, 60, 39.5, 29.5, W, H)
    out = tmp_path / 'out'
    fuse_and_write(bgr, rel, st, None, cam, str(out))
    before = {name: (out / name).read_bytes() for name in OUTPUT_FILES}

    def broken(*args, **kwargs):
        raise failure
    monkeypatch.setattr(ply, 'write_ply', broken)
    assert fuse_cmd is not None
    with pytest.raises(type(failure)):
        fuse_and_write(bgr, rel * 2.0, st * 0.5, None, cam, str(out))
    after = {name: (out / name).read_bytes() for name in OUTPUT_FILES}
    assert after == before, 'an output changed although the run failed'
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES), \
        'temporary files were left: {}'.format(sorted(p.name for p in out.iterdir()))


@pytest.mark.parametrize('command', [
    ['fuse', '--image', 'left.png', '--relative', 'rel.npy', '--stereo-depth', 'st.npy',
     '--intrinsics', '60,60,39.5,29.5'],
    ['demo', '--no-progress'], ['bench'], ['eval', '--dataset', 'middlebury']])
@pytest.mark.parametrize('out, message', [
    ('left.png', "argument --out: 'left.png' exists and is not a folder"),
    ('left.png/sub', "argument --out: 'left.png/sub': {} is a file, not a folder"),
])
def test_an_unusable_out_is_refused_before_any_work(inputs, capsys, monkeypatch, command, out,
                                                    message):
    # It was found only when the outputs were written (after the model, the network, the
    # timing), as an OSError that did not name --out ("[Errno 17] File exists").
    from depth_ros.commands import bench, demo, eval as ev, fuse
    monkeypatch.chdir(inputs)
    for module in (bench, demo, ev, fuse):
        monkeypatch.setattr(module, 'run', lambda args: pytest.fail('the command ran'),
                            raising=False)
    with pytest.raises(SystemExit) as done:
        main(command + ['--out', out])
    err = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and err[-1].endswith(
        message.format(inputs / 'left.png')), err
    written = sorted(p.name for p in inputs.iterdir())
    assert written == ['conf.npy', 'left.png', 'rel.npy', 'st.npy'], written

"""Frame sources: sample, folder, replay, make_source, rosbag (zed: test_sources_zed.py)."""
from __future__ import annotations

import os

import cv2
from depth_ros.core.camera import PinholeCamera
from depth_ros.core.stereo import sgbm_depth
from depth_ros.sources import make_source
from depth_ros.sources.base import Frame, FrameError, FrameSource, SourceConfigError, \
    SourceError
from depth_ros.sources.folder import FolderSource, load_calibration
from depth_ros.sources.replay import ReplaySource
import numpy as np
import pytest

# Also on Humble + Python 3.8 (its lane of RMW-independent tests): rosbags 0.9 reads bags
# there, with the stdlib sqlite3 and its memory map (sources/rosbag.py).
pytestmark = pytest.mark.rmw_independent


def _msg(err) -> str:
    return str(err.value)


# --------------------------------------------------------------------------- sample

def test_load_sample_ground_truth_matches_docstring_calibration():
    skdata = pytest.importorskip('skimage.data', reason='the sample needs scikit-image')
    from depth_ros.sources.sample import load_sample

    sample = load_sample()
    left_rgb, right_rgb, disp = skdata.stereo_motorcycle()
    assert sample.left.shape == (500, 741, 3) and sample.left.dtype == np.uint8
    assert np.array_equal(sample.left[:, :, ::-1], left_rgb), 'expected BGR of the RGB pair'
    assert np.array_equal(sample.right[:, :, ::-1], right_rgb)
    cam = sample.camera
    assert (cam.fx, cam.cx, cam.cy, cam.width, cam.height) == (994.978, 311.193, 254.877, 741,
                                                               500), repr(cam)
    assert sample.baseline_m == 0.193001 and sample.doffs == 31.086
    # Independent: depth = B f / (d + doffs) at a few pixels, NaN where disparity is inf.
    for (y, x) in ((100, 100), (250, 400), (450, 700)):
        want = 0.193001 * 994.978 / (float(disp[y, x]) + 31.086)
        got = float(sample.gt_depth[y, x])
        if np.isfinite(disp[y, x]):
            assert abs(got - want) < 1e-5 * want, 'expected {}, received {}'.format(want, got)
    assert np.array_equal(np.isnan(sample.gt_depth), ~np.isfinite(disp))
    assert sample.gt_depth.dtype == np.float32
    # Fresh copies: writing into one does not change the next.
    sample.left[:] = 0
    assert load_sample().left.any(), 'expected load_sample() to return copies'


def test_sample_source_stereo_depth_against_ground_truth():
    pytest.importorskip('skimage', reason='the sample needs scikit-image')
    from depth_ros.sources.sample import load_sample, SampleSource

    source = SampleSource(count=2, fps=20.0)
    frames = list(source)
    assert len(frames) == 2, 'expected 2 frames, received {}'.format(len(frames))
    first, second = frames
    assert second.stamp_ns - first.stamp_ns == 50000000, 'expected 50 ms apart'
    assert first.depth.shape == (500, 741) and first.depth.dtype == np.float32
    assert first.confidence.min() >= 1 and first.confidence.max() <= 100
    gt = load_sample().gt_depth
    both = np.isfinite(first.depth) & np.isfinite(gt)
    absrel = float(np.mean(np.abs(first.depth[both] - gt[both]) / gt[both]))
    assert absrel < 0.03, 'expected SGBM AbsRel < 0.03 on Motorcycle, received {}'.format(
        absrel)
    assert both.mean() > 0.7, 'expected density > 0.7, received {}'.format(both.mean())
    # Every frame holds the pair's planes, read-only: no copy per frame, and a consumer that
    # would write into one gets numpy's error (the next frame is intact). The confidence is
    # checked once, at open (alignment_node then takes it as it is).
    assert first.left is second.left and first.depth is second.depth
    for name in ('left', 'right', 'depth', 'confidence'):
        assert not getattr(first, name).flags.writeable, name
    with pytest.raises(ValueError, match='read-only'):
        first.left[:] = 0
    assert first.confidence_finite and np.isfinite(first.confidence).all()
    assert SampleSource(count=1).read().left.any()


def test_sample_source_rejects_bad_options():
    from depth_ros.sources.sample import SampleSource

    with pytest.raises(ValueError) as err:
        SampleSource(count=0)
    assert _msg(err) == '`count` must be an integer >= 1, got 0', _msg(err)
    with pytest.raises(ValueError) as err:
        SampleSource(num_disparity=64)
    want = 'unknown SGBM option(s) num_disparity; valid: num_disparities'
    assert _msg(err).startswith(want), _msg(err)
    with pytest.raises(SourceConfigError) as err:
        SampleSource(num_disparities=736, min_disparity=5)  # would end the process (OpenCV 4.5)
    assert _msg(err) == ("source `sample`: num_disparities + min_disparity = 741 must be below "
                         "the sample's width, 741 px"), _msg(err)
    SampleSource(num_disparities=736, min_disparity=4)  # the widest range that works


# --------------------------------------------------------------------------- folder

CALIB = 'fx: 400.0\nfy: 400.0\ncx: 99.5\ncy: 59.5\nbaseline: 0.12\nwidth: 200\nheight: 120\n'


def _texture(seed=0, width=200, height=120):
    rng = np.random.default_rng(seed)
    gray = cv2.GaussianBlur(rng.integers(0, 256, (height, width)).astype(np.float32), (0, 0), 1)
    gray = cv2.normalize(gray, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)


def _write_folder(root, names, calib=CALIB, disparity=10):
    os.makedirs(os.path.join(root, 'left'))
    os.makedirs(os.path.join(root, 'right'))
    for i, name in enumerate(names):
        right = _texture(seed=i)
        left = np.roll(right, disparity, axis=1)  # left(x) = right(x - d)
        cv2.imwrite(os.path.join(root, 'left', name), left)
        cv2.imwrite(os.path.join(root, 'right', name), right)
    if calib is not None:
        with open(os.path.join(root, 'calibration.yaml'), 'w') as f:
            f.write(calib)
    return str(root)


def test_folder_source_reads_pairs_in_order_with_depth(tmp_path):
    names = ['1700000000000000300.png', '1700000000000000100.png']
    root = _write_folder(tmp_path / 'pairs', names)
    source = FolderSource(root, num_disparities=32)
    assert len(source) == 2
    frames = list(source)
    stamps = [f.stamp_ns for f in frames]
    assert stamps == [1700000000000000100, 1700000000000000300], \
        'expected stamps from sorted file names, received {}'.format(stamps)
    frame = frames[0]
    assert frame.camera == PinholeCamera(400.0, 400.0, 99.5, 59.5, 200, 120), frame.camera
    assert frame.baseline_m == 0.12
    want = 0.12 * 400.0 / 10
    got = float(np.nanmedian(frame.depth[10:-10, 50:-10]))
    assert abs(got - want) < 0.01 * want, 'expected {} m, received {} m'.format(want, got)
    # Same result as the core function on the same pair (the folder adds nothing to the maths).
    left = cv2.imread(os.path.join(root, 'left', names[1]))
    right = cv2.imread(os.path.join(root, 'right', names[1]))
    depth, conf = sgbm_depth(left, right, frame.camera, 0.12, num_disparities=32)
    np.testing.assert_array_equal(frame.depth, depth)
    np.testing.assert_array_equal(frame.confidence, conf)


def test_folder_source_synthetic_stamps_and_scaled_camera(tmp_path):
    calib = CALIB.replace('width: 200', 'width: 400').replace('height: 120', 'height: 240')
    root = _write_folder(tmp_path / 'pairs', ['a.png', 'b.png'], calib=calib)
    frames = list(FolderSource(root, fps=4.0, num_disparities=32))
    assert frames[1].stamp_ns - frames[0].stamp_ns == 250000000
    want = PinholeCamera(400.0, 400.0, 99.5, 59.5, 400, 240).scaled(200, 120)
    assert frames[0].camera == want, 'expected {}, received {}'.format(want, frames[0].camera)


@pytest.mark.parametrize('calib,message', [
    (CALIB.replace('fx: 400.0\n', ''), 'missing key(s) `fx`'),
    (CALIB.replace('baseline: 0.12', 'baseline: -0.12'),
     'key `baseline` must be a finite number > 0, got -0.12'),
    (CALIB.replace('cx: 99.5', 'cx: left'), 'key `cx` must be a finite number, got \'left\''),
    (CALIB.replace('width: 200', 'width: 200.5'),
     'key `width` must be an integer > 0, got 200.5'),
    (CALIB + 'doffs: .nan\n', 'key `doffs` must be a finite number, got nan'),
    ('- 1\n- 2\n', 'expected a mapping of keys fx, fy, cx, cy, baseline, width, height'),
])
def test_calibration_errors_name_the_key(tmp_path, calib, message):
    path = tmp_path / 'calibration.yaml'
    path.write_text(calib)
    with pytest.raises(ValueError) as err:
        load_calibration(str(path))
    want = 'calibration {}: {}'.format(path, message)
    assert _msg(err).startswith(want), 'expected {!r}, received {!r}'.format(want, _msg(err))


def test_folder_source_layout_errors(tmp_path):
    root = _write_folder(tmp_path / 'a', ['x.png', 'y.png'])
    os.remove(os.path.join(root, 'right', 'y.png'))
    with pytest.raises(ValueError) as err:
        FolderSource(root)
    assert _msg(err).endswith('images without a partner in the other view: y.png'), _msg(err)
    # A missing path names the parameter and the value, in one line (a SourceConfigError is a
    # ValueError, which zed_node turns into its one-line configuration error).
    missing = str(tmp_path / 'missing')
    with pytest.raises(SourceConfigError) as err:
        FolderSource(missing)
    assert _msg(err) == "source `folder`: `path` {!r} does not exist".format(missing), _msg(err)
    with pytest.raises(SourceConfigError) as err:
        FolderSource(os.path.join(root, 'calibration.yaml'))
    assert _msg(err) == "source `folder`: `path` {!r} is not a folder".format(
        os.path.join(root, 'calibration.yaml')), _msg(err)
    root = _write_folder(tmp_path / 'b', ['x.png'], calib=None)
    with pytest.raises(SourceConfigError) as err:
        FolderSource(root)
    want = ("stereo folder {!r} has no calibration.yaml (it needs left/, right/ and "
            "calibration.yaml; see docs/sources.md)".format(root))
    assert _msg(err) == want, 'expected {!r}, received {!r}'.format(want, _msg(err))
    # Everything that is missing, at once.
    (tmp_path / 'empty').mkdir()
    with pytest.raises(SourceConfigError) as err:
        FolderSource(str(tmp_path / 'empty'))
    assert 'has no left/, right/, calibration.yaml (' in _msg(err), _msg(err)
    with pytest.raises(SourceConfigError) as err:
        FolderSource(root, calibration=str(tmp_path / 'other.yaml'))
    assert _msg(err) == "source `folder`: `calibration` file {!r} does not exist".format(
        str(tmp_path / 'other.yaml')), _msg(err)
    with pytest.raises(SourceConfigError) as err:
        load_calibration(str(tmp_path / 'other.yaml'))
    assert _msg(err) == 'calibration file not found: {}'.format(tmp_path / 'other.yaml')
    with pytest.raises(SourceConfigError) as err:
        make_source('folder', missing)
    assert '`path` {!r} does not exist'.format(missing) in _msg(err), _msg(err)


def test_calibration_that_is_not_yaml_is_one_line(tmp_path):
    path = tmp_path / 'calibration.yaml'
    path.write_text('fx: [1, 2\nfy: 3\n')
    with pytest.raises(SourceConfigError) as err:
        load_calibration(str(path))
    assert _msg(err).startswith('calibration {}: not valid YAML: '.format(path)), _msg(err)
    assert '\n' not in _msg(err), _msg(err)


def test_folder_bad_frame_is_a_frame_error_and_the_next_read_goes_on(tmp_path, monkeypatch):
    root = _write_folder(tmp_path / 'c', ['1.png', '2.png', '3.png'])
    with open(os.path.join(root, 'left', '2.png'), 'wb') as f:
        f.write(b'not a png')
    source = FolderSource(root, num_disparities=32)
    assert source.read().stamp_ns == 1
    with pytest.raises(FrameError) as err:
        source.read()
    assert _msg(err) == 'cannot read image {}'.format(os.path.join(root, 'left', '2.png'))
    assert source.read().stamp_ns == 3, 'the pair after the bad one comes next, no reopen'
    assert source.read() is None
    # Iterating drops the bad frame (logged) and goes on.
    assert [f.stamp_ns for f in FolderSource(root, num_disparities=32)] == [1, 3]
    # Images too narrow for the disparity range: OpenCV 4.5.4 would end the process.
    for name, width in (('2.png', 1), ('3.png', 32)):
        cv2.imwrite(os.path.join(root, 'left', name), _texture(width=width, height=120))
        cv2.imwrite(os.path.join(root, 'right', name), _texture(width=width, height=120))
    source = FolderSource(root, num_disparities=32)
    source.read()
    for name, width in (('2.png', 1), ('3.png', 32)):
        with pytest.raises(FrameError) as err:
            source.read()
        want = '{}: {} px wide, but SGBM needs more than num_disparities + min_disparity = 32 ' \
            'px'.format(name, width)
        assert _msg(err) == want, 'expected {!r}, received {!r}'.format(want, _msg(err))
    for view in ('left', 'right'):
        cv2.imwrite(os.path.join(root, view, '3.png'), _texture())
    # Whatever the stereo step raises for a pair is a FrameError too, in one line.
    import depth_ros.sources.folder as folder_module

    def broken(*args, **kwargs):
        raise RuntimeError('SGBM failed\n  second line')
    source = FolderSource(root, num_disparities=32)
    source.read()
    with pytest.raises(FrameError):
        source.read()  # 2.png, too narrow
    monkeypatch.setattr(folder_module, 'sgbm_depth', broken)
    with pytest.raises(FrameError) as err:
        source.read()
    assert _msg(err) == '3.png: RuntimeError: SGBM failed', _msg(err)


# --------------------------------------------------------------------------- replay

class ListSource(FrameSource):
    """A finite source of tiny frames with given stamps; counts open/close calls."""

    name = 'list'

    def __init__(self, stamps):
        self.stamps = list(stamps)
        self.opens = 0
        self._i = 0

    def open(self):
        self.opens += 1
        self._i = 0

    def read(self):
        if self._i >= len(self.stamps):
            return None
        stamp = self.stamps[self._i]
        self._i += 1
        return Frame(left=np.full((2, 2, 3), self._i, np.uint8), depth=None, confidence=None,
                     camera=PinholeCamera(1, 1, 0.5, 0.5, 2, 2), stamp_ns=stamp)


class FakeClock(object):
    def __init__(self):
        self.t = 100.0
        self.sleeps = []

    def __call__(self):
        return self.t

    def sleep(self, dt):
        self.sleeps.append(round(dt, 9))
        self.t += dt


def test_replay_loop_restamps_monotonically():
    clock = FakeClock()
    replay = ReplaySource(ListSource([1000, 1100, 1250]), loop=True, rate=0,
                          clock=clock, sleep=clock.sleep)
    stamps = [replay.read().stamp_ns for _ in range(7)]
    # Second pass starts one period (150, the last spacing) after the last stamp.
    want = [1000, 1100, 1250, 1400, 1500, 1650, 1800]
    assert stamps == want, 'expected {}, received {}'.format(want, stamps)
    assert replay.inner.opens == 3
    assert clock.sleeps == [], 'rate=0 must not sleep, slept {}'.format(clock.sleeps)


class RewindingSource(ListSource):
    """A ListSource that starts over when asked (as a bag does); counts the rewinds."""

    def __init__(self, stamps, can_rewind=True):
        super().__init__(stamps)
        self.can_rewind = can_rewind
        self.rewinds = 0

    def rewind(self):
        if not self.can_rewind:
            return False
        self.rewinds += 1
        self._i = 0
        return True


@pytest.mark.parametrize('can_rewind', [True, False])
def test_replay_loop_rewinds_a_source_that_can_else_reopens_it(can_rewind):
    replay = ReplaySource(RewindingSource([1000, 1100, 1250], can_rewind), loop=True, rate=0)
    stamps = [replay.read().stamp_ns for _ in range(7)]
    assert stamps == [1000, 1100, 1250, 1400, 1500, 1650, 1800], stamps
    # Two ends of the stream: two rewinds and the one open, or three opens.
    assert (replay.inner.opens, replay.inner.rewinds) == ((1, 2) if can_rewind else (3, 0)), \
        (replay.inner.opens, replay.inner.rewinds)


def test_replay_without_loop_ends():
    replay = ReplaySource(ListSource([5, 6]), rate=0)
    assert [f.stamp_ns for f in replay] == [5, 6]


def test_replay_rate_paces_by_recorded_stamps():
    clock = FakeClock()
    ms = 1000000
    replay = ReplaySource(ListSource([0, 100 * ms, 300 * ms]), rate=2.0, clock=clock,
                          sleep=clock.sleep)
    list(replay)
    # Twice real time: 100 ms and 200 ms of recording take 50 ms and 100 ms.
    assert clock.sleeps == [0.05, 0.1], 'expected [0.05, 0.1], received {}'.format(clock.sleeps)


S = 1000000000
RESTARTED = [10 * S, 11 * S, 12 * S, 5 * S, 6 * S, 7 * S]   # the recorder restarted at 5 s


def test_replay_passes_a_restart_inside_a_recording_through_and_paces_from_there():
    clock = FakeClock()
    replay = ReplaySource(ListSource(RESTARTED), rate=1.0, clock=clock, sleep=clock.sleep)
    stamps = [f.stamp_ns for f in replay]
    assert stamps == RESTARTED, 'expected the recorded stamps, received {}'.format(stamps)
    # Real time on both sides of the restart: no second of the recording is lost.
    assert clock.sleeps == [1.0, 1.0, 1.0, 1.0], clock.sleeps


def test_a_restart_inside_a_recording_reaches_the_nodes_stamp_guard():
    from depth_ros.nodes_core.workers import StampGuard
    guard = StampGuard('image', reset_ns=S)          # stamp_reset_s, its default 1.0
    verdicts = [guard.check(f.stamp_ns)[0] for f in ReplaySource(ListSource(RESTARTED), rate=0)]
    assert verdicts == ['ok', 'ok', 'ok', 'restart', 'ok', 'ok'], verdicts
    # A step back under stamp_reset_s, or a repeated stamp, is out of order there: dropped.
    guard = StampGuard('image', reset_ns=S)
    ms = 1000000
    jitter = [0, 100 * ms, 50 * ms, 200 * ms, 200 * ms, 300 * ms]
    verdicts = [guard.check(f.stamp_ns)[0] for f in ReplaySource(ListSource(jitter), rate=0)]
    assert verdicts == ['ok', 'ok', 'old', 'ok', 'old', 'ok'], verdicts


def test_replay_fixed_fps_stamps_with_wall_clock():
    clock = FakeClock()
    walls = iter([10, 20, 30])
    replay = ReplaySource(ListSource([7, 7, 7]), fps=4.0, clock=clock, sleep=clock.sleep,
                          wall_ns=lambda: next(walls))
    assert [f.stamp_ns for f in replay] == [10, 20, 30]
    assert clock.sleeps == [0.25, 0.25], clock.sleeps


def test_replay_fixed_fps_holds_when_looping_a_single_frame():
    # The sample is one frame; looping it must still deliver at `fps`, not as fast as possible.
    clock = FakeClock()
    replay = ReplaySource(ListSource([7]), loop=True, fps=5.0, clock=clock, sleep=clock.sleep,
                          wall_ns=lambda: int(clock.t * 1e9))
    stamps = [replay.read().stamp_ns for _ in range(4)]
    assert clock.sleeps == [0.2, 0.2, 0.2], clock.sleeps
    assert np.allclose(np.diff(stamps), 200000000, atol=1000), stamps


def test_replay_simulated_outage_then_resume():
    clock = FakeClock()
    replay = ReplaySource(ListSource(range(0, 1000, 10)), rate=0, drop_after=3, outage_s=1.5,
                          clock=clock, sleep=clock.sleep)
    got = [replay.read().stamp_ns for _ in range(3)]
    assert got == [0, 10, 20]
    with pytest.raises(SourceError, match='simulated outage'):
        replay.read()
    clock.t += 1.0
    with pytest.raises(SourceError, match='simulated outage'):
        replay.open()  # a reconnect attempt during the outage fails, as with a real camera
    clock.t += 0.6
    replay.open()
    after = [replay.read().stamp_ns for _ in range(4)]
    # The inner source restarted (like a reopened camera); stamps still increase.
    assert after == [30, 40, 50, 60], 'expected [30, 40, 50, 60], received {}'.format(after)
    assert replay.outages == 1 and replay.inner.opens == 2


def test_replay_bad_options():
    with pytest.raises(ValueError) as err:
        ReplaySource(ListSource([1]), rate=-1)
    assert _msg(err) == '`rate` must be a finite number >= 0, got -1'
    with pytest.raises(ValueError) as err:
        ReplaySource(ListSource([1]), drop_after=0)
    assert _msg(err) == '`drop_after` must be an integer >= 1, got 0'
    with pytest.raises(ValueError) as err:
        ReplaySource(ListSource([1]), fps=0)
    assert _msg(err) == '`fps` must be a finite number > 0, got 0'


class FaultySource(ListSource):
    """ListSource whose read() raises ``faults[i]`` (an exception) at read number i."""

    def __init__(self, stamps, faults):
        super().__init__(stamps)
        self.faults = dict(faults)
        self.reads = 0

    def read(self):
        self.reads += 1
        fault = self.faults.pop(self.reads, None)
        if fault is not None:
            if isinstance(fault, FrameError):
                self._i += 1  # the bad frame is consumed, as FolderSource does
            raise fault
        return super().read()


def test_replay_passes_frame_errors_and_wraps_foreign_exceptions():
    class CorruptError(Exception):
        """Stands in for apsw.CorruptError from a damaged bag."""

    inner = FaultySource([10, 20, 30, 40], {2: FrameError('frame 20: bad'),
                                            4: CorruptError('database disk image is malformed\n'
                                                            'more')})
    replay = ReplaySource(inner, rate=0)
    assert replay.read().stamp_ns == 10
    with pytest.raises(FrameError) as err:
        replay.read()
    assert _msg(err) == 'frame 20: bad'
    assert replay.read().stamp_ns == 30, 'after a FrameError the next frame comes, no reopen'
    with pytest.raises(SourceError) as err:
        replay.read()
    assert type(err.value) is SourceError
    assert _msg(err) == 'list read() failed: CorruptError: database disk image is malformed', \
        _msg(err)
    assert inner.opens == 1
    replay.close()
    replay.open()
    # Reopened, the inner source starts again at 10: shifted one period (the last, 20) on.
    assert inner.opens == 2 and replay.read().stamp_ns == 50, 'stamps keep increasing'


# --------------------------------------------------------------------------- make_source

def test_make_source_kinds_and_errors(tmp_path):
    source = make_source('sample', loop=True, fps=30.0)
    assert isinstance(source, ReplaySource) and source.loop and source.fps == 30.0
    assert source.inner.name == 'sample'
    root = _write_folder(tmp_path / 'pairs', ['a.png'])
    folder = make_source('folder', root, num_disparities=32)
    assert isinstance(folder, FolderSource) and folder.sgbm_options == {'num_disparities': 32}
    with pytest.raises(ValueError) as err:
        make_source('usb')
    assert _msg(err) == "`source` must be one of live|svo|sample|folder|bag, got 'usb'"
    with pytest.raises(ValueError) as err:
        make_source('folder')
    assert _msg(err) == 'source `folder` needs a path, got None'
    with pytest.raises(ValueError) as err:
        make_source('sample', 'x.svo')
    assert _msg(err) == "source `sample` takes no path, got 'x.svo'"
    with pytest.raises(ValueError) as err:
        make_source('folder', root, calib='x.yaml')
    assert _msg(err).startswith('source `folder` does not take option(s) calib; it takes '), \
        _msg(err)


# --------------------------------------------------------------------------- rosbag

def _bag_frames(n=5, height=24, width=32):
    rng = np.random.default_rng(7)
    cam = PinholeCamera(100.0, 101.0, 15.5, 11.5, width, height)
    return [Frame(left=rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
                  depth=(rng.random((height, width)) * 5).astype(np.float32),
                  confidence=(rng.random((height, width)) * 99 + 1).astype(np.float32),
                  camera=cam, stamp_ns=1700000000 * 10 ** 9 + 100000000 * i + 7)
            for i in range(n)]


def _skip_without_an_mcap_writer(storage):
    # rosbags 0.9 (the last for Python 3.8, the Humble venv's) writes sqlite3 bags only.
    if storage == 'mcap':
        try:
            from rosbags.rosbag2 import StoragePlugin  # noqa: F401
        except ImportError:
            pytest.skip('writing an mcap bag needs rosbags >= 0.10')


@pytest.mark.parametrize('storage,encoding', [('sqlite3', 'bgra8'), ('mcap', 'rgb8'),
                                              ('sqlite3', 'bgr8')])
def test_rosbag_round_trip(tmp_path, storage, encoding):
    from depth_ros.sources.rosbag import RosbagSource, write_test_bag

    _skip_without_an_mcap_writer(storage)
    frames = _bag_frames()
    path = write_test_bag(str(tmp_path / 'bag'), frames, storage=storage,
                          image_encoding=encoding, reverse_topics=True)
    out = list(RosbagSource(path))
    assert [f.stamp_ns for f in out] == [f.stamp_ns for f in frames]
    for want, got in zip(frames, out):
        np.testing.assert_array_equal(got.left, want.left)
        np.testing.assert_array_equal(got.depth, want.depth)
        np.testing.assert_array_equal(got.confidence, want.confidence)
        assert got.camera == want.camera, 'expected {}, received {}'.format(want.camera,
                                                                            got.camera)
        assert got.frame_id == 'zed_left_camera_optical_frame', got.frame_id
        # decode_set found the confidence finite: in-process consumers need not check again.
        assert got.confidence_finite is True


@pytest.mark.parametrize('storage', ['sqlite3', 'mcap'])
def test_rosbag_arrays_are_read_only_views_that_outlive_the_reader(tmp_path, storage):
    from depth_ros.sources.rosbag import RosbagSource, write_test_bag

    _skip_without_an_mcap_writer(storage)
    # Zero copy: depth, confidence and a bgr8 image are views of their records' bytes. They
    # stay valid after the next reads and after the bag is closed, and cannot be written to.
    frames = _bag_frames(3)
    source = RosbagSource(write_test_bag(str(tmp_path / 'bag'), frames, storage=storage,
                                         image_encoding='bgr8'))
    out = [source.read() for _ in frames]
    assert source.read() is None
    source.close()
    for want, got in zip(frames, out):
        for name in ('left', 'depth', 'confidence'):
            array = getattr(got, name)
            np.testing.assert_array_equal(array, getattr(want, name))
            assert array.base is not None and not array.flags.writeable, \
                '{}: expected a read-only view, got {}'.format(name, array.flags)
        with pytest.raises(ValueError, match='read-only'):
            got.depth[0, 0] = 1.0


def _rosbags_dbconns(reader):
    """Return the SQLite connections of an open rosbags Reader (each version's layout)."""
    storage = reader.storage
    if hasattr(storage, 'dbconns'):   # rosbags 0.9 (Python 3.8): sqlite3
        return list(storage.dbconns)
    return [s.dbconn for s in getattr(storage, 'storages', [storage])]   # 0.10+: apsw


def _mmap_size(dbconn):
    return [int(row[0]) for row in dbconn.execute('PRAGMA mmap_size')]


def _records(reader):
    return [(conn.topic, stamp, bytes(raw)) for conn, stamp, raw in
            reader.messages(connections=reader.connections)]


def test_rosbag_sqlite_is_read_through_a_memory_map_with_the_same_bytes(tmp_path):
    from depth_ros.sources import rosbag
    from rosbags.rosbag2 import Reader

    # 160x120 records (57 to 77 KB) span many 4 KiB overflow pages, which the map serves.
    frames = _bag_frames(3, height=120, width=160)
    path = rosbag.write_test_bag(str(tmp_path / 'bag'), frames)
    plain = Reader(path)
    plain.open()
    mapped = Reader(path)
    mapped.open()
    try:
        module = type(_rosbags_dbconns(plain)[0]).__module__   # sqlite3 (0.9) or apsw (0.10+)
        assert [_mmap_size(c) for c in _rosbags_dbconns(plain)] == [[0]], 'map off by default'
        # Other modules' connections are left as they are ...
        assert rosbag.enable_mmap(mapped, path, modules=('other',)) == 0
        assert [_mmap_size(c) for c in _rosbags_dbconns(mapped)] == [[0]]
        # ... and this one's are mapped, whichever it is.
        size = rosbag.enable_mmap(mapped, path, modules=(module,))
        conns = _rosbags_dbconns(mapped)
        assert size > 1 << 20 and conns and \
            [_mmap_size(c) for c in conns] == [[size]] * len(conns), \
            (size, [_mmap_size(c) for c in conns])
        want = _records(plain)
        assert len(want) == 12 and _records(mapped) == want
    finally:
        plain.close()
        mapped.close()
    # The source maps its bag where the module is one measured faster mapped (stdlib sqlite3,
    # rosbags 0.9), reads the same frames either way, and forgets the map on close.
    source = rosbag.RosbagSource(path)
    out = [source.read() for _ in frames]
    want_size = size if module in rosbag.MMAP_MODULES else 0
    assert rosbag.MMAP_MODULES == ('sqlite3',)
    assert source.mmap_bytes == want_size, (module, source.mmap_bytes, want_size)
    assert [_mmap_size(c) for c in _rosbags_dbconns(source._reader)] == [[want_size]]
    for want, got in zip(frames, out):
        np.testing.assert_array_equal(got.left, want.left)
        np.testing.assert_array_equal(got.depth, want.depth)
        np.testing.assert_array_equal(got.confidence, want.confidence)
    source.close()
    assert source.mmap_bytes == 0


def test_rosbag_without_a_reachable_connection_reads_without_the_map(
        tmp_path, monkeypatch, caplog):
    import logging
    import sqlite3

    from depth_ros.sources import rosbag

    caplog.set_level(logging.DEBUG, logger='depth_ros.sources.rosbag')

    # Other rosbags internals: a sqlite storage without dbconn/dbconns.
    class Sqlite3Reader:
        pass

    class Reader:
        storage = Sqlite3Reader()

    assert rosbag.enable_mmap(Reader(), '/b') == 0
    assert 'bag /b: no memory map: rosbags storage Sqlite3Reader has no dbconn/dbconns' \
        in caplog.text, caplog.text

    # A connection that refuses the PRAGMA.
    class Refusing:
        def execute(self, sql):
            raise sqlite3.OperationalError('no such pragma')

    Reader.storage.dbconns = [Refusing()]
    assert rosbag.enable_mmap(Reader(), '/c', modules=(Refusing.__module__,)) == 0
    assert 'bag /c: no memory map: OperationalError: no such pragma' in caplog.text, caplog.text

    # The source then reads its bag as before.
    monkeypatch.setattr(rosbag, 'sqlite_connections', lambda reader: ([], ['Sqlite3Reader']))
    frames = _bag_frames(2)
    source = rosbag.RosbagSource(rosbag.write_test_bag(str(tmp_path / 'bag'), frames))
    out = list(source)
    assert source.mmap_bytes == 0 and len(out) == 2
    for want, got in zip(frames, out):
        np.testing.assert_array_equal(got.depth, want.depth)
    assert caplog.text.count('no memory map') == 3, caplog.text


def test_rosbag_mcap_has_no_map_and_says_nothing(tmp_path, caplog):
    import logging

    from depth_ros.sources.rosbag import RosbagSource, write_test_bag

    _skip_without_an_mcap_writer('mcap')
    caplog.set_level(logging.DEBUG, logger='depth_ros.sources.rosbag')
    source = RosbagSource(write_test_bag(str(tmp_path / 'bag'), _bag_frames(2), storage='mcap'))
    assert len(list(source)) == 2 and source.mmap_bytes == 0
    assert 'memory map' not in caplog.text, caplog.text


def test_rosbag_rewind_starts_over_on_the_open_bag(tmp_path):
    from depth_ros.sources.rosbag import RosbagSource, write_test_bag

    frames = _bag_frames(3)
    # An incomplete stamp at the end of the first pass is not carried into the second.
    source = RosbagSource(write_test_bag(str(tmp_path / 'bag'), frames, skip={'depth': [2]}))
    assert source.rewind() is False, 'not open yet: nothing to rewind'
    first = [source.read(), source.read()]
    assert source.read() is None and source.dropped == 1
    reader = source._reader
    assert source.rewind() is True and source._reader is reader, 'the same open reader'
    assert source.dropped == 0
    # Mid-stream too: from the first record again.
    assert source.read().stamp_ns == frames[0].stamp_ns and source.rewind()
    again = [source.read(), source.read()]
    assert source.read() is None
    for a, b in zip(first, again):
        assert a.stamp_ns == b.stamp_ns
        np.testing.assert_array_equal(a.left, b.left)
        np.testing.assert_array_equal(a.depth, b.depth)
        np.testing.assert_array_equal(a.confidence, b.confidence)
    source.close()
    assert source.rewind() is False


def test_replay_loops_a_bag_by_rewinding_it(tmp_path, monkeypatch):
    from depth_ros.sources.rosbag import RosbagSource, write_test_bag

    frames = _bag_frames(2)
    bag = RosbagSource(write_test_bag(str(tmp_path / 'bag'), frames))
    opens = []
    original = bag.open
    monkeypatch.setattr(bag, 'open', lambda: opens.append(1) or original())
    replay = ReplaySource(bag, loop=True, rate=0)
    out = [replay.read() for _ in range(5)]
    period = frames[1].stamp_ns - frames[0].stamp_ns
    want = [frames[0].stamp_ns + period * i for i in range(5)]
    assert [f.stamp_ns for f in out] == want, [f.stamp_ns for f in out]
    np.testing.assert_array_equal(out[4].depth, frames[0].depth)
    assert len(opens) == 1, 'opened {} times'.format(len(opens))


def test_rosbag_pairing_drops_incomplete_and_reuses_camera_info(tmp_path, caplog):
    from depth_ros.sources.rosbag import RosbagSource, write_test_bag

    frames = _bag_frames(6)
    path = write_test_bag(str(tmp_path / 'bag'), frames,
                          skip={'depth': [1], 'camera_info': [3, 4]})
    source = RosbagSource(path, max_pending=1)
    out = list(source)
    want = [frames[i].stamp_ns for i in (0, 2, 3, 4, 5)]
    assert [f.stamp_ns for f in out] == want, 'expected {}, received {}'.format(
        want, [f.stamp_ns for f in out])
    assert source.dropped == 1, 'expected 1 evicted stamp, received {}'.format(source.dropped)
    assert 'dropped stamp {} with only confidence, image'.format(frames[1].stamp_ns) in caplog.text
    assert out[2].camera == frames[3].camera  # camera_info of frame 2 reused for frame 3
    # A larger buffer keeps the incomplete stamp to the end, and counts it there.
    source = RosbagSource(path, max_pending=4)
    assert len(list(source)) == 5 and source.dropped == 1, source.dropped


def test_rosbag_without_confidence_and_custom_topics(tmp_path):
    from depth_ros.sources.rosbag import RosbagSource, write_test_bag, zed_topics

    frames = _bag_frames(2)
    for f in frames:
        f.confidence = None
    topics = zed_topics('zed2i')
    path = write_test_bag(str(tmp_path / 'bag'), frames, topics=topics)
    assert topics['image'] == '/zed2i/zed_node/left/image_rect_color'
    out = list(RosbagSource(path, topics=topics))
    assert len(out) == 2 and out[0].confidence is None and out[0].confidence_finite is False
    with pytest.raises(SourceError) as err:
        RosbagSource(path).open()  # default /zed/... topics are not in this bag
    assert 'has no image/depth/camera_info topic(s) /zed/zed_node/left/image_rect_color' \
        in _msg(err), _msg(err)


def test_rosbag_bad_frame_is_dropped(tmp_path):
    from depth_ros.sources.rosbag import RosbagSource, write_test_bag

    frames = _bag_frames(4)
    frames[1].depth = frames[1].depth[:-2]
    frames[3].confidence[2, 3] = np.inf      # a frame saying so must have a finite confidence
    source = RosbagSource(write_test_bag(str(tmp_path / 'bag'), frames))
    out = list(source)
    assert [f.stamp_ns for f in out] == [frames[0].stamp_ns, frames[2].stamp_ns]
    assert source.bad_frames == 2 and all(f.confidence_finite for f in out)


def test_rosbag_errors_and_depth_units(tmp_path):
    from depth_ros.core.messages import depth_to_metres
    from depth_ros.sources.rosbag import RosbagSource

    with pytest.raises(FileNotFoundError) as err:
        RosbagSource(str(tmp_path / 'nope'))
    assert _msg(err) == 'bag not found: {!r}'.format(str(tmp_path / 'nope'))
    (tmp_path / 'x').mkdir()
    with pytest.raises(ValueError) as err:
        RosbagSource(str(tmp_path / 'x'), topics={'left': '/a'})
    assert _msg(err) == "`topics` key must be one of image, camera_info, depth, " \
        "confidence, got 'left'"
    # Not a bag: said at once, naming what is missing, and marked as not worth retrying.
    (tmp_path / 'x' / 'notes.txt').write_text('')
    with pytest.raises(SourceError, match=r'x is not a rosbag2 folder: it has no metadata.yaml '
                                          r'\(it has: notes.txt\)') as err:
        RosbagSource(str(tmp_path / 'x'))
    assert isinstance(err.value, SourceConfigError)
    (tmp_path / 'x' / 'metadata.yaml').write_text('not: a bag')
    with pytest.raises(SourceError, match='cannot open bag .*x: ') as err:
        RosbagSource(str(tmp_path / 'x')).open()
    assert isinstance(err.value, SourceConfigError) and '\n' not in str(err.value)
    mm = np.array([[0, 1500], [65535, 250]], np.uint16)
    got = depth_to_metres(mm, '16UC1')
    want = np.array([[np.nan, 1.5], [65.535, 0.25]], np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-6)

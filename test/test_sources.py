"""Frame sources: sample, folder, replay, make_source (rosbag and zed: their own sections)."""
from __future__ import annotations

import os

import cv2
from depth_ros.core.camera import PinholeCamera
from depth_ros.core.stereo import sgbm_depth
from depth_ros.sources import make_source
from depth_ros.sources.base import Frame, FrameSource, SourceError
from depth_ros.sources.folder import FolderSource, load_calibration
from depth_ros.sources.replay import ReplaySource
import numpy as np
import pytest


def _msg(err) -> str:
    return str(err.value)


# --------------------------------------------------------------------------- sample

def test_load_sample_ground_truth_matches_docstring_calibration():
    from skimage import data as skdata
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
    first.left[:] = 0  # frames are the caller's to modify
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
    with pytest.raises(FileNotFoundError) as err:
        FolderSource(str(tmp_path / 'missing'))
    assert 'stereo folder not found' in _msg(err), _msg(err)
    root = _write_folder(tmp_path / 'b', ['x.png'], calib=None)
    with pytest.raises(FileNotFoundError) as err:
        FolderSource(root)
    assert _msg(err) == 'calibration file not found: {}'.format(
        os.path.join(root, 'calibration.yaml')), _msg(err)
    root = _write_folder(tmp_path / 'c', ['x.png'])
    with open(os.path.join(root, 'left', 'x.png'), 'wb') as f:
        f.write(b'not a png')
    source = FolderSource(root)
    with pytest.raises(SourceError) as err:
        source.read()
    assert _msg(err) == 'cannot read image {}'.format(os.path.join(root, 'left', 'x.png'))


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


@pytest.mark.parametrize('storage,encoding', [('sqlite3', 'bgra8'), ('mcap', 'rgb8')])
def test_rosbag_round_trip(tmp_path, storage, encoding):
    from depth_ros.sources.rosbag import RosbagSource, write_test_bag

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
    assert len(out) == 2 and out[0].confidence is None
    with pytest.raises(SourceError) as err:
        RosbagSource(path).open()  # default /zed/... topics are not in this bag
    assert 'has no image/depth/camera_info topic(s) /zed/zed_node/left/image_rect_color' \
        in _msg(err), _msg(err)


def test_rosbag_bad_frame_is_dropped(tmp_path):
    from depth_ros.sources.rosbag import RosbagSource, write_test_bag

    frames = _bag_frames(3)
    frames[1].depth = frames[1].depth[:-2]
    source = RosbagSource(write_test_bag(str(tmp_path / 'bag'), frames))
    out = list(source)
    assert [f.stamp_ns for f in out] == [frames[0].stamp_ns, frames[2].stamp_ns]
    assert source.bad_frames == 1


def test_rosbag_errors_and_depth_units(tmp_path):
    from depth_ros.sources.rosbag import depth_to_metres, RosbagSource

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
    assert err.value.permanent
    (tmp_path / 'x' / 'metadata.yaml').write_text('not: a bag')
    with pytest.raises(SourceError, match='cannot open bag .*x: ') as err:
        RosbagSource(str(tmp_path / 'x')).open()
    assert err.value.permanent and '\n' not in str(err.value)
    mm = np.array([[0, 1500], [65535, 250]], np.uint16)
    got = depth_to_metres(mm, '16UC1')
    want = np.array([[np.nan, 1.5], [65.535, 0.25]], np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-6)


# --------------------------------------------------------------------------- zed (pyzed double)

class _Enum(object):
    """Members compare by name, print as the SDK prints them (e.g. 'SUCCESS')."""

    def __init__(self, *names):
        for name in names:
            setattr(self, name, name)


def _fake_sl(sdk=4, frames=3, fail_at=None, open_error=None):
    """
    Build a pyzed.sl stand-in following the documented API (SDK 4.x or 3.x layout).

    The camera serves ``frames`` synthetic frames (image stamp 1e9 + 33.3 ms * i), BGRA images,
    depth = 1 + i metres, confidence = 10; resizes to the requested Resolution like the SDK.
    """
    import types

    sl = types.ModuleType('pyzed.sl')
    sl.ERROR_CODE = _Enum('SUCCESS', 'END_OF_SVOFILE_REACHED', 'CAMERA_NOT_DETECTED',
                          'CAMERA_FAILED_TO_SETUP')
    sl.VIEW = _Enum('LEFT', 'RIGHT')
    sl.MEASURE = _Enum('DEPTH', 'CONFIDENCE')
    sl.MEM = _Enum('CPU', 'GPU')
    sl.UNIT = _Enum('METER', 'MILLIMETER')
    sl.TIME_REFERENCE = _Enum('IMAGE', 'CURRENT')
    sl.RESOLUTION = _Enum('HD2K', 'HD1080', 'HD720', 'VGA')
    sl.DEPTH_MODE = _Enum('NONE', 'PERFORMANCE', 'QUALITY', 'ULTRA', 'NEURAL')
    if sdk == 3:
        sl.SENSING_MODE = _Enum('STANDARD', 'FILL')
    width, height = 64, 36
    state = {'opened': [], 'closed': 0, 'init': None, 'runtime': None}
    sl.state = state

    class Resolution(object):
        def __init__(self, width=0, height=0):
            self.width, self.height = width, height

    class InitParameters(object):
        def __init__(self):
            self.svo = None
            self.serial = None

        def set_from_svo_file(self, path):
            self.svo = path

        def set_from_serial_number(self, serial):
            self.serial = serial

    class RuntimeParameters(object):
        def __init__(self):
            self.confidence_threshold = 95
            self.texture_confidence_threshold = 100
            if sdk == 4:
                self.enable_fill_mode = False
            else:
                self.sensing_mode = sl.SENSING_MODE.STANDARD

    class Mat(object):
        def __init__(self):
            self.data = None

        def get_data(self):
            return self.data

    class Timestamp(object):
        def __init__(self, ns):
            self.ns = ns

        def get_nanoseconds(self):
            return self.ns

    left_cam = types.SimpleNamespace(fx=350.0, fy=351.0, cx=31.5, cy=17.5)
    calib = types.SimpleNamespace(left_cam=left_cam, T=[-0.12, 0.0, 0.0])
    if sdk == 4:
        calib.get_camera_baseline = lambda: 0.12
        info = types.SimpleNamespace(camera_configuration=types.SimpleNamespace(
            calibration_parameters=calib, resolution=Resolution(width, height), fps=30))
    else:
        info = types.SimpleNamespace(calibration_parameters=calib,
                                     camera_resolution=Resolution(width, height))

    class Camera(object):
        def __init__(self):
            self.i = -1

        def open(self, init):
            state['opened'].append(init)
            state['init'] = init
            return open_error or sl.ERROR_CODE.SUCCESS

        def close(self):
            state['closed'] += 1

        def get_camera_information(self):
            return info

        def grab(self, runtime):
            state['runtime'] = runtime
            if fail_at is not None and self.i + 1 == fail_at:
                return sl.ERROR_CODE.CAMERA_NOT_DETECTED
            if self.i + 1 >= frames:
                return sl.ERROR_CODE.END_OF_SVOFILE_REACHED
            self.i += 1
            return sl.ERROR_CODE.SUCCESS

        def set_svo_position(self, pos):
            self.i = pos - 1

        def _size(self, res):
            return (res.width or width, res.height or height)

        def retrieve_image(self, mat, view, mem, res):
            w, h = self._size(res)
            bgra = np.zeros((height, width, 4), np.uint8)
            bgra[:, :, 0] = np.arange(width)[None, :] * 3
            bgra[:, :, 1] = self.i
            bgra[:, :, 3] = 255
            mat.data = cv2.resize(bgra, (w, h), interpolation=cv2.INTER_AREA)

        def retrieve_measure(self, mat, measure, mem, res):
            w, h = self._size(res)
            value = 1.0 + self.i if measure == sl.MEASURE.DEPTH else 10.0
            mat.data = np.full((h, w), value, np.float32)

        def get_timestamp(self, ref):
            return Timestamp(1000000000 + 33333333 * self.i)

    sl.Resolution, sl.InitParameters, sl.RuntimeParameters = Resolution, InitParameters, \
        RuntimeParameters
    sl.Mat, sl.Camera = Mat, Camera
    return sl


@pytest.fixture
def fake_pyzed(monkeypatch):
    import types

    def install(**kwargs):
        sl = _fake_sl(**kwargs)
        package = types.ModuleType('pyzed')
        package.sl = sl
        monkeypatch.setitem(__import__('sys').modules, 'pyzed', package)
        monkeypatch.setitem(__import__('sys').modules, 'pyzed.sl', sl)
        return sl
    return install


@pytest.mark.parametrize('sdk', [3, 4])
def test_zed_source_live_frames_and_parameters(fake_pyzed, sdk):
    from depth_ros.sources.zed import ZedSource

    sl = fake_pyzed(sdk=sdk, frames=2)
    source = ZedSource(resolution='VGA', fps=15, depth_mode='QUALITY', min_depth=0.5,
                       max_depth=12.0, confidence_threshold=80, texture_confidence_threshold=90,
                       fill_mode=True, camera_name='zed2')
    source.open()
    init, runtime = sl.state['init'], None
    assert (init.depth_mode, init.coordinate_units, init.camera_resolution, init.camera_fps) == \
        ('QUALITY', 'METER', 'VGA', 15)
    assert (init.depth_minimum_distance, init.depth_maximum_distance) == (0.5, 12.0)
    frame = source.read()
    runtime = sl.state['runtime']
    assert (runtime.confidence_threshold, runtime.texture_confidence_threshold) == (80, 90)
    if sdk == 4:
        assert runtime.enable_fill_mode is True
    else:
        assert runtime.sensing_mode == 'FILL'
    assert frame.left.shape == (36, 64, 3) and frame.left.dtype == np.uint8
    assert frame.left[0, 5, 0] == 15, 'expected BGRA->BGR keeping blue, received {}'.format(
        frame.left[0, 5])
    assert frame.camera == PinholeCamera(350.0, 351.0, 31.5, 17.5, 64, 36), frame.camera
    assert frame.baseline_m == 0.12
    assert frame.stamp_ns == 1000000000 and frame.frame_id == 'zed2_left_camera_optical_frame'
    assert float(frame.depth[0, 0]) == 1.0 and float(frame.confidence[0, 0]) == 10.0
    assert source.read().stamp_ns == 1033333333
    # The live camera has no end: the SDK reports an error, which is a SourceError to retry.
    with pytest.raises(SourceError) as err:
        source.read()
    assert _msg(err) == 'ZED grab failed: END_OF_SVOFILE_REACHED'
    source.close()
    assert sl.state['closed'] == 1


def test_zed_source_svo_loop_downscale_and_errors(fake_pyzed):
    from depth_ros.sources.zed import ZedSource

    sl = fake_pyzed(frames=2)
    source = make_source('svo', 'rec.svo', loop=True, publish_downscale=0.5)
    assert isinstance(source, ZedSource) and source.loop
    frames = [source.read() for _ in range(5)]
    assert sl.state['init'].svo == 'rec.svo' and sl.state['init'].svo_real_time_mode is False
    stamps = [f.stamp_ns for f in frames]
    want = [1000000000, 1033333333, 1066666666, 1099999999, 1133333332]
    assert stamps == want, 'expected {}, received {}'.format(want, stamps)
    assert [float(f.depth[0, 0]) for f in frames] == [1.0, 2.0, 1.0, 2.0, 1.0]
    assert frames[0].left.shape == (18, 32, 3) and frames[0].depth.shape == (18, 32)
    want_cam = PinholeCamera(350.0, 351.0, 31.5, 17.5, 64, 36).scaled(32, 18)
    assert frames[0].camera == want_cam, 'expected {}, received {}'.format(want_cam,
                                                                           frames[0].camera)
    assert list(ZedSource(svo_path='rec.svo')) != []  # without loop it ends
    assert len(list(ZedSource(svo_path='rec.svo'))) == 2

    fake_pyzed(frames=5, fail_at=1)
    source = ZedSource()
    source.read()
    with pytest.raises(SourceError) as err:
        source.read()
    assert _msg(err) == 'ZED grab failed: CAMERA_NOT_DETECTED'
    fake_pyzed(open_error='CAMERA_NOT_DETECTED')
    with pytest.raises(SourceError) as err:
        ZedSource().open()
    assert _msg(err) == 'cannot open ZED camera: CAMERA_NOT_DETECTED'


def test_zed_source_without_pyzed_and_bad_options(monkeypatch):
    import sys

    from depth_ros.sources.zed import ZedSource

    monkeypatch.setitem(sys.modules, 'pyzed', None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, 'pyzed.sl', None)
    with pytest.raises(ImportError) as err:
        ZedSource().open()
    assert _msg(err).startswith('pyzed not installed: install the ZED SDK'), _msg(err)
    assert _msg(err).endswith('or use source:=sample|folder|bag'), _msg(err)
    for kwargs, message in (
            (dict(depth_mode='FAST'), '`depth_mode` must be one of NONE|PERFORMANCE|QUALITY|'
                                      "ULTRA|NEURAL|NEURAL_PLUS, got 'FAST'"),
            (dict(resolution='4K'), '`resolution` must be one of HD2K|HD1080|HD1200|HD720|'
                                    "SVGA|VGA|AUTO, got '4K'"),
            (dict(publish_downscale=0), '`publish_downscale` must be in (0, 1], got 0'),
            (dict(min_depth=5.0, max_depth=2.0),
             '`max_depth` (2.0) must be larger than `min_depth` (5.0)'),
            (dict(confidence_threshold=0), '`confidence_threshold` must be a number in '
                                           '[1, 100], got 0')):
        with pytest.raises(ValueError) as err:
            ZedSource(**kwargs)
        assert _msg(err) == message, 'expected {!r}, received {!r}'.format(message, _msg(err))
    with pytest.raises(ValueError) as err:
        make_source('live', loop=True)
    assert _msg(err) == 'source `live` takes no replay option(s) loop'
    # For the ZED kinds `fps` is the camera's frame rate, as zed_node passes it.
    live = make_source('live', fps=15, resolution='VGA')
    assert isinstance(live, ZedSource) and live.fps == 15
    svo = make_source('svo', 'a.svo', fps=15, rate=2.0, loop=True)
    assert isinstance(svo, ReplaySource) and svo.rate == 2.0 and svo.fps is None
    assert svo.inner.loop and svo.inner.fps == 15

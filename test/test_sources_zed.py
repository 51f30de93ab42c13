"""
ZedSource end to end against the pyzed double, in each SDK layout.

The double (test/pyzed_double.py) has the layouts of zed-python-api's sl.pyx at v3.8, v4.0,
v4.1 and v5.0.2. Also: the refusals that depend on the installed SDK, and the error contract of
depth_ros/sources/base.py.
"""
from __future__ import annotations

import os
import sys

from depth_ros.core.camera import PinholeCamera
from depth_ros.sources import make_source
from depth_ros.sources.base import FrameError, SourceConfigError, SourceError
from depth_ros.sources.replay import ReplaySource
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pyzed_double as pd  # noqa: E402  (a test helper next to this file, not a package)

LAYOUTS = ('v3.8', 'v4.0', 'v4.1', 'v5.0')
FULL = PinholeCamera(pd.FX, pd.FY, pd.CX, pd.CY, pd.WIDTH, pd.HEIGHT)


def _msg(err) -> str:
    return str(err.value)


@pytest.fixture
def fake_pyzed(monkeypatch):
    import types

    def install(layout='v4.0', **kwargs):
        sl = pd.make_sl(layout, **kwargs)
        package = types.ModuleType('pyzed')
        package.sl = sl
        monkeypatch.setitem(sys.modules, 'pyzed', package)
        monkeypatch.setitem(sys.modules, 'pyzed.sl', sl)
        return sl
    return install


@pytest.fixture
def zed_log():
    """
    Collect the messages that depth_ros.sources.zed logs.

    launch's logger class stops propagation, so caplog sees nothing once launch_pytest loads.
    """
    import logging

    messages = []

    class Handler(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())
    logger = logging.getLogger('depth_ros.sources.zed')
    handler = Handler(logging.DEBUG)
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)


@pytest.fixture
def svo(tmp_path):
    path = tmp_path / 'rec.svo2'
    path.write_bytes(b'not read by the double')
    return str(path)


# --------------------------------------------------------------------------- the double itself

def test_double_has_each_tags_layout_and_nothing_more():
    old, new = pd.make_sl('v3.8'), pd.make_sl('v4.0')
    info_old = old.Camera()
    info_old.open(old.InitParameters())
    info_old = info_old.get_camera_information()
    cam = new.Camera()
    cam.open(new.InitParameters())
    info_new = cam.get_camera_information()
    # 3.8: size and rate as camera_resolution / camera_fps, also on CameraInformation itself.
    assert info_old.camera_configuration.camera_resolution.width == pd.WIDTH
    assert info_old.calibration_parameters.T[0] == -pd.BASELINE_M * 1000.0  # default mm
    for obj, name in ((info_old.camera_configuration, 'resolution'),
                      (info_old.camera_configuration, 'fps'),
                      (info_new.camera_configuration, 'camera_resolution'),
                      (info_new.camera_configuration, 'camera_fps'),
                      (info_new, 'calibration_parameters'), (info_new, 'camera_resolution'),
                      (info_new.camera_configuration.calibration_parameters, 'T'),
                      (old.RuntimeParameters(), 'enable_fill_mode'),
                      (new.RuntimeParameters(), 'sensing_mode')):
        assert not hasattr(obj, name), '{} must not have {}'.format(type(obj).__name__, name)
    assert not hasattr(new, 'SENSING_MODE') and hasattr(old, 'SENSING_MODE')
    names = {t: [m.name for m in pd.make_sl(t).RESOLUTION] for t in LAYOUTS}
    assert names['v3.8'] == ['HD2K', 'HD1080', 'HD720', 'VGA', 'LAST'], names['v3.8']
    assert {'HD1200', 'SVGA', 'AUTO'} <= set(names['v4.0'])
    modes = {t: hasattr(pd.make_sl(t).DEPTH_MODE, 'NEURAL_PLUS') for t in LAYOUTS}
    assert modes == {'v3.8': False, 'v4.0': False, 'v4.1': True, 'v5.0': True}, modes
    assert all(hasattr(pd.make_sl(t).DEPTH_MODE, 'NEURAL') for t in LAYOUTS)
    # cdef classes: no new attributes, read-only containers, typed enum setters.
    init = new.InitParameters()
    with pytest.raises(AttributeError):
        init.camera_resolutions = new.RESOLUTION.HD720
    with pytest.raises(AttributeError):
        info_new.camera_configuration.fps = 15.0
    with pytest.raises(TypeError) as err:
        init.depth_mode = 'QUALITY'
    assert _msg(err) == 'Argument must be of DEPTH_MODE type.'
    assert init.coordinate_units == new.UNIT.MILLIMETER, 'the SDK default is millimetres'
    assert new.Camera.get_sdk_version() == '4.0.8'


def _scene_frames(n=3, width=72, height=40, seed=3):
    """Frames of a custom size (not the double's 64x36): BGR, depth in metres, confidence."""
    rng = np.random.RandomState(seed)
    bgr = rng.randint(0, 256, (n, height, width, 3)).astype(np.uint8)
    depth = rng.uniform(0.2, 30.0, (n, height, width)).astype(np.float32)
    depth[:, 0, :5] = np.nan                 # the SDK's no-match
    conf = rng.uniform(1.0, 100.0, (n, height, width)).astype(np.float32)
    return bgr, depth, conf


def _sdk_depth(depth, conf, scale, min_depth, max_depth, threshold):
    """Return what the SDK gives for a depth in metres, written apart from the double."""
    want = (depth * np.float32(scale)).astype(np.float32)
    with np.errstate(invalid='ignore'):
        want[depth < min_depth] = -np.inf
        want[depth > max_depth] = np.inf
        want[conf > threshold] = np.nan
    return want


def test_live_camera_of_a_given_size_serves_the_given_frames_as_the_sdk_does():
    import time
    bgr, depth, conf = _scene_frames()
    scene = pd.Scene.from_bgr(zip(bgr, depth, conf), (500.0, 501.0, 35.5, 19.5),
                              baseline_m=0.063)
    sl = pd.make_sl('v4.1', scene=scene)
    zed = sl.Camera()
    init = sl.InitParameters()          # millimetres, the SDK's default
    init.camera_fps = 25
    init.depth_minimum_distance, init.depth_maximum_distance = 0.5, 20.0
    assert zed.open(init) == sl.ERROR_CODE.SUCCESS
    config = zed.get_camera_information().camera_configuration
    calib = config.calibration_parameters
    assert (config.resolution.width, config.resolution.height, config.fps) == (72, 40, 25.0)
    assert (calib.left_cam.fx, calib.left_cam.fy, calib.left_cam.cx, calib.left_cam.cy) == \
        (500.0, 501.0, 35.5, 19.5)
    assert calib.get_camera_baseline() == pytest.approx(63.0)   # in the coordinate units
    runtime = sl.RuntimeParameters()
    runtime.confidence_threshold = 70
    full, period_ns = sl.Resolution(0, 0), 40000000
    image, measure = sl.Mat(), sl.Mat()
    start = time.monotonic()
    assert zed.grab(runtime) == sl.ERROR_CODE.SUCCESS   # frame 0, captured at open
    stamp0 = zed.get_timestamp(sl.TIME_REFERENCE.IMAGE).get_nanoseconds()
    assert abs(stamp0 - time.time_ns()) < 5e8, 'a live stamp is the wall clock\'s'
    zed.retrieve_image(image, sl.VIEW.LEFT, sl.MEM.CPU, full)
    zed.retrieve_measure(measure, sl.MEASURE.DEPTH, sl.MEM.CPU, full)
    view, kept = measure.get_data(), measure.get_data(deep_copy=True)
    np.testing.assert_array_equal(image.get_data()[..., :3], bgr[0])
    assert image.get_data().shape == (40, 72, 4) and (image.get_data()[..., 3] == 255).all()
    want0 = _sdk_depth(depth[0], conf[0], 1000.0, 0.5, 20.0, 70)
    np.testing.assert_array_equal(view, want0)
    assert np.isneginf(view).any() and np.isposinf(view).any() and np.isnan(view).any()
    # The next frame: grab waits for the camera (25 fps); the retrieve overwrites the buffer
    # that the earlier view shows, not the deep copy.
    assert zed.grab(runtime) == sl.ERROR_CODE.SUCCESS
    assert time.monotonic() - start >= 0.039, 'grab did not wait for the next frame'
    assert zed.get_timestamp(sl.TIME_REFERENCE.IMAGE).get_nanoseconds() == stamp0 + period_ns
    zed.retrieve_measure(measure, sl.MEASURE.DEPTH, sl.MEM.CPU, full)
    np.testing.assert_array_equal(view, _sdk_depth(depth[1], conf[1], 1000.0, 0.5, 20.0, 70))
    np.testing.assert_array_equal(kept, want0)
    zed.retrieve_measure(measure, sl.MEASURE.CONFIDENCE, sl.MEM.CPU, full)
    np.testing.assert_array_equal(measure.get_data(), conf[1])
    # A caller slower than the camera gets the newest frame: those in between are dropped,
    # and frames loop (3 of them) for ever.
    time.sleep(0.15)
    assert zed.grab(runtime) == sl.ERROR_CODE.SUCCESS
    k = (zed.get_timestamp(sl.TIME_REFERENCE.IMAGE).get_nanoseconds() - stamp0) // period_ns
    assert k >= 4, 'expected a frame captured after the sleep, received frame {}'.format(k)
    zed.retrieve_image(image, sl.VIEW.LEFT, sl.MEM.CPU, full)
    np.testing.assert_array_equal(image.get_data()[..., :3], bgr[k % 3])
    half = sl.Resolution(36, 20)
    zed.retrieve_measure(measure, sl.MEASURE.CONFIDENCE, sl.MEM.CPU, half)
    assert measure.get_data().shape == (20, 36)
    assert zed.retrieve_image(image, sl.VIEW.LEFT, sl.MEM.CPU, sl.Resolution(80, 40)) == \
        sl.ERROR_CODE.INVALID_RESOLUTION
    # Not paced: every grab is the next frame at once.
    fast = pd.make_sl('v4.0', scene=pd.Scene(scene.images, scene.depths, scene.confidences,
                                             scene.camera, paced=False))
    cam = fast.Camera()
    cam.open(fast.InitParameters())
    stamps = []
    for _ in range(4):
        assert cam.grab(fast.RuntimeParameters()) == fast.ERROR_CODE.SUCCESS
        stamps.append(cam.get_timestamp(fast.TIME_REFERENCE.IMAGE).get_nanoseconds())
    fps = pd.DEFAULT_FPS['HD720']   # camera_fps 0: the resolution's rate, 60
    assert [s - stamps[0] for s in stamps] == [round(k * 1e9 / fps) for k in range(4)], stamps


def test_zed_source_reads_the_live_cameras_frames_back(fake_pyzed, tmp_path):
    # zed_node's live path (depth_ros.sources.zed) on a camera of a given size: the frames
    # it returns are the frames given (BGRA -> BGR, depth in metres with the SDK's rules,
    # confidence), paced by the SDK's grab, stamped with the capture time.
    import time
    from depth_ros.sources.zed import ZedSource
    bgr, depth, conf = _scene_frames()
    scene = pd.Scene.from_bgr(zip(bgr, depth, conf), (500.0, 501.0, 35.5, 19.5),
                              baseline_m=0.063)
    path = scene.save(str(tmp_path / 'scene.npz'))     # as bench_composed hands it over
    sl = fake_pyzed('v4.1', scene=pd.Scene.load(path))
    source = make_source('live', None, fps=50, min_depth=0.5, max_depth=20.0,
                         confidence_threshold=95)
    assert isinstance(source, ZedSource)
    start = time.monotonic()
    frames = [source.read() for _ in range(5)]
    assert time.monotonic() - start >= 0.079, 'five frames at 50 fps take four periods'
    assert sl.double.opens[-1]['camera_fps'] == 50
    stamps = [f.stamp_ns for f in frames]
    steps = np.diff(stamps)
    assert (steps > 0).all() and (steps % 20000000 == 0).all(), stamps
    for f in frames:
        k = (f.stamp_ns - stamps[0]) // 20000000
        np.testing.assert_array_equal(f.left, bgr[k % 3])
        np.testing.assert_array_equal(f.depth, _sdk_depth(depth[k % 3], conf[k % 3], 1.0, 0.5,
                                                          20.0, 95))
        np.testing.assert_array_equal(f.confidence, conf[k % 3])
        assert f.camera == PinholeCamera(500.0, 501.0, 35.5, 19.5, 72, 40), f.camera
        assert f.baseline_m == pytest.approx(0.063)
    # Copies: later retrieves did not change the first frame.
    np.testing.assert_array_equal(frames[0].left, bgr[0])
    source.close()


# --------------------------------------------------------------------------- end to end

def _expected_depth(i, min_depth, max_depth, threshold):
    depth = pd.true_depth(i)
    want = depth.copy()
    want[depth < min_depth] = -np.inf
    want[depth > max_depth] = np.inf
    want[pd.true_confidence() > threshold] = np.nan
    return want


@pytest.mark.parametrize('layout', LAYOUTS)
def test_live_frames_parameters_intrinsics_stamps_depth_units(fake_pyzed, layout):
    from depth_ros.sources.zed import ZedSource

    sl = fake_pyzed(layout, frames=2)
    source = ZedSource(resolution='VGA', fps=15, depth_mode='QUALITY', min_depth=0.5,
                       max_depth=12.0, confidence_threshold=80, texture_confidence_threshold=90,
                       fill_mode=True, camera_name='zed2')
    source.open()
    init = sl.double.opens[-1]
    got = (init['depth_mode'].name, init['coordinate_units'].name, init['camera_resolution'].name,
           init['camera_fps'], init['depth_minimum_distance'], init['depth_maximum_distance'])
    assert got == ('QUALITY', 'METER', 'VGA', 15, 0.5, 12.0), got
    assert source.sdk_version == pd.LAYOUTS[layout]['sdk']
    first = source.read()
    runtime = sl.double.runtime
    assert (runtime['confidence_threshold'], runtime['texture_confidence_threshold'],
            runtime['enable_depth']) == (80, 90, True), runtime
    if layout == 'v3.8':
        assert runtime['sensing_mode'] == sl.SENSING_MODE.FILL, runtime
    else:
        assert runtime['enable_fill_mode'] is True, runtime
    assert first.left.shape == (36, 64, 3) and first.left.dtype == np.uint8
    assert tuple(first.left[7, 5]) == (15, 0, 7), \
        'expected BGRA->BGR (B=3x, G=frame, R=y), received {}'.format(first.left[7, 5])
    assert first.camera == FULL, 'expected {}, received {}'.format(FULL, first.camera)
    assert first.baseline_m == pytest.approx(pd.BASELINE_M), 'expected metres, received {}'.format(
        first.baseline_m)
    assert first.stamp_ns == pd.STAMP0_NS and first.frame_id == 'zed2_left_camera_optical_frame'
    # Depth in metres with the SDK's -inf / +inf / NaN, independent of the double's code path.
    want = _expected_depth(0, 0.5, 12.0, 80)
    np.testing.assert_array_equal(first.depth, want)
    assert first.depth.dtype == np.float32
    assert np.isneginf(first.depth).any() and np.isposinf(first.depth).any() \
        and np.isnan(first.depth).any(), 'the scene must exercise all three invalid kinds'
    np.testing.assert_array_equal(first.confidence, pd.true_confidence())
    second = source.read()
    assert second.stamp_ns == pd.STAMP0_NS + pd.PERIOD_NS
    np.testing.assert_array_equal(second.depth, _expected_depth(1, 0.5, 12.0, 80))
    # Frames are copies: the SDK's buffers were overwritten by the second frame.
    np.testing.assert_array_equal(first.depth, want)
    assert first.left[0, 0, 1] == 0 and second.left[0, 0, 1] == 1
    # The live camera has no end: an SDK error is a SourceError, to retry.
    with pytest.raises(SourceError) as err:
        source.read()
    assert _msg(err) == 'ZED grab failed: END_OF_SVOFILE_REACHED'
    source.close()
    source.close()
    assert sl.double.closes == 1


@pytest.mark.parametrize('layout', LAYOUTS)
def test_svo_loop_downscale(fake_pyzed, svo, layout):
    from depth_ros.sources.zed import ZedSource

    sl = fake_pyzed(layout, frames=2)
    source = make_source('svo', svo, loop=True, publish_downscale=0.5)
    assert isinstance(source, ZedSource) and source.loop
    frames = [source.read() for _ in range(5)]
    init = sl.double.opens[-1]
    assert init['_input'] == ('svo', svo) and init['svo_real_time_mode'] is False
    assert init['camera_resolution'].name == pd.LAYOUTS[layout]['default_resolution'], \
        'an SVO keeps its recorded resolution'
    stamps = [f.stamp_ns for f in frames]
    want = [1000000000, 1033333333, 1066666666, 1099999999, 1133333332]
    assert stamps == want, 'expected {}, received {}'.format(want, stamps)
    assert [float(f.depth[0, 20]) for f in frames] == [10.25, 10.75, 10.25, 10.75, 10.25]
    assert frames[0].left.shape == (18, 32, 3) and frames[0].depth.shape == (18, 32)
    assert frames[0].confidence.shape == (18, 32)
    want_cam = FULL.scaled(32, 18)
    assert frames[0].camera == want_cam, 'expected {}, received {}'.format(want_cam,
                                                                           frames[0].camera)
    assert len(list(ZedSource(svo_path=svo))) == 2  # without loop it ends


def test_depth_mode_none_gives_images_only(fake_pyzed):
    from depth_ros.sources.zed import ZedSource

    sl = fake_pyzed('v3.8', frames=1)
    frame = ZedSource(depth_mode='NONE').read()
    assert frame.depth is None and frame.confidence is None and frame.left.shape == (36, 64, 3)
    assert sl.double.runtime['enable_depth'] is False


@pytest.mark.parametrize('layout', LAYOUTS)
def test_image_first_the_frame_comes_before_its_stereo_is_retrieved(
        fake_pyzed, layout, monkeypatch):
    # zed_node's read (read_image_first): the image and its stamp, camera and baseline, and
    # no depth retrieve yet; the completion then retrieves the same planes read() gives, and
    # a thread waiting for them (alignment_node composed) wakes with them.
    import threading
    from depth_ros.sources.zed import ZedSource

    sl = fake_pyzed(layout, frames=2)
    measures = []
    retrieve = sl.Camera.retrieve_measure

    def counted(camera, *args, **kwargs):
        measures.append(args[1])    # (mat, measure, memory, resolution)
        return retrieve(camera, *args, **kwargs)
    monkeypatch.setattr(sl.Camera, 'retrieve_measure', counted)
    source = ZedSource(min_depth=0.5, max_depth=12.0, confidence_threshold=80)
    frame = source.read_image_first()
    assert frame.depth is None and frame.confidence is None and measures == []
    assert frame.pending is not None and not frame.pending.done
    # Its retrieve keeps the GIL before 5.0.2 (zed_node then retrieves after the network began).
    assert frame.pending.keeps_gil == (layout != 'v5.0'), (layout, source.sdk_version)
    assert tuple(frame.left[7, 5]) == (15, 0, 7) and frame.camera == FULL
    assert frame.stamp_ns == pd.STAMP0_NS and frame.baseline_m == pytest.approx(pd.BASELINE_M)
    woke = []
    waiter = threading.Thread(target=lambda: woke.append(
        (frame.wait_stereo(5.0), frame.depth is not None)))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive(), 'the waiter must wait for the completion'
    frame.pending.complete(frame)
    waiter.join(5.0)
    assert woke == [(None, True)] and frame.pending.done
    assert [m.name for m in measures] == ['DEPTH', 'CONFIDENCE']
    np.testing.assert_array_equal(frame.depth, _expected_depth(0, 0.5, 12.0, 80))
    np.testing.assert_array_equal(frame.confidence, pd.true_confidence())
    assert frame.depth.dtype == np.float32 and frame.confidence.dtype == np.float32
    with pytest.raises(RuntimeError, match='completed already'):
        frame.pending.complete(frame)
    # read() is read_image_first completed: the whole frame, nothing pending.
    second = source.read()
    assert second.pending is None and second.stamp_ns == pd.STAMP0_NS + pd.PERIOD_NS
    np.testing.assert_array_equal(second.depth, _expected_depth(1, 0.5, 12.0, 80))
    # The first frame's planes are copies: the second grab did not change them.
    np.testing.assert_array_equal(frame.depth, _expected_depth(0, 0.5, 12.0, 80))
    source.close()


def test_image_first_a_failed_stereo_retrieve_reaches_the_reader_and_the_waiters(fake_pyzed):
    from depth_ros.sources.base import StereoPending
    from depth_ros.sources.zed import ZedSource

    fake_pyzed('v4.1', frames=2, fail={'retrieve_measure': RuntimeError('CUDA error 700\nx')})
    frame = ZedSource().read_image_first()      # the image came
    assert frame.left.shape == (36, 64, 3) and frame.depth is None
    with pytest.raises(SourceError) as err:
        frame.pending.complete(frame)
    assert type(err.value) is SourceError
    assert _msg(err) == 'ZED grab failed: RuntimeError: CUDA error 700'
    with pytest.raises(ValueError) as err:
        frame.wait_stereo(0.0)
    assert _msg(err) == ('the frame\'s stereo depth could not be retrieved: SourceError: ZED '
                         'grab failed: RuntimeError: CUDA error 700')
    with pytest.raises(SourceError):       # read() raises as it did before image first
        ZedSource().read()
    # A retrieve that never ends (a stuck grab thread): the waiter gives up, saying so.
    stuck = StereoPending(lambda: (None, None))
    with pytest.raises(ValueError) as err:
        stuck.wait(0.05)
    assert _msg(err) == 'the frame\'s stereo depth did not come within 0.05 s of its image'
    # Without stereo (depth_mode NONE) nothing is pending.
    fake_pyzed('v4.1', frames=1)
    frame = ZedSource(depth_mode='NONE').read_image_first()
    assert frame.pending is None and frame.depth is None
    frame.wait_stereo(0.0)


def test_replay_reads_image_first_only_where_the_inner_source_can(fake_pyzed, svo):
    from depth_ros.sources.base import Frame, FrameSource
    from depth_ros.sources.zed import ZedSource

    fake_pyzed('v4.1', frames=2)
    replay = ReplaySource(ZedSource(svo_path=svo), fps=1000.0)
    frame = replay.read_image_first()
    assert frame.pending is not None and frame.depth is None
    frame.pending.complete(frame)
    np.testing.assert_array_equal(frame.confidence, pd.true_confidence())
    whole = replay.read()
    assert whole.pending is None and whole.depth is not None
    assert whole.stamp_ns > frame.stamp_ns

    class Plain(FrameSource):
        name = 'plain'

        def __init__(self, error=None):
            self.error = error

        def read(self):
            if self.error:
                raise self.error
            return Frame(left=np.zeros((2, 2, 3), np.uint8), depth=np.ones((2, 2), np.float32),
                         confidence=None, camera=FULL, stamp_ns=1)
    assert ReplaySource(Plain(), fps=1000.0).read_image_first().pending is None
    with pytest.raises(SourceError) as err:
        ReplaySource(Plain(KeyError('k')), fps=1000.0).read_image_first()
    assert _msg(err) == "plain read() failed: KeyError: 'k'"


class _Probe(object):
    """A thread that ticks every millisecond (time.sleep: the GIL released between ticks)."""

    def __init__(self):
        import threading
        self.ticks, self._stop = 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        import time
        while not self._stop.is_set():
            self.ticks += 1
            time.sleep(0.001)

    def stop(self):
        self._stop.set()
        self.thread.join(5.0)


@pytest.mark.parametrize('layout,keeps', [('v4.1', True), ('v5.0', False)])
def test_the_double_keeps_the_gil_in_grab_as_pyzed_before_5_0_2(layout, keeps):
    # zed-python-api's sl.pyx calls grab and the retrieves inside ``with nogil:`` from v5.0.2
    # on; before, no other Python thread runs while a live camera's grab waits for its frame.
    import time
    bgr, depth, conf = _scene_frames()
    sl = pd.make_sl(layout, scene=pd.Scene.from_bgr(zip(bgr, depth, conf),
                                                    (500.0, 501.0, 35.5, 19.5)))
    zed = sl.Camera()
    init = sl.InitParameters()
    init.camera_fps = 10
    zed.open(init)
    runtime = sl.RuntimeParameters()
    zed.grab(runtime)                       # frame 0, at once
    probe = _Probe()
    try:
        time.sleep(0.01)
        before, start = probe.ticks, time.monotonic()
        zed.grab(runtime)                   # waits ~90 ms for frame 1
        waited, ticks = time.monotonic() - start, probe.ticks - before
    finally:
        probe.stop()
    assert waited >= 0.05, waited
    if keeps:
        assert ticks <= 2, 'the probe ran {} times during a GIL-keeping grab'.format(ticks)
    else:
        # At most 1 a ms; a loaded machine wakes a sleeper late, so half that rate at most
        # is asked (the GIL kept gives 2 or fewer).
        assert ticks >= 10, 'the probe ran only {} times during {:.0f} ms'.format(
            ticks, waited * 1e3)


@pytest.mark.parametrize('layout,keeps', [('v4.1', True), ('v5.0', False)])
def test_the_doubles_work_in_grab_keeps_the_gil_as_its_wait(layout, keeps):
    # grab_work_s: the SDK's own work on a frame inside grab() (rectification, depth), after
    # the frame came; kept under the GIL where the layout keeps it.
    import time
    bgr, depth, conf = _scene_frames()
    scene = pd.Scene.from_bgr(zip(bgr, depth, conf), (500.0, 501.0, 35.5, 19.5), paced=False)
    sl = pd.make_sl(layout, scene=scene, grab_work_s=0.06)
    zed = sl.Camera()
    zed.open(sl.InitParameters())
    probe = _Probe()
    try:
        time.sleep(0.01)
        before, start = probe.ticks, time.monotonic()
        assert zed.grab(sl.RuntimeParameters()) == sl.ERROR_CODE.SUCCESS
        took, ticks = time.monotonic() - start, probe.ticks - before
    finally:
        probe.stop()
    assert took >= 0.06, took
    assert (ticks <= 2) if keeps else (ticks >= 10), ticks


def test_which_sdk_versions_release_the_gil():
    from depth_ros.sources.zed import releases_gil
    for version, want in (('3.8.2', False), ('4.0.8', False), ('4.1.4', False),
                          ('4.2.5', False), ('5.0.1', False), ('5.0.2', True), ('5.0.7', True),
                          ('5.1.0', True), ('6.0', True), ('unknown', False), ('5', False)):
        assert releases_gil(version) is want, version
    for layout in LAYOUTS:
        assert releases_gil(pd.LAYOUTS[layout]['sdk']) is pd.LAYOUTS[layout]['releases_gil']


def test_grab_pacer_times_grabs_to_the_camera_stamps():
    from depth_ros.sources.zed import GrabPacer
    now = [10 ** 12]
    slept = []

    def sleep(s):
        slept.append(round(s, 6))
        now[0] += int(round(s * 1e9))
    pacer = GrabPacer(25.0, lead_s=0.003, wall_ns=lambda: now[0], sleep=sleep)
    assert pacer.wait() == 0.0 and slept == [], 'no stamp yet: no wait'
    stamp = now[0] - 2000000                  # captured 2 ms ago
    pacer.grabbed(stamp)
    pacer.wait()                              # until 3 ms before stamp + 40 ms
    assert slept == [0.035] and now[0] == stamp + 37000000
    now[0] += 50000000                        # the caller was late: no wait, whatever it was
    pacer.wait()
    assert slept == [0.035] and pacer.paced == 1
    pacer.grabbed(now[0] - 60000000)          # the newest frame, from a camera stamp earlier
    assert pacer.wait() == 0.0
    pacer.grabbed(now[0] - 5 * 10 ** 9)       # stamps on another clock (5 s old): off
    assert pacer.wait() == 0.0
    pacer.grabbed(now[0] + 10 ** 9)           # a second ahead: off too
    assert pacer.wait() == 0.0 and slept == [0.035]
    pacer.grabbed(now[0] + 30000000)          # up to a period ahead is taken; at most a period
    assert pacer.wait() == pytest.approx(0.04) and slept[-1] == 0.04
    with pytest.raises(ValueError, match='frame rate > 0, got 0'):
        GrabPacer(0)


@pytest.mark.parametrize('layout', ['v4.1', 'v5.0'])
def test_a_live_camera_whose_pyzed_keeps_the_gil_is_grabbed_in_time_with_its_frames(
        fake_pyzed, layout, zed_log):
    # With pyzed before 5.0.2 zed_node's grab thread sleeps (the GIL released) until just
    # before the camera's next frame: another thread of the process runs for most of each
    # period, where an unpaced grab let it run hardly at all. 5.0.2+ is not paced (its grab
    # releases the GIL). Frames and stamps are the same either way.
    import logging
    import time
    from depth_ros.sources import zed as zed_module
    bgr, depth, conf = _scene_frames()
    logger = logging.getLogger('depth_ros.sources.zed')
    level = logger.level
    logger.setLevel(logging.INFO)       # the start-up line is an info

    def run(pace):
        fake_pyzed(layout, scene=pd.Scene.from_bgr(zip(bgr, depth, conf),
                                                   (500.0, 501.0, 35.5, 19.5)))
        source = make_source('live', None, fps=20)
        source.open()
        if not pace:
            source.pacer = None
        source.read()
        probe = _Probe()
        try:
            time.sleep(0.005)
            before, start = probe.ticks, time.monotonic()
            frames = [source.read() for _ in range(6)]
            elapsed, ticks = time.monotonic() - start, probe.ticks - before
        finally:
            probe.stop()
        values = source.status_values()
        source.close()
        steps = np.diff([f.stamp_ns for f in frames])
        assert (steps == 50000000).all(), steps
        return ticks / (elapsed * 1e3), values

    try:
        paced, values = run(True)
    finally:
        logger.setLevel(level)
    keeps = layout == 'v4.1'
    assert values['pyzed_keeps_gil'] is keeps and values['grab_paced'] is keeps, values
    assert values['zed_sdk'] == pd.LAYOUTS[layout]['sdk']
    assert values['retrieve_ms_mean'] < 20, values
    if keeps:
        assert any('keeps the GIL in grab()' in m for m in zed_log), zed_log
        assert values['grabs_timed'] >= 5, values
        assert values['grab_ms_mean'] < 20, 'a paced grab waits ~3 ms: {}'.format(values)
        unpaced, values = run(False)
        assert values['grab_ms_mean'] > 35, values
        assert paced > 0.25 and unpaced < 0.15 and paced > 4 * unpaced, \
            'probe ticks per ms: paced {:.2f}, unpaced {:.2f}'.format(paced, unpaced)
    else:
        assert values['grab_ms_mean'] > 35, 'an unpaced grab waits for the frame'
        assert paced > 0.25, paced
    assert isinstance(zed_module.GRAB_LEAD_S, float)


# --------------------------------------------------------------------------- refusals

@pytest.mark.parametrize('layout,kwargs,message', [
    ('v3.8', dict(resolution='HD1200'),
     '`resolution` HD1200 is not available in ZED SDK 3.8.2 (it came with SDK 4.0); choose one '
     'of HD2K|HD1080|HD720|VGA'),
    ('v3.8', dict(resolution='SVGA'),
     '`resolution` SVGA is not available in ZED SDK 3.8.2 (it came with SDK 4.0); choose one '
     'of HD2K|HD1080|HD720|VGA'),
    ('v3.8', dict(resolution='AUTO'),
     '`resolution` AUTO is not available in ZED SDK 3.8.2 (it came with SDK 4.0); choose one '
     'of HD2K|HD1080|HD720|VGA'),
    ('v3.8', dict(depth_mode='NEURAL_PLUS'),
     '`depth_mode` NEURAL_PLUS is not available in ZED SDK 3.8.2 (it came with SDK 4.1); '
     'choose one of NONE|PERFORMANCE|QUALITY|ULTRA|NEURAL'),
    ('v4.0', dict(depth_mode='NEURAL_PLUS'),
     '`depth_mode` NEURAL_PLUS is not available in ZED SDK 4.0.8 (it came with SDK 4.1); '
     'choose one of NONE|PERFORMANCE|QUALITY|ULTRA|NEURAL'),
])
def test_values_the_installed_sdk_lacks_are_refused_at_open(fake_pyzed, layout, kwargs,
                                                            message):
    from depth_ros.sources.zed import ZedSource

    sl = fake_pyzed(layout)
    source = ZedSource(**kwargs)
    for call in (source.check_sdk, source.open, source.read):
        with pytest.raises(SourceConfigError) as err:
            call()
        assert _msg(err) == message, 'expected {!r}, received {!r}'.format(message, _msg(err))
    assert isinstance(err.value, ValueError), 'a config error is a ValueError too'
    assert sl.double.opens == [], 'nothing may be opened with a refused value'


@pytest.mark.parametrize('layout', ('v4.1', 'v5.0'))
def test_newer_sdks_take_the_newer_values(fake_pyzed, layout):
    from depth_ros.sources.zed import ZedSource

    sl = fake_pyzed(layout, frames=1)
    frame = ZedSource(resolution='HD1200', depth_mode='NEURAL_PLUS').read()
    init = sl.double.opens[-1]
    assert (init['camera_resolution'].name, init['depth_mode'].name) == ('HD1200', 'NEURAL_PLUS')
    assert frame.camera == FULL


def test_an_svo_is_not_refused_for_the_resolution_it_was_recorded_at(fake_pyzed, svo):
    from depth_ros.sources.zed import ZedSource

    fake_pyzed('v3.8', frames=1)
    assert ZedSource(svo_path=svo, resolution='HD1200').read() is not None


# --------------------------------------------------------------------------- error contract

@pytest.mark.parametrize('layout', LAYOUTS)
def test_grab_failures_surface_as_one_line_source_errors(fake_pyzed, layout):
    from depth_ros.sources.zed import ZedSource

    fake_pyzed(layout, frames=5, grab_codes={1: 'CAMERA_NOT_DETECTED'})
    source = ZedSource()
    source.read()
    with pytest.raises(SourceError) as err:
        source.read()
    assert type(err.value) is SourceError and _msg(err) == 'ZED grab failed: CAMERA_NOT_DETECTED'
    assert source.read().stamp_ns == pd.STAMP0_NS + pd.PERIOD_NS, 'the next grab goes on'
    for method, exc, want in (
            ('retrieve_measure', RuntimeError('CUDA error 700\n  at line 2'),
             'ZED grab failed: RuntimeError: CUDA error 700'),
            ('grab', AttributeError("'CameraConfiguration' object has no attribute 'x'"),
             "ZED grab failed: AttributeError: 'CameraConfiguration' object has no attribute "
             "'x'"),
            ('get_camera_information', KeyError('fx'),
             "ZED camera opened, but reading its configuration failed (ZED SDK {}): KeyError: "
             "'fx'".format(pd.LAYOUTS[layout]['sdk'])),
            ('open', OSError('no /dev/video0'),
             'cannot open ZED camera: OSError: no /dev/video0')):
        fake_pyzed(layout, fail={method: exc})
        with pytest.raises(SourceError) as err:
            ZedSource().read()
        assert _msg(err) == want, 'expected {!r}, received {!r}'.format(want, _msg(err))
        assert '\n' not in _msg(err)


@pytest.mark.parametrize('code,kind,message', [
    ('CAMERA_NOT_DETECTED', SourceError, 'cannot open ZED camera: CAMERA_NOT_DETECTED'),
    ('CAMERA_REBOOTING', SourceError, 'cannot open ZED camera: CAMERA_REBOOTING'),
    ('CORRUPTED_SDK_INSTALLATION', SourceConfigError,
     'cannot open ZED camera: CORRUPTED_SDK_INSTALLATION (ZED SDK 4.0.8)'),
])
def test_open_codes_are_sorted_by_whether_a_retry_can_help(fake_pyzed, code, kind, message):
    from depth_ros.sources.zed import ZedSource

    fake_pyzed('v4.0', open_code=code)
    with pytest.raises(SourceError) as err:
        ZedSource().open()
    assert type(err.value) is kind, 'expected {}, received {!r}'.format(kind.__name__, err.value)
    assert _msg(err) == message, 'expected {!r}, received {!r}'.format(message, _msg(err))


def test_invalid_svo_file_is_a_config_error(fake_pyzed, svo):
    from depth_ros.sources.zed import ZedSource

    fake_pyzed('v3.8', open_code='INVALID_SVO_FILE')
    with pytest.raises(SourceConfigError) as err:
        ZedSource(svo_path=svo).open()
    assert _msg(err) == 'cannot open SVO {}: INVALID_SVO_FILE (ZED SDK 3.8.2)'.format(svo)


def test_sdk5_warnings_keep_frames_and_a_corrupted_frame_is_a_frame_error(fake_pyzed, zed_log):
    from depth_ros.sources.zed import ZedSource

    fake_pyzed('v5.0', frames=3, open_code='CONFIGURATION_FALLBACK',
               grab_codes={1: 'CORRUPTED_FRAME'})
    source = ZedSource()
    assert source.read().stamp_ns == pd.STAMP0_NS
    assert 'ZED camera opened with SDK warning CONFIGURATION_FALLBACK' in zed_log, zed_log
    with pytest.raises(FrameError) as err:
        source.read()
    assert _msg(err) == 'ZED grab: CORRUPTED_FRAME (frame dropped)'
    assert source.read().stamp_ns == pd.STAMP0_NS + pd.PERIOD_NS, 'no reopen needed'


def test_missing_svo_path_is_one_line_naming_path(tmp_path, fake_pyzed):
    fake_pyzed('v4.0')
    missing = str(tmp_path / 'nope.svo2')
    with pytest.raises(SourceConfigError) as err:
        make_source('svo', missing)
    assert _msg(err) == "source `svo`: `path` {!r} does not exist".format(missing)
    with pytest.raises(SourceConfigError) as err:
        make_source('svo', str(tmp_path))
    assert _msg(err) == "source `svo`: `path` {!r} is not a file".format(str(tmp_path))


def test_without_pyzed_and_bad_options(monkeypatch, svo):
    from depth_ros.sources.zed import ZedSource

    monkeypatch.setitem(sys.modules, 'pyzed', None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, 'pyzed.sl', None)
    with pytest.raises(ImportError) as err:
        ZedSource().open()
    assert _msg(err).startswith('pyzed not installed: install the ZED SDK'), _msg(err)
    assert _msg(err).endswith('or use source:=sample|folder|bag'), _msg(err)
    with pytest.raises(SourceConfigError) as err:
        ZedSource().read()  # the grab path raises only SourceErrors
    assert _msg(err).startswith('pyzed not installed'), _msg(err)
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
    source = make_source('svo', svo, fps=15, rate=2.0, loop=True)
    assert isinstance(source, ReplaySource) and source.rate == 2.0 and source.fps is None
    assert source.inner.loop and source.inner.fps == 15

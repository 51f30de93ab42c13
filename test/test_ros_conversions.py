"""
ros.conversions, ros.params, ros.runtime helpers and the stand-in backend, without a graph.

Message round trips use the real rclpy message classes (no node, no DDS traffic).
"""
import struct
import threading
import time

from depth_ros.core.camera import PinholeCamera
from depth_ros.core.pointcloud import depth_to_cloud
from depth_ros.ros import conversions as conv
from depth_ros.sources.base import Frame, FrameSource
import numpy as np
import pytest

pytest.importorskip('sensor_msgs.msg', reason='ROS 2 message types are not installed')


def test_image_round_trip_keeps_header_values_and_nan():
    header = conv.make_header(1700000000123456789, 'cam_optical')
    depth = np.array([[1.0, np.nan], [np.inf, -np.inf], [0.5, 2.0]], np.float32)
    msg = conv.numpy_to_image(depth, '32FC1', header)
    assert (msg.height, msg.width, msg.step, msg.encoding, msg.is_bigendian) == \
        (3, 2, 8, '32FC1', 0), 'received {}'.format(msg)
    assert conv.stamp_to_ns(msg.header.stamp) == 1700000000123456789
    assert msg.header.frame_id == 'cam_optical' and msg.header is not header
    assert bytes(msg.data[:8]) == struct.pack('<2f', 1.0, float('nan'))
    np.testing.assert_array_equal(conv.image_to_numpy(msg), depth)


def test_image_from_rclpy_message_with_padding_and_bgr8():
    from sensor_msgs.msg import Image
    msg = Image(height=2, width=1, encoding='bgr8', step=4, is_bigendian=0,
                data=bytes([1, 2, 3, 0, 4, 5, 6, 0]))
    out = conv.image_to_numpy(msg)
    np.testing.assert_array_equal(out, np.array([[[1, 2, 3]], [[4, 5, 6]]], np.uint8))


def test_image_errors_name_the_problem():
    from sensor_msgs.msg import Image
    with pytest.raises(ValueError, match="unsupported image encoding 'yuv422'"):
        conv.image_to_numpy(Image(height=1, width=1, encoding='yuv422', step=2, data=b'\0\0'))
    with pytest.raises(ValueError, match=r'image `data` has 3 bytes but step\*height = 4\*1'):
        conv.image_to_numpy(Image(height=1, width=1, encoding='32FC1', step=4, data=b'\0\0\0'))
    with pytest.raises(ValueError, match="`array` has dtype float64 but encoding '32FC1'"):
        conv.numpy_to_image(np.zeros((2, 2)), '32FC1')


def test_camera_info_round_trip_and_projection_preferred():
    camera = PinholeCamera(500.0, 510.0, 320.5, 240.25, 640, 480)
    info = conv.camera_to_info(camera, conv.make_header(5, 'f'))
    assert list(info.k) == [500.0, 0.0, 320.5, 0.0, 510.0, 240.25, 0.0, 0.0, 1.0]
    assert list(info.p) == [500.0, 0.0, 320.5, 0.0, 0.0, 510.0, 240.25, 0.0, 0.0, 0.0, 1.0,
                            0.0]
    assert conv.camera_from_info(info) == camera
    # A rectified camera: P differs from K (the unrectified matrix); P is the one to use.
    info.k = [400.0, 0.0, 300.0, 0.0, 400.0, 200.0, 0.0, 0.0, 1.0]
    assert conv.camera_from_info(info) == camera
    assert conv.camera_from_info(info, use_projection=False).fx == 400.0
    half = conv.camera_from_info(info, 320, 240)
    assert half == camera.scaled(320, 240), 'expected {}, received {}'.format(
        camera.scaled(320, 240), half)


def test_camera_info_without_intrinsics_is_rejected():
    from sensor_msgs.msg import CameraInfo
    with pytest.raises(ValueError, match=r'camera_info has an invalid size 0x0'):
        conv.camera_from_info(CameraInfo())
    with pytest.raises(ValueError, match=r'camera_info.k has no valid intrinsics: fx=0.0'):
        conv.camera_from_info(CameraInfo(width=4, height=3))


def test_pointcloud2_layout_and_round_trip():
    camera = PinholeCamera(2.0, 2.0, 1.5, 0.5, 4, 2)
    depth = np.array([[1.0, 2.0, np.nan, 4.0], [1.0, np.inf, 3.0, 0.0]], np.float32)
    bgr = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    cloud = depth_to_cloud(depth, camera, bgr=bgr)
    header = conv.make_header(42, 'zed_left_camera_optical_frame')
    msg = conv.cloud_to_pointcloud2(cloud, header)
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == \
        [('x', 0, 7, 1), ('y', 4, 7, 1), ('z', 8, 7, 1), ('rgb', 12, 7, 1)]
    assert (msg.height, msg.width, msg.point_step, msg.row_step, msg.is_dense,
            msg.is_bigendian) == (2, 4, 16, 64, False, False)
    assert msg.header.frame_id == 'zed_left_camera_optical_frame' and \
        conv.stamp_to_ns(msg.header.stamp) == 42
    assert bytes(msg.data) == cloud.tobytes()
    back = conv.pointcloud2_to_array(msg)
    # Point (row 0, col 0): z 1, x = (0 - 1.5) * 1 / 2, y = (0 - 0.5) * 1 / 2.
    assert (back['x'][0, 0], back['y'][0, 0], back['z'][0, 0]) == (-0.75, -0.25, 1.0)
    assert np.isnan(back['z'][0, 2]) and np.isnan(back['z'][1, 1])
    xyz = depth_to_cloud(depth, camera)
    assert conv.cloud_to_pointcloud2(xyz, header).point_step == 12


def test_pointcloud2_rejects_non_clouds():
    with pytest.raises(ValueError, match='`cloud` must be a 2-D structured array'):
        conv.cloud_to_pointcloud2(np.zeros((2, 2), np.float32), conv.make_header(0, ''))


def test_cloud_written_into_message_buffer_is_the_message_data_without_a_copy():
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import PointCloud2
    camera = PinholeCamera(2.0, 2.0, 1.5, 0.5, 4, 2)
    depth = np.array([[1.0, 2.0, np.nan, 4.0], [1.0, np.inf, 3.0, 0.5]], np.float32)
    bgr = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    header = conv.make_header(42, 'f')
    expected = conv.cloud_to_pointcloud2(depth_to_cloud(depth, camera, bgr=bgr), header)
    buffer = conv.MessageBuffer()
    out = buffer.array((2, 4), depth_to_cloud(depth, camera, bgr=bgr).dtype)
    cloud = depth_to_cloud(depth, camera, bgr=bgr, out=out)
    msg = conv.cloud_to_pointcloud2(cloud, header, buffer=buffer)
    assert msg.data is buffer.data, 'the message copied the buffer (type {})'.format(
        type(msg.data).__name__)
    assert bytes(msg.data) == bytes(expected.data) and msg.fields == expected.fields
    wire = serialize_message(msg)
    # The next frame overwrites the buffer: what was published (serialized) must not change.
    depth_to_cloud(depth * 2.0, camera, bgr=bgr, out=buffer.array((2, 4), cloud.dtype))
    assert buffer.array((2, 4), cloud.dtype) is out, 'same size: the buffer must be reused'
    assert bytes(deserialize_message(wire, PointCloud2).data) == bytes(expected.data)
    assert bytes(msg.data) != bytes(expected.data)
    with pytest.raises(ValueError, match='`cloud` must be the array that `buffer.array'):
        conv.cloud_to_pointcloud2(cloud.copy(), header, buffer=buffer)


def test_image_through_message_buffer_equals_plain_conversion_and_reuses_it():
    buffer = conv.MessageBuffer()
    header = conv.make_header(7, 'f')
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    first = conv.numpy_to_image(a, '32FC1', header, buffer=buffer)
    assert first.data is buffer.data and bytes(first.data) == a.tobytes()
    data = buffer.data
    second = conv.numpy_to_image(a + 1, '32FC1', header, buffer=buffer)
    assert buffer.data is data, 'same size: the buffer must be reused'
    np.testing.assert_array_equal(conv.image_to_numpy(second), a + 1)
    bgr = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    third = conv.numpy_to_image(bgr, 'bgr8', header, buffer=buffer)   # new size: reallocated
    assert buffer.data is not data and third.step == 12
    np.testing.assert_array_equal(conv.image_to_numpy(third), bgr)
    assert bytes(conv.numpy_to_image(bgr, 'bgr8', header).data) == bytes(third.data)


def test_stage_times_split_a_frame():
    from depth_ros.ros.runtime import StageTimes
    stages = StageTimes(window=2)
    for ms in (1.0, 3.0, 5.0):
        stages.add('align', ms)
    stages.add('cloud', 2.0)
    assert stages.means() == {'align': 4.0, 'cloud': 2.0}, 'received {}'.format(
        stages.means())
    assert list(stages.means()) == ['align', 'cloud']
    stages.start()
    time.sleep(0.02)
    stages.mark('wait')
    assert 15.0 <= stages.means()['wait'] < 1000.0, 'received {}'.format(stages.means())


def test_ns_stamp_round_trip():
    for ns in (0, 1, 999999999, 1000000000, 1700000000123456789):
        assert conv.stamp_to_ns(conv.ns_to_stamp(ns)) == ns
    with pytest.raises(ValueError, match='`ns` must be >= 0, got -1'):
        conv.ns_to_stamp(-1)


def test_param_checks():
    from depth_ros.ros.params import check_value, Param
    p = Param('cloud_stride', 2, 'd', low=1, high=32)
    assert check_value(p, 4) is None
    assert check_value(p, 0) == 'parameter `cloud_stride` must be in [1, 32], got 0'
    assert check_value(p, True) == 'parameter `cloud_stride` must be of type int, got True'
    q = Param('backend', 'onnxruntime', 'd', choices=('onnxruntime', 'standin'))
    assert check_value(q, 'tf') == \
        "parameter `backend` must be one of onnxruntime|standin, got 'tf'"
    f = Param('max_depth', 20.0, 'd', low=0.01)
    assert check_value(f, 5) is None and check_value(f, float('nan')) == \
        'parameter `max_depth` must be a number, got nan'


def test_on_set_validator_rejects_and_applies():
    from depth_ros.ros.params import on_set_validator, Param
    from rclpy.parameter import Parameter
    specs = (Param('a', 1, 'd', low=0, high=5), Param('b', 'x', 'd', read_only=True))
    current = {'a': 1, 'b': 'x'}
    applied = []
    cb = on_set_validator(specs, current, validate=lambda v: 'too big' if v['a'] > 3 else None,
                          apply=applied.append)
    assert cb([Parameter('a', value=9)]).reason == 'parameter `a` must be in [0, 5], got 9'
    assert cb([Parameter('a', value=4)]).reason == 'too big'
    assert cb([Parameter('b', value='y')]).reason == 'parameter `b` is read-only'
    assert cb([Parameter('a', value=2)]).successful and current['a'] == 2
    assert applied == [{'a': 2}]


def test_latest_worker_drops_never_queues():
    from depth_ros.ros.runtime import LatestWorker
    seen = []
    gate = threading.Event()

    def work(item):
        gate.wait(5)
        seen.append(item)
    worker = LatestWorker(work)
    worker.put(0)
    time.sleep(0.1)         # the worker takes 0 and blocks on the gate
    for i in range(1, 6):
        worker.put(i)       # 1..4 are replaced while waiting: only 5 stays
    gate.set()
    deadline = time.monotonic() + 5
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.stop()
    assert seen == [0, 5] and worker.dropped == 4, 'expected [0, 5] and 4 dropped, received ' \
        '{} and {}'.format(seen, worker.dropped)


def test_rate_meter_with_injected_clock():
    from depth_ros.ros.runtime import RateMeter
    now = [0.0]
    meter = RateMeter(window=5.0, clock=lambda: now[0])
    for i in range(11):
        now[0] = i * 0.1
        meter.tick()
    assert meter.rate == pytest.approx(10.0)
    now[0] = 100.0
    assert meter.rate == 0.0


def test_pairing_buffer_exact_stamps_bounded():
    from depth_ros.ros.alignment_node import PairingBuffer
    drops = []
    buf = PairingBuffer(('a', 'b'), 2, lambda s, missing, why: drops.append((s, missing, why)))
    assert buf.add('a', 10, 'a10') is None
    assert buf.add('a', 20, 'a20') is None
    assert buf.add('a', 30, 'a30') is None       # 3 waiting > 2: stamp 10 falls out
    assert drops == [(10, ['b'], 'pairing buffer full')]
    assert buf.add('b', 30, 'b30') == {'a': 'a30', 'b': 'b30'}
    assert drops[-1] == (20, ['b'], 'a newer frame was complete first')
    assert buf.pending == {} and buf.dropped == 2


class _Msg(object):
    def __init__(self, nbytes):
        self.data = bytes(nbytes)


def test_pairing_buffer_by_age_keeps_late_keyframes_and_caps_bytes():
    from depth_ros.ros.alignment_node import message_bytes, PairingBuffer
    drops = []

    def t(ds):                      # stamp in ns of ``ds`` tenths of a second
        return ds * 10 ** 8
    buf = PairingBuffer(('disparity', 'depth'), 2, lambda st, m, why: drops.append((st, m, why)),
                        window_ns=t(25), max_bytes=26)
    # 26 stereo frames (1.0 .. 3.5 s, 1 byte each) wait although buffer_size is 2: by age.
    for ds in range(10, 36):
        assert buf.add('depth', t(ds), _Msg(1)) is None
    assert drops == [] and len(buf.pending) == 26 and buf.bytes == 26, (drops, buf.bytes)
    # A keyframe 2 s late pairs with its stereo frame; the older ones go.
    complete = buf.add('disparity', t(15), _Msg(0))
    assert complete is not None and set(complete) == {'disparity', 'depth'}
    assert [d[0] for d in drops] == [t(ds) for ds in range(10, 15)] and \
        all(d[1:] == (['disparity'], 'a newer frame was complete first') for d in drops), drops
    assert len(buf.pending) == 20 and buf.bytes == 20, (len(buf.pending), buf.bytes)
    # Older than the window (newest 3.5 s - 2.5 s): dropped at once, naming the window.
    del drops[:]
    assert buf.add('disparity', t(9), _Msg(0)) is None
    assert drops == [(t(9), ['depth'], 'older than the pairing window of 2.5 s')], drops
    # The byte cap: 27 bytes waiting > 26, oldest first.
    del drops[:]
    buf.add('depth', t(36), _Msg(7))
    assert drops == [(t(16), ['disparity'], 'pairing buffer over 2.6e-05 MB')], drops
    assert buf.bytes == 26
    # The window moves with the newest stamp: 7.2 s drops everything before 4.7 s.
    del drops[:]
    buf.add('depth', t(72), _Msg(1))
    assert [d[0] for d in drops] == [t(ds) for ds in range(17, 37)] and \
        drops[0][2] == 'older than the pairing window of 2.5 s', drops
    assert list(buf.pending) == [t(72)] and buf.bytes == 1, (list(buf.pending), buf.bytes)
    buf.clear()
    assert (len(buf.pending), buf.bytes, buf.newest) == (0, 0, None)
    assert message_bytes(_Msg(7)) == 7 and message_bytes(object()) == 0


def test_pairing_buffer_by_count_keeps_its_behaviour_under_a_byte_cap():
    from depth_ros.ros.alignment_node import PairingBuffer
    drops = []
    buf = PairingBuffer(('a', 'b'), 3, lambda st, m, why: drops.append((st, why)), max_bytes=4)
    for stamp in (1, 2, 3, 4):
        buf.add('a', stamp, _Msg(1))
    assert drops == [(1, 'pairing buffer full')], drops
    buf.add('a', 5, _Msg(3))        # count drops 2; then 5 bytes > 4: the byte cap drops 3
    assert drops[1:] == [(2, 'pairing buffer full'), (3, 'pairing buffer over 4e-06 MB')], drops
    assert buf.add('b', 5, _Msg(0)) is not None
    assert drops[3:] == [(4, 'a newer frame was complete first')] and buf.bytes == 0, \
        (drops, buf.bytes)


class _Logger(object):
    def __init__(self):
        self.lines = []

    def error(self, text):
        self.lines.append(('error', text))

    def warn(self, text):
        self.lines.append(('warn', text))


def test_throttled_log_limits_each_kind_on_its_own_and_takes_a_new_period():
    from depth_ros.ros.runtime import ThrottledLog
    now = [100.0]
    logger = _Logger()
    log = ThrottledLog(logger, clock=lambda: now[0])
    results = [log.error('stamp', 'dup {}'.format(i), 2.0) for i in range(5)]
    assert results == [True, False, False, False, False] and log.suppressed('stamp') == 4
    # Another kind is not hidden by the first one's window.
    assert log.error('frame', 'bad encoding', 2.0)
    now[0] += 1.0
    assert not log.error('stamp', 'dup 5', 2.0)
    # A period changed at runtime (log_throttle_s) applies at once: no error, no state reset.
    assert log.error('stamp', 'dup 6', 0.5)
    assert not log.error('stamp', 'dup 7', 0.5)
    now[0] += 0.6
    assert log.warn('stamp', 'dup 8', 0.5)
    assert log.error('stamp', 'dup 9', 0.0) and log.error('stamp', 'dup 10', 0.0)
    # Lines logged while throttling was off open no window for a period set afterwards.
    assert log.error('stamp', 'dup 11', 5.0) and not log.error('stamp', 'dup 12', 5.0)
    assert logger.lines == [
        ('error', 'dup 0'), ('error', 'bad encoding'),
        ('error', 'dup 6 (5 similar suppressed)'), ('warn', 'dup 8 (1 similar suppressed)'),
        ('error', 'dup 9'), ('error', 'dup 10'), ('error', 'dup 11')], logger.lines


def test_throttled_log_is_thread_safe():
    from depth_ros.ros.runtime import ThrottledLog
    logger = _Logger()
    log = ThrottledLog(logger)
    barrier = threading.Barrier(4)

    def spam():
        barrier.wait()
        for i in range(200):
            log.error('exception', 'failed', 3600.0)
    threads = [threading.Thread(target=spam) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert logger.lines == [('error', 'failed')] and log.suppressed('exception') == 799, \
        (logger.lines, log.suppressed('exception'))


def test_stereo_depth_units():
    from depth_ros.ros.alignment_node import stereo_depth_metres
    mm = np.array([[0, 1500]], np.uint16)
    out = stereo_depth_metres(mm, '16UC1')
    assert np.isnan(out[0, 0]) and out[0, 1] == np.float32(1.5)
    with pytest.raises(ValueError, match="stereo depth has encoding 'bgr8'"):
        stereo_depth_metres(mm, 'bgr8')


def test_standin_backend_is_deterministic_with_fixed_latency():
    from depth_ros.inference.standin import standin_disparity, StandInDepthModel
    bgr = np.zeros((4, 3, 3), np.uint8)
    bgr[1] = 255
    model = StandInDepthModel(latency_ms=30.0)
    t0 = time.perf_counter()
    out = model.predict(bgr)
    elapsed = (time.perf_counter() - t0) * 1e3
    assert 30.0 <= elapsed < 200.0, 'expected ~30 ms, received {:.1f}'.format(elapsed)
    assert out.dtype == np.float32 and out.shape == (4, 3)
    np.testing.assert_allclose(out[0], 0.1)
    np.testing.assert_allclose(out[1], 1.0)
    ramp = standin_disparity(bgr, 'gradient')
    np.testing.assert_allclose(ramp[:, 0], [0.1, 0.4, 0.7, 1.0], rtol=1e-6)
    assert 'STAND-IN' in model.name and model.latency.count == 1
    with pytest.raises(ValueError, match=r'`latency_ms` must be a finite number >= 0, got -1'):
        StandInDepthModel(latency_ms=-1)
    with pytest.raises(ValueError, match="`mode` must be one of intensity|gradient, got 'x'"):
        StandInDepthModel(mode='x')


def test_downscale_frame_scales_camera_and_keeps_depth_values():
    from depth_ros.ros.zed_node import downscale_frame
    from depth_ros.sources.base import Frame
    camera = PinholeCamera(100.0, 100.0, 39.5, 29.5, 80, 60)
    depth = np.arange(60 * 80, dtype=np.float32).reshape(60, 80)
    frame = Frame(left=np.zeros((60, 80, 3), np.uint8), depth=depth, confidence=None,
                  camera=camera, stamp_ns=7)
    out = downscale_frame(frame, 0.5)
    assert out.left.shape == (30, 40, 3) and out.depth.shape == (30, 40)
    assert out.camera == camera.scaled(40, 30) and out.stamp_ns == 7
    assert set(np.unique(out.depth)).issubset(set(np.unique(depth))), \
        'nearest resize must not invent depth values'


@pytest.mark.parametrize('kind,path', [('live', None), ('svo', '/data/run.svo'),
                                       ('sample', None)])
def test_zed_node_parameters_map_onto_make_source(kind, path):
    # make_source names any option its source does not take, so constructing each kind from
    # the node's defaults proves the names match (no camera is opened).
    from depth_ros.ros.zed_node import PARAMS, source_options
    from depth_ros.sources import make_source
    values = {p.name: p.default for p in PARAMS}
    values.update(source=kind, path=path or '')
    source = make_source(kind, path, **source_options(values))
    assert source is not None
    if kind == 'live':
        assert (source.resolution, source.fps, source.depth_mode) == ('HD720', 30, 'PERFORMANCE')
    if kind == 'sample':
        assert source.fps == 10.0 and source.loop, 'expected a looping 10 fps replay'


def test_depth_node_engine_cache_dir_is_the_cache_engines_load_from(tmp_path, monkeypatch):
    from depth_ros.ros.depth_node import load_model, PARAMS
    from depth_ros.ros.params import StartupError
    cache, other = tmp_path / 'cache', tmp_path / 'other'
    cache.mkdir()
    other.mkdir()
    (cache / 'e.engine').write_bytes(b'not an engine')
    (other / 'e.engine').write_bytes(b'not an engine')
    monkeypatch.setenv('DEPTH_ROS_ENGINE_CACHE', str(other))
    values = {p.name: p.default for p in PARAMS}
    values.update(backend='tensorrt', model_path=str(other / 'e.engine'),
                  engine_cache_dir=str(cache))
    with pytest.raises(StartupError) as info:
        load_model(values)
    assert 'outside the engine cache directory {};'.format(cache) in str(info.value), \
        'received {}'.format(info.value)
    # A bare name is looked up in the configured cache: it gets past the cache check (and
    # fails later here, where TensorRT is missing).
    values['model_path'] = 'e.engine'
    with pytest.raises(StartupError) as info:
        load_model(values)
    assert str(info.value).startswith("cannot load tensorrt model 'e.engine': ") and \
        'outside the engine cache' not in str(info.value), 'received {}'.format(info.value)
    # Empty: the default cache ($DEPTH_ROS_ENGINE_CACHE), where the configured file is outside.
    values.update(model_path=str(cache / 'e.engine'), engine_cache_dir='')
    with pytest.raises(StartupError, match='outside the engine cache directory {};'.format(
            other)):
        load_model(values)


class _OneFrame(FrameSource):
    """A one-frame FrameSource (the bundled sample's shape, without its SGBM)."""

    name = 'one_frame'

    def open(self):
        self.left = 1

    def read(self):
        if not self.left:
            return None
        self.left = 0
        return Frame(left=np.zeros((2, 2, 3), np.uint8), depth=None, confidence=None,
                     camera=PinholeCamera(1.0, 1.0, 0.5, 0.5, 2, 2), stamp_ns=0)

    def close(self):
        pass


def _replay_read_times(**options):
    """Return when a ReplaySource over one looped frame delivers, on a fake clock."""
    from depth_ros.sources.base import SourceError
    from depth_ros.sources.replay import ReplaySource
    now = [0.0]

    def sleep(s):
        now[0] += s
    source = ReplaySource(_OneFrame(), loop=True, fps=10.0, clock=lambda: now[0], sleep=sleep,
                          wall_ns=lambda: int(now[0] * 1e9), **options)
    times = []
    while len(times) < 8:
        try:
            source.open()
            source.read()
            times.append(round(now[0], 6))
        except SourceError:
            now[0] += 0.25   # zed_node's retry wait
    return times


def test_replay_source_paces_a_looped_one_frame_source():
    # zed_node publishes frames as soon as the source returns them: the source is the one
    # pacing mechanism, also when a one-frame source starts a new pass every frame.
    times = _replay_read_times()
    assert times == [round(0.1 * i, 6) for i in range(8)], \
        'expected a frame every 0.1 s, received {}'.format(times)


def test_replay_source_paces_from_a_reopen_without_a_burst():
    times = _replay_read_times(drop_after=3, outage_s=1.0)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) >= 0.1 - 1e-6, 'expected gaps >= 0.1 s, received {}'.format(gaps)

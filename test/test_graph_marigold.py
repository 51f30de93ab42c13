"""
marigold_node on a real rclpy graph, with the tiny random pipeline (its output is noise).

The node runs in this process on its own single-threaded executor, as ``rclpy.spin`` runs it;
a test node feeds images and calls ~/capture from another executor.
"""
import threading
import time

from depth_ros.core.encodings import array_to_image_fields, image_to_array
import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
torch = pytest.importorskip('torch')
pytest.importorskip('diffusers')

torch.set_num_threads(1)


class SlowModel(object):
    """Wraps the tiny Marigold model and holds each job for ``delay`` seconds."""

    def __init__(self, model, delay):
        self.model, self.delay = model, delay
        self.ensemble_size = model.ensemble_size
        self.started = threading.Event()

    def infer(self, bgr):
        self.started.set()
        time.sleep(self.delay)
        return self.model.infer(bgr)


def _image(stamp_sec, nanosec, h=24, w=32):
    from sensor_msgs.msg import Image
    msg = Image()
    msg.header.stamp.sec = stamp_sec
    msg.header.stamp.nanosec = nanosec
    msg.header.frame_id = 'zed_left_camera_optical_frame'
    bgr = np.random.default_rng(stamp_sec).integers(0, 256, (h, w, 3), dtype=np.uint8)
    f = array_to_image_fields(bgr, 'bgr8')
    msg.height, msg.width, msg.encoding = f['height'], f['width'], f['encoding']
    msg.is_bigendian, msg.step, msg.data = f['is_bigendian'], f['step'], f['data'].tobytes()
    return msg


@pytest.fixture
def graph():
    from depth_ros.inference.marigold import build_tiny_pipeline, MarigoldDepth
    from depth_ros.ros.marigold_node import MarigoldNode
    from rclpy.executors import SingleThreadedExecutor
    context = rclpy.Context()
    rclpy.init(context=context)
    model = SlowModel(MarigoldDepth(build_tiny_pipeline(), steps=1, ensemble_size=3), 1.0)
    node = MarigoldNode(model=model, context=context, parameter_overrides=[
        rclpy.parameter.Parameter('keyframe_period_s', value=0.0)])
    ex = SingleThreadedExecutor(context=context)
    ex.add_node(node)
    spin = threading.Thread(target=ex.spin, daemon=True)
    spin.start()
    tester = rclpy.create_node('marigold_tester', context=context)
    tex = SingleThreadedExecutor(context=context)
    tex.add_node(tester)
    yield node, model, tester, tex
    ex.shutdown(timeout_sec=5.0)
    node.destroy_node()
    tester.destroy_node()
    rclpy.shutdown(context=context)


def _wait(tex, cond, timeout):
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        tex.spin_once(timeout_sec=0.05)
    return cond()


@pytest.mark.graph
def test_capture_publishes_keyframe_with_source_header_and_stays_responsive(graph):
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    from std_srvs.srv import Trigger
    node, model, tester, tex = graph
    got = {'depth': [], 'uncertainty': []}
    tester.create_subscription(Image, '/marigold_node/depth',
                               lambda m: got['depth'].append(m), qos_profile_sensor_data)
    tester.create_subscription(Image, '/marigold_node/uncertainty',
                               lambda m: got['uncertainty'].append(m), qos_profile_sensor_data)
    pub = tester.create_publisher(Image, '/image', qos_profile_sensor_data)
    client = tester.create_client(Trigger, '/marigold_node/capture')
    assert client.wait_for_service(timeout_sec=10.0)

    def call():
        fut = client.call_async(Trigger.Request())
        t0 = time.monotonic()
        assert _wait(tex, fut.done, 5.0), 'capture did not answer'
        return fut.result(), time.monotonic() - t0

    res, _ = call()
    assert not res.success and 'no image received yet' in res.message, res.message
    assert _wait(tex, lambda: pub.get_subscription_count() > 0, 5.0)
    first = _image(100, 123456789)
    pub.publish(first)
    assert _wait(tex, lambda: node.worker.received == 1, 5.0), 'image not received'
    res, _ = call()
    assert res.success and res.message == 'keyframe started on the newest image', res.message
    assert model.started.wait(5.0)
    # While the 1 s job runs, the executor answers services at once and newer frames replace
    # older ones: the queued keyframe takes the newest (stamp 102), never 101.
    pub.publish(_image(101, 0))
    time.sleep(0.1)
    pub.publish(_image(102, 5))
    res, dt = call()
    assert res.success and res.message.startswith('a keyframe is running'), res.message
    assert dt < 0.5, 'expected an answer in < 0.5 s while a job runs, received {:.2f} s'.format(
        dt)
    assert node.worker.busy
    assert _wait(tex, lambda: len(got['depth']) >= 2 and len(got['uncertainty']) >= 2, 15.0), \
        'expected 2 keyframes, received {}'.format(len(got['depth']))
    stamps = [(m.header.stamp.sec, m.header.stamp.nanosec) for m in got['depth']]
    assert stamps == [(100, 123456789), (102, 5)], 'received {}'.format(stamps)
    d = got['depth'][0]
    assert d.header.frame_id == 'zed_left_camera_optical_frame'
    assert d.encoding == '32FC1' and (d.height, d.width) == (24, 32)
    depth = image_to_array(d)
    assert np.isfinite(depth).all() and depth.min() >= 0 and depth.max() <= 1
    u = got['uncertainty'][0]
    assert (u.header.stamp.sec, u.header.stamp.nanosec) == (100, 123456789)
    assert _until(lambda: node.worker.done == 2) and node.worker.failed == 0


def _status_values(msg):
    for status in msg.status:
        if status.name == 'marigold_node: keyframes':
            return status, {kv.key: kv.value for kv in status.values}
    return None, None


@pytest.mark.graph
def test_diagnostics_report_jobs_latency_stamps_busy_and_bad_frames(graph):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image
    node, model, tester, tex = graph
    diags = []
    tester.create_subscription(DiagnosticArray, '/diagnostics', diags.append, 50)
    pub = tester.create_publisher(Image, '/image', qos_profile_sensor_data)

    def latest(cond, timeout):
        found = []

        def check():
            for msg in reversed(diags):
                status, values = _status_values(msg)
                if status is not None and cond(status, values):
                    found[:] = [status, values]
                    return True
            return False
        assert _wait(tex, check, timeout), 'no matching diagnostics; last received: {}'.format(
            _status_values(diags[-1]) if diags else None)
        return found

    status, values = latest(lambda s, v: True, 5.0)
    assert status.level == DiagnosticStatus.WARN and status.message == 'no image received yet', \
        status.message
    assert values['keyframes_done'] == '0' and values['last_keyframe_stamp'] == 'none', values
    # A bad frame (32FC1 depth is not an image) fails its job; the node keeps running.
    bad = _bad_frame(50)
    assert _wait(tex, lambda: pub.get_subscription_count() > 0, 5.0)
    pub.publish(bad)
    assert _wait(tex, lambda: node.last_rx is not None, 5.0), 'image not received'
    assert node.worker.request() == 'started'
    status, values = latest(lambda s, v: v['keyframes_failed'] == '1', 5.0)
    assert status.level == DiagnosticStatus.WARN, status.message
    assert status.message.startswith('last keyframe failed: ValueError: encoding'), \
        status.message
    assert values['keyframes_done'] == '0'
    # A good frame: busy while the 1 s job runs, then done with its stamp and latency.
    pub.publish(_image(60, 250))
    assert _wait(tex, lambda: node.last_rx_stamp.sec == 60, 5.0)
    assert node.worker.request() == 'started'
    status, _ = latest(lambda s, v: v['busy'] == 'True', 5.0)
    # The failure stays reported until a keyframe succeeds.
    assert status.message.startswith('last keyframe failed'), status.message
    status, values = latest(lambda s, v: v['keyframes_done'] == '1', 10.0)
    assert status.level == DiagnosticStatus.OK and status.message == 'idle', status.message
    assert values['busy'] == 'False' and values['keyframes_failed'] == '1', values
    assert values['last_keyframe_stamp'] == '60.000000250', values['last_keyframe_stamp']
    assert float(values['last_inference_ms']) > 0, values
    # The job includes the 1 s the wrapped model sleeps; the inference figure does not.
    assert float(values['last_job_ms']) >= 1000.0, values
    assert float(values['last_inference_ms']) < float(values['last_job_ms']), values
    age = float(values['newest_image_received_age_s'])
    assert 0.0 <= age < 5.0, 'expected a fresh image age, received {}'.format(age)
    # Stamp 60 s after the epoch: its stamp age is the wall clock (decades of seconds).
    assert float(values['newest_image_stamp_age_s']) > 1e8, values


def _bad_frame(sec):
    bad = _image(sec, 0)
    bad.encoding, bad.step = '32FC1', bad.width * 4   # depth, not an image: the job fails
    bad.data = np.zeros((bad.height, bad.width), np.float32).tobytes()
    return bad


@pytest.mark.graph
def test_log_throttle_changes_at_runtime_without_crashing(graph):
    # rclpy's throttle_duration_sec raises when one call site's period changes; the node's
    # ThrottledLog reads log_throttle_s on every call, one window per kind of error.
    from rclpy.parameter import Parameter
    node, model, tester, tex = graph
    kind = 'job_ValueError'

    def fail_one(sec):
        failed = node.worker.failed
        node.worker.offer(_bad_frame(sec))
        assert node.worker.request() == 'started'
        assert _until(lambda: node.worker.failed == failed + 1), 'job did not fail'

    res = node.set_parameters([Parameter('log_throttle_s', value=60.0)])[0]
    assert res.successful, res.reason
    fail_one(1)
    fail_one(2)
    assert node.log.suppressed(kind) == 1, 'expected 1 held back, received {}'.format(
        node.log.suppressed(kind))
    res = node.set_parameters([Parameter('log_throttle_s', value=0.0)])[0]
    assert res.successful and node.cfg['log_throttle_s'] == 0.0, res.reason
    fail_one(3)   # period 0: logged at once, with the held-back count
    assert node.log.suppressed(kind) == 0
    res = node.set_parameters([Parameter('log_throttle_s', value=-1.0)])[0]
    assert not res.successful and 'log_throttle_s' in res.reason, res.reason
    # The worker still runs a good keyframe after all that.
    node.worker.offer(_image(4, 0))
    node.worker.request()
    assert _until(lambda: node.worker.done == 1, 10.0), 'no keyframe after failures'
    assert node.worker.failed == 3


def _until(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        time.sleep(0.01)
    return cond()


@pytest.mark.graph
def test_parameters_build_tiny_model_and_bad_values_raise_at_startup():
    from depth_ros.ros.marigold_node import MarigoldNode
    from rclpy.parameter import Parameter
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = MarigoldNode(context=context, parameter_overrides=[
            Parameter('checkpoint', value='tiny-random'), Parameter('device', value='cpu'),
            Parameter('ensemble_size', value=3), Parameter('keyframe_period_s', value=0.0)])
        try:
            assert node.model.name == 'tiny-random' and node.model.ensemble_size == 3
            assert node.pub_unc is not None and node.timer is None
            topics = {node.pub_depth.topic_name, node.pub_unc.topic_name, node.sub.topic_name}
            assert topics == {'/marigold_node/depth', '/marigold_node/uncertainty', '/image'}
            res = node.set_parameters([Parameter('steps', value=3)])[0]
            assert not res.successful and 'read-only' in res.reason, res.reason
        finally:
            node.destroy_node()
        with pytest.raises(ValueError) as err:
            MarigoldNode(context=context, parameter_overrides=[
                Parameter('checkpoint', value='tiny-random'),
                Parameter('reliability', value='sometimes')])
        assert str(err.value) == ("parameter `reliability` must be one of best_effort|reliable, "
                                  "got 'sometimes'"), str(err.value)
        with pytest.raises(ValueError, match='`ensemble_size` must be 1 or an integer >= 3, '
                                             'got 2'):
            MarigoldNode(context=context, parameter_overrides=[
                Parameter('checkpoint', value='tiny-random'), Parameter('device', value='cpu'),
                Parameter('ensemble_size', value=2)])
    finally:
        rclpy.shutdown(context=context)


@pytest.mark.graph
def test_executable_exits_with_one_line_on_bad_parameter():
    import subprocess
    import sys
    proc = subprocess.run(
        [sys.executable, '-m', 'depth_ros.ros.marigold_node', '--ros-args', '-p',
         'checkpoint:=tiny-random', '-p', 'ensemble_size:=2'],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, 'expected exit 2, received {}: {}'.format(
        proc.returncode, proc.stderr)
    assert 'bad configuration: `ensemble_size` must be 1 or an integer >= 3, got 2' in \
        proc.stderr, proc.stderr
    assert 'Traceback' not in proc.stderr


@pytest.mark.graph
def test_executable_exits_with_one_line_when_the_model_cannot_load():
    # torch without CUDA raises AssertionError (not RuntimeError) on .to('cuda'): any load
    # failure must end in one FATAL line and exit 1, never a traceback.
    import subprocess
    import sys
    if torch.cuda.is_available():
        pytest.skip('this torch has CUDA: device cuda would load')
    proc = subprocess.run(
        [sys.executable, '-m', 'depth_ros.ros.marigold_node', '--ros-args', '-p',
         'checkpoint:=tiny-random', '-p', 'device:=cuda', '-p', 'keyframe_period_s:=0.0'],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, 'expected exit 1, received {}: {}'.format(
        proc.returncode, proc.stderr)
    fatal = [line for line in proc.stderr.splitlines() if '[FATAL]' in line]
    expected = ("cannot load Marigold 'tiny-random' on device 'cuda': AssertionError: Torch not "
                "compiled with CUDA enabled")
    assert len(fatal) == 1 and fatal[0].endswith(expected), \
        'expected one FATAL line ending {!r}, received {}'.format(expected, fatal)
    assert 'Traceback' not in proc.stderr, proc.stderr

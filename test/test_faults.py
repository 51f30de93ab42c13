"""
The fault suite: what robots and users do to the nodes, and what the nodes must do back.

Every frame-level case sends one bad input to running nodes and asserts four things: the log
line that names the problem, that the node is still alive, the /diagnostics counter of that
kind of drop, and that a good frame afterwards still produces output. The process-level cases
(bad configuration, missing or corrupt recordings, messages too large for the middleware,
Ctrl-C in the middle of a frame, kill -9) assert the one line, the exit status and the absence
of a traceback.
"""
import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
import types

from conftest import CONFIG, NodeProcess, ROOT, wait_until
from graph_support import FedGraph, FRAME, frame_set, H, make_bgr, now, set_param, W
import numpy as np
import pytest

pytestmark = pytest.mark.graph
rclpy = pytest.importorskip('rclpy', reason='rclpy is not installed (depth_ros[ros])')
DIAGNOSTICS_PERIOD_S = 0.2
# rmw_independent: the frame-level cases (the nodes' checks on 64x48 frames) and the offline
# tools; a tier that runs several RMWs runs them with one (Makefile). The process-level cases
# (start-up lines, signals, shutdown) depend on the RMW and run on every one.


@pytest.fixture(scope='module')
def g(probe, node_processes):
    """
    One fed graph for the frame-level cases (log every line: log_throttle_s 0).

    Each case reads a counter of /diagnostics before and after its bad frame: a 0.2 s period
    (not the default 1 s) keeps a case about half a second long. A case sends its bad message
    once, so the graph is warmed first (``FedGraph.warm``: discovery ended both ways).
    """
    return FedGraph(probe, node_processes, ns='/faults', suffix='_f',
                    depth_params={'diagnostics_period_s': DIAGNOSTICS_PERIOD_S},
                    align_params={'stale_after_s': 1.5,
                                  'diagnostics_period_s': DIAGNOSTICS_PERIOD_S}).warm()


def _count(g, node, key, before, timeout=10.0):
    values = g.diagnostics_until(node, lambda v: int(v[key]) > before, timeout)
    return int(values[key])


def _baseline(g, node, key):
    values = g.diagnostics(node, since=now())
    return int(values[key])


def _expect_frame_drop(g, node, key, text, send, good='set'):
    """Run one frame-level case: ``send()`` the bad input; check line, life, counter, recovery."""
    proc = g.depth_node if node == 'depth' else g.align_node
    before = _baseline(g, node, key)
    mark = len(proc.output())
    stamp = send()
    assert wait_until(lambda: text in proc.output()[mark:], 10), \
        'expected the log line {!r}; output:\n{}'.format(text, proc.output()[-3000:])
    assert proc.alive(), 'the node died on a bad frame:\n' + proc.output()[-3000:]
    after = _count(g, node, key, before)
    assert after == before + 1, 'expected {} {} -> {}, received {}'.format(
        key, before, before + 1, after)
    if stamp is not None:
        target = g.disp if node == 'depth' else g.depth
        assert target.by_stamp(stamp) is None, 'the bad frame {} was published'.format(stamp)
    if good == 'image':
        g.send_good_image(900)
    else:
        g.send_good(901)
    assert 'Traceback' not in proc.output()[mark:], proc.output()[mark:]


def _recovered(g, node, send_good, timeout=20.0):
    """
    Send good input until ``node``'s newest report (taken after it) is OK; return its values.

    A good frame's OK lasts only the node's ``stale_after_s``; one send and one read can miss
    it on a stalled machine.
    """
    end = time.monotonic() + timeout
    values = None
    while time.monotonic() < end:
        since = now()
        send_good()
        values = g.diagnostics(node, since, wait=False)
        deadline = min(end, time.monotonic() + 3.0)
        while (values is None or values['_level'] != 0) and time.monotonic() < deadline:
            time.sleep(0.1)
            values = g.diagnostics(node, since, wait=False)
        if values is not None and values['_level'] == 0:
            return values
    raise AssertionError('{} never reported OK after good input; last: {}'.format(node, values))


def _bad_set(g, seed=40, **kwargs):
    def send():
        stamp = g.next_stamp()
        bgr, disparity, depth, confidence = frame_set(seed)
        for name in ('bgr', 'disparity', 'depth', 'confidence'):
            if name in kwargs:
                value = kwargs.pop(name)
                if name == 'bgr':
                    bgr = value
                elif name == 'disparity':
                    disparity = value
                elif name == 'depth':
                    depth = value
                else:
                    confidence = value
        g.send(stamp, bgr, disparity, depth, confidence, **kwargs)
        return stamp
    return send


def _image_only(g, msg_builder):
    def send():
        stamp = g.next_stamp()
        msg = msg_builder(g.conv.make_header(stamp, FRAME))
        g.pub['image'].publish(msg)
        return stamp
    return send


# ------------------------------------------------------------------- depth_node: images
@pytest.mark.rmw_independent
def test_image_with_an_unsupported_encoding(g):
    def build(header):
        msg = g.conv.numpy_to_image(make_bgr(1)[:, :, 0].copy(), 'mono8', header)
        msg.encoding = 'yuv422'
        return msg
    _expect_frame_drop(g, 'depth', 'frames_bad_frame', "unsupported image encoding 'yuv422'",
                       _image_only(g, build), good='image')


@pytest.mark.rmw_independent
def test_image_whose_data_is_shorter_than_step_times_height(g):
    def build(header):
        msg = g.conv.numpy_to_image(make_bgr(2), 'bgr8', header)
        msg.data = msg.data[:len(msg.data) // 2]
        return msg
    _expect_frame_drop(g, 'depth', 'frames_bad_frame', 'image `data` has',
                       _image_only(g, build), good='image')


@pytest.mark.rmw_independent
def test_image_with_zero_size(g):
    from sensor_msgs.msg import Image

    def build(header):
        return Image(header=header, height=0, width=0, encoding='bgr8', step=0, data=b'')
    _expect_frame_drop(g, 'depth', 'frames_bad_frame', 'image is empty', _image_only(g, build),
                       good='image')


@pytest.mark.rmw_independent
def test_image_that_is_a_depth_map(g):
    def build(header):
        return g.conv.numpy_to_image(np.ones((H, W), np.float32), '32FC1', header)
    _expect_frame_drop(g, 'depth', 'frames_bad_frame', "encoding '32FC1' is not a colour",
                       _image_only(g, build), good='image')


@pytest.mark.rmw_independent
def test_image_with_a_duplicated_stamp(g):
    stamp = g.send_good_image(3)

    def send():
        g.pub['image'].publish(g.conv.numpy_to_image(make_bgr(4), 'bgr8',
                                                     g.conv.make_header(stamp, FRAME)))
        return None
    _expect_frame_drop(g, 'depth', 'frames_bad_stamp',
                       'stamp {} is equal to the previous {}'.format(stamp, stamp), send,
                       good='image')


@pytest.mark.rmw_independent
def test_image_older_than_the_previous_one(g):
    stamp = g.send_good_image(5)

    def send():
        g.pub['image'].publish(g.conv.numpy_to_image(make_bgr(6), 'bgr8', g.conv.make_header(
            stamp - 30000000, FRAME)))
        return stamp - 30000000
    _expect_frame_drop(g, 'depth', 'frames_bad_stamp', 'is older than the previous', send,
                       good='image')


@pytest.mark.rmw_independent
def test_a_flood_of_images_is_dropped_not_queued(g, probe):
    # 60 images back to back while each inference takes 20 ms: the ones that arrive during an
    # inference replace each other (newest-frame policy), counted as busy drops. (With this
    # graph's 0 ms stand-in, two runs on a loaded machine counted none: each image that got
    # through was done before the next came.)
    set_param(probe, g.depth_name, 'standin_latency_ms', 20.0)
    try:
        before = _baseline(g, 'depth', 'frames_dropped_busy')
        for i in range(60):
            g.pub['image'].publish(g.conv.numpy_to_image(make_bgr(i), 'bgr8',
                                                         g.conv.make_header(g.next_stamp(),
                                                                            FRAME)))
        values = g.diagnostics_until('depth', lambda v: int(v['frames_dropped_busy']) > before)
        assert int(values['frames_dropped_busy']) > before
        assert g.depth_node.alive()
    finally:
        set_param(probe, g.depth_name, 'standin_latency_ms', 0.0)
    g.send_good_image(7)


@pytest.mark.rmw_independent
def test_depth_node_reports_an_error_when_every_frame_is_bad(g):
    # The input is flowing but nothing comes out: /diagnostics must say so, with the reason.
    def bad():
        msg = g.conv.numpy_to_image(make_bgr(8)[:, :, 0].copy(), 'mono8',
                                    g.conv.make_header(g.next_stamp(), FRAME))
        msg.encoding = 'yuv422'
        g.pub['image'].publish(msg)
    # Only reports taken from here on: the newest one received may be older than this case
    # (an error left by the case before it, still the newest for up to a period).
    since = now()
    end = time.monotonic() + 15
    values = None
    while time.monotonic() < end:
        bad()
        values = g.diagnostics('depth', since, wait=False)
        if values and values['_level'] == 2:
            break
        time.sleep(0.1)
    assert values and values['_level'] == 2 and \
        values['_message'].startswith('every frame of the last') and \
        "unsupported image encoding 'yuv422'" in values['_message'], values
    values = _recovered(g, 'depth', lambda: g.send_good_image(9))
    assert values['_message'] == 'running'


# ------------------------------------------------------------- alignment_node: each input
@pytest.mark.parametrize('case, kwargs, text', [
    ('disparity_encoding', dict(disparity_encoding='16UC1'),
     "disparity has encoding '16UC1'; expected 32FC1"),
    ('disparity_nan', 'nan', 'disparity has 2 NaN/inf values'),
    ('disparity_inf', 'inf', 'disparity has 1 NaN/inf values'),
    ('disparity_aspect', 'aspect', 'their aspect ratios must match'),
    ('depth_encoding', 'depth_bgr', "stereo depth has encoding 'bgr8'"),
    ('confidence_size', 'conf_size', 'confidence is 32x24 but depth is 64x48'),
    ('confidence_nan', 'conf_nan', 'confidence has NaN/inf values'),
    ('image_size', 'image_size', 'depth is 64x48 but image is 32x24; they must match'),
    ('image_encoding', dict(image_encoding='yuv422'), "unsupported image encoding 'yuv422'"),
    ('info_aspect', 'info_aspect', 'camera_info is 64x24 but the image is 64x48: their '
                                   'aspect ratios differ'),
    ('info_no_intrinsics', 'info_zero', 'camera_info.k has no valid intrinsics'),
    ('empty_frame_id', dict(frame=''), 'has an empty header.frame_id'),
    ('mixed_frame_ids', dict(frames={'image': 'other_frame'}),
     'the set mixes frames: camera_info=zed_left_camera_optical_frame'),
])
@pytest.mark.rmw_independent
def test_alignment_drops_a_bad_set_naming_the_problem(g, case, kwargs, text):
    from depth_ros.core.camera import PinholeCamera
    bgr, disparity, depth, confidence = frame_set(41)
    special = {
        'nan': lambda: dict(disparity=np.where(np.arange(H * W).reshape(H, W) < 2, np.nan,
                                               disparity).astype(np.float32)),
        'inf': lambda: dict(disparity=np.where(np.arange(H * W).reshape(H, W) == 5, np.inf,
                                               disparity).astype(np.float32)),
        'aspect': lambda: dict(disparity=np.ones((H, W // 4), np.float32)),
        'depth_bgr': lambda: dict(tamper=_retype('depth', make_bgr(3), 'bgr8', g)),
        'conf_size': lambda: dict(confidence=np.full((H // 2, W // 2), 5.0, np.float32)),
        'conf_nan': lambda: dict(confidence=np.full((H, W), np.nan, np.float32)),
        'image_size': lambda: dict(bgr=make_bgr(4, H // 2, W // 2)),
        'info_aspect': lambda: dict(camera=PinholeCamera(50.0, 26.0, 31.5, 11.5, W, H // 2)),
        'info_zero': lambda: dict(tamper=_zero_intrinsics),
    }
    options = special[kwargs]() if isinstance(kwargs, str) else dict(kwargs)
    _expect_frame_drop(g, 'alignment', 'dropped_frame', text, _bad_set(g, **options))


def _retype(kind, array, encoding, g):
    def tamper(k, msg):
        if k == kind:
            new = g.conv.numpy_to_image(array, encoding, msg.header)
            for field in ('height', 'width', 'encoding', 'step', 'data', 'is_bigendian'):
                setattr(msg, field, getattr(new, field))
    return tamper


def _zero_intrinsics(kind, msg):
    if kind == 'camera_info':
        msg.k = [0.0] * 9
        msg.p = [0.0] * 12


@pytest.mark.rmw_independent
@pytest.mark.parametrize('missing', ['camera_info', 'depth', 'confidence', 'image'])
def test_a_set_missing_one_stereo_stream_is_dropped_when_a_newer_one_completes(g, missing):
    def send():
        stamp = g.next_stamp()
        g.send(stamp, *frame_set(42), skip=(missing,))
        return stamp
    # The newer good set (sent by the check) completes first: the partial one is dropped.
    proc = g.align_node
    g.send_good(901)     # paired once: a partial set is no longer a discovery race
    before = _baseline(g, 'alignment', 'dropped_unpaired')
    mark = len(proc.output())
    stamp = send()
    g.send_good(902)
    text = 'dropped frame {}: missing {}'.format(stamp, missing)
    assert wait_until(lambda: text in proc.output()[mark:], 10), proc.output()[-3000:]
    line = next(x for x in proc.output()[mark:].splitlines() if text in x)
    # One lost message costs one frame; the node goes on: a warning that says what to change.
    assert line.startswith('[WARN]') and 'raise qos_depth (now 5)' in line, line
    assert _count(g, 'alignment', 'dropped_unpaired', before) == before + 1
    assert g.depth.by_stamp(stamp) is None and proc.alive()


@pytest.mark.rmw_independent
def test_a_set_whose_disparity_never_comes_is_skipped_quietly(g):
    # The network skipped the frame (newest-frame policy): counted, not logged as an error.
    before = _baseline(g, 'alignment', 'dropped_skipped')
    mark = len(g.align_node.output())
    stamp = g.next_stamp()
    g.send(stamp, *frame_set(43), skip=('disparity',))
    g.send_good(903)
    assert _count(g, 'alignment', 'dropped_skipped', before) == before + 1
    new = g.align_node.output()[mark:]
    assert '[ERROR]' not in new and 'dropped frame {}'.format(stamp) not in new, new


@pytest.mark.rmw_independent
@pytest.mark.parametrize('stream', ['disparity', 'depth', 'camera_info'])
def test_a_duplicated_stamp_on_one_stream(g, stream):
    stamp = g.send_good(44)

    others = tuple(k for k in ('camera_info', 'confidence', 'depth', 'disparity', 'image')
                   if k != stream)

    def send():
        g.send(stamp, *frame_set(45), skip=others)
        return None
    _expect_frame_drop(g, 'alignment', 'dropped_stamp', 'dropped {} {}: equal to the previous '
                       'stamp'.format(stream, stamp), send)


@pytest.mark.rmw_independent
def test_stamps_out_of_order(g):
    stamp = g.send_good(46)

    def send():
        skip = ('camera_info', 'confidence', 'depth', 'image')
        g.send(stamp - 20000000, *frame_set(47), skip=skip)
        return stamp - 20000000
    _expect_frame_drop(g, 'alignment', 'dropped_stamp', 'older than the previous stamp', send)


@pytest.mark.rmw_independent
def test_stamps_jumping_back_restart_pairing_and_the_filter(g):
    before = _baseline(g, 'alignment', 'stamp_resets')
    g.send_good(48)
    g.stamp -= 30 * 10 ** 9
    g.send_good(49)
    g.send_good(50)
    assert _count(g, 'alignment', 'stamp_resets', before) == before + 1
    assert 'source restarted' in g.align_node.output()


@pytest.mark.rmw_independent
def test_millimetre_depth_is_read_as_metres(g):
    stamp = g.next_stamp()
    bgr, disparity, depth, confidence = frame_set(51)
    mm = np.where(np.isfinite(depth), np.round(depth * 1000.0), 0).astype(np.uint16)
    g.send(stamp, bgr, disparity, mm, confidence)
    assert wait_until(lambda: g.depth.by_stamp(stamp) is not None, 10), g.align_node.output()
    out = g.conv.image_to_numpy(g.depth.by_stamp(stamp))
    ok = np.isfinite(depth)
    assert np.nanmax(np.abs(out[ok] - depth[ok]) / depth[ok]) < 0.01


@pytest.mark.rmw_independent
def test_camera_info_of_the_same_aspect_at_another_size_is_scaled(g):
    stamp = g.next_stamp()
    bgr, disparity, depth, confidence = frame_set(52)
    g.send(stamp, bgr, disparity, depth, confidence, camera=g.camera.scaled(W * 2, H * 2))
    assert wait_until(lambda: g.info.by_stamp(stamp) is not None, 10), g.align_node.output()
    info = g.info.by_stamp(stamp)
    assert (info.width, info.height) == (W, H) and abs(info.k[0] - g.camera.fx) < 1e-9, info
    # depth_image_proc and RViz's DepthCloud project ~/depth with this camera_info (P, or K):
    # both must be the depth's size, not the 2x camera's. Expected from the 2x intrinsics
    # by the pixel-centre rule (u + 0.5) * s - 0.5 that cv2.resize follows.
    big = g.camera.scaled(W * 2, H * 2)
    fx, fy = big.fx / 2, big.fy / 2
    cx, cy = (big.cx + 0.5) / 2 - 0.5, (big.cy + 0.5) / 2 - 0.5
    np.testing.assert_allclose(list(info.k), [fx, 0, cx, 0, fy, cy, 0, 0, 1], atol=1e-9)
    np.testing.assert_allclose(list(info.p), [fx, 0, cx, 0, 0, fy, cy, 0, 0, 0, 1, 0],
                               atol=1e-9)
    assert info.header.frame_id == FRAME


@pytest.mark.rmw_independent
@pytest.mark.parametrize('values', ['nan', 'zero', 'negative', 'inf'])
def test_stereo_without_any_valid_pixel_still_gives_dense_output(g, values):
    stamp = g.next_stamp()
    bgr, disparity, depth, confidence = frame_set(53)
    bad = {'nan': np.nan, 'zero': 0.0, 'negative': -1.0, 'inf': np.inf}[values]
    g.send(stamp, bgr, disparity, np.full((H, W), bad, np.float32), confidence)
    assert wait_until(lambda: g.depth.by_stamp(stamp) is not None, 10), g.align_node.output()
    assert g.align_node.alive()
    status = g.diagnostics_until('alignment', lambda v: v['status'] in ('held', 'no_fit'),
                                 since=now())
    assert status['status'] in ('held', 'no_fit'), status
    g.send_good(904)


@pytest.mark.rmw_independent
def test_a_flood_of_sets_is_dropped_not_queued(g):
    before = _baseline(g, 'alignment', 'dropped_busy')
    stamps = []
    for i in range(40):
        stamps.append(g.next_stamp())
        g.send(stamps[-1], *frame_set(i))
    values = g.diagnostics_until('alignment', lambda v: int(v['pairing_waiting']) == 0)
    assert int(values['pairing_waiting']) == 0
    assert g.depth.by_stamp(stamps[-1]) is not None or wait_until(
        lambda: g.depth.by_stamp(stamps[-1]) is not None, 10), 'the newest set was lost'
    assert int(g.diagnostics('alignment')['dropped_busy']) >= before
    assert g.align_node.alive()


@pytest.mark.rmw_independent
def test_one_pixel_frames(g):
    # The camera turns 64x48 -> 1x1: a 1x1 image that arrives before its set's camera_info is
    # refused on arrival (another aspect ratio than the 64x48 camera_info), the first set at
    # most; the 1x1 camera_info is then the reference, and the next 1x1 set reaches the
    # aligner, which drops it as too small.
    one = lambda a: np.ascontiguousarray(a[:1, :1])  # noqa: E731
    bgr, disparity, depth, confidence = frame_set(54)
    depth[:] = 2.0
    from depth_ros.core.camera import PinholeCamera
    stamps = []
    for _ in range(2):
        stamps.append(g.next_stamp())
        g.send(stamps[-1], one(bgr), one(disparity), one(depth), one(confidence),
               camera=PinholeCamera(1.0, 1.0, 0.0, 0.0, 1, 1))
        time.sleep(0.5)
    proc = g.align_node
    text = 'dropped frame {}: `stereo_depth` must be at least 16x16 pixels, got 1x1'
    assert wait_until(lambda: any(text.format(s) in proc.output() for s in stamps), 10), \
        proc.output()[-3000:]
    assert 'Traceback' not in proc.output() and proc.alive()
    assert 'failed on a frame' not in proc.output(), \
        'a 1x1 frame is a bad frame, not an exception:\n' + proc.output()[-2000:]
    g.send_good(905)


@pytest.mark.rmw_independent
def test_alignment_reports_an_error_when_the_disparity_stops(g):
    # depth_node killed: stereo keeps coming, nothing is aligned. /diagnostics must say so
    # within a few seconds (stale_after_s 1.5 here), naming the missing stream.
    g.send_good(55)
    # Only reports taken after that output: the newest one received can be older (a CI run read
    # an error left by the 1x1 case, "no output for 3.1 s: ... camera_info is 1x1").
    since = now()
    end = time.monotonic() + 15
    values = None
    while time.monotonic() < end:
        g.send(g.next_stamp(), *frame_set(56), skip=('disparity',))
        values = g.diagnostics('alignment', since, wait=False)
        if values and values['_level'] == 2:
            break
        time.sleep(0.1)
    assert values and values['_level'] == 2 and 'no disparity for' in values['_message'], values
    # Good sets until a report says so: one set's "aligned" lasts stale_after_s (1.5 s), which
    # a stalled machine can let pass before the next report is read.
    values = _recovered(g, 'alignment', lambda: g.send_good(906))
    assert values['_message'] == 'aligned'


@pytest.mark.rmw_independent
def test_a_bad_runtime_parameter_change_is_refused_with_the_reason(g, probe):
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter
    client = probe.node.create_client(SetParameters, '/{}/set_parameters'.format(g.align_name))
    try:
        assert client.wait_for_service(10.0)
        future = client.call_async(SetParameters.Request(parameters=[
            Parameter('cloud_stride', value=0).to_parameter_msg()]))
        assert wait_until(future.done, 10)
        result = future.result().results[0]
        # The descriptor's range refuses it (rclpy), before our validator: either names it.
        assert not result.successful and 'cloud_stride' in result.reason, result.reason
    finally:
        probe.node.destroy_client(client)
    g.send_good(907)


# --------------------------------------------------------------- process-level: start-up
def _run(module, *ros_args, params_file=CONFIG, timeout=60, env=None):
    cmd = [sys.executable, '-m', 'depth_ros.ros.' + module, '--ros-args']
    if params_file:
        cmd += ['--params-file', params_file]
    cmd += list(ros_args)
    run_env = dict(os.environ)
    run_env.update(env or {})
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT,
                          timeout=timeout, env=run_env)
    return done.returncode, done.stdout.decode('utf-8', 'replace')


def _one_line(out, text):
    lines = [line for line in out.splitlines() if line.strip()]
    fatal = [line for line in lines if 'FATAL' in line]
    assert len(fatal) == 1 and text in fatal[0], 'expected one FATAL line with {!r}, ' \
        'received:\n{}'.format(text, out)
    assert 'Traceback' not in out, out


@pytest.mark.parametrize('source', ['bag', 'folder', 'svo'])
def test_a_missing_path_is_one_line_and_exit_2(source, tmp_path):
    path = str(tmp_path / 'nope')
    code, out = _run('zed_node', '-p', 'source:=' + source, '-p', 'path:=' + path)
    assert code == 2, (code, out)
    _one_line(out, 'bad configuration: source {}'.format(source))
    assert 'nope' in out


def test_a_folder_that_is_not_a_bag_says_what_is_missing(tmp_path):
    (tmp_path / 'notes.txt').write_text('')
    code, out = _run('zed_node', '-p', 'source:=bag', '-p', 'path:=' + str(tmp_path))
    assert code == 2, (code, out)
    _one_line(out, 'is not a rosbag2 folder: it has no metadata.yaml')


def _write_bag(path, frames=3):
    pytest.importorskip('rosbags', reason='bags need rosbags (depth_ros[bag])')
    from depth_ros.core.camera import PinholeCamera
    from depth_ros.sources.base import Frame
    from depth_ros.sources.rosbag import write_test_bag
    cam = PinholeCamera(50.0, 50.0, 31.5, 23.5, W, H)
    return write_test_bag(path, [Frame(left=make_bgr(i), depth=frame_set(i)[2], confidence=None,
                                       camera=cam, stamp_ns=(i + 1) * 10 ** 8,
                                       frame_id=FRAME) for i in range(frames)])


def _corrupt(bag):
    db = [f for f in os.listdir(bag) if f.endswith('.db3')][0]
    path = os.path.join(bag, db)
    size = os.path.getsize(path)
    with open(path, 'r+b') as f:          # keep the sqlite header, garble the pages
        f.seek(100)
        f.write(os.urandom(size - 100))


def test_a_corrupt_bag_ends_the_node_with_one_fatal_line(tmp_path):
    bag = _write_bag(str(tmp_path / 'bag'))
    _corrupt(bag)
    code, out = _run('zed_node', '-p', 'source:=bag', '-p', 'path:=' + bag, '-p', 'loop:=false')
    assert code in (1, 2), (code, out)
    _one_line(out, 'bag')
    assert 'cannot' in out and 'CorruptError' in out or 'DatabaseError' in out or \
        'ReaderError' in out or 'not a database' in out, out


@pytest.mark.parametrize('content, text', [
    (None, 'bad arguments'),
    ('/**/zed_node:\n  ros__parameters:\n    source: [unclosed\n', 'bad arguments'),
])
def test_a_missing_or_malformed_params_file_is_one_line_and_exit_2(tmp_path, content, text):
    path = str(tmp_path / 'params.yaml')
    if content is not None:
        with open(path, 'w') as f:
            f.write(content)
    code, out = _run('zed_node', params_file=path)
    assert code == 2, (code, out)
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and text in lines[0] and 'Traceback' not in out, out


def _run_argv(module, argv, timeout=30):
    done = subprocess.run([sys.executable, '-m', 'depth_ros.ros.' + module] + argv,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                          timeout=timeout)
    return done.returncode, done.stdout.decode('utf-8', 'replace'), \
        done.stderr.decode('utf-8', 'replace')


@pytest.mark.rmw_independent   # refused before rclpy.init
@pytest.mark.parametrize('module, argv, bad', [
    # `--ros-args -p` forgotten: the node ran on its defaults, in silence (rclpy hands the
    # program what is outside --ros-args, and the node read none of it).
    ('alignment_node', ['cloud_stride:=4'], 'cloud_stride:=4'),
    ('depth_node', ['--ros-args', '-p', 'backend:=standin', '--', '--foo'], '--foo'),
])
def test_an_argument_outside_ros_args_is_one_line_and_exit_2(module, argv, bad):
    code, out, err = _run_argv(module, argv)
    assert (code, out) == (2, ''), (code, out, err)
    assert err == '[FATAL] [{0}]: bad arguments: unexpected argument {1!r}: a node takes ROS ' \
        'arguments only, after --ros-args (`{0} --ros-args -p name:=value`; --help lists its ' \
        'parameters)\n'.format(module, bad), err


@pytest.mark.rmw_independent   # answered before rclpy.init
def test_help_lists_the_node_parameters_and_starts_nothing():
    # `ros2 run depth_ros depth_node --help` loaded the model (backend auto) and ended with
    # its FATAL line, exit 1.
    from depth_ros.nodes_core.config import DEPTH_PARAMS
    code, out, err = _run_argv('depth_node', ['--help'])
    assert (code, err) == (0, ''), (code, out, err)
    lines = out.splitlines()
    assert lines[0].startswith('usage: depth_node [--ros-args [-p NAME:=VALUE]...'), out
    listed = [line.split(' ')[2] for line in lines if line.startswith('  ')]
    assert listed == [p.name for p in DEPTH_PARAMS], listed
    assert "  backend ('auto', read-only): " in out and "  standin_latency_ms (30.0): " in out


@pytest.mark.rmw_independent   # answered before rclpy is imported
def test_composed_nodes_help_is_its_usage_and_exit_0():
    # `composed_nodes --help` was "bad arguments: unexpected argument '--help'", exit 2.
    from depth_ros.ros.composed import USAGE
    code, out, err = _run_argv('composed', ['--help'])
    assert (code, err) == (0, ''), (code, out, err)
    assert out.startswith(USAGE + '\n\n') and 'ros2 run depth_ros <node> --help' in out, out
    code, out, err = _run_argv('composed', ['--help', '--node', 'zed_node'])
    assert code == 2 and "unexpected argument '--help'" in err, (code, out, err)


def test_an_unknown_parameter_name_is_reported_with_a_suggestion():
    proc = NodeProcess('alignment_node', name='alignment_unknown',
                       params={'cloud_strid': 1, 'buffer_size': 8})
    try:
        assert proc.wait_for_output('unknown parameter `cloud_strid` ignored: did you mean '
                                    '`cloud_stride`?', 20), proc.output()
        assert proc.wait_for_output('unknown parameter `buffer_size` ignored: removed in 0.2',
                                    5), proc.output()
        assert proc.alive()
    finally:
        proc.stop()


@pytest.mark.parametrize('module, param, text', [
    # The descriptor's range and type are rclpy's checks, and its text (Humble and later)
    # names the parameter and the value; the choices are ours.
    ('alignment_node', 'cloud_stride:=0',
     'bad configuration: Invalid parameter value (0) for parameter. Reason: Parameter '
     'cloud_stride out of range. Min: 1, Max: 32, value: 0'),
    ('alignment_node', 'cloud_stride:=abc',
     "bad configuration: Trying to set parameter 'cloud_stride' to 'abc' of type 'STRING', "
     "expecting type 'INTEGER'"),
    ('depth_node', 'backend:=tf', "parameter `backend` must be one of"),
    ('zed_node', 'resolution:=HD4K', "parameter `resolution` must be one of"),
])
def test_an_invalid_parameter_value_is_one_line_and_exit_2(module, param, text):
    code, out = _run(module, '-p', param, '-p', 'backend:=standin' if module == 'depth_node'
                     and 'backend' not in param else 'log_throttle_s:=1.0')
    assert code == 2, (code, out)
    _one_line(out, text)


def test_a_frame_too_large_for_the_middleware_stops_zed_node_naming_the_fix():
    pytest.importorskip('skimage', reason='the sample source needs scikit-image')
    code, out = _run('zed_node', '-p', 'source:=sample', env={
        'DEPTH_ROS_MAX_MESSAGE_BYTES': '500000'})
    assert code == 1, (code, out)
    _one_line(out, 'MB, above the 0.5 MB that Fast DDS carries whole')
    assert 'publish_downscale:=' in out, out


@pytest.mark.rmw_independent
def test_a_cloud_too_large_for_the_middleware_is_refused_once_naming_cloud_stride(
        probe, node_processes):
    # 64x48 points of 16 bytes are 49 kB: a 30 kB limit refuses stride 1, takes stride 2.
    big = FedGraph(probe, node_processes, ns='/faults_big', suffix='_big',
                   align_params={'cloud_stride': 1,
                                 'diagnostics_period_s': DIAGNOSTICS_PERIOD_S},
                   align_env={'DEPTH_ROS_MAX_MESSAGE_BYTES': '30000'})
    env_node = big.align_node
    big.send_good(1)
    big.send_good(2)
    out = env_node.output()
    lines = [line for line in out.splitlines() if 'cloud is' in line]
    assert len(lines) == 1 and 'no cloud is published; set cloud_stride:=2 (now 1)' in lines[0], \
        out
    values = big.diagnostics_until('alignment', lambda v: v['cloud_refused'] != '')
    assert 'cloud_stride:=2' in values['cloud_refused'] and int(values['published_points']) == 0
    assert env_node.alive()


# ------------------------------------------------------------ process-level: shutdown
def _interrupt(proc, times, gap=0.05):
    for i in range(times):
        proc.proc.send_signal(signal.SIGINT)
        time.sleep(gap)
    return proc.wait(20, 'its exit after {} SIGINT'.format(times))


def test_ctrl_c_during_an_inference_is_quiet_and_exits_0(probe, node_processes):
    node = NodeProcess('depth_node', name='depth_node_slow', params={
        'backend': 'standin', 'standin_latency_ms': 1500.0}, remaps={'image': '/slow/image'})
    node_processes.append(node)     # stopped at the end of the module even if this fails
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header
    pub = probe.publisher(Image, '/slow/image')
    started = probe.subscribe(Header, '/depth_node_slow/inference_started')
    assert probe.wait_for_subscribers(pub, 1, 30), node.output()
    assert wait_until(lambda: probe.node.count_publishers(
        '/depth_node_slow/inference_started') >= 1, 15)
    from depth_ros.ros import conversions as conv
    # Best effort: resent until an inference starts, 30 s at most.
    end, i = time.monotonic() + 30.0, 0
    while time.monotonic() < end:
        pub.publish(conv.numpy_to_image(make_bgr(i % 20), 'bgr8', conv.make_header(
            10 ** 9 + i, FRAME)))
        i += 1
        if wait_until(lambda: len(started) > 0, 0.5):
            break
    assert len(started), 'the inference never started:\n' + node.output()
    code = _interrupt(node, 1)           # mid-inference: 1.5 s to go
    out = node.output()
    assert code == 0, (code, out)
    assert '[ERROR]' not in out and 'Traceback' not in out and 'context is invalid' not in out, out


_PROBE = []


def _probe_of_module():
    return _PROBE[0]


@pytest.fixture(autouse=True)
def _remember_probe(probe):
    _PROBE[:] = [probe]


@pytest.mark.parametrize('presses', [2, 3])
def test_repeated_ctrl_c_is_quiet_and_exits_0(presses):
    pytest.importorskip('skimage', reason='the sample source needs scikit-image')
    from sensor_msgs.msg import Image
    node = NodeProcess('zed_node', name='zed_ctrl_c', params={'source': 'sample'},
                       extra_ros_args=['-r', '__ns:=/ctrl_c'])
    probe = _probe_of_module()
    images = probe.subscribe(Image, '/ctrl_c/zed_ctrl_c/left/image_rect_color')
    try:
        # Streaming: the grab thread is publishing when the signals come.
        assert wait_until(lambda: len(images) > 0, 60), node.output()
        code = _interrupt(node, presses, gap=0.02)
    finally:
        node.stop()
    out = node.output()
    assert code == 0, (code, out)
    assert 'Traceback' not in out and 'KeyboardInterrupt' not in out, out


def test_sigterm_is_a_clean_shutdown(probe):
    node = NodeProcess('alignment_node', name='alignment_sigterm')
    try:
        assert wait_until(lambda: ('alignment_sigterm', '/') in
                          probe.node.get_node_names_and_namespaces(), 30), node.output()
        node.proc.send_signal(signal.SIGTERM)
        code = node.wait(20, 'its exit after SIGTERM')
    finally:
        node.stop()
    assert code == 0, (code, node.output())
    assert 'Traceback' not in node.output()


def test_a_signal_after_the_teardown_is_still_ignored():
    # Ctrl-C in a terminal reaches the node and `ros2 launch` together; launch then forwards
    # a second SIGINT, which may arrive after the node finished its teardown, while Python
    # finalizes. Once stopped by a signal, SIGINT and SIGTERM are ignored until the process
    # exits (no KeyboardInterrupt, no death by SIGINT); without a signal the handlers are
    # given back.
    from depth_ros.ros.runtime import Signals
    original = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with Signals() as quiet:
            pass
        assert signal.getsignal(signal.SIGINT) is original[signal.SIGINT] and quiet.count == 0
        with Signals() as stopped:
            os.kill(os.getpid(), signal.SIGINT)
            assert wait_until(lambda: stopped.count == 1, 2)
        assert signal.getsignal(signal.SIGINT) == signal.getsignal(signal.SIGTERM) == \
            signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)           # the late ones: nothing happens
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
    finally:
        for sig, handler in original.items():
            signal.signal(sig, handler)


def test_sigints_until_the_node_has_exited_still_give_exit_0():
    # What `ros2 launch` does after a terminal's Ctrl-C: a second SIGINT a moment after the
    # first, while the node tears down or Python finalizes (Humble: exit -2 before the fix).
    # One every 50 ms until the process is gone covers every moment of its exit.
    from diagnostic_msgs.msg import DiagnosticArray
    probe = _probe_of_module()
    diagnostics = probe.subscribe(DiagnosticArray, '/diagnostics', probe.qos('reliable', 50))
    node = NodeProcess('alignment_node', name='alignment_late_sigint',
                       params={'diagnostics_period_s': 0.2})
    try:
        # Spinning: its diagnostics timer has fired (start-up is another test's case).
        assert wait_until(lambda: any(s.hardware_id == '/alignment_late_sigint'
                                      for m in list(diagnostics.msgs) for s in m.status), 30), \
            node.output()
        end = time.monotonic() + 10
        while node.proc.poll() is None and time.monotonic() < end:
            node.proc.send_signal(signal.SIGINT)
            time.sleep(0.05)
        code = node.wait(10, 'its exit after a SIGINT every 50 ms')
    finally:
        node.stop()
    assert code == 0, (code, node.output())
    assert 'Traceback' not in node.output() and 'KeyboardInterrupt' not in node.output()


_SIGNAL_IN_STARTUP = r"""
import os, signal, sys, time
import rclpy
from depth_ros.ros import compat, runtime

where, signame = sys.argv[1], sys.argv[2]
sig = getattr(signal, signame)
init = compat.init
check_params_files = runtime.params_file_error


def signalled_check(argv):
    if where == 'arguments':
        os.kill(os.getpid(), sig)   # while the parameter files are read (a YAML parse)
    return check_params_files(argv)


def signalled_init(args):
    if where == 'init':
        os.kill(os.getpid(), sig)   # delivered as the init call returns
    init(args)


def factory():
    node = rclpy.create_node('startup_signal')
    if where in ('constructor', 'end_of_constructor'):
        os.kill(os.getpid(), sig)
    if where == 'constructor':
        time.sleep(30)              # a model load: the signal must cut it short
    if where == 'string_code':
        # The KeyboardInterrupt raised in code run from a string, as a namedtuple's, a
        # dataclass's or empy's (which Humble's message imports load) is.
        exec('os.kill(os.getpid(), sig)\ntime.sleep(30)', {'os': os, 'sig': sig, 'time': time})
    return node


compat.init = signalled_init
runtime.params_file_error = signalled_check
started = time.monotonic()
code = runtime.run_node(factory, 'startup_signal', args=[])
print('exit', code, 'after', round(time.monotonic() - started, 1), 'ok', rclpy.ok())
sys.exit(code)
"""


@pytest.mark.parametrize('signame', ['SIGTERM', 'SIGINT'])
@pytest.mark.parametrize('where', ['arguments', 'init', 'constructor', 'end_of_constructor',
                                   'string_code'])
def test_a_signal_during_start_up_is_a_clean_exit_0(where, signame, tmp_path):
    # A launch shut down while a node still loads its model (or just after it registered on
    # the graph, where the CI once caught SIGTERM meeting the default action: exit -15), or
    # still reads its parameter files (Humble, Fast DDS: depth_node failed at once, launch
    # stopped alignment_node there, and a KeyboardInterrupt traceback ended it).
    # 'string_code': the interrupt caught, CPython still noted it as unhandled, and a
    # `python -m` run (as this one, and the tests' nodes) ended by SIGINT, exit -2 with no
    # word, after its clean exit (runtime.Signals; Humble, Cyclone DDS: 1 run in 60).
    (tmp_path / 'startup_signal_script.py').write_text(_SIGNAL_IN_STARTUP)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tmp_path), ROOT] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep)
                                 if p]))
    done = subprocess.run([sys.executable, '-m', 'startup_signal_script', where, signame],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT,
                          timeout=60, universal_newlines=True, env=env)
    assert done.returncode == 0, done.stdout
    assert 'Traceback' not in done.stdout and 'KeyboardInterrupt' not in done.stdout, \
        done.stdout
    seconds = float(done.stdout.split('after ')[1].split()[0])
    assert seconds < 10.0, done.stdout          # the 30 s "model load" was cut short
    assert done.stdout.rstrip().endswith('ok False'), done.stdout   # context shut down


_SIGNAL_IN_COMPOSED_ARGUMENTS = r"""
import os, signal, sys
from depth_ros.ros import composed

check_params_files = composed.params_file_error


def signalled_check(argv):
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))   # while the parameter files are read
    return check_params_files(argv)


composed.params_file_error = signalled_check
code = composed.run(['composed_nodes', '--node', 'depth_node', '--ros-args', '-p',
                     'backend:=standin', '--'])
print('exit', code)
sys.exit(code)
"""


@pytest.mark.parametrize('signame', ['SIGTERM', 'SIGINT'])
def test_a_signal_while_composed_reads_its_arguments_is_a_clean_exit_0(signame):
    # composed_nodes takes the stop signals before its argument checks, as a node does.
    done = subprocess.run([sys.executable, '-c', _SIGNAL_IN_COMPOSED_ARGUMENTS, signame],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT,
                          timeout=60, universal_newlines=True)
    assert done.returncode == 0, done.stdout
    assert done.stdout.rstrip().endswith('exit 0'), done.stdout
    assert 'Traceback' not in done.stdout and 'KeyboardInterrupt' not in done.stdout, \
        done.stdout


_SIGNAL_IN_IMPORT = r"""
import importlib, os, signal, sys
target, signame = sys.argv[1], sys.argv[2]
module, function = target.split(':')


class SignalOnRclpy(object):
    # Delivers the signal as rclpy starts to import: inside the node module's imports.
    fired = False

    def find_spec(self, name, path=None, target=None):
        if name == 'rclpy' and not self.fired:
            self.fired = True
            os.kill(os.getpid(), getattr(signal, signame))
        return None


sys.meta_path.insert(0, SignalOnRclpy())
sys.argv = [sys.argv[0]]
getattr(importlib.import_module(module), function)()   # what the console script does
"""


def _node_console_scripts():
    import re
    with open(os.path.join(ROOT, 'setup.py')) as f:
        text = f.read()
    return re.findall(r"'((?:zed|depth|alignment|marigold|composed)_nodes?) = ([\w.]+:\w+)'",
                      text)


@pytest.mark.parametrize('signame', ['SIGINT', 'SIGTERM'])
@pytest.mark.parametrize('script, target', _node_console_scripts())
def test_a_signal_while_the_node_module_imports_is_a_clean_exit_0(script, target, signame):
    # Ctrl-C right after `ros2 launch`, or launch stopping the other nodes when one fails at
    # once (composed:=false with a malformed params file): the signal came while the console
    # script imported rclpy and the node, before the node's handlers: a KeyboardInterrupt
    # traceback and exit -2 (SIGTERM: exit -15).
    assert len(_node_console_scripts()) == 5
    done = subprocess.run([sys.executable, '-c', _SIGNAL_IN_IMPORT, target, signame],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT,
                          timeout=60, universal_newlines=True)
    assert done.returncode == 0, (script, done.returncode, done.stdout)
    assert 'Traceback' not in done.stdout and 'KeyboardInterrupt' not in done.stdout, \
        done.stdout


_SIGNAL_AS_IT_EXITS = r"""
import atexit, os, signal, sys, types
from depth_ros.ros import entry


def late_stop():
    os.kill(os.getpid(), signal.SIGINT)   # launch stopping the others as this one exits


def main():
    print('[FATAL] [node]: bad configuration: ...')
    sys.exit(2)


atexit.register(late_stop)
sys.modules['node_that_fails'] = types.SimpleNamespace(main=main)
entry._run('node_that_fails')
"""


def test_a_signal_as_a_failed_node_exits_keeps_its_exit_code_and_is_quiet():
    # composed:=false, two nodes refusing a bad params file at once: launch sent SIGINT to the
    # second while it exited, which then died of it (exit -2 in place of 2), or printed a
    # KeyboardInterrupt traceback from an exit handler.
    done = subprocess.run([sys.executable, '-c', _SIGNAL_AS_IT_EXITS], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, cwd=ROOT, timeout=60,
                          universal_newlines=True)
    assert done.returncode == 2 and done.stdout.splitlines() == [
        '[FATAL] [node]: bad configuration: ...'], (done.returncode, done.stdout)


_OPENCV_THREADS = r"""
import sys, types
from depth_ros.ros import entry


def main():
    import cv2
    print(cv2.getNumThreads())


sys.modules['node'] = types.SimpleNamespace(main=main)
entry._run('node')
"""


@pytest.mark.parametrize('given, expected', [(None, 1), ('2', 2), ('0', None), ('', 1),
                                             (' 3 ', 3)])
@pytest.mark.rmw_independent   # no ROS: the console scripts' first lines
def test_our_node_processes_run_opencv_on_the_calling_thread_unless_told(given, expected):
    # Our nodes work in threads of their own: OpenCV's pool added threads that wake, spin and
    # sleep around each call, for more CPU than it saved (docs/ros.md). OPENCV_FOR_THREADS_NUM
    # is 1 unless set; a value given is OpenCV's (0: its default, one thread per core).
    env = dict(os.environ)
    env.pop('OPENCV_FOR_THREADS_NUM', None)
    if given is not None:
        env['OPENCV_FOR_THREADS_NUM'] = given
    done = subprocess.run([sys.executable, '-c', _OPENCV_THREADS], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, cwd=ROOT, env=env, timeout=60,
                          universal_newlines=True)
    assert done.returncode == 0, done.stdout
    threads = int(done.stdout.split()[-1])
    if expected is None:
        expected = subprocess.run(
            [sys.executable, '-c', 'import cv2; print(cv2.getNumThreads())'],
            stdout=subprocess.PIPE, env=env, timeout=60, universal_newlines=True).stdout
        expected = int(expected)
    assert threads == expected, (given, done.stdout)


@pytest.mark.parametrize('given', ['abc', '-1', '1.5', '\u00b2', '\u0663', '1025',
                                   '99999999999999999999'])
@pytest.mark.rmw_independent   # no ROS: the console scripts' first lines
def test_a_bad_opencv_thread_count_is_one_fatal_line_naming_it(given):
    # OpenCV's import fails on it with a cv2.error traceback (stoull); the node says which
    # variable and value, exit 2 as for a bad parameter, before anything is imported.
    env = dict(os.environ, OPENCV_FOR_THREADS_NUM=given)
    done = subprocess.run([sys.executable, '-c', _OPENCV_THREADS], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, cwd=ROOT, env=env, timeout=60,
                          universal_newlines=True)
    assert done.returncode == 2 and done.stdout.splitlines() == [
        "[FATAL] [node]: OPENCV_FOR_THREADS_NUM={!r} is not a whole number of threads from 0 "
        "to 1024 (1, our default: OpenCV on the calling thread; 0: one per core)".format(given)
    ], done.stdout


@pytest.mark.parametrize('value, calls', [('1', [1]), ('3', [3]), ('0', [])])
@pytest.mark.rmw_independent
def test_the_thread_count_is_given_to_an_opencv_that_may_not_read_the_variable(
        value, calls, monkeypatch):
    # An OpenCV built with TBB or OpenMP may not read OPENCV_FOR_THREADS_NUM; setNumThreads
    # works for every build (0: OpenCV's default is left alone; its setNumThreads(0) means
    # no threads).
    from depth_ros.ros import entry
    seen = []
    monkeypatch.setitem(sys.modules, 'cv2', types.SimpleNamespace(setNumThreads=seen.append))
    entry.apply_opencv_threads(value)
    assert seen == calls


_MALLOC = r"""
import ctypes, sys
from depth_ros.nodes_core.params import ConfigError
from depth_ros.ros.runtime import run_node


def mapped_bytes():
    # glibc's bytes in mmapped blocks (struct mallinfo2 from 2.33, mallinfo's int fields before)
    libc = ctypes.CDLL(None)
    call, field = (libc.mallinfo2, ctypes.c_size_t) if hasattr(libc, 'mallinfo2') else \
        (libc.mallinfo, ctypes.c_int)

    class Info(ctypes.Structure):
        _fields_ = [(name, field) for name in (
            'arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks', 'fsmblks', 'uordblks',
            'fordblks', 'keepcost')]
    call.restype = Info
    return call().hblkhd


def factory():          # the node's start, as a node process makes it
    import numpy as np
    before = mapped_bytes()
    # 24 MB: under the nodes' 32 MB threshold, and well above what glibc raises its own
    # threshold to while the modules import (the largest mapped block they free)
    block = np.ones(24 << 20, np.uint8)
    print('mapped', mapped_bytes() - before, int(block[-1]))
    raise ConfigError('stop here')


sys.exit(run_node(factory, 'probe_node', ['probe_node']))
"""


def _without_malloc_tuning(**tuning):
    from depth_ros.nodes_core.workers import KEEP_LARGE_BLOCKS, MALLOC_VARIABLES
    env = dict(os.environ)
    for name in MALLOC_VARIABLES + ('GLIBC_TUNABLES', KEEP_LARGE_BLOCKS):
        env.pop(name, None)
    env.update(tuning)
    return env


@pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='mallopt and mallinfo are glibc\'s')
@pytest.mark.parametrize('tuning, kept', [
    ({}, True),
    ({'DEPTH_ROS_KEEP_LARGE_BLOCKS': '1'}, True),
    ({'DEPTH_ROS_KEEP_LARGE_BLOCKS': '0'}, False),
    ({'MALLOC_MMAP_THRESHOLD_': '131072'}, False),
    ({'GLIBC_TUNABLES': 'glibc.malloc.mmap_threshold=131072'}, False)])
@pytest.mark.rmw_independent   # a node's start-up, not the graph
def test_a_node_process_keeps_large_blocks_in_the_heap_unless_told(tuning, kept):
    # Each frame's 1-4 MB arrays were mapped and unmapped by glibc, their pages faulted in and
    # zeroed every frame; a node's start fixes the mmap threshold at 32 MB (mallopt), so a
    # 24 MB block comes from the heap (no mapped bytes added). DEPTH_ROS_KEEP_LARGE_BLOCKS=0
    # leaves glibc as it is (its threshold starts at 128 kB), and malloc tuning in the
    # environment is the user's: with glibc's 128 kB threshold fixed there, the block is mapped.
    done = subprocess.run([sys.executable, '-c', _MALLOC], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, cwd=ROOT, timeout=60,
                          env=_without_malloc_tuning(**tuning), universal_newlines=True)
    assert done.returncode == 2, done.stdout
    added, value = (int(x) for x in done.stdout.split('mapped ')[1].split()[:2])
    assert value == 1
    assert (added < 24 << 20) if kept else (added >= 24 << 20), (tuning, added, done.stdout)


class _Libc(object):
    def __init__(self, answers):
        self.answers, self.calls = list(answers), []

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return self.answers.pop(0)


def test_keep_large_blocks_says_what_it_did():
    from depth_ros.nodes_core.workers import keep_large_blocks
    libc = _Libc([1, 1])
    assert keep_large_blocks({}, libc) == \
        'malloc keeps large blocks (mmap threshold 32 MB, trim threshold 64 MB)'
    assert libc.calls == [(-3, 32 << 20), (-1, 64 << 20)]   # <malloc.h>'s parameter numbers
    assert keep_large_blocks({}, _Libc([1, 0])) == \
        'malloc left as it is (mallopt refused M_TRIM_THRESHOLD)'
    assert keep_large_blocks({}, types.SimpleNamespace()) == \
        'malloc left as it is (no mallopt: not glibc)'
    libc = _Libc([])
    assert keep_large_blocks(
        {'MALLOC_TOP_PAD_': '131072', 'MALLOC_TRIM_THRESHOLD_': '', 'GLIBC_TUNABLES':
         'glibc.malloc.arena_max=2'}, libc) == \
        'malloc left as the environment sets it (MALLOC_TOP_PAD_, GLIBC_TUNABLES)'
    assert libc.calls == []
    assert keep_large_blocks({'GLIBC_TUNABLES': 'glibc.rtld.nns=2'}, _Libc([1, 1])) \
        .startswith('malloc keeps large blocks')
    assert keep_large_blocks({'DEPTH_ROS_KEEP_LARGE_BLOCKS': ' 0 '}, _Libc([])) == \
        'malloc left as it is (DEPTH_ROS_KEEP_LARGE_BLOCKS=0)'
    for bad in ('yes', '2', 'false'):
        with pytest.raises(ValueError) as err:
            keep_large_blocks({'DEPTH_ROS_KEEP_LARGE_BLOCKS': bad}, _Libc([]))
        assert str(err.value) == (
            "DEPTH_ROS_KEEP_LARGE_BLOCKS={!r} must be 0 (glibc's own malloc behaviour) or 1 (the "
            "default: a frame's large blocks kept for the next)".format(bad))


_MALLOC_SETTING = r"""
import sys
from depth_ros.ros import composed
from depth_ros.ros.runtime import run_node


def factory():
    raise AssertionError('the node must not be made')


if sys.argv[1] == 'composed_nodes':
    sys.exit(composed.run(['composed_nodes', '--node', 'zed_node']))
sys.exit(run_node(factory, 'probe_node', ['probe_node']))
"""


@pytest.mark.parametrize('process', ['probe_node', 'composed_nodes'])
@pytest.mark.rmw_independent   # a node's start-up, not the graph
def test_a_bad_keep_large_blocks_setting_is_one_fatal_line_naming_it(process):
    done = subprocess.run([sys.executable, '-c', _MALLOC_SETTING, process],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT,
                          timeout=60, env=_without_malloc_tuning(DEPTH_ROS_KEEP_LARGE_BLOCKS='on'),
                          universal_newlines=True)
    assert done.returncode == 2 and done.stdout.splitlines() == [
        "[FATAL] [{}]: DEPTH_ROS_KEEP_LARGE_BLOCKS='on' must be 0 (glibc's own malloc "
        "behaviour) or 1 (the default: a frame's large blocks kept for the next)".format(
            process)], done.stdout


_COMPOSED_THREADS = r"""
import sys
from depth_ros.ros import composed, entry
composed.main = lambda: print('calls', sys.modules['cv2'].calls if 'cv2' in sys.modules else None)
entry._run('depth_ros.ros.composed')
"""


@pytest.mark.rmw_independent
def test_composed_nodes_gives_the_thread_count_to_opencv_too(tmp_path):
    # composed's module does not import OpenCV (its nodes do, when they are built): the
    # thread count must reach cv2.setNumThreads there as in the separate nodes' processes.
    # A stand-in cv2 records the calls (the PyPI build would read the variable anyway).
    (tmp_path / 'cv2.py').write_text('calls = []\nsetNumThreads = calls.append\n')
    env = dict(os.environ, OPENCV_FOR_THREADS_NUM='3', PYTHONPATH=os.pathsep.join(
        [str(tmp_path), ROOT, os.environ.get('PYTHONPATH', '')]))
    env.pop('DEPTH_ROS_LAUNCH_PID', None)
    done = subprocess.run([sys.executable, '-c', _COMPOSED_THREADS], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, cwd=ROOT, env=env, timeout=60,
                          universal_newlines=True)
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == 'calls [3]', done.stdout


_SLOW_TEARDOWN = r"""
import os, signal, sys, threading, time
from depth_ros.nodes_core.params import DIAGNOSTICS_PERIOD, LOG_THROTTLE
from depth_ros.ros import runtime
runtime.TEARDOWN_DUMP_S = 0.5


class SlowClose(runtime.DepthRosNode):
    def __init__(self):
        super().__init__('slow_close', [DIAGNOSTICS_PERIOD, LOG_THROTTLE])

    def close(self):
        time.sleep(1.5)      # a close that outlives the watchdog


threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
sys.exit(runtime.run_node(SlowClose, 'slow_close', ['slow_close']))
"""


@pytest.mark.rmw_independent   # the process's own teardown, not the graph
def test_a_teardown_that_outlives_its_bound_writes_every_thread_s_stack():
    # An alignment_node once outlived launch's SIGINT and SIGTERM (killed 15 s later) with no
    # word of where it was. Now a teardown still running TEARDOWN_DUMP_S after the stop writes
    # every thread's stack to stderr (faulthandler: also where C code holds the GIL), and the
    # process still ends as it would.
    done = subprocess.run([sys.executable, '-c', _SLOW_TEARDOWN], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, cwd=ROOT, timeout=60,
                          env=_without_malloc_tuning(), universal_newlines=True)
    assert done.returncode == 0, done.stdout
    assert 'Timeout (0:00:00.500000)!' in done.stdout, done.stdout
    # The stack of the main thread, in the slow close, called from the teardown.
    assert re.search(r'File "<string>", line \d+ in close\n.*line \d+ in teardown',
                     done.stdout, re.S), done.stdout
    assert done.stdout.count('Timeout (') == 1, done.stdout


_STARTUP_DEBUG = r"""
import logging, sys
from depth_ros.nodes_core.params import ConfigError
from depth_ros.ros.runtime import run_node


def factory():
    logging.getLogger('depth_ros.probe').debug('looked for the model in %s', 'the cache')
    logging.getLogger('depth_ros.probe').info('no model found')
    raise ConfigError('stop here')


sys.exit(run_node(factory, 'probe_node', ['probe_node', '--ros-args', '-r', '__ns:=/cam',
                                          '--log-level', sys.argv[1]]))
"""


@pytest.mark.parametrize('level', ['cam.probe_node:=debug', 'cam.probe_node:=info'])
@pytest.mark.rmw_independent   # logging, not the graph
def test_the_start_up_debug_records_reach_a_node_at_debug(level):
    # log_level:=debug gives our nodes' loggers debug (--log-level zed.zed_node:=debug); the
    # library's debug records of the start-up (the model search, an engine build) were lost:
    # debug was turned on for them only once the node existed. They go to the node's logger,
    # named as rcl will name it.
    done = subprocess.run([sys.executable, '-c', _STARTUP_DEBUG, level], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, cwd=ROOT, timeout=60,
                          env=_without_malloc_tuning(), universal_newlines=True)
    assert done.returncode == 2, done.stdout
    lines = [line.split(']: ', 1)[0].split('] [')[0] + '] ' + line.split('] [')[-1]
             for line in done.stdout.splitlines() if line.startswith('[')]
    want = ['[INFO] cam.probe_node]: no model found', '[FATAL] probe_node]: bad configuration: '
            'stop here']
    if level.endswith('debug'):
        want[:0] = ['[DEBUG] cam.probe_node]: ' + (
            'malloc keeps large blocks (mmap threshold 32 MB, trim threshold 64 MB)'
            if platform.libc_ver()[0] == 'glibc' else 'malloc left as it is (no mallopt: '
            'not glibc)'), '[DEBUG] cam.probe_node]: looked for the model in the cache']
    assert lines == want, done.stdout


_FORWARDED_LEVELS = r"""
import logging
import rclpy
from depth_ros.nodes_core.workers import forward_library_logs
rclpy.init()
node = rclpy.create_node('probe_node')
forward_library_logs(node.get_logger())
library = logging.getLogger('depth_ros.probe')
library.info('model: the cache')
library.warning('engine stale: rebuilt')
library.info('ready')
library.error('a frame dropped')
library.critical('worker dead')
node.destroy_node()
rclpy.shutdown()
"""


@pytest.mark.rmw_independent   # logging, not the graph
def test_library_records_of_every_level_reach_the_node_logger():
    # rclpy's logger keeps a context per call site and refuses another severity from the same
    # one: the forwarder's single call lost every record whose level differed from the first
    # ('--- Logging error --- ... Logger severity cannot be changed between calls').
    done = subprocess.run([sys.executable, '-c', _FORWARDED_LEVELS], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, cwd=ROOT, timeout=60,
                          universal_newlines=True)
    assert done.returncode == 0, done.stdout
    lines = [(line.split(']')[0] + ']', line.split(']: ', 1)[-1])
             for line in done.stdout.splitlines()]
    assert lines == [('[INFO]', 'model: the cache'), ('[WARN]', 'engine stale: rebuilt'),
                     ('[INFO]', 'ready'), ('[ERROR]', 'a frame dropped'),
                     ('[FATAL]', 'worker dead')], done.stdout


_STOP_WITH_LAUNCH = r"""
import ctypes, json, os, sys, types
from depth_ros.ros import entry
case, dead = sys.argv[1], sys.argv[2]
launch = {'parent': str(os.getppid()), 'gone': dead, 'not the parent': '1', 'junk': 'x'}
env = {entry.LAUNCH_PID: launch[case]} if case in launch else {}
if case == 'run, launch gone':
    # The console script of a node whose launch died before it asked: not started.
    os.environ[entry.LAUNCH_PID] = dead
    sys.modules['node'] = types.SimpleNamespace(main=lambda: print('started'))
    entry._run('node')
asked = entry.stop_with_launch(env)
signum = ctypes.c_int(-1)
ctypes.CDLL(None, use_errno=True).prctl(2, ctypes.byref(signum), 0, 0, 0)  # PR_GET_PDEATHSIG
print(json.dumps([asked, signum.value]))
"""


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='prctl is Linux\'s')
@pytest.mark.parametrize('case, expected', [
    ('parent', [True, int(signal.SIGTERM)]),     # started by the launch: SIGTERM at its death
    ('no variable', [True, 0]),                   # ros2 run, a shell: nothing asked
    ('not the parent', [True, 0]),                # a prefix (gdb) between: not ours to watch
    ('junk', [True, 0]),
    ('gone', [False, 0]),                         # the launch died before we asked: stop
    ('run, launch gone', None),
])
@pytest.mark.rmw_independent   # no ROS: the console scripts' first lines
def test_a_node_asks_for_sigterm_when_the_launch_that_started_it_dies(case, expected):
    gone = subprocess.Popen([sys.executable, '-c', 'pass'])
    gone.wait(30)
    done = subprocess.run([sys.executable, '-c', _STOP_WITH_LAUNCH, case, str(gone.pid)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT,
                          timeout=60, universal_newlines=True)
    if expected is None:
        assert done.returncode == 0 and done.stdout == '', (done.returncode, done.stdout)
    else:
        assert done.returncode == 0, done.stdout
        assert json.loads(done.stdout) == expected, done.stdout


def test_shared_memory_left_by_kill_9_is_cleaned(probe):
    from depth_ros.nodes_core.middleware import clean_shm, rmw, shm_segments
    if not rmw().startswith('rmw_fastrtps'):
        pytest.skip('Fast DDS shared memory: the RMW is {} (Cyclone DDS as ROS 2 builds it '
                    'has no shared memory)'.format(rmw()))
    if clean_shm() is None:
        pytest.skip('the fastdds tool (Fast DDS) is not on PATH')
    before = {name for name, _ in shm_segments()}
    node = NodeProcess('alignment_node', name='alignment_kill9')
    try:
        assert wait_until(lambda: {n for n, _ in shm_segments()} - before, 20), \
            'the node made no shared-memory segment:\n' + node.output()
        node.proc.kill()
        node.wait(10, 'its end after SIGKILL')
    finally:
        node.stop()
    left = {n for n, _ in shm_segments()} - before
    assert left, 'expected segments left behind by kill -9'
    summary = clean_shm()
    # What stays must be held by a live process: a participant another process started
    # meanwhile (a test's probe, the ros2 daemon, the other lane of make test-humble) also
    # appears in ``left``; a zombie's files do not stay.
    remaining = ({n for n, _ in shm_segments()} & left) - _shm_held_by_live_processes()
    assert not remaining, 'fastdds shm clean left {} ({})'.format(sorted(remaining), summary)


def _shm_held_by_live_processes():
    """
    Return the Fast DDS files in /dev/shm that a live process holds: mapped, or locked.

    A segment is mapped; its ``_el`` file (and a port's) is only flock()ed, never mapped, so
    it shows in /proc/locks (a lock goes with its process), not in any /proc/<pid>/maps. A
    run read a live participant's ``fastrtps_<id>_el`` as a zombie's by the maps alone.
    """
    names = set()
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            with open('/proc/{}/maps'.format(pid)) as f:
                for line in f:
                    path = line.split(None, 5)[5].strip() if len(line.split(None, 5)) == 6 \
                        else ''
                    name = os.path.basename(path)
                    if path.startswith('/dev/shm/') and name.startswith(('fastrtps_', 'fastdds_')):
                        names.add(name)
        except OSError:
            continue
    from depth_ros.nodes_core.middleware import shm_segments
    locked = set()
    with open('/proc/locks') as f:
        for line in f:
            # "1: FLOCK  ADVISORY  WRITE 28917 00:19:1234 0 EOF": device major:minor in hex,
            # inode in decimal ("->" marks a waiter, which holds nothing yet).
            fields = line.split()
            if len(fields) >= 6 and fields[1] != '->' and fields[5].count(':') == 2:
                major, minor, inode = fields[5].split(':')
                locked.add((int(major, 16), int(minor, 16), int(inode)))
    for name, _ in shm_segments():
        try:
            st = os.stat(os.path.join('/dev/shm', name))
        except OSError:
            continue
        if (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino) in locked:
            names.add(name)
    return names


# ---------------------------------------------------------------- offline tools: bags
class _Gray(object):
    relative_kind = 'disparity'
    name = 'gray'

    def predict(self, bgr):
        return bgr[..., 1].astype(np.float32) / 255.0 + 0.1


@pytest.mark.rmw_independent
def test_process_bag_on_a_truncated_bag_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    from depth_ros import cli
    from depth_ros.commands import _args
    bag = _write_bag(str(tmp_path / 'in'))
    db = [f for f in os.listdir(bag) if f.endswith('.db3')][0]
    with open(os.path.join(bag, db), 'r+b') as f:
        f.truncate(os.path.getsize(os.path.join(bag, db)) // 3)
    monkeypatch.setattr(_args, 'load_model', lambda *a, **k: _Gray())
    assert cli.main(['process-bag', bag, str(tmp_path / 'out'), '--model', 'x']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'bag' in err[0] and 'Traceback' not in err[0], err
    assert not os.path.exists(str(tmp_path / 'out'))
    assert not [p for p in os.listdir(str(tmp_path)) if 'partial' in p], os.listdir(str(tmp_path))


@pytest.mark.rmw_independent
def test_process_bag_on_a_corrupt_bag_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    from depth_ros import cli
    from depth_ros.commands import _args
    bag = _write_bag(str(tmp_path / 'in'))
    _corrupt(bag)
    monkeypatch.setattr(_args, 'load_model', lambda *a, **k: _Gray())
    assert cli.main(['process-bag', bag, str(tmp_path / 'out'), '--model', 'x']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'bag' in err[0], err
    assert not os.path.exists(str(tmp_path / 'out'))


@pytest.mark.rmw_independent
def test_process_bag_interrupted_leaves_no_partial_bag_and_reruns(tmp_path):
    from depth_ros.tools.bag import process_bag
    bag = _write_bag(str(tmp_path / 'in'), frames=4)

    class Interrupting(_Gray):
        calls = 0

        def predict(self, bgr):
            Interrupting.calls += 1
            if Interrupting.calls == 2:
                raise KeyboardInterrupt
            return super().predict(bgr)
    out = str(tmp_path / 'out')
    with pytest.raises(KeyboardInterrupt):
        process_bag(bag, out, Interrupting(), progress=False)
    assert sorted(os.listdir(str(tmp_path))) == ['in'], os.listdir(str(tmp_path))
    stats = process_bag(bag, out, _Gray(), progress=False)
    assert stats.frames_out == 4 and os.path.isfile(os.path.join(out, 'metadata.yaml'))


@pytest.mark.rmw_independent
def test_fuse_with_one_pixel_frames(tmp_path, capsys):
    from depth_ros.cli import main
    import cv2
    cv2.imwrite(str(tmp_path / 'left.png'), np.zeros((1, 1, 3), np.uint8))
    np.save(str(tmp_path / 'rel.npy'), np.ones((1, 1), np.float32))
    np.save(str(tmp_path / 'st.npy'), np.full((1, 1), 2.0, np.float32))
    np.save(str(tmp_path / 'conf.npy'), np.full((1, 1), 5.0, np.float32))
    code = main(['fuse', '--image', str(tmp_path / 'left.png'), '--relative',
                 str(tmp_path / 'rel.npy'), '--stereo-depth', str(tmp_path / 'st.npy'),
                 '--confidence', str(tmp_path / 'conf.npy'), '--intrinsics', '1,1,0,0',
                 '--out', str(tmp_path / 'out')])
    # Refused with one line naming the argument (the aligner needs 16x16), never a crash.
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and '`stereo_depth` must be at least 16x16' in err[0], \
        (code, err)
    assert not (tmp_path / 'out').exists() or not list((tmp_path / 'out').iterdir())


# ------------------------------------------------- alignment_node: a burst of 720p messages
@pytest.mark.rmw_independent
def test_a_burst_of_wrong_messages_is_refused_on_arrival_and_memory_comes_back(probe):
    # 200 colour images on the depth topic at 100 Hz (1280x720, 550 MB), then 100 depth
    # images of 960x720 (a size the 1280x720 camera_info refuses, 276 MB): each is refused
    # when it arrives (never held while its set waits: pairing_waiting_mb stays 0 in every
    # report during the burst), counted as a bad frame, logged rate-limited; good sets still
    # give depth and clouds. Then sets whose disparity never comes fill the pairing buffer
    # (hundreds of MB) and drain: the freed heap goes back to the system (HeapTrim).
    # Before: the flood waited whole in the pairing buffer (279 MB) as dropped_skipped, and
    # the node kept up to 272 MB after it; glibc kept up to 360 MB of a drained buffer.
    from burst_support import BurstGraph, make_frame, rss_anon_mb
    from depth_ros.core.camera import PinholeCamera
    graph = BurstGraph(cwd=ROOT, probe=probe, clouds=True)
    try:
        graph.send_good(3)
        start = graph.diagnostics()
        before = rss_anon_mb(graph.pid)
        total = 0
        for what, seconds, text in (
                ('encoding', 2.0, "stereo depth has encoding 'bgr8'; expected 32FC1"),
                ('size', 1.0, 'camera_info is 1280x720 but the image is 960x720')):
            base = graph.diagnostics()
            dropped, skipped = int(base['dropped_frame']), int(base['dropped_skipped'])
            mark, since = len(graph.output()), time.time()
            sent = graph.burst(100.0, seconds, what)
            total += sent
            # Most of the burst reached the node and was refused. Not all of it need come:
            # 2.7 MB messages at 100 Hz, best effort, outrun the reader on a loaded machine (a
            # fresh clone, both lanes and other work on two cores: 143 of 200, no more within 15
            # s), which is the transport, not the node.
            values = graph.diagnostics_until(
                lambda v: int(v['dropped_frame']) >= dropped + sent * 0.5)
            # At least 5 reports since the burst began (a fresh-clone run had 4 by the time
            # most were counted: a 1 s burst on a loaded machine): wait for them.
            wait_until(lambda: len(graph.diagnostics_since(since)) >= 5, 5.0)
            series = graph.diagnostics_since(since)
            assert len(series) >= 5 and all(float(v['pairing_waiting_mb']) == 0.0
                                            for v in series), (what, series)
            # None of the burst is a skipped set. Counted from just before this burst: the good
            # sets sent after the first burst can be skipped (under Cyclone DDS on Humble, 8 runs
            # of 19 failed so; in one, two sets of three lacked their disparity when the third
            # completed), which is the newest-frame policy at work, not the burst.
            assert int(values['dropped_skipped']) == skipped, (what, skipped, values)
            # Counted once each (a burst's last messages may still come in after that).
            assert int(values['dropped_frame']) <= int(start['dropped_frame']) + total, \
                (what, total, values)
            assert text in values['last_drop_reason'], values
            lines = [x for x in graph.output()[mark:].splitlines() if 'dropped frame' in x]
            assert lines and all(text in x for x in lines), lines
            # One line a second (log_throttle_s 1.0), each after the first saying how many it
            # stands for. The line that tells the suppressed ones comes with the first refusal
            # past the second: a 1 s burst may end before it (a fresh-clone run on Humble: one
            # line for 100 refusals), a 2 s burst may not.
            assert len(lines) <= seconds + 2, \
                'expected at most one line a second, received {}'.format(lines)
            assert all('similar suppressed' in x for x in lines[1:]), lines
            assert seconds < 2 or len(lines) >= 2, \
                'a {} s burst must tell the refusals it suppressed: {}'.format(seconds, lines)
            stamp = graph.send_good(3)
            assert graph.clouds.by_stamp(stamp) is not None or wait_until(
                lambda: graph.clouds.by_stamp(stamp) is not None, 5.0), \
                'no cloud for a good set after the {} burst'.format(what)
        after_refused = rss_anon_mb(graph.pid)
        graph.burst(100.0, 2.0, 'waiting')        # 740 MB of sets waiting for a disparity
        graph.send_good(6)
        values = graph.diagnostics_until(lambda v: float(v['pairing_waiting_mb']) == 0.0 and
                                         int(v['heap_trims']) >= 1)
        after_waiting = rss_anon_mb(graph.pid)
        # The camera changes resolution (and aspect ratio) and its depth comes before its
        # camera_info: refused for one set at most, checked on the newest camera_info.
        graph.frame = make_frame(1, 640, 480)
        graph.camera = PinholeCamera(350.0, 350.0, 319.5, 239.5, 640, 480)
        graph.order = ('depth', 'disparity', 'confidence', 'image', 'camera_info')
        stamp = graph.send_good(2)
        out = graph.out.by_stamp(stamp)
        assert (out.width, out.height) == (640, 480), (out.width, out.height)
        assert graph.proc.poll() is None, graph.output()[-3000:]
    finally:
        graph.close()
    # After a trim: +9 ... +47 MB on Humble, -5 ... +2 MB on Kilted (docs/ros.md).
    assert after_refused - before < 96 and after_waiting - before < 96, \
        'anonymous RSS {:.0f} MB before, {:.0f} MB after the refused bursts, {:.0f} MB after ' \
        'the drained buffer'.format(before, after_refused, after_waiting)

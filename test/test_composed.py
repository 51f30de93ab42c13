"""
composed_nodes (``composed:=true``): our nodes in one process, frames handed over by reference.

The process is started as the launch file starts it (``--node`` sections with the shipped
params file), on the bundled sample with the stand-in network, and a probe node watches it
from outside: what is built for outside subscribers only, the metric depth against an offline
run of the same pipeline (equal in both modes), and the fault suite in this mode: bad frames,
a slow network, Ctrl-C mid-inference, dead threads, a bad parameter of one node.
test_launch_graph.py runs the launch file in both modes.
"""
import collections
import os
import signal
import subprocess
import sys
import time

from conftest import _ros_env, CONFIG, NodeProcess, process_log, ROOT, wait_until
from graph_support import diag_until, diag_values
import numpy as np
import pytest

pytestmark = pytest.mark.graph

pytest.importorskip('rclpy', reason='rclpy is not installed (pip install depth_ros[ros])')
pytest.importorskip('skimage', reason='the sample source needs scikit-image')

FAULTS = os.path.join(ROOT, 'test', 'composed_faults.py')


def composed_arguments(zed=None, depth=None, align=None, params_file=CONFIG):
    """Return the ``--node`` sections the launch file gives composed_nodes, ``-p`` overrides."""
    def section(kind, source, params, extra=()):
        args = ['--node', kind] + (['--from', source] if source else []) + ['--ros-args']
        args += list(extra) + ['--params-file', params_file]
        for key, value in (params or {}).items():
            args += ['-p', '{}:={}'.format(key, value)]
        return args + ['--']
    zed_params = dict({'source': 'sample'}, **(zed or {}))
    depth_params = dict({'backend': 'standin', 'log_throttle_s': 0.0}, **(depth or {}))
    align_params = dict({'log_throttle_s': 0.0}, **(align or {}))
    return (section('zed_node', None, zed_params, ['-r', '__ns:=/zed']) +
            section('depth_node', 'zed_node', depth_params) +
            section('alignment_node', 'depth_node', align_params))


class ComposedProcess(NodeProcess):
    """composed_nodes (or composed_faults.py with a fault) as a process, output kept."""

    def __init__(self, arguments, fault=None):
        cmd = [sys.executable] + ([FAULTS, fault] if fault else
                                  ['-m', 'depth_ros.ros.composed']) + list(arguments)
        self.module, self.cmd = 'composed', cmd
        self.log = process_log('depth_ros_composed_')
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=_ros_env(dict(os.environ)), cwd=ROOT)


@pytest.fixture
def diagnostics(probe):
    from diagnostic_msgs.msg import DiagnosticArray
    collector = probe.subscribe(DiagnosticArray, '/diagnostics', probe.qos('reliable', 50))
    yield collector
    probe.node.destroy_subscription(collector.sub)


@pytest.fixture
def started(node_processes):
    """Start a ComposedProcess (stopped at the end of the test)."""
    procs = []

    def start(arguments, fault=None):
        proc = ComposedProcess(arguments, fault)
        procs.append(proc)
        return proc
    yield start
    for proc in procs:
        proc.stop()


def _fatal_lines(out):
    return [line for line in out.splitlines() if 'FATAL' in line]


def _streaming(diagnostics, proc, frames=5, timeout=60):
    return diag_until(diagnostics, 'zed/zed_node', lambda v: int(v['frames']) >= frames,
                      timeout) if proc.alive() else pytest.fail(proc.output())


# ------------------------------------------------------------ what is handed over
@pytest.mark.rmw_independent
def test_frames_are_handed_over_and_topics_built_only_for_outside_subscribers(
        probe, diagnostics, started):
    from sensor_msgs.msg import Image
    proc = started(composed_arguments())
    zed = _streaming(diagnostics, proc, frames=10)
    # Nobody outside reads the camera or the disparity: no message was built for them, and
    # every frame went through in-process.
    assert [zed['built_' + k] for k in ('image', 'camera_info', 'right_camera_info', 'depth',
                                        'confidence')] == ['0'] * 5, zed
    assert zed['handed_over_to'] == '1', zed
    depth = diag_until(diagnostics, 'depth_node', lambda v: int(v['frames_in']) >= 10)
    assert (depth['input'], depth['handed_over_to'], depth['built_disparity'],
            depth['built_inference_started']) == ('in-process', '1', '0', '0'), depth
    align = diag_until(diagnostics, 'alignment_node', lambda v: v['status'] == 'ok' and
                       float(v['output_rate_hz']) > 0)
    assert align['input'] == 'in-process' and align['dropped_unpaired'] == '0', align
    # Each frame's stereo side was prepared while the network ran on it (take_started).
    align = diag_until(diagnostics, 'alignment_node', lambda v: int(v['prepared_used']) >= 5)
    assert float(align['stage_prepare_ms']) > 0 and int(align['prepared_held']) <= 1, align
    # Nor the metric depth: aligned every frame, built for no one.
    assert align['published_depth'] == '0', align
    # An outside subscriber gets the internal edges' topics, for the same frames.
    image = probe.subscribe(Image, '/zed/zed_node/left/image_rect_color')
    disparity = probe.subscribe(Image, '/depth_node/disparity')
    metric = probe.subscribe(Image, '/alignment_node/depth')
    assert wait_until(lambda: set(image.stamps()) & set(disparity.stamps()) &
                      set(metric.stamps()), 30), proc.output()[-3000:]
    stamp = sorted(set(image.stamps()) & set(disparity.stamps()) & set(metric.stamps()))[-1]
    img, disp = image.by_stamp(stamp), disparity.by_stamp(stamp)
    assert (img.encoding, disp.encoding) == ('bgr8', '32FC1')
    assert (disp.width, disp.height) == (img.width, img.height)
    # The stand-in's disparity of the published image (BT.601 luma, its documented map).
    from depth_ros.ros import conversions as conv
    from graph_support import expected_disparity
    np.testing.assert_allclose(conv.image_to_numpy(disp),
                               expected_disparity(conv.image_to_numpy(img).astype(np.float32)),
                               atol=0.9 / 255 + 1e-6)
    zed = diag_until(diagnostics, 'zed/zed_node', lambda v: int(v['built_image']) > 0)
    assert zed['built_depth'] == '0', 'built only what someone reads: {}'.format(zed)
    align = diag_until(diagnostics, 'alignment_node', lambda v: int(v['published_depth']) > 0)
    assert align['published_points'] == '0', 'built only what someone reads: {}'.format(align)
    for collector in (image, disparity, metric):
        probe.node.destroy_subscription(collector.sub)


# ------------------------------------------------------ the same output as separately
def _reference_outputs(count, align_overrides):
    """Metric depth of the first ``count`` aligned frames of the sample, offline."""
    import yaml
    from depth_ros.nodes_core import config
    from depth_ros.sources import make_source
    from depth_ros.sources.downscale import downscale_frame
    with open(CONFIG) as f:
        data = yaml.safe_load(f)

    def values(name, specs, **overrides):
        out = {s.name: s.default for s in specs}
        out.update(data['/**/' + name]['ros__parameters'])
        out.update(overrides)
        return out
    zed = values('zed_node', config.ZED_PARAMS, source='sample')
    source = make_source('sample', None, **config.source_options(zed))
    source.open()
    frame = downscale_frame(source.read(), zed['publish_downscale'])
    model = config.open_model(values('depth_node', config.DEPTH_PARAMS, backend='standin',
                                     standin_latency_ms=0.0)).model
    aligner = config.make_aligner(values('alignment_node', config.ALIGNMENT_PARAMS,
                                         **align_overrides))
    # The nodes compute the uncertainty only while ~/uncertainty has a subscriber.
    aligner.set_options(compute_uncertainty=False)
    disparity = model.predict(frame.left)
    out = []
    for _ in range(count):
        out.append(aligner.update(disparity, frame.depth, frame.confidence, guide=frame.left,
                                  camera=frame.camera).depth.copy())
    return out


def _matches(received, reference):
    """Return the index of the reference output equal to ``received`` (NaN, inf alike)."""
    for i, ref in enumerate(reference):
        if ref.shape == received.shape and np.array_equal(np.isnan(ref), np.isnan(received)):
            finite = np.isfinite(ref)
            if np.array_equal(finite, np.isfinite(received)) and \
                    np.allclose(ref[finite], received[finite], rtol=1e-6, atol=1e-6):
                return i
    return None


def test_the_metric_depth_is_the_same_composed_and_separate(probe, diagnostics, started,
                                                            node_processes):
    # The sample is one stereo frame replayed; the aligner's RANSAC draws from one seeded
    # generator, so the n-th aligned frame has the same output in any run. Each received
    # depth is the offline pipeline's output of some n, in both modes, bit for bit up to
    # float rounding (the baseline is the parameter's in both: the right camera_info's comes
    # in at a different frame of each run). In both modes the sets are finished from their
    # stereo side, prepared while the network ran on the frame.
    import time
    from depth_ros.ros import conversions as conv
    from sensor_msgs.msg import Image
    align = {'use_right_camera_info': 'false'}
    reference = _reference_outputs(60, {'use_right_camera_info': False})
    assert _matches(reference[1], reference[:1]) is None, 'the reference must tell n apart'
    received, prepared = {}, {}
    for mode in ('composed', 'separate'):
        since = time.time()
        depth = probe.subscribe(Image, '/alignment_node/depth')
        if mode == 'composed':
            procs = [started(composed_arguments(align=align))]
        else:
            zed = NodeProcess('zed_node', params={'source': 'sample'},
                              extra_ros_args=['-r', '__ns:=/zed'])
            depth_node = NodeProcess('depth_node', params={'backend': 'standin'},
                                     remaps={'image': '/zed/zed_node/left/image_rect_color'})
            align_node = NodeProcess('alignment_node', params=align, remaps={
                'disparity': '/depth_node/disparity',
                'inference_started': '/depth_node/inference_started',
                'depth_registered': '/zed/zed_node/depth/depth_registered',
                'confidence': '/zed/zed_node/confidence/confidence_map',
                'camera_info': '/zed/zed_node/left/camera_info',
                'image': '/zed/zed_node/left/image_rect_color'})
            procs = [zed, depth_node, align_node]
            node_processes.extend(procs)
        assert wait_until(lambda: len(depth) >= 4, 60), [p.output()[-2000:] for p in procs]
        wait_until(lambda: int((diag_values(diagnostics, 'alignment_node', since) or {}).get(
            'prepared_used', 0)) >= 2, 20)
        prepared[mode] = diag_values(diagnostics, 'alignment_node', since)
        for p in procs:
            p.stop()
        probe.node.destroy_subscription(depth.sub)
        indices = [_matches(conv.image_to_numpy(m), reference) for m in list(depth.msgs)[:6]]
        received[mode] = indices
    # Every output found, in order (frames dropped on the way skip indices, never repeat).
    for mode, indices in received.items():
        assert None not in indices, '{}: outputs unlike any offline frame: {}'.format(
            mode, received)
        assert indices == sorted(set(indices)), received
        assert int(prepared[mode]['prepared_used']) >= 2, (mode, prepared[mode])


# ------------------------------------------------------------------- faults
@pytest.mark.rmw_independent
def test_bad_frames_are_dropped_counted_named_and_the_graph_goes_on(diagnostics, started):
    proc = started(composed_arguments(), fault='bad_frames')
    _streaming(diagnostics, proc, frames=12)
    depth = diag_until(diagnostics, 'depth_node', lambda v: int(v['frames_bad_output']) >= 2)
    assert 'model output has' in depth['last_drop_reason'] and \
        'non-finite values' in depth['last_drop_reason'], depth
    align = diag_until(diagnostics, 'alignment_node', lambda v: int(v['dropped_frame']) >= 2)
    assert align['last_drop_reason'] in ('confidence has NaN/inf values',
                                         'confidence is 741x498 but depth is 741x500'), align
    # Good frames still give metric depth after the bad ones: the output goes on.
    diag_until(diagnostics, 'alignment_node', lambda v: float(v['output_rate_hz']) > 2.0, 30)
    # A frame whose network output was dropped left its prepared stereo side behind: let go
    # by the next one (one held at most); a bad frame's prepare failed, its set was dropped.
    align = diag_until(diagnostics, 'alignment_node', lambda v: int(v['prepared_discarded'])
                       >= 2 and int(v['prepared_failed']) >= 2 and int(v['prepared_used']) >= 5)
    assert int(align['prepared_held']) <= 1, align
    out = proc.output()
    assert 'dropped frame' in out and 'confidence has NaN/inf values' in out, out[-3000:]
    assert 'confidence is 741x498 but depth is 741x500' in out, out[-3000:]
    assert 'dropped image: model output has' in out, out[-3000:]
    assert 'Traceback' not in out and not _fatal_lines(out) and proc.alive(), out[-3000:]


@pytest.mark.rmw_independent
def test_a_slow_network_lowers_the_output_rate_and_never_stops_it(diagnostics, started):
    proc = started(composed_arguments(depth={'standin_latency_ms': 300.0}))
    _streaming(diagnostics, proc, frames=20)
    depth = diag_until(diagnostics, 'depth_node', lambda v: int(v['frames_dropped_busy']) >= 5
                       and 1.5 < float(v['output_rate_hz']) < 5.0, 30)
    # Polled, not read once: a stalled grab thread's rate comes back within a window.
    diag_until(diagnostics, 'zed/zed_node',
               lambda v: float(v['rate_hz']) > 2 * float(depth['output_rate_hz']), 30)
    # Every inferred frame is aligned: the newest-frame slot drops upstream, nothing here.
    align = diag_until(diagnostics, 'alignment_node',
                       lambda v: int(v['dropped_busy']) == 0 and 1.5 < float(v['output_rate_hz']))
    assert align['dropped_unpaired'] == align['dropped_skipped'] == '0', align
    assert proc.alive(), proc.output()


def test_ctrl_c_during_an_inference_is_quiet_and_exits_0(probe, diagnostics, started):
    from std_msgs.msg import Header
    inferring = probe.subscribe(Header, '/depth_node/inference_started')
    proc = started(composed_arguments(depth={'standin_latency_ms': 1500.0}))
    # ~/inference_started is built for this outside subscriber: it says an inference runs.
    assert wait_until(lambda: len(inferring) > 0, 60), proc.output()
    proc.proc.send_signal(signal.SIGINT)         # mid-inference: up to 1.5 s to go
    code = proc.wait(20, 'its exit after SIGINT mid-inference')
    out = proc.output()
    probe.node.destroy_subscription(inferring.sub)
    assert code == 0, (code, out)
    assert '[ERROR]' not in out and 'Traceback' not in out and 'context is invalid' not in out \
        and not _fatal_lines(out), out


@pytest.mark.rmw_independent
@pytest.mark.parametrize('thread, logger', [('grab', 'zed.zed_node'),
                                            ('inference', 'depth_node'),
                                            ('alignment', 'alignment_node')])
def test_a_dead_thread_ends_the_process_with_one_fatal_line(started, thread, logger):
    proc = started(composed_arguments(), fault='dead:' + thread)
    code = proc.wait(60)
    out = proc.output()
    fatal = _fatal_lines(out)
    assert code == 1 and len(fatal) == 1, (code, out)
    assert '[{}]: the {} thread ended unexpectedly'.format(logger, thread) in fatal[0], fatal
    assert 'Traceback' not in out, out


@pytest.mark.rmw_independent
def test_a_bad_parameter_of_one_node_is_one_fatal_line_naming_it(started):
    proc = started(composed_arguments(align={'cloud_stride': 0}))
    code = proc.wait(60)
    out = proc.output()
    fatal = _fatal_lines(out)
    assert code == 2 and len(fatal) == 1, (code, out)
    assert '[alignment_node]: bad configuration:' in fatal[0] and 'cloud_stride' in fatal[0], \
        fatal
    assert 'Traceback' not in out, out


@pytest.mark.rmw_independent
@pytest.mark.parametrize('arguments, text', [
    (['--node', 'camera'], '--node needs a kind (zed_node | depth_node | alignment_node | '
                           'marigold_node), got \'camera\''),
    ([], 'no --node section'),
    (['--node', 'alignment_node', '--from', 'zed_node', '--ros-args', '--'],
     '--from zed_node: no node of that name comes before alignment_node'),
])
def test_bad_sections_are_one_line_and_exit_2(started, arguments, text):
    proc = started(arguments)
    code = proc.wait(60)
    out = proc.output()
    fatal = _fatal_lines(out)
    assert code == 2 and len(fatal) == 1 and text in fatal[0], (code, out)


@pytest.mark.rmw_independent
def test_an_unknown_parameter_name_is_one_warning_of_the_node_it_was_given_to(started):
    proc = started(composed_arguments(align={'cloud_strid': 3}))
    assert proc.wait_for_output('did you mean', 60), proc.output()
    lines = [line for line in proc.output().splitlines() if 'unknown parameter' in line]
    assert len(lines) == 1 and '[alignment_node]: unknown parameter `cloud_strid` ignored: ' \
        'did you mean `cloud_stride`?' in lines[0], lines
    assert proc.alive(), proc.output()


def test_nodes_of_one_diagnostics_period_share_one_timer_and_each_publishes():
    # Each node's own diagnostics timer woke the executor at its own phase (each wake builds
    # the wait set of every node): nodes of one period now publish from one timer, each its
    # own status as before, every period; a node of another period keeps its own timer.
    import rclpy
    from depth_ros.nodes_core.params import DIAGNOSTICS_PERIOD, LOG_THROTTLE
    from depth_ros.ros.composed import share_diagnostics_timers
    from depth_ros.ros.runtime import DepthRosNode
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    context = rclpy.Context()
    rclpy.init(context=context)
    statuses = []
    nodes = []
    try:
        for name, period in (('share_a', 0.2), ('share_b', 0.2), ('share_c', 0.5),
                             ('share_d', 0.2)):
            node = DepthRosNode(name, [DIAGNOSTICS_PERIOD, LOG_THROTTLE], context=context,
                                namespace='/composed_test', cli_args=[
                                    '--ros-args', '-p', 'diagnostics_period_s:={}'.format(
                                        period), '--'])
            node.diagnostics = lambda node=node: [node.make_status('t', 'ok', 'ok', {})]
            nodes.append(node)
        nodes[0].create_subscription(DiagnosticArray, '/diagnostics', lambda m: statuses.extend(
            (time.monotonic(), s.name) for s in m.status), 50)
        assert share_diagnostics_timers(nodes) == 2
        timers = [t for node in nodes for t in node.timers]
        assert len(timers) == 2 and nodes[0].diagnostics_timer in timers and \
            nodes[2].diagnostics_timer in timers, timers
        assert nodes[1].diagnostics_timer is None and nodes[3].diagnostics_timer is None
        executor = SingleThreadedExecutor(context=context)
        for node in nodes:
            executor.add_node(node)
        # Until share_a published 10 times (20 s at most): a late tick is skipped, not
        # repeated, so a busy machine takes longer, and the counts' ratios still hold.
        start = time.monotonic()
        end = start + 20.0

        def count(name):
            return sum(1 for _, n in statuses if n == 'composed_test/{}: t'.format(name))
        while count('share_a') < 10 and time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
        elapsed = time.monotonic() - start
        executor.shutdown(timeout_sec=5.0)
        counts = collections.Counter(name for _, name in statuses)
        a = count('share_a')
        assert a >= 10, counts
        # The shared timer publishes each of its nodes every period, never more often.
        assert abs(count('share_b') - a) <= 1 and abs(count('share_d') - a) <= 1, counts
        assert a <= elapsed / 0.2 + 1, (counts, elapsed)
        # share_c (0.5 s) on its own timer: 0.4 as often (about 4 against 10), never more
        # often than its period.
        c = count('share_c')
        assert 2 <= c < a and c <= elapsed / 0.5 + 1, (counts, elapsed)
    finally:
        for node in nodes:
            node.destroy_node()
        rclpy.shutdown(context=context)


# ------------------------------------------- the stereo side prepared during inference
@pytest.fixture
def aligner_node():
    """Make AlignmentNodes fed in-process (``local_input``) on their own context."""
    import rclpy
    from depth_ros.ros.alignment_node import AlignmentNode
    context = rclpy.Context()
    rclpy.init(context=context)
    made = []

    def make(**params):
        args = ['--ros-args', '--params-file', CONFIG]
        for key, value in dict({'use_right_camera_info': 'false'}, **params).items():
            args += ['-p', '{}:={}'.format(key, value)]
        made.append(AlignmentNode(local_input=True, context=context, cli_args=args + ['--']))
        return made[-1]
    yield make
    for node in made:
        node.close()
        node.destroy_node()
    rclpy.shutdown(context=context)


def _started_and_aligned(node, reference, local, disparity, start=True,
                         held_after_start=None):
    """
    Hand ``local`` to the in-process node as depth_node would; return update's result.

    ``start``: announce it first (take_started), as when the network takes the frame;
    ``held_after_start``: the ``prepared_held`` value expected then. The node's depth must be
    the reference aligner's ``update`` of the same inputs, bit for bit.
    """
    if start:
        node.take_started(local)
        assert node.worker.wait_idle(10.0)
        if held_after_start is not None:
            assert _values(node)['prepared_held'] == held_after_start
    node.take_set(local, disparity)
    assert node.worker.wait_idle(10.0)
    f = local.frame
    want = reference.update(disparity, f.depth, f.confidence, guide=f.left, camera=f.camera)
    np.testing.assert_array_equal(node.result.depth, want.depth)
    return want


def _sample_frames(count):
    """``count`` LocalFrames of the sample (own arrays, stamps 1..count s)."""
    from depth_ros.ros import conversions as conv
    from depth_ros.ros.runtime import LocalFrame
    from depth_ros.sources import make_source
    from depth_ros.sources.base import Frame
    source = make_source('sample', None)
    source.open()
    f = source.read()
    frames = []
    for i in range(count):
        frame = Frame(left=f.left.copy(), depth=f.depth.copy(), confidence=f.confidence.copy(),
                      camera=f.camera, stamp_ns=(i + 1) * 10 ** 9, frame_id='cam')
        frames.append(LocalFrame(frame, conv.make_header(frame.stamp_ns, 'cam')))
    return frames


def _reference_and_disparity(node, frames):
    """Return the aligner as ``node`` runs it (~/uncertainty unread) and frame 0's disparity."""
    from depth_ros.nodes_core import config
    from graph_support import expected_disparity
    reference = config.make_aligner(node.cfg)
    reference.set_options(compute_uncertainty=False)
    return reference, expected_disparity(frames[0].frame.left.astype(np.float32))


def _values(node):
    return {v.key: v.value for v in node.diagnostics()[0].values}


def test_sets_are_finished_from_their_stereo_side_prepared_during_inference(aligner_node):
    # depth_node's worker hands a frame over when its inference starts (take_started), then
    # the set (take_set): the alignment worker prepares the stereo side in between and
    # finishes from it; the output is update's, bit for bit, frame after frame (temporal
    # state included). A frame started and never finished (the network's output dropped)
    # leaves at most one prepared set, let go by the next one.
    import rclpy
    from depth_ros.core.pointcloud import depth_to_cloud
    from depth_ros.ros.runtime import sensor_qos
    from sensor_msgs.msg import PointCloud2
    frames = _sample_frames(6)
    node = aligner_node()
    reference, disparity = _reference_and_disparity(node, frames)
    # A reader of ~/points (another node of the context): the cloud is built, its colours
    # packed with the prepare.
    reader = rclpy.create_node('points_reader', context=node.context)
    reader.create_subscription(PointCloud2, '/alignment_node/points', lambda m: None,
                               sensor_qos(node.cfg['reliability'], node.cfg['qos_depth']))
    assert wait_until(lambda: node.pub_points.get_subscription_count() > 0, 15)

    def align(local, start=True):
        want = _started_and_aligned(node, reference, local, disparity, start)
        f = local.frame
        assert (node.result.scale, node.result.status) == (want.scale, want.status)
        cfg = node.cfg
        cloud = depth_to_cloud(want.depth, f.camera, bgr=f.left, stride=cfg['cloud_stride'],
                               min_depth=cfg['cloud_min_range'] or None,
                               max_depth=cfg['cloud_max_range'] or None,
                               edge_threshold=cfg['cloud_edge_threshold'] or None)
        assert node.cloud_buffer.view.tobytes() == cloud.tobytes()

    for local in frames[:3]:
        align(local)
    v = _values(node)
    assert (v['prepared_used'], v['prepared_missed'], v['prepared_held']) == ('3', '0', '0'), v
    assert float(v['stage_prepare_ms']) > 0 and float(v['stage_align_ms']) > 0, v
    # Frame 4 started, its output dropped by depth_node: its prepared set waits, alone ...
    node.take_started(frames[3])
    assert node.worker.wait_idle(10.0)
    assert _values(node)['prepared_held'] == '1'
    # ... until frame 5's replaces it; frame 5 is finished from its own.
    align(frames[4])
    v = _values(node)
    assert (v['prepared_used'], v['prepared_discarded'], v['prepared_held']) == \
        ('4', '1', '0'), v
    # A set whose frame was not prepared (its start not seen) is aligned whole: update.
    align(frames[5], start=False)
    v = _values(node)
    assert (v['prepared_used'], v['prepared_missed']) == ('4', '1'), v
    assert v['dropped_frame'] == '0' and v['dropped_exception'] == '0', v
    assert v['published_points'] == '5', v     # frame 4 was never finished
    reader.destroy_node()


def test_a_set_prepared_before_a_source_restart_is_let_go(aligner_node):
    # A restart resets the aligner: a side prepared before it is stale (the aligner's
    # is_current), let go although it is a newer frame's, and the set is aligned whole from
    # the reset state; the next frame is prepared and used again.
    frames = _sample_frames(5)                  # stamps 1..5 s; stamp_reset_s is 1 s
    node = aligner_node()
    reference, disparity = _reference_and_disparity(node, frames)
    _started_and_aligned(node, reference, frames[3], disparity)
    node.take_started(frames[4])                # its output never comes: the source restarts
    assert node.worker.wait_idle(10.0)
    assert _values(node)['prepared_held'] == '1'
    reference.reset()
    _started_and_aligned(node, reference, frames[0], disparity, start=False)
    v = _values(node)
    assert v['stamp_resets'] == '1', v
    assert (v['prepared_used'], v['prepared_missed'], v['prepared_discarded'],
            v['prepared_held']) == ('1', '1', '1', '0'), v
    _started_and_aligned(node, reference, frames[1], disparity, held_after_start='1')
    v = _values(node)
    assert (v['prepared_used'], v['prepared_missed'], v['prepared_held']) == ('2', '1', '0'), v
    assert v['dropped_frame'] == '0' and v['dropped_exception'] == '0', v


def test_prepare_during_inference_false_aligns_each_set_whole(aligner_node):
    # The CPU-for-latency trade switched off: a started frame is not prepared, its set is
    # aligned whole when the disparity comes, with update's output.
    frames = _sample_frames(2)
    node = aligner_node(prepare_during_inference='false')
    assert node.cfg['prepare_during_inference'] is False
    reference, disparity = _reference_and_disparity(node, frames)
    for local in frames:
        _started_and_aligned(node, reference, local, disparity, held_after_start='0')
    v = _values(node)
    assert v['prepared_used'] == '0' and 'stage_prepare_ms' not in v, v   # never ran
    assert v['dropped_frame'] == '0' and v['dropped_exception'] == '0', v


def test_a_set_prepared_before_an_option_change_is_aligned_whole(aligner_node):
    # The options its stereo side was prepared with are not the set's: update, the new ones.
    import rclpy.parameter
    from depth_ros.nodes_core import config
    frames = _sample_frames(1)
    node = aligner_node()
    before, disparity = _reference_and_disparity(node, frames)
    node.take_started(frames[0])
    assert node.worker.wait_idle(10.0)
    result = node.set_parameters([rclpy.parameter.Parameter('confidence_threshold',
                                                            value=20.0)])
    assert result[0].successful, result
    node.take_set(frames[0], disparity)
    assert node.worker.wait_idle(10.0)
    v = _values(node)
    assert (v['prepared_used'], v['prepared_missed'], v['prepared_discarded']) == \
        ('0', '1', '1'), v
    after = config.make_aligner(node.cfg)
    after.set_options(compute_uncertainty=False)
    f = frames[0].frame
    args = (disparity, f.depth, f.confidence)
    kwargs = {'guide': f.left, 'camera': f.camera}
    np.testing.assert_array_equal(node.result.depth, after.update(*args, **kwargs).depth)
    assert not np.array_equal(node.result.depth, before.update(*args, **kwargs).depth), \
        'the test needs an option that changes the output'


def test_the_depth_written_into_its_message_buffer_is_updates_frame_after_frame(aligner_node):
    # With a ~/depth reader, finish writes the depth straight into the message's reused
    # buffer (finish(out=...)): every message received is still that frame's update output,
    # bit for bit, after later frames overwrote the buffer: a set aligned whole (update,
    # copied in), a frame of another size (the buffer reshaped), the aligner's options
    # changed at runtime (finish_threads, ground_bound, ground_bound_margin reach it).
    import rclpy
    import rclpy.parameter
    from depth_ros.nodes_core import config
    from depth_ros.ros import conversions as conv
    from depth_ros.ros.runtime import LocalFrame, sensor_qos
    from depth_ros.sources.base import Frame
    from graph_support import expected_disparity
    from sensor_msgs.msg import Image
    frames = _sample_frames(7)
    for i, local in enumerate(frames):
        local.frame.depth[...] *= np.float32(1.0 + 0.04 * i)     # each frame its own depth
    f = frames[5].frame
    h, w = f.depth.shape[0] // 2, f.depth.shape[1] // 2
    half = Frame(left=np.ascontiguousarray(f.left[::2, ::2]),
                 depth=np.ascontiguousarray(f.depth[::2, ::2]),
                 confidence=np.ascontiguousarray(f.confidence[::2, ::2]),
                 camera=f.camera.scaled(w, h), stamp_ns=f.stamp_ns, frame_id='cam')
    frames[5] = LocalFrame(half, frames[5].header)
    node = aligner_node()
    reference = config.make_aligner(node.cfg)
    reference.set_options(compute_uncertainty=False)
    got = []
    reader = rclpy.create_node('depth_reader', context=node.context)
    reader.create_subscription(Image, '/alignment_node/depth', got.append,
                               sensor_qos(node.cfg['reliability'], node.cfg['qos_depth']))
    executor = rclpy.executors.SingleThreadedExecutor(context=node.context)
    executor.add_node(reader)
    assert wait_until(lambda: node.pub_depth.get_subscription_count() > 0, 15)
    changes = {3: {'finish_threads': 2, 'ground_bound': False},
               4: {'ground_bound': True, 'ground_bound_margin': 0.2}}
    wants = []
    for i, local in enumerate(frames):
        if i in changes:
            result = node.set_parameters([rclpy.parameter.Parameter(k, value=v)
                                          for k, v in changes[i].items()])
            assert all(r.successful for r in result), result
            reference.set_options(**changes[i])
        disparity = expected_disparity(local.frame.left.astype(np.float32))
        wants.append(_started_and_aligned(node, reference, local, disparity,
                                          start=i != 2).depth)
        # Finished from the side prepared (with the new options: the prepare applies them
        # first): the depth is the message buffer's own view.
        assert (node.result.depth is node.depth_buffer.view) == (i != 2), i
        assert wait_until(lambda: executor.spin_once(timeout_sec=0.05) or
                          len(got) == i + 1, 10), (i, len(got))
    assert (node.aligner.bands.threads, node.aligner.options.ground_bound,
            node.aligner.options.ground_bound_margin) == (2, True, 0.2)
    assert [m.header.stamp.sec for m in got] == [1, 2, 3, 4, 5, 6, 7]
    assert all(not np.array_equal(a, b) for a, b in zip(wants[:4], wants[1:5]))
    for msg, want in zip(got, wants):
        np.testing.assert_array_equal(conv.image_to_numpy(msg), want)
    v = _values(node)
    assert (v['prepared_used'], v['published_depth'], v['dropped_exception']) == \
        ('6', '7', '0'), v
    # A bad value at runtime is refused with rclpy's range text (docs/ros.md); none applied.
    result = node.set_parameters([rclpy.parameter.Parameter('ground_bound_margin', value=-0.1)])
    assert not result[0].successful and 'ground_bound_margin out of range' in result[0].reason
    assert node.cfg['ground_bound_margin'] == 0.2 and not node.pending_options
    reader.destroy_node()


def test_a_confidence_the_source_checked_is_not_checked_again(aligner_node, monkeypatch):
    # A rosbag's frames say their confidence was found finite (Frame.confidence_finite:
    # decode_set checked it in zed_node's grab thread): alignment_node takes that plane by
    # reference, with no second pass over it; any other frame's confidence is checked, and a
    # NaN in it refuses the set. The output is update's on the same inputs either way.
    from depth_ros.ros import alignment_node
    checked = []

    def counting(confidence):
        checked.append(confidence)
        return alignment_node.check_confidence.__wrapped__(confidence)
    counting.__wrapped__ = alignment_node.check_confidence
    monkeypatch.setattr(alignment_node, 'check_confidence', counting)
    frames = _sample_frames(3)
    node = aligner_node()
    reference, disparity = _reference_and_disparity(node, frames)
    frames[0].frame.confidence_finite = True
    _started_and_aligned(node, reference, frames[0], disparity)
    assert checked == [] and _values(node)['prepared_used'] == '1'
    _started_and_aligned(node, reference, frames[1], disparity)     # not flagged: checked
    assert len(checked) == 1 and checked[0] is frames[1].frame.confidence
    frames[2].frame.confidence[5, 7] = np.nan
    node.take_started(frames[2])
    node.take_set(frames[2], disparity)
    assert node.worker.wait_idle(10.0)
    values = _values(node)
    assert values['dropped_frame'] == '1' and \
        values['last_drop_reason'] == 'confidence has NaN/inf values', values


def test_close_stops_the_row_band_threads_after_the_frame_in_progress(aligner_node):
    # finish_threads 2: the bands' pool thread runs the frames' second bands and the cloud's;
    # close() ends the worker, then the pool (a node shut down leaves no thread behind).
    import threading
    from graph_support import expected_disparity
    frames = _sample_frames(1)
    node = aligner_node(finish_threads=2)
    disparity = expected_disparity(frames[0].frame.left.astype(np.float32))
    node.take_started(frames[0])
    assert node.worker.wait_idle(10.0)
    node.take_set(frames[0], disparity)
    assert node.worker.wait_idle(10.0)
    assert _values(node)['prepared_used'] == '1'

    def bands():
        return [t for t in threading.enumerate() if t.name.startswith('row_bands')]
    assert node.aligner.bands.threads == 2 and len(bands()) == 1
    node.close()
    assert not node.worker.alive and bands() == []


# ------------------------------------------- a ZED frame comes image first
def test_zed_node_hands_the_image_over_and_publishes_it_before_the_stereo_is_retrieved():
    # zed_node reads a ZED image first (ZedSource.read_image_first): depth_node takes the
    # frame, and the image goes out on its topic, while the SDK's depth and confidence are
    # still being retrieved; a reader of them waits (Frame.wait_stereo). A stereo retrieve
    # that fails reaches that reader as one line and zed_node as a grab failure (reopened,
    # as before); the next frame goes on.
    import threading
    import rclpy
    from depth_ros.core.camera import PinholeCamera
    from depth_ros.ros.runtime import sensor_qos
    from depth_ros.ros.zed_node import ZedNode
    from depth_ros.sources.base import Frame, FrameSource, SourceError, StereoPending
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image
    camera = PinholeCamera(50.0, 50.0, 15.5, 11.5, 32, 24)
    gate = threading.Event()
    lost = SourceError('ZED retrieve_measure(DEPTH) failed: CAMERA_NOT_DETECTED')

    def planes(k):
        return np.full((24, 32), float(k), np.float32), np.full((24, 32), 5.0, np.float32)

    class ImageFirst(FrameSource):
        name = 'image-first double'

        def __init__(self):
            self.reads, self.opens = 0, 0

        def open(self):
            self.opens += 1

        def read(self):
            raise AssertionError('zed_node must read a source image first where it can')

        def read_image_first(self):
            self.reads += 1
            k = self.reads
            if k > 3:
                stop.wait(5.0)
                return None
            if k == 1:
                wired.wait(10.0)        # the grab thread starts in ZedNode(): wait for it
                retrieve = lambda: (gate.wait(10.0), planes(1))[1]     # noqa: E731
            elif k == 2:
                retrieve = lambda: (_ for _ in ()).throw(lost)         # noqa: E731
            else:
                retrieve = lambda: planes(3)                           # noqa: E731
            return Frame(left=np.full((24, 32, 3), k, np.uint8), depth=None, confidence=None,
                         camera=camera, stamp_ns=k * 10 ** 9, pending=StereoPending(retrieve))

    stop, wired = threading.Event(), threading.Event()
    context = rclpy.Context()
    rclpy.init(context=context)
    handed, images = [], []
    source = ImageFirst()
    node = reader = executor = None
    try:
        reader = rclpy.create_node('image_reader', context=context)
        reader.create_subscription(Image, '/zed/zed_node/left/image_rect_color',
                                   lambda m: images.append((m.header.stamp.sec, gate.is_set())),
                                   sensor_qos('reliable', 5))
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(reader)
        spinner = threading.Thread(target=executor.spin, daemon=True)
        spinner.start()
        node = ZedNode(source=source, context=context, cli_args=[
            '--ros-args', '--params-file', CONFIG, '-p', 'reliability:=reliable', '--'])
        node.hand_over_to(lambda frame, header: handed.append(
            (frame, frame.depth is None, frame.pending.done)))
        wired.set()
        assert wait_until(lambda: handed, 10)
        first, no_depth, done = handed[0]
        assert no_depth and not done, 'handed over before the stereo was retrieved'
        assert wait_until(lambda: images, 10) and images[0] == (1, False), \
            'the image is published before the stereo is retrieved: {}'.format(images)
        gate.set()
        first.wait_stereo(5.0)
        np.testing.assert_array_equal(first.depth, planes(1)[0])
        np.testing.assert_array_equal(first.confidence, planes(1)[1])
        assert wait_until(lambda: len(handed) == 3 and node.frames == 2, 10), \
            (len(handed), node.frames)
        with pytest.raises(ValueError) as err:
            handed[1][0].wait_stereo(0.0)
        assert str(err.value) == ('the frame\'s stereo depth could not be retrieved: '
                                  'SourceError: ZED retrieve_measure(DEPTH) failed: '
                                  'CAMERA_NOT_DETECTED')
        assert node.grab_errors == 1 and source.opens == 2, (node.grab_errors, source.opens)
        handed[2][0].wait_stereo(0.0)
        np.testing.assert_array_equal(handed[2][0].depth, planes(3)[0])
    finally:
        stop.set()
        if node is not None:
            node.close()
            node.destroy_node()
        if executor is not None:
            executor.shutdown(timeout_sec=5.0)
        if reader is not None:
            reader.destroy_node()
        rclpy.shutdown(context=context)


@pytest.mark.rmw_independent
def test_a_zed_frame_s_stereo_is_retrieved_once_the_network_call_on_its_image_began(
        monkeypatch):
    # Composed, a ZED frame's image goes to depth_node first; an SDK before 5.0.2 keeps the
    # GIL while it retrieves the depth and confidence, so zed_node retrieves them once the
    # worker (idle when the frame came) has begun the network call: depth_node's queue no
    # longer holds the retrieves' time. A consumer that never says so holds the stereo back
    # for zed_node.START_WAIT_S at most; a busy worker (the frame waits) not at all.
    import threading
    import rclpy
    from depth_ros.core.camera import PinholeCamera
    from depth_ros.ros import zed_node as zed_module
    from depth_ros.ros.depth_node import DepthNode
    from depth_ros.ros.zed_node import ZedNode
    from depth_ros.sources.base import Frame, FrameSource, StereoPending
    camera = PinholeCamera(50.0, 50.0, 15.5, 11.5, 32, 24)
    events = []                 # (what, frame number), in the order they happened
    frames = []
    lock = threading.Lock()

    def note(what, k):
        with lock:
            events.append((what, k))

    class ImageFirst(FrameSource):
        name = 'image-first double'

        def __init__(self):
            self.reads = 0

        def open(self):
            pass

        def read(self):
            raise AssertionError('zed_node must read a source image first where it can')

        def read_image_first(self):
            if self.reads >= 3:
                stop.wait(5.0)
                return None
            wired.wait(10.0)
            self.reads += 1
            k = self.reads
            stereo = (np.full((24, 32), float(k), np.float32),
                      np.full((24, 32), 5.0, np.float32))
            frame = Frame(left=np.full((24, 32, 3), k, np.uint8), depth=None,
                          confidence=None, camera=camera, stamp_ns=k * 10 ** 9,
                          pending=StereoPending(lambda: (note('retrieve', k), stereo)[1],
                                                keeps_gil=True))
            frames.append(frame)
            return frame

    stop, wired = threading.Event(), threading.Event()
    monkeypatch.setattr(zed_module, 'START_WAIT_S', 0.5)
    context = rclpy.Context()
    rclpy.init(context=context)
    zed = depth = None
    try:
        zed = ZedNode(source=ImageFirst(), context=context, cli_args=[
            '--ros-args', '--params-file', CONFIG, '--'])
        depth = DepthNode(local_input=True, context=context, cli_args=[
            '--ros-args', '--params-file', CONFIG, '-p', 'backend:=standin',
            '-p', 'standin_latency_ms:=100.0', '--'])
        predict = depth.model.predict
        # Frame 1's network call ends once frames 2 and 3 were handed over, however slow the
        # machine (its 100 ms alone once depended on the grab thread's timing).
        handed = threading.Event()

        def predict_noted(bgr):
            note('network', int(bgr[0, 0, 0]))
            if int(bgr[0, 0, 0]) == 1:
                handed.wait(10.0)
            return predict(bgr)

        def take_frame(frame, header):
            depth.take_frame(frame, header)
            if frame.stamp_ns == 3 * 10 ** 9:
                handed.set()
        depth.model.predict = predict_noted
        zed.hand_over_to(take_frame)
        wired.set()
        assert wait_until(lambda: zed.frames == 3 and ('network', 3) in events, 10), \
            (zed.frames, events)
        # Frame 1: the worker was idle, its stereo retrieved after the network began. Frames 2
        # and 3 came while it ran (100 ms): retrieved at once, no start expected; the newest
        # (3) replaced 2 in the slot and ran next.
        assert events.index(('network', 1)) < events.index(('retrieve', 1)), events
        assert [f.pending.start_expected for f in frames] == [True, False, False], events
        assert events.index(('retrieve', 3)) < events.index(('network', 3)), events
        assert len(zed.start_wait_ms) == 1 and zed.start_wait_ms[0] < 400, zed.start_wait_ms
        values = {}
        for status in zed.diagnostics():
            values.update({kv.key: kv.value for kv in status.values})
        # /diagnostics prints six significant digits ('{:.6g}'): 5e-6 of the value at most.
        assert float(values['stereo_wait_ms_mean']) == pytest.approx(zed.start_wait_ms[0],
                                                                     rel=1e-5)
    finally:
        stop.set()
        for node in (zed, depth):
            if node is not None:
                node.close()
                node.destroy_node()
        rclpy.shutdown(context=context)


def test_a_stereo_whose_start_never_comes_is_retrieved_after_the_bound():
    # Only a retrieve that keeps the GIL (pyzed before 5.0.2) waits, and only for a consumer
    # that starts at once; it waits for the start or the bound, whichever comes first.
    import threading
    from depth_ros.sources.base import StereoPending
    free = StereoPending(lambda: (None, None))
    free.expect_start()
    assert not free.holds_for_start and free.wait_for_start(5.0) == 0.0
    pending = StereoPending(lambda: (None, None), keeps_gil=True)
    assert not pending.holds_for_start and pending.wait_for_start(5.0) == 0.0, \
        'no start expected: no wait'
    pending.expect_start()
    assert pending.holds_for_start
    waited = pending.wait_for_start(0.05)
    assert 0.04 <= waited < 2.0, waited
    later = StereoPending(lambda: (None, None), keeps_gil=True)
    later.expect_start()
    threading.Timer(0.05, later.started).start()
    waited = later.wait_for_start(10.0)
    assert 0.04 <= waited < 5.0, waited
    assert later.wait_for_start(10.0) < 0.5, 'once started, no wait'


def test_a_frame_whose_stereo_follows_its_image_is_prepared_when_it_comes(aligner_node):
    # In-process a ZED frame's depth and confidence may follow its image (zed_node hands it
    # over image first): the prepare during inference waits for them, and the set is
    # update's on the whole frame, bit for bit. A frame whose stereo could not be retrieved
    # is dropped, its reason named; the next goes on.
    import threading
    from depth_ros.sources.base import SourceError, StereoPending
    frames = _sample_frames(3)
    node = aligner_node()
    reference, disparity = _reference_and_disparity(node, frames)
    gate = threading.Event()

    def image_first(frame, retrieve):
        frame.depth = frame.confidence = None
        frame.pending = StereoPending(retrieve)

    first = frames[0].frame
    stereo = (first.depth, first.confidence)
    image_first(first, lambda: (gate.wait(10.0), stereo)[1])
    grab = threading.Thread(target=first.pending.complete, args=(first,))
    grab.start()
    node.take_started(frames[0])
    assert not node.worker.wait_idle(0.3), 'the prepare waits for the stereo'
    gate.set()
    grab.join(5.0)
    assert node.worker.wait_idle(10.0)
    _started_and_aligned(node, reference, frames[0], disparity, start=False)
    assert _values(node)['prepared_used'] == '1'

    lost = SourceError('ZED retrieve_measure(CONFIDENCE) failed: CAMERA_NOT_DETECTED')
    image_first(frames[1].frame, lambda: (_ for _ in ()).throw(lost))
    with pytest.raises(SourceError):
        frames[1].frame.pending.complete(frames[1].frame)
    node.take_started(frames[1])
    node.take_set(frames[1], disparity)
    assert node.worker.wait_idle(10.0)
    values = _values(node)
    assert values['dropped_frame'] == '1' and values['last_drop_reason'] == (
        'the frame\'s stereo depth could not be retrieved: SourceError: ZED '
        'retrieve_measure(CONFIDENCE) failed: CAMERA_NOT_DETECTED'), values
    _started_and_aligned(node, reference, frames[2], disparity)

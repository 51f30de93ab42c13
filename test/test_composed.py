"""
composed_nodes (``composed:=true``): our nodes in one process, frames handed over by reference.

The process is started as the launch file starts it (``--node`` sections with the shipped
params file), on the bundled sample with the stand-in network, and a probe node watches it
from outside: what is built for outside subscribers only, the metric depth against an offline
run of the same pipeline (equal in both modes), and the fault suite in this mode: bad frames,
a slow network, Ctrl-C mid-inference, dead threads, a bad parameter of one node.
test_launch_graph.py runs the launch file in both modes.
"""
import os
import signal
import subprocess
import sys
import tempfile

from conftest import _ros_env, CONFIG, NodeProcess, ROOT, wait_until
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
        self.log = tempfile.NamedTemporaryFile(prefix='depth_ros_composed_', suffix='.log',
                                               delete=False)
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


def test_the_metric_depth_is_the_same_composed_and_separate(probe, started, node_processes):
    # The sample is one stereo frame replayed; the aligner's RANSAC draws from one seeded
    # generator, so the n-th aligned frame has the same output in any run. Each received
    # depth is the offline pipeline's output of some n, in both modes, bit for bit up to
    # float rounding (the baseline is the parameter's in both: the right camera_info's comes
    # in at a different frame of each run).
    from depth_ros.ros import conversions as conv
    from sensor_msgs.msg import Image
    align = {'use_right_camera_info': 'false'}
    reference = _reference_outputs(60, {'use_right_camera_info': False})
    assert _matches(reference[1], reference[:1]) is None, 'the reference must tell n apart'
    received = {}
    for mode in ('composed', 'separate'):
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
    diag_until(diagnostics, 'alignment_node', lambda v: float(v['output_rate_hz']) > 2.0)
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
    zed = diag_values(diagnostics, 'zed/zed_node')
    assert float(zed['rate_hz']) > 2 * float(depth['output_rate_hz']), (zed, depth)
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
    code = proc.proc.wait(20)
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

"""
Timing on a real graph: a 30 fps camera and a network ten times slower.

zed_node replays the bundled sample at 30 fps, depth_node is the stand-in with a fixed 300 ms
inference (a CPU ONNX Runtime ViT-S is about this), alignment_node pairs. Before the pairing
was driven by the network, this gave no cloud at all (every stereo set was evicted before its
disparity came); now the output runs at the network's rate, whatever the memory cap.
"""
import time

from conftest import NodeProcess, wait_until
import pytest

# The pairing's timing (node logic): a tier with several RMWs runs it with one (Makefile).
pytestmark = [pytest.mark.graph, pytest.mark.slow, pytest.mark.rmw_independent]
rclpy = pytest.importorskip('rclpy', reason='rclpy is not installed (depth_ros[ros])')
pytest.importorskip('skimage', reason='the sample source needs scikit-image')

INFERENCE_MS = 300.0


@pytest.mark.parametrize('pairing_max_mb', [512.0, 1.0])
def test_a_slow_network_lowers_the_output_rate_and_never_stops_it(
        probe, node_processes, pairing_max_mb):
    from sensor_msgs.msg import Image
    tag = 'slow{}'.format(int(pairing_max_mb))
    ns = '/' + tag
    zed = NodeProcess('zed_node', name='zed_node', params={'source': 'sample', 'fps': 30.0},
                      extra_ros_args=['-r', '__ns:=' + ns])
    image = ns + '/zed_node/left/image_rect_color'
    depth = NodeProcess('depth_node', name='depth_' + tag, params={
        'backend': 'standin', 'standin_latency_ms': INFERENCE_MS}, remaps={'image': image})
    base = ns + '/zed_node/'
    align = NodeProcess('alignment_node', name='align_' + tag, params={
        'pairing_max_mb': pairing_max_mb}, remaps={
        'disparity': '/depth_{}/disparity'.format(tag),
        'inference_started': '/depth_{}/inference_started'.format(tag),
        'depth_registered': base + 'depth/depth_registered',
        'confidence': base + 'confidence/confidence_map',
        'camera_info': base + 'left/camera_info', 'image': image})
    node_processes.extend([zed, depth, align])
    out = probe.subscribe(Image, '/align_{}/depth'.format(tag))
    frames = probe.subscribe(Image, image)
    assert wait_until(lambda: len(out) >= 2, 90), 'no metric depth at all:\n{}\n{}'.format(
        depth.output()[-2000:], align.output()[-2000:])
    n0, f0, t0 = len(out), len(frames), time.monotonic()
    time.sleep(8.0)      # a measuring window, not a hand-off
    seconds = time.monotonic() - t0
    rate, camera = (len(out) - n0) / seconds, (len(frames) - f0) / seconds
    print('pairing_max_mb {}: metric depth at {:.2f} Hz, camera at {:.1f} Hz, inference {:.0f} '
          'ms'.format(pairing_max_mb, rate, camera, INFERENCE_MS))
    # One answer per whole number of camera periods after each 300 ms inference: ~3 Hz; the
    # bound leaves room for a loaded 2-core machine.
    assert rate >= 1.5, 'output {:.2f} Hz with the camera at {:.1f} Hz; alignment_node:\n{}' \
        .format(rate, camera, align.output()[-3000:])
    assert rate <= 1000.0 / INFERENCE_MS + 0.5, 'more outputs than inferences: {:.2f}'.format(
        rate)
    log = align.output()
    assert '[ERROR]' not in log, 'the newest-frame policy\'s skips are not errors:\n' + log

"""
Benchmark of the ROS 2 graph at 1280x720 with the stand-in backend (fixed latency, not a model).

Starts depth_node (backend standin) and alignment_node as processes with config/zed_depth.yaml,
publishes synthetic 1280x720 frames (image, stereo depth, confidence, camera_info, stamped with
the wall clock at publish time) from this process and receives the metric point cloud.

Reports, per scenario:
- end-to-end latency: cloud receipt time minus the image stamp (= its publish time);
- graph overhead: that latency minus the stand-in's inference time (goal <= 25 ms);
- with inference slower than the camera: the output age stays <= 2x inference (no backlog).

    .venv/bin/python benchmarks/bench_graph.py [--frames 60] [--stride 2]

This is a benchmark that prints figures, not a test: the numbers depend on the machine and its
load. Run it on an otherwise idle machine.
"""
import argparse
import os
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'test'))
sys.path.insert(0, ROOT)

from conftest import NodeProcess, Probe, wait_until  # noqa: E402
import numpy as np  # noqa: E402

W, H = 1280, 720
FRAME = 'zed_left_camera_optical_frame'


def synthetic_frame(seed):
    """Make a 1280x720 scene: textured image, plausible stereo depth with holes, confidence."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    base = 60 + 0.1 * xx + 0.15 * yy
    bgr = np.clip(np.stack([base, base * 0.9, 255 - base], 2)
                  + rng.uniform(-10, 10, (H, W, 3)), 0, 255).astype(np.uint8)
    gray = bgr.astype(np.float32) @ np.array([0.114, 0.587, 0.299], np.float32)
    depth = (1.0 / (2.0 * (0.1 + 0.9 * gray / 255.0) + 0.1)).astype(np.float32)
    depth[rng.rand(H, W) < 0.1] = np.nan
    confidence = rng.uniform(1, 60, (H, W)).astype(np.float32)
    return bgr, depth, confidence


def percentiles(values):
    v = np.asarray(values, dtype=np.float64)
    return 'median {:6.1f}  p90 {:6.1f}  max {:6.1f} ms'.format(
        np.median(v), np.percentile(v, 90), v.max())


def run_scenario(probe, pubs, clouds, frame, fps, frames, latency_ms, set_latency):
    from depth_ros.core.camera import PinholeCamera
    from depth_ros.ros import conversions as conv
    set_latency(latency_ms)
    bgr, depth, confidence = frame
    camera = PinholeCamera(700.0, 700.0, 639.5, 359.5, W, H)
    with clouds['lock']:
        clouds['recv'] = {}
    sent = []
    period = 1.0 / fps
    t_next = time.monotonic()
    for _ in range(frames):
        now = time.monotonic()
        if t_next > now:
            time.sleep(t_next - now)
        t_next += period
        stamp = time.time_ns()
        header = conv.make_header(stamp, FRAME)
        # Convert first, publish together: the stamp is the image's publish time.
        # The image goes first, as a camera driver publishes it.
        msgs = (conv.numpy_to_image(bgr, 'bgr8', header),
                conv.camera_to_info(camera, header),
                conv.numpy_to_image(confidence, '32FC1', header),
                conv.numpy_to_image(depth, '32FC1', header))
        header.stamp = conv.ns_to_stamp(time.time_ns())
        for m in msgs:
            m.header.stamp = header.stamp
        stamp = conv.stamp_to_ns(header.stamp)
        for pub, m in zip(pubs, msgs):
            pub.publish(m)
        sent.append(stamp)
    time.sleep(max(1.0, 3 * latency_ms / 1e3))
    with clouds['lock']:
        recv = dict(clouds['recv'])
    lat = [(recv[s] - s) * 1e-6 for s in sent[5:] if s in recv]   # skip warm-up frames
    return sent, recv, lat


def latency_setter(probe, depth_node, align):
    """Wait for the cloud's publisher and depth_node's parameter service; return a setter."""
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter
    if not wait_until(lambda: probe.node.count_publishers('/alignment_node/points') > 0, 15):
        raise SystemExit('alignment_node did not advertise /alignment_node/points within '
                         '15 s:\n' + align.output())
    client = probe.node.create_client(SetParameters, '/depth_node/set_parameters')
    if not client.wait_for_service(10.0):
        raise SystemExit('depth_node\'s set_parameters service did not come up within 10 s:\n'
                         + depth_node.output())

    def set_latency(ms):
        future = client.call_async(SetParameters.Request(parameters=[
            Parameter('standin_latency_ms', value=float(ms)).to_parameter_msg()]))
        if not wait_until(future.done, 10):
            raise SystemExit('depth_node did not answer the change of standin_latency_ms to {} '
                             'within 10 s:\n{}'.format(ms, depth_node.output()))
    return set_latency


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--frames', type=int, default=60)
    parser.add_argument('--stride', type=int, default=2, help='cloud_stride of alignment_node')
    parser.add_argument('--no-profile', action='store_true',
                        help='do not use config/fastdds_large_messages.xml (Fast DDS defaults: '
                        'large best-effort messages get lost over UDP fragments)')
    args = parser.parse_args(argv)
    if not args.no_profile and not os.environ.get('FASTRTPS_DEFAULT_PROFILES_FILE'):
        # Set before any participant exists: this process and the node processes use it.
        os.environ['FASTDDS_DEFAULT_PROFILES_FILE'] = os.path.join(
            ROOT, 'config', 'fastdds_large_messages.xml')
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    depth_node = NodeProcess('depth_node', params={'backend': 'standin'},
                             remaps={'image': '/bench/image'})
    align = NodeProcess('alignment_node', params={'cloud_stride': args.stride}, remaps={
        'disparity': '/depth_node/disparity', 'depth_registered': '/bench/depth',
        'confidence': '/bench/confidence', 'camera_info': '/bench/camera_info',
        'image': '/bench/image'})
    probe = Probe('bench_graph')
    try:
        clouds = {'lock': threading.Lock(), 'recv': {}}

        def on_cloud(msg):
            t = time.time_ns()
            with clouds['lock']:
                clouds['recv'][msg.header.stamp.sec * 1000000000 + msg.header.stamp.nanosec] = t
        probe.node.create_subscription(PointCloud2, '/alignment_node/points', on_cloud,
                                       probe.qos('best_effort', 5))
        diag = {}

        def on_diag(msg):
            for status in msg.status:
                diag[status.name.split(':')[0]] = {kv.key: kv.value for kv in status.values}
        probe.node.create_subscription(DiagnosticArray, '/diagnostics', on_diag, 50)
        pubs = [probe.publisher(Image, '/bench/image'),
                probe.publisher(CameraInfo, '/bench/camera_info'),
                probe.publisher(Image, '/bench/confidence'),
                probe.publisher(Image, '/bench/depth')]
        if not probe.wait_for_subscribers(pubs[0], 2, 30):
            raise SystemExit('nodes did not come up:\n' + depth_node.output() + align.output())
        set_latency = latency_setter(probe, depth_node, align)
        frame = synthetic_frame(0)
        # Warm-up (first-frame allocations, discovery of lazily created paths).
        run_scenario(probe, pubs, clouds, frame, 5.0, 8, 10.0, set_latency)

        print('ROS 2 graph benchmark: {}x{}, cloud_stride {}, stand-in backend (NOT a model; '
              'fixed latency)'.format(W, H, args.stride))
        print('machine: {} CPU cores visible, load average {:.2f}; Fast DDS profile: {}'.format(
            os.cpu_count(), os.getloadavg()[0],
            os.environ.get('FASTDDS_DEFAULT_PROFILES_FILE')
            or os.environ.get('FASTRTPS_DEFAULT_PROFILES_FILE') or 'none'))
        results = {}
        for name, fps, inference_ms in (('camera slower than inference', 10.0, 30.0),
                                        ('inference slower than camera', 15.0, 150.0)):
            sent, recv, lat = run_scenario(probe, pubs, clouds, frame, fps, args.frames,
                                           inference_ms, set_latency)
            if not lat:
                print('{}: no clouds received'.format(name))
                continue
            lat = np.asarray(lat)
            overhead = lat - inference_ms
            delivered = sum(1 for s in sent if s in recv)
            results[name] = (lat, overhead)
            print('\n{} ({:.0f} fps camera, {:.0f} ms inference): {}/{} frames delivered'.format(
                name, fps, inference_ms, delivered, len(sent)))
            print('  end-to-end latency image publish -> cloud receipt: ' + percentiles(lat))
            print('  graph overhead beyond inference:                   ' +
                  percentiles(overhead))
            time.sleep(1.1)  # one diagnostics period
            a = diag.get('alignment_node', {})
            d = diag.get('depth_node', {})
            print('  alignment_node per frame (convert, align, cloud, publish): {} ms; '
                  'dropped while busy: depth_node {}, alignment_node {}'.format(
                      a.get('processing_ms', '?'), d.get('frames_dropped_busy', '?'),
                      a.get('dropped_busy', '?')))
            if inference_ms * 1e-3 <= 1.0 / fps:
                # Where the time goes: means over the nodes' last 50 frames (diagnostics);
                # printed where every frame is processed, so the window holds this run's.
                print('  stamp -> image received (depth_node) {} ms -> disparity published {} '
                      'ms (inference {} ms) -> inputs paired (alignment_node) {} ms -> '
                      'outputs published {} ms'.format(
                          d.get('input_age_ms_mean', '?'), d.get('output_age_ms_mean', '?'),
                          d.get('inference_ms_mean', '?'), a.get('input_age_ms', '?'),
                          a.get('latency_ms', '?')))
                for name, values in (('depth_node', d), ('alignment_node', a)):
                    print('  {} stages: '.format(name) + ', '.join(
                        '{} {:.1f}'.format(k[len('stage_'):-len('_ms')], float(v))
                        for k, v in values.items() if k.startswith('stage_')) + ' ms')
            if inference_ms * 1e-3 > 1.0 / fps:
                ok = np.percentile(lat, 90) <= 2 * inference_ms
                print('  output age p90 {:.1f} ms vs 2x inference {:.0f} ms: {} (frames are '
                      'dropped, never queued)'.format(np.percentile(lat, 90), 2 * inference_ms,
                                                      'OK' if ok else 'ABOVE'))
            else:
                ok = np.median(overhead) <= 25.0
                print('  median overhead {:.1f} ms vs goal 25 ms: {}'.format(
                    np.median(overhead), 'OK' if ok else 'ABOVE'))
        if os.environ.get('BENCH_GRAPH_LOGS'):
            print(depth_node.output()[-3000:], align.output()[-3000:])
    finally:
        probe.close()
        depth_node.stop()
        align.stop()


if __name__ == '__main__':
    main()

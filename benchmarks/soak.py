"""
Soak of the three-node graph at 1280x720: memory growth, output rate per minute, drops.

zed_node replays a rosbag2 of synthetic 1280x720 ZED frames (written here) in a loop at a fixed
rate with wall-clock stamps, depth_node runs the stand-in (fixed latency, not a model),
alignment_node aligns and publishes clouds, which this script subscribes to (so they are
computed). Every ``--sample-s`` seconds it reads each node's anonymous resident memory
(/proc ``RssAnon``: the heap, where a leak grows; not the bag's pages SQLite maps with
rosbags 0.9, nor shared libraries) and, from
/diagnostics, the drop counters; at the end it prints per-minute output rates and RSS, and
the RSS growth of each node from the end of the first minute (start-up allocations, warm
caches) to the end.

    .venv/bin/python benchmarks/soak.py [--minutes 5] [--fps 15] [--latency-ms 30]

Goals: RSS growth < 5 % per node, output rate steady (per-minute rates within 10 % of their
median). Prints figures; it is not a test. Results also go to ``--out`` (JSON).
"""
import argparse
import atexit
import json
import os
import shutil
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'test'))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))

from conftest import NodeProcess, Probe, wait_until  # noqa: E402
import numpy as np  # noqa: E402

W, H = 1280, 720
CAMERA = (700.0, 700.0, 639.5, 359.5)   # fx, fy, cx, cy of the synthetic frames (write_bag)
FRAME = 'zed_left_camera_optical_frame'


def write_bag(path, frames):
    """Write a loopable rosbag2 of ``frames`` synthetic 1280x720 ZED frames (bench_graph's)."""
    from bench_graph import synthetic_frame
    from depth_ros.core.camera import PinholeCamera
    from depth_ros.sources.base import Frame
    from depth_ros.sources.rosbag import write_test_bag
    camera = PinholeCamera(*CAMERA, W, H)

    def frame(i):
        bgr, depth, conf = synthetic_frame(i)
        return Frame(left=bgr, depth=depth, confidence=conf, camera=camera,
                     stamp_ns=(i + 1) * 66666666, frame_id=FRAME)
    return write_test_bag(path, (frame(i) for i in range(frames)))


def rss_mb(pid):
    """Return the anonymous resident memory of a process in MB (Linux /proc RssAnon)."""
    with open('/proc/{}/status'.format(pid)) as f:
        for line in f:
            if line.startswith('RssAnon:'):
                return int(line.split()[1]) / 1024.0
    return float('nan')


def latest_diag(collector, name):
    for msg in reversed(collector.msgs):
        for status in msg.status:
            if status.hardware_id.lstrip('/').split('/')[-1] == name:
                return {kv.key: kv.value for kv in status.values}
    return {}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--minutes', type=float, default=5.0)
    parser.add_argument('--fps', type=float, default=15.0, help='camera rate of the replay')
    parser.add_argument('--latency-ms', type=float, default=30.0, help='stand-in inference')
    parser.add_argument('--stride', type=int, default=2, help='cloud_stride')
    parser.add_argument('--sample-s', type=float, default=10.0)
    parser.add_argument('--out', default=os.path.join(ROOT, 'out', 'soak.json'))
    args = parser.parse_args()
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import PointCloud2

    work = tempfile.mkdtemp(prefix='depth_ros_soak_')
    atexit.register(shutil.rmtree, work, True)    # the bag, removed at exit
    bag = write_bag(os.path.join(work, 'bag'), 20)
    probe = Probe('soak_probe')
    zed = NodeProcess('zed_node', name='zed_node', params={
        'source': 'bag', 'path': bag, 'fps': args.fps, 'loop': True},
        extra_ros_args=['-r', '__ns:=/zed'])
    base = '/zed/zed_node/'
    depth = NodeProcess('depth_node', params={
        'backend': 'standin', 'standin_latency_ms': args.latency_ms},
        remaps={'image': base + 'left/image_rect_color'})
    align = NodeProcess('alignment_node', params={'cloud_stride': args.stride}, remaps={
        'disparity': '/depth_node/disparity',
        'inference_started': '/depth_node/inference_started',
        'depth_registered': base + 'depth/depth_registered',
        'confidence': base + 'confidence/confidence_map',
        'camera_info': base + 'left/camera_info', 'image': base + 'left/image_rect_color'})
    procs = {'zed_node': zed, 'depth_node': depth, 'alignment_node': align}
    clouds = probe.subscribe(PointCloud2, '/alignment_node/points')
    diag = probe.subscribe(DiagnosticArray, '/diagnostics', probe.qos('reliable', 50))
    try:
        if not wait_until(lambda: len(clouds) > 0, 120):
            raise SystemExit('no cloud after 120 s:\n' + align.output()[-3000:])
        t0, c0 = time.monotonic(), len(clouds)
        samples = []
        end = t0 + args.minutes * 60.0
        while time.monotonic() < end:
            time.sleep(args.sample_s)
            for name, proc in procs.items():
                if not proc.alive():
                    raise SystemExit('{} died:\n{}'.format(name, proc.output()[-3000:]))
            samples.append({'t': time.monotonic() - t0, 'clouds': len(clouds) - c0,
                            'rss_mb': {n: rss_mb(p.proc.pid) for n, p in procs.items()},
                            'align': latest_diag(diag, 'alignment_node'),
                            'depth': latest_diag(diag, 'depth_node')})
            rss = '  '.join('{} {:.0f} MB'.format(n, v)
                            for n, v in samples[-1]['rss_mb'].items())
            print('{:6.0f} s  clouds {:6d}  RSS {}'.format(samples[-1]['t'],
                                                           samples[-1]['clouds'], rss),
                  flush=True)
    finally:
        for proc in procs.values():
            proc.stop()
        probe.close()
    report(samples, args)


def report(samples, args):
    minutes = int(samples[-1]['t'] // 60)
    per_minute = []
    for m in range(1, minutes + 1):
        inside = [s for s in samples if s['t'] <= m * 60.0]
        before = [s for s in samples if s['t'] <= (m - 1) * 60.0]
        n1 = inside[-1]['clouds'] if inside else 0
        n0 = before[-1]['clouds'] if before else 0
        t1 = inside[-1]['t'] if inside else 0.0
        t0 = before[-1]['t'] if before else 0.0
        per_minute.append((n1 - n0) / max(t1 - t0, 1e-9))
    first = [s for s in samples if s['t'] >= 60.0][0] if minutes >= 2 else samples[0]
    last = samples[-1]
    growth = {n: 100.0 * (last['rss_mb'][n] - first['rss_mb'][n]) / first['rss_mb'][n]
              for n in last['rss_mb']}
    median = float(np.median(per_minute)) if per_minute else float('nan')
    spread = max(abs(r - median) / median for r in per_minute) * 100 if per_minute else 0.0
    drops = {k: last['align'].get(k, '?') for k in (
        'dropped_skipped', 'dropped_capped', 'dropped_unpaired', 'dropped_unpaired_startup',
        'dropped_busy',
        'dropped_frame', 'dropped_exception', 'dropped_stamp')}
    drops.update({'depth_' + k: last['depth'].get(k, '?') for k in (
        'frames_dropped_busy', 'frames_bad')})
    print('\nSoak: {:.1f} min at {}x{}, camera {} fps, stand-in {} ms, cloud_stride {}'.format(
        last['t'] / 60.0, W, H, args.fps, args.latency_ms, args.stride))
    print('| minute | ' + ' | '.join(str(m) for m in range(1, minutes + 1)) + ' |')
    print('|---|' + '---|' * minutes)
    print('| clouds/s | ' + ' | '.join('{:.2f}'.format(r) for r in per_minute) + ' |')
    print('\n| node | RSS after 1 min (MB) | RSS at end (MB) | growth |')
    print('|---|---|---|---|')
    for n in last['rss_mb']:
        print('| {} | {:.1f} | {:.1f} | {:+.2f} % |'.format(
            n, first['rss_mb'][n], last['rss_mb'][n], growth[n]))
    print('\nper-minute rate: median {:.2f}/s, largest deviation {:.1f} % (goal <= 10 %)'.format(
        median, spread))
    print('RSS growth goal < 5 %: {}'.format(
        'met' if all(g < 5.0 for g in growth.values()) else 'NOT met'))
    print('drops at the end: {}'.format(drops))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump({'samples': samples, 'per_minute_rate': per_minute, 'rss_growth_pct': growth,
                   'drops': drops, 'args': vars(args)}, f, indent=1)


if __name__ == '__main__':
    main()

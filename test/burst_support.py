"""
alignment_node under a burst of wrong 1280x720 messages: the graph, the burst and the memory.

Shared by the fault suite (test_faults.py) and benchmarks/bench_burst_memory.py. The node runs
as a process (``python -m depth_ros.ros.alignment_node`` in ``cwd``, so that the benchmark can
measure another checkout); a Probe publishes its inputs and reads its outputs and diagnostics.
"""
import os
import signal
import subprocess
import sys
import time

from conftest import _ros_env, CONFIG, Probe, process_log, wait_until
from graph_support import diag_values
import numpy as np

W, H = 1280, 720
FRAME = 'zed_left_camera_optical_frame'
NAME = 'align_burst'
NO_TRIM = ('import sys; from depth_ros.nodes_core.workers import HeapTrim; '
           'HeapTrim.maybe_trim = lambda self, held_now: False; '
           'from depth_ros.ros.alignment_node import main; sys.exit(main())')


def rss_anon_mb(pid):
    """Return the process's anonymous resident memory in MB (heap pages, not shared memory)."""
    with open('/proc/{}/status'.format(pid)) as f:
        for line in f:
            if line.startswith('RssAnon:'):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError('no RssAnon in /proc/{}/status'.format(pid))


def make_frame(seed, w=W, h=H):
    """Return (bgr, disparity, depth, confidence) of one consistent ``w`` x ``h`` scene."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 60 + 0.1 * xx * (W / w) + 0.15 * yy * (H / h)
    bgr = np.clip(np.stack([base, base * 0.9, 255 - base], 2)
                  + rng.uniform(-10, 10, (h, w, 3)), 0, 255).astype(np.uint8)
    gray = bgr.astype(np.float32) @ np.array([0.114, 0.587, 0.299], np.float32)
    disparity = (0.1 + 0.9 * gray / 255.0).astype(np.float32)
    depth = (1.0 / (2.0 * disparity + 0.1)).astype(np.float32)
    confidence = np.full((h, w), 10.0, np.float32)
    return bgr, disparity, depth, confidence


class BurstGraph(object):
    """One alignment_node (``/align_burst``) fed by a probe under namespace /burst."""

    def __init__(self, cwd, probe=None, params=None, clouds=False, trim=True):
        from depth_ros.core.camera import PinholeCamera
        from depth_ros.ros import conversions as conv
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2
        self.conv = conv
        self.own_probe = probe is None
        self.probe = probe or Probe('burst_probe')
        # trim=False: the node as it is, but HeapTrim never trims (the benchmark's baseline).
        run = ['-m', 'depth_ros.ros.alignment_node'] if trim else ['-c', NO_TRIM]
        cmd = [sys.executable] + run + [
            '--ros-args', '--params-file', CONFIG, '-r', '__node:=' + NAME,
            '-p', 'log_throttle_s:=1.0', '-p', 'diagnostics_period_s:=0.2',
            '-p', 'use_inference_stamps:=false']
        for key, value in (params or {}).items():
            cmd += ['-p', '{}:={}'.format(key, value)]
        for src, dst in (('disparity', 'disparity'), ('depth_registered', 'depth'),
                         ('confidence', 'confidence'), ('camera_info', 'camera_info'),
                         ('image', 'image'), ('right_camera_info', 'right_camera_info')):
            cmd += ['-r', '{}:=/burst/{}'.format(src, dst)]
        self.log = process_log('depth_ros_burst_')
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=_ros_env(dict(os.environ)), cwd=cwd)
        self.pid = self.proc.pid
        self.camera = PinholeCamera(700.0, 700.0, 639.5, 359.5, W, H)
        self.pub = {k: self.probe.publisher(t, '/burst/' + k) for k, t in (
            ('image', Image), ('disparity', Image), ('depth', Image), ('confidence', Image),
            ('camera_info', CameraInfo))}
        self.out = self.probe.subscribe(Image, '/{}/depth'.format(NAME))
        # The cloud is computed while subscribed (14.7 MB a frame at 1280x720).
        self.clouds = self.probe.subscribe(PointCloud2, '/{}/points'.format(NAME)) \
            if clouds else None
        self.diag = self.probe.subscribe(DiagnosticArray, '/diagnostics',
                                         self.probe.qos('reliable', 50))
        for pub in self.pub.values():
            assert self.probe.wait_for_subscribers(pub, 1, 30), self.output()
        self.stamp = 1700000000 * 10 ** 9
        self.frame = make_frame(0)
        self.order = ('camera_info', 'image', 'confidence', 'depth', 'disparity')

    def output(self):
        """Return what the node printed so far."""
        with open(self.log.name, 'r', errors='replace') as f:
            return f.read()

    def _next(self):
        self.stamp += 10000000
        return self.stamp

    def send_set(self, stamp):
        """
        Publish one good set (``self.frame``, ``self.camera``) with ``stamp``.

        In ``self.order``: camera_info first by default (as zed_node publishes), the depth
        first with ``depth_first`` (its size is then checked on the camera_info of an earlier
        stamp).
        """
        conv = self.conv
        bgr, disparity, depth, confidence = self.frame
        header = conv.make_header(stamp, FRAME)
        msgs = {'camera_info': conv.camera_to_info(self.camera, header),
                'image': conv.numpy_to_image(bgr, 'bgr8', header),
                'confidence': conv.numpy_to_image(confidence, '32FC1', header),
                'depth': conv.numpy_to_image(depth, '32FC1', header),
                'disparity': conv.numpy_to_image(disparity, '32FC1', header)}
        for kind in self.order:
            self.pub[kind].publish(msgs[kind])

    def send_good(self, count, period=0.3, timeout=20.0):
        """Send ``count`` good sets ``period`` s apart; wait until the last one comes out."""
        end = time.monotonic() + timeout
        stamp = None
        for _ in range(count):
            stamp = self._next()
            self.send_set(stamp)
            time.sleep(period)
        while not wait_until(lambda: self.out.by_stamp(stamp) is not None, 2.0):
            assert time.monotonic() < end, 'no output for a good set:\n' + self.output()[-3000:]
            stamp = self._next()     # best effort: a set may be lost; send another
            self.send_set(stamp)
        return stamp

    def burst(self, rate, seconds, what='encoding'):
        """
        Publish depth images alone at ``rate`` Hz for ``seconds``; return how many.

        ``what``: 'encoding', a colour image (bgr8) on the depth topic; 'size', a 32FC1 depth
        of 960x720, whose aspect ratio disagrees with the 1280x720 camera_info (both refused
        on arrival); 'waiting', good 32FC1 depth whose sets never get a disparity (they wait
        in the pairing buffer).
        """
        conv = self.conv
        header = conv.make_header(0, FRAME)
        if what == 'encoding':
            msg = conv.numpy_to_image(self.frame[0], 'bgr8', header)
        elif what == 'size':
            msg = conv.numpy_to_image(np.ascontiguousarray(self.frame[2][:, :960]), '32FC1',
                                      header)
        elif what == 'waiting':
            msg = conv.numpy_to_image(self.frame[2], '32FC1', header)
        else:
            raise ValueError('`what` must be encoding|size|waiting, got {!r}'.format(what))
        count, t_next, end = 0, time.monotonic(), time.monotonic() + seconds
        while time.monotonic() < end:
            msg.header = conv.make_header(self._next(), FRAME)
            self.pub['depth'].publish(msg)
            count += 1
            t_next += 1.0 / rate
            time.sleep(max(0.0, t_next - time.monotonic()))
        return count

    def diagnostics(self, timeout=5.0):
        """Return the node's newest /diagnostics values taken from now on."""
        since = time.time()
        assert wait_until(lambda: diag_values(self.diag, NAME, since) is not None, timeout), \
            'no diagnostics:\n' + self.output()[-3000:]
        return diag_values(self.diag, NAME, since)

    def diagnostics_since(self, since):
        """Return the values of every /diagnostics report of the node stamped after ``since``."""
        series = []
        for msg in list(self.diag.msgs):
            if msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9 <= since:
                continue
            for status in msg.status:
                if status.hardware_id == '/' + NAME:
                    series.append({kv.key: kv.value for kv in status.values})
        return series

    def diagnostics_until(self, predicate, timeout=15.0):
        """Poll the node's /diagnostics until ``predicate(values)``; return the values."""
        end = time.monotonic() + timeout
        values = diag_values(self.diag, NAME)
        while not (values is not None and predicate(values)) and time.monotonic() < end:
            time.sleep(0.1)
            values = diag_values(self.diag, NAME)
        assert values is not None and predicate(values), 'diagnostics never matched; last: ' \
            '{}\n{}'.format(values, self.output()[-3000:])
        return values

    def close(self):
        """Stop the node (SIGINT) and the probe."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        if self.own_probe:
            self.probe.close()

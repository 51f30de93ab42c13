"""
alignment_node: relative depth + ZED stereo depth -> metric depth, camera_info, cloud.

Inputs (relative names; remap them): ``disparity`` (32FC1 relative, from depth_node, or
Marigold keyframes with ``relative_kind: depth``), ``depth_registered`` (32FC1 metres, or 16UC1
millimetres), ``confidence`` (32FC1 1..100, optional), ``camera_info``, ``image`` (colours,
optional). They are paired by exact stamp in a bounded buffer; incomplete sets that fall out
of it or are overtaken by a newer complete set are dropped and counted.

Outputs (the inputs' header): ``~/depth`` (32FC1 metres, NaN invalid, +inf too far),
``~/camera_info``, ``~/points`` (PointCloud2 x, y, z, rgb float32, organized, is_dense false;
computed while subscribed), ``~/colored`` (bgr8, while subscribed), and /diagnostics (scale,
shift, inlier ratio, fit status, rates, latency, drop counts).
"""
from __future__ import annotations

import collections
import threading
import time

from depth_ros.core.encodings import to_bgr8
from depth_ros.ros.params import declare_params, on_set_validator, Param, qos_depth_param, \
    reliability_param
from depth_ros.ros.runtime import diagnostic_status, Diagnostics, LatestWorker, main_for, \
    RateMeter, sensor_qos, StageTimes, ThrottledLog
import numpy as np

THROTTLE_S = 2.0

PARAMS = (
    Param('relative_kind', 'disparity', 'convention of the relative input: disparity (Depth '
          'Anything V2) or depth (Marigold, 0 near 1 far)', choices=('disparity', 'depth'),
          read_only=True),
    Param('use_confidence', True, 'pair and use the ZED confidence map', read_only=True),
    Param('use_image', True, 'pair the colour image (coloured cloud)', read_only=True),
    Param('buffer_size', 8, 'stamps waiting for their partners; older ones are dropped (used '
          'when pairing_window_s is 0)', low=1, high=100),
    Param('pairing_window_s', 0.0, 'pair by age instead: a stamp waits until it is this many '
          'seconds older than the newest one (Marigold keyframes; 0: by count, buffer_size)',
          low=0.0, high=600.0),
    Param('pairing_max_mb', 512.0, 'hard cap on the message payloads waiting to be paired (MB); '
          'beyond it the oldest stamps are dropped', low=1.0, high=65536.0),
    Param('stamp_reset_s', 1.0, 'a stamp older than the previous of its stream by more than '
          'this is a source restart (bag loop, sim-time reset): pairing and the temporal '
          'filter start over, with a warning; smaller steps back are dropped as out-of-order',
          low=0.0, high=1e6),
    Param('min_depth', 0.3, 'stereo depth trusted for the fit from (m)', low=0.01, high=1000.0),
    Param('max_depth', 20.0, 'stereo depth trusted for the fit up to (m)', low=0.01,
          high=1000.0),
    Param('confidence_threshold', 50.0, 'ZED confidence above which stereo is not trusted '
          '(1..100, larger = less reliable)', low=0.0, high=100.0),
    Param('max_output_depth', 100.0, 'aligned depth beyond this is +inf (too far, sky)',
          low=0.1, high=10000.0),
    Param('temporal_alpha', 0.3, 'weight of a new fit in the temporal filter (1: no filter)',
          low=0.01, high=1.0),
    Param('fuse_stereo', True, 'keep trusted stereo pixels; false: aligned mono only'),
    Param('cloud_stride', 2, 'keep every n-th pixel of the cloud in both directions',
          low=1, high=32),
    Param('cloud_min_range', 0.0, 'cloud points nearer than this are NaN (m; 0: off)',
          low=0.0, high=1000.0),
    Param('cloud_max_range', 0.0, 'cloud points farther than this are NaN (m; 0: off)',
          low=0.0, high=10000.0),
    Param('colored_max_depth', 0.0, 'far end of the ~/colored colour scale (m; 0: auto)',
          low=0.0, high=10000.0),
    Param('log_throttle_s', THROTTLE_S, 'bad-frame errors of one kind are logged at most once '
          'per this many seconds', low=0.0, high=3600.0),
    reliability_param(),
    qos_depth_param(5),
)

ALIGNER_KEYS = ('min_depth', 'max_depth', 'confidence_threshold', 'max_output_depth',
                'temporal_alpha', 'fuse_stereo')


def _validate(values) -> str:
    if values['max_depth'] <= values['min_depth']:
        return 'parameter `max_depth` ({}) must be > `min_depth` ({})'.format(
            values['max_depth'], values['min_depth'])
    if values['cloud_max_range'] and values['cloud_max_range'] <= values['cloud_min_range']:
        return 'parameter `cloud_max_range` ({}) must be > `cloud_min_range` ({}) or 0'.format(
            values['cloud_max_range'], values['cloud_min_range'])
    return ''


def make_aligner(values):
    """Build the MetricAligner for the node's parameters."""
    from depth_ros.core.alignment import MetricAligner
    return MetricAligner(relative_kind=values['relative_kind'],
                         **{k: values[k] for k in ALIGNER_KEYS})


def stereo_depth_metres(array: np.ndarray, encoding: str) -> np.ndarray:
    """32FC1 metres as is; 16UC1 / mono16 millimetres -> float32 metres with 0 -> NaN."""
    if encoding == '32FC1':
        return array
    if encoding in ('16UC1', 'mono16'):
        out = array.astype(np.float32) / np.float32(1000.0)
        out[array == 0] = np.nan
        return out
    raise ValueError('stereo depth has encoding {!r}; expected 32FC1 (m) or 16UC1 (mm)'.format(
        encoding))


def message_bytes(msg) -> int:
    """Payload bytes of a message: the length of its ``data`` (0 for CameraInfo)."""
    data = getattr(msg, 'data', None)
    return len(data) if data is not None else 0


class PairingBuffer(object):
    """
    Exact-stamp pairing of several streams with a bounded set of waiting stamps.

    ``add(kind, stamp, msg)`` returns the complete set {kind: msg} once every required kind
    has arrived for ``stamp``, else None. A waiting stamp is dropped when a newer stamp is
    complete first, when more than ``size`` stamps wait (``window_ns`` 0: by count), or when it
    is more than ``window_ns`` older than the newest stamp seen (``window_ns`` > 0: by age,
    ``size`` unused), and, in both modes, oldest first while the waiting payloads
    (``sizeof``) exceed ``max_bytes`` (0: no cap). Dropped sets are reported through
    ``on_drop(stamp, missing kinds, why)``. Not thread-safe by itself: the node holds a lock.
    """

    def __init__(self, kinds, size: int, on_drop, window_ns: int = 0, max_bytes: int = 0,
                 sizeof=message_bytes):
        self.kinds = tuple(kinds)
        self.size = int(size)
        self.window_ns = int(window_ns)
        self.max_bytes = int(max_bytes)
        self.sizeof = sizeof
        self.pending = collections.OrderedDict()   # stamp -> {kind: msg}, oldest first
        self.on_drop = on_drop
        self.dropped = 0
        self.bytes = 0           # payload bytes waiting
        self.newest = None       # newest stamp seen (window mode)

    def _bytes_of(self, parts) -> int:
        return sum(self.sizeof(m) for m in parts.values())

    def _drop(self, stamp, why):
        parts = self.pending.pop(stamp)
        self.bytes -= self._bytes_of(parts)
        self.dropped += 1
        self.on_drop(stamp, [k for k in self.kinds if k not in parts], why)

    def clear(self) -> None:
        """Forget every waiting stamp without reporting drops (a restarted source)."""
        self.pending.clear()
        self.bytes = 0
        self.newest = None

    def add(self, kind: str, stamp: int, msg):
        """Add one message; return the complete set for ``stamp`` or None."""
        entry = self.pending.get(stamp)
        if entry is None:
            # Keep the dict ordered by stamp, as streams can deliver in any interleaving
            # (compared with the newest key before inserting: after it, that is ``stamp``).
            unordered = bool(self.pending) and stamp < next(reversed(self.pending))
            entry = self.pending[stamp] = {}
            if unordered:
                self.pending = collections.OrderedDict(sorted(self.pending.items()))
        old = entry.get(kind)
        if old is not None:
            self.bytes -= self.sizeof(old)
        entry[kind] = msg
        self.bytes += self.sizeof(msg)
        if self.newest is None or stamp > self.newest:
            self.newest = stamp
        if len(entry) == len(self.kinds):
            complete = self.pending.pop(stamp)
            self.bytes -= self._bytes_of(complete)
            for older in [s for s in self.pending if s < stamp]:
                self._drop(older, 'a newer frame was complete first')
            return complete
        if self.window_ns > 0:
            limit = self.newest - self.window_ns
            while self.pending and next(iter(self.pending)) < limit:
                self._drop(next(iter(self.pending)), 'older than the pairing window of '
                           '{:g} s'.format(self.window_ns * 1e-9))
        else:
            while len(self.pending) > self.size:
                self._drop(next(iter(self.pending)), 'pairing buffer full')
        while self.max_bytes and self.bytes > self.max_bytes and self.pending:
            self._drop(next(iter(self.pending)), 'pairing buffer over {:g} MB'.format(
                self.max_bytes / 1e6))
        return None


def make_node(**kwargs):
    """Create the alignment_node (rclpy is imported here)."""
    from rclpy.node import Node
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    from depth_ros.core.pointcloud import CLOUD_DTYPE, depth_to_cloud, XYZ_DTYPE
    from depth_ros.core.visualize import colorize
    from depth_ros.ros import conversions as conv

    class _AlignmentNode(Node):

        def __init__(self):
            super().__init__('alignment_node', **kwargs)
            validate = (lambda v: _validate(v) or None)
            self.cfg = declare_params(self, PARAMS, validate=validate)
            try:
                self.aligner = make_aligner(self.cfg)
            except ValueError as exc:
                from depth_ros.ros.params import ConfigError
                raise ConfigError(str(exc)) from None
            self.add_on_set_parameters_callback(on_set_validator(
                PARAMS, self.cfg, validate, apply=self._apply))
            kinds = ['disparity', 'depth', 'camera_info']
            if self.cfg['use_confidence']:
                kinds.append('confidence')
            if self.cfg['use_image']:
                kinds.append('image')
            self.lock = threading.Lock()
            self.buffer = PairingBuffer(
                kinds, self.cfg['buffer_size'], self._on_drop,
                window_ns=int(self.cfg['pairing_window_s'] * 1e9),
                max_bytes=int(self.cfg['pairing_max_mb'] * 1e6))
            self.last_stamp = {k: None for k in kinds}
            self.log = ThrottledLog(self.get_logger())
            # Incremented on a source restart; the worker resets the aligner's temporal state
            # when it takes the first set of a new epoch (the aligner is the worker's alone).
            self.epoch = 0
            self.aligner_epoch = 0
            self.stamp_resets = 0
            self.bad = collections.Counter()
            self.in_rate, self.out_rate = RateMeter(), RateMeter()
            self.latency_ms = collections.deque(maxlen=50)
            self.process_ms = collections.deque(maxlen=50)
            self.input_age_ms = collections.deque(maxlen=50)   # stamp -> set complete
            self.stages = StageTimes()
            # Output bytes reused from frame to frame (one worker thread fills them).
            self.published = collections.Counter()   # lazy outputs: frames published on each
            self.cloud_buffer = conv.MessageBuffer()
            self.depth_buffer = conv.MessageBuffer()
            self.result = None
            qos = sensor_qos(self.cfg['reliability'], self.cfg['qos_depth'])
            self.pub_depth = self.create_publisher(Image, '~/depth', qos)
            self.pub_info = self.create_publisher(CameraInfo, '~/camera_info', qos)
            self.pub_points = self.create_publisher(PointCloud2, '~/points', qos)
            self.pub_colored = self.create_publisher(Image, '~/colored', qos)
            self.worker = LatestWorker(self._process, 'alignment', self._worker_error)
            topics = {'disparity': ('disparity', Image), 'depth': ('depth_registered', Image),
                      'confidence': ('confidence', Image),
                      'camera_info': ('camera_info', CameraInfo), 'image': ('image', Image)}
            self.subs = [self.create_subscription(
                topics[k][1], topics[k][0], self._callback(k), qos) for k in kinds]
            self.diag = Diagnostics(self, self._diagnostics)

        def _apply(self, changed):
            if any(k in changed for k in ALIGNER_KEYS):
                new = make_aligner(self.cfg)   # values were validated by the callback
                self.aligner = new
            with self.lock:
                self.buffer.size = self.cfg['buffer_size']
                self.buffer.window_ns = int(self.cfg['pairing_window_s'] * 1e9)
                self.buffer.max_bytes = int(self.cfg['pairing_max_mb'] * 1e6)

        def _error(self, kind, text):
            self.bad[kind] += 1
            self.log.error(kind, text, self.cfg['log_throttle_s'])

        def _on_drop(self, stamp, missing, why):
            if missing == ['disparity'] and self.cfg['relative_kind'] == 'depth':
                # Marigold publishes keyframes only: camera frames without one are normal.
                self.get_logger().debug('frame {} has no keyframe'.format(stamp))
                return
            self._error('unpaired', 'dropped frame {}: missing {} ({})'.format(
                stamp, ', '.join(missing), why))

        def _callback(self, kind):
            def callback(msg):
                stamp = conv.stamp_to_ns(msg.header.stamp)
                with self.lock:
                    last = self.last_stamp[kind]
                    if last is not None and last - stamp > self.cfg['stamp_reset_s'] * 1e9:
                        self._restart(kind, last, stamp)
                    elif last is not None and stamp <= last:
                        self._error('stamp', 'dropped {} {}: {} the previous stamp {} '
                                    '(out-of-order or duplicated)'.format(
                                        kind, stamp, 'equal to' if stamp == last
                                        else 'older than', last))
                        return
                    self.last_stamp[kind] = stamp
                    if kind == 'disparity':
                        self.in_rate.tick()
                    complete = self.buffer.add(kind, stamp, msg)
                    epoch = self.epoch
                if complete is not None:
                    now = time.time_ns()
                    self.input_age_ms.append((now - stamp) * 1e-6)
                    self.worker.put((complete, now, epoch))
            return callback

        def _restart(self, kind, last, stamp):
            # Called with self.lock held. A jump back by more than stamp_reset_s is a restarted
            # source (rosbag play --loop, an SVO reopened, sim time reset): comparing with the
            # old timeline would drop every new frame for good. Sets of the old timeline will
            # never complete, and the temporal filter must not blend the two recordings.
            self.stamp_resets += 1
            self.get_logger().warn(
                '{} stamp jumped back {:.3f} s (from {} to {}): source restarted; pairing '
                'and the temporal filter start over'.format(kind, (last - stamp) * 1e-9, last,
                                                            stamp))
            for k in self.last_stamp:
                self.last_stamp[k] = None
            self.buffer.clear()
            self.epoch += 1

        def _convert(self, msgs):
            """Messages -> arrays and camera; ValueError names what is wrong with the set."""
            disp_msg, depth_msg = msgs['disparity'], msgs['depth']
            if disp_msg.encoding != '32FC1':
                raise ValueError('disparity has encoding {!r}; expected 32FC1'.format(
                    disp_msg.encoding))
            relative = conv.image_to_numpy(disp_msg)
            bad = relative.size - int(np.count_nonzero(np.isfinite(relative)))
            if bad:
                raise ValueError('disparity has {} NaN/inf values of {}'.format(
                    bad, relative.size))
            depth = stereo_depth_metres(conv.image_to_numpy(depth_msg), depth_msg.encoding)
            h, w = depth.shape[:2]
            confidence = None
            if 'confidence' in msgs:
                c = msgs['confidence']
                if c.encoding != '32FC1':
                    raise ValueError('confidence has encoding {!r}; expected 32FC1'.format(
                        c.encoding))
                confidence = conv.image_to_numpy(c)
                if confidence.shape != depth.shape:
                    raise ValueError('confidence is {}x{} but depth is {}x{}'.format(
                        confidence.shape[1], confidence.shape[0], w, h))
                if not np.all(np.isfinite(confidence)):
                    raise ValueError('confidence has NaN/inf values')
            bgr = None
            if 'image' in msgs:
                im = msgs['image']
                bgr = to_bgr8(conv.image_to_numpy(im), im.encoding)
                if bgr.shape[:2] != depth.shape:
                    raise ValueError('depth is {}x{} but image is {}x{}; they must match'.format(
                        w, h, bgr.shape[1], bgr.shape[0]))
            camera = conv.camera_from_info(msgs['camera_info'], w, h)
            return relative, depth, confidence, bgr, camera

        def _process(self, item):
            msgs, t_complete, epoch = item
            if epoch != self.aligner_epoch:
                self.aligner.reset()
                self.aligner_epoch = epoch
            stages = self.stages
            stages.add('wait', (time.time_ns() - t_complete) * 1e-6)
            stages.start()
            t0 = time.perf_counter()
            try:
                relative, depth, confidence, bgr, camera = self._convert(msgs)
            except ValueError as exc:
                self._error('frame', 'dropped frame {}: {}'.format(
                    conv.stamp_to_ns(msgs['disparity'].header.stamp), exc))
                return
            stages.mark('convert')
            result = self.aligner.update(relative, depth, confidence)   # [H, W] float32 m
            self.result = result
            stages.mark('align')
            header = msgs['depth'].header
            self.pub_depth.publish(conv.numpy_to_image(result.depth, '32FC1', header,
                                                       buffer=self.depth_buffer))
            info = msgs['camera_info']
            if (info.width, info.height) != (camera.width, camera.height):
                info = conv.camera_to_info(camera, header)
            else:
                info.header = conv.copy_header(header)
            self.pub_info.publish(info)
            stages.mark('publish_depth')
            # Lazy outputs, as depth_image_proc: nothing is computed for a topic nobody reads.
            if self.pub_points.get_subscription_count() > 0:
                self._publish_cloud(result.depth, camera, bgr, header)
            if self.pub_colored.get_subscription_count() > 0:
                vmax = self.cfg['colored_max_depth'] or None
                colored = colorize(result.depth, vmin=0.0 if vmax else None, vmax=vmax,
                                   reverse=True)
                self.pub_colored.publish(conv.numpy_to_image(colored, 'bgr8', header))
                self.published['colored'] += 1
                stages.mark('colored')
            self.out_rate.tick()
            self.process_ms.append((time.perf_counter() - t0) * 1e3)
            self.latency_ms.append((time.time_ns() - conv.stamp_to_ns(header.stamp)) * 1e-6)

        def _publish_cloud(self, depth, camera, bgr, header):
            cfg = self.cfg
            stride = cfg['cloud_stride']
            shape = (depth.shape[0] // stride, depth.shape[1] // stride)
            # The cloud is written straight into the message's byte buffer: no copy before
            # serialization, no fresh pages every frame.
            out = self.cloud_buffer.array(shape, CLOUD_DTYPE if bgr is not None else XYZ_DTYPE)
            cloud = depth_to_cloud(depth, camera, bgr=bgr, stride=stride,
                                   min_depth=cfg['cloud_min_range'] or None,
                                   max_depth=cfg['cloud_max_range'] or None, out=out)
            self.stages.mark('cloud')
            self.pub_points.publish(conv.cloud_to_pointcloud2(cloud, header,
                                                              buffer=self.cloud_buffer))
            self.published['points'] += 1
            self.stages.mark('publish_cloud')

        def _worker_error(self, exc):
            self._error('exception', 'alignment failed on a frame: {}: {}'.format(
                type(exc).__name__, exc))

        def _diagnostics(self):
            r = self.result
            values = collections.OrderedDict()
            values['relative_kind'] = self.cfg['relative_kind']
            values['status'] = r.status if r else 'no_input'
            values['reason'] = r.reason if r else ''
            values['scale'] = r.scale if r else float('nan')
            values['shift'] = r.shift if r else float('nan')
            values['inlier_ratio'] = r.inlier_ratio if r else float('nan')
            values['valid_fraction'] = r.valid_fraction if r else float('nan')
            values['input_rate_hz'] = self.in_rate.rate
            values['output_rate_hz'] = self.out_rate.rate
            values['latency_ms'] = float(np.mean(self.latency_ms)) if self.latency_ms \
                else float('nan')
            values['processing_ms'] = float(np.mean(self.process_ms)) if self.process_ms \
                else float('nan')
            # Where a frame's time goes: stamp -> inputs paired, then each worker stage.
            values['input_age_ms'] = float(np.mean(self.input_age_ms)) if self.input_age_ms \
                else float('nan')
            for stage, ms in self.stages.means().items():
                values['stage_{}_ms'.format(stage)] = ms
            values['published_points'] = self.published['points']
            values['published_colored'] = self.published['colored']
            values['dropped_unpaired'] = self.bad['unpaired']
            values['dropped_busy'] = self.worker.dropped
            values['stamp_resets'] = self.stamp_resets
            values['pairing_waiting'] = len(self.buffer.pending)
            values['pairing_waiting_mb'] = self.buffer.bytes / 1e6
            for k in ('stamp', 'frame', 'exception'):
                values['dropped_' + k] = self.bad[k]
            if r is None:
                level, message = 'warn', 'waiting for paired input'
            elif r.status == 'ok':
                level, message = 'ok', 'aligned'
            elif r.status == 'held':
                level, message = 'warn', 'holding last fit: ' + r.reason
            else:
                level, message = 'error', 'no fit: ' + r.reason
            return [diagnostic_status('alignment_node: metric alignment',
                                      self.get_fully_qualified_name(), level, message, values)]

        def close(self):
            self.worker.stop()

    return _AlignmentNode()


main = main_for(make_node, 'alignment_node')

__all__ = ['main', 'make_aligner', 'make_node', 'message_bytes', 'PairingBuffer', 'PARAMS',
           'stereo_depth_metres']

if __name__ == '__main__':
    main()

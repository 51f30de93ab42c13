"""
zed_node: a ZED2 (pyzed, live or SVO) or a replay source -> zed-ros2-wrapper 4.x topics.

Publishes, in namespace ``zed`` by default, with the SDK image timestamp and the frame
``<camera_name>_left_camera_optical_frame``:

- ``~/left/image_rect_color`` (bgr8), ``~/left/camera_info`` (K and P at the published size),
- ``~/depth/depth_registered`` (32FC1 metres, REP 117/118), ``~/confidence/confidence_map``
  (32FC1, 1..100, larger = less reliable).

Sources come from ``depth_ros.sources.make_source``: live | svo (pyzed) or sample | folder | bag
(replay, no camera). A grab thread reads frames; a failed grab is retried with exponential
backoff, the source is reopened (a camera unplugged and plugged back), and the state is on
/diagnostics.
"""
from __future__ import annotations

import threading

import cv2
from depth_ros.ros.params import ConfigError, declare_params, on_set_validator, Param, \
    qos_depth_param, reliability_param, StartupError
from depth_ros.ros.runtime import diagnostic_status, Diagnostics, main_for, RateMeter, \
    sensor_qos, ThrottledLog
from depth_ros.sources.base import Frame, SourceError

SOURCES = ('live', 'svo', 'sample', 'folder', 'bag')
THROTTLE_S = 2.0

PARAMS = (
    Param('source', 'live', 'frame source: live / svo (pyzed), sample (bundled pair), folder '
          '(stereo pairs + calibration YAML), bag (rosbag2 of ZED topics)', choices=SOURCES,
          read_only=True),
    Param('path', '', 'SVO file, folder or bag path (svo, folder, bag)', read_only=True),
    Param('camera_name', 'zed', 'camera name; frames are <camera_name>_left_camera_optical_frame',
          read_only=True),
    Param('frame_id', '', 'override of the optical frame id (empty: from camera_name)',
          read_only=True),
    Param('resolution', 'HD720', 'ZED resolution (live/svo)',
          choices=('HD2K', 'HD1080', 'HD720', 'VGA'), read_only=True),
    Param('grab_fps', 30, 'ZED frame rate (live/svo)', low=0, high=120, read_only=True),
    Param('depth_mode', 'PERFORMANCE', 'ZED depth mode (live/svo)',
          choices=('PERFORMANCE', 'QUALITY', 'ULTRA', 'NEURAL'), read_only=True),
    Param('min_depth', 0.3, 'ZED minimum depth in metres (live/svo)', low=0.01, high=1000.0,
          read_only=True),
    Param('max_depth', 20.0, 'ZED maximum depth in metres (live/svo)', low=0.01, high=1000.0,
          read_only=True),
    Param('confidence_threshold', 95, 'ZED depth confidence threshold 1..100 (live/svo)',
          low=1, high=100, read_only=True),
    Param('texture_confidence_threshold', 100, 'ZED texture confidence threshold 1..100',
          low=1, high=100, read_only=True),
    Param('publish_downscale', 1.0, 'publish at this fraction of the camera resolution '
          '(K and P scaled with it)', low=0.05, high=1.0, read_only=True),
    Param('loop', True, 'replay sources: start again at the end', read_only=True),
    Param('rate', 1.0, 'replay sources: speed relative to the recorded stamps (0: as fast as '
          'possible)', low=0.0, high=100.0, read_only=True),
    Param('fps', 0.0, 'replay sources: deliver at this rate with wall-clock stamps (0: use the '
          'recorded stamps; the sample has none and defaults to 10)', low=0.0, high=1000.0,
          read_only=True),
    Param('drop_after', 0, 'testing: simulate a camera that disappears after this many frames '
          '(0: never)', low=0, high=10 ** 9, read_only=True),
    Param('outage_s', 2.0, 'testing: how long a simulated disappearance lasts', low=0.0,
          high=3600.0, read_only=True),
    Param('retry_initial_s', 0.2, 'first wait after a failed grab or open; doubles up to '
          'retry_max_s', low=0.0, high=60.0),
    Param('retry_max_s', 5.0, 'longest wait between reconnection attempts', low=0.0,
          high=600.0),
    Param('log_throttle_s', THROTTLE_S, 'bad-frame errors of one kind are logged at most once '
          'per this many seconds', low=0.0, high=3600.0),
    reliability_param(),
    qos_depth_param(2),
)


def _validate(values) -> str:
    kind, path = values['source'], values['path']
    if kind in ('svo', 'folder', 'bag') and not path:
        return 'parameter `path` is empty; source {!r} needs one'.format(kind)
    if kind in ('live', 'sample') and path:
        return 'parameter `path` must be empty for source {!r}, got {!r}'.format(kind, path)
    if values['max_depth'] <= values['min_depth']:
        return 'parameter `max_depth` ({}) must be > `min_depth` ({})'.format(
            values['max_depth'], values['min_depth'])
    if values['retry_max_s'] < values['retry_initial_s']:
        return 'parameter `retry_max_s` ({}) must be >= `retry_initial_s` ({})'.format(
            values['retry_max_s'], values['retry_initial_s'])
    return ''


def source_options(values) -> dict:
    """make_source keyword arguments for the node's parameters."""
    kind = values['source']
    if kind in ('live', 'svo'):
        options = {k: values[k] for k in (
            'resolution', 'depth_mode', 'min_depth', 'max_depth', 'confidence_threshold',
            'texture_confidence_threshold', 'publish_downscale', 'camera_name')}
        options['fps'] = values['grab_fps']
        if kind == 'svo':
            options.update(loop=values['loop'], rate=values['rate'])
        return options
    options = {'loop': values['loop'], 'rate': values['rate']}
    fps = values['fps'] or (10.0 if kind == 'sample' else 0.0)
    if fps:
        options['fps'] = fps
    if values['drop_after']:
        options.update(drop_after=values['drop_after'], outage_s=values['outage_s'])
    return options


def downscale_frame(frame: Frame, factor: float) -> Frame:
    """
    Return the frame at ``factor`` of its size: area-averaged image, nearest depth and confidence.

    Nearest keeps depth values real (no averaging across edges into phantom depths).
    """
    if factor >= 1.0:
        return frame
    h, w = frame.left.shape[:2]
    width, height = max(1, int(round(w * factor))), max(1, int(round(h * factor)))
    size = (width, height)

    def nearest(a):
        return None if a is None else cv2.resize(a, size, interpolation=cv2.INTER_NEAREST)
    return Frame(left=cv2.resize(frame.left, size, interpolation=cv2.INTER_AREA),
                 depth=nearest(frame.depth), confidence=nearest(frame.confidence),
                 camera=frame.camera.scaled(width, height), stamp_ns=frame.stamp_ns,
                 frame_id=frame.frame_id)


def make_node(source=None, **kwargs):
    """Create the zed_node; ``source`` injects a FrameSource (tests), else it is built."""
    from rclpy.node import Node
    from sensor_msgs.msg import CameraInfo, Image

    from depth_ros.ros import conversions as conv

    class _ZedNode(Node):

        def __init__(self):
            super().__init__('zed_node', **kwargs)
            validate = (lambda v: _validate(v) or None)
            self.cfg = declare_params(self, PARAMS, validate=validate)
            self.add_on_set_parameters_callback(on_set_validator(PARAMS, self.cfg, validate))
            self.frame_id = self.cfg['frame_id'] or \
                self.cfg['camera_name'] + '_left_camera_optical_frame'
            self.source = source if source is not None else self._make_source()
            qos = sensor_qos(self.cfg['reliability'], self.cfg['qos_depth'])
            self.pub_image = self.create_publisher(Image, '~/left/image_rect_color', qos)
            self.pub_info = self.create_publisher(CameraInfo, '~/left/camera_info', qos)
            self.pub_depth = self.create_publisher(Image, '~/depth/depth_registered', qos)
            self.pub_conf = self.create_publisher(Image, '~/confidence/confidence_map', qos)
            self.rate = RateMeter()
            # Message bytes reused from frame to frame (only the grab thread publishes).
            self.buffers = {k: conv.MessageBuffer() for k in ('image', 'depth', 'confidence')}
            self.frames = 0
            self.grab_errors = 0
            self.reconnects = 0
            self.state, self.state_msg = 'starting', 'opening source'
            self._stop = threading.Event()
            self.log = ThrottledLog(self.get_logger())
            self.diag = Diagnostics(self, self._diagnostics)
            self.thread = threading.Thread(target=self._grab_loop, name='zed_grab', daemon=True)
            self.thread.start()

        def _make_source(self):
            from depth_ros.sources import make_source
            kind = self.cfg['source']
            try:
                if kind in ('live', 'svo'):
                    # pyzed is imported when the camera opens, in the grab thread; check now so
                    # that a missing SDK is one clear start-up message, not a retry loop.
                    from depth_ros.sources.zed import import_sl
                    import_sl()
                return make_source(kind, self.cfg['path'] or None, **source_options(self.cfg))
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            except ImportError as exc:
                raise StartupError('source {!r} is not available: {}'.format(kind, exc)) \
                    from None

        def _set_state(self, state, message):
            self.state, self.state_msg = state, message

        def _grab_loop(self):
            wait = self.cfg['retry_initial_s']
            opened = False
            ended = False
            while not self._stop.is_set():
                try:
                    if not opened:
                        self.source.open()
                        opened = True
                        if self.frames:
                            self.reconnects += 1
                            self.get_logger().info('source {} reconnected'.format(
                                self.source.name))
                        self._set_state('ok', 'streaming')
                    frame = self.source.read()
                except (SourceError, OSError, RuntimeError) as exc:
                    # A ZED that drops out raises here; retry and reopen with backoff, as the
                    # official wrapper does, instead of dying.
                    self.grab_errors += 1
                    self._set_state('error', 'grab failed, retrying in {:.1f} s: {}'.format(
                        wait, exc))
                    self.log.error('grab', 'grab failed ({}); retrying in {:.1f} s'.format(
                        exc, wait), self.cfg['log_throttle_s'])
                    try:
                        self.source.close()
                    except Exception:  # closing a vanished device may fail too
                        pass
                    opened = False
                    self._stop.wait(wait)
                    wait = min(max(wait * 2.0, 0.05), self.cfg['retry_max_s'])
                    continue
                wait = self.cfg['retry_initial_s']
                if frame is None:
                    if not ended:
                        self.get_logger().info('source {} ended (loop is off)'.format(
                            self.source.name))
                        self._set_state('warn', 'source ended')
                        ended = True
                    self._stop.wait(0.5)
                    continue
                # Pacing is the source's: the SDK's grab rate, or ReplaySource's rate / fps
                # (which holds across loop passes, also for the one-frame sample). Frames are
                # published as soon as they are read, so their stamps are never stale.
                try:
                    self._publish(frame)
                except Exception as exc:
                    if not self.context.ok():
                        return  # shutting down (Ctrl-C): the publishers are gone
                    self.log.error('publish', 'publishing a frame failed: {}'.format(exc),
                                   self.cfg['log_throttle_s'])

        def _publish(self, frame: Frame):
            if self.cfg['source'] not in ('live', 'svo'):
                frame = downscale_frame(frame, self.cfg['publish_downscale'])
            header = conv.make_header(frame.stamp_ns, self.frame_id)
            self.pub_image.publish(conv.numpy_to_image(frame.left, 'bgr8', header,
                                                       buffer=self.buffers['image']))
            self.pub_info.publish(conv.camera_to_info(frame.camera, header))
            if frame.depth is not None:
                depth = frame.depth.astype('float32', copy=False)
                self.pub_depth.publish(conv.numpy_to_image(depth, '32FC1', header,
                                                           buffer=self.buffers['depth']))
            if frame.confidence is not None:
                conf = frame.confidence.astype('float32', copy=False)
                self.pub_conf.publish(conv.numpy_to_image(conf, '32FC1', header,
                                                          buffer=self.buffers['confidence']))
            self.frames += 1
            self.rate.tick()

        def _diagnostics(self):
            values = {'source': self.source.name, 'frame_id': self.frame_id,
                      'frames': self.frames, 'rate_hz': self.rate.rate,
                      'grab_errors': self.grab_errors, 'reconnects': self.reconnects}
            return [diagnostic_status('zed_node: camera', self.get_fully_qualified_name(),
                                      self.state if self.state != 'starting' else 'warn',
                                      self.state_msg, values)]

        def close(self):
            self._stop.set()
            self.thread.join(3.0)
            try:
                self.source.close()
            except Exception as exc:
                self.get_logger().warn('closing the source failed: {}'.format(exc))

    return _ZedNode()


main = main_for(lambda: make_node(namespace='zed'), 'zed_node')

__all__ = ['downscale_frame', 'main', 'make_node', 'PARAMS', 'source_options']

if __name__ == '__main__':
    main()

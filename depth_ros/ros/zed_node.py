"""
zed_node: a ZED2 (pyzed, live or SVO) or a replay source -> zed-ros2-wrapper 4.x topics.

Publishes, in namespace ``zed`` by default, with the SDK image timestamp and the frame
``<camera_name>_left_camera_optical_frame``:

- ``~/left/image_rect_color`` (bgr8), ``~/left/camera_info`` (K and P at the published size),
  ``~/right/camera_info`` (the rectified right camera: P[0,3] = -fx * baseline; the baseline of
  the stereo noise model downstream),
- ``~/depth/depth_registered`` (32FC1 metres, REP 117/118), ``~/confidence/confidence_map``
  (32FC1, 1..100, larger = less reliable).

Sources come from ``depth_ros.sources.make_source``: live | svo (pyzed) or sample | folder | bag
(replay, no camera). A grab thread reads frames; a failed grab is retried with exponential
backoff and the source is reopened (a camera unplugged and plugged back); an error that
retrying cannot fix (a corrupt or missing recording) ends the node with one FATAL line. The
state is on /diagnostics.

In the composed process (``composed.py``) the nodes fed by this one register with
:meth:`ZedNode.hand_over_to`: each frame is handed to them by reference (no message is built
for them). Every topic is published only while someone subscribes to it; separately, depth_node
and alignment_node are those subscribers.
"""
from __future__ import annotations

import collections
import os
import threading

from depth_ros.nodes_core.config import source_options, user_path, validate_zed, ZED_PARAMS
from depth_ros.nodes_core.middleware import max_message_bytes, too_large_text
from depth_ros.nodes_core.params import ConfigError, StartupError
from depth_ros.nodes_core.workers import RateMeter
from depth_ros.ros import conversions as conv
from depth_ros.ros.runtime import DepthRosNode, main_for, \
    sensor_qos
from depth_ros.sources.base import Frame, FrameError, SourceConfigError, SourceError
from depth_ros.sources.downscale import downscale_frame
from depth_ros.util import describe_error, window_mean
from sensor_msgs.msg import CameraInfo, Image

# How long the grab thread waits, at most, for the network call on a frame to begin before it
# retrieves the frame's stereo (composed, a consumer that starts at once: StereoPending). The
# begin comes within a millisecond or two; the bound only keeps a consumer that never says so
# from holding the stereo back long (alignment_node needs it only after the inference).
START_WAIT_S = 0.02


def is_permanent(exc: BaseException) -> bool:
    """Tell whether retrying cannot fix a source error (missing, corrupt, invalid input)."""
    return isinstance(exc, (SourceConfigError, FileNotFoundError, NotADirectoryError,
                            IsADirectoryError, PermissionError, ValueError))


class ZedNode(DepthRosNode):
    """The camera node (module docstring); ``source`` injects a FrameSource (tests)."""

    def __init__(self, source=None, **kwargs):
        kwargs.setdefault('namespace', 'zed')
        super().__init__('zed_node', ZED_PARAMS, validate=validate_zed, **kwargs)
        self.frame_id = self.cfg['frame_id'] or \
            self.cfg['camera_name'] + '_left_camera_optical_frame'
        self.right_frame_id = self.cfg['camera_name'] + '_right_camera_optical_frame'
        self.source = source if source is not None else self._make_source()
        qos = sensor_qos(self.cfg['reliability'], self.cfg['qos_depth'])
        self.pub_image = self.create_publisher(Image, '~/left/image_rect_color', qos)
        self.pub_info = self.create_publisher(CameraInfo, '~/left/camera_info', qos)
        # The right camera's info carries the baseline (P[0,3] = -fx * B), as the wrapper's.
        self.pub_right_info = self.create_publisher(CameraInfo, '~/right/camera_info', qos)
        self.pub_depth = self.create_publisher(Image, '~/depth/depth_registered', qos)
        self.pub_conf = self.create_publisher(Image, '~/confidence/confidence_map', qos)
        self.rate = RateMeter()
        # In-process consumers (composed.py): callables taking (frame, header), called in the
        # grab thread with each frame as published. They only hand the frame over.
        self.consumers = []
        self.built = collections.Counter()   # messages built per output (lazy: subscribed)
        # Message bytes reused from frame to frame (only the grab thread publishes).
        self.buffers = {k: conv.MessageBuffer() for k in ('image', 'depth', 'confidence')}
        self.frames = 0
        # Stereo retrieves held back until the network call began (image first, composed).
        self.start_wait_ms = collections.deque(maxlen=50)
        self.grab_errors = 0
        self.failures_in_a_row = 0
        self.reconnects = 0
        self.state, self.state_msg = 'warn', 'opening source'
        self.limit = max_message_bytes()
        self._size_checked = False
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._grab_loop, name='zed_grab', daemon=True)
        self.thread.start()

    def _make_source(self):
        from depth_ros.sources import make_source
        kind, path = self.cfg['source'], user_path(self.cfg['path'])
        if path and not os.path.exists(path):
            raise ConfigError('source {}: parameter `path` {!r} does not exist'.format(
                kind, self.cfg['path']))
        try:
            source = make_source(kind, path or None, **source_options(self.cfg))
            if kind in ('live', 'svo'):
                # pyzed is imported when the camera opens, in the grab thread; check now so
                # that a missing SDK, or a resolution or depth mode it lacks, is one clear
                # start-up line, not a retry loop. An SVO comes wrapped in the replay
                # pacing (ReplaySource): the check is the ZED source's inside it.
                getattr(source, 'inner', source).check_sdk()
            return source
        except (ValueError, OSError) as exc:
            raise ConfigError('source {}: {}'.format(kind, exc)) from None
        except SourceError as exc:
            raise ConfigError('source {}: {}'.format(kind, exc)) from None
        except ImportError as exc:
            raise StartupError('source {!r} is not available: {}'.format(kind, exc)) \
                from None

    def hand_over_to(self, consumer) -> None:
        """Hand every frame, by reference, to ``consumer(frame, header)`` (composed.py)."""
        self.consumers.append(consumer)

    # ------------------------------------------------------------------ grab thread
    def _grab_loop(self):
        try:
            self._grab()
        finally:
            # The thread that opened the source closes it: a sqlite3 bag's connection can be
            # used only in the thread that made it (closed from close(), Humble's rosbags
            # raised ProgrammingError at every Ctrl-C).
            self._close_reporting()

    def _grab(self):
        wait = self.cfg['retry_initial_s']
        opened = ended = False
        # Image first where the source can (a ZED, live or SVO): its frame comes before its
        # stereo planes are retrieved, and is handed over and published first (below).
        read = getattr(self.source, 'read_image_first', self.source.read)
        while not self._stop.is_set():
            sent = None
            try:
                if not opened:
                    self._open()
                    opened = True
                frame = read()
                if frame is not None and frame.pending is not None:
                    # depth_node starts on the image while the depth and confidence are
                    # retrieved; a consumer that needs them waits (Frame.wait_stereo).
                    sent = self._publish_safely(self._publish_image, frame)
                    # Composed: retrieved once the network call on the image has begun, when
                    # the SDK keeps the GIL while it retrieves (before 5.0.2: StereoPending).
                    if frame.pending.holds_for_start:
                        self.start_wait_ms.append(
                            frame.pending.wait_for_start(START_WAIT_S) * 1e3)
                    frame.pending.complete(frame)
            except FrameError as exc:
                # One bad frame (SDK 5 corrupted frame, an unreadable file of a folder): the
                # source goes on; no reopen, which would start a recording over.
                self.error('frame', 'dropped frame: {}'.format(exc))
                continue
            except Exception as exc:  # noqa: B902 - every grab failure is handled here
                opened = False
                if not self._grab_failed(exc, wait):
                    return
                self._stop.wait(wait)
                wait = min(max(wait * 2.0, 0.05), self.cfg['retry_max_s'])
                continue
            wait = self.cfg['retry_initial_s']
            self.failures_in_a_row = 0
            if frame is None:
                ended = self._ended(ended)
                continue
            # Pacing is the source's: the SDK's grab rate, or ReplaySource's rate / fps.
            # Frames are published as soon as they are read, so their stamps are never stale.
            if frame.pending is None:
                self._publish_safely(self._publish, frame)
            elif sent is not None:
                self._publish_safely(self._publish_stereo, *sent)

    def _open(self):
        self.source.open()
        if self.frames:
            self.reconnects += 1
            self.get_logger().info('source {} reconnected'.format(self.source.name))
        self.state, self.state_msg = 'ok', 'streaming'

    def _grab_failed(self, exc, wait) -> bool:
        """Record a failed open/grab; return whether to retry."""
        self.grab_errors += 1
        self.failures_in_a_row += 1
        self._close_source()
        text = describe_error(exc) if not isinstance(exc, SourceError) else str(exc)
        limit = self.cfg['max_retries']
        if is_permanent(exc) or (limit and self.failures_in_a_row > limit):
            why = 'cannot be fixed by retrying' if is_permanent(exc) else \
                'failed {} times in a row (max_retries)'.format(self.failures_in_a_row)
            self.state, self.state_msg = 'error', 'source stopped: {}'.format(text)
            self.fail('source {} {}: {}'.format(self.source.name, why, text))
            return False
        # A ZED that drops out raises here; retry and reopen with backoff, as the official
        # wrapper does, instead of dying.
        self.state, self.state_msg = 'error', 'grab failed, retrying in {:.1f} s: {}'.format(
            wait, text)
        self.warn('grab', 'grab failed ({}); retrying in {:.1f} s'.format(text, wait))
        return True

    def _ended(self, ended: bool) -> bool:
        if not ended:
            self.get_logger().info('source {} ended (loop is off)'.format(self.source.name))
            self.state, self.state_msg = 'warn', 'source ended'
        self._stop.wait(0.5)
        return True

    def _close_source(self):
        try:
            self.source.close()
        except Exception:  # noqa: B902 - closing a vanished device may fail too
            pass

    def _publish_safely(self, publish, *args):
        """``publish(*args)``; a failure is logged (the frame dropped): None then."""
        try:
            return publish(*args)
        except Exception as exc:  # noqa: B902 - a frame that cannot be sent is dropped
            if self.shutting_down or not self.context.ok():
                return None
            self.error('publish', 'publishing a frame failed: {}'.format(describe_error(exc)))
            return None

    def _check_size(self, frame: Frame) -> bool:
        """Refuse, once, frames the middleware cannot carry whole (False: stop)."""
        self._size_checked = True
        if self.limit is None:
            return True
        h, w = frame.left.shape[:2]
        # The depth plane (float32) may still be on its way (image first): counted from the
        # image's size.
        has_depth = frame.depth is not None or frame.pending is not None
        nbytes = max(frame.left.nbytes, h * w * 4 if has_depth else 0)
        if nbytes <= self.limit:
            return True
        self.fail(too_large_text('a {}x{} frame'.format(w, h), nbytes, self.limit,
                                 'publish it smaller with publish_downscale:={:.2g}'.format(
                                     max(0.05, 0.9 * (self.limit / float(nbytes)) ** 0.5))))
        self.state, self.state_msg = 'error', 'frames too large for the middleware'
        self._stop.set()
        return False

    def _publish(self, frame: Frame):
        sent = self._publish_image(frame)
        if sent is not None:
            self._publish_stereo(*sent)

    def _publish_image(self, frame: Frame):
        """
        Hand the frame over and publish its image side; return (frame as sent, its header).

        None: refused (too large for the middleware: the node stops). The frame as sent is
        the one given, or its ``publish_downscale`` copy (replayed sources).
        """
        if self.cfg['source'] not in ('live', 'svo'):
            frame = downscale_frame(frame, self.cfg['publish_downscale'])
        if not self._size_checked and not self._check_size(frame):
            return None
        header = conv.make_header(frame.stamp_ns, self.frame_id)
        for consumer in self.consumers:
            consumer(frame, header)
        # Each message is built only for a topic someone subscribes to (separately run,
        # depth_node and alignment_node do; composed, only outside readers count).
        if self._wanted(self.pub_image, 'image'):
            self.publish(self.pub_image, conv.numpy_to_image(frame.left, 'bgr8', header,
                                                             buffer=self.buffers['image']))
        if self._wanted(self.pub_info, 'camera_info'):
            self.publish(self.pub_info, conv.camera_to_info(frame.camera, header))
        if frame.baseline_m and self._wanted(self.pub_right_info, 'right_camera_info'):
            right = conv.make_header(frame.stamp_ns, self.right_frame_id)
            self.publish(self.pub_right_info, conv.camera_to_info(frame.camera, right,
                                                                  baseline_m=frame.baseline_m))
        return frame, header

    def _publish_stereo(self, frame: Frame, header):
        """Publish the frame's depth and confidence (complete: retrieved), and count it."""
        if frame.depth is not None and self._wanted(self.pub_depth, 'depth'):
            depth = frame.depth.astype('float32', copy=False)
            self.publish(self.pub_depth, conv.numpy_to_image(depth, '32FC1', header,
                                                             buffer=self.buffers['depth']))
        if frame.confidence is not None and self._wanted(self.pub_conf, 'confidence'):
            conf = frame.confidence.astype('float32', copy=False)
            self.publish(self.pub_conf, conv.numpy_to_image(conf, '32FC1', header,
                                                            buffer=self.buffers['confidence']))
        self.frames += 1
        self.rate.tick()
        if self.frames == 1:
            self._tell_first(frame)

    def _tell_first(self, frame: Frame) -> None:
        """Say, once, that frames flow: the source, the size and where they go."""
        h, w = frame.left.shape[:2]
        parts = ['image'] + [name for name, plane in (('depth', frame.depth),
                                                      ('confidence', frame.confidence))
                             if plane is not None]
        self.get_logger().info('first frame from source {}: {}x{}, {} on {}/... ({})'.format(
            self.source.name, w, h, ', '.join(parts), self.get_fully_qualified_name(),
            'handed over in-process, and published while subscribed' if self.consumers
            else 'published while subscribed'))

    def _wanted(self, publisher, kind) -> bool:
        if publisher.get_subscription_count() > 0:
            self.built[kind] += 1
            return True
        return False

    # ------------------------------------------------------------------ health
    def watched_threads(self):
        """Watch the grab thread: dead before close(), it would publish nothing."""
        return [('grab', lambda: self.thread.is_alive() or self._stop.is_set())]

    def diagnostics(self):
        """Return this node's status for /diagnostics."""
        values = {'source': self.source.name, 'frame_id': self.frame_id,
                  'frames': self.frames, 'rate_hz': self.rate.rate,
                  'dropped_frame': self.bad['frame'],
                  'grab_errors': self.grab_errors, 'reconnects': self.reconnects,
                  'grab_thread_alive': self.thread.is_alive(),
                  # In-process consumers (composed), and the messages built for subscribers.
                  'handed_over_to': len(self.consumers),
                  # Composed, image first: the stereo's retrieve waited for the network's start.
                  'stereo_wait_ms_mean': window_mean(self.start_wait_ms, 0.0)}
        # A ZED's: its SDK, whether pyzed keeps the GIL (composed: the other nodes wait while
        # it does), the time in its calls.
        status_values = getattr(getattr(self.source, 'inner', self.source), 'status_values',
                                None)
        if status_values is not None:
            values.update(status_values())
        for kind in ('image', 'camera_info', 'right_camera_info', 'depth', 'confidence'):
            values['built_' + kind] = self.built[kind]
        level, message = self.state, self.state_msg
        if level == 'ok' and self.rate.age() > 3.0:
            level, message = 'warn', 'no frame for {:.1f} s'.format(self.rate.age())
        return [self.make_status('camera', level, message, values)]

    def close(self):
        """Stop the grab thread, then close the camera."""
        self._stop.set()
        self.thread.join(3.0)
        if self.thread.is_alive():
            # The grab thread is stuck in a read: close the source from here (best effort).
            self._close_reporting()

    def _close_reporting(self):
        try:
            self.source.close()
        except Exception as exc:  # noqa: B902 - report, but finish the shutdown
            self.get_logger().warning('closing the source failed: {}'.format(describe_error(exc)))


main = main_for(ZedNode, 'zed_node')

if __name__ == '__main__':
    main()

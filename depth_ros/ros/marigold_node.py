"""
marigold_node: Marigold relative-depth keyframes on a timer and on the ~/capture service.

Subscribes ``image`` (remap it to the camera's ``left/image_rect_color``) and keeps only the
newest frame. A keyframe job starts every ``keyframe_period_s`` seconds and on each
std_srvs/Trigger call of ``~/capture``. Jobs run in one worker thread, never on the executor;
at most one runs at a time and a request made during a job runs once it ends, on the newest
frame then.

Publishes, with the SOURCE image's header (stamp and frame_id), so that a second
alignment_node with ``relative_kind: depth`` pairs the keyframe with stereo by exact stamp:

* ``~/depth``: 32FC1 affine-invariant depth, 0 near .. 1 far (not metres);
* ``~/uncertainty``: 32FC1 ensemble spread, only when ``ensemble_size`` >= 3;
* ``~/keyframe_started``: std_msgs/Header of the image a job starts on (the alignment
  instance keeps that frame's stereo set until the keyframe arrives);
* ``/diagnostics``: keyframes done and failed, last inference and job latency, last keyframe
  stamp, age of the newest received image, busy flag.

In the composed process (``composed.py``, ``local_input=True``) there is no ``image``
subscription: zed_node hands each frame over by reference (:meth:`MarigoldNode.take_frame`).

The model is Marigold through diffusers (depth_ros.inference.marigold); ``checkpoint:
tiny-random`` builds an untrained tiny pipeline for tests and dry runs (its output is noise).
"""
from __future__ import annotations

import time
from typing import Optional

from depth_ros.core.encodings import to_bgr8
from depth_ros.inference.marigold import check_settings, default_dtype, load_marigold, \
    MarigoldDepth
from depth_ros.nodes_core.config import MARIGOLD_PARAMS, marigold_settings
from depth_ros.nodes_core.params import ConfigError, StartupError
from depth_ros.nodes_core.workers import Worker
from depth_ros.ros import conversions as conv
from depth_ros.ros.runtime import DepthRosNode, LocalFrame, main_for, \
    sensor_qos
from depth_ros.util import describe_error
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from std_srvs.srv import Trigger
NO_FRAME_LOG_THROTTLE_S = 30.0
# /diagnostics warns when the newest image is older than this (the camera feed stopped).
STALE_INPUT_S = 5.0


def load_error_message(checkpoint: str, device: str, exc: BaseException) -> str:
    """Return the one-line start-up message for a Marigold load that raised ``exc``."""
    return 'cannot load Marigold {!r} on device {!r}: {}'.format(
        checkpoint, device, describe_error(exc))


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; others are passed through."""
    if device != 'auto':
        return device
    try:
        import torch
    except ImportError:
        return 'cpu'
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def _stamp_text(stamp) -> str:
    return '{}.{:09d}'.format(stamp.sec, stamp.nanosec)


class MarigoldNode(DepthRosNode):
    """Marigold keyframes (module docstring); ``model`` overrides the parameters (tests)."""

    def __init__(self, model: Optional[MarigoldDepth] = None, local_input: bool = False,
                 **kwargs):
        super().__init__('marigold_node', MARIGOLD_PARAMS, **kwargs)
        self.model = model if model is not None else self._load()
        p = self.cfg
        # Depth 1: a keyframe is only worth having on the newest image.
        qos = sensor_qos(p['reliability'], 1)
        self.pub_depth = self.create_publisher(Image, '~/depth', qos)
        self.pub_started = self.create_publisher(Header, '~/keyframe_started', qos)
        self.pub_unc = None
        if self.model.ensemble_size > 1:
            self.pub_unc = self.create_publisher(Image, '~/uncertainty', qos)
        self.sub = None if local_input else \
            self.create_subscription(Image, 'image', self._on_image, qos)
        self.srv = self.create_service(Trigger, '~/capture', self._on_capture)
        # State for /diagnostics, written by the executor (images) and the worker (jobs).
        self.last_rx = None             # monotonic time the newest image arrived
        self.last_rx_stamp = None       # its header stamp
        self.last_keyframe_stamp = None
        self.last_inference_ms = float('nan')
        self.last_job_ms = float('nan')
        self.last_error = ''
        self.worker = Worker(self._job, 'marigold_keyframes', self._job_error)
        self.timer = None
        if p['keyframe_period_s'] > 0:
            self.timer = self.create_timer(p['keyframe_period_s'], self._on_timer)
        self.get_logger().info(
            'marigold_node: {!r}, keyframes every {} s and on ~/capture'.format(
                self.model, p['keyframe_period_s'] or 'never'))

    def _load(self) -> MarigoldDepth:
        p = self.cfg
        settings = marigold_settings(p)
        device = resolve_device(p['device'])
        dtype = default_dtype(device) if p['dtype'] == 'auto' else p['dtype']
        try:
            check_settings(settings['steps'], p['ensemble_size'],
                           settings['processing_resolution'], dtype)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        try:
            return load_marigold(p['checkpoint'], device=device, dtype=dtype,
                                 ensemble_size=p['ensemble_size'], **settings)
        except Exception as exc:  # noqa: B902 - every load failure is a start-up one
            # torch raises AssertionError for cuda on a CPU-only build, diffusers
            # ValueError/KeyError on odd folders: all are the user's to fix, so one FATAL
            # line (run_node) names the cause instead of a traceback.
            raise StartupError(load_error_message(p['checkpoint'], device, exc)) from None

    def _on_image(self, msg) -> None:
        self.last_rx, self.last_rx_stamp = time.monotonic(), msg.header.stamp
        self.worker.offer(msg)   # newest frame wins; decoding happens in the worker

    def take_frame(self, frame, header) -> None:
        """Take zed_node's frame by reference (its grab thread; composed.py): newest wins."""
        self.last_rx, self.last_rx_stamp = time.monotonic(), header.stamp
        self.worker.offer(LocalFrame(frame, header))

    def _input_name(self) -> str:
        return self.sub.topic_name if self.sub is not None else 'zed_node (in-process)'

    def _on_timer(self) -> None:
        state = self.worker.request()
        if state == 'no_frame':
            self.log.warn('no_frame', 'no image received yet on {}'.format(
                self._input_name()), NO_FRAME_LOG_THROTTLE_S)

    def _on_capture(self, request, response):
        state = self.worker.request()
        response.success = state != 'no_frame'
        response.message = {
            'started': 'keyframe started on the newest image',
            'queued': 'a keyframe is running; the next starts on the newest image after it',
            'no_frame': 'no image received yet on {}'.format(self._input_name()),
        }[state]
        return response

    def _job(self, msg) -> None:
        t0 = time.perf_counter()
        self.publish(self.pub_started, conv.copy_header(msg.header))
        if isinstance(msg, LocalFrame):   # by reference: zed_node's bgr8 array
            bgr = msg.frame.left
        else:
            bgr = to_bgr8(conv.image_to_numpy(msg), msg.encoding)
        result = self.model.infer(bgr)
        # The SOURCE image's header, so alignment pairs the keyframe by exact stamp.
        if not self.publish(self.pub_depth, conv.numpy_to_image(result.depth, '32FC1',
                                                                msg.header)):
            return
        if self.pub_unc is not None and result.uncertainty is not None:
            self.publish(self.pub_unc, conv.numpy_to_image(result.uncertainty, '32FC1',
                                                           msg.header))
        self.last_job_ms = (time.perf_counter() - t0) * 1e3
        self.last_inference_ms = float(getattr(result, 'latency_ms', float('nan')))
        self.last_keyframe_stamp = _stamp_text(msg.header.stamp)
        self.last_error = ''
        self.get_logger().info('keyframe {}: {:.0f} ms'.format(
            self.last_keyframe_stamp, self.last_job_ms))

    def _job_error(self, exc) -> None:
        if self.shutting_down:
            return
        self.last_error = describe_error(exc)
        # One window per exception type: a burst of one error does not hide another.
        self.log.error('job_' + type(exc).__name__, 'keyframe failed, frame dropped: '
                       '{}'.format(self.last_error), self.cfg['log_throttle_s'])

    def watched_threads(self):
        """Watch the keyframe thread: it runs for the node's life (it ends only at shutdown)."""
        return [('keyframe', lambda: self.worker.alive)]

    def _status(self, rx_age: float):
        if self.last_rx is None:
            return 'warn', 'no image received yet'
        if rx_age > STALE_INPUT_S:
            return 'warn', 'no image for {:.0f} s'.format(rx_age)
        if self.last_error:
            return 'warn', 'last keyframe failed: {}'.format(self.last_error)
        return 'ok', 'busy' if self.worker.busy else 'idle'

    def diagnostics(self):
        """Return this node's status for /diagnostics."""
        w = self.worker
        rx_age = float('nan') if self.last_rx is None else time.monotonic() - self.last_rx
        stamp_age = float('nan')
        if self.last_rx_stamp is not None:
            stamp_age = (self.get_clock().now().nanoseconds
                         - conv.stamp_to_ns(self.last_rx_stamp)) * 1e-9
        level, message = self._status(rx_age)
        values = {
            'model': getattr(self.model, 'name', '') or repr(self.model),
            'busy': w.busy,
            'keyframes_done': w.done, 'keyframes_failed': w.failed,
            'last_inference_ms': self.last_inference_ms,
            'last_job_ms': self.last_job_ms,
            'last_keyframe_stamp': self.last_keyframe_stamp or 'none',
            # Receipt age works with bag/sim time; stamp age shows camera-to-node delay.
            'newest_image_received_age_s': rx_age,
            'newest_image_stamp_age_s': stamp_age,
            'keyframe_period_s': self.cfg['keyframe_period_s'],
        }
        return [self.make_status('keyframes', level, message, values)]

    def close(self):
        """Finish the running keyframe (its publish is skipped if shutdown started)."""
        self.worker.stop()


main = main_for(MarigoldNode, 'marigold_node')

if __name__ == '__main__':
    main()

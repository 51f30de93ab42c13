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
* ``/diagnostics``: keyframes done and failed, last inference and job latency, last keyframe
  stamp, age of the newest received image, busy flag.

The model is Marigold through diffusers (depth_ros.inference.marigold); ``checkpoint:
tiny-random`` builds an untrained tiny pipeline for tests and dry runs (its output is noise).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Optional

from depth_ros.inference.marigold import (check_settings, DEFAULT_CHECKPOINT, default_dtype,
                                          load_marigold, MarigoldDepth)
from depth_ros.ros.params import ConfigError, declare_params, on_set_validator, Param, \
    reliability_param, StartupError

LOG = logging.getLogger('depth_ros.ros.marigold_node')

# Log rate limits go through runtime.ThrottledLog (one window per kind, period read on every
# call), never rclpy's throttle_duration_sec: rclpy raises "Logging filter parameters cannot be
# changed between calls" when the period of one call site changes, as log_throttle_s may.
THROTTLE_S = 2.0
NO_FRAME_LOG_THROTTLE_S = 30.0
# /diagnostics warns when the newest image is older than this (the camera feed stopped).
STALE_INPUT_S = 5.0


def _imports():
    try:
        import rclpy
        from rclpy.node import Node
        from sensor_msgs.msg import Image
        from std_srvs.srv import Trigger
    except ImportError as exc:
        raise ImportError('marigold_node needs rclpy, sensor_msgs and std_srvs: source a ROS 2 '
                          'install or install depth_ros[ros] ({})'.format(exc))
    return dict(rclpy=rclpy, Node=Node, Image=Image, Trigger=Trigger)


PARAMS = [
    Param('checkpoint', DEFAULT_CHECKPOINT, 'hub id or folder (prs-eth/marigold-depth-v1-1, '
          'prs-eth/marigold-depth-lcm-v1-0), or tiny-random (untrained, for tests)',
          read_only=True),
    Param('device', 'auto', 'torch device: auto (cuda if available, else cpu), cuda, cuda:N, '
          'cpu', read_only=True),
    Param('dtype', 'auto', 'auto (fp16 on cuda, fp32 on cpu), fp16 or fp32',
          choices=('auto', 'fp16', 'fp32'), read_only=True),
    Param('steps', 0, 'denoising steps; 0 = checkpoint default (v1-1: 1-4)', low=0, high=50,
          read_only=True),
    Param('ensemble_size', 1, '1, or >= 3 predictions ensembled (publishes ~/uncertainty)',
          low=1, high=20, read_only=True),
    Param('processing_resolution', -1, 'longer side the network sees; -1 = checkpoint '
          'default (768), 0 = native', low=-1, high=4096, read_only=True),
    Param('seed', 0, 'seed of the initial noise (repeatable keyframes); -1 = random',
          low=-1, read_only=True),
    Param('keyframe_period_s', 5.0, 'seconds between timed keyframes; 0 = only on ~/capture',
          low=0.0, high=3600.0, read_only=True),
    Param('log_throttle_s', THROTTLE_S, 'failed keyframes of one kind of error are logged at '
          'most once per this many seconds (changeable at runtime)', low=0.0, high=3600.0),
    reliability_param(),
]


def load_error_message(checkpoint: str, device: str, exc: BaseException) -> str:
    """Return the one-line start-up message for a Marigold load that raised ``exc``."""
    text = str(exc).strip().splitlines()
    return 'cannot load Marigold {!r} on device {!r}: {}: {}'.format(
        checkpoint, device, type(exc).__name__, text[0] if text else 'no details')


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; others are passed through."""
    if device != 'auto':
        return device
    try:
        import torch
    except ImportError:
        return 'cpu'
    return 'cuda' if torch.cuda.is_available() else 'cpu'


class KeyframeWorker(object):
    """
    One worker thread, one job at a time, newest frame wins. ROS-free, so it is testable.

    :param run_job: called in the worker thread with the newest frame.
    :param on_error: called with the exception of a failed job; by default it is logged.
    """

    def __init__(self, run_job, logger=LOG, on_error=None):
        self._run_job = run_job
        self._log = logger
        self._on_error = on_error
        self._cond = threading.Condition()
        self._frame = None          # newest frame (depth-1 slot)
        self._requested = False     # a keyframe is wanted (at most one pending)
        self._busy = False
        self._stop = False
        self.jobs_done = 0
        self.jobs_failed = 0
        self._thread = threading.Thread(target=self._loop, name='marigold-worker', daemon=True)
        self._thread.start()

    def offer(self, frame) -> None:
        """Replace the newest frame (older unprocessed frames are dropped)."""
        with self._cond:
            self._frame = frame

    def request(self) -> str:
        """Ask for a keyframe; returns 'started', 'queued' or 'no_frame'. Never blocks."""
        with self._cond:
            if self._frame is None and not self._busy:
                return 'no_frame'
            state = 'queued' if self._busy else 'started'
            self._requested = True
            self._cond.notify()
            return state

    @property
    def busy(self) -> bool:
        """Tell whether a job is running."""
        return self._busy

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not (self._requested and self._frame is not None):
                    self._cond.wait()
                if self._stop:
                    return
                frame, self._frame = self._frame, None
                self._requested = False
                self._busy = True
            try:
                self._run_job(frame)
                self.jobs_done += 1
            except Exception as exc:  # noqa: B902 - a bad frame must not kill the worker
                self.jobs_failed += 1
                if self._on_error is not None:
                    self._on_error(exc)
                else:
                    self._log.error('keyframe failed: {}'.format(exc))
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread after the running job."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join(timeout)


def _stamp_text(stamp) -> str:
    return '{}.{:09d}'.format(stamp.sec, stamp.nanosec)


def make_node(model: Optional[MarigoldDepth] = None, **node_kwargs):
    """Build the MarigoldNode (rclpy must be initialised). ``model`` overrides the parameters."""
    m = _imports()
    Node = m['Node']

    class MarigoldNode(Node):
        """Marigold keyframes: see the module docstring."""

        def __init__(self):
            super().__init__('marigold_node', **node_kwargs)
            from depth_ros.ros.runtime import Diagnostics, sensor_qos, ThrottledLog
            p = self.cfg = declare_params(self, PARAMS)
            steps = p['steps'] or None
            res = None if p['processing_resolution'] < 0 else p['processing_resolution']
            seed = None if p['seed'] < 0 else p['seed']
            if model is None:
                device = resolve_device(p['device'])
                dtype = default_dtype(device) if p['dtype'] == 'auto' else p['dtype']
                try:
                    check_settings(steps, p['ensemble_size'], res, dtype)
                except ValueError as exc:
                    raise ConfigError(str(exc))
                try:
                    self.model = load_marigold(
                        p['checkpoint'], device=device, dtype=dtype, steps=steps,
                        ensemble_size=p['ensemble_size'], processing_resolution=res, seed=seed)
                except Exception as exc:  # noqa: B902 - every load failure is a start-up one
                    # torch raises AssertionError for cuda on a CPU-only build, diffusers
                    # ValueError/KeyError on odd folders: all are the user's to fix, so one
                    # FATAL line (run_node) names the cause instead of a traceback.
                    raise StartupError(load_error_message(p['checkpoint'], device, exc)) \
                        from None
            else:
                self.model = model
            # Depth 1: a keyframe is only worth having on the newest image.
            qos = sensor_qos(p['reliability'], 1)
            self.pub_depth = self.create_publisher(m['Image'], '~/depth', qos)
            self.pub_unc = None
            if self.model.ensemble_size > 1:
                self.pub_unc = self.create_publisher(m['Image'], '~/uncertainty', qos)
            self.sub = self.create_subscription(m['Image'], 'image', self._on_image, qos)
            self.srv = self.create_service(m['Trigger'], '~/capture', self._on_capture)
            # State for /diagnostics, written by the executor (images) and the worker (jobs).
            self.last_rx = None             # monotonic time the newest image arrived
            self.last_rx_stamp = None       # its header stamp
            self.last_keyframe_stamp = None
            self.last_inference_ms = float('nan')
            self.last_job_ms = float('nan')
            self.last_error = ''
            self.log = ThrottledLog(self.get_logger())
            self.worker = KeyframeWorker(self._job, logger=self.get_logger(),
                                         on_error=self._job_error)
            self.diag = Diagnostics(self, self._diagnostics)
            self.timer = None
            if p['keyframe_period_s'] > 0:
                self.timer = self.create_timer(p['keyframe_period_s'], self._on_timer)
            # All parameters but log_throttle_s are read-only (they configure the loaded
            # model); the validator answers runtime changes with a message naming the parameter.
            self.add_on_set_parameters_callback(on_set_validator(PARAMS, self.cfg))
            self.get_logger().info(
                'marigold_node: {!r}, keyframes every {} s and on ~/capture'.format(
                    self.model, p['keyframe_period_s'] or 'never'))

        def _on_image(self, msg) -> None:
            self.last_rx, self.last_rx_stamp = time.monotonic(), msg.header.stamp
            self.worker.offer(msg)   # newest frame wins; decoding happens in the worker

        def _on_timer(self) -> None:
            state = self.worker.request()
            if state == 'no_frame':
                self.log.warn('no_frame', 'no image received yet on {}'.format(
                    self.sub.topic_name), NO_FRAME_LOG_THROTTLE_S)

        def _on_capture(self, request, response):
            state = self.worker.request()
            response.success = state != 'no_frame'
            response.message = {
                'started': 'keyframe started on the newest image',
                'queued': 'a keyframe is running; the next starts on the newest image after it',
                'no_frame': 'no image received yet on {}'.format(self.sub.topic_name),
            }[state]
            return response

        def _job(self, msg) -> None:
            from depth_ros.core.encodings import to_bgr8
            from depth_ros.ros.conversions import image_to_numpy, numpy_to_image
            t0 = time.perf_counter()
            bgr = to_bgr8(image_to_numpy(msg), msg.encoding)
            result = self.model.infer(bgr)
            # The SOURCE image's header, so alignment pairs the keyframe by exact stamp.
            self.pub_depth.publish(numpy_to_image(result.depth, '32FC1', msg.header))
            if self.pub_unc is not None and result.uncertainty is not None:
                self.pub_unc.publish(numpy_to_image(result.uncertainty, '32FC1', msg.header))
            self.last_job_ms = (time.perf_counter() - t0) * 1e3
            self.last_inference_ms = float(getattr(result, 'latency_ms', float('nan')))
            self.last_keyframe_stamp = _stamp_text(msg.header.stamp)
            self.last_error = ''
            self.get_logger().info('keyframe {}: {:.0f} ms'.format(
                self.last_keyframe_stamp, self.last_job_ms))

        def _job_error(self, exc) -> None:
            self.last_error = '{}: {}'.format(type(exc).__name__, exc)
            # One window per exception type: a burst of one error does not hide another.
            self.log.error('job_' + type(exc).__name__, 'keyframe failed, frame dropped: '
                           '{}'.format(self.last_error), self.cfg['log_throttle_s'])

        def _diagnostics(self):
            from depth_ros.ros.runtime import diagnostic_status
            w = self.worker
            now = time.monotonic()
            rx_age = float('nan') if self.last_rx is None else now - self.last_rx
            stamp_age = float('nan')
            if self.last_rx_stamp is not None:
                stamp_age = (self.get_clock().now().nanoseconds
                             - self.last_rx_stamp.sec * 10**9
                             - self.last_rx_stamp.nanosec) * 1e-9
            level, message = 'ok', 'busy' if w.busy else 'idle'
            if self.last_rx is None:
                level, message = 'warn', 'no image received yet'
            elif rx_age > STALE_INPUT_S:
                level, message = 'warn', 'no image for {:.0f} s'.format(rx_age)
            elif self.last_error:
                level, message = 'warn', 'last keyframe failed: {}'.format(self.last_error)
            values = {
                'model': getattr(self.model, 'name', '') or repr(self.model),
                'busy': w.busy,
                'keyframes_done': w.jobs_done, 'keyframes_failed': w.jobs_failed,
                'last_inference_ms': self.last_inference_ms,
                'last_job_ms': self.last_job_ms,
                'last_keyframe_stamp': self.last_keyframe_stamp or 'none',
                # Receipt age works with bag/sim time; stamp age shows camera-to-node delay.
                'newest_image_received_age_s': rx_age,
                'newest_image_stamp_age_s': stamp_age,
                'keyframe_period_s': self.cfg['keyframe_period_s'],
            }
            return [diagnostic_status('marigold_node: keyframes', self.get_fully_qualified_name(),
                                      level, message, values)]

        def destroy_node(self):
            worker = getattr(self, 'worker', None)   # absent when start-up failed
            if worker is not None:
                worker.stop()
            return super().destroy_node()

    return MarigoldNode()


def main(args=None) -> None:
    """Console script ``marigold_node``: spin until shut down; bad set-up exits with one line."""
    import sys
    from depth_ros.ros.runtime import run_node
    # One executor thread is enough: the work is in the keyframe worker, not in callbacks.
    sys.exit(run_node(make_node, 'marigold_node', args, threads=1))


if __name__ == '__main__':
    main()

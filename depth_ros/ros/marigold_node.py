"""marigold_node: Marigold relative-depth keyframes on a timer and on the ~/capture service.

Subscribes ``image`` (remap it to the camera's ``left/image_rect_color``) and keeps only the
newest frame. A keyframe job starts every ``keyframe_period_s`` seconds and on each
std_srvs/Trigger call of ``~/capture``. Jobs run in one worker thread, never on the executor;
at most one runs at a time and a request made during a job runs once it ends, on the newest
frame then.

Publishes, with the SOURCE image's header (stamp and frame_id), so that a second
alignment_node with ``relative_kind: depth`` pairs the keyframe with stereo by exact stamp:

* ``~/depth``: 32FC1 affine-invariant depth, 0 near .. 1 far (not metres);
* ``~/uncertainty``: 32FC1 ensemble spread, only when ``ensemble_size`` >= 3.

The model is Marigold through diffusers (depth_ros.inference.marigold); ``checkpoint:
tiny-random`` builds an untrained tiny pipeline for tests and dry runs (its output is noise).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Optional

from depth_ros.inference.marigold import (build_tiny_pipeline, check_settings, DEFAULT_CHECKPOINT,
                                          default_dtype, MarigoldDepth)

LOG = logging.getLogger('depth_ros.ros.marigold_node')

TINY = 'tiny-random'
RELIABILITIES = ('best_effort', 'reliable')


def _imports():
    try:
        import rclpy
        from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                        SetParametersResult)
        from rclpy.node import Node
        from rclpy.qos import (HistoryPolicy, QoSProfile, ReliabilityPolicy)
        from sensor_msgs.msg import Image
        from std_srvs.srv import Trigger
    except ImportError as exc:
        raise ImportError('marigold_node needs rclpy, sensor_msgs and std_srvs: source a ROS 2 '
                          'install or install depth_ros[ros] ({})'.format(exc))
    return dict(rclpy=rclpy, Node=Node, Image=Image, Trigger=Trigger, QoSProfile=QoSProfile,
                HistoryPolicy=HistoryPolicy, ReliabilityPolicy=ReliabilityPolicy,
                ParameterDescriptor=ParameterDescriptor, IntegerRange=IntegerRange,
                FloatingPointRange=FloatingPointRange, SetParametersResult=SetParametersResult)


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; others are passed through."""
    if device != 'auto':
        return device
    try:
        import torch
    except ImportError:
        return 'cpu'
    return 'cuda' if torch.cuda.is_available() else 'cpu'


def load_model(checkpoint: str, device: str, dtype: str, steps: Optional[int],
               ensemble_size: int, processing_resolution: Optional[int],
               seed: Optional[int]) -> MarigoldDepth:
    """The node's model from its parameters (the tiny random pipeline for ``tiny-random``)."""
    kwargs = dict(steps=steps, ensemble_size=ensemble_size,
                  processing_resolution=processing_resolution, seed=seed)
    if checkpoint == TINY:
        LOG.warning('checkpoint %r: an UNTRAINED tiny Marigold pipeline; its keyframes are '
                    'noise (for tests and dry runs only)', TINY)
        pipe = build_tiny_pipeline().to(device)
        return MarigoldDepth(pipe, device=device, dtype='fp32', name=TINY, **kwargs)
    return MarigoldDepth.from_pretrained(checkpoint, device=device, dtype=dtype, **kwargs)


class KeyframeWorker(object):
    """One worker thread, one job at a time, newest frame wins. ROS-free, so it is testable.

    :param run_job: called in the worker thread with the newest frame; its errors are logged.
    """

    def __init__(self, run_job, logger=LOG):
        self._run_job = run_job
        self._log = logger
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
        """True while a job runs."""
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


def make_node(model: Optional[MarigoldDepth] = None, **node_kwargs):
    """Build the MarigoldNode (rclpy must be initialised). ``model`` overrides the parameters."""
    m = _imports()
    Node = m['Node']

    class MarigoldNode(Node):
        """Marigold keyframes: see the module docstring."""

        def __init__(self):
            super().__init__('marigold_node', **node_kwargs)
            pd = m['ParameterDescriptor']
            irange = m['IntegerRange']
            frange = m['FloatingPointRange']
            self.declare_parameter('checkpoint', DEFAULT_CHECKPOINT, pd(
                description='hub id or folder (prs-eth/marigold-depth-v1-1, '
                            'prs-eth/marigold-depth-lcm-v1-0) or tiny-random'))
            self.declare_parameter('device', 'auto', pd(
                description="torch device: auto (cuda if available), cuda, cuda:N, cpu"))
            self.declare_parameter('dtype', 'auto', pd(
                description='auto (fp16 on cuda, fp32 on cpu), fp16 or fp32'))
            self.declare_parameter('steps', 0, pd(
                description='denoising steps; 0 = checkpoint default (v1-1: 1-4)',
                integer_range=[irange(from_value=0, to_value=50, step=1)]))
            self.declare_parameter('ensemble_size', 1, pd(
                description='1, or >= 3 predictions ensembled (publishes ~/uncertainty)',
                integer_range=[irange(from_value=1, to_value=20, step=1)]))
            self.declare_parameter('processing_resolution', -1, pd(
                description='longer side seen by the network; -1 = checkpoint default '
                            '(768), 0 = native'))
            self.declare_parameter('seed', 0, pd(description='noise seed; -1 = random'))
            self.declare_parameter('keyframe_period_s', 5.0, pd(
                description='seconds between timed keyframes; 0 = only on ~/capture',
                floating_point_range=[frange(from_value=0.0, to_value=3600.0, step=0.0)]))
            self.declare_parameter('reliability', 'best_effort', pd(
                description='QoS reliability of the subscription and publishers: best_effort '
                            '| reliable', read_only=True))
            p = {n: self.get_parameter(n).value for n in (
                'checkpoint', 'device', 'dtype', 'steps', 'ensemble_size',
                'processing_resolution', 'seed', 'keyframe_period_s', 'reliability')}
            if p['reliability'] not in RELIABILITIES:
                raise ValueError('parameter `reliability` must be one of {}, got {!r}'.format(
                    RELIABILITIES, p['reliability']))
            if p['dtype'] not in ('auto', 'fp16', 'fp32'):
                raise ValueError("parameter `dtype` must be auto, fp16 or fp32, got {!r}".format(
                    p['dtype']))
            steps = p['steps'] or None
            res = None if p['processing_resolution'] < 0 else p['processing_resolution']
            seed = None if p['seed'] < 0 else p['seed']
            if model is None:
                device = resolve_device(p['device'])
                dtype = default_dtype(device) if p['dtype'] == 'auto' else p['dtype']
                check_settings(steps, p['ensemble_size'], res, dtype)
                self.model = load_model(p['checkpoint'], device, dtype, steps,
                                        p['ensemble_size'], res, seed)
            else:
                self.model = model
            rel = m['ReliabilityPolicy']
            qos = m['QoSProfile'](
                depth=1, history=m['HistoryPolicy'].KEEP_LAST,
                reliability=rel.RELIABLE if p['reliability'] == 'reliable' else rel.BEST_EFFORT)
            self._Image = m['Image']
            self.pub_depth = self.create_publisher(m['Image'], '~/depth', qos)
            self.pub_unc = None
            if self.model.ensemble_size > 1:
                self.pub_unc = self.create_publisher(m['Image'], '~/uncertainty', qos)
            self.sub = self.create_subscription(m['Image'], 'image', self._on_image, qos)
            self.srv = self.create_service(m['Trigger'], '~/capture', self._on_capture)
            self.worker = KeyframeWorker(self._job, logger=self.get_logger())
            self.timer = None
            if p['keyframe_period_s'] > 0:
                self.timer = self.create_timer(p['keyframe_period_s'], self._on_timer)
            self.add_on_set_parameters_callback(self._on_set)
            self.get_logger().info(
                'marigold_node: {!r}, keyframes every {} s and on ~/capture'.format(
                    self.model, p['keyframe_period_s'] or 'never'))

        def _on_set(self, params):
            # Model settings are fixed at start-up: changing them means reloading the model.
            for prm in params:
                return m['SetParametersResult'](
                    successful=False,
                    reason='parameter `{}` is fixed at start-up; restart the node'.format(
                        prm.name))
            return m['SetParametersResult'](successful=True)

        def _on_image(self, msg) -> None:
            self.worker.offer(msg)   # newest frame wins; decoding happens in the worker

        def _on_timer(self) -> None:
            state = self.worker.request()
            if state == 'no_frame':
                self.get_logger().warn('no image received yet on {}'.format(
                    self.sub.topic_name), throttle_duration_sec=30.0)

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
            from depth_ros.core.encodings import image_to_array, to_bgr8
            t0 = time.perf_counter()
            bgr = to_bgr8(image_to_array(msg), msg.encoding)
            result = self.model.infer(bgr)
            self.pub_depth.publish(self._image_msg(result.depth, msg.header))
            if self.pub_unc is not None and result.uncertainty is not None:
                self.pub_unc.publish(self._image_msg(result.uncertainty, msg.header))
            self.get_logger().info('keyframe {}.{:09d}: {:.0f} ms'.format(
                msg.header.stamp.sec, msg.header.stamp.nanosec,
                (time.perf_counter() - t0) * 1e3))

        def _image_msg(self, array, header):
            from depth_ros.core.encodings import array_to_image_fields
            fields = array_to_image_fields(array, '32FC1')
            out = self._Image()
            out.header = header          # the SOURCE image's stamp and frame_id
            out.height = fields['height']
            out.width = fields['width']
            out.encoding = fields['encoding']
            out.is_bigendian = fields['is_bigendian']
            out.step = fields['step']
            out.data = fields['data'].tobytes()
            return out

        def destroy_node(self):
            worker = getattr(self, 'worker', None)   # absent when start-up failed
            if worker is not None:
                worker.stop()
            return super().destroy_node()

    return MarigoldNode()


def main(args=None) -> int:
    """Console script ``marigold_node``: spin until shut down."""
    m = _imports()
    rclpy = m['rclpy']
    rclpy.init(args=args)
    node = None
    try:
        node = make_node()
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    except (ValueError, FileNotFoundError, ImportError, RuntimeError) as exc:
        # Bad configuration or a model that will not load: one clear line, not a traceback.
        logging.getLogger('depth_ros').error('marigold_node: %s', exc)
        return 1
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == '__main__':
    import sys
    sys.exit(main())

"""
depth_node: camera image -> Depth Anything V2 relative disparity (32FC1).

Subscribes ``image`` (remap it to the camera's rectified colour image), publishes
``~/disparity`` (32FC1 relative inverse depth, the image's header), ``~/colorized`` (bgr8,
only computed while someone subscribes) and ``~/inference_started`` (std_msgs/Header: the
header of each image the worker starts on, so that alignment_node keeps that frame's stereo
set until its disparity arrives). Inference runs in a worker thread on the newest frame;
frames that arrive meanwhile replace the waiting one (dropped, never queued).

In the composed process (``composed.py``, ``local_input=True``) there is no ``image``
subscription: zed_node hands each frame over by reference (:meth:`DepthNode.take_frame`), and
the worker hands ``(frame, header, disparity)`` to the nodes registered with
:meth:`DepthNode.hand_over_to` (alignment_node), and tells them which frame it starts on, so
that alignment_node prepares its stereo side while the network runs. Every output topic is
built only while someone subscribes to it.
"""
from __future__ import annotations

import collections
import time

from depth_ros.core.encodings import to_bgr8
from depth_ros.core.visualize import colorize
from depth_ros.nodes_core.config import DEPTH_PARAMS, open_model, validate_depth
from depth_ros.nodes_core.workers import FrameHealth, RateMeter, StageTimes, StampGuard, Worker
from depth_ros.ros import conversions as conv
from depth_ros.ros.runtime import DepthRosNode, LocalFrame, main_for, \
    sensor_qos
from depth_ros.util import describe_error, window_mean
import numpy as np
from sensor_msgs.msg import Image
from std_msgs.msg import Header


class DepthNode(DepthRosNode):
    """The inference node (module docstring); ``local_input``: frames come in-process."""

    def __init__(self, local_input: bool = False, **kwargs):
        super().__init__('depth_node', DEPTH_PARAMS, validate=validate_depth, apply=self._apply,
                         **kwargs)
        if self.cfg['engine_cache_dir'] and self.cfg['backend'] not in ('tensorrt', 'auto'):
            self.get_logger().warning(
                'parameter `engine_cache_dir` ({!r}) is used only by the tensorrt backend, '
                'not {!r}'.format(self.cfg['engine_cache_dir'], self.cfg['backend']))
        opened = open_model(self.cfg)
        self.model = opened.model
        self.backend = opened.backend
        for warning in opened.warnings:
            self.get_logger().warning(warning)
        # Once: which backend, file and input size run, and why.
        self.get_logger().info(opened.summary())
        qos = sensor_qos(self.cfg['reliability'], self.cfg['qos_depth'])
        self.pub_disp = self.create_publisher(Image, '~/disparity', qos)
        self.pub_color = self.create_publisher(Image, '~/colorized', qos)
        self.pub_started = self.create_publisher(Header, '~/inference_started', qos)
        self.in_rate, self.out_rate = RateMeter(), RateMeter()
        self.health = FrameHealth()
        self.stamp_resets = 0
        self.guard = StampGuard('image', int(self.cfg['stamp_reset_s'] * 1e9))
        self.age_ms = float('nan')
        self.input_age_ms = collections.deque(maxlen=50)   # stamp -> image callback
        self.age_ms_window = collections.deque(maxlen=50)  # stamp -> disparity published
        self.disp_buffer = conv.MessageBuffer()   # reused by the one worker thread
        self.stages = StageTimes()
        self.worker = Worker(self._process, 'depth_inference', self._worker_error,
                             on_start=self._announce)
        self.consumers = []      # in-process: callables (LocalFrame, disparity), worker thread
        self.start_consumers = []   # in-process: callables (LocalFrame), inference starts
        self.built = collections.Counter()   # messages built per output (lazy: subscribed)
        self.sub = None if local_input else \
            self.create_subscription(Image, 'image', self._on_image, qos)

    def hand_over_to(self, consumer, started=None) -> None:
        """
        Hand each result to ``consumer(local_frame, disparity)`` by reference (composed.py).

        ``started(local_frame)``, if given, is called in the worker thread when the inference
        on a frame starts (only the frames the network takes: one that the newest-frame slot
        replaced costs nothing): alignment_node prepares that frame's stereo side meanwhile.
        It must only hand the frame over.
        """
        self.consumers.append(consumer)
        if started is not None:
            self.start_consumers.append(started)

    def take_frame(self, frame, header) -> None:
        """
        Take zed_node's frame by reference (its grab thread; composed.py): newest-frame slot.

        A frame whose stereo is still to be retrieved (``frame.pending``, a ZED's image first)
        that the worker starts on at once is marked so: zed_node retrieves its stereo once
        the network call has begun (``StereoPending.wait_for_start``).
        """
        if self._accept(LocalFrame(frame, header), frame.stamp_ns) and \
                frame.pending is not None:
            frame.pending.expect_start()

    def _apply(self, changed):
        if 'standin_latency_ms' in changed and self.backend == 'standin':
            self.model.latency_ms = changed['standin_latency_ms']
        if 'stamp_reset_s' in changed:
            self.guard.reset_ns = int(changed['stamp_reset_s'] * 1e9)

    def _on_image(self, msg):
        self._accept(msg, conv.stamp_to_ns(msg.header.stamp))

    def _accept(self, msg, stamp) -> bool:
        """Put the frame in the worker's slot; return whether its inference starts at once."""
        # Only bookkeeping here: the conversion and inference run in the worker.
        self.in_rate.tick()
        last = self.guard.last
        verdict, text = self.guard.check(stamp)
        if verdict == 'restart':
            # A jump back is a restarted source (rosbag play --loop, an SVO reopened, sim time
            # reset), not a late frame: start over, or every new frame would be dropped.
            self.stamp_resets += 1
            self.get_logger().warning(text + '; starting over')
        elif verdict == 'old':
            self._drop('stamp', 'stamp {} is {} the previous {} (out-of-order or '
                       'duplicated)'.format(stamp, 'equal to' if stamp == last
                                            else 'older than', last))
            return False
        now = time.time_ns()
        self.input_age_ms.append((now - stamp) * 1e-6)
        return self.worker.put((msg, now))

    def _drop(self, kind, reason):
        self.health.bad.tick()
        self.health.last_reason = reason
        self.error(kind, 'dropped image: ' + reason)

    def _announce(self, item):
        # The stamp this inference will answer: alignment_node keeps its stereo set.
        if self._wanted(self.pub_started, 'inference_started'):
            self.publish(self.pub_started, conv.copy_header(item[0].header))

    def _wanted(self, publisher, kind) -> bool:
        if publisher.get_subscription_count() > 0:
            self.built[kind] += 1
            return True
        return False

    def _process(self, item):
        msg, t_put = item
        stages = self.stages
        stages.add('wait', (time.time_ns() - t_put) * 1e-6)
        stages.start()
        local = isinstance(msg, LocalFrame)
        try:
            try:
                if local:   # by reference: zed_node's bgr8 array
                    bgr = to_bgr8(msg.frame.left, 'bgr8')
                else:
                    bgr = to_bgr8(conv.image_to_numpy(msg), msg.encoding)
            except ValueError as exc:
                self._drop('frame', str(exc))
                return
            stages.mark('convert')
            if local:
                for started in self.start_consumers:
                    started(msg)
        finally:
            # zed_node's grab thread retrieves the frame's stereo once told (take_frame): as
            # the network call begins, or when the frame is dropped.
            if local and msg.frame.pending is not None:
                msg.frame.pending.started()
        disparity = self.model.predict(bgr)          # [H, W] float32 relative
        stages.mark('inference')
        if not np.all(np.isfinite(disparity)):
            self._drop('output', 'model output has {} non-finite values'.format(
                int(np.size(disparity) - np.count_nonzero(np.isfinite(disparity)))))
            return
        stages.mark('check')
        if local:
            for consumer in self.consumers:
                consumer(msg, disparity)
            stages.mark('hand_over')
        if self._wanted(self.pub_disp, 'disparity') and not self.publish(
                self.pub_disp, conv.numpy_to_image(disparity, '32FC1', msg.header,
                                                   buffer=self.disp_buffer)):
            return
        stages.mark('publish')
        if self._wanted(self.pub_color, 'colorized'):
            self.publish(self.pub_color, conv.numpy_to_image(colorize(disparity), 'bgr8',
                                                             msg.header))
            stages.mark('colorized')
        self.out_rate.tick()
        self.health.good.tick()
        self.age_ms = (time.time_ns() - conv.stamp_to_ns(msg.header.stamp)) * 1e-6
        self.age_ms_window.append(self.age_ms)

    def _worker_error(self, exc):
        if self.shutting_down:
            return
        self._drop('exception', 'inference failed on a frame: {}'.format(describe_error(exc)))

    def watched_threads(self):
        """Watch the inference thread: it runs for the node's life (it ends only at shutdown)."""
        return [('inference', lambda: self.worker.alive)]

    def diagnostics(self):
        """Return this node's status for /diagnostics."""
        level, message = self.health.status(self.in_rate, 3.0)
        values = collections.OrderedDict([
            ('backend', self.backend), ('model', self.model.name),
            ('input_rate_hz', self.in_rate.rate), ('output_rate_hz', self.out_rate.rate),
            ('inference_ms_mean', self.model.latency.mean_ms),
            # The backend call alone (ONNX Runtime, TensorRT: the GIL is released there).
            ('backend_ms_mean', self.model.infer_latency.mean_ms),
            ('output_age_ms', self.age_ms),
            # Means over the last frames: stamp -> image received -> disparity published.
            ('input_age_ms_mean', window_mean(self.input_age_ms)),
            ('output_age_ms_mean', window_mean(self.age_ms_window)),
            ('frames_in', self.worker.received), ('frames_dropped_busy', self.worker.dropped),
            ('frames_bad', sum(self.bad.values())), ('stamp_resets', self.stamp_resets),
            ('last_drop_reason', self.health.last_reason),
            ('input', 'in-process' if self.sub is None else 'topic'),
            ('handed_over_to', len(self.consumers)),
        ])
        for kind in ('disparity', 'colorized', 'inference_started'):
            values['built_' + kind] = self.built[kind]
        for kind in ('stamp', 'frame', 'output', 'exception'):
            values['frames_bad_' + kind] = self.bad[kind]
        for stage, ms in self.stages.means().items():
            values['stage_{}_ms'.format(stage)] = ms
        return [self.make_status('inference', level, message, values)]

    def close(self):
        """Finish the frame in progress, then release the model."""
        # A CPU inference can take seconds: wait for it (within launch's 5 s before SIGTERM),
        # or the process would exit with ONNX Runtime still running in the worker thread.
        self.worker.stop(timeout=4.5)
        self.model.close()


main = main_for(DepthNode, 'depth_node')

if __name__ == '__main__':
    main()

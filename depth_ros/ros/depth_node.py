"""
depth_node: camera image -> Depth Anything V2 relative disparity (32FC1).

Subscribes ``image`` (remap it to the camera's rectified colour image), publishes
``~/disparity`` (32FC1 relative inverse depth, the image's header) and ``~/colorized`` (bgr8,
only computed while someone subscribes). Inference runs in a worker thread on the newest frame;
frames that arrive meanwhile replace the waiting one (dropped, never queued).
"""
from __future__ import annotations

import collections
import time

from depth_ros.core.encodings import to_bgr8
from depth_ros.ros.params import ConfigError, declare_params, on_set_validator, Param, \
    qos_depth_param, reliability_param, StartupError
from depth_ros.ros.runtime import diagnostic_status, Diagnostics, LatestWorker, main_for, \
    RateMeter, sensor_qos, StageTimes, ThrottledLog
import numpy as np

BACKENDS = ('onnxruntime', 'tensorrt', 'torch', 'standin')
THROTTLE_S = 2.0

PARAMS = (
    Param('backend', 'onnxruntime', 'inference backend; standin is a fixed-latency stand-in for '
          'tests and benchmarks, not a model', choices=BACKENDS, read_only=True),
    Param('model_path', '', '.onnx file (onnxruntime), serialized engine (tensorrt), checkpoint '
          'folder, .pth or hub id (torch); unused by standin', read_only=True),
    Param('input_width', 0, 'model input width, multiple of 14 (0: the model file\'s or 518)',
          low=0, high=4096, read_only=True),
    Param('input_height', 0, 'model input height, multiple of 14 (0: the model file\'s or 294)',
          low=0, high=4096, read_only=True),
    Param('device', 'cpu', 'torch backend device (cpu, cuda, cuda:0)', read_only=True),
    Param('engine_cache_dir', '', 'tensorrt backend: the engine cache directory; engines load '
          'only from inside it (empty: $DEPTH_ROS_ENGINE_CACHE or ~/.cache/depth_ros/engines)',
          read_only=True),
    Param('standin_latency_ms', 0.0, 'standin backend: fixed inference time in ms',
          low=0.0, high=10000.0),
    Param('standin_mode', 'intensity', 'standin backend: output from image intensity or a '
          'vertical gradient', choices=('intensity', 'gradient'), read_only=True),
    Param('log_throttle_s', THROTTLE_S, 'bad-frame errors of one kind are logged at most once '
          'per this many seconds', low=0.0, high=3600.0),
    Param('stamp_reset_s', 1.0, 'a stamp older than the previous by more than this is a source '
          'restart (bag loop, sim-time reset): accepted, with a warning; smaller steps back are '
          'dropped as out-of-order', low=0.0, high=1e6),
    reliability_param(),
    qos_depth_param(1),
)


def _validate(values) -> str:
    if values['backend'] != 'standin' and not values['model_path']:
        return ('parameter `model_path` is empty; backend {!r} needs a model file or id'
                .format(values['backend']))
    if (values['input_width'] == 0) != (values['input_height'] == 0):
        return 'parameters `input_width` and `input_height` must both be 0 or both be set, ' \
               'got {} and {}'.format(values['input_width'], values['input_height'])
    return ''


def _mean(values) -> float:
    return float(np.mean(values)) if values else float('nan')


def load_model(values):
    """Build the configured backend; StartupError with a one-line reason when it fails."""
    backend = values['backend']
    if backend == 'standin':
        from depth_ros.inference.standin import StandInDepthModel
        return StandInDepthModel(latency_ms=values['standin_latency_ms'],
                                 mode=values['standin_mode'])
    size = None
    if values['input_width']:
        size = (values['input_width'], values['input_height'])
    options = {}
    if backend == 'torch':
        options['device'] = values['device']
    if backend == 'tensorrt' and values['engine_cache_dir']:
        options['cache_dir'] = values['engine_cache_dir']
    try:
        from depth_ros.inference import load_depth_model
        return load_depth_model(values['model_path'], backend=backend, input_size=size,
                                **options)
    except Exception as exc:  # every failure is a start-up failure with a readable reason
        text = str(exc).strip().splitlines()
        raise StartupError('cannot load {} model {!r}: {}: {}'.format(
            backend, values['model_path'], type(exc).__name__,
            text[0] if text else 'no details')) from None


def make_node(**kwargs):
    """Create the depth_node (rclpy is imported here, not at module import)."""
    from rclpy.node import Node
    from sensor_msgs.msg import Image

    from depth_ros.core.visualize import colorize
    from depth_ros.ros import conversions as conv

    class _DepthNode(Node):

        def __init__(self):
            super().__init__('depth_node', **kwargs)
            self.cfg = declare_params(self, PARAMS, validate=lambda v: _validate(v) or None)
            self.add_on_set_parameters_callback(on_set_validator(
                PARAMS, self.cfg, validate=lambda v: _validate(v) or None, apply=self._apply))
            if self.cfg['engine_cache_dir'] and self.cfg['backend'] != 'tensorrt':
                self.get_logger().warn('parameter `engine_cache_dir` ({!r}) is used only by the '
                                       'tensorrt backend, not {!r}'.format(
                                           self.cfg['engine_cache_dir'], self.cfg['backend']))
            self.model = load_model(self.cfg)
            self.get_logger().info('backend {}: {}'.format(self.cfg['backend'],
                                                           self.model.name or self.model))
            qos = sensor_qos(self.cfg['reliability'], self.cfg['qos_depth'])
            self.pub_disp = self.create_publisher(Image, '~/disparity', qos)
            self.pub_color = self.create_publisher(Image, '~/colorized', qos)
            self.in_rate, self.out_rate = RateMeter(), RateMeter()
            self.bad_frames = 0
            self.stamp_resets = 0
            self.last_stamp = None
            self.log = ThrottledLog(self.get_logger())
            self.age_ms = float('nan')
            self.input_age_ms = collections.deque(maxlen=50)   # stamp -> image callback
            self.age_ms_window = collections.deque(maxlen=50)  # stamp -> disparity published
            self.disp_buffer = conv.MessageBuffer()   # reused by the one worker thread
            self.stages = StageTimes()
            self.worker = LatestWorker(self._process, 'depth_inference', self._worker_error)
            self.sub = self.create_subscription(Image, 'image', self._on_image, qos)
            self.diag = Diagnostics(self, self._diagnostics)

        def _apply(self, changed):
            if 'standin_latency_ms' in changed and self.cfg['backend'] == 'standin':
                self.model.latency_ms = changed['standin_latency_ms']

        def _on_image(self, msg):
            # Only bookkeeping here: the conversion and inference run in the worker.
            self.in_rate.tick()
            stamp = conv.stamp_to_ns(msg.header.stamp)
            last = self.last_stamp
            if last is not None and last - stamp > self.cfg['stamp_reset_s'] * 1e9:
                # A jump back by more than stamp_reset_s is a restarted source (rosbag play
                # --loop, an SVO reopened, sim time reset), not a late frame: start over, or
                # every frame of the new timeline would be dropped for good.
                self.stamp_resets += 1
                self.get_logger().warn(
                    'image stamp jumped back {:.3f} s (from {} to {}): source restarted; '
                    'starting over'.format((last - stamp) * 1e-9, last, stamp))
            elif last is not None and stamp <= last:
                self._drop('stamp', 'stamp {} is {} the previous {} (out-of-order or '
                           'duplicated)'.format(stamp, 'equal to' if stamp == last
                                                else 'older than', last))
                return
            self.last_stamp = stamp
            now = time.time_ns()
            self.input_age_ms.append((now - stamp) * 1e-6)
            self.worker.put((msg, now))

        def _drop(self, kind, reason):
            self.bad_frames += 1
            self.log.error(kind, 'dropped image: ' + reason, self.cfg['log_throttle_s'])

        def _process(self, item):
            msg, t_put = item
            stages = self.stages
            stages.add('wait', (time.time_ns() - t_put) * 1e-6)
            stages.start()
            try:
                bgr = to_bgr8(conv.image_to_numpy(msg), msg.encoding)
            except ValueError as exc:
                self._drop('frame', str(exc))
                return
            stages.mark('convert')
            disparity = self.model.predict(bgr)          # [H, W] float32 relative
            stages.mark('inference')
            if not np.all(np.isfinite(disparity)):
                self._drop('output', 'model output has {} non-finite values'.format(
                    int(np.size(disparity) - np.count_nonzero(np.isfinite(disparity)))))
                return
            stages.mark('check')
            self.pub_disp.publish(conv.numpy_to_image(disparity, '32FC1', msg.header,
                                                      buffer=self.disp_buffer))
            stages.mark('publish')
            if self.pub_color.get_subscription_count() > 0:
                self.pub_color.publish(conv.numpy_to_image(colorize(disparity), 'bgr8',
                                                           msg.header))
                stages.mark('colorized')
            self.out_rate.tick()
            self.age_ms = (time.time_ns() - conv.stamp_to_ns(msg.header.stamp)) * 1e-6
            self.age_ms_window.append(self.age_ms)

        def _worker_error(self, exc):
            self.bad_frames += 1
            self.log.error('exception', 'inference failed on a frame: {}: {}'.format(
                type(exc).__name__, exc), self.cfg['log_throttle_s'])

        def _diagnostics(self):
            level, message = 'ok', 'running'
            if self.in_rate.rate == 0.0:
                level, message = 'warn', 'no input images'
            values = {
                'backend': self.cfg['backend'], 'model': self.model.name,
                'input_rate_hz': self.in_rate.rate, 'output_rate_hz': self.out_rate.rate,
                'inference_ms_mean': self.model.latency.mean_ms,
                'output_age_ms': self.age_ms,
                # Means over the last frames: stamp -> image received -> disparity published.
                'input_age_ms_mean': _mean(self.input_age_ms),
                'output_age_ms_mean': _mean(self.age_ms_window),
                'frames_in': self.worker.received, 'frames_dropped_busy': self.worker.dropped,
                'frames_bad': self.bad_frames, 'stamp_resets': self.stamp_resets,
            }
            for stage, ms in self.stages.means().items():
                values['stage_{}_ms'.format(stage)] = ms
            return [diagnostic_status('depth_node: inference', self.get_fully_qualified_name(),
                                      level, message, values)]

        def close(self):
            self.worker.stop()
            self.model.close()

    return _DepthNode()


main = main_for(make_node, 'depth_node')

__all__ = ['ConfigError', 'load_model', 'main', 'make_node', 'PARAMS']

if __name__ == '__main__':
    main()

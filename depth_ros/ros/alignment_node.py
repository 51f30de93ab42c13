"""
alignment_node: relative depth + ZED stereo depth -> metric depth, camera_info, cloud.

Inputs (relative names; remap them): ``disparity`` (32FC1 relative, from depth_node, or
Marigold keyframes with ``relative_kind: depth``), ``depth_registered`` (32FC1 metres, or 16UC1
millimetres), ``confidence`` (32FC1 1..100, optional), ``camera_info``, ``image`` (colours,
optional), and ``inference_started`` (std_msgs/Header, optional: the stamps depth_node is
computing). A message is checked when it arrives, from its fields (core.messages.check_message
and check_parts: encoding, layout, sizes against the other messages of its stamp and the newest
camera_info): a wrong one is refused at once, with the rest of its set, and counted as a bad
frame. The others are paired by exact stamp (depth_ros.core.pairing): a stereo set waits for its
disparity up to ``pairing_window_s`` under the ``pairing_max_mb`` cap, and the set being
inferred is never dropped for memory. Sets skipped by the newest-frame policy upstream are
counted (``dropped_skipped``), not logged as errors.

Outputs (the inputs' header), each built only while someone subscribes to it: ``~/depth``
(32FC1 metres, NaN invalid, +inf too far), ``~/camera_info``, ``~/points`` (PointCloud2 x, y,
z, rgb float32, organized, is_dense false), ``~/colored`` (bgr8), ``~/uncertainty``; and
/diagnostics (fit, rates, latency, drop counts, and an error when the output stopped, with the
reason). The alignment runs on every set whatever is subscribed (its temporal state and
/diagnostics follow every frame).

In the composed process (``composed.py``, ``local_input=True``) the node has no input
subscriptions: depth_node's worker hands each set over by reference (:meth:`take_set`: zed_node's
frame with its image, stereo depth, confidence and camera, and the disparity computed on it), so
nothing is paired by stamp and no message is decoded. It also hands over each frame when its
inference starts (:meth:`take_started`): the worker prepares the frame's stereo side
(``MetricAligner.prepare``) while the network runs, and finishes the set from it when the
disparity comes (``MetricAligner.finish``, the same result as ``update``).

Separately, the same: once the stereo set of the stamp depth_node announces on
``inference_started`` is all here, the worker prepares it while the network runs, and finishes
the set from it when the disparity completes it. A set without a prepared side (not
announced, not prepared yet, options changed since, a restart) is aligned whole (``update``).
"""
from __future__ import annotations

import collections
import threading
import time

from depth_ros.core.messages import baseline_from_info, check_confidence, check_message, \
    check_parts, check_sizes, decode_set, DecodedSet
from depth_ros.core.pairing import message_bytes, missing_text, PairingBuffer, Reason
from depth_ros.core.pointcloud import cloud_colours, CLOUD_DTYPE, depth_to_cloud, XYZ_DTYPE
from depth_ros.core.visualize import colorize
from depth_ros.nodes_core.config import ALIGNER_KEYS, aligner_options, ALIGNMENT_PARAMS, \
    make_aligner, validate_alignment
from depth_ros.nodes_core.middleware import max_message_bytes, too_large_text
from depth_ros.nodes_core.params import ConfigError
from depth_ros.nodes_core.workers import HeapTrim, RateMeter, StageTimes, StampGuard, Worker
from depth_ros.ros import conversions as conv
from depth_ros.ros.runtime import DepthRosNode, LocalFrame, main_for, \
    sensor_qos
from depth_ros.util import describe_error
import numpy as np
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header

TOPICS = {'disparity': ('disparity', Image), 'depth': ('depth_registered', Image),
          'confidence': ('confidence', Image), 'camera_info': ('camera_info', CameraInfo),
          'image': ('image', Image)}
# In-process, how long a frame's stereo may follow its image (a ZED frame comes image first,
# sources/base.py StereoPending): the SDK's retrieves and copies take milliseconds; longer is a
# stuck grab thread, and the set is dropped with that reason rather than waited on.
STEREO_WAIT_S = 1.0


class Prepared(object):
    """
    A frame's stereo side, prepared while the network runs on it.

    ``local``: depth_node's LocalFrame (composed: its set is matched by identity), else None;
    ``stamp``; ``parts``: separately, the stereo messages it was decoded from (its set is
    matched by stamp and by these messages), else None; ``stereo``: the checked arrays (a
    DecodedSet without the relative map); ``stereo_set``: ``MetricAligner.prepare``'s (stale
    once the aligner's options change or it is reset, on a source restart: the aligner's
    ``is_current`` says); ``colours``: (cloud_stride, the cloud's packed colours) while
    ~/points has a subscriber, else None.
    """

    __slots__ = ('local', 'stamp', 'parts', 'stereo', 'stereo_set', 'colours')

    def __init__(self, local, stamp, parts):
        self.local, self.stamp, self.parts = local, stamp, parts
        self.stereo = self.stereo_set = self.colours = None

    def matches(self, local, stamp, msgs) -> bool:
        """Tell whether this is the stereo side of the set (``local``, or ``stamp``/``msgs``)."""
        if local is not None or self.local is not None:
            return self.local is local
        return self.stamp == stamp and all(msgs.get(k) is m for k, m in self.parts.items())


class AlignmentNode(DepthRosNode):
    """The metric alignment node (module docstring); ``local_input``: sets come in-process."""

    def __init__(self, local_input: bool = False, **kwargs):
        super().__init__('alignment_node', ALIGNMENT_PARAMS, validate=validate_alignment,
                         apply=self._apply, **kwargs)
        try:
            self.aligner = make_aligner(self.cfg)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        kinds = ['disparity', 'depth', 'camera_info']
        kinds += [k for k, on in (('confidence', self.cfg['use_confidence']),
                                  ('image', self.cfg['use_image'])) if on]
        self.kinds = kinds
        self.lock = threading.Lock()
        self.buffer = PairingBuffer(kinds, self._on_drop, driver='disparity',
                                    max_age_ns=int(self.cfg['pairing_window_s'] * 1e9),
                                    max_bytes=int(self.cfg['pairing_max_mb'] * 1e6))
        reset_ns = int(self.cfg['stamp_reset_s'] * 1e9)
        self.stamp_guards = {k: StampGuard(k, reset_ns) for k in kinds}
        self.arrivals = {k: RateMeter() for k in kinds}
        # Incremented on a source restart; the worker resets the aligner's temporal state
        # when it takes the first set of a new epoch (the aligner is the worker's alone).
        # aligner_epoch only says when to reset: whether a prepared set is stale is the
        # aligner's to say (MetricAligner.is_current; the reset makes older sets stale).
        self.epoch = 0
        self.aligner_epoch = 0
        self.stamp_resets = 0
        self.paired_once = False
        self.last_camera_info = None   # the newest valid one: arrivals are checked on it
        self.heap = HeapTrim()
        self.last_drop = ''
        self.in_rate, self.out_rate = RateMeter(), RateMeter()
        self.latency_ms = collections.deque(maxlen=50)
        self.process_ms = collections.deque(maxlen=50)
        self.input_age_ms = collections.deque(maxlen=50)   # stamp -> set complete
        self.stages = StageTimes()
        self.published = collections.Counter()   # lazy outputs: frames published on each
        self.cloud_buffer = conv.MessageBuffer()   # output bytes reused by the one worker
        self.depth_buffer = conv.MessageBuffer()
        self.limit = max_message_bytes()
        self.cloud_refused = ''
        self.result = None
        # Aligner option changes (parameters, the right camera's baseline) are handed to the
        # worker, which owns the aligner and applies them between two frames.
        self.pending_options = {}
        self.baseline_source = 'parameter'
        self.unc_buffer = conv.MessageBuffer()
        qos = sensor_qos(self.cfg['reliability'], self.cfg['qos_depth'])
        self.pub_depth = self.create_publisher(Image, '~/depth', qos)
        self.pub_info = self.create_publisher(CameraInfo, '~/camera_info', qos)
        self.pub_points = self.create_publisher(PointCloud2, '~/points', qos)
        self.pub_colored = self.create_publisher(Image, '~/colored', qos)
        self.pub_unc = self.create_publisher(Image, '~/uncertainty', qos)
        self.worker = Worker(self._process, 'alignment', self._worker_error,
                             background=self._prepare)
        # The stereo side of the frame the network runs on, prepared meanwhile (a Prepared:
        # take_started composed, inference_started separately). The worker's alone; one at most.
        self.prepared = None
        self.last_set_stamp = None        # the newest set the worker took
        self.inferring = None             # separately: the stamp depth_node computes now
        self.prepare_requested = None     # separately: the last stamp given to _prepare
        self.prepare_counts = collections.Counter()
        self.local_input = local_input
        self.subs = [] if local_input else [self.create_subscription(
            TOPICS[k][1], TOPICS[k][0], self._callback(k), qos) for k in kinds]
        if self.cfg['use_inference_stamps'] and not local_input:
            self.subs.append(self.create_subscription(Header, 'inference_started',
                                                      self._on_started, qos))
        if self.cfg['use_right_camera_info'] and not local_input:
            self.subs.append(self.create_subscription(CameraInfo, 'right_camera_info',
                                                      self._on_right_info, qos))

    def publish_diagnostics(self):
        """Trim the heap after a burst, then publish the diagnostics (one timer for both)."""
        # After a burst (the pairing buffer drained, or a flood refused), the freed heap goes
        # back to the system (nodes_core.workers.HeapTrim says why). Checked on the
        # diagnostics timer: a timer of its own woke the executor once more a period, and
        # each wake builds rclpy's wait set of every node (runtime.SPIN_PERIOD_S).
        self._trim_heap()
        super().publish_diagnostics()

    def _trim_heap(self):
        with self.lock:
            held = self.buffer.bytes
        self.heap.maybe_trim(held)

    # ------------------------------------------------------------------ parameters
    def _apply(self, changed):
        if any(k in changed for k in ALIGNER_KEYS):
            # Validated by the callback; the worker applies them (the aligner keeps its state).
            options = aligner_options(self.cfg)
            with self.lock:
                self.pending_options.update({k: options[k] for k in changed
                                             if k in ALIGNER_KEYS})
        if 'cloud_stride' in changed:
            self.cloud_refused = ''                 # check the new size on the next frame
        with self.lock:
            self.buffer.max_age_ns = int(self.cfg['pairing_window_s'] * 1e9)
            self.buffer.max_bytes = int(self.cfg['pairing_max_mb'] * 1e6)
            for guard in self.stamp_guards.values():
                guard.reset_ns = int(self.cfg['stamp_reset_s'] * 1e9)

    # ------------------------------------------------------------------ inputs
    def _on_drop(self, drop):
        # Called with self.lock held, from PairingBuffer.
        stamp, why = drop.stamp, drop.why
        if drop.expected:
            # The network skipped the frame (newest-frame policy), or the memory cap took it:
            # the policy's drops, counted, not errors.
            capped = drop.reason in (Reason.CAPPED, Reason.CAPPED_EARLIER)
            self.bad['capped' if capped else 'skipped'] += 1
            self.get_logger().debug('frame {} dropped: no {} ({})'.format(
                stamp, missing_text(drop.missing), why))
            return
        self.last_drop = 'missing {} ({})'.format(missing_text(drop.missing), why)
        if not self.paired_once:
            # Before the first complete set, partial sets are discovery races (a subscription
            # matched a moment after its publisher's first message): counted, not logged.
            self.bad['unpaired_startup'] += 1
            return
        if drop.reason is Reason.CAPPED_EARLIER:
            self.bad['unpaired'] += 1
            self.warn('capped', 'dropped frame {}: {}; raise pairing_max_mb (now {:g})'.format(
                stamp, why, self.cfg['pairing_max_mb']))
            return
        # A message lost in transport, or overwritten in the subscription's queue while the
        # process was starved of CPU: one frame's output is lost and the node goes on. A
        # warning (rate-limited, counted in dropped_unpaired) that says what to change.
        self.bad['unpaired'] += 1
        self.warn('unpaired', 'dropped frame {}: {}: lost in transport or in a full queue; if '
                  'this repeats, raise qos_depth (now {}) or use reliability:=reliable'.format(
                      stamp, self.last_drop, self.cfg['qos_depth']))

    def _on_right_info(self, info):
        baseline = baseline_from_info(info)
        if baseline is None or not 0.0 < baseline < 10.0:
            self.warn('right_info', 'right camera_info without a stereo baseline (P[0,3] = {}); '
                      'keeping baseline_m {:g}'.format(list(info.p)[3:4], self.cfg['baseline_m']))
            return
        self._take_baseline(baseline)

    def _take_baseline(self, baseline):
        with self.lock:
            if self.baseline_source != 'right_camera_info' or \
                    abs(baseline - self.aligner.options.baseline_m) > 1e-6:
                self.pending_options['baseline_m'] = baseline
                self.baseline_source = 'right_camera_info'

    def take_set(self, local, disparity) -> None:
        """
        Take a set by reference from depth_node's worker (composed.py): no pairing, no copy.

        ``local``: depth_node's LocalFrame (zed_node's Frame and header); ``disparity``: the
        network's output on it. The stamp guard still tells a restarted source apart.
        """
        frame = local.frame
        stamp = frame.stamp_ns
        for kind in self.kinds:
            self.arrivals[kind].tick()
        if self.cfg['use_right_camera_info'] and frame.baseline_m and \
                0.0 < frame.baseline_m < 10.0:
            self._take_baseline(frame.baseline_m)     # the right camera_info's baseline
        with self.lock:
            if not self._stamp_ok('disparity', stamp):
                return
            self.in_rate.tick()
            self.paired_once = True
            epoch = self.epoch
        now = time.time_ns()
        self.input_age_ms.append((now - stamp) * 1e-6)
        self.worker.put(((local, disparity), now, epoch))

    def take_started(self, local) -> None:
        """
        depth_node's worker starts inference on ``local`` (composed.py): prepare its stereo side.

        The worker runs ``MetricAligner.prepare`` on it as background work (nodes_core Worker):
        while the network runs, and never before a set that is ready. :meth:`_process` then
        finishes that frame's set from it, so only the post-inference part of the stage is on
        the latency path. A frame the network skips is never started, so never prepared.
        Nothing with ``prepare_during_inference`` false.
        """
        if self.cfg['prepare_during_inference']:
            self.worker.put_background(local)

    def _local_stereo(self, local) -> DecodedSet:
        """Return the frame's stereo side as decode_set would (no copy); ValueError: bad."""
        frame, out = local.frame, DecodedSet()
        out.stamp_ns, out.frame_id, out.camera = frame.stamp_ns, local.header.frame_id, \
            frame.camera
        # A ZED frame comes image first: its depth and confidence may still be retrieved in
        # zed_node's grab thread (ValueError if that failed, or took over STEREO_WAIT_S).
        frame.wait_stereo(STEREO_WAIT_S)
        if frame.depth is None:
            raise ValueError('the frame has no stereo depth')
        out.depth = np.asarray(frame.depth, dtype=np.float32)
        sizes = {'depth': out.depth.shape[::-1]}
        if 'confidence' in self.kinds and frame.confidence is not None:
            # A confidence the source checked (Frame.confidence_finite: a rosbag's) is not
            # checked again: one pass over the plane less per frame.
            out.confidence = frame.confidence if frame.confidence_finite and \
                frame.confidence.dtype == np.float32 else check_confidence(frame.confidence)
            sizes['confidence'] = out.confidence.shape[::-1]
        if 'image' in self.kinds:
            out.bgr = frame.left
            sizes['image'] = out.bgr.shape[1::-1]
        check_sizes(sizes)            # as for messages (core.messages), from the arrays
        return out

    def _local_set(self, local, disparity, stereo=None) -> DecodedSet:
        """Return the handed-over arrays as decode_set would (no copy); ValueError: a bad set."""
        out = stereo if stereo is not None else self._local_stereo(local)
        out.relative = disparity     # finite: depth_node drops an output that is not
        check_sizes({'depth': out.depth.shape[::-1], 'disparity': disparity.shape[1::-1]})
        return out

    def _prepare(self, item):
        """
        Worker, background: MetricAligner.prepare on a frame's stereo side, during inference.

        ``item``: a LocalFrame (composed, take_started), or (stamp, stereo messages)
        (separately, _prepare_if_stereo_complete).
        """
        local, (stamp, parts) = (item, (item.frame.stamp_ns, None)) \
            if isinstance(item, LocalFrame) else (None, item)
        if self.last_set_stamp is not None and stamp <= self.last_set_stamp:
            self.prepare_counts['late'] += 1      # its set (or a newer one) went first
            return
        self._apply_pending_options()    # the options its set will be finished with
        t0 = time.perf_counter()
        out = Prepared(local, stamp, parts)
        try:
            out.stereo = self._local_stereo(local) if local is not None else \
                decode_set(parts, 'drop', to_array=conv.image_to_numpy)
            stereo = out.stereo
            out.stereo_set = self.aligner.prepare(stereo.depth, stereo.confidence,
                                                  guide=stereo.bgr, camera=stereo.camera)
        except ValueError:
            # A bad frame: its set is aligned by update, which drops it with the reason.
            self.prepare_counts['failed'] += 1
            return
        if stereo.bgr is not None and self.pub_points.get_subscription_count() > 0:
            # The cloud's colours need only the image: packed now, not after inference.
            out.colours = (self.cfg['cloud_stride'],
                           cloud_colours(stereo.bgr, self.cfg['cloud_stride']))
        if self.prepared is not None:
            self.prepare_counts['discarded'] += 1   # its set never came (dropped upstream)
        self.prepared = out
        self.stages.add('prepare', (time.perf_counter() - t0) * 1e3)

    def _take_prepared(self, local, stamp, msgs=None):
        """
        Return the current Prepared of the set, else None (worker thread).

        Current: its stereo side is still the aligner's (no option change, no restart's reset
        since it was prepared: ``MetricAligner.is_current``); a stale one is finished by
        update, with the aligner's options and state now.
        """
        held, self.prepared = self.prepared, None
        if held is not None:
            current = self.aligner.is_current(held.stereo_set)
            if current and held.matches(local, stamp, msgs):
                self.prepare_counts['used'] += 1
                return held
            if current and held.stamp > stamp:
                self.prepared = held            # a newer frame's: its set is yet to come
            else:
                self.prepare_counts['discarded'] += 1
        self.prepare_counts['missed'] += 1
        return None

    @staticmethod
    def _with_relative(prepared, msgs) -> DecodedSet:
        """Separately: the prepared stereo side and the set's decoded disparity."""
        # The set's messages were checked together on arrival (_arrival_problem); the
        # disparity is decoded and value-checked with the depth and camera it is sized on.
        out = prepared.stereo
        out.relative = decode_set({k: msgs[k] for k in ('disparity', 'depth', 'camera_info')},
                                  'drop', to_array=conv.image_to_numpy).relative
        return out

    def _on_started(self, header):
        stamp = conv.stamp_to_ns(header.stamp)
        with self.lock:
            self.buffer.pin(stamp)
            self.inferring = stamp
            self._prepare_if_stereo_complete(stamp)

    def _prepare_if_stereo_complete(self, stamp):
        """
        Separately: prepare the stereo side of the set being inferred once it is all here.

        Called with self.lock held, on depth_node's ``inference_started`` and on each stereo
        message: the stamp the network computes, with every kind but the disparity, goes to
        the worker's background work (:meth:`_prepare`) once. Frames the network skips are
        never announced, so never prepared.
        """
        if stamp != self.inferring or stamp == self.prepare_requested or \
                not self.cfg['prepare_during_inference']:
            return
        parts = self.buffer.parts(stamp)
        if len(parts) != len(self.kinds) - 1 or 'disparity' in parts:
            return
        self.prepare_requested = stamp
        self.worker.put_background((stamp, dict(parts)))

    def _callback(self, kind):
        def callback(msg):
            stamp = conv.stamp_to_ns(msg.header.stamp)
            self.arrivals[kind].tick()
            with self.lock:
                if not self._stamp_ok(kind, stamp):
                    return
                if kind == 'camera_info':
                    self._note_camera_info(msg)
                if self.buffer.refused(stamp):
                    return     # a message of a set refused already goes with it
                if kind == 'disparity':
                    self.in_rate.tick()
                problem = self._arrival_problem(kind, stamp, msg)
                complete = None if problem else self.buffer.add(kind, stamp, msg)
                self.heap.held(self.buffer.bytes)
                if complete is not None:
                    self.paired_once = True
                elif not problem and kind != 'disparity':
                    self._prepare_if_stereo_complete(stamp)
                epoch = self.epoch
            if problem:
                self.error('frame', 'dropped frame {}: {}'.format(stamp, problem))
            elif complete is not None:
                now = time.time_ns()
                self.input_age_ms.append((now - stamp) * 1e-6)
                self.worker.put((complete, now, epoch))
        return callback

    def _note_camera_info(self, msg):
        """
        Keep the newest valid camera_info (lock held): arrivals are checked on it.

        Any camera_info that passes check_message, even one of a refused set: the camera says
        what the size is. A resolution or frame change (a camera reopened with other settings)
        is then refused for one set at most; checked on the last complete set's camera_info
        instead, a set whose depth comes before its camera_info would be refused for ever.
        """
        try:
            check_message('camera_info', msg)
        except ValueError:
            return      # refused with its set by _arrival_problem (or its set was already)
        self.last_camera_info = msg

    def _arrival_problem(self, kind, stamp, msg):
        """
        Refuse a wrong message when it arrives, with the rest of its set (lock held).

        Never held while its set waits: a flood of wrong messages costs no memory. The checks
        read fields only (core.messages): the message alone, then with what its stamp has so
        far and the newest valid camera_info (_note_camera_info). decode_set repeats them,
        then checks the values (NaN, inf) of the complete set.
        """
        parts = dict(self.buffer.parts(stamp))
        parts[kind] = msg
        try:
            check_message(kind, msg)
            check_parts(parts, camera_info=self.last_camera_info)
        except ValueError as exc:
            self.buffer.refuse(stamp)
            self.heap.refuse(message_bytes(msg))
            self.last_drop = str(exc)
            return str(exc)
        return None

    def _stamp_ok(self, kind, stamp) -> bool:
        # Called with self.lock held.
        verdict, text = self.stamp_guards[kind].check(stamp)
        if verdict == 'restart':
            # A restarted source (rosbag play --loop, an SVO reopened, sim time reset):
            # sets of the old timeline never complete, and the temporal filter must not
            # blend two recordings.
            self.stamp_resets += 1
            self.get_logger().warning(text + '; pairing and the temporal filter start over')
            for k, guard in self.stamp_guards.items():
                if k != kind:
                    guard.reset()
            self.buffer.clear()
            self.inferring = self.prepare_requested = None
            self.paired_once = False
            self.last_camera_info = None
            self.epoch += 1
            return True
        if verdict == 'old':
            self.error('stamp', 'dropped ' + text)
            return False
        return True

    # ------------------------------------------------------------------ worker
    def _process(self, item):
        msgs, t_complete, epoch = item
        if epoch != self.aligner_epoch:
            self.aligner.reset()
            self.aligner_epoch = epoch
        self._apply_pending_options()
        stages = self.stages
        stages.add('wait', (time.time_ns() - t_complete) * 1e-6)
        stages.start()
        t0 = time.perf_counter()
        local = isinstance(msgs, tuple)     # (LocalFrame, disparity), handed over in-process
        stamp = msgs[0].frame.stamp_ns if local else conv.stamp_to_ns(msgs['depth'].header.stamp)
        self.last_set_stamp = stamp
        prepared = self._take_prepared(msgs[0] if local else None, stamp,
                                       None if local else msgs)
        try:
            if local:
                frame = self._local_set(*msgs, stereo=prepared and prepared.stereo)
            elif prepared is not None:
                frame = self._with_relative(prepared, msgs)
            else:
                frame = decode_set(msgs, 'drop', to_array=conv.image_to_numpy)
        except ValueError as exc:
            self.last_drop = str(exc)
            self.error('frame', 'dropped frame {}: {}'.format(stamp, exc))
            return
        stages.mark('convert')
        try:
            if prepared is not None:      # the stereo side was prepared during inference
                # With a ~/depth reader, the depth is written straight into its message's
                # buffer (published below, before the cloud): no copy on the depth's path.
                out = self.depth_buffer.array(prepared.stereo_set.shape, 'float32') \
                    if self.pub_depth.get_subscription_count() > 0 else None
                result = self.aligner.finish(frame.relative, prepared.stereo_set, out=out)
            else:
                result = self.aligner.update(frame.relative, frame.depth, frame.confidence,
                                             guide=frame.bgr, camera=frame.camera)
        except ValueError as exc:     # the aligner's input checks (a frame below 16x16 ...)
            self.last_drop = str(exc)
            self.error('frame', 'dropped frame {}: {}'.format(frame.stamp_ns, exc))
            return
        self.result = result
        stages.mark('align')
        header = msgs[0].header if local else msgs['depth'].header
        # Lazy outputs, as depth_image_proc: nothing is built for a topic nobody reads (a
        # 720p ~/depth is a 3.7 MB copy into the message and another into rclpy's, ~1 ms).
        if self.pub_depth.get_subscription_count() > 0:
            if not self.publish(self.pub_depth, conv.numpy_to_image(
                    result.depth, '32FC1', header, buffer=self.depth_buffer)):
                return
            self.published['depth'] += 1
        if self.pub_info.get_subscription_count() > 0:
            self.publish(self.pub_info, conv.camera_to_info(frame.camera, header) if local else
                         self._camera_info(msgs['camera_info'], frame.camera, header))
        stages.mark('publish_depth')
        if self.pub_points.get_subscription_count() > 0:
            self._publish_cloud(result.depth, frame.camera, frame.bgr, header,
                                prepared and prepared.colours)
        if self.pub_colored.get_subscription_count() > 0:
            self._publish_colored(result.depth, header)
        if result.uncertainty is not None and self.pub_unc.get_subscription_count() > 0:
            # [H, W] float32 metres, 1 sigma of ~/depth (calibrated on the fusion benchmark).
            self.publish(self.pub_unc, conv.numpy_to_image(
                result.uncertainty.astype('float32', copy=False), '32FC1', header,
                buffer=self.unc_buffer))
        self.out_rate.tick()
        self._tell_first(result)
        self.process_ms.append((time.perf_counter() - t0) * 1e3)
        self.latency_ms.append((time.time_ns() - conv.stamp_to_ns(header.stamp)) * 1e-6)

    def _tell_first(self, result) -> None:
        """Say, once, that metric depth flows: its size, the first fit and where it goes."""
        if self.out_rate.count != 1:
            return
        h, w = result.depth.shape
        fit = 'fit {}'.format(result.status)
        if result.reason:
            fit += ': ' + result.reason
        self.get_logger().info(
            'first metric depth: {}x{}, {}, {:.0f} % of the pixels from stereo; {}/depth, '
            'points, colored and uncertainty are published while subscribed'.format(
                w, h, fit, 100.0 * result.stereo_fraction, self.get_fully_qualified_name()))

    def _apply_pending_options(self):
        # Worker thread: option changes between two frames; the uncertainty is computed only
        # while someone subscribes to ~/uncertainty (it costs a few full-frame passes).
        with self.lock:
            changes, self.pending_options = self.pending_options, {}
        want = self.pub_unc.get_subscription_count() > 0
        if want != self.aligner.options.compute_uncertainty:
            changes['compute_uncertainty'] = want
        if changes:
            try:     # a set prepared before is stale once they are in: finished by update
                self.aligner.set_options(**changes)
            except ValueError as exc:     # validated already; a rejected baseline stays out
                self.warn('options', 'aligner options not applied: {}'.format(exc))

    @staticmethod
    def _camera_info(info, camera, header):
        if (info.width, info.height) != (camera.width, camera.height):
            return conv.camera_to_info(camera, header)
        info.header = conv.copy_header(header)
        return info

    def _cloud_fits(self, shape, rgb: bool) -> bool:
        if self.cloud_refused:
            return False
        nbytes = shape[0] * shape[1] * (16 if rgb else 12)
        if self.limit is not None and nbytes > self.limit:
            stride = self.cfg['cloud_stride']
            need = stride
            while shape[0] * shape[1] * stride * stride // (need * need) * 16 > self.limit:
                need += 1
            self.cloud_refused = too_large_text(
                'the {}x{} cloud'.format(shape[1], shape[0]), nbytes, self.limit,
                'no cloud is published; set cloud_stride:={} (now {})'.format(need, stride))
            self.get_logger().error(self.cloud_refused)
            return False
        return True

    def _publish_cloud(self, depth, camera, bgr, header, colours=None):
        cfg = self.cfg
        stride = cfg['cloud_stride']
        # The colours packed during inference, for this stride (it may have changed since).
        colours = colours[1] if colours is not None and colours[0] == stride else None
        shape = (depth.shape[0] // stride, depth.shape[1] // stride)
        if not self._cloud_fits(shape, bgr is not None):
            return
        # The cloud is written straight into the message's byte buffer: no copy before
        # serialization, no fresh pages every frame.
        out = self.cloud_buffer.array(shape, CLOUD_DTYPE if bgr is not None else XYZ_DTYPE)
        cloud = depth_to_cloud(depth, camera, bgr=None if colours is not None else bgr,
                               colours=colours, stride=stride,
                               min_depth=cfg['cloud_min_range'] or None,
                               max_depth=cfg['cloud_max_range'] or None, out=out,
                               edge_threshold=cfg['cloud_edge_threshold'] or None,
                               bands=self.aligner.bands)   # finish_threads' row bands
        self.stages.mark('cloud')
        if self.publish(self.pub_points, conv.cloud_to_pointcloud2(cloud, header,
                                                                   buffer=self.cloud_buffer)):
            self.published['points'] += 1
        self.stages.mark('publish_cloud')

    def _publish_colored(self, depth, header):
        vmax = self.cfg['colored_max_depth'] or None
        colored = colorize(depth, vmin=0.0 if vmax else None, vmax=vmax, reverse=True)
        if self.publish(self.pub_colored, conv.numpy_to_image(colored, 'bgr8', header)):
            self.published['colored'] += 1
        self.stages.mark('colored')

    def _worker_error(self, exc):
        if self.shutting_down:
            return
        self.last_drop = describe_error(exc)
        self.error('exception', 'alignment failed on a frame: {}'.format(self.last_drop))

    # ------------------------------------------------------------------ health
    def watched_threads(self):
        """Watch the alignment thread: it runs for the node's life (it ends only at shutdown)."""
        return [('alignment', lambda: self.worker.alive)]

    def _why_no_output(self, stale: float) -> str:
        silent = [k for k in self.kinds if self.arrivals[k].age() > stale]
        if 'disparity' in silent:
            return 'no disparity for {:.1f} s (is the depth node running and fed?)'.format(
                self.arrivals['disparity'].age())
        if silent:
            return 'no {} for {:.1f} s'.format(', '.join(silent), min(
                self.arrivals[k].age() for k in silent))
        return 'inputs arrive but no set completes or aligns: {}'.format(
            self.last_drop or 'no complete set')

    def _level(self):
        stale = self.cfg['stale_after_s']
        if all(m.count == 0 for m in self.arrivals.values()):
            return 'warn', 'waiting for input'
        if self.out_rate.age() > stale:
            level = 'error' if min(m.age() for m in self.arrivals.values()) <= stale \
                else 'warn'
            since = 'no output yet' if self.out_rate.count == 0 else \
                'no output for {:.1f} s'.format(self.out_rate.age())
            return level, '{}: {}'.format(since, self._why_no_output(stale))
        r = self.result
        if r.status == 'ok':
            return 'ok', 'aligned'
        if r.status == 'held':
            return 'warn', 'holding last fit: ' + r.reason
        return 'error', 'no fit: ' + r.reason

    def diagnostics(self):
        """Return this node's status for /diagnostics."""
        r = self.result
        nan = float('nan')
        values = collections.OrderedDict()
        values['relative_kind'] = self.cfg['relative_kind']
        values['baseline_m'] = self.aligner.options.baseline_m
        values['baseline_source'] = self.baseline_source
        values['status'] = r.status if r else 'no_input'
        values['reason'] = r.reason if r else ''
        values['scale'] = r.scale if r else nan
        values['shift'] = r.shift if r else nan
        values['inlier_ratio'] = r.inlier_ratio if r else nan
        values['valid_fraction'] = r.valid_fraction if r else nan
        values['input_rate_hz'] = self.in_rate.rate
        values['output_rate_hz'] = self.out_rate.rate
        values['latency_ms'] = float(np.mean(self.latency_ms)) if self.latency_ms else nan
        values['processing_ms'] = float(np.mean(self.process_ms)) if self.process_ms else nan
        # Where a frame's time goes: stamp -> inputs paired, then each worker stage.
        values['input_age_ms'] = float(np.mean(self.input_age_ms)) if self.input_age_ms \
            else nan
        for stage, ms in self.stages.means().items():
            values['stage_{}_ms'.format(stage)] = ms
        values['published_depth'] = self.published['depth']
        values['published_points'] = self.published['points']
        values['published_colored'] = self.published['colored']
        values['cloud_refused'] = self.cloud_refused
        values['dropped_skipped'] = self.bad['skipped']       # newest-frame policy, expected
        values['dropped_capped'] = self.bad['capped']         # the memory cap, expected
        values['dropped_unpaired'] = self.bad['unpaired']
        values['dropped_unpaired_startup'] = self.bad['unpaired_startup']
        values['dropped_busy'] = self.worker.dropped
        values['stamp_resets'] = self.stamp_resets
        with self.lock:
            values['pairing_waiting'] = len(self.buffer.pending)
            values['pairing_waiting_mb'] = self.buffer.bytes / 1e6
        values['heap_trims'] = self.heap.trims
        for k in ('stamp', 'frame', 'exception'):
            values['dropped_' + k] = self.bad[k]
        values['last_drop_reason'] = self.last_drop
        values['input'] = 'in-process' if self.local_input else 'topics'
        # Sets finished from their stereo side prepared during inference (used),
        # aligned whole after it (missed: not prepared yet, options changed, a restart), and
        # prepared sets let go (discarded: the set never came), prepares skipped (late: the set
        # went first) or refused (failed: a bad frame, dropped by the set's alignment).
        for k in ('used', 'missed', 'discarded', 'late', 'failed'):
            values['prepared_' + k] = self.prepare_counts[k]
        values['prepared_held'] = int(self.prepared is not None)
        level, message = self._level()
        return [self.make_status('metric alignment', level, message, values)]

    def close(self):
        """Finish the set in progress; stop the threads of finish_threads > 1."""
        if self.worker.stop():
            self.aligner.close()


main = main_for(AlignmentNode, 'alignment_node')

if __name__ == '__main__':
    main()

"""Shared node plumbing: QoS, the newest-frame worker, diagnostics, rate meters, main()."""
from __future__ import annotations

import collections
import logging
import sys
import threading
import time
from typing import Callable, Dict, List, Optional

from depth_ros.ros.params import ConfigError, StartupError

LOG = logging.getLogger('depth_ros.ros')


def sensor_qos(reliability: str = 'best_effort', depth: int = 2):
    """
    Return the QoS of the image, depth and cloud topics: keep-last ``depth``, volatile.

    best_effort is the sensor-data profile: a late frame is worth nothing. A best-effort
    publisher does not match a reliable subscriber (RViz on Humble), hence the parameter.
    """
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    if reliability not in ('best_effort', 'reliable'):
        raise ValueError('`reliability` must be best_effort or reliable, got {!r}'.format(
            reliability))
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=int(depth),
                      reliability=(ReliabilityPolicy.BEST_EFFORT if reliability == 'best_effort'
                                   else ReliabilityPolicy.RELIABLE),
                      durability=DurabilityPolicy.VOLATILE)


class LatestWorker(object):
    """
    Newest-frame slot of depth 1 plus one worker thread.

    ``put`` (from a subscription callback) replaces any frame still waiting, so when the work
    is slower than the input, frames are dropped, never queued, and the output age stays
    bounded by about two processing times. The work runs off the executor thread.
    """

    def __init__(self, work: Callable[[object], None], name: str = 'worker',
                 on_error: Optional[Callable[[BaseException], None]] = None):
        self._work = work
        self._on_error = on_error
        self._cond = threading.Condition()
        self._item = None
        self._stop = False
        self.received = 0
        self.dropped = 0      # replaced before the worker took them
        self.processed = 0
        self.busy = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, item) -> None:
        """Offer a frame; a frame still waiting is dropped."""
        with self._cond:
            self.received += 1
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._item is None and not self._stop:
                    self._cond.wait()
                if self._stop:
                    return
                item, self._item = self._item, None
                self.busy = True
            try:
                self._work(item)
            except Exception as exc:  # a bad frame must not kill the worker
                if self._on_error is not None:
                    self._on_error(exc)
                else:
                    LOG.exception('worker failed on a frame')
            finally:
                with self._cond:
                    self.busy = False
                    self.processed += 1

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread after the frame in progress."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout)


class RateMeter(object):
    """Events per second over a sliding window of ``window`` seconds (thread-safe)."""

    def __init__(self, window: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.window = float(window)
        self._clock = clock
        self._times = collections.deque()
        self._lock = threading.Lock()
        self.count = 0

    def tick(self) -> None:
        """Record one event now."""
        with self._lock:
            now = self._clock()
            self._times.append(now)
            self.count += 1
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] < now - self.window:
            self._times.popleft()

    @property
    def rate(self) -> float:
        """Events per second in the window (0 when fewer than two)."""
        with self._lock:
            self._trim(self._clock())
            if len(self._times) < 2:
                return 0.0
            span = self._times[-1] - self._times[0]
            return (len(self._times) - 1) / span if span > 0 else 0.0


class StageTimes(object):
    """
    Per-frame stage durations: mean milliseconds of each named stage over the last frames.

    A node marks the end of each stage with ``mark(name)`` after ``start()``; the means go on
    /diagnostics so that the time of a frame can be split where it is spent.
    """

    def __init__(self, window: int = 50):
        self.window = int(window)
        self._ms = collections.OrderedDict()   # name -> deque of ms
        self._lock = threading.Lock()
        self._t = None

    def start(self) -> None:
        """Begin a frame (the worker thread's clock)."""
        self._t = time.perf_counter()

    def mark(self, name: str) -> None:
        """End stage ``name`` now; the next stage starts here."""
        now = time.perf_counter()
        self.add(name, (now - self._t) * 1e3)
        self._t = now

    def add(self, name: str, ms: float) -> None:
        """Record ``ms`` for stage ``name``."""
        with self._lock:
            values = self._ms.get(name)
            if values is None:
                values = self._ms[name] = collections.deque(maxlen=self.window)
            values.append(float(ms))

    def means(self) -> Dict[str, float]:
        """Return {stage: mean ms} in the order the stages were first seen."""
        with self._lock:
            return collections.OrderedDict(
                (k, sum(v) / len(v)) for k, v in self._ms.items() if v)


class ThrottledLog(object):
    """
    Rate-limit log lines per kind of error, in our own code (thread-safe).

    rclpy's ``throttle_duration_sec`` keys its state by call site, raises ``ValueError`` when
    the period changes between calls at one site (a runtime change of ``log_throttle_s``), and
    one call site shared by several kinds lets one kind hide the others. Here each ``kind`` has
    its own window, the period is read on every call, and the logger is called without
    throttling arguments. Lines held back are counted and reported on the next line of the
    kind: ``... (3 similar suppressed)``. A period of 0 logs every line and keeps no window.

    Usage::

        self.log = ThrottledLog(self.get_logger())
        self.log.error('stamp', 'dropped image: ...', self.cfg['log_throttle_s'])
    """

    def __init__(self, logger, clock: Callable[[], float] = time.monotonic):
        self._logger = logger
        self._clock = clock
        self._lock = threading.Lock()
        self._last = {}          # kind -> clock time of the last line logged
        self._suppressed = collections.Counter()

    def _admit(self, kind: str, text: str, period: float) -> Optional[str]:
        with self._lock:
            now = self._clock()
            last = self._last.get(kind)
            if period <= 0:
                # Throttling off: nothing is remembered, so when a period is set later its
                # first line is logged (earlier unthrottled lines do not count against it).
                self._last.pop(kind, None)
            elif last is not None and now - last < period:
                self._suppressed[kind] += 1
                return None
            else:
                self._last[kind] = now
            held = self._suppressed.pop(kind, 0)
        return text + (' ({} similar suppressed)'.format(held) if held else '')

    def error(self, kind: str, text: str, period: float) -> bool:
        """Log ``text`` as an error unless ``kind`` was logged less than ``period`` s ago."""
        line = self._admit(kind, text, period)
        if line is not None:
            self._logger.error(line)
        return line is not None

    def warn(self, kind: str, text: str, period: float) -> bool:
        """Log ``text`` as a warning, rate-limited as :meth:`error` (own window per kind)."""
        line = self._admit(kind, text, period)
        if line is not None:
            self._logger.warn(line)
        return line is not None

    def suppressed(self, kind: str) -> int:
        """Return how many lines of ``kind`` are held back since its last logged line."""
        with self._lock:
            return self._suppressed.get(kind, 0)


def diagnostic_status(name: str, hardware_id: str, level: str, message: str,
                      values: Dict[str, object]):
    """diagnostic_msgs/DiagnosticStatus; ``level`` is 'ok', 'warn', 'error' or 'stale'."""
    from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
    levels = {'ok': DiagnosticStatus.OK, 'warn': DiagnosticStatus.WARN,
              'error': DiagnosticStatus.ERROR, 'stale': DiagnosticStatus.STALE}
    status = DiagnosticStatus(name=name, hardware_id=hardware_id, message=message)
    status.level = levels[level]
    status.values = [KeyValue(key=str(k), value=_fmt(v)) for k, v in values.items()]
    return status


def _fmt(value) -> str:
    if isinstance(value, float):
        return '{:.6g}'.format(value)
    return str(value)


class Diagnostics(object):
    """Publishes the node's DiagnosticStatus list on /diagnostics every ``period`` seconds."""

    def __init__(self, node, collect: Callable[[], List], period: float = 1.0):
        from diagnostic_msgs.msg import DiagnosticArray
        self._node = node
        self._collect = collect
        self._type = DiagnosticArray
        self.publisher = node.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self.timer = node.create_timer(period, self.publish)

    def publish(self) -> None:
        """Collect and publish now."""
        msg = self._type()
        msg.header.stamp = self._node.get_clock().now().to_msg()
        msg.status = list(self._collect())
        self.publisher.publish(msg)


def run_node(factory: Callable[[], object], name: str, args: Optional[List[str]] = None,
             threads: int = 1) -> int:
    """
    Create (``factory()``), spin and tear down one node; return the process exit code.

    Start-up failures (ConfigError: bad parameter; StartupError: model or camera could not be
    set up) are logged as one FATAL line naming the cause and give exit code 2 / 1, with no
    traceback: they are the user's to fix, not a bug.
    """
    import rclpy
    from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
    try:
        from rclpy.executors import ExternalShutdownException
    except ImportError:  # pragma: no cover - very old rclpy
        ExternalShutdownException = KeyboardInterrupt
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = factory()
    except ConfigError as exc:
        rclpy.logging.get_logger(name).fatal('bad configuration: {}'.format(exc))
        code = 2
    except StartupError as exc:
        rclpy.logging.get_logger(name).fatal(str(exc))
        code = 1
    if node is not None:
        # Callbacks only hand frames over (the work runs in the nodes' worker threads), and
        # rclpy's MultiThreadedExecutor costs far more Python time per message than it saves.
        executor = SingleThreadedExecutor() if threads <= 1 else \
            MultiThreadedExecutor(num_threads=threads)
        executor.add_node(node)
        try:
            executor.spin()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        finally:
            close = getattr(node, 'close', None)
            if close is not None:
                close()
            executor.shutdown()
            node.destroy_node()
    if rclpy.ok():
        rclpy.shutdown()
    return code


def main_for(factory: Callable[[], object], name: str):
    """Make a console-script ``main`` running the node that ``factory()`` makes."""
    def main(args: Optional[List[str]] = None) -> None:
        sys.exit(run_node(factory, name, args))
    return main

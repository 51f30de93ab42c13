"""
Shared node plumbing: the base class of our nodes, QoS, diagnostics, message limits, main().

:class:`DepthRosNode` holds what every node repeats: parameters declared from specs and
validated at start-up and at runtime, unknown parameter names reported, rate-limited bad-frame
errors with counters, publishing that stays quiet while the process shuts down, and a way for
any thread to end the process with one FATAL line. :func:`run_node` creates, spins and tears a
node down with quiet, ordered shutdown (exit 0 on Ctrl-C, however often it is pressed).
"""
from __future__ import annotations

import collections
import os
import signal
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence
import xml.etree.ElementTree as ElementTree

from depth_ros.ros import compat
from depth_ros.ros.params import ConfigError, declare_params, install_parameter_callbacks, \
    Param, StartupError, unknown_overrides
from depth_ros.ros.workers import first_line, forward_library_logs, KeyframeWorker, \
    LatestWorker, RateMeter, StageTimes, ThrottledLog  # noqa: F401 - re-exported
from rclpy.node import Node

__all__ = ['ConfigError', 'DepthRosNode', 'diagnostic_status', 'Diagnostics', 'LatestWorker',
           'main_for', 'max_message_bytes', 'RateMeter', 'run_node', 'sensor_qos',
           'StageTimes', 'StartupError', 'ThrottledLog']


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
    """
    Publishes the node's DiagnosticStatus list on /diagnostics every ``period`` seconds.

    ``period`` None: the node's ``diagnostics_period_s`` parameter (1 s by default).
    """

    def __init__(self, node, collect: Callable[[], List], period: Optional[float] = None):
        from diagnostic_msgs.msg import DiagnosticArray
        if period is None:
            period = float(node.cfg.get('diagnostics_period_s', 1.0))
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
        self._node.publish(self.publisher, msg)


# ------------------------------------------------------------------------- message limits
def _profile_shm_limit(path: str) -> Optional[int]:
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    limits = []
    for desc in root.iter():
        if not desc.tag.endswith('transport_descriptor'):
            continue
        kind = [c.text for c in desc if c.tag.endswith('type')]
        size = [c.text for c in desc if c.tag.endswith('maxMessageSize')]
        if kind and kind[0] and kind[0].strip() == 'SHM' and size and size[0]:
            try:
                limits.append(int(size[0].strip()))
            except ValueError:
                continue
    return max(limits) if limits else None


def max_message_bytes(environ=None) -> Optional[int]:
    """
    Return the largest message the middleware carries whole, or None when unknown.

    With Fast DDS and our profile (config/fastdds_large_messages.xml), messages up to the SHM
    transport's ``maxMessageSize`` (32 MiB) travel in one shared-memory buffer; larger ones
    are cut into UDP fragments and, best effort, lost now and then without a word. Other
    middlewares and profiles without an SHM limit: None (no check).
    """
    env = os.environ if environ is None else environ
    override = env.get('DEPTH_ROS_MAX_MESSAGE_BYTES')
    if override:
        # Another middleware's limit, or a test's: the bound the nodes refuse to exceed.
        return int(override)
    rmw = env.get('RMW_IMPLEMENTATION', '') or 'rmw_fastrtps_cpp'
    if not rmw.startswith('rmw_fastrtps'):
        return None
    for var in ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE'):
        path = env.get(var)
        if path:
            return _profile_shm_limit(path)
    return None


def too_large_text(what: str, nbytes: int, limit: int, fix: str) -> str:
    """Return the line for a message above the middleware's limit, naming the fix."""
    return '{} is {:.1f} MB, above the {:.1f} MB that Fast DDS carries whole (SHM ' \
        'maxMessageSize of the profile); it would be lost in UDP fragments: {}'.format(
            what, nbytes / 1e6, limit / 1e6, fix)


# ----------------------------------------------------------------------------- base class
class DepthRosNode(Node):
    """
    The base of our nodes: parameters, error counters, quiet publishing, fatal exits.

    :param name: node name.
    :param specs: the node's :class:`Param` list, declared here.
    :param validate: cross-parameter check, ``f(values) -> None | reason``.
    :param apply: called with ``{name: value}`` after a runtime change was accepted.
    """

    def __init__(self, name: str, specs: Sequence[Param],
                 validate: Optional[Callable[[Dict[str, object]], Optional[str]]] = None,
                 apply: Optional[Callable[[Dict[str, object]], None]] = None, **kwargs):
        super().__init__(name, **kwargs)
        self.specs = tuple(specs)
        self.cfg = declare_params(self, self.specs, validate=validate)
        install_parameter_callbacks(self, self.specs, self.cfg, validate, apply)
        self.log = ThrottledLog(self.get_logger())
        for line in unknown_overrides(self, self.specs):
            self.get_logger().warning(line)
        self.bad = collections.Counter()      # dropped frames by kind
        self.shutting_down = False
        self.fatal_reason = None
        self._publish_lock = threading.Lock()

    def error(self, kind: str, text: str) -> None:
        """Count a bad frame of ``kind`` and log ``text`` (rate-limited per kind)."""
        self.bad[kind] += 1
        if not self.shutting_down:
            self.log.error(kind, text, self.cfg.get('log_throttle_s', 2.0))

    def warn(self, kind: str, text: str) -> None:
        """Log a rate-limited warning of ``kind`` (not counted)."""
        if not self.shutting_down:
            self.log.warn(kind, text, self.cfg.get('log_throttle_s', 2.0))

    def publish(self, publisher, msg) -> bool:
        """
        Publish ``msg``; False, silently, when the node is shutting down.

        A worker that finishes a frame during Ctrl-C would otherwise log "publisher's context
        is invalid" as an error.
        """
        if self.shutting_down or not self.context.ok():
            return False
        try:
            publisher.publish(msg)
        except Exception:  # noqa: B902 - rclpy raises RCLError/InvalidHandle at shutdown
            if self.shutting_down or not self.context.ok():
                return False
            raise
        return True

    def fail(self, reason: str) -> None:
        """Ask run_node to end the process with one FATAL line (callable from any thread)."""
        if self.fatal_reason is None:
            self.fatal_reason = reason

    def health_check(self) -> Optional[str]:
        """Return a reason to end the process (a dead worker thread), or None."""
        if self.fatal_reason:
            return self.fatal_reason
        if not self.shutting_down:
            for what, alive in self.watched_threads():
                if not alive():
                    return 'the {} thread ended unexpectedly'.format(what)
        return None

    def watched_threads(self):
        """Return (name, is-alive callable) of the threads that run for the node's life."""
        return ()

    def close(self) -> None:
        """Stop the node's threads (before the context shuts down). Overridden by nodes."""


# ------------------------------------------------------------------------------ run_node
class _Signals(object):
    """
    SIGINT/SIGTERM -> a stop flag: no KeyboardInterrupt in the middle of a teardown.

    Installed before ``rclpy.init`` so that no signal ever meets the default SIGTERM action
    (death with -15, no teardown). While ``interrupting`` (start-up: rclpy.init, the node's
    constructor, which may block on a model load or a camera) a signal also raises
    KeyboardInterrupt, so that a slow start-up can still be stopped.
    """

    def __init__(self):
        self.stop = threading.Event()
        self.count = 0
        self.teardown_since = None
        self.interrupting = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handler)
        return self

    def _handler(self, signum, frame):
        self.count += 1
        self.stop.set()
        if self.interrupting:
            self.interrupting = False
            raise KeyboardInterrupt
        # A teardown stuck for many seconds (a driver call that never returns) must still
        # give way to a user who keeps pressing Ctrl-C.
        if self.teardown_since is not None and time.monotonic() - self.teardown_since > 10.0:
            os._exit(130)

    def __exit__(self, *exc):
        if self.count:
            # Asked to stop: the process is on its way out, and a late signal must not undo
            # the clean exit. A terminal's Ctrl-C reaches the node and `ros2 launch` at once,
            # and launch forwards another SIGINT a moment later. While Python finalizes (the
            # DDS participant goes away then: 0.1 s and more) it resets its own handlers to
            # the default action, and that SIGINT ended the node with exit -2 ("process has
            # died"); an ignored signal stays ignored.
            for sig in self._old:
                signal.signal(sig, signal.SIG_IGN)
            return False
        for sig, old in self._old.items():
            try:
                signal.signal(sig, old)
            except (TypeError, ValueError):
                pass
        return False


def _params_files(args: List[str]) -> List[str]:
    """Return the ``--params-file`` paths of the ``--ros-args`` sections of ``args``."""
    files, in_ros = [], False
    for i, arg in enumerate(args):
        if arg == '--ros-args':
            in_ros = True
        elif arg == '--':
            in_ros = False
        elif in_ros and arg == '--params-file' and i + 1 < len(args):
            files.append(args[i + 1])
    return files


def check_params_files(args: List[str]) -> Optional[str]:
    """
    Return what is wrong with a ``--params-file`` of ``args`` (None when they all read).

    rcl would refuse them too, but with a 20-line error and a traceback; this names the file
    and the problem in one line before rcl sees it.
    """
    import yaml
    for path in _params_files(args):
        if not os.path.isfile(path):
            return '--params-file {}: no such file'.format(path)
        try:
            with open(path) as f:
                data = yaml.safe_load(f)
        except (OSError, yaml.YAMLError) as exc:
            return '--params-file {}: not valid YAML: {}'.format(
                path, first_line(exc).replace('\n', ' '))
        if data is not None and not isinstance(data, dict):
            return '--params-file {}: expected node sections (`/**/node: ros__parameters: ' \
                '...`), got a {}'.format(path, type(data).__name__)
    return None


def _construct(factory, name, signals) -> tuple:
    """Return (node, exit code): start-up failures are one FATAL line, Ctrl-C is quiet."""
    import rclpy
    logger = rclpy.logging.get_logger(name)
    node = None
    try:
        node = factory()
        signals.interrupting = False
        return node, 0
    except KeyboardInterrupt:
        # Either inside the constructor (no node: nothing to tear down) or in the instant
        # after it (a node, and signals.stop is set: the spin loop ends at once).
        signals.interrupting = False
        return node, 0
    except ConfigError as exc:
        logger.fatal('bad configuration: {}'.format(exc))
        return None, 2
    except StartupError as exc:
        logger.fatal(str(exc))
        return None, 1
    except Exception as exc:  # noqa: B902 - e.g. rclpy's parameter errors: one line, exit 2
        text = first_line(exc)
        if type(exc).__name__ in ('RCLError', 'ParameterException',
                                  'InvalidParameterValueException'):
            logger.fatal('bad configuration: {}'.format(text))
            return None, 2
        raise


def _spin(node, executor, signals) -> int:
    from rclpy.executors import ExternalShutdownException
    next_check = 0.0
    while not signals.stop.is_set():
        try:
            executor.spin_once(timeout_sec=0.1)
        except ExternalShutdownException:
            return 0
        now = time.monotonic()
        if now >= next_check:
            next_check = now + 0.25
            reason = node.health_check()
            if reason:
                node.get_logger().fatal(reason)
                return 1
    return 0


def _teardown(node, executor, signals) -> None:
    signals.teardown_since = time.monotonic()
    node.shutting_down = True
    try:
        node.close()
    except Exception as exc:  # noqa: B902 - a failing close must not hide the exit
        node.get_logger().warning('closing failed: {}'.format(first_line(exc)))
    executor.shutdown(timeout_sec=1.0)
    node.destroy_node()


def run_node(factory: Callable[[], object], name: str, args: Optional[List[str]] = None,
             threads: int = 1) -> int:
    """
    Create (``factory()``), spin and tear down one node; return the process exit code.

    Start-up failures (ConfigError: bad parameter, exit 2; StartupError: model or camera
    could not be set up, exit 1) are one FATAL line naming the cause, with no traceback. A
    node whose :meth:`DepthRosNode.health_check` reports a reason ends with that FATAL line
    (exit 1). SIGINT and SIGTERM stop the node in order: its threads first, then the
    executor and the context; further signals during that are ignored; the exit code is 0.
    Python log records of the library reach the node's logger (/rosout).
    """
    import rclpy
    from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
    problem = check_params_files(list(sys.argv[1:] if args is None else args))
    if problem:
        sys.stderr.write('[FATAL] [{}]: bad arguments: {}\n'.format(name, problem))
        return 2
    with _Signals() as signals:
        node, code = None, 0
        try:
            signals.interrupting = not signals.stop.is_set()
            try:
                compat.init(args)   # without rclpy's signal handlers: ours
            except Exception as exc:  # noqa: B902 - a bad --params-file, malformed --ros-args
                signals.interrupting = False
                sys.stderr.write('[FATAL] [{}]: bad arguments: {}\n'.format(
                    name, first_line(exc)))
                return 2
            forwarder = forward_library_logs(rclpy.logging.get_logger(name))
            if signals.interrupting:
                node, code = _construct(factory, name, signals)
        except KeyboardInterrupt:
            pass   # stopped during start-up: nothing (or only the context) to tear down
        signals.interrupting = False
        if node is not None:
            forwarder._logger = node.get_logger()
            # Callbacks only hand frames over (the work runs in the nodes' worker threads),
            # and rclpy's MultiThreadedExecutor costs far more Python time per message than
            # it saves.
            executor = SingleThreadedExecutor() if threads <= 1 else \
                MultiThreadedExecutor(num_threads=threads)
            executor.add_node(node)
            try:
                code = _spin(node, executor, signals)
            finally:
                _teardown(node, executor, signals)
        compat.shutdown()
    return code


def main_for(factory: Callable[[], object], name: str):
    """Make a console-script ``main`` running the node that ``factory()`` makes."""
    def main(args: Optional[List[str]] = None) -> None:
        sys.exit(run_node(factory, name, args))
    return main

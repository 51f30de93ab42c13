"""
What every node of ours does the same way with rclpy: parameters, QoS, diagnostics, main().

:class:`DepthRosNode` declares the node's parameters from their specs with ParameterDescriptors
(rclpy enforces type, range and read-only), adds the checks a descriptor cannot express,
counts and logs bad frames (rate-limited), publishes quietly while the process shuts down, and
lets any thread end the process with one FATAL line. :func:`run_node` creates, spins and tears
a node down: start-up failures are one FATAL line, a stop signal an ordered shutdown, exit 0.
"""
from __future__ import annotations

import collections
import math
import signal
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

from depth_ros.nodes_core.middleware import missing_profile_note
from depth_ros.nodes_core.params import choice_error, ConfigError, given_names, \
    node_usage, params_file_error, start_up_type_error, StartupError, stray_arguments, \
    type_error, undeclared_error, unknown_lines
from depth_ros.nodes_core.workers import forward_debug_if_asked, forward_library_logs, \
    keep_large_blocks, node_logger_name, ThrottledLog
from depth_ros.ros import compat
from depth_ros.util import describe_error
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException, \
    ParameterNotDeclaredException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy


def sensor_qos(reliability: str = 'best_effort', depth: int = 2):
    """
    Return the QoS of the image, depth and cloud topics: keep-last ``depth``, volatile.

    best_effort is the sensor-data profile: a late frame is worth nothing. A best-effort
    publisher does not match a reliable subscriber (RViz on Humble), hence the parameter.
    """
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
    status.values = [KeyValue(key=str(k), value='{:.6g}'.format(v) if isinstance(v, float)
                              else str(v)) for k, v in values.items()]
    return status


# An integer range without one of its bounds ends at the int64 type's own limit (rclpy and
# rcl hold integer parameters as int64): no value the type can hold is refused.
INT64_MIN, INT64_MAX = -2 ** 63, 2 ** 63 - 1


def _descriptor(spec):
    """
    Return the ParameterDescriptor of ``spec``: description, read-only, choices, range.

    A one-sided range (``low`` or ``high`` only) is open on the other side: -inf or inf for a
    double, which ``ros2 param describe`` prints as ``Max value: inf`` (it printed 1e+300), and
    the int64 limit for an integer. rclpy accepts infinite bounds (Humble and Kilted), refuses
    a value beyond the given one by its own text, and the node's validators refuse a value of
    inf where the aligner needs a finite number.
    """
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
    desc = ParameterDescriptor(name=spec.name, description=spec.description,
                               read_only=spec.read_only)
    if spec.choices:
        desc.additional_constraints = 'one of: ' + ', '.join(spec.choices)
    if spec.low is None and spec.high is None:
        return desc
    if type(spec.default) is int:
        desc.integer_range = [IntegerRange(
            from_value=INT64_MIN if spec.low is None else int(spec.low),
            to_value=INT64_MAX if spec.high is None else int(spec.high), step=1)]
    elif type(spec.default) is float:
        desc.floating_point_range = [FloatingPointRange(
            from_value=-math.inf if spec.low is None else float(spec.low),
            to_value=math.inf if spec.high is None else float(spec.high), step=0.0)]
    return desc


class UndeclaredParameters(ParameterNotDeclaredException):
    """rclpy's refusal of undeclared names, whose text (``str()``) names them, with a hint."""

    def __init__(self, names: List[str], text: str):
        super().__init__(names)
        self.text = text

    def __str__(self) -> str:
        return self.text


class LocalFrame(object):
    """A frame handed over in-process: zed_node's Frame (arrays by reference) and its header."""

    __slots__ = ('frame', 'header')

    def __init__(self, frame, header):
        self.frame, self.header = frame, header


class DepthRosNode(Node):
    """
    The base of our nodes: parameters, error counters, quiet publishing, fatal exits.

    :param name: node name.
    :param specs: the node's :class:`~depth_ros.nodes_core.params.Param` list, declared here.
    :param validate: cross-parameter check, ``f(values) -> None | reason``, at start-up and
        on every change.
    :param apply: called with ``{name: value}`` once a runtime change is set (``self.cfg``
        holds the new values by then).

    A node overrides :meth:`diagnostics`: its statuses go on /diagnostics every
    ``diagnostics_period_s``.
    """

    def __init__(self, name: str, specs: Sequence,
                 validate: Optional[Callable[[Dict[str, object]], Optional[str]]] = None,
                 apply: Optional[Callable[[Dict[str, object]], None]] = None, **kwargs):
        super().__init__(name, **kwargs)
        self.specs = collections.OrderedDict((s.name, s) for s in specs)
        self._validate = validate
        self._apply = apply
        self.cfg = self._declare()
        if compat.has_post_set_parameters_callback(self):
            self.add_on_set_parameters_callback(self._check_change)
            self.add_post_set_parameters_callback(self._take_change)
        else:   # Humble: the on-set callback is the only one; take the change once checked
            self.add_on_set_parameters_callback(self._check_and_take_change)
        self.log = ThrottledLog(self.get_logger())
        self.bad = collections.Counter()      # dropped frames by kind
        self.shutting_down = False
        self.fatal_reason = None
        from diagnostic_msgs.msg import DiagnosticArray
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        # composed.share_diagnostics_timers may replace it by one timer for several nodes.
        self.diagnostics_timer = self.create_timer(self.cfg['diagnostics_period_s'],
                                                   self.publish_diagnostics)

    def diagnostics(self) -> List:
        """Return the node's DiagnosticStatus list (diagnostic_status); overridden by nodes."""
        return []

    def make_status(self, task: str, level: str, message: str, values: Dict[str, object]):
        """
        Return this node's DiagnosticStatus for ``task``, named ``<namespace/node>: <task>``.

        The name carries the namespace, so that two instances (the Marigold graph's
        /marigold/alignment_node beside /alignment_node, two cameras) are two rows in
        rqt_robot_monitor and the diagnostic aggregator, which key statuses by name. The
        hardware id is the fully qualified node name.
        """
        fqn = self.get_fully_qualified_name()
        return diagnostic_status('{}: {}'.format(fqn.lstrip('/'), task), fqn, level, message,
                                 values)

    def publish_diagnostics(self) -> None:
        """Publish :meth:`diagnostics` on /diagnostics (the diagnostics timer's callback)."""
        from diagnostic_msgs.msg import DiagnosticArray
        msg = DiagnosticArray(status=list(self.diagnostics()))
        msg.header.stamp = self.get_clock().now().to_msg()
        self.publish(self._diagnostics_pub, msg)

    # ------------------------------------------------------------------ parameters
    def _declare(self) -> Dict[str, object]:
        values = {}
        for spec in self.specs.values():
            try:
                param = self.declare_parameter(spec.name, spec.default, _descriptor(spec))
            except (InvalidParameterTypeException, InvalidParameterValueException) as exc:
                # rclpy's type and range checks: its text names the parameter and the value
                # (args[0]: Humble's str() of this exception is a tuple), and how to write an
                # integer given for a double.
                raise ConfigError(start_up_type_error(exc.args[0])) from None
            values[spec.name] = param.value
        reason = self._change_error(values, values)
        if reason:
            raise ConfigError(reason)
        return values

    def _apply_descriptor(self, parameter, descriptor=None, check_read_only=True):
        # rclpy's type check says "Wrong parameter type, expected '3' got '2'" on Python 3.11
        # (the enums' numbers), without the parameter's name: `ros2 param set ... max_depth 25`
        # (an integer for a double) is the first change a user tries. Same check, our words.
        result = super()._apply_descriptor(parameter, descriptor, check_read_only)
        if not result.successful and result.reason.startswith('Wrong parameter type') and \
                parameter.name in self.specs:
            result.reason = type_error(self.specs[parameter.name], parameter.value)
        return result

    def _check_undeclared_parameters(self, parameter_list):
        # `ros2 param set /alignment_node cloud_strid 4` answered "('Invalid access to undeclared
        # parameter(s)', [])": the parameter service sends str() of rclpy's exception, a tuple
        # whose list of names is always empty (Humble and Kilted alike). Same refusal, with
        # the names and a hint.
        names = [p.name for p in parameter_list
                 if getattr(p, 'name', None) is not None and not self.has_parameter(p.name)]
        if names and not self._allow_undeclared_parameters:
            raise UndeclaredParameters(names, undeclared_error(
                names, self.get_fully_qualified_name(), list(getattr(self, 'specs', ()))))
        super()._check_undeclared_parameters(parameter_list)

    def _change_error(self, changed: Dict[str, object], merged: Dict[str, object]):
        for name, value in changed.items():
            reason = choice_error(self.specs[name], value)
            if reason:
                return reason
        return self._validate(merged) if self._validate is not None else None

    def _own(self, parameters) -> Dict[str, object]:
        # use_sim_time and the like are rclpy's, not ours.
        return {p.name: p.value for p in parameters if p.name in self.specs}

    def _check_change(self, parameters):
        """On-set callback: rclpy checked type, range and read-only; check the rest."""
        from rcl_interfaces.msg import SetParametersResult
        changed = self._own(parameters)
        reason = self._change_error(changed, dict(self.cfg, **changed)) if changed else None
        return SetParametersResult(successful=not reason, reason=reason or '')

    def _take_change(self, parameters) -> None:
        """Post-set callback (rclpy >= 3.7): the change is set; apply it."""
        changed = self._own(parameters)
        self.cfg.update(changed)
        if self._apply is not None and changed:
            self._apply(changed)

    def _check_and_take_change(self, parameters):
        result = self._check_change(parameters)
        if result.successful:
            self._take_change(parameters)
        return result

    # ------------------------------------------------------------------ frames and faults
    def error(self, kind: str, text: str) -> None:
        """Count a bad frame of ``kind`` and log ``text`` (rate-limited per kind)."""
        self.bad[kind] += 1
        if not self.shutting_down:
            self.log.error(kind, text, self.cfg['log_throttle_s'])

    def warn(self, kind: str, text: str) -> None:
        """Log a rate-limited warning of ``kind`` (not counted)."""
        if not self.shutting_down:
            self.log.warn(kind, text, self.cfg['log_throttle_s'])

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
class Signals(object):
    """
    SIGINT/SIGTERM -> a stop flag, in place of rclpy's signal handlers (compat.init).

    Measured with rclpy's own handlers (``rclpy.init`` with its default SignalHandlerOptions)
    on Humble (rclpy 3.3.15) and Kilted (rclpy 9.1.2), both alike; test_faults.py holds each:

    - a SIGTERM before or during ``rclpy.init`` meets the default action: exit -15
      (``test_a_signal_during_start_up_is_a_clean_exit_0[init-SIGTERM]``);
    - a SIGTERM during the node's constructor (a model load, a camera) shuts the context down
      without interrupting Python: the load goes on, then the executor fails on the dead
      context with a traceback (``...[constructor-SIGTERM]``, ``...[end_of_constructor-SIGTERM]``);
    - a second SIGINT (a user's repeated Ctrl-C; `ros2 launch` forwards one after the
      terminal's) raises KeyboardInterrupt inside the teardown: a traceback and exit -2
      (``test_repeated_ctrl_c_is_quiet_and_exits_0``,
      ``test_sigints_until_the_node_has_exited_still_give_exit_0``).

    Here a signal sets the stop flag, which ends the spin loop; run_node stops the node's
    threads, then the context. While ``interrupting`` (start-up: rclpy.init and the
    constructor) a signal also raises KeyboardInterrupt, so that a slow start-up is cut short.

    That KeyboardInterrupt, once caught, must not end the process by SIGINT: CPython (3.8 to
    3.11 at least) notes a KeyboardInterrupt that leaves code run from a string (``exec`` and
    ``eval`` of source: ``collections.namedtuple``, dataclasses, empy's ``evalFunc``, which
    Humble's message imports load during the constructor) as unhandled, even where it is
    caught later, and a ``python -m`` run then kills itself with SIGINT after a clean exit:
    exit -2 with no word (1 run in 60 of a SIGTERM right after the node appeared, Humble).
    The interpreter's next run of string code clears that note, so ``__exit__`` runs one
    after any KeyboardInterrupt it raised was caught
    (``test_faults.py::test_a_signal_during_start_up_is_a_clean_exit_0[string_code-*]``).
    """

    def __init__(self):
        self.stop = threading.Event()
        self.count = 0
        self.interrupting = False
        self.raised = False     # whether a signal raised KeyboardInterrupt
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
            self.raised = True
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            # Asked to stop: a late signal must not undo the clean exit. A terminal's Ctrl-C
            # reaches the node and `ros2 launch` at once, and launch forwards another SIGINT
            # a moment later. While Python finalizes (the DDS participant goes away then:
            # 0.1 s and more) it puts the default actions back, and that SIGINT ended the
            # node with exit -2 on Humble; an ignored signal stays ignored.
            signal.signal(sig, signal.SIG_IGN if self.count else old)
        if self.raised:
            # Clear CPython's note of an unhandled one (the class docstring); one still
            # propagating is noted again where it leaves the module.
            exec('pass', {})  # noqa: S102 - a constant: runs string code, nothing else
        return False


def _construct(factory, name, signals) -> tuple:
    """Return (node, exit code): start-up failures are one FATAL line, Ctrl-C is quiet."""
    import rclpy
    logger = rclpy.logging.get_logger(name)
    node = None
    try:
        node = factory()
        return node, 0
    except KeyboardInterrupt:
        # Either inside the constructor (no node: nothing to tear down) or in the instant
        # after it (a node, and signals.stop is set: the spin loop ends at once).
        return node, 0
    except ConfigError as exc:
        logger.fatal('bad configuration: {}'.format(exc))
        return None, 2
    except StartupError as exc:
        logger.fatal(str(exc))
        return None, 1
    finally:
        signals.interrupting = False


# How often the spin loop checks the nodes' health and the stop flag when nothing else wakes
# it. Each spin_once builds rclpy's wait set of every node (~1.1 ms of CPU for depth_node and
# alignment_node together, measured on x86): woken every 0.1 s, the idle loop of the composed
# process took 13 ms of CPU a second, more than 1 ms per cloud at 10 fps.
SPIN_PERIOD_S = 0.25


def spin_nodes(nodes, executor, signals) -> int:
    """Spin until a stop signal (0) or a node's health check gives a reason (FATAL line, 1)."""
    from rclpy.executors import ExternalShutdownException
    next_check = 0.0
    while not signals.stop.is_set():
        try:
            executor.spin_once(timeout_sec=SPIN_PERIOD_S)
        except ExternalShutdownException:
            return 0
        now = time.monotonic()
        if now >= next_check:
            next_check = now + SPIN_PERIOD_S
            for node in nodes:
                reason = node.health_check()
                if reason:
                    node.get_logger().fatal(reason)
                    return 1
    return 0


# A process still tearing down this long after its stop writes every thread's stack to stderr
# (faulthandler's watchdog, a C thread: it fires where C code holds the GIL too, as rclpy's
# shutdown does). Our teardown is bounded by design (a worker's job 2 s, the executor 1 s);
# ros2 launch escalates to SIGTERM 5 s after its SIGINT, and SIGKILL 10 s later, with no word
# of where the process was.
TEARDOWN_DUMP_S = 4.5


def watch_teardown() -> bool:
    """
    Arm a one-shot dump of every thread's stack, ``TEARDOWN_DUMP_S`` from now; return if armed.

    :func:`teardown` arms it: the node processes' own entry points (run_node, composed.run)
    are its callers. The process has one such watchdog, and the interpreter's exit cancels it.
    Not armed without a stderr that has a file descriptor.
    """
    import faulthandler
    try:
        faulthandler.dump_traceback_later(TEARDOWN_DUMP_S, exit=False, file=sys.stderr)
    except (AttributeError, OSError, ValueError):    # no stderr, or none with a descriptor
        return False
    return True


def teardown(nodes, executor) -> None:
    """
    Stop the nodes' threads in order (producers first), then the executor and the nodes.

    Watched from here to the process's exit (:func:`watch_teardown`).
    """
    watch_teardown()
    for node in nodes:
        node.shutting_down = True
    for node in nodes:
        try:
            node.close()
        except Exception as exc:  # noqa: B902 - a failing close must not hide the exit
            node.get_logger().warning('closing failed: {}'.format(describe_error(exc)))
    if executor is not None:
        executor.shutdown(timeout_sec=1.0)
    for node in nodes:
        node.destroy_node()


def run_node(factory: Callable[[], object], name: str, args: Optional[List[str]] = None) -> int:
    """
    Create (``factory()``), spin and tear down one node; return the process exit code.

    Start-up failures (ConfigError: bad parameter, exit 2; StartupError: model or camera
    could not be set up, exit 1) are one FATAL line naming the cause, with no traceback.
    Parameter names the node was given but does not declare are one warning each. A node
    whose :meth:`DepthRosNode.health_check` reports a reason ends with that FATAL line (exit
    1). SIGINT and SIGTERM stop the node in order: its threads first, then the executor and
    the context; further signals are ignored; the exit code is 0. Python log records of the
    library reach the node's logger (/rosout).
    """
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    argv = list(sys.argv if args is None else args)
    # The stop signals are ours from here: a launch that stops while this node still reads
    # its parameter files (another node failed at once) is a quiet exit 0, not a traceback.
    with Signals() as signals:
        stray = stray_arguments(argv)
        if stray and stray[0] in ('-h', '--help'):
            from depth_ros.nodes_core.config import NODE_PARAMS
            sys.stdout.write(node_usage(name, NODE_PARAMS.get(name, ())))
            return 0
        problem = params_file_error(argv) or stray and (
            'unexpected argument {!r}: a node takes ROS arguments only, after --ros-args (`{} '
            '--ros-args -p name:=value`; --help lists its parameters)'.format(stray[0], name))
        if problem:
            sys.stderr.write('[FATAL] [{}]: bad arguments: {}\n'.format(name, problem))
            return 2
        try:
            malloc = keep_large_blocks()    # before the node's first frame
        except ValueError as exc:
            sys.stderr.write('[FATAL] [{}]: {}\n'.format(name, exc))
            return 2
        node, code = None, 0
        try:
            signals.interrupting = not signals.stop.is_set()
            try:
                compat.init(args)
            except RuntimeError as exc:   # rclpy's RCLError: malformed --ros-args
                signals.interrupting = False
                sys.stderr.write('[FATAL] [{}]: bad arguments: {}\n'.format(
                    name, describe_error(exc)))
                return 2
            # The library's records of the start-up (the model search, an engine build) go
            # to the node's logger as rcl will name it, debug ones too where it logs debug.
            forwarder = forward_library_logs(rclpy.logging.get_logger(
                node_logger_name(argv, name)))
            forward_debug_if_asked(forwarder, [forwarder.logger])
            forwarder.logger.debug(malloc)
            if signals.interrupting:
                node, code = _construct(factory, name, signals)
        except KeyboardInterrupt:
            pass   # stopped during start-up: nothing (or only the context) to tear down
        signals.interrupting = False
        if node is not None:
            forwarder.logger = node.get_logger()
            forward_debug_if_asked(forwarder, [node.get_logger()])
            if isinstance(node, DepthRosNode):
                for line in unknown_lines(given_names(argv, node.get_fully_qualified_name()),
                                          node.has_parameter, list(node.specs)):
                    node.get_logger().warning(line)
            note = missing_profile_note()   # run by hand: the launch file sets the profile
            if note:
                node.get_logger().warning(note)
            # Callbacks only hand frames over (the work runs in the nodes' worker threads),
            # and rclpy's MultiThreadedExecutor costs far more Python time per message than
            # it saves.
            executor = SingleThreadedExecutor()
            executor.add_node(node)
            try:
                code = spin_nodes([node], executor, signals)
            finally:
                teardown([node], executor)
        compat.shutdown()
    return code


def main_for(factory: Callable[[], object], name: str):
    """Make a console-script ``main`` running the node that ``factory()`` makes."""
    def main(args: Optional[List[str]] = None) -> None:
        sys.exit(run_node(factory, name, args))
    return main

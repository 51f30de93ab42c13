r"""
composed_nodes: our nodes as Node objects in one process, one executor (``composed:=true``).

    composed_nodes --node zed_node --ros-args -r __ns:=/zed --params-file cfg.yaml -- \
        --node depth_node --from zed_node --ros-args --params-file cfg.yaml -- \
        --node alignment_node --from depth_node --ros-args --params-file cfg.yaml --

Each ``--node KIND`` section makes one node (zed_node, depth_node, alignment_node,
marigold_node) with the ROS arguments of its own ``--ros-args ... --`` block as node-local
arguments (rclpy's ``cli_args``): name (``-r __node:=``), namespace, parameter files, ``-p``
and remappings are that node's alone, as in a process of its own. Arguments outside the
sections are global (``--log-level``).

``--from NAME`` wires a node to an earlier one in-process instead of its input topics:

- depth_node ``--from`` a zed_node: the grab thread hands each Frame (image, stereo depth,
  confidence, camera: numpy arrays) by reference into depth_node's newest-frame slot;
- alignment_node ``--from`` a depth_node: depth_node's inference worker hands (frame,
  disparity) by reference into alignment_node's newest-frame slot. The set is known: nothing is
  paired by stamp, nothing is serialized or copied. When the inference on a frame starts, the
  frame is handed over first, so that alignment_node's worker prepares its stereo side while
  the network runs (only the post-inference part is left after it: ``take_started``);
- marigold_node ``--from`` a zed_node: as depth_node, into its keyframe slot.

Such a node creates no subscription for those inputs, so its producer's topics count outside
readers only: each is built only while one subscribes (RViz, a planner, ``ros2 bag``). Nodes
without ``--from`` subscribe to topics as usual (Marigold's alignment_node: its keyframes come
seconds after their frame and are paired by stamp).

The inference and alignment workers keep their own threads; the single-threaded executor only
runs timers (diagnostics: one timer for the nodes of one period, ``share_diagnostics_timers``),
services and parameter callbacks. Start-up failures are one FATAL
line naming the node (exit 2 or 1, the nodes made so far are torn down), a dead worker or
grab thread of any node ends the process with one FATAL line (exit 1), and Ctrl-C stops the
producers first, then the consumers (exit 0), as :func:`runtime.run_node` does for one node.
"""
from __future__ import annotations

import collections
import sys
import threading
from typing import List, Optional

from depth_ros.nodes_core.middleware import missing_profile_note
from depth_ros.nodes_core.params import ConfigError, given_names, params_file_error, \
    StartupError, unknown_lines
from depth_ros.nodes_core.workers import forward_debug_if_asked, forward_library_logs, \
    keep_large_blocks, node_logger_name
from depth_ros.ros import compat
from depth_ros.ros.runtime import DepthRosNode, Signals, spin_nodes, teardown
from depth_ros.util import describe_error

KINDS = ('zed_node', 'depth_node', 'alignment_node', 'marigold_node')
# (consumer kind, producer kind) wirings that exist in-process.
WIRES = {('depth_node', 'zed_node'), ('marigold_node', 'zed_node'),
         ('alignment_node', 'depth_node')}
USAGE = ('usage: composed_nodes [--ros-args ... --] --node KIND [--from NAME] '
         '[--ros-args ... --] ...  (KIND: {})'.format(' | '.join(KINDS)))

HELP = USAGE + (
    '\n\nOur nodes as Node objects in one process, one executor; --from NAME hands an earlier'
    '\nnode\'s frames to this one by reference (depth_node --from zed_node, alignment_node'
    '\n--from depth_node, marigold_node --from zed_node). Each section\'s --ros-args are that'
    '\nnode\'s alone (name, namespace, parameter files, remappings); the ones before the first'
    '\n--node are the process\'s (--log-level). zed_depth.launch.py runs it (composed:=true);'
    '\neach node\'s parameters: ros2 run depth_ros <node> --help.')


class Section(object):
    """One ``--node`` section: the kind, the producer it is fed by, its node-local arguments."""

    def __init__(self, kind: str):
        self.kind = kind
        self.source = None          # --from NAME
        self.ros_args = []          # ['--ros-args', ..., '--'] (node-local)

    def cli_args(self) -> List[str]:
        """Return the node-local arguments for rclpy (``Node(cli_args=...)``)."""
        return list(self.ros_args)


def parse(argv: List[str]):
    """
    Split ``argv`` (without the program name) into (global arguments, sections).

    :raises ValueError: naming the argument that does not fit the usage.
    """
    glob, sections, i = [], [], 0
    while i < len(argv):
        token = argv[i]
        if token == '--node':
            if i + 1 >= len(argv) or argv[i + 1] not in KINDS:
                raise ValueError('--node needs a kind ({}), got {!r}'.format(
                    ' | '.join(KINDS), argv[i + 1] if i + 1 < len(argv) else None))
            section = Section(argv[i + 1])
            sections.append(section)
            i += 2
            if i + 1 < len(argv) and argv[i] == '--from':
                section.source = argv[i + 1]
                i += 2
            if i < len(argv) and argv[i] == '--ros-args':
                end = argv.index('--', i) if '--' in argv[i:] else len(argv)
                section.ros_args = argv[i:end] + ['--']
                i = end + 1
            continue
        if token == '--ros-args':        # global ROS arguments (launch_ros adds some)
            end = argv.index('--', i) if '--' in argv[i:] else len(argv)
            glob += argv[i:end] + ['--']
            i = end + 1
            continue
        raise ValueError('unexpected argument {!r}; {}'.format(token, USAGE))
    if not sections:
        raise ValueError('no --node section; ' + USAGE)
    return glob, sections


def _classes():
    from depth_ros.ros.alignment_node import AlignmentNode
    from depth_ros.ros.depth_node import DepthNode
    from depth_ros.ros.zed_node import ZedNode
    classes = {'zed_node': ZedNode, 'depth_node': DepthNode, 'alignment_node': AlignmentNode}
    try:
        from depth_ros.ros.marigold_node import MarigoldNode
        classes['marigold_node'] = MarigoldNode
    except ImportError:     # pragma: no cover - marigold_node imports without diffusers
        pass
    return classes


def _make(section: Section, classes):
    if section.kind not in classes:
        raise StartupError('{} cannot be imported here'.format(section.kind))
    kwargs = {'cli_args': section.cli_args()}
    if section.source is not None:
        kwargs['local_input'] = True
    return classes[section.kind](**kwargs)


def _wire(nodes, sections) -> None:
    """Connect each ``--from`` node to its producer (by node name, made earlier)."""
    made = {}
    for node, section in zip(nodes, sections):
        if section.source is not None:
            producer = made.get(section.source)
            if producer is None:
                raise ConfigError('--from {}: no node of that name comes before {} (made: '
                                  '{})'.format(section.source, node.get_name(),
                                               ', '.join(sorted(made)) or 'none'))
            pair = (section.kind, producer[1].kind)
            if pair not in WIRES:
                raise ConfigError('--from {}: a {} cannot be fed by a {} in-process'.format(
                    section.source, section.kind, producer[1].kind))
            if section.kind == 'alignment_node':
                # The set after inference; the frame when its inference starts (prepared
                # meanwhile: AlignmentNode.take_started).
                producer[0].hand_over_to(node.take_set, started=node.take_started)
            else:
                producer[0].hand_over_to(node.take_frame)
        made[node.get_name()] = (node, section)


class ThreadLoggers(object):
    """
    The node logger for a library log record, by the thread that logs it.

    One process, several nodes: a record of ``depth_ros.*`` (Python logging, forwarded to
    /rosout) goes to the node that started the thread it comes from (its worker, its grab
    thread), else to ``default``: the node being made during start-up, composed_nodes after.
    """

    def __init__(self, default):
        self.default = default
        self.by_thread = {}

    def own(self, threads, logger) -> None:
        """Attribute the records of ``threads`` to ``logger``."""
        for thread in threads:
            self.by_thread[thread] = logger

    def __getattr__(self, level):
        """Return the chosen logger's method ``level`` (info, warning, ...)."""
        logger = self.by_thread.get(threading.current_thread(), self.default)
        return getattr(logger, level)


def share_diagnostics_timers(nodes) -> int:
    """
    Publish the diagnostics of nodes of one ``diagnostics_period_s`` from one timer.

    Each node's own timer woke the executor at its own phase, and each wake builds rclpy's
    wait set of every node of the process (runtime.SPIN_PERIOD_S): three nodes, three wakes a
    period. Each node still publishes its own message, in the order of the sections. Returns
    the number of timers removed.
    """
    groups = collections.OrderedDict()
    for node in nodes:
        if isinstance(node, DepthRosNode):
            groups.setdefault(node.cfg['diagnostics_period_s'], []).append(node)
    removed = 0
    for period, group in groups.items():
        if len(group) < 2:
            continue
        for node in group:
            node.destroy_timer(node.diagnostics_timer)
            node.diagnostics_timer = None

        def publish(group=group):
            for node in group:
                node.publish_diagnostics()
        group[0].diagnostics_timer = group[0].create_timer(period, publish)
        removed += len(group) - 1
    return removed


def _argument_error(text: str) -> int:
    sys.stderr.write('[FATAL] [composed_nodes]: bad arguments: {}\n'.format(text))
    return 2


def _start(argv, glob, sections, signals, malloc):
    """rclpy.init, then make and wire the nodes; return (nodes, exit code); log ``malloc``."""
    import rclpy
    nodes, code = [], 0
    logger = rclpy.logging.get_logger('composed_nodes')
    try:
        # The node modules (numpy, OpenCV, the messages) before signals interrupt: raised
        # inside an extension's import, KeyboardInterrupt became "ImportError: numpy.core.
        # multiarray failed to import", a traceback; a signal meanwhile only sets the stop flag.
        classes = _classes()
        signals.interrupting = not signals.stop.is_set()
        try:
            compat.init(argv[:1] + glob)
        except RuntimeError as exc:   # rclpy's RCLError: malformed --ros-args
            signals.interrupting = False
            return nodes, _argument_error(describe_error(exc))
        logger.debug(malloc)
        loggers = ThreadLoggers(logger)
        forwarder = forward_library_logs(logger)
        forwarder.logger = loggers
        for section in sections:
            if not signals.interrupting:
                break
            logger = rclpy.logging.get_logger(section.kind)
            # The library's records of its start-up (the model search, an engine build) go to
            # the node's logger as rcl will name it, debug ones too where it logs debug.
            loggers.default = rclpy.logging.get_logger(
                node_logger_name(section.cli_args(), section.kind))
            forward_debug_if_asked(forwarder, [loggers.default])
            before = set(threading.enumerate())
            nodes.append(_make(section, classes))
            loggers.own(set(threading.enumerate()) - before, nodes[-1].get_logger())
            forward_debug_if_asked(forwarder, [nodes[-1].get_logger()])
            loggers.default = nodes[-1].get_logger()
        loggers.default = rclpy.logging.get_logger('composed_nodes')
        if signals.interrupting:
            _wire(nodes, sections)
    except KeyboardInterrupt:
        pass        # stopped during start-up: tear down what was made
    except ConfigError as exc:
        logger.fatal('bad configuration: {}'.format(exc))
        code = 2
    except StartupError as exc:
        logger.fatal(str(exc))
        code = 1
    except RuntimeError as exc:   # rclpy's RCLError: a malformed node-local --ros-args
        logger.fatal('bad arguments: {}'.format(describe_error(exc)))
        code = 2
    finally:
        signals.interrupting = False
    return nodes, code


def _warn_unknown(argv, glob, nodes, sections) -> None:
    for node, section in zip(nodes, sections):
        if isinstance(node, DepthRosNode):
            given = given_names(argv[:1] + glob + section.cli_args(),
                                node.get_fully_qualified_name())
            for line in unknown_lines(given, node.has_parameter, list(node.specs)):
                node.get_logger().warning(line)


def run(args: Optional[List[str]] = None) -> int:
    """Create, wire, spin and tear down the nodes of ``args``; return the exit code."""
    argv = list(sys.argv if args is None else args)
    if argv[1:] in (['-h'], ['--help']):
        sys.stdout.write(HELP + '\n')
        return 0
    # The stop signals are ours from here, as in runtime.run_node: a stop while the
    # parameter files are read is a quiet exit 0, not a traceback.
    with Signals() as signals:
        from rclpy.executors import SingleThreadedExecutor
        try:
            glob, sections = parse(argv[1:])
        except ValueError as exc:
            return _argument_error(str(exc))
        problem = params_file_error(argv)
        if problem:
            return _argument_error(problem)
        try:
            malloc = keep_large_blocks()    # before the nodes' first frame
        except ValueError as exc:
            sys.stderr.write('[FATAL] [composed_nodes]: {}\n'.format(exc))
            return 2
        nodes, code = _start(argv, glob, sections, signals, malloc)
        if code or signals.stop.is_set() or len(nodes) < len(sections):
            if nodes:
                teardown(nodes, None)
            compat.shutdown()
            return code
        _warn_unknown(argv, glob, nodes, sections)
        share_diagnostics_timers(nodes)
        note = missing_profile_note()   # run by hand: the launch file sets the profile
        if note:
            nodes[0].get_logger().warning(note)
        executor = SingleThreadedExecutor()
        for node in nodes:
            executor.add_node(node)
        try:
            code = spin_nodes(nodes, executor, signals)
        finally:
            teardown(nodes, executor)      # producers first: the order of the sections
        compat.shutdown()
    return code


def main(args: Optional[List[str]] = None) -> None:
    """Console script ``composed_nodes``."""
    sys.exit(run(args))


if __name__ == '__main__':
    main()

"""
The nodes' console scripts: a stop signal is handled from the first line of the process.

A node's module imports rclpy, numpy, OpenCV and the node before its ``main`` installs
:class:`depth_ros.ros.runtime.Signals` (0.3 s on the development machine, longer on a Jetson).
A SIGINT or SIGTERM in that window (Ctrl-C right after ``ros2 launch``, or launch stopping the
other nodes when one fails at start-up, as a bad ``params_file`` does) ended the process with
a KeyboardInterrupt traceback (exit -2) or the signal's default action (exit -15). Here the
signal is noted while the module imports, and the process then exits 0 without starting the
node, as a stop during the rest of the start-up does. Once the node is done, stop signals are
ignored while the process exits. Only the standard library is imported.
"""
import importlib
import signal
import sys


def _run(module: str) -> None:
    received = []

    def note(signum, frame):
        received.append(signum)

    old = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        main = importlib.import_module(module).main
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if received:
        sys.exit(0)
    try:
        main()
    finally:
        # The node is done (a start-up FATAL line, or stopped): a stop signal from now on
        # (launch stopping the others as this one exits) must not turn the exit code into
        # -2, or a traceback from an exit handler.
        for sig in old:
            signal.signal(sig, signal.SIG_IGN)


def zed_node() -> None:
    """Console script: depth_ros.ros.zed_node's main."""
    _run('depth_ros.ros.zed_node')


def depth_node() -> None:
    """Console script: depth_ros.ros.depth_node's main."""
    _run('depth_ros.ros.depth_node')


def alignment_node() -> None:
    """Console script: depth_ros.ros.alignment_node's main."""
    _run('depth_ros.ros.alignment_node')


def marigold_node() -> None:
    """Console script: depth_ros.ros.marigold_node's main."""
    _run('depth_ros.ros.marigold_node')


def composed_nodes() -> None:
    """Console script: depth_ros.ros.composed's main."""
    _run('depth_ros.ros.composed')

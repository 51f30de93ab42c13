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

Started by zed_depth.launch.py (``DEPTH_ROS_LAUNCH_PID``, the launch's pid, is then the
parent's), the process asks the kernel for SIGTERM when that parent dies
(``prctl(PR_SET_PDEATHSIG)``, Linux): ``ros2 launch`` killed alone (SIGTERM, as ``docker stop``
or ``kill`` send it: launch has no Python handler for it and dies at once; or SIGKILL) left the
nodes running, orphans on the graph. They now stop as on Ctrl-C, exit 0. Where the parent is
not the launch (a ``prefix`` such as gdb between them, ``ros2 run``), nothing is asked; where
the launch died before the request, the process exits 0 without starting the node.

OpenCV's own thread pool is off in our node processes unless the environment asks for it
(``OPENCV_FOR_THREADS_NUM``, OpenCV's variable, set to 1 when absent or empty, then applied
with ``cv2.setNumThreads`` as well: see :func:`default_opencv_threads`).
"""
import ctypes
import importlib
import os
import signal
import sys

LAUNCH_PID = 'DEPTH_ROS_LAUNCH_PID'
PR_SET_PDEATHSIG = 1    # <linux/prctl.h>
OPENCV_THREADS = 'OPENCV_FOR_THREADS_NUM'   # OpenCV's default thread count (3.4+, 4.5.4 too)
MAX_OPENCV_THREADS = 1024   # more is a typo, not a machine


def default_opencv_threads(environ=None) -> str:
    """
    Run OpenCV's calls on the calling thread: ``OPENCV_FOR_THREADS_NUM=1`` unless it is set.

    Our nodes run their work in threads of their own (grab, inference, alignment; composed,
    all three in one process), so OpenCV's pool only adds threads that wake, spin and sleep
    around each parallel call: at 1280x720 on 2 cores the pool cost more CPU than it saved
    (docs/ros.md, "What composed still did twice, OpenCV's pool"). The outputs are the same
    for any thread count. Set the variable (e.g. ``OPENCV_FOR_THREADS_NUM=0``: OpenCV's
    default, one thread per core) to give OpenCV its pool back. Must run before OpenCV is
    imported; returns the value in force. An empty value counts as absent (OpenCV's import
    fails on it: ``cv2.error: stoull``); one that is not a whole number from 0 to
    ``MAX_OPENCV_THREADS`` (1024) raises ValueError naming the variable and its value
    (OpenCV's import would fail on it too, or overflow its parser).
    """
    environ = os.environ if environ is None else environ
    value = environ.get(OPENCV_THREADS, '').strip()
    if not value:
        value = '1'
    elif not (value.isascii() and value.isdigit()) or int(value) > MAX_OPENCV_THREADS:
        # '²' is a digit int() refuses; a huge count overflows OpenCV's parser (stoull).
        raise ValueError('{}={!r} is not a whole number of threads from 0 to {} (1, our '
                         'default: OpenCV on the calling thread; 0: one per core)'.format(
                             OPENCV_THREADS, environ[OPENCV_THREADS], MAX_OPENCV_THREADS))
    environ[OPENCV_THREADS] = value
    return value


def apply_opencv_threads(value: str) -> None:
    """
    Give OpenCV the thread count ``value`` (``default_opencv_threads``'s), importing it.

    The variable is read by OpenCV's own pool (its pthreads build, the PyPI wheels'); an
    OpenCV built with TBB or OpenMP (some JetPack and distribution builds) may not read it,
    and ``cv2.setNumThreads`` works for every build. 0 leaves OpenCV's default (its
    ``setNumThreads(0)`` would mean no threads, not the default). Imported here: composed's
    module does not import OpenCV (its nodes do, once built), the separate nodes' do.
    """
    count = int(value)
    if count <= 0:
        return
    try:
        import cv2
    except ImportError:     # no OpenCV: nothing to give the count to
        return
    cv2.setNumThreads(count)


def stop_with_launch(environ=None) -> bool:
    """
    Ask for SIGTERM when the launch that started this process dies; False if it is gone.

    Only when ``DEPTH_ROS_LAUNCH_PID`` names this process's parent; the parent is checked
    again after the request, which covers a launch that died in between (this process was
    then handed to another parent, and no signal will come).
    """
    environ = os.environ if environ is None else environ
    try:
        launch = int(environ.get(LAUNCH_PID, ''))
    except ValueError:
        return True
    if os.getppid() != launch:
        # A wrapper between us (not ours to watch), or the launch is already gone.
        return _alive(launch)
    if not sys.platform.startswith('linux'):
        return True
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            return True
    except (OSError, AttributeError):   # no prctl: as before
        return True
    return os.getppid() == launch


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:     # another user's process: it exists
        return True
    return True


def _run(module: str) -> None:
    received = []

    def note(signum, frame):
        received.append(signum)

    old = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        threads = default_opencv_threads()
    except ValueError as exc:
        name = module.rsplit('.', 1)[-1]
        sys.stderr.write('[FATAL] [{}]: {}\n'.format(
            'composed_nodes' if name == 'composed' else name, exc))
        sys.exit(2)     # a configuration error, as the nodes' own (exit 2)
    if not stop_with_launch():
        sys.exit(0)     # the launch is gone: a stop, as its SIGTERM would have been
    try:
        main = importlib.import_module(module).main
        apply_opencv_threads(threads)
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

"""
Support for the tests that run the launch file for real (launch, launch_ros, launch_pytest).

- :data:`LAUNCH_STACK` / :data:`MISSING`: whether the launch stack is importable, and the skip
  reason when it is not.
- :func:`tool`: the ``ros2`` or ``colcon`` command of this environment.
- :func:`overlay_environment`: the environment in which ``depth_ros`` is an installed ROS
  package (``ros2 launch`` finds its executables in ``lib/depth_ros``): the current one when it
  already is (``colcon test``, a sourced overlay), else a ``colcon build`` of this checkout in a
  temporary workspace on top of the active environment.
- :class:`LaunchWatch`: event handlers to add to a launch description, which record process
  output, exits and the launch's own errors, so that a test waiting for data fails at once,
  with the launch's error, when an action fails (instead of waiting out its timeout).
"""
import collections
import logging
import os
import shutil
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

try:
    import launch  # noqa: F401
    import launch_pytest  # noqa: F401
    import launch_ros  # noqa: F401
    LAUNCH_STACK = True
    MISSING = ''
except ImportError as exc:
    LAUNCH_STACK = False
    MISSING = ('the ROS 2 launch stack is not installed ({}): `make test` installs it from '
               '../shared/ros2-launch-stack when that folder exists; a ROS 2 install provides '
               'it otherwise'.format(exc))


def _installed_prefix():
    try:
        from ament_index_python.packages import get_package_prefix
        prefix = get_package_prefix('depth_ros')
    except Exception:  # noqa: B902 - not on AMENT_PREFIX_PATH
        return None
    return prefix if os.path.exists(os.path.join(prefix, 'lib', 'depth_ros', 'zed_node')) \
        else None


def _underlay(env):
    # The PyPI ROS wheels live in this interpreter's prefix (share/ament_index, lib): the
    # underlay of the overlay, as a ROS install's /opt/ros/<distro> would be.
    paths = [p for p in env.get('AMENT_PREFIX_PATH', '').split(os.pathsep) if p]
    if sys.prefix not in paths and os.path.isdir(os.path.join(sys.prefix, 'share',
                                                              'ament_index')):
        paths.append(sys.prefix)
    return os.pathsep.join(paths)


def tool(name):
    """
    Return the path of a ROS command-line program: ``ros2`` or ``colcon``.

    Next to this interpreter where it is there (a venv with the PyPI wheels and the launch
    stack, or colcon installed for this Python), else the one on PATH (a sourced ROS install:
    /opt/ros/<distro>/bin/ros2).
    """
    beside = os.path.join(os.path.dirname(sys.executable), name)
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which(name) or beside


def colcon_build(workspace, env=None, timeout=300):
    """``colcon build`` of this checkout in ``workspace``/src/depth_ros; return the process."""
    src = os.path.join(workspace, 'src')
    os.makedirs(src, exist_ok=True)
    link = os.path.join(src, 'depth_ros')
    if not os.path.exists(link):
        os.symlink(ROOT, link)
    env = dict(os.environ if env is None else env)
    env['AMENT_PREFIX_PATH'] = _underlay(env)
    from conftest import run_bounded
    return run_bounded([tool('colcon'), 'build', '--packages-select', 'depth_ros'], timeout,
                       cwd=workspace, env=env)


def sourced_environment(workspace, env=None):
    """Return the environment after ``source install/setup.bash`` in ``workspace``."""
    env = dict(os.environ if env is None else env)
    env['AMENT_PREFIX_PATH'] = _underlay(env)
    out = subprocess.run(['bash', '-c', 'source install/setup.bash && env -0'], cwd=workspace,
                         env=env, stdout=subprocess.PIPE, check=True, timeout=60)
    pairs = [item.split('=', 1) for item in out.stdout.decode().split('\0') if '=' in item]
    return dict(pairs)


def overlay_environment(workspace):
    """Return (environment with depth_ros installed, how it was made)."""
    if _installed_prefix():
        env = dict(os.environ)
        env['AMENT_PREFIX_PATH'] = _underlay(env)
        return env, 'the installed depth_ros'
    built = colcon_build(workspace)
    if built.returncode != 0:
        raise RuntimeError('colcon build failed:\n' + built.stdout.decode()[-3000:])
    return sourced_environment(workspace), 'a colcon build in {}'.format(workspace)


class _Records(logging.Handler):
    def __init__(self, sink):
        super().__init__(logging.INFO)
        self.sink = sink

    def emit(self, record):
        self.sink.append('[{}] [{}]: {}'.format(record.levelname, record.name,
                                                record.getMessage()))


class LaunchWatch(object):
    """Output, exits and errors of one launch, for fast and readable failures."""

    def __init__(self):
        self.lock = threading.Lock()
        self.output = collections.defaultdict(list)    # process name -> lines
        self.exits = []                                 # (process name, return code)
        self.started = []                               # process names, as launch names them
        self.shutdown_reason = None
        self.launch_log = []                            # lines of the launch's own logger
        self._handler = _Records(self.launch_log)
        logging.getLogger('launch').addHandler(self._handler)

    def actions(self):
        """Event handlers to put in the launch description, before the include."""
        from launch.actions import RegisterEventHandler
        from launch.event_handlers import OnProcessExit, OnProcessIO, OnProcessStart, \
            OnShutdown
        return [RegisterEventHandler(OnProcessStart(on_start=self._start)),
                RegisterEventHandler(OnProcessIO(on_stdout=self._io, on_stderr=self._io)),
                RegisterEventHandler(OnProcessExit(on_exit=self._exit)),
                RegisterEventHandler(OnShutdown(on_shutdown=self._shutdown))]

    def _io(self, event):
        text = event.text.decode('utf-8', 'replace')
        with self.lock:
            self.output[event.process_name].extend(text.splitlines())

    def _start(self, event, context):
        with self.lock:
            self.started.append(event.action.name)

    def _exit(self, event, context):
        with self.lock:
            self.exits.append((event.action.name, event.returncode))

    def _shutdown(self, event, context):
        with self.lock:
            if self.shutdown_reason is None:
                self.shutdown_reason = event.reason

    def close(self):
        """Detach from the launch logger."""
        logging.getLogger('launch').removeHandler(self._handler)

    def lines(self, process=None):
        """Return what the processes (named ``process``* when given) printed, line by line."""
        with self.lock:
            return [line for name, lines in sorted(self.output.items())
                    if process is None or name.startswith(process) for line in lines]

    def failure(self, allowed_exits=()):
        """Return why the launch is broken (an action failed, a process died), or ''."""
        with self.lock:
            errors = [line for line in self.launch_log if line.startswith('[ERROR]')]
            exits = [(n, c) for n, c in self.exits if not n.startswith(tuple(allowed_exits))]
            reason = self.shutdown_reason
        if errors:
            return 'the launch failed: ' + ' | '.join(errors)
        if exits:
            return 'processes exited: {}'.format(exits)
        if reason is not None:
            return 'the launch shut down: {}'.format(reason)
        return ''

    def report(self):
        """Return everything recorded, for an assertion message."""
        with self.lock:
            parts = ['launch: ' + line for line in self.launch_log]
            for name, lines in sorted(self.output.items()):
                parts += ['{}: {}'.format(name, line) for line in lines[-40:]]
            parts.append('exits: {}; shutdown: {}'.format(self.exits, self.shutdown_reason))
        return '\n'.join(parts)

    def wait_for(self, predicate, timeout, what, allowed_exits=()):
        """Poll ``predicate`` until true; fail at once (with the launch's error) if it broke."""
        end = time.monotonic() + timeout
        while True:
            if predicate():
                return
            broken = self.failure(allowed_exits)
            if broken:
                raise AssertionError('{} while waiting for {}\n{}'.format(
                    broken, what, self.report()))
            if time.monotonic() > end:
                raise AssertionError('no {} within {:.0f} s\n{}'.format(
                    what, timeout, self.report()))
            time.sleep(0.05)

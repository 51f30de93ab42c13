"""
Shared fixtures for the graph tests: an isolated ROS 2 domain, node processes, a test node.

- Every pytest session claims its own ROS_DOMAIN_ID (a lock per id: _claim_domain) and
  localhost-only discovery, so parallel runs on one machine and other machines on the network
  never see each other's topics, config/fastdds_large_messages.xml, and with Cyclone DDS
  config/cyclonedds_large_messages.xml. Child processes inherit them.
- :class:`NodeProcess` starts a node executable as a separate process with the same params file
  as the launch file, and keeps its output for assertions.
- :class:`Probe` is an rclpy test node on its own context and executor thread that publishes
  frames and collects what comes back.
- No wait is without a bound: :func:`end_process` and :func:`run_bounded` kill what outlives
  its time and fail naming what was awaited, how long, and the end of the process's output.
  pytest-timeout (setup.cfg, or the Makefile's lanes) fails a test that takes too long; the
  watchdog of hang_guard.py ends pytest with every thread's stack where that cannot work (a
  hang in C code, the GIL held), and a pytest that does not exit.
"""
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest

# The session's own bounds (hooks: a watchdog per test and at exit, stacks at SIGTERM).
from hang_guard import (  # noqa: F401,I100 - hooks of this conftest
    pytest_configure, pytest_runtest_protocol, pytest_unconfigure)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, 'config', 'zed_depth.yaml')
FASTDDS_PROFILE = os.path.join(ROOT, 'config', 'fastdds_large_messages.xml')


def _claim_domain():
    """
    Claim a ROS domain id no other pytest session on this machine holds, for this session.

    Ids 1..100 keep Fast DDS ports in range; 0 is the default everyone else uses. Each id is
    an advisory lock on a file in the temp folder, held while this process lives (the file
    descriptor is not inherited by child processes, and the kernel frees the lock at exit, even
    after a kill), tried from the process id on: `make test`'s concurrent lanes, and two
    checkouts tested at once, can never share a domain (a shared one mixes their topics).
    """
    import fcntl
    start = os.getpid() % 100
    for i in range(100):
        domain = 1 + (start + i) % 100
        path = os.path.join(tempfile.gettempdir(), 'depth_ros_test_domain_{}.lock'.format(domain))
        handle = open(path, 'a')
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        return str(domain), handle
    raise RuntimeError('every ROS domain id 1..100 is held by another pytest session on this '
                       'machine (locks {}/depth_ros_test_domain_*.lock)'.format(
                           tempfile.gettempdir()))


_DOMAIN, _DOMAIN_LOCK = _claim_domain()


def _ros_env(env):
    env['ROS_DOMAIN_ID'] = _DOMAIN
    env['ROS_LOCALHOST_ONLY'] = '1'                     # Humble
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'  # Jazzy and later (the PyPI wheels)
    env.setdefault('RCUTILS_LOGGING_BUFFERED_STREAM', '0')
    env['PYTHONUNBUFFERED'] = '1'
    # The deployment's Fast DDS profile: shared-memory segments big enough for whole images.
    # Without it, best-effort messages over ~0.5 MB travel as UDP fragments and get lost
    # whenever the machine is busy. Set in the variable the installed Fast DDS reads (Humble's
    # Fast DDS 2 reads FASTRTPS_..., Kilted's Fast DDS 3 FASTDDS_... and warns at the other).
    from depth_ros.nodes_core.middleware import cyclonedds_environment, profile_environment
    env.update(profile_environment(FASTDDS_PROFILE, env))
    # The deployment's Cyclone DDS configuration, as the launch file sets it: a socket receive
    # buffer for whole images, and unicast discovery on the loopback interface (localhost-only)
    # without Cyclone's warning line in every process's output.
    env.update(cyclonedds_environment(os.path.join(ROOT, 'config'), env))
    return env


_ros_env(os.environ)

# Importing `launch` (launch_pytest's plugin does, before any test module) makes every logger
# created afterwards a LaunchLogger that does not propagate, which hides our library's log
# records from caplog. Loggers created from here on are plain ones again.
if logging.getLoggerClass() is not logging.Logger:
    logging.setLoggerClass(logging.Logger)
    for _logger in list(logging.Logger.manager.loggerDict.values()):
        if isinstance(_logger, logging.Logger) and _logger.name.startswith('depth_ros'):
            _logger.propagate = True


def decode_cloud(msg):
    """
    Decode a PointCloud2 independently of our writer.

    The wire bytes of rclpy's serializer are decoded by rosbags' CDR deserializer, then by
    plain numpy with the offsets the message declares.

    Returns {field name: [rows, cols] float32}. Tests check our cloud writer against this, never
    against an inverse of the writer.
    """
    from rclpy.serialization import serialize_message
    rosbags = pytest.importorskip('rosbags.typesys', reason='rosbags decodes the wire bytes')
    store = rosbags.get_typestore(rosbags.Stores.ROS2_HUMBLE)
    wire = store.deserialize_cdr(serialize_message(msg), 'sensor_msgs/msg/PointCloud2')
    assert wire.row_step == wire.point_step * wire.width and not wire.is_bigendian
    raw = np.asarray(wire.data, dtype=np.uint8)
    raw = raw.reshape(wire.height, wire.width, wire.point_step)
    out = {}
    for field in wire.fields:
        assert field.datatype == 7 and field.count == 1, field   # FLOAT32
        out[field.name] = raw[:, :, field.offset:field.offset + 4].copy().view('<f4')[..., 0]
    return out


def wait_until(predicate, timeout, interval=0.05):
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; return its last value."""
    end = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < end:
        time.sleep(interval)
        value = predicate()
    return value


# Seconds a killed process may take to be reaped (SIGKILL cannot be caught: only a process
# stuck in the kernel outlives it).
KILL_WAIT_S = 10.0


def _last_lines(text, count=40):
    if isinstance(text, bytes):
        text = text.decode('utf-8', 'replace')
    return '\n'.join((text or '').splitlines()[-count:])


def _kill(proc, group):
    """SIGKILL ``proc`` (its process group with ``group``) and reap it; say how it ended."""
    try:
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except OSError:      # already gone (a group whose every process has been reaped)
        pass
    try:
        proc.wait(KILL_WAIT_S)
    except subprocess.TimeoutExpired:
        return 'still there {:g} s after SIGKILL'.format(KILL_WAIT_S)
    return 'killed (SIGKILL to {})'.format('its process group' if group else 'it')


def end_process(proc, timeout, what, output=None, group=False):
    """
    Return the exit code of ``proc`` (a subprocess.Popen), waiting up to ``timeout`` seconds.

    A process still running then is killed (SIGKILL; with ``group``, its whole process group,
    as ``ros2 launch`` and its nodes) and reaped, and the test fails with an AssertionError
    that says what was awaited (``what``), for how long, and ends with the last 40 lines of
    ``output()``: not subprocess's bare TimeoutExpired, with the process left running.
    """
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    how = _kill(proc, group)
    raise AssertionError('{}: pid {} did not exit within {:g} s; {}. The end of its output:\n'
                         '{}'.format(what, proc.pid, timeout, how,
                                     _last_lines(output() if output else '')))


def run_bounded(cmd, timeout, **kwargs):
    """
    Run ``cmd`` as subprocess.run does (stdout and stderr piped together), in its own session.

    Past ``timeout`` seconds its whole process group is killed (subprocess.run kills the
    command alone: the nodes of a ``ros2 launch`` ran on) and the test fails with the command,
    the timeout and the last 40 lines it printed. Returns a CompletedProcess.
    """
    kwargs.setdefault('stdout', subprocess.PIPE)
    kwargs.setdefault('stderr', subprocess.STDOUT)
    proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        how = _kill(proc, group=True)
        try:    # what it printed so far (a process that left the group may hold the pipe)
            out, _ = proc.communicate(timeout=KILL_WAIT_S)
        except subprocess.TimeoutExpired:
            out = b''
        raise AssertionError('{}: did not exit within {:g} s; {}. The end of its output:\n'
                             '{}'.format(' '.join(str(c) for c in cmd), timeout, how,
                                         _last_lines(out)))
    except BaseException:   # Ctrl-C, a pytest-timeout: leave nothing running
        _kill(proc, group=True)
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


_PROCESS_LOGS = []


def process_log(prefix):
    """
    Return an open temporary file (``/tmp/<prefix>*.log``) for a child process's output.

    The files outlive the processes, for the failure messages and for reading after a test;
    they are removed when the whole session passes, kept (to read) when it fails.
    """
    log = tempfile.NamedTemporaryFile(prefix=prefix, suffix='.log', delete=False)
    _PROCESS_LOGS.append(log.name)
    return log


def pytest_sessionfinish(session, exitstatus):
    """Remove the process logs of a session that passed."""
    if exitstatus != 0:
        return
    for path in _PROCESS_LOGS:
        try:
            os.unlink(path)
        except OSError:
            pass


class NodeProcess(object):
    """One node executable in its own process (``python -m depth_ros.ros.<module>``)."""

    def __init__(self, module, params=None, remaps=None, params_file=CONFIG, name=None,
                 extra_ros_args=(), env=None):
        self.module = module
        cmd = [sys.executable, '-m', 'depth_ros.ros.' + module, '--ros-args']
        if params_file:
            cmd += ['--params-file', params_file]
        if name:
            cmd += ['-r', '__node:=' + name]
        for key, value in (params or {}).items():
            cmd += ['-p', '{}:={}'.format(key, value)]
        for src, dst in (remaps or {}).items():
            cmd += ['-r', '{}:={}'.format(src, dst)]
        cmd += list(extra_ros_args)
        self.cmd = cmd
        self.log = process_log('depth_ros_' + module + '_')
        run_env = _ros_env(dict(os.environ))
        run_env.update(env or {})
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=run_env, cwd=ROOT)

    def output(self):
        """Return everything the process wrote so far."""
        with open(self.log.name, 'r', errors='replace') as f:
            return f.read()

    def wait_for_output(self, text, timeout=10.0):
        """Wait until ``text`` appears in the output; return whether it did."""
        return wait_until(lambda: text in self.output(), timeout)

    def wait(self, timeout=30.0, what='its exit'):
        """
        Return the exit code, waiting up to ``timeout`` seconds for ``what``.

        Still running then: killed, and the test fails saying so, with the end of its output.
        """
        return end_process(self.proc, timeout, '{}, waiting for {}'.format(self.module, what),
                           self.output)

    def interrupt(self):
        """Send SIGINT (a clean shutdown) without waiting; :meth:`stop` then waits."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def stop(self):
        """SIGINT (clean shutdown), then kill if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()

    def alive(self):
        """Return whether the process still runs."""
        return self.proc.poll() is None


class Collector(object):
    """Messages received on one topic, with their arrival times (thread-safe)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.msgs = []
        self.times = []

    def __call__(self, msg):
        with self.lock:
            self.msgs.append(msg)
            self.times.append(time.time())

    def stamps(self):
        """List the received messages' header stamps in nanoseconds."""
        with self.lock:
            return [m.header.stamp.sec * 1000000000 + m.header.stamp.nanosec for m in self.msgs]

    def by_stamp(self, stamp_ns):
        """Return the last message with this stamp, or None."""
        with self.lock:
            for m in reversed(self.msgs):
                if m.header.stamp.sec * 1000000000 + m.header.stamp.nanosec == stamp_ns:
                    return m
        return None

    def __len__(self):
        with self.lock:
            return len(self.msgs)


class Probe(object):
    """A test node on its own rclpy context, spun by a background executor thread."""

    def __init__(self, name='depth_ros_probe'):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        self.rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self):
        try:
            self.executor.spin()
        except Exception:  # shutdown races end the spin
            pass

    def qos(self, reliability='best_effort', depth=10):
        """Return the QoS of the nodes' sensor-data default."""
        from depth_ros.ros.runtime import sensor_qos
        return sensor_qos(reliability, depth)

    def subscribe(self, msg_type, topic, qos=None):
        """Subscribe a new Collector to ``topic`` and return it."""
        collector = Collector()
        collector.sub = self.node.create_subscription(msg_type, topic, collector,
                                                      qos or self.qos())
        return collector

    def publisher(self, msg_type, topic, qos=None):
        """Create a publisher on ``topic``."""
        return self.node.create_publisher(msg_type, topic, qos or self.qos())

    def wait_for_subscribers(self, publisher, count=1, timeout=15.0):
        """
        Wait until ``publisher`` has ``count`` matched subscriptions: our side of discovery.

        The subscriber matches our publisher on its side in its own time: a best-effort
        message sent once right after can be lost. Resend until answered, or pass a frame
        that is answered first (``FedGraph.warm``) before a message that is sent once.
        """
        return wait_until(lambda: publisher.get_subscription_count() >= count, timeout)

    def wait_for_publishers(self, topic, count=1, timeout=15.0):
        """Wait until ``topic`` has ``count`` publishers."""
        return wait_until(lambda: self.node.count_publishers(topic) >= count, timeout)

    def close(self):
        """Shut the context down and join the spin thread."""
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        self.rclpy.shutdown(context=self.context)
        self.thread.join(3.0)


@pytest.fixture(scope='module')
def probe():
    """Provide a Probe test node shared by the tests of one module."""
    pytest.importorskip('rclpy', reason='rclpy is not installed (pip install depth_ros[ros])')
    p = Probe()
    yield p
    p.close()


@pytest.fixture(scope='module')
def node_processes():
    """Provide a list for NodeProcess objects; all are stopped at the end of the module."""
    procs = []
    yield procs
    for p in procs:      # all at once: each shuts down in its own time
        p.interrupt()
    for p in procs:
        p.stop()

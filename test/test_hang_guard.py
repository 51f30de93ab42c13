"""
No wait without a bound: a hung test fails, says where, and leaves no process running.

- test/hang_guard.py: each case runs pytest in a fresh process on a small test file, with
  hang_guard alone as a plugin (``-p hang_guard``, not this suite's conftest), and reads what
  it printed and how it ended (a hang in C code, in Python, SIGTERM, an exit that never ends).
- conftest.end_process and conftest.run_bounded, on processes that outlive their wait, and
  launch_driver.py when it cannot do its action.
- conftest's ROS domain per session: sessions at once (make test's lanes) never share one.
"""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.slow
pytest.importorskip('pytest_timeout', reason='pytest-timeout is not installed (depth_ros[dev])')

HERE = os.path.dirname(os.path.abspath(__file__))


def _start(tmp_path, body, hard_grace=2, exit_grace=120):
    (tmp_path / 'pytest.ini').write_text('[pytest]\n')
    (tmp_path / 'test_child.py').write_text(textwrap.dedent(body))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (HERE, os.environ.get('PYTHONPATH')) if p),
        DEPTH_ROS_TEST_HARD_GRACE_S=str(hard_grace),
        DEPTH_ROS_TEST_EXIT_GRACE_S=str(exit_grace))
    return subprocess.Popen(
        [sys.executable, '-m', 'pytest', '-q', '-p', 'hang_guard', '-p', 'no:cacheprovider',
         '-p', 'no:launch_testing', '-p', 'no:launch_ros', '-p', 'no:launch_pytest',
         'test_child.py'], cwd=str(tmp_path), env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, start_new_session=True)


def _finish(proc, timeout=60):
    t0 = time.monotonic()
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError('the child pytest did not end within {} s:\n{}'.format(
            timeout, out.decode('utf-8', 'replace')))
    return proc.returncode, out.decode('utf-8', 'replace'), time.monotonic() - t0


def test_a_hang_in_c_code_holding_the_gil_ends_pytest_with_every_stack(tmp_path):
    # A normal pthread mutex taken twice by one thread waits forever in the C library, and
    # PyDLL keeps the GIL for the call: pytest-timeout's signal handler never runs (nor
    # would its thread method's timer). The watchdog fires at timeout 1 + grace 2 s.
    proc = _start(tmp_path, '''
        import ctypes
        import pytest

        @pytest.mark.timeout(1)
        def test_stuck_in_c():
            mutex = ctypes.create_string_buffer(64)    # PTHREAD_MUTEX_INITIALIZER: all zeros
            libc = ctypes.PyDLL(None)
            libc.pthread_mutex_lock(mutex)
            libc.pthread_mutex_lock(mutex)
        ''')
    code, out, seconds = _finish(proc)
    assert code == 1, (code, out)
    assert 'Timeout (0:00:03)!' in out and 'in test_stuck_in_c' in out, out
    assert 3.0 <= seconds < 30.0, (seconds, out)
    assert 'Failed: Timeout' not in out, out      # pytest-timeout could not act


def test_a_hang_in_python_fails_that_test_and_the_next_one_runs(tmp_path):
    # pytest-timeout's signal method takes this one (the watchdog, 30 s later, never fires).
    proc = _start(tmp_path, '''
        import time
        import pytest

        @pytest.mark.timeout(1)
        def test_stuck_in_python():
            while True:
                time.sleep(0.05)

        def test_next():
            pass
        ''', hard_grace=30)
    code, out, seconds = _finish(proc)
    assert code == 1 and '1 failed, 1 passed' in out, (code, out)
    assert 'Failed: Timeout' in out and 'test_stuck_in_python' in out, out
    assert 'Timeout (0:' not in out and seconds < 25.0, (seconds, out)


def test_sigterm_writes_every_stack_before_pytest_dies(tmp_path):
    # The Makefile's lane timeout sends SIGTERM; pytest -q prints no test name, the stacks do.
    started = tmp_path / 'started'
    proc = _start(tmp_path, '''
        import time

        def test_waits_for_a_long_time():
            open({!r}, 'w').close()
            time.sleep(120)
        '''.format(str(started)))
    end = time.monotonic() + 30
    while not started.exists() and proc.poll() is None and time.monotonic() < end:
        time.sleep(0.05)
    assert started.exists(), _finish(proc)
    proc.send_signal(signal.SIGTERM)
    code, out, seconds = _finish(proc)
    assert code == -signal.SIGTERM, (code, out)
    assert 'in test_waits_for_a_long_time' in out and 'Current thread' in out, out


def test_a_pytest_that_does_not_exit_is_ended_with_every_stack(tmp_path):
    # A thread that is not a daemon and never ends: every test passed, and Python waits for
    # it at exit, for ever. The watchdog ends it 3 s after pytest's last hook, exit 1.
    proc = _start(tmp_path, '''
        import threading

        def _forever():
            threading.Event().wait()

        def test_leaves_a_thread_behind():
            threading.Thread(target=_forever, name='left_behind').start()
        ''', exit_grace=3)
    code, out, seconds = _finish(proc)
    assert code == 1 and '1 passed' in out, (code, out)
    assert 'Timeout (0:00:03)!' in out and 'in _forever' in out, out
    assert seconds < 30.0, (seconds, out)


# ------------------------------------------------ conftest's bounded waits on processes
def _alive(pid):
    try:
        with open('/proc/{}/stat'.format(pid)) as f:
            return f.read().split(') ', 1)[1][0] != 'Z'     # a zombie has ended
    except (OSError, IndexError):
        return False


def _gone(pid, timeout=10.0):
    end = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < end:
        time.sleep(0.05)
    return not _alive(pid)


def test_end_process_kills_what_outlives_its_wait_and_says_what_was_awaited():
    from conftest import end_process
    proc = subprocess.Popen(['sleep', '60'])
    t0 = time.monotonic()
    with pytest.raises(AssertionError) as err:
        end_process(proc, 0.5, 'sleep, waiting for its exit after SIGINT',
                    lambda: 'first line\nlast line\n')
    assert time.monotonic() - t0 < 10.0
    assert str(err.value) == (
        'sleep, waiting for its exit after SIGINT: pid {} did not exit within 0.5 s; killed '
        '(SIGKILL to it). The end of its output:\nfirst line\nlast line'.format(proc.pid))
    assert proc.returncode == -signal.SIGKILL      # killed and reaped: nothing left running
    done = subprocess.Popen(['sh', '-c', 'exit 3'])
    assert end_process(done, 10, 'sh') == 3


def test_end_process_with_group_kills_the_children_too(tmp_path):
    # As ros2 launch and its nodes: the shell leads its own process group, sleep is its child.
    pidfile = tmp_path / 'child'
    proc = subprocess.Popen(['sh', '-c', 'sleep 60 & echo $! > {}; wait'.format(pidfile)],
                            start_new_session=True)
    end = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < end, 'the shell did not start its child'
        time.sleep(0.05)
    child = int(pidfile.read_text())
    from conftest import end_process
    with pytest.raises(AssertionError, match=r'did not exit within 0\.5 s; killed \(SIGKILL to '
                                             r'its process group\)'):
        end_process(proc, 0.5, 'sh', group=True)
    assert _gone(child), 'the child of the group still runs'


def test_run_bounded_kills_the_whole_group_where_subprocess_run_left_the_child(tmp_path):
    from conftest import run_bounded
    script = 'echo started; sleep 60 & echo $! > {}; wait'
    # subprocess.run's timeout kills the command alone: its child runs on (so did the nodes
    # of a ros2 launch).
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run(['sh', '-c', script.format(tmp_path / 'run')], stdout=subprocess.PIPE,
                       timeout=1)
    left = int((tmp_path / 'run').read_text())
    try:
        assert _alive(left)
    finally:
        os.kill(left, signal.SIGKILL)
    with pytest.raises(AssertionError) as err:
        run_bounded(['sh', '-c', script.format(tmp_path / 'bounded')], 1)
    message = str(err.value)
    assert message.startswith('sh -c echo started; sleep 60 & echo $! > ') and \
        message.endswith(': did not exit within 1 s; killed (SIGKILL to its process group). '
                         'The end of its output:\nstarted'), message
    assert _gone(int((tmp_path / 'bounded').read_text()))
    done = run_bounded(['sh', '-c', 'echo out; echo err >&2; exit 4'], 10)
    assert (done.returncode, done.stdout) == (4, b'out\nerr\n')


def test_launch_driver_kills_the_launch_when_it_cannot_do_its_action(tmp_path):
    # kill:NAME for a process the launch never started: one line, and the launch (a stand-in
    # printing as ros2 launch does) and its child are killed, not left running for ever.
    pidfile = tmp_path / 'child'
    launch = ('sleep 60 & echo $! > {}; echo "[INFO] [zed_node-1]: process started with pid '
              '[$!]"; echo "depth model: none"; wait'.format(pidfile))
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, os.path.join(HERE, 'launch_driver.py'), 'kill:nobody',
                           str(tmp_path / 'launch.log'), '--', 'sh', '-c', launch],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    out = done.stdout.decode()
    assert done.returncode == 1 and out.strip() == (
        "launch_driver: no process 'nobody' started (started: [('zed_node', '{}')])".format(
            pidfile.read_text().strip())), out
    assert _gone(int(pidfile.read_text())) and time.monotonic() - t0 < 20.0


def test_concurrent_sessions_never_share_a_ros_domain():
    # make test runs pytest sessions at once (its lanes): each claims an id no other holds.
    import conftest
    assert os.environ['ROS_DOMAIN_ID'] == conftest._DOMAIN
    domain, handle = conftest._claim_domain()     # another open file: as another session's
    try:
        assert domain != conftest._DOMAIN
        child = subprocess.run(
            [sys.executable, '-c', 'import conftest; print(conftest._DOMAIN)'], cwd=HERE,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60,
            env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                p for p in (HERE, os.environ.get('PYTHONPATH')) if p)))
        out = child.stdout.decode('utf-8', 'replace')
        assert child.returncode == 0, out
        assert out.split()[-1] not in (domain, conftest._DOMAIN), out
        assert 1 <= int(out.split()[-1]) <= 100, out
    finally:
        handle.close()

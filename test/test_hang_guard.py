"""
test/hang_guard.py: a hung test fails within its timeout and says where, even in C code.

Each case runs pytest in a fresh process on a small test file, with hang_guard alone as a
plugin (``-p hang_guard``, not this suite's conftest), and reads what it printed and how it
ended (a hang in C code, in Python, SIGTERM, an exit that never ends).
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

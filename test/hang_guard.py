"""
Bounds for the test session itself: a hung test or a pytest that never exits fails, and says where.

pytest-timeout (``timeout`` in setup.cfg, ``--timeout`` in the Makefile's Humble lanes) fails a
test that outlives its timeout, with its signal method: SIGALRM raises in the main thread, the
fixtures' teardown runs (the test's node processes are stopped) and the next test goes on.
That needs the main thread to come back to Python code. A hang in C code (rcl, a DDS
participant's deletion, a lock taken in an extension) never does, and pytest-timeout's thread
method needs the GIL, which such a call may hold. faulthandler's watchdog is a C thread that
needs neither: here it fires ``HARD_GRACE_S`` after a test's timeout, writes every thread's
stack (file and line, the test's own frame among them) to the real standard error (the lane's
log), and ends pytest with exit 1. The same watchdog bounds pytest's own exit (non-daemon
threads that Python joins, atexit handlers, contexts destroyed at exit): ``EXIT_GRACE_S``
after the last hook. SIGTERM (the Makefile's lane timeout: ``timeout`` sends it) also writes
every thread's stack before pytest dies of it; pytest's own ``-q`` output says no test name.

Loaded by conftest.py; ``python -m pytest -p hang_guard`` loads it alone (test_hang_guard.py).
Standard library only, Python 3.8.
"""
import faulthandler
import os
import signal
import sys

import pytest

# Seconds past a test's pytest-timeout before the watchdog ends pytest, and seconds a session
# may take to exit after its last hook (the environment variables: test_hang_guard.py).
HARD_GRACE_S = float(os.environ.get('DEPTH_ROS_TEST_HARD_GRACE_S', '60'))
EXIT_GRACE_S = float(os.environ.get('DEPTH_ROS_TEST_EXIT_GRACE_S', '120'))

_STDERR = []   # a duplicate of the real standard error, taken before any test captures fd 2


def _stderr():
    if not _STDERR:
        _STDERR.append(os.dup(sys.__stderr__.fileno()))
    return _STDERR[0]


def _dump_at_sigterm():
    # A test may have replaced SIGTERM's handler and put the default back since (signal.signal
    # does not know faulthandler's): install it afresh.
    faulthandler.unregister(signal.SIGTERM)
    faulthandler.register(signal.SIGTERM, file=_stderr(), all_threads=True, chain=True)


def item_timeout(item):
    """Return the pytest-timeout of ``item`` in seconds (marker, option or ini), or None."""
    try:
        import pytest_timeout
        if pytest_timeout.is_debugging():
            return None
        timeout = pytest_timeout._get_item_settings(item).timeout
    except (ImportError, AttributeError, TypeError, ValueError):   # no (such) pytest-timeout
        return None
    return timeout if timeout and timeout > 0 else None


def pytest_configure(config):
    """Dump every thread's stack at SIGTERM (the lane timeout), from the start."""
    _dump_at_sigterm()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Arm the watchdog for the test's set-up, call and teardown: its timeout + HARD_GRACE_S."""
    _dump_at_sigterm()
    timeout = item_timeout(item)
    if timeout is not None:
        faulthandler.dump_traceback_later(timeout + HARD_GRACE_S, exit=True, file=_stderr())
    yield
    if timeout is not None:
        faulthandler.cancel_dump_traceback_later()


def pytest_unconfigure(config):
    """Bound pytest's exit: after EXIT_GRACE_S, every thread's stack and exit 1."""
    if EXIT_GRACE_S > 0:
        faulthandler.dump_traceback_later(EXIT_GRACE_S, exit=True, file=_stderr())

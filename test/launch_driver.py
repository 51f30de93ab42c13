"""
Run ``ros2 launch``, signal it or one of its processes, and report how everything ended.

    python launch_driver.py ACTION LOG [--until TEXT] -- ros2 launch depth_ros ...

ACTION: ``int`` (a terminal's Ctrl-C: SIGINT to the launch's whole process group), ``term``,
``kill`` or ``int:launch`` (SIGTERM, SIGKILL or SIGINT to the ``ros2 launch`` process alone, as
``kill`` or ``docker stop`` send it), ``kill:NAME`` (SIGKILL to the process launch names
NAME-<n>). The action comes once every process has started and depth_node has said which model
it runs, and 2 s more; with ``--until TEXT``, once the launch's output has TEXT (a line the test
needs before the stop, however slow the machine), at most 30 s from the start. This process is
a child subreaper (Linux ``PR_SET_CHILD_SUBREAPER``): processes the launch leaves behind become
its children, so that their exit status can be read. It prints one JSON object: the launch's
exit code, and for each started process its pid and, where it outlived the launch, how it ended
(``exit`` code, or ``killed`` by this driver 15 s after the launch ended) and ``after_s``, the
seconds from the signal to its end.
Every wait is bounded (the start 30 s, the launch's exit 30 s, the orphans 15 s together), and
whatever happens (an error here too) the launch's process group is killed on the way out.
A run script of the test suite, not a test (test_launch_graph.py runs it).
"""
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
START_S = 30.0      # how long the launch may take to say which model depth_node runs
EXIT_S = 30.0       # how long the launch may take to end after the action
ORPHANS_S = 15.0    # how long the orphans of the launch may take to end, together
STARTED = re.compile(r'\[(\w+)-\d+\]: process started with pid \[(\d+)\]')


def _read(path):
    with open(path, encoding='utf-8', errors='replace') as f:
        return f.read()


def _reap(pid, end, since):
    """Wait for an orphan of the launch (now our child) until ``end``; return how it ended."""
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:       # launch reaped it before it died itself
            return None
        if done:
            return {'exit': -os.WTERMSIG(status) if os.WIFSIGNALED(status)
                    else os.WEXITSTATUS(status),
                    'after_s': round(time.monotonic() - since, 2)}
        if time.monotonic() > end:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return {'killed': 'still running {:.0f} s after the launch ended'.format(
                ORPHANS_S)}
        time.sleep(0.05)


def main():
    action, log_path = sys.argv[1], sys.argv[2]
    options, command = sys.argv[3:sys.argv.index('--')], sys.argv[sys.argv.index('--') + 1:]
    until = options[1] if options[:1] == ['--until'] else None
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    # As from a shell: SIGINT at its default action in ros2 launch, whatever ours is.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    with open(log_path, 'w') as log:
        launch = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        _drive(action, log_path, launch, until)
    finally:    # nothing of the launch outlives the driver, an error here included
        try:
            os.killpg(launch.pid, signal.SIGKILL)
        except OSError:     # its group is gone: the usual end
            pass
        if launch.poll() is None:
            launch.wait(10)


def _drive(action, log_path, launch, until=None):
    end = time.monotonic() + START_S
    while launch.poll() is None and time.monotonic() < end:
        if (until or 'depth model:') in _read(log_path):
            break
        time.sleep(0.05)
    if until is None:
        time.sleep(2.0)
    started = STARTED.findall(_read(log_path))
    since = time.monotonic()
    if launch.poll() is None:
        if action == 'int':
            os.killpg(launch.pid, signal.SIGINT)
        elif action in ('term', 'kill', 'int:launch'):
            os.kill(launch.pid, {'term': signal.SIGTERM, 'kill': signal.SIGKILL,
                                 'int:launch': signal.SIGINT}[action])
        elif action.startswith('kill:'):
            pids = [int(pid) for name, pid in started if name == action[len('kill:'):]]
            if not pids:
                raise SystemExit('launch_driver: no process {!r} started (started: {})'.format(
                    action[len('kill:'):], started))
            os.kill(pids[0], signal.SIGKILL)
    try:
        code = launch.wait(EXIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(launch.pid, signal.SIGKILL)
        code = 'timeout: killed after {:.0f} s'.format(EXIT_S)
    reaped = time.monotonic() + ORPHANS_S
    processes = [{'name': name, 'pid': int(pid), 'orphan': _reap(int(pid), reaped, since)}
                 for name, pid in started]
    print(json.dumps({'launch': code, 'processes': processes}))


if __name__ == '__main__':
    main()

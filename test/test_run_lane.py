"""
test/run_lane.sh, the lanes of `make test`: what it prints, its exit code, its time limit.

Each case runs the script on a small shell command instead of pytest and reads what it
printed and the log it kept.
"""
import os
import subprocess
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, 'run_lane.sh')

PYTEST_LIKE = r'''
printf '%s\n' '....s.s' \
  '============================= slowest 2 durations =============================' \
  '3.00s call     test/test_a.py::test_slow' \
  '1.00s call     test/test_b.py::test_less' \
  '=========================== short test summary info ============================' \
  'SKIPPED [2] test/test_a.py:10: no torch here' \
  'SKIPPED [1] test/test_b.py:20: no torch here' \
  'SKIPPED [1] test/test_c.py:30: needs diffusers' \
  '5 passed, 4 skipped in 4.00s'
'''


def _lane(tmp_path, command, limit=60):
    log = tmp_path / 'lane.log'
    t0 = time.monotonic()
    done = subprocess.run(['bash', SCRIPT, 'a lane', str(log), str(limit), 'sh', '-c', command],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    return done.returncode, done.stdout.decode(), log.read_text(), time.monotonic() - t0


def test_a_passing_lane_prints_its_time_skips_slowest_tests_and_result(tmp_path):
    code, out, log, _ = _lane(tmp_path, PYTEST_LIKE)
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith('== a lane: ') and lines[0].endswith(
        ' s (log: {})'.format(tmp_path / 'lane.log')), out
    # Skips counted by reason, over files: 3 for torch, 1 for diffusers.
    assert sorted(lines[1:3]) == ['  skipped 1: needs diffusers', '  skipped 3: no torch here']
    assert lines[3:6] == ['============================= slowest 2 durations '
                          '=============================',
                          '3.00s call     test/test_a.py::test_slow',
                          '1.00s call     test/test_b.py::test_less'], out
    assert lines[6:] == ['5 passed, 4 skipped in 4.00s'], out
    assert '....s.s' not in out and '....s.s' in log     # the progress stays in the log


def test_a_failing_lane_prints_its_whole_log_and_keeps_the_exit_code(tmp_path):
    code, out, log, _ = _lane(tmp_path, 'echo first line; echo FAILED test_x; exit 3')
    assert code == 3
    assert out.splitlines()[1:] == ['first line', 'FAILED test_x'] == log.splitlines(), out
    assert 'TIMED OUT' not in out


@pytest.mark.parametrize('command', [
    'echo started; exec sleep 30',
    # As pytest with hang_guard: a SIGTERM handler writes the stacks, then the process exits.
    "trap 'echo stacks written; kill $!; exit 1' TERM; echo started; sleep 30 & wait"])
def test_a_lane_past_its_limit_is_stopped_and_fails_with_its_log(tmp_path, command):
    code, out, log, took = _lane(tmp_path, command, limit=1)
    assert code == 124, out
    assert took < 20, took
    lines = out.splitlines()
    assert lines[1] == '   TIMED OUT: stopped after 1 s; its log:', out
    assert lines[2] == 'started', out
    if 'trap' in command:
        assert lines[3] == 'stacks written', out

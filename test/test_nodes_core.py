"""
depth_ros.nodes_core: the nodes' logic that needs no ROS.

Workers, rate meters, stage timers, throttled logs, stamp guards, log forwarding, parameter
specs, the names a node was given and their mappings, the stand-in backend, replay pacing.

None of this needs rclpy, so it runs everywhere, Python 3.8 with the Jetson's numpy included.
Hand-offs between threads are events and polls with deadlines, never fixed sleeps.
"""
import logging
import os
import threading
import time
from types import SimpleNamespace

import cv2
from depth_ros.core.camera import PinholeCamera
from depth_ros.nodes_core.workers import LogForwarder, RateMeter, StageTimes, StampGuard, \
    ThrottledLog, Worker
from depth_ros.sources.base import Frame, FrameSource
from depth_ros.util import describe_error
import numpy as np
import pytest


def _until(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        time.sleep(0.005)
    return cond()


# ----------------------------------------------------------------------------- StageTimes
def test_stage_times_split_a_frame():
    stages = StageTimes(window=2)
    for ms in (1.0, 3.0, 5.0):
        stages.add('align', ms)
    stages.add('cloud', 2.0)
    assert stages.means() == {'align': 4.0, 'cloud': 2.0}, 'received {}'.format(
        stages.means())
    assert list(stages.means()) == ['align', 'cloud']
    stages.start()
    time.sleep(0.02)
    stages.mark('wait')
    # A sleep lasts at least as long as asked: a lower bound, not a wall-clock race.
    assert stages.means()['wait'] >= 19.0, 'received {}'.format(stages.means())


# ----------------------------------------------------------------- Worker: put (newest frame)
def test_latest_worker_drops_never_queues():
    seen = []
    gate, started = threading.Event(), threading.Event()

    def work(item):
        gate.wait(5)
        seen.append(item)
    worker = Worker(work, on_start=lambda item: started.set())
    worker.put(0)
    assert started.wait(5), 'the worker never took item 0'
    for i in range(1, 6):
        worker.put(i)       # 1..4 are replaced while waiting: only 5 stays
    gate.set()
    assert worker.wait_idle(5.0), 'the worker did not finish'
    worker.stop()
    assert seen == [0, 5] and worker.dropped == 4, 'expected [0, 5] and 4 dropped, received ' \
        '{} and {}'.format(seen, worker.dropped)
    assert not worker.alive


def test_latest_worker_survives_a_failing_frame_and_reports_it():
    errors, seen = [], []

    def work(item):
        if item == 'bad':
            raise RuntimeError('boom\nsecond line')
        seen.append(item)
    worker = Worker(work, on_error=errors.append)
    worker.put('bad')
    assert worker.wait_idle(5.0)
    worker.put('good')
    assert worker.wait_idle(5.0)
    worker.stop()
    assert seen == ['good'] and [describe_error(e) for e in errors] == ['RuntimeError: boom'], \
        (seen, errors)


def test_latest_worker_stop_finishes_the_frame_in_progress():
    gate, started, done = threading.Event(), threading.Event(), []

    def work(item):
        started.set()
        gate.wait(5)
        done.append(item)
    worker = Worker(work)
    worker.put(1)
    assert started.wait(5)
    worker.put(2)                       # waiting: dropped by stop()
    threading.Timer(0.05, gate.set).start()
    assert worker.stop(timeout=5.0), 'stop() did not end the thread'
    assert done == [1], 'expected only the frame in progress, received {}'.format(done)


# ------------------------------------------------------------- Worker: background work
def test_background_work_runs_when_idle_and_never_before_a_waiting_item():
    seen, gate, started = [], threading.Event(), threading.Event()

    def work(item):
        started.set()
        gate.wait(5)
        seen.append(('work', item))
    worker = Worker(work, background=lambda item: seen.append(('background', item)),
                    on_start=lambda item: seen.append(('start', item)))
    try:
        worker.put_background('b0')          # idle: runs at once
        assert _until(lambda: worker.background_done == 1), seen
        worker.put(1)
        assert started.wait(5), 'the worker never took item 1'
        worker.put_background('b1')          # waits behind the running item ...
        worker.put_background('b2')          # ... and is replaced: only the newest stays
        worker.put(2)                        # requested: goes before b2
        gate.set()
        assert worker.wait_idle(5.0), 'the worker did not finish'
        assert seen == [('background', 'b0'), ('start', 1), ('work', 1), ('start', 2),
                        ('work', 2), ('background', 'b2')], seen
        # Background items are counted apart: not received, dropped, done or failed items.
        assert (worker.received, worker.dropped, worker.done, worker.failed) == (2, 0, 2, 0)
        assert (worker.background_done, worker.background_replaced) == (2, 1)
    finally:
        gate.set()
        worker.stop()


def test_background_work_failure_is_reported_and_the_worker_goes_on():
    errors, seen = [], []

    def background(item):
        raise RuntimeError('prepare failed')
    worker = Worker(seen.append, on_error=errors.append, background=background)
    try:
        worker.put_background('x')
        assert _until(lambda: worker.background_done == 1)
        worker.put('good')
        assert worker.wait_idle(5.0) and seen == ['good'], seen
        assert [describe_error(e) for e in errors] == ['RuntimeError: prepare failed']
        assert (worker.done, worker.failed) == (1, 0)
    finally:
        worker.stop()
    plain = Worker(seen.append)
    try:
        with pytest.raises(ValueError, match='has no `background` work'):
            plain.put_background('x')
    finally:
        plain.stop()


# ------------------------------------------------------ Worker: offer + request (keyframes)
def test_keyframe_worker_newest_frame_wins_and_one_job_at_a_time():
    seen, running, peak = [], [0], [0]
    gate = threading.Event()

    def job(frame):
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        gate.wait(5.0)
        seen.append(frame)
        running[0] -= 1

    w = Worker(job)
    try:
        assert w.request() == 'no_frame'
        w.offer(1)
        assert w.request() == 'started'
        assert _until(lambda: w.busy)
        for f in (2, 3, 4):
            w.offer(f)
        assert w.request() == 'queued'
        assert w.request() == 'queued'    # still one pending request, not two
        gate.set()
        assert w.wait_idle(5.0) and _until(lambda: len(seen) == 2)
        assert seen == [1, 4], 'expected [1, 4], received {}'.format(seen)
        assert peak[0] == 1
    finally:
        gate.set()
        w.stop()


def test_keyframe_worker_survives_a_failing_job():
    calls = []

    def job(frame):
        calls.append(frame)
        if frame == 'bad':
            raise ValueError('bad frame')

    w = Worker(job)
    try:
        w.offer('bad')
        w.request()
        assert _until(lambda: w.failed == 1)
        w.offer('good')
        w.request()
        assert _until(lambda: w.done == 1), 'worker died after a failing job'
        assert calls == ['bad', 'good']
    finally:
        w.stop()
    assert not w.alive


# ------------------------------------------------------------------------------ RateMeter
def test_rate_meter_with_injected_clock():
    now = [0.0]
    meter = RateMeter(window=5.0, clock=lambda: now[0])
    assert meter.age() == float('inf')
    for i in range(11):
        now[0] = i * 0.1
        meter.tick()
    assert meter.rate == pytest.approx(10.0)
    now[0] = 3.0
    assert meter.age() == pytest.approx(2.0)
    now[0] = 100.0
    assert meter.rate == 0.0 and meter.count == 11


# ---------------------------------------------------------------------------- ThrottledLog
class _Logger(object):
    def __init__(self):
        self.lines = []

    def error(self, text):
        self.lines.append(('error', text))

    def warning(self, text):
        self.lines.append(('warn', text))

    def info(self, text):
        self.lines.append(('info', text))

    def debug(self, text):
        self.lines.append(('debug', text))

    def fatal(self, text):
        self.lines.append(('fatal', text))


def test_throttled_log_limits_each_kind_on_its_own_and_takes_a_new_period():
    now = [100.0]
    logger = _Logger()
    log = ThrottledLog(logger, clock=lambda: now[0])
    results = [log.error('stamp', 'dup {}'.format(i), 2.0) for i in range(5)]
    assert results == [True, False, False, False, False] and log.suppressed('stamp') == 4
    # Another kind is not hidden by the first one's window.
    assert log.error('frame', 'bad encoding', 2.0)
    now[0] += 1.0
    assert not log.error('stamp', 'dup 5', 2.0)
    # A period changed at runtime (log_throttle_s) applies at once: no error, no state reset.
    assert log.error('stamp', 'dup 6', 0.5)
    assert not log.error('stamp', 'dup 7', 0.5)
    now[0] += 0.6
    assert log.warn('stamp', 'dup 8', 0.5)
    assert log.error('stamp', 'dup 9', 0.0) and log.error('stamp', 'dup 10', 0.0)
    # Lines logged while throttling was off open no window for a period set afterwards.
    assert log.error('stamp', 'dup 11', 5.0) and not log.error('stamp', 'dup 12', 5.0)
    assert logger.lines == [
        ('error', 'dup 0'), ('error', 'bad encoding'),
        ('error', 'dup 6 (5 similar suppressed)'), ('warn', 'dup 8 (1 similar suppressed)'),
        ('error', 'dup 9'), ('error', 'dup 10'), ('error', 'dup 11')], logger.lines


def test_throttled_log_is_thread_safe():
    logger = _Logger()
    log = ThrottledLog(logger)
    barrier = threading.Barrier(4)

    def spam():
        barrier.wait()
        for i in range(200):
            log.error('exception', 'failed', 3600.0)
    threads = [threading.Thread(target=spam) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert logger.lines == [('error', 'failed')] and log.suppressed('exception') == 799, \
        (logger.lines, log.suppressed('exception'))


# ------------------------------------------------------------------------------ StampGuard
def test_stamp_guard_tells_restarts_from_out_of_order_stamps():
    guard = StampGuard('image', reset_ns=10 ** 9)
    assert guard.check(5 * 10 ** 9) == ('ok', '')
    verdict, text = guard.check(5 * 10 ** 9)
    assert verdict == 'old' and 'equal to the previous stamp' in text, text
    verdict, text = guard.check(4 * 10 ** 9 + 1)       # 0.999999999 s back: out of order
    assert verdict == 'old' and 'older than the previous stamp 5000000000' in text, text
    verdict, text = guard.check(2 * 10 ** 9)           # 3 s back: a restarted source
    assert verdict == 'restart' and 'jumped back 3.000 s' in text, text
    assert guard.check(2 * 10 ** 9 + 1) == ('ok', ''), 'the new timeline must be accepted'
    guard.reset()
    assert guard.check(1) == ('ok', '')


# ---------------------------------------------------------------------------- LogForwarder
def test_library_log_records_reach_the_node_logger_with_their_severity():
    logger = _Logger()
    library = logging.getLogger('depth_ros.test_forwarding')
    handler = LogForwarder(logger)
    library.addHandler(handler)
    library.setLevel(logging.DEBUG)
    try:
        library.info('engine %s loaded', 'e.engine')
        library.warning('slow')
        library.error('bad')
        library.critical('dead')
        library.debug('hidden: below the handler level')
        try:
            raise ValueError('why\nmore')
        except ValueError:
            library.exception('failed')
    finally:
        library.removeHandler(handler)
    assert logger.lines == [('info', 'engine e.engine loaded'), ('warn', 'slow'),
                            ('error', 'bad'), ('fatal', 'dead'),
                            ('error', 'failed (ValueError: why)')], logger.lines


class _LeveledLogger(_Logger):
    """A node logger stand-in at an rcutils severity (10 debug, 20 info)."""

    def __init__(self, severity):
        super().__init__()
        self.severity = severity

    def get_effective_level(self):
        return self.severity

    def debug(self, text):
        self.lines.append(('debug', text))


def test_library_debug_records_follow_a_node_logger_at_debug():
    from depth_ros.nodes_core.workers import forward_debug_if_asked, forward_library_logs
    name = 'depth_ros_test_debug_forwarding'
    library = logging.getLogger(name)
    for loggers, debug in (([_LeveledLogger(20)], False), ([object()], False),
                           ([_LeveledLogger(20), _LeveledLogger(10)], True)):
        node = loggers[-1] if isinstance(loggers[-1], _Logger) else _LeveledLogger(20)
        handler = forward_library_logs(node, name)
        try:
            assert forward_debug_if_asked(handler, loggers, name) is debug
            library.debug('fit failed: %s', 'too few samples')
            library.info('loaded')
        finally:
            library.removeHandler(handler)
            library.setLevel(logging.NOTSET)
        want = [('debug', 'fit failed: too few samples')] if debug else []
        assert node.lines == want + [('info', 'loaded')], (loggers, node.lines)


@pytest.mark.parametrize('args, name, want', [
    (['zed_node', '--ros-args', '-r', '__node:=zed_node', '-r', '__ns:=/zed', '--'],
     'zed_node', 'zed.zed_node'),
    (['x', '--ros-args', '--remap', '__ns:=/robot1/zed', '-p', 'fps:=5.0'], 'zed_node',
     'robot1.zed.zed_node'),
    (['x', '--ros-args', '-r', 'zed_node:__node:=left', '-r', 'other:__ns:=/no'], 'zed_node',
     'left'),
    (['x', '-r', '__ns:=/outside', '--ros-args', '-r', '__node:=d2'], 'depth_node', 'd2'),
    ([], 'alignment_node', 'alignment_node'),
    (['x', '--ros-args', '-r', '__ns:=/'], 'depth_node', 'depth_node'),
    # rcl's other spelling of __node, and its first matching rule wins (rclpy's node logger
    # names on Humble and Kilted: cam, a.zed_node, n1, cam2).
    (['x', '--ros-args', '-r', '__name:=cam'], 'zed_node', 'cam'),
    (['x', '--ros-args', '-r', '__ns:=/a', '-r', '__ns:=/b'], 'zed_node', 'a.zed_node'),
    (['x', '--ros-args', '-r', '__node:=n1', '-r', '__node:=n2'], 'zed_node', 'n1'),
    (['x', '--ros-args', '-r', 'zed_node:__name:=cam2', '-r', '__node:=n2'], 'zed_node',
     'cam2'),
])
def test_a_node_logger_name_is_known_before_the_node(args, name, want):
    # rcl names a node's logger by its namespace's parts and its name: the start-up's
    # library records (the model search) are forwarded to it, at debug where it logs debug.
    # Remaps outside --ros-args, or another node's, are not this node's.
    from depth_ros.nodes_core.workers import node_logger_name
    assert node_logger_name(args, name) == want


def test_heap_trim_runs_once_after_a_burst_never_on_a_steady_stream():
    from depth_ros.nodes_core.workers import HeapTrim
    trim = HeapTrim(min_bytes=100)
    calls = []
    trim._trim = calls.append              # malloc_trim stand-in: records its argument
    for _ in range(50):                    # a steady stream: 60 bytes held, freed, held ...
        trim.held(60)
        assert not trim.maybe_trim(0)
    trim.held(400)                         # a burst: the buffer holds 400, then drains
    assert not trim.maybe_trim(150), 'trimmed while a quarter of the burst is still held'
    assert trim.maybe_trim(90) and calls == [0] and trim.trims == 1
    assert not trim.maybe_trim(0), 'trimmed twice for one burst'
    for _ in range(30):                    # a flood refused on arrival, 10 bytes each
        trim.refuse(10)
    assert trim.maybe_trim(0) and trim.trims == 2 and not trim.maybe_trim(0)
    assert calls == [0, 0]


def test_heap_trim_counts_from_what_is_still_held_after_a_trim():
    from depth_ros.nodes_core.workers import HeapTrim
    trim = HeapTrim(min_bytes=100)
    trim._trim = lambda pad: 1
    trim.held(99)                          # under min_bytes: not a burst
    assert not trim.maybe_trim(0) and trim.trims == 0
    trim.held(100)                         # min_bytes exactly, then a quarter exactly: no
    assert not trim.maybe_trim(25) and trim.maybe_trim(24) and trim.trims == 1
    # The next burst is measured from what was held at the trim (24) upward: 24 + 80 refused
    # bytes reach min_bytes, 24 + 70 do not.
    trim.refuse(70)
    assert not trim.maybe_trim(24)
    trim.refuse(10)
    assert trim.maybe_trim(24) and trim.trims == 2
    # Refused and held add up: 60 held while 50 were refused is a burst of 110.
    trim.held(60 - 24)
    trim.refuse(50)
    trim.held(60)
    assert trim.high >= 110 and trim.maybe_trim(0) and trim.trims == 3


def test_heap_trim_is_a_no_op_without_malloc_trim_and_real_with_glibc():
    import platform
    from depth_ros.nodes_core.workers import HeapTrim
    trim = HeapTrim(min_bytes=10)
    trim._trim = None                      # musl, macOS: no malloc_trim
    trim.refuse(1000)
    assert not trim.maybe_trim(0) and trim.trims == 0
    if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
        pytest.skip('malloc_trim is glibc\'s; this C library is {}'.format(platform.libc_ver()))
    trim = HeapTrim(min_bytes=10)
    assert trim._trim is not None, 'glibc has malloc_trim'
    blocks = [bytearray(1 << 20) for _ in range(32)]   # 32 MB on the heap, then freed
    trim.held(sum(len(b) for b in blocks))
    del blocks
    assert trim.maybe_trim(0) and trim.trims == 1      # the real malloc_trim(0) ran


# ------------------------------------------------------------------------------ parameters
def test_choices_are_checked_here_and_ranges_left_to_rclpy():
    from depth_ros.nodes_core.params import choice_error, Param
    q = Param('backend', 'onnxruntime', 'd', choices=('onnxruntime', 'standin'))
    assert choice_error(q, 'tf') == \
        "parameter `backend` must be one of onnxruntime|standin, got 'tf'"
    assert choice_error(q, 'standin') is None
    # Ranges and types are the descriptor's: rclpy refuses them (test_ros_conversions.py).
    assert choice_error(Param('cloud_stride', 2, 'd', low=1, high=32), 0) is None


def test_unknown_parameter_names_get_a_hint_and_bad_params_files_one_line(tmp_path):
    from depth_ros.nodes_core.params import given_names, params_file_error, unknown_lines
    good = tmp_path / 'good.yaml'
    good.write_text('/**/alignment_node:\n  ros__parameters:\n    cloud_strid: 1\n'
                    '/other_node:\n  ros__parameters:\n    elsewhere: 1\n')
    args = ['alignment_node', '--ros-args', '--params-file', str(good), '-p', 'buffer_size:=8',
            '-p', 'use_sim_time:=true', '-p', 'qos_overrides./x.publisher.depth:=3', '--',
            '-p', 'not_ros:=1']
    names = given_names(args, '/alignment_node')
    assert names == ['buffer_size', 'cloud_strid', 'qos_overrides./x.publisher.depth',
                     'use_sim_time'], names
    lines = unknown_lines(names, {'use_sim_time', 'cloud_stride'}.__contains__,
                          ['cloud_stride', 'pairing_max_mb'])
    assert lines == ['unknown parameter `buffer_size` ignored: removed in 0.2: pairing waits '
                     'by age (`pairing_window_s`) under a memory cap (`pairing_max_mb`)',
                     'unknown parameter `cloud_strid` ignored: did you mean `cloud_stride`?'], \
        lines
    assert params_file_error(args) is None
    bad = tmp_path / 'bad.yaml'
    bad.write_text('/**/zed_node:\n  ros__parameters:\n    source: [unclosed\n')
    assert params_file_error(['x', '--ros-args', '--params-file', str(bad)]).startswith(
        '--params-file {}: not valid YAML: '.format(bad))
    assert params_file_error(['x', '--ros-args', '--params-file', '/nope.yaml']) == \
        '--params-file /nope.yaml: no such file'


def test_the_arguments_outside_ros_args_are_those_rclpy_leaves_to_the_program():
    from depth_ros.nodes_core.params import stray_arguments, undeclared_error
    assert stray_arguments(['alignment_node', 'cloud_stride:=4']) == ['cloud_stride:=4']
    assert stray_arguments(['n', '--ros-args', '-p', 'a:=1', '-r', '__ns:=/x']) == []
    assert stray_arguments(['n', '-h', '--ros-args', '-p', 'a:=1', '--', '--foo', '--ros-args',
                            '--params-file', 'f.yaml', '--', 'b']) == ['-h', '--foo', 'b']
    assert undeclared_error(['gian', 'zzz'], '/n', ['gain']) == \
        'parameter `gian` is not declared by /n: did you mean `gain`?; parameter `zzz` is not ' \
        'declared by /n: not a parameter of this node (`ros2 param list` shows them)'


def test_a_namespaced_node_keyed_by_its_bare_name_is_found_as_rcl_would_miss_it(tmp_path):
    from depth_ros.nodes_core.params import keys_missing_namespace, node_key_matches
    ours = ['/zed/zed_node', '/depth_node', '/alignment_node', '/marigold/alignment_node']
    robot = tmp_path / 'robot.yaml'
    robot.write_text('zed_node:\n  ros__parameters: {source: sample}\n'
                     '/zed_node:\n  ros__parameters: {path: x}\n'
                     '/**/zed_node:\n  ros__parameters: {a: 1}\n'
                     '/*/zed_node:\n  ros__parameters: {a: 1}\n'
                     'zed:\n  zed_node:\n    ros__parameters: {a: 1}\n'
                     '/front/zed_node:\n  ros__parameters: {a: 1}\n'
                     'alignment_node:\n  ros__parameters: {a: 1}\n'
                     'planner:\n  ros__parameters: {a: 1}\n')
    missed = keys_missing_namespace(str(robot), ours)
    assert missed == [('zed_node', '/zed/zed_node'), ('/zed_node', '/zed/zed_node')], missed
    # As rcl reads them: the bare key reaches /zed_node only, the others reach our node.
    assert not node_key_matches('zed_node', '/zed/zed_node') and \
        node_key_matches('zed_node', '/zed_node')
    assert node_key_matches('/**/zed_node', '/zed/zed_node') and \
        node_key_matches('zed/zed_node', '/zed/zed_node')
    # No namespaced node of that name here, a file that does not read: nothing.
    assert keys_missing_namespace(str(robot), ['/depth_node', '/alignment_node']) == []
    robot.write_text('zed_node: [unclosed\n')
    assert keys_missing_namespace(str(robot), ours) == []
    assert keys_missing_namespace(str(tmp_path / 'nope.yaml'), ours) == []
    robot.write_text('hello\n')
    assert keys_missing_namespace(str(robot), ours) == []


def test_every_default_passes_its_own_spec_and_the_node_validator():
    from depth_ros.nodes_core import config
    from depth_ros.nodes_core.params import choice_error
    for specs, validate in ((config.ZED_PARAMS, config.validate_zed),
                            (config.DEPTH_PARAMS, config.validate_depth),
                            (config.ALIGNMENT_PARAMS, config.validate_alignment),
                            (config.MARIGOLD_PARAMS, None)):
        names = [s.name for s in specs]
        assert len(names) == len(set(names)), 'duplicated parameter in {}'.format(names)
        values = {s.name: s.default for s in specs}
        for spec in specs:
            assert choice_error(spec, spec.default) is None, spec
            assert (spec.low is None or spec.default >= spec.low) and \
                (spec.high is None or spec.default <= spec.high), spec
            assert spec.description, spec.name
        if validate is config.validate_depth:
            values['backend'] = 'standin'
        if validate is not None:
            assert validate(values) is None, (validate.__name__, validate(values))


@pytest.mark.parametrize('given, expected', [
    ({}, ''),
    ({'backend': 'onnxruntime', 'model_path': 'me/my-da2-onnx'},
     ' --backend onnxruntime --model me/my-da2-onnx'),
    ({'backend': 'tensorrt', 'precision': 'int8', 'engine_cache_dir': '/data/engines',
      'input_width': 518, 'input_height': 392},
     ' --backend tensorrt --size 518x392 --precision int8 --engine-cache-dir /data/engines'),
])
def test_the_setup_command_in_depth_nodes_error_sets_up_what_it_looks_for(given, expected):
    # depth_node's "no model on this machine; fix: run `...`" line: the command must set up
    # the model, size, precision and engine cache of this node (for a hub id it named the
    # default model instead), and must parse as `depth-ros model setup` arguments.
    from depth_ros import cli
    from depth_ros.nodes_core import config
    values = {s.name: s.default for s in config.DEPTH_PARAMS}
    values.update(given)
    command = config.setup_command(values)
    assert command == 'ros2 run depth_ros depth-ros model setup' + expected, command
    args = cli.build_parser().parse_args(command.split()[4:])
    size = (values['input_width'], values['input_height']) if values['input_width'] else None
    assert (args.backend, args.model, args.size, args.precision, args.engine_cache_dir) == (
        values['backend'], values['model_path'], size, values['precision'],
        values['engine_cache_dir'] or None), args


def test_validators_name_the_parameter_and_value():
    from depth_ros.nodes_core import config
    zed = {s.name: s.default for s in config.ZED_PARAMS}
    assert config.validate_zed(dict(zed, source='bag')) == \
        "parameter `path` is empty; source 'bag' needs one"
    assert config.validate_zed(dict(zed, source='sample', path='/x')) == \
        "parameter `path` must be empty for source 'sample', got '/x'"
    align = {s.name: s.default for s in config.ALIGNMENT_PARAMS}
    assert config.validate_alignment(dict(align, min_depth=5.0, max_depth=4.0)) == \
        'parameter `max_depth` (4.0) must be > `min_depth` (5.0)'
    assert config.validate_alignment(dict(align, ground_bound_margin=-0.1)) == \
        'parameter `ground_bound_margin` must be a finite number in [0.0, 1.0], got -0.1'
    assert config.validate_alignment(dict(align, ground_bound=1)) == \
        'parameter `ground_bound` must be a bool, got 1'
    assert config.validate_alignment(dict(align, ground_contact='on')) == \
        "parameter `ground_contact` must be a bool, got 'on'"
    depth = {s.name: s.default for s in config.DEPTH_PARAMS}
    assert config.validate_depth(dict(depth, backend='standin', input_width=518)) == \
        'parameters `input_width` and `input_height` must both be 0 or both be set, got ' \
        '518 and 0'


def test_yaml_defaults_match_the_declared_defaults():
    # config/zed_depth.yaml documents the defaults; a value there that differs from the
    # node's declared default is a drift the user cannot see (except where it is meant to be
    # the deployment's choice, listed here).
    import os
    import yaml
    from depth_ros.nodes_core import config
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, 'config', 'zed_depth.yaml')) as f:
        data = yaml.safe_load(f)
    deployment = {('depth_node', 'qos_depth')}
    for node, specs in (('zed_node', config.ZED_PARAMS), ('depth_node', config.DEPTH_PARAMS),
                        ('alignment_node', config.ALIGNMENT_PARAMS)):
        params = data['/**/' + node]['ros__parameters']
        defaults = {s.name: s.default for s in specs}
        assert set(params) <= set(defaults), '{}: unknown {}'.format(
            node, set(params) - set(defaults))
        for name, value in params.items():
            if (node, name) in deployment:
                continue
            assert value == defaults[name], '{}.{}: yaml {!r}, declared {!r}'.format(
                node, name, value, defaults[name])


# --------------------------------------------------------------------------- stand-in model
def test_standin_backend_is_deterministic_with_fixed_latency():
    from depth_ros.inference.standin import standin_disparity, StandInDepthModel
    bgr = np.zeros((4, 3, 3), np.uint8)
    bgr[1] = 255
    model = StandInDepthModel(latency_ms=30.0)
    t0 = time.perf_counter()
    out = model.predict(bgr)
    elapsed = (time.perf_counter() - t0) * 1e3
    assert elapsed >= 29.0, 'expected at least 30 ms, received {:.1f}'.format(elapsed)
    assert out.dtype == np.float32 and out.shape == (4, 3)
    np.testing.assert_allclose(out[0], 0.1)
    np.testing.assert_allclose(out[1], 1.0)
    ramp = standin_disparity(bgr, 'gradient')
    np.testing.assert_allclose(ramp[:, 0], [0.1, 0.4, 0.7, 1.0], rtol=1e-6)
    assert 'STAND-IN' in model.name and model.latency.count == 1
    with pytest.raises(ValueError, match=r'`latency_ms` must be a finite number >= 0, got -1'):
        StandInDepthModel(latency_ms=-1)
    with pytest.raises(ValueError, match="`mode` must be one of intensity|gradient, got 'x'"):
        StandInDepthModel(mode='x')


# ----------------------------------------------------------------------- zed_node's helpers
def test_downscale_frame_scales_camera_and_keeps_depth_values():
    from depth_ros.sources.downscale import downscale_frame
    camera = PinholeCamera(100.0, 100.0, 39.5, 29.5, 80, 60)
    depth = np.arange(60 * 80, dtype=np.float32).reshape(60, 80)
    frame = Frame(left=np.zeros((60, 80, 3), np.uint8), depth=depth, confidence=None,
                  camera=camera, stamp_ns=7)
    out = downscale_frame(frame, 0.5)
    assert out.left.shape == (30, 40, 3) and out.depth.shape == (30, 40)
    assert out.camera == camera.scaled(40, 30) and out.stamp_ns == 7
    assert set(np.unique(out.depth)).issubset(set(np.unique(depth))), \
        'nearest resize must not invent depth values'
    assert downscale_frame(frame, 1.0) is frame


def test_downscale_frame_keeps_the_right_image_and_the_baseline():
    # Without the baseline zed_node published no right/camera_info, and the aligner's stereo
    # noise model fell back to the baseline_m parameter.
    from depth_ros.core.messages import baseline_from_info, camera_info_fields
    from depth_ros.sources.downscale import downscale_frame
    camera = PinholeCamera(100.0, 100.0, 39.5, 29.5, 80, 60)
    right = np.random.RandomState(0).randint(0, 256, (60, 80, 3)).astype(np.uint8)
    frame = Frame(left=np.zeros((60, 80, 3), np.uint8), depth=None, confidence=None,
                  camera=camera, stamp_ns=7, frame_id='zed_left', right=right,
                  baseline_m=0.12)
    out = downscale_frame(frame, 0.5)
    assert out.baseline_m == 0.12 and out.frame_id == 'zed_left'
    assert out.confidence_finite is False
    frame.confidence_finite = True     # nearest keeps the values: still found finite
    assert downscale_frame(frame, 0.5).confidence_finite is True
    np.testing.assert_array_equal(out.right, cv2.resize(right, (40, 30),
                                                        interpolation=cv2.INTER_AREA))
    info = SimpleNamespace(**camera_info_fields(out.camera, baseline_m=out.baseline_m))
    assert info.p[3] == pytest.approx(-out.camera.fx * 0.12) and out.camera.fx == 50.0
    assert baseline_from_info(info) == pytest.approx(0.12)


@pytest.mark.parametrize('kind,path', [('live', None), ('svo', 'run.svo2'),
                                       ('sample', None)])
def test_zed_node_parameters_map_onto_make_source(kind, path, tmp_path):
    # make_source names any option its source does not take, so constructing each kind from
    # the node's defaults proves the names match (no camera is opened).
    from depth_ros.nodes_core.config import source_options, ZED_PARAMS
    from depth_ros.sources import make_source
    if kind == 'sample':
        pytest.importorskip('skimage', reason='the sample source needs scikit-image')
    if path:
        path = str(tmp_path / path)
        open(path, 'wb').close()      # the source checks that the recording exists
    values = {p.name: p.default for p in ZED_PARAMS}
    values.update(source=kind, path=path or '')
    source = make_source(kind, path, **source_options(values))
    assert source is not None
    if kind == 'live':
        assert (source.resolution, source.fps, source.depth_mode) == ('HD720', 30, 'PERFORMANCE')
    if kind == 'sample':
        assert source.fps == 10.0 and source.loop, 'expected a looping 10 fps replay'


class _OneFrame(FrameSource):
    """A one-frame FrameSource (the bundled sample's shape, without its SGBM)."""

    name = 'one_frame'

    def open(self):
        self.left = 1

    def read(self):
        if not self.left:
            return None
        self.left = 0
        return Frame(left=np.zeros((2, 2, 3), np.uint8), depth=None, confidence=None,
                     camera=PinholeCamera(1.0, 1.0, 0.5, 0.5, 2, 2), stamp_ns=0)

    def close(self):
        pass


def _replay_read_times(**options):
    """Return when a ReplaySource over one looped frame delivers, on a fake clock."""
    from depth_ros.sources.base import SourceError
    from depth_ros.sources.replay import ReplaySource
    now = [0.0]

    def sleep(s):
        now[0] += s
    source = ReplaySource(_OneFrame(), loop=True, fps=10.0, clock=lambda: now[0], sleep=sleep,
                          wall_ns=lambda: int(now[0] * 1e9), **options)
    times = []
    while len(times) < 8:
        try:
            source.open()
            source.read()
            times.append(round(now[0], 6))
        except SourceError:
            now[0] += 0.25   # zed_node's retry wait
    return times


def test_replay_source_paces_a_looped_one_frame_source():
    # zed_node publishes frames as soon as the source returns them: the source is the one
    # pacing mechanism, also when a one-frame source starts a new pass every frame.
    times = _replay_read_times()
    assert times == [round(0.1 * i, 6) for i in range(8)], \
        'expected a frame every 0.1 s, received {}'.format(times)


def test_replay_source_paces_from_a_reopen_without_a_burst():
    times = _replay_read_times(drop_after=3, outage_s=1.0)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) >= 0.1 - 1e-6, 'expected gaps >= 0.1 s, received {}'.format(gaps)


def test_path_parameters_expand_the_home_folder(monkeypatch, tmp_path):
    # The shell expands `~` only at the start of a word: `path:=~/run.svo2` and
    # `model_path:=~/da2.onnx` reach the nodes with the `~`.
    from depth_ros.inference import auto
    from depth_ros.nodes_core import config
    monkeypatch.setenv('HOME', str(tmp_path))
    assert config.user_path('~/run.svo2') == str(tmp_path / 'run.svo2')
    for text in ('', '/data/run.svo2', 'me/my-da2-onnx', 'auto', 'a~b'):
        assert config.user_path(text) == text
    seen = {}

    def opened(backend, model, **kwargs):
        seen.update(model=model, cache=kwargs['engine_cache_dir'])
        return 'opened'
    monkeypatch.setattr(auto, 'open_depth_model', opened)
    values = {s.name: s.default for s in config.DEPTH_PARAMS}
    values.update(backend='tensorrt', model_path='~/da2.onnx', engine_cache_dir='~/engines')
    assert config.open_model(values) == 'opened'
    assert seen == {'model': str(tmp_path / 'da2.onnx'), 'cache': str(tmp_path / 'engines')}


# ------------------------------------------------------------ the Fast DDS profile note
@pytest.mark.parametrize('env, file, want', [
    # Fast DDS (the default RMW) with no profile: told, in the variable the distro's reads.
    ({'ROS_DISTRO': 'humble'}, None, 'FASTRTPS_DEFAULT_PROFILES_FILE'),
    ({'ROS_DISTRO': 'kilted', 'RMW_IMPLEMENTATION': 'rmw_fastrtps_cpp'}, None,
     'FASTDDS_DEFAULT_PROFILES_FILE'),
    # A profile named, or Fast DDS's own default file in the working directory: nothing.
    ({'ROS_DISTRO': 'humble', 'FASTRTPS_DEFAULT_PROFILES_FILE': '/p.xml'}, None, None),
    ({'ROS_DISTRO': 'kilted', 'FASTDDS_DEFAULT_PROFILES_FILE': '/p.xml'}, None, None),
    ({'ROS_DISTRO': 'humble'}, 'DEFAULT_FASTRTPS_PROFILES.xml', None),
    ({'ROS_DISTRO': 'kilted'}, 'DEFAULT_FASTDDS_PROFILES.xml', None),
    # Another RMW: no Fast DDS to configure.
    ({'ROS_DISTRO': 'humble', 'RMW_IMPLEMENTATION': 'rmw_cyclonedds_cpp'}, None, None),
])
def test_missing_fastdds_profile_note(tmp_path, env, file, want):
    # Nodes run by hand (the quick start without the launch file) lost the sample's 1.1 MB
    # frames in UDP fragments and said nothing: alignment_node only dropped incomplete sets.
    from depth_ros.nodes_core.middleware import missing_profile_note
    if file:
        (tmp_path / file).write_text('<profiles/>')
    note = missing_profile_note(env, cwd=str(tmp_path))
    if want is None:
        assert note is None, note
        return
    assert note == (
        'Fast DDS runs with no XML profile: frames, depth and clouds above its 0.5 MB '
        'shared-memory segment go in UDP fragments, and best-effort subscribers lose most of '
        'them. The launch file sets ours; run by hand, export {}=$(ros2 pkg prefix depth_ros)'
        '/share/depth_ros/config/fastdds_large_messages.xml'.format(want)), note


# ------------------------------------------------------ Fast DDS's zombie shared memory
def _plant_shm(root, prefix, segments=2, ports=1):
    """Make the files of zombie segments and ports as Fast DDS names them; return the names."""
    import random
    names = []
    for _ in range(segments):
        name = '{}_{:016x}'.format(prefix, random.getrandbits(64))
        names += [name, name + '_el']
    for _ in range(ports):
        name = '{}_port{}'.format(prefix, random.randint(20000, 29999))
        names += [name, name + '_el', 'sem.{}_mutex'.format(name)]
    for name in names:
        with open(os.path.join(str(root), name), 'wb') as f:
            f.write(b'\0' * 64)
    return names


def _fastdds_script():
    from depth_ros.nodes_core.middleware import fastdds_command
    cmd = fastdds_command()
    if cmd is None or len(cmd) != 2:
        pytest.skip('Fast DDS\'s fastdds tool (tools/fastdds/fastdds.py) is not installed here')
    return cmd[1]


_RUN_CLEAN_IN = r'''
import inspect, pathlib, sys
sys.path.insert(0, sys.argv[1])
from shm.clean import Clean
Clean._Clean__shm_dir = lambda self: pathlib.Path(sys.argv[2])
clean = Clean()
clean.run(*[False] * len(inspect.signature(clean.run).parameters))   # Fast DDS 3: run(force)
'''


def test_the_counts_of_the_real_fastdds_shm_clean_are_read(tmp_path):
    # The installed tool's own code (Fast DDS 2 on Humble, 3 on Kilted), on a folder of
    # zombie files of both name styles and one segment a live process holds (flock).
    import fcntl
    import subprocess
    import sys
    from depth_ros.nodes_core.middleware import shm_clean_counts
    tools = os.path.dirname(_fastdds_script())
    for prefix in ('fastrtps', 'fastdds'):
        _plant_shm(tmp_path, prefix)
        (tmp_path / '{}_{:016x}'.format(prefix, 1)).write_bytes(b'')
    held = [open(str(tmp_path / '{}_{:016x}_el'.format(p, 1)), 'ab')
            for p in ('fastrtps', 'fastdds')]
    try:
        for f in held:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        outputs = [subprocess.run([sys.executable, '-c', _RUN_CLEAN_IN, tools, str(tmp_path)],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  universal_newlines=True, timeout=60) for _ in range(2)]
    finally:
        for f in held:
            f.close()
    assert [o.returncode for o in outputs] == [0, 0], [o.stdout for o in outputs]
    assert [shm_clean_counts(o.stdout) for o in outputs] == [
        {'zombie ports': 1, 'zombie segments': 2}, {'zombie ports': 0, 'zombie segments': 0}], \
        [o.stdout for o in outputs]
    assert '1 segments in use' in outputs[1].stdout, outputs[1].stdout   # not counted
    assert shm_clean_counts('Invalid command\n') is None


@pytest.mark.parametrize('env, runs', [
    ({}, True),                                        # the default RMW: Fast DDS
    ({'RMW_IMPLEMENTATION': 'rmw_fastrtps_cpp'}, True),
    ({'RMW_IMPLEMENTATION': 'rmw_fastrtps_dynamic_cpp'}, True),
    ({'RMW_IMPLEMENTATION': 'rmw_cyclonedds_cpp'}, False),
    ({'RMW_IMPLEMENTATION': 'rmw_zenoh_cpp'}, False),
])
def test_the_shm_cleaner_runs_only_under_fast_dds_and_says_only_what_it_did(
        monkeypatch, env, runs):
    # Every `ros2 launch` said "shared memory: 0 zombie segments cleaned", Cyclone DDS too.
    # The tool's output as Fast DDS 2 prints it, from a stand-in tool (exit code, text).
    import sys
    from depth_ros.nodes_core import middleware
    said = []

    def tool(code, *lines):
        script = 'import sys\nfor line in {!r}: print(line)\nsys.exit({})'.format(lines, code)
        monkeypatch.setattr(middleware, 'fastdds_command', lambda: (
            said.append('ran'), [sys.executable, '-c', script])[1])
        return middleware.shm_clean_note(env)
    head = ('shm.clean:', '3 ports in use', '5 segments in use')
    assert tool(0, *head, '0 zombie ports cleaned', '0 zombie segments cleaned') is None
    told = tool(0, *head, '1 zombie ports cleaned', '2 zombie segments cleaned')
    failed = tool(1, 'Traceback (most recent call last):', "ModuleNotFoundError: No module "
                  "named 'shm'")
    odd = tool(0, 'Invalid command')
    if not runs:
        assert (said, told, failed, odd) == ([], None, None, None)
        return
    assert said == ['ran'] * 4
    assert told == 'shared memory: fastdds shm clean removed 1 zombie port and 2 zombie ' \
        'segments that killed processes left in /dev/shm', told
    assert failed == "shared memory: fastdds shm clean failed (exit code 1): " \
        "ModuleNotFoundError: No module named 'shm'", failed
    assert odd == 'shared memory: fastdds shm clean failed (exit code 0): Invalid command', odd
    monkeypatch.setattr(middleware, 'fastdds_command', lambda: None)
    assert middleware.shm_clean_note(env) is None      # no tool: nothing to say


def test_the_real_fastdds_shm_clean_removes_a_zombie_in_dev_shm():
    # The installed tool, through clean_shm, on /dev/shm itself: it removes only files no live
    # process holds, and a zombie planted here is one (another test's cleaner may get it first).
    from depth_ros.nodes_core.middleware import clean_shm
    _fastdds_script()
    if not os.path.isdir('/dev/shm') or not os.access('/dev/shm', os.W_OK):
        pytest.skip('no writable /dev/shm here')
    planted = _plant_shm('/dev/shm', 'fastrtps', 1, 0) + _plant_shm('/dev/shm', 'fastdds', 1, 0)
    try:
        result = clean_shm(timeout=60)
        assert result is not None and result.cleaned is not None, result
        if result.cleaned:
            assert result.text.startswith('fastdds shm clean removed '), result
        # Fast DDS 2 cleans fastrtps_* files, Fast DDS 3 fastdds_* ones.
        gone = [n for n in planted if not os.path.exists(os.path.join('/dev/shm', n))]
        assert gone in (planted[:2], planted[2:]), (gone, result)
    finally:
        for name in planted:
            try:
                os.unlink(os.path.join('/dev/shm', name))
            except OSError:
                pass

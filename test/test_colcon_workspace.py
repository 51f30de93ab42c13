"""
The commands a ROS user types, in a fresh colcon workspace holding this checkout.

    colcon build && colcon test && colcon test-result
    source install/setup.bash
    ros2 launch depth_ros zed_depth.launch.py source:=sample backend:=standin publish_tf:=false
    ros2 topic hz /alignment_node/points;  ros2 param get|describe|set /alignment_node ...
    Ctrl-C

and what the user reads: the test counts, the rate, the parameters, and a log without an error
line, a traceback or a deprecation warning, shutdown included.
"""
import os
import re
import signal
import subprocess
import sys
import time

from conftest import end_process, process_log, run_bounded
from launch_support import colcon_build, LAUNCH_STACK, MISSING, ROOT, sourced_environment, \
    tool
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.graph, pytest.mark.launch_file,
              pytest.mark.skipif(not LAUNCH_STACK, reason=MISSING or 'launch stack present')]

# The suite that `colcon test` runs here: four of the unit tier's files, named (a core, a checks,
# the launch file's and the sources' tests: ~170; the whole unit tier runs in `make test` itself,
# in the same environment, so the nested run checks colcon's plumbing, conftest and the counts).
# Named files, not `-k` over test/: collecting the whole directory imports every test module
# (torch, transformers) twice, ~20 s of the 36 s this test took with 683 tests.
SUBSET = 'not slow and not graph'
FILES = ['test/test_core_camera.py', 'test/test_core_checks.py', 'test/test_launch.py',
         'test/test_sources.py']


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
    if os.environ.get('DEPTH_ROS_IN_COLCON_TEST'):
        pytest.skip('running inside `colcon test` of this very test (no recursion)')
    pytest.importorskip('skimage', reason='the sample source needs scikit-image')
    ws = str(tmp_path_factory.mktemp('colcon_ws'))
    built = colcon_build(ws)
    out = built.stdout.decode('utf-8', 'replace')
    assert built.returncode == 0 and 'Summary: 1 package finished' in out, out
    # colcon of this Python: the package lands where this Python (Humble's: 3.8) imports from.
    site = os.path.join(ws, 'install', 'depth_ros', 'lib', 'python{}.{}'.format(
        *sys.version_info[:2]), 'site-packages', 'depth_ros')
    assert os.path.isdir(site), 'not installed into {}:\n{}'.format(site, out)
    return ws


def _clean_env():
    env = dict(os.environ)
    # The launch file sets the Fast DDS profile itself (in the variable Fast DDS reads), and
    # the Cyclone DDS configuration.
    for var in ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE',
                'CYCLONEDDS_URI'):
        env.pop(var, None)
    return env


def test_colcon_test_runs_the_suite_and_test_result_counts_it(workspace):
    env = _clean_env()
    env['DEPTH_ROS_IN_COLCON_TEST'] = '1'
    collected = run_bounded(
        [sys.executable, '-m', 'pytest', '--collect-only', '-q', '-m', SUBSET] + FILES, 300,
        cwd=ROOT, env=env)
    text = collected.stdout.decode('utf-8', 'replace')
    found = re.search(r'(\d+)/\d+ tests collected|(\d+) tests collected', text)
    assert found, text[-2000:]
    expected = int(found.group(1) or found.group(2))
    tested = run_bounded(
        [tool('colcon'), 'test', '--packages-select', 'depth_ros',
         '--pytest-args', '-m', SUBSET, '-p', 'no:cacheprovider'] + FILES,
        300, cwd=workspace, env=env)
    assert tested.returncode == 0, tested.stdout.decode('utf-8', 'replace')[-3000:]
    result = run_bounded([tool('colcon'), 'test-result', '--all'], 60, cwd=workspace, env=env)
    summary = result.stdout.decode('utf-8', 'replace')
    match = re.search(r'Summary: (\d+) tests?, (\d+) errors?, (\d+) failures?, (\d+) skipped',
                      summary)
    assert match, summary
    tests, errors, failures, skipped = (int(g) for g in match.groups())
    assert (tests, errors, failures) == (expected, 0, 0), \
        'colcon test-result: {}; pytest collects {}'.format(match.group(0), expected)
    assert result.returncode == 0, summary


def _ros2(env, *args, timeout=30):
    return run_bounded([tool('ros2')] + list(args), timeout, env=env)


# What the tests wait for after a Ctrl-C; past 30 s the group is killed and the test fails.
_AFTER_CTRL_C = 'ros2 launch, waiting for its exit after one SIGINT to its process group (Ctrl-C)'


def _until(fn, timeout):
    end = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > end:
            return value
        time.sleep(0.2)


def _hz(env, topic, reports=3, timeout=20.0, settled=None):
    """
    Run ``ros2 topic hz`` until it printed ``reports`` rates; return them and its output.

    It prints one a second (the mean rate since its first message); it is stopped as Ctrl-C
    does. ``settled(rate)``: with it, until the last rate passes it too, at most ``timeout``.
    """
    def rates(text):
        return [float(x) for x in re.findall(r'average rate: ([0-9.]+)', text)]

    out_path = process_log('depth_ros_hz_')
    with out_path:
        proc = subprocess.Popen([tool('ros2'), 'topic', 'hz', topic], env=env,
                                stdout=out_path, stderr=subprocess.STDOUT)

        def read():
            with open(out_path.name, errors='replace') as f:
                return f.read()

        def done():
            got = rates(read())
            return (len(got) >= reports and (settled is None or settled(got[-1]))) or \
                proc.poll() is not None
        _until(done, timeout)
        proc.send_signal(signal.SIGINT)
        end_process(proc, 20, 'ros2 topic hz, waiting for its exit after SIGINT', read)
    out = read()
    os.unlink(out_path.name)
    return rates(out), out


def test_ros2_launch_topic_hz_param_and_a_quiet_ctrl_c(workspace, tmp_path):
    env = sourced_environment(workspace, _clean_env())
    log_path = tmp_path / 'launch.log'
    with open(str(log_path), 'wb') as log:
        # A terminal's Ctrl-C goes to the whole foreground process group: the launch and, at
        # the same moment, every node (which then get a second SIGINT from launch).
        launch = subprocess.Popen(
            [tool('ros2'), 'launch', 'depth_ros', 'zed_depth.launch.py',
             'source:=sample', 'backend:=standin', 'publish_tf:=false'],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            nodes = _until(lambda: {'/zed/zed_node', '/depth_node', '/alignment_node'} <= set(
                _ros2(env, 'node', 'list').stdout.decode().split()), 60)
            assert nodes, 'the nodes did not come up:\n' + log_path.read_text()
            # Until the mean rate is there, 30 s at most: on a busy machine the first clouds
            # come late (discovery, best-effort transport) and pull the mean since the
            # first message down for a while.
            rates, hz = _hz(env, '/alignment_node/points', timeout=30.0,
                            settled=lambda rate: 7.0 <= rate <= 13.0)
            assert rates and 7.0 <= rates[-1] <= 13.0, \
                'expected about 10 Hz (the sample replays at 10 fps), read {}\n{}'.format(
                    rates, hz)
            got = _ros2(env, 'param', 'get', '/alignment_node', 'cloud_stride')
            assert 'Integer value is: 2' in got.stdout.decode(), got.stdout.decode()
            described = _ros2(env, 'param', 'describe', '/alignment_node', 'pairing_max_mb')
            text = described.stdout.decode()
            assert 'Description: cap on the message payloads' in text and \
                'Min value: 1.0' in text and 'Max value: 65536.0' in text, text
            # A one-sided range is open on its other side (it printed "Max value: 1e+300"),
            # and its given bound is still enforced.
            described = _ros2(env, 'param', 'describe', '/alignment_node', 'max_depth')
            text = described.stdout.decode()
            assert 'Min value: 0.0\n' in text and 'Max value: inf\n' in text, text
            refused = _ros2(env, 'param', 'set', '/alignment_node', 'max_depth', '-1.0')
            assert 'Setting parameter failed: Parameter max_depth out of range Min: 0.0, ' \
                'Max: inf, value: -1.0' in refused.stdout.decode(), refused.stdout.decode()
            refused = _ros2(env, 'param', 'set', '/alignment_node', 'cloud_stride', '0')
            # The descriptor's range, checked by rclpy before our validator runs.
            assert 'Setting parameter failed: Parameter cloud_stride out of range. Min: 1, ' \
                'Max: 32, value: 0' in refused.stdout.decode(), refused.stdout.decode()
            changed = _ros2(env, 'param', 'set', '/alignment_node', 'cloud_stride', '4')
            assert 'Set parameter successful' in changed.stdout.decode(), changed.stdout.decode()
        finally:
            # One SIGINT to the group, never two: two to ros2 launch in quick succession can
            # leave Humble's launch waiting forever (docs/ros.md, Shutdown).
            os.killpg(launch.pid, signal.SIGINT)
            try:
                code = end_process(launch, 30, _AFTER_CTRL_C,
                                   lambda: log_path.read_text(errors='replace'), group=True)
            finally:
                # `ros2 node list` and `ros2 param` started the ros2 daemon: leave no process
                # behind.
                _ros2(env, 'daemon', 'stop')
    text = log_path.read_text()
    assert code == 0, 'ros2 launch exited {}:\n{}'.format(code, text)
    alarming = [line for line in text.splitlines()
                if re.search(r'\[ERROR\]|\[FATAL\]|Traceback|deprecated|KeyboardInterrupt',
                             line)]
    assert not alarming, 'a clean run printed:\n{}\n\nfull log:\n{}'.format(
        '\n'.join(alarming), text)
    # With Cyclone DDS, one line when the kernel caps the receive buffer of our configuration.
    from depth_ros.nodes_core import middleware
    config = os.path.join(workspace, 'install', 'depth_ros', 'share', 'depth_ros', 'config',
                          middleware.CYCLONEDDS_CONFIG)
    wanted, limit = middleware.cyclonedds_receive_buffer(config), middleware.rmem_max()
    told = [line for line in text.splitlines() if 'net.core.rmem_max' in line]
    if middleware.rmw(env) == 'rmw_cyclonedds_cpp' and limit is not None and limit < wanted:
        assert len(told) == 1 and 'sudo sysctl -w net.core.rmem_max={}'.format(wanted) in \
            told[0], text
    else:
        assert not told, text
    # composed:=true (the default): the three nodes are one process.
    finished = re.findall(r'\[(\w+)-\d+\]: process has finished cleanly', text)
    assert sorted(finished) == ['composed_nodes'], text


def _launch_default(env, log_path):
    # The user's command: no backend, no model argument.
    log = open(str(log_path), 'wb')
    proc = subprocess.Popen(
        [tool('ros2'), 'launch', 'depth_ros', 'zed_depth.launch.py',
         'source:=sample', 'publish_tf:=false'],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log = log
    return proc


def _stop(proc, env):
    try:
        os.killpg(proc.pid, signal.SIGINT)
        code = end_process(proc, 30, _AFTER_CTRL_C, lambda: _text(proc.log.name), group=True)
    finally:
        proc.log.close()
        _ros2(env, 'daemon', 'stop')
    return code


def _text(path):
    with open(path, errors='replace') as f:
        return f.read()


def _plain(text):
    return re.sub(r'\x1b\[[0-9;]*m', '', text)


def test_no_model_argument_offline_one_fatal_line_then_clouds_from_the_hub_cache(
        workspace, tmp_path):
    pytest.importorskip('onnxruntime', reason='the default backend here is ONNX Runtime '
                        '(make test-humble-firstrun runs it with numpy 1.24.4)')
    from model_files import community_onnx, make_hub_cache
    env = sourced_environment(workspace, _clean_env())
    env.update(HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(tmp_path / 'hub'),
               DEPTH_ROS_CACHE=str(tmp_path / 'cache'),
               DEPTH_ROS_ENGINE_CACHE=str(tmp_path / 'engines'))
    # 1. Nothing cached: the launch ends within seconds with one line that says what to do.
    t0 = time.monotonic()
    done = run_bounded([tool('ros2'), 'launch', 'depth_ros', 'zed_depth.launch.py',
                        'source:=sample', 'publish_tf:=false'], 60, env=env)
    seconds = time.monotonic() - t0
    out = _plain(done.stdout.decode('utf-8', 'replace'))
    fatal = [line for line in out.splitlines() if '[FATAL]' in line]
    assert len(fatal) == 1 and 'no Depth Anything V2 Small model' in fatal[0] and \
        fatal[0].rstrip().endswith('fix: run `ros2 run depth_ros depth-ros model setup`'), out
    assert 'Traceback' not in out and seconds < 30.0, (seconds, out)
    # 2. The hub cache holds the community file (a random-weight stand-in with its layout and
    # its dynamic sizes; the tiny config, as ViT-S on this shared CPU takes longer per frame
    # than alignment_node's 1 s pairing window), the hub is offline: prepared once, clouds.
    make_hub_cache(str(tmp_path / 'hub'), community_onnx('tiny'))
    launch = _launch_default(env, tmp_path / 'launch.log')
    try:
        echo = _ros2(env, 'topic', 'echo', '--once', '--field', 'header.frame_id',
                     '/alignment_node/points', 'sensor_msgs/msg/PointCloud2', timeout=90)
        text = echo.stdout.decode('utf-8', 'replace')
        assert 'zed_left_camera_optical_frame' in text, text + \
            (tmp_path / 'launch.log').read_text()
    finally:
        code = _stop(launch, env)
    log = _plain((tmp_path / 'launch.log').read_text())
    assert code == 0, log
    summary = [line for line in log.splitlines() if 'depth model: backend onnxruntime' in line]
    assert len(summary) == 1 and '-518x294-default.onnx (Hugging Face cache' in summary[0], log
    alarming = [line for line in log.splitlines()
                if re.search(r'\[ERROR\]|\[FATAL\]|Traceback', line)]
    assert not alarming, log

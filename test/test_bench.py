"""`depth-ros bench`: stage timing, percentiles, report files, CLI and its errors."""
import json
import os

import cv2
from depth_ros import cli
from depth_ros.inference.standin import standin_disparity, StandInDepthModel
from depth_ros.tools import bench
import numpy as np
import pytest


def test_summary_percentiles_match_numpy():
    samples = {s: [] for s in bench.STAGES}
    samples['inference'] = [1.0, 2.0, 3.0, 10.0]
    samples['cloud'] = [0.5, 0.5, 0.5, 0.5]
    res = bench.BenchResult('m', 'b', (4, 3), 4, samples)
    s = res.summary()
    assert list(s) == ['inference', 'cloud', 'total'], 'received {}'.format(list(s))
    assert s['inference']['p50'] == 2.5 and s['inference']['max'] == 10.0
    want = np.percentile([1.5, 2.5, 3.5, 10.5], 90)
    assert abs(s['total']['p90'] - want) < 1e-12, 'expected {}, received {}'.format(
        want, s['total']['p90'])


def _stand_in():
    return StandInDepthModel(input_size=(56, 42), name=bench.STAND_IN_LABEL)


def test_run_bench_times_every_stage_with_stand_in():
    model = _stand_in()
    res = bench.run_bench(model, size=(64, 48), frames=4, warmup=1, progress=False)
    for stage in bench.STAGES:
        assert len(res.samples[stage]) == 4, '{}: expected 4 samples, received {}'.format(
            stage, len(res.samples[stage]))
        assert all(v >= 0 for v in res.samples[stage])
    # The bench uses the one stand-in backend (depth_ros.inference.standin).
    assert res.model == bench.STAND_IN_LABEL and res.backend == 'standin'
    # The stand-in is labelled: its name says it is not a network.
    assert 'no network' in bench.markdown_table(res)


def test_stand_in_split_stages_compute_its_function_at_the_model_size():
    # run_bench times prepare_input, _infer and restore_output apart: _infer must be the
    # stand-in's function of the image, at the model input size.
    from depth_ros.core.preprocess import prepare_input
    rng = np.random.RandomState(3)
    small = rng.randint(0, 256, (42, 56, 3)).astype(np.uint8)   # already at the model size
    for mode in ('intensity', 'gradient'):
        model = StandInDepthModel(input_size=(56, 42), mode=mode)
        got = model._infer(prepare_input(small, (56, 42)))
        want = standin_disparity(small, mode)
        # cv2's gray is rounded to uint8; the batch keeps the fraction: at most 0.5/255 apart.
        err = float(np.abs(got - want).max())
        assert got.shape == (42, 56) and err <= 0.9 * 0.5 / 255 + 1e-5, \
            '{}: expected within {:.5f}, received max error {:.5f}'.format(
                mode, 0.9 * 0.5 / 255, err)


def test_model_without_split_is_timed_as_inference_only():
    class Whole(object):
        name = 'whole'
        backend = 'marigold'
        relative_kind = 'depth'

        def predict(self, bgr):
            return bgr.mean(axis=2).astype(np.float32) / 255.0

    res = bench.run_bench(Whole(), size=(32, 24), frames=3, warmup=0, progress=False)
    assert res.samples['preprocess'] == [] and res.samples['postprocess'] == []
    assert len(res.samples['inference']) == 3
    assert 'preprocess' not in res.summary()


def test_cli_writes_table_json_png(tmp_path):
    pytest.importorskip('matplotlib', reason='the plot needs matplotlib (depth_ros[tools])')
    out = str(tmp_path / 'b')
    rc = cli.main(['bench', '--size', '64x48', '--input-size', '28x28', '--frames', '3',
                   '--warmup', '0', '--out', out])
    assert rc == 0
    data = json.load(open(os.path.join(out, 'bench.json')))
    assert data['size'] == '64x48' and data['frames'] == 3
    assert (data['model'], data['backend']) == (bench.STAND_IN_LABEL, 'standin'), \
        'without --model the labelled stand-in is timed, received {}'.format(
            (data['model'], data['backend']))
    assert set(data['summary']) == set(bench.STAGES) | {'total'}
    assert '| alignment |' in open(os.path.join(out, 'bench.md')).read()
    assert cv2.imread(os.path.join(out, 'bench.png')) is not None


@pytest.mark.parametrize('argv,message', [
    (['--size', '1280by720'], "`--size` must be WIDTHxHEIGHT, e.g. 1280x720, got '1280by720'"),
    (['--frames', '0'], '`--frames` must be >= 1, got 0'),
    (['--input-size', '30x30'], 'input `width` must be a positive multiple of 14, got 30'),
    # Without --model (the stand-in) a bad --device was taken in silence.
    (['--device', 'gpu'], "`--device` must be cpu, cuda or cuda:N, got 'gpu'"),
])
def test_cli_errors(tmp_path, capsys, argv, message):
    rc = cli.main(['bench', '--out', str(tmp_path)] + argv)
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err, 'expected {!r} in {!r}'.format(message, err)


def test_cli_without_matplotlib_stops_before_timing(tmp_path, capsys, monkeypatch):
    # It timed every frame (a TensorRT model on the Jetson: its load and 50 frames), then
    # failed on the plot: the robot installs depth_ros[onnx], not [tools].
    import sys
    monkeypatch.setitem(sys.modules, 'matplotlib', None)
    timed = []
    monkeypatch.setattr(bench, 'run_bench', lambda *a, **k: timed.append(1))
    rc = cli.main(['bench', '--size', '64x48', '--input-size', '28x28', '--frames', '3',
                   '--out', str(tmp_path / 'b')])
    err = capsys.readouterr().err
    assert rc == 2 and 'install depth_ros[tools] (matplotlib) for the plot' in err, err
    assert timed == [] and not (tmp_path / 'b').exists(), timed


def test_cli_refuses_a_negative_warmup(tmp_path, capsys):
    # --warmup -1 was taken (no warm-up) and the run went on.
    with pytest.raises(SystemExit) as done:
        cli.main(['bench', '--warmup', '-1', '--out', str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and \
        err[-1] == "depth-ros bench: error: argument --warmup: must be an integer >= 0, got '-1'"


def test_cli_torch_tiny_random_network(tmp_path):
    pytest.importorskip('transformers')
    import torch
    torch.set_num_threads(1)
    out = str(tmp_path / 't')
    rc = cli.main(['bench', '--backend', 'torch', '--model', 'tiny', '--random-weights',
                   '--size', '64x48', '--frames', '2', '--warmup', '1', '--out', out])
    assert rc == 0
    data = json.load(open(os.path.join(out, 'bench.json')))
    assert data['backend'] == 'torch'
    assert all(len(data['samples_ms'][s]) == 2 for s in bench.STAGES)


def _count_calls(monkeypatch, module, names):
    calls = {n: 0 for n in names}
    for name in names:
        original = getattr(module, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)
        monkeypatch.setattr(module, name, counted)
    return calls


def test_conversion_stage_times_the_nodes_message_conversion(monkeypatch):
    pytest.importorskip('sensor_msgs.msg')
    from depth_ros.ros import conversions as conv
    calls = _count_calls(monkeypatch, conv, ['numpy_to_image', 'cloud_to_pointcloud2'])
    res = bench.run_bench(_stand_in(), size=(64, 48), frames=3, warmup=1,
                          progress=False)
    assert res.conversion == 'ros', 'expected auto -> ros here, received {}'.format(
        res.conversion)
    assert calls == {'numpy_to_image': 4, 'cloud_to_pointcloud2': 4}, 'received {}'.format(calls)
    assert len(res.samples['conversion']) == 3
    table = bench.markdown_table(res)
    assert '| conversion (ROS messages) |' in table, table
    assert res.to_dict()['conversion'] == 'ros'
    assert 'numpy_to_image + cloud_to_pointcloud2' in res.to_dict()['conversion_label']


def test_conversion_stage_without_sensor_msgs_is_labelled_bytes(monkeypatch):
    import sys
    from depth_ros.ros import conversions as conv
    calls = _count_calls(monkeypatch, conv, ['numpy_to_image', 'cloud_to_pointcloud2'])
    monkeypatch.setitem(sys.modules, 'sensor_msgs.msg', None)   # import raises ImportError
    assert not bench.ros_messages_available()
    res = bench.run_bench(_stand_in(), size=(64, 48), frames=2, warmup=0,
                          progress=False)
    assert res.conversion == 'bytes' and calls == {'numpy_to_image': 0,
                                                   'cloud_to_pointcloud2': 0}, calls
    table = bench.markdown_table(res)
    assert '| conversion (bytes only) |' in table, table
    assert 'sensor_msgs not importable, not the ROS message conversion' in table, table
    data = res.to_dict()
    assert data['conversion'] == 'bytes' and 'byte packing only' in data['conversion_label']
    with pytest.raises(ImportError, match='`conversion` ros needs sensor_msgs'):
        bench.run_bench(_stand_in(), size=(64, 48), frames=1,
                        progress=False, conversion='ros')


def test_conversion_value_is_checked():
    with pytest.raises(ValueError) as err:
        bench.resolve_conversion('fast')
    assert str(err.value) == "`conversion` must be one of auto|ros|bytes, got 'fast'", \
        str(err.value)


# --------------------------------------------------------------------------- bench_composed
def _bench_composed():
    import importlib.util
    import sys
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        'benchmarks', 'bench_composed.py')
    spec = importlib.util.spec_from_file_location('bench_composed', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules.setdefault('bench_composed', module)
    return module


# A child that burns CPU, with a grandchild that burns CPU and exits inside the window (the
# child reaps it), and an idle grandchild. Each reports its own CPU seconds (os.times: user +
# system) at the start and the end of the window.
_CHILD = r'''
import os, subprocess, sys, time
GRAND = """
import os, sys, time
t = os.times(); print(t.user + t.system, flush=True)
sys.stdin.readline()
end = time.process_time() + 0.3
while time.process_time() < end:
    pass
t = os.times(); print(t.user + t.system, flush=True)
"""
g = subprocess.Popen([sys.executable, '-c', GRAND], stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, universal_newlines=True)
idle = subprocess.Popen([sys.executable, '-c', 'import sys; print(1, flush=True); '
                         'sys.stdin.read()'], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
g_start = float(g.stdout.readline())
idle.stdout.readline()   # started: idle from here on
t = os.times()
print('ready', g.pid, idle.pid, t.user + t.system, g_start, flush=True)
sys.stdin.readline()
g.stdin.write('go\n'); g.stdin.flush()
end = time.process_time() + 0.3
while time.process_time() < end:
    pass
g_end = float(g.stdout.readline())
g.wait()
t = os.times()
print('done', t.user + t.system, g_end, flush=True)
sys.stdin.readline()
idle.stdin.close(); idle.wait()
'''


def test_process_tree_cpu_of_a_busy_child_and_its_grandchildren():
    import subprocess
    import sys
    bc = _bench_composed()
    child = subprocess.Popen([sys.executable, '-c', _CHILD], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, universal_newlines=True)
    try:
        ready = child.stdout.readline().split()
        assert ready and ready[0] == 'ready', ready
        grand, idle = int(ready[1]), int(ready[2])
        child_start, grand_start = float(ready[3]), float(ready[4])
        before = bc.process_tree(child.pid)
        assert set(before) == {child.pid, grand, idle}, \
            'expected the child and its two children, received {}'.format(before)
        child.stdin.write('go\n')
        child.stdin.flush()
        done = child.stdout.readline().split()
        assert done and done[0] == 'done', done
        after = bc.process_tree(child.pid)
        # The busy grandchild has exited and was reaped: its time is in the child's cutime.
        assert set(after) == {child.pid, idle}, after
        assert os.getpid() not in after
        total, by_name = bc.tree_cpu(before, after)
        want = (float(done[1]) - child_start) + (float(done[2]) - grand_start)
        assert want >= 0.55, 'the processes did not burn their 0.6 s: {}'.format(want)
        # /proc and os.times count the same clock ticks (10 ms): a few ticks apart at most.
        assert abs(total - want) <= 0.04, \
            'expected {:.3f} s of CPU in the window, /proc says {:.3f} s'.format(want, total)
        assert abs(sum(by_name.values()) - total) < 1e-9, by_name
        assert bc.read_stat(child.pid)[0] == os.getpid()   # its parent: this process
    finally:
        if child.poll() is None:
            child.stdin.write('end\n')
            child.stdin.flush()
        child.wait(30)


def test_latency_statistics_rates_and_goal_verdicts():
    bc = _bench_composed()
    lat = [float(x) for x in range(1, 11)]
    s = bc.latency_stats(lat)
    assert (s['n'], s['median'], s['p90']) == (10, 5.5, float(np.percentile(lat, 90))), s
    assert abs(s['p90'] - 9.1) < 1e-12
    empty = bc.latency_stats([])
    assert empty['n'] == 0 and np.isnan(empty['median'])
    separate = bc.combine([
        {'seconds': 10.0, 'clouds': 100, 'cpu_s': 3.0, 'latency_ms': [40.0, 50.0],
         'inference_ms': 30.0},
        {'seconds': 10.0, 'clouds': 100, 'cpu_s': 5.0, 'latency_ms': [60.0],
         'inference_ms': 32.0}])
    assert abs(separate['rate_hz'] - 10.0) < 1e-12
    assert abs(separate['cpu_ms_per_cloud'] - 40.0) < 1e-9, separate   # 8 s / 200 clouds
    assert abs(separate['cpu_pct_core'] - 40.0) < 1e-9                 # 8 s in 20 s
    assert abs(separate['inference_ms'] - 31.0) < 1e-9
    assert separate['latency']['median'] == 50.0
    assert abs(separate['beyond_inference']['median'] - 19.0) < 1e-9
    half = bc.combine([{'seconds': 20.0, 'clouds': 200, 'cpu_s': 3.6,
                        'latency_ms': [36.0, 37.0, 45.0], 'inference_ms': 31.0}])
    v = bc.verdicts(separate, half, '720p')
    assert abs(v['ratio'] - 0.45) < 1e-9 and v['cpu_goal'] == 'met', v
    assert v['latency_goal'] == 'met', v                    # 37 - 31 = 6 ms <= 8 ms
    assert bc.verdicts(separate, half, 'sample')['latency_goal'] == '-'
    # Read where inference is fixed (the stand-in's), not on a rolling mean of a real backend's.
    v = bc.verdicts(separate, half, '720p', 'onnxruntime')
    assert (v['cpu_goal'], v['latency_goal']) == ('met', '-'), v
    # Half the CPU per cloud, but fewer clouds: not "at the same output rate".
    slow = bc.combine([{'seconds': 20.0, 'clouds': 150, 'cpu_s': 2.7,
                        'latency_ms': [50.0], 'inference_ms': 31.0}])
    v = bc.verdicts(separate, slow, '720p')
    assert abs(v['ratio'] - 0.45) < 1e-9 and v['cpu_goal'] == 'missed', v
    assert v['latency_goal'] == 'missed', v                 # 19 ms beyond inference
    nothing = bc.combine([{'seconds': 20.0, 'clouds': 0, 'cpu_s': 2.0, 'latency_ms': [],
                           'inference_ms': float('nan')}])
    v = bc.verdicts(separate, nothing, '720p')
    assert np.isnan(v['ratio']) and (v['cpu_goal'], v['latency_goal']) == ('-', '-'), v


def test_latency_split_into_the_alignment_stage_and_the_handover():
    bc = _bench_composed()

    def diag(processing, input_age, wait, latency, prepare, used, missed):
        # As alignment_node's: the prepare during inference is a stage of its own, first.
        return {'stage_prepare_ms': str(prepare), 'processing_ms': str(processing),
                'input_age_ms': str(input_age), 'stage_wait_ms': str(wait),
                'latency_ms': str(latency), 'stage_convert_ms': '1.0',
                'stage_align_ms': str(processing - 1.0), 'prepared_used': str(used),
                'prepared_missed': str(missed)}
    rounds = [
        {'seconds': 10.0, 'clouds': 100, 'cpu_s': 3.0, 'latency_ms': [60.0, 62.0, 64.0],
         'inference_ms': 30.0, 'alignment_node': diag(20.0, 34.0, 1.0, 57.0, 4.0, 90, 10),
         'depth_node': {'input_age_ms_mean': '0.5', 'stage_wait_ms': '2.0'}},
        {'seconds': 10.0, 'clouds': 300, 'cpu_s': 9.0, 'latency_ms': [58.0],
         'inference_ms': 30.0, 'alignment_node': diag(24.0, 38.0, 3.0, 59.0, 8.0, 300, 0),
         'depth_node': {'input_age_ms_mean': 'nan', 'stage_wait_ms': '4.0'}}]
    x = bc.combine(rounds)['latency_split']
    # Beyond inference: median(60, 62, 64, 58) - 30 = 31 = mean - 30; the stage weighted by
    # clouds: (20 * 100 + 24 * 300) / 400 = 23; the handover, the rest of the mean: 8.
    assert abs(x['beyond_inference_median_ms'] - 31.0) < 1e-9, x
    assert abs(x['beyond_inference_mean_ms'] - 31.0) < 1e-9, x
    assert abs(x['alignment_stage_ms'] - 23.0) < 1e-9, x
    assert abs(x['handover_ms'] - 8.0) < 1e-9, x
    assert abs(x['upstream_ms'] - (37.0 - 30.0)) < 1e-9, x       # input age 37 - inference
    assert abs(x['alignment_queue_ms'] - 2.5) < 1e-9, x
    assert abs(x['delivery_ms'] - (61.0 - 58.5)) < 1e-9, x       # mean latency - latency_ms
    assert x['depth_input_age_ms'] == 0.5 and x['depth_queue_ms'] == 3.5, x   # NaN left out
    assert list(x['alignment_stages_ms']) == ['convert', 'align'], x
    assert abs(x['alignment_stages_ms']['align'] - 22.0) < 1e-9, x
    # The prepare is apart (during inference): (4 * 100 + 8 * 300) / 400 = 7; 390 of 400 sets.
    assert abs(x['prepare_ms'] - 7.0) < 1e-9 and x['prepared_fraction'] == 390 / 400.0, x
    # Rounds without diagnostics: NaN, not an error, and the table's lines still print.
    bare = bc.combine([{'seconds': 1.0, 'clouds': 5, 'cpu_s': 0.1, 'latency_ms': [40.0],
                        'inference_ms': 30.0}])['latency_split']
    assert np.isnan(bare['alignment_stage_ms']) and np.isnan(bare['handover_ms']), bare
    lines = bc.split_lines({('720p', 'standin'): {'composed': bc.combine(rounds)}})
    assert lines[1].startswith('  720p standin composed: beyond inference (median 31.0) mean '
                               '31.0 ms = alignment stage 23.0 (convert 1.0, align 22.0) + '
                               'handover/queues 8.0 '), lines
    # Skewed latencies: the parts add up to the mean, not to the median (40 - 30 = 10 ms below
    # a 22 ms stage would read as a negative handover).
    skewed = bc.combine([{'seconds': 1.0, 'clouds': 3, 'cpu_s': 0.1, 'latency_ms': [40.0, 40.0,
                                                                                    100.0],
                          'inference_ms': 30.0,
                          'alignment_node': {'processing_ms': '22.0'}}])['latency_split']
    assert (skewed['beyond_inference_median_ms'], skewed['beyond_inference_mean_ms'],
            skewed['handover_ms']) == (10.0, 30.0, 8.0), skewed
    assert lines[1].endswith('; prepared during inference: 7.0 ms, 98 % of the sets finished '
                             'from it'), lines
    assert np.isnan(bare['prepare_ms']) and np.isnan(bare['prepared_fraction']), bare


def test_cloud_stamp_read_from_the_serialized_bytes():
    pytest.importorskip('rclpy', reason='rclpy serializes the message')
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import PointCloud2
    bc = _bench_composed()
    msg = PointCloud2()
    msg.header.stamp.sec, msg.header.stamp.nanosec = 1700000123, 456789012
    msg.header.frame_id = 'zed_left_camera_optical_frame'
    msg.data = bytes(range(200))
    assert bc.cdr_stamp_ns(serialize_message(msg)) == 1700000123 * 10 ** 9 + 456789012


def test_seven_zip_rating_and_carmel_ratio():
    bc = _bench_composed()
    out = ('Dict     Speed Usage    R/U Rating  |      Speed Usage    R/U Rating\n'
           'Avr:       918    31   3113    970  |      17072    40   3787   1493\n'
           'Tot:              35   3450   1232\n')
    assert bc.parse_7zip(out) == (35.0, 3450.0, 1232.0)
    with pytest.raises(ValueError, match='no "Tot:" line'):
        bc.parse_7zip('Avr: 1 2 3')
    nx = bc.XAVIER_NX['7zip_single_mips']
    assert abs(bc.carmel_ratio(2 * nx, six_core=False) - 2.0) < 1e-12
    assert abs(bc.carmel_ratio(2 * nx) - 2.0 * 1890.0 / 1420.8) < 1e-12


def test_bench_composed_params_file_takes_overrides_and_names_a_bad_one(tmp_path):
    import yaml
    bc = _bench_composed()
    path = bc.params_file(str(tmp_path / 'p.yaml'), 7.0, 25.0,
                          ['alignment_node.finish_threads=2', 'alignment_node.cloud_stride=4'])
    with open(path) as f:
        params = yaml.safe_load(f)
    align = params['/**/alignment_node']['ros__parameters']
    assert (align['finish_threads'], align['cloud_stride']) == (2, 4)
    assert params['/**/zed_node']['ros__parameters']['fps'] == 7.0
    assert params['/**/depth_node']['ros__parameters']['standin_latency_ms'] == 25.0
    with pytest.raises(SystemExit, match="--param takes NODE.NAME=VALUE, got 'cloud_stride=4'"):
        bc.params_file(str(tmp_path / 'q.yaml'), 7.0, 25.0, ['cloud_stride=4'])
    with pytest.raises(SystemExit, match="no node 'alignment' in"):
        bc.params_file(str(tmp_path / 'q.yaml'), 7.0, 25.0, ['alignment.cloud_stride=4'])


def test_bench_composed_720p_zed_arguments_launch_and_environment(tmp_path, capsys):
    # 720p-zed: zed_node's live ZED path on the simulated SDK, beside the bag replay (720p).
    bc = _bench_composed()
    args = bc.parse_args([])
    assert args.sizes == ['sample', '720p', '720p-zed'], args.sizes
    assert bc.parse_args(['--sizes', '720p-zed', '--fps', '15']).fps == 15.0
    assert bc.parse_args(['--sizes', '720p', '--fps', '7.5']).sizes == ['720p']
    assert bc.parse_args(['--quick', '--fps', '7.5']).sizes == ['sample']
    # The simulated SDK's pyzed: JetPack 5.1's 4.x by default (its grab keeps the GIL).
    assert args.zed_layout == 'v4.1' and \
        bc.parse_args(['--zed-layout', 'v5.0']).zed_layout == 'v5.0'
    with pytest.raises(SystemExit):
        bc.parse_args(['--zed-layout', 'v4.2'])
    assert "invalid choice: 'v4.2'" in capsys.readouterr().err
    assert bc.parse_args(['--zed-grab-work-ms', '8']).zed_grab_work_ms == 8.0
    for work in ('-1', '100', 'nan'):
        with pytest.raises(SystemExit):
            bc.parse_args(['--zed-grab-work-ms', work])
        assert '--zed-grab-work-ms must be >= 0 and less than a frame period (100 ms at --fps ' \
            '10); got {}'.format(work) in capsys.readouterr().err
    for fps in ('7.5', '0', 'nan'):
        with pytest.raises(SystemExit) as err:
            bc.parse_args(['--sizes', '720p', '720p-zed', '--fps', fps])
        assert err.value.code == 2
        assert 'a whole number in [1, 120]; got {}'.format(fps) in capsys.readouterr().err
    setup = {'params': '/p.yaml', 'bag': '/b', 'pyzed_site': '/site', 'has_composed': True}
    assert bc.launch_argv(setup, '720p-zed', 'standin', 'composed') == [
        'publish_tf:=false', 'backend:=standin', 'params_file:=/p.yaml', 'source:=live',
        'composed:=true']
    assert bc.launch_argv(setup, '720p', 'standin', 'separate')[3:] == [
        'source:=bag', 'path:=/b', 'composed:=false']
    env = {'PYTHONPATH': '/x', 'A': '1'}
    assert bc.round_env(env, setup, '720p') is env
    assert bc.round_env(env, setup, '720p-zed') == {'PYTHONPATH': '/site' + os.pathsep + '/x',
                                                    'A': '1'}
    assert bc.round_env({}, setup, '720p-zed') == {'PYTHONPATH': '/site'}
    import yaml
    with open(bc.params_file(str(tmp_path / 'p.yaml'), 15.0, 30.0)) as f:
        zed = yaml.safe_load(f)['/**/zed_node']['ros__parameters']
    assert (zed['fps'], zed['grab_fps']) == (15.0, 15) and isinstance(zed['grab_fps'], int)
    # The simulated SDK as the node's process finds it: a pyzed whose live camera serves the
    # bag's frames (bench_graph.synthetic_frame at 1280x720, soak.write_bag's camera).
    import subprocess
    import sys
    from bench_graph import synthetic_frame
    nogil = bc.simulated_zed(str(tmp_path / 'v50'), frames=1, layout='v5.0', grab_work_ms=8.0)
    with open(os.path.join(nogil, 'pyzed', '__init__.py')) as f:
        text = f.read()
    assert "make_sl('v5.0', scene=" in text and 'grab_work_s=0.008)' in text, text
    site = bc.simulated_zed(str(tmp_path), frames=2)
    with open(os.path.join(site, 'pyzed', '__init__.py')) as f:
        assert "make_sl('v4.1', scene=" in f.read()
    code = ('import numpy as np\n'
            'from depth_ros.sources.zed import ZedSource\n'
            's = ZedSource(fps=30, min_depth=0.3, max_depth=20.0, confidence_threshold=95)\n'
            'fs = [s.read() for _ in range(3)]\n'
            'c = fs[0].camera\n'
            'print(c.fx, c.fy, c.cx, c.cy, c.width, c.height, fs[0].baseline_m)\n'
            'np.savez({!r}, *[a for f in fs for a in (f.left, f.depth, f.confidence)],\n'
            '         stamps=[f.stamp_ns for f in fs])\n').format(str(tmp_path / 'got.npz'))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, '-c', code], cwd=root, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join([site, root])))
    assert done.returncode == 0, done.stdout
    assert done.stdout.split()[-7:] == ['700.0', '700.0', '639.5', '359.5', '1280', '720',
                                        '0.12'], done.stdout
    got = np.load(str(tmp_path / 'got.npz'))
    stamps = got['stamps']
    for j in range(3):
        k = int(round((stamps[j] - stamps[0]) * 30 / 1e9))
        bgr, depth, conf = synthetic_frame(k % 2)
        np.testing.assert_array_equal(got['arr_{}'.format(3 * j)], bgr)
        np.testing.assert_array_equal(got['arr_{}'.format(3 * j + 1)], depth)
        np.testing.assert_array_equal(got['arr_{}'.format(3 * j + 2)], conf)

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
])
def test_cli_errors(tmp_path, capsys, argv, message):
    rc = cli.main(['bench', '--out', str(tmp_path)] + argv)
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err, 'expected {!r} in {!r}'.format(message, err)


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

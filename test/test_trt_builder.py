"""
Engine builder: FP32 pinning, option checks, cache reuse/rebuild, INT8 calibration, progress.

TensorRT itself is replaced by the trt_api double (test_trt_double.py); everything else is real.
"""
from __future__ import annotations

import json
import logging
import os
import threading

from conftest import wait_until
import cv2
from depth_ros.inference.tensorrt.builder import build_engine, keep_fp32, PhaseLogger
from depth_ros.inference.tensorrt.cache import EngineCache, key_digest, sidecar_path
from depth_ros.util import file_sha256, log_heartbeat
import numpy as np
import pytest
from test_trt_double import FakeTrtApi, write_fake_onnx


@pytest.mark.parametrize('name, kind, expected', [
    ('/backbone/encoder/layer.0/norm1/ReduceMean', 'REDUCE', True),
    ('/backbone/encoder/layer.11/norm2/Sqrt', 'UNARY', True),
    ('/backbone/layernorm/Div', 'ELEMENTWISE', True),
    ('/blocks.3/ln_1/Pow', 'ELEMENTWISE', True),
    ('anything', 'NORMALIZATION', True),          # TensorRT >= 8.6 LayerNormalization node
    ('/attention/Softmax', 'SOFTMAX', True),
    ('/attn/softmax_decomposed/Exp', 'UNARY', True),
    ('/backbone/encoder/layer.0/attention/MatMul', 'MATRIX_MULTIPLY', False),
    ('/backbone/encoder/layer.0/mlp/fc1/Add', 'ELEMENTWISE', False),
    ('/head/conv1/Conv', 'CONVOLUTION', False),
    ('/neck/normalize_features/Conv', 'CONVOLUTION', False),
    ('/backbone/norm1/Constant', 'CONSTANT', False),  # constants carry no arithmetic
    ('/enormous/Add', 'ELEMENTWISE', False),          # 'norm' only as a whole name part
])
def test_keep_fp32(name, kind, expected):
    assert keep_fp32(name, kind) is expected, '{} {}: expected {}'.format(name, kind, expected)


def _build(tmp_path, api=None, **kwargs):
    onnx = kwargs.pop('onnx', None) or write_fake_onnx(tmp_path / 'vits.onnx')
    api = api or FakeTrtApi()
    result = build_engine(onnx, cache_dir=str(tmp_path / 'cache'), api=api, **kwargs)
    return api, onnx, result


def test_build_writes_engine_and_record_with_the_full_key(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger='depth_ros.tensorrt'):
        api, onnx, result = _build(tmp_path, workspace_mb=512)
    assert result.built and result.fp32_layers == 3, result.fp32_layers  # 2 norm + softmax
    with open(sidecar_path(result.engine_path)) as f:
        record = json.load(f)
    expected_key = {'tensorrt_version': '8.5.2.2', 'gpu_name': 'Xavier',
                    'compute_capability': '7.2', 'onnx_sha256': file_sha256(onnx),
                    'input_shape': [1, 3, 28, 42], 'precision': 'fp16', 'dla_core': None}
    assert record['key'] == expected_key, 'expected {}, received {}'.format(expected_key,
                                                                            record['key'])
    assert record['workspace_mb'] == 512 and record['fp32_layers'] == 3
    assert api.builds == [{'precision': 'fp16', 'workspace_bytes': 512 << 20, 'dla_core': None,
                           'input_shape': [1, 3, 28, 42]}]
    assert os.path.basename(result.engine_path) == 'vits_42x28_fp16_{}.engine'.format(
        key_digest(expected_key))
    assert 'engine written to {}'.format(result.engine_path) in caplog.text


def test_matching_cached_engine_is_reused_and_a_changed_key_rebuilds(tmp_path, caplog):
    api, onnx, first = _build(tmp_path)
    _, _, again = _build(tmp_path, api=api, onnx=onnx)
    assert not again.built and again.engine_path == first.engine_path
    assert api.calls['build'] == 1, 'a matching engine must not be rebuilt'
    newer = FakeTrtApi(tensorrt_version='10.3.0')
    with caplog.at_level(logging.INFO, logger='depth_ros.tensorrt'):
        _, _, rebuilt = _build(tmp_path, api=newer, onnx=onnx)
    assert rebuilt.built and rebuilt.engine_path != first.engine_path
    assert 'not reusing {}: engine built with TensorRT 8.5.2.2 but this is 10.3.0'.format(
        first.engine_path) in caplog.text
    _, _, forced = _build(tmp_path, api=api, onnx=onnx, force=True)
    assert forced.built and api.calls['build'] == 2


def test_a_changed_onnx_gets_its_own_engine(tmp_path):
    api, onnx, first = _build(tmp_path)
    write_fake_onnx(onnx, weights=(1.0, 1.0, 1.0))
    _, _, second = _build(tmp_path, api=api, onnx=onnx)
    assert second.built and second.engine_path != first.engine_path
    assert second.key['onnx_sha256'] == file_sha256(onnx) != first.key['onnx_sha256']


def test_a_corrupt_cached_engine_is_rebuilt(tmp_path, caplog):
    api, onnx, first = _build(tmp_path)
    with open(first.engine_path, 'r+b') as f:
        f.truncate(10)
    with caplog.at_level(logging.WARNING, logger='depth_ros.tensorrt'):
        _, _, again = _build(tmp_path, api=api, onnx=onnx)
    assert again.built and 'is truncated' in caplog.text
    EngineCache(str(tmp_path / 'cache')).validate(again.engine_path, again.key)


def test_fp32_pins_nothing(tmp_path):
    _, _, result = _build(tmp_path, precision='fp32')
    assert result.fp32_layers == 0 and result.key['precision'] == 'fp32'


def _frames(folder, n):
    os.makedirs(str(folder))
    rng = np.random.default_rng(3)
    for i in range(n):
        cv2.imwrite(os.path.join(str(folder), '{:02d}.png'.format(i)),
                    rng.integers(0, 256, (30, 50, 3), dtype=np.uint8))


def test_int8_calibrates_from_frames_then_reuses_the_calibration_cache(tmp_path):
    _frames(tmp_path / 'frames', 5)
    api, onnx, result = _build(tmp_path, precision='int8', calib_dir=str(tmp_path / 'frames'),
                               calib_batch_size=2)
    assert len(api.calibration_batches) == 2, 'expected 2 batches of 2 (1 frame dropped)'
    assert all(b.shape == (2, 3, 28, 42) for b in api.calibration_batches)
    with open(sidecar_path(result.engine_path)) as f:
        calib = json.load(f)['calibration']
    assert calib['images'] == 5 and calib['batch_size'] == 2
    assert os.path.isfile(calib['cache']) and calib['cache'].endswith(
        'vits_42x28_{}_trt8.5.2.2.calib'.format(file_sha256(onnx)[:12]))
    # A rebuild without frames uses the calibration cache and reads no batch.
    api2 = FakeTrtApi()
    _, _, again = _build(tmp_path, api=api2, onnx=onnx, precision='int8', force=True)
    assert again.built and api2.calibration_batches == []


def test_int8_without_frames_or_cache_is_refused(tmp_path):
    with pytest.raises(ValueError, match='precision int8 needs `calib_dir`'):
        _build(tmp_path, precision='int8')


@pytest.mark.parametrize('kwargs, message', [
    ({'precision': 'fp8'}, "`precision` must be one of fp16|fp32|int8, got 'fp8'"),
    ({'workspace_mb': 0}, '`workspace_mb` must be an integer > 0 (MiB), got 0'),
    ({'workspace_mb': 100000}, '`workspace_mb` must be at most 65536 MiB, got 100000'),
    ({'dla_core': -1}, '`dla_core` must be None or an integer >= 0, got -1'),
    ({'dla_core': 0}, '`dla_core` 0 does not exist: this platform has 0 DLA cores'),
    ({'dla_core': 0, 'precision': 'fp32'},
     '`dla_core` 0 needs precision fp16 or int8 (the DLA has no FP32), got fp32'),
    ({'input_size': (56, 28)}, '`input_size` (56, 28) does not match ONNX file {onnx} input '
     'width 42'),
])
def test_bad_options_are_refused_with_their_value(tmp_path, kwargs, message):
    onnx = write_fake_onnx(tmp_path / 'vits.onnx')
    with pytest.raises(ValueError) as info:
        _build(tmp_path, onnx=onnx, **kwargs)
    expected = message.format(onnx=onnx)
    assert str(info.value) == expected, 'expected {!r}, received {!r}'.format(
        expected, str(info.value))


def test_dla_core_with_gpu_fallback_is_passed_to_the_builder(tmp_path):
    api, _, result = _build(tmp_path, api=FakeTrtApi(dla_cores=2), dla_core=1)
    assert api.builds[0]['dla_core'] == 1 and result.key['dla_core'] == 1
    assert '_dla1_' in os.path.basename(result.engine_path)


def test_dynamic_onnx_needs_input_size(tmp_path):
    onnx = write_fake_onnx(tmp_path / 'dyn.onnx', shape=(1, 3, -1, -1))
    with pytest.raises(ValueError, match=r'dynamic input shape \[1, 3, -1, -1\]; give input_size'):
        _build(tmp_path, onnx=onnx)
    api, _, result = _build(tmp_path, onnx=onnx, input_size=(70, 42))
    assert result.key['input_shape'] == [1, 3, 42, 70] == api.builds[0]['input_shape']


def test_missing_and_unparsable_onnx_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='ONNX file .*missing.onnx does not exist'):
        _build(tmp_path, onnx=str(tmp_path / 'missing.onnx'))
    # The TensorRT double parses the file with onnx (TensorRT's own parser needs none).
    pytest.importorskip('onnx', reason='the TensorRT double reads ONNX files with onnx '
                        '(depth_ros[onnx])')
    bad = tmp_path / 'bad.onnx'
    bad.write_text('garbage')
    with pytest.raises(RuntimeError, match='could not parse ONNX file .*bad.onnx'):
        _build(tmp_path, onnx=str(bad))


def test_progress_monitor_where_it_exists(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger='depth_ros.tensorrt'):
        _build(tmp_path, api=FakeTrtApi(progress_monitor=True))
    assert 'Building engine (2 steps)' in caplog.text
    assert '  Tactic selection (1 steps)' in caplog.text, 'child phases are indented'
    assert 'done: Building engine' in caplog.text


def test_phase_logger_cancel_and_event_order():
    logger = PhaseLogger()
    logger.phase_start('a', None, 2)
    assert logger.step_complete('a', 0) is True
    logger.cancel()
    assert logger.step_complete('a', 1) is False, 'cancel asks TensorRT to stop'
    logger.phase_finish('a')
    assert logger.events == [('start', 'a'), ('step', 'a'), ('step', 'a'), ('finish', 'a')]


def test_heartbeat_logs_elapsed_time_until_stopped(caplog):
    log = logging.getLogger('depth_ros.tensorrt')
    with caplog.at_level(logging.INFO, logger='depth_ros.tensorrt'):
        with log_heartbeat(log, 'building fp16 engine', interval_s=0.01) as beat:
            assert wait_until(lambda: beat.beats >= 2, 10), \
                'expected 2 heartbeats at 0.01 s within 10 s, received {}'.format(beat.beats)
    assert not beat.running, 'heartbeat kept running after the build'
    lines = [r.getMessage() for r in caplog.records if 'elapsed' in r.getMessage()]
    assert len(lines) == beat.beats and lines[0] == 'building fp16 engine: 0 s elapsed', \
        'expected {} heartbeat lines, received {}'.format(beat.beats, lines)
    with pytest.raises(ValueError, match='`interval_s` must be > 0, got 0'):
        log_heartbeat(log, 'x', interval_s=0)


def test_build_without_progress_monitor_runs_under_a_heartbeat(tmp_path, caplog, monkeypatch):
    # TensorRT < 10 reports nothing while it builds: the heartbeat must run during the build
    # (and only then).
    api = FakeTrtApi(progress_monitor=False)
    real_build = api.build_serialized
    seen = []

    def slow_build(*args, **kwargs):
        seen.append(wait_until(lambda: 'building fp16 engine: 0 s elapsed' in caplog.text, 10))
        return real_build(*args, **kwargs)

    monkeypatch.setattr(api, 'build_serialized', slow_build)
    with caplog.at_level(logging.INFO, logger='depth_ros.tensorrt'):
        _build(tmp_path, api=api, heartbeat_s=0.01)
    assert seen == [True], 'no heartbeat while building'
    left = [t.name for t in threading.enumerate() if t.name.startswith('heartbeat-')]
    assert left == [], 'heartbeat kept running after the build: {}'.format(left)

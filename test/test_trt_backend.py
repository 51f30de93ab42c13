"""
TensorRTDepthModel and load_engine_model on the trt_api double.

Shared pre/post-processing, buffers allocated once, key checks before deserialization, clear
errors naming the file.
"""
from __future__ import annotations

import logging
import os

from depth_ros.core.preprocess import prepare_input, restore_output
from depth_ros.inference.tensorrt import (EngineCacheError, EngineMismatchError,
                                          find_cached_engine, load_engine_model)
from depth_ros.inference.tensorrt.backend import TensorRTDepthModel
from depth_ros.inference.tensorrt.builder import build_engine
from depth_ros.inference.tensorrt.cache import EngineCache, file_sha256, make_key
import numpy as np
import pytest
from test_trt_double import fake_forward, fake_plan, FakeTrtApi, write_fake_onnx

SHAPE = (1, 3, 28, 42)


def _cached_engine(tmp_path, plan=None, key_changes=None, **plan_kwargs):
    """Write a fake plan + record into tmp_path/cache, as `model build` would."""
    onnx = write_fake_onnx(tmp_path / 'vits.onnx')
    runtime = {'gpu_name': 'Xavier', 'compute_capability': '7.2', 'tensorrt_version': '8.5.2.2'}
    runtime.update(key_changes or {})
    key = make_key(runtime, file_sha256(onnx), SHAPE, 'fp16')
    cache = EngineCache(str(tmp_path / 'cache'))
    plan = fake_plan(SHAPE, **plan_kwargs) if plan is None else plan
    return cache.write(cache.path_for(onnx, key), plan, key), onnx


def _bgr(h=60, w=80, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_predict_is_shared_preprocess_engine_and_shared_postprocess(tmp_path):
    engine, _ = _cached_engine(tmp_path)
    api = FakeTrtApi()
    model = TensorRTDepthModel(engine, cache_dir=str(tmp_path / 'cache'), api=api)
    assert model.input_size == (42, 28) and model.precision == 'fp16'
    bgr = _bgr()
    got = model.predict(bgr)
    expected = restore_output(fake_forward(prepare_input(bgr, (42, 28))).astype(np.float32),
                              60, 80)
    assert got.shape == (60, 80) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5,
                               err_msg='engine output differs from preprocess->engine->restore')


def test_buffers_are_page_locked_and_allocated_once(tmp_path):
    engine, _ = _cached_engine(tmp_path, extra_output=True)
    api = FakeTrtApi()
    model = TensorRTDepthModel(engine, cache_dir=str(tmp_path / 'cache'), api=api)
    allocations = (api.calls['pagelocked_empty'], api.calls['device_alloc'])
    assert allocations == (3, 3), 'one host + one device buffer per I/O tensor, got {}'.format(
        allocations)
    pinned = model._input_buffer()
    outputs = [model.predict(_bgr(seed=i)) for i in range(5)]
    assert (api.calls['pagelocked_empty'], api.calls['device_alloc']) == allocations, \
        'predict allocated buffers'
    assert model._input_buffer() is pinned, 'the page-locked input must be reused'
    assert api.calls['execute'] == 5
    assert not np.shares_memory(outputs[0], outputs[1]), 'results must not alias the buffer'
    assert model.latency.count == 5 and model.infer_latency.count == 5
    diag = model.diagnostics()
    assert diag['frames'] == 5 and diag['precision'] == 'fp16' and diag['input_shape'] == \
        '1x3x28x42'


def test_per_frame_latency_is_logged_at_debug(tmp_path, caplog):
    engine, _ = _cached_engine(tmp_path)
    model = TensorRTDepthModel(engine, cache_dir=str(tmp_path / 'cache'), api=FakeTrtApi())
    with caplog.at_level(logging.DEBUG):
        model.predict(_bgr())
    assert 'tensorrt engine' in caplog.text and 'tensorrt predict' in caplog.text


def test_fp16_output_is_restored_as_float32(tmp_path):
    engine, _ = _cached_engine(tmp_path, output_dtype='float16')
    model = TensorRTDepthModel(engine, cache_dir=str(tmp_path / 'cache'), api=FakeTrtApi())
    bgr = _bgr()
    got = model.predict(bgr)
    expected = restore_output(fake_forward(prepare_input(bgr, (42, 28))).astype(np.float16),
                              60, 80)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)  # one float16 ulp


@pytest.mark.parametrize('runtime, message', [
    (dict(tensorrt_version='10.3.0'), 'engine built with TensorRT 8.5.2.2 but this is 10.3.0'),
    (dict(gpu_name='Orin', compute_capability='8.7'),
     "engine built on GPU 'Xavier' but this is 'Orin'; engine built for compute capability 7.2 "
     'but this GPU is 8.7'),
])
def test_engine_for_another_runtime_is_refused_before_deserializing(tmp_path, runtime, message):
    engine, _ = _cached_engine(tmp_path)
    api = FakeTrtApi(**runtime)
    with pytest.raises(EngineMismatchError) as info:
        TensorRTDepthModel(engine, cache_dir=str(tmp_path / 'cache'), api=api)
    assert message in str(info.value), 'expected {!r} in {!r}'.format(message, str(info.value))
    assert api.calls['device_alloc'] == 0


def test_expectations_are_checked(tmp_path):
    engine, onnx = _cached_engine(tmp_path)
    cache_dir = str(tmp_path / 'cache')
    TensorRTDepthModel(engine, cache_dir=cache_dir, onnx=onnx, precision='fp16',
                       input_size=(42, 28), api=FakeTrtApi())
    with pytest.raises(EngineMismatchError, match='engine precision is fp16 but int8 was'):
        TensorRTDepthModel(engine, cache_dir=cache_dir, precision='int8', api=FakeTrtApi())
    with pytest.raises(EngineMismatchError, match=r'engine input shape is \[1, 3, 28, 42\] but '
                                                  r'\[1, 3, 14, 14\] was requested'):
        TensorRTDepthModel(engine, cache_dir=cache_dir, input_size=(14, 14), api=FakeTrtApi())
    write_fake_onnx(onnx, weights=(2.0, 0.0, 0.0))
    with pytest.raises(EngineMismatchError, match=r'\(the model changed\)'):
        TensorRTDepthModel(engine, cache_dir=cache_dir, onnx=onnx, api=FakeTrtApi())


def test_plan_that_tensorrt_refuses_names_the_file(tmp_path):
    # Record and hash match (so the cache cannot tell), but TensorRT refuses the bytes.
    engine, _ = _cached_engine(tmp_path, plan=b'\x00garbage' * 64)
    with pytest.raises(EngineCacheError) as info:
        TensorRTDepthModel(engine, cache_dir=str(tmp_path / 'cache'), api=FakeTrtApi())
    text = str(info.value)
    assert text.startswith('TensorRT could not deserialize engine file {}'.format(
        os.path.realpath(engine))) and 'magicTag' in text, text


def test_truncated_engine_is_refused_before_tensorrt_sees_it(tmp_path):
    engine, _ = _cached_engine(tmp_path)
    with open(engine, 'r+b') as f:
        f.truncate(64)
    api = FakeTrtApi()
    with pytest.raises(EngineCacheError, match='engine file .* is truncated: 64 bytes'):
        TensorRTDepthModel(engine, cache_dir=str(tmp_path / 'cache'), api=api)


def test_engine_outside_the_cache_is_refused(tmp_path):
    engine, _ = _cached_engine(tmp_path)
    with pytest.raises(ValueError, match='outside the engine cache directory'):
        TensorRTDepthModel(engine, cache_dir=str(tmp_path / 'other'), api=FakeTrtApi())


def test_engine_with_wrong_io_is_refused(tmp_path):
    engine, _ = _cached_engine(tmp_path, plan=fake_plan((1, 3, 14, 14)))
    with pytest.raises(EngineCacheError, match=r'must have one float32 input of shape '
                                               r'\[1, 3, 28, 42\]'):
        TensorRTDepthModel(engine, cache_dir=str(tmp_path / 'cache'), api=FakeTrtApi())


def test_bad_image_is_a_value_error(tmp_path):
    engine, _ = _cached_engine(tmp_path)
    model = TensorRTDepthModel(engine, cache_dir=str(tmp_path / 'cache'), api=FakeTrtApi())
    with pytest.raises(ValueError, match='`bgr` must have dtype uint8'):
        model.predict(np.zeros((10, 10, 3), np.float32))


def test_close_is_idempotent(tmp_path):
    engine, _ = _cached_engine(tmp_path)
    with TensorRTDepthModel(engine, cache_dir=str(tmp_path / 'cache'), api=FakeTrtApi()) as m:
        m.predict(_bgr())
    m.close()
    m.close()


def test_load_engine_model_from_onnx_builds_once_then_loads(tmp_path):
    onnx = write_fake_onnx(tmp_path / 'vits.onnx')
    api = FakeTrtApi()
    cache_dir = str(tmp_path / 'cache')
    model = load_engine_model(onnx, cache_dir=cache_dir, api=api)
    again = load_engine_model(onnx, cache_dir=cache_dir, api=api)
    assert api.calls['build'] == 1 and model.name == again.name
    bgr = _bgr()
    np.testing.assert_array_equal(model.predict(bgr), again.predict(bgr))
    by_path = load_engine_model(model.name, cache_dir=cache_dir, api=api)
    assert by_path.name == model.name


def test_load_engine_model_without_build_finds_or_explains(tmp_path):
    onnx = write_fake_onnx(tmp_path / 'vits.onnx')
    cache_dir = str(tmp_path / 'cache')
    with pytest.raises(FileNotFoundError, match='no engine for .*vits.onnx in the engine cache'):
        load_engine_model(onnx, cache_dir=cache_dir, build=False, api=FakeTrtApi())
    built = build_engine(onnx, cache_dir=cache_dir, api=FakeTrtApi())
    model = load_engine_model(onnx, cache_dir=cache_dir, build=False, api=FakeTrtApi())
    assert model.name == built.engine_path
    with pytest.raises(EngineMismatchError) as info:
        find_cached_engine(onnx, cache_dir=cache_dir, api=FakeTrtApi(tensorrt_version='10.3.0'))
    assert 'engine built with TensorRT 8.5.2.2 but this is 10.3.0' in str(info.value)


def test_load_engine_model_rejects_unknown_options(tmp_path):
    with pytest.raises(ValueError, match='unknown TensorRT backend option.s. providers'):
        load_engine_model('x.engine', providers=['CUDA'])


def test_load_depth_model_reaches_the_tensorrt_backend(tmp_path):
    from depth_ros.inference import load_depth_model
    engine, _ = _cached_engine(tmp_path)
    model = load_depth_model(engine, backend='tensorrt', input_size=(42, 28),
                             cache_dir=str(tmp_path / 'cache'), api=FakeTrtApi())
    assert isinstance(model, TensorRTDepthModel) and model.backend == 'tensorrt'
    with pytest.raises(EngineMismatchError, match=r'\[1, 3, 28, 42\] but \[1, 3, 14, 28\]'):
        load_depth_model(engine, backend='tensorrt', input_size=(28, 14),
                         cache_dir=str(tmp_path / 'cache'), api=FakeTrtApi())


def test_engine_from_a_dynamic_onnx_gets_its_shape_set_once(tmp_path):
    onnx = write_fake_onnx(tmp_path / 'dyn.onnx', shape=(1, 3, -1, -1))
    api = FakeTrtApi()
    model = load_engine_model(onnx, cache_dir=str(tmp_path / 'cache'), input_size=(70, 42),
                              api=api)
    assert model.input_size == (70, 42)
    bgr = _bgr()
    expected = restore_output(fake_forward(prepare_input(bgr, (70, 42))).astype(np.float32),
                              60, 80)
    np.testing.assert_allclose(model.predict(bgr), expected, rtol=1e-5, atol=1e-5)


def test_dla_engine_is_deserialized_for_its_core(tmp_path):
    onnx = write_fake_onnx(tmp_path / 'vits.onnx')
    api = FakeTrtApi(dla_cores=2)
    model = load_engine_model(onnx, cache_dir=str(tmp_path / 'cache'), dla_core=1, api=api)
    assert model._handle.dla_core == 1 and model.record['key']['dla_core'] == 1

"""The backend registry and load_model: one table, one loader, one-line errors (no GPU)."""
from __future__ import annotations

from depth_ros.inference import (backend_names, BACKENDS, COMMAND_BACKENDS, load_depth_model,
                                 load_model, ModelLoadError, NODE_BACKENDS)
from depth_ros.inference.standin import standin_disparity, StandInDepthModel
import numpy as np
import pytest

# What depth_node passes: its whole configuration, whatever the backend (parameter defaults).
NODE_VALUES = dict(input_size=None, device='cpu', engine_cache_dir=None,
                   standin_latency_ms=0.0, standin_mode='intensity')


def test_the_registry_says_what_each_backend_is():
    assert tuple(BACKENDS) == ('onnxruntime', 'tensorrt', 'torch', 'marigold', 'standin')
    assert NODE_BACKENDS == ('onnxruntime', 'tensorrt', 'torch', 'standin'), NODE_BACKENDS
    assert COMMAND_BACKENDS == ('onnxruntime', 'tensorrt', 'torch', 'marigold'), \
        COMMAND_BACKENDS
    assert backend_names(real_model=False) == ('standin',)
    assert backend_names(relative_kind='depth') == ('marigold',)
    assert {n for n, s in BACKENDS.items() if s.torch_device} == {'torch', 'marigold'}
    extras = {n: s.extra for n, s in BACKENDS.items()}
    assert extras == {'onnxruntime': 'onnx', 'tensorrt': 'tensorrt', 'torch': 'export',
                      'marigold': 'marigold', 'standin': None}, extras
    assert BACKENDS['tensorrt'].install_hint == 'install depth_ros[tensorrt]'
    assert not BACKENDS['marigold'].needs_model and BACKENDS['onnxruntime'].needs_model


def test_the_node_and_the_cli_take_their_choices_from_the_registry():
    import argparse

    from depth_ros.commands import _args
    from depth_ros.nodes_core.config import DEPTH_BACKENDS
    assert DEPTH_BACKENDS == ('auto',) + NODE_BACKENDS
    parser = argparse.ArgumentParser()
    _args.add_model_arguments(parser, 'm')
    choices = [a.choices for a in parser._actions if a.dest == 'backend'][0]
    assert tuple(choices) == COMMAND_BACKENDS


def test_standin_from_the_node_configuration():
    values = dict(NODE_VALUES, standin_latency_ms=12.5, standin_mode='gradient',
                  engine_cache_dir='/ignored', device='cuda:3')
    model = load_model('standin', None, **values)
    assert isinstance(model, StandInDepthModel)
    assert (model.latency_ms, model.mode) == (12.5, 'gradient'), (model.latency_ms, model.mode)
    assert 'STAND-IN' in model.name
    bench = load_model('standin', input_size=(28, 14), name='bench stand-in')
    assert (bench.input_size, bench.name) == ((28, 14), 'bench stand-in')
    bgr = np.random.RandomState(0).randint(0, 256, (6, 5, 3)).astype(np.uint8)
    np.testing.assert_array_equal(bench.predict(bgr), standin_disparity(bgr))


def test_a_missing_model_file_is_one_line_with_its_cause():
    # Without onnxruntime, the loader's line is the package to install (test_onnx_backend).
    pytest.importorskip('onnxruntime', reason='onnxruntime is not installed (depth_ros[onnx])')
    with pytest.raises(ModelLoadError) as info:
        load_model('onnxruntime', '/nonexistent/model.onnx', **NODE_VALUES)
    err = info.value
    want = ("cannot load onnxruntime model '/nonexistent/model.onnx': FileNotFoundError: ONNX "
            "model not found: /nonexistent/model.onnx")
    assert str(err) == want, 'expected {!r}, received {!r}'.format(want, str(err))
    assert isinstance(err.cause, FileNotFoundError) and err.__cause__ is err.cause
    assert (err.backend, err.model) == ('onnxruntime', '/nonexistent/model.onnx')
    assert isinstance(err, RuntimeError), 'the CLI reports RuntimeErrors as one line'


def test_an_engine_outside_the_configured_cache_is_named(tmp_path):
    cache, other = tmp_path / 'cache', tmp_path / 'other'
    cache.mkdir()
    other.mkdir()
    (other / 'e.engine').write_bytes(b'not an engine')
    with pytest.raises(ModelLoadError) as info:
        load_model('tensorrt', str(other / 'e.engine'),
                   **dict(NODE_VALUES, engine_cache_dir=str(cache)))
    text = str(info.value)
    assert text.startswith("cannot load tensorrt model '{}': ValueError: ".format(
        other / 'e.engine')) and 'outside the engine cache directory {};'.format(cache) in text \
        and '\n' not in text, text


def test_a_multi_line_failure_is_reported_on_one_line(monkeypatch):
    from depth_ros.inference import registry

    def boom(*args, **kwargs):
        raise RuntimeError('CUDA out of memory\nTried to allocate 2.00 GiB\n...')

    monkeypatch.setitem(registry._LOADERS, 'torch', boom)
    with pytest.raises(ModelLoadError) as info:
        load_model('torch', 'ckpt', **NODE_VALUES)
    assert str(info.value) == "cannot load torch model 'ckpt': RuntimeError: CUDA out of memory"


@pytest.mark.parametrize('call, message', [
    (lambda: load_model('openvino', 'm.xml'),
     "`backend` must be one of onnxruntime, tensorrt, torch, marigold, standin, got 'openvino'"),
    (lambda: load_model('onnxruntime', ''),
     "backend 'onnxruntime' needs a model file or id, got ''"),
    (lambda: load_model('onnxruntime', 'm.onnx', random_weights=True),
     "random weights work with backend torch only, got backend 'onnxruntime'"),
    (lambda: load_model('standin', input_size=(30, 28)),
     'input `width` must be a positive multiple of 14, got 30'),
])
def test_bad_requests_are_value_errors_before_any_loading(call, message):
    with pytest.raises(ValueError) as info:
        call()
    assert not isinstance(info.value, ModelLoadError)
    assert str(info.value) == message, 'expected {!r}, received {!r}'.format(
        message, str(info.value))


def test_load_depth_model_keeps_the_backends_own_errors():
    pytest.importorskip('onnxruntime', reason='onnxruntime is not installed (depth_ros[onnx])')
    with pytest.raises(FileNotFoundError, match='ONNX model not found: /nonexistent/m.onnx'):
        load_depth_model('/nonexistent/m.onnx')
    with pytest.raises(ValueError, match="`backend` must be one of onnxruntime, tensorrt, "
                                         "torch, got 'standin'"):
        load_depth_model('x', backend='standin')


def test_torch_random_weights_and_device(caplog):
    pytest.importorskip('transformers')
    import torch
    torch.set_num_threads(1)
    model = load_model('torch', 'tiny', random_weights=True, seed=4, input_size=(28, 28),
                       device='cpu', dtype='float64', standin_mode='ignored')
    assert model.backend == 'torch' and model.input_size == (28, 28)
    assert model.dtype == torch.float64 and str(model.device) == 'cpu'
    assert 'UNTRAINED' in model.name and 'seed 4' in model.name, model.name
    assert 'UNTRAINED tiny network' in caplog.text


def test_marigold_settings_reach_the_model():
    pytest.importorskip('diffusers')
    model = load_model('marigold', 'tiny-random', device='cpu', steps=1, ensemble_size=3,
                       processing_resolution=0, seed=None, input_size=(28, 28))
    assert (model.steps, model.ensemble_size, model.processing_resolution, model.seed,
            model.dtype) == (1, 3, 0, None, 'fp32'), model
    with pytest.raises(ModelLoadError, match=r"cannot load marigold model 'tiny-random': "
                                             r"ValueError: `ensemble_size` must be 1 or an "
                                             r"integer >= 3, got 2"):
        load_model('marigold', 'tiny-random', ensemble_size=2)

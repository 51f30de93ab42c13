"""Marigold wrapper on a tiny random-weight pipeline (no download; its output means nothing)."""
import sys
import types
import warnings

from depth_ros.inference.marigold import (build_tiny_pipeline, check_settings, default_dtype,
                                          dtype_keyword, MarigoldDepth)
import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('diffusers')

torch.set_num_threads(1)


def _image(h=24, w=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope='module')
def pipe():
    return build_tiny_pipeline(seed=0)


def test_predict_shape_range_and_convention(pipe):
    model = MarigoldDepth(pipe, device='cpu', dtype='fp32', steps=2)
    res = model.infer(_image())
    assert res.depth.shape == (24, 40), 'expected (24, 40), received {}'.format(res.depth.shape)
    assert res.depth.dtype == np.float32
    assert np.isfinite(res.depth).all()
    assert res.depth.min() >= 0.0 and res.depth.max() <= 1.0, \
        'expected depth in [0, 1], received [{}, {}]'.format(res.depth.min(), res.depth.max())
    assert res.uncertainty is None
    assert model.relative_kind == 'depth'
    assert model.latency.count == 1


def test_matches_pipeline_called_directly_with_rgb(pipe):
    # Independent path: RGB float [0, 1] tensor straight into diffusers, same seed.
    bgr = _image(seed=1)
    model = MarigoldDepth(pipe, steps=1, processing_resolution=32, seed=7)
    ours = model.predict(bgr)
    rgb = torch.from_numpy(bgr[:, :, ::-1].astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    ref = pipe(rgb, num_inference_steps=1, processing_resolution=32,
               generator=torch.Generator().manual_seed(7), output_type='np').prediction[0, :, :, 0]
    err = np.abs(ours - ref).max()
    assert err < 1e-5, 'expected max diff < 1e-5, received {}'.format(err)
    # The channel order matters: feeding BGR as RGB gives a different map.
    swapped = model.predict(np.ascontiguousarray(bgr[:, :, ::-1]))
    assert np.abs(swapped - ours).max() > 1e-4


def test_seed_makes_keyframes_repeatable(pipe):
    a = MarigoldDepth(pipe, steps=1, seed=3).predict(_image())
    b = MarigoldDepth(pipe, steps=1, seed=3).predict(_image())
    c = MarigoldDepth(pipe, steps=1, seed=4).predict(_image())
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-6, 'different seeds gave the same map'


def test_ensemble_gives_uncertainty(pipe):
    res = MarigoldDepth(pipe, steps=1, ensemble_size=3).infer(_image(16, 20))
    assert res.uncertainty is not None
    assert res.uncertainty.shape == (16, 20), 'received {}'.format(res.uncertainty.shape)
    assert (res.uncertainty >= 0).all() and np.isfinite(res.uncertainty).all()


def test_lcm_scheduler_pipeline_runs():
    lcm = build_tiny_pipeline(seed=1, scheduler='lcm')
    d = MarigoldDepth(lcm, steps=2).predict(_image(16, 16))
    assert d.shape == (16, 16) and np.isfinite(d).all()


@pytest.mark.parametrize('kwargs,message', [
    (dict(steps=0), '`steps` must be an integer >= 1 (or None for the checkpoint default), '
                    'got 0'),
    (dict(ensemble_size=2), '`ensemble_size` must be 1 or an integer >= 3, got 2'),
    (dict(processing_resolution=-8), '`processing_resolution` must be an integer >= 0 '
                                     '(0 = native, None = checkpoint default), got -8'),
    (dict(dtype='bf16'), "`dtype` must be one of ('fp16', 'fp32'), got 'bf16'"),
])
def test_bad_settings_name_the_setting(pipe, kwargs, message):
    with pytest.raises(ValueError) as err:
        MarigoldDepth(pipe, **kwargs)
    assert str(err.value) == message, 'expected {!r}, received {!r}'.format(message,
                                                                            str(err.value))


def test_bad_image_and_missing_embedding(pipe):
    model = MarigoldDepth(pipe)
    with pytest.raises(ValueError, match='`bgr` must have dtype uint8'):
        model.predict(np.zeros((8, 8, 3), np.float32))
    bare = build_tiny_pipeline()
    bare.empty_text_embedding = None
    with pytest.raises(ValueError, match='neither a text encoder nor `empty_text_embedding`'):
        MarigoldDepth(bare)


def test_from_pretrained_missing_folder_names_it(tmp_path, monkeypatch):
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    missing = str(tmp_path / 'no_such_checkpoint')
    with pytest.raises(FileNotFoundError, match='no_such_checkpoint'):
        MarigoldDepth.from_pretrained(missing)


def test_default_dtype_and_settings():
    assert default_dtype('cuda') == 'fp16' and default_dtype('cuda:1') == 'fp16'
    assert default_dtype('cpu') == 'fp32'
    check_settings(None, 1, None, 'fp32')   # checkpoint defaults are legal


def _diffusers_warnings(monkeypatch):
    """Collect the messages of diffusers' warnings (its loggers do not propagate)."""
    import logging
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    root = logging.getLogger('diffusers')
    root.addHandler(handler)
    monkeypatch.setattr(root, 'level', logging.WARNING)
    return records, lambda: root.removeHandler(handler)


def test_load_marigold_tiny_random_and_fp32_default_on_cpu(monkeypatch):
    from depth_ros.inference.marigold import load_marigold
    # marigold:=true with checkpoint tiny-random printed "There are modules in
    # UNet2DConditionModel that should be kept in float32: []. Casting directly ..." (and
    # AutoencoderKL's) at start-up: the pipeline's to() was given a dtype it already had.
    records, done = _diffusers_warnings(monkeypatch)
    try:
        model = load_marigold('tiny-random', device='cpu', steps=1)
    finally:
        done()
    assert [r.getMessage() for r in records if r.levelno >= 30] == []
    assert model.name == 'tiny-random' and model.dtype == 'fp32'
    assert next(model.pipeline.unet.parameters()).dtype == torch.float32
    assert model.predict(_image(16, 24)).shape == (16, 24)


def _loads_without_text_encoder(monkeypatch, seen):
    """Let diffusers load a saved tiny pipeline (it has no text encoder to save)."""
    import diffusers
    original = diffusers.MarigoldDepthPipeline.from_pretrained

    def from_pretrained(checkpoint, **kwargs):
        seen.append(dict(kwargs))
        pipe = original(checkpoint, text_encoder=None, tokenizer=None, **kwargs)
        pipe.empty_text_embedding = torch.zeros(1, 2, 8)
        return pipe

    monkeypatch.setattr(diffusers.MarigoldDepthPipeline, 'from_pretrained',
                        staticmethod(from_pretrained))


@pytest.fixture(scope='module')
def saved(tmp_path_factory, pipe):
    root = tmp_path_factory.mktemp('marigold')
    pipe.save_pretrained(str(root / 'safetensors'), safe_serialization=True)
    pipe.save_pretrained(str(root / 'pickle'), safe_serialization=False)
    return root


def test_from_pretrained_loads_safetensors_folder(saved, monkeypatch):
    seen = []
    _loads_without_text_encoder(monkeypatch, seen)
    with warnings.catch_warnings():
        # diffusers' own deprecation of `torch_dtype` (it takes `dtype` now) must not show
        warnings.simplefilter('error', FutureWarning)
        model = MarigoldDepth.from_pretrained(str(saved / 'safetensors'), steps=1)
    assert [k.get('use_safetensors') for k in seen] == [True], 'received {}'.format(seen)
    assert next(model.pipeline.unet.parameters()).dtype == torch.float32
    ref = build_tiny_pipeline(seed=0)
    for name, a in model.pipeline.unet.state_dict().items():
        assert torch.equal(a, ref.unet.state_dict()[name]), 'weight {} differs'.format(name)
    assert model.predict(_image(16, 24)).shape == (16, 24)


def test_from_pretrained_loads_quietly(saved, monkeypatch, capsys):
    # Every marigold_node start printed diffusers' "Cannot initialize model with low cpu memory
    # usage because `accelerate` was not found ... pip install accelerate" (5 raw lines:
    # depth_ros[marigold] does not install accelerate, and diffusers asks for it by default)
    # and a "Loading pipeline components..." progress bar.
    import importlib.util
    import logging
    from diffusers.utils import logging as diffusers_logging
    records, done = _diffusers_warnings(monkeypatch)
    seen = []
    _loads_without_text_encoder(monkeypatch, seen)
    capsys.readouterr()
    try:
        model = MarigoldDepth.from_pretrained(str(saved / 'safetensors'), steps=1)
    finally:
        done()
    err = capsys.readouterr().err
    assert [r.getMessage() for r in records if r.levelno >= logging.WARNING] == []
    assert 'Loading pipeline components' not in err, err
    assert diffusers_logging.is_progress_bar_enabled(), 'the bars were not enabled again'
    without = importlib.util.find_spec('accelerate') is None
    assert [k.get('low_cpu_mem_usage') for k in seen] == [False if without else None], seen
    assert model.predict(_image(16, 24)).shape == (16, 24)


def test_from_pretrained_refuses_pickled_weights(saved, monkeypatch):
    # Security rule: a folder with only pickled .bin weights must not be unpickled.
    assert list((saved / 'pickle' / 'unet').glob('*.bin')), 'test folder has no .bin weights'
    seen = []
    _loads_without_text_encoder(monkeypatch, seen)
    with pytest.raises(FileNotFoundError) as err:
        MarigoldDepth.from_pretrained(str(saved / 'pickle'), steps=1)
    text = str(err.value)
    assert 'pickle' in text and 'safetensors' in text, 'received {!r}'.format(text)


@pytest.mark.parametrize('version, resolves, expected', [
    ('0.29.2', False, 'torch_dtype'),   # what Python 3.8 installs: no `dtype` keyword yet
    ('0.42.1', True, 'dtype'),          # `torch_dtype` resolved with a FutureWarning
    ('1.0.0', False, 'dtype'),          # `torch_dtype` removed
])
def test_dtype_keyword_follows_the_installed_diffusers(monkeypatch, version, resolves, expected):
    utils = types.ModuleType('diffusers.utils.deprecation_utils')
    if resolves:
        utils._resolve_dtype = lambda dtype, torch_dtype: dtype or torch_dtype
    monkeypatch.setitem(sys.modules, 'diffusers.utils.deprecation_utils', utils)
    assert dtype_keyword(types.SimpleNamespace(__version__=version)) == expected


def test_from_pretrained_offline_keeps_diffusers_hub_notice_to_debug(monkeypatch, caplog):
    # Offline, every load of a hub id printed diffusers' "Couldn't connect to the Hub: ...
    # Will try to load from local cache." (two raw lines) before the cache was tried.
    import inspect
    import logging

    from depth_ros.inference import marigold
    import diffusers
    from diffusers.pipelines import pipeline_utils

    # The filter sits on the logger that says it, and matches what diffusers says.
    assert pipeline_utils.logger.name == marigold._PIPELINE_LOGGER
    assert "Couldn't connect to the Hub" in inspect.getsource(pipeline_utils)
    records, done = _diffusers_warnings(monkeypatch)

    def offline(checkpoint, **kwargs):
        # What diffusers does offline with nothing cached: the notice, then an OSError.
        pipeline_utils.logger.warning("Couldn't connect to the Hub: [Errno -2] Name or service "
                                      'not known.\nWill try to load from local cache.')
        raise OSError('Cannot load model {}: the model is not fully cached locally'.format(
            checkpoint))

    monkeypatch.setattr(diffusers.MarigoldDepthPipeline, 'from_pretrained',
                        staticmethod(offline))
    caplog.set_level(logging.DEBUG, logger='depth_ros.inference.marigold')
    try:
        with pytest.raises(FileNotFoundError, match="cannot load Marigold checkpoint 'a/b'"):
            MarigoldDepth.from_pretrained('a/b', steps=1)
        after = [r.getMessage() for r in records]
        # Once the load is over, diffusers' warnings pass again.
        pipeline_utils.logger.warning("Couldn't connect to the Hub: later")
    finally:
        done()
    assert after == [], after
    assert [r.getMessage() for r in records] == ["Couldn't connect to the Hub: later"]
    assert "diffusers: Couldn't connect to the Hub: [Errno -2] Name or service not known. Will " \
        'try to load from local cache.' in caplog.text, caplog.text

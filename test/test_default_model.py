"""
``model: auto`` and ``backend: auto`` without a GPU.

The resolution order, the offline error, the backend choice, and the TensorRT first start up
to the build (with the trt_api double).

The Hugging Face cache is made here in huggingface_hub's layout and holds a random-weight export
shaped like ``onnx-community/depth-anything-v2-small``'s ``onnx/model.onnx`` (model_files); the
hub itself is a local HTTP server that answers as huggingface.co does. Outputs are never read as
depth.
"""
import http.server
import json
import logging
import os
import sys
import threading
import time

from model_files import community_onnx, make_hub_cache, REPO
import numpy as np
import pytest
from test_trt_double import FakeTrtApi

onnx = pytest.importorskip('onnx')
pytest.importorskip('huggingface_hub')
pytest.importorskip('filelock')

from depth_ros.inference import auto, onnx_prepare  # noqa: E402,I100
from depth_ros.inference.default_model import DefaultModelResolver, ModelUnavailable  # noqa
from depth_ros.util import file_sha256  # noqa: E402

SIZE = (98, 56)   # small: the order and the files matter here, not the network's size


def _ort():
    return pytest.importorskip('onnxruntime', reason='onnxruntime >= 1.13 (opset 17) needs '
                               'numpy >= 1.21.6; the Jetson tier pins numpy 1.17.4')


@pytest.fixture
def places(tmp_path, monkeypatch):
    """Empty caches and folders of this test only; the hub offline."""
    dirs = {name: tmp_path / name for name in ('cache', 'hub', 'engines', 'models')}
    for path in dirs.values():
        path.mkdir()
    monkeypatch.setenv('DEPTH_ROS_CACHE', str(dirs['cache']))
    monkeypatch.setenv('DEPTH_ROS_ENGINE_CACHE', str(dirs['engines']))
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.delenv('DEPTH_ROS_MODELS', raising=False)
    monkeypatch.chdir(str(tmp_path))   # ./models is searched too: keep it this test's
    return {k: str(v) for k, v in dirs.items()}


def _resolver(places, **kwargs):
    kwargs.setdefault('input_size', SIZE)
    return DefaultModelResolver(cache_dir=places['cache'], hub_cache_dir=places['hub'],
                                folders=[places['models']], **kwargs)


@pytest.fixture(scope='module')
def source():
    return community_onnx('tiny')


# ----------------------------------------------------------------------- nothing anywhere
def test_offline_with_nothing_cached_is_one_line_naming_model_places_and_fix(places):
    t0 = time.monotonic()
    with pytest.raises(ModelUnavailable) as info:
        _resolver(places).resolve(runtime={'tensorrt_version': '8.5.2.2', 'gpu_name': 'Xavier',
                                           'compute_capability': '7.2'},
                                  engine_cache_dir=places['engines'])
    seconds = time.monotonic() - t0
    text = str(info.value)
    assert '\n' not in text and seconds < 5.0, (seconds, text)
    assert text.startswith('no Depth Anything V2 Small model (onnx-community/depth-anything-v2-'
                           'small, onnx/model.onnx) on this machine: looked in '), text
    for place in ('the engine cache {} (fp16 98x56 engines for TensorRT 8.5.2.2 on Xavier)'
                  .format(places['engines']),
                  'prepared ONNX files (98x56, for ONNX Runtime and TensorRT >= 8.6) in {}, {}'
                  .format(
                      os.path.join(places['cache'], 'onnx'), places['models']),
                  'the Hugging Face cache {} (onnx-community/depth-anything-v2-small onnx/'
                  'model.onnx)'.format(places['hub']),
                  'the hub (HF_HUB_OFFLINE is set)'):
        assert place in text, 'missing {!r} in {}'.format(place, text)
    assert 'depth-anything/Depth-Anything-V2-Small-hf' in text, text
    assert text.endswith('; fix: run `depth-ros model setup`'), text
    assert not os.listdir(places['cache']) or os.listdir(places['cache']) == ['onnx']


def test_an_untrained_export_in_the_cache_is_never_taken(places, source):
    _ort()
    # What `depth-ros demo` leaves offline: an UNTRAINED export (trained=false), even under a
    # prepared file's name and with a prepared file's metadata.
    name = onnx_prepare.prepared_name(REPO, file_sha256(source), SIZE, 'default')
    path = os.path.join(places['cache'], 'onnx', name)
    onnx_prepare.prepare_onnx(source, path, SIZE,
                              metadata={'model_id': REPO, 'trained': 'false'})
    with pytest.raises(ModelUnavailable):
        _resolver(places).resolve()


# ------------------------------------------------------------------------- the order
def test_hub_cache_copy_is_prepared_once_then_found_on_disk(places, source, caplog):
    _ort()
    snapshot = make_hub_cache(places['hub'], source)
    with caplog.at_level(logging.INFO, logger='depth_ros'):
        first = _resolver(places).resolve()
    sha = file_sha256(source)
    assert (first.kind, first.where, first.source_sha256) == ('onnx', 'Hugging Face cache', sha)
    assert first.source == snapshot and first.prepared and not first.prepared.reused
    assert os.path.dirname(first.path) == os.path.join(places['cache'], 'onnx')
    meta = onnx_prepare.read_prepared_metadata(first.path)
    assert (meta['model_id'], meta['source_sha256'], meta['input_size']) == (REPO, sha, '98x56')
    second = _resolver(places).resolve()
    assert (second.where, second.path) == ('prepared ONNX on disk', first.path)


def test_prepared_files_of_another_copy_give_way_to_the_hub_cache_copy(
        places, source, tmp_path):
    _ort()
    # A prepared file of an older revision (other bytes) sits in the models folder.
    old = onnx.load(source)
    old.graph.initializer[0].raw_data = bytes(len(old.graph.initializer[0].raw_data))
    old_path = str(tmp_path / 'old.onnx')
    onnx.save(old, old_path)
    stale = onnx_prepare.ensure_prepared(old_path, SIZE, label=REPO, out_dir=places['models'],
                                         metadata={'model_id': REPO})
    # Without a hub copy it is what there is: used as it is.
    found = _resolver(places).resolve()
    assert (found.where, found.path) == ('prepared ONNX on disk', stale.path)
    # With the hub's current copy, that copy wins (and is prepared).
    make_hub_cache(places['hub'], source)
    found = _resolver(places).resolve()
    assert found.where == 'Hugging Face cache' and found.path != stale.path
    assert found.source_sha256 == file_sha256(source)


def _fake_engine(places, runtime, size, precision='fp16', model_id=REPO, source_sha256=None,
                 name='e.engine'):
    from depth_ros.inference.tensorrt.cache import EngineCache, make_key
    from test_trt_double import fake_plan
    key = make_key(runtime, '0' * 64, [1, 3, size[1], size[0]], precision)
    cache = EngineCache(places['engines'])
    plan = fake_plan((1, 3, size[1], size[0]))
    return cache.write(os.path.join(places['engines'], name), plan, key,
                       {'model_id': model_id, 'source_sha256': source_sha256})


def test_a_matching_engine_comes_first_and_must_match_everything(places, source):
    _ort()
    runtime = FakeTrtApi().open_device().info()
    make_hub_cache(places['hub'], source)
    sha = file_sha256(source)
    wanted = _fake_engine(places, runtime, SIZE, source_sha256=sha, name='good.engine')
    for other in (dict(precision='fp32'), dict(model_id='someone/else'),
                  dict(source_sha256='f' * 64), dict(size=(70, 42))):
        args = dict(runtime=runtime, size=SIZE, source_sha256=sha)
        args.update(other)
        _fake_engine(places, name='other_{}.engine'.format(len(os.listdir(places['engines']))),
                     **args)
    newer = dict(runtime, tensorrt_version='10.3.0')
    _fake_engine(places, newer, SIZE, source_sha256=sha, name='trt10.engine')
    found = _resolver(places).resolve(runtime, places['engines'], 'fp16')
    assert (found.kind, found.path, found.where) == ('engine', wanted, 'engine cache')
    os.remove(wanted)
    found = _resolver(places).resolve(runtime, places['engines'], 'fp16')
    assert found.kind == 'onnx', 'no engine matches now: the ONNX is the next step'


def _fake_prepared(folder, model_id=REPO, size=SIZE, profile='default', sha='c' * 64,
                   **meta):
    """Write a prepared file's metadata on a one-node graph (no ONNX Runtime needed)."""
    from onnx import helper, TensorProto
    graph = helper.make_graph(
        [helper.make_node('ReduceMean', ['pixel_values'], ['predicted_depth'], axes=[1],
                          keepdims=0)], 'g',
        [helper.make_tensor_value_info('pixel_values', TensorProto.FLOAT,
                                       [1, 3, size[1], size[0]])],
        [helper.make_tensor_value_info('predicted_depth', TensorProto.FLOAT,
                                       [1, size[1], size[0]])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 16)])
    props = {'prepared_by': 'depth_ros', 'profile': profile, 'model_id': model_id,
             'input_size': '{}x{}'.format(*size), 'source_sha256': sha}
    props.update(meta)
    helper.set_model_props(proto, props)
    path = os.path.join(folder, onnx_prepare.prepared_name(model_id, sha, size, profile))
    onnx.save(proto, path)
    return path


def test_resolution_order_engine_then_prepared_files_and_never_an_untrained_one(places):
    # Runs without ONNX Runtime too (the Python 3.8 tier): nothing here is prepared anew.
    runtime = FakeTrtApi().open_device().info()
    untrained = _fake_prepared(places['models'], sha='d' * 64, trained='false')
    with pytest.raises(ModelUnavailable):
        _resolver(places).resolve()
    other_size = _fake_prepared(places['models'], size=(70, 42))
    other_model = _fake_prepared(places['models'], model_id='someone/else')
    trt85 = _fake_prepared(places['models'], profile='tensorrt8.5')
    assert _resolver(places, profile='tensorrt8.5').resolve().path == trt85
    os.makedirs(os.path.join(places['cache'], 'onnx'))   # the depth_ros cache's folder
    prepared = _fake_prepared(os.path.join(places['cache'], 'onnx'))
    found = _resolver(places).resolve(runtime, places['engines'])
    assert (found.kind, found.path, found.where, found.source_sha256) == \
        ('onnx', prepared, 'prepared ONNX on disk', 'c' * 64)
    engine = _fake_engine(places, runtime, SIZE, source_sha256='c' * 64)
    found = _resolver(places).resolve(runtime, places['engines'])
    assert (found.kind, found.path) == ('engine', engine)
    # Without a runtime (ONNX Runtime backend) engines are not looked at.
    assert _resolver(places).resolve().path == prepared
    assert {untrained, other_size, other_model} & {prepared, trt85} == set()


def test_without_onnxruntime_preparing_is_one_line_naming_the_package(places, source):
    try:
        import onnxruntime  # noqa: F401
        pytest.skip('onnxruntime is installed here (the Python 3.8 tier has none)')
    except ImportError:
        pass
    make_hub_cache(places['hub'], source)
    with pytest.raises(ImportError, match=r'folding constants needs onnxruntime: install '
                                          r'depth_ros\[onnx\]'):
        _resolver(places).resolve()


def test_without_depth_ros_onnx_the_lookup_says_what_to_install(places, source, monkeypatch):
    # The robot's venv without depth_ros[onnx] (no onnx, no onnxruntime), a file prepared
    # earlier in the cache: depth_node's FATAL line was "ModuleNotFoundError: No module named
    # 'onnx'" (the lookup reads the prepared files' metadata with onnx).
    _ort()   # to prepare the file first
    make_hub_cache(places['hub'], source)
    prepared = _resolver(places).resolve().path
    assert prepared.startswith(places['cache']), prepared
    monkeypatch.setitem(sys.modules, 'onnx', None)
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)
    with pytest.raises(auto.ModelLoadError) as raised:
        auto.open_depth_model(backend='onnxruntime', input_size=SIZE,
                              hub_cache_dir=places['hub'])
    assert str(raised.value).startswith(
        "cannot load onnxruntime model 'auto': ImportError: reading an ONNX file needs onnx: "
        'install depth_ros[onnx] ('), str(raised.value)
    # The lookup itself (the tensorrt backend's too) names the package.
    with pytest.raises(ImportError, match=r'^reading an ONNX file needs onnx: install '
                                          r'depth_ros\[onnx\] \('):
        _resolver(places).resolve()


def test_a_hub_id_of_another_onnx_repo_goes_through_the_same_steps(places, source):
    _ort()
    make_hub_cache(places['hub'], source, repo='someone/depth-anything-v2-small-onnx')
    opened = auto.open_depth_model('onnxruntime', 'someone/depth-anything-v2-small-onnx',
                                   input_size=SIZE, hub_cache_dir=places['hub'])
    assert os.path.basename(opened.path).startswith('someone--depth-anything-v2-small-onnx-')
    assert opened.found.model_id == 'someone/depth-anything-v2-small-onnx'
    with pytest.raises(ModelUnavailable, match=r'^no someone/other \(onnx/model.onnx\) on '):
        auto.open_depth_model('onnxruntime', 'someone/other', input_size=SIZE,
                              hub_cache_dir=places['hub'])


def _checkpoint_folder(folder, variant):
    torch = pytest.importorskip('torch')
    pytest.importorskip('transformers')
    from depth_ros.inference import torch_model
    torch.set_num_threads(1)
    torch_model.build_model(variant, seed=0).save_pretrained(folder)
    return folder


def test_a_local_checkpoint_is_exported_only_when_it_is_vit_s(places):
    _ort()
    _checkpoint_folder(os.path.join(places['models'], 'Depth-Anything-V2-Small-hf'), 'tiny')
    with pytest.raises(ModelUnavailable) as info:
        _resolver(places).resolve()
    assert 'holds tiny, not ViT-S' in str(info.value), str(info.value)


@pytest.mark.slow  # two ONNX exports (opset 17 and 16): 5-13 s
def test_the_checkpoint_step_exports_a_local_checkpoint_once(places, monkeypatch):
    # The tiny architecture stands in for ViT-S (a ViT-S checkpoint is 99 MB to write).
    _ort()
    folder = _checkpoint_folder(os.path.join(places['models'], 'Depth-Anything-V2-Small-hf'),
                                'tiny')
    found = _resolver(places, checkpoint_variants=('tiny',)).resolve()
    assert (found.where, found.model_id, found.source) == \
        ('checkpoint export', 'depth-anything/Depth-Anything-V2-Small-hf', folder)
    sha = file_sha256(os.path.join(folder, 'model.safetensors'))
    assert found.source_sha256 == sha and os.path.basename(found.path) == \
        'da2-tiny-{}-98x56-op17.onnx'.format(sha[:16])
    assert onnx_prepare.needs_preparation(found.path, SIZE) == []
    # The next start finds the export (no second one) and TensorRT 8.5 gets opset 16.
    from depth_ros.inference import export
    monkeypatch.setattr(export, 'export_onnx', None)
    assert _resolver(places, checkpoint_variants=('tiny',)).resolve().path == found.path
    monkeypatch.undo()
    trt85 = _resolver(places, profile='tensorrt8.5', checkpoint_variants=('tiny',)).resolve()
    assert trt85.path.endswith('-98x56-op16.onnx') and \
        onnx_prepare.needs_preparation(trt85.path, SIZE, 'tensorrt8.5') == []


# ------------------------------------------------------------------------- the download
class _Hub(http.server.BaseHTTPRequestHandler):
    """huggingface.co's resolve endpoint for one file: HEAD (metadata) and GET (slowly)."""

    files = {}
    commit = 'a' * 40

    def _head(self):
        data = self.files.get(self.path)
        if data is None:
            self.send_response(404)
            self.send_header('X-Error-Code', 'EntryNotFound')
            self.end_headers()
            return None
        import hashlib
        self.send_response(200)
        self.send_header('X-Repo-Commit', self.commit)
        self.send_header('ETag', '"{}"'.format(hashlib.sha256(data).hexdigest()))
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        return data

    def do_HEAD(self):  # noqa: N802 - http.server's names
        self._head()

    def do_GET(self):  # noqa: N802
        data = self._head()
        chunk = max(1, len(data) // 8) if data else 1
        for i in range(0, len(data or b''), chunk):
            self.wfile.write(data[i:i + chunk])
            self.wfile.flush()
            time.sleep(0.05)

    def log_message(self, *args):
        pass


@pytest.fixture
def local_hub(monkeypatch, source):
    with open(source, 'rb') as f:
        _Hub.files = {'/{}/resolve/main/onnx/model.onnx'.format(REPO): f.read()}
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv('HF_ENDPOINT', 'http://127.0.0.1:{}'.format(server.server_port))
    monkeypatch.delenv('HF_HUB_OFFLINE')
    yield server
    server.shutdown()
    server.server_close()


def test_download_with_progress_in_the_log_then_prepare(
        places, local_hub, source, caplog, monkeypatch):
    _ort()
    from depth_ros.inference import hub
    import huggingface_hub.constants as constants
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)   # read at import time
    monkeypatch.setattr(constants, 'HF_HUB_DISABLE_PROGRESS_BARS', True)
    real = hub.download_file
    monkeypatch.setattr(hub, 'download_file', lambda *a, **k: real(*a, interval_s=0.1))
    with caplog.at_level(logging.INFO, logger='depth_ros'):
        found = _resolver(places).resolve()
    assert found.where.startswith('downloaded from http://127.0.0.1:'), found.where
    cached = hub.cached_file(REPO, 'onnx/model.onnx', places['hub'])
    assert cached and file_sha256(cached) == file_sha256(source) == found.source_sha256
    lines = [r.getMessage() for r in caplog.records]
    size = os.path.getsize(source) / 1e6
    assert any(line.startswith('downloading onnx-community/depth-anything-v2-small (onnx/'
                               'model.onnx of {:.1f} MB) from http://127.0.0.1:'.format(size))
               for line in lines), lines
    progress = [line for line in lines if line.startswith('downloading onnx/model.onnx: ')]
    assert progress and all(' MB of {:.1f} MB, '.format(size) in line and
                            line.endswith(' s elapsed') for line in progress), progress
    # Offline again: the cached copy is found without the hub.
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    assert _resolver(places).resolve().path == found.path


# -------------------------------------------------------------------- backend: auto
def test_auto_backend_prefers_tensorrt_then_cuda_then_cpu_with_one_warning():
    choice = auto.choose_backend(api=FakeTrtApi())
    assert (choice.backend, choice.providers, choice.warning) == ('tensorrt', None, '')
    assert choice.reason == "auto: TensorRT 8.5.2.2 and GPU 'Xavier' (compute capability 7.2)"
    no_trt = FakeTrtApi(available='pycuda is not installed')
    choice = auto.choose_backend(api=no_trt, providers=['CUDAExecutionProvider',
                                                        'CPUExecutionProvider'])
    assert (choice.backend, choice.providers, choice.warning) == \
        ('onnxruntime', ['CUDAExecutionProvider', 'CPUExecutionProvider'], '')
    assert 'pycuda is not installed' in choice.reason
    choice = auto.choose_backend(api=no_trt, providers=['CPUExecutionProvider'])
    assert (choice.backend, choice.providers) == ('onnxruntime', ['CPUExecutionProvider'])
    want = ('backend auto: ONNX Runtime on the CPU (no TensorRT: pycuda is not installed; '
            'onnxruntime has no CUDA provider): expect about 1.5-3 frames/s for ViT-S at '
            "518x294 on a desktop CPU, and less on a Jetson's ARM cores; for the fast path "
            'install TensorRT and pycuda (JetPack: apt install python3-libnvinfer; pip install '
            'pycuda) or onnxruntime-gpu')
    assert choice.warning == want, choice.warning
    with pytest.raises(ImportError, match=r'no TensorRT \(pycuda is not installed\) and no '
                                          r'onnxruntime \(install depth_ros\[onnx\]\)'):
        auto.choose_backend(api=no_trt, providers=[])


def test_trt_api_probe_here_says_what_is_missing():
    from depth_ros.inference.tensorrt import trt_api
    try:
        import tensorrt  # noqa: F401
        pytest.skip('tensorrt is installed here')
    except ImportError:
        pass
    assert trt_api.probe(0) == (False, 'the tensorrt Python module is not installed')


def test_auto_on_a_cpu_machine_runs_onnxruntime_with_the_warning_and_one_summary(
        places, source):
    _ort()
    make_hub_cache(places['hub'], source)
    opened = auto.open_depth_model(input_size=SIZE, hub_cache_dir=places['hub'],
                                   api=FakeTrtApi(available='pycuda is not installed'))
    assert opened.backend == 'onnxruntime' and opened.model.providers == [
        'CPUExecutionProvider']
    assert len(opened.warnings) == 1 and '1.5-3 frames/s' in opened.warnings[0]
    summary = opened.summary()
    assert summary.startswith('depth model: backend onnxruntime (auto: no TensorRT: pycuda is '
                              'not installed; onnxruntime has no CUDA provider); model {} '
                              '(Hugging Face cache, source sha256 {}...); input 98x56'.format(
                                  opened.path, file_sha256(source)[:12])[:60]), summary
    assert 'Hugging Face cache, source sha256 {}...)'.format(file_sha256(source)[:12]) in \
        summary and summary.endswith('; input 98x56'), summary
    bgr = np.random.RandomState(1).randint(0, 256, (40, 70, 3)).astype(np.uint8)
    assert opened.model.predict(bgr).shape == (40, 70)


# --------------------------------------------------------- TensorRT: the first start
def test_first_start_builds_the_engine_once_with_progress_lines_then_loads_it(
        places, source, caplog):
    _ort()
    make_hub_cache(places['hub'], source)
    api = FakeTrtApi(tensorrt_version='8.5.2.2', build_seconds=0.35)
    with caplog.at_level(logging.INFO, logger='depth_ros'):
        opened = auto.open_depth_model(input_size=SIZE, hub_cache_dir=places['hub'],
                                       heartbeat_s=0.1, api=api)
    assert opened.backend == 'tensorrt' and api.calls['build'] == 1
    beats = [r.getMessage() for r in caplog.records if 'elapsed' in r.getMessage()]
    assert len(beats) >= 2 and all(b.startswith(
        'building the TensorRT engine for this GPU; this happens once, the next start loads it '
        'from the engine cache in seconds: ') and b.endswith(' s elapsed') for b in beats), beats
    # TensorRT 8.5 got the LayerNorm-decomposed opset-16 file; the double's parser (which
    # refuses LayerNormalization and cubic Resize, as 8.5's does) took it.
    record = opened.model.record
    assert record['onnx_path'].endswith('-98x56-trt85.onnx'), record['onnx_path']
    assert record['model_id'] == REPO and record['source_sha256'] == file_sha256(source)
    assert record['fp32_layers'] == 12 * 9 + 4, record['fp32_layers']   # LayerNorms + Softmax
    assert 'engine built in' in opened.summary() and "auto: TensorRT 8.5.2.2 and GPU 'Xavier'" \
        in opened.summary(), opened.summary()
    opened.model.close()
    # The next start: the engine cache has it; no build.
    caplog.clear()
    t0 = time.monotonic()
    again = auto.open_depth_model(input_size=SIZE, hub_cache_dir=places['hub'], api=api)
    assert api.calls['build'] == 1 and time.monotonic() - t0 < 5.0
    assert again.path == opened.path and 'engine cache' in again.summary()
    bgr = np.random.RandomState(2).randint(0, 256, (30, 50, 3)).astype(np.uint8)
    assert again.model.predict(bgr).shape == (30, 50)


def test_tensorrt_8_5_would_refuse_the_unprepared_graph(places, source):
    _ort()
    api = FakeTrtApi(tensorrt_version='8.5.2.2')
    with pytest.raises(RuntimeError, match=r'/backbone/embeddings/Resize \(importResize\): '
                                           r'UNSUPPORTED_NODE: Assertion failed: mode != "cubic"'):
        api.parse_onnx(source)
    # Fixed and folded (no cubic Resize left), but with its LayerNormalization nodes.
    fixed = onnx_prepare.ensure_prepared(source, SIZE, 'default', cache_dir=places['cache'])
    with pytest.raises(RuntimeError, match='No importer registered for op: LayerNormalization'):
        api.parse_onnx(fixed.path)
    # TensorRT 10 imports LayerNormalization: the default profile is used there.
    api10 = FakeTrtApi(tensorrt_version='10.3.0')
    make_hub_cache(places['hub'], source)
    opened = auto.open_depth_model(input_size=SIZE, hub_cache_dir=places['hub'], api=api10)
    assert opened.model.record['onnx_path'].endswith('-98x56-default.onnx')


def test_a_failed_build_is_one_line_with_why_and_what_to_try(places, source):
    _ort()
    make_hub_cache(places['hub'], source)
    api = FakeTrtApi(build_error=RuntimeError('TensorRT failed to build the engine (see the '
                                              'TensorRT errors above)'))
    with pytest.raises(auto.EngineBuildError) as info:
        auto.open_depth_model(input_size=SIZE, hub_cache_dir=places['hub'], api=api,
                              workspace_mb=512)
    text = str(info.value)
    assert '\n' not in text and text.startswith('TensorRT could not build the engine from '), text
    for part in ('-98x56-trt85.onnx after ', ' s: TensorRT failed to build the engine (see the '
                 'TensorRT errors above); try a larger workspace (depth_node parameter '
                 'workspace_mb, now 512 MiB;', 'precision fp32 (parameter precision, now fp16)',
                 'or backend onnxruntime'):
        assert part in text, (part, text)
    assert not [n for n in os.listdir(places['engines']) if n.endswith('.engine')]


def test_a_given_dynamic_onnx_is_prepared_for_tensorrt_too(places, source):
    _ort()
    api = FakeTrtApi()
    opened = auto.open_depth_model('tensorrt', source, input_size=SIZE, api=api)
    assert opened.model.record['onnx_path'].endswith('-98x56-trt85.onnx')
    assert 'given' in opened.summary()
    with pytest.raises(ValueError, match=r"`model` 'x.engine' is a TensorRT engine; it needs "
                                         r"backend tensorrt, got onnxruntime"):
        auto.open_depth_model('onnxruntime', 'x.engine', api=api)


def test_the_record_of_a_build_names_its_model(tmp_path):
    # build_engine writes the extra record fields (no GPU: the double).
    from depth_ros.inference.tensorrt.builder import build_engine
    from test_trt_double import write_fake_onnx
    onnx_path = write_fake_onnx(tmp_path / 'm.onnx')
    result = build_engine(onnx_path, cache_dir=str(tmp_path / 'c'), api=FakeTrtApi(),
                          record={'model_id': REPO, 'source_sha256': 'ab' * 32})
    with open(result.engine_path + '.json') as f:
        record = json.load(f)
    assert (record['model_id'], record['source_sha256']) == (REPO, 'ab' * 32)
    assert record['key']['onnx_sha256'] == file_sha256(onnx_path)


# ------------------------------------------------------------- depth-ros model setup
def _setup(argv, api=None):
    from depth_ros import cli
    from depth_ros.commands import model_setup
    args = cli.build_parser().parse_args(['model', 'setup'] + argv)
    return model_setup.run(args, api=api)


def test_setup_download_only_writes_what_an_offline_robot_needs(places, local_hub, source,
                                                                tmp_path, capsys,
                                                                monkeypatch):
    _ort()
    import huggingface_hub.constants as constants
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    out = tmp_path / 'robot-cache'
    assert _setup(['--download-only', '--out', str(out), '--size', '98x56']) == 0
    printed = capsys.readouterr().out
    sha = file_sha256(source)
    names = sorted(os.listdir(str(out / 'depth_ros' / 'onnx')))
    want = ['onnx-community--depth-anything-v2-small-{}-98x56-{}.onnx'.format(sha[:12], p)
            for p in ('default', 'trt85')]
    assert [n for n in names if not n.startswith('.')] == want, names
    snapshot = out / 'huggingface' / 'hub' / 'models--onnx-community--depth-anything-v2-small'
    assert (snapshot / 'refs' / 'main').read_text() == _Hub.commit
    assert 'on the robot: copy {}/ into ~/.cache/'.format(out) in printed, printed
    # The robot: that folder as its ~/.cache, the hub offline; nothing else.
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('DEPTH_ROS_CACHE', str(out / 'depth_ros'))
    for profile in onnx_prepare.PROFILES:
        found = DefaultModelResolver(input_size=SIZE, profile=profile,
                                     hub_cache_dir=str(out / 'huggingface' / 'hub'),
                                     folders=[]).resolve()
        assert found.where == 'prepared ONNX on disk' and found.path.startswith(str(out)), \
            found.where


def test_setup_offline_with_nothing_says_how_to_get_the_files(places, capsys):
    from depth_ros import cli
    code = cli.main(['model', 'setup', '--backend', 'onnxruntime', '--hub-cache-dir',
                     places['hub']])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith('depth-ros model setup: error: no Depth Anything V2 Small model'), err
    assert 'fix: run `depth-ros model setup` again with internet access, or run `depth-ros ' \
        'model setup --download-only --out DIR` on a machine that has it' in err, err


def test_setup_offline_of_another_hub_id_says_to_fetch_that_one(places, capsys):
    # --download-only fetches the default model only (it refuses --model): not the fix here.
    from depth_ros import cli
    code = cli.main(['model', 'setup', '--backend', 'onnxruntime', '--model', 'me/my-da2-onnx',
                     '--hub-cache-dir', places['hub']])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith('depth-ros model setup: error: no me/my-da2-onnx'), err
    assert err.rstrip().endswith('fix: run `depth-ros model setup --model me/my-da2-onnx` '
                                 'again with internet access'), err


def test_setup_builds_the_engine_ahead_and_says_where_it_is(places, source, capsys):
    _ort()
    make_hub_cache(places['hub'], source)
    api = FakeTrtApi()
    assert _setup(['--backend', 'tensorrt', '--size', '98x56', '--hub-cache-dir',
                   places['hub']], api=api) == 0
    printed = capsys.readouterr().out.splitlines()
    engine = [line for line in printed if line.startswith('engine: ')]
    assert len(engine) == 1 and engine[0].startswith('engine: ' + places['engines']) and \
        engine[0].endswith('(built now)'), printed
    assert any(line.startswith('prepared ONNX: ') and line.endswith('-98x56-trt85.onnx')
               for line in printed), printed
    assert 'source: {} (sha256 {})'.format(
        os.path.join(places['hub'], 'models--onnx-community--depth-anything-v2-small',
                     'snapshots', '0123456789abcdef0123456789abcdef01234567', 'onnx',
                     'model.onnx'), file_sha256(source)) in printed, printed
    # depth_node's start: the same engine, from the cache, no build.
    opened = auto.open_depth_model(input_size=SIZE, hub_cache_dir=places['hub'], api=api)
    assert api.calls['build'] == 1 and engine[0].split()[1] == opened.path
    with pytest.raises(ValueError, match='--download-only needs --out DIR'):
        _setup(['--download-only'])
    with pytest.raises(ValueError, match='--calib-dir is only used with --precision int8'):
        _setup(['--calib-dir', places['models']])

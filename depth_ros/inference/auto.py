"""
``backend: auto`` and ``model: auto``: the model depth_node and ``depth-ros model setup`` open.

:func:`choose_backend` picks, in order: TensorRT where the tensorrt module and pycuda import
and a GPU answers (trt_api.probe); else ONNX Runtime with its CUDA provider where it has one;
else ONNX Runtime on the CPU, with one warning that gives the expected rate and the way to the
fast path. :func:`open_depth_model` then finds the model (depth_ros.inference.default_model for
``auto`` and hub ids; a given file as it is, prepared when needed), builds the TensorRT engine
on the first start (a progress line every ``heartbeat_s``, saying it happens once; a failed
build is one line with the reason and what to try), and returns the loaded model with one line
that says which backend, which file, which input size, and why.
"""
from __future__ import annotations

import logging
import os
import time
from typing import List, Optional, Tuple

from depth_ros.core.preprocess import check_input_size, DEFAULT_SIZE
from depth_ros.inference import default_model
from depth_ros.inference.registry import load_model, ModelLoadError

LOG = logging.getLogger('depth_ros.inference.auto')

AUTO = 'auto'
AUTO_BACKENDS = ('tensorrt', 'onnxruntime')
CUDA_PROVIDER = 'CUDAExecutionProvider'
CPU_PROVIDER = 'CPUExecutionProvider'
FAST_PATH = ('for the fast path install TensorRT and pycuda (JetPack: apt install '
             'python3-libnvinfer; pip install pycuda) or onnxruntime-gpu')
# Measured: docs/models.md, ViT-S at 518x294 on a shared 2-core x86 (1 to 2 threads).
CPU_RATE = ("expect about 1.5-3 frames/s for ViT-S at 518x294 on a desktop CPU, and less on a "
            "Jetson's ARM cores")
BUILD_NOTE = ('building the TensorRT engine for this GPU; this happens once, the next start '
              'loads it from the engine cache in seconds')


class EngineBuildError(RuntimeError):
    """The TensorRT engine could not be built; one line with the reason and what to try."""


class BackendChoice(object):
    """What ``backend: auto`` chose: backend, ONNX Runtime providers, why, and a warning."""

    def __init__(self, backend: str, reason: str, providers: Optional[List[str]] = None,
                 warning: str = ''):
        self.backend = backend
        self.reason = reason
        self.providers = providers
        self.warning = warning

    def __repr__(self) -> str:
        return 'BackendChoice({!r}, {!r})'.format(self.backend, self.reason)


def cpu_warning(why: str) -> str:
    """Return the one warning of the CPU fallback: why, the expected rate, the fast path."""
    return 'backend auto: ONNX Runtime on the CPU ({}): {}; {}'.format(why, CPU_RATE, FAST_PATH)


def _ort_providers() -> List[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    return list(ort.get_available_providers())


def choose_backend(gpu: int = 0, api=None, providers: Optional[List[str]] = None
                   ) -> BackendChoice:
    """
    Pick the backend for ``backend: auto`` (module docstring).

    :param gpu: CUDA device index TensorRT would use.
    :param api: trt_api or a test double; ``providers``: ONNX Runtime's (None: ask it).
    :raises ImportError: neither TensorRT nor onnxruntime is usable.
    """
    if api is None:
        from depth_ros.inference.tensorrt import trt_api as api
    ok, what = api.probe(gpu)
    if ok:
        return BackendChoice('tensorrt', 'auto: ' + what)
    available = _ort_providers() if providers is None else list(providers)
    if not available:
        raise ImportError('backend auto: no backend to run: no TensorRT ({}) and no '
                          'onnxruntime (install depth_ros[onnx])'.format(what))
    if CUDA_PROVIDER in available:
        return BackendChoice('onnxruntime', 'auto: ONNX Runtime with the CUDA provider (no '
                             'TensorRT: {})'.format(what), [CUDA_PROVIDER, CPU_PROVIDER])
    why = 'no TensorRT: {}; onnxruntime has no CUDA provider'.format(what)
    return BackendChoice('onnxruntime', 'auto: ' + why, [CPU_PROVIDER], cpu_warning(why))


class Opened(object):
    """A loaded model and why: ``summary()`` is the node's one INFO line."""

    def __init__(self, model, backend: str, path: str, input_size: Tuple[int, int],
                 backend_reason: str, model_reason: str, warnings: Optional[List[str]] = None,
                 found=None, onnx: Optional[str] = None, built: bool = False):
        self.model = model
        self.backend = backend
        self.path = path                  # what the backend loaded (ONNX file or engine)
        self.input_size = tuple(input_size)
        self.backend_reason = backend_reason
        self.model_reason = model_reason
        self.warnings = list(warnings or [])
        self.found = found                # default_model.Found, for model auto and hub ids
        self.onnx = onnx                  # the ONNX file used (the engine's source for TensorRT)
        self.built = built                # a TensorRT engine was built by this call

    def summary(self) -> str:
        """'depth model: backend B (why); model FILE (why); input WxH'."""
        return 'depth model: backend {} ({}); model {} ({}); input {}x{}'.format(
            self.backend, self.backend_reason, self.path, self.model_reason,
            self.input_size[0], self.input_size[1])


def model_kind(model: str, backend: str) -> str:
    """
    Say what ``model`` names.

    'auto', 'engine', 'onnx', 'onnx_repo' (a hub id of an ONNX repo) or 'checkpoint' (a
    checkpoint folder, .pth, or a checkpoint hub id).
    """
    from depth_ros.inference import checkpoints, hub

    text = (model or '').strip()
    low = text.lower()
    if low in default_model.AUTO:
        return 'auto'
    if low.endswith(('.engine', '.plan')):
        return 'engine'
    if low.endswith('.onnx'):
        return 'onnx'
    if os.path.exists(text):
        return 'checkpoint'
    if hub.looks_like_hub_id(text):
        return 'checkpoint' if text in checkpoints.HUB_IDS.values() or low.endswith('-hf') \
            else 'onnx_repo'
    if backend == 'tensorrt':
        return 'engine'   # a bare engine name, looked up in the engine cache
    raise ValueError('`model` must be auto, an .onnx file, a TensorRT engine (.engine), a '
                     'checkpoint folder or .pth, or a hub id, got {!r}'.format(model))


def _checkpoint_onnx(source: str, size: Tuple[int, int], profile: str,
                     cache_dir: Optional[str]) -> str:
    """Export a checkpoint (folder, .pth, hub id) once per hash and size; needs torch."""
    from depth_ros.inference import export, model_store
    from depth_ros.inference.checkpoints import load_checkpoint

    net, info = load_checkpoint(source)
    opset = 16 if profile == 'tensorrt8.5' else export.DEFAULT_OPSET
    path = model_store.cached_onnx_path(cache_dir or model_store.default_cache_dir(),
                                        info['variant'], info['sha256'], size, opset)
    if not os.path.isfile(path):
        export.export_onnx(net, path, input_size=size, opset=opset,
                           metadata=export.checkpoint_metadata(info), show_progress=False)
    return path


class _Request(object):
    """open_depth_model's arguments, shared by its steps."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


def _resolve_onnx(req, kind: str, profile: str, size: Tuple[int, int], runtime=None):
    """Return (Found or None, onnx path or engine path) for an ONNX-taking backend."""
    if kind in ('auto', 'onnx_repo'):
        resolver = default_model.DefaultModelResolver(
            model_id=default_model.DEFAULT_REPO if kind == 'auto' else req.model,
            input_size=size, profile=profile, cache_dir=req.cache_dir,
            hub_cache_dir=req.hub_cache_dir, allow_download=req.allow_download,
            allow_export=kind == 'auto', fix=req.fix)
        found = resolver.resolve(runtime, req.engine_cache_dir, req.precision)
        return found, found.path
    if kind == 'checkpoint':
        path = _checkpoint_onnx(req.model, size, profile, req.cache_dir)
        return None, path
    from depth_ros.inference.onnx_prepare import prepare_if_needed
    if not os.path.isfile(req.model):
        raise FileNotFoundError('ONNX model not found: {}'.format(req.model))
    return None, prepare_if_needed(req.model, size, profile, req.cache_dir)


def _why_model(kind: str, found) -> str:
    if found is not None:
        return found.where + (', source sha256 {}...'.format(found.source_sha256[:12])
                              if found.source_sha256 else '')
    return {'onnx': 'given', 'checkpoint': 'exported from the given checkpoint',
            'engine': 'given engine'}.get(kind, 'given')


def _open_onnxruntime(req, kind: str, choice: BackendChoice) -> Opened:
    from depth_ros.inference.onnx_backend import OnnxDepthModel
    from depth_ros.inference.onnx_prepare import static_input_size

    size = req.input_size or (static_input_size(req.model) if kind == 'onnx' else None) \
        or DEFAULT_SIZE
    found, path = _resolve_onnx(req, kind, 'default', size)
    model = OnnxDepthModel(path, providers=choice.providers, input_size=size,
                           intra_op_threads=req.intra_op_threads)
    warnings = [choice.warning] if choice.warning else []
    reason = choice.reason
    if choice.providers and choice.providers[0] == CUDA_PROVIDER and \
            model.providers[0] != CUDA_PROVIDER:
        # onnxruntime-gpu lists the CUDA provider even where CUDA cannot start.
        why = 'the CUDA provider of onnxruntime did not start (providers {})'.format(
            ', '.join(model.providers))
        reason = 'auto: ' + why
        warnings = [cpu_warning(why)]
    return Opened(model, 'onnxruntime', path, model.input_size, reason,
                  _why_model(kind, found), warnings, found=found, onnx=path)


def _build(req, onnx_path: str, size: Tuple[int, int], record: dict, api):
    """Build (or reuse) the engine of ``onnx_path``; one-line EngineBuildError on failure."""
    from depth_ros.inference.tensorrt.builder import build_engine

    t0 = time.monotonic()
    try:
        return build_engine(onnx_path, precision=req.precision, cache_dir=req.engine_cache_dir,
                            workspace_mb=req.workspace_mb, calib_dir=req.calib_dir,
                            input_size=size, device=req.gpu, heartbeat_s=req.heartbeat_s,
                            heartbeat_what=BUILD_NOTE, record=record, api=api)
    except Exception as exc:  # noqa: B902 - TensorRT, CUDA and option errors, one line each
        from depth_ros.util import first_line
        raise EngineBuildError(
            'TensorRT could not build the engine from {} after {:.0f} s: {}; try a larger '
            'workspace (depth_node parameter workspace_mb, now {} MiB; the Xavier NX shares '
            'its 8 GB with the CPU: stop RViz and other GPU users, add swap), precision fp32 '
            '(parameter precision, now {}), or backend onnxruntime'.format(
                onnx_path, time.monotonic() - t0, first_line(exc), req.workspace_mb,
                req.precision)) from None


def _open_tensorrt(req, kind: str, choice: BackendChoice, api) -> Opened:
    from depth_ros.inference.onnx_prepare import profile_for_tensorrt, static_input_size
    from depth_ros.inference.tensorrt.backend import TensorRTDepthModel

    if api is None:
        from depth_ros.inference.tensorrt import trt_api as api
    gpu = api.open_device(req.gpu)
    try:
        runtime = dict(gpu.info())
    finally:
        gpu.close()
    profile = profile_for_tensorrt(runtime['tensorrt_version'])
    size = req.input_size or (static_input_size(req.model) if kind == 'onnx' else None) \
        or DEFAULT_SIZE
    found, path = _resolve_onnx(req, kind, profile, size,
                                runtime if kind in ('auto', 'onnx_repo') else None)
    built, onnx = False, None
    if found is not None and found.kind == 'engine':
        engine, how = path, _why_model(kind, found)
    else:
        onnx = path
        record = {'model_id': found.model_id, 'source_sha256': found.source_sha256} \
            if found is not None else {}
        result = _build(req, path, size, record, api)
        engine, built = result.engine_path, result.built
        how = '{}; engine {} in {:.0f} s from {}'.format(
            _why_model(kind, found), 'built' if result.built else 'found in the engine cache',
            result.seconds, path)
    model = TensorRTDepthModel(engine, cache_dir=req.engine_cache_dir, precision=req.precision,
                               input_size=size, device=req.gpu, api=api)
    return Opened(model, 'tensorrt', engine, model.input_size, choice.reason, how, found=found,
                  onnx=onnx, built=built)


def open_depth_model(backend: str = AUTO, model: str = AUTO,
                     input_size: Optional[Tuple[int, int]] = None, precision: str = 'fp16',
                     workspace_mb: int = 1024, engine_cache_dir: Optional[str] = None,
                     cache_dir: Optional[str] = None, hub_cache_dir: Optional[str] = None,
                     device: str = 'cpu', gpu: int = 0, allow_download: bool = True,
                     calib_dir: Optional[str] = None,
                     fix: str = default_model.FIX, heartbeat_s: float = 10.0,
                     standin_latency_ms: float = 0.0, standin_mode: str = 'intensity',
                     intra_op_threads: Optional[int] = None, api=None) -> Opened:
    """
    Open the depth model a node (or ``model setup``) runs; see the module docstring.

    :param backend: 'auto', 'tensorrt', 'onnxruntime', 'torch' or 'standin'.
    :param model: 'auto' (or ''): the default model; else an .onnx file, an engine in the
        engine cache, a checkpoint folder/.pth, or a hub id.
    :param input_size: (width, height); None: the file's own, else 518x294.
    :param precision, workspace_mb: TensorRT engine precision and builder workspace (MiB).
    :param calib_dir: int8: recorded frames to calibrate on (see builder.build_engine).
    :param fix: what the error says to do when no model is found ('run `<command>`').
    :param intra_op_threads: ONNX Runtime's intra-op threads (None: its default).
    :raises ValueError: a wrong request (nothing loaded).
    :raises default_model.ModelUnavailable: no model found (one line).
    :raises EngineBuildError: the engine build failed (one line).
    :raises ModelLoadError: any other load failure (one line, ``cause`` the original).
    """
    if input_size is not None:
        input_size = check_input_size(*input_size)
    if backend in ('standin', 'torch'):
        source = model if (model or '').strip().lower() not in default_model.AUTO \
            else default_model.CHECKPOINT_REPO
        loaded = load_model(backend, source if backend == 'torch' else None,
                            input_size=input_size, device=device,
                            standin_latency_ms=standin_latency_ms, standin_mode=standin_mode)
        return Opened(loaded, backend, loaded.name or source, loaded.input_size, 'given',
                      'given' if backend == 'torch' else 'not a model')
    if backend not in (AUTO,) + AUTO_BACKENDS:
        raise ValueError('`backend` must be one of {}, got {!r}'.format(
            ', '.join((AUTO,) + AUTO_BACKENDS + ('torch', 'standin')), backend))
    kind = model_kind(model, backend)
    if backend == AUTO:
        if kind == 'engine':
            choice = BackendChoice('tensorrt', 'auto: the model is a TensorRT engine')
        else:
            try:
                choice = choose_backend(gpu, api)
            except ImportError as exc:
                raise ModelLoadError(AUTO, model or AUTO, exc) from exc
    else:
        choice = BackendChoice(backend, 'given', [CPU_PROVIDER] if backend == 'onnxruntime'
                               else None)
    if kind == 'engine':
        if choice.backend != 'tensorrt':
            raise ValueError('`model` {!r} is a TensorRT engine; it needs backend tensorrt, got '
                             '{}'.format(model, choice.backend))
        loaded = load_model('tensorrt', model, input_size=input_size,
                            engine_cache_dir=engine_cache_dir)
        return Opened(loaded, 'tensorrt', loaded.name, loaded.input_size, choice.reason,
                      'given engine')
    req = _Request(model=model, input_size=input_size, precision=precision,
                   workspace_mb=workspace_mb, engine_cache_dir=engine_cache_dir,
                   cache_dir=cache_dir, hub_cache_dir=hub_cache_dir, gpu=gpu,
                   allow_download=allow_download, fix=fix, heartbeat_s=heartbeat_s,
                   calib_dir=calib_dir, intra_op_threads=intra_op_threads)
    try:
        if choice.backend == 'tensorrt':
            return _open_tensorrt(req, kind, choice, api)
        return _open_onnxruntime(req, kind, choice)
    except (default_model.ModelUnavailable, EngineBuildError):
        raise
    except Exception as exc:  # noqa: B902 - every other load failure is one line
        raise ModelLoadError(choice.backend, model or AUTO, exc) from exc

"""
The one table of inference backends, and the one ``load_model`` that nodes and commands call.

``BACKENDS`` maps each backend name to a :class:`BackendSpec`: whether it is a real network or
the stand-in, what its output means, whether it takes a torch device, and the pip extra it
needs. Callers pick their choices from it (``backend_names``) instead of keeping their own
lists. ``load_model`` builds any of them from one set of keyword arguments, so a ROS node and
a command line pass what they have and each backend takes what applies to it.

Errors are of two kinds, both with one-line messages:

- ``ValueError``: the request itself is wrong (unknown backend, no model for a backend that
  needs one, a bad input size, random weights for a backend other than torch). Nothing was
  loaded. A node reports it as bad configuration.
- :class:`ModelLoadError`: loading failed (missing file, corrupt model, missing package, GPU
  trouble ...). ``cause`` holds the original exception. A node reports it as a start-up failure.

Every backend module is imported only when its model is loaded.
"""
from __future__ import annotations

from dataclasses import dataclass
import logging
import os
from typing import Optional, Sequence, Tuple

from depth_ros.util import describe_error

LOG = logging.getLogger('depth_ros.inference')


@dataclass(frozen=True)
class BackendSpec:
    """
    What a backend is and needs.

    :param name: the backend's name, as in ``--backend`` and the ``backend`` parameter.
    :param summary: one line for help texts.
    :param real_model: a network (False: the stand-in, for tests and benchmarks only).
    :param relative_kind: what ``predict`` returns: 'disparity' (DA-V2, larger = nearer) or
        'depth' (Marigold, 0 near .. 1 far).
    :param torch_device: takes a torch device (``device``: 'cpu', 'cuda', 'cuda:0').
    :param needs_model: needs a model file or id (Marigold has a default checkpoint).
    :param extra: the depth_ros pip extra that installs its dependencies, or None.
    :param uses: the keyword arguments of :func:`load_model` it takes; others are ignored.
    """

    name: str
    summary: str
    real_model: bool
    relative_kind: str
    torch_device: bool
    needs_model: bool
    extra: Optional[str]
    uses: Tuple[str, ...] = ()

    @property
    def install_hint(self) -> str:
        """'install depth_ros[<extra>]', or '' when it needs no extra package."""
        return 'install depth_ros[{}]'.format(self.extra) if self.extra else ''


_SPECS = (
    BackendSpec('onnxruntime', 'ONNX Runtime on an exported .onnx file', True, 'disparity',
                False, True, 'onnx', ('input_size', 'providers')),
    BackendSpec('tensorrt', 'TensorRT engine from the engine cache (or built from an .onnx)',
                True, 'disparity', False, True, 'tensorrt',
                ('input_size', 'engine_cache_dir')),
    BackendSpec('torch', 'PyTorch reference (checkpoint folder, .pth or hub id)', True,
                'disparity', True, True, 'export',
                ('input_size', 'device', 'dtype', 'random_weights', 'seed', 'name')),
    BackendSpec('marigold', 'Marigold diffusion depth (diffusers)', True, 'depth', True, False,
                'marigold', ('device', 'dtype', 'steps', 'ensemble_size',
                             'processing_resolution', 'seed', 'name')),
    BackendSpec('standin', 'fixed-latency stand-in for tests and benchmarks, NOT a model',
                False, 'disparity', False, False, None,
                ('input_size', 'standin_latency_ms', 'standin_mode', 'name')),
)

# name -> BackendSpec, in the order help texts and error messages list them.
BACKENDS = {spec.name: spec for spec in _SPECS}


def backend_names(real_model: Optional[bool] = None,
                  relative_kind: Optional[str] = None) -> Tuple[str, ...]:
    """
    Names of the backends, in registry order, optionally filtered.

    :param real_model: True: networks only; False: the stand-in only; None: all.
    :param relative_kind: 'disparity' or 'depth': only backends whose output is that.
    """
    return tuple(s.name for s in _SPECS
                 if (real_model is None or s.real_model == real_model)
                 and (relative_kind is None or s.relative_kind == relative_kind))


# The Depth Anything V2 backends that load_depth_model serves.
DEPTH_MODEL_BACKENDS = backend_names(real_model=True, relative_kind='disparity')
# What depth_node can run: everything that outputs a relative disparity, the stand-in included.
NODE_BACKENDS = backend_names(relative_kind='disparity')
# What the commands (eval, bench, process-bag) offer as --backend: the networks.
COMMAND_BACKENDS = backend_names(real_model=True)


def backend_spec(name: str, allowed: Optional[Tuple[str, ...]] = None) -> BackendSpec:
    """Return the spec of ``name``; ValueError naming the allowed ones otherwise."""
    allowed = tuple(BACKENDS) if allowed is None else allowed
    if name not in allowed:
        raise ValueError('`backend` must be one of {}, got {!r}'.format(
            ', '.join(allowed), name))
    return BACKENDS[name]


class ModelLoadError(RuntimeError):
    """
    A model could not be loaded; the message is one line, ``cause`` the original error.

    ``'cannot load <backend> model <model>: <Type>: <first line of its message>'``
    """

    def __init__(self, backend: str, model: Optional[str], cause: BaseException):
        self.backend = backend
        self.model = model
        self.cause = cause
        what = 'model {!r}'.format(model) if model else 'backend'
        super(ModelLoadError, self).__init__('cannot load {} {}: {}'.format(
            backend, what, describe_error(cause)))


# ----------------------------------------------------------------------------- loaders
# One per backend: (model, input_size, **options) -> a model with predict(bgr).

def _load_onnxruntime(path: str, input_size, **options):
    from depth_ros.inference.onnx_backend import OnnxDepthModel
    from depth_ros.inference.onnx_prepare import prepare_if_needed
    _check_options('onnxruntime', options, ('providers', 'intra_op_threads', 'name'))
    # A file with dynamic sizes (the public Depth Anything V2 ONNX) is fixed to the size once.
    prepared = prepare_if_needed(path, input_size, 'default')
    if prepared != path:
        options.setdefault('name', '{} (prepared: {})'.format(path, prepared))
    return OnnxDepthModel(prepared, input_size=input_size, **options)


def _load_tensorrt(path: str, input_size, engine_cache_dir: Optional[str] = None, **options):
    from depth_ros.inference.tensorrt import load_engine_model
    if engine_cache_dir:
        options['cache_dir'] = engine_cache_dir
    if input_size is not None:
        options['input_size'] = input_size
    return load_engine_model(path, **options)


def _load_torch(source: str, input_size, device='cpu', dtype='float32',
                random_weights: bool = False, seed: Optional[int] = 0,
                cache_dir: Optional[str] = None, name: Optional[str] = None):
    from depth_ros.core.preprocess import DEFAULT_SIZE
    from depth_ros.inference import checkpoints, torch_model

    if random_weights:
        if source not in torch_model.VARIANTS:
            raise ValueError('with random_weights=True, `path_or_id` must be a variant name '
                             '({}), got {!r}'.format(', '.join(sorted(torch_model.VARIANTS)),
                                                     source))
        model = torch_model.build_model(source, seed=seed)
        label = '{} (UNTRAINED, random weights, seed {})'.format(source, seed)
    else:
        if source in torch_model.VARIANTS and not os.path.exists(source):
            raise ValueError('{!r} is a variant name, not a checkpoint; pass random_weights=True '
                             'to build it with untrained weights'.format(source))
        model, _ = checkpoints.load_checkpoint(source, cache_dir=cache_dir)
        label = source
    return torch_model.TorchDepthModel(model, device=device, dtype=dtype,
                                       input_size=input_size or DEFAULT_SIZE,
                                       name=name or label)


def _load_marigold(checkpoint: Optional[str], input_size, **options):
    from depth_ros.inference.marigold import DEFAULT_CHECKPOINT, load_marigold
    return load_marigold(checkpoint or DEFAULT_CHECKPOINT, **options)


def _load_standin(path: Optional[str], input_size, standin_latency_ms: float = 0.0,
                  standin_mode: str = 'intensity', name: Optional[str] = None):
    from depth_ros.core.preprocess import DEFAULT_SIZE
    from depth_ros.inference.standin import StandInDepthModel
    return StandInDepthModel(latency_ms=standin_latency_ms, mode=standin_mode,
                             input_size=input_size or DEFAULT_SIZE, name=name)


_LOADERS = {'onnxruntime': _load_onnxruntime, 'tensorrt': _load_tensorrt,
            'torch': _load_torch, 'marigold': _load_marigold, 'standin': _load_standin}


def _check_options(backend: str, options: dict, allowed) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError('unknown option(s) {} for backend {!r}; allowed: {}'.format(
            unknown, backend, ', '.join(allowed)))


def load_backend(backend: str, model: Optional[str], input_size=None, **options):
    """
    Run the loader of ``backend`` with its own options (load_depth_model's options).

    Errors propagate as the backend raises them; :func:`load_model` wraps them.
    """
    return _LOADERS[backend_spec(backend).name](model, input_size, **options)


def load_model(backend: str, model: Optional[str] = None, *,
               input_size: Optional[Tuple[int, int]] = None, device: str = 'cpu',
               engine_cache_dir: Optional[str] = None, random_weights: bool = False,
               seed: Optional[int] = 0, dtype: Optional[str] = None,
               steps: Optional[int] = None, ensemble_size: int = 1,
               processing_resolution: Optional[int] = None, standin_latency_ms: float = 0.0,
               standin_mode: str = 'intensity', name: Optional[str] = None,
               providers: Optional[Sequence] = None):
    """
    Load any backend's model for a node or a command; returns an object with ``predict(bgr)``.

    Each backend takes the arguments that apply to it (``BACKENDS[backend].uses``) and
    ignores the others, so a caller can pass its whole configuration.

    :param backend: a name of ``BACKENDS``.
    :param model: .onnx file (onnxruntime), engine or .onnx (tensorrt), checkpoint folder,
        .pth, hub id or, with ``random_weights``, a variant name (torch), checkpoint or hub id
        (marigold; None: its default checkpoint). Unused by the stand-in.
    :param input_size: (width, height), multiples of 14; None: the model file's, or 518x294.
    :param device: torch device (torch, marigold).
    :param engine_cache_dir: the engine cache engines load from (tensorrt); None: the default.
    :param random_weights: torch only: build ``model`` (a variant) UNTRAINED, seeded by ``seed``.
    :param seed: torch random weights; Marigold's initial noise (None: random).
    :param dtype: torch dtype name ('float32', ...) for torch, 'fp16'/'fp32' for Marigold;
        None: the backend's default.
    :param steps, ensemble_size, processing_resolution: Marigold's settings.
    :param standin_latency_ms, standin_mode: the stand-in's latency (ms) and mode.
    :param name: label of the model in logs and reports (torch, marigold, standin).
    :param providers: ONNX Runtime's execution providers (onnxruntime; None: the CPU's).
    :raises ValueError: the request is wrong (see the module docstring); nothing was loaded.
    :raises ModelLoadError: loading failed; one-line message, the original as ``cause``.
    """
    spec = backend_spec(backend)
    if spec.needs_model and not model:
        raise ValueError('backend {!r} needs a model file or id, got {!r}'.format(
            backend, model))
    if random_weights and 'random_weights' not in spec.uses:
        raise ValueError('random weights work with backend torch only, got backend {!r}'
                         .format(backend))
    if input_size is not None:
        from depth_ros.core.preprocess import check_input_size
        input_size = check_input_size(*input_size)
    given = {'device': device, 'engine_cache_dir': engine_cache_dir,
             'random_weights': random_weights, 'seed': seed, 'dtype': dtype, 'steps': steps,
             'ensemble_size': ensemble_size, 'processing_resolution': processing_resolution,
             'standin_latency_ms': standin_latency_ms, 'standin_mode': standin_mode,
             'name': name, 'providers': providers}
    # None means "the backend's default", except where None is a value of its own.
    keep_none = ('seed', 'steps', 'processing_resolution')
    options = {k: v for k, v in given.items()
               if k in spec.uses and (v is not None or k in keep_none)}
    if random_weights:
        LOG.warning('random weights: an UNTRAINED %s network; its output is not a depth '
                    'estimate', model)
    try:
        return _LOADERS[spec.name](model, input_size, **options)
    except Exception as exc:  # noqa: B902 - every load failure is reported the same way
        raise ModelLoadError(spec.name, model, exc) from exc

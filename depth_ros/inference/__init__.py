"""
Depth Anything V2 backends behind one interface (see depth_ros/inference/base.py).

``load_depth_model(path_or_id, backend=...)`` returns a DepthModel whose ``predict(bgr)`` maps
an [H, W, 3] uint8 BGR image to an [H, W] float32 relative inverse depth. Every backend is
imported only when asked for.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

BACKENDS = ('onnxruntime', 'torch', 'tensorrt')

__all__ = ['BACKENDS', 'load_depth_model', 'resolve_demo_model']


def load_depth_model(path_or_id: str, backend: str = 'onnxruntime',
                     input_size: Optional[Tuple[int, int]] = None, **options):
    """
    Load a Depth Anything V2 model behind the DepthModel interface.

    :param path_or_id: per backend:
        - 'onnxruntime': an .onnx file (its fixed input size is used);
        - 'torch': a Hugging Face checkpoint folder, a hub id, an official .pth, or a variant
          name ('vits', 'vitb', 'vitl', 'tiny') together with ``random_weights=True``;
        - 'tensorrt': a serialized engine, see depth_ros.inference.tensorrt.
    :param backend: 'onnxruntime' (default), 'torch' or 'tensorrt'.
    :param input_size: (width, height), multiples of 14. For ONNX and TensorRT it must equal
        the size the file was built for; for torch the default is 518x294.
    :param options: backend options. onnxruntime: ``providers``, ``intra_op_threads``.
        torch: ``device`` (default 'cpu'), ``dtype`` (default 'float32'), ``random_weights``,
        ``seed``, ``cache_dir``. tensorrt: passed to ``load_engine_model``.
    :raises ValueError: unknown backend or options; a file that is not a model of this kind.
    :raises FileNotFoundError: the path does not exist.
    """
    if backend not in BACKENDS:
        raise ValueError('`backend` must be one of {}, got {!r}'.format(
            ', '.join(BACKENDS), backend))
    if not isinstance(path_or_id, str) or not path_or_id:
        raise ValueError('`path_or_id` must be a non-empty path or hub id, got {!r}'.format(
            path_or_id))
    if backend == 'onnxruntime':
        from depth_ros.inference.onnx_backend import OnnxDepthModel
        _check_options(backend, options, ('providers', 'intra_op_threads', 'name'))
        return OnnxDepthModel(path_or_id, input_size=input_size, **options)
    if backend == 'tensorrt':
        from depth_ros.inference.tensorrt import load_engine_model
        if input_size is not None:
            options['input_size'] = input_size
        return load_engine_model(path_or_id, **options)
    return _load_torch(path_or_id, input_size, **options)


def _check_options(backend: str, options: dict, allowed) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError('unknown option(s) {} for backend {!r}; allowed: {}'.format(
            unknown, backend, ', '.join(allowed)))


def _load_torch(source: str, input_size: Optional[Tuple[int, int]], device='cpu',
                dtype='float32', random_weights: bool = False, seed: Optional[int] = 0,
                cache_dir: Optional[str] = None, name: Optional[str] = None):
    from depth_ros.core.preprocess import DEFAULT_SIZE
    from depth_ros.inference import torch_model

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
        model, info = torch_model.load_checkpoint(source, cache_dir=cache_dir)
        label = source
    return torch_model.TorchDepthModel(model, device=device, dtype=dtype,
                                       input_size=input_size or DEFAULT_SIZE,
                                       name=name or label)


def resolve_demo_model(*args, **kwargs):
    """See :func:`depth_ros.inference.export.resolve_demo_model`."""
    from depth_ros.inference.export import resolve_demo_model as resolve
    return resolve(*args, **kwargs)

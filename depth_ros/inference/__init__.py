"""
Depth Anything V2 backends behind one interface (see depth_ros/inference/base.py).

``load_depth_model(path_or_id, backend=...)`` returns a DepthModel whose ``predict(bgr)`` maps
an [H, W, 3] uint8 BGR image to an [H, W] float32 relative inverse depth. ``load_model`` loads
any backend of the registry (Marigold and the stand-in included) from one set of keyword
arguments, with one-line errors, for nodes and commands (depth_ros/inference/registry.py).
Every backend is imported only when asked for.
"""
from __future__ import annotations

from typing import Optional, Tuple

from depth_ros.inference.registry import (backend_names, backend_spec, BACKENDS, BackendSpec,
                                          COMMAND_BACKENDS, DEPTH_MODEL_BACKENDS, load_backend,
                                          load_model, ModelLoadError, NODE_BACKENDS)

__all__ = ['BACKENDS', 'BackendSpec', 'backend_names', 'backend_spec', 'COMMAND_BACKENDS',
           'DEPTH_MODEL_BACKENDS', 'load_depth_model', 'load_model', 'ModelLoadError',
           'NODE_BACKENDS', 'resolve_demo_model']


def load_depth_model(path_or_id: str, backend: str = 'onnxruntime',
                     input_size: Optional[Tuple[int, int]] = None, **options):
    """
    Load a Depth Anything V2 model behind the DepthModel interface.

    :param path_or_id: per backend:
        - 'onnxruntime': an .onnx file (its fixed input size is used);
        - 'torch': a Hugging Face checkpoint folder, a hub id, an official .pth, or a variant
          name ('vits', 'vitb', 'vitl', 'tiny') together with ``random_weights=True``;
        - 'tensorrt': a serialized engine, see depth_ros.inference.tensorrt.
    :param backend: 'onnxruntime' (default), 'tensorrt' or 'torch'.
    :param input_size: (width, height), multiples of 14. For ONNX and TensorRT it must equal
        the size the file was built for; for torch the default is 518x294.
    :param options: backend options. onnxruntime: ``providers``, ``intra_op_threads``.
        torch: ``device`` (default 'cpu'), ``dtype`` (default 'float32'), ``random_weights``,
        ``seed``, ``cache_dir``. tensorrt: passed to ``load_engine_model``.
    :raises ValueError: unknown backend or options; a file that is not a model of this kind.
    :raises FileNotFoundError: the path does not exist.
    """
    backend_spec(backend, DEPTH_MODEL_BACKENDS)
    if not isinstance(path_or_id, str) or not path_or_id:
        raise ValueError('`path_or_id` must be a non-empty path or hub id, got {!r}'.format(
            path_or_id))
    return load_backend(backend, path_or_id, input_size, **options)


def resolve_demo_model(*args, **kwargs):
    """See :func:`depth_ros.inference.model_store.resolve_demo_model`."""
    from depth_ros.inference.model_store import resolve_demo_model as resolve
    return resolve(*args, **kwargs)

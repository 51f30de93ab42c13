"""
The demo's model store: find or make an ONNX file, exported once per checkpoint and size.

``resolve_demo_model`` takes what the user gave to ``depth-ros demo --model`` (an .onnx file,
a checkpoint, a hub id) and returns an ONNX file for ONNX Runtime. Exports are cached under
``default_cache_dir()/onnx`` by checkpoint hash and input size, so the second run reuses them.
Without --model the demo opens the default model as depth_node does
(depth_ros.inference.auto, depth_ros.inference.default_model); where that cannot be had and
torch is installed, ``untrained_vits`` exports the UNTRAINED ViT-S of its documented fallback.
"""
from __future__ import annotations

import logging
import os
from typing import Iterator, Optional, Tuple

from depth_ros.core.preprocess import check_input_size, DEFAULT_SIZE
from depth_ros.inference import checkpoints, export
from depth_ros.inference.onnx_tools import read_metadata
from depth_ros.util import user_cache_dir

LOG = logging.getLogger('depth_ros.inference.export')

ENV_CACHE_DIR = 'DEPTH_ROS_CACHE'


def default_cache_dir() -> str:
    """Return DEPTH_ROS_CACHE, else $XDG_CACHE_HOME/depth_ros, else ~/.cache/depth_ros."""
    return user_cache_dir(env_var=ENV_CACHE_DIR)


def cached_onnx_path(cache_dir: str, variant: str, sha256: str,
                     input_size: Tuple[int, int], opset: int = export.DEFAULT_OPSET) -> str:
    """Return where the ONNX of a checkpoint (by hash) at a size is cached."""
    width, height = check_input_size(*input_size)
    return os.path.join(cache_dir, 'onnx', 'da2-{}-{}-{}x{}-op{}.onnx'.format(
        variant, sha256[:16], width, height, opset))


def local_vits_candidates(models_dir: str) -> Iterator[str]:
    """Yield where a ViT-S checkpoint may lie under ``models_dir`` (HF folder, official .pth)."""
    yield os.path.join(models_dir, 'Depth-Anything-V2-Small-hf')
    yield os.path.join(models_dir, 'depth_anything_v2_vits.pth')


def export_cached(model, info: dict, cache_dir: str, input_size: Tuple[int, int]) -> str:
    """Export once per (checkpoint hash, size); later calls reuse the file. Returns its path."""
    path = cached_onnx_path(cache_dir, info['variant'], info['sha256'], input_size)
    if os.path.isfile(path) and os.path.getsize(path) > 0:
        LOG.info('using cached ONNX %s', path)
        return path
    return export.export_onnx(model, path, input_size=input_size,
                              metadata=export.checkpoint_metadata(info))


def _checkpoint_onnx(source: str, cache_dir: str, size: Tuple[int, int],
                     hub_cache_dir: Optional[str] = None) -> Tuple[str, dict]:
    """Load a checkpoint and return (cached ONNX path, checkpoint info)."""
    net, info = checkpoints.load_checkpoint(source, cache_dir=hub_cache_dir)
    return export_cached(net, info, cache_dir, size), info


def _given_model(model: str, cache_dir: str, size: Tuple[int, int],
                 hub_cache_dir: Optional[str]) -> Tuple[str, str, bool]:
    if str(model).endswith('.onnx'):
        if not os.path.isfile(model):
            raise FileNotFoundError('ONNX model not found: {}'.format(model))
        trained = read_metadata(model).get('trained', 'true') != 'false'
        desc = 'ONNX model {}'.format(model) + ('' if trained else
                                                ' (UNTRAINED: random weights)')
        return model, desc, trained
    path, info = _checkpoint_onnx(model, cache_dir, size, hub_cache_dir)
    return path, 'Depth Anything V2 {} from {} (ONNX {} at {}x{})'.format(
        info['variant'], model, path, size[0], size[1]), True


def untrained_vits(cache_dir: Optional[str], input_size: Tuple[int, int], reason: str,
                   seed: int = 0) -> Tuple[str, str, bool]:
    """
    Export (once per seed and size) an UNTRAINED ViT-S; returns (onnx_path, description, False).

    Only for the demo's documented fallback, where torch is installed and the default model
    cannot be had: the description starts with ``UNTRAINED network``, says why (``reason``)
    and how to get the trained model. Needs torch and transformers (depth_ros[export]).
    """
    size = check_input_size(*input_size)
    net, info = checkpoints.random_checkpoint('vits', seed)
    path = export_cached(net, info, cache_dir or default_cache_dir(), size)
    return path, untrained_description(seed, reason), False


def untrained_description(seed: int, reason: str) -> str:
    """Say that the network is untrained, why, and how to get the trained one."""
    return ('UNTRAINED network: Depth Anything V2 ViT-S architecture with random weights '
            '(seed {}), because {}. Its output is NOT a depth estimate; the demo runs only to '
            'show the pipeline end to end. For the trained model run `depth-ros model setup` '
            '(with internet access) or pass --model.'.format(seed, reason))


def resolve_demo_model(model: str, cache_dir: Optional[str] = None,
                       input_size: Tuple[int, int] = DEFAULT_SIZE,
                       hub_cache_dir: Optional[str] = None) -> Tuple[str, str, bool]:
    """
    Return (onnx_path, description, trained) for the model given to ``depth-ros demo --model``.

    ``model`` may be an .onnx file (used as it is; ``trained`` from its metadata), a checkpoint
    folder, an official .pth or a checkpoint hub id (exported once per hash and size into
    ``cache_dir``; needs torch). Without --model the demo opens the default model as
    depth_node does (depth_ros.inference.auto.open_depth_model), not through this function.
    """
    if not isinstance(model, str) or not model:
        raise ValueError('`model` must be an .onnx file, a checkpoint or a hub id, got {!r} '
                         '(the default model: depth_ros.inference.auto.open_depth_model)'
                         .format(model))
    size = check_input_size(*input_size)
    return _given_model(model, cache_dir or default_cache_dir(), size, hub_cache_dir)

"""
The demo's model store: find or make an ONNX file, exported once per checkpoint and size.

``resolve_demo_model`` takes what the user gave (an .onnx file, a checkpoint, a hub id, or
nothing) and returns an ONNX file for ONNX Runtime. Exports are cached under
``default_cache_dir()/onnx`` by checkpoint hash and input size, so the second run reuses them.
Without any checkpoint (none local, hub unreachable) it exports an UNTRAINED ViT-S and says so.
"""
from __future__ import annotations

import logging
import os
from typing import Iterator, Optional, Tuple

from depth_ros.core.preprocess import check_input_size, DEFAULT_SIZE
from depth_ros.inference import checkpoints, export, hub
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


def _untrained_model(cache_dir: str, size: Tuple[int, int], seed: int, reason: str,
                     models_dir: str) -> Tuple[str, str, bool]:
    net, info = checkpoints.random_checkpoint('vits', seed)
    path = export_cached(net, info, cache_dir, size)
    desc = ('UNTRAINED network: Depth Anything V2 ViT-S architecture with random weights '
            '(seed {}), because there is {}. Its output is NOT a depth estimate; the demo runs '
            'only to show the pipeline end to end. Put a checkpoint in {}/ or pass --model.'
            .format(seed, reason, models_dir))
    return path, desc, False


def resolve_demo_model(model: Optional[str] = None, cache_dir: Optional[str] = None,
                       input_size: Tuple[int, int] = DEFAULT_SIZE, models_dir: str = 'models',
                       seed: int = 0, timeout_s: float = 3.0,
                       hub_cache_dir: Optional[str] = None) -> Tuple[str, str, bool]:
    """
    Find or make an ONNX file for the demo: returns (onnx_path, description, trained).

    ``model`` may be an .onnx file, a checkpoint folder, an official .pth or a hub id. With
    None: a local ViT-S checkpoint (hub cache, then ``models_dir``), else a download of
    depth-anything/Depth-Anything-V2-Small-hf when the hub answers within ``timeout_s``, else
    an UNTRAINED ViT-S with seeded random weights (trained False), so the pipeline still runs
    end to end. Exported files are cached under ``cache_dir`` by checkpoint hash and size.
    ``hub_cache_dir`` is the Hugging Face cache to look in and download to (None: HF default).
    """
    size = check_input_size(*input_size)
    cache_dir = cache_dir or default_cache_dir()
    if model is not None:
        return _given_model(model, cache_dir, size, hub_cache_dir)
    repo = checkpoints.HUB_IDS['vits']
    candidates = [hub.find_cached(repo, hub_cache_dir)] + list(local_vits_candidates(models_dir))
    for candidate in candidates:
        if candidate and os.path.exists(candidate):
            path, _ = _checkpoint_onnx(candidate, cache_dir, size)
            return path, ('Depth Anything V2 ViT-S ({}, Apache-2.0) from {}, ONNX at {}x{}'
                          .format(repo, candidate, size[0], size[1])), True
    ok, why = hub.check_reachable(timeout_s)
    if ok:
        try:
            folder = hub.download(repo, cache_dir=hub_cache_dir, timeout_s=timeout_s)
            path, _ = _checkpoint_onnx(folder, cache_dir, size)
            return path, ('Depth Anything V2 ViT-S ({}, Apache-2.0), downloaded, ONNX at {}x{}'
                          .format(repo, size[0], size[1])), True
        except hub.HubUnavailable as exc:
            why = str(exc)
    reason = 'no local ViT-S checkpoint (hub cache, {}/), and the download failed: {}'.format(
        models_dir, why)
    return _untrained_model(cache_dir, size, seed, reason, models_dir)

"""
Depth Anything V2 weights: Hugging Face folders, official .pth files and hub ids -> a model.

Weights come from a Hugging Face checkpoint folder (config.json + model.safetensors) or from an
official ``depth_anything_v2_vit{s,b,l}.pth`` of github.com/DepthAnything/Depth-Anything-V2,
whose keys are mapped here to the transformers names; a hub id is downloaded first
(depth_ros.inference.hub). The architectures are depth_ros.inference.torch_model's.

torch and transformers are imported inside functions, so importing this module is cheap.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from typing import Dict, List, Optional

from depth_ros.inference import torch_model
from depth_ros.inference.torch_model import make_config, require_torch, \
    variant_of_config, VARIANTS
from depth_ros.util import file_sha256, first_line

LOG = logging.getLogger('depth_ros.inference.checkpoints')

HUB_IDS = {
    'vits': 'depth-anything/Depth-Anything-V2-Small-hf',
    'vitb': 'depth-anything/Depth-Anything-V2-Base-hf',
    'vitl': 'depth-anything/Depth-Anything-V2-Large-hf',
}

LICENSES = {
    'vits': 'Apache-2.0',
    'vitb': 'CC-BY-NC-4.0 (non-commercial)',
    'vitl': 'CC-BY-NC-4.0 (non-commercial)',
    'tiny': 'test-only architecture, no released weights',
}

# Official DPT layout: head.scratch.refinenet4 fuses the deepest features first, which is
# transformers' fusion layer 0.
_REFINENET_TO_FUSION = {4: 0, 3: 1, 2: 2, 1: 3}

# ---------------------------------------------------------------------------------------------
# Official .pth checkpoints


def _backbone_layer_names(target_keys) -> Dict[str, str]:
    """Return the attention parameter names of the installed transformers (5.x renamed them)."""
    if 'backbone.encoder.layer.0.attention.q_proj.weight' in target_keys:
        return {'q': 'attention.q_proj', 'k': 'attention.k_proj', 'v': 'attention.v_proj',
                'o': 'attention.o_proj'}
    return {'q': 'attention.attention.query', 'k': 'attention.attention.key',
            'v': 'attention.attention.value', 'o': 'attention.output.dense'}


def official_key_map(num_layers: int, target_keys=()) -> Dict[str, str]:
    """
    Map official Depth-Anything-V2 parameter names to transformers names.

    The fused ``attn.qkv`` tensors are not in the map: :func:`convert_official_state_dict`
    splits them into query, key and value.
    """
    attn = _backbone_layer_names(set(target_keys))
    m = {
        'pretrained.cls_token': 'backbone.embeddings.cls_token',
        'pretrained.mask_token': 'backbone.embeddings.mask_token',
        'pretrained.pos_embed': 'backbone.embeddings.position_embeddings',
        'pretrained.norm.weight': 'backbone.layernorm.weight',
        'pretrained.norm.bias': 'backbone.layernorm.bias',
    }
    for p in ('weight', 'bias'):
        m['pretrained.patch_embed.proj.' + p] = \
            'backbone.embeddings.patch_embeddings.projection.' + p
    for i in range(num_layers):
        src = 'pretrained.blocks.{}.'.format(i)
        dst = 'backbone.encoder.layer.{}.'.format(i)
        m[src + 'ls1.gamma'] = dst + 'layer_scale1.lambda1'
        m[src + 'ls2.gamma'] = dst + 'layer_scale2.lambda1'
        for p in ('weight', 'bias'):
            m[src + 'norm1.' + p] = dst + 'norm1.' + p
            m[src + 'norm2.' + p] = dst + 'norm2.' + p
            m[src + 'mlp.fc1.' + p] = dst + 'mlp.fc1.' + p
            m[src + 'mlp.fc2.' + p] = dst + 'mlp.fc2.' + p
            m[src + 'attn.proj.' + p] = dst + attn['o'] + '.' + p
    for i in range(4):
        for p in ('weight', 'bias'):
            m['depth_head.projects.{}.{}'.format(i, p)] = \
                'neck.reassemble_stage.layers.{}.projection.{}'.format(i, p)
            if i != 2:  # resize_layers.2 is an Identity
                m['depth_head.resize_layers.{}.{}'.format(i, p)] = \
                    'neck.reassemble_stage.layers.{}.resize.{}'.format(i, p)
        m['depth_head.scratch.layer{}_rn.weight'.format(i + 1)] = 'neck.convs.{}.weight'.format(i)
    for k, j in _REFINENET_TO_FUSION.items():
        src = 'depth_head.scratch.refinenet{}.'.format(k)
        dst = 'neck.fusion_stage.layers.{}.'.format(j)
        for p in ('weight', 'bias'):
            m[src + 'out_conv.' + p] = dst + 'projection.' + p
            for u in (1, 2):
                for c in (1, 2):
                    m['{}resConfUnit{}.conv{}.{}'.format(src, u, c, p)] = \
                        '{}residual_layer{}.convolution{}.{}'.format(dst, u, c, p)
    for p in ('weight', 'bias'):
        m['depth_head.scratch.output_conv1.' + p] = 'head.conv1.' + p
        m['depth_head.scratch.output_conv2.0.' + p] = 'head.conv2.' + p
        m['depth_head.scratch.output_conv2.2.' + p] = 'head.conv3.' + p
    return m


def infer_official_variant(state_dict, name: str = 'checkpoint') -> str:
    """Infer the variant of an official-layout state dict from its tensor shapes."""
    try:
        dim = int(state_dict['pretrained.pos_embed'].shape[-1])
        neck = [int(state_dict['depth_head.projects.{}.weight'.format(i)].shape[0])
                for i in range(4)]
        fusion = int(state_dict['depth_head.scratch.layer1_rn.weight'].shape[0])
    except (KeyError, AttributeError, IndexError) as exc:
        raise ValueError('{}: not an official Depth Anything V2 checkpoint (missing {}); '
                         'expected keys like pretrained.blocks.0... and depth_head.projects.0...'
                         .format(name, exc))
    blocks = {int(mo.group(1)) for mo in
              (re.match(r'pretrained\.blocks\.(\d+)\.', k) for k in state_dict) if mo}
    depth = max(blocks) + 1 if blocks else 0
    for variant, spec in VARIANTS.items():
        if (spec['hidden_size'] == dim and spec['num_hidden_layers'] == depth
                and spec['neck_hidden_sizes'] == neck
                and spec['fusion_hidden_size'] == fusion):
            return variant
    raise ValueError('{}: unknown Depth Anything V2 architecture (embed dim {}, {} blocks, '
                     'projections {}, features {}); known: {}'.format(
                         name, dim, depth, neck, fusion, ', '.join(sorted(VARIANTS))))


def convert_official_state_dict(state_dict, target_keys, num_layers: int,
                                name: str = 'checkpoint') -> dict:
    """
    Rename an official state dict to transformers names; strict about every key.

    :param target_keys: the transformers model's state-dict keys.
    :raises ValueError: naming ``name`` on missing or unexpected keys.
    """
    target_keys = set(target_keys)
    attn = _backbone_layer_names(target_keys)
    key_map = official_key_map(num_layers, target_keys)
    src = dict(state_dict)
    out = {}
    for i in range(num_layers):
        pre = 'pretrained.blocks.{}.attn.qkv.'.format(i)
        dst = 'backbone.encoder.layer.{}.'.format(i)
        for p in ('weight', 'bias'):
            qkv = src.pop(pre + p, None)
            if qkv is None:
                continue
            # The fused projection stacks query, key and value along the output dimension.
            q, k, v = qkv.chunk(3, dim=0)
            out[dst + attn['q'] + '.' + p] = q.clone()
            out[dst + attn['k'] + '.' + p] = k.clone()
            out[dst + attn['v'] + '.' + p] = v.clone()
    unexpected = []
    for key, value in src.items():
        new = key_map.get(key)
        if new is None:
            unexpected.append(key)
        else:
            out[new] = value
    missing = sorted(target_keys - set(out))
    unexpected += sorted(set(out) - target_keys)
    if missing or unexpected:
        raise ValueError('{}: does not match the Depth Anything V2 layout: {} missing key(s) '
                         '{}, {} unexpected key(s) {}'.format(
                             name, len(missing), _few(missing), len(unexpected),
                             _few(sorted(unexpected))))
    return out


def _few(keys: List[str], n: int = 5) -> str:
    return '[' + ', '.join(keys[:n]) + (', ...]' if len(keys) > n else ']')


def load_official_pth(path: str):
    """
    Load an official ``depth_anything_v2_vit*.pth``; returns (model, variant).

    Uses ``torch.load(weights_only=True)``: a file that holds anything but tensors is refused,
    never unpickled as code.
    """
    require_torch()
    import torch
    from transformers import DepthAnythingForDepthEstimation

    if not os.path.isfile(path):
        raise FileNotFoundError('checkpoint not found: {}'.format(path))
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:  # pickle, zip and weights-only errors all mean "not loadable"
        reason = first_line(exc)
        if 'Weights only load failed' in str(exc):
            # torch's message goes on to suggest weights_only=False: we never do that.
            reason = ('it holds pickled objects other than tensors, which are refused '
                      '(torch.load(weights_only=True))')
        raise ValueError('{}: cannot read as a PyTorch weights file: {}'.format(
            path, reason)) from None
    if isinstance(state, dict):
        for wrapper in ('model', 'state_dict'):
            if isinstance(state.get(wrapper), dict) and 'pretrained.pos_embed' not in state:
                state = state[wrapper]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError('{}: expected a state dict of tensors, got {}'.format(
            path, type(state).__name__))
    variant = infer_official_variant(state, path)
    model = DepthAnythingForDepthEstimation(make_config(variant))
    target = model.state_dict()
    converted = convert_official_state_dict(state, target.keys(),
                                            VARIANTS[variant]['num_hidden_layers'], path)
    bad = ['{} {} vs {}'.format(k, tuple(v.shape), tuple(target[k].shape))
           for k, v in converted.items() if tuple(v.shape) != tuple(target[k].shape)]
    if bad:
        raise ValueError('{}: tensor shapes do not match the {} architecture: {}'.format(
            path, variant, _few(bad, 3)))
    model.load_state_dict(converted, strict=True)
    return model.eval(), variant


# ---------------------------------------------------------------------------------------------
# Hugging Face checkpoint folders


def load_hf_folder(folder: str):
    """
    Load a Hugging Face checkpoint folder (config.json + model.safetensors).

    Returns (model, variant). Only safetensors weights are read.
    """
    require_torch()
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation

    config_path = os.path.join(folder, 'config.json')
    weights = os.path.join(folder, 'model.safetensors')
    if not os.path.isdir(folder):
        raise FileNotFoundError('checkpoint folder not found: {}'.format(folder))
    if not os.path.isfile(config_path):
        raise FileNotFoundError('{}: no config.json (not a Hugging Face checkpoint)'.format(
            folder))
    if not os.path.isfile(weights):
        raise FileNotFoundError('{}: no model.safetensors (only safetensors weights are '
                                'loaded)'.format(folder))
    try:
        config = DepthAnythingConfig.from_pretrained(folder)
    except Exception as exc:
        raise ValueError('{}: not a Depth Anything config: {}'.format(
            config_path, first_line(exc)))
    if getattr(config, 'model_type', None) != 'depth_anything':
        raise ValueError('{}: model_type is {!r}, expected depth_anything'.format(
            config_path, getattr(config, 'model_type', None)))
    try:
        model, info = DepthAnythingForDepthEstimation.from_pretrained(
            folder, use_safetensors=True, output_loading_info=True)
    except Exception as exc:
        raise ValueError('{}: cannot load the weights: {}'.format(
            weights, first_line(exc)))
    checked = ('missing_keys', 'unexpected_keys', 'mismatched_keys')
    problems = ['{} {}'.format(k, _few(sorted(map(str, info[k])))) for k in checked
                if info.get(k)]
    if problems:
        raise ValueError('{}: weights do not match config.json: {}'.format(
            weights, '; '.join(problems)))
    return model.eval(), variant_of_config(model.config)


# ---------------------------------------------------------------------------------------------
# Any source


def state_dict_hash(model) -> str:
    """sha256 over a model's parameters (names, dtypes, shapes and bytes), in key order."""
    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update('{}|{}|{}\n'.format(key, t.dtype, tuple(t.shape)).encode())
        h.update(t.numpy().tobytes() if t.numel() else b'')
    return h.hexdigest()


def weights_file(source: str) -> Optional[str]:
    """Return the file that holds the weights of a local source (folder or .pth), or None."""
    if os.path.isdir(source):
        path = os.path.join(source, 'model.safetensors')
        return path if os.path.isfile(path) else None
    return source if os.path.isfile(source) else None


def load_checkpoint(source: str, cache_dir: Optional[str] = None):
    """
    Load weights from a folder, an official .pth, or a hub id. Returns (model, info).

    ``info`` has 'variant', 'source' (what was asked for), 'path' (local file or folder),
    'sha256' (of the weights file) and 'trained' ('true').
    """
    if not isinstance(source, str) or not source:
        raise ValueError('`checkpoint` must be a path or a hub id, got {!r}'.format(source))
    path = source
    if not os.path.exists(source):
        from depth_ros.inference import hub
        if not hub.looks_like_hub_id(source):
            raise FileNotFoundError('checkpoint not found: {}'.format(source))
        path = hub.download(source, cache_dir=cache_dir)
    if os.path.isdir(path):
        model, variant = load_hf_folder(path)
    elif path.endswith(('.pth', '.pt', '.bin')):
        model, variant = load_official_pth(path)
    else:
        raise ValueError('{}: unknown checkpoint format; expected a Hugging Face folder '
                         '(config.json + model.safetensors) or an official .pth'.format(path))
    weights = weights_file(path)
    info = {'variant': variant, 'source': source, 'path': path,
            'sha256': file_sha256(weights) if weights else state_dict_hash(model),
            'trained': 'true'}
    LOG.info('loaded Depth Anything V2 %s from %s', variant, path)
    return model, info


def random_checkpoint(variant: str = 'vits', seed: int = 0):
    """
    Build an UNTRAINED model of ``variant`` with seeded random weights; returns (model, info).

    ``info`` is load_checkpoint's, with source 'random-seed<seed>', the sha256 of the weights
    (state_dict_hash) and 'trained' 'false'. Its output is not a depth estimate.
    """
    model = torch_model.build_model(torch_model.check_variant(variant), seed=seed)
    info = {'variant': variant, 'source': 'random-seed{}'.format(seed),
            'sha256': state_dict_hash(model), 'trained': 'false'}
    return model, info

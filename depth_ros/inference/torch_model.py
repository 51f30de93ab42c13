"""
Depth Anything V2 in PyTorch (transformers): the architectures and the reference backend.

The network is transformers' ``DepthAnythingForDepthEstimation``. The configs below equal those
of the official checkpoints on the Hugging Face Hub (depth-anything/Depth-Anything-V2-*-hf).
Loading weights (Hugging Face folders, official .pth files, hub ids) is
depth_ros.inference.checkpoints' job.

torch and transformers are imported inside functions, so importing this module is cheap.
"""
from __future__ import annotations

from typing import Optional, Tuple

from depth_ros.core.preprocess import DEFAULT_SIZE
from depth_ros.inference.base import DepthModel
import numpy as np

# Architecture of each variant. ``out_indices`` index transformers' hidden states, where 0 is
# the patch embedding: the official model taps blocks [2, 5, 8, 11] (ViT-S/B) and
# [4, 11, 17, 23] (ViT-L), counted from 0, which are hidden states [3, 6, 9, 12] and
# [5, 12, 18, 24]. 'tiny' is not a released model: it exists for fast tests.
VARIANTS = {
    'vits': dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                 out_indices=[3, 6, 9, 12], neck_hidden_sizes=[48, 96, 192, 384],
                 fusion_hidden_size=64),
    'vitb': dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 out_indices=[3, 6, 9, 12], neck_hidden_sizes=[96, 192, 384, 768],
                 fusion_hidden_size=128),
    'vitl': dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                 out_indices=[5, 12, 18, 24], neck_hidden_sizes=[256, 512, 1024, 1024],
                 fusion_hidden_size=256),
    'tiny': dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                 out_indices=[1, 2, 3, 4], neck_hidden_sizes=[8, 16, 32, 32],
                 fusion_hidden_size=16),
}


def require_torch() -> None:
    """Raise ImportError naming depth_ros[export] when torch or transformers is missing."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        raise ImportError('the torch backend and ONNX export need torch and transformers: '
                          'install depth_ros[export] ({})'.format(exc))


def check_variant(variant: str) -> str:
    """Return ``variant`` if it is a known architecture, else raise ValueError."""
    if variant not in VARIANTS:
        raise ValueError('`variant` must be one of {}, got {!r}'.format(
            ', '.join(sorted(VARIANTS)), variant))
    return variant


def make_config(variant: str = 'vits'):
    """Make the ``DepthAnythingConfig`` of a variant ('vits', 'vitb', 'vitl', 'tiny')."""
    require_torch()
    from transformers import DepthAnythingConfig, Dinov2Config

    spec = VARIANTS[check_variant(variant)]
    backbone = Dinov2Config(
        hidden_size=spec['hidden_size'], num_hidden_layers=spec['num_hidden_layers'],
        num_attention_heads=spec['num_attention_heads'], mlp_ratio=4, image_size=518,
        patch_size=14, layerscale_value=1.0, layer_norm_eps=1e-6, qkv_bias=True,
        use_swiglu_ffn=False, out_indices=list(spec['out_indices']), apply_layernorm=True,
        reshape_hidden_states=False)
    return DepthAnythingConfig(
        backbone_config=backbone, patch_size=14,
        reassemble_hidden_size=spec['hidden_size'], reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=list(spec['neck_hidden_sizes']),
        fusion_hidden_size=spec['fusion_hidden_size'], head_in_index=-1, head_hidden_size=32,
        depth_estimation_type='relative')


def variant_of_config(config) -> str:
    """Return the name of the variant whose architecture ``config`` has, or 'custom'."""
    backbone = config.backbone_config
    for name, spec in VARIANTS.items():
        if (backbone.hidden_size == spec['hidden_size']
                and backbone.num_hidden_layers == spec['num_hidden_layers']
                and list(backbone.out_indices) == spec['out_indices']
                and list(config.neck_hidden_sizes) == spec['neck_hidden_sizes']
                and config.fusion_hidden_size == spec['fusion_hidden_size']):
            return name
    return 'custom'


def build_model(variant: str = 'vits', seed: Optional[int] = None):
    """
    Build a ``DepthAnythingForDepthEstimation`` with random (untrained) weights, eval mode.

    :param seed: seeds torch's generator for reproducible weights; None leaves it alone.
    Untrained output is not a depth estimate: use it for pipeline tests only.
    """
    require_torch()
    import torch
    from transformers import DepthAnythingForDepthEstimation

    config = make_config(variant)
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            model = DepthAnythingForDepthEstimation(config)
    else:
        model = DepthAnythingForDepthEstimation(config)
    return model.eval()


class TorchDepthModel(DepthModel):
    """
    The PyTorch reference backend.

    :param model: a ``DepthAnythingForDepthEstimation`` (moved to ``device``/``dtype`` here).
    :param device: torch device the caller chose, e.g. 'cpu' or 'cuda:0'.
    :param dtype: torch dtype the caller chose, e.g. torch.float32.
    :param input_size: model input (width, height), multiples of 14.
    """

    backend = 'torch'

    def __init__(self, model, device, dtype, input_size: Tuple[int, int] = DEFAULT_SIZE,
                 name: str = ''):
        super().__init__(input_size=input_size, name=name)
        require_torch()
        import torch

        if isinstance(dtype, str):
            value = getattr(torch, dtype, None)
            if not isinstance(value, torch.dtype):
                raise ValueError('`dtype` must be a torch dtype, got {!r}'.format(dtype))
            dtype = value
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError('`dtype` must be a floating torch dtype, got {!r}'.format(dtype))
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError('`device` must be a torch device, got {!r} ({})'.format(
                device, exc))
        self.dtype = dtype
        self.model = model.to(device=self.device, dtype=dtype).eval()

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(batch).to(device=self.device, dtype=self.dtype)  # [1,3,h,w]
            out = self.model(pixel_values=x).predicted_depth                       # [1,h,w]
            return out.float().cpu().numpy()

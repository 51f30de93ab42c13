"""
Marigold depth through diffusers' ``MarigoldDepthPipeline``.

Marigold predicts affine-invariant *depth* in [0, 1] (0 near, 1 far), unlike Depth Anything V2,
which predicts affine-invariant inverse depth. ``MarigoldDepth.relative_kind`` says so, and the
aligner and the evaluation take it from there.

Device and dtype are passed in by the caller (node, CLI); ``default_dtype(device)`` gives the
usual choice (fp16 on CUDA, fp32 on CPU). torch and diffusers are imported lazily.
"""
from __future__ import annotations

from dataclasses import dataclass
import importlib.util
import logging
import time
from typing import Optional

from depth_ros.core.checks import check_image
from depth_ros.inference.base import Closable, LatencyStats
from depth_ros.util import check_number_as
import numpy as np

LOG = logging.getLogger('depth_ros.inference.marigold')

MARIGOLD_V1_1 = 'prs-eth/marigold-depth-v1-1'
MARIGOLD_LCM = 'prs-eth/marigold-depth-lcm-v1-0'
DEFAULT_CHECKPOINT = MARIGOLD_V1_1
# Denoising steps each checkpoint is meant for (v1-1 uses a trailing DDIM schedule: 1-4 steps).
CHECKPOINT_STEPS = {MARIGOLD_V1_1: 4, MARIGOLD_LCM: 4}
DTYPES = ('fp16', 'fp32')
TINY = 'tiny-random'   # an untrained tiny pipeline: for tests and dry runs, its output is noise

_INSTALL = 'install depth_ros[marigold] (torch, diffusers) to use Marigold'


def _import_torch_diffusers():
    try:
        import diffusers
        import torch
    except ImportError as exc:
        raise ImportError('{}: {}'.format(_INSTALL, exc))
    return torch, diffusers


def dtype_keyword(diffusers) -> str:
    """
    Return the name under which this diffusers takes the weights' dtype: 'dtype' or 'torch_dtype'.

    Newer diffusers take ``dtype`` and warn on ``torch_dtype`` (removed in 1.0); older ones
    (among them those Python 3.8 can install) know only ``torch_dtype`` and would pass an
    unknown ``dtype`` on to the components. The newer ones resolve the old name with
    ``diffusers.utils.deprecation_utils._resolve_dtype``: its presence tells them apart.
    """
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
        return 'dtype'
    except ImportError:
        pass
    major = str(getattr(diffusers, '__version__', '0')).split('.')[0]
    return 'dtype' if major.isdigit() and int(major) >= 1 else 'torch_dtype'


def default_dtype(device: str) -> str:
    """Return the usual precision for ``device``: 'fp16' on CUDA, 'fp32' on CPU."""
    return 'fp16' if str(device).startswith('cuda') else 'fp32'


_ENSEMBLE = '`{name}` must be 1 or an integer >= 3, got {value!r}'


def check_settings(steps: Optional[int], ensemble_size: int,
                   processing_resolution: Optional[int], dtype: str) -> None:
    """Validate the run settings before any compute; errors name the setting and its value."""
    check_number_as('`{name}` must be an integer >= 1 (or None for the checkpoint default), '
                    'got {value!r}', 'steps', steps, low=1, integer=True, allow_none=True)
    # 2 is refused: our choice, not diffusers'. diffusers only warns on 2 ("results are
    # similar to no ensembling"); two predictions cost twice as much for no real gain and give
    # no meaningful uncertainty, so we refuse it instead of letting it pass with a warning.
    if check_number_as(_ENSEMBLE, 'ensemble_size', ensemble_size, low=1, integer=True) == 2:
        raise ValueError(_ENSEMBLE.format(name='ensemble_size', value=ensemble_size))
    check_number_as('`{name}` must be an integer >= 0 (0 = native, None = checkpoint '
                    'default), got {value!r}', 'processing_resolution', processing_resolution,
                    low=0, integer=True, allow_none=True)
    if dtype not in DTYPES:
        raise ValueError('`dtype` must be one of {}, got {!r}'.format(DTYPES, dtype))


@dataclass
class MarigoldPrediction:
    """One Marigold result at the input image size."""

    depth: np.ndarray                   # [H, W] float32 affine-invariant depth, 0 near .. 1 far
    uncertainty: Optional[np.ndarray]   # [H, W] float32 ensemble spread, None when not ensembling
    latency_ms: float


# The logger of diffusers' from_pretrained (diffusers.pipelines.pipeline_utils).
_PIPELINE_LOGGER = 'diffusers.pipelines.pipeline_utils'


class _HubNotice(logging.Filter):
    """
    Keep diffusers' "Couldn't connect to the Hub: ... Will try to load from local cache." to debug.

    Offline (the robot, often), every load of a hub id printed those two raw lines before
    going on to the cache: a cached checkpoint then loads, and a missing one is told in the
    one line from_pretrained raises.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith("Couldn't connect to the Hub"):
            LOG.debug('diffusers: %s', ' '.join(message.split()))
            return False
        return True


class MarigoldDepth(Closable):
    """
    Marigold depth estimator around a ready ``MarigoldDepthPipeline``.

    :param pipeline: a diffusers ``MarigoldDepthPipeline`` (already on ``device`` in ``dtype``).
    :param device: torch device string, e.g. 'cuda', 'cuda:0', 'cpu'.
    :param dtype: 'fp16' or 'fp32'; the pipeline's weights must already be in it.
    :param steps: denoising steps; None = the checkpoint's default.
    :param ensemble_size: 1, or >= 3 predictions ensembled (gives an uncertainty map).
    :param processing_resolution: longer side the network sees; 0 = native, None = default.
    :param seed: seed of the initial noise, for repeatable keyframes; None = random.
    """

    backend = 'marigold'
    relative_kind = 'depth'   # affine-invariant depth, 0 near 1 far (not disparity)

    def __init__(self, pipeline, device: str = 'cpu', dtype: str = 'fp32',
                 steps: Optional[int] = None, ensemble_size: int = 1,
                 processing_resolution: Optional[int] = None, seed: Optional[int] = 0,
                 name: str = ''):
        check_settings(steps, ensemble_size, processing_resolution, dtype)
        if dtype == 'fp16' and not str(device).startswith('cuda'):
            LOG.warning('Marigold in fp16 on %s is slow or unsupported; fp32 is usual on CPU',
                        device)
        if getattr(pipeline, 'empty_text_embedding', None) is None and \
                getattr(pipeline, 'text_encoder', None) is None:
            raise ValueError('`pipeline` has neither a text encoder nor `empty_text_embedding` '
                             'set; Marigold needs one of them')
        self.pipeline = pipeline
        self.device = str(device)
        self.dtype = dtype
        self.steps = None if steps is None else int(steps)
        self.ensemble_size = int(ensemble_size)
        self.processing_resolution = (None if processing_resolution is None
                                      else int(processing_resolution))
        self.seed = seed
        self.name = name
        self.latency = LatencyStats()
        if hasattr(pipeline, 'set_progress_bar_config'):
            # One keyframe is one call; a tqdm bar per call would flood node logs.
            pipeline.set_progress_bar_config(disable=True)

    @classmethod
    def from_pretrained(cls, checkpoint: str = DEFAULT_CHECKPOINT, device: str = 'cpu',
                        dtype: str = 'fp32', **kwargs) -> 'MarigoldDepth':
        """
        Load a hub id or a local checkpoint folder and move it to ``device``.

        Weights are read from safetensors files only (no pickled .bin). Honours
        ``HF_HUB_OFFLINE``. Errors name the checkpoint. ``kwargs`` go to the constructor.
        """
        check_settings(kwargs.get('steps'), kwargs.get('ensemble_size', 1),
                       kwargs.get('processing_resolution'), dtype)
        torch, diffusers = _import_torch_diffusers()
        torch_dtype = torch.float16 if dtype == 'fp16' else torch.float32
        # use_safetensors=True: weights come only from safetensors files, never from pickled
        # .bin files (security rule: unpickling a checkpoint can run arbitrary code). A folder
        # with only .bin weights is refused with an OSError, reported below.
        load = {dtype_keyword(diffusers): torch_dtype, 'use_safetensors': True}
        if dtype == 'fp16':
            load['variant'] = 'fp16'   # the prs-eth checkpoints ship fp16 weight files
        if importlib.util.find_spec('accelerate') is None:
            # diffusers asks for low_cpu_mem_usage by default and, without accelerate (not in
            # depth_ros[marigold]), falls back to False with a 5-line warning at every start.
            load['low_cpu_mem_usage'] = False
        # diffusers' "Loading pipeline components..." bar: one more line in a node's log.
        bars = getattr(diffusers.utils, 'logging', None)
        bars_on = bars is not None and getattr(bars, 'is_progress_bar_enabled', bool)()
        if bars_on:
            bars.disable_progress_bar()
        hub_notice = _HubNotice()
        hub_logger = logging.getLogger(_PIPELINE_LOGGER)
        hub_logger.addFilter(hub_notice)
        try:
            try:
                pipe = diffusers.MarigoldDepthPipeline.from_pretrained(checkpoint, **load)
            except (OSError, ValueError):
                if 'variant' not in load:
                    raise
                load.pop('variant')    # local folders often have only the full weights
                pipe = diffusers.MarigoldDepthPipeline.from_pretrained(checkpoint, **load)
        except (OSError, ValueError) as exc:
            raise FileNotFoundError('cannot load Marigold checkpoint {!r} (a hub id needs the '
                                    'network or the HF cache; a folder needs model_index.json '
                                    'and safetensors weights): {}'.format(checkpoint, exc))
        finally:
            hub_logger.removeFilter(hub_notice)
            if bars_on:
                bars.enable_progress_bar()
        pipe = pipe.to(device)
        kwargs.setdefault('name', checkpoint)
        if kwargs.get('steps') is None and checkpoint in CHECKPOINT_STEPS \
                and getattr(pipe, 'default_denoising_steps', None) is None:
            kwargs['steps'] = CHECKPOINT_STEPS[checkpoint]
        return cls(pipe, device=device, dtype=dtype, **kwargs)

    def infer(self, bgr: np.ndarray) -> MarigoldPrediction:
        """[H, W, 3] uint8 BGR -> depth (0 near, 1 far) and uncertainty at [H, W]."""
        check_image('bgr', bgr, channels=3, dtypes=(np.uint8,))
        torch, _ = _import_torch_diffusers()
        t0 = time.perf_counter()
        torch_dtype = torch.float16 if self.dtype == 'fp16' else torch.float32
        rgb = np.ascontiguousarray(bgr[:, :, ::-1].transpose(2, 0, 1))          # [3, H, W]
        image = torch.from_numpy(rgb).to(self.device).unsqueeze(0)              # [1, 3, H, W]
        image = image.to(torch_dtype) / 255.0                 # the pipeline wants [0, 1]
        generator = None
        if self.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(int(self.seed))
        want_unc = self.ensemble_size > 1
        with torch.no_grad():
            out = self.pipeline(image, num_inference_steps=self.steps,
                                ensemble_size=self.ensemble_size,
                                processing_resolution=self.processing_resolution,
                                match_input_resolution=True, generator=generator,
                                output_type='np', output_uncertainty=want_unc)
        h, w = bgr.shape[:2]
        depth = np.asarray(out.prediction, dtype=np.float32).reshape(h, w)     # [N,H,W,1] -> [H,W]
        unc = None
        if want_unc and out.uncertainty is not None:
            unc = np.asarray(out.uncertainty, dtype=np.float32).reshape(h, w)
        ms = (time.perf_counter() - t0) * 1e3
        self.latency.add(ms)
        LOG.debug('marigold %dx%d: %.1f ms (steps %s, ensemble %d)', w, h, ms, self.steps,
                  self.ensemble_size)
        return MarigoldPrediction(depth=depth, uncertainty=unc, latency_ms=ms)

    def predict(self, bgr: np.ndarray) -> np.ndarray:
        """
        [H, W, 3] uint8 BGR -> [H, W] float32 relative depth (0 near, 1 far).

        Same call as the DA-V2 backends, but the convention is ``relative_kind`` = 'depth'.
        """
        return self.infer(bgr).depth

    def close(self) -> None:
        """Drop the pipeline (frees GPU memory once no one else holds it)."""
        self.pipeline = None

    def __repr__(self) -> str:
        return ('MarigoldDepth(name={!r}, device={!r}, dtype={!r}, steps={}, '
                'ensemble_size={})'.format(self.name, self.device, self.dtype, self.steps,
                                           self.ensemble_size))


def load_marigold(checkpoint: str = DEFAULT_CHECKPOINT, device: str = 'cpu',
                  dtype: Optional[str] = None, **kwargs) -> MarigoldDepth:
    """
    ``MarigoldDepth.from_pretrained``, or the tiny random pipeline for ``'tiny-random'``.

    ``dtype`` None = ``default_dtype(device)``. ``kwargs`` go to the MarigoldDepth constructor.
    """
    dtype = default_dtype(device) if dtype is None else dtype
    if checkpoint == TINY:
        LOG.warning('Marigold %r: an UNTRAINED tiny pipeline; its depth is noise (for tests '
                    'and dry runs only)', TINY)
        check_settings(kwargs.get('steps'), kwargs.get('ensemble_size', 1),
                       kwargs.get('processing_resolution'), dtype)
        torch, _ = _import_torch_diffusers()
        # Built in float32. A dtype given to the pipeline's to() makes diffusers print "There
        # are modules in UNet2DConditionModel that should be kept in float32: []" per model.
        pipe = build_tiny_pipeline().to(device)
        if dtype == 'fp16':
            pipe = pipe.to(torch.float16)
        kwargs.setdefault('name', TINY)
        return MarigoldDepth(pipe, device=device, dtype=dtype, **kwargs)
    return MarigoldDepth.from_pretrained(checkpoint, device=device, dtype=dtype, **kwargs)


def build_tiny_pipeline(seed: int = 0, scheduler: str = 'ddim', default_steps: int = 1,
                        default_resolution: int = 32):
    """
    Build a tiny randomly initialised ``MarigoldDepthPipeline`` from configs (no download).

    For tests and for running the pipeline end to end without weights: its output means
    nothing. ``empty_text_embedding`` is set, so it needs no tokenizer or text encoder.
    """
    if scheduler not in ('ddim', 'lcm'):
        raise ValueError("`scheduler` must be 'ddim' or 'lcm', got {!r}".format(scheduler))
    torch, diffusers = _import_torch_diffusers()
    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8,
        in_channels=8, out_channels=4,   # image latent + depth latent in, depth noise out
        down_block_types=('DownBlock2D', 'CrossAttnDownBlock2D'),
        up_block_types=('CrossAttnUpBlock2D', 'UpBlock2D'),
        cross_attention_dim=8, norm_num_groups=4, attention_head_dim=2)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3,
        down_block_types=['DownEncoderBlock2D'] * 2, up_block_types=['UpDecoderBlock2D'] * 2,
        latent_channels=4, norm_num_groups=4, sample_size=16)
    common = dict(beta_start=0.00085, beta_end=0.012, beta_schedule='scaled_linear',
                  prediction_type='v_prediction', timestep_spacing='trailing')
    if scheduler == 'ddim':
        sched = diffusers.DDIMScheduler(set_alpha_to_one=False, steps_offset=1,
                                        clip_sample=False, **common)
    else:
        sched = diffusers.LCMScheduler(**common)
    pipe = diffusers.MarigoldDepthPipeline(
        unet=unet, vae=vae, scheduler=sched, text_encoder=None, tokenizer=None,
        prediction_type='depth', default_denoising_steps=default_steps,
        default_processing_resolution=default_resolution)
    pipe.empty_text_embedding = torch.randn(1, 2, 8, generator=gen)   # [1, tokens, cross_dim]
    return pipe

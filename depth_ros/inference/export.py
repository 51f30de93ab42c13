"""
Depth Anything V2 checkpoint -> ONNX at a fixed input size, and the demo's model resolver.

The graph has one input ``image`` [1, 3, h, w] float32 (normalised RGB, as
depth_ros.core.preprocess.prepare_input makes it) and one output ``relative_disparity``
[1, h, w] float32. The size is fixed (a multiple of 14) because TensorRT builds its fastest
engines for static shapes.

Two opsets, for two kinds of consumer:

- opset >= 17 (default; ONNX Runtime, TensorRT >= 8.6, JetPack 6): torch's dynamo exporter
  (torch.export + onnxscript). LayerNorm is one LayerNormalization node and the graph has no
  Shape/Gather/Constant clutter.
- opset 16 (TensorRT 8.5, JetPack 5.1): TensorRT's ONNX parser has no LayerNormalization
  importer before 8.6 (``No importer registered for op: LayerNormalization``), so the
  TorchScript exporter writes LayerNorm as ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add.
  Its node names keep the module path (``/net/backbone/encoder/layer.0/norm1/ReduceMean``),
  which is how the TensorRT builder finds those nodes and keeps them in FP32 (the variance
  overflows FP16).

In both, the DINOv2 attention is switched to the eager implementation for export so that it
becomes plain MatMul-Softmax-MatMul, without the IsNaN guards that the scaled-dot-product
decomposition inserts (TensorRT 8.5 has no IsNaN importer either).
"""
from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import tempfile
import threading
import time
from typing import Dict, Optional, Tuple

from depth_ros.core.preprocess import check_input_size, DEFAULT_SIZE

LOG = logging.getLogger('depth_ros.inference.export')

INPUT_NAME = 'image'
OUTPUT_NAME = 'relative_disparity'
DEFAULT_OPSET = 17
MIN_OPSET = 16  # LayerNorm decomposed; the oldest opset TensorRT 8.5 needs
LAYERNORM_OPSET = 17  # LayerNormalization is a single node from opset 17
# --target -> opset. TensorRT parses the LayerNormalization node from 8.6 (JetPack 6.0 ships
# 8.6, JetPack 6.1+ ships 10); JetPack 5.1 ships 8.5.2.
TARGET_OPSETS = {'tensorrt8.5': 16, 'tensorrt8.6': 17, 'tensorrt10': 17, 'onnxruntime': 17}
EXPORTER_DYNAMO = 'dynamo'
EXPORTER_TORCHSCRIPT = 'torchscript'


@contextlib.contextmanager
def progress(desc: str, enabled: bool = True):
    """Show a tqdm line with elapsed seconds while a step without its own progress runs."""
    if not enabled:
        yield
        return
    from tqdm.auto import tqdm

    stop = threading.Event()
    bar = tqdm(desc=desc, unit='s', bar_format='{desc}: {elapsed}', leave=True)

    def beat():
        while not stop.wait(1.0):
            bar.update(1)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        bar.close()


class _ExportWrapper(object):
    """Wrap the model in a torch module that maps ``image`` to the [1, h, w] prediction."""

    @staticmethod
    def wrap(model):
        import torch

        class DepthAnythingOnnx(torch.nn.Module):
            def __init__(self, net):
                super().__init__()
                self.net = net

            def forward(self, image):
                return self.net(pixel_values=image).predicted_depth  # [1, h, w]

        return DepthAnythingOnnx(model).eval()


@contextlib.contextmanager
def _eager_attention(model):
    """Temporarily run the backbone's attention with the eager implementation."""
    configs = [c for c in (getattr(getattr(model, 'backbone', None), 'config', None),
                           getattr(model.config, 'backbone_config', None)) if c is not None]
    saved = [getattr(c, '_attn_implementation', None) for c in configs]
    for c in configs:
        try:
            c._attn_implementation = 'eager'
        except (AttributeError, ValueError) as exc:  # older transformers: leave it
            LOG.debug('cannot set eager attention: %s', exc)
    try:
        yield
    finally:
        for c, value in zip(configs, saved):
            if value is not None:
                try:
                    c._attn_implementation = value
                except (AttributeError, ValueError):
                    pass


def max_opset() -> int:
    """Return the highest opset both the installed torch exporter and onnx support."""
    try:
        import onnx
    except ImportError as exc:
        raise ImportError('ONNX export needs torch, onnx and onnxscript: install '
                          'depth_ros[export] ({})'.format(exc))

    try:
        from torch.onnx._constants import ONNX_MAX_OPSET as torch_max
    except ImportError:  # private module moved: trust onnx
        torch_max = onnx.defs.onnx_opset_version()
    return int(min(torch_max, onnx.defs.onnx_opset_version()))


def check_opset(opset, name: str = '`opset`', maximum: Optional[int] = None) -> int:
    """
    Validate an ONNX opset for export and return it.

    :param name: how the error names the value (``--opset`` on the command line).
    :param maximum: highest allowed opset; None asks the installed torch/onnx (imports torch).
    """
    if maximum is None:
        maximum = max_opset()
    if isinstance(opset, bool) or not isinstance(opset, int) or not \
            MIN_OPSET <= opset <= maximum:
        raise ValueError('{} must be an integer from {} to {} (16: LayerNorm decomposed, for '
                         'TensorRT < 8.6; >= 17: one LayerNormalization node), got {!r}'
                         .format(name, MIN_OPSET, maximum, opset))
    return opset


def resolve_opset(opset: Optional[int] = None, target: Optional[str] = None) -> int:
    """
    Return the opset to export at: ``opset`` when given (it wins), else the target's.

    :param target: one of TARGET_OPSETS ('tensorrt8.5' -> 16; 'tensorrt8.6', 'tensorrt10',
        'onnxruntime' -> 17); None: DEFAULT_OPSET.
    """
    if target is not None and target not in TARGET_OPSETS:
        raise ValueError('`target` must be one of {}, got {!r}'.format(
            ', '.join(sorted(TARGET_OPSETS)), target))
    if opset is not None:
        if target is not None and TARGET_OPSETS[target] != opset:
            LOG.warning('opset %s overrides target %s (opset %d)%s', opset, target,
                        TARGET_OPSETS[target],
                        ': TensorRT 8.5 cannot parse the LayerNormalization node'
                        if target == 'tensorrt8.5' else '')
        return opset
    if target is not None:
        return TARGET_OPSETS[target]
    return DEFAULT_OPSET


def exporter_for(opset: int) -> str:
    """Return which torch exporter serves an opset: 'dynamo' (>= 17) or 'torchscript' (16)."""
    return EXPORTER_DYNAMO if opset >= LAYERNORM_OPSET else EXPORTER_TORCHSCRIPT


def _export_torchscript(module, dummy, opset: int):
    """Export with the TorchScript (tracing) exporter; returns the ModelProto."""
    import onnx
    import torch

    kwargs = {}
    # torch >= 2.5 takes `dynamo` (its default became True in 2.9); older torch, as found on
    # Jetsons, only has the TorchScript exporter and rejects the keyword.
    if 'dynamo' in inspect.signature(torch.onnx.export).parameters:
        kwargs['dynamo'] = False
    buffer = io.BytesIO()
    torch.onnx.export(module, (dummy,), buffer, input_names=[INPUT_NAME],
                      output_names=[OUTPUT_NAME], opset_version=opset,
                      do_constant_folding=True, verbose=False, **kwargs)
    return onnx.load_model_from_string(buffer.getvalue())


def export_onnx(model, path: str, input_size: Tuple[int, int] = DEFAULT_SIZE,
                opset: int = DEFAULT_OPSET, metadata: Optional[Dict[str, str]] = None,
                show_progress: bool = True) -> str:
    """
    Export a ``DepthAnythingForDepthEstimation`` to ONNX at a fixed size; returns ``path``.

    :param input_size: (width, height), positive multiples of 14.
    :param opset: ONNX opset: >= 17 (dynamo exporter, one LayerNormalization node: ONNX
        Runtime, TensorRT >= 8.6) or 16 (TorchScript exporter, LayerNorm decomposed into nodes
        named after their norm module: TensorRT 8.5). See resolve_opset for targets.
    :param metadata: extra metadata_props, e.g. variant and source checkpoint hash.
    The file is written to a temporary name in the same folder and renamed into place, so a
    crash never leaves a half-written model behind. metadata_props record the opset and the
    exporter.
    """
    width, height = check_input_size(*input_size)
    if not isinstance(path, str) or not path:
        raise ValueError('`path` must be a file path, got {!r}'.format(path))
    try:
        import onnx
        import torch
    except ImportError as exc:
        raise ImportError('ONNX export needs torch, onnx and onnxscript: install '
                          'depth_ros[export] ({})'.format(exc))
    check_opset(opset)
    exporter = exporter_for(opset)

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    model = model.eval()
    dummy = torch.zeros(1, 3, height, width, dtype=torch.float32)
    t0 = time.perf_counter()
    LOG.info('exporting ONNX at %dx%d (opset %d, %s exporter) to %s', width, height, opset,
             exporter, path)
    with _eager_attention(model), torch.no_grad(), \
            progress('exporting ONNX {}x{}'.format(width, height), show_progress), \
            _quiet_exporter():
        module = _ExportWrapper.wrap(model)
        if exporter == EXPORTER_DYNAMO:
            program = torch.onnx.export(
                module, (dummy,), None, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                opset_version=opset, dynamo=True, verbose=False)
            proto = program.model_proto
        else:
            proto = _export_torchscript(module, dummy, opset)
    got = [o.version for o in proto.opset_import if o.domain in ('', 'ai.onnx')]
    if got and got[0] != opset:
        LOG.warning('exporter wrote opset %s instead of %s', got[0], opset)
    ops = {n.op_type for n in proto.graph.node}
    if 'IsNaN' in ops:  # eager attention should have removed them
        LOG.warning('the graph holds IsNaN nodes, which TensorRT 8.5 cannot import')
    props = {'producer': 'depth_ros', 'model': 'Depth Anything V2',
             'input_size': '{}x{}'.format(width, height), 'input': INPUT_NAME,
             'output': OUTPUT_NAME, 'torch': torch.__version__,
             'opset': str(got[0] if got else opset), 'exporter': exporter}
    props.update({str(k): str(v) for k, v in (metadata or {}).items()})
    onnx.helper.set_model_props(proto, props)
    onnx.checker.check_model(proto)
    save_atomic(proto, path)
    LOG.info('wrote %s (%.1f MB) in %.1f s', path, os.path.getsize(path) / 1e6,
             time.perf_counter() - t0)
    return path


def save_atomic(proto, path: str) -> None:
    """
    Save an ONNX ModelProto to a temporary file in the target folder, then rename it.

    A crash or error never leaves a half-written model at ``path``, nor a stray temporary.
    """
    import onnx

    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp',
                               dir=folder)
    os.close(fd)
    try:
        onnx.save_model(proto, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the dynamo exporter, which logs every step at INFO and WARNING."""
    names = ('torch.onnx', 'torch.export', 'torch._dynamo', 'onnxscript', 'onnx_ir', 'torch.fx')
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            with open(os.devnull, 'w') as sink, contextlib.redirect_stdout(sink):
                yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def read_metadata(path: str) -> Dict[str, str]:
    """Return the metadata_props of an ONNX file."""
    import onnx

    proto = onnx.load(path, load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def export_checkpoint(source: Optional[str], path: str, variant: Optional[str] = None,
                      random_weights: bool = False, seed: int = 0,
                      input_size: Tuple[int, int] = DEFAULT_SIZE, opset: int = DEFAULT_OPSET,
                      cache_dir: Optional[str] = None, show_progress: bool = True,
                      target: Optional[str] = None) -> dict:
    """
    Load a checkpoint (or build random weights when asked) and export it; returns its info.

    Exactly one of ``source`` and ``random_weights`` (with ``variant``) must be given.
    ``target`` (e.g. 'tensorrt8.5') is only recorded in the metadata; resolve_opset maps it
    to ``opset``.
    """
    from depth_ros.inference import torch_model

    if random_weights:
        if source:
            raise ValueError('give either a checkpoint or random weights, not both '
                             '(checkpoint {!r})'.format(source))
        variant = torch_model.check_variant(variant or 'vits')
        model = torch_model.build_model(variant, seed=seed)
        info = {'variant': variant, 'source': 'random-seed{}'.format(seed),
                'sha256': torch_model.state_dict_hash(model), 'trained': 'false'}
    else:
        if not source:
            raise ValueError('a checkpoint is required (or random weights, explicitly)')
        model, info = torch_model.load_checkpoint(source, cache_dir=cache_dir)
        if variant and variant != info['variant']:
            raise ValueError('{}: holds a {} model, not the requested variant {}'.format(
                source, info['variant'], variant))
        info = dict(info, trained='true')
    meta = {'variant': info['variant'], 'source': info['source'],
            'source_sha256': info['sha256'], 'trained': info['trained'],
            'license': torch_model.LICENSES.get(info['variant'], 'see the checkpoint')}
    if target:
        meta['target'] = target
    export_onnx(model, path, input_size=input_size, opset=opset, metadata=meta,
                show_progress=show_progress)
    return dict(info, path=path)


def default_cache_dir() -> str:
    """Return DEPTH_ROS_CACHE, else $XDG_CACHE_HOME/depth_ros, else ~/.cache/depth_ros."""
    env = os.environ.get('DEPTH_ROS_CACHE')
    if env:
        return env
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(base, 'depth_ros')


def cached_onnx_path(cache_dir: str, variant: str, sha256: str,
                     input_size: Tuple[int, int], opset: int = DEFAULT_OPSET) -> str:
    """Return where the ONNX of a checkpoint (by hash) at a size is cached."""
    width, height = check_input_size(*input_size)
    return os.path.join(cache_dir, 'onnx', 'da2-{}-{}-{}x{}-op{}.onnx'.format(
        variant, sha256[:16], width, height, opset))


def _local_vits_candidates(models_dir: str):
    yield os.path.join(models_dir, 'Depth-Anything-V2-Small-hf')
    yield os.path.join(models_dir, 'depth_anything_v2_vits.pth')


def _export_cached(model, info: dict, cache_dir: str,
                   input_size: Tuple[int, int]) -> str:
    """Export once per (checkpoint hash, size); later calls reuse the file."""
    path = cached_onnx_path(cache_dir, info['variant'], info['sha256'], input_size)
    if os.path.isfile(path) and os.path.getsize(path) > 0:
        LOG.info('using cached ONNX %s', path)
        return path
    from depth_ros.inference import torch_model

    meta = {'variant': info['variant'], 'source': info['source'],
            'source_sha256': info['sha256'], 'trained': info['trained'],
            'license': torch_model.LICENSES.get(info['variant'], 'see the checkpoint')}
    return export_onnx(model, path, input_size=input_size, metadata=meta)


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
    from depth_ros.inference import hub, torch_model

    width, height = check_input_size(*input_size)
    cache_dir = cache_dir or default_cache_dir()
    size = '{}x{}'.format(width, height)
    if model is not None:
        if str(model).endswith('.onnx'):
            if not os.path.isfile(model):
                raise FileNotFoundError('ONNX model not found: {}'.format(model))
            trained = read_metadata(model).get('trained', 'true') != 'false'
            desc = 'ONNX model {}'.format(model) + ('' if trained else
                                                    ' (UNTRAINED: random weights)')
            return model, desc, trained
        net, info = torch_model.load_checkpoint(model, cache_dir=hub_cache_dir)
        info = dict(info, trained='true')
        path = _export_cached(net, info, cache_dir, (width, height))
        return path, 'Depth Anything V2 {} from {} (ONNX {} at {})'.format(
            info['variant'], model, path, size), True

    repo = torch_model.HUB_IDS['vits']
    candidates = [hub.find_cached(repo, hub_cache_dir)] + list(_local_vits_candidates(models_dir))
    reason = 'no local ViT-S checkpoint (hub cache, {}/)'.format(models_dir)
    for candidate in candidates:
        if candidate and os.path.exists(candidate):
            net, info = torch_model.load_checkpoint(candidate)
            info = dict(info, trained='true')
            path = _export_cached(net, info, cache_dir, (width, height))
            return path, ('Depth Anything V2 ViT-S ({}, Apache-2.0) from {}, ONNX at {}'
                          .format(repo, candidate, size)), True
    ok, why = hub.check_reachable(timeout_s)
    if ok:
        try:
            folder = hub.download(repo, cache_dir=hub_cache_dir, timeout_s=timeout_s)
            net, info = torch_model.load_checkpoint(folder)
            info = dict(info, trained='true')
            path = _export_cached(net, info, cache_dir, (width, height))
            return path, ('Depth Anything V2 ViT-S ({}, Apache-2.0), downloaded, ONNX at {}'
                          .format(repo, size)), True
        except hub.HubUnavailable as exc:
            why = str(exc)
    reason = '{}, and the download failed: {}'.format(reason, why)
    net = torch_model.build_model('vits', seed=seed)
    info = {'variant': 'vits', 'source': 'random-seed{}'.format(seed),
            'sha256': torch_model.state_dict_hash(net), 'trained': 'false'}
    path = _export_cached(net, info, cache_dir, (width, height))
    desc = ('UNTRAINED network: Depth Anything V2 ViT-S architecture with random weights '
            '(seed {}), because there is {}. Its output is NOT a depth estimate; the demo runs '
            'only to show the pipeline end to end. Put a checkpoint in {}/ or pass --model.'
            .format(seed, reason, models_dir))
    return path, desc, False

"""
Depth Anything V2 checkpoint -> ONNX at a fixed input size.

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
decomposition inserts (TensorRT 8.5 has no IsNaN importer either). The position embeddings,
which DINOv2 resizes to the patch grid with a bicubic interpolation (a cubic Resize, which
TensorRT imports only from 8.6), are precomputed at the fixed size and become a constant
(constant_position_embeddings). At opset 16 the TorchScript exporter's constant shape
arithmetic is folded by ONNX Runtime's basic optimiser (fold_constants), and tensorrt85_issues
lists anything left that TensorRT 8.5's parser rejects (both in
depth_ros.inference.onnx_tools). The demo's cached models are depth_ros.inference.model_store's.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import logging
import os
import time
from typing import Dict, Optional, Tuple

from depth_ros.core.preprocess import check_input_size, DEFAULT_SIZE
from depth_ros.inference.onnx_tools import fold_constants, save_atomic, tensorrt85_issues
from depth_ros.util import check_number_as, progress_heartbeat

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
_INSTALL = 'ONNX export needs torch, onnx and onnxscript: install depth_ros[export] ({})'


def _require_export():
    """Return (onnx, torch); ImportError naming depth_ros[export] when one is missing."""
    try:
        import onnx
        import torch
    except ImportError as exc:
        raise ImportError(_INSTALL.format(exc))
    return onnx, torch


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


def _position_embedding_modules(model):
    """Return the modules that interpolate position embeddings (the DINOv2 embeddings)."""
    return [m for m in model.modules()
            if callable(getattr(m, 'interpolate_pos_encoding', None))
            and getattr(m, 'position_embeddings', None) is not None
            and getattr(m, 'patch_embeddings', None) is not None]


@contextlib.contextmanager
def constant_position_embeddings(model, height: int, width: int):
    """
    Make the backbone use its position embeddings precomputed for ``height`` x ``width``.

    DINOv2 resizes its position embedding grid to the input's patch grid with a bicubic
    interpolation, which the exporters write as a cubic Resize; TensorRT's ONNX parser imports
    cubic Resize only from 8.6. The input size of an export is fixed, so the resized
    embedding is a constant: it is computed here once, by the module's own
    interpolate_pos_encoding (numerics unchanged), and the exported graph holds it as an
    initializer. Other sizes still go through the original code, and the original method is
    restored on exit, even on error. Yields the number of modules patched.
    """
    import torch

    patched = []
    try:
        for module in _position_embedding_modules(model):
            original = module.interpolate_pos_encoding  # bound method
            patch_h, patch_w = _pair(module.patch_embeddings.patch_size)
            dim = module.position_embeddings.shape[-1]
            tokens = (height // patch_h) * (width // patch_w) + 1  # + CLS
            probe = torch.zeros(1, tokens, dim, dtype=module.position_embeddings.dtype,
                                device=module.position_embeddings.device)
            with torch.no_grad():
                # [1, tokens, dim]; detached and copied so that the graph gets a constant,
                # not the parameter it was resized from.
                fixed = original(probe, height, width).detach().clone()

            def interpolate(embeddings, h, w, _original=original, _fixed=fixed,
                            _tokens=tokens):
                if (h, w) == (height, width) and embeddings.shape[1] == _tokens:
                    return _fixed.to(embeddings.dtype)
                return _original(embeddings, h, w)

            # An instance attribute shadows the class method for this module only.
            module.interpolate_pos_encoding = interpolate
            patched.append(module)
        if not patched:
            LOG.warning('no position embedding module found: the graph may hold a cubic '
                        'Resize, which TensorRT < 8.6 cannot parse')
        yield len(patched)
    finally:
        for module in patched:
            try:
                del module.interpolate_pos_encoding
            except AttributeError:
                pass


def _pair(value) -> Tuple[int, int]:
    """Return ``value`` as (height, width): an int is used for both."""
    if isinstance(value, (tuple, list)):
        return int(value[0]), int(value[1])
    return int(value), int(value)


def max_opset() -> int:
    """Return the highest opset both the installed torch exporter and onnx support."""
    onnx, _ = _require_export()
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
    return check_number_as(
        '{{name}} must be an integer from {} to {} (16: LayerNorm decomposed, for TensorRT '
        '< 8.6; >= 17: one LayerNormalization node), got {{value!r}}'.format(MIN_OPSET, maximum),
        name, opset, low=MIN_OPSET, high=maximum, integer=True)


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


def _trace(model, width: int, height: int, opset: int, show_progress: bool):
    """Run the exporter of ``opset`` on the model at a fixed size; returns the ModelProto."""
    _, torch = _require_export()
    dummy = torch.zeros(1, 3, height, width, dtype=torch.float32)
    with _eager_attention(model), constant_position_embeddings(model, height, width), \
            torch.no_grad(), _quiet_exporter(), \
            progress_heartbeat('exporting ONNX {}x{}'.format(width, height), show_progress):
        module = _ExportWrapper.wrap(model)
        if exporter_for(opset) == EXPORTER_DYNAMO:
            program = torch.onnx.export(
                module, (dummy,), None, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                opset_version=opset, dynamo=True, verbose=False)
            return program.model_proto
        return _export_torchscript(module, dummy, opset)


def _written_opset(proto, opset: int) -> int:
    """Return the default-domain opset the exporter wrote (warns when it is not ``opset``)."""
    got = [o.version for o in proto.opset_import if o.domain in ('', 'ai.onnx')]
    if got and got[0] != opset:
        LOG.warning('exporter wrote opset %s instead of %s', got[0], opset)
    return got[0] if got else opset


def export_onnx(model, path: str, input_size: Tuple[int, int] = DEFAULT_SIZE,
                opset: int = DEFAULT_OPSET, metadata: Optional[Dict[str, str]] = None,
                show_progress: bool = True, fold: bool = True) -> str:
    """
    Export a ``DepthAnythingForDepthEstimation`` to ONNX at a fixed size; returns ``path``.

    :param input_size: (width, height), positive multiples of 14.
    :param opset: ONNX opset: >= 17 (dynamo exporter, one LayerNormalization node: ONNX
        Runtime, TensorRT >= 8.6) or 16 (TorchScript exporter, LayerNorm decomposed into nodes
        named after their norm module: TensorRT 8.5). See resolve_opset for targets.
    :param metadata: extra metadata_props, e.g. variant and source checkpoint hash.
    :param fold: fold the constant shape arithmetic of the TorchScript (opset 16) graph with
        fold_constants; the dynamo exporter folds its own graph.
    The position embeddings are constants of the graph (see constant_position_embeddings), so
    no cubic Resize is left for TensorRT < 8.6 to reject.
    The file is written to a temporary name in the same folder and renamed into place, so a
    crash never leaves a half-written model behind. metadata_props record the opset and the
    exporter.
    """
    width, height = check_input_size(*input_size)
    if not isinstance(path, str) or not path:
        raise ValueError('`path` must be a file path, got {!r}'.format(path))
    onnx, torch = _require_export()
    check_opset(opset)
    exporter = exporter_for(opset)
    t0 = time.perf_counter()
    LOG.info('exporting ONNX at %dx%d (opset %d, %s exporter) to %s', width, height, opset,
             exporter, path)
    proto = _trace(model.eval(), width, height, opset, show_progress)
    exported_nodes = len(proto.graph.node)
    if fold and exporter == EXPORTER_TORCHSCRIPT:
        proto = fold_constants(proto)
    written = _written_opset(proto, opset)
    if exporter == EXPORTER_TORCHSCRIPT:
        for issue in tensorrt85_issues(proto):
            LOG.warning('TensorRT 8.5 will not parse this graph: %s', issue)
    props = {'producer': 'depth_ros', 'model': 'Depth Anything V2',
             'input_size': '{}x{}'.format(width, height), 'input': INPUT_NAME,
             'output': OUTPUT_NAME, 'torch': torch.__version__, 'opset': str(written),
             'exporter': exporter, 'exported_nodes': str(exported_nodes),
             'nodes': str(len(proto.graph.node))}
    props.update({str(k): str(v) for k, v in (metadata or {}).items()})
    onnx.helper.set_model_props(proto, props)
    onnx.checker.check_model(proto)
    save_atomic(proto, path)
    LOG.info('wrote %s (%.1f MB) in %.1f s', path, os.path.getsize(path) / 1e6,
             time.perf_counter() - t0)
    return path


def checkpoint_metadata(info: dict) -> Dict[str, str]:
    """
    Return the metadata_props that say where an export's weights come from.

    :param info: what depth_ros.inference.checkpoints returns with a model, plus 'trained'.
    """
    from depth_ros.inference.checkpoints import LICENSES

    return {'variant': info['variant'], 'source': info['source'],
            'source_sha256': info['sha256'], 'trained': info['trained'],
            'license': LICENSES.get(info['variant'], 'see the checkpoint')}


def export_checkpoint(source: Optional[str], path: str, variant: Optional[str] = None,
                      random_weights: bool = False, seed: int = 0,
                      input_size: Tuple[int, int] = DEFAULT_SIZE, opset: int = DEFAULT_OPSET,
                      cache_dir: Optional[str] = None, show_progress: bool = True,
                      target: Optional[str] = None, fold: bool = True) -> dict:
    """
    Load a checkpoint (or build random weights when asked) and export it; returns its info.

    Exactly one of ``source`` and ``random_weights`` (with ``variant``) must be given.
    ``target`` (e.g. 'tensorrt8.5') is only recorded in the metadata; resolve_opset maps it
    to ``opset``. ``fold``: see export_onnx.
    """
    from depth_ros.inference import checkpoints

    if random_weights:
        if source:
            raise ValueError('give either a checkpoint or random weights, not both '
                             '(checkpoint {!r})'.format(source))
        model, info = checkpoints.random_checkpoint(variant or 'vits', seed)
    else:
        if not source:
            raise ValueError('a checkpoint is required (or random weights, explicitly)')
        model, info = checkpoints.load_checkpoint(source, cache_dir=cache_dir)
        if variant and variant != info['variant']:
            raise ValueError('{}: holds a {} model, not the requested variant {}'.format(
                source, info['variant'], variant))
    meta = checkpoint_metadata(info)
    if target:
        meta['target'] = target
    export_onnx(model, path, input_size=input_size, opset=opset, metadata=meta,
                show_progress=show_progress, fold=fold)
    return dict(info, path=path)

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
decomposition inserts (TensorRT 8.5 has no IsNaN importer either). The position embeddings,
which DINOv2 resizes to the patch grid with a bicubic interpolation (a cubic Resize, which
TensorRT imports only from 8.6), are precomputed at the fixed size and become a constant
(constant_position_embeddings). At opset 16 the TorchScript exporter's constant shape
arithmetic is folded by ONNX Runtime's basic optimiser (fold_constants), and tensorrt85_issues
lists anything left that TensorRT 8.5's parser rejects.
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
from typing import Dict, List, Optional, Tuple

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


# ONNX Runtime basic-level passes left out of the folding: MatMulAddFusion rewrites every
# MatMul + bias into Reshape-Gemm-Reshape (TensorRT fuses the bias itself), and common
# subexpression elimination merges LayerNorms that share input and weights, which would leave
# the graph with fewer norm nodes than the model has norm modules.
_FOLD_DISABLED = ('MatMulAddFusion', 'CommonSubexpressionElimination')


def fold_constants(proto):
    """
    Fold constant subgraphs (shape arithmetic) with ONNX Runtime's basic optimiser.

    The TorchScript exporter leaves Shape/Gather/Unsqueeze/Concat/Constant chains that compute
    sizes known at export time (the input size is fixed). ONNX Runtime's basic level is
    documented to apply only semantics-preserving, provider-independent rewrites in the
    standard ONNX domain: constant folding, Identity/Slice/Unsqueeze/Expand elimination and
    Conv+Add/Mul fusion. Node names are kept, so LayerNorm nodes still name their module.
    Returns the folded ModelProto, or ``proto`` unchanged (with a warning) when onnxruntime is
    missing or the result holds a non-standard op or other inputs/outputs.
    """
    import onnx

    try:
        import onnxruntime as ort
    except ImportError as exc:
        LOG.warning('constant folding skipped, onnxruntime is missing (%s): install '
                    'depth_ros[export]', exc)
        return proto
    with tempfile.TemporaryDirectory(prefix='depth_ros_fold_') as tmp:
        src = os.path.join(tmp, 'in.onnx')
        dst = os.path.join(tmp, 'folded.onnx')
        onnx.save_model(proto, src)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = dst
        options.log_severity_level = 3  # errors only
        ort.InferenceSession(src, options, providers=['CPUExecutionProvider'],
                             disabled_optimizers=list(_FOLD_DISABLED))
        folded = onnx.load(dst)
    foreign = sorted({n.domain for n in folded.graph.node} - {'', 'ai.onnx'})
    io_names = [[(v.name, str(v.type)) for v in g]
                for g in (proto.graph.input, proto.graph.output)]
    if foreign or [[(v.name, str(v.type)) for v in g]
                   for g in (folded.graph.input, folded.graph.output)] != io_names:
        LOG.warning('constant folding skipped: the folded graph holds ops of domains %s or '
                    'other inputs/outputs', foreign)
        return proto
    # ONNX Runtime declares all of its domains; keep only those the graph uses.
    used = {n.domain for n in folded.graph.node} | {''}
    kept = [o for o in folded.opset_import if o.domain in used or o.domain == 'ai.onnx']
    del folded.opset_import[:]
    folded.opset_import.extend(kept)
    folded.producer_name, folded.producer_version = proto.producer_name, proto.producer_version
    LOG.info('constant folding: %d -> %d nodes', len(proto.graph.node), len(folded.graph.node))
    return folded


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
    with _eager_attention(model), constant_position_embeddings(model, height, width), \
            torch.no_grad(), _quiet_exporter(), \
            progress('exporting ONNX {}x{}'.format(width, height), show_progress):
        module = _ExportWrapper.wrap(model)
        if exporter == EXPORTER_DYNAMO:
            program = torch.onnx.export(
                module, (dummy,), None, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                opset_version=opset, dynamo=True, verbose=False)
            proto = program.model_proto
        else:
            proto = _export_torchscript(module, dummy, opset)
    exported_nodes = len(proto.graph.node)
    if fold and exporter == EXPORTER_TORCHSCRIPT:
        proto = fold_constants(proto)
    got = [o.version for o in proto.opset_import if o.domain in ('', 'ai.onnx')]
    if got and got[0] != opset:
        LOG.warning('exporter wrote opset %s instead of %s', got[0], opset)
    if exporter == EXPORTER_TORCHSCRIPT:
        for issue in tensorrt85_issues(proto):
            LOG.warning('TensorRT 8.5 will not parse this graph: %s', issue)
    props = {'producer': 'depth_ros', 'model': 'Depth Anything V2',
             'input_size': '{}x{}'.format(width, height), 'input': INPUT_NAME,
             'output': OUTPUT_NAME, 'torch': torch.__version__,
             'opset': str(got[0] if got else opset), 'exporter': exporter,
             'exported_nodes': str(exported_nodes), 'nodes': str(len(proto.graph.node))}
    props.update({str(k): str(v) for k, v in (metadata or {}).items()})
    onnx.helper.set_model_props(proto, props)
    onnx.checker.check_model(proto)
    save_atomic(proto, path)
    LOG.info('wrote %s (%.1f MB) in %.1f s', path, os.path.getsize(path) / 1e6,
             time.perf_counter() - t0)
    return path


# TensorRT 8.5's ONNX parser (importResize): modes and coordinate transformations it imports.
TRT85_RESIZE_MODES = ('nearest', 'linear')
TRT85_RESIZE_COORDINATES = ('half_pixel', 'pytorch_half_pixel', 'align_corners', 'asymmetric')


def tensorrt85_issues(proto) -> List[str]:
    """
    List what in an ONNX graph TensorRT 8.5's ONNX parser rejects; empty when none.

    Checked: ops it has no importer for (LayerNormalization and IsNaN, added in 8.6),
    Resize modes other than nearest/linear (cubic was added in 8.6) and coordinate
    transformations other than TRT85_RESIZE_COORDINATES, and ops outside the ONNX domain.
    """
    import onnx

    issues = []
    for node in proto.graph.node:
        where = '{} node {!r}'.format(node.op_type, node.name)
        if node.domain not in ('', 'ai.onnx'):
            issues.append('{} in domain {!r}'.format(where, node.domain))
        elif node.op_type in ('LayerNormalization', 'IsNaN'):
            issues.append('{}: no importer before TensorRT 8.6'.format(where))
        elif node.op_type == 'Resize':
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            mode = attrs.get('mode', b'nearest').decode()
            coords = attrs.get('coordinate_transformation_mode', b'half_pixel').decode()
            if mode not in TRT85_RESIZE_MODES:
                issues.append('{}: mode {!r} (TensorRT 8.5 imports {})'.format(
                    where, mode, ', '.join(TRT85_RESIZE_MODES)))
            if coords not in TRT85_RESIZE_COORDINATES:
                issues.append('{}: coordinate_transformation_mode {!r}'.format(where, coords))
    return issues


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
    """
    Return the metadata_props of an ONNX file.

    :raises FileNotFoundError: no such file.
    :raises ValueError: naming the file, when it is not a readable ONNX model.
    """
    import onnx

    if not os.path.isfile(path):
        raise FileNotFoundError('ONNX model not found: {}'.format(path))
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning, ...
        raise ValueError('{}: cannot load as an ONNX model: {}: {}'.format(
            path, type(exc).__name__, exc)) from None
    return {p.key: p.value for p in proto.metadata_props}


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
                show_progress=show_progress, fold=fold)
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

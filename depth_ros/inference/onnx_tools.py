"""
ONNX graph tools: constant folding, TensorRT 8.5 compatibility checks, metadata, atomic saves.

They take and return ``onnx.ModelProto`` objects (or files) and know nothing about torch;
depth_ros.inference.export uses them on the graphs it writes. onnx and onnxruntime are imported
inside the functions.
"""
from __future__ import annotations

import logging
import os
import tempfile
from typing import Dict, List

from depth_ros.util import atomic_path

LOG = logging.getLogger('depth_ros.inference.export')


# ONNX Runtime basic-level passes left out of the folding: MatMulAddFusion rewrites every
# MatMul + bias into Reshape-Gemm-Reshape (TensorRT fuses the bias itself), and common
# subexpression elimination merges LayerNorms that share input and weights, which would leave
# the graph with fewer norm nodes than the model has norm modules.
_FOLD_DISABLED = ('MatMulAddFusion', 'CommonSubexpressionElimination')


def fold_constants(proto, required: bool = False):
    """
    Fold constant subgraphs (shape arithmetic) with ONNX Runtime's basic optimiser.

    The TorchScript exporter leaves Shape/Gather/Unsqueeze/Concat/Constant chains that compute
    sizes known at export time (the input size is fixed). ONNX Runtime's basic level is
    documented to apply only semantics-preserving, provider-independent rewrites in the
    standard ONNX domain: constant folding, Identity/Slice/Unsqueeze/Expand elimination and
    Conv+Add/Mul fusion. Node names are kept, so LayerNorm nodes still name their module.
    Returns the folded ModelProto, or ``proto`` unchanged (with a warning) when onnxruntime is
    missing or the result holds a non-standard op or other inputs/outputs.

    :param required: raise instead (ImportError without onnxruntime, ValueError for a result
        that cannot be kept), for callers that cannot go on with the unfolded graph.
    """
    import onnx

    try:
        import onnxruntime as ort
    except ImportError as exc:
        if required:
            raise ImportError('folding constants needs onnxruntime: install depth_ros[onnx] '
                              '({})'.format(exc))
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
    if foreign or _graph_io(folded) != _graph_io(proto):
        if required:
            raise ValueError('constant folding gave ops of domains {} or other inputs/outputs '
                             '({} instead of {})'.format(foreign, _graph_io(folded),
                                                         _graph_io(proto)))
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


def _graph_io(proto) -> List[List[tuple]]:
    """
    [(name, element type)] of a graph's inputs and of its outputs.

    Shapes are left out: the optimiser may write an output shape it inferred where the graph
    had none (or a symbolic one), which is the same output.
    """
    inits = {i.name for i in proto.graph.initializer}
    return [[(v.name, v.type.tensor_type.elem_type) for v in g if v.name not in inits]
            for g in (proto.graph.input, proto.graph.output)]


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

    with atomic_path(path) as tmp:
        onnx.save_model(proto, tmp)


def read_metadata(path: str) -> Dict[str, str]:
    """
    Return the metadata_props of an ONNX file.

    :raises FileNotFoundError: no such file.
    :raises ValueError: naming the file, when it is not a readable ONNX model.
    :raises ImportError: without the onnx package, saying what to install.
    """
    try:
        import onnx
    except ImportError as exc:
        # The default model's lookup reads the cache's prepared files with it: a robot
        # without depth_ros[onnx] got "No module named 'onnx'" as depth_node's FATAL line.
        raise ImportError('reading an ONNX file needs onnx: install depth_ros[onnx] '
                          '({})'.format(exc)) from None
    if not os.path.isfile(path):
        raise FileNotFoundError('ONNX model not found: {}'.format(path))
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning, ...
        raise ValueError('{}: cannot load as an ONNX model: {}: {}'.format(
            path, type(exc).__name__, exc)) from None
    return {p.key: p.value for p in proto.metadata_props}

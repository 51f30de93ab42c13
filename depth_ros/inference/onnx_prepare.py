"""
Prepare any Depth Anything V2 ONNX for the backends: fixed size, folded, TensorRT 8.5-ready.

Public Depth Anything V2 files, such as Hugging Face's ``onnx-community/depth-anything-v2-small``
(``onnx/model.onnx``), take ``pixel_values`` [batch, 3, height, width] with dynamic sizes and
return ``predicted_depth`` [batch, height, width]. Their shape arithmetic runs at inference
time, and their position embedding is a bicubic Resize of a 37x37 grid to the patch grid,
whose sizes come from the input's shape. ONNX Runtime's session wants a fixed input here (the
pre-processing resizes to one size), and TensorRT 8.5 cannot import the cubic Resize nor the
opset-17 LayerNormalization node.

``prepare_onnx`` turns such a file into one for a fixed input size:

1. The input gets the shape [1, 3, h, w]; the output dims that share the input's symbolic
   names (batch, height, width) get their values.
2. ONNX Runtime's basic graph optimiser folds everything that now depends on constants only
   (onnx_tools.fold_constants): the Shape/Gather/Concat arithmetic, and the bicubic Resize of
   the position embedding, which becomes an initializer. No cubic Resize and no Shape node may
   be left, and the output must be [1, h, w] (or [1, 1, h, w]).
3. Profile ``tensorrt8.5`` only: each LayerNormalization node is written out as ReduceMean,
   Sub, Pow, ReduceMean, Add, Sqrt, Div, Mul, Add (the opset-16 form the TorchScript exporter
   writes) under the original node's name, so that the TensorRT builder's name rule
   (builder.keep_fp32) keeps them in FP32, and onnx's version converter writes opset 16.
   ``tensorrt85_issues`` must then be empty.
4. ONNX Runtime runs the original (at that size) and the prepared file on the same seeded
   input; a maximum relative error above ``PARITY_TOLERANCE`` fails the preparation.

Profile ``default`` (steps 1, 2, 4) serves ONNX Runtime and TensorRT >= 8.6.
``ensure_prepared`` caches the result under the depth_ros cache, keyed by the source file's
sha256, the size and the profile; it writes to a temporary file and renames it (a half-written
file is never used), under a file lock (two processes preparing at once do not corrupt it, and
the second one reuses the first one's file).

Only onnx and onnxruntime are needed (no torch): this runs on the robot. What is written by
hand here is the LayerNormalization decomposition (onnx has no function-inlining pass for it
that keeps node names) and the choice of dims to fix; folding, shape inference, the opset
conversion and the checks are onnx's and ONNX Runtime's.
"""
from __future__ import annotations

from dataclasses import dataclass
import logging
import os
import re
import time
from typing import Dict, List, Optional, Tuple

from depth_ros.core.preprocess import check_input_size
from depth_ros.util import file_sha256

LOG = logging.getLogger('depth_ros.inference.prepare')

PROFILES = ('default', 'tensorrt8.5')
PROFILE_SUFFIX = {'default': 'default', 'tensorrt8.5': 'trt85'}
PROFILE_TEXT = {'default': 'ONNX Runtime and TensorRT >= 8.6', 'tensorrt8.5': 'TensorRT 8.5'}
TRT85_OPSET = 16
PARITY_TOLERANCE = 1e-4  # max |prepared - original| / max |original|
PREPARED_BY = 'depth_ros'
PREPARED_FORMAT = '1'
ENV_CACHE_DIR = 'DEPTH_ROS_CACHE'
LOCK_WAIT_S = 1800.0


class PreparationError(ValueError):
    """An ONNX file cannot be prepared; the message names the file and the reason (one line)."""


class NotOnnxError(PreparationError):
    """The file does not load as an ONNX model."""


def check_profile(profile: str) -> str:
    """Validate a preparation profile name."""
    if profile not in PROFILES:
        raise ValueError('`profile` must be one of {}, got {!r}'.format(
            ', '.join(PROFILES), profile))
    return profile


def profile_for_tensorrt(version: str) -> str:
    """Return the profile a TensorRT version needs: 'tensorrt8.5' before 8.6, else 'default'."""
    parts = re.findall(r'\d+', str(version))[:2]
    if len(parts) < 2:
        raise ValueError('`version` must look like 8.5.2.2, got {!r}'.format(version))
    return 'tensorrt8.5' if (int(parts[0]), int(parts[1])) < (8, 6) else 'default'


def default_cache_dir() -> str:
    """Return DEPTH_ROS_CACHE, else $XDG_CACHE_HOME/depth_ros, else ~/.cache/depth_ros."""
    from depth_ros.util import user_cache_dir
    return user_cache_dir(env_var=ENV_CACHE_DIR)


def prepared_dir(cache_dir: Optional[str] = None) -> str:
    """Return the folder of prepared ONNX files: <depth_ros cache>/onnx."""
    return os.path.join(cache_dir or default_cache_dir(), 'onnx')


def _slug(label: str) -> str:
    return re.sub(r'[^A-Za-z0-9_.-]+', '-', label.replace('/', '--')).strip('-') or 'model'


def prepared_name(label: str, source_sha256: str, input_size: Tuple[int, int],
                  profile: str) -> str:
    """'<label>-<sha256[:12]>-<W>x<H>-<default|trt85>.onnx' (label: hub id or file stem)."""
    width, height = check_input_size(*input_size)
    return '{}-{}-{}x{}-{}.onnx'.format(_slug(label), source_sha256[:12], width, height,
                                        PROFILE_SUFFIX[check_profile(profile)])


# --------------------------------------------------------------------------- inspection
def _require_onnx():
    try:
        import onnx
    except ImportError as exc:
        raise ImportError('preparing an ONNX file needs onnx and onnxruntime: install '
                          'depth_ros[onnx] ({})'.format(exc))
    return onnx


def _load(path: str):
    onnx = _require_onnx()
    if not os.path.isfile(path):
        raise FileNotFoundError('ONNX model not found: {}'.format(path))
    try:
        return onnx.load(path)
    except Exception as exc:  # noqa: B902 - protobuf raises DecodeError, RuntimeWarning, ...
        raise NotOnnxError('{}: cannot load as an ONNX model: {}: {}'.format(
            path, type(exc).__name__, str(exc).splitlines()[0] if str(exc) else ''))


def _graph_inputs(proto) -> list:
    inits = {i.name for i in proto.graph.initializer}
    return [v for v in proto.graph.input if v.name not in inits]


def _dims(value) -> List[object]:
    """Dims of a value_info: int, the symbolic name (str), or None when unknown."""
    out = []
    for d in value.type.tensor_type.shape.dim:
        if d.HasField('dim_value'):
            out.append(int(d.dim_value))
        elif d.HasField('dim_param'):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def _opset(proto) -> int:
    found = [o.version for o in proto.opset_import if o.domain in ('', 'ai.onnx')]
    return int(found[0]) if found else 0


def describe(proto) -> Dict[str, object]:
    """Input/output names and dims, opset, and op counts of interest, for logs and checks."""
    inputs, outputs = _graph_inputs(proto), list(proto.graph.output)
    ops = {}
    for node in proto.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return {'inputs': [(v.name, _dims(v)) for v in inputs],
            'outputs': [(v.name, _dims(v)) for v in outputs], 'opset': _opset(proto),
            'nodes': len(proto.graph.node), 'ops': ops}


def _check_interface(proto, path: str) -> Tuple[object, object]:
    """Return (input, output) value_infos of a Depth Anything V2 graph, or raise naming why."""
    inputs = _graph_inputs(proto)
    if len(inputs) != 1:
        raise PreparationError('{}: a Depth Anything V2 graph has one input (the image), this '
                               'one has {}: {}'.format(path, len(inputs),
                                                       [v.name for v in inputs]))
    image = inputs[0]
    dims = _dims(image)
    elem = image.type.tensor_type.elem_type
    if len(dims) != 4 or dims[1] not in (3, None) and not isinstance(dims[1], str) \
            or dims[0] not in (1, None) and not isinstance(dims[0], str) or elem != 1:
        raise PreparationError('{}: input {!r} must be a float [batch, 3, height, width] '
                               'image, got element type {} and dims {}'.format(
                                   path, image.name, elem, dims))
    if not proto.graph.output:
        raise PreparationError('{}: the graph has no output'.format(path))
    output = proto.graph.output[0]
    out_dims = _dims(output)
    if out_dims and len(out_dims) not in (3, 4):
        raise PreparationError('{}: output {!r} must be [batch, height, width] or [batch, 1, '
                               'height, width], got dims {}'.format(
                                   path, output.name, out_dims))
    return image, output


def needs_preparation(path: str, input_size: Optional[Tuple[int, int]] = None,
                      profile: str = 'default') -> List[str]:
    """
    Say why ``path`` cannot be used as it is for ``profile``; an empty list means it can.

    Reasons: a dynamic input size, more than one output, and for 'tensorrt8.5' what
    ``tensorrt85_issues`` reports and an opset above 17. A fixed input of another size than
    ``input_size`` is no reason: such a file cannot be prepared for it (the backends say so).

    :raises NotOnnxError: the file does not load as ONNX; PreparationError: it is no Depth
        Anything V2 graph (one image input, a [batch, (1,) h, w] output).
    """
    from depth_ros.inference.onnx_tools import tensorrt85_issues

    check_profile(profile)
    if not os.path.isfile(path):
        raise FileNotFoundError('ONNX model not found: {}'.format(path))
    proto = _load(path)
    image, _ = _check_interface(proto, path)
    dims = _dims(image)
    reasons = []
    if not all(isinstance(d, int) for d in dims):
        reasons.append('input {!r} has dynamic dims {}'.format(image.name, dims))
    if len(proto.graph.output) != 1:
        reasons.append('{} outputs'.format(len(proto.graph.output)))
    if profile == 'tensorrt8.5':
        reasons.extend(tensorrt85_issues(proto))
        if _opset(proto) > 17:
            reasons.append('opset {} (TensorRT 8.5 parses up to 17)'.format(_opset(proto)))
    return reasons


def static_input_size(path: str) -> Optional[Tuple[int, int]]:
    """(width, height) of an ONNX file's fixed image input, or None (dynamic or unreadable)."""
    try:
        proto = _load(path)
        dims = _dims(_check_interface(proto, path)[0])
    except (PreparationError, ImportError, OSError):
        return None
    return (dims[3], dims[2]) if all(isinstance(d, int) for d in dims) else None


def prepare_if_needed(path: str, input_size: Optional[Tuple[int, int]] = None,
                      profile: str = 'default', cache_dir: Optional[str] = None) -> str:
    """
    Return ``path`` when a backend can use it as it is, else its prepared file (prepared once).

    A file that is not readable as a Depth Anything V2 ONNX is returned unchanged: the backend
    (ONNX Runtime, TensorRT's parser) then reports what is wrong with it. The size is
    ``input_size``, else the file's own, else 518x294.
    """
    from depth_ros.core.preprocess import DEFAULT_SIZE

    if not os.path.isfile(path):
        return path
    try:
        reasons = needs_preparation(path, input_size, profile)
    except (PreparationError, ImportError) as exc:
        LOG.debug('not preparing %s: %s', path, exc)
        return path
    if not reasons:
        return path
    size = tuple(input_size) if input_size else (static_input_size(path) or DEFAULT_SIZE)
    LOG.info('%s needs preparing for %s: %s', path, PROFILE_TEXT[profile],
             '; '.join(reasons[:3]))
    return ensure_prepared(path, size, profile, cache_dir=cache_dir).path


# --------------------------------------------------------------------------- the steps
def fix_input_size(proto, width: int, height: int, path: str = 'model'):
    """
    Step 1: give the input the shape [1, 3, height, width] (in place); returns the proto.

    Output dims named like an input dim get its value; other symbolic output dims are cleared
    (the optimiser infers them). Intermediate value_info, inferred for dynamic sizes, is
    dropped. Only one output is kept (the depth map).
    """
    image, output = _check_interface(proto, path)
    dims = _dims(image)
    wanted = [1, 3, height, width]
    for have, want, what in zip(dims, wanted, ('batch', 'channels', 'height', 'width')):
        if isinstance(have, int) and have != want:
            raise PreparationError('{}: input {!r} has a fixed {} of {}, not {} (the requested '
                                   'size is {}x{})'.format(path, image.name, what, have, want,
                                                           width, height))
    names = {d: v for d, v in zip(dims, wanted) if isinstance(d, str)}
    for d, v in zip(image.type.tensor_type.shape.dim, wanted):
        d.Clear()
        d.dim_value = v
    del proto.graph.output[1:]
    for d in output.type.tensor_type.shape.dim:
        if d.HasField('dim_param') and d.dim_param in names:
            value = names[d.dim_param]
            d.Clear()
            d.dim_value = value
        elif d.HasField('dim_param'):
            d.Clear()
    del proto.graph.value_info[:]
    return proto


def _inferred_ranks(proto) -> Dict[str, int]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto)
    ranks = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.input) + \
            list(inferred.graph.output):
        if v.type.tensor_type.HasField('shape'):
            ranks[v.name] = len(v.type.tensor_type.shape.dim)
    for init in proto.graph.initializer:
        ranks[init.name] = len(init.dims)
    return ranks


def _elem_types(proto) -> Dict[str, int]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {v.name: v.type.tensor_type.elem_type for v in
             list(inferred.graph.value_info) + list(inferred.graph.input)}
    types.update({i.name: i.data_type for i in proto.graph.initializer})
    return types


def _norm_scope(node_name: str, index: int) -> str:
    """Return a name scope for a decomposed LayerNorm that builder.keep_fp32 recognises."""
    from depth_ros.inference.tensorrt.builder import keep_fp32

    base = node_name or 'LayerNormalization_{}'.format(index)
    if keep_fp32(base + '/ReduceMean', 'REDUCE'):
        return base
    return base + '/layernorm'


def decompose_layernorm(proto) -> int:
    """
    Step 3 (tensorrt8.5): write every LayerNormalization node out in elementary ops, in place.

    y = (x - mean(x)) / sqrt(mean((x - mean(x))^2) + epsilon) * scale + bias, over the axes
    from ``axis`` to the last, as the TorchScript exporter writes LayerNorm at opset 16. The
    nodes are named ``<scope>/ReduceMean`` ... ``<scope>/Add_1`` after the original node, so
    TensorRT names its layers after them and builder.keep_fp32 pins them to FP32. Returns the
    number of nodes replaced.
    """
    import onnx
    from onnx import helper, numpy_helper
    import numpy as np

    from depth_ros.inference.tensorrt.builder import keep_fp32

    norms = [n for n in proto.graph.node if n.op_type == 'LayerNormalization'
             and n.domain in ('', 'ai.onnx')]
    if not norms:
        return 0
    used = {o for n in proto.graph.node for o in n.input} | {o.name for o in proto.graph.output}
    ranks = _inferred_ranks(proto)
    types = _elem_types(proto)
    taken = {n.name for n in proto.graph.node}
    new_nodes = []
    constants = {}

    def constant(value, elem_type):
        key = (value, elem_type)
        if key not in constants:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type) \
                if hasattr(onnx.helper, 'tensor_dtype_to_np_dtype') \
                else onnx.mapping.TENSOR_TYPE_TO_NP_TYPE[elem_type]
            name = 'layernorm_decomposition/const_{}_{}'.format(len(constants), elem_type)
            constants[key] = numpy_helper.from_array(np.array(value, dtype=dtype), name)
        return constants[key].name

    for index, node in enumerate(list(proto.graph.node)):
        if node not in norms:
            new_nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if any(o and o in used for o in node.output[1:]):
            raise PreparationError('LayerNormalization node {!r}: its Mean/InvStdDev outputs '
                                   'are used; cannot decompose it'.format(node.name))
        x = node.input[0]
        axis = int(attrs.get('axis', -1))
        if axis < 0:
            axes = list(range(axis, 0))
        else:
            if x not in ranks:
                raise PreparationError('LayerNormalization node {!r}: the rank of its input is '
                                       'unknown'.format(node.name))
            axes = list(range(axis, ranks[x]))
        elem = types.get(x, 1) or 1
        eps = constant(float(attrs.get('epsilon', 1e-5)), elem)
        two = constant(2.0, elem)
        scope = _norm_scope(node.name, index)
        suffix = ''
        while any('{}{}/{}'.format(scope, suffix, op) in taken for op in ('ReduceMean', 'Sub')):
            suffix = '_{}'.format(len(suffix) + 1)
        scope += suffix

        def out(op):
            return '{}/{}_output_0'.format(scope, op)
        chain = [
            helper.make_node('ReduceMean', [x], [out('ReduceMean')], scope + '/ReduceMean',
                             axes=axes, keepdims=1),
            helper.make_node('Sub', [x, out('ReduceMean')], [out('Sub')], scope + '/Sub'),
            helper.make_node('Pow', [out('Sub'), two], [out('Pow')], scope + '/Pow'),
            helper.make_node('ReduceMean', [out('Pow')], [out('ReduceMean_1')],
                             scope + '/ReduceMean_1', axes=axes, keepdims=1),
            helper.make_node('Add', [out('ReduceMean_1'), eps], [out('Add')], scope + '/Add'),
            helper.make_node('Sqrt', [out('Add')], [out('Sqrt')], scope + '/Sqrt'),
            helper.make_node('Div', [out('Sub'), out('Sqrt')], [out('Div')], scope + '/Div'),
        ]
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        chain.append(helper.make_node('Mul', [out('Div'), node.input[1]],
                                      [out('Mul') if bias else node.output[0]],
                                      scope + '/Mul'))
        if bias:
            chain.append(helper.make_node('Add', [out('Mul'), bias], [node.output[0]],
                                          scope + '/Add_1'))
        kinds = {'ReduceMean': 'REDUCE', 'Sqrt': 'UNARY'}
        unpinned = [n.name for n in chain if not keep_fp32(n.name, kinds.get(n.op_type,
                                                                             'ELEMENTWISE'))]
        if unpinned:  # the scope rule above makes this impossible; never build an FP16 norm
            raise PreparationError('decomposed LayerNorm nodes {} would not be kept in FP32'
                                   .format(unpinned))
        taken.update(n.name for n in chain)
        new_nodes.extend(chain)
    del proto.graph.node[:]
    proto.graph.node.extend(new_nodes)
    proto.graph.initializer.extend(constants.values())
    return len(norms)


def convert_opset(proto, opset: int, path: str = 'model'):
    """Return ``proto`` at ``opset`` (onnx's version converter); unchanged when already there."""
    import onnx
    from onnx import version_converter

    have = _opset(proto)
    if have == opset:
        return proto
    try:
        converted = version_converter.convert_version(proto, opset)
    except Exception as exc:  # noqa: B902 - the converter raises RuntimeError, ConvertError...
        raise PreparationError('{}: cannot convert opset {} to {}: {}'.format(
            path, have, opset, str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
    del converted.metadata_props[:]
    converted.metadata_props.extend(proto.metadata_props)
    onnx.checker.check_model(converted)
    return converted


def _check_folded(proto, path: str, width: int, height: int) -> None:
    """After folding: no shape arithmetic, no cubic Resize, and the output at the size."""
    import onnx

    left = describe(proto)['ops']
    cubic = [n.name for n in proto.graph.node if n.op_type == 'Resize' and any(
        a.name == 'mode' and onnx.helper.get_attribute_value(a) == b'cubic'
        for a in n.attribute)]
    if left.get('Shape') or cubic:
        raise PreparationError('{}: folding at {}x{} left {} Shape node(s) and cubic Resize '
                               'node(s) {}: the graph computes sizes from something other '
                               'than the input shape'.format(path, width, height,
                                                             left.get('Shape', 0), cubic))
    inferred = onnx.shape_inference.infer_shapes(proto)
    out = _dims(inferred.graph.output[0])
    if out not in ([1, height, width], [1, 1, height, width]):
        raise PreparationError('{}: output {!r} must be [1, {h}, {w}] (or [1, 1, {h}, {w}]) at '
                               'the input size {w}x{h}, got {}'.format(
                                   path, inferred.graph.output[0].name, out, h=height,
                                   w=width))
    # Write the resolved output shape: backends and TensorRT read it from the file.
    output = proto.graph.output[0]
    output.type.tensor_type.shape.Clear()
    for d in out:
        output.type.tensor_type.shape.dim.add().dim_value = d


def parity(original: str, prepared: str, width: int, height: int, seed: int = 0) -> float:
    """
    Max relative error of ``prepared`` against ``original`` in ONNX Runtime, at one size.

    Both get the same seeded [1, 3, height, width] input (standard normal, the scale of a
    normalised image); the error is max |prepared - original| / max |original|.
    """
    import numpy as np
    import onnxruntime as ort

    x = np.random.RandomState(seed).standard_normal((1, 3, height, width)).astype(np.float32)
    outs = []
    for path in (original, prepared):
        session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
        outs.append(np.asarray(session.run(
            [session.get_outputs()[0].name], {session.get_inputs()[0].name: x})[0],
            dtype=np.float64).reshape(height, width))
    scale = float(np.abs(outs[0]).max())
    return float(np.abs(outs[1] - outs[0]).max() / (scale if scale > 0 else 1.0))


@dataclass(repr=False)
class Prepared:
    """What prepare_onnx did: the file, the profile, node counts, parity and time."""

    path: str
    profile: str
    input_size: Tuple[int, int]
    nodes_before: int
    nodes_after: int
    layernorms: int
    max_rel_err: Optional[float]
    seconds: float
    reused: bool = False

    def __repr__(self) -> str:
        return 'Prepared({!r}, {}, {}x{}, {} -> {} nodes, parity {}, {:.1f} s{})'.format(
            self.path, self.profile, self.input_size[0], self.input_size[1], self.nodes_before,
            self.nodes_after, self.max_rel_err, self.seconds, ', reused' if self.reused else '')


def prepare_onnx(source: str, destination: str, input_size: Tuple[int, int],
                 profile: str = 'default', metadata: Optional[Dict[str, str]] = None,
                 verify: bool = True) -> Prepared:
    """
    Prepare ``source`` for ``profile`` at ``input_size`` and write it to ``destination``.

    Steps in the module docstring. The file is written atomically (temporary, then rename),
    only after every check passed.

    :param input_size: (width, height), multiples of 14.
    :param profile: 'default' (ONNX Runtime, TensorRT >= 8.6) or 'tensorrt8.5'.
    :param metadata: metadata_props to add (source, source_sha256, model_id ...).
    :param verify: run the ONNX Runtime parity check (max relative error <= 1e-4).
    :raises PreparationError: naming the file and what is wrong with it.
    :raises ImportError: onnx or onnxruntime missing.
    """
    from depth_ros.inference.onnx_tools import fold_constants, save_atomic, tensorrt85_issues

    onnx = _require_onnx()
    check_profile(profile)
    width, height = check_input_size(*input_size)
    t0 = time.monotonic()
    proto = _load(source)
    nodes_before = len(proto.graph.node)
    fix_input_size(proto, width, height, source)
    try:
        proto = fold_constants(proto, required=True)
    except ImportError:
        raise
    except Exception as exc:  # noqa: B902 - ORT's Fail/InvalidGraph, or the IO check
        raise PreparationError('{}: ONNX Runtime cannot fold it at {}x{}: {}'.format(
            source, width, height, str(exc).splitlines()[0] if str(exc) else exc))
    _check_folded(proto, source, width, height)
    layernorms = 0
    if profile == 'tensorrt8.5':
        layernorms = decompose_layernorm(proto)
        if _opset(proto) > TRT85_OPSET:
            proto = convert_opset(proto, TRT85_OPSET, source)
        issues = tensorrt85_issues(proto)
        if issues:
            raise PreparationError('{}: TensorRT 8.5 would still reject {} node(s): {}'.format(
                source, len(issues), '; '.join(issues[:3])))
    props = {p.key: p.value for p in proto.metadata_props}
    props.update({'prepared_by': PREPARED_BY, 'prepared_format': PREPARED_FORMAT,
                  'profile': profile, 'input_size': '{}x{}'.format(width, height),
                  'opset': str(_opset(proto)), 'input': _graph_inputs(proto)[0].name,
                  'output': proto.graph.output[0].name, 'source_nodes': str(nodes_before),
                  'nodes': str(len(proto.graph.node))})
    props.update({str(k): str(v) for k, v in (metadata or {}).items()})
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    onnx.checker.check_model(proto)
    error = None
    folder = os.path.dirname(os.path.abspath(destination))
    os.makedirs(folder, exist_ok=True)
    import tempfile
    with tempfile.TemporaryDirectory(prefix='.prepare-', dir=folder) as tmp:
        candidate = os.path.join(tmp, 'prepared.onnx')
        onnx.save_model(proto, candidate)
        if verify:
            error = parity(source, candidate, width, height)
            if not error <= PARITY_TOLERANCE:
                raise PreparationError(
                    '{}: the prepared graph differs from the original in ONNX Runtime at {}x{}: '
                    'max relative error {:.2e} > {:.0e}'.format(source, width, height, error,
                                                                PARITY_TOLERANCE))
            onnx.helper.set_model_props(proto, dict(props, parity_max_rel_err='{:.2e}'.format(
                error)))
        save_atomic(proto, destination)
    seconds = time.monotonic() - t0
    LOG.info('prepared %s for %s at %dx%d: %d -> %d nodes%s, parity %s, %.1f s -> %s',
             source, PROFILE_TEXT[profile], width, height, nodes_before, len(proto.graph.node),
             ', {} LayerNorms decomposed'.format(layernorms) if layernorms else '',
             'not checked' if error is None else 'max rel err {:.1e}'.format(error), seconds,
             destination)
    return Prepared(destination, profile, (width, height), nodes_before, len(proto.graph.node),
                    layernorms, error, seconds)


# --------------------------------------------------------------------------- the cache
def read_prepared_metadata(path: str) -> Dict[str, str]:
    """metadata_props of a prepared file; {} for a file that is not one (or unreadable)."""
    from depth_ros.inference.onnx_tools import read_metadata

    try:
        meta = read_metadata(path)
    except (OSError, ValueError):
        return {}
    return meta if meta.get('prepared_by') == PREPARED_BY else {}


def is_prepared(path: str, source_sha256: Optional[str], input_size: Tuple[int, int],
                profile: str, meta: Optional[Dict[str, str]] = None) -> bool:
    """
    Tell whether ``path`` is a complete prepared file for this source, size and profile.

    :param meta: its metadata when already read (read_prepared_metadata), else it is read.
    """
    if meta is None:
        meta = read_prepared_metadata(path) if os.path.isfile(path) else {}
    want = {'input_size': '{}x{}'.format(*input_size), 'profile': profile}
    if source_sha256 is not None:
        want['source_sha256'] = source_sha256
    return bool(meta) and all(meta.get(k) == v for k, v in want.items()) \
        and meta.get('trained', 'true') != 'false'


def lock_path(path: str) -> str:
    """Return the lock file of a prepared file: '.<name>.lock' next to it (0 bytes, kept)."""
    return os.path.join(os.path.dirname(path), '.' + os.path.basename(path) + '.lock')


def ensure_prepared(source: str, input_size: Tuple[int, int], profile: str = 'default',
                    cache_dir: Optional[str] = None, label: Optional[str] = None,
                    source_sha256: Optional[str] = None,
                    metadata: Optional[Dict[str, str]] = None,
                    out_dir: Optional[str] = None) -> Prepared:
    """
    Return the prepared file of ``source`` for ``profile`` and size, preparing it once.

    The file lives in ``out_dir`` (default <cache_dir>/onnx), named by ``label`` (hub id or
    the file's stem), the source's sha256, the size and the profile. A process that finds it
    being prepared by another (the lock file ``.<file>.lock``) waits, then reuses it.
    """
    from filelock import FileLock, Timeout

    width, height = check_input_size(*input_size)
    check_profile(profile)
    if not os.path.isfile(source):
        raise FileNotFoundError('ONNX model not found: {}'.format(source))
    sha = source_sha256 or file_sha256(source)
    label = label or os.path.splitext(os.path.basename(source))[0]
    folder = out_dir or prepared_dir(cache_dir)
    path = os.path.join(folder, prepared_name(label, sha, (width, height), profile))
    if is_prepared(path, sha, (width, height), profile):
        return Prepared(path, profile, (width, height), 0, 0, 0, None, 0.0, reused=True)
    os.makedirs(folder, exist_ok=True)
    lock = FileLock(lock_path(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        LOG.info('another process is preparing %s; waiting for it', path)
        lock.acquire(timeout=LOCK_WAIT_S)
    try:
        if is_prepared(path, sha, (width, height), profile):
            return Prepared(path, profile, (width, height), 0, 0, 0, None, 0.0, reused=True)
        LOG.info('preparing %s for %s at %dx%d (once; later starts reuse %s)', source,
                 PROFILE_TEXT[profile], width, height, path)
        meta = {'source': label, 'source_sha256': sha}
        meta.update(metadata or {})
        return prepare_onnx(source, path, (width, height), profile, metadata=meta)
    finally:
        lock.release()

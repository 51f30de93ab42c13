"""
FP32 pinning on a real Depth Anything V2 graph (tiny config, random weights, exported here).

TensorRT 8.5 cannot import the opset-17 LayerNormalization node, so a JetPack 5 engine is built
from an export where LayerNorm is decomposed (ReduceMean, Sub, Pow, Add, Sqrt, Div, Mul). The
ONNX parser names each TensorRT layer after its ONNX node, so the builder recognises those layers
by the name scope of the norm module. This test checks that on the real graph: every decomposed
LayerNorm node and every Softmax is pinned, and nothing else is.
"""
from __future__ import annotations

import re

from depth_ros.inference.tensorrt.builder import keep_fp32
import pytest

# ONNX op -> the TensorRT layer type the ONNX parser creates for it.
TRT_LAYER_TYPE = {'ReduceMean': 'REDUCE', 'Sub': 'ELEMENTWISE', 'Pow': 'ELEMENTWISE',
                  'Add': 'ELEMENTWISE', 'Div': 'ELEMENTWISE', 'Mul': 'ELEMENTWISE',
                  'Sqrt': 'UNARY', 'Erf': 'UNARY', 'Softmax': 'SOFTMAX',
                  'LayerNormalization': 'NORMALIZATION', 'MatMul': 'MATRIX_MULTIPLY',
                  'Conv': 'CONVOLUTION', 'Relu': 'ACTIVATION'}


@pytest.fixture(scope='module')
def legacy_graph(tmp_path_factory):
    torch = pytest.importorskip('torch')
    onnx = pytest.importorskip('onnx')
    pytest.importorskip('transformers')
    from depth_ros.inference import torch_model
    torch.set_num_threads(1)
    model = torch_model.build_model('tiny', seed=0).eval()

    class Wrapper(torch.nn.Module):
        def __init__(self, inner):
            super(Wrapper, self).__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(pixel_values=x).predicted_depth

    path = str(tmp_path_factory.mktemp('onnx') / 'tiny16.onnx')
    torch.onnx.export(Wrapper(model), (torch.zeros(1, 3, 28, 42),), path, opset_version=16,
                      dynamo=False, input_names=['image'], output_names=['relative_disparity'])
    return onnx.load(path).graph


@pytest.mark.slow  # torch import + ONNX export: ~8 s on a shared 2-core machine
def test_decomposed_layernorm_and_softmax_are_pinned_and_nothing_else(legacy_graph):
    nodes = [(n.name, TRT_LAYER_TYPE[n.op_type]) for n in legacy_graph.node
             if n.op_type in TRT_LAYER_TYPE]
    pinned = {name for name, kind in nodes if keep_fp32(name, kind)}
    # Independent expectation from the module names: the encoder's norm1/norm2, the backbone's
    # output layernorms, and the attention softmax.
    in_norm = re.compile(r'/(norm1|norm2|layernorm(_\d+)?)/')
    expected = {name for name, kind in nodes
                if (in_norm.search(name) and kind in ('REDUCE', 'ELEMENTWISE', 'UNARY'))
                or kind == 'SOFTMAX'}
    assert len(expected) > 50, 'the graph should hold decomposed LayerNorms, got {}'.format(
        len(expected))
    assert pinned == expected, 'missing {}, extra {}'.format(sorted(expected - pinned)[:5],
                                                             sorted(pinned - expected)[:5])
    assert not any('/mlp/' in name or '/neck/' in name or '/head/' in name for name in pinned)

"""model_store without torch: cache paths, local candidates, and resolving a given .onnx file."""
from __future__ import annotations

import os

import pytest

onnx = pytest.importorskip('onnx')
from onnx import helper, TensorProto  # noqa: E402, I100

from depth_ros.inference import model_store  # noqa: E402, I100


def _onnx(path, trained):
    x = helper.make_tensor_value_info('image', TensorProto.FLOAT, [1, 3, 14, 14])
    y = helper.make_tensor_value_info('relative_disparity', TensorProto.FLOAT, [1, 14, 14])
    graph = helper.make_graph([helper.make_node('ReduceMean', ['image'], ['relative_disparity'],
                                                axes=[1], keepdims=0)], 'g', [x], [y])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
    helper.set_model_props(proto, {'trained': trained})
    onnx.save_model(proto, str(path))
    return str(path)


def test_cached_onnx_path_is_keyed_by_hash_size_and_opset(tmp_path):
    sha = 'ab' * 32
    path = model_store.cached_onnx_path(str(tmp_path), 'vits', sha, (518, 294))
    assert path == os.path.join(str(tmp_path), 'onnx', 'da2-vits-abababababababab-518x294-op17'
                                '.onnx'), path
    assert model_store.cached_onnx_path(str(tmp_path), 'vits', sha, (518, 294), opset=16) != path
    with pytest.raises(ValueError, match='input `height` must be a positive multiple of 14'):
        model_store.cached_onnx_path(str(tmp_path), 'vits', sha, (518, 300))


def test_local_candidates_are_the_hf_folder_then_the_official_pth():
    assert list(model_store.local_vits_candidates('m')) == [
        os.path.join('m', 'Depth-Anything-V2-Small-hf'),
        os.path.join('m', 'depth_anything_v2_vits.pth')]


def test_a_given_onnx_file_is_used_as_it_is_and_says_if_it_is_untrained(tmp_path):
    trained = _onnx(tmp_path / 't.onnx', 'true')
    untrained = _onnx(tmp_path / 'u.onnx', 'false')
    cache = str(tmp_path / 'cache')
    assert model_store.resolve_demo_model(trained, cache_dir=cache) == \
        (trained, 'ONNX model {}'.format(trained), True)
    assert model_store.resolve_demo_model(untrained, cache_dir=cache) == \
        (untrained, 'ONNX model {} (UNTRAINED: random weights)'.format(untrained), False)
    assert not os.path.exists(cache), 'nothing exported, nothing cached'
    with pytest.raises(FileNotFoundError, match='ONNX model not found: .*missing.onnx'):
        model_store.resolve_demo_model(str(tmp_path / 'missing.onnx'), cache_dir=cache)

"""Engine cache: keys, mismatch messages, records, and file handling (no GPU, no TensorRT)."""
from __future__ import annotations

import hashlib
import json
import os

from depth_ros.inference.tensorrt.cache import (compare_key, default_cache_dir,
                                                engine_filename, EngineCache, EngineCacheError,
                                                EngineMismatchError, key_digest,
                                                KEY_FIELDS, make_key, sidecar_path)
from depth_ros.util import file_sha256
import pytest

XAVIER = {'gpu_name': 'Xavier', 'compute_capability': '7.2', 'tensorrt_version': '8.5.2.2'}
SHA = hashlib.sha256(b'onnx').hexdigest()


def _key(**changes):
    runtime = dict(XAVIER)
    runtime.update({k: v for k, v in changes.items() if k in runtime})
    return make_key(runtime, changes.get('onnx_sha256', SHA),
                    changes.get('input_shape', [1, 3, 294, 518]),
                    changes.get('precision', 'fp16'), changes.get('dla_core'))


def test_key_holds_every_field_and_digest_is_stable_and_sensitive():
    key = _key()
    assert sorted(key) == sorted(KEY_FIELDS)
    assert key_digest(key) == key_digest(_key()), 'same inputs, same digest'
    for change in ({'tensorrt_version': '10.3.0'}, {'gpu_name': 'Orin'},
                   {'compute_capability': '8.7'},
                   {'onnx_sha256': hashlib.sha256(b'x').hexdigest()},
                   {'input_shape': [1, 3, 364, 644]}, {'precision': 'int8'}, {'dla_core': 0}):
        assert key_digest(_key(**change)) != key_digest(key), 'digest ignores {}'.format(change)


def test_engine_filename_names_model_size_precision_and_dla():
    name = engine_filename('/models/da2 vits.onnx', _key(dla_core=1))
    expected = 'da2_vits_518x294_fp16_dla1_{}.engine'.format(key_digest(_key(dla_core=1)))
    assert name == expected, 'expected {}, received {}'.format(expected, name)


@pytest.mark.parametrize('args, message', [
    (({'gpu_name': 'x', 'compute_capability': '7.2'}, SHA, [1, 3, 14, 14], 'fp16'),
     "`runtime` is missing 'tensorrt_version': {'gpu_name': 'x', 'compute_capability': '7.2'}"),
    ((XAVIER, 'abc', [1, 3, 14, 14], 'fp16'), "`onnx_sha256` must be 64 hex digits, got 'abc'"),
    ((XAVIER, SHA, [3, 14, 14], 'fp16'), '`input_shape` must be [1, 3, h, w] with h, w > 0, '
     'got [3, 14, 14]'),
    ((XAVIER, SHA, [1, 3, 14, 14], 'bf16'), "`precision` must be one of fp16|fp32|int8, got "
     "'bf16'"),
    ((XAVIER, SHA, [1, 3, 14, 14], 'fp16', -1), '`dla_core` must be None or an integer >= 0, '
     'got -1'),
])
def test_make_key_rejects_bad_input(args, message):
    with pytest.raises(ValueError) as info:
        make_key(*args)
    assert str(info.value) == message, 'expected {!r}, received {!r}'.format(
        message, str(info.value))


@pytest.mark.parametrize('change, message', [
    ({'tensorrt_version': '10.3.0'}, 'engine built with TensorRT 8.5.2.2 but this is 10.3.0'),
    ({'gpu_name': 'Orin'}, "engine built on GPU 'Xavier' but this is 'Orin'"),
    ({'compute_capability': '8.7'}, 'engine built for compute capability 7.2 but this GPU is 8.7'),
    ({'input_shape': [1, 3, 364, 644]},
     'engine input shape is [1, 3, 294, 518] but [1, 3, 364, 644] was requested'),
    ({'precision': 'int8'}, 'engine precision is fp16 but int8 was requested'),
    ({'dla_core': 0}, 'engine built for the GPU but DLA core 0 was requested'),
    ({'onnx_sha256': hashlib.sha256(b'new').hexdigest()},
     'engine built from an ONNX file with sha256 {}... but the ONNX given has sha256 {}... '
     '(the model changed)'.format(SHA[:12], hashlib.sha256(b'new').hexdigest()[:12])),
])
def test_compare_key_says_which_field_differs(change, message):
    got = compare_key(_key(), _key(**change))
    assert got == [message], 'expected {!r}, received {!r}'.format([message], got)


def test_compare_key_reports_all_differences_and_only_wanted_fields():
    got = compare_key(_key(), _key(tensorrt_version='10.3.0', gpu_name='Orin'))
    assert got == ['engine built with TensorRT 8.5.2.2 but this is 10.3.0',
                   "engine built on GPU 'Xavier' but this is 'Orin'"], got
    assert compare_key(_key(), dict(XAVIER)) == [], 'runtime-only comparison must match'
    assert compare_key(_key(), {'precision': 'fp32'}) == [
        'engine precision is fp16 but fp32 was requested']


def test_default_cache_dir_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv('DEPTH_ROS_ENGINE_CACHE', str(tmp_path / 'c'))
    assert default_cache_dir() == str(tmp_path / 'c')
    monkeypatch.delenv('DEPTH_ROS_ENGINE_CACHE')
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'x'))
    assert default_cache_dir() == os.path.join(str(tmp_path / 'x'), 'depth_ros', 'engines')


def _write(tmp_path, plan=b'\x01\x02' * 1000, key=None):
    cache = EngineCache(str(tmp_path / 'engines'))
    key = key or _key()
    path = cache.write(cache.path_for('vits.onnx', key), plan, key, {'workspace_mb': 512})
    return cache, path, key, plan


def test_write_then_validate_round_trip(tmp_path):
    cache, path, key, plan = _write(tmp_path)
    with open(path, 'rb') as f:
        assert f.read() == plan
    with open(sidecar_path(path)) as f:
        record = json.load(f)
    assert record['key'] == key
    assert record['engine_bytes'] == len(plan)
    assert record['engine_sha256'] == hashlib.sha256(plan).hexdigest() == file_sha256(path)
    assert record['workspace_mb'] == 512, 'the workspace is recorded (but not part of the key)'
    real, got = cache.validate(path, key)
    assert real == os.path.realpath(path) and got == record
    assert sorted(os.listdir(cache.cache_dir)) == sorted(
        [os.path.basename(path), os.path.basename(path) + '.json']), 'temp left'


def test_validate_refuses_a_mismatch_with_the_differing_key(tmp_path):
    cache, path, key, _ = _write(tmp_path)
    wanted = dict(key, tensorrt_version='10.3.0')
    with pytest.raises(EngineMismatchError) as info:
        cache.validate(path, wanted)
    assert info.value.differences == ['engine built with TensorRT 8.5.2.2 but this is 10.3.0']
    assert str(info.value) == ('engine {} does not match: engine built with TensorRT 8.5.2.2 but '
                               'this is 10.3.0; rebuild it with `depth-ros model build`'
                               .format(os.path.realpath(path)))


def test_truncated_engine_is_named(tmp_path):
    cache, path, key, plan = _write(tmp_path)
    with open(path, 'r+b') as f:
        f.truncate(100)
    with pytest.raises(EngineCacheError) as info:
        cache.validate(path, key)
    expected = ('engine file {} is truncated: 100 bytes, but {} were written at build time; '
                'rebuild it'.format(os.path.realpath(path), len(plan)))
    assert str(info.value) == expected, 'expected {!r}, received {!r}'.format(
        expected, str(info.value))


def test_corrupt_engine_of_the_right_size_is_named(tmp_path):
    cache, path, key, plan = _write(tmp_path)
    with open(path, 'r+b') as f:
        f.seek(500)
        f.write(b'\xff\xff')
    with pytest.raises(EngineCacheError) as info:
        cache.validate(path, key)
    assert str(info.value) == ('engine file {} is corrupt: its sha256 differs from the one '
                               'recorded at build time; rebuild it'.format(os.path.realpath(path)))
    cache.validate(path, key, verify_hash=False)  # the size alone cannot see this corruption


def test_engine_without_record_is_refused(tmp_path):
    cache, path, key, _ = _write(tmp_path)
    os.remove(sidecar_path(path))
    with pytest.raises(EngineCacheError, match='has no cache record .*refusing to load'):
        cache.validate(path, key)


@pytest.mark.parametrize('content, message', [
    ('{not json', 'is unreadable'),
    ('{"format": 1, "key": {"precision": "fp16"}}', 'is incomplete'),
    ('[1, 2]', 'is incomplete'),
])
def test_broken_record_is_named(tmp_path, content, message):
    cache, path, key, _ = _write(tmp_path)
    with open(sidecar_path(path), 'w') as f:
        f.write(content)
    with pytest.raises(EngineCacheError) as info:
        cache.validate(path, key)
    assert sidecar_path(os.path.realpath(path)) in str(info.value) and message in str(info.value)


def test_missing_engine_is_file_not_found(tmp_path):
    cache = EngineCache(str(tmp_path))
    with pytest.raises(FileNotFoundError, match='nothere.engine does not exist'):
        cache.validate(str(tmp_path / 'nothere.engine'), {})


def test_engines_outside_the_cache_are_refused_even_through_symlinks(tmp_path):
    cache, path, key, _ = _write(tmp_path)
    outside = tmp_path / 'elsewhere.engine'
    outside.write_bytes(b'x')
    with pytest.raises(ValueError) as info:
        cache.validate(str(outside), key)
    assert 'outside the engine cache directory {}'.format(
        os.path.realpath(cache.cache_dir)) in str(info.value)
    link = os.path.join(cache.cache_dir, 'link.engine')
    os.symlink(str(outside), link)
    with pytest.raises(ValueError, match='resolves to .*elsewhere.engine, outside'):
        cache.validate(link, key)
    with pytest.raises(ValueError, match='outside'):
        cache.validate(os.path.join(cache.cache_dir, '..', 'elsewhere.engine'), key)
    # A bare name is looked up in the cache, and a symlink within the cache is fine.
    inside = os.path.join(cache.cache_dir, 'alias.engine')
    os.symlink(path, inside)
    assert cache.resolve('alias.engine') == os.path.realpath(path)


def test_relative_paths_from_the_working_directory(tmp_path, monkeypatch):
    cache, path, key, _ = _write(tmp_path)
    monkeypatch.chdir(str(tmp_path))
    relative = os.path.join('engines', os.path.basename(path))
    assert cache.resolve(relative) == os.path.realpath(path)
    (tmp_path / 'stray.engine').write_bytes(b'x')
    with pytest.raises(ValueError, match='outside the engine cache directory'):
        cache.resolve('stray.engine')


def test_candidates_lists_engines_of_that_onnx_only(tmp_path):
    cache, path, key, _ = _write(tmp_path)
    other_key = _key(precision='fp32')
    cache.write(cache.path_for('vits.onnx', other_key), b'abc', other_key)
    cache.write(cache.path_for('vitb.onnx', key), b'abc', key)
    names = sorted(os.path.basename(p) for p in cache.candidates('/somewhere/vits.onnx'))
    assert names == sorted([engine_filename('vits.onnx', key),
                            engine_filename('vits.onnx', other_key)]), names
    assert EngineCache(str(tmp_path / 'none')).candidates('vits.onnx') == []

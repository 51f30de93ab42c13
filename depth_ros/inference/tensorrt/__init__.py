"""
TensorRT backend for Depth Anything V2 engines.

Engine build (builder), key-checked engine cache (cache), INT8 calibration data (calibrator),
and TensorRTDepthModel (backend). Only trt_api imports tensorrt and pycuda, and only when
called, so this package imports on machines without them.

``load_engine_model(path, **options)`` is what ``load_depth_model(..., backend='tensorrt')``
calls.
"""
from __future__ import annotations

import os

from depth_ros.inference.tensorrt.cache import (compare_key, EngineCache, EngineCacheError,
                                                EngineMismatchError)
from depth_ros.util import file_sha256

__all__ = ['load_engine_model', 'find_cached_engine', 'EngineCacheError', 'EngineMismatchError']

_OPTIONS = ('cache_dir', 'onnx', 'precision', 'input_size', 'dla_core', 'device', 'verify_hash',
            'api', 'build', 'workspace_mb', 'calib_dir', 'heartbeat_s', 'heartbeat_what',
            'record')


def find_cached_engine(onnx_path: str, cache_dir=None, precision: str = 'fp16',
                       input_size=None, dla_core=None, device: int = 0, api=None) -> str:
    """
    Path of a cached engine built from ``onnx_path`` that matches this GPU and TensorRT.

    :raises EngineMismatchError: listing, per cached engine of that ONNX, which key differs;
        FileNotFoundError: no engine of that ONNX in the cache at all.
    """
    if api is None:
        from depth_ros.inference.tensorrt import trt_api as api
    cache = EngineCache(cache_dir)
    if not os.path.isfile(onnx_path):
        raise FileNotFoundError('ONNX file {} does not exist'.format(onnx_path))
    gpu = api.open_device(device)
    try:
        wanted = dict(gpu.info())
    finally:
        gpu.close()
    wanted['onnx_sha256'] = file_sha256(onnx_path)
    wanted['precision'] = precision
    wanted['dla_core'] = dla_core
    if input_size is not None:
        wanted['input_shape'] = [1, 3, int(input_size[1]), int(input_size[0])]
    reasons = []
    for candidate in cache.candidates(onnx_path):
        try:
            differences = compare_key(cache.read_record(candidate)['key'], wanted)
        except EngineCacheError as exc:
            reasons.append(str(exc))
            continue
        if not differences:
            return candidate
        reasons.append('{}: {}'.format(os.path.basename(candidate), '; '.join(differences)))
    if not reasons:
        raise FileNotFoundError('no engine for {} in the engine cache {}; build one with '
                                '`depth-ros model build --onnx {}`'.format(
                                    onnx_path, cache.cache_dir, onnx_path))
    raise EngineMismatchError(cache.cache_dir, reasons)


def load_engine_model(path: str, **options):
    """
    Load a TensorRTDepthModel.

    :param path: an engine file in the cache directory, or an ONNX file: then the matching cached
        engine is used, and built first when missing and ``build`` is true (the default). An
        ONNX that this TensorRT cannot take as it is (dynamic sizes; on 8.5, LayerNormalization
        or a cubic Resize) is prepared first (depth_ros.inference.onnx_prepare, cached).
    :param options: cache_dir, onnx, precision, input_size (width, height), dla_core, device,
        verify_hash, build, workspace_mb, calib_dir, heartbeat_s, heartbeat_what, record
        (build_engine's), api (a trt_api test double).
    """
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ValueError('unknown TensorRT backend option(s) {}; known: {}'.format(
            ', '.join(unknown), ', '.join(_OPTIONS)))
    from depth_ros.inference.tensorrt.backend import TensorRTDepthModel
    path = os.fspath(path)
    build = options.pop('build', True)
    workspace_mb = options.pop('workspace_mb', None)
    calib_dir = options.pop('calib_dir', None)
    progress = {k: options.pop(k) for k in ('heartbeat_s', 'heartbeat_what', 'record')
                if k in options}
    if path.lower().endswith('.onnx'):
        from depth_ros.inference.onnx_prepare import prepare_if_needed, profile_for_tensorrt
        api = options.get('api')
        if api is None:
            from depth_ros.inference.tensorrt import trt_api as api
        path = prepare_if_needed(path, options.get('input_size'),
                                 profile_for_tensorrt(api.tensorrt_version()))
        precision = options.get('precision') or 'fp16'
        if build:
            from depth_ros.inference.tensorrt.builder import build_engine, DEFAULT_WORKSPACE_MB
            result = build_engine(
                path, precision=precision, cache_dir=options.get('cache_dir'),
                workspace_mb=workspace_mb or DEFAULT_WORKSPACE_MB,
                dla_core=options.get('dla_core'), calib_dir=calib_dir,
                input_size=options.get('input_size'), device=options.get('device', 0),
                api=options.get('api'), **progress)
            engine = result.engine_path
        else:
            engine = find_cached_engine(
                path, cache_dir=options.get('cache_dir'), precision=precision,
                input_size=options.get('input_size'), dla_core=options.get('dla_core'),
                device=options.get('device', 0), api=options.get('api'))
        options['onnx'] = path
        options['precision'] = precision
        return TensorRTDepthModel(engine, **options)
    return TensorRTDepthModel(path, **options)

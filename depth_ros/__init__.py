"""
depth_ros: metric depth from ZED2 stereo and Depth Anything V2.

The public API (names fixed; outside tools depend on them)::

    PinholeCamera, MetricAligner, AlignedDepth, depth_to_cloud, colorize, load_depth_model

and ``AlignerOptions`` (MetricAligner's options, with ranges and descriptions).

Core names import numpy and OpenCV only. ``load_depth_model`` imports its backend lazily.
"""
from __future__ import annotations

import importlib

__version__ = '0.1.0'

_EXPORTS = {
    'PinholeCamera': 'depth_ros.core.camera',
    'MetricAligner': 'depth_ros.core.alignment',
    'AlignedDepth': 'depth_ros.core.alignment',
    'AlignerOptions': 'depth_ros.core.alignment_options',
    'depth_to_cloud': 'depth_ros.core.pointcloud',
    'colorize': 'depth_ros.core.visualize',
    'load_depth_model': 'depth_ros.inference',
}

__all__ = sorted(_EXPORTS) + ['__version__']


def __getattr__(name):
    # Lazy so that `import depth_ros` stays cheap and never pulls torch or onnxruntime.
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError('module {!r} has no attribute {!r}'.format(__name__, name))
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__

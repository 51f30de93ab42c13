"""The one-module rule: only trt_api imports tensorrt and pycuda, lazily, with an install hint."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import depth_ros
from depth_ros.inference.tensorrt import trt_api
import numpy as np
import pytest

PACKAGE_DIR = os.path.dirname(os.path.abspath(depth_ros.__file__))


def test_only_trt_api_imports_tensorrt_or_pycuda():
    pattern = re.compile(r'^\s*(import|from)\s+(tensorrt|pycuda)\b', re.MULTILINE)
    offenders = []
    for root, _, files in os.walk(PACKAGE_DIR):
        for name in files:
            if name.endswith('.py'):
                path = os.path.join(root, name)
                with open(path) as f:
                    if pattern.search(f.read()):
                        offenders.append(os.path.relpath(path, PACKAGE_DIR))
    assert offenders == [os.path.join('inference', 'tensorrt', 'trt_api.py')], offenders


def test_importing_the_backend_loads_neither_tensorrt_nor_pycuda():
    code = ('import sys\n'
            'import depth_ros.inference.tensorrt.backend, depth_ros.inference.tensorrt.builder\n'
            'import depth_ros.commands.model_build, depth_ros.commands.model_verify\n'
            'print(sorted(m for m in sys.modules if m.split(".")[0] in '
            '("tensorrt", "pycuda", "torch", "onnxruntime")))\n')
    out = subprocess.run([sys.executable, '-c', code], check=True, stdout=subprocess.PIPE,
                         universal_newlines=True, timeout=120).stdout.strip()
    assert out == '[]', 'expected no heavy module, received {}'.format(out)


def test_missing_tensorrt_says_what_to_install():
    try:
        import tensorrt  # noqa: F401
        pytest.skip('tensorrt is installed here')
    except ImportError:
        pass
    with pytest.raises(ImportError) as info:
        trt_api.tensorrt_version()
    assert 'install depth_ros[tensorrt]' in str(info.value) and 'python3-libnvinfer' in str(
        info.value), str(info.value)


def test_tensor_spec_normalises_shape_and_dtype():
    spec = trt_api.TensorSpec('x', 1, [np.int64(1), 3, 14, 28], 'float16')
    assert spec.shape == (1, 3, 14, 28) and spec.dtype == np.float16 and spec.is_input is True
    assert repr(spec) == "TensorSpec('x', input, (1, 3, 14, 28), float16)"

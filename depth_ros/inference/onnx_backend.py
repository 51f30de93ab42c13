"""
ONNX Runtime backend: runs an ONNX file exported by depth_ros.inference.export.

The input size is read from the model's static input shape [1, 3, h, w]. Pre- and
post-processing are DepthModel.predict's (depth_ros.core.preprocess).
"""
from __future__ import annotations

import logging
import os
from typing import List, Optional, Sequence, Tuple

from depth_ros.core.checks import check_number
from depth_ros.inference.base import DepthModel
from depth_ros.util import first_line
import numpy as np

LOG = logging.getLogger('depth_ros.inference.onnxruntime')


class OnnxDepthModel(DepthModel):
    """
    Depth Anything V2 through ONNX Runtime.

    :param path: .onnx file with one input [1, 3, h, w] float32 and one output [1, h, w].
    :param providers: execution providers, default ['CPUExecutionProvider'].
    :param intra_op_threads: threads per operator; None or 0 lets ONNX Runtime decide.
    :param input_size: optional (width, height); must equal the model's fixed input size.
    :raises FileNotFoundError: no such file.
    :raises ValueError: naming the file when it is not a loadable ONNX model, or not one
        with the expected inputs and outputs.
    """

    backend = 'onnxruntime'

    def __init__(self, path: str, providers: Optional[Sequence[str]] = None,
                 intra_op_threads: Optional[int] = None,
                 input_size: Optional[Tuple[int, int]] = None, name: Optional[str] = None):
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError('the onnxruntime backend needs onnxruntime: install '
                              'depth_ros[onnx] ({})'.format(exc))
        if not isinstance(path, str) or not path:
            raise ValueError('`path` must be an .onnx file path, got {!r}'.format(path))
        if not os.path.isfile(path):
            raise FileNotFoundError('ONNX model not found: {}'.format(path))
        intra_op_threads = check_number('intra_op_threads', intra_op_threads, low=0,
                                        integer=True, allow_none=True)
        providers = list(providers) if providers else ['CPUExecutionProvider']
        available = ort.get_available_providers()
        unknown = [p for p in providers if (p[0] if isinstance(p, tuple) else p)
                   not in available]
        if unknown:
            raise ValueError('`providers` {} not available in this onnxruntime (available: '
                             '{})'.format(unknown, ', '.join(available)))
        options = ort.SessionOptions()
        if intra_op_threads:
            options.intra_op_num_threads = int(intra_op_threads)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            session = ort.InferenceSession(path, sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own Fail/InvalidProtobuf/... types
            raise ValueError('{}: cannot load as an ONNX model: {}'.format(
                path, first_line(exc)))
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError('{}: expected 1 input and 1 output (Depth Anything V2), got inputs '
                             '{} and outputs {}'.format(path, [i.name for i in inputs],
                                                        [o.name for o in outputs]))
        shape = list(inputs[0].shape)
        if (len(shape) != 4 or not all(isinstance(d, int) for d in shape)
                or shape[0] != 1 or shape[1] != 3 or inputs[0].type != 'tensor(float)'):
            raise ValueError('{}: input {!r} must be a fixed [1, 3, h, w] float tensor, got {} '
                             '{}'.format(path, inputs[0].name, inputs[0].type, shape))
        model_size = (shape[3], shape[2])
        if input_size is not None and tuple(input_size) != model_size:
            raise ValueError('`input_size` {} does not match {}, which was exported at {}x{}'
                             .format(tuple(input_size), path, model_size[0], model_size[1]))
        out_shape = list(outputs[0].shape)
        if len(out_shape) not in (2, 3, 4) or (all(isinstance(d, int) for d in out_shape)
                                               and out_shape[-2:] != [shape[2], shape[3]]):
            raise ValueError('{}: output {!r} must be [1, h, w] at the input size {}x{}, got {}'
                             .format(path, outputs[0].name, shape[3], shape[2], out_shape))
        super().__init__(input_size=model_size, name=name or path)
        self.path = path
        self.session = session
        self.providers = session.get_providers()
        self._input_name = inputs[0].name
        self._output_names = [outputs[0].name]
        meta = session.get_modelmeta()
        self.metadata = dict(meta.custom_metadata_map or {})  # metadata_props of the file
        LOG.info('onnxruntime %s on %s, input %dx%d', path, ', '.join(self.providers),
                 model_size[0], model_size[1])

    @property
    def output_names(self) -> List[str]:
        """Output tensor names."""
        return list(self._output_names)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(self._output_names, {self._input_name: batch})[0]

    def close(self) -> None:
        """Drop the session (ONNX Runtime frees it with the last reference)."""
        self.session = None

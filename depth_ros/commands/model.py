"""`depth-ros model export|build|verify|setup`."""
from __future__ import annotations

import importlib
import logging

ACTIONS = ('model_export', 'model_build', 'model_verify', 'model_setup')


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        'model', help='export Depth Anything V2 to ONNX, build and verify TensorRT engines')
    sub = parser.add_subparsers(dest='action', metavar='ACTION')
    sub.required = True
    for name in ACTIONS:
        try:
            module = importlib.import_module('depth_ros.commands.' + name)
        except ImportError as exc:
            logging.getLogger('depth_ros').debug('model action %s unavailable: %s', name, exc)
            continue
        module.register(sub)

"""
`depth-ros model build`: ONNX -> TensorRT engine in the engine cache (run it on the Jetson).

Examples::

    depth-ros model build --onnx models/da2_vits_518x294.onnx                # FP16
    depth-ros model build --onnx m.onnx --precision int8 --calib-dir frames/ --workspace-mb 2048
    depth-ros model build --onnx m.onnx --dla-core 0                          # DLA + GPU fallback

A matching cached engine (same GPU, TensorRT, ONNX sha256, input shape, precision, DLA core) is
reused; ``--force`` rebuilds. The engine path is printed on stdout.
"""
from __future__ import annotations

import logging
import sys

from depth_ros.cli import HelpFormatter
from depth_ros.commands._args import add_gpu_argument, non_negative_int, positive_int, \
    size_type

LOG = logging.getLogger('depth_ros.commands.model_build')

PRECISION_CHOICES = ('fp16', 'fp32', 'int8')
# Same as builder.DEFAULT_WORKSPACE_MB / DEFAULT_CALIB_BATCH (a test checks); not imported here so
# that `depth-ros --help` does not load numpy and OpenCV.
DEFAULT_WORKSPACE_MB = 1024
DEFAULT_CALIB_BATCH = 8


def register(subparsers) -> None:
    """Add the `build` action to the `model` sub-command."""
    parser = subparsers.add_parser(
        'build', help='build a TensorRT engine from the ONNX (on the target device)',
        description='Build a TensorRT engine with the TensorRT Python builder and store it, with '
                    'a JSON record of what it was built for, in the engine cache. FP16 and INT8 '
                    'builds keep LayerNorm and Softmax in FP32.',
        formatter_class=HelpFormatter)
    parser.add_argument('--onnx', required=True, metavar='FILE.onnx',
                        help='ONNX from `depth-ros model export`')
    parser.add_argument('--precision', choices=PRECISION_CHOICES, default='fp16',
                        help='engine precision')
    parser.add_argument('--calib-dir', metavar='DIR', default=None,
                        help='int8: folder of recorded frames (png/jpg) to calibrate on')
    parser.add_argument('--calib-batch', type=positive_int, default=DEFAULT_CALIB_BATCH,
                        metavar='N', help='int8: frames per calibration batch')
    parser.add_argument('--calib-max-images', type=positive_int, default=None, metavar='N',
                        help='int8: use at most N frames (default: all)')
    parser.add_argument('--workspace-mb', type=positive_int, default=DEFAULT_WORKSPACE_MB,
                        metavar='N', help='builder workspace limit in MiB (Xavier NX: 8 GB '
                                          'shared with the CPU)')
    parser.add_argument('--dla-core', type=non_negative_int, default=None, metavar='N',
                        help='run on DLA core N with GPU fallback (Xavier/Orin)')
    parser.add_argument('--cache-dir', metavar='DIR', default=None,
                        help='engine cache directory (default $DEPTH_ROS_ENGINE_CACHE or '
                             '~/.cache/depth_ros/engines)')
    parser.add_argument('--input-size', type=size_type('518x294'), default=None, metavar='WxH',
                        help='input size, only for an ONNX with a dynamic input shape')
    add_gpu_argument(parser)
    parser.add_argument('--force', action='store_true',
                        help='rebuild even when a matching engine is cached')
    parser.add_argument('--heartbeat', type=float, default=15.0, metavar='S',
                        help='seconds between progress lines when TensorRT has no progress '
                             'monitor (TensorRT < 10)')
    parser.set_defaults(func=run)


def run(args, api=None) -> int:
    """Build (or find) the engine and print its path. ``api``: a trt_api test double."""
    from depth_ros.inference.tensorrt.builder import build_engine
    if args.calib_dir is not None and args.precision != 'int8':
        raise ValueError('--calib-dir is only used with --precision int8, got --precision {}'
                         .format(args.precision))
    result = build_engine(
        args.onnx, precision=args.precision, cache_dir=args.cache_dir,
        workspace_mb=args.workspace_mb, dla_core=args.dla_core, calib_dir=args.calib_dir,
        calib_batch_size=args.calib_batch, calib_max_images=args.calib_max_images,
        input_size=args.input_size, device=args.gpu, force=args.force,
        heartbeat_s=args.heartbeat, api=api)
    if result.built:
        LOG.info('built %s engine in %.0f s', args.precision, result.seconds)
    else:
        LOG.info('a matching engine was already cached (use --force to rebuild)')
    LOG.info('run it with: ros2 launch depth_ros zed_depth.launch.py backend:=tensorrt '
             'engine:=%s', result.engine_path)
    sys.stdout.write(result.engine_path + '\n')
    return 0

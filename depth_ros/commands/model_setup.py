"""
`depth-ros model setup`: put the default model where depth_node finds it, ahead of time.

Examples::

    depth-ros model setup                                  # what depth_node would do at start
    depth-ros model setup --backend tensorrt --precision fp16 --size 518x294
    depth-ros model setup --download-only --out robot-cache/   # on a machine with internet
    rsync -a robot-cache/ robot:~/.cache/                       # then on the offline robot: ready

Without ``--download-only`` it runs what depth_node runs with ``backend: auto`` and
``model: auto`` (depth_ros.inference.auto): find or download
``onnx-community/depth-anything-v2-small``, prepare it for the backend and size, and on a
TensorRT machine build the engine into the engine cache. It prints what it put where.

``--download-only --out DIR`` needs no GPU and no ROS: it downloads the ONNX file into
``DIR/huggingface/hub`` (the Hugging Face cache layout) and prepares it for both ONNX Runtime /
TensorRT >= 8.6 and TensorRT 8.5 into ``DIR/depth_ros/onnx``. ``DIR`` mirrors ``~/.cache``, so
copying it into the robot's ``~/.cache`` puts every file where depth_node looks.
"""
from __future__ import annotations

import logging
import os
import sys

from depth_ros.cli import HelpFormatter
from depth_ros.commands._args import add_gpu_argument, size_type

LOG = logging.getLogger('depth_ros.commands.model_setup')

BACKEND_CHOICES = ('auto', 'tensorrt', 'onnxruntime')
PRECISION_CHOICES = ('fp16', 'fp32', 'int8')
DEFAULT_WORKSPACE_MB = 1024   # builder.DEFAULT_WORKSPACE_MB (not imported: light --help)
OFFLINE_FIX = ('run `depth-ros model setup` again with internet access, or run `depth-ros '
               'model setup --download-only --out DIR` on a machine that has it and copy DIR '
               'into ~/.cache here (docs/models.md, "Offline robots")')


def register(subparsers) -> None:
    """Add the `setup` action to the `model` sub-command."""
    parser = subparsers.add_parser(
        'setup', help='get, prepare (and build) the default model ahead of time',
        description='Do ahead of time what depth_node does at its first start with backend '
                    'auto and model auto: find or download Depth Anything V2 Small '
                    '(onnx-community/depth-anything-v2-small, onnx/model.onnx), prepare it '
                    'for the backend and input size, and build the TensorRT engine where '
                    'TensorRT runs. Prints what it put where.',
        formatter_class=HelpFormatter)
    parser.add_argument('--backend', choices=BACKEND_CHOICES, default='auto',
                        help='the backend depth_node will run (auto: as depth_node chooses)')
    parser.add_argument('--model', default='auto', metavar='auto|FILE|ID',
                        help='auto (the default model), an .onnx file or a hub id')
    parser.add_argument('--size', type=size_type('518x294', model_input=True), default=None,
                        metavar='WxH', help='model input size, multiples of 14 (default '
                                            '518x294, depth_node\'s)')
    parser.add_argument('--precision', choices=PRECISION_CHOICES, default='fp16',
                        help='TensorRT engine precision')
    parser.add_argument('--workspace-mb', type=int, default=DEFAULT_WORKSPACE_MB, metavar='N',
                        help='TensorRT builder workspace limit in MiB')
    parser.add_argument('--calib-dir', metavar='DIR', default=None,
                        help='int8: folder of recorded frames to calibrate on')
    parser.add_argument('--engine-cache-dir', metavar='DIR', default=None,
                        help='engine cache (default $DEPTH_ROS_ENGINE_CACHE or '
                             '~/.cache/depth_ros/engines)')
    parser.add_argument('--cache-dir', metavar='DIR', default=None,
                        help='depth_ros cache, prepared ONNX files in DIR/onnx (default '
                             '$DEPTH_ROS_CACHE or ~/.cache/depth_ros)')
    parser.add_argument('--hub-cache-dir', metavar='DIR', default=None,
                        help='Hugging Face cache (default huggingface_hub\'s: $HF_HUB_CACHE, '
                             '$HF_HOME/hub or ~/.cache/huggingface/hub)')
    add_gpu_argument(parser)
    parser.add_argument('--download-only', action='store_true',
                        help='only download and prepare the ONNX files into --out (no GPU, no '
                             'ROS needed), for an offline robot')
    parser.add_argument('--out', metavar='DIR', default=None,
                        help='with --download-only: the folder to copy into the robot\'s '
                             '~/.cache')
    parser.set_defaults(func=run)


def _say(line: str) -> None:
    sys.stdout.write(line + '\n')


def download_only(out: str, size, hub_cache_dir=None) -> dict:
    """Download the default model into ``out`` and prepare it for every profile there."""
    from depth_ros.core.preprocess import DEFAULT_SIZE
    from depth_ros.inference import default_model, hub, onnx_prepare
    from depth_ros.util import file_sha256

    size = tuple(size or DEFAULT_SIZE)
    hub_dir = hub_cache_dir or os.path.join(out, 'huggingface', 'hub')
    onnx_dir = os.path.join(out, 'depth_ros', 'onnx')
    repo, name = default_model.DEFAULT_REPO, default_model.DEFAULT_FILE
    source = hub.download_file(repo, name, cache_dir=hub_dir)
    sha = file_sha256(source)
    prepared = {}
    for profile in onnx_prepare.PROFILES:
        prepared[profile] = onnx_prepare.ensure_prepared(
            source, size, profile, label=repo, source_sha256=sha, out_dir=onnx_dir,
            metadata={'model_id': repo, 'source_file': name}).path
    return {'source': source, 'sha256': sha, 'hub_dir': hub_dir, 'onnx_dir': onnx_dir,
            'prepared': prepared}


def run(args, api=None) -> int:
    """Set the model up and print what went where. ``api``: a trt_api test double."""
    from depth_ros.inference import onnx_prepare

    if args.download_only:
        if not args.out:
            raise ValueError('--download-only needs --out DIR (the folder to copy into the '
                             'robot\'s ~/.cache)')
        if args.model != 'auto' or args.backend != 'auto':
            raise ValueError('--download-only fetches the default model for every backend; '
                             'leave out --model and --backend')
        done = download_only(args.out, args.size, args.hub_cache_dir)
        _say('downloaded {} (sha256 {})'.format(done['source'], done['sha256']))
        for profile, path in sorted(done['prepared'].items()):
            _say('prepared for {}: {}'.format(onnx_prepare.PROFILE_TEXT[profile], path))
        _say('on the robot: copy {}/ into ~/.cache/ (e.g. rsync -a {}/ robot:~/.cache/): '
             'huggingface/hub is the Hugging Face cache, depth_ros/onnx the prepared files; '
             'depth_node then finds them with HF_HUB_OFFLINE=1'.format(
                 args.out.rstrip('/'), args.out.rstrip('/')))
        return 0
    if args.out:
        raise ValueError('--out is only used with --download-only')
    if args.calib_dir is not None and args.precision != 'int8':
        raise ValueError('--calib-dir is only used with --precision int8, got --precision {}'
                         .format(args.precision))
    from depth_ros.inference.auto import open_depth_model
    # --download-only fetches the default model only: not the fix for another hub id.
    fix = OFFLINE_FIX if args.model == 'auto' else \
        'run `depth-ros model setup --model {}` again with internet access'.format(args.model)
    opened = open_depth_model(
        args.backend, args.model, input_size=args.size, precision=args.precision,
        workspace_mb=args.workspace_mb, engine_cache_dir=args.engine_cache_dir,
        cache_dir=args.cache_dir, hub_cache_dir=args.hub_cache_dir, gpu=args.gpu,
        calib_dir=args.calib_dir, fix=fix, api=api)
    try:
        for warning in opened.warnings:
            LOG.warning(warning)
        found = opened.found
        _say('backend: {} ({})'.format(opened.backend, opened.backend_reason))
        if found is not None and found.source:
            _say('source: {}{}'.format(found.source, ' (sha256 {})'.format(
                found.source_sha256) if found.source_sha256 else ''))
        if opened.onnx:
            _say('prepared ONNX: {}'.format(opened.onnx))
        if opened.backend == 'tensorrt':
            _say('engine: {} ({})'.format(opened.path, 'built now' if opened.built
                                          else 'already in the engine cache'))
        _say('input: {}x{}'.format(*opened.input_size))
        _say('depth_node finds this at its start with backend auto (or {}) and model auto{}'
             .format(opened.backend, '' if args.size is None else
                     ', input_width {} and input_height {}'.format(*args.size)))
    finally:
        opened.model.close()
    return 0

"""`depth-ros bench`: per-stage latency percentiles of the pipeline, table and PNG."""
from __future__ import annotations

import logging

from depth_ros.cli import HelpFormatter
from depth_ros.commands import _args

LOG = logging.getLogger('depth_ros.bench')


def register(subparsers) -> None:
    """Add the `bench` parser."""
    parser = subparsers.add_parser(
        'bench', help='per-stage latency (preprocess, inference, alignment, cloud, conversion)',
        description='Times each pipeline stage on synthetic frames at the camera size and '
                    'writes bench.md, bench.json and bench.png. Without --model a labelled '
                    'stand-in replaces the network, so only the other stages mean anything.',
        formatter_class=HelpFormatter)
    _args.add_model_arguments(
        parser, model_help='ONNX file, engine, checkpoint or hub id; omitted = stand-in',
        random_weights_help='torch: build --model (vits, vitb, vitl, tiny) untrained; latency '
                            'is that of the real architecture')
    parser.add_argument('--size', default='1280x720', help='camera frame WIDTHxHEIGHT')
    parser.add_argument('--input-size', default='518x294',
                        help='stand-in model input WIDTHxHEIGHT (multiples of 14)')
    parser.add_argument('--frames', type=int, default=50, help='timed frames')
    parser.add_argument('--warmup', type=_args.non_negative_int, default=3,
                        help='untimed frames first')
    parser.add_argument('--conversion', default='auto', choices=('auto', 'ros', 'bytes'),
                        help='conversion stage: ros = the nodes\' message conversion (needs '
                             'sensor_msgs), bytes = payload byte packing only, auto = ros '
                             'when sensor_msgs is importable')
    parser.add_argument('--out', default='out/bench', type=_args.output_dir,
                        help='output folder')
    parser.set_defaults(func=run)


def run(args) -> int:
    """Entry point of `depth-ros bench`."""
    from depth_ros.inference import BACKENDS, load_model
    from depth_ros.tools import bench
    size = _args.parse_size(args.size, '--size', '1280x720')
    if args.frames < 1:
        raise ValueError('`--frames` must be >= 1, got {}'.format(args.frames))
    _args.check_device(args.device)   # the stand-in (no --model) took any text
    stand_in = args.model is None and BACKENDS[args.backend].needs_model
    if stand_in:
        input_size = _args.parse_size(args.input_size, '--input-size', '518x294',
                                      model_input=True)
    bench.pyplot()   # once the arguments are checked, before the model loads and runs
    if stand_in:
        LOG.warning('no --model: timing a %s', bench.STAND_IN_LABEL)
        model = load_model('standin', input_size=input_size, name=bench.STAND_IN_LABEL)
    else:
        model = _args.load_model(args)
    result = bench.run_bench(model, size=size, frames=args.frames, warmup=args.warmup,
                             conversion=args.conversion)
    paths = bench.write_report(result, args.out)
    LOG.info('\n%s', bench.markdown_table(result))
    LOG.info('wrote %s, %s, %s', paths['markdown'], paths['json'], paths['plot'])
    return 0

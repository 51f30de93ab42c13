"""`depth-ros eval`: zero-shot affine-invariant evaluation of any backend on a depth dataset."""
from __future__ import annotations

import logging

from depth_ros.cli import HelpFormatter
from depth_ros.commands import _args

LOG = logging.getLogger('depth_ros.eval')


def register(subparsers) -> None:
    """Add the `eval` parser."""
    parser = subparsers.add_parser(
        'eval', help='zero-shot AbsRel / delta1 on NYUv2, KITTI, ETH3D, DIODE or a folder',
        description='Affine-invariant evaluation (Marigold / Depth Anything V2 protocol): '
                    'least-squares scale and shift per image, in depth or disparity space, '
                    'dataset depth caps and crops, AbsRel, delta1, RMSE. Writes results.md, '
                    'results.json and eval.png.',
        formatter_class=HelpFormatter)
    parser.add_argument('root', nargs='?', default=None,
                        help='dataset folder (see docs/tools.md); omit with --dataset middlebury')
    parser.add_argument('--dataset', default='folder',
                        help='nyu | kitti | eth3d | diode | middlebury (bundled sample) | folder')
    parser.add_argument('--crop', default=None,
                        help='evaluation crop: nyu eigen (default); kitti garg (default) | eigen')
    parser.add_argument('--no-crop', action='store_true', help='score the whole frame')
    _args.add_model_arguments(
        parser, model_help='ONNX file, engine, checkpoint folder or hub id (Marigold: default '
                           'prs-eth/marigold-depth-v1-1; tiny-random = untrained tiny one)',
        random_weights_help='torch: build --model (vits, vitb, vitl, tiny) untrained, to check '
                            'the pipeline; the figures then mean nothing', marigold=True)
    parser.add_argument('--space', default=None, choices=('depth', 'disparity'),
                        help="alignment space (default: the model's own: disparity for DA-V2, "
                             'depth for Marigold)')
    parser.add_argument('--limit', type=int, default=None, help='evaluate the first N images')
    parser.add_argument('--out', default='out/eval', type=_args.output_dir,
                        help='output folder')
    parser.set_defaults(func=run)


def run(args) -> int:
    """Entry point of `depth-ros eval`."""
    from depth_ros.tools import evaluation as ev
    spec = ev.dataset_spec(args.dataset)
    if args.limit is not None and args.limit < 1:
        raise ValueError('`--limit` must be >= 1, got {}'.format(args.limit))
    crop = None if args.no_crop else (args.crop or spec.default_crop)
    if crop is not None and crop not in spec.crops:
        raise ValueError('`--crop` must be one of {} for {}, got {!r}'.format(
            sorted(spec.crops), spec.name, crop))
    if args.dataset == 'middlebury':
        samples, total = ev.sample_samples(), 1
    else:
        if not args.root:
            raise ValueError('a dataset folder is required for --dataset {}'.format(
                args.dataset))
        total = len(ev.list_pairs(args.root))
        if args.limit is not None:
            total = min(total, args.limit)
        samples = ev.load_pairs(args.root, spec, args.limit)
    model = _args.load_model(args)
    result = ev.evaluate(model, samples, spec, space=args.space, crop=crop,
                         model_name='{}:{}'.format(args.backend, getattr(model, 'name', '')
                                                   or args.model), total=total)
    paths = ev.write_report([result], args.out)
    LOG.info('\n%s', ev.markdown_table([result]))
    LOG.info('wrote %s, %s, %s', paths['markdown'], paths['json'], paths['plot'])
    return 0

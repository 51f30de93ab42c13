"""`depth-ros eval`: zero-shot affine-invariant evaluation of any backend on a depth dataset."""
from __future__ import annotations

import logging

LOG = logging.getLogger('depth_ros.eval')

BACKENDS = ('onnxruntime', 'torch', 'tensorrt', 'marigold')


def register(subparsers) -> None:
    """Add the `eval` parser."""
    parser = subparsers.add_parser(
        'eval', help='zero-shot AbsRel / delta1 on NYUv2, KITTI, ETH3D, DIODE or a folder',
        description='Affine-invariant evaluation (Marigold / Depth Anything V2 protocol): '
                    'least-squares scale and shift per image, in depth or disparity space, '
                    'dataset depth caps and crops, AbsRel, delta1, RMSE. Writes results.md, '
                    'results.json and eval.png.')
    parser.add_argument('root', nargs='?', default=None,
                        help='dataset folder (see docs/tools.md); omit with --dataset middlebury')
    parser.add_argument('--dataset', default='folder',
                        help='nyu | kitti | eth3d | diode | middlebury (bundled sample) | folder')
    parser.add_argument('--crop', default=None,
                        help='evaluation crop: nyu eigen (default); kitti garg (default) | eigen')
    parser.add_argument('--no-crop', action='store_true', help='score the whole frame')
    parser.add_argument('--backend', default='onnxruntime', choices=BACKENDS)
    parser.add_argument('--model', default=None,
                        help='ONNX file, engine, checkpoint folder or hub id (Marigold: default '
                             'prs-eth/marigold-depth-v1-1; tiny-random = untrained tiny one)')
    parser.add_argument('--space', default=None, choices=('depth', 'disparity'),
                        help="alignment space (default: the model's own: disparity for DA-V2, "
                             'depth for Marigold)')
    parser.add_argument('--limit', type=int, default=None, help='evaluate the first N images')
    parser.add_argument('--device', default='cpu', help='torch device for torch / marigold')
    parser.add_argument('--steps', type=int, default=None, help='Marigold denoising steps')
    parser.add_argument('--ensemble', type=int, default=1, help='Marigold ensemble size')
    parser.add_argument('--processing-resolution', type=int, default=None,
                        help='Marigold processing resolution (0 = native)')
    parser.add_argument('--random-weights', action='store_true',
                        help='torch: build --model (vits, vitb, vitl, tiny) untrained, to check '
                             'the pipeline; the figures then mean nothing')
    parser.add_argument('--out', default='out/eval', help='output folder')
    parser.set_defaults(func=run)


def load_model(backend: str, model, device: str = 'cpu', steps=None, ensemble: int = 1,
               processing_resolution=None, random_weights: bool = False):
    """Load the model of ``backend``: Marigold via its wrapper, others via load_depth_model."""
    if backend == 'marigold':
        from depth_ros.inference.marigold import DEFAULT_CHECKPOINT, load_marigold
        return load_marigold(model or DEFAULT_CHECKPOINT, device=device, steps=steps,
                             ensemble_size=ensemble,
                             processing_resolution=processing_resolution)
    if backend not in BACKENDS:
        raise ValueError('`--backend` must be one of {}, got {!r}'.format(BACKENDS, backend))
    if not model:
        raise ValueError('`--model` is required for backend {!r}'.format(backend))
    from depth_ros import load_depth_model
    options = {}
    if backend == 'torch':
        options['device'] = device
        if random_weights:
            LOG.warning('--random-weights: an UNTRAINED %s network; its figures mean nothing',
                        model)
            options['random_weights'] = True
    elif random_weights:
        raise ValueError('`--random-weights` works with --backend torch only')
    return load_depth_model(model, backend=backend, **options)


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
    model = load_model(args.backend, args.model, args.device, args.steps, args.ensemble,
                       args.processing_resolution, args.random_weights)
    result = ev.evaluate(model, samples, spec, space=args.space, crop=crop,
                         model_name='{}:{}'.format(args.backend, getattr(model, 'name', '')
                                                   or args.model), total=total)
    paths = ev.write_report([result], args.out)
    LOG.info('\n%s', ev.markdown_table([result]))
    LOG.info('wrote %s, %s, %s', paths['markdown'], paths['json'], paths['plot'])
    return 0

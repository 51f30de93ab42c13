r"""
`depth-ros model verify`: what an engine's precision costs, measured against a reference.

Runs the TensorRT engine and a reference (ONNX Runtime on the ONNX, or the PyTorch model) on the
same frames and reports, per frame and overall, the max and mean absolute difference of the
relative disparities, and AbsRel and delta1 of the engine against the reference after affine
alignment in disparity space (the reference taken as ground truth: depth = 1 / disparity).

Examples::

    depth-ros model verify --engine ~/.cache/depth_ros/engines/da2_..._fp16_....engine \\
        --reference onnx --images sample
    depth-ros model verify --engine E.engine --reference torch \\
        --checkpoint depth-anything/Depth-Anything-V2-Small-hf --images frames/ --json
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Dict, List, Tuple

from depth_ros.cli import HelpFormatter
from depth_ros.commands._args import add_gpu_argument
from depth_ros.util import check_number_as

LOG = logging.getLogger('depth_ros.commands.model_verify')

REFERENCES = ('onnx', 'torch')
COLUMNS = (('max_abs_diff', 'max|d|', '{:>10.4g}'), ('mean_abs_diff', 'mean|d|', '{:>10.4g}'),
           ('abs_rel', 'AbsRel', '{:>9.5f}'), ('delta1', 'delta1', '{:>8.4f}'),
           ('engine_ms', 'engine ms', '{:>10.1f}'), ('reference_ms', 'ref ms', '{:>9.1f}'))


def register(subparsers) -> None:
    """Add the `verify` action to the `model` sub-command."""
    parser = subparsers.add_parser(
        'verify', help='compare a TensorRT engine with ONNX Runtime or PyTorch on real frames',
        description='Run the engine and a reference on the same frames; report max/mean '
                    'absolute difference, and AbsRel and delta1 after affine alignment.',
        formatter_class=HelpFormatter)
    parser.add_argument('--engine', required=True, metavar='FILE.engine',
                        help='engine in the cache directory (from `depth-ros model build`)')
    parser.add_argument('--cache-dir', metavar='DIR', default=None,
                        help='engine cache directory (default $DEPTH_ROS_ENGINE_CACHE or '
                             '~/.cache/depth_ros/engines)')
    parser.add_argument('--reference', required=True, choices=REFERENCES,
                        help='onnx: ONNX Runtime on --onnx; torch: PyTorch on --checkpoint')
    parser.add_argument('--onnx', metavar='FILE.onnx', default=None,
                        help='reference ONNX (default: the ONNX the engine was built from, as '
                             'its cache record says)')
    parser.add_argument('--checkpoint', metavar='PATH_OR_ID', default=None,
                        help='torch reference: checkpoint folder, hub id or official .pth; with '
                             '--random-weights a variant name (vits, tiny, ...)')
    parser.add_argument('--random-weights', action='store_true',
                        help='torch reference: untrained network of variant --checkpoint, '
                             'seed --seed (to check an engine of a random-weight export)')
    parser.add_argument('--seed', type=int, default=0, help='seed for --random-weights')
    parser.add_argument('--images', required=True, metavar='DIR|sample',
                        help="folder of frames (png/jpg), or 'sample' for the bundled "
                             'Middlebury image')
    parser.add_argument('--max-images', type=int, default=10, metavar='N',
                        help='use at most N frames of --images')
    add_gpu_argument(parser)
    parser.add_argument('--json', action='store_true', help='print JSON instead of a table')
    parser.set_defaults(func=run)


def load_frames(images: str, max_images: int) -> List[Tuple[str, object]]:
    """[(name, bgr uint8)] from a folder (sorted, at most ``max_images``) or 'sample'."""
    check_number_as('{name} must be an integer > 0, got {value!r}', '--max-images', max_images,
                    low=1, integer=True)
    if images == 'sample':
        from depth_ros.sources.sample import load_sample
        return [('sample', load_sample().left)]
    import cv2
    from depth_ros.inference.tensorrt.calibrator import list_images
    try:
        paths = list_images(images)
    except ValueError as exc:
        raise ValueError(str(exc).replace('`calib_dir`', '--images'))
    frames = []
    for path in paths[:max_images]:
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        if bgr is None:
            LOG.warning('cannot read image %s, skipping it', path)
            continue
        frames.append((os.path.basename(path), bgr))
    if not frames:
        raise ValueError('--images {!r}: none of the images could be read'.format(images))
    return frames


def compare_prediction(pred, ref) -> Dict[str, float]:
    """
    Engine vs reference relative disparity of one frame ([H, W] float32 each).

    max/mean absolute difference on pixels finite in both; AbsRel and delta1 of the engine
    after least-squares scale and shift in disparity space against depth = 1 / reference
    (pixels where the reference is finite and > 0). NaN when the fit is undetermined.
    """
    import numpy as np
    from depth_ros.core.metrics import evaluate_affine_invariant
    pred = np.asarray(pred, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if pred.shape != ref.shape:
        raise ValueError('engine output has shape {} but the reference has {}'.format(
            pred.shape, ref.shape))
    both = np.isfinite(pred) & np.isfinite(ref)
    diff = np.abs(pred[both] - ref[both])
    out = {'max_abs_diff': float(diff.max()) if diff.size else float('nan'),
           'mean_abs_diff': float(diff.mean()) if diff.size else float('nan'),
           'abs_rel': float('nan'), 'delta1': float('nan'),
           'engine_finite': float(np.isfinite(pred).mean())}
    with np.errstate(divide='ignore', invalid='ignore'):
        gt_depth = np.where(np.isfinite(ref) & (ref > 0), 1.0 / ref, np.nan)
    try:
        metrics = evaluate_affine_invariant(pred, gt_depth, space='disparity')
    except ValueError as exc:  # no valid reference pixel, or a constant engine output
        LOG.warning('affine alignment impossible on this frame: %s', exc)
        return out
    out['abs_rel'] = float(metrics['abs_rel'])
    out['delta1'] = float(metrics['delta1'])
    return out


def verify_models(engine, reference, frames) -> Dict[str, object]:
    """Run both models on every (name, bgr) frame; per-frame rows and a summary."""
    import numpy as np
    rows = []
    for name, bgr in frames:
        t0 = time.perf_counter()
        pred = engine.predict(bgr)
        t1 = time.perf_counter()
        ref = reference.predict(bgr)
        t2 = time.perf_counter()
        row = {'frame': name}
        row.update(compare_prediction(pred, ref))
        row['engine_ms'] = (t1 - t0) * 1e3
        row['reference_ms'] = (t2 - t1) * 1e3
        rows.append(row)

    def agg(key, fn):
        values = np.array([r[key] for r in rows], dtype=np.float64)
        values = values[np.isfinite(values)]
        return float(fn(values)) if values.size else float('nan')

    summary = {'frame': 'all', 'max_abs_diff': agg('max_abs_diff', np.max),
               'mean_abs_diff': agg('mean_abs_diff', np.mean), 'abs_rel': agg('abs_rel', np.mean),
               'delta1': agg('delta1', np.mean), 'engine_ms': agg('engine_ms', np.median),
               'reference_ms': agg('reference_ms', np.median)}
    return {'frames': rows, 'summary': summary}


def format_table(report: Dict[str, object]) -> str:
    """Fixed-width table: one row per frame and a summary row (median latency)."""
    lines = ['engine     {}'.format(report.get('engine', '')),
             'reference  {}'.format(report.get('reference', '')), '']
    width = max([len('frame')] + [len(str(r['frame'])) for r in report['frames']])
    header = '{:<{w}}'.format('frame', w=width) + ''.join(
        '{:>{n}}'.format(title, n=len(fmt.format(0.0))) for _, title, fmt in COLUMNS)
    lines.append(header)
    lines.append('-' * len(header))
    for row in list(report['frames']) + [report['summary']]:
        lines.append('{:<{w}}'.format(str(row['frame']), w=width) + ''.join(
            fmt.format(row[key]) for key, _, fmt in COLUMNS))
    lines.append('')
    lines.append('AbsRel / delta1: engine vs reference after scale+shift in disparity space '
                 '(0 / 1 = identical up to affine); |d| in relative-disparity units.')
    return '\n'.join(lines)


def _json_safe(value):
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _load_reference(args, engine):
    from depth_ros.inference import load_depth_model
    size = engine.input_size
    if args.reference == 'onnx':
        onnx = args.onnx or engine.record.get('onnx_path')
        if not onnx:
            raise ValueError('--onnx is needed: the engine record does not say which ONNX it '
                             'was built from')
        if not os.path.isfile(onnx):
            raise FileNotFoundError('reference ONNX file {} does not exist (give --onnx)'.format(
                onnx))
        from depth_ros.util import file_sha256
        if file_sha256(onnx) != engine.record['key']['onnx_sha256']:
            LOG.warning('the reference ONNX %s is not the file the engine was built from '
                        '(sha256 differs): differences include the model change', onnx)
        return load_depth_model(onnx, backend='onnxruntime', input_size=size), \
            'onnxruntime {}'.format(onnx)
    if not args.checkpoint:
        raise ValueError('--reference torch needs --checkpoint (a checkpoint, hub id, or a '
                         'variant name with --random-weights)')
    options = {'random_weights': True, 'seed': args.seed} if args.random_weights else {}
    model = load_depth_model(args.checkpoint, backend='torch', input_size=size, **options)
    return model, 'torch {}{}'.format(args.checkpoint, ' (UNTRAINED, seed {})'.format(
        args.seed) if args.random_weights else '')


def run(args, api=None) -> int:
    """Verify; prints the table (or JSON) on stdout. ``api``: a trt_api test double."""
    if args.reference == 'torch' and args.onnx:
        raise ValueError('--onnx is for --reference onnx; use --checkpoint with --reference '
                         'torch')
    if args.reference == 'onnx' and (args.checkpoint or args.random_weights):
        raise ValueError('--checkpoint/--random-weights are for --reference torch')
    frames = load_frames(args.images, args.max_images)
    from depth_ros.inference.tensorrt import load_engine_model
    # verify checks an engine that exists; it never builds one behind the user's back.
    engine = load_engine_model(args.engine, cache_dir=args.cache_dir, device=args.gpu,
                               api=api, build=False)
    try:
        reference, reference_label = _load_reference(args, engine)
        LOG.info('verifying %s against %s on %d frame(s)', engine.name, reference_label,
                 len(frames))
        report = verify_models(engine, reference, frames)
    finally:
        engine.close()
    key = engine.record['key']
    report['engine'] = '{} ({}, TensorRT {}, {})'.format(
        engine.name, key['precision'], key['tensorrt_version'], key['gpu_name'])
    report['reference'] = reference_label
    report['images'] = args.images
    if args.json:
        sys.stdout.write(json.dumps(_json_safe(report), indent=2, sort_keys=True) + '\n')
    else:
        sys.stdout.write(format_table(report) + '\n')
    return 0

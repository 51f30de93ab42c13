"""
`depth-ros fuse`: one frame of relative depth + stereo depth -> metric depth, PLY, report.

Writes into ``--out``: depth.npy (float32 metres, NaN invalid, +inf too far), depth.png
(colorized, near = red), points.ply (binary, coloured) and alignment.json (scale, shift,
inlier_ratio, valid_fraction, status, ...). ``fuse_and_write`` does the same for other
commands (demo) with arrays in memory.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Dict, Optional

from depth_ros.cli import HelpFormatter
from depth_ros.commands import _args

LOG = logging.getLogger('depth_ros.fuse')

OUTPUT_FILES = ('depth.npy', 'depth.png', 'points.ply', 'alignment.json')


def parse_intrinsics(text: str):
    """'fx,fy,cx,cy' -> four floats; ValueError naming ``--intrinsics`` otherwise."""
    parts = [p.strip() for p in str(text).split(',')]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4:
        raise ValueError('--intrinsics must be fx,fy,cx,cy (4 numbers), got {!r}'.format(text))
    return values


def fuse_and_write(bgr, relative, stereo_depth, confidence, camera, out_dir: str,
                   aligner_options: Optional[Dict] = None, aligner=None) -> Dict:
    """
    Align, fuse and write the four output files into ``out_dir`` (created if missing).

    :param bgr: [H, W, 3] uint8 left image (colours of the cloud); same size as the stereo.
    :param relative: [h, w] float relative prediction (resized to the stereo size).
    :param stereo_depth: [H, W] float metres (NaN / inf / 0 invalid).
    :param confidence: optional [H, W] ZED confidence (1..100, larger = less reliable).
    :param camera: PinholeCamera of the stereo / image size.
    :param aligner_options: MetricAligner keyword options (ignored when ``aligner`` is given).
    :param aligner: optional MetricAligner to reuse (keeps its temporal state).
    :returns: dict with 'alignment' (the JSON content), 'files' (name -> path),
        'points' (number written to the PLY) and 'depth' (the fused [H, W] float32 array).
    """
    import cv2
    import numpy as np

    from depth_ros.core.alignment import MetricAligner
    from depth_ros.core.checks import check_image, check_same_size
    from depth_ros.core.ply import write_ply
    from depth_ros.core.pointcloud import depth_to_cloud
    from depth_ros.core.visualize import colorize
    from depth_ros.util import atomic_files

    check_image('bgr', bgr, channels=3, dtypes=(np.uint8,))
    check_image('stereo_depth', stereo_depth)
    check_same_size('bgr', bgr, 'stereo_depth', stereo_depth)
    if aligner is None:
        aligner = MetricAligner(**(aligner_options or {}))
    result = aligner.update(relative, stereo_depth, confidence)
    depth = result.depth
    cloud = depth_to_cloud(depth, camera, bgr=bgr)
    files = {name: os.path.join(out_dir, name) for name in OUTPUT_FILES}
    report = result.to_dict()
    report.update(relative_kind=aligner.relative_kind, width=int(depth.shape[1]),
                  height=int(depth.shape[0]),
                  dense_fraction=float(np.mean(np.isfinite(depth) | np.isposinf(depth))),
                  too_far_fraction=float(np.mean(np.isposinf(depth))))
    # All four files or none: a failure or Ctrl-C half way leaves the old outputs untouched.
    with atomic_files(list(files.values())) as tmp:
        with open(tmp[files['depth.npy']], 'wb') as f:
            np.save(f, depth)
        finite = depth[np.isfinite(depth)]
        vmin, vmax = (None, None) if finite.size else (0.0, 1.0)
        if not cv2.imwrite(tmp[files['depth.png']], colorize(depth, vmin, vmax, reverse=True)):
            raise RuntimeError('could not write {}'.format(files['depth.png']))
        n_points = write_ply(tmp[files['points.ply']], cloud)
        report['points'] = n_points
        with open(tmp[files['alignment.json']], 'w') as f:
            json.dump(report, f, indent=2, sort_keys=True)
            f.write('\n')
    LOG.info('fuse: status %s, scale %.6g, shift %.6g, inliers %.1f %%, %d points -> %s',
             result.status, result.scale, result.shift, 100.0 * (report['inlier_ratio'] or 0),
             n_points, out_dir)
    return {'alignment': report, 'files': files, 'points': n_points, 'depth': depth}


def _load_npy(option: str, path: str, integer_millimetres: bool = False):
    import numpy as np
    if not os.path.isfile(path):
        raise FileNotFoundError('{} {}: no such file'.format(option, path))
    with open(path, 'rb') as f:
        magic = f.read(6)
    if magic != b'\x93NUMPY' and magic[:4] != b'PK\x03\x04':
        # np.load takes any other file for a pickle, and its refusal told the user to load it
        # "unsafely" with allow_pickle (a PNG given for --relative, say).
        raise ValueError('{} {}: not a .npy array (numpy.save writes one; this file starts '
                         'with {!r})'.format(option, path, magic))
    try:
        value = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ValueError('{} {}: not a readable .npy array ({})'.format(option, path, exc))
    if not isinstance(value, np.ndarray):   # np.load opens a .npz archive as well
        value.close()
        raise ValueError('{} {}: a .npz archive ({}), expected one HxW .npy array'.format(
            option, path, ', '.join(value.files)))
    if value.ndim == 3 and value.shape[2] == 1:
        value = value[:, :, 0]
    if value.ndim != 2 or value.size == 0 or value.dtype.kind not in 'fiu':
        raise ValueError('{} {}: expected a non-empty HxW numeric array, got shape {} dtype '
                         '{}'.format(option, path, value.shape, value.dtype))
    if integer_millimetres and value.dtype.kind in 'iu':
        # REP 118: integer depth (16UC1) is millimetres, 0 = no reading.
        LOG.warning('%s %s has integer dtype %s: reading it as millimetres (REP 118 16UC1), '
                    '0 as invalid', option, path, value.dtype)
        from depth_ros.core.messages import depth_to_metres
        return depth_to_metres(value, '16UC1')   # the one mm -> m conversion
    return value.astype(np.float32, copy=False) if value.dtype != np.float32 else value


def _aligner(options: Dict):
    """MetricAligner(**options); a refused value names the command-line option."""
    from depth_ros.core.alignment import MetricAligner
    try:
        return MetricAligner(**options)
    except ValueError as exc:
        text = str(exc).replace('option `', '`', 1)
        for name in options:   # the aligner's option names -> this command's options
            text = text.replace('`{}`'.format(name), '`--{}`'.format(name.replace('_', '-')))
        raise ValueError(text) from None


def run(args) -> int:
    """Entry point of `depth-ros fuse`."""
    import cv2

    from depth_ros.cli import CommandError
    from depth_ros.core.camera import PinholeCamera

    options = {'relative_kind': args.relative_kind, 'min_depth': args.min_depth,
               'max_depth': args.max_depth, 'max_output_depth': args.max_output_depth}
    if args.confidence_threshold is not None:
        options['confidence_threshold'] = args.confidence_threshold
    aligner = _aligner(options)
    if not os.path.isfile(args.image):
        raise FileNotFoundError('--image {}: no such file'.format(args.image))
    bgr = cv2.imread(args.image, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError('--image {}: not a readable image'.format(args.image))
    relative = _load_npy('--relative', args.relative)
    stereo = _load_npy('--stereo-depth', args.stereo_depth, integer_millimetres=True)
    confidence = _load_npy('--confidence', args.confidence) if args.confidence else None
    if bgr.shape[:2] != stereo.shape:
        raise CommandError('--image is {}x{} but --stereo-depth is {}x{} (W x H); they must '
                           'match'.format(bgr.shape[1], bgr.shape[0], stereo.shape[1],
                                          stereo.shape[0]))
    if confidence is not None and confidence.shape != stereo.shape:
        raise CommandError('--confidence has shape {} but --stereo-depth has shape {}'.format(
            confidence.shape, stereo.shape))
    fx, fy, cx, cy = parse_intrinsics(args.intrinsics)
    try:
        camera = PinholeCamera(fx, fy, cx, cy, stereo.shape[1], stereo.shape[0])
    except ValueError as exc:
        raise ValueError('--intrinsics {!r}: {}'.format(args.intrinsics, exc))
    result = fuse_and_write(bgr, relative, stereo, confidence, camera, args.out,
                            aligner=aligner)
    a = result['alignment']
    print('status {}  scale {}  shift {}  inlier_ratio {}  valid_fraction {}  points {}'.format(
        a['status'], a['scale'], a['shift'], a['inlier_ratio'], a['valid_fraction'],
        a['points']))
    print('wrote ' + ', '.join(result['files'][n] for n in OUTPUT_FILES))
    return 0


def register(subparsers) -> None:
    """Add the `fuse` sub-command."""
    p = subparsers.add_parser(
        'fuse', help='fuse relative depth with stereo depth into metric depth, PLY and report',
        description='Align a relative depth map (DA-V2 disparity or Marigold depth) to stereo '
                    'depth and write depth.npy, depth.png, points.ply and alignment.json.',
        formatter_class=HelpFormatter)
    p.add_argument('--image', required=True, help='left image (PNG/JPG), the stereo size')
    p.add_argument('--relative', required=True, help='relative prediction, HxW .npy')
    p.add_argument('--stereo-depth', required=True, help='stereo depth in metres, HxW .npy')
    p.add_argument('--confidence', help='ZED confidence map, HxW .npy (1..100, larger = '
                                        'less reliable)')
    p.add_argument('--intrinsics', required=True, help='fx,fy,cx,cy in pixels of the image')
    p.add_argument('--out', required=True, type=_args.output_dir, help='output folder')
    p.add_argument('--relative-kind', choices=('disparity', 'depth'), default='disparity',
                   help='disparity: DA-V2 (default); depth: Marigold (0 near, 1 far)')
    p.add_argument('--min-depth', type=float, default=0.3, help='stereo range min, m')
    p.add_argument('--max-depth', type=float, default=20.0, help='stereo range max, m')
    p.add_argument('--max-output-depth', type=float, default=100.0,
                   help='beyond this the output is +inf (too far), m')
    p.add_argument('--confidence-threshold', type=float, default=None,
                   help='trust stereo pixels with confidence <= this (default 50)')
    p.set_defaults(func=run)

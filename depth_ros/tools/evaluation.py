"""
Zero-shot affine-invariant depth evaluation (the protocol of the Marigold and DA-V2 papers).

For each image: predict relative depth, keep the ground-truth pixels that are valid for the
dataset (depth range, evaluation crop, the dataset's own mask), fit scale and shift by least
squares on those pixels (in depth space, or in disparity space for disparity models), clip the
aligned depth to the dataset's range, then AbsRel, delta1 and RMSE. The mean over images is the
dataset figure.

Folder layouts (``load_pairs``):

* ``ROOT/rgb/NAME.{png,jpg}`` with ``ROOT/depth/NAME.{png,npy,tif,tiff,bin}``, optional
  ``ROOT/mask/NAME.{png,npy}`` (non-zero = valid);
* or DIODE's own layout, searched recursively: ``NAME.png`` next to ``NAME_depth.npy`` and
  ``NAME_depth_mask.npy``.

PNG depth is uint16 divided by the dataset's ``png_scale`` (NYUv2 1000, KITTI 256); ``.npy`` and
``.tif`` hold float metres; ``.bin`` is ETH3D's raw float32 at the image size. Zero, NaN and inf
are invalid everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import glob
import logging
import os
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import cv2
from depth_ros.core.checks import check_image
from depth_ros.tools import write_reports
import numpy as np

LOG = logging.getLogger('depth_ros.eval')

SPACES = ('depth', 'disparity')
IMAGE_EXTS = ('.png', '.jpg', '.jpeg')
DEPTH_EXTS = ('.png', '.npy', '.tif', '.tiff', '.bin')
METRIC_KEYS = ('abs_rel', 'delta1', 'rmse')


def _rows(y0: float, y1: float, x0: float, x1: float):
    """Make a crop given as fractions of the image size (it scales with the resolution)."""
    def crop(height: int, width: int) -> np.ndarray:
        mask = np.zeros((height, width), dtype=bool)
        mask[int(y0 * height):int(y1 * height), int(x0 * width):int(x1 * width)] = True
        return mask
    return crop


def _nyu_eigen(height: int, width: int) -> np.ndarray:
    # Eigen et al. crop on the 480x640 NYUv2 frames: rows 45..470, cols 41..600 inclusive.
    if (height, width) != (480, 640):
        LOG.warning('NYUv2 Eigen crop is defined on 480x640; scaling it to %dx%d', width, height)
        return _rows(45 / 480., 471 / 480., 41 / 640., 601 / 640.)(height, width)
    mask = np.zeros((height, width), dtype=bool)
    mask[45:471, 41:601] = True
    return mask


# Garg et al. / Eigen et al. crops for KITTI as fractions of the (375x1242-ish) frame, as in
# the Monodepth/Marigold evaluation code.
KITTI_CROPS = {
    'garg': _rows(0.40810811, 0.99189189, 0.03594771, 0.96405229),
    'eigen': _rows(0.3324324, 0.91351351, 0.0359477, 0.96405229),
}


@dataclass
class DatasetSpec:
    """Evaluation settings of one benchmark."""

    name: str
    min_depth: float
    max_depth: float
    png_scale: float = 1000.0
    crops: Dict[str, Callable[[int, int], np.ndarray]] = field(default_factory=dict)
    default_crop: Optional[str] = None
    layout: str = ''


# Ranges follow the Marigold evaluation configs (DA-V2 uses the same caps for NYUv2 and KITTI).
DATASETS = {
    'nyu': DatasetSpec('NYUv2', 1e-3, 10.0, 1000.0, {'eigen': _nyu_eigen}, 'eigen',
                       'rgb/NAME.png + depth/NAME.png (uint16 mm), 654 test frames 480x640'),
    'kitti': DatasetSpec('KITTI', 1e-5, 80.0, 256.0, KITTI_CROPS, 'garg',
                         'rgb/NAME.png + depth/NAME.png (uint16, metres x 256, sparse LiDAR)'),
    'eth3d': DatasetSpec('ETH3D', 1e-5, float('inf'), 1000.0, {}, None,
                         'rgb/NAME.png|jpg + depth/NAME.bin (raw float32 at image size, inf '
                         'invalid) or depth/NAME.npy'),
    'diode': DatasetSpec('DIODE', 0.6, 350.0, 1000.0, {}, None,
                         'the DIODE tree as released: NAME.png, NAME_depth.npy, '
                         'NAME_depth_mask.npy'),
    'middlebury': DatasetSpec('Middlebury', 1e-3, float('inf'), 1000.0, {}, None,
                              'the bundled sample (depth_ros.sources.sample), no folder'),
    'folder': DatasetSpec('folder', 1e-3, float('inf'), 1000.0, {}, None,
                          'rgb/NAME.png|jpg + depth/NAME.npy (metres) or .png (uint16 mm)'),
}


@dataclass
class Sample:
    """One evaluation pair."""

    name: str
    bgr: np.ndarray                     # [H, W, 3] uint8
    gt: np.ndarray                      # [H, W] float32 metres, NaN/0/inf invalid
    mask: Optional[np.ndarray] = None   # [H, W] bool, the dataset's own validity mask


def dataset_spec(name: str) -> DatasetSpec:
    """Look up a dataset by key; ValueError names it and the choices."""
    if name not in DATASETS:
        raise ValueError('`dataset` must be one of {}, got {!r}'.format(sorted(DATASETS), name))
    return DATASETS[name]


def read_depth(path: str, png_scale: float, shape: Optional[Tuple[int, int]] = None
               ) -> np.ndarray:
    """Read a ground-truth depth file as [H, W] float32 metres (0 where absent)."""
    ext = os.path.splitext(path)[1].lower()
    if ext == '.npy':
        depth = np.load(path, allow_pickle=False)
    elif ext == '.bin':
        if shape is None:
            raise ValueError('raw depth {!r} needs the image size'.format(path))
        depth = np.fromfile(path, dtype=np.float32)
        if depth.size != shape[0] * shape[1]:
            raise ValueError('raw depth {!r} has {} values, expected {}x{}'.format(
                path, depth.size, shape[1], shape[0]))
        depth = depth.reshape(shape)
    else:
        depth = cv2.imread(path, cv2.IMREAD_ANYDEPTH)
        if depth is None:
            raise ValueError('cannot read depth file {!r}'.format(path))
        if depth.dtype == np.uint16 or depth.dtype == np.uint8:
            depth = depth.astype(np.float32) / float(png_scale)
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim == 3 and depth.shape[2] == 1:   # DIODE stores [H, W, 1]
        depth = depth[:, :, 0]
    if depth.ndim != 2:
        raise ValueError('depth file {!r} must hold an HxW map, got shape {}'.format(
            path, depth.shape))
    return depth


def _find(stem: str, exts) -> Optional[str]:
    for ext in exts:
        if os.path.isfile(stem + ext):
            return stem + ext
    return None


def list_pairs(root: str) -> List[Tuple[str, str, Optional[str]]]:
    """(image, depth, mask-or-None) paths under ``root``, sorted; see the module docstring."""
    if not os.path.isdir(root):
        raise FileNotFoundError('dataset folder {!r} does not exist'.format(root))
    pairs = []
    rgb_dir = os.path.join(root, 'rgb')
    if os.path.isdir(rgb_dir):
        for image in sorted(os.listdir(rgb_dir)):
            stem, ext = os.path.splitext(image)
            if ext.lower() not in IMAGE_EXTS:
                continue
            depth = _find(os.path.join(root, 'depth', stem), DEPTH_EXTS)
            if depth is None:
                LOG.warning('no ground truth for %s; skipped', image)
                continue
            mask = _find(os.path.join(root, 'mask', stem), ('.png', '.npy'))
            pairs.append((os.path.join(rgb_dir, image), depth, mask))
    else:   # DIODE layout
        for depth in sorted(glob.glob(os.path.join(root, '**', '*_depth.npy'), recursive=True)):
            stem = depth[:-len('_depth.npy')]
            image = _find(stem, IMAGE_EXTS)
            if image is None:
                continue
            mask = stem + '_depth_mask.npy'
            pairs.append((image, depth, mask if os.path.isfile(mask) else None))
    if not pairs:
        raise FileNotFoundError('no image + ground-truth pairs found under {!r} (expected '
                                'rgb/ + depth/ folders, or DIODE NAME.png + NAME_depth.npy)'
                                .format(root))
    return pairs


def load_pairs(root: str, spec: DatasetSpec, limit: Optional[int] = None
               ) -> Iterator[Sample]:
    """Stream the pairs of a dataset folder, one at a time (never the whole set in memory)."""
    for i, (image_path, depth_path, mask_path) in enumerate(list_pairs(root)):
        if limit is not None and i >= limit:
            return
        bgr = cv2.imread(image_path, cv2.IMREAD_COLOR)
        if bgr is None:
            raise ValueError('cannot read image {!r}'.format(image_path))
        gt = read_depth(depth_path, spec.png_scale, bgr.shape[:2])
        mask = None
        if mask_path is not None:
            m = np.load(mask_path) if mask_path.endswith('.npy') else cv2.imread(
                mask_path, cv2.IMREAD_UNCHANGED)
            mask = np.asarray(m).reshape(gt.shape) != 0
        yield Sample(os.path.splitext(os.path.basename(image_path))[0], bgr, gt, mask)


def sample_samples() -> Iterator[Sample]:
    """Yield the bundled Middlebury pair (left image and its ground-truth depth) as a Sample."""
    from depth_ros.sources.sample import load_sample
    sample = load_sample()
    yield Sample('middlebury', sample.left, np.asarray(sample.gt_depth, dtype=np.float32))


def valid_mask(gt: np.ndarray, spec: DatasetSpec, crop: Optional[str] = None,
               extra: Optional[np.ndarray] = None) -> np.ndarray:
    """Pixels that count: finite gt inside (min_depth, max_depth], inside the crop and mask."""
    check_image('gt', gt)
    with np.errstate(invalid='ignore'):
        mask = np.isfinite(gt) & (gt > spec.min_depth) & (gt <= spec.max_depth)
    if crop is not None:
        if crop not in spec.crops:
            raise ValueError('`crop` must be one of {} for {}, got {!r}'.format(
                sorted(spec.crops), spec.name, crop))
        mask &= spec.crops[crop](gt.shape[0], gt.shape[1])
    if extra is not None:
        mask &= extra
    return mask


def evaluate_prediction(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray, space: str,
                        min_depth: float, max_depth: float) -> Dict[str, float]:
    """
    Align one relative prediction to ``gt`` on ``mask`` and compute the metrics.

    :param pred: [h, w] relative prediction; resized (bilinear) to the gt size when it differs.
    :param space: 'depth' (pred is affine-invariant depth) or 'disparity' (inverse depth).
    """
    from depth_ros.core.metrics import evaluate_affine_invariant
    if space not in SPACES:
        raise ValueError('`space` must be one of {}, got {!r}'.format(SPACES, space))
    check_image('pred', pred)
    if pred.shape != gt.shape:
        pred = cv2.resize(pred.astype(np.float32), (gt.shape[1], gt.shape[0]),
                          interpolation=cv2.INTER_LINEAR)
    with np.errstate(invalid='ignore'):
        mask = mask & np.isfinite(pred) & np.isfinite(gt) & (gt > 0)
    n = int(mask.sum())
    if n < 2:
        return dict({k: float('nan') for k in METRIC_KEYS}, valid_pixels=n)
    # Align, convert to depth, clip to the dataset range (as the papers' code), then score.
    metrics = evaluate_affine_invariant(pred, gt, mask, space=space, min_depth=min_depth,
                                        max_depth=max_depth)
    out = {k: float(metrics[k]) for k in METRIC_KEYS}
    out.update(valid_pixels=n, scale=float(metrics['scale']), shift=float(metrics['shift']))
    return out


@dataclass
class EvalResult:
    """Per-image rows and their mean."""

    dataset: str
    model: str
    space: str
    crop: Optional[str]
    rows: List[Dict[str, object]]
    mean: Dict[str, float]

    def to_dict(self) -> Dict[str, object]:
        """JSON-ready dict."""
        return {'dataset': self.dataset, 'model': self.model, 'space': self.space,
                'crop': self.crop, 'mean': self.mean, 'images': self.rows}


def evaluate(model, samples, spec: DatasetSpec, space: Optional[str] = None,
             crop: Optional[str] = 'default', model_name: str = '', progress: bool = True,
             total: Optional[int] = None) -> EvalResult:
    """
    Run ``model.predict`` over ``samples`` and score every one.

    :param model: anything with ``predict(bgr) -> [H, W] relative`` (every depth_ros backend,
        MarigoldDepth); its ``relative_kind`` ('disparity' unless set) picks the space.
    :param space: override of the alignment space.
    :param crop: a key of ``spec.crops``, 'default' (the dataset's usual crop) or None (none).
    """
    kind = getattr(model, 'relative_kind', 'disparity')
    space = kind if space is None else space
    if space not in SPACES:
        raise ValueError('`space` must be one of {}, got {!r}'.format(SPACES, space))
    if crop == 'default':
        crop = spec.default_crop
    iterator = samples
    if progress:
        from tqdm import tqdm
        iterator = tqdm(samples, total=total, desc='eval ' + spec.name, unit='img')
    rows = []
    for sample in iterator:
        pred = model.predict(sample.bgr)
        mask = valid_mask(sample.gt, spec, crop, sample.mask)
        row = {'name': sample.name}
        row.update(evaluate_prediction(pred, sample.gt, mask, space, spec.min_depth,
                                       spec.max_depth))
        rows.append(row)
    if not rows:
        raise ValueError('no samples to evaluate')
    scored = [r for r in rows if np.isfinite(r['abs_rel'])]
    if len(scored) < len(rows):
        LOG.warning('%d of %d images had < 2 valid pixels and are left out of the mean',
                    len(rows) - len(scored), len(rows))
    mean = {k: float(np.mean([r[k] for r in scored])) if scored else float('nan')
            for k in METRIC_KEYS}
    mean['images'] = len(scored)
    return EvalResult(spec.name, model_name or getattr(model, 'name', '') or type(model).__name__,
                      space, crop, rows, mean)


def markdown_table(results: List[EvalResult]) -> str:
    """One row per (dataset, model): AbsRel (lower is better), delta1 (higher), RMSE."""
    lines = ['| dataset | model | space | crop | images | AbsRel | δ1 | RMSE (m) |',
             '|---|---|---|---|---:|---:|---:|---:|']
    for r in results:
        lines.append('| {} | {} | {} | {} | {} | {:.4f} | {:.4f} | {:.4f} |'.format(
            r.dataset, r.model, r.space, r.crop or '-', r.mean['images'], r.mean['abs_rel'],
            r.mean['delta1'], r.mean['rmse']))
    return '\n'.join(lines) + '\n'


def write_report(results: List[EvalResult], out_dir: str) -> Dict[str, str]:
    """Write results.md, results.json and eval.png (per-image AbsRel and delta1) to ``out_dir``."""
    paths = write_reports(out_dir, 'results.md', markdown_table(results), 'results.json',
                          [r.to_dict() for r in results], 'eval.png', allow_nan=True)
    plot_results(results, paths['plot'])
    return paths


def plot_results(results: List[EvalResult], path: str) -> None:
    """Per-image AbsRel and delta1 with the dataset mean as a dashed line."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError('install depth_ros[tools] (matplotlib) for the plot: {}'.format(exc))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for r in results:
        label = '{} / {}'.format(r.dataset, r.model)
        for ax, key in zip(axes, ('abs_rel', 'delta1')):
            values = [row[key] for row in r.rows]
            line, = ax.plot(range(len(values)), values, marker='o', ms=3, lw=1, label=label)
            ax.axhline(r.mean[key], color=line.get_color(), ls='--', lw=1)
    axes[0].set_title('AbsRel per image (lower is better)')
    axes[1].set_title('δ1 per image (higher is better)')
    for ax in axes:
        ax.set_xlabel('image')
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

"""
Depth metrics and the affine-invariant evaluation protocol of the MiDaS / Marigold papers.

* ``abs_rel`` = mean(|p - g| / g), ``rmse`` = sqrt(mean((p - g)^2)) (metres),
  ``delta1`` = fraction of pixels with max(p / g, g / p) < 1.25.
* ``align_affine(pred, gt, mask, space)``: least-squares scale and shift of an affine-invariant
  prediction, on the valid ground-truth pixels, either in depth space (``s * pred + t ~ gt``,
  Marigold) or in disparity space (``s * pred + t ~ 1 / gt``, MiDaS / Depth Anything, whose
  prediction is a relative disparity).
* ``evaluate_affine_invariant``: align, convert to depth, clip to the evaluation range, score.

Valid ground truth: finite and > 0 (and inside ``mask`` when given); predictions that are not
finite and > 0 after alignment count as invalid and fail every metric at that pixel.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

from depth_ros.core.checks import describe
from depth_ros.util import check_number_as
import numpy as np

SPACES = ('depth', 'disparity')
DELTA1 = 1.25


def _pair(pred, gt, mask) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check shapes; return float64 pred, gt and the boolean valid-ground-truth mask."""
    for name, value in (('pred', pred), ('gt', gt)):
        if not isinstance(value, np.ndarray) or value.size == 0 or value.dtype.kind not in 'fiu':
            raise ValueError('`{}` must be a non-empty real numpy array, got {}'.format(
                name, describe(value)))
    if pred.shape != gt.shape:
        raise ValueError('`pred` has shape {} but `gt` has shape {}; they must match'.format(
            pred.shape, gt.shape))
    p = pred.astype(np.float64)
    g = gt.astype(np.float64)
    with np.errstate(invalid='ignore'):
        valid = np.isfinite(g) & (g > 0)
    if mask is not None:
        if not isinstance(mask, np.ndarray) or mask.shape != gt.shape:
            raise ValueError('`mask` must be a boolean array of shape {}, got {}'.format(
                gt.shape, describe(mask)))
        valid &= mask.astype(bool)
    return p, g, valid


def _need(valid):
    if not valid.any():
        raise ValueError('no valid ground-truth pixels (finite, > 0, inside `mask`)')


def abs_rel(pred: np.ndarray, gt: np.ndarray, mask: Optional[np.ndarray] = None) -> float:
    """Mean absolute relative error mean(|p - g| / g) over valid ground truth."""
    return compute_metrics(pred, gt, mask)['abs_rel']


def rmse(pred: np.ndarray, gt: np.ndarray, mask: Optional[np.ndarray] = None) -> float:
    """Root mean squared error (units of ``gt``) over valid ground truth."""
    return compute_metrics(pred, gt, mask)['rmse']


def delta1(pred: np.ndarray, gt: np.ndarray, mask: Optional[np.ndarray] = None) -> float:
    """Fraction of valid ground-truth pixels with max(p / g, g / p) < 1.25."""
    return compute_metrics(pred, gt, mask)['delta1']


def compute_metrics(pred: np.ndarray, gt: np.ndarray,
                    mask: Optional[np.ndarray] = None) -> Dict[str, float]:
    """
    Compute abs_rel, rmse, delta1, ``n`` (valid gt pixels) and ``pred_valid``.

    ``pred_valid`` is the fraction of valid gt pixels with a finite, positive prediction. An
    invalid prediction at a valid gt pixel counts as an error of 100 % for abs_rel, as missing
    for delta1 and is left out of rmse.
    """
    p, g, valid = _pair(pred, gt, mask)
    _need(valid)
    p, g = p[valid], g[valid]
    with np.errstate(invalid='ignore', divide='ignore'):
        ok = np.isfinite(p) & (p > 0)
        rel = np.where(ok, np.abs(p - g) / g, 1.0)
        ratio = np.where(ok, np.maximum(p / g, g / p), np.inf)
    err2 = (p[ok] - g[ok]) ** 2
    return {'abs_rel': float(rel.mean()),
            'rmse': float(np.sqrt(err2.mean())) if err2.size else float('nan'),
            'delta1': float((ratio < DELTA1).mean()),
            'n': int(g.size), 'pred_valid': float(ok.mean())}


def align_affine(pred: np.ndarray, gt: np.ndarray, mask: Optional[np.ndarray] = None,
                 space: str = 'depth') -> Tuple[np.ndarray, float, float]:
    """
    Least-squares scale and shift of ``pred`` against ``gt`` on valid ground truth.

    :param space: 'depth' fits ``s * pred + t ~ gt`` and returns that depth; 'disparity' fits
        ``s * pred + t ~ 1 / gt`` and returns the aligned disparity ``s * pred + t`` (convert
        with 1 / x, as ``evaluate_affine_invariant`` does).
    :returns: (aligned prediction in ``space``, scale, shift).
    """
    if space not in SPACES:
        raise ValueError('`space` must be one of {}, got {!r}'.format(SPACES, space))
    p, g, valid = _pair(pred, gt, mask)
    valid &= np.isfinite(p)
    _need(valid)
    target = g[valid] if space == 'depth' else 1.0 / g[valid]
    x = p[valid]
    a = np.stack([x, np.ones_like(x)], axis=1)
    (s, t), _, rank, _ = np.linalg.lstsq(a, target, rcond=None)
    if rank < 2:
        raise ValueError('`pred` is constant on the valid pixels; scale and shift are '
                         'undetermined')
    return s * p + t, float(s), float(t)


def evaluate_affine_invariant(pred: np.ndarray, gt: np.ndarray,
                              mask: Optional[np.ndarray] = None, space: str = 'depth',
                              min_depth: float = 1e-3,
                              max_depth: Optional[float] = None) -> Dict[str, float]:
    """
    Align ``pred`` to ``gt`` (see ``align_affine``), clip to [min_depth, max_depth], score.

    As in the papers' code the aligned depth is clipped to the evaluation range (a disparity
    at or below 1 / max_depth becomes max_depth) before the metrics. ``max_depth`` None uses
    the largest valid ground-truth depth. An infinite ``max_depth`` (ETH3D, Middlebury, plain
    folders) leaves the far end of a depth-space result unclipped, as the Marigold code does,
    and clips a disparity-space result at 1 / (largest valid ground-truth depth). Returns the
    metrics plus ``scale`` and ``shift``.
    """
    min_depth = check_number_as('`{name}` must be a number > 0, got {value!r}', 'min_depth',
                                min_depth, low=0, low_open=True)
    p, g, valid = _pair(pred, gt, mask)
    _need(valid)
    if max_depth is None:
        max_depth = float(g[valid].max())
    if not (isinstance(max_depth, (int, float)) and max_depth > min_depth):
        raise ValueError('`max_depth` must be a number > min_depth, got {!r}'.format(max_depth))
    aligned, s, t = align_affine(pred, gt, mask, space)
    if space == 'disparity':
        far = max_depth
        if not np.isfinite(far):
            # 1 / inf = 0 would keep aligned disparities <= 0 at 0, i.e. infinite depth: a
            # 100 % error (and a divide-by-zero) for pixels a finite cap would have clipped.
            # The farthest valid ground truth is the nearest finite stand-in for "no cap".
            far = float(g[valid].max())
        disp = np.clip(aligned, 1.0 / far, 1.0 / min_depth)
        depth = 1.0 / disp
    else:
        depth = np.clip(aligned, min_depth, max_depth)
    result = compute_metrics(depth, gt, mask)
    result.update(scale=s, shift=t)
    return result


__all__ = ['DELTA1', 'SPACES', 'abs_rel', 'align_affine', 'compute_metrics', 'delta1',
           'evaluate_affine_invariant', 'rmse']

"""
Depth metrics and the affine-invariant protocol against hand and numpy.polyfit values.

Runs on Python 3.8 with numpy and pytest only.
"""
import math

from depth_ros.core.metrics import (abs_rel, align_affine, compute_metrics, delta1,
                                    evaluate_affine_invariant, rmse)
import numpy as np
import pytest


def test_metrics_by_hand():
    gt = np.array([1.0, 2.0, 4.0, 0.0, np.nan])      # last two: invalid ground truth
    pred = np.array([1.1, 1.0, 4.0, 9.0, 9.0])
    # |0.1|/1, |1|/2, 0 -> mean 0.2; squared errors 0.01, 1, 0 -> sqrt(1.01 / 3)
    assert math.isclose(abs_rel(pred, gt), 0.2, rel_tol=1e-12)
    assert math.isclose(rmse(pred, gt), math.sqrt(1.01 / 3), rel_tol=1e-12)
    # ratios 1.1, 2.0, 1.0 -> two of three below 1.25
    assert math.isclose(delta1(pred, gt), 2.0 / 3.0, rel_tol=1e-12)
    m = compute_metrics(pred, gt)
    assert m['n'] == 3 and m['pred_valid'] == 1.0


def test_delta1_boundary_is_strict_and_symmetric():
    gt = np.array([1.0, 1.0, 1.0, 1.0])
    pred = np.array([1.25, 0.8, 1.2499, 1 / 1.2499])
    assert delta1(pred, gt) == 0.5


def test_mask_and_invalid_predictions():
    gt = np.array([[1.0, 2.0], [3.0, 4.0]])
    pred = np.array([[1.0, np.nan], [3.0, -1.0]])
    m = compute_metrics(pred, gt)
    # NaN and negative predictions: 100 % error for abs_rel, misses for delta1.
    assert m['abs_rel'] == 0.5 and m['delta1'] == 0.5 and m['pred_valid'] == 0.5
    assert m['rmse'] == 0.0
    mask = np.array([[True, False], [True, False]])
    m = compute_metrics(pred, gt, mask)
    assert m['n'] == 2 and m['abs_rel'] == 0.0 and m['delta1'] == 1.0


@pytest.mark.parametrize('space', ['depth', 'disparity'])
def test_align_affine_recovers_scale_and_shift(space):
    rng = np.random.RandomState(0)
    gt = rng.uniform(1.0, 10.0, (20, 30))
    s, t = 2.5, 0.3
    target = gt if space == 'depth' else 1.0 / gt
    pred = (target - t) / s
    aligned, s_fit, t_fit = align_affine(pred, gt, space=space)
    assert math.isclose(s_fit, s, rel_tol=1e-9) and math.isclose(t_fit, t, rel_tol=1e-9)
    np.testing.assert_allclose(aligned, target, rtol=1e-9)


def test_align_affine_is_least_squares_like_polyfit():
    rng = np.random.RandomState(1)
    gt = rng.uniform(1.0, 10.0, 500)
    pred = 0.3 * gt + 1.0 + 0.2 * rng.randn(500)
    gt[::7] = np.nan                                  # invalid gt pixels are left out
    ok = np.isfinite(gt)
    for space, target in (('depth', gt[ok]), ('disparity', 1.0 / gt[ok])):
        s_ref, t_ref = np.polyfit(pred[ok], target, 1)
        _, s, t = align_affine(pred, gt, space=space)
        assert math.isclose(s, s_ref, rel_tol=1e-9), 'expected {}, received {}'.format(s_ref, s)
        assert math.isclose(t, t_ref, rel_tol=1e-9, abs_tol=1e-12)


def test_evaluate_affine_invariant_perfect_and_clipped():
    rng = np.random.RandomState(2)
    gt = rng.uniform(1.0, 10.0, (10, 10))
    rel_disp = (1.0 / gt - 0.05) / 0.2
    r = evaluate_affine_invariant(rel_disp, gt, space='disparity')
    assert r['abs_rel'] < 1e-9 and r['delta1'] == 1.0
    assert math.isclose(r['scale'], 0.2, rel_tol=1e-9)


@pytest.mark.parametrize('space', ['depth', 'disparity'])
def test_evaluate_affine_invariant_clips_then_scores_like_by_hand(space):
    rng = np.random.RandomState(3)
    gt = rng.uniform(1.0, 10.0, 400)
    pred = rng.uniform(0.0, 1.0, 400) + (gt if space == 'depth' else 1.0 / gt)
    target = gt if space == 'depth' else 1.0 / gt
    s, t = np.polyfit(pred, target, 1)
    aligned = s * pred + t
    if space == 'depth':
        depth = np.clip(aligned, 2.0, 6.0)
    else:
        depth = 1.0 / np.clip(aligned, 1.0 / 6.0, 1.0 / 2.0)
    expected_abs_rel = np.mean(np.abs(depth - gt) / gt)
    expected_d1 = np.mean(np.maximum(depth / gt, gt / depth) < 1.25)
    r = evaluate_affine_invariant(pred, gt, space=space, min_depth=2.0, max_depth=6.0)
    assert math.isclose(r['abs_rel'], expected_abs_rel, rel_tol=1e-9), (r, expected_abs_rel)
    assert math.isclose(r['delta1'], expected_d1, rel_tol=1e-12)
    assert depth.max() <= 6.0 + 1e-9 and depth.min() >= 2.0 - 1e-9


def test_disparity_with_infinite_cap_clips_at_farthest_ground_truth():
    # ETH3D, Middlebury and folders have no depth cap (max_depth=inf). Aligned disparities
    # <= 0 must become the farthest valid ground truth, not infinite depth (100 % error).
    import warnings
    rng = np.random.RandomState(5)
    gt = rng.uniform(1.0, 20.0, 300)
    gt[:3] = [30.0, 40.0, 50.0]             # far pixels; 50 m is the largest ground truth
    pred = 1.0 / gt + rng.normal(0.0, 0.01, 300)
    pred[:3] = -0.5                         # aligned disparity of these falls below 0
    mask = np.ones(300, bool)
    mask[3] = False                         # a masked pixel never sets the far clip
    gt[3] = 500.0
    # Independent path: closed-form least squares, clip by hand.
    x, y = pred[mask], 1.0 / gt[mask]
    s = np.sum((x - x.mean()) * (y - y.mean())) / np.sum((x - x.mean()) ** 2)
    t = y.mean() - s * x.mean()
    aligned = s * x + t
    assert (aligned[:3] <= 0).all(), 'test data must give disparities <= 0, got {}'.format(
        aligned[:3])
    depth = 1.0 / np.clip(aligned, 1.0 / 50.0, 1.0 / 1e-3)
    g = gt[mask]
    expected_abs_rel = np.mean(np.abs(depth - g) / g)
    expected_d1 = np.mean(np.maximum(depth / g, g / depth) < 1.25)
    with warnings.catch_warnings():
        warnings.simplefilter('error')      # no divide-by-zero RuntimeWarning
        r = evaluate_affine_invariant(pred, gt, mask, space='disparity', min_depth=1e-3,
                                      max_depth=float('inf'))
    assert r['pred_valid'] == 1.0, 'expected every prediction finite, received {}'.format(
        r['pred_valid'])
    assert math.isclose(r['abs_rel'], expected_abs_rel, rel_tol=1e-9), \
        'expected abs_rel {}, received {}'.format(expected_abs_rel, r['abs_rel'])
    assert math.isclose(r['delta1'], expected_d1, rel_tol=1e-12), (r['delta1'], expected_d1)
    # Depth space keeps no far clip with an infinite cap (Marigold's protocol): unchanged.
    r_depth = evaluate_affine_invariant(gt * 2.0 + 1.0, gt, mask, space='depth',
                                        max_depth=float('inf'))
    assert r_depth['abs_rel'] < 1e-9, r_depth


@pytest.mark.parametrize('call, message', [
    (lambda: compute_metrics(np.ones(3), np.ones(4)),
     '`pred` has shape (3,) but `gt` has shape (4,); they must match'),
    (lambda: compute_metrics(np.ones(3), np.zeros(3)),
     'no valid ground-truth pixels (finite, > 0, inside `mask`)'),
    (lambda: compute_metrics([1.0], np.ones(1)), '`pred` must be a non-empty real numpy array'),
    (lambda: compute_metrics(np.ones(3), np.ones(3), np.ones(2, bool)),
     '`mask` must be a boolean array of shape (3,)'),
    (lambda: align_affine(np.ones(3), np.ones(3), space='log'),
     "`space` must be one of ('depth', 'disparity'), got 'log'"),
    (lambda: align_affine(np.ones(3), np.arange(1.0, 4.0)),
     '`pred` is constant on the valid pixels'),
    (lambda: evaluate_affine_invariant(np.arange(3.0), np.ones(3), min_depth=0),
     '`min_depth` must be a number > 0, got 0'),
])
def test_bad_input(call, message):
    with pytest.raises(ValueError) as info:
        call()
    assert message in str(info.value), 'expected {!r} in {!r}'.format(message, str(info.value))

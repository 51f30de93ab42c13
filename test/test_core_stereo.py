"""SGBM stereo depth on analytic scenes: a textured plane shifted by a known disparity."""
from __future__ import annotations

import cv2
from depth_ros.core.camera import PinholeCamera
from depth_ros.core.stereo import (default_num_disparities, sgbm_depth,
                                   UNCONFIRMED_CONFIDENCE)
import numpy as np
import pytest

H, W = 120, 200
FX = 400.0
BASELINE = 0.12
NUM_DISP = 32
MARGIN = NUM_DISP + 8  # columns at the left edge that the right view cannot see


def _camera(width=W, height=H):
    return PinholeCamera(FX, FX, width / 2.0 - 3.0, height / 2.0 + 2.0, width, height)


def _texture(seed=0, width=W, height=H):
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, size=(height, width)).astype(np.float32)
    gray = cv2.GaussianBlur(noise, (0, 0), 1.0)
    gray = cv2.normalize(gray, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)


def _shift(image, disparity):
    """Left view of a fronto-parallel plane: left(x) = right(x - d), sub-pixel by bilinear."""
    m = np.float32([[1, 0, disparity], [0, 1, 0]])
    return cv2.warpAffine(image, m, (image.shape[1], image.shape[0]),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _interior(a):
    return a[6:-6, MARGIN:-6]


@pytest.mark.parametrize('disparity,doffs', [(12.0, 0.0), (9.5, 0.0), (12.0, 5.0)])
def test_plane_depth_matches_analytic(disparity, doffs):
    right = _texture()
    left = _shift(right, disparity)
    depth, confidence = sgbm_depth(left, right, _camera(), BASELINE, doffs=doffs,
                                   num_disparities=NUM_DISP)
    assert depth.dtype == np.float32 and depth.shape == (H, W)
    assert confidence.dtype == np.float32 and confidence.shape == (H, W)
    expected = BASELINE * FX / (disparity + doffs)
    inner = _interior(depth)
    density = np.isfinite(inner).mean()
    assert density > 0.95, 'expected density > 0.95, received {:.3f}'.format(density)
    median = float(np.nanmedian(inner))
    # Back to disparity: SGBM's sub-pixel fit is biased towards whole pixels ("pixel locking",
    # measured 1/8 px at d = 9.5), so allow 0.2 px.
    median_disp = BASELINE * FX / median - doffs
    assert abs(median_disp - disparity) <= 0.2, \
        'expected depth {:.4f} m (d={}), received median {:.4f} m (d={:.3f})'.format(
            expected, disparity, median, median_disp)
    # Nearly every pixel within 4 % (pixel locking and interpolation blur).
    close = np.mean(np.abs(inner[np.isfinite(inner)] - expected) / expected < 0.04)
    assert close > 0.95, 'expected > 95 % within 4 %, received {:.3f}'.format(close)
    reliable = np.mean(_interior(confidence) < 30)
    assert reliable > 0.85, 'expected > 85 % confident pixels, received {:.3f}'.format(reliable)


def test_confidence_range_and_invalid_pixels():
    right = _texture()
    left = _shift(right, 12.0)
    depth, confidence = sgbm_depth(left, right, _camera(), BASELINE, num_disparities=NUM_DISP)
    assert confidence.min() >= 1.0 and confidence.max() <= 100.0, \
        'expected 1..100, received {}..{}'.format(confidence.min(), confidence.max())
    invalid = ~np.isfinite(depth)
    assert invalid.any(), 'expected invalid pixels at the left border, received none'
    assert np.all(confidence[invalid] == 100.0), \
        'expected confidence 100 where depth is NaN, received {}'.format(
            np.unique(confidence[invalid]))
    # The left border (x < d) has no match in the right image.
    assert np.isnan(depth[H // 2, :8]).all(), \
        'expected NaN at the unmatched border, received {}'.format(depth[H // 2, :8])


def test_unrelated_images_are_not_confident():
    # Two independent noise images: any "match" is wrong, and the left-right check must say so.
    left, right = _texture(seed=1), _texture(seed=2)
    depth, confidence = sgbm_depth(left, right, _camera(), BASELINE, num_disparities=NUM_DISP)
    trusted = np.mean(_interior(np.isfinite(depth) & (confidence < 30)))
    assert trusted < 0.15, 'expected < 15 % trusted pixels, received {:.3f}'.format(trusted)
    plane_depth, plane_conf = sgbm_depth(_shift(right, 12.0), right, _camera(), BASELINE,
                                         num_disparities=NUM_DISP)
    plane_trusted = np.mean(_interior(np.isfinite(plane_depth) & (plane_conf < 30)))
    assert plane_trusted > trusted + 0.7, \
        'expected the true scene to be far more trusted: {:.3f} vs {:.3f}'.format(
            plane_trusted, trusted)


def test_two_planes_occlusion_is_flagged():
    # Near plane (d=24) on the right half in front of a far plane (d=8): left of the step, the
    # far plane is hidden in the right view (x - 8 falls behind the near plane at x - 24 ...).
    right = _texture(seed=3)
    far = _shift(right, 8.0)
    near = _shift(right, 24.0)
    left = far.copy()
    step = W // 2
    left[:, step:] = near[:, step:]
    depth, confidence = sgbm_depth(left, right, _camera(), BASELINE, num_disparities=NUM_DISP)
    rows = slice(10, H - 10)
    far_depth = np.nanmedian(depth[rows, MARGIN:step - 20])
    near_depth = np.nanmedian(depth[rows, step + 6:W - 6])
    for name, got, d in (('far', far_depth, 8.0), ('near', near_depth, 24.0)):
        want = BASELINE * FX / d
        assert abs(got - want) / want < 0.01, \
            'expected {} depth {:.4f}, received {:.4f}'.format(name, want, got)
    # Right view columns step-24..step-8 show the near plane; the left pixels that would match
    # there on the far plane have no consistent match: invalid or low confidence.
    band = slice(step - 14, step - 2)
    flagged = np.mean(~np.isfinite(depth[rows, band]) | (confidence[rows, band] >= 30))
    assert flagged > 0.8, 'expected > 80 % flagged in the occluded band, received {:.3f}'.format(
        flagged)


def test_max_lr_diff_none_keeps_more_matches():
    left, right = _texture(seed=1), _texture(seed=2)
    strict, _ = sgbm_depth(left, right, _camera(), BASELINE, num_disparities=NUM_DISP)
    loose, conf = sgbm_depth(left, right, _camera(), BASELINE, num_disparities=NUM_DISP,
                             max_lr_diff=None)
    n_strict, n_loose = int(np.isfinite(strict).sum()), int(np.isfinite(loose).sum())
    assert n_loose > n_strict, 'expected more valid pixels without the check: {} vs {}'.format(
        n_loose, n_strict)
    kept = np.isfinite(loose) & ~np.isfinite(strict)
    assert np.all(conf[kept] >= UNCONFIRMED_CONFIDENCE), \
        'expected the extra matches flagged, received min {}'.format(conf[kept].min())


def test_default_num_disparities():
    for width, want in ((1280, 160), (741, 96), (672, 96), (64, 16), (1, 16)):
        got = default_num_disparities(width)
        assert got == want, 'width {}: expected {}, received {}'.format(width, want, got)


@pytest.mark.parametrize('kwargs,message', [
    (dict(baseline_m=0.0), '`baseline_m` must be a finite number > 0, got 0.0'),
    (dict(baseline_m=float('nan')), '`baseline_m` must be a finite number > 0, got nan'),
    (dict(num_disparities=20),
     '`num_disparities` must be an integer >= 16 and a multiple of 16, got 20'),
    (dict(block_size=4), '`block_size` must be odd, got 4'),
    (dict(doffs=float('inf')), '`doffs` must be a finite number, got inf'),
    (dict(max_lr_diff=-1.0), '`max_lr_diff` must be >= 0 or None, got -1.0'),
    (dict(lr_tolerance=0), '`lr_tolerance` must be a finite number > 0, got 0'),
])
def test_bad_parameters(kwargs, message):
    image = _texture()
    args = dict(left_bgr=image, right_bgr=image, camera=_camera(), baseline_m=BASELINE)
    args.update(kwargs)
    with pytest.raises(ValueError) as err:
        sgbm_depth(**args)
    assert str(err.value) == message, \
        'expected {!r}, received {!r}'.format(message, str(err.value))


def test_bad_images():
    image = _texture()
    with pytest.raises(ValueError, match='`right_bgr` must have dtype uint8'):
        sgbm_depth(image, image.astype(np.float32), _camera(), BASELINE)
    with pytest.raises(ValueError, match=r'`left_bgr` must be HxWx3, got array of shape'):
        sgbm_depth(image[:, :, 0], image, _camera(), BASELINE)
    with pytest.raises(ValueError) as err:
        sgbm_depth(image, image[:, :-2], _camera(), BASELINE)
    want = '`left_bgr` has size (120, 200) but `right_bgr` has size (120, 198); they must match'
    assert str(err.value) == want, 'expected {!r}, received {!r}'.format(want, str(err.value))
    with pytest.raises(ValueError) as err:
        sgbm_depth(image, image, _camera(100, 60), BASELINE)
    want = '`camera` is for 100x60 but the images are 200x120'
    assert str(err.value) == want, 'expected {!r}, received {!r}'.format(want, str(err.value))


@pytest.mark.parametrize('width', [1, 16, 17])
def test_images_narrower_than_the_search_range_are_refused_not_crashing(width):
    # OpenCV 4.5.4 (JetPack 5) ends the whole process with std::terminate on these.
    from depth_ros.core.camera import PinholeCamera
    from depth_ros.core.stereo import sgbm_depth
    img = np.zeros((4, width, 3), np.uint8)
    cam = PinholeCamera(10.0, 10.0, width / 2.0, 2.0, width, 4)
    with pytest.raises(ValueError, match='px wide but `num_disparities` 16'):
        sgbm_depth(img, img, cam, 0.1, num_disparities=16, min_disparity=1)


def test_both_views_on_two_threads_give_the_serial_result_and_errors(monkeypatch):
    """sgbm_depth's views run concurrently: the same disparities as one after the other."""
    import depth_ros.core.stereo as stereo

    right = _texture(3)
    left = _shift(right, 11.0)
    gl, gr = (cv2.cvtColor(v, cv2.COLOR_BGR2GRAY) for v in (left, right))
    opts = dict(num_disparities=NUM_DISP, min_disparity=0, block_size=5, uniqueness_ratio=10)
    got_left, got_right = stereo._both_views(gl, gr, opts)
    want_left = stereo.sgbm_disparity(gl, gr, **opts)
    want_right = stereo.sgbm_disparity(gl, gr, right_view=True, **opts)
    np.testing.assert_array_equal(got_left, want_left)
    np.testing.assert_array_equal(got_right, want_right)
    assert np.isfinite(got_right).mean() > 0.5     # a real right view, not the left one
    assert not np.array_equal(np.isnan(got_left), np.isnan(got_right))
    # An error on the right view's thread reaches the caller, after both threads are done.
    done = []
    real = stereo.sgbm_disparity

    def failing(a, b, right_view=False, **kw):
        if right_view:
            raise ValueError('right view failed')
        done.append(real(a, b, **kw))
        return done[-1]

    monkeypatch.setattr(stereo, 'sgbm_disparity', failing)
    with pytest.raises(ValueError, match='right view failed'):
        stereo._both_views(gl, gr, opts)
    assert len(done) == 1

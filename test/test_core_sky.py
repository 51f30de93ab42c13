"""
The sky's patches, the uncertainty's calibration and the aligner's numeric helpers.

The sky's patches of core/sky.py and MetricAligner step 9, the reported sigma's calibration,
and the small helpers of the aligner, against independent computations.

Runs on Python 3.8 with numpy, OpenCV and pytest only.
"""
from depth_ros.core import alignment
from depth_ros.core.alignment import MetricAligner, SIGMA_CALIBRATION
from depth_ros.core.sky import COLOUR_TOLERANCE, sky_patches
import numpy as np
import pytest

SKY_BGR = np.array([200.0, 170.0, 130.0])
FAR_INV = 1.0 / 20.0


def grid_scene():
    """
    Make a 40 x 60 grid: sky (rows 0-14) with a patch, a far building, a sky-coloured sign.

    Returns mono [40, 60] float32 (0 sky), too_far uint8, image uint8, and the regions.
    """
    h, w = 40, 60
    mono = np.full((h, w), 0.2, np.float32)              # the ground, 5 m
    too_far = np.zeros((h, w), np.uint8)
    img = np.zeros((h, w, 3), np.float32) + (90.0, 100.0, 95.0)
    rows = np.arange(h, dtype=np.float32)[:, None]
    sky = (slice(0, 15), slice(None))
    mono[sky] = 0.0
    too_far[sky] = 255
    img[sky] = SKY_BGR * (0.9 + 0.1 * rows[sky[0]] / 15.0)[:, :, None]  # brighter downward
    patch = (slice(3, 9), slice(20, 31))                  # finite sky, 60 m
    mono[patch] = 1.0 / 60.0
    building = (slice(8, 15), slice(40, 52))              # 30 m, grey, below the sky's edge
    mono[building] = 1.0 / 30.0
    img[building] = (100.0, 100.0, 100.0)
    sign = (slice(25, 30), slice(5, 11))                  # sky-coloured, 40 m, in the ground
    mono[sign] = 1.0 / 40.0
    too_far[sign] = 255
    img[sign] = SKY_BGR
    near_sky = (slice(10, 14), slice(2, 6))               # sky-coloured, stereo +inf, 10 m
    mono[near_sky] = 0.1
    return mono, too_far, img.astype(np.uint8), dict(sky=sky, patch=patch, building=building,
                                                     sign=sign, near=near_sky)


def test_sky_patches_take_the_far_sky_coloured_pixels_connected_to_the_sky():
    mono, too_far, img, r = grid_scene()
    found = sky_patches(mono, too_far, img, FAR_INV)
    assert found is not None and found.dtype == np.uint8
    assert found[r['patch']].all(), 'the finite patch of the sky'
    assert not found[r['building']].any(), 'a grey far building is not the sky'
    assert not found[r['sign']].any(), 'sky-coloured but not connected to the sky'
    assert not found[r['near']].any(), 'within the stereo range: never the sky'
    ground = np.zeros(mono.shape, bool)
    ground[15:] = True
    assert not found[ground].any()
    # The sky's blocks around a patch (its blurred rim), not the sky far from it.
    assert found[2, 25] and found[9, 19]
    assert not found[0, 0] and not found[12, 55]


def test_sky_patches_need_the_colour_the_too_far_stereo_and_a_sky():
    mono, too_far, img, r = grid_scene()
    off = img.copy()
    off[r['patch']] = np.clip(0.9 * SKY_BGR - 2 * COLOUR_TOLERANCE, 0, 255)
    assert sky_patches(mono, too_far, off, FAR_INV) is None
    seen = too_far.copy()
    seen[r['patch']] = 0                        # the stereo measured it: not "too far"
    assert sky_patches(mono, seen, img, FAR_INV) is None
    no_sky = np.where(mono == 0, np.float32(0.01), mono)
    assert sky_patches(no_sky, too_far, img, FAR_INV) is None
    unknown = mono.copy()
    unknown[r['patch']] = np.nan
    assert sky_patches(unknown, too_far, img, FAR_INV) is None


def aligner_frame(h=96, w=160):
    """Make ground to 18 m, sky with a finite patch in the network, a pole before the sky."""
    v = np.arange(h, dtype=np.float64)[:, None] + np.zeros((1, w))
    z = np.where(v > 0.4 * h, 100.0 / np.maximum(v - 0.4 * h, 1e-3), np.inf)
    z = np.minimum(z, 18.0)
    z[:int(0.4 * h)] = np.inf
    pole = (slice(10, int(0.4 * h)), slice(120, 126))
    z[pole] = 8.0
    inv_true = np.where(np.isfinite(z), 1.0 / z, 0.0)
    rel = inv_true.copy()
    patch = (slice(8, 26), slice(30, 90))
    rel[patch] = 1.0 / 60.0                      # the network's finite sky
    rel = (20.0 * rel + 0.01).astype(np.float32)
    stereo = np.where(np.isfinite(z), z, np.inf).astype(np.float32)
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = (90, 100, 95)
    img[:int(0.4 * h)] = SKY_BGR.astype(np.uint8)
    img[pole] = (40, 40, 45)
    return rel, stereo, img, z, patch, pole


def test_aligner_makes_the_skys_finite_patch_too_far_and_keeps_the_pole():
    rel, stereo, img, z, patch, pole = aligner_frame()
    inner = (slice(patch[0].start + 2, patch[0].stop - 2),
             slice(patch[1].start + 2, patch[1].stop - 2))
    out = MetricAligner().update(rel, stereo, guide=img, focal_px=100.0)
    assert out.status == 'ok', out.reason
    assert np.isposinf(out.depth[inner]).all(), 'the finite sky is +inf'
    assert np.isposinf(out.depth[:int(0.4 * 96)][~np.isfinite(out.depth[:38])]).all()
    np.testing.assert_allclose(out.depth[pole], 8.0, rtol=0.05)    # its stereo, not sky
    ground = np.isfinite(z) & (z < 18.0)
    assert np.isfinite(out.depth[ground]).all()
    # Without an image (or for the depth kind) there is no patch test: the phantom stays.
    plain = MetricAligner().update(rel, stereo, focal_px=100.0)
    assert np.isfinite(plain.depth[inner]).all()
    assert np.median(plain.depth[inner]) > 20.0


def test_reported_sigma_is_the_model_sigma_times_the_calibration():
    # Correction and fusion off: the mono's variance is (rho_pre y)^2 everywhere, so the
    # reported sigma is SIGMA_CALIBRATION rho_pre z on every known pixel.
    z = np.full((60, 80), 5.0)
    z[:, 40:] = 2.0
    rng = np.random.RandomState(2)
    rel = (1.0 / z).astype(np.float32)
    st = (z * (1.0 + 0.02 * rng.randn(60, 80))).astype(np.float32)
    al = MetricAligner(correction_radius_px=0, fuse_stereo=False)
    out = al.update(rel, st, focal_px=200.0)
    ratio = out.uncertainty / out.depth
    np.testing.assert_allclose(ratio[5:-5, 5:35], SIGMA_CALIBRATION * al.rho_pre, rtol=1e-3)
    np.testing.assert_allclose(ratio[5:-5, 45:-5], SIGMA_CALIBRATION * al.rho_pre, rtol=1e-3)
    assert SIGMA_CALIBRATION == pytest.approx(1.16)


@pytest.mark.parametrize('n', [1, 2, 3, 7, 100, 101, 4096])
def test_percentile_99_is_numpys(n):
    x = np.random.RandomState(n).rand(n)
    assert alignment._percentile_99(x) == pytest.approx(np.percentile(x, 99.0), abs=1e-12)


@pytest.mark.parametrize('cols', [1, 2, 5, 6, 301])
def test_row_medians_are_numpys(cols):
    x = np.random.RandomState(cols).rand(6, cols)
    np.testing.assert_allclose(alignment._row_medians(x), np.median(x, axis=1))


def test_noise_regression_recovers_beta_and_rho():
    # var(u) = beta a + rho^2 with beta = 1.5, rho = 0.04, over a range of stereo variances.
    rng = np.random.RandomState(9)
    a = np.repeat(np.logspace(-4.0, -1.0, 6), 1000)     # six levels of stereo noise
    u = rng.randn(a.size) * np.sqrt(1.5 * a + 0.04 ** 2)
    beta, rho2 = alignment._noise_regression(u, a)
    assert beta == pytest.approx(1.5, rel=0.1)
    assert np.sqrt(rho2) == pytest.approx(0.04, rel=0.15)

"""
The ground plane and its horizon (core/ground.py), and the sky rule held above it (MetricAligner).

Synthetic views of a flat ground from a camera of known height, pitch and roll: the plane's
height, tilt and horizon are checked against the geometry; the aligner's sky rule against a
far ground that a network compresses toward the sky's value. Runs on Python 3.8 with numpy,
OpenCV and pytest only.
"""
from depth_ros.core.alignment import MetricAligner
from depth_ros.core.camera import PinholeCamera
from depth_ros.core.ground import fit_ground, MAX_TILT_DEG, sky_rows
import numpy as np
import pytest

W, H = 640, 360
CAM = PinholeCamera(500.0, 500.0, 319.5, 179.5, W, H)
HEIGHT = 1.4                  # camera above the ground (m)
S_TRUE, T_TRUE = 0.5, 0.01    # near range: 1/depth = S * relative + T


def rotation(pitch_deg, roll_deg):
    """Return the world-from-camera matrix (y down): roll about the optical axis, pitch down."""
    p, r = np.radians(pitch_deg), np.radians(roll_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(p), np.sin(p)], [0, -np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rx.dot(rz)


def ground_depth(pitch_deg=0.0, roll_deg=0.0, cam=CAM, height=HEIGHT):
    """Depth (camera z, m) of the ground per pixel, +inf where the ray misses it (sky)."""
    u = (np.arange(cam.width) - cam.cx) / cam.fx
    v = (np.arange(cam.height) - cam.cy) / cam.fy
    rays = np.stack([np.broadcast_to(u[None, :], (cam.height, cam.width)),
                     np.broadcast_to(v[:, None], (cam.height, cam.width)),
                     np.ones((cam.height, cam.width))], -1)      # z = 1: t is the depth
    down = rays.dot(rotation(pitch_deg, roll_deg).T)[..., 1]    # world y of each ray
    with np.errstate(divide='ignore'):
        return np.where(down > 0, height / down, np.inf)


def stereo_of(z, seed=0, noise=0.01, outliers=0.05):
    """ZED-like stereo: noisy to 20 m, +inf beyond and on the sky, a few gross outliers."""
    rng = np.random.RandomState(seed)
    st = z * (1.0 + noise * rng.randn(*z.shape))
    st[z > 20.0] = np.inf
    bad = rng.rand(*z.shape) < outliers
    st[bad] = rng.uniform(0.5, 15.0, int(bad.sum()))
    return st.astype(np.float32)


def relative_of(z):
    """Return the network's map: exact affine in inverse depth, the sky 0."""
    return np.where(np.isfinite(z), (1.0 / z - T_TRUE) / S_TRUE, 0.0).astype(np.float32)


def lattice_samples(z, st, step=8):
    """Return the trusted stereo on a lattice, as the aligner samples it: u, v, 1/z, size."""
    v, u = np.mgrid[step // 2:z.shape[0]:step, step // 2:z.shape[1]:step]
    d = st[v, u].astype(np.float64)
    ok = np.isfinite(d) & (d > 0.3) & (d < 20.0)
    return u[ok].astype(np.float64), v[ok].astype(np.float64), 1.0 / d[ok], v.size


# ---------------------------------------------------------------------------- the plane


@pytest.mark.parametrize('pitch, roll', [(0.0, 0.0), (4.0, 0.0), (-3.0, 6.0), (10.0, -8.0)])
def test_fits_the_ground_height_tilt_and_horizon_of_the_geometry(pitch, roll):
    z = ground_depth(pitch, roll)
    u, v, y, n = lattice_samples(z, stereo_of(z))
    g = fit_ground(u, v, y, 3 * 0.003 + 0.03 * y, n, CAM.fx, CAM.fy, CAM.cx, CAM.cy)
    assert g is not None
    assert abs(g.height_m - HEIGHT) < 0.02 * HEIGHT, g
    tilt = np.degrees(np.arccos(np.cos(np.radians(pitch)) * np.cos(np.radians(roll))))
    assert abs(g.tilt_deg - tilt) < 0.3, (g.tilt_deg, tilt)
    # The horizon: rays with no downward world component, found from the rotation.
    cols = np.array([0.0, CAM.cx, W - 1.0])
    r = rotation(pitch, roll)
    # (R ((u - cx)/fx, (v - cy)/fy, 1))_y = 0, solved for v per column.
    want = CAM.cy - CAM.fy * (r[1, 0] * (cols - CAM.cx) / CAM.fx + r[1, 2]) / r[1, 1]
    np.testing.assert_allclose(sky_rows(g, 0.0, cols, CAM.fx, CAM.fy, CAM.cx, CAM.cy), want,
                               atol=1.0)
    # With a margin the line moves down by about that angle (fy tan(margin) rows near the
    # centre, for a small tilt).
    if abs(roll) < 1.0 and abs(pitch) < 5.0:
        below = sky_rows(g, 1.0, cols[1:2], CAM.fx, CAM.fy, CAM.cx, CAM.cy)[0] - \
            sky_rows(g, 0.0, cols[1:2], CAM.fx, CAM.fy, CAM.cx, CAM.cy)[0]
        assert abs(below - CAM.fy * np.tan(np.radians(1.0))) < 0.3, below


def test_a_wall_a_ceiling_or_a_steep_slope_is_not_ground():
    # A wall facing the camera: constant inverse depth, no horizon.
    z = np.full((H, W), 5.0)
    u, v, y, n = lattice_samples(z, stereo_of(z))
    assert fit_ground(u, v, y, 0.01, n, CAM.fx, CAM.fy, CAM.cx, CAM.cy) is None
    # A ceiling 1 m above the camera: a plane, its normal pointing down.
    z = ground_depth(0.0, 180.0, height=1.0)      # the ground seen upside down
    assert (np.isinf(z[int(CAM.cy) + 1:])).all() and np.isfinite(z[:int(CAM.cy)]).all()
    u, v, y, n = lattice_samples(z, stereo_of(z))
    assert fit_ground(u, v, y, 0.01 + 0.03 * y, n, CAM.fx, CAM.fy, CAM.cx, CAM.cy) is None
    # The ground seen from a camera pitched down more than the tilt allowed.
    z = ground_depth(MAX_TILT_DEG + 5.0, 0.0)
    u, v, y, n = lattice_samples(z, stereo_of(z))
    assert fit_ground(u, v, y, 0.01 + 0.03 * y, n, CAM.fx, CAM.fy, CAM.cx, CAM.cy) is None
    z = ground_depth(MAX_TILT_DEG - 5.0, 0.0)
    u, v, y, n = lattice_samples(z, stereo_of(z))
    assert fit_ground(u, v, y, 0.01 + 0.03 * y, n, CAM.fx, CAM.fy, CAM.cx, CAM.cy) is not None


def test_too_little_ground_is_no_ground():
    z = ground_depth(2.0, 0.0)
    u, v, y, n = lattice_samples(z, stereo_of(z, outliers=0.0))
    keep = np.arange(u.size) < 0.04 * n           # fewer than MIN_FRACTION of the lattice
    assert fit_ground(u[keep], v[keep], y[keep], 0.01 + 0.03 * y[keep], n, CAM.fx, CAM.fy,
                      CAM.cx, CAM.cy) is None
    assert fit_ground(u, v, y, 0.01 + 0.03 * y, n, CAM.fx, CAM.fy, CAM.cx, CAM.cy) is not None


# ---------------------------------------------------------------------------- the sky rule


@pytest.mark.parametrize('pitch, roll, half', [(0.0, 0.0, False), (2.0, 3.0, False),
                                               (1.0, -2.0, True)])
def test_far_ground_below_the_horizon_keeps_its_depth_the_sky_stays_inf(pitch, roll, half):
    z = ground_depth(pitch, roll)
    rel, st = relative_of(z), stereo_of(z)
    if half:          # the network's map at half the stereo size (resized by the aligner)
        rel = np.ascontiguousarray(rel[::2, ::2])
    # The sky would be a finite 1/T = 100 m without the rule: max_output_depth is far.
    opts = dict(max_output_depth=1000.0, sky_anchor_weight=0.0)
    on = MetricAligner(sky_horizon=True, sky_horizon_margin_deg=0.5, **opts).update(
        rel, st, camera=CAM).depth
    off = MetricAligner(sky_horizon=False, **opts).update(rel, st, camera=CAM).depth
    sky, ground = np.isinf(z), np.isfinite(z)
    # The sky, above the horizon, is +inf either way (the rule holds there).
    edge = 2 if half else 1      # the sky rows the half-size map blends with the ground
    clear = sky & (np.cumsum(ground[::-1], 0)[::-1] == 0)
    clear[-edge:] = False
    for r in range(edge):
        clear &= np.roll(~ground, -1 - r, axis=0)
    assert np.isposinf(on[clear]).all() and np.isposinf(off[clear]).all()
    # The far ground the network compressed toward the sky's value: +inf without the
    # horizon, its depth with it (below the margin: more than 0.5 degree under the horizon).
    margin_z = HEIGHT / np.tan(np.radians(0.5))
    far = ground & (z > 60.0) & (z < 0.8 * margin_z)
    taken = far & np.isposinf(off)
    assert taken.sum() > 0.5 * far.sum() > 100, (taken.sum(), far.sum())
    assert np.isfinite(on[taken]).all()
    err = np.abs(on[taken] - z[taken]) / z[taken]
    assert np.median(err) < (0.1 if half else 0.03), np.median(err)
    # Nearer ground: the same with and without.
    near = ground & (z < 40.0)
    np.testing.assert_allclose(on[near], off[near], rtol=1e-5)


def test_far_ground_is_not_taken_as_sky_for_the_anchor():
    # The sky anchor (the median relative value of the lattice's sky samples, at inverse
    # depth 0 in the fit) counts only samples above the horizon: a far ground below it, that
    # the network compressed toward the sky's value, no longer pulls it.
    z = ground_depth(18.0, 0.0)            # pitched down: little sky, more far ground
    rel, st = relative_of(z), stereo_of(z, noise=0.02)
    sky_rel = -T_TRUE / S_TRUE             # the sky at inverse depth 0 exactly
    far = np.isfinite(z) & (z > 25.0)
    rel[far] = (sky_rel + 0.1 * (1.0 / z[far] - T_TRUE) / S_TRUE).astype(np.float32)
    rel[np.isinf(z)] = sky_rel
    anchors = []
    for horizon in (True, False):
        al = MetricAligner(sky_horizon=horizon)
        assert al.update(rel, st, camera=CAM).anchored
        prepared = al.prepare(st, camera=CAM)         # the lattice's samples of that frame
        anchors.append(al._samples(rel, prepared, prepared.sigma_inv).sky_r)
    assert anchors[0] == pytest.approx(sky_rel, abs=1e-7)
    assert anchors[1] > sky_rel + 2e-4, anchors       # the far ground's values pulled it


def test_without_ground_or_camera_the_output_is_the_rule_everywhere():
    # A wall at 6 m, a box, the sky on top: no ground plane.
    z = np.full((H, W), 6.0)
    z[150:260, 200:360] = 2.5
    z[:90] = np.inf
    rng = np.random.RandomState(3)
    rel = relative_of(z)
    rel[:90] = rng.uniform(0.0, 0.002, (90, W)).astype(np.float32)
    st = stereo_of(z)
    guide = np.full((H, W, 3), 120, np.uint8)
    for camera in (CAM, None):
        base = MetricAligner(sky_horizon=False).update(rel, st, guide=guide, camera=camera)
        out = MetricAligner(sky_horizon=True).update(rel, st, guide=guide, camera=camera)
        np.testing.assert_array_equal(out.depth, base.depth)
        np.testing.assert_array_equal(out.uncertainty, base.uncertainty)
        assert np.isposinf(base.depth[:80]).all()
    # The ground scene without a camera: no intrinsics, no plane: the rule everywhere.
    zg = ground_depth(0.0, 0.0)
    a = MetricAligner(sky_horizon=True).update(relative_of(zg), stereo_of(zg))
    b = MetricAligner(sky_horizon=False).update(relative_of(zg), stereo_of(zg))
    np.testing.assert_array_equal(a.depth, b.depth)


@pytest.mark.parametrize('kwargs, message', [
    (dict(sky_horizon_margin_deg=-0.5), 'option `sky_horizon_margin_deg` must be a finite '
                                        'number in [0.0, 45.0], got -0.5'),
    (dict(sky_horizon_margin_deg=float('nan')), 'option `sky_horizon_margin_deg` must be a '
                                                'finite number in [0.0, 45.0], got nan'),
    (dict(sky_horizon=1), 'option `sky_horizon` must be a bool, got 1'),
])
def test_bad_horizon_options_raise_naming_option_and_value(kwargs, message):
    with pytest.raises(ValueError) as info:
        MetricAligner(**kwargs)
    assert str(info.value) == message

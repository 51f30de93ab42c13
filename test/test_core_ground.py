"""
The ground plane and its horizon (core/ground.py), the sky rule held above it and the ground bound.

Synthetic views of a flat ground from a camera of known height, pitch and roll: the plane's
height, tilt and horizon are checked against the geometry; the aligner's sky rule against a
far ground that a network compresses toward the sky's value; the ground bound (MetricAligner
step 12) against a far range the network puts too far, with the plane's depth per pixel from
the geometry. Runs on Python 3.8 with numpy, OpenCV and pytest only.
"""
import types

import cv2
from depth_ros.core import alignment
from depth_ros.core.alignment import MetricAligner, SIGMA_CALIBRATION
from depth_ros.core.camera import PinholeCamera
from depth_ros.core.ground import _lowest_contacts, CONTACT_GAP, CONTACT_SIGMA_ROWS, fit_ground, \
    MAX_TILT_DEG, sky_rows
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


# ---------------------------------------------------------------------------- the ground bound

FAR_M = 25.0          # beyond it the network below puts everything 30 % too far


def overestimating_relative(z, factor=1.3, shift=-0.02):
    """
    Return the network's map: affine in inverse depth to FAR_M, beyond it depth x ``factor``.

    The sky is 0. A negative shift keeps the far range above the sky rule's threshold (2 % of
    the 99th percentile): not sky-like, as the network's far road mostly is.
    """
    zz = np.where(z > FAR_M, z * factor, z)
    with np.errstate(divide='ignore'):
        return np.where(np.isfinite(zz), (1.0 / zz - shift) / S_TRUE, 0.0).astype(np.float32)


def bound_scene(pitch=1.0, roll=-2.0):
    """Ground, sky, and a box standing on the ground 30 m ahead (its face at 30 m)."""
    z = ground_depth(pitch, roll)
    rows = np.arange(H)[:, None]
    box = (np.arange(W)[None, :] >= 100) & (np.arange(W)[None, :] < 200) & (rows >= 150) & \
        ~(z < 30.0)                       # in front of the far ground and of the sky
    assert box.sum() > 2000
    z[box] = 30.0
    return z, box


@pytest.mark.parametrize('pitch, roll, half', [(1.0, -2.0, False), (-1.5, 3.0, True)])
def test_the_ground_bound_brings_a_far_overestimate_to_the_plane(pitch, roll, half):
    z, box = bound_scene(pitch, roll)
    plane_z = ground_depth(pitch, roll)              # the plane's depth, from the geometry
    rel = overestimating_relative(z)
    rel[box] = overestimating_relative(z, 1.0)[box]  # the box: exact (in front of the plane)
    if half:
        rel = np.ascontiguousarray(rel[::2, ::2])
    st = stereo_of(z)
    # The bound alone (the box stands on the ground: the contact would set it).
    opts = dict(sky_anchor_weight=0.0, ground_bound_margin=0.05, ground_contact=False)
    on = MetricAligner(ground_bound=True, **opts).update(rel, st, camera=CAM)
    off = MetricAligner(ground_bound=False, **opts).update(rel, st, camera=CAM)
    ground = np.isfinite(plane_z) & ~box
    # Inside the band (the plane from 20 m to max_output_depth / 1.05), away from the box's
    # edges (the half-size map blends them): at the plane's depth x 1.05, where the network
    # put them 30 % too far (or beyond 100 m: +inf).
    near_box = cv2.dilate(box.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    band = ground & ~near_box & (plane_z > FAR_M + 2.0) & (plane_z < 90.0)
    assert band.sum() > 2000, band.sum()
    ratio = on.depth[band] / (plane_z[band] * 1.05)
    assert np.isfinite(ratio).all()
    assert np.median(np.abs(ratio - 1.0)) < 0.01 and np.percentile(np.abs(ratio - 1), 99) < 0.03
    off_ratio = off.depth[band] / plane_z[band]
    assert np.median(off_ratio[np.isfinite(off_ratio)]) > 1.2        # what it fixed
    # Nearer than the band (the stereo's reach), the box in front of the plane, and the sky
    # above the horizon: the same with and without.
    near = ground & (plane_z < 19.0)
    np.testing.assert_array_equal(on.depth[near], off.depth[near])
    inner_box = cv2.erode(box.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    np.testing.assert_array_equal(on.depth[inner_box], off.depth[inner_box])
    assert np.median(np.abs(on.depth[inner_box] / 30.0 - 1.0)) < 0.03
    sky = np.isinf(z)
    np.testing.assert_array_equal(on.depth[sky], off.depth[sky])
    assert np.isposinf(on.depth[sky]).mean() > 0.99
    # A bounded pixel's 1 sigma: at least the plane's, the margin of its depth.
    unc = on.uncertainty[band] / on.depth[band]
    assert np.isfinite(unc).all() and (unc >= 0.05 / 1.05 * 0.999).all()


def test_the_ground_bound_leaves_a_sky_like_crest_and_unknown_pixels_alone():
    # Below the horizon, past a crest, the sky: the network's sky value (relative 0, sky-like)
    # is left as without the bound; an unknown relative value (NaN) stays unknown.
    z, _ = bound_scene(0.0, 0.0)
    plane_z = ground_depth(0.0, 0.0)
    rel = overestimating_relative(z)
    crest = np.isfinite(plane_z) & (plane_z > 40.0) & (plane_z < 80.0)
    crest[:, :W // 2] = False
    rel[crest] = 0.0
    unknown = np.isfinite(plane_z) & (plane_z > 40.0) & (plane_z < 80.0)
    unknown[:, W // 2 + 40:] = False
    unknown[:, :W // 2 - 80] = False
    rel[unknown & ~crest] = np.nan
    st = stereo_of(z)
    out = MetricAligner(sky_anchor_weight=0.0).update(rel, st, camera=CAM).depth
    off = MetricAligner(sky_anchor_weight=0.0, ground_bound=False).update(rel, st, camera=CAM)
    np.testing.assert_array_equal(out[crest], off.depth[crest])
    assert (out[crest] > 1.1 * plane_z[crest]).all()
    # Unknown: NaN, or the trusted stereo where it has any (its outliers here); as without.
    np.testing.assert_array_equal(out[unknown], off.depth[unknown])
    assert np.isnan(out[unknown & ~crest]).mean() > 0.9
    left = np.isfinite(plane_z) & (plane_z > 40.0) & (plane_z < 80.0)
    left[:, W // 2 - 80:] = False
    assert (out[left] <= plane_z[left] * 1.05 * 1.04).all()   # the bound (the fit: 2 %)
    assert np.median(off.depth[left] / plane_z[left]) > 1.2


@pytest.mark.parametrize('options', [dict(sky_fraction=0.0), dict(sky_horizon=False)])
def test_above_the_horizon_nothing_is_bounded_without_the_sky_rule_or_its_horizon(options):
    # The sky rule off (nothing is sky-like) or held everywhere (no horizon for it): rays above
    # the plane's horizon never meet the ground, so the bound leaves them as they are, while
    # the far ground below it is still bounded.
    z, box = bound_scene(1.0, -2.0)
    plane_z = ground_depth(1.0, -2.0)
    rel, st = overestimating_relative(z), stereo_of(z)
    opts = dict(options, sky_anchor_weight=0.0)
    on = MetricAligner(**opts).update(rel, st, camera=CAM).depth
    off = MetricAligner(ground_bound=False, **opts).update(rel, st, camera=CAM).depth
    sky = ~np.isfinite(plane_z)
    np.testing.assert_array_equal(on[sky], off[sky])
    band = np.isfinite(plane_z) & ~box & (plane_z > FAR_M + 2.0) & (plane_z < 90.0)
    assert np.median(np.abs(on[band] / (plane_z[band] * 1.05) - 1.0)) < 0.01
    assert np.median(off[band] / plane_z[band]) > 1.2


def test_without_a_plane_or_a_camera_or_switched_off_the_bound_does_nothing():
    z = ground_depth(0.5, 0.0)
    rel, st = overestimating_relative(z), stereo_of(z)
    off = MetricAligner(ground_bound=False).update(rel, st, camera=CAM).depth
    # No camera: no intrinsics, no plane.
    np.testing.assert_array_equal(MetricAligner(ground_bound=True).update(rel, st).depth,
                                  MetricAligner(ground_bound=False).update(rel, st).depth)
    # A wall with the sky above it: no ground.
    zw = np.full((H, W), 30.0)
    zw[:60] = np.inf
    stw = stereo_of(zw)
    stw[60:] = stereo_of(np.full((H, W), 12.0))[60:]       # the stereo sees the wall at 12 m
    relw = overestimating_relative(np.where(np.isfinite(zw), 12.0, np.inf))
    np.testing.assert_array_equal(
        MetricAligner(ground_bound=True).update(relw, stw, camera=CAM).depth,
        MetricAligner(ground_bound=False).update(relw, stw, camera=CAM).depth)
    # The plane is there (the sky's horizon needs it either way), the bound off: the far
    # range stays overestimated.
    far = np.isfinite(z) & (z > 30.0) & (z < 70.0)
    assert np.median(off[far] / z[far]) > 1.2


def test_a_held_frame_bounds_with_the_last_plane_until_reset():
    z = ground_depth(1.0, 1.0)
    rel, st = overestimating_relative(z), stereo_of(z)
    empty = np.full(st.shape, np.nan, np.float32)
    band = np.isfinite(z) & (z > 30.0) & (z < 80.0)
    al = MetricAligner(sky_anchor_weight=0.0)
    al.update(rel, st, camera=CAM)
    held = al.update(rel, empty, camera=CAM)
    assert held.status == 'held'
    np.testing.assert_allclose(held.depth[band], z[band] * 1.05, rtol=0.03)
    ref = MetricAligner(sky_anchor_weight=0.0, ground_bound=False)
    ref.update(rel, st, camera=CAM)
    unbounded = ref.update(rel, empty, camera=CAM).depth
    assert np.median(unbounded[band] / z[band]) > 1.2
    # After a reset there is no fit and no plane: the (empty) stereo alone.
    al.reset()
    assert al.update(rel, empty, camera=CAM).status == 'no_fit'


@pytest.mark.parametrize('kwargs, message', [
    (dict(ground_bound_margin=-0.1), 'option `ground_bound_margin` must be a finite number in '
                                     '[0.0, 1.0], got -0.1'),
    (dict(ground_bound_margin=1.5), 'option `ground_bound_margin` must be a finite number in '
                                    '[0.0, 1.0], got 1.5'),
    (dict(ground_bound_margin=float('nan')), 'option `ground_bound_margin` must be a finite '
                                             'number in [0.0, 1.0], got nan'),
    (dict(ground_bound='yes'), "option `ground_bound` must be a bool, got 'yes'"),
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


# ---------------------------------------------------------------------------- the ground contact


def standing_box(z, cols, depth, top_m=2.0, pitch=0.0, roll=0.0, bottom_m=0.0):
    """
    Put a box's face at ``depth`` (m) standing on the ground into ``z`` (in place).

    Its face covers the columns ``cols`` from its contact with the ground (the rows whose ground
    is at least ``depth`` away) up to ``top_m`` above the ground: the rays that meet the plane
    z = depth at a world height below top_m. With ``bottom_m`` > 0 its lower edge is that
    high above the ground (an overhang: the rays under it meet the ground farther away).
    Returns its mask.
    """
    plane_z = ground_depth(pitch, roll)
    u = (np.arange(W) - CAM.cx) / CAM.fx
    v = (np.arange(H) - CAM.cy) / CAM.fy
    rays = np.stack([np.broadcast_to(u[None, :], (H, W)), np.broadcast_to(v[:, None], (H, W)),
                     np.ones((H, W))], -1)
    down = rays.dot(rotation(pitch, roll).T)[..., 1] * depth      # world y below the camera
    box = (down <= HEIGHT - bottom_m) & (down >= HEIGHT - top_m) & ~(plane_z < depth)
    box[:, :cols[0]] = False
    box[:, cols[1]:] = False
    z[box] = depth
    return box


def network_of(z, boxes=(), blur=1.5):
    """
    Return a network's map, wrong as DA-V2 is.

    The far range compressed smoothly (20 % farther at 60 m), each box biased by its factor in
    inverse depth, the map blurred (Gaussian, ``blur`` px); the sky 0. ``boxes``: (mask,
    factor) pairs.
    """
    zz = z * (1.0 + 0.2 * np.clip((z - 20.0) / 40.0, 0.0, 1.0))
    with np.errstate(divide='ignore', invalid='ignore'):
        inv = np.where(np.isfinite(zz), 1.0 / zz, 0.0)
    for mask, factor in boxes:
        inv[mask] *= factor
    inv = cv2.GaussianBlur(inv.astype(np.float32), (0, 0), blur)
    rel = (inv - T_TRUE) / S_TRUE
    rel[~np.isfinite(z)] = 0.0
    return rel.astype(np.float32)


def _contact_on_and_off(z, box, bias, half):
    """Return the stereo, the aligner's output with and without the contact, the box's interior."""
    rel = network_of(z, [(box, bias)])
    if half:
        rel = np.ascontiguousarray(cv2.resize(rel, (W // 2, H // 2),
                                              interpolation=cv2.INTER_AREA))
    st = stereo_of(z)
    opts = dict(sky_anchor_weight=0.0)
    on = MetricAligner(**opts).update(rel, st, camera=CAM)
    off = MetricAligner(ground_contact=False, **opts).update(rel, st, camera=CAM)
    inner = cv2.erode(box.astype(np.uint8), np.ones((5, 9), np.uint8)) > 0
    assert inner.sum() > 300
    return st, on, off, inner


@pytest.mark.parametrize('depth, bias, pitch, roll, half', [
    (30.0, 1.0, 0.0, 0.0, False), (45.0, 1.0, 1.0, -2.0, False), (35.0, 1.0, -1.5, 3.0, True),
    (30.0, 1.15, 0.0, 0.0, False), (45.0, 0.85, 1.0, -2.0, False), (35.0, 0.9, -1.5, 3.0, True)])
def test_a_box_standing_on_the_ground_gets_the_planes_depth_at_its_contact(depth, bias, pitch,
                                                                           roll, half):
    z = ground_depth(pitch, roll)
    box = standing_box(z, (260, 380), depth, pitch=pitch, roll=roll)
    assert box.sum() > 800
    st, on, off, inner = _contact_on_and_off(z, box, bias, half)
    # The box's face takes its contact's ground depth: the geometry's (depth), where the
    # network put it 5-12 % too far. A box the network biases against the road has a step
    # at its contact, which the blur spreads over the contact's rows: the contact is then
    # found to within a part of the step (here 6-11 % for a 10-15 % bias), still nearer the
    # truth than the mono (9-32 %).
    err_on = np.abs(on.depth[inner] / depth - 1.0)
    err_off = np.abs(off.depth[inner] / depth - 1.0)
    if bias == 1.0:
        assert np.median(err_on) < 0.03 and np.percentile(err_on, 90) < 0.06, np.median(err_on)
    else:
        assert np.median(err_on) < 0.13 and np.median(err_on) < 0.75 * np.median(err_off)
    assert np.median(err_off) > 0.05
    # Its 1 sigma: the contact's, CONTACT_SIGMA_ROWS rows of the working grid (the map's own
    # rows at these sizes: 1 and 2 output rows) of the plane's slope 1 / (fy height) in
    # inverse depth, times SIGMA_CALIBRATION: sigma_z / z = sigma_y z.
    # (Not on the stereo's gross outliers in range: trusted stereo, never replaced.)
    rows = 2.0 if half else 1.0
    free = inner & ~((st >= 0.3) & (st <= 20.0))
    expect = SIGMA_CALIBRATION * CONTACT_SIGMA_ROWS * rows * on.depth[free] / (CAM.fy * HEIGHT)
    np.testing.assert_allclose(on.uncertainty[free] / on.depth[free], expect, rtol=0.02)
    # The ground itself, the sky and everything nearer than the stereo's reach: as without.
    plane_z = ground_depth(pitch, roll)
    ground = np.isfinite(plane_z) & (cv2.dilate(box.astype(np.uint8), np.ones((9, 9))) == 0)
    np.testing.assert_array_equal(on.depth[ground], off.depth[ground])
    sky = ~np.isfinite(z)
    assert np.isposinf(on.depth[sky]).mean() > 0.99


@pytest.mark.parametrize('depth, clearance, bias, pitch, roll, half', [
    (25.0, 0.5, 1.0, 0.0, 0.0, False), (28.0, 0.7, 1.1, 1.0, -2.0, False),
    (30.0, 0.4, 0.9, -1.0, 2.0, True), (26.0, 0.8, 1.0, 0.5, 0.0, True)])
def test_an_overhang_is_not_pushed_onto_the_farther_ground_under_it(depth, clearance, bias,
                                                                    pitch, roll, half):
    # A trailer's side whose lower edge is `clearance` above the road: under it the camera sees
    # the road where the ray under the edge meets it, farther than the face (here 40-60 m,
    # within max_output_depth). Its "contact" would be that farther road: the face must not
    # be set there (an obstacle pushed away); it keeps the mono's depth, as without the contact.
    z = ground_depth(pitch, roll)
    box = standing_box(z, (260, 380), depth, top_m=3.5, pitch=pitch, roll=roll,
                       bottom_m=clearance)
    assert box.sum() > 800
    under = HEIGHT * depth / (HEIGHT - clearance)                   # the road under the edge
    assert 35.0 < under < 80.0
    st, on, off, inner = _contact_on_and_off(z, box, bias, half)
    # The face keeps the depth it has without the contact (nowhere set to the road's).
    np.testing.assert_array_equal(on.depth[inner], off.depth[inner])


def test_the_contact_leaves_trusted_stereo_near_objects_and_the_sky_alone():
    # A box at 12 m (trusted stereo on it), a box at 16 m without stereo (its contact is nearer
    # than max_depth: the stereo's reach), and one at 40 m the contact sets.
    z = ground_depth(0.5, 0.0)
    near = standing_box(z, (40, 140), 12.0, pitch=0.5)
    close = standing_box(z, (480, 600), 16.0, top_m=3.0, pitch=0.5)
    far = standing_box(z, (250, 370), 40.0, pitch=0.5)
    rel = network_of(z, [(near, 1.1), (close, 0.8), (far, 1.0)])
    st = stereo_of(z)
    st[close] = np.nan
    opts = dict(sky_anchor_weight=0.0)
    on = MetricAligner(**opts).update(rel, st, camera=CAM)
    off = MetricAligner(ground_contact=False, **opts).update(rel, st, camera=CAM)
    for mask in (near, close, ~np.isfinite(z)):
        np.testing.assert_array_equal(on.depth[mask], off.depth[mask])
    assert np.isposinf(on.depth[~np.isfinite(z)]).mean() > 0.99
    inner = cv2.erode(far.astype(np.uint8), np.ones((5, 9), np.uint8)) > 0
    assert np.median(np.abs(on.depth[inner] / 40.0 - 1.0)) < 0.05
    assert np.median(np.abs(off.depth[inner] / 40.0 - 1.0)) > 0.08
    # Trusted stereo anywhere: never replaced.
    al = MetricAligner(**opts)
    st2 = stereo_of(z)
    trusted = np.isfinite(st2) & (st2 >= 0.3) & (st2 <= 20.0)
    res = al.update(rel, st2, camera=CAM)
    ref = MetricAligner(ground_contact=False, **opts).update(rel, st2, camera=CAM)
    np.testing.assert_array_equal(res.depth[trusted], ref.depth[trusted])


def test_ground_contact_needs_a_plane_and_a_camera():
    z = ground_depth(0.0, 0.0)
    box = standing_box(z, (260, 380), 35.0)
    rel, st = network_of(z, [(box, 1.0)]), stereo_of(z)
    # No camera: no plane, nothing to stand on.
    np.testing.assert_array_equal(MetricAligner().update(rel, st).depth,
                                  MetricAligner(ground_contact=False).update(rel, st).depth)
    # The ground bound off, the contact on: the plane is still fitted for it.
    out = MetricAligner(ground_bound=False, sky_anchor_weight=0.0).update(rel, st, camera=CAM)
    inner = cv2.erode(box.astype(np.uint8), np.ones((5, 9), np.uint8)) > 0
    assert np.median(np.abs(out.depth[inner] / 35.0 - 1.0)) < 0.04


def test_ground_contact_rejects_a_non_bool():
    with pytest.raises(ValueError) as err:
        MetricAligner(ground_contact='yes')
    assert str(err.value) == "option `ground_contact` must be a bool, got 'yes'"


def _lowest_contacts_by_scan(flat, grd, lo, hi):
    """Return the definition's contacts, column by column: {j: (g, f)}, the lowest of each."""
    found = {}
    for j in range(flat.shape[1]):
        for g in range(flat.shape[0] - 1, 0, -1):
            above = np.nonzero(flat[:g, j])[0]
            if not grd[g, j] or above.size == 0:
                continue
            f = above[-1]
            if g - f <= CONTACT_GAP and not grd[f:g, j].any() and lo <= f + g <= hi:
                found[j] = (g, f)
                break
    return found


@pytest.mark.parametrize('seed', range(6))
def test_the_lowest_contact_per_column_is_the_definitions(seed):
    # The grid's search (a dilation over CONTACT_GAP rows) against a direct scan of each
    # column, on random faces' and ground's rows of every density, at heights past 8 bits.
    rng = np.random.RandomState(seed)
    n, w = (40, 700)[seed % 2], 60
    p_flat, p_grd = rng.uniform(0.02, 0.5, size=2)
    flat, grd = rng.rand(n, w) < p_flat, rng.rand(n, w) < p_grd
    lo, hi = sorted(rng.randint(0, 2 * n, size=2))
    expect = _lowest_contacts_by_scan(flat, grd, lo, hi)
    assert len(expect) > 5
    got = _lowest_contacts(flat, grd, lo, hi)
    j, g, f = got
    assert got[0].dtype == np.intp
    assert dict(zip(j.tolist(), zip(g.tolist(), f.tolist()))) == expect
    assert _lowest_contacts(flat, np.zeros_like(grd), lo, hi) is None


def test_the_faces_rows_are_written_where_the_stereo_is_not_trusted(monkeypatch):
    # Each column's rows ceil(top) .. floor(bottom) take y and the contact's variance, except
    # on trusted stereo; a column whose rows are empty (ceil(top) > floor(bottom)) or without
    # a contact (NaN), and everything else, stay as they were.
    h, w = 50, 12
    nan = np.nan
    top = np.array([nan, 3.0, 2.5, 10.5, 0.0, 7.0, nan, 20.0, 40.2, 48.0, 5.0, nan])
    bottom = np.array([nan, 9.0, 9.7, 10.2, 0.9, 7.0, nan, 31.5, 49.0, 49.9, 12.0, nan])
    y = np.where(np.isfinite(top), np.linspace(0.011, 0.04, w), nan)
    sigma = 0.003
    monkeypatch.setattr(alignment, 'ground_contact', lambda *args: (top, bottom, y, sigma))
    rng = np.random.RandomState(3)
    inv = rng.uniform(0.01, 1.0, (h, w)).astype(np.float32)
    var = rng.uniform(0.0, 0.01, (h, w)).astype(np.float32)
    trust = np.where(rng.rand(h, w) < 0.2, 255, 0).astype(np.uint8)
    inv0, var0 = inv.copy(), var.copy()
    fit = types.SimpleNamespace(scale=1.0, shift=0.0)
    MetricAligner()._ground_contact(inv, var, None, None, fit, None, trust)
    expect_inv, expect_var = inv0.copy(), var0.copy()
    for c in range(w):
        if np.isfinite(y[c]):
            for v in range(int(np.ceil(top[c])), int(np.floor(bottom[c])) + 1):
                if trust[v, c] == 0:
                    expect_inv[v, c], expect_var[v, c] = y[c], sigma * sigma
    assert (expect_inv != inv0).sum() > 25
    np.testing.assert_array_equal(inv, expect_inv)
    np.testing.assert_array_equal(var, expect_var)

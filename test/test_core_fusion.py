"""
The pieces of the metric alignment, one by one.

The options dataclass, the noise-aware fusion, the local correction's range kernel, the sky
anchor, self-alignment, scene changes, edge-clean clouds.

Runs on Python 3.8 with numpy, OpenCV and pytest only.
"""
import dataclasses

import cv2
from depth_ros.core import fusion
from depth_ros.core.alignment import MetricAligner
from depth_ros.core.alignment_options import AlignerOptions, option_specs
from depth_ros.core.bilateral_correction import bilateral_nc, BilateralCorrection, push_pull
from depth_ros.core.camera import PinholeCamera
from depth_ros.core.edges import jump_mask
from depth_ros.core.fusion import Fusion, stereo_inverse_sigma, stereo_variance
from depth_ros.core.pointcloud import depth_to_cloud, EDGE_THRESHOLD
import numpy as np
import pytest

H, W = 96, 128


# ---------------------------------------------------------------------------- options

def refused_values(spec):
    """Values the spec says are out of range: just past each bound, a fraction, None."""
    if spec.choices:
        return ['not-a-choice']
    if isinstance(spec.default, bool):
        return ['yes', 1]
    step = 1 if spec.integer else 1e-6
    bad = [] if spec.allow_none else [None]
    if spec.low is not None:
        bad.append(spec.low if spec.low_open else spec.low - step)
    if spec.high is not None:
        bad.append(spec.high if spec.high_open else spec.high + step)
    if spec.integer:
        bad.append(spec.default + 0.5)
    return bad


def accepted_values(spec):
    """Values the spec says are allowed: the default, every choice, the closed bounds."""
    good = [spec.default] + list(spec.choices or [])
    if isinstance(spec.default, bool):
        good.append(not spec.default)
    good += [v for v, open_ in ((spec.low, spec.low_open), (spec.high, spec.high_open))
             if v is not None and not open_]
    return good + ([None] if spec.allow_none else [])


def test_option_specs_describe_what_the_aligner_accepts():
    # alignment_node declares its parameters from option_specs(): each spec's range, choices
    # and integer-ness must be what MetricAligner itself accepts and refuses.
    specs = option_specs()
    assert len(specs) == len(set(s.name for s in specs)) > 20
    for spec in specs:
        assert spec.description and len(spec.description.splitlines()) == 1, spec.name
        for value in accepted_values(spec):
            al = MetricAligner(**{spec.name: value})
            assert getattr(al, spec.name) == value, (spec.name, value)
        for value in refused_values(spec):
            with pytest.raises(ValueError, match='option `{}` must be'.format(spec.name)):
                MetricAligner(**{spec.name: value})
    assert MetricAligner().options == AlignerOptions(**{s.name: s.default for s in specs})
    named = {s.name: s for s in specs}
    assert named['relative_kind'].choices == ('disparity', 'depth')
    assert named['baseline_m'].default == 0.12 and named['consistency'].allow_none


def test_only_options_marked_runtime_change_while_running():
    other = {'relative_kind': 'depth', 'seed': 1}
    for spec in option_specs():
        al = MetricAligner()
        value = other.get(spec.name, next(
            (v for v in accepted_values(spec) if v != spec.default), None))
        if value is None or value == spec.default:
            continue
        if spec.runtime:
            assert getattr(al.set_options(**{spec.name: value}), spec.name) == value
        else:
            with pytest.raises(ValueError, match='cannot change while running'):
                al.set_options(**{spec.name: value})
    assert [s.name for s in option_specs() if not s.runtime] == ['relative_kind', 'seed']


def test_aligner_exposes_and_checks_its_options():
    al = MetricAligner(baseline_m=0.2, fit_samples=1024)
    assert isinstance(al.options, AlignerOptions)
    assert al.options == AlignerOptions(baseline_m=0.2, fit_samples=1024)
    assert al.baseline_m == 0.2 and al.options.fit_samples == 1024
    assert type(al.options.min_depth) is float          # ints become floats
    with pytest.raises(dataclasses.FrozenInstanceError):
        al.options.baseline_m = 1.0
    same = MetricAligner(AlignerOptions(baseline_m=0.2), fit_samples=1024)
    assert same.options == al.options
    with pytest.raises(ValueError) as info:
        MetricAligner('disparity')
    assert '`options` must be an AlignerOptions' in str(info.value)
    with pytest.raises(AttributeError):
        al.not_an_option


def test_set_options_changes_runtime_options_only():
    al = MetricAligner()
    al.update(*frame()[:2])
    new = al.set_options(outlier_sigma=3.0, correction_radius_px=16)
    assert al.options is new and new.outlier_sigma == 3.0 and al.has_fit
    with pytest.raises(ValueError) as info:
        al.set_options(relative_kind='depth')
    assert str(info.value) == ('option(s) `relative_kind` cannot change while running; '
                               'build a new MetricAligner')
    with pytest.raises(ValueError) as info:
        al.set_options(outlier_sigma=-1.0)
    assert 'option `outlier_sigma` must be a finite number > 0.0, got -1.0' == \
        str(info.value)
    with pytest.raises(ValueError, match='unknown MetricAligner option'):
        al.set_options(nope=1)
    assert al.update(*frame()[:2]).status == 'ok'        # the new shape is prepared


# ---------------------------------------------------------------------------- scenes

def true_depth(h=H, w=W):
    """Ground plane from 2 m to the horizon, a wall at 12 m, a box at 4 m, sky on top."""
    v = np.arange(h, dtype=np.float64)[:, None] + np.zeros((1, w))
    z = np.full((h, w), np.inf)
    ground = v > h * 0.45
    z[ground] = np.minimum(1.2 * 110.0 / (v[ground] - h * 0.4), 40.0)
    z[int(h * .3):int(h * .5), int(w * .1):int(w * .6)] = 12.0
    z[int(h * .5):int(h * .8), int(w * .6):int(w * .8)] = 4.0
    return z


def frame(seed=0, scale=1.0, shift=0.0, z=None, sigma_inv=0.002, outliers=0.02):
    """DA-V2-like relative map (sky 0 = its own infinity), stereo with z^2 noise < 20 m."""
    rng = np.random.RandomState(seed)
    z = true_depth() if z is None else z
    inv = np.where(np.isfinite(z), 1.0 / z, 0.0)
    rel = (20.0 * scale * inv + shift).astype(np.float32)
    with np.errstate(divide='ignore'):
        st = 1.0 / (inv + sigma_inv * rng.randn(*z.shape))
    st[~np.isfinite(z) | (z > 20.0)] = np.inf
    bad = rng.rand(*z.shape) < outliers
    st[bad] = rng.uniform(1.0, 20.0, bad.sum())
    return rel, st.astype(np.float32), z


# ---------------------------------------------------------------------------- fusion

def test_fusion_is_inverse_variance_weighting_with_a_gate():
    rng = np.random.RandomState(1)
    ym = rng.uniform(0.05, 0.5, (H, W)).astype(np.float32)
    ys = (ym * (1.0 + rng.normal(0.0, 0.02, (H, W)))).astype(np.float32)
    ys[:10] = ym[:10] * 3.0                   # gross outliers
    ys[10:20] = 0.0                           # untrusted
    vm = (0.03 * ym) ** 2                     # 3 % relative mono noise
    vs = 0.004 ** 2
    out, var = np.empty_like(ym), np.empty_like(ym)
    trusted = np.where(ys > 0, 255, 0).astype(np.uint8)
    # The variances are smooth: given at full size here (the aligner passes a quarter).
    diff = ys.copy()
    n = Fusion(H, W).fuse(ym, diff, trusted, vm.astype(np.float32), vs, 4.0, None, out, var)
    k = vm / (vm + vs)
    fused = (ys - ym) ** 2 <= 16.0 * (vm + vs)
    fused &= ys > 0
    expected = np.where(fused, ym + k * (ys - ym), ym)
    np.testing.assert_allclose(out, expected, rtol=2e-5, atol=1e-7)
    assert n == fused.sum() and not fused[:20].any()
    np.testing.assert_allclose(var, np.where(fused, vm * vs / (vm + vs), vm), rtol=1e-4)
    np.testing.assert_array_equal(diff, ys - ym)         # the stereo's plane is spent


def test_stereo_noise_model():
    assert stereo_inverse_sigma(0.3, 500.0, 0.12) == pytest.approx(0.3 / 60.0)
    assert stereo_variance(0.01, None, 1.0) == pytest.approx(1e-4)
    conf = np.array([[1.0, 50.0, 100.0]] * 8, np.float32)
    v = stereo_variance(0.01, conf, 1.0)
    np.testing.assert_allclose(v[0], (0.01 * (1.0 + (conf[0] - 1.0) / 99.0)) ** 2, rtol=1e-5)


def test_far_stereo_counts_less_than_near_stereo():
    # Stereo noise is constant in inverse depth, so relative to depth it grows with z: the
    # fused value follows near stereo more than far stereo.
    rel, st, z = frame(outliers=0.0, sigma_inv=0.004)
    kw = dict(correction_radius_px=0, consistency=None, outlier_sigma=100.0)
    out = MetricAligner(**kw).update(rel, st, focal_px=500.0).depth
    mono = MetricAligner(fuse_stereo=False, **kw).update(rel, st, focal_px=500.0).depth
    with np.errstate(invalid='ignore'):
        ok = np.isfinite(st) & np.isfinite(z) & (np.abs(st - mono) > 0.01 * z)
        pull = (out - mono) / (st - mono)                  # 1: all stereo, 0: all mono
    near = ok & (z < 3.0)
    far = ok & (z > 10.0)
    assert np.median(pull[near]) > 5.0 * np.median(pull[far]), (
        np.median(pull[near]), np.median(pull[far]))
    # And the fused depth beats the stereo where the stereo is noisy.
    err = lambda d: np.median(np.abs(d[far] - z[far]) / z[far])  # noqa: E731
    assert err(out) < 0.5 * err(st), (err(out), err(st))


# ---------------------------------------------------------------------------- correction

def test_bilateral_normalised_convolution_does_not_bleed_across_the_guide():
    p = np.ones((30, 40), np.float32)
    p[:, 20:] = 1.2                           # two surfaces, different corrections
    w = np.ones_like(p)
    w[:, 17:23] = 0.0                         # no stereo near the boundary
    guide = np.where(np.arange(40)[None, :] < 20, 0.0, 1.0).astype(np.float32) + \
        np.zeros((30, 1), np.float32)
    est, den = bilateral_nc(p, w, guide, 4, 0.1)
    assert np.allclose(est[:, 16:20], 1.0, atol=1e-3), est[0, 15:25]
    assert np.allclose(est[:, 20:24], 1.2, atol=1e-3), est[0, 15:25]
    plain, _ = bilateral_nc(p, w, np.zeros_like(guide), 4, 0.1)
    assert plain[0, 19] > 1.05 and plain[0, 20] < 1.15, 'without a guide it blends'
    assert den[:, :10].min() > den[:, 19].max()


def test_local_correction_removes_an_object_scale_bias_guided_by_the_image():
    # The box is 15 % too near in the mono; stereo sees its top half only. By depth the box
    # is like the ground around it; in the image it is darker: the guide tells them apart.
    z = true_depth()
    box = (slice(int(H * .45), int(H * .95)), slice(int(W * .3), int(W * .8)))
    hole = (slice(int(H * .7), int(H * .95)), slice(int(W * .3), int(W * .8)))
    z[box] = 4.0
    rel, st, z = frame(outliers=0.0, z=z)
    rel[box] *= 1.15
    st[hole] = np.nan
    image = np.full((H, W, 3), 180, np.uint8)
    image[box] = 60
    image[:int(H * .45)] = 230                              # sky
    errs = {}
    for name, kw, guide in (('none', dict(correction_radius_px=0), None),
                            ('mono', {}, None), ('image', {}, image)):
        out = MetricAligner(**kw).update(rel, st, focal_px=500.0, guide=guide)
        errs[name] = np.mean(np.abs(out.depth[hole] - z[hole]) / z[hole])
    assert errs['none'] > 0.1, errs
    assert errs['image'] < 0.3 * errs['none'], errs
    assert errs['mono'] < errs['none'], errs


# ---------------------------------------------------------------------------- fit

def test_sky_anchors_the_shift_and_the_far_range():
    # The mono has a warp that grows toward the bottom of the image: a fit on near stereo
    # alone extrapolates a wrong shift to the far range; the sky (DA-V2's 0) fixes it.
    rel, st, z = frame(outliers=0.0)
    v = np.linspace(0.0, 1.0, H)[:, None]
    rel = (rel * (1.0 + 0.25 * v ** 2)).astype(np.float32)
    far = np.isfinite(z) & (z > 20.0)
    errs = {}
    for weight in (0.0, 1.0):
        al = MetricAligner(sky_anchor_weight=weight, correction_radius_px=0)
        out = al.update(rel, st, focal_px=500.0)
        errs[weight] = np.median(np.abs(out.depth[far] - z[far]) / z[far])
        assert out.anchored == (weight > 0)
    assert errs[1.0] < 0.5 * errs[0.0], errs
    assert np.isposinf(out.depth[~np.isfinite(z)]).all()


def test_sky_anchor_is_dropped_when_the_stereo_contradicts_it():
    # A network whose sky is not at its own infinity (here a shift of 1): stereo wins.
    rel, st, z = frame(outliers=0.0)
    rel = rel + np.float32(1.0)
    al = MetricAligner(sky_fraction=0.1)
    out = al.update(rel, st, focal_px=500.0)
    assert not out.anchored
    near = np.isfinite(z) & (z < 10)
    assert np.median(np.abs(out.depth[near] - z[near]) / z[near]) < 0.01


def test_no_stereo_frame_is_aligned_to_the_previous_output_not_to_the_old_affine():
    al = MetricAligner()
    rel, st, z = frame()
    al.update(rel, st, focal_px=500.0)
    # The network's affine changes by 20 % and the stereo is gone for this frame.
    rel2, _, _ = frame(seed=1, scale=1.2, shift=0.05)
    empty = np.full((H, W), np.nan, np.float32)
    held = al.update(rel2, empty, focal_px=500.0)
    assert held.status == 'held' and 'previous output' in held.reason
    ok = np.isfinite(z)
    err = np.median(np.abs(held.depth[ok] - z[ok]) / z[ok])
    assert err < 0.02, err
    # Reusing the old affine would be 20 % off.
    old = MetricAligner()
    old_fit = old.update(rel, st, focal_px=500.0)
    stale = 1.0 / (old_fit.scale * rel2[ok] + old_fit.shift)
    assert np.median(np.abs(stale - z[ok]) / z[ok]) > 0.1
    assert np.mean(np.isnan(held.depth)) == 0.0


def test_a_scene_change_is_followed_at_once():
    al = MetricAligner()
    rel, st, z = frame()
    for _ in range(3):
        al.update(rel, st, focal_px=500.0)
    # Another scene: a wall 3 m away with a post at 1.5 m, no sky.
    z2 = np.full((H, W), 3.0)
    z2[:, 40:60] = 1.5
    rel2, st2, _ = frame(seed=2, z=z2)
    out = al.update(rel2, st2, focal_px=500.0)
    assert out.status == 'ok', out.reason
    assert np.median(np.abs(out.depth - z2) / z2) < 0.02


def test_the_same_scene_with_all_stereo_scaled_is_held_as_a_glitch():
    # Everything 1.6 x farther in the stereo alone (a calibration glitch) while the network
    # sees the same scene: held (aligned to the previous output) for jump_frames - 1 frames.
    al = MetricAligner(jump_frames=2)
    rel, st, z = frame()
    al.update(rel, st, focal_px=500.0)
    held = al.update(rel, st * np.float32(1.6), focal_px=500.0)
    assert held.status == 'held' and 'jumped' in held.reason
    ok = np.isfinite(z)
    assert np.median(np.abs(held.depth[ok] - z[ok]) / z[ok]) < 0.02
    assert al.update(rel, st * np.float32(1.6), focal_px=500.0).status == 'ok'


def test_camera_or_focal_length_sets_the_stereo_noise():
    rel, st, _ = frame()
    cam = PinholeCamera(500.0, 500.0, W / 2.0, H / 2.0, W, H)
    a = MetricAligner()
    a.update(rel, st, camera=cam)
    b = MetricAligner()
    b.update(rel, st, focal_px=500.0)
    assert a.sigma_inv == b.sigma_inv == pytest.approx(0.3 / (500.0 * 0.12))
    # A camera for another size is scaled to the stereo's.
    c = MetricAligner()
    c.update(rel, st, camera=cam.scaled(2 * W, 2 * H))
    assert c.sigma_inv == pytest.approx(a.sigma_inv)


@pytest.mark.parametrize('kwargs, message', [
    (dict(camera=(500.0, 500.0)), '`camera` must be a PinholeCamera, got tuple'),
    (dict(focal_px=0.0), '`focal_px` must be a finite number > 0.0, got 0.0'),
    (dict(focal_px=500.0, camera=PinholeCamera(5.0, 5.0, 1.0, 1.0, W, H)),
     'give `camera` or `focal_px`, not both'),
    (dict(guide=np.zeros((H, W, 3), np.float32)), '`guide` must have dtype uint8'),
    (dict(guide=np.zeros((H, W - 1), np.uint8)), '`guide` has size (96, 127) but '
                                                 '`stereo_depth` has size (96, 128)'),
    (dict(guide=np.zeros((H, W, 4), np.uint8)), '`guide` must be HxWx3'),
])
def test_bad_update_keywords_raise_naming_them(kwargs, message):
    rel, st, _ = frame()
    with pytest.raises(ValueError) as info:
        MetricAligner().update(rel, st, **kwargs)
    assert message in str(info.value), 'expected {!r} in {!r}'.format(message, str(info.value))


@pytest.mark.parametrize('shape', [(1, 1), (1, 2), (2, 1), (15, 40), (40, 15)])
def test_tiny_frames_raise_a_value_error(shape):
    rel = np.ones(shape, np.float32)
    with pytest.raises(ValueError) as info:
        MetricAligner().update(rel, np.ones(shape, np.float32))
    assert str(info.value) == '`stereo_depth` must be at least 16x16 pixels, got {}x{} ' \
        '(W x H)'.format(shape[1], shape[0])


@pytest.mark.parametrize('shape, rel_shape', [((16, 16), (16, 16)), ((16, 16), (4, 4)),
                                              ((16, 40), (8, 20)), ((33, 17), (33, 17))])
def test_small_frames_work(shape, rel_shape):
    import cv2
    rng = np.random.RandomState(0)
    rel = rng.uniform(0.5, 1.5, rel_shape).astype(np.float32)
    full = cv2.resize(rel, shape[::-1], interpolation=cv2.INTER_LINEAR)
    st = (1.0 / (0.5 * full + 0.02)).astype(np.float32)
    al = MetricAligner(min_valid_samples=4)
    for guide in (None, np.zeros(shape + (3,), np.uint8)):
        out = al.update(rel, st, np.full(shape, 10.0, np.float32), guide=guide)
        assert out.depth.shape == shape and out.status == "ok", out.reason


# ---------------------------------------------------------------------------- clouds

CAM = PinholeCamera(50.0, 50.0, W / 2.0, H / 2.0, W, H)


def test_cloud_edges_match_the_reference_test():
    rng = np.random.RandomState(3)
    d = (5.0 + rng.uniform(-0.3, 0.3, (H, W))).astype(np.float32)
    d[20:40, 30:60] = 2.0                                  # an object
    d[50:60, 10:20] = np.nan
    d[70:, 100:] = np.inf
    cloud = depth_to_cloud(d, CAM)
    expected = np.where(jump_mask(d, EDGE_THRESHOLD) | ~np.isfinite(d), np.nan, d)
    np.testing.assert_array_equal(cloud['z'], expected.astype(np.float32))
    assert np.isnan(cloud['z']).sum() > np.isnan(d).sum()


def test_cloud_keeps_the_near_side_of_an_edge_and_removes_a_veil():
    d = np.full((H, W), 10.0, np.float32)
    d[:, 64:] = 2.0                                        # sharp step at column 64
    sharp = depth_to_cloud(d, CAM)['z']
    assert np.isfinite(sharp[:, 64]).all(), 'the obstacle edge stays'
    assert np.isnan(sharp[:, 63]).all(), 'the background pixel next to it goes'
    assert np.isfinite(sharp[:, :63]).all() and np.isfinite(sharp[:, 65:]).all()
    # A blurred edge: a ramp of interpolated depths between 2 and 10 m, flying points.
    ramp = d.copy()
    ramp[:, 58:64] = np.linspace(10.0, 2.0, 8)[1:-1]
    z = depth_to_cloud(ramp, CAM)['z']
    assert np.isnan(z[:, 57:64]).all(), 'the veil between the surfaces goes'
    assert np.isfinite(z[:, 64:]).all()
    assert depth_to_cloud(ramp, CAM, edge_threshold=None)['z'][:, 58:64].size == 6 * H
    np.testing.assert_array_equal(depth_to_cloud(ramp, CAM, edge_threshold=0.0)['z'], ramp)
    assert ramp[0, 60] == np.float32(np.linspace(10.0, 2.0, 8)[3]), 'the depth is unchanged'


def test_cloud_edge_threshold_compounds_with_the_stride():
    # A plane at a grazing angle: 5 % per pixel, 10.25 % between points two pixels apart.
    v = np.arange(H, dtype=np.float64)[:, None] + np.zeros((1, W))
    d = (2.0 * 1.05 ** v).astype(np.float32)
    assert np.isfinite(depth_to_cloud(d, CAM, edge_threshold=0.06)['z']).all()
    assert np.isfinite(depth_to_cloud(d, CAM, stride=2, edge_threshold=0.06)['z']).all()
    assert np.isnan(depth_to_cloud(d, CAM, edge_threshold=0.04)['z'][1:]).all()


@pytest.mark.parametrize('value, message', [
    (-0.1, '`edge_threshold` must be a finite number in [0.0, 100.0], got -0.1'),
    ('0.1', "`edge_threshold` must be a finite number in [0.0, 100.0], got '0.1'"),
])
def test_bad_edge_threshold_raises(value, message):
    with pytest.raises(ValueError) as info:
        depth_to_cloud(np.ones((H, W), np.float32), CAM, edge_threshold=value)
    assert str(info.value) == message


@pytest.mark.parametrize('stride', [2, 3])
def test_strided_cloud_colours_and_depths_are_the_strided_pixels(stride):
    rng = np.random.RandomState(stride)
    d = rng.uniform(4.0, 4.2, (H + 1, W + 2)).astype(np.float32)
    bgr = rng.randint(0, 256, (H + 1, W + 2, 3)).astype(np.uint8)
    cam = PinholeCamera(50.0, 50.0, W / 2.0, H / 2.0, W + 2, H + 1)
    cloud = depth_to_cloud(d, cam, bgr=bgr, stride=stride)
    h, w = (H + 1) // stride, (W + 2) // stride
    np.testing.assert_array_equal(cloud['z'], d[:h * stride:stride, :w * stride:stride])
    packed = cloud['rgb'].copy().view('<u4')
    sub = bgr[:h * stride:stride, :w * stride:stride].astype(np.uint32)
    np.testing.assert_array_equal(packed, (sub[..., 2] << 16) | (sub[..., 1] << 8) | sub[..., 0])


def test_marigold_keyframes_get_the_same_fusion():
    # relative_kind='depth' (0 near, 1 far): the fit is in depth, everything after it (local
    # correction, fusion, self-alignment, uncertainty) is the same as for DA-V2.
    rng = np.random.RandomState(7)
    z = true_depth()
    z[~np.isfinite(z)] = 60.0                    # Marigold's far end is finite
    v = np.linspace(0.0, 1.0, H)[:, None]
    warp = 1.0 + 0.08 * np.sin(3.0 * v) + np.zeros((1, W))     # a smooth error of the mono
    rel = ((z * warp - 1.0) / 60.0).astype(np.float32)
    with np.errstate(divide='ignore'):
        st = (1.0 / (1.0 / z + 0.002 * rng.randn(H, W))).astype(np.float32)
    st[z > 20] = np.inf
    hole = (slice(int(H * .6), int(H * .75)), slice(int(W * .1), int(W * .4)))
    st[hole] = np.nan
    ok = np.isfinite(z) & (z < 20)
    errs = {}
    for radius in (0, 32):
        al = MetricAligner(relative_kind='depth', correction_radius_px=radius)
        out = al.update(rel, st, focal_px=500.0)
        assert out.status == 'ok', out.reason
        errs[radius] = np.median(np.abs(out.depth[hole] - z[hole]) / z[hole])
    assert errs[32] < 0.5 * errs[0], errs
    assert np.median(np.abs(out.depth[ok] - z[ok]) / z[ok]) < 0.01
    assert np.isfinite(out.uncertainty[ok]).all() and (out.uncertainty[ok] > 0).all()
    held = al.update(rel, np.full((H, W), np.nan, np.float32), focal_px=500.0)
    assert held.status == 'held' and 'previous output' in held.reason
    assert np.median(np.abs(held.depth[ok] - z[ok]) / z[ok]) < 0.02


# ---------------------------------------------------------------------------- edge cases

def min3(x):
    """Return the minimum of each pixel's 3 x 3 neighbourhood (within the image)."""
    h, w = x.shape
    pad = np.pad(x, 1, mode='edge')
    return np.min([pad[i:i + h, j:j + w] for i in range(3) for j in range(3)], axis=0)


def test_interior_stereo_passes_a_wider_gate_unless_the_frame_has_many_outliers():
    rng = np.random.RandomState(4)
    ym = (0.1 + 0.3 * np.linspace(0.0, 1.0, W)[None, :] + np.zeros((H, 1))).astype(np.float32)
    ys = (ym * (1.0 + rng.normal(0.0, 0.01, (H, W)))).astype(np.float32)
    obj = (slice(20, 40), slice(20, 60))
    ys[obj] *= 1.4          # an object the mono puts 40 % too far: the stereo is right there
    vm = ((0.05 * ym) ** 2).astype(np.float32)
    vs = np.full((H, W), 0.002 ** 2, np.float32)
    trusted = np.full((H, W), 255, np.uint8)
    trusted[:, :8] = 0
    # Outside the band (0.25 y + 2 sigma_s) and beyond 6 sigma: beyond the gate's bound, and
    # within four times it (twice the band, 12 sigma).
    bound = np.minimum(36.0 * (vm + vs), (0.25 * min3(ym) + 2.0 * 0.002) ** 2)
    d2 = ((ys.astype(np.float64) - ym) ** 2)[obj]
    assert (d2 > bound[obj]).all() and (d2 < 4.0 * bound[obj]).all()
    inner = fusion.interior_stereo(ys * (trusted > 0), trusted, 0.25)
    np.testing.assert_array_equal(inner > 0, min3(trusted) > 0)
    out = np.empty_like(ym)
    Fusion(H, W).fuse(ym, ys.copy(), trusted, vm, vs, 6.0, 0.25, out)
    k = vm / (vm + vs)
    np.testing.assert_allclose(out[obj], (ym + k * (ys - ym))[obj], rtol=1e-5)
    # Gross outliers in a fifth of the pixels: the interior stereo keeps the narrow gate, and
    # the object's stereo is not fused (the mono vetoes it, as without the interior rule).
    bad = rng.rand(H, W) < 0.2
    dirty = ys.copy()
    dirty[bad] = ym[bad] * rng.uniform(0.3, 3.0, bad.sum()).astype(np.float32)
    assert fusion.interior_stereo(dirty * (trusted > 0), trusted, 0.25) is None
    Fusion(H, W).fuse(ym, dirty.copy(), trusted, vm, vs, 6.0, 0.25, out)
    np.testing.assert_array_equal(out[obj][~bad[obj]], ym[obj][~bad[obj]])
    gate = (trusted > 0) & ((dirty.astype(np.float64) - ym) ** 2 < bound)
    np.testing.assert_array_equal(out != ym, gate & (dirty != ym))


def test_untrusted_stereo_is_never_fused_and_the_fusion_may_work_in_place():
    rng = np.random.RandomState(3)
    # A smooth mono (its consistency band is taken from the smallest mono nearby, on the
    # variances' grid: here the full size).
    ym = (0.05 + 0.45 * np.linspace(0.0, 1.0, W)[None, :] + np.zeros((H, 1))).astype(np.float32)
    ys = (ym * (1.0 + rng.normal(0.0, 0.03, (H, W)))).astype(np.float32)
    ys[:10] = ym[:10] * 3.0
    vm = ((0.03 * ym) ** 2).astype(np.float32)
    vs = np.full((H, W), 0.004 ** 2, np.float32)
    trusted = np.full((H, W), 255, np.uint8)
    trusted[10:20] = 0                  # consistent with the mono, but not trusted
    apart = np.empty_like(ym)
    n = Fusion(H, W).fuse(ym, ys.copy(), trusted, vm, vs, 4.0, 0.15, apart)
    np.testing.assert_array_equal(apart[10:20], ym[10:20])
    assert not np.array_equal(apart[20:], ym[20:]), 'trusted, consistent stereo is fused'
    # The gate, computed here independently: 4 combined sigmas, and at most 0.15 y + 2
    # sigma_s with y the smallest mono of the 3 x 3 neighbourhood; four times that where the
    # 3 x 3 neighbourhood is trusted (the frame has no isolated outliers: 3 % noise against
    # a band of 15 %).
    bound = np.minimum(16.0 * (vm + vs), (0.15 * min3(ym) + 2.0 * 0.004) ** 2)
    bound = np.where(min3(trusted) > 0, 4.0 * bound, bound)
    gate = (trusted > 0) & ((ys.astype(np.float64) - ym) ** 2 < bound)
    assert not gate[:20].any()              # neither the outliers nor the untrusted rows
    assert n == gate.sum() and n > 0.99 * (H - 20) * W, (n, gate.sum())
    in_place = ym.copy()
    assert Fusion(H, W).fuse(in_place, ys, trusted, vm, vs, 4.0, 0.15, in_place) == n
    np.testing.assert_array_equal(in_place, apart)


@pytest.mark.parametrize('threads', [1, 3])
@pytest.mark.parametrize('case', ['finite', 'infinite_mono', 'nan_gain', 'apart'])
def test_rows_without_trusted_stereo_are_skipped_with_the_same_result(case, threads):
    # rows=(first, end): the gate and the blend (and the bound and gain upsampled from the
    # grid) only there; the same inverse depth, variance and count as over every row, also
    # where a non-finite product would pass OpenCV's mask (the rows are then not skipped).
    from depth_ros.core.bands import RowBands
    h, w, step = 96, 128, 4
    rng = np.random.RandomState(7)
    ym = (0.05 + 0.45 * rng.rand(h, w)).astype(np.float32)
    ys = (ym * (1.0 + rng.normal(0.0, 0.03, (h, w)))).astype(np.float32)
    trusted = np.zeros((h, w), np.uint8)
    trusted[31:70] = 255
    ys[trusted == 0] = 0.0
    sh, sw = h // step, w // step
    vm = ((0.03 * cv2.resize(ym, (sw, sh), interpolation=cv2.INTER_AREA)) ** 2).astype(
        np.float32)
    vs = np.full((sh, sw), 0.004 ** 2, np.float32)
    if case == 'infinite_mono':
        ym[5, 7] = np.inf                        # an overflowing mono in a skipped row
    elif case == 'nan_gain':
        vm[0, 0] = np.nan
    results = []
    for rows in (None, (31, 70)):
        mono = ym.copy()
        out = np.empty_like(mono) if case == 'apart' else mono
        var = np.empty((h, w), np.float32)
        bands = RowBands(threads)
        stereo = ys.copy()
        n = Fusion(h, w).fuse(mono, stereo, trusted, vm, vs, 4.0, 0.15, out, var,
                              bands=bands, rows=rows)
        bands.close()
        results.append((n, out.tobytes(), var.tobytes()))
        # The stereo's plane holds y_s - y_m where the passes ran, its values elsewhere.
        if rows is not None and case in ('finite', 'apart'):
            assert (stereo[:31] == 0).all(), 'the skipped rows keep the stereo (0)'
        else:
            assert not (stereo[:31] == 0).any(), 'the difference is written on every row'
    assert results[0][0] > 0.9 * 39 * w
    assert results[1] == results[0]
    if case == 'infinite_mono':
        assert np.isnan(np.frombuffer(results[0][1], np.float32).reshape(h, w)[5, 7])


@pytest.mark.parametrize('k', range(2, 12))
def test_the_grid_upsampled_for_some_rows_is_the_whole_grid_upsampled_there(k):
    # Fusion._up(first, end) resizes only the grid rows those rows read, where that gives the
    # same values: at a power-of-two scale. OpenCV 4.5.4 (the Jetson's) rounds a row's weight
    # to float32 from its position, so a part resized alone differed by an ulp at k = 3, 7, 9
    # (the whole grid is then resized).
    sh, w = 30, 64
    h = sh * k
    fusion = Fusion(h, w)
    small = np.random.RandomState(k).rand(sh, 40).astype(np.float32)
    whole = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    for first in range(1, h - 1, 5):
        end = min(h, first + 2 * k + 3)
        out = np.full((h, w), np.nan, np.float32)
        assert fusion._up(small, out, first, end) is out
        np.testing.assert_array_equal(out[first:end], whole[first:end], err_msg='rows {}:{}'
                                      .format(first, end))


def nan_and_zero_frame():
    rel, st, z = frame(seed=4)
    conf = np.random.RandomState(5).uniform(1.0, 40.0, (H, W)).astype(np.float32)
    return rel, st, z, conf


def test_nan_confidence_is_untrusted_stereo_and_does_not_stop_the_fusion():
    # A NaN confidence is the least reliable value, 100: as NaN it would make the smooth
    # stereo variance NaN (0 * inf) and veto every stereo pixel of the frame.
    rel, st, _, conf = nan_and_zero_frame()
    block = (slice(10, 40), slice(20, 70))
    with_nan, with_100 = conf.copy(), conf.copy()
    with_nan[block] = np.nan
    with_100[block] = 100.0
    a = MetricAligner().update(rel, st, with_nan, focal_px=500.0)
    b = MetricAligner().update(rel, st, with_100, focal_px=500.0)
    assert a.status == 'ok' and a.stereo_fraction > 0.3, (a.status, a.stereo_fraction)
    np.testing.assert_array_equal(a.depth, b.depth)
    np.testing.assert_array_equal(a.uncertainty, b.uncertainty)


def test_zero_and_infinite_stereo_are_untrusted_like_nan():
    # The fusion's masked products multiply by the mask: 1 / 0 = inf must never reach them.
    rel, st, _, conf = nan_and_zero_frame()
    bad = st.copy()
    bad[50:60] = 0.0
    bad[60:64] = -0.0
    bad[64:66] = -np.inf
    nan = st.copy()
    nan[50:66] = np.nan
    a = MetricAligner().update(rel, bad, conf, focal_px=500.0)
    b = MetricAligner().update(rel, nan, conf, focal_px=500.0)
    np.testing.assert_array_equal(a.depth, b.depth)
    assert not np.isnan(a.depth).any(), 'the mono is known everywhere'


def test_bilateral_with_a_flat_guide_is_the_normalised_convolution():
    rng = np.random.RandomState(6)
    p = (1.0 + 0.05 * rng.randn(30, 40)).astype(np.float32)
    w = np.where(rng.rand(30, 40) > 0.3, rng.rand(30, 40) * 1e4, 0.0).astype(np.float32)
    est, den = bilateral_nc(p, w, np.full((30, 40), 0.5, np.float32), 3, 0.1)

    def box(x):
        return cv2.blur(x.astype(np.float64), (7, 7), borderType=cv2.BORDER_REFLECT)
    np.testing.assert_allclose(est, box(w * p) / box(w), rtol=1e-5)
    np.testing.assert_allclose(den, box(w), rtol=1e-5)


def test_push_pull_fills_far_from_the_stereo_with_the_nearest_correction():
    # Stereo (weight) on the right third only, as beside SGBM's unmatched left border: the
    # cells 60 columns away take the right third's correction, not 1 (no correction).
    h, w = 45, 90
    p = np.full((h, w), 1.25, np.float32)
    p[:, 75:] = 1.35                            # the correction varies inside the stereo
    wt = np.zeros((h, w), np.float32)
    wt[:, 60:] = 1.0
    est = push_pull(p, wt)
    assert est.shape == (h, w) and est.dtype == np.float32
    np.testing.assert_allclose(est[:, 62:73], 1.25, atol=2e-3)      # where the weight is
    np.testing.assert_allclose(est[:, 80:], 1.35, atol=2e-3)
    assert np.all((est[:, :55] > 1.2) & (est[:, :55] < 1.36)), est[0, :55]
    # A constant target is reproduced everywhere, whatever the weights; none at all: 1.
    rng = np.random.RandomState(3)
    sparse = np.where(rng.rand(h, w) > 0.97, rng.rand(h, w), 0.0).astype(np.float32)
    np.testing.assert_allclose(push_pull(np.full((h, w), 0.8, np.float32), sparse), 0.8,
                               rtol=1e-5)
    np.testing.assert_array_equal(push_pull(p, np.zeros_like(wt)), 1.0)
    # The smallest planes the correction makes (3 x 3 cells) and planes of 4 values or fewer
    # (which OpenCV reads as a scalar) work too.
    for shape in ((3, 3), (2, 2), (1, 3)):
        wt = np.zeros(shape, np.float32)
        wt[0, 0] = 1.0
        np.testing.assert_allclose(push_pull(np.full(shape, 1.1, np.float32), wt), 1.1,
                                   rtol=1e-5)


def test_statistics_planes_take_every_step_th_output_pixel():
    corr = BilateralCorrection(96, 128, 8, 32)
    assert corr.step == 4 and corr.stats_size == (32, 24)
    rng = np.random.RandomState(7)
    for dtype in (np.float32, np.uint8):
        plane = (rng.rand(96, 128) * 200).astype(dtype)
        np.testing.assert_array_equal(corr.stats(plane), plane[::4, ::4])
    # A plane at another size (the network's) is interpolated at the same points.
    ramp = np.arange(64, dtype=np.float32)[None, :] + np.zeros((48, 1), np.float32)
    np.testing.assert_allclose(corr.stats(ramp)[0],
                               np.maximum((np.arange(32) * 4 + 0.5) / 2 - 0.5, 0.0))

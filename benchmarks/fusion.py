"""
Fusion benchmark: metric depth a planner can trust, against baselines of the same run.

Scenes (all seeded, generated offline, below):

* (a) Middlebury 2014 Motorcycle: real SGBM stereo (depth_ros/core/stereo.py) and a simulated
  Depth Anything V2 output (unknown affine in inverse depth, smooth warps, depth-dependent
  biases, detail loss, noise). Needs scikit-image; skipped without it.
* (b) driving sequences: ground plane, cars and poles at 5-80 m, sky, ZED-like stereo (noise
  growing with z^2, dropouts, nothing beyond 20 m), ego-motion, a network output with
  per-frame affine flicker and smooth warps; frames with too little stereo and one with none;
  a scene change; and a static sequence.

Methods: ``stereo`` (stereo alone), ``stereo_lsq`` (stereo, else the mono aligned by one global
least-squares affine), ``legacy`` (the MetricAligner before the rework, frozen in
benchmarks/_legacy_aligner.py), ``fused`` (today's MetricAligner with the camera, the baseline
and the image as guide) and ``fused_noguide`` (no guide image); in full runs the ablations
``fused_noanchor`` (no sky anchor) and ``fused_nocorrection`` (no local correction).

Metrics: AbsRel and delta1 by range band and for stereo-valid pixels vs holes, per-frame
maximum, temporal consistency, flying-point fraction of the cloud, density, sky +inf rate,
uncertainty calibration, and the post-inference time at 1280x720 on one thread.

Usage: python benchmarks/fusion.py [--quick] [--out DIR] [--repeats N]
``run_benchmark(quick=False, out_dir=None, ...) -> dict`` is the same as a function (for a
``depth-ros eval --fusion`` command). This is a benchmark that prints figures, not a test.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

# One thread, before numpy / OpenCV load their thread pools (the timing is single-threaded).
for _var in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
    os.environ.setdefault(_var, '1')

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)        # the frozen baseline next to this file

from _legacy_aligner import LegacyMetricAligner  # noqa: E402
import cv2  # noqa: E402
from depth_ros.core.alignment import MetricAligner  # noqa: E402
from depth_ros.core.camera import PinholeCamera  # noqa: E402
from depth_ros.core.pointcloud import depth_to_cloud  # noqa: E402
from depth_ros.core.visualize import colorize  # noqa: E402
import numpy as np  # noqa: E402

# ============================================================================ scenes

ZED_BASELINE_M = 0.12
CAMERA_HEIGHT_M = 1.3
STEREO_MAX_M = 20.0          # the ZED's default maximum range: beyond it depth is +inf
NETWORK_SHRINK = 0.4         # network input width / image width (518 px for a 1280 px image)


# ---------------------------------------------------------------------------- geometry

def _rays(camera):
    u = (np.arange(camera.width, dtype=np.float64) - camera.cx) / camera.fx
    v = (np.arange(camera.height, dtype=np.float64) - camera.cy) / camera.fy
    return np.broadcast_to(u[None, :], (camera.height, camera.width)), \
        np.broadcast_to(v[:, None], (camera.height, camera.width))


def _hit_box(dx, dy, box):
    """Depth (z) where rays (dx, dy, 1) enter an axis-aligned box, inf where they miss it."""
    x0, x1, y0, y1, z0, z1 = box
    with np.errstate(divide='ignore', invalid='ignore'):
        tx0, tx1 = x0 / dx, x1 / dx
        ty0, ty1 = y0 / dy, y1 / dy
    txn, txf = np.minimum(tx0, tx1), np.maximum(tx0, tx1)
    tyn, tyf = np.minimum(ty0, ty1), np.maximum(ty0, ty1)
    # A ray parallel to a slab is inside it for all t, or for none.
    inside_x = (x0 <= 0) & (0 <= x1)
    inside_y = (y0 <= 0) & (0 <= y1)
    txn = np.where(dx == 0, np.where(inside_x, -np.inf, np.inf), txn)
    txf = np.where(dx == 0, np.where(inside_x, np.inf, -np.inf), txf)
    tyn = np.where(dy == 0, np.where(inside_y, -np.inf, np.inf), tyn)
    tyf = np.where(dy == 0, np.where(inside_y, np.inf, -np.inf), tyf)
    near = np.maximum(np.maximum(txn, tyn), z0)
    far = np.minimum(np.minimum(txf, tyf), z1)
    return np.where((near <= far) & (near > 0), near, np.inf)


class DrivingWorld(object):
    """A straight road with parked and moving cars and poles, in world metres (z forward)."""

    def __init__(self, rng, length_m=200.0):
        self.boxes = []        # (x0, x1, y0, y1, z0, z1, vz, colour, bias)
        h = CAMERA_HEIGHT_M
        z = 5.0
        while z < length_m:
            lane = rng.choice([-3.5, 3.5, 0.0, -6.5, 6.5], p=[0.3, 0.3, 0.15, 0.125, 0.125])
            width, height, depth = rng.uniform(1.7, 2.0), rng.uniform(1.4, 1.8), \
                rng.uniform(3.8, 4.8)
            x = lane + rng.uniform(-0.4, 0.4)
            moving = lane in (0.0, -3.5) and rng.rand() < 0.5
            vz = rng.uniform(-0.3, 0.3) if moving else 0.0     # m per frame relative to world
            self.boxes.append((x - width / 2, x + width / 2, h - height, h, z, z + depth, vz,
                               tuple(int(c) for c in rng.randint(30, 230, 3)),
                               rng.normal(0.0, 0.05)))
            z += rng.uniform(6.0, 16.0)
        z = rng.uniform(4.0, 10.0)
        while z < length_m:                                  # poles along both kerbs
            for side in (-1, 1):
                if rng.rand() < 0.6:
                    x = side * rng.uniform(8.0, 9.5)
                    self.boxes.append((x - 0.12, x + 0.12, h - rng.uniform(4.5, 7.0), h, z,
                                       z + 0.24, 0.0, (40, 40, 45), rng.normal(0.0, 0.05)))
            z += rng.uniform(10.0, 20.0)


def render_driving(world, camera, ego_z, frame):
    """Ground-truth depth (+inf sky), object ids (-1 ground, -2 sky), image, for one frame."""
    dx, dy = _rays(camera)
    h = CAMERA_HEIGHT_M
    with np.errstate(divide='ignore'):
        ground = np.where(dy > 0, h / dy, np.inf)
    depth = ground.copy()
    ids = np.where(np.isfinite(ground), -1, -2).astype(np.int32)
    for k, b in enumerate(world.boxes):
        z0 = b[4] + b[6] * frame - ego_z
        z1 = b[5] + b[6] * frame - ego_z
        if z1 <= 0.5 or z0 > 400.0:
            continue
        hit = _hit_box(dx, dy, (b[0], b[1], b[2], b[3], max(z0, 0.5), z1))
        closer = hit < depth
        depth[closer] = hit[closer]
        ids[closer] = k
    return depth, ids


def _texture(shape, rng, scale):
    n = rng.randn(*shape).astype(np.float32)
    return cv2.GaussianBlur(n, (0, 0), scale) * (scale * 2.0)


def shade_driving(world, camera, depth, ids, ego_z, rng):
    """Shade a plausible colour image: sky gradient, textured road with lane marks, cars."""
    hgt, wid = depth.shape
    dx, dy = _rays(camera)
    img = np.zeros((hgt, wid, 3), np.float32)
    sky = ids == -2
    grad = np.clip(1.0 - np.maximum(-dy, 0) * 2.0, 0, 1)[..., None]
    img[sky] = (np.array([235.0, 200.0, 150.0]) * (0.8 + 0.2 * grad))[sky]
    ground = ids == -1
    xw = np.where(ground, dx * depth, 0.0)
    zw = np.where(ground, depth + ego_z, 0.0)
    road = 100.0 + 10.0 * _texture((hgt, wid), rng, 1.0)
    lane = (np.abs(np.abs(xw) - 1.75) < 0.08) & ((zw % 6.0) < 3.0)
    road = np.where(lane, 220.0, road)
    road = np.where(np.abs(xw) > 7.5, 80.0 + 12.0 * _texture((hgt, wid), rng, 1.5), road)
    img[ground] = np.stack([road] * 3, -1)[ground]
    for k, b in enumerate(world.boxes):
        mine = ids == k
        if not mine.any():
            continue
        col = np.array(b[7], np.float32)
        yw = dy * depth
        window = (yw < b[2] + 0.55 * (b[3] - b[2])) & (yw > b[2] + 0.1)
        shade = np.where(window, 0.45, 1.0)
        img[mine] = (col[None, :] * shade[mine][:, None])
    img += rng.randn(hgt, wid, 3).astype(np.float32) * 3.0
    return np.clip(img, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------- stereo

def simulate_stereo(gt, ids, camera, rng, baseline_m, disparity_noise_px, keep=1.0):
    """
    ZED-like depth and confidence from ground truth.

    Disparity noise (correlated over ~2 px, scaled by the confidence), occlusions at the left
    of foreground objects, 2 px edge fattening, low-texture dropouts, 1 % gross outliers,
    +inf beyond STEREO_MAX_M and on the sky, NaN where matching fails. ``keep`` < 1 leaves
    only that random fraction of the valid pixels (a frame with too little stereo).
    """
    hgt, wid = gt.shape
    fb = camera.fx * baseline_m
    with np.errstate(divide='ignore'):
        disp = np.where(np.isfinite(gt), fb / gt, 0.0)
    # Edge fattening: block matching carries the nearer (larger) disparity 2 px across edges.
    fat = cv2.dilate(disp.astype(np.float32), np.ones((1, 5), np.uint8)).astype(np.float64)
    jump = fat > disp * 1.05 + 0.5
    d = np.where(jump & (rng.rand(hgt, wid) < 0.7), fat, disp)
    # Confidence: higher (less reliable) on low texture, near edges, and at random.
    tex = np.abs(_texture((hgt, wid), rng, 6.0))
    edge = cv2.dilate((np.abs(cv2.Laplacian(disp.astype(np.float32), cv2.CV_32F)) > 0.5)
                      .astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    conf = 5.0 + 25.0 * np.clip(1.0 - tex, 0, 1) + 30.0 * edge + 12.0 * rng.rand(hgt, wid)
    conf = np.clip(conf, 1.0, 100.0)
    # Noise in disparity (so depth noise grows as z^2), more where confidence is worse.
    noise = _texture((hgt, wid), rng, 1.0)
    noise /= max(float(noise.std()), 1e-9)
    sigma = disparity_noise_px * np.sqrt(0.5 + 1.5 * conf / 100.0)
    d = d + noise * sigma
    # Occlusion: the right camera cannot see background just left of a nearer object.
    occluded = np.zeros((hgt, wid), bool)
    for k in range(1, int(np.ceil(disp.max() - disp.min())) + 2):
        shifted = np.full_like(disp, -np.inf)
        shifted[:, :-k] = disp[:, k:] - k
        occluded |= shifted > disp + 0.5
    valid = (d > 0) & np.isfinite(gt) & ~occluded
    # Low-texture dropouts (blobs) and sparse failures.
    blobs = _texture((hgt, wid), rng, 12.0)
    valid &= ~(blobs > np.percentile(blobs, 92)) & (rng.rand(hgt, wid) > 0.03)
    with np.errstate(divide='ignore'):
        depth = np.where(valid, fb / np.maximum(d, 1e-6), np.nan)
    bad = valid & (rng.rand(hgt, wid) < 0.01)
    depth[bad] = rng.uniform(1.0, STEREO_MAX_M, int(bad.sum()))
    with np.errstate(invalid='ignore'):
        depth[valid & (depth > STEREO_MAX_M)] = np.inf
    depth[ids == -2] = np.inf
    if keep < 1.0:
        depth[rng.rand(hgt, wid) > keep] = np.nan
    conf[~np.isfinite(depth)] = 100.0
    return depth.astype(np.float32), conf.astype(np.float32)


# ---------------------------------------------------------------------------- network

class NetworkModel(object):
    """
    Simulated DA-V2: affine-invariant inverse depth with the errors of a real network.

    Per frame: ``rel = a_k * (warp * inv_lowres) + b_k`` where ``inv_lowres`` is the true
    inverse depth computed at the network resolution (area-averaged, then blurred: detail
    loss at edges), ``warp`` a smooth multiplicative field (low-frequency cosines drifting
    slowly over time, amplitude ``warp``) times per-object biases, plus 1 % noise; the sky is
    0 before the affine (DA-V2's near-zero sky). ``flicker``: ``a_k = A (1 + flicker N)``,
    ``b_k = b0 + flicker N * (A / 50 m)``: the shift moves by ``flicker`` times the output of
    a surface at 50 m (the sky stays near 0 against the near range, as DA-V2's does).
    """

    def __init__(self, rng, flicker=0.1, warp=0.06, noise=0.01, blur_px=1.0, bias=1.0,
                 a0=20.0, b0_inv=1.0 / 500.0):
        self.rng = rng
        self.flicker = flicker
        self.noise = noise
        self.blur_px = blur_px
        self.bias = bias
        self.a0, self.b0 = a0, a0 * b0_inv
        self.waves = [(rng.uniform(0.3, 1.2) * rng.choice([-1, 1]), rng.uniform(0.2, 1.0),
                       rng.uniform(0, 2 * np.pi), rng.uniform(-0.05, 0.05),
                       warp * w) for w in (0.6, 0.3, 0.1)]

    def affine(self, frame_rng):
        a = self.a0 * (1.0 + self.flicker * frame_rng.randn())
        b = self.b0 + self.flicker * frame_rng.randn() * self.a0 / 50.0
        return max(a, 0.2 * self.a0), b

    def __call__(self, inv, object_bias, k, out_size, frame_rng):
        """``inv`` [H, W] true inverse depth (0 sky); returns rel at ``out_size`` (w, h)."""
        w, h = out_size
        low = cv2.resize(inv.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
        bias = cv2.resize(object_bias.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
        if self.blur_px > 0:
            low = cv2.GaussianBlur(low, (0, 0), self.blur_px)
            bias = cv2.GaussianBlur(bias, (0, 0), self.blur_px)
        x = np.linspace(0.0, 1.0, w)[None, :]
        y = np.linspace(0.0, 1.0, h)[:, None]
        field = np.zeros((h, w))
        for fx, fy, phase, drift, amp in self.waves:
            field += amp * np.cos(2 * np.pi * (fx * x + fy * y) + phase + drift * k)
        out = low * np.exp(field + self.bias * bias) * \
            (1.0 + self.noise * frame_rng.randn(h, w))
        a, b = self.affine(frame_rng)
        rel = a * out + b + 0.0005 * self.a0 * frame_rng.randn(h, w) * (low <= 0)
        return rel.astype(np.float32), (a, b)


# ---------------------------------------------------------------------------- sequences

def driving_camera(width):
    """ZED2-like intrinsics (fx 530 px at 1280 px wide), principal point at the centre."""
    height = int(round(width * 9 / 16.0))
    f = 530.0 * width / 1280.0
    return PinholeCamera(f, f, (width - 1) / 2.0, (height - 1) / 2.0, width, height)


def driving_sequence(seed, n_frames=24, width=640, speed_m=0.5, flicker=0.1, cut_at=None,
                     sparse_frames=(), empty_frames=(), disparity_noise_px=None, warp=0.06):
    """
    Yield the frames of one seeded driving sequence (see the module docstring).

    :param speed_m: ego-motion per frame (m; 0.5 = 36 km/h at 20 FPS; 0: a static camera).
    :param flicker: per-frame change of the network's affine (0.1 = 10 %).
    :param cut_at: frame index from which a different seeded world is shown (a scene change).
    :param sparse_frames: frames whose stereo keeps 0.3 % of its pixels (too few to fit).
    :param empty_frames: frames with no stereo at all.
    :param disparity_noise_px: disparity noise at this width; default scales 0.45 px at
        1280 px, so depth noise is about 7 % at 10 m and 14 % at 20 m.
    """
    camera = driving_camera(width)
    if disparity_noise_px is None:
        disparity_noise_px = 0.45 * width / 1280.0
    worlds = [DrivingWorld(np.random.RandomState(seed * 7919 + 1)),
              DrivingWorld(np.random.RandomState(seed * 7919 + 2))]
    net = NetworkModel(np.random.RandomState(seed * 7919 + 3), flicker=flicker, warp=warp)
    net_size = (int(round(width * NETWORK_SHRINK)), int(round(camera.height * NETWORK_SHRINK)))
    for k in range(n_frames):
        world = worlds[1] if cut_at is not None and k >= cut_at else worlds[0]
        ego = speed_m * k
        gt, ids = render_driving(world, camera, ego, k)
        frng = np.random.RandomState(seed * 100003 + k)
        bgr = shade_driving(world, camera, gt, ids, ego, frng)
        keep = 0.003 if k in sparse_frames else 1.0
        stereo, conf = simulate_stereo(gt, ids, camera, frng, ZED_BASELINE_M,
                                       disparity_noise_px, keep=keep)
        if k in empty_frames:
            stereo[...] = np.nan
            conf[...] = 100.0
        bias = np.zeros(gt.shape)
        for j, b in enumerate(world.boxes):
            bias[ids == j] = b[8]
        with np.errstate(divide='ignore'):
            inv = np.where(np.isfinite(gt), 1.0 / gt, 0.0)
        rel, affine = net(inv, bias, k, net_size, frng)
        yield dict(rel=rel, stereo=stereo, confidence=conf, bgr=bgr, gt=gt,
                   sky=ids == -2, road=ids == -1, camera=camera, baseline_m=ZED_BASELINE_M,
                   disparity_noise_px=disparity_noise_px, index=k, affine=affine,
                   scene='driving')


def _fill_holes(inv):
    """Fill NaN in a float map by repeated normalised convolution from the known pixels."""
    known = np.isfinite(inv)
    val = np.where(known, inv, 0.0).astype(np.float32)
    wgt = known.astype(np.float32)
    out = val.copy()
    filled = known.copy()
    for sigma in (2, 4, 8, 16, 32, 64):
        num = cv2.GaussianBlur(val, (0, 0), sigma)
        den = cv2.GaussianBlur(wgt, (0, 0), sigma)
        take = ~filled & (den > 1e-3)
        out[take] = num[take] / den[take]
        filled |= take
        if filled.all():
            break
    return out


def middlebury_frames(seeds=(0, 1, 2), flicker=0.1, warp=0.06):
    """
    Build the Middlebury Motorcycle pair with real SGBM stereo and a simulated DA-V2 output.

    One frame per seed (different warps, biases and affine). The object-scale bias is a
    smooth function of depth (surfaces at different depths are off by different factors),
    as DA-V2's errors follow objects. Needs scikit-image (``depth_ros[tools]``).
    """
    from depth_ros.sources.sample import load_sample, sample_stereo_depth

    sample = load_sample()
    stereo, conf = sample_stereo_depth(sample)
    gt = sample.gt_depth.astype(np.float64)
    inv = _fill_holes((1.0 / sample.gt_depth).astype(np.float32)).astype(np.float64)
    h, w = gt.shape
    # The sample's focal length is 995 px at 741 px width; 0.26 px is SGBM's robust spread.
    for seed in seeds:
        rng = np.random.RandomState(1000 + seed)
        net = NetworkModel(rng, flicker=flicker, warp=warp, blur_px=1.5, bias=1.0)
        bias = 0.04 * np.sin(2 * np.pi * np.log(1.0 / inv) / np.log(1.6) + rng.uniform(0, 6))
        size = (518, int(round(518 * h / float(w))))
        rel, affine = net(inv, bias, seed, size, rng)
        yield dict(rel=rel, stereo=stereo.copy(), confidence=conf.copy(), bgr=sample.left,
                   gt=gt, sky=np.zeros(gt.shape, bool), road=np.zeros(gt.shape, bool),
                   camera=sample.camera, baseline_m=sample.baseline_m,
                   disparity_noise_px=0.26, index=seed, affine=affine, scene='middlebury',
                   doffs=sample.doffs)


# ============================================================================ benchmark

BANDS = ((0.0, 10.0), (10.0, 20.0), (20.0, 40.0), (40.0, 80.0))
EVAL_MAX_M = 80.0
TRUST = dict(min_depth=0.3, max_depth=20.0, confidence_threshold=50.0)
METHODS = ('stereo', 'stereo_lsq', 'legacy', 'fused', 'fused_noguide')
ABLATIONS = ('fused_noanchor', 'fused_nocorrection')    # full runs only
GOALS = {
    'abs_rel_middlebury': 0.020, 'abs_rel_road': 0.020, 'abs_rel_20_80': 0.08,
    'flicker_cost': 1.10, 'density_min': 0.99, 'stereo_valid_ratio': 1.10, 'sky_inf': 0.98,
    'flying': 0.01, 'time_ms': 10.0, 'time_ms_full': 10.0, 'calibration': 0.68,
}
CALIBRATION_TOLERANCE = 0.08     # |fraction within 1 sigma - 0.68| counted as met


# ---------------------------------------------------------------------------- methods

def trusted_stereo(frame):
    """Return the stereo pixels every method trusts: in [0.3, 20] m, confidence <= 50."""
    st, conf = frame['stereo'], frame['confidence']
    with np.errstate(invalid='ignore'):
        return np.isfinite(st) & (st >= TRUST['min_depth']) & (st <= TRUST['max_depth']) & \
            (conf <= TRUST['confidence_threshold'])


class StereoAlone(object):
    """Stereo where trusted, +inf where it says too far, NaN elsewhere."""

    def process(self, frame):
        out = np.where(trusted_stereo(frame), frame['stereo'], np.nan).astype(np.float32)
        out[np.isposinf(frame['stereo'])] = np.inf
        return out, None, {}


class StereoElseLeastSquares(object):
    """Stereo where trusted, else the mono aligned by one plain least-squares affine."""

    def process(self, frame):
        st = frame['stereo']
        h, w = st.shape
        rel = cv2.resize(frame['rel'], (w, h), interpolation=cv2.INTER_LINEAR)
        ok = trusted_stereo(frame)
        out = np.full((h, w), np.nan, np.float32)
        if ok.sum() >= 2:
            a = np.stack([rel[ok], np.ones(int(ok.sum()))], 1).astype(np.float64)
            s, t = np.linalg.lstsq(a, 1.0 / st[ok].astype(np.float64), rcond=None)[0]
            inv = s * rel.astype(np.float64) + t
            with np.errstate(divide='ignore'):
                out = np.where(inv > 1.0 / 100.0, 1.0 / inv, np.inf).astype(np.float32)
        out[ok] = st[ok]
        return out, None, {}


ALIGNER_OPTIONS = {
    'fused': {}, 'fused_noguide': {}, 'fused_node': dict(compute_uncertainty=False),
    'fused_noanchor': dict(sky_anchor_weight=0.0), 'fused_nocorrection':
    dict(correction_radius_px=0),
}


class Aligner(object):
    """A MetricAligner (today's, or the legacy one) run over a sequence."""

    def __init__(self, kind, frame):
        self.kind = kind
        if kind.startswith('legacy'):
            self.aligner = LegacyMetricAligner()
        else:
            # The sensor as a user calibrates it: the baseline and the disparity noise.
            self.aligner = MetricAligner(baseline_m=frame['baseline_m'],
                                         disparity_noise_px=frame['disparity_noise_px'],
                                         **ALIGNER_OPTIONS[kind])

    def process(self, frame):
        args = (frame['rel'], frame['stereo'], frame['confidence'])
        if self.kind.startswith('legacy'):
            res = self.aligner.update(*args)
        else:
            guide = None if self.kind == 'fused_noguide' else frame['bgr']
            res = self.aligner.update(*args, camera=frame['camera'], guide=guide)
        return res.depth, res.uncertainty, {'status': res.status}


def make_method(name, frame):
    """Fresh method state for a sequence."""
    if name == 'stereo':
        return StereoAlone()
    if name == 'stereo_lsq':
        return StereoElseLeastSquares()
    return Aligner(name, frame)


def edge_threshold_default():
    """Return the default edge threshold of depth_to_cloud (None where it has none)."""
    import inspect
    p = inspect.signature(depth_to_cloud).parameters.get('edge_threshold')
    return None if p is None else p.default


# ---------------------------------------------------------------------------- metrics

def _window_minmax(gt, radius=2):
    g = np.where(np.isfinite(gt), gt, 1e4).astype(np.float32)
    k = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    return cv2.erode(g, k), cv2.dilate(g, k), g


def flying_fraction(z, gt, tol=0.1, radius=2):
    """
    Fraction of the finite cloud points that float between surfaces.

    A point is flying when its pixel is at a depth discontinuity of the ground truth (its
    (2r+1)^2 window spans more than a factor 1.25) and its depth is more than ``tol``
    (relative) away from every ground-truth depth of that window.
    """
    lo, hi, g = _window_minmax(gt, radius)
    finite = np.isfinite(z)
    n = int(finite.sum())
    if n == 0:
        return 0.0
    ys, xs = np.nonzero(finite & (hi > 1.25 * lo))
    if ys.size == 0:
        return 0.0
    h, w = gt.shape
    best = np.full(ys.size, np.inf)
    zv = z[ys, xs].astype(np.float64)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            gv = g[np.clip(ys + dy, 0, h - 1), np.clip(xs + dx, 0, w - 1)].astype(np.float64)
            best = np.minimum(best, np.abs(zv - gv) / gv)
    return float((best > tol).sum()) / n


def _errors(depth, gt):
    """|p - g| / g per pixel (a +inf prediction at a finite gt: 1.0), and the delta1 test."""
    p = depth.astype(np.float64)
    with np.errstate(invalid='ignore', divide='ignore'):
        err = np.where(np.isinf(p), 1.0, np.abs(p - gt) / gt)
        ratio = np.maximum(p / gt, gt / p)
        ok = np.isfinite(ratio) & (ratio < 1.25)
    return err, ok


def _regions(frame):
    gt = frame['gt']
    gt_ok = np.isfinite(gt) & (gt < EVAL_MAX_M)
    trusted = trusted_stereo(frame)
    regions = {'all': gt_ok, 'stereo_valid': gt_ok & trusted, 'holes': gt_ok & ~trusted}
    if frame['road'].any():
        regions['road'] = gt_ok & frame['road']
    for lo, hi in BANDS:
        regions['{:g}-{:g} m'.format(lo, hi)] = gt_ok & (gt >= lo) & (gt < hi)
    regions['20-80 m'] = gt_ok & (gt >= 20.0)
    return regions


class Scores(object):
    """Per-pixel errors by region, accumulated over the frames of one method and scene."""

    def __init__(self):
        self.sums = {}        # region -> [sum of errors, covered, delta1 hits, pixels]
        self.calib = {}       # region -> [within 1 sigma, within 2 sigma, pixels]
        self.frames = []
        self.prev = None
        self.temporal = [0.0, 0]

    def add_frame(self, frame, depth, unc, info, edge_threshold, first_of_segment):
        """Score one frame's output (``first_of_segment``: no temporal pair with the last)."""
        gt = frame['gt']
        err, delta_ok = _errors(depth, gt)
        regions = _regions(frame)
        covered = ~np.isnan(depth)
        for key, mask in regions.items():
            m = mask & covered
            s = self.sums.setdefault(key, [0.0, 0, 0, 0])
            s[0] += float(err[m].sum())
            s[1] += int(m.sum())
            s[2] += int(delta_ok[m].sum())
            s[3] += int(mask.sum())
        if unc is not None:
            self._calibration(regions, depth, unc, gt)
        self._temporal(regions['all'], depth, gt, first_of_segment)
        sky = frame['sky']
        cloud = depth_to_cloud(np.ascontiguousarray(depth, np.float32), frame['camera'],
                               edge_threshold=edge_threshold)
        frame_all = err[regions['all'] & covered]
        self.frames.append({
            'index': frame['index'], 'status': info.get('status', ''),
            'abs_rel': float(frame_all.mean()) if frame_all.size else float('nan'),
            'density': float(covered.mean()),
            'sky_inf': float(np.isposinf(depth[sky]).mean()) if sky.any() else float('nan'),
            'flying': flying_fraction(cloud['z'], gt),
            'flying_unfiltered': flying_fraction(np.where(np.isfinite(depth), depth, np.nan),
                                                 gt),
            'cloud_points': float(np.isfinite(cloud['z']).mean())})

    def _calibration(self, regions, depth, unc, gt):
        for key in ('all', 'stereo_valid', 'holes'):
            m = regions[key] & np.isfinite(depth) & np.isfinite(unc) & (unc > 0)
            d = np.abs(depth[m].astype(np.float64) - gt[m])
            c = self.calib.setdefault(key, [0, 0, 0])
            c[0] += int((d <= unc[m]).sum())
            c[1] += int((d <= 2.0 * unc[m]).sum())
            c[2] += int(m.sum())

    def _temporal(self, region, depth, gt, first):
        # The change of each pixel's log error between frames: a flickering output changes
        # its error, a stable one does not, whatever the ego-motion did to the depth.
        logerr = np.full(gt.shape, np.nan)
        with np.errstate(invalid='ignore'):
            ok = region & np.isfinite(depth) & (depth > 0)
        logerr[ok] = np.log(depth[ok] / gt[ok])
        if self.prev is not None and not first:
            both = np.isfinite(logerr) & np.isfinite(self.prev)
            self.temporal[0] += float(np.abs(logerr[both] - self.prev[both]).sum())
            self.temporal[1] += int(both.sum())
        self.prev = logerr

    def summary(self):
        """Metrics of the accumulated frames, JSON-ready."""
        out = {}
        for key, (se, n, hits, pixels) in self.sums.items():
            out[key] = {'abs_rel': se / n if n else float('nan'),
                        'delta1': hits / float(n) if n else float('nan'),
                        'coverage': n / float(pixels) if pixels else float('nan'),
                        'pixels': pixels}
        fr = self.frames
        out['per_frame_max_abs_rel'] = float(np.nanmax([f['abs_rel'] for f in fr]))
        out['density_min'] = float(min(f['density'] for f in fr))
        out['density_mean'] = float(np.mean([f['density'] for f in fr]))
        sky = [f['sky_inf'] for f in fr if f['sky_inf'] == f['sky_inf']]
        out['sky_inf'] = float(np.mean(sky)) if sky else float('nan')
        out['sky_inf_min'] = float(min(sky)) if sky else float('nan')
        for key in ('flying', 'flying_unfiltered', 'cloud_points'):
            out[key] = float(np.mean([f[key] for f in fr]))
        out['flying_max'] = float(max(f['flying'] for f in fr))
        out['temporal'] = self.temporal[0] / self.temporal[1] if self.temporal[1] else \
            float('nan')
        for key, (c1, c2, n) in self.calib.items():
            out['calib_1sigma_' + key] = c1 / float(n) if n else float('nan')
            out['calib_2sigma_' + key] = c2 / float(n) if n else float('nan')
        out['statuses'] = {s: sum(1 for f in fr if f['status'] == s)
                           for s in sorted(set(f['status'] for f in fr))}
        out['frames'] = fr
        return out


def merge(score_lists):
    """Merge the Scores of several sequences."""
    out = Scores()
    for s in score_lists:
        for table, acc in ((s.sums, out.sums), (s.calib, out.calib)):
            for k, v in table.items():
                a = acc.setdefault(k, [0] * len(v))
                for i, x in enumerate(v):
                    a[i] += x
        out.frames.extend(s.frames)
        out.temporal[0] += s.temporal[0]
        out.temporal[1] += s.temporal[1]
    return out


# ---------------------------------------------------------------------------- runs

def run_sequence(frames, methods, edge_threshold):
    """Every method over one list of frames, with its state carried; {method: Scores}."""
    scores = {m: Scores() for m in methods}
    state = {m: make_method(m, frames[0]) for m in methods}
    for i, frame in enumerate(frames):
        first = i == 0 or frame.get('segment_start', False)
        for m in methods:
            depth, unc, info = state[m].process(frame)
            scores[m].add_frame(frame, depth, unc, info, edge_threshold, first)
    return scores


def run_single_frames(frames, methods, edge_threshold):
    """Each frame with a fresh method: the single-frame reference of the flicker test."""
    scores = {m: Scores() for m in methods}
    for frame in frames:
        for m in methods:
            depth, unc, info = make_method(m, frame).process(frame)
            scores[m].add_frame(frame, depth, unc, info, edge_threshold, True)
    return scores


def driving_set(seeds, n_frames, width):
    """
    Build the driving sequences.

    Per seed: a drive with a scene change at the middle, two frames with 0.3 % of the stereo
    and one with none just before it; and a static camera (no ego-motion).
    """
    drive, static = [], []
    for seed in seeds:
        cut = n_frames // 2
        seq = list(driving_sequence(seed, n_frames=n_frames, width=width, cut_at=cut,
                                    sparse_frames=(cut - 4, cut - 3), empty_frames=(cut - 2,)))
        seq[cut]['segment_start'] = True
        drive.append(seq)
        static.append(list(driving_sequence(seed + 50, n_frames=max(4, n_frames // 2),
                                            width=width, speed_m=0.0)))
    return drive, static


def _scene(seqs, methods, edge, runner=run_sequence):
    per = [runner(seq, methods, edge) for seq in seqs]
    return {m: merge([p[m] for p in per]).summary() for m in methods}


# ---------------------------------------------------------------------------- timing

def time_post_inference(repeats=20, width=1280):
    """
    Time the post-inference stage.

    Median ms of update + depth_to_cloud (rgb) + colorize at ``width`` (1280 x 720), one
    thread, for today's aligner and the legacy one in the same rounds (interleaved, so that
    both see the same load), in two configurations: every output at full resolution (the
    cloud at stride 1, uncertainty on) and alignment_node's defaults (cloud stride 2, no
    uncertainty, which the node does not publish).
    """
    cv2.setNumThreads(1)
    frames = list(driving_sequence(7, n_frames=4, width=width))
    cam = frames[0]['camera']
    configs = (('legacy', 'legacy', 1, None), ('fused', 'fused', 1, 'default'),
               ('legacy_node', 'legacy', 2, None), ('fused_node', 'fused_node', 2, 'default'))
    methods = {name: make_method(kind, frames[0]) for name, kind, _, _ in configs}
    times = {name: {'update': [], 'cloud': [], 'colorize': []} for name, _, _, _ in configs}
    for i in range(repeats + 3):
        f = frames[i % len(frames)]
        for name, _, stride, edge in configs:
            kw = {} if edge == 'default' else {'edge_threshold': None}
            t0 = time.perf_counter()
            depth, _, _ = methods[name].process(f)
            t1 = time.perf_counter()
            depth_to_cloud(depth, cam, bgr=f['bgr'], stride=stride, **kw)
            t2 = time.perf_counter()
            colorize(depth, 0.3, 20.0, reverse=True)
            t3 = time.perf_counter()
            if i >= 3:      # warm-up: buffers, caches, page faults
                for key, dt in (('update', t1 - t0), ('cloud', t2 - t1), ('colorize', t3 - t2)):
                    times[name][key].append(dt)
    out = {}
    for name, t in times.items():
        med = {k: 1e3 * float(np.median(v)) for k, v in t.items()}
        med['total'] = 1e3 * float(np.median(np.sum([t[k] for k in t], axis=0)))
        out[name] = med
    out['repeats'] = repeats
    return out


# ---------------------------------------------------------------------------- report

def run_benchmark(quick=False, out_dir=None, repeats=None, methods=None, plots=True,
                  middlebury=True, timing=True, seeds=None, width=None, n_frames=None,
                  echo=print):
    """
    Run the benchmark; write report.md, report.json and PNG plots to ``out_dir`` (if given).

    ``quick``: one seed, 640 px driving frames, 12 per sequence, two Middlebury variants, 5
    timing repeats (under a minute here). The full run: three seeds at 1280 x 720 (the
    ZED's HD720 and DA-V2's 518 px input), 24 frames per sequence, five Middlebury variants,
    the ablations, 30 timing repeats. Returns the report dict.
    """
    t_start = time.perf_counter()
    cv2.setNumThreads(1)
    if methods is None:
        methods = METHODS if quick else METHODS + ABLATIONS
    methods = tuple(methods)
    edge = edge_threshold_default()
    width = width or (640 if quick else 1280)
    n_frames = n_frames or (12 if quick else 24)
    seeds = tuple(seeds) if seeds is not None else ((0,) if quick else (0, 1, 2))
    report = {'quick': bool(quick), 'width': width, 'frames_per_sequence': n_frames,
              'seeds': list(seeds), 'edge_threshold': edge, 'methods': list(methods),
              'scenes': {}}
    scenes = report['scenes']
    drive, static = driving_set(seeds, n_frames, width)
    scenes['driving'] = _scene(drive, methods, edge)
    scenes['static'] = _scene(static, methods, edge)
    scenes['static_single_frame'] = _scene(static, methods, edge, run_single_frames)
    no_flicker = [list(driving_sequence(s + 50, n_frames=max(4, n_frames // 2), width=width,
                                        speed_m=0.0, flicker=0.0)) for s in seeds]
    scenes['static_no_flicker'] = _scene(no_flicker, methods, edge)
    if middlebury:
        try:
            mb = list(middlebury_frames(seeds=(0, 1) if quick else (0, 1, 2, 3, 4)))
        except ImportError as exc:
            report['middlebury_skipped'] = str(exc)
        else:
            scenes['middlebury'] = _scene([mb], methods, edge, run_single_frames)
    if timing:
        report['timing_ms'] = time_post_inference(repeats or (5 if quick else 30))
    report['goals'] = goals(report)
    report['wall_s'] = time.perf_counter() - t_start
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        write_reports(report, out_dir)
        if plots:
            write_plots(report, out_dir)
    for line in markdown(report):
        echo(line)
    return report


def _get(report, scene, method, *keys):
    try:
        v = report['scenes'][scene][method]
        for k in keys:
            v = v[k]
        return float(v)
    except (KeyError, TypeError):
        return float('nan')


def goals(report, method='fused'):
    """Return the goals on this run: {name: {value, goal, met}}; NaN where not measured."""
    g = {}

    def put(name, value, higher_is_better=False, met=None):
        goal = GOALS[name]
        if met is None:
            met = (value >= goal) if higher_is_better else (value <= goal)
        g[name] = {'value': value, 'goal': goal, 'met': bool(met)}

    put('abs_rel_middlebury', _get(report, 'middlebury', method, 'all', 'abs_rel'))
    put('abs_rel_road', _get(report, 'driving', method, 'road', 'abs_rel'))
    put('abs_rel_20_80', _get(report, 'driving', method, '20-80 m', 'abs_rel'))
    put('flicker_cost', _get(report, 'static', method, 'all', 'abs_rel') /
        _get(report, 'static_single_frame', method, 'all', 'abs_rel'))
    put('density_min', min(_get(report, s, method, 'density_min')
                           for s in ('driving', 'static')), True)
    ratios = [_get(report, s, method, 'stereo_valid', 'abs_rel') /
              _get(report, s, 'stereo', 'stereo_valid', 'abs_rel')
              for s in ('driving', 'middlebury') if s in report['scenes']]
    put('stereo_valid_ratio', max(ratios) if ratios else float('nan'))
    put('sky_inf', _get(report, 'driving', method, 'sky_inf_min'), True)
    put('flying', max(_get(report, s, method, 'flying') for s in ('driving', 'middlebury')
                      if s in report['scenes']))
    # The stage as alignment_node runs it (cloud stride 2, no uncertainty), and everything
    # at full resolution (cloud stride 1, uncertainty on).
    timing = report.get('timing_ms', {})
    put('time_ms', timing.get(method + '_node', {}).get('total', float('nan')))
    put('time_ms_full', timing.get(method, {}).get('total', float('nan')))
    cal = _get(report, 'driving', method, 'calib_1sigma_all')
    put('calibration', cal, met=abs(cal - 0.68) <= CALIBRATION_TOLERANCE)
    return g


def _f(v, pct=False):
    if v is None or v != v:
        return 'n/a'
    return '{:.1f} %'.format(100 * v) if pct else '{:.4f}'.format(v)


REGIONS = ('all', 'road', '0-10 m', '10-20 m', '20-40 m', '40-80 m', '20-80 m',
           'stereo_valid', 'holes')


def _scene_lines(scene, table, methods):
    regions = [r for r in REGIONS if r in table[methods[0]]]
    lines = ['', '### `{}`'.format(scene), '',
             '| method | ' + ' | '.join(regions) + ' |', '|---' * (len(regions) + 1) + '|']
    for m in methods:
        t = table[m]
        lines.append('| {} | {} |'.format(m, ' | '.join(
            '{} ({})'.format(_f(t[r]['abs_rel']), _f(t[r]['delta1'], True)) for r in regions)))
    lines += ['', '| method | max/frame | density min | sky +inf (min) | flying (no edge '
              'test) | temporal | calib 1σ / 2σ (stereo-valid, holes) | statuses |',
              '|---|---|---|---|---|---|---|---|']
    for m in methods:
        t = table[m]
        calib = '{} / {} ({}, {})'.format(
            _f(t.get('calib_1sigma_all'), True), _f(t.get('calib_2sigma_all'), True),
            _f(t.get('calib_1sigma_stereo_valid'), True), _f(t.get('calib_1sigma_holes'), True))
        lines.append('| {} | {} | {} | {} ({}) | {} ({}) | {} | {} | {} |'.format(
            m, _f(t['per_frame_max_abs_rel']), _f(t['density_min'], True),
            _f(t['sky_inf'], True), _f(t['sky_inf_min'], True), _f(t['flying'], True),
            _f(t['flying_unfiltered'], True), _f(t['temporal']), calib,
            ', '.join('{} {}'.format(k, v) for k, v in t['statuses'].items())))
    if 'stereo' in table:
        lines += ['', 'AbsRel (delta1) over the pixels each method covers; `stereo` covers ' +
                  ', '.join('{} {}'.format(r, _f(table['stereo'][r]['coverage'], True))
                            for r in regions) + '.']
    return lines


def markdown(report):
    """Return the report as markdown lines."""
    methods = report['methods']
    lines = ['# Fusion benchmark', '',
             '{} run: driving at {} px wide, {} frames per sequence, seeds {}; cloud '
             'edge_threshold {}; {:.0f} s.'.format(
                 'quick' if report['quick'] else 'full', report['width'],
                 report['frames_per_sequence'], report['seeds'], report['edge_threshold'],
                 report.get('wall_s', 0.0)),
             '', '## Goals (method `fused`)', '', '| goal | value | target | met |',
             '|---|---|---|---|']
    for k, v in report['goals'].items():
        lines.append('| {} | {} | {} | {} |'.format(k, _f(v['value']), v['goal'],
                                                    'yes' if v['met'] else '**no**'))
    if 'middlebury_skipped' in report:
        lines += ['', 'Middlebury skipped: ' + report['middlebury_skipped']]
    lines += ['', '## Scenes']
    for scene, table in report['scenes'].items():
        lines += _scene_lines(scene, table, methods)
    if 'timing_ms' in report:
        t = report['timing_ms']
        lines += ['', '## Post-inference time, 1280x720, one thread (median of {} rounds, '
                  'ms)'.format(t['repeats']), '',
                  '| configuration | update | cloud | colorize | total |',
                  '|---|---|---|---|---|']
        for name in ('legacy', 'fused', 'legacy_node', 'fused_node'):
            v = t[name]
            lines.append('| {} | {:.2f} | {:.2f} | {:.2f} | {:.2f} |'.format(
                name, v['update'], v['cloud'], v['colorize'], v['total']))
        lines += ['', '`legacy`/`fused`: cloud at stride 1 (the legacy cloud without the edge '
                  'test), uncertainty on (goal `time_ms_full`). `*_node`: alignment_node\'s '
                  'defaults, cloud stride 2, no uncertainty (goal `time_ms`). Ratios to the '
                  'legacy stage of the same rounds: {:.2f} (node), {:.2f} (full).'.format(
                      t['fused_node']['total'] / t['legacy_node']['total'],
                      t['fused']['total'] / t['legacy']['total'])]
    return lines


def write_reports(report, out_dir):
    """report.json and report.md in ``out_dir``."""
    with open(os.path.join(out_dir, 'report.json'), 'w') as f:
        json.dump(report, f, indent=1, sort_keys=True, default=float)
        f.write('\n')
    with open(os.path.join(out_dir, 'report.md'), 'w') as f:
        f.write('\n'.join(markdown(report)) + '\n')


def write_plots(report, out_dir):
    """abs_rel_by_range.png (the far-range figure) and per_frame.png (matplotlib, Agg)."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return
    methods = report['methods']
    bands = ['0-10 m', '10-20 m', '20-40 m', '40-80 m']
    drive = report['scenes']['driving']
    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(bands))
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        ax.bar(x + (i - (len(methods) - 1) / 2.0) * width,
               [drive[m][b]['abs_rel'] for b in bands], width, label=m)
    ax.axhline(GOALS['abs_rel_20_80'], color='k', lw=0.8, ls='--', label='goal 20-80 m')
    ax.set_xticks(x)
    ax.set_xticklabels(bands)
    ax.set_ylabel('AbsRel')
    ax.set_yscale('log')
    ax.set_title('driving: AbsRel by range band (stereo reaches 20 m)')
    ax.grid(axis='y', alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, 'abs_rel_by_range.png'), dpi=100)
    plt.close(fig)
    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for m in methods:
        fr = drive[m]['frames']
        axes[0].plot([f['abs_rel'] for f in fr], label=m)
        axes[1].plot([f['density'] for f in fr], label=m)
    axes[0].set_ylabel('AbsRel per frame')
    axes[0].set_yscale('log')
    axes[1].set_ylabel('density')
    axes[1].set_xlabel('frame (the sequences back to back)')
    for a in axes:
        a.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, 'per_frame.png'), dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--quick', action='store_true', help='small run (under a minute)')
    parser.add_argument('--out', default=None, help='directory for report.md/json and plots')
    parser.add_argument('--repeats', type=int, default=None, help='timing rounds')
    parser.add_argument('--methods', default=None, help='comma-separated subset of ' +
                        ', '.join(METHODS + ABLATIONS))
    parser.add_argument('--no-timing', action='store_true')
    parser.add_argument('--no-middlebury', action='store_true')
    args = parser.parse_args(argv)
    methods = tuple(args.methods.split(',')) if args.methods else None
    run_benchmark(quick=args.quick, out_dir=args.out, repeats=args.repeats, methods=methods,
                  timing=not args.no_timing, middlebury=not args.no_middlebury)
    return 0


if __name__ == '__main__':
    sys.exit(main())

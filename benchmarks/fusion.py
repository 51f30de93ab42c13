"""
Fusion benchmark: metric depth on held-out scenes, from a simulated network as wrong as DA-V2.

HELD-OUT RULE (benchmarks/scenes.py): every scene comes from (family, seed). Seeds 0-39 are
the development set: the simulated network is calibrated on them and aligner changes are
tuned on them. Seeds 1000-1029 (30 scenes per family) are the held-out set: the goals and
this report use them, and nothing is tuned on them. ``--dev`` runs the development set.

1. **Calibration** (printed first): the simulated DA-V2 (benchmarks/sim_network.py) after
   the optimal per-image affine in inverse depth (``core.metrics.evaluate_affine_invariant``,
   disparity space: the DA-V2 / Marigold protocol) against the DA-V2 paper's ViT-S figures:
   driving against KITTI (AbsRel 0.078, delta1 0.936, to 80 m), indoor and Middlebury against
   NYU-D (0.053, 0.973, to 10 m); within 15 % of the AbsRel counts as calibrated.
2. **Goals** on the held-out scenes, each with its baselines of the same run:

   * ``stereo`` (trusted stereo alone, +inf where it says too far);
   * ``stereo_lsq`` (stereo, else the mono aligned by one plain least-squares affine);
   * ``fused``: today's MetricAligner called as alignment_node calls it: the options from
     config/zed_depth.yaml's alignment_node section through
     ``nodes_core.config.make_aligner``, the baseline of the right camera_info (the scene's),
     ``update(relative, depth, confidence, guide=bgr, camera=camera)``; the uncertainty on
     (the node computes it while ~/uncertainty has a subscriber);
   * ``oracle``: a bound, not a method. It knows the true per-pixel correction of the mono
     (after a least-squares affine to the ground truth) wherever trusted stereo reaches, and
     interpolates it (in log, by normalised convolution) everywhere else; +inf beyond
     ``max_output_depth``. Where even it misses a goal, the network's errors beyond the
     stereo's reach make the goal unreachable for any correction learnt from the stereo.
     It is optimistic: it takes the ground truth on every trusted stereo pixel, the
     stereo's wrong ones included;
   * ``select_gt`` and ``select_stereo`` (``SelectionBound``): realistic bounds. Per pixel
     the better (by the ground truth: a perfect detector of the stereo's errors) of the
     trusted stereo and the mono with a correction smooth at 4 px, spread as the oracle
     spreads its; the correction is the exact one (``select_gt``: the best smooth
     correction there is) or learnt robustly from the real stereo (``select_stereo``:
     what the stereo can teach). They never output the ground truth. A goal below
     ``select_gt`` is unreachable for a method that corrects the mono smoothly and takes or
     leaves the stereo per pixel; one between the two needs more than the stereo tells;
   * ``gate_layers`` (``GateLayersBound``): the bound that explains a miss under this stereo.
     From the aligner's own outputs (``fused``'s, and the corrected mono: a second aligner
     with ``fuse_stereo=False``): per trusted stereo pixel the best by the ground truth of
     the stereo, the output and the corrected mono (a perfect gate); each hole pixel
     corrected by the median ``stereo / corrected mono`` of the trusted pixels of its object
     (the simulation's exact objects, the frames' ``ids``: ``scenes._depth_layers`` for
     Middlebury), where the object has at least 20 of them and the median is within 10 %
     of 1; else the output. It learns from the real stereo only, SGBM's wrong targets
     included: a goal below it needs more than a perfect gate and the true objects;
   * ``baseline`` (``--baseline-accuracy COMMIT``): the MetricAligner of an earlier commit,
     read from git history (benchmarks/git_baseline.py), with the options alignment_node had
     at that commit (its option defaults and config/zed_depth.yaml). Stored
     figures of today's aligner (commit a6bfff9) are in benchmarks/baseline_a6bfff9.json.

   Each goal is the mean over the held-out scenes of a per-scene value; the worst decile
   (mean of the worst tenth of the scenes) is printed beside it.
3. **Time**: the post-inference stage with alignment_node's settings (update without
   uncertainty, image guide, camera; the cloud at stride 2 with colours; colorize) at
   1280x720 on one thread, interleaved in the same rounds with the stage of commit a6bfff9
   (today's aligner, from git history); the goal is that it does not exceed it.

Usage: python benchmarks/fusion.py [--quick] [--dev] [--out DIR] [--scenes N] ...
``run_benchmark(...) -> dict`` does the same as a function. This prints figures; it is not
a test (test/test_core_fusion_bench.py runs a small seeded version with margins).
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
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)        # scenes, sim_network, git_baseline next to this file

import cv2  # noqa: E402
from depth_ros.core.pointcloud import depth_to_cloud  # noqa: E402
import numpy as np  # noqa: E402
import scenes  # noqa: E402
import sim_network  # noqa: E402

BASELINE_COMMIT = 'a6bfff9'          # today's aligner: the time goal's reference
FIXTURE = os.path.join(HERE, 'baseline_a6bfff9.json')
BANDS = ((0.0, 10.0), (10.0, 20.0), (20.0, 40.0), (40.0, 80.0))
EVAL_MAX_M = 80.0
METHODS = ('stereo', 'stereo_lsq', 'fused', 'oracle', 'select_gt', 'select_stereo',
           'gate_layers')
# Bounds, not methods: AbsRel goals only.
BOUNDS = ('oracle', 'select_gt', 'select_stereo', 'gate_layers')
GOALS = {
    # name: (target, 'max' (value <= target) | 'min' (value >= target) | 'band')
    'abs_rel_middlebury': (0.020, 'max'), 'abs_rel_road': (0.020, 'max'),
    'abs_rel_20_80': (0.08, 'max'), 'flicker_cost': (1.10, 'max'),
    'density': (0.99, 'min'), 'stereo_valid_ratio': (1.10, 'max'),
    'sky_inf': (0.98, 'min'), 'calibration_1sigma': (0.68, 'band'), 'flying': (0.01, 'max'),
    'time_ratio': (1.0, 'max'),
}
CALIBRATION_TOLERANCE = 0.08     # |fraction within 1 sigma - 0.68| counted as met
TIME_NOISE = 0.05                # the time ratio of identical code varies this much here


# ============================================================================ methods

def node_options(frame, core=None, **overrides):
    """
    Return the MetricAligner options as alignment_node builds them for this scene's camera.

    config/zed_depth.yaml's alignment_node section over the parameter defaults
    (``nodes_core.config.ALIGNMENT_PARAMS``), mapped by ``nodes_core.config.aligner_options``;
    the baseline replaced by the right camera_info's (the scene's), as the node does. For the
    core of an earlier commit (``core.commit``), that commit's option defaults and YAML: the
    node as it ran then.
    """
    from depth_ros.nodes_core import config
    values = {p.name: p.default for p in config.ALIGNMENT_PARAMS}
    values.update(_yaml_section())
    commit = getattr(core, 'commit', 'this tree')
    if commit != 'this tree':
        values.update({s.name: s.default for s in core.alignment_options.option_specs()})
        values.update(_yaml_section(commit))
    values['baseline_m'] = frame['baseline_m']
    options = config.aligner_options(values)
    if commit != 'this tree':
        # Options added since that commit: its aligner has no such option (ran without it).
        known = set(s.name for s in core.alignment_options.option_specs())
        options = {k: v for k, v in options.items() if k in known}
    options.update(overrides)
    return options


_YAML = {}


def _yaml_section(commit=None):
    """config/zed_depth.yaml's alignment_node parameters, of this tree or of ``commit``."""
    if commit not in _YAML:
        import subprocess
        import yaml
        if commit is None:
            with open(os.path.join(ROOT, 'config', 'zed_depth.yaml')) as f:
                text = f.read()
        else:
            text = subprocess.run(('git', 'show', commit + ':config/zed_depth.yaml'), cwd=ROOT,
                                  check=True, stdout=subprocess.PIPE,
                                  timeout=120).stdout.decode()
        _YAML[commit] = yaml.safe_load(text)['/**/alignment_node']['ros__parameters']
    return _YAML[commit]


def trusted_stereo(frame, o=None):
    """Return the stereo pixels the aligner trusts (alignment_node's range and confidence)."""
    st, conf = frame['stereo'], frame['confidence']
    lo, hi, c = (0.3, 20.0, 50.0) if o is None else \
        (o['min_depth'], o['max_depth'], o['confidence_threshold'])
    with np.errstate(invalid='ignore'):
        return np.isfinite(st) & (st >= lo) & (st <= hi) & (conf <= c)


class StereoAlone(object):
    """Stereo where trusted, +inf where it says too far, NaN elsewhere."""

    def process(self, frame):
        out = np.where(trusted_stereo(frame), frame['stereo'], np.nan).astype(np.float32)
        out[np.isposinf(frame['stereo'])] = np.inf
        return out, None, {}


def _mono_at(frame):
    st = frame['stereo']
    h, w = st.shape
    return cv2.resize(frame['rel'], (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float64)


def _lstsq_affine(x, y):
    a = np.stack([x, np.ones(x.size)], 1)
    return np.linalg.lstsq(a, y, rcond=None)[0]


class StereoElseLeastSquares(object):
    """Stereo where trusted, else the mono aligned by one plain least-squares affine."""

    def process(self, frame):
        st = frame['stereo']
        rel = _mono_at(frame)
        ok = trusted_stereo(frame)
        out = np.full(st.shape, np.nan, np.float32)
        if ok.sum() >= 2:
            s, t = _lstsq_affine(rel[ok], 1.0 / st[ok].astype(np.float64))
            inv = s * rel + t
            with np.errstate(divide='ignore'):
                out = np.where(inv > 1.0 / 100.0, 1.0 / inv, np.inf).astype(np.float32)
        out[ok] = st[ok]
        return out, None, {}


def _smooth_fill(values, known, down=4):
    """
    Return a smooth map of the known values of ``values``, filled everywhere.

    Normalised convolution at growing scales, computed at 1/``down`` of the size (area
    averages of the known values, i.e. blocks of ``down`` pixels) and resized back
    (bilinear): each block takes the finest scale that has known values nearby.
    """
    h, w = values.shape
    size = (max(1, w // down), max(1, h // down))
    val = cv2.resize(np.where(known, values, 0.0).astype(np.float32), size,
                     interpolation=cv2.INTER_AREA)
    wgt = cv2.resize(known.astype(np.float32), size, interpolation=cv2.INTER_AREA)
    out = np.zeros_like(val)
    filled = np.zeros(val.shape, bool)
    for sigma in (0.5, 1, 2, 4, 8, 16, 32, 64):
        num = cv2.GaussianBlur(val, (0, 0), sigma)
        den = cv2.GaussianBlur(wgt, (0, 0), sigma)
        take = ~filled & (den > 1e-3)
        out[take] = num[take] / den[take]
        filled |= take
        if filled.all():
            break
    return cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR)


def _spread(values, known, down=4):
    """
    Fill the unknown pixels of a float map by normalised convolution at growing scales.

    The fill is ``_smooth_fill``'s; known pixels keep their values.
    """
    return np.where(known, values, _smooth_fill(values, known, down))


class Oracle(object):
    """
    The bound: the true correction where trusted stereo reaches, interpolated beyond.

    The mono gets the least-squares affine (in inverse depth) to the ground truth on the
    pixels trusted stereo reaches; there the output is the ground truth itself (the exact
    per-pixel correction), and the log correction is spread from them to every other pixel
    (normalised convolution at growing scales). Inverse depth at or below 1/100 m is +inf,
    as the aligner's ``max_output_depth``.
    """

    def process(self, frame):
        gt = frame['gt']
        rel = _mono_at(frame)
        reach = trusted_stereo(frame) & np.isfinite(gt) & (gt > 0)
        h, w = gt.shape
        if reach.sum() < 2:
            return np.full((h, w), np.nan, np.float32), None, {}
        s, t = _lstsq_affine(rel[reach], 1.0 / gt[reach])
        mono = s * rel + t
        with np.errstate(divide='ignore', invalid='ignore'):
            ok = reach & (mono > 0)
            logc = np.where(ok, np.log((1.0 / gt) / mono), 0.0)
        corr = np.exp(_spread(logc, ok).astype(np.float64))
        inv = np.where(mono > 0, mono * corr, 0.0)
        with np.errstate(divide='ignore'):
            out = np.where(inv > 1.0 / 100.0, 1.0 / inv, np.inf).astype(np.float32)
        out[reach] = gt[reach]
        return out, None, {}


BLOCK_PX = 4            # the selection bounds' correction: blocks of this many pixels
STEREO_BAND = 0.3       # ... learnt from the stereo within this relative band of the mono
STEREO_TOLERANCE = 0.03  # ... and within this (plus 3 sigma of its noise) of the smooth fit


class SelectionBound(object):
    """
    A realistic bound: per pixel, the better of the trusted stereo and a smoothly corrected mono.

    The mono gets the oracle's affine (least squares to the ground truth where trusted stereo
    reaches) and a correction that is smooth at ``BLOCK_PX`` pixels (finer than the
    aligner's statistics grid), spread beyond the stereo's reach as the oracle spreads its:

    * ``learn_from='ground_truth'`` (``select_gt``): the exact correction of the trusted
      pixels, averaged over the blocks: the best smooth correction there is;
    * ``learn_from='stereo'`` (``select_stereo``): learnt from the real trusted stereo
      instead: the stereo within ``STEREO_BAND`` of the mono (the aligner's band for its
      correction), then, twice, within ``STEREO_TOLERANCE`` plus 3 sigma of its noise of
      the smooth fit (a robust fit): what the stereo can teach a smooth correction. It is a
      reference more than a strict bound: a cleverer learner might extract more.

    Where the stereo is trusted, the ground truth picks whichever of the stereo and the
    corrected mono is closer (a perfect detector of the stereo's errors); elsewhere the
    corrected mono. Unlike ``oracle`` it never outputs the ground truth: SGBM's and the
    ZED's wrong pixels cost what the best smooth mono costs there, and the holes what a
    correction smooth at a few pixels leaves. +inf at or beyond 100 m, as the aligner's
    ``max_output_depth``.
    """

    def __init__(self, learn_from):
        if learn_from not in ('ground_truth', 'stereo'):
            raise ValueError('`learn_from` must be ground_truth or stereo, got {!r}'.format(
                learn_from))
        self.learn_from = learn_from

    def process(self, frame):
        gt = frame['gt']
        st = frame['stereo'].astype(np.float64)
        trusted = trusted_stereo(frame)
        reach = trusted & np.isfinite(gt) & (gt > 0)
        h, w = gt.shape
        if reach.sum() < 2:
            return np.full((h, w), np.nan, np.float32), None, {}
        rel = _mono_at(frame)
        s, t = _lstsq_affine(rel[reach], 1.0 / gt[reach])
        mono = s * rel + t
        target = gt if self.learn_from == 'ground_truth' else st
        with np.errstate(divide='ignore', invalid='ignore'):
            ok = reach & (mono > 0)
            logc = np.where(ok, np.log((1.0 / target) / mono), 0.0)
        if self.learn_from == 'stereo':
            ok &= np.abs(np.exp(logc) - 1.0) <= STEREO_BAND
            # Robust: twice, the stereo further from the smooth correction than 3 % plus 3
            # sigma of its own noise (relative: sigma_d z / (f B)) is left out.
            noise = frame['disparity_noise_px'] / (frame['camera'].fx * frame['baseline_m'])
            with np.errstate(invalid='ignore'):
                tol = STEREO_TOLERANCE + 3.0 * noise * st
            for _ in range(2):
                ok &= np.abs(logc - _smooth_fill(logc, ok, BLOCK_PX)) <= tol
        inv = np.where(mono > 0, mono * np.exp(_smooth_fill(logc, ok, BLOCK_PX)), 0.0)
        with np.errstate(divide='ignore', invalid='ignore'):
            out = np.where(inv > 1.0 / 100.0, 1.0 / inv, np.inf)
            take = trusted & (np.abs(st - gt) < np.abs(out - gt))     # NaN gt: False
        out[take] = st[take]
        return out.astype(np.float32), None, {}


LAYER_MIN_PIXELS = 20   # gate_layers: an object's correction needs this many trusted pixels
LAYER_WITHIN = 0.10     # ... and its median ratio within this of 1


def _candidate_errors(depth, gt):
    """|p - g| / g per pixel: a +inf prediction at a finite gt 1.0 (as ``_errors``), NaN +inf."""
    err = _errors(depth, gt)[0]
    return np.where(np.isnan(err), np.inf, err)


def gate_layers(gt, stereo, trusted, output, mono, ids, min_pixels=LAYER_MIN_PIXELS,
                within=LAYER_WITHIN):
    """
    Return the ``gate_layers`` bound's depth for one frame (see ``GateLayersBound``).

    ``output``: the aligner's depth; ``mono``: the corrected mono (the aligner with
    ``fuse_stereo=False``); ``trusted``: the trusted stereo pixels; ``ids``: the simulation's
    object ids (None: no hole is corrected). Where the stereo is trusted and the ground truth
    known, the best of the stereo, the output and the corrected mono by the ground truth;
    each other pixel of an object with at least ``min_pixels`` trusted pixels whose median
    ``stereo / mono`` is within ``within`` of 1, the corrected mono times that median; else
    the output.
    """
    st = stereo.astype(np.float64)
    mo = mono.astype(np.float64)
    out = output.astype(np.float64).copy()
    if ids is not None:
        with np.errstate(divide='ignore', invalid='ignore'):
            ratio = st / mo
            usable = trusted & np.isfinite(ratio) & (ratio > 0)
            hole = ~trusted & np.isfinite(mo) & (mo > 0)
        obj, count = np.unique(ids[usable], return_counts=True)
        lab, val = ids[usable], ratio[usable]
        for o in obj[count >= min_pixels]:
            med = float(np.median(val[lab == o]))
            if abs(med - 1.0) <= within:
                m = hole & (ids == o)
                out[m] = mo[m] * med
    with np.errstate(invalid='ignore'):
        gate = trusted & np.isfinite(gt) & (gt > 0)
    errs = np.stack([_candidate_errors(c, gt) for c in (st, output, mo)])
    best = np.argmin(errs, axis=0)
    cands = np.stack([st, output.astype(np.float64), mo])
    pick = np.take_along_axis(cands, best[None], 0)[0]
    out[gate] = pick[gate]
    return out.astype(np.float32)


class GateLayersBound(object):
    """
    A bound that explains a miss: a perfect gate, and the holes corrected per true object.

    From the aligner's own outputs, called as alignment_node calls it (``fused``'s output of
    the same frame when the run has it, else its own aligner) and the corrected mono (a
    second aligner with ``fuse_stereo=False``: the correction without the fusion):

    * per trusted stereo pixel, the best by the ground truth of the stereo, the output and
      the corrected mono (a perfect detector of which to take);
    * each hole pixel (no trusted stereo) of an object of the simulation (the frame's
      ``ids``: ``scenes._depth_layers`` for Middlebury, which the aligner cannot see) with
      at least ``LAYER_MIN_PIXELS`` trusted pixels whose median ``stereo / corrected mono``
      is within ``LAYER_WITHIN`` of 1: the corrected mono times that median; else the
      output.

    Unlike ``oracle`` and ``select_gt`` it learns only from the real stereo: where the
    stereo's targets are wrong (the fattened borders of occlusions) it has nothing right to
    learn from. A goal below it needs more than a perfect gate and the exact objects.
    """

    def __init__(self, frame):
        self.mono = Aligner(frame, today_core(), fuse_stereo=False, compute_uncertainty=False)
        self.fused = None
        self.first = frame

    def process(self, frame, fused_depth=None):
        if fused_depth is None:     # the run has no ``fused``: the same aligner of its own
            if self.fused is None:
                self.fused = make_method('fused', self.first)
            fused_depth = self.fused.process(frame)[0]
        mono = self.mono.process(frame)[0]
        out = gate_layers(frame['gt'], frame['stereo'], trusted_stereo(frame), fused_depth,
                          mono, frame.get('ids'))
        return out, None, {}


def camera_of(core, camera):
    """``camera`` as the PinholeCamera class of ``core`` (an earlier commit's has its own)."""
    cls = core.camera.PinholeCamera
    if isinstance(camera, cls):
        return camera
    return cls(camera.fx, camera.fy, camera.cx, camera.cy, camera.width, camera.height)


class Aligner(object):
    """A MetricAligner (today's, or a baseline commit's) called as alignment_node calls it."""

    def __init__(self, frame, core, **overrides):
        self.core = core
        self.aligner = core.alignment.MetricAligner(**node_options(frame, core, **overrides))

    def process(self, frame):
        res = self.aligner.update(frame['rel'], frame['stereo'], frame['confidence'],
                                  guide=frame['bgr'], camera=camera_of(self.core,
                                                                       frame['camera']))
        return res.depth, res.uncertainty, {'status': res.status}


def today_core():
    """Return this tree's depth_ros.core as a namespace like ``git_baseline.load_core``'s."""
    import types
    from depth_ros.core import alignment, camera, pointcloud, visualize
    return types.SimpleNamespace(alignment=alignment, camera=camera, pointcloud=pointcloud,
                                 visualize=visualize, commit='this tree')


_BASELINE = {}


def baseline_core(commit):
    """depth_ros.core of ``commit`` from git history (cached)."""
    if commit not in _BASELINE:
        from git_baseline import load_core
        _BASELINE[commit] = load_core(commit)
    return _BASELINE[commit]


def make_method(name, frame, baseline_commit=None):
    """Fresh method state for a scene."""
    if name == 'stereo':
        return StereoAlone()
    if name == 'stereo_lsq':
        return StereoElseLeastSquares()
    if name == 'oracle':
        return Oracle()
    if name == 'select_gt':
        return SelectionBound('ground_truth')
    if name == 'select_stereo':
        return SelectionBound('stereo')
    if name == 'gate_layers':
        return GateLayersBound(frame)
    if name == 'fused':
        return Aligner(frame, today_core(), compute_uncertainty=True)
    if name == 'baseline':
        return Aligner(frame, baseline_core(baseline_commit), compute_uncertainty=True)
    raise ValueError('unknown method {!r}'.format(name))


# ============================================================================ metrics

def flying_fraction(z, gt, tol=0.1, radius=2):
    """
    Fraction of the finite cloud points that float between surfaces.

    A point is flying when its pixel is at a depth discontinuity of the ground truth (its
    (2r+1)^2 window spans more than a factor 1.25) and its depth is more than ``tol``
    (relative) away from every ground-truth depth of that window.
    """
    g = np.where(np.isfinite(gt), gt, 1e4).astype(np.float32)
    k = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    lo, hi = cv2.erode(g, k), cv2.dilate(g, k)
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


def regions(frame):
    """Return the regions: all (< 80 m), road, range bands, stereo-valid pixels and holes."""
    gt = frame['gt']
    with np.errstate(invalid='ignore'):
        gt_ok = np.isfinite(gt) & (gt > 0) & (gt < EVAL_MAX_M)
    trusted = trusted_stereo(frame)
    out = {'all': gt_ok, 'stereo_valid': gt_ok & trusted, 'holes': gt_ok & ~trusted}
    if frame['road'] is not None:
        out['road'] = gt_ok & frame['road']
    if frame['family'] == 'road':
        for lo, hi in BANDS:
            out['{:g}-{:g} m'.format(lo, hi)] = gt_ok & (gt >= lo) & (gt < hi)
        out['20-80 m'] = gt_ok & (gt >= 20.0)
    return out


class SceneScores(object):
    """Per-pixel errors of one method over the frames of one scene."""

    def __init__(self):
        self.sums = {}        # region -> [sum of errors, covered, delta1 hits, pixels]
        self.calib = [0, 0, 0]
        self.frames = []

    def add(self, frame, depth, unc, info, flying=False):
        """Score one frame's output."""
        gt = frame['gt']
        err, delta_ok = _errors(depth, gt)
        regs = regions(frame)
        covered = ~np.isnan(depth)
        for key, mask in regs.items():
            m = mask & covered
            s = self.sums.setdefault(key, [0.0, 0, 0, 0])
            s[0] += float(err[m].sum())
            s[1] += int(m.sum())
            s[2] += int(delta_ok[m].sum())
            s[3] += int(mask.sum())
        if unc is not None:
            m = regs['all'] & np.isfinite(depth) & np.isfinite(unc) & (unc > 0)
            d = np.abs(depth[m].astype(np.float64) - gt[m])
            self.calib[0] += int((d <= unc[m]).sum())
            self.calib[1] += int((d <= 2.0 * unc[m]).sum())
            self.calib[2] += int(m.sum())
        sky = frame['sky']
        rec = {'index': frame['index'], 'status': info.get('status', ''),
               'full_stereo': frame['full_stereo'], 'density': float(covered.mean()),
               'sky_inf': float(np.isposinf(depth[sky]).mean()) if sky.any() else None}
        a = regs['all'] & covered
        rec['abs_rel'] = float(err[a].mean()) if a.any() else float('nan')
        if flying:
            cloud = depth_to_cloud(np.ascontiguousarray(depth, np.float32), frame['camera'],
                                   edge_threshold=node_edge_threshold())
            rec['flying'] = flying_fraction(cloud['z'], gt)
        self.frames.append(rec)

    def summary(self):
        """Per-scene figures, JSON-ready."""
        out = {}
        for key, (se, n, hits, pixels) in self.sums.items():
            out[key] = {'abs_rel': se / n if n else float('nan'),
                        'delta1': hits / float(n) if n else float('nan'),
                        'coverage': n / float(pixels) if pixels else float('nan')}
        fr = self.frames
        out['density'] = min(f['density'] for f in fr)
        sky = [f['sky_inf'] for f in fr if f['sky_inf'] is not None]
        out['sky_inf'] = float(np.mean(sky)) if sky else float('nan')
        fly = [f['flying'] for f in fr if 'flying' in f]
        out['flying'] = float(np.mean(fly)) if fly else float('nan')
        c1, c2, n = self.calib
        out['calib_1sigma'] = c1 / float(n) if n else float('nan')
        out['calib_2sigma'] = c2 / float(n) if n else float('nan')
        out['statuses'] = {s: sum(1 for f in fr if f['status'] == s)
                           for s in sorted(set(f['status'] for f in fr))}
        full = [f['abs_rel'] for f in fr if f['full_stereo']]
        out['abs_rel_full_frames'] = float(np.mean(full)) if full else float('nan')
        out['frames'] = fr
        return out


def run_scene(frames, methods, baseline_commit=None, flicker=True):
    """Every method over one scene's frames (state carried); {method: summary}."""
    state = {m: make_method(m, frames[0], baseline_commit) for m in methods}
    scores = {m: SceneScores() for m in methods}
    fly = frames[0]['family'] in ('road', 'middlebury')
    for frame in frames:
        fused = None
        for m in methods:
            if m == 'gate_layers':      # reuses the aligner's output of this frame
                depth, unc, info = state[m].process(frame, fused)
            else:
                depth, unc, info = state[m].process(frame)
            if m == 'fused':
                fused = depth
            scores[m].add(frame, depth, unc, info, flying=fly and m == 'fused')
    out = {m: s.summary() for m, s in scores.items()}
    if flicker:
        # The same full-stereo frames, each with a fresh aligner: the flicker reference.
        for m in methods:
            if m not in ('fused', 'baseline'):
                continue
            fresh = SceneScores()
            for frame in frames:
                if frame['full_stereo']:
                    depth, unc, info = make_method(m, frame, baseline_commit).process(frame)
                    fresh.add(frame, depth, unc, info)
            single = fresh.summary()['abs_rel_full_frames']
            out[m]['abs_rel_fresh_per_frame'] = single
            out[m]['flicker_cost'] = out[m]['abs_rel_full_frames'] / single
    return out


# ============================================================================ aggregation

def worst_decile(values, higher_is_worse=True):
    """Mean of the worst tenth of ``values`` (at least one value); NaN when empty."""
    v = np.asarray([x for x in values if x == x], np.float64)
    if v.size == 0:
        return float('nan')
    v = np.sort(v)
    if not higher_is_worse:
        v = v[::-1]
    n = max(1, int(np.ceil(0.1 * v.size)))
    return float(v[-n:].mean())


def _per_scene(report, family, method, key):
    """Return the per-scene values of ``key`` (a path like 'all/abs_rel' or 'density')."""
    out = []
    for scene in report['families'].get(family, []):
        v = scene['methods'].get(method)
        if v is None:
            continue
        for k in key.split('/'):
            v = v.get(k) if isinstance(v, dict) else None
        out.append(float('nan') if v is None else float(v))
    return out


def _stat(values, higher_is_worse=True):
    v = [x for x in values if x == x]
    return {'mean': float(np.mean(v)) if v else float('nan'),
            'worst_decile': worst_decile(v, higher_is_worse), 'scenes': len(v)}


def goal_values(report, method):
    """Per goal: {'mean', 'worst_decile', 'scenes'} of ``method`` (NaN where not measured)."""
    fams = [f for f in scenes.FAMILIES if f in report['families']]
    g = {}
    g['abs_rel_middlebury'] = _stat(_per_scene(report, 'middlebury', method, 'all/abs_rel'))
    g['abs_rel_road'] = _stat(_per_scene(report, 'road', method, 'road/abs_rel'))
    g['abs_rel_20_80'] = _stat(_per_scene(report, 'road', method, '20-80 m/abs_rel'))
    g['abs_rel_indoor'] = _stat(_per_scene(report, 'indoor', method, 'all/abs_rel'))
    g['flicker_cost'] = _stat(sum((_per_scene(report, f, method, 'flicker_cost')
                                   for f in fams), []))
    g['density'] = _stat(sum((_per_scene(report, f, method, 'density') for f in fams), []),
                         higher_is_worse=False)
    ratios = []
    for f in fams:
        mine = _per_scene(report, f, method, 'stereo_valid/abs_rel')
        ref = _per_scene(report, f, 'stereo', 'stereo_valid/abs_rel')
        ratios += [a / b if b > 0 else float('nan') for a, b in zip(mine, ref)]
    g['stereo_valid_ratio'] = _stat(ratios)
    g['sky_inf'] = _stat(_per_scene(report, 'road', method, 'sky_inf'), higher_is_worse=False)
    cal = [c for c in sum((_per_scene(report, f, method, 'calib_1sigma') for f in fams), [])
           if c == c]
    g['calibration_1sigma'] = _stat(cal)
    if cal:     # the worst decile of the distance to 68 %, on the side of the mean
        side = 1.0 if np.mean(cal) >= 0.68 else -1.0
        g['calibration_1sigma']['worst_decile'] = 0.68 + side * worst_decile(
            [abs(c - 0.68) for c in cal])
    g['flying'] = _stat(sum((_per_scene(report, f, method, 'flying')
                             for f in ('road', 'middlebury') if f in fams), []))
    if method in BOUNDS:
        # Bounds on the AbsRel goals only: they have no sky rule, no uncertainty, no state,
        # and leave a frame without stereo empty.
        for k in ('flicker_cost', 'density', 'sky_inf', 'calibration_1sigma', 'flying'):
            g[k] = _stat([])
    return g


def goal_met(name, value):
    """Whether ``value`` meets goal ``name``."""
    target, kind = GOALS[name]
    if value != value:
        return False
    if kind == 'max':
        return value <= target + (TIME_NOISE if name == 'time_ratio' else 0.0)
    if kind == 'min':
        return value >= target
    return abs(value - target) <= CALIBRATION_TOLERANCE


# ============================================================================ timing

def time_post_inference(repeats=20, width=1280, baseline_commit=BASELINE_COMMIT):
    """
    Time the post-inference stage with alignment_node's settings, against ``baseline_commit``.

    update (no uncertainty, image guide, camera) + depth_to_cloud (colours, stride 2) +
    colorize at ``width`` (1280 x 720), one thread, for today's core, the core of
    ``baseline_commit`` (from git history) and a second instance of today's (the A/A check:
    its ratio shows the noise of the measurement), interleaved: in each round every stage
    runs twice in a rotating order and keeps its faster time; the ratio is the median of the
    rounds' ratios (both stages under the same load of the other sessions).

    ``today_node``: today's stage as alignment_node runs it (``prepare_during_inference``, its
    default): ``prepare`` and the cloud's colours, which need only the stereo set, run while
    the network infers and are not timed; ``finish`` + the cloud + colorize are, the time
    after inference (``ratio_node``). The baseline's stage had no stereo side: all of it came
    after inference. ``ratio`` (the whole stage in one call) is the CPU both do per frame.
    """
    cv2.setNumThreads(1)
    frames = scenes.road_scene(2000, n_frames=4, width=width)     # outside both sets
    cores = {'today': today_core()}
    try:
        cores['baseline'] = baseline_core(baseline_commit)
    except Exception as exc:       # BaselineUnavailable, or an old core that fails to load
        return {'skipped': '{}: {}'.format(type(exc).__name__, exc), 'repeats': repeats}
    cores['today_again'] = cores['today']
    cores['today_node'] = cores['today']
    edge = node_edge_threshold()
    stages = {k: (c.alignment.MetricAligner(**node_options(frames[0], c,
                                                           compute_uncertainty=False)),
                  camera_of(c, frames[0]['camera']),
                  c.pointcloud.depth_to_cloud, c.visualize.colorize) for k, c in cores.items()}
    times = {k: [] for k in stages}
    names = list(stages)
    for i in range(repeats + 3):
        f = frames[(i // 2) % len(frames)]
        best = {}
        k = i % len(names)
        order = names[k:] + names[:k]
        for name in order + order[::-1]:
            aligner, cam, cloud, colour = stages[name]
            if name == 'today_node':     # the stereo side, during inference in the node
                prepared = aligner.prepare(f['stereo'], f['confidence'], guide=f['bgr'],
                                           camera=cam)
                colours = cores[name].pointcloud.cloud_colours(f['bgr'], 2)
                t0 = time.perf_counter()
                d = aligner.finish(f['rel'], prepared).depth
                cloud(d, cam, colours=colours, stride=2, edge_threshold=edge)
            else:
                t0 = time.perf_counter()
                d = aligner.update(f['rel'], f['stereo'], f['confidence'], guide=f['bgr'],
                                   camera=cam).depth
                cloud(d, cam, bgr=f['bgr'], stride=2, edge_threshold=edge)
            colour(d, 0.3, 10.0, reverse=True)
            best[name] = min(best.get(name, np.inf), time.perf_counter() - t0)
        if i >= 3:      # warm-up: buffers, caches, page faults
            for name in names:
                times[name].append(best[name])
    out = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
    for key, num, ref in (('ratio', 'today', 'baseline'), ('ratio_aa', 'today', 'today_again'),
                          ('ratio_node', 'today_node', 'baseline')):
        paired = np.array(times[num]) / np.array(times[ref])
        out[key] = float(np.median(paired))
        out[key + '_iqr'] = [float(np.percentile(paired, 25)), float(np.percentile(paired, 75))]
    out['repeats'] = repeats
    out['baseline_commit'] = baseline_core(baseline_commit).commit
    return out


_EDGE = []


def node_edge_threshold():
    """alignment_node's cloud_edge_threshold from config/zed_depth.yaml (0: off)."""
    if not _EDGE:
        import yaml
        with open(os.path.join(ROOT, 'config', 'zed_depth.yaml')) as f:
            v = yaml.safe_load(f)['/**/alignment_node']['ros__parameters']
        _EDGE.append(float(v['cloud_edge_threshold']) or None)
    return _EDGE[0]


# ============================================================================ run

def run_benchmark(quick=False, out_dir=None, dev=False, n_scenes=None, seeds=None, families=None,
                  methods=None, widths=None, n_frames=None, timing=True, repeats=None,
                  calibration_dev=None, baseline_accuracy=None, baseline_commit=BASELINE_COMMIT,
                  echo=print):
    """
    Run the benchmark; write report.md and report.json to ``out_dir`` (if given).

    ``quick``: 6 scenes per family, the road at 640 px, 8 timing rounds. The full run: the 30
    held-out scenes per family, the road at 1280 x 720 (ZED HD720; the network at 518 px),
    indoor at 640 x 360, 30 timing rounds, and the calibration of the development set too.
    ``dev``: the development seeds instead of the held-out ones; ``seeds`` a subset of either.
    Returns the report dict.
    """
    t_start = time.perf_counter()
    cv2.setNumThreads(1)
    families = tuple(families or scenes.FAMILIES)
    methods = tuple(methods or METHODS)
    if baseline_accuracy:
        methods += ('baseline',)
    if seeds is None:
        seeds = scenes.DEV_SEEDS if dev else scenes.HELDOUT_SEEDS
        seeds = seeds[:n_scenes or (6 if quick else len(seeds))]
    elif not dev and set(seeds) - set(scenes.HELDOUT_SEEDS):
        raise ValueError('`seeds` {} are not all held-out seeds; pass dev=True for '
                         'development seeds'.format(list(seeds)))
    seeds = tuple(seeds)
    widths = dict(widths or {})
    if quick:
        widths.setdefault('road', 640)
    report = {'set': 'development' if dev else 'held-out', 'seeds': list(seeds),
              'methods': list(methods), 'widths': {f: widths.get(f, scenes.DEFAULT_WIDTH.get(f))
                                                   for f in families},
              'frames': {f: n_frames or scenes.DEFAULT_FRAMES[f] for f in families},
              'families': {}, 'calibration': {}, 'quick': bool(quick)}
    if calibration_dev is None:
        calibration_dev = not quick and not dev
    cal_scenes = _run_families(report, families, seeds, n_frames, widths, methods,
                               baseline_accuracy or baseline_commit)
    report['calibration']['scenes'] = [sim_network.calibration_row(f, v)
                                       for f, v in cal_scenes.items()]
    if calibration_dev:
        report['calibration']['dev'] = [sim_network.calibration_row(f, [
            sim_network.scene_calibration(scenes.make_scene(f, s, n_frames=1,
                                                            width=widths.get(f)))
            for s in scenes.DEV_SEEDS]) for f in cal_scenes]
    report['goals'] = {m: goal_values(report, m) for m in methods}
    if timing:
        report['timing_ms'] = time_post_inference(repeats or (8 if quick else 30),
                                                  baseline_commit=baseline_commit)
    fixture = load_fixture()
    if fixture is not None:
        report['fixture'] = fixture
    report['wall_s'] = time.perf_counter() - t_start
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, 'report.json'), 'w') as f:
            json.dump(report, f, indent=1, sort_keys=True, default=float)
            f.write('\n')
        with open(os.path.join(out_dir, 'report.md'), 'w') as f:
            f.write('\n'.join(markdown(report)) + '\n')
    for line in markdown(report):
        echo(line)
    return report


def _run_families(report, families, seeds, n_frames, widths, methods, commit):
    """Score every scene into ``report``; return each scene's calibration, by family."""
    cal_scenes = {}
    for family in families:
        if family == 'middlebury':
            try:
                import skimage  # noqa: F401
            except ImportError as exc:
                report['middlebury_skipped'] = str(exc)
                continue
        report['families'][family] = []
        cal_scenes[family] = []
        for seed in seeds:
            frames = scenes.make_scene(family, seed, n_frames=n_frames,
                                       width=widths.get(family))
            cal_scenes[family].append(sim_network.scene_calibration(frames))
            res = run_scene(frames, methods, commit)
            report['families'][family].append({'seed': seed, 'methods': res})
    return cal_scenes


def load_fixture(path=FIXTURE):
    """Return the stored goal figures of today's aligner (baseline_a6bfff9.json), or None."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_fixture(report, path=FIXTURE):
    """
    Store the goal figures of today's aligner (commit a6bfff9) as the fixture.

    From the ``baseline`` method when the run had it (``--baseline-accuracy a6bfff9``), else
    from ``fused`` when this tree's core is that commit's (``git diff`` empty).
    """
    import subprocess

    def git(*args):
        return subprocess.run(('git',) + args, cwd=ROOT, stdout=subprocess.PIPE, timeout=120)

    commit = baseline_core(BASELINE_COMMIT).commit
    method = 'baseline' if 'baseline' in report['goals'] else 'fused'
    if method == 'fused' and git('diff', '--quiet', commit, '--', 'depth_ros/core',
                                 'depth_ros/util.py').returncode != 0:
        raise RuntimeError('this tree\'s core differs from {}: run with --baseline-accuracy '
                           '{} to store its figures'.format(commit[:7], BASELINE_COMMIT))
    data = {'aligner_commit': commit, 'method': method,
            'benchmark_commit': git('rev-parse', 'HEAD').stdout.decode().strip(),
            'set': report['set'], 'seeds': report['seeds'], 'widths': report['widths'],
            'frames': report['frames'],
            'goals': {k: {'mean': v['mean'], 'worst_decile': v['worst_decile']}
                      for k, v in report['goals'][method].items()}}
    with open(path, 'w') as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write('\n')


# ============================================================================ report

def _f(v, pct=False, digits=4):
    if v is None or v != v:
        return 'n/a'
    return '{:.1f} %'.format(100 * v) if pct else '{:.{}f}'.format(v, digits)


GOAL_ROWS = (
    ('abs_rel_middlebury', 'Middlebury AbsRel', False),
    ('abs_rel_road', 'road pixels < 80 m AbsRel', False),
    ('abs_rel_20_80', '20-80 m AbsRel', False),
    ('abs_rel_indoor', 'indoor AbsRel (no goal)', False),
    ('flicker_cost', 'flicker: sequence / fresh aligner per frame', False),
    ('density', 'density (worst frame of a scene)', True),
    ('stereo_valid_ratio', 'stereo-valid pixels vs stereo alone', False),
    ('sky_inf', 'sky +inf', True),
    ('calibration_1sigma', 'uncertainty: |error| <= 1 sigma', True),
    ('flying', 'flying points (cloud)', True),
)


def _target(name):
    if name not in GOALS:
        return '-'
    t, kind = GOALS[name]
    if kind == 'band':
        return '{:.0%} ± {:.0%}'.format(t, CALIBRATION_TOLERANCE)
    return ('<= ' if kind == 'max' else '>= ') + ('{:.0%}'.format(t) if t < 1 and name in (
        'density', 'sky_inf', 'flying') else '{:g}'.format(t))


def _calibration_lines(report):
    lines = ['## Calibration of the simulated DA-V2 (affine-aligned in inverse depth)', '',
             '| family | paper (ViT-S) | AbsRel | worst decile | target ±15 % | in band | '
             'δ1 | paper δ1 |', '|---|---|---|---|---|---|---|---|']
    for which in ('dev', 'scenes'):
        for r in report['calibration'].get(which, []):
            lines.append('| {} ({}) | {} | {} | {} | {:.3f} ({:.3f}-{:.3f}) | {} | {} | {} |'
                         .format(r['family'], 'development' if which == 'dev' else
                                 report['set'], r['dataset'], _f(r['abs_rel']),
                                 _f(r['worst_decile_abs_rel']), r['target_abs_rel'],
                                 r['target_abs_rel'] * 0.85, r['target_abs_rel'] * 1.15,
                                 'yes' if r['within_band'] else '**no**', _f(r['delta1']),
                                 r['target_delta1']))
    return lines


def _goal_lines(report):
    methods = report['methods']
    fixture = report.get('fixture')
    head = ['goal', 'target'] + methods + (['a6bfff9 (stored)'] if fixture else []) + \
        ['met (fused)']
    lines = ['## Goals: mean over the scenes (worst decile)', '',
             '| ' + ' | '.join(head) + ' |', '|---' * len(head) + '|']
    for name, label, pct in GOAL_ROWS:
        cells = [label, _target(name)]
        for m in methods:
            v = report['goals'][m][name]
            cells.append('{} ({})'.format(_f(v['mean'], pct), _f(v['worst_decile'], pct)))
        if fixture:
            v = fixture['goals'].get(name, {})
            cells.append('{} ({})'.format(_f(v.get('mean'), pct),
                                          _f(v.get('worst_decile'), pct)))
        v = report['goals']['fused'][name]['mean']
        cells.append('-' if name not in GOALS else ('yes' if goal_met(name, v) else '**no**'))
        lines.append('| ' + ' | '.join(cells) + ' |')
    lines += ['', 'oracle, select_gt, select_stereo and gate_layers are bounds, not methods '
              '(AbsRel only): the oracle takes the ground truth where trusted stereo reaches; '
              'the selection bounds take, per pixel, the better of the stereo and the mono with '
              'the exact (select_gt) or the stereo-learnt (select_stereo) correction, smooth at '
              '{} px; gate_layers takes, per trusted stereo pixel, the best of the stereo, the '
              'aligner\'s output and its corrected mono (fuse_stereo off), and corrects each '
              'hole pixel by the median stereo / corrected mono of its true object\'s trusted '
              'pixels (>= {} of them, the median within {:.0%} of 1; else the output): what a '
              'perfect gate and the exact objects reach with the real stereo\'s targets.'
              .format(BLOCK_PX, LAYER_MIN_PIXELS, LAYER_WITHIN)]
    if fixture:
        keys = ('set', 'seeds', 'widths', 'frames')
        same = all(fixture.get(k) == report.get(k) for k in keys)
        lines += ['', 'Stored figures (benchmarks/{}): aligner {}, benchmark {}, {} set; {}.'
                  .format(os.path.basename(FIXTURE), fixture['aligner_commit'][:7],
                          fixture['benchmark_commit'][:7], fixture['set'],
                          'the same scenes as this run' if same else
                          '**other scenes or sizes than this run: not comparable**')]
    return lines


def _timing_lines(t):
    if 'skipped' in t:
        return ['Time goal not measured: ' + t['skipped']]
    return ['## Post-inference time, alignment_node\'s settings, 1280x720, one thread '
            '({} interleaved rounds)'.format(t['repeats']), '',
            '| stage | median ms |', '|---|---|',
            '| today (this tree), after inference as alignment_node runs it (finish, cloud, '
            'colorize; prepare during inference) | {:.2f} |'.format(t['today_node']),
            '| today (this tree), the whole stage in one call (update, cloud, colorize) | '
            '{:.2f} |'.format(t['today']),
            '| {} (git history): all of it after inference | {:.2f} |'.format(
                t['baseline_commit'][:7], t['baseline']),
            '| today, a second instance (A/A) | {:.2f} |'.format(t['today_again']), '',
            '| ratio: median of the rounds\' ratios (quartiles) | value |', '|---|---|',
            '| after inference, today / {} (goal <= 1, {:.0%} allowed for noise) | **{:.3f}** '
            '({:.3f}-{:.3f}): {} |'.format(
                t['baseline_commit'][:7], TIME_NOISE, t['ratio_node'], t['ratio_node_iqr'][0],
                t['ratio_node_iqr'][1],
                'met' if goal_met('time_ratio', t['ratio_node']) else '**not met**'),
            '| the whole stage (its CPU per frame), today / {} (not the goal: the stereo side '
            'runs during inference) | {:.3f} ({:.3f}-{:.3f}) |'.format(
                t['baseline_commit'][:7], t['ratio'], t['ratio_iqr'][0], t['ratio_iqr'][1]),
            '| today / today (A/A: the noise of the measurement) | {:.3f} ({:.3f}-{:.3f}) |'
            .format(t['ratio_aa'], t['ratio_aa_iqr'][0], t['ratio_aa_iqr'][1])]


def _family_lines(report, family, rows):
    methods = report['methods']
    regs = [r for r in ('all', 'road', '0-10 m', '10-20 m', '20-40 m', '40-80 m', '20-80 m',
                        'stereo_valid', 'holes') if r in rows[0]['methods'][methods[0]]]
    lines = ['', '### {}'.format(family), '', '| method | ' + ' | '.join(regs) +
             ' | statuses |', '|---' * (len(regs) + 2) + '|']
    for m in methods:
        cells = []
        for r in regs:
            st = _stat(_per_scene(report, family, m, r + '/abs_rel'))
            cells.append('{} ({})'.format(_f(st['mean']), _f(st['worst_decile'])))
        stat = {}
        for s in rows:
            for k, v in s['methods'][m]['statuses'].items():
                if k:
                    stat[k] = stat.get(k, 0) + v
        lines.append('| {} | {} | {} |'.format(m, ' | '.join(cells), ', '.join(
            '{} {}'.format(k, v) for k, v in sorted(stat.items())) or '-'))
    cov = _stat(_per_scene(report, family, 'stereo', 'all/coverage'))['mean']
    lines += ['', 'AbsRel over the pixels a method covers (a +inf answer at a finite ground '
              'truth counts 1); stereo alone covers {} of the pixels < 80 m.'.format(
                  _f(cov, True))]
    return lines


def markdown(report):
    """Return the report as markdown lines."""
    lines = ['# Fusion benchmark ({} set)'.format(report['set']), '',
             '{} scenes per family (seeds {}-{}), frames per scene {}, widths {}; {:.0f} s.'
             .format(len(report['seeds']), report['seeds'][0], report['seeds'][-1],
                     report['frames'], report['widths'], report.get('wall_s', 0.0))]
    if 'middlebury_skipped' in report:
        lines += ['', 'Middlebury skipped: ' + report['middlebury_skipped']]
    lines += [''] + _calibration_lines(report) + [''] + _goal_lines(report)
    if report.get('timing_ms'):
        lines += [''] + _timing_lines(report['timing_ms'])
    lines += ['', '## Per family: AbsRel by region, mean over scenes (worst decile)']
    for family, rows in report['families'].items():
        lines += _family_lines(report, family, rows)
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--quick', action='store_true', help='6 scenes per family, road at '
                        '640 px')
    parser.add_argument('--dev', action='store_true', help='the development set (tuning)')
    parser.add_argument('--scenes', type=int, default=None, help='scenes per family')
    parser.add_argument('--families', default=None, help='comma-separated subset of ' +
                        ', '.join(scenes.FAMILIES))
    parser.add_argument('--out', default=None, help='directory for report.md/json')
    parser.add_argument('--repeats', type=int, default=None, help='timing rounds')
    parser.add_argument('--no-timing', action='store_true')
    parser.add_argument('--baseline-accuracy', default=None, metavar='COMMIT',
                        help='also run the MetricAligner of COMMIT (from git history)')
    parser.add_argument('--write-fixture', action='store_true',
                        help='store the fused figures as ' + os.path.basename(FIXTURE))
    args = parser.parse_args(argv)
    fams = tuple(args.families.split(',')) if args.families else None
    report = run_benchmark(quick=args.quick, out_dir=args.out, dev=args.dev,
                           n_scenes=args.scenes, families=fams, repeats=args.repeats,
                           timing=not args.no_timing,
                           baseline_accuracy=args.baseline_accuracy)
    if args.write_fixture:
        write_fixture(report)
    return 0


if __name__ == '__main__':
    sys.exit(main())

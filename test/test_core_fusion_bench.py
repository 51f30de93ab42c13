"""
A small seeded run of the fusion benchmark (benchmarks/fusion.py), with margins.

It runs on development scenes (benchmarks/scenes.py's held-out rule: the held-out ones are
for the benchmark's report only), at small sizes, without timings (those are the
benchmark's job). It checks:

* the simulated DA-V2 stays calibrated to the paper (AbsRel after the optimal affine in
  inverse depth), so a simulation made easier fails here;
* each error family of the simulation does what its knob says;
* the goals the aligner meets, with margins, against the baselines of the same run (the sky's
  +inf rate and the uncertainty's calibration among them), and that the oracle bound is below
  every method;
* the gate_layers bound against a plain per-pixel computation on a small case, and that it
  reuses the aligner's output faithfully.

Runs on Python 3.8 with numpy, OpenCV, PyYAML and pytest; the Middlebury family needs
scikit-image and is skipped without it.
"""
import dataclasses
import importlib.util
import os
import sys

import cv2
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, 'benchmarks')


def _load(name):
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCH, name + '.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def bench():
    return _load('fusion')


@pytest.fixture(scope='module')
def scenes(bench):
    return bench.scenes


@pytest.fixture(scope='module')
def report(bench):
    # Dev seeds 0 and 3: the road scenes end with a frame with 0.3 % of its stereo and one
    # with none (every third seed).
    return bench.run_benchmark(dev=True, seeds=(0, 3), families=('road', 'indoor'),
                               widths={'road': 320, 'indoor': 320}, n_frames=4, timing=False,
                               echo=lambda line: None)


def fused(report, family, key):
    return [s['methods']['fused'][key] for s in report['families'][family]]


# ---------------------------------------------------------------------------- held-out rule

def test_held_out_rule_disjoint_sets_of_30_scenes(scenes):
    assert not set(scenes.DEV_SEEDS) & set(scenes.HELDOUT_SEEDS)
    assert len(scenes.HELDOUT_SEEDS) >= 30
    a = scenes.make_scene('indoor', 1000, n_frames=1, width=160)[0]
    b = scenes.make_scene('indoor', 1000, n_frames=1, width=160)[0]
    c = scenes.make_scene('indoor', 1001, n_frames=1, width=160)[0]
    assert np.array_equal(a['rel'], b['rel']) and np.array_equal(a['bgr'], b['bgr'])
    assert not np.array_equal(a['gt'], c['gt'])


# ---------------------------------------------------------------------------- simulation

@pytest.mark.parametrize('family,width,n', [('road', 640, 3), ('indoor', 640, 5)])
def test_simulated_network_is_as_wrong_as_the_paper_says(bench, family, width, n):
    sim = bench.sim_network
    frames = [bench.scenes.make_scene(family, s, n_frames=1, width=width)
              for s in bench.scenes.DEV_SEEDS[:n]]
    row = sim.calibration_rows({family: frames})[0]
    # The paper's AbsRel +-15 % on the full development set; a few scenes at a smaller
    # size: +-30 %. Halving the simulated errors fails this.
    assert abs(row['abs_rel'] - row['target_abs_rel']) <= 0.3 * row['target_abs_rel'], row
    assert abs(row['delta1'] - row['target_delta1']) <= 0.04, row


def test_middlebury_views_are_real_sgbm_and_calibrated(bench):
    pytest.importorskip('skimage', reason='the Middlebury family needs scikit-image')
    frames = [bench.scenes.make_scene('middlebury', s, n_frames=1) for s in (0, 1, 2)]
    row = bench.sim_network.calibration_rows({'middlebury': frames})[0]
    assert abs(row['abs_rel'] - 0.053) <= 0.3 * 0.053, row
    shapes = {f[0]['gt'].shape for f in frames}
    assert len(shapes) == 3, 'three crops/scales: {}'.format(shapes)
    for f in frames:
        valid = np.isfinite(f[0]['stereo'])
        assert 0.4 < valid.mean() < 0.98, valid.mean()
        gt = f[0]['gt']
        ok = valid & np.isfinite(gt)
        rel = np.abs(f[0]['stereo'][ok] - gt[ok]) / gt[ok]
        assert np.median(rel) < 0.03, np.median(rel)      # SGBM on the real pair


def _pole_scene():
    """Return a far wall with a 2 px pole in front: inverse depth and ids at 518 x 294."""
    inv = np.full((294, 518), 0.1)
    ids = np.zeros((294, 518), np.int32)
    inv[40:260, 200:202] = 1.0
    ids[40:260, 200:202] = 1
    ids[:30] = -2
    inv[:30] = 0.0
    return inv, ids


def test_each_error_family_does_what_its_knob_says(bench):
    sim = bench.sim_network
    inv, ids = _pole_scene()
    bgr = np.full(inv.shape + (3,), 100, np.uint8)
    bgr[100:140, 300:400] = 250                         # a bright patch on the wall

    def run(**knobs):
        net = sim.SimNetwork(sim.NetworkErrors(**knobs), seed=5)
        rel, (a, b) = net(inv, ids, bgr, 0, np.random.RandomState(0))
        return (rel - b) / a

    clean = run()
    np.testing.assert_allclose(clean, inv, rtol=1e-5, atol=1e-6)  # no knob: no error
    gone = run(thin_missing=1.0, thin_px=5)
    assert gone[150, 200] == pytest.approx(0.1, rel=1e-3), 'the pole is missing'
    assert gone[150, 300] == pytest.approx(0.1, rel=1e-5), 'the wall is untouched'
    bright = run(bright_to_sky=0.8, bright_level=200)
    patch = bright[100:140, 300:400]
    assert (np.isclose(patch, 0.02)).mean() > 0.3, 'bright surfaces toward the sky'
    assert np.isclose(bright[200:260, 300:400], 0.1).all()
    warped = run(warp=0.1)
    r = warped[40:] / inv[40:]
    assert 0.05 < np.log(r).std() < 0.15 and np.abs(np.diff(np.log(r), axis=1)).max() < 0.01
    far = run(far_compression=0.5, far_knee_m=5.0)
    assert far[150, 300] == pytest.approx(0.1 * (1 - 0.5 * 0.5), rel=1e-5)
    assert far[150, 200] == pytest.approx(1.0, rel=1e-5), 'near the knee: untouched'
    blurred = run(edge_blur_px=1.5, halo=0.5)
    assert blurred[150, 196] < 0.1 - 1e-3 or blurred[150, 205] < 0.1 - 1e-3, 'a halo'
    assert blurred[150, 200] < 0.8, 'the edge blurred'
    # Flicker: the affine changes per frame, the affine-invariant content does not.
    net = sim.SimNetwork(sim.NetworkErrors(flicker=0.1), seed=5)
    r0, ab0 = net(inv, ids, bgr, 0, np.random.RandomState(0))
    r1, ab1 = net(inv, ids, bgr, 1, np.random.RandomState(1))
    assert abs(ab0[0] / ab1[0] - 1) > 1e-3
    np.testing.assert_allclose((r1 - ab1[1]) / ab1[0], (r0 - ab0[1]) / ab0[0], atol=1e-5)
    # Sky patches: a fraction of the sky gets a finite disparity.
    sky = run(sky_patch=0.3, sky_patch_depth_m=50.0)[:30]
    assert 0.2 < np.isclose(sky, 0.02).mean() < 0.4


def test_far_compression_and_scaled_keep_other_knobs(bench):
    e = bench.sim_network.FAMILY_ERRORS['road']
    s = e.scaled(2.0)
    assert s.warp == pytest.approx(2 * e.warp) and s.thin_px == e.thin_px
    assert dataclasses.replace(e, warp=0.0).warp == 0.0


# ---------------------------------------------------------------------------- goals

def test_dense_in_every_frame_and_held_without_stereo(report):
    assert min(fused(report, 'road', 'density') + fused(report, 'indoor', 'density')) >= 0.99
    held = sum(s.get('held', 0) for s in fused(report, 'road', 'statuses'))
    # Seeds 0 and 3: a frame with 0.3 % of the stereo and one without, aligned to the
    # previous output ('held').
    assert held >= 3, fused(report, 'road', 'statuses')
    stereo = [s['methods']['stereo']['density'] for s in report['families']['road']]
    assert min(stereo) == 0.0


def test_a_flickering_network_costs_little(report):
    g = report['goals']['fused']['flicker_cost']
    assert g['mean'] <= 1.05 and g['worst_decile'] <= 1.10, g


def test_better_than_stereo_and_least_squares_and_above_the_oracle(report):
    goals = report['goals']
    g = goals['fused']['stereo_valid_ratio']
    assert g['mean'] <= 0.8 and g['worst_decile'] <= 1.0, g
    for name in ('abs_rel_road', 'abs_rel_indoor'):
        f, lsq, oracle = (goals[m][name]['mean'] for m in ('fused', 'stereo_lsq', 'oracle'))
        assert oracle < f < 0.8 * lsq, (name, oracle, f, lsq)
    holes = [s['methods'] for s in report['families']['indoor']]
    assert np.mean([m['fused']['holes']['abs_rel'] for m in holes]) < \
        0.8 * np.mean([m['stereo_lsq']['holes']['abs_rel'] for m in holes])
    assert goals['oracle']['stereo_valid_ratio']['mean'] < 1e-5     # float32 rounding


def test_selection_bounds_lie_between_the_oracle_and_the_aligner(report):
    goals = report['goals']
    for name in ('abs_rel_road', 'abs_rel_indoor'):
        o, sg, ss, f = (goals[m][name]['mean'] for m in ('oracle', 'select_gt',
                                                         'select_stereo', 'fused'))
        # Exact where stereo reaches < the best smooth correction < learnt from the stereo.
        assert o < sg < ss, (name, o, sg, ss)
        assert sg < f, (name, sg, f)
    for m in ('select_gt', 'select_stereo'):
        # The per-pixel choice is never worse than the stereo on its own pixels, and is not
        # the ground truth there either.
        g = goals[m]['stereo_valid_ratio']
        assert 0.02 < g['mean'] < 1.0 and g['worst_decile'] <= 1.0, (m, g)


def test_gate_layers_bound_gates_the_stereo_valid_pixels_better_than_the_aligner(report):
    # Per scene, on the stereo-valid pixels: below the aligner and the stereo (a perfect gate
    # among them) and above select_gt (whose mono is corrected exactly); a bound of the
    # AbsRel goals only.
    for fam in ('road', 'indoor'):
        for s in report['families'][fam]:
            m = s['methods']
            g = m['gate_layers']['stereo_valid']['abs_rel']
            assert g <= min(m['fused']['stereo_valid']['abs_rel'],
                            m['stereo']['stereo_valid']['abs_rel']), (fam, s['seed'])
    goals = report['goals']
    for name in ('abs_rel_road', 'abs_rel_indoor'):
        assert goals['select_gt'][name]['mean'] < goals['gate_layers'][name]['mean'] < \
            goals['fused'][name]['mean'], name
    assert goals['gate_layers']['density']['scenes'] == 0


def test_sky_and_uncertainty(report):
    # The sky's patches (5 % of the sky given a finite depth by the network) are found: at
    # these small sizes 96.4 % of the sky is +inf (a6bfff9's aligner: 94.7 %, on the flat
    # road of before phase J).
    sky = report['goals']['fused']['sky_inf']
    assert sky['mean'] >= 0.955 and sky['worst_decile'] >= 0.95, sky
    # About 68 % of the errors within 1 sigma (66 % at these small sizes; the goal's +-8 % on
    # the benchmark's scenes); a6bfff9's aligner: 53.8 % (on the flat road of before phase J).
    cal = report['goals']['fused']['calibration_1sigma']
    assert 0.57 <= cal['mean'] <= 0.76, cal


def test_report_prints_calibration_first_and_goals_with_baselines(bench, report):
    lines = bench.markdown(report)
    text = '\n'.join(lines)
    assert text.index('## Calibration') < text.index('## Goals')
    assert '| road (development) | KITTI |' in text
    header = [ln for ln in lines if ln.startswith('| goal |')][0]
    for m in ('stereo', 'stereo_lsq', 'fused', 'oracle', 'select_gt', 'select_stereo',
              'gate_layers'):
        assert ' {} '.format(m) in header
    assert any(ln.startswith('oracle, select_gt, select_stereo and gate_layers are bounds')
               for ln in lines)


def test_oracle_is_exact_where_stereo_reaches_and_spreads_beyond(bench):
    frame = bench.scenes.make_scene('indoor', 4, n_frames=1, width=160)[0]
    depth, _, _ = bench.Oracle().process(frame)
    reach = bench.trusted_stereo(frame)
    assert np.array_equal(depth[reach], frame['gt'][reach].astype(np.float32))
    assert np.isfinite(depth).all()
    spread = bench._spread(np.where(reach, 1.0, 0.0), reach)
    assert np.allclose(spread, 1.0, atol=1e-5)
    h, w = reach.shape
    img = cv2.resize(frame['rel'], (w, h))
    assert img.shape == depth.shape


def _plane_frame(bench, warp=0.0, outliers=()):
    """
    Return a frame of a slanted floor seen by a 160 px camera.

    The stereo is exact but for ``outliers`` (row, column, factor) and a hole at the left;
    the network is exact up to an affine and, with ``warp``, a horizontal ramp of its log.
    """
    cam = bench.scenes.zed_camera(160)
    h, w = cam.height, cam.width
    v = np.arange(h, dtype=np.float64)[:, None] + np.zeros((1, w))
    gt = 2.0 + 6.0 * v / h                                   # 2..8 m, no sky
    u = np.zeros((h, w)) + np.linspace(-1.0, 1.0, w)[None, :]
    rel = (3.0 / gt * np.exp(warp * u) + 0.5).astype(np.float32)
    stereo = gt.astype(np.float32).copy()
    for (r, c, f) in outliers:
        stereo[r, c] *= f
    stereo[:, :20] = np.nan                                  # a hole at the left
    conf = np.where(np.isfinite(stereo), 10.0, 100.0).astype(np.float32)
    return dict(gt=gt, stereo=stereo, confidence=conf, rel=rel, camera=cam,
                baseline_m=0.12, disparity_noise_px=0.1)


def test_selection_bound_picks_the_better_source_per_pixel(bench):
    outliers = [(30, 80, 1.3), (50, 100, 0.8), (60, 40, 1.05)]
    frame = _plane_frame(bench, outliers=outliers)
    gt = frame['gt']
    for learn in ('ground_truth', 'stereo'):
        depth, _, _ = bench.SelectionBound(learn).process(frame)
        err = np.abs(depth - gt) / gt
        # The network is exact up to its affine: the smooth correction is 1, and the
        # corrected mono is the ground truth to float32 rounding, in the hole as well.
        assert err[:, :20].max() < 1e-5, (learn, err[:, :20].max())
        # The stereo's wrong pixels take the mono: exact with the exact correction; learnt
        # from the stereo, the 5 % outlier is within the noise of the 7 m stereo and moves
        # the correction near it a little.
        tol = 1e-5 if learn == 'ground_truth' else 3e-3
        for (r, c, f) in outliers:
            assert err[r, c] < tol and depth[r, c] != frame['stereo'][r, c], (learn, r, c)
    with pytest.raises(ValueError, match='learn_from'):
        bench.SelectionBound('oracle')


def test_selection_bounds_learn_a_smooth_network_error(bench):
    # The network's log inverse depth is off by a ramp of +-0.1 across the image; the exact
    # stereo (no outliers) teaches the stereo-learnt bound as much as the ground truth.
    frame = _plane_frame(bench, warp=0.1)
    gt = frame['gt']
    rel = cv2.resize(frame['rel'], (gt.shape[1], gt.shape[0])).astype(np.float64)
    s, t = bench._lstsq_affine(rel[:, 20:].ravel(), 1.0 / gt[:, 20:].ravel())
    affine_only = np.abs(1.0 / (s * rel + t) - gt) / gt
    for learn in ('ground_truth', 'stereo'):
        depth, _, _ = bench.SelectionBound(learn).process(frame)
        err = np.abs(depth - gt) / gt
        # Where the stereo is: the stereo (exact) or a mono as good; in the hole (up to 20
        # px from the stereo) the correction extrapolated, far better than the affine alone.
        assert err[:, 20:].max() < 1e-5, learn
        hole = err[:, :20].mean()
        assert hole < 0.25 * affine_only[:, :20].mean(), (learn, hole,
                                                          affine_only[:, :20].mean())


def test_the_time_goal_judges_the_time_after_inference_as_the_node_runs_it(bench):
    # alignment_node prepares the stereo side during inference: the goal is finish + cloud +
    # colorize against the baseline's whole stage; the whole stage in one call is printed
    # beside it, not judged.
    t = {'today': 21.0, 'today_node': 16.0, 'baseline': 20.0, 'today_again': 21.0,
         'ratio': 1.10, 'ratio_iqr': [1.05, 1.15], 'ratio_aa': 1.0, 'ratio_aa_iqr': [0.98, 1.02],
         'ratio_node': 0.80, 'ratio_node_iqr': [0.75, 0.85], 'repeats': 4,
         'baseline_commit': 'a6bfff9704276f4f349a9511f8eb54224c76942a'}
    lines = bench._timing_lines(t)
    goal = [line for line in lines if line.startswith('| after inference')]
    whole = [line for line in lines if line.startswith('| the whole stage')]
    assert len(goal) == 1 and '**0.800**' in goal[0] and goal[0].endswith(': met |'), lines
    assert len(whole) == 1 and '1.100' in whole[0] and 'met' not in whole[0], lines
    t['ratio_node'] = 1.0 + bench.TIME_NOISE + 0.01
    goal = [line for line in bench._timing_lines(t) if line.startswith('| after inference')]
    assert goal[0].endswith('**not met** |'), goal


def _gate_layers_by_hand(gt, stereo, trusted, output, mono, ids, min_pixels, within):
    """gate_layers pixel by pixel, in plain Python: the independent computation."""
    import statistics

    def err(p, g):
        if p != p:
            return float('inf')
        return 1.0 if p == float('inf') else abs(p - g) / g

    h, w = gt.shape
    ratios = {}
    for y in range(h):
        for x in range(w):
            if trusted[y, x] and 0 < mono[y, x] < float('inf'):
                ratios.setdefault(int(ids[y, x]), []).append(
                    float(stereo[y, x]) / float(mono[y, x]))
    factor = {}
    for o, r in ratios.items():
        if len(r) >= min_pixels and abs(statistics.median(r) - 1.0) <= within:
            factor[o] = statistics.median(r)
    out = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            g = gt[y, x]
            cands = [float(stereo[y, x]), float(output[y, x]), float(mono[y, x])]
            if trusted[y, x] and g == g and g > 0:
                out[y, x] = min(cands, key=lambda c: err(c, g))
            elif (not trusted[y, x] and int(ids[y, x]) in factor and
                  0 < mono[y, x] < float('inf')):
                out[y, x] = mono[y, x] * factor[int(ids[y, x])]
            else:
                out[y, x] = output[y, x]
    return out


def _gate_layers_case():
    """
    Three objects of 10 x 12 px, each with a hole; a third of the trusted stereo 30 % off.

    Object 1: the corrected mono 8 % far (the median stereo / mono corrects its hole
    exactly); object 2: 20 % far (beyond the 10 % of the rule: the hole keeps the output);
    object 3: 5 % near (within the rule) but 18 trusted pixels (the hole keeps the output).
    The output is 3 % far everywhere.
    """
    h, w = 10, 36
    ids = np.repeat(np.array([1, 2, 3]), 12)[None, :] + np.zeros((h, 1), np.int64)
    gt = 2.0 + 0.1 * np.arange(w)[None, :] + 0.05 * np.arange(h)[:, None]
    far = np.where(ids == 1, 1.08, np.where(ids == 2, 1.2, 0.95))
    mono = gt * far
    output = gt * 1.03
    trusted = (np.arange(w)[None, :] % 12 >= 4) & np.ones((h, 1), bool)
    trusted[:, 28:] = False
    trusted[:3, 30:] = True                                   # object 3: 18 trusted pixels
    stereo = gt.copy()
    wrong = trusted & (np.arange(h)[:, None] % 3 == 0)        # a third of them off by 30 %
    stereo[wrong] *= 1.3
    stereo[~trusted] = np.nan
    return gt, stereo, trusted, output, mono, ids, wrong


def test_gate_layers_gates_per_pixel_and_corrects_holes_by_object(bench):
    gt, stereo, trusted, output, mono, ids, wrong = _gate_layers_case()
    out = bench.gate_layers(gt, stereo, trusted, output, mono, ids).astype(np.float64)
    ref = _gate_layers_by_hand(gt, stereo, trusted, output, mono, ids,
                               bench.LAYER_MIN_PIXELS, bench.LAYER_WITHIN)
    assert np.allclose(out, ref, rtol=1e-6), np.abs(out - ref).max()
    # The right stereo is taken; the wrong one gives way to the output (3 % off, nearer than
    # the mono in every object).
    right = trusted & ~wrong
    assert np.allclose(out[right], gt[right], rtol=1e-6)
    assert np.allclose(out[wrong], output[wrong], rtol=1e-6)
    # The holes: object 1's corrected exactly (the median stereo / mono is 1 / 1.08), object
    # 2's (20 % off) and object 3's (18 trusted pixels) keep the output.
    hole = ~trusted
    assert np.allclose(out[hole & (ids == 1)], gt[hole & (ids == 1)], rtol=1e-6)
    for o in (2, 3):
        m = hole & (ids == o)
        assert m.any() and np.allclose(out[m], output[m], rtol=1e-6), o
    # Without the objects, the holes keep the output.
    bare = bench.gate_layers(gt, stereo, trusted, output, mono, None)
    assert np.allclose(bare[hole], output[hole], rtol=1e-6)


def test_gate_layers_is_below_each_candidate_on_every_gated_pixel(bench):
    rng = np.random.RandomState(7)
    gt, stereo, trusted, output, mono, ids, _ = _gate_layers_case()
    stereo = np.where(trusted, gt * rng.uniform(0.7, 1.3, gt.shape), np.nan)
    output = gt * rng.uniform(0.8, 1.2, gt.shape)
    output[0, 5] = np.inf                          # beyond max_output_depth: counts 1
    mono = gt * rng.uniform(0.85, 1.15, gt.shape)
    gt = gt.copy()
    gt[1, 6] = np.nan                              # unknown: keeps the output
    out = bench.gate_layers(gt, stereo, trusted, output, mono, ids)
    ref = _gate_layers_by_hand(gt, stereo, trusted, output, mono, ids,
                               bench.LAYER_MIN_PIXELS, bench.LAYER_WITHIN)
    assert np.allclose(out, ref, rtol=1e-6, equal_nan=True)
    err = bench._candidate_errors(out, gt)
    gated = trusted & np.isfinite(gt)
    for cand in (stereo, output, mono):
        assert (err[gated] <= bench._candidate_errors(cand, gt)[gated] + 1e-6).all()
    assert out[1, 6] == np.float32(output[1, 6])


def test_gate_layers_reuses_the_aligners_output_as_alignment_node_calls_it(bench):
    # The bound given fused's output of each frame equals the bound running its own aligner
    # (the same options, state carried over the frames).
    frames = bench.scenes.make_scene('indoor', 5, n_frames=2, width=160)
    fused = bench.make_method('fused', frames[0])
    given, own = bench.make_method('gate_layers', frames[0]), \
        bench.make_method('gate_layers', frames[0])
    changed = 0
    for frame in frames:
        f = fused.process(frame)[0]
        a = given.process(frame, f)[0]
        b = own.process(frame)[0]
        np.testing.assert_array_equal(a, b)
        changed += int((a != f).sum())
    assert changed > 0          # the gate and the holes did change the aligner's output

"""
MetricAligner's two sides: ``prepare`` (the stereo) and ``finish`` (the relative map).

``update(rel, stereo, ...)`` is ``finish(rel, prepare(stereo, ...))``: the outputs of an aligner
driven by update and of one driven by prepare and finish are compared bit for bit over frame
sequences with fitted, held (no stereo, a jump), no-fit and sky frames, with and without the
uncertainty. ``prepare`` changes nothing in the aligner (a prepared set may be dropped), sets
prepared before ``set_options`` / ``reset`` or already spent are prepared again (``is_current``
says which), and another aligner's set is refused.

Runs on Python 3.8 with numpy, OpenCV and pytest only.
"""
from depth_ros.core.alignment import MetricAligner, PreparedStereo
from depth_ros.core.camera import PinholeCamera
import numpy as np
import pytest

H, W = 96, 160
CAMERA = PinholeCamera(90.0, 90.0, (W - 1) / 2.0, (H - 1) / 2.0, W, H)


def scene(seed):
    """Floor, wall, box and sky (+inf stereo, a finite sky-coloured patch in the relative map)."""
    rng = np.random.RandomState(seed)
    v = np.arange(H, dtype=np.float64)[:, None] + np.zeros((1, W))
    z = np.full((H, W), 8.0)
    floor = v > H * 0.55
    z[floor] = np.minimum(8.0, 0.6 * 50.0 / (v[floor] - H * 0.5))
    z[int(H * .4):int(H * .8), int(W * .3):int(W * .5)] = 2.0
    z[:int(H * .25)] = np.inf
    rel = ((1.0 / z - 0.01) / 0.05).astype(np.float32)
    rel[2:12, 20:60] = 0.5          # a patch of the sky the network puts at 40 m
    st = z * (1 + 0.01 * rng.randn(H, W))
    bad = rng.rand(H, W) < 0.1
    st[bad] = rng.uniform(0.5, 15, bad.sum())
    st[int(H * .3):int(H * .45), int(W * .6):int(W * .8)] = np.nan
    conf = rng.uniform(1, 60, (H, W)).astype(np.float32)
    bgr = rng.randint(0, 40, (H, W, 3)).astype(np.uint8)
    bgr[:int(H * .25)] = (200, 160, 120)
    return rel, st.astype(np.float32), conf, bgr


def frames(n=10):
    """Make a sequence: fitted frames, stereo lost (held), a jump of the stereo (held), back."""
    out = []
    for i in range(n):
        rel, st, conf, bgr = scene(i % 3)
        if i in (3, 4):
            st = np.full_like(st, np.nan)           # no stereo: held (self-aligned)
        if i == 6:
            st = st * 2.5                           # a jump: held, stereo unused
        if i == 8:
            rel = rel.copy()
            rel[40:50, 10:30] = np.nan              # unknown relative values
        out.append((rel, st, conf, bgr))
    return out


def assert_same(a, b):
    """Assert the same AlignedDepth bit for bit (arrays and scalars, NaN included)."""
    for name in ('depth', 'uncertainty'):
        x, y = getattr(a, name), getattr(b, name)
        if x is None or y is None:
            assert x is None and y is None, name
            continue
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert np.array_equal(x.view(np.uint32), y.view(np.uint32)), name
    assert a.status == b.status and a.reason == b.reason and a.anchored == b.anchored
    np.testing.assert_array_equal(
        [a.scale, a.shift, a.inlier_ratio, a.valid_fraction, a.stereo_fraction],
        [b.scale, b.shift, b.inlier_ratio, b.valid_fraction, b.stereo_fraction])


def state(aligner):
    """Return what an aligner carries between frames (a copy)."""
    prev = aligner._prev_inv
    numbers = (aligner.scale, aligner.shift, aligner.rho_pre, aligner.rho_post, aligner.beta,
               aligner.sigma_inv)
    return tuple(repr(float(x)) for x in numbers) + (
        aligner.frames, aligner._pending, aligner._noise_frames,
        None if prev is None else prev.tobytes(), aligner._rng.get_state()[1].tobytes(),
        aligner._rng.get_state()[2], aligner._shape)


@pytest.mark.parametrize('options,kw', [
    (dict(compute_uncertainty=False), dict(guide=True, camera=True)),
    (dict(compute_uncertainty=True), dict(guide=True, camera=False)),
    (dict(compute_uncertainty=True, temporal_alpha=0.5), dict(guide=False, camera=True)),
    (dict(relative_kind='depth'), dict(guide=True, camera=True)),
])
@pytest.mark.parametrize('rel_size', [(H, W), (H // 2 + 1, W // 2 + 2)])
def test_update_is_finish_of_prepare_bit_for_bit(options, kw, rel_size):
    import cv2
    one, two = MetricAligner(**options), MetricAligner(**options)
    statuses = []
    # The first frame has no stereo: no_fit.
    seq = [(frames()[0][0], np.full((H, W), np.nan, np.float32)) + frames()[0][2:]] + frames()
    for rel, st, conf, bgr in seq:
        if options.get('relative_kind') == 'depth':
            rel = np.where(np.isfinite(rel), 1.0 / (rel + 0.5), rel).astype(np.float32)
        if rel_size != (H, W):
            rel = cv2.resize(rel, rel_size[::-1], interpolation=cv2.INTER_AREA)
        args = dict(guide=bgr if kw['guide'] else None, camera=CAMERA if kw['camera'] else None)
        ref = one.update(rel, st, conf, **args)
        out = two.finish(rel, two.prepare(st, conf, **args))
        assert_same(out, ref)
        assert state(one) == state(two)
        statuses.append(ref.status)
    assert statuses[0] == 'no_fit' and 'held' in statuses and 'ok' in statuses, statuses


def test_the_sequence_meets_the_sky_patches_and_a_jump():
    # The comparison above covers the sky's patches and a rejected jump: they occur.
    aligner = MetricAligner()
    reasons = []
    sky_cleared = False
    for rel, st, conf, bgr in frames():
        out = aligner.finish(rel, aligner.prepare(st, conf, guide=bgr, camera=CAMERA))
        reasons.append(out.reason)
        sky_cleared |= bool(np.isinf(out.depth[2:12, 20:60]).all())
    assert any('jumped' in r for r in reasons), reasons
    assert sky_cleared


def test_prepare_changes_nothing_and_a_dropped_set_costs_nothing():
    kept, dropping = MetricAligner(), MetricAligner()
    seq = frames()
    for i, (rel, st, conf, bgr) in enumerate(seq):
        before = state(dropping)
        # A set prepared and dropped (the network dropped that frame), of another frame.
        other = seq[(i + 1) % len(seq)]
        dropped = dropping.prepare(other[1], other[2], guide=other[3], camera=CAMERA)
        assert isinstance(dropped, PreparedStereo) and dropped.shape == (H, W)
        assert state(dropping) == before
        ref = kept.update(rel, st, conf, guide=bgr, camera=CAMERA)
        assert_same(dropping.update(rel, st, conf, guide=bgr, camera=CAMERA), ref)


def test_sets_prepared_ahead_are_finished_in_order_with_their_own_arrays():
    one, two = MetricAligner(), MetricAligner()
    seq = frames(6)
    sets = [two.prepare(st, conf, guide=bgr, camera=CAMERA) for _, st, conf, bgr in seq]
    for (rel, st, conf, bgr), prepared in zip(seq, sets):
        assert_same(two.finish(rel, prepared),
                    one.update(rel, st, conf, guide=bgr, camera=CAMERA))


def _fed(seq):
    """Return a MetricAligner that has aligned the frames of ``seq`` (its history)."""
    aligner = MetricAligner()
    for rel, st, conf, bgr in seq:
        aligner.update(rel, st, conf, guide=bgr, camera=CAMERA)
    return aligner


@pytest.mark.parametrize('change', ['set_options', 'reset'])
def test_a_set_prepared_before_set_options_or_reset_is_prepared_again(change):
    seq = frames(4)
    one, two = _fed(seq[:2]), _fed(seq[:2])
    rel, st, conf, bgr = seq[2]
    stale = two.prepare(st, conf, guide=bgr, camera=CAMERA)
    if change == 'set_options':
        # Every option step 1-4 reads: the trust tests, the noise model, the lattice.
        new = dict(max_depth=6.0, confidence_threshold=30.0, baseline_m=0.2, fit_samples=1500,
                   correction_downsample=4)
        one.set_options(**new)
        two.set_options(**new)
    else:
        one.reset()
        two.reset()
    ref = one.update(rel, st, conf, guide=bgr, camera=CAMERA)
    out = two.finish(rel, stale)
    assert_same(out, ref)
    # Not the old options' result: the staleness mattered.
    if change == 'set_options':
        before = _fed(seq[:2]).update(rel, st, conf, guide=bgr, camera=CAMERA).depth
        assert before.tobytes() != out.depth.tobytes()


def test_a_spent_set_finished_again_is_prepared_again():
    seq = frames(3)
    one, two = _fed(seq[:2]), _fed(seq[:2])
    rel, st, conf, bgr = seq[2]
    prepared = two.prepare(st, conf, guide=bgr, camera=CAMERA)
    assert_same(two.finish(rel, prepared), one.update(rel, st, conf, guide=bgr, camera=CAMERA))
    # The fusion overwrote the set's stereo plane: a second finish prepares it again.
    assert_same(two.finish(rel, prepared), one.update(rel, st, conf, guide=bgr, camera=CAMERA))


def test_another_aligners_set_or_no_set_is_a_value_error():
    rel, st, conf, bgr = frames(1)[0]
    mine, other = MetricAligner(), MetricAligner()
    prepared = other.prepare(st, conf)
    with pytest.raises(ValueError, match='prepared by another MetricAligner'):
        mine.finish(rel, prepared)
    with pytest.raises(ValueError, match='`prepared` must be a PreparedStereo .* got None'):
        mine.finish(rel, None)
    assert mine.frames == 0 and not mine.has_fit


def test_is_current_says_whether_finish_takes_the_set_as_it_is(monkeypatch):
    # is_current is True exactly while finish would use the set without a second prepare:
    # counted by spying on prepare (the set's own prepare, then finish's, if any).
    rel, st, conf, bgr = frames(1)[0]
    aligner, other = MetricAligner(), MetricAligner()
    calls = []
    prepare = MetricAligner.prepare

    def counted(self, *args, **kwargs):
        calls.append(self)
        return prepare(self, *args, **kwargs)

    monkeypatch.setattr(MetricAligner, 'prepare', counted)

    def prepares_in_finish(prepared):
        before = len(calls)
        aligner.finish(rel, prepared)
        return len(calls) - before

    fresh = aligner.prepare(st, conf, guide=bgr, camera=CAMERA)
    assert aligner.is_current(fresh) and not other.is_current(fresh)
    assert aligner.is_current(aligner.prepare(st))        # a newer set leaves it current
    assert prepares_in_finish(fresh) == 0
    assert not aligner.is_current(fresh) and fresh.spent  # finish spent it
    assert prepares_in_finish(fresh) == 1
    # set_options and reset make older sets stale, not newer ones; a set_options that
    # raised changed nothing.
    for change in (lambda: aligner.set_options(max_depth=6.0), aligner.reset,
                   lambda: aligner.set_options(max_depth=aligner.max_depth)):
        old = aligner.prepare(st, conf, guide=bgr, camera=CAMERA)
        change()
        new = aligner.prepare(st, conf, guide=bgr, camera=CAMERA)
        assert not aligner.is_current(old) and aligner.is_current(new)
        assert prepares_in_finish(old) == 1 and prepares_in_finish(new) == 0
    kept = aligner.prepare(st, conf)
    with pytest.raises(ValueError, match='`max_depth`'):
        aligner.set_options(max_depth=-1.0)
    with pytest.raises(ValueError, match='`seed`'):
        aligner.set_options(seed=aligner.seed + 1)
    assert aligner.is_current(kept) and prepares_in_finish(kept) == 0
    # Another aligner's set is not current here (finish refuses it); none: a ValueError.
    theirs = other.prepare(st, conf)
    assert other.is_current(theirs) and not aligner.is_current(theirs)
    with pytest.raises(ValueError, match='prepared by another MetricAligner'):
        aligner.finish(rel, theirs)
    assert other.is_current(theirs)                       # the refusal spent nothing
    with pytest.raises(ValueError, match='`prepared` must be a PreparedStereo .* got None'):
        aligner.is_current(None)


@pytest.mark.parametrize('rel,message', [
    (np.ones((H, W // 2), np.float32), '`relative_disparity` has size (96, 80) but '
     '`stereo_depth` has size (96, 160); their aspect ratios must match'),
    (np.ones((H, W), np.uint8), '`relative_disparity` must have dtype'),
    (np.ones((H, W, 3), np.float32), '`relative_disparity` must be HxW, got array of shape '
     '(96, 160, 3)'),
])
def test_finish_checks_the_relative_map_as_update_does(rel, message):
    _, st, conf, _ = frames(1)[0]
    aligner = MetricAligner()
    with pytest.raises(ValueError) as by_update:
        aligner.update(rel, st, conf)
    with pytest.raises(ValueError) as by_finish:
        aligner.finish(rel, aligner.prepare(st, conf))
    assert message in str(by_finish.value), str(by_finish.value)
    assert str(by_finish.value) == str(by_update.value)
    assert aligner.frames == 0


def test_prepare_checks_the_stereo_inputs():
    _, st, conf, bgr = frames(1)[0]
    aligner = MetricAligner()
    with pytest.raises(ValueError, match='`confidence` has size'):
        aligner.prepare(st, conf[:, 1:])
    with pytest.raises(ValueError, match='`guide` has size'):
        aligner.prepare(st, conf, guide=bgr[1:])
    with pytest.raises(ValueError, match='give `camera` or `focal_px`, not both'):
        aligner.prepare(st, camera=CAMERA, focal_px=90.0)


@pytest.mark.parametrize('uncertainty', [False, True])
def test_results_keep_their_arrays_while_planes_are_reused(uncertainty):
    # The sets' planes are reused by later prepares and the output is written into a
    # spent set's plane: no result may change afterwards, whichever frames follow (no-fit
    # frames return all their planes, fitted ones hand one to their result).
    seq = [(frames(1)[0][0], np.full((H, W), np.nan, np.float32)) + frames(1)[0][2:]]
    seq += frames(8)
    aligner = MetricAligner(compute_uncertainty=uncertainty)
    kept = []
    ahead = aligner.prepare(seq[1][1], seq[1][2], guide=seq[1][3], camera=CAMERA)
    for i, (rel, st, conf, bgr) in enumerate(seq):
        prepared = ahead if i == 1 else aligner.prepare(st, conf, guide=bgr, camera=CAMERA)
        out = aligner.finish(rel, prepared)
        kept.append((out, out.depth.tobytes(),
                     None if out.uncertainty is None else out.uncertainty.tobytes()))
        assert prepared.ys is None and prepared.spent
    for out, depth, unc in kept:
        assert out.depth.tobytes() == depth
        assert (out.uncertainty is None and unc is None) or out.uncertainty.tobytes() == unc
    ids = [id(out.depth) for out, _, _ in kept]
    assert len(set(ids)) == len(ids)


def test_set_options_while_prepare_runs_makes_the_set_stale(monkeypatch):
    # prepare on the stereo's thread, set_options on another: options changed between the
    # steps of prepare must not leave a set of mixed options that finish takes as current.
    seq = frames(2)
    one, two = MetricAligner(), MetricAligner()
    one.update(*seq[0][:3], guide=seq[0][3], camera=CAMERA)
    two.update(*seq[0][:3], guide=seq[0][3], camera=CAMERA)
    rel, st, conf, bgr = seq[1]
    stereo_inverse = MetricAligner._stereo_inverse

    def changed_meanwhile(self, *args):
        planes = stereo_inverse(self, *args)      # step 3 with the old options
        if self is two:
            two.set_options(max_depth=6.0, confidence_threshold=30.0)
        return planes

    monkeypatch.setattr(MetricAligner, '_stereo_inverse', changed_meanwhile)
    prepared = two.prepare(st, conf, guide=bgr, camera=CAMERA)
    monkeypatch.setattr(MetricAligner, '_stereo_inverse', stereo_inverse)
    one.set_options(max_depth=6.0, confidence_threshold=30.0)
    assert_same(two.finish(rel, prepared), one.update(rel, st, conf, guide=bgr, camera=CAMERA))


def test_prepare_on_another_thread_while_finish_runs():
    # The node's shape: the stereo side prepared on the thread the stereo arrives on, the mono
    # side finished on the alignment worker, the two overlapping.
    import queue
    import threading
    seq = frames(10) * 2
    one, two = MetricAligner(), MetricAligner()
    sets = queue.Queue(maxsize=2)

    def stereo_side():
        for _, st, conf, bgr in seq:
            sets.put(two.prepare(st, conf, guide=bgr, camera=CAMERA))

    worker = threading.Thread(target=stereo_side)
    worker.start()
    try:
        for rel, st, conf, bgr in seq:
            prepared = sets.get(timeout=30)
            assert_same(two.finish(rel, prepared),
                        one.update(rel, st, conf, guide=bgr, camera=CAMERA))
    finally:
        worker.join(timeout=30)


@pytest.mark.parametrize('threads', [2, 3, 7])
@pytest.mark.parametrize('options,rel_size', [
    (dict(compute_uncertainty=False), (H, W)),
    (dict(compute_uncertainty=True, temporal_alpha=0.5), (H // 2 + 1, W // 2 + 2)),
    (dict(relative_kind='depth'), (H, W)),
    (dict(correction_radius_px=0), (H, W)),
])
def test_finish_threads_give_the_output_of_one_thread_bit_for_bit(threads, options, rel_size,
                                                                  monkeypatch):
    """Row bands (finish_threads) change nothing: depth, uncertainty, state and the cloud."""
    import threading

    import cv2
    from depth_ros.core import bands
    from depth_ros.core.pointcloud import cloud_colours, depth_to_cloud
    monkeypatch.setattr(bands, 'MIN_BAND_ROWS', 8)    # this small frame in several bands
    one = MetricAligner(finish_threads=1, **options)
    many = MetricAligner(finish_threads=threads, **options)
    ran_on = set()
    run = many.bands.run

    def spy(fn, rows):
        def band(r0, r1):
            ran_on.add(threading.get_ident())
            return fn(r0, r1)
        return run(band, rows)
    monkeypatch.setattr(many.bands, 'run', spy)
    assert len(many.bands.edges(H)) == min(threads, H // 8) + 1
    seq = [(frames()[0][0], np.full((H, W), np.nan, np.float32)) + frames()[0][2:]] + frames()
    statuses = set()
    for rel, st, conf, bgr in seq:
        if options.get('relative_kind') == 'depth':
            rel = np.where(np.isfinite(rel), 1.0 / (rel + 0.5), rel).astype(np.float32)
        if rel_size != (H, W):
            rel = cv2.resize(rel, rel_size[::-1], interpolation=cv2.INTER_AREA)
        ref = one.finish(rel, one.prepare(st, conf, guide=bgr, camera=CAMERA))
        out = many.finish(rel, many.prepare(st, conf, guide=bgr, camera=CAMERA))
        assert_same(out, ref)
        assert state(one) == state(many)
        statuses.add(ref.status)
        for stride in (1, 2, 3):
            colours = cloud_colours(bgr, stride)
            a = depth_to_cloud(ref.depth, CAMERA, colours=colours, stride=stride)
            b = depth_to_cloud(out.depth, CAMERA, colours=colours, stride=stride,
                               bands=many.bands)
            assert a.tobytes() == b.tobytes()
    assert {'no_fit', 'held', 'ok'} <= statuses
    assert len(ran_on) > 1          # the bands did run on the pool's threads
    many.close()
    one.close()


def test_finish_threads_is_an_option_checked_by_name():
    with pytest.raises(ValueError, match='option `finish_threads` must be an integer in '
                                         r'\[1, 64\], got 0'):
        MetricAligner(finish_threads=0)
    aligner = MetricAligner()
    assert aligner.finish_threads == 1 and aligner.bands.threads == 1
    aligner.set_options(finish_threads=3)
    assert aligner.bands.threads == 3
    with pytest.raises(ValueError, match='option `finish_threads`'):
        aligner.set_options(finish_threads=2.5)


@pytest.mark.parametrize('uncertainty', [False, True])
def test_finish_writes_the_depth_into_out_as_it_would_into_a_new_array(uncertainty):
    """finish(out=...) (a message's buffer) gives the same frames, and out is the depth."""
    one, two = MetricAligner(compute_uncertainty=uncertainty), \
        MetricAligner(compute_uncertainty=uncertainty)
    out = np.full((H, W), 7.0, np.float32)
    seq = [(frames()[0][0], np.full((H, W), np.nan, np.float32)) + frames()[0][2:]] + frames()
    statuses = set()
    for rel, st, conf, bgr in seq:
        ref = one.finish(rel, one.prepare(st, conf, guide=bgr, camera=CAMERA))
        res = two.finish(rel, two.prepare(st, conf, guide=bgr, camera=CAMERA), out=out)
        assert res.depth is out
        assert_same(res, ref)
        assert state(one) == state(two)
        statuses.add(ref.status)
        out.fill(7.0)             # the caller reuses it: the next frame does not read it
    assert {'no_fit', 'held', 'ok'} <= statuses


@pytest.mark.parametrize('out', [np.zeros((H, W), np.float64), np.zeros((H, W + 1), np.float32),
                                 np.zeros((W, H), np.float32).T, 'x'])
def test_finish_refuses_an_out_it_cannot_write_the_depth_into(out):
    aligner = MetricAligner()
    rel, st, conf, bgr = frames()[0]
    prepared = aligner.prepare(st, conf, guide=bgr, camera=CAMERA)
    with pytest.raises(ValueError, match='`out` must be a writable C-contiguous float32 array '
                                         r'of shape \(96, 160\)'):
        aligner.finish(rel, prepared, out=out)
    assert aligner.is_current(prepared)     # refused before the set was spent


@pytest.mark.parametrize('width', [37, 160])
def test_prepare_stereo_inverse_is_finite_and_zero_outside_the_range(width):
    """Step 3: 1/z inside [min_depth, max_depth], else 0 (NaN, +-inf, 0, negative); the trust."""
    rng = np.random.RandomState(3)
    h = 24
    z = rng.uniform(0.05, 40.0, (h, width)).astype(np.float32)
    special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, -2.0, 1e-30, 1e30], np.float32)
    pick = rng.rand(h, width) < 0.3              # every SIMD lane and tail position
    z[pick] = special[rng.randint(0, special.size, int(pick.sum()))]
    conf = rng.uniform(1, 100, (h, width)).astype(np.float32)
    conf[rng.rand(h, width) < 0.05] = np.nan
    aligner = MetricAligner(min_depth=0.3, max_depth=20.0, confidence_threshold=50.0)
    p = aligner.prepare(z, conf)
    # Independent: float64 range test away from the float32 boundaries (none drawn there).
    with np.errstate(invalid='ignore', divide='ignore'):
        inside = (z.astype(np.float64) >= 0.3) & (z.astype(np.float64) <= 20.0)
        want = np.where(inside, np.float32(1.0) / z, np.float32(0.0))
        trusted = inside & (conf <= 50.0)
    assert np.isfinite(p.ys).all()
    np.testing.assert_array_equal(p.ys, want)
    np.testing.assert_array_equal(p.trust != 0, trusted)
    assert np.isnan(z).any() and (~inside).any() and trusted.any()

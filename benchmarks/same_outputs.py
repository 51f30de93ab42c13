"""
Whether today's MetricAligner gives a commit's outputs bit for bit, over frames of every kind.

Runs both aligners (the commit's core read from git history, benchmarks/git_baseline.py) on
the same sequences of bench_core's scene, at two sizes: fitted frames, frames without stereo
(held), a jump of the stereo (held, stereo unused), no stereo before the first fit (no_fit),
unknown relative values, a sky with a finite patch in the relative map, a relative map at
another size; uncertainty on and off, the temporal filter, the depth kind, no correction.
Prints one line per case and 'exact' or the number of frames that differ (depth, uncertainty,
scale, shift, inlier ratio, valid and stereo fractions, status). Exit status 1 if any differs.

Usage: python benchmarks/same_outputs.py [COMMIT] [--threads N]   (default: main's 2e25178)

``--threads N``: today's aligner runs with ``finish_threads=N`` (its full-resolution passes in
row bands on N threads; the commit's in one piece, as it has no such option).
"""
import argparse
import os
import sys

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_core import scene  # noqa: E402, I100
from depth_ros.core import alignment, camera  # noqa: E402, I100
from git_baseline import load_core  # noqa: E402, I100


def _same(a, b):
    if a is None or b is None:
        return a is None and b is None
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _scalars(r):
    return repr([r.scale, r.shift, r.inlier_ratio, r.valid_fraction, r.stereo_fraction,
                 r.status, r.reason, r.anchored])


def normal(frames, i):
    """Return fitted frames."""
    return frames[i % 3]


def held(frames, i):
    """Return every third frame without stereo; frame 5's stereo jumps."""
    rel, st, cf, img = frames[i % 3]
    if i % 3 == 2:
        st = np.full_like(st, np.nan)
    if i == 5:
        st = st * 3.0
    return rel, st, cf, img


def no_fit_first(frames, i):
    """Return no stereo before the first fit."""
    rel, st, cf, img = frames[i % 3]
    if i < 2:
        st = np.full_like(st, np.nan)
    return rel, st, cf, img


def unknown_relative(frames, i):
    """Return a block of non-finite relative values."""
    rel, st, cf, img = frames[i % 3]
    rel = rel.copy()
    rel[10:30, 40:90] = np.nan
    return rel, st, cf, img


def infinite_relative(frames, i):
    """Return blocks of +inf and -inf relative values, and one value that overflows the mono."""
    rel, st, cf, img = frames[i % 3]
    rel = rel.copy()
    rel[40:50, 10:60] = np.inf
    rel[60:64, 100:140] = -np.inf
    if i == 3:
        rel[5, 5] = 3e38                  # finite, but the aligned mono overflows there
    return rel, st, cf, img


def sky_patch(frames, i):
    """Return +inf stereo on the sky, and a sky-coloured patch at a finite relative depth."""
    rel, st, cf, img = frames[i % 3]
    h, w = st.shape
    st, rel, img = st.copy(), rel.copy(), img.copy()
    st[:h // 4] = np.inf
    rel[:h // 8, :w // 3] = 0.05
    img[:h // 4] = (200, 150, 100)
    return rel, st, cf, img


def run(old, h, w, options, make, rel_size=None, guide=True, cam=True, conf=True, n=8,
        threads=1):
    """Return the number of frames whose outputs differ."""
    frames = [scene(h, w, s) for s in range(3)]
    today = alignment.MetricAligner(finish_threads=threads, **options)
    then = old.alignment.MetricAligner(**options)
    args = (700.0 * w / 1280, 700.0 * w / 1280, (w - 1) / 2.0, (h - 1) / 2.0, w, h)
    cams = camera.PinholeCamera(*args), old.camera.PinholeCamera(*args)
    bad = 0
    for i in range(n):
        rel, st, cf, img = make(frames, i)
        if rel_size is not None:
            rel = cv2.resize(rel, rel_size, interpolation=cv2.INTER_AREA)
        with np.errstate(over='ignore'):       # the overflowing case, in both cores
            outs = [a.update(rel, st, cf if conf else None, guide=img if guide else None,
                             camera=c if cam else None) for a, c in zip((today, then), cams)]
        a, b = outs
        if not (_same(a.depth, b.depth) and _same(a.uncertainty, b.uncertainty)
                and _scalars(a) == _scalars(b)):
            bad += 1
    today.close()
    return bad


def main(argv=None):
    """Compare today with the commit; return 1 if any frame differs."""
    parser = argparse.ArgumentParser(description='today\'s MetricAligner against a commit\'s')
    parser.add_argument('commit', nargs='?', default='2e25178')
    parser.add_argument('--threads', type=int, default=1,
                        help='finish_threads of today\'s aligner (default 1)')
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    cv2.setNumThreads(1)
    old = load_core(args.commit)
    print('Python {}, numpy {}, OpenCV {}: today (finish_threads {}) against {}'.format(
        sys.version.split()[0], np.__version__, cv2.__version__, args.threads,
        old.commit[:10]))
    failed = 0
    for h, w in ((180, 320), (360, 640)):
        cases = []
        for make in (normal, held, no_fit_first, unknown_relative, infinite_relative, sky_patch):
            cases.append((make, dict(compute_uncertainty=False), {}))
            cases.append((make, dict(compute_uncertainty=True),
                          dict(rel_size=(w // 2 + 2, h // 2 + 1))))
        cases += [(held, dict(compute_uncertainty=True, temporal_alpha=0.5),
                   dict(guide=False, cam=False)),
                  (normal, dict(relative_kind='depth'), dict(conf=False)),
                  (infinite_relative, dict(relative_kind='depth'), {}),
                  (normal, dict(consistency=None, consistency_min_inliers=0.99), {}),
                  (held, dict(correction_radius_px=0), {})]
        for make, options, kw in cases:
            bad = run(old, h, w, options, make, threads=args.threads, **kw)
            failed += bad
            verdict = 'exact' if not bad else '{} frames DIFFER'.format(bad)
            print('  {}x{} {:<17} {} {}: {}'.format(w, h, make.__name__, options, kw, verdict))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())

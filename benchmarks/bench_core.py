"""
Post-inference core at 1280x720, one thread: MetricAligner.update + depth_to_cloud + colorize.

Times the whole stage as alignment_node runs it (update with the image as guide and the camera,
no uncertainty; the cloud at stride 2 with the edge test; colorize) and at full resolution
(the same with uncertainty and the cloud at stride 1), for today's core and, in the same rounds
(interleaved, so that a noisy machine moves both alike), for the cores of baseline commits read
from git history (benchmarks/git_baseline.py). Today's stage runs in its two sides and each
part is timed: the stereo side (``MetricAligner.prepare`` and the cloud's colours,
``cloud_colours``), which can run while the network infers, and the mono side
(``MetricAligner.finish``, ``depth_to_cloud``, ``colorize``). Prints the medians, their ratios,
and how far the cores' outputs are apart on the same frames. Then the parts alone, and
depth_to_cloud against one copy of its output bytes.

Usage: python benchmarks/bench_core.py [--baseline COMMIT ... | --no-baseline] [--rounds N]
                                       [--width W --height H]
This is a benchmark that prints figures, not a timed test.
"""
import argparse
import os
import sys
import time
import types

# One thread, before numpy / OpenCV load their thread pools.
for _var in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
    os.environ[_var] = '1'

import cv2  # noqa: E402
from depth_ros.core import alignment, camera, pointcloud, visualize  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from git_baseline import BaselineUnavailable, load_core  # noqa: E402, I100

BASELINE = 'a6bfff9'     # main before the core was rewritten as numbered steps in plain form
PARTS = ('prepare', 'colours', 'finish', 'cloud', 'colorize')
STEREO_SIDE, MONO_SIDE = PARTS[:2], PARTS[2:]


def scene(h, w, seed):
    """Floor, wall, box and sky; stereo with 1 % noise, 10 % outliers, holes; DA-V2-like rel."""
    rng = np.random.RandomState(seed)
    v = np.arange(h, dtype=np.float64)[:, None] + np.zeros((1, w))
    z = np.full((h, w), 8.0)
    floor = v > h * 0.55
    z[floor] = np.minimum(8.0, 0.6 * 700.0 / (v[floor] - h * 0.5))
    z[int(h * .4):int(h * .8), int(w * .3):int(w * .5)] = 2.0
    z[:int(h * .25)] = np.inf
    rel = ((1.0 / z - 0.01) / 0.05).astype(np.float32)
    st = z * (1 + 0.01 * rng.randn(h, w))
    bad = rng.rand(h, w) < 0.1
    st[bad] = rng.uniform(0.5, 15, bad.sum())
    st[int(h * .3):int(h * .45), int(w * .6):int(w * .8)] = np.nan
    st[:int(h * .25)] = np.nan
    conf = rng.uniform(1, 60, (h, w)).astype(np.float32)
    bgr = rng.randint(0, 256, (h, w, 3)).astype(np.uint8)
    return rel, st.astype(np.float32), conf, bgr


def median_ms(fn, repeats, before=None):
    """Median wall time of ``fn`` in ms; ``before`` runs untimed ahead of each call."""
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


class Stage(object):
    """The post-inference stage of one core (a module namespace) with one setting."""

    def __init__(self, core, frames, full):
        h, w = frames[0][1].shape
        self.core, self.frames, self.full = core, frames, full
        self.cam = core.camera.PinholeCamera(700.0 * w / 1280, 700.0 * w / 1280,
                                             (w - 1) / 2.0, (h - 1) / 2.0, w, h)
        self.aligner = core.alignment.MetricAligner(compute_uncertainty=full)
        self.i = 0
        self.last = None

    def __call__(self):
        rel, st, conf, image = self.frames[self.i % len(self.frames)]
        self.i += 1
        res = self.aligner.update(rel, st, conf, guide=image, camera=self.cam)
        self.core.pointcloud.depth_to_cloud(res.depth, self.cam, bgr=image,
                                            stride=1 if self.full else 2)
        self.core.visualize.colorize(res.depth, 0.3, 20.0, reverse=True)
        self.last = res


class SplitStage(Stage):
    """Today's stage in its two sides, each part timed (wall and CPU, seconds)."""

    def __init__(self, core, frames, full):
        super().__init__(core, frames, full)
        self.wall = {part: [] for part in PARTS}
        self.cpu = {part: [] for part in PARTS}

    def __call__(self):
        rel, st, conf, image = self.frames[self.i % len(self.frames)]
        self.i += 1
        stride = 1 if self.full else 2
        pc = self.core.pointcloud
        steps = (
            ('prepare', lambda _: self.aligner.prepare(st, conf, guide=image, camera=self.cam)),
            ('colours', lambda _: pc.cloud_colours(image, stride)),
            ('finish', lambda _: self.aligner.finish(rel, self.prepared)),
            ('cloud', lambda res: pc.depth_to_cloud(res.depth, self.cam, colours=self.colours,
                                                    stride=stride)),
            ('colorize', lambda res: self.core.visualize.colorize(res.depth, 0.3, 20.0,
                                                                  reverse=True)))
        value = None
        for part, fn in steps:
            c0, t0 = time.thread_time(), time.perf_counter()
            out = fn(value)
            self.wall[part].append(time.perf_counter() - t0)
            self.cpu[part].append(time.thread_time() - c0)
            if part == 'prepare':
                self.prepared = out
            elif part == 'colours':
                self.colours = out
            elif part == 'finish':
                value = self.last = out

    def clear(self):
        for times in (self.wall, self.cpu):
            for part in PARTS:
                del times[part][:]


def interleaved(stages, rounds):
    """
    Time each stage once per round, the order rotated every round; return the samples.

    Returns ({name: [wall-clock s per round]}, {name: [CPU s of this thread per round]}): on a
    shared machine the CPU time leaves out the time the process waited for a core.
    """
    wall = {name: [] for name in stages}
    cpu = {name: [] for name in stages}
    names = list(stages)
    for k in range(rounds):
        for name in names[k % len(names):] + names[:k % len(names)]:
            c0, t0 = time.thread_time(), time.perf_counter()
            stages[name]()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.thread_time() - c0)
    return wall, cpu


def _ratio(today, baseline):
    """'ratio of the medians [median and quartiles of the per-round ratios]'."""
    per_round = np.array(today) / np.array(baseline)
    q1, q2, q3 = np.percentile(per_round, (25, 50, 75))
    return '{:5.3f} (per round {:5.3f} [{:5.3f}, {:5.3f}])'.format(
        np.median(today) / np.median(baseline), q2, q1, q3)


def output_difference(new, old):
    """Largest relative difference of the finite depths; whether NaN and inf agree."""
    a, b = new.depth.astype(np.float64), old.depth.astype(np.float64)
    same = np.array_equal(np.isnan(a), np.isnan(b)) and np.array_equal(
        a[np.isinf(a)], b[np.isinf(b)]) and np.array_equal(np.isinf(a), np.isinf(b))
    f = np.isfinite(a) & np.isfinite(b)
    rel = np.abs(a[f] - b[f]) / np.abs(b[f])
    return (float(rel.max()) if rel.size else 0.0), same


def compare(frames, baselines, rounds):
    """
    Time today's stage, in its sides, against the baselines' whole stage, interleaved.

    Prints per setting and clock: today's parts, its stereo side, mono side and total, each
    baseline's stage, and the ratios of today's total and mono side to each baseline's stage.
    """
    core = types.SimpleNamespace(alignment=alignment, camera=camera, pointcloud=pointcloud,
                                 visualize=visualize)
    stages = {}
    for full in (False, True):
        stages[('today', full)] = SplitStage(core, frames, full)
        stages[('update', full)] = Stage(core, frames, full)
        for baseline in baselines:
            stages[(baseline.commit[:7], full)] = Stage(baseline, frames, full)
    for stage in stages.values():       # warm-up: buffers, caches, page faults
        for _ in range(2 * len(frames)):
            stage()
    for full in (False, True):
        stages[('today', full)].clear()
    wall, cpu = interleaved(stages, rounds)
    h, w = frames[0][1].shape
    print('post-inference stage at {}x{}, 1 thread, {} interleaved rounds: medians in ms '
          '(wall clock; CPU time of the thread), ratios of the medians and the median '
          '[quartiles] of the ratios within each round'.format(w, h, rounds))
    for full, what in ((False, "alignment_node's settings (no uncertainty, cloud stride 2)"),
                       (True, 'full resolution (uncertainty, cloud stride 1)')):
        print('  ' + what)
        today = stages[('today', full)]
        for clock, times, part_times in (('wall', wall, today.wall), ('CPU ', cpu, today.cpu)):
            part = {name: np.array(part_times[name]) for name in PARTS}
            stereo = sum(part[name] for name in STEREO_SIDE)
            mono = sum(part[name] for name in MONO_SIDE)
            print('    {}  today: stereo side {:6.3f} (prepare {:6.3f}, cloud colours {:6.3f}); '
                  'mono side {:6.3f} (finish {:6.3f}, cloud {:6.3f}, colorize {:6.3f}); '
                  'total {:6.3f}'.format(
                      clock, 1e3 * np.median(stereo), 1e3 * np.median(part['prepare']),
                      1e3 * np.median(part['colours']), 1e3 * np.median(mono),
                      1e3 * np.median(part['finish']), 1e3 * np.median(part['cloud']),
                      1e3 * np.median(part['colorize']), 1e3 * np.median(times[('today', full)])))
            # Today's stage in one call (update, the cloud from the image): what the split
            # costs, and the comparison with the baselines' same calls.
            whole = times[('update', full)]
            print('          today in one call (update) {:6.3f}: split / it {}'.format(
                1e3 * np.median(whole), _ratio(times[('today', full)], whole)))
            for baseline in baselines:
                name = baseline.commit[:7]
                base = times[(name, full)]
                print('          {} {:6.3f}: today in one call / it {}; split total / it {}; '
                      'mono side / it {}'.format(name, 1e3 * np.median(base), _ratio(whole, base),
                                                 _ratio(times[('today', full)], base),
                                                 _ratio(mono, base)))
    for baseline in baselines:
        for full in (False, True):
            # The same frame count on both: the last results are of the same frame.
            diff, same = output_difference(stages[('today', full)].last,
                                           stages[(baseline.commit[:7], full)].last)
            print('  output vs {} ({}): max relative depth difference {:.2e}, '
                  'NaN/inf {}'.format(baseline.commit[:7], 'full' if full else 'node', diff,
                                      'the same' if same else 'DIFFERENT'))


def parts(frames, r):
    """Each part alone (today's core), and depth_to_cloud against a copy of its bytes."""
    h, w = frames[0][1].shape
    cam = camera.PinholeCamera(700.0 * w / 1280, 700.0 * w / 1280, (w - 1) / 2.0,
                               (h - 1) / 2.0, w, h)
    aligner = alignment.MetricAligner()
    rel, st, conf, bgr = frames[0]
    depth = aligner.update(rel, st, conf).depth
    cloud = pointcloud.depth_to_cloud(depth, cam, bgr=bgr)
    out = np.empty_like(cloud)
    raw = cloud.view(np.uint8).reshape(-1)
    raw_out = np.empty_like(raw)
    t_update = median_ms(lambda: aligner.update(rel, st, conf), r)
    t_cloud = median_ms(lambda: pointcloud.depth_to_cloud(depth, cam, bgr=bgr), r)
    t_cloud_out = median_ms(lambda: pointcloud.depth_to_cloud(depth, cam, bgr=bgr, out=out), r)
    t_copy = median_ms(lambda: raw.copy(), r)
    t_copy_into = median_ms(lambda: np.copyto(raw_out, raw), r)
    t_colorize = median_ms(lambda: visualize.colorize(depth, 0.3, 20.0, reverse=True), r)
    print('parts alone, median of {} runs (ms)'.format(r))
    print('  MetricAligner.update (confidence, uncertainty, no guide)  {:7.3f}'.format(
        t_update))
    print('  depth_to_cloud (rgb, stride 1, new array)                 {:7.3f}'.format(t_cloud))
    print('  depth_to_cloud (rgb, stride 1, out=)                      {:7.3f}'.format(
        t_cloud_out))
    print('  colorize                                                  {:7.3f}'.format(
        t_colorize))
    print('  copy of the cloud bytes ({:.1f} MB): new {:.3f}, into a buffer {:.3f}'.format(
        raw.nbytes / 1e6, t_copy, t_copy_into))
    print('  depth_to_cloud / copy {:.2f}, depth_to_cloud(out=) / copyto {:.2f} '
          '(goal <= 1.5)'.format(t_cloud / t_copy, t_cloud_out / t_copy_into))
    # The same two operations with cold caches: a 64 MB write evicts inputs and outputs first
    # (untimed). Here the 14.7 MB copy otherwise runs from the 32 MB L3; on the Jetson (4 MB
    # L3), and in the node, where the depth arrives from DDS, it cannot.
    evict = np.zeros(64 * 1024 * 1024 // 8)

    def flush():
        np.add(evict, 1.0, out=evict)

    t_cloud_cold = median_ms(lambda: pointcloud.depth_to_cloud(depth, cam, bgr=bgr, out=out),
                             r, flush)
    t_copy_cold = median_ms(lambda: np.copyto(raw_out, raw), r, flush)
    print('  cold caches: depth_to_cloud(out=) {:.3f}, copy {:.3f}, ratio {:.2f}'.format(
        t_cloud_cold, t_copy_cold, t_cloud_cold / t_copy_cold))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--width', type=int, default=1280)
    parser.add_argument('--height', type=int, default=720)
    parser.add_argument('--rounds', type=int, default=60,
                        help='interleaved rounds of the stage comparison')
    parser.add_argument('--repeats', type=int, default=30, help='runs of each part alone')
    parser.add_argument('--baseline', action='append',
                        help='commit whose core is timed in the same rounds (repeat for more; '
                        'default {})'.format(BASELINE))
    parser.add_argument('--no-baseline', action='store_true')
    parser.add_argument('--no-parts', action='store_true', help='only the stage comparison')
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    baselines = []
    for commit in ([] if args.no_baseline else args.baseline or [BASELINE]):
        try:
            baselines.append(load_core(commit))
        except BaselineUnavailable as exc:
            print('no baseline {}: {}'.format(commit, exc))
    print('Python {}, numpy {}, OpenCV {}{}'.format(
        sys.version.split()[0], np.__version__, cv2.__version__,
        ''.join(', baseline {}'.format(b.commit[:10]) for b in baselines)))
    frames = [scene(args.height, args.width, s) for s in range(4)]
    compare(frames, baselines, args.rounds)
    if not args.no_parts:
        parts(frames, args.repeats)
    return 0


if __name__ == '__main__':
    sys.exit(main())

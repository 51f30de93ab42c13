"""
alignment_node's memory around a burst of large messages (issue 16, part 6).

Starts alignment_node as a process with config/zed_depth.yaml, sends good 1280x720 sets, then a
burst of stereo depth images alone at ``--rate`` Hz for ``--seconds``, then good sets again.
Prints the node's resident memory (anonymous pages: the Python and C heaps; not the DDS
shared-memory segments) before, at the peak of the burst and after it, with the node's own
counters (dropped_frame, dropped_skipped, pairing_waiting_mb, heap_trims). Each burst runs
twice, on a fresh node each time: with the heap trim after a burst (the node as shipped,
nodes_core.workers.HeapTrim) and without it (HeapTrim.maybe_trim patched to do nothing).

Bursts (``--what``, default all three):

- ``encoding``: colour images (bgr8) on the depth topic, refused on arrival;
- ``size``: 32FC1 depth of 960x720 against the 1280x720 camera_info, refused on arrival;
- ``waiting``: valid 32FC1 depth whose sets never get a disparity: they wait in the pairing
  buffer (up to ``pairing_max_mb``) until the latency bound, then drain.

    .venv/bin/python benchmarks/bench_burst_memory.py [--rate 100] [--seconds 3] [--what waiting]
        [--repeat 3]

The figures depend on the machine, its load and the allocator's luck; run it on an otherwise
idle machine, more than once. Run it from another checkout (cwd) to measure that tree's node:
the node runs as ``python -m depth_ros.ros.alignment_node`` in the current directory.
"""
import argparse
import os
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'test'))
sys.path.append(ROOT)      # depth_ros where it is not installed (last: resource/ is no module)

from burst_support import BurstGraph, rss_anon_mb  # noqa: E402

BYTES = {'encoding': 3, 'size': 0.75 * 4, 'waiting': 4}


def one_run(what, trim, rate, seconds, settle):
    """Run one node through one burst; return a dict of the figures."""
    graph = BurstGraph(cwd=os.getcwd(), trim=trim)
    try:
        graph.send_good(5)
        before = rss_anon_mb(graph.pid)
        peak = [before]
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                peak[0] = max(peak[0], rss_anon_mb(graph.pid))
                time.sleep(0.05)
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        t0 = time.monotonic()
        sent = graph.burst(rate, seconds, what)
        burst_s = time.monotonic() - t0
        right_after = graph.diagnostics()
        graph.send_good(max(1, int(settle * 2)), period=0.5)
        stop.set()
        watcher.join(10.0)
        if watcher.is_alive():
            raise SystemExit('the RSS watcher did not stop within 10 s of being told to '
                             '(reading /proc/{}/status)'.format(graph.pid))
        after = rss_anon_mb(graph.pid)
        end = graph.diagnostics()
    finally:
        graph.close()
    return dict(sent=sent, burst_s=burst_s, before=before, peak=peak[0], after=after,
                waiting_mb=float(right_after.get('pairing_waiting_mb', 'nan')),
                dropped_frame=int(end.get('dropped_frame', -1)),
                dropped_skipped=int(end.get('dropped_skipped', -1)),
                heap_trims=int(end.get('heap_trims', -1)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--rate', type=float, default=100.0, help='burst messages per second')
    parser.add_argument('--seconds', type=float, default=3.0, help='burst length')
    parser.add_argument('--what', choices=sorted(BYTES), action='append',
                        help='burst kind (repeatable; default: all)')
    parser.add_argument('--repeat', type=int, default=1,
                        help='runs of each burst with and without the trim (the allocator '
                        'keeps more or less by chance: run it several times)')
    parser.add_argument('--settle', type=float, default=3.0,
                        help='seconds of good sets after the burst before the last reading')
    args = parser.parse_args(argv)
    print('alignment_node anonymous RSS (MB) around a burst of 1280x720 depth images at '
          '{:g} Hz for {:g} s; Python {}.{}'.format(args.rate, args.seconds,
                                                    *sys.version_info[:2]))
    print('{:9} {:9} {:>5} {:>7} {:>7} {:>13} {:>13} {:>10} {:>8} {:>8} {:>6}'.format(
        'burst', 'heap trim', 'sent', 'MB', 'before', 'peak', 'after', 'waitingMB',
        'd_frame', 'd_skip', 'trims'))
    for what in args.what or ('encoding', 'size', 'waiting'):
        for trim in (False, True) * max(1, args.repeat):
            r = one_run(what, trim, args.rate, args.seconds, args.settle)
            print('{:9} {:9} {:5d} {:7.0f} {:7.0f} {:7.0f} ({:+4.0f}) {:7.0f} ({:+4.0f}) '
                  '{:10.1f} {:8d} {:8d} {:6d}'.format(
                      what, 'on' if trim else 'off', r['sent'],
                      r['sent'] * 1280 * 720 * BYTES[what] / 1e6, r['before'], r['peak'],
                      r['peak'] - r['before'], r['after'], r['after'] - r['before'],
                      r['waiting_mb'], r['dropped_frame'], r['dropped_skipped'],
                      r['heap_trims']), flush=True)


if __name__ == '__main__':
    main()

"""
alignment_node's memory around a burst of wrong messages (issue 16, part 6).

Starts alignment_node as a process with config/zed_depth.yaml, sends good 1280x720 sets, then a
burst of stereo depth images with a wrong encoding (bgr8: a colour image remapped onto the depth
topic) at ``--rate`` Hz for ``--seconds``, then good sets again. Prints the node's resident
memory (anonymous pages: the Python and C heaps; not the DDS shared-memory segments) before,
at the peak of the burst and after it, with the node's own counters (dropped_frame,
dropped_skipped, pairing_waiting_mb).

    .venv/bin/python benchmarks/bench_burst_memory.py [--rate 100] [--seconds 3]

The figures depend on the machine and its load; run it on an otherwise idle machine. Run it
from another checkout (cwd) to measure that tree's node: the node runs as
``python -m depth_ros.ros.alignment_node`` in the current directory.
"""
import argparse
import os
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'test'))

from burst_support import BurstGraph, rss_anon_mb  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--rate', type=float, default=100.0, help='burst messages per second')
    parser.add_argument('--seconds', type=float, default=3.0, help='burst length')
    parser.add_argument('--waiting', action='store_true',
                        help='good 32FC1 depth whose sets never get a disparity (they wait in '
                        'the pairing buffer until the latency bound) instead of wrong ones')
    parser.add_argument('--settle', type=float, default=3.0,
                        help='seconds of good sets after the burst before the last reading')
    args = parser.parse_args(argv)
    graph = BurstGraph(cwd=os.getcwd())
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
        sent = graph.burst(args.rate, args.seconds, wrong=not args.waiting)
        burst_s = time.monotonic() - t0
        waiting = graph.diagnostics()
        graph.send_good(int(args.settle * 2), period=0.5)
        stop.set()
        watcher.join()
        after = rss_anon_mb(graph.pid)
        values = graph.diagnostics()
    finally:
        graph.close()
    what, nbytes = ('waiting 32FC1', 4) if args.waiting else ('wrong-encoding (bgr8)', 3)
    print('burst: {} {} 1280x720 depth images in {:.1f} s ({:.0f} Hz, {:.0f} MB)'.format(
        sent, what, burst_s, sent / burst_s, sent * 1280 * 720 * nbytes / 1e6))
    print('alignment_node anonymous RSS: before {:.0f} MB, peak {:.0f} MB (+{:.0f}), after {:.0f} '
          'MB (+{:.0f})'.format(before, peak[0], peak[0] - before, after, after - before))
    print('right after the burst: pairing_waiting_mb {}, dropped_frame {}, dropped_skipped {}'
          .format(waiting.get('pairing_waiting_mb'), waiting.get('dropped_frame'),
                  waiting.get('dropped_skipped')))
    print('at the end: dropped_frame {}, dropped_skipped {}, pairing_waiting_mb {}, heap_trims '
          '{}'.format(values.get('dropped_frame'), values.get('dropped_skipped'),
                      values.get('pairing_waiting_mb'), values.get('heap_trims')))


if __name__ == '__main__':
    main()

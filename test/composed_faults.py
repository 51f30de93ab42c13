"""
Run composed_nodes with one fault injected, for test_composed.py.

    python test/composed_faults.py FAULT [composed_nodes arguments ...]

FAULT:

- ``dead:grab``, ``dead:inference``, ``dead:alignment``: the zed_node grab thread, the
  depth_node inference thread or the alignment_node thread ends on its 4th frame, as a thread
  does when something that is not an Exception leaves it (SystemExit here; a C extension's
  abort of the thread alike): the nodes catch every Exception of a frame, so only this kills
  the thread.
- ``bad_frames``: every 3rd frame of the camera has a confidence map with NaN, every 5th one
  two rows short (alignment_node refuses the set), and every 4th network output has NaN
  (depth_node drops it).

Everything else is the real composed_nodes: the patched functions are the sample source's
``read``, the stand-in network's ``predict`` and the aligner's ``finish`` (what ``update``
calls, and what alignment_node calls on a set prepared during inference).
"""
import os
import sys

# As ``python -m depth_ros.ros.composed`` from the checkout finds the package (the Humble tier
# runs the tree uninstalled).
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _nth(function, n, action):
    calls = [0]

    def wrapped(self, *args, **kwargs):
        calls[0] += 1
        return action(calls[0], function(self, *args, **kwargs)) if calls[0] % n == 0 else \
            function(self, *args, **kwargs)
    return wrapped


def _dead(where):
    from depth_ros.core.alignment import MetricAligner
    from depth_ros.inference.standin import StandInDepthModel
    from depth_ros.sources.sample import SampleSource
    owner, name = {'grab': (SampleSource, 'read'), 'inference': (StandInDepthModel, 'predict'),
                   'alignment': (MetricAligner, 'finish')}[where]
    original = getattr(owner, name)
    calls = [0]

    def wrapped(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 4:
            raise SystemExit('fault injected by test/composed_faults.py')
        return original(self, *args, **kwargs)
    setattr(owner, name, wrapped)


def _bad_frames():
    import numpy as np
    from depth_ros.inference.standin import StandInDepthModel
    from depth_ros.sources.sample import SampleSource

    def nan_confidence(count, frame):
        # A source whose confidence holds a NaN: its own plane (the sample's are read-only),
        # not claimed finite (Frame.confidence_finite), as such a source would report it.
        frame.confidence = frame.confidence.copy()
        frame.confidence[0, 0] = np.nan
        frame.confidence_finite = False
        return frame

    def nan_output(count, disparity):
        disparity = disparity.copy()
        disparity[:2, :] = np.nan
        return disparity

    def small_confidence(count, frame):
        frame.confidence = frame.confidence[:-2]
        return frame
    SampleSource.read = _nth(_nth(SampleSource.read, 3, nan_confidence), 5, small_confidence)
    StandInDepthModel.predict = _nth(StandInDepthModel.predict, 4, nan_output)


def main():
    fault = sys.argv.pop(1)
    if fault.startswith('dead:'):
        _dead(fault.split(':', 1)[1])
    elif fault == 'bad_frames':
        _bad_frames()
    else:
        raise SystemExit('unknown fault {!r}'.format(fault))
    from depth_ros.ros.composed import main as composed_main
    composed_main()


if __name__ == '__main__':
    main()

"""
Replay a finite source: loop, pace by recorded stamps or a fixed rate, simulate outages.

``ReplaySource(inner, loop=..., rate=..., fps=..., drop_after=..., outage_s=...)``:

- ``loop``: when the inner source ends, rewind it (``FrameSource.rewind``), else close and
  reopen it, and go on. Stamps stay strictly increasing: each new pass is shifted to start one
  frame period after the last stamp.
- ``rate``: playback speed relative to the recorded stamps (1.0 real time, 2.0 twice as fast,
  0 as fast as possible).
- Recorded stamps pass through as recorded (plus a loop's shift). One that goes back inside a
  pass is the source restarting (a camera or recorder restarted mid-recording): the pacing
  starts over from that frame, and the nodes' stamp guards see the restart (a step back of
  more than their ``stamp_reset_s``: accepted, they start over; a smaller one, or a repeated
  stamp, is dropped there as out of order). With ``fps`` the wall-clock stamps are kept
  strictly increasing.
- ``fps``: for sources whose stamps mean nothing (the sample): deliver at a fixed rate and
  stamp each frame with the wall clock at delivery. Overrides ``rate``.
- ``drop_after`` / ``outage_s``: simulate a camera that disappears and comes back. After
  ``drop_after`` frames, ``read()`` and ``open()`` raise SourceError for ``outage_s`` seconds
  (as a ZED unplugged mid-run does); afterwards the source delivers again. Once per run, or
  every ``drop_after`` frames with ``outage_repeat``. The zed_node reconnect test uses this.

Errors: the inner source's SourceErrors pass through (a FrameError skips that frame only; the
next ``read()`` goes on). Anything else that the inner ``open()`` or ``read()`` raises (a corrupt
bag's database error, a decoder's exception) becomes a SourceError with a one-line message that
names the inner source, so callers handle one exception family.
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Optional

from depth_ros.sources.base import Frame, FrameSource, one_line, SourceError
import numpy as np

LOG = logging.getLogger('depth_ros.sources.replay')


def _check_nonneg(name: str, value, allow_none: bool = False):
    if value is None and allow_none:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) \
        and bool(np.isfinite(value)) and value >= 0
    if not ok:
        raise ValueError('`{}` must be a finite number >= 0, got {!r}'.format(name, value))
    return value


class ReplaySource(FrameSource):
    """
    Wrap a finite FrameSource with looping, pacing and simulated outages (module docstring).

    :param clock: monotonic seconds (injectable for tests); ``sleep`` likewise.
    :param wall_ns: wall-clock nanoseconds for ``fps`` stamps (injectable for tests).
    """

    def __init__(self, inner: FrameSource, loop: bool = False, rate: float = 1.0,
                 fps: Optional[float] = None, drop_after: Optional[int] = None,
                 outage_s: float = 2.0, outage_repeat: bool = False,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 wall_ns: Callable[[], int] = time.time_ns):
        if not isinstance(inner, FrameSource):
            raise ValueError('`inner` must be a FrameSource, got {!r}'.format(inner))
        _check_nonneg('rate', rate)
        if fps is not None and not (_check_nonneg('fps', fps) and fps > 0):
            raise ValueError('`fps` must be a finite number > 0, got {!r}'.format(fps))
        if drop_after is not None and (isinstance(drop_after, bool)
                                       or not isinstance(drop_after, int) or drop_after < 1):
            raise ValueError('`drop_after` must be an integer >= 1, got {!r}'.format(drop_after))
        _check_nonneg('outage_s', outage_s)
        self.inner = inner
        self.name = 'replay(' + inner.name + ')'
        self.loop = bool(loop)
        self.rate = float(rate)
        self.fps = None if fps is None else float(fps)
        self.drop_after = drop_after
        self.outage_s = float(outage_s)
        self.outage_repeat = bool(outage_repeat)
        self._clock, self._sleep, self._wall_ns = clock, sleep, wall_ns
        self._reset()
        self.delivered = 0          # frames delivered since construction
        self.outages = 0            # simulated outages so far
        self._outage_until: Optional[float] = None

    def _reset(self):
        self._offset_ns = 0         # added to the inner stamps of the current pass
        self._last_in = None        # last inner stamp
        self._last_out = None       # last delivered stamp
        self._period_ns = None      # last spacing seen, used to space passes
        self._t_start = None        # (clock s, out stamp ns) of the first paced frame
        self._opened = False
        self._new_pass = True

    def _in_outage(self) -> bool:
        if self._outage_until is None:
            return False
        if self._clock() < self._outage_until:
            return True
        LOG.info('%s: simulated outage over', self.name)
        self._outage_until = None
        return False

    def _inner_call(self, method):
        try:
            return method()
        except SourceError:
            raise
        except Exception as exc:  # the contract of base.py: only SourceErrors leave a source
            raise SourceError('{} {}() failed: {}'.format(
                self.inner.name, method.__name__, one_line(exc))) from None

    def open(self) -> None:
        if self._in_outage():
            raise SourceError('{}: camera unavailable (simulated outage)'.format(self.name))
        if not self._opened:
            self._inner_call(self.inner.open)
            self._opened = True
            self._new_pass = True
            self._t_start = None  # after a reopen, pace from now, not from the old timeline

    def close(self) -> None:
        opened, self._opened = self._opened, False
        if opened:
            self._inner_call(self.inner.close)

    def _next_inner(self, image_first=False) -> Optional[Frame]:
        read = self.inner.read
        if image_first and getattr(type(self.inner), 'read_image_first',
                                   FrameSource.read_image_first) \
                is not FrameSource.read_image_first:
            read = self.inner.read_image_first      # a source that has an image-first read
        frame = self._inner_call(read)
        if frame is None and self.loop:
            # A source that can start over while open does (a bag: no new connection,
            # metadata or first query, ~15 ms at each pass); others are reopened.
            rewind = getattr(self.inner, 'rewind', None)
            if rewind is None or not self._inner_call(rewind):
                self._inner_call(self.inner.close)
                self._inner_call(self.inner.open)
            self._new_pass = True
            frame = self._inner_call(read)
        if frame is not None and self._new_pass:
            self._new_pass = False
            self._last_in = None
            if self._last_out is not None \
                    and frame.stamp_ns + self._offset_ns <= self._last_out:
                # Continue one frame period after the last stamp delivered.
                period = self._period_ns or (int(1e9 / self.fps) if self.fps else 100000000)
                self._offset_ns = self._last_out + period - frame.stamp_ns
        return frame

    def read(self) -> Optional[Frame]:
        return self._read(False)

    def read_image_first(self) -> Optional[Frame]:
        """``read`` with the inner source's ``read_image_first`` (an SVO: image first)."""
        return self._read(True)

    def _read(self, image_first) -> Optional[Frame]:
        if self._in_outage():
            raise SourceError('{}: camera unavailable (simulated outage)'.format(self.name))
        if not self._opened:
            self.open()
        if self.drop_after is not None and self.delivered > 0 \
                and self.delivered % self.drop_after == 0 \
                and (self.outage_repeat or self.outages == 0) \
                and self._outage_mark != self.delivered:
            self._outage_mark = self.delivered
            self.outages += 1
            self._outage_until = self._clock() + self.outage_s
            self.close()
            LOG.info('%s: simulated outage for %.1f s after %d frames', self.name,
                     self.outage_s, self.delivered)
            raise SourceError('{}: camera unavailable (simulated outage)'.format(self.name))
        frame = self._next_inner(image_first)
        if frame is None:
            return None
        if self._last_in is not None and frame.stamp_ns > self._last_in:
            self._period_ns = frame.stamp_ns - self._last_in
        self._last_in = frame.stamp_ns
        stamp = self._stamp(frame)
        frame.stamp_ns = stamp
        self._last_out = stamp
        self.delivered += 1
        return frame

    _outage_mark = -1

    def _stamp(self, frame: Frame) -> int:
        """Pace the frame and return the stamp it is delivered with (module docstring)."""
        last = self._last_out
        if self.fps is not None:
            self._pace_fixed()
            stamp = self._wall_ns()
            if last is not None and stamp <= last:
                stamp = last + 1        # a coarse or stepped wall clock: keep increasing
            return stamp
        stamp = frame.stamp_ns + self._offset_ns
        if last is not None and stamp < last:
            LOG.info('%s: the stamp goes back %.3f s (from %d to %d): the source restarted',
                     self.name, (last - stamp) * 1e-9, last, stamp)
            self._t_start = None        # pace the rest of the recording from this frame
        self._pace_recorded(stamp)
        return stamp

    def _pace_fixed(self) -> None:
        now = self._clock()
        if self._t_start is None:
            self._t_start = (now, 0)
            self._count = 0
            return
        self._count += 1
        due = self._t_start[0] + self._count / self.fps
        if due > now:
            self._sleep(due - now)

    def _pace_recorded(self, stamp: int) -> None:
        if self.rate <= 0:
            return
        now = self._clock()
        if self._t_start is None:
            self._t_start = (now, stamp)
            return
        due = self._t_start[0] + (stamp - self._t_start[1]) * 1e-9 / self.rate
        if due > now:
            self._sleep(due - now)

"""
The frame-source interface: every camera source yields the same `Frame`.

Sources: zed (pyzed, live or SVO), sample (bundled Middlebury pair), folder (stereo pairs +
calibration YAML, SGBM depth), rosbag (rosbag2 of ZED topics, read with `rosbags`).

Errors, by what the caller should do (each message is one line):

- ``SourceConfigError`` (a SourceError and a ValueError): the configuration or the installation
  is wrong (a path that does not exist, a folder without its calibration, a resolution that the
  installed ZED SDK lacks). Retrying cannot help: report it and stop.
- ``FrameError`` (a SourceError): this frame is bad (an unreadable image, a corrupted ZED
  frame); the source is fine. Log it, count it, call ``read()`` again; no reopen.
- ``SourceError``: the device or file failed (camera unplugged, grab failed). ``close()``,
  wait with backoff, ``open()`` again.
"""
from __future__ import annotations

from dataclasses import dataclass
import logging
import threading
import time
from typing import Callable, Iterator, Optional, Tuple

from depth_ros.core.camera import PinholeCamera
import numpy as np

LOG = logging.getLogger('depth_ros.sources')


@dataclass
class Frame:
    """One rectified stereo frame, as the ZED SDK gives it."""

    left: np.ndarray                      # [H, W, 3] uint8 BGR, rectified left image
    depth: Optional[np.ndarray]           # [H, W] float32 metres; NaN, +-inf, 0 = invalid
    confidence: Optional[np.ndarray]      # [H, W] float32 1..100, larger = less reliable
    camera: PinholeCamera                 # intrinsics of `left` at its size
    stamp_ns: int                         # capture time, nanoseconds (SDK image timestamp)
    frame_id: str = ''                    # optical frame of `left`, '' = let the node choose
    right: Optional[np.ndarray] = None    # [H, W, 3] uint8 BGR, when the source has it
    baseline_m: Optional[float] = None    # stereo baseline in metres, when known
    # True where the source found every confidence value finite, as alignment_node's check
    # would (a rosbag's frames: decode_set checked them): in-process, alignment_node takes
    # such a confidence as it is instead of checking it again.
    confidence_finite: bool = False
    # Not None while the stereo planes are still being retrieved (a frame read image first,
    # FrameSource.read_image_first): call ``wait_stereo`` before reading depth or confidence.
    pending: Optional['StereoPending'] = None

    def wait_stereo(self, timeout_s: float) -> None:
        """
        Return once ``depth`` and ``confidence`` are in the frame (at once when they were).

        :raises ValueError: one line: the source could not retrieve them (its error), or they
            did not come within ``timeout_s`` seconds.
        """
        if self.pending is not None:
            self.pending.wait(timeout_s)


class StereoPending(object):
    """
    The stereo side of a frame handed on before it is retrieved (image first).

    A source's ``read_image_first`` returns the frame with its image and camera, ``depth`` and
    ``confidence`` None, and one of these in ``Frame.pending``. The thread that read the frame
    hands the image on, then calls :meth:`complete`, which fills the two planes (or records
    why it could not, and raises that SourceError); a thread that needs them calls
    ``Frame.wait_stereo`` first. ``retrieve``: returns (depth, confidence), raises SourceError.

    ``keeps_gil``: the retrieve keeps the GIL (a ZED SDK before 5.0.2: its pyzed copies a 720p
    plane from the GPU with no other thread running). Begun first, such retrieves held the
    network's start back by their time (depth_node's queue, 1.5-2.0 ms on the simulated SDK
    4.1 at 720p; docs/ros.md). So an in-process consumer that starts on the image at once
    (depth_node, composed, its worker idle) says so (:meth:`expect_start`) and, as its
    network call begins, :meth:`started`; the reading thread waits for that before such a
    retrieve (:meth:`wait_for_start`). The network call releases the GIL: the retrieves then
    run beside it.
    """

    def __init__(self, retrieve: Callable[[], Tuple[np.ndarray, Optional[np.ndarray]]],
                 keeps_gil: bool = False):
        self._retrieve = retrieve
        self._done = threading.Event()
        self._started = threading.Event()
        self.keeps_gil = bool(keeps_gil)    # retrieve keeps the GIL (pyzed before 5.0.2)
        self.start_expected = False         # a consumer starts on the image at once
        self.error = None       # what retrieve raised (SourceError), or None

    def expect_start(self) -> None:
        """Say that a consumer starts on the frame's image at once (then calls ``started``)."""
        self.start_expected = True

    def started(self) -> None:
        """Say that the consumer's work on the image has begun (its network call, GIL-free)."""
        self._started.set()

    @property
    def holds_for_start(self) -> bool:
        """Whether :meth:`wait_for_start` waits: a retrieve keeping the GIL, a start expected."""
        return self.keeps_gil and self.start_expected

    def wait_for_start(self, timeout_s: float) -> float:
        """
        Wait until ``started``, at most ``timeout_s`` s, where ``holds_for_start``; else return.

        Returns the seconds waited (0.0 when it does not hold).
        """
        if not self.holds_for_start:
            return 0.0
        t0 = time.monotonic()
        self._started.wait(timeout_s)
        return time.monotonic() - t0

    @property
    def done(self) -> bool:
        """Whether :meth:`complete` has run (with or without the planes)."""
        return self._done.is_set()

    def complete(self, frame: 'Frame') -> None:
        """Retrieve the planes into ``frame`` (the reading thread, once); re-raise a failure."""
        retrieve, self._retrieve = self._retrieve, None
        if retrieve is None:
            raise RuntimeError('the stereo of this frame was completed already')
        try:
            frame.depth, frame.confidence = retrieve()
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self._done.set()

    def wait(self, timeout_s: float) -> None:
        """Return once completed with the planes; ValueError (one line) otherwise."""
        if not self._done.wait(timeout_s):
            raise ValueError('the frame\'s stereo depth did not come within {:g} s of its '
                             'image'.format(timeout_s))
        if self.error is not None:
            raise ValueError('the frame\'s stereo depth could not be retrieved: {}'.format(
                one_line(self.error)))


class SourceError(RuntimeError):
    """The source cannot deliver frames (device gone, file unreadable). May be retried."""


class SourceConfigError(SourceError, ValueError):
    """The source cannot work as configured or installed; retrying cannot help."""


class FrameError(SourceError):
    """One frame could not be delivered; the source goes on with the next ``read()``."""


def one_line(exc: BaseException) -> str:
    """``'<Type>: <first line of the message>'``, for wrapping an unexpected exception."""
    lines = str(exc).strip().splitlines()
    text = type(exc).__name__
    return text + ': ' + lines[0] if lines else text


class FrameSource(object):
    """
    Base class. Subclasses implement `open`, `read` and `close`.

    `read()` returns the next Frame, or None at the end of a finite source. It raises
    SourceError (or a subclass, see the module docstring) and nothing else when the device,
    file or frame fails; callers may `close()` and `open()` again.
    """

    name = 'source'
    live = False

    def open(self) -> None:
        """Acquire the device or file. Raises SourceError (or ValueError for bad config)."""

    def read(self) -> Optional[Frame]:
        raise NotImplementedError

    def read_image_first(self) -> Optional[Frame]:
        """
        ``read``, except that the frame may come before its stereo planes (``Frame.pending``).

        A source whose stereo costs time after the image (the ZED SDK's depth and confidence
        retrieves and copies) returns the frame with its image as soon as it has it; the caller
        hands the image on (inference can start), then calls ``frame.pending.complete(frame)``,
        which fills ``depth`` and ``confidence`` or raises as ``read`` would. This default
        returns ``read()``'s whole frame (``pending`` None).
        """
        return self.read()

    def close(self) -> None:
        """Release the device or file. Safe to call twice."""

    def rewind(self) -> bool:
        """
        Start again from the first frame without closing; return whether it did.

        False (the default): not supported here, or not open; ``close()`` and ``open()`` do it.
        """
        return False

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __iter__(self) -> Iterator[Frame]:
        """Frames until the end; a FrameError is logged and the frame skipped."""
        while True:
            try:
                frame = self.read()
            except FrameError as exc:
                LOG.warning('%s: frame dropped: %s', self.name, exc)
                continue
            if frame is None:
                return
            yield frame

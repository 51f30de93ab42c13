"""
The frame-source interface: every camera source yields the same `Frame`.

Sources: zed (pyzed, live or SVO), sample (bundled Middlebury pair), folder (stereo pairs +
calibration YAML, SGBM depth), rosbag (rosbag2 of ZED topics, read with `rosbags`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

from depth_ros.core.camera import PinholeCamera
import numpy as np


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


class SourceError(RuntimeError):
    """The source cannot deliver frames (device gone, file unreadable). May be retried."""


class FrameSource(object):
    """
    Base class. Subclasses implement `open`, `read` and `close`.

    `read()` returns the next Frame, or None at the end of a finite source. It raises
    SourceError when the device or file fails; callers may `close()` and `open()` again.
    """

    name = 'source'
    live = False

    def open(self) -> None:
        """Acquire the device or file. Raises SourceError (or ValueError for bad config)."""

    def read(self) -> Optional[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file. Safe to call twice."""

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __iter__(self) -> Iterator[Frame]:
        while True:
            frame = self.read()
            if frame is None:
                return
            yield frame

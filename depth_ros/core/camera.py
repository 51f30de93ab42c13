"""Pinhole camera model: intrinsics come from calibration (CameraInfo), never from width / 2."""
from __future__ import annotations

from typing import Sequence

from depth_ros.core.checks import check_number
import numpy as np


class PinholeCamera(object):
    """
    Intrinsics of a rectified pinhole camera, in pixels, for an image of ``width`` x ``height``.

    :param fx, fy: focal lengths in pixels (> 0).
    :param cx, cy: principal point in pixels (finite).
    :param width, height: image size in pixels (> 0 integers).
    """

    __slots__ = ('fx', 'fy', 'cx', 'cy', 'width', 'height')

    def __init__(self, fx: float, fy: float, cx: float, cy: float, width: int, height: int):
        self.fx = check_number('fx', fx, low=0, low_open=True)
        self.fy = check_number('fy', fy, low=0, low_open=True)
        self.cx = check_number('cx', cx)
        self.cy = check_number('cy', cy)
        self.width = check_number('width', width, low=0, low_open=True, integer=True)
        self.height = check_number('height', height, low=0, low_open=True, integer=True)

    @property
    def K(self) -> np.ndarray:  # noqa: N802 (the usual name of the intrinsic matrix)
        """3x3 float64 intrinsic matrix."""
        return np.array([[self.fx, 0.0, self.cx],
                         [0.0, self.fy, self.cy],
                         [0.0, 0.0, 1.0]])

    @classmethod
    def from_K(cls, K: Sequence, width: int, height: int) -> 'PinholeCamera':  # noqa: N802,N803
        """Build from a 3x3 matrix (or its 9 row-major values, as in CameraInfo.k)."""
        k = np.asarray(K, dtype=np.float64)
        if k.size != 9:
            raise ValueError('`K` must be 3x3 (or 9 values), got shape {}'.format(k.shape))
        k = k.reshape(3, 3)
        if k[0, 1] != 0.0 or k[1, 0] != 0.0 or k[2, 0] != 0.0 or k[2, 1] != 0.0 \
                or k[2, 2] != 1.0:
            raise ValueError('`K` must be an upper-triangular pinhole matrix with K[2,2] == 1 '
                             'and no skew, got {}'.format(k.tolist()))
        return cls(k[0, 0], k[1, 1], k[0, 2], k[1, 2], width, height)

    def scaled(self, width: int, height: int) -> 'PinholeCamera':
        """
        Return the same camera for an image resized to ``width`` x ``height``.

        Uses the pixel-centre convention that cv2.resize follows: a pixel centre u maps to
        (u + 0.5) * s - 0.5.
        """
        width = check_number('width', width, low=0, low_open=True, integer=True)
        height = check_number('height', height, low=0, low_open=True, integer=True)
        sx = float(width) / self.width
        sy = float(height) / self.height
        return PinholeCamera(self.fx * sx, self.fy * sy,
                             (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5,
                             int(width), int(height))

    def __eq__(self, other) -> bool:
        if not isinstance(other, PinholeCamera):
            return NotImplemented
        return all(getattr(self, s) == getattr(other, s) for s in self.__slots__)

    def __repr__(self) -> str:
        return ('PinholeCamera(fx={:.6g}, fy={:.6g}, cx={:.6g}, cy={:.6g}, width={}, '
                'height={})'.format(self.fx, self.fy, self.cx, self.cy, self.width,
                                    self.height))

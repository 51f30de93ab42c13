"""Publishing a frame at a fraction of its size (zed_node's ``publish_downscale``)."""
from __future__ import annotations

import cv2
from depth_ros.sources.base import Frame


def downscale_frame(frame: Frame, factor: float) -> Frame:
    """
    Return the frame at ``factor`` of its size: area-averaged images, nearest depth and confidence.

    Nearest keeps depth values real (no averaging across edges into phantom depths). The camera
    is scaled with the image (image_geometry's convention for a resized image); the baseline
    stays, so the right camera's info (P[0,3] = -fx * baseline) follows the scaled fx.
    """
    if factor >= 1.0:
        return frame
    h, w = frame.left.shape[:2]
    width, height = max(1, int(round(w * factor))), max(1, int(round(h * factor)))
    size = (width, height)

    def area(a):
        return None if a is None else cv2.resize(a, size, interpolation=cv2.INTER_AREA)

    def nearest(a):
        return None if a is None else cv2.resize(a, size, interpolation=cv2.INTER_NEAREST)
    return Frame(left=area(frame.left), depth=nearest(frame.depth),
                 confidence=nearest(frame.confidence), camera=frame.camera.scaled(width, height),
                 stamp_ns=frame.stamp_ns, frame_id=frame.frame_id, right=area(frame.right),
                 baseline_m=frame.baseline_m,
                 confidence_finite=frame.confidence_finite)   # nearest: the same values

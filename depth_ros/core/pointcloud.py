"""Depth image -> organized point cloud (numpy structured array), the PointCloud2 data layout.

The cloud is in the optical frame of the depth image (REP 103: x right, y down, z forward):
``x = (u - cx) * z / fx``, ``y = (v - cy) * z / fy``. Points whose depth is NaN, +-inf, <= 0
or outside [min_depth, max_depth] are NaN (``is_dense`` false), so the cloud stays organized.

``CLOUD_FIELDS`` / ``cloud_fields()`` describe the layout once, for the ROS conversion and the
bag writer: x, y, z float32 at offsets 0, 4, 8 and rgb float32 at 12 holding the bytes of a
little-endian uint32 0x00RRGGBB (what RViz's RGB8 transformer and depth_image_proc read),
point_step 16. Without colours the cloud is x, y, z only, point_step 12.
"""
from __future__ import annotations

import threading
from typing import List, NamedTuple, Optional

import cv2
import numpy as np

from depth_ros.core.camera import PinholeCamera
from depth_ros.core.checks import check_image, describe

FLOAT32 = 7  # sensor_msgs/PointField.FLOAT32


class CloudField(NamedTuple):
    """One PointField: name, byte offset, datatype (PointField constant), count."""

    name: str
    offset: int
    datatype: int
    count: int


CLOUD_FIELDS = (CloudField('x', 0, FLOAT32, 1), CloudField('y', 4, FLOAT32, 1),
                CloudField('z', 8, FLOAT32, 1), CloudField('rgb', 12, FLOAT32, 1))
POINT_STEP = 16

# Explicit little-endian: the PointCloud2 messages we write say is_bigendian = false.
CLOUD_DTYPE = np.dtype({'names': ['x', 'y', 'z', 'rgb'], 'formats': ['<f4'] * 4,
                        'offsets': [0, 4, 8, 12], 'itemsize': POINT_STEP})
XYZ_DTYPE = np.dtype({'names': ['x', 'y', 'z'], 'formats': ['<f4'] * 3,
                      'offsets': [0, 4, 8], 'itemsize': 12})


def cloud_fields(rgb: bool = True) -> List[CloudField]:
    """PointField descriptions of the cloud ``depth_to_cloud`` returns (with or without rgb)."""
    return list(CLOUD_FIELDS if rgb else CLOUD_FIELDS[:3])


def point_step(rgb: bool = True) -> int:
    """Bytes per point: 16 with rgb, 12 without."""
    return POINT_STEP if rgb else XYZ_DTYPE.itemsize


def pack_rgb(bgr: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 BGR -> [H, W] float32 whose bytes are little-endian uint32 0x00RRGGBB.

    BGRA in memory is B, G, R, A; read as a little-endian uint32 that is 0xAARRGGBB, and alpha
    0 gives 0x00RRGGBB, so one cvtColor pass does the packing.
    """
    check_image('bgr', bgr, channels=3, dtypes=(np.uint8,))
    bgra = np.empty(bgr.shape[:2] + (4,), np.uint8)
    return _pack_into(np.ascontiguousarray(bgr), bgra)


def unpack_rgb(rgb: np.ndarray) -> np.ndarray:
    """Inverse of ``pack_rgb``: float32 packed colours [...] -> uint8 RGB [..., 3]."""
    rgb = np.ascontiguousarray(rgb, dtype='<f4')
    u8 = rgb.view(np.uint8).reshape(rgb.shape + (4,))
    return u8[..., 2::-1].copy()   # bytes are B, G, R, 0


class _Scratch(threading.local):
    """Per-thread buffers and ray maps, reused while camera, stride and size stay the same.

    Fresh multi-megabyte buffers cost page faults on every frame (several ms at 1280x720), so
    the intermediates are kept; the returned cloud is always a new array unless ``out`` is
    given. Thread-local, so two nodes in one process never share a buffer.
    """

    def __init__(self):
        self.key = None

    def get(self, camera, stride, h, w):
        key = (camera.fx, camera.fy, camera.cx, camera.cy, stride, h, w)
        if key != self.key:
            u = np.arange(w, dtype=np.float64) * stride
            v = np.arange(h, dtype=np.float64) * stride
            # Full maps (not broadcast rows) so each product is one dense SIMD pass in cv2.
            self.xr = np.ascontiguousarray(np.broadcast_to(
                ((u - camera.cx) / camera.fx).astype(np.float32)[None, :], (h, w)))
            self.yr = np.ascontiguousarray(np.broadcast_to(
                ((v - camera.cy) / camera.fy).astype(np.float32)[:, None], (h, w)))
            self.x = np.empty((h, w), np.float32)
            self.y = np.empty((h, w), np.float32)
            self.z = np.empty((h, w), np.float32)
            self.keep = np.empty((h, w), np.uint8)
            self.bgra = np.empty((h, w, 4), np.uint8)
            self.key = key
        return self


_SCRATCH = _Scratch()


def depth_to_cloud(depth: np.ndarray, camera: PinholeCamera, bgr: Optional[np.ndarray] = None,
                   stride: int = 1, min_depth: Optional[float] = None,
                   max_depth: Optional[float] = None,
                   out: Optional[np.ndarray] = None) -> np.ndarray:
    """Organized cloud [H//stride, W//stride] of dtype CLOUD_DTYPE (or XYZ_DTYPE without bgr).

    :param depth: [H, W] float32/float64 metres, in the frame of ``camera`` (same size).
    :param camera: PinholeCamera of the depth image (width, height must match ``depth``).
    :param bgr: optional [H, W, 3] uint8 colours registered to ``depth``.
    :param stride: keep every ``stride``-th pixel in both directions (pixel (i*s, j*s)).
    :param min_depth, max_depth: range limits in metres; points outside are NaN.
    :param out: optional preallocated C-contiguous result of the same shape and dtype, reused
        instead of allocating (the caller then owns when it is overwritten).
    :returns: C-contiguous structured array; ``.tobytes()`` is the PointCloud2 data.
    """
    check_image('depth', depth, dtypes=(np.float32, np.float64))
    if not isinstance(camera, PinholeCamera):
        raise ValueError('`camera` must be a PinholeCamera, got {}'.format(describe(camera)))
    if (camera.height, camera.width) != depth.shape:
        raise ValueError('`camera` is for {}x{} images but `depth` is {}x{} (W x H); scale the '
                         'camera with camera.scaled()'.format(camera.width, camera.height,
                                                              depth.shape[1], depth.shape[0]))
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError('`stride` must be an integer >= 1, got {!r}'.format(stride))
    for name, value in (('min_depth', min_depth), ('max_depth', max_depth)):
        if value is not None and (isinstance(value, bool) or not isinstance(
                value, (int, float, np.integer, np.floating)) or not value >= 0):
            raise ValueError('`{}` must be a number >= 0 or None, got {!r}'.format(name, value))
    if min_depth is not None and max_depth is not None and max_depth < min_depth:
        raise ValueError('`max_depth` ({!r}) must be >= `min_depth` ({!r})'.format(
            max_depth, min_depth))
    if bgr is not None:
        check_image('bgr', bgr, channels=3, dtypes=(np.uint8,))
        if bgr.shape[:2] != depth.shape:
            raise ValueError('`bgr` has size {} but `depth` has size {}; they must match'.format(
                bgr.shape[:2], depth.shape))
    stride = int(stride)
    h, w = depth.shape[0] // stride, depth.shape[1] // stride
    if h == 0 or w == 0:
        raise ValueError('`stride` {} is larger than the depth image {}'.format(
            stride, depth.shape))
    dtype = CLOUD_DTYPE if bgr is not None else XYZ_DTYPE
    if out is not None and (not isinstance(out, np.ndarray) or out.dtype != dtype
                            or out.shape != (h, w) or not out.flags.c_contiguous):
        raise ValueError('`out` must be a C-contiguous array of shape {} and the cloud dtype, '
                         'got {}'.format((h, w), describe(out)))

    z = depth[:h * stride:stride, :w * stride:stride]
    if stride > 1 or z.dtype != np.float32:
        z = np.ascontiguousarray(z, dtype=np.float32)
    buf = _SCRATCH.get(camera, stride, h, w)
    # One range pass: inRange is false for NaN and outside [lo, hi], so 0 ("no return"),
    # +-inf and out-of-range all become NaN and x, y follow through the products.
    lo = float(min_depth) if min_depth is not None else float(np.nextafter(np.float32(0),
                                                                           np.float32(1)))
    hi = float(max_depth) if max_depth is not None else float(np.finfo(np.float32).max)
    cv2.inRange(z, lo, hi, dst=buf.keep)
    buf.z.fill(np.nan)
    cv2.copyTo(z, buf.keep, buf.z)
    cv2.multiply(buf.z, buf.xr, dst=buf.x)
    cv2.multiply(buf.z, buf.yr, dst=buf.y)
    planes = [buf.x, buf.y, buf.z]
    if bgr is not None:
        colours = bgr[:h * stride:stride, :w * stride:stride]
        if not colours.flags.c_contiguous:
            colours = np.ascontiguousarray(colours)
        planes.append(_pack_into(colours, buf.bgra))
    if out is None:
        out = np.empty((h, w), dtype)
    # One interleaving pass straight into the result (a cv2-allocated result would be
    # page-faulted in on every call).
    cv2.merge(planes, out.view(np.float32).reshape(h, w, len(planes)))
    return out


def _pack_into(bgr, bgra):
    cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA, dst=bgra)
    u32 = bgra.view('<u4')
    np.bitwise_and(u32, np.uint32(0x00FFFFFF), out=u32)   # alpha byte (the top one) -> 0
    return bgra.view('<f4').reshape(bgr.shape[:2])


__all__ = ['CLOUD_DTYPE', 'CLOUD_FIELDS', 'CloudField', 'FLOAT32', 'POINT_STEP', 'XYZ_DTYPE',
           'cloud_fields', 'depth_to_cloud', 'pack_rgb', 'point_step', 'unpack_rgb']

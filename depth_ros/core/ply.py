"""
Binary little-endian PLY: x, y, z float32 and red, green, blue uchar; NaN points skipped.

Readable by MeshLab, CloudCompare and Open3D. ``read_ply`` reads back exactly what
``write_ply`` writes (for tests and tools), not arbitrary PLY files.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple, Union

from depth_ros.core.checks import describe
import numpy as np

_VERTEX = np.dtype([('x', '<f4'), ('y', '<f4'), ('z', '<f4'),
                    ('red', 'u1'), ('green', 'u1'), ('blue', 'u1')])
_VERTEX_XYZ = np.dtype([('x', '<f4'), ('y', '<f4'), ('z', '<f4')])


def _header(n: int, colours: bool) -> bytes:
    lines = ['ply', 'format binary_little_endian 1.0', 'comment written by depth_ros',
             'element vertex {}'.format(n),
             'property float x', 'property float y', 'property float z']
    if colours:
        lines += ['property uchar red', 'property uchar green', 'property uchar blue']
    lines.append('end_header')
    return ('\n'.join(lines) + '\n').encode('ascii')


def cloud_arrays(cloud: np.ndarray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Split a depth_to_cloud array into (xyz [N, 3] float32, rgb [N, 3] uint8 or None)."""
    from depth_ros.core.pointcloud import unpack_rgb   # keeps this module import-light
    if not isinstance(cloud, np.ndarray) or cloud.dtype.names is None \
            or not {'x', 'y', 'z'} <= set(cloud.dtype.names):
        raise ValueError('`cloud` must be a structured array with x, y, z fields, got '
                         '{}'.format(describe(cloud)))
    flat = cloud.reshape(-1)
    xyz = np.stack([flat['x'], flat['y'], flat['z']], axis=1).astype(np.float32)
    rgb = unpack_rgb(flat['rgb']) if 'rgb' in cloud.dtype.names else None
    return xyz, rgb


def write_ply(path: Union[str, os.PathLike], points: np.ndarray,
              colors: Optional[np.ndarray] = None) -> int:
    """
    Write points to a binary PLY; return the number of points written.

    :param points: [N, 3] (or [H, W, 3]) float xyz, or a depth_to_cloud structured array
        (its rgb field supplies the colours when ``colors`` is None).
    :param colors: optional [N, 3] (or [H, W, 3]) uint8 **RGB**, one per point.
    Points with any non-finite coordinate (NaN invalid, inf too far) are skipped.
    """
    if isinstance(points, np.ndarray) and points.dtype.names is not None:
        points, cloud_rgb = cloud_arrays(points)
        if colors is None:
            colors = cloud_rgb
    if not isinstance(points, np.ndarray) or points.dtype.kind != 'f' or points.ndim < 2 \
            or points.shape[-1] != 3:
        raise ValueError('`points` must be a float array [N, 3], got {}'.format(
            describe(points)))
    xyz = points.reshape(-1, 3)
    if colors is not None:
        if not isinstance(colors, np.ndarray) or colors.dtype != np.uint8 \
                or colors.shape[-1:] != (3,) or colors.size != xyz.size:
            raise ValueError('`colors` must be uint8 [N, 3] matching `points` ({} points), got '
                             '{}'.format(xyz.shape[0], describe(colors)))
        colors = colors.reshape(-1, 3)
    keep = np.isfinite(xyz).all(axis=1)
    n = int(keep.sum())
    vert = np.empty(n, _VERTEX if colors is not None else _VERTEX_XYZ)
    kept = xyz[keep]
    vert['x'], vert['y'], vert['z'] = kept[:, 0], kept[:, 1], kept[:, 2]
    if colors is not None:
        kc = colors[keep]
        vert['red'], vert['green'], vert['blue'] = kc[:, 0], kc[:, 1], kc[:, 2]
    with open(path, 'wb') as f:
        f.write(_header(n, colors is not None))
        f.write(vert.tobytes())
    return n


def read_ply(path: Union[str, os.PathLike]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Read a PLY written by ``write_ply``: (xyz [N, 3] float32, rgb [N, 3] uint8 or None)."""
    with open(path, 'rb') as f:
        data = f.read()
    end = data.find(b'end_header\n')
    if not data.startswith(b'ply\n') or end < 0:
        raise ValueError('`path` {!r} is not a PLY file written by depth_ros'.format(str(path)))
    header = data[:end].decode('ascii').splitlines()
    if 'format binary_little_endian 1.0' not in header:
        raise ValueError('`path` {!r}: only binary_little_endian PLY is supported'.format(
            str(path)))
    n = [int(h.split()[2]) for h in header if h.startswith('element vertex')][0]
    dtype = _VERTEX if 'property uchar red' in header else _VERTEX_XYZ
    body = data[end + len(b'end_header\n'):]
    if len(body) != n * dtype.itemsize:
        raise ValueError('`path` {!r}: expected {} bytes of vertex data, found {}'.format(
            str(path), n * dtype.itemsize, len(body)))
    vert = np.frombuffer(body, dtype)
    xyz = np.stack([vert['x'], vert['y'], vert['z']], axis=1)
    rgb = None
    if dtype is _VERTEX:
        rgb = np.stack([vert['red'], vert['green'], vert['blue']], axis=1)
    return xyz, rgb


__all__ = ['cloud_arrays', 'read_ply', 'write_ply']

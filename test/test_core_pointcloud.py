"""
depth_to_cloud against the pinhole formula by hand; rgb packing byte-exact; PLY round trip.

Runs on Python 3.8 with numpy, OpenCV and pytest only.
"""
import struct
import threading

from depth_ros.core.camera import PinholeCamera
from depth_ros.core.ply import read_ply, write_ply
from depth_ros.core.pointcloud import (cloud_colours, CLOUD_DTYPE, cloud_fields,
                                       depth_to_cloud, pack_rgb, point_step, unpack_rgb)
import numpy as np
import pytest

CAM = PinholeCamera(50.0, 60.0, 3.5, 2.25, 8, 6)


def plain_cloud(*args, **kwargs):
    """depth_to_cloud without the edge test: these random maps are all discontinuities."""
    kwargs.setdefault('edge_threshold', None)
    return depth_to_cloud(*args, **kwargs)


def depth_map():
    rng = np.random.RandomState(0)
    return rng.uniform(1.0, 9.0, (6, 8)).astype(np.float32)


def colours():
    return np.random.RandomState(1).randint(0, 256, (6, 8, 3)).astype(np.uint8)


def test_fields_match_pointcloud2_layout():
    names = [(f.name, f.offset, f.datatype, f.count) for f in cloud_fields()]
    assert names == [('x', 0, 7, 1), ('y', 4, 7, 1), ('z', 8, 7, 1), ('rgb', 12, 7, 1)]
    assert [f.name for f in cloud_fields(rgb=False)] == ['x', 'y', 'z']
    assert point_step() == 16 and point_step(rgb=False) == 12
    assert CLOUD_DTYPE.itemsize == 16


def test_xyz_matches_the_pinhole_formula_by_hand():
    d = depth_map()
    cloud = plain_cloud(d, CAM, bgr=colours())
    assert cloud.shape == (6, 8) and cloud.dtype == CLOUD_DTYPE
    for v, u in [(0, 0), (2, 3), (5, 7), (4, 1)]:
        z = float(d[v, u])
        expected = ((u - 3.5) * z / 50.0, (v - 2.25) * z / 60.0, z)
        got = (cloud['x'][v, u], cloud['y'][v, u], cloud['z'][v, u])
        np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg='pixel ({}, {})'.format(
            u, v))


def test_rgb_packing_is_byte_exact():
    bgr = np.zeros((6, 8, 3), np.uint8)
    bgr[0, 0] = (0x11, 0x22, 0x33)      # B, G, R
    bgr[5, 7] = (255, 0, 128)
    cloud = plain_cloud(depth_map(), CAM, bgr=bgr)
    raw = cloud.tobytes()
    first = struct.unpack_from('<I', raw, 12)[0]
    assert first == 0x00332211, 'expected 0x00332211, received {:#010x}'.format(first)
    last = struct.unpack_from('<I', raw, (6 * 8 - 1) * 16 + 12)[0]
    assert last == 0x008000FF, 'expected 0x008000ff, received {:#010x}'.format(last)
    # Every pixel: the uint32 equals (R << 16) | (G << 8) | B, computed independently.
    bgr = colours()
    packed = plain_cloud(depth_map(), CAM, bgr=bgr)['rgb'].copy().view('<u4')
    expected = (bgr[:, :, 2].astype(np.uint32) << 16) | (bgr[:, :, 1].astype(np.uint32) << 8) \
        | bgr[:, :, 0].astype(np.uint32)
    np.testing.assert_array_equal(packed, expected)
    np.testing.assert_array_equal(unpack_rgb(pack_rgb(bgr)), bgr[:, :, ::-1])


def test_invalid_and_out_of_range_points_are_nan():
    d = depth_map()
    d[0, 0] = np.nan
    d[0, 1] = np.inf
    d[0, 2] = -np.inf
    d[0, 3] = 0.0
    d[0, 4] = -1.0
    d[1, 0] = 0.4       # below min_depth
    d[1, 1] = 9.9       # above max_depth
    cloud = plain_cloud(d, CAM, bgr=colours(), min_depth=0.45, max_depth=9.5)
    bad = [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 0), (1, 1)]
    for v, u in bad:
        for f in 'xyz':
            value = cloud[f][v, u]
            assert np.isnan(value), '{} at ({}, {}) is {}'.format(f, u, v, value)
    mask = np.ones((6, 8), bool)
    for v, u in bad:
        mask[v, u] = False
    assert np.isfinite(cloud['z'][mask]).all()
    np.testing.assert_array_equal(cloud['z'][mask], d[mask])
    # The limits are inclusive.
    d2 = depth_map()
    d2[0, 0], d2[0, 1] = 0.45, 9.5
    edge = plain_cloud(d2, CAM, min_depth=0.45, max_depth=9.5)
    assert edge['z'][0, 0] == np.float32(0.45) and edge['z'][0, 1] == np.float32(9.5)
    # Without limits only non-finite and non-positive depths are invalid.
    free = plain_cloud(d, CAM)
    assert free['z'][1, 0] == np.float32(0.4) and free['z'][1, 1] == np.float32(9.9)


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('edge', [None, 0.1])
@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_without_max_depth_inf_and_invalid_points_are_nan(stride, edge, dtype):
    # Without max_depth, +inf is not thresholded away but still a NaN point (as 0, NaN, -inf,
    # negatives), also at a stride (the strips read the strided view) and with the edge test
    # (flat depth: no jumps, so every valid point stays).
    h, w = 30, 40
    cam = PinholeCamera(50.0, 50.0, 19.5, 14.5, w, h)
    d = np.full((h, w), 4.0, dtype)
    specials = {(0, 0): np.inf, (2, 4): np.nan, (4, 6): -np.inf, (6, 8): 0.0, (8, 10): -2.0,
                (10, 12): np.inf}
    for (v, u), value in specials.items():
        d[v, u] = value
    d[20:, :] = np.inf                                  # a band of +inf (the sky)
    cloud = depth_to_cloud(d, cam, stride=stride, edge_threshold=edge)
    sub = d[::stride, ::stride]
    bad = ~(np.isfinite(sub) & (np.nan_to_num(sub) > 0))
    assert bad.sum() == len(specials) + (h - 20) // stride * (w // stride), 'all on the grid'
    for f in 'xyz':
        assert np.isnan(cloud[f][bad]).all(), f
        assert np.isfinite(cloud[f][~bad]).all(), f
    np.testing.assert_array_equal(cloud['z'][~bad], np.float32(4.0))


def test_c_contiguous_and_bytes_length():
    for bgr, step in ((colours(), 16), (None, 12)):
        cloud = plain_cloud(depth_map(), CAM, bgr=bgr)
        assert cloud.flags.c_contiguous
        assert len(cloud.tobytes()) == 6 * 8 * step
        assert cloud.dtype.itemsize == step


@pytest.mark.parametrize('stride', [1, 2, 3, 5])
def test_stride_shape_and_pixels(stride):
    d = depth_map()
    cloud = plain_cloud(d, CAM, bgr=colours(), stride=stride)
    assert cloud.shape == (6 // stride, 8 // stride)
    v, u = cloud.shape[0] - 1, cloud.shape[1] - 1   # maps to pixel (v*stride, u*stride)
    z = d[v * stride, u * stride]
    np.testing.assert_allclose(
        (cloud['x'][v, u], cloud['y'][v, u], cloud['z'][v, u]),
        ((u * stride - 3.5) * z / 50.0, (v * stride - 2.25) * z / 60.0, z), rtol=1e-6)


def test_out_buffer_is_reused_and_other_results_kept():
    d = depth_map()
    first = plain_cloud(d, CAM, bgr=colours())
    snapshot = first.tobytes()
    buf = np.empty_like(first)
    got = plain_cloud(d * 2, CAM, bgr=colours(), out=buf)
    assert got is buf
    assert first.tobytes() == snapshot, 'an earlier result must not be overwritten'
    np.testing.assert_allclose(buf['z'], d * 2)


def test_threads_do_not_share_scratch():
    results = {}

    def work(k):
        cam = PinholeCamera(40.0 + k, 40.0, 3.0, 2.0, 8, 6)
        for _ in range(50):
            c = plain_cloud(depth_map() * (k + 1), cam, bgr=colours())
        results[k] = c

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, c in results.items():
        np.testing.assert_allclose(c['z'], depth_map() * (k + 1), rtol=1e-6)
        np.testing.assert_allclose(c['x'][0, 0], -3.0 * depth_map()[0, 0] * (k + 1) / (40 + k),
                                   rtol=1e-5)


@pytest.mark.parametrize('kwargs, message', [
    (dict(depth=np.ones((6, 8), np.int32)), '`depth` must have dtype float32 or float64'),
    (dict(depth=np.ones((0, 8), np.float32)), '`depth` is empty'),
    (dict(depth=np.ones((5, 8), np.float32)), '`camera` is for 8x6 images but `depth` is 8x5'),
    (dict(camera=(50, 50, 4, 3)), '`camera` must be a PinholeCamera, got tuple'),
    (dict(stride=0), '`stride` must be an integer >= 1, got 0'),
    (dict(stride=7), '`stride` 7 is larger than the depth image (6, 8)'),
    (dict(min_depth=-1.0), '`min_depth` must be a number >= 0 or None, got -1.0'),
    (dict(min_depth=5.0, max_depth=1.0), '`max_depth` (1.0) must be >= `min_depth` (5.0)'),
    (dict(bgr=np.ones((6, 8, 3), np.float32)), '`bgr` must have dtype uint8'),
    (dict(bgr=np.ones((6, 7, 3), np.uint8)), '`bgr` has size (6, 7) but `depth` has size'),
    (dict(out=np.empty((6, 8), np.float32)), '`out` must be a C-contiguous array of shape'),
])
def test_bad_input_raises_naming_argument(kwargs, message):
    args = dict(depth=depth_map(), camera=CAM)
    args.update(kwargs)
    with pytest.raises(ValueError) as info:
        plain_cloud(**args)
    assert message in str(info.value), 'expected {!r} in {!r}'.format(message, str(info.value))


def test_ply_round_trip_skips_nan_points(tmp_path):
    d = depth_map()
    d[2, 3] = np.nan
    d[4, 4] = np.inf
    bgr = colours()
    cloud = plain_cloud(d, CAM, bgr=bgr)
    path = tmp_path / 'points.ply'
    n = write_ply(str(path), cloud)
    assert n == 6 * 8 - 2
    data = path.read_bytes()
    header = data[:data.index(b'end_header\n') + 11]
    assert header.startswith(b'ply\nformat binary_little_endian 1.0\n')
    assert b'property uchar red' in header
    xyz, rgb = read_ply(str(path))
    keep = np.isfinite(d).ravel()
    flat = cloud.reshape(-1)[keep]
    np.testing.assert_array_equal(xyz, np.stack([flat['x'], flat['y'], flat['z']], 1))
    np.testing.assert_array_equal(rgb, bgr.reshape(-1, 3)[keep][:, ::-1])
    assert len(data) == len(header) + n * 15, 'x, y, z float32 + 3 uchar per point'


def test_ply_plain_points_without_colours(tmp_path):
    pts = np.array([[0, 0, 1], [np.nan, 0, 1], [1, 2, 3]], np.float64)
    path = str(tmp_path / 'p.ply')
    assert write_ply(path, pts) == 2
    xyz, rgb = read_ply(path)
    assert rgb is None
    np.testing.assert_array_equal(xyz, np.array([[0, 0, 1], [1, 2, 3]], np.float32))
    with pytest.raises(ValueError, match='`colors` must be uint8'):
        write_ply(path, pts, np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError, match=r'`points` must be a float array \[N, 3\]'):
        write_ply(path, np.zeros((3, 2), np.float32))


@pytest.mark.parametrize('stride', [2, 3])
def test_strided_cloud_takes_every_pixel_i_s_j_s_and_keeps_earlier_results(stride):
    rng = np.random.RandomState(stride)
    h, w = 40, 64
    cam = PinholeCamera(50.0, 50.0, 31.5, 19.5, w, h)
    depth = rng.uniform(1.0, 9.0, (h, w)).astype(np.float32)
    bgr = rng.randint(0, 256, (h, w, 3)).astype(np.uint8)
    cloud = plain_cloud(depth, cam, bgr=bgr, stride=stride)
    snapshot = cloud.tobytes()
    hs, ws = h // stride, w // stride
    np.testing.assert_array_equal(cloud['z'], depth[:hs * stride:stride, :ws * stride:stride])
    np.testing.assert_array_equal(unpack_rgb(cloud['rgb']),
                                  bgr[:hs * stride:stride, :ws * stride:stride, ::-1])
    plain_cloud(depth[::-1].copy(), cam, bgr=bgr[::-1].copy(), stride=stride)
    assert cloud.tobytes() == snapshot, 'kept buffers must not alias an earlier result'


@pytest.mark.parametrize('stride', [1, 2, 3])
def test_colours_packed_ahead_give_the_same_cloud(stride):
    rng = np.random.RandomState(10 + stride)
    h, w = 41, 63                   # not multiples of the stride
    cam = PinholeCamera(50.0, 50.0, 31.0, 20.0, w, h)
    depth = rng.uniform(1.0, 9.0, (h, w)).astype(np.float32)
    depth[5:9, 3:30] = np.nan
    bgr = rng.randint(0, 256, (h, w, 3)).astype(np.uint8)
    packed = cloud_colours(bgr, stride)
    hs, ws = h // stride, w // stride
    # pack_rgb of the strided view, byte for byte: B, G, R, 0.
    want = bgr[:hs * stride:stride, :ws * stride:stride]
    assert packed.dtype == np.float32 and packed.shape == (hs, ws)
    np.testing.assert_array_equal(packed.view(np.uint8).reshape(hs, ws, 4)[..., :3], want)
    assert not packed.view(np.uint8).reshape(hs, ws, 4)[..., 3].any()
    for edge in (None, 0.1):
        assert depth_to_cloud(depth, cam, colours=packed, stride=stride,
                              edge_threshold=edge).tobytes() == \
            depth_to_cloud(depth, cam, bgr=bgr, stride=stride, edge_threshold=edge).tobytes()


def test_packed_colours_are_checked():
    bgr = colours()
    with pytest.raises(ValueError, match='give `bgr` or `colours`, not both'):
        depth_to_cloud(depth_map(), CAM, bgr=bgr, colours=cloud_colours(bgr))
    with pytest.raises(ValueError, match=r'`colours` must be the float32 array of shape '
                                         r'\(3, 4\) that cloud_colours\(bgr, 2\) returns'):
        depth_to_cloud(depth_map(), CAM, colours=cloud_colours(bgr), stride=2)
    with pytest.raises(ValueError, match='`stride` must be an integer >= 1'):
        cloud_colours(bgr, 0)
    with pytest.raises(ValueError, match='`bgr` must'):
        cloud_colours(bgr[..., 0])


def colorize_reference(values, vmin, vmax, reverse, invalid=(0, 0, 0)):
    """Colorize by hand: clip to [vmin, vmax], scale, applyColorMap, repaint NaN."""
    import cv2
    v = values.astype(np.float32)
    clipped = np.clip(np.nan_to_num(v, nan=vmin, posinf=vmax, neginf=vmin), vmin, vmax)
    span = vmax - vmin if vmax > vmin else 1.0
    a = 255.0 / span
    gray = cv2.convertScaleAbs(clipped, None, -a if reverse else a,
                               vmax * a if reverse else -vmin * a)
    out = cv2.applyColorMap(gray, cv2.COLORMAP_TURBO)
    out[np.isnan(v)] = invalid
    return out


@pytest.mark.parametrize('special', ['none', 'nan', 'inf', '-inf', 'huge'])
@pytest.mark.parametrize('reverse', [True, False])
def test_colorize_matches_the_clipped_reference(special, reverse):
    # The same pixels as applyColorMap of the clipped values, including values far outside
    # the range, -inf and NaN.
    from depth_ros.core.visualize import colorize
    v = np.random.RandomState(2).uniform(-5.0, 40.0, (48, 64)).astype(np.float32)
    v[0, :4] = (0.3, 20.0, 0.0, -1.0)
    if special == 'nan':
        v[5:9, 3:30] = np.nan
    elif special == 'inf':
        v[10:12] = np.inf
    elif special == '-inf':
        v[20, :7] = -np.inf
    elif special == 'huge':
        v[30, 3], v[31, 4] = 1e30, -1e12
    for vmin, vmax in ((0.3, 20.0), (5.0, 5.0)):
        np.testing.assert_array_equal(colorize(v, vmin, vmax, reverse=reverse),
                                      colorize_reference(v, vmin, vmax, reverse))

"""
PinholeCamera: K round trip, scaled() against cv2.resize's pixel-centre rule, ValueErrors.

Runs on Python 3.8 with numpy and pytest only.
"""
from depth_ros.core.camera import PinholeCamera
import numpy as np
import pytest


def cam():
    return PinholeCamera(700.5, 701.25, 640.3, 359.7, 1280, 720)


def test_k_matrix_and_round_trip():
    c = cam()
    k = c.K
    np.testing.assert_array_equal(k, [[700.5, 0, 640.3], [0, 701.25, 359.7], [0, 0, 1]])
    assert k.dtype == np.float64
    assert PinholeCamera.from_K(k, 1280, 720) == c
    # CameraInfo.k is 9 row-major values.
    assert PinholeCamera.from_K(list(k.ravel()), 1280, 720) == c


def test_scaled_follows_pixel_centre_convention():
    c = cam()
    half = c.scaled(640, 360)
    assert (half.fx, half.fy) == (700.5 / 2, 701.25 / 2)
    # A pixel centre u maps to (u + 0.5) * s - 0.5.
    assert half.cx == (640.3 + 0.5) * 0.5 - 0.5 and half.cy == (359.7 + 0.5) * 0.5 - 0.5
    assert (half.width, half.height) == (640, 360)
    # A 3D point projects to corresponding pixels before and after scaling.
    x, z = 0.7, 2.0
    u = c.fx * x / z + c.cx
    u_half = half.fx * x / z + half.cx
    assert abs(u_half - ((u + 0.5) * 0.5 - 0.5)) < 1e-9
    assert c.scaled(1280, 720) == c
    back = half.scaled(1280, 720)
    for name in ('fx', 'fy', 'cx', 'cy'):
        assert abs(getattr(back, name) - getattr(c, name)) < 1e-9, name


def test_equality_and_repr():
    assert cam() == cam()
    assert cam() != PinholeCamera(700.5, 701.25, 640.3, 359.7, 1280, 721)
    assert repr(cam()).startswith('PinholeCamera(fx=700.5, fy=701.25')


@pytest.mark.parametrize('args, message', [
    ((0.0, 700, 640, 360, 1280, 720), '`fx` must be a finite number > 0, got 0.0'),
    ((700, -1.0, 640, 360, 1280, 720), '`fy` must be a finite number > 0, got -1.0'),
    ((float('inf'), 700, 640, 360, 1280, 720), '`fx` must be a finite number > 0, got inf'),
    ((700, 700, float('nan'), 360, 1280, 720), '`cx` must be a finite number, got nan'),
    ((700, 700, 640, 'a', 1280, 720), "`cy` must be a finite number, got 'a'"),
    ((700, 700, 640, 360, 0, 720), '`width` must be an integer > 0, got 0'),
    ((700, 700, 640, 360, 1280, 720.0), '`height` must be an integer > 0, got 720.0'),
    ((700, 700, 640, 360, True, 720), '`width` must be an integer > 0, got True'),
])
def test_bad_intrinsics(args, message):
    with pytest.raises(ValueError) as info:
        PinholeCamera(*args)
    assert str(info.value) == message, 'expected {!r}, received {!r}'.format(
        message, str(info.value))


def test_bad_k_and_scaled_sizes():
    with pytest.raises(ValueError, match=r'`K` must be 3x3 \(or 9 values\), got shape \(8,\)'):
        PinholeCamera.from_K(np.ones(8), 10, 10)
    skew = np.array([[100, 1, 5], [0, 100, 5], [0, 0, 1]], float)
    with pytest.raises(ValueError, match='no skew'):
        PinholeCamera.from_K(skew, 10, 10)
    with pytest.raises(ValueError, match='`width` must be an integer > 0, got -2'):
        cam().scaled(-2, 10)


@pytest.mark.parametrize('kwargs, message', [
    (dict(fx=True), '`fx` must be a finite number > 0, got True'),
    (dict(fy=np.array([1.0, 2.0])), '`fy` must be a finite number > 0, got array([1., 2.])'),
    (dict(cx=np.array([1.0, 2.0])), '`cx` must be a finite number, got array([1., 2.])'),
    (dict(cy=False), '`cy` must be a finite number, got False'),
])
def test_bools_and_arrays_are_not_intrinsics(kwargs, message):
    args = dict(fx=500.0, fy=500.0, cx=320.0, cy=240.0, width=640, height=480)
    args.update(kwargs)
    with pytest.raises(ValueError) as err:
        PinholeCamera(**args)
    got = str(err.value)
    assert got == message, 'expected {!r}, received {!r}'.format(message, got)

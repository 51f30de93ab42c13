"""core.messages: duck-typed message fields -> arrays and cameras, the one decoder of a set."""
from types import SimpleNamespace

from depth_ros.core.camera import PinholeCamera
from depth_ros.core.encodings import array_to_image_fields
from depth_ros.core.messages import baseline_from_info, camera_from_info, camera_info_fields, \
    decode_set, depth_to_metres, stamp_to_ns
import numpy as np
import pytest


def _header(stamp_ns=5, frame='cam'):
    return SimpleNamespace(stamp=SimpleNamespace(sec=stamp_ns // 10 ** 9,
                                                 nanosec=stamp_ns % 10 ** 9), frame_id=frame)


def _image(array, encoding, **header):
    return SimpleNamespace(header=_header(**header), **array_to_image_fields(array, encoding))


def _info(camera, **header):
    return SimpleNamespace(header=_header(**header), **camera_info_fields(camera))


CAMERA = PinholeCamera(40.0, 40.0, 23.5, 17.5, 48, 36)


def test_stamp_to_ns():
    assert stamp_to_ns(SimpleNamespace(sec=1700000000, nanosec=123456789)) == \
        1700000000123456789


def test_millimetres_to_metres_is_the_correctly_rounded_float32_for_every_uint16():
    mm = np.arange(65536, dtype=np.uint16)
    out = depth_to_metres(mm, '16UC1')
    # Independent reference: the exact decimal value, rounded once to float32.
    reference = (mm.astype(np.float64) / 1000.0).astype(np.float32)
    assert np.isnan(out[0]) and np.array_equal(out[1:], reference[1:]), \
        'values that differ: {}'.format(np.count_nonzero(out[1:] != reference[1:]))
    metres = np.array([[1.5, np.nan]], np.float32)
    assert depth_to_metres(metres, '32FC1') is metres or \
        np.shares_memory(depth_to_metres(metres, '32FC1'), metres)
    with pytest.raises(ValueError, match="stereo depth has encoding 'bgr8'"):
        depth_to_metres(mm, 'bgr8')


def test_camera_info_round_trip_projection_preferred_and_scaled():
    info = _info(CAMERA)
    assert camera_from_info(info) == CAMERA
    info.k = [400.0, 0.0, 300.0, 0.0, 400.0, 200.0, 0.0, 0.0, 1.0]
    assert camera_from_info(info) == CAMERA, 'P (rectified) must win over K'
    assert camera_from_info(info, use_projection=False).fx == 400.0
    assert camera_from_info(info, 24, 18) == CAMERA.scaled(24, 18)


def test_camera_info_of_another_aspect_ratio_is_refused():
    with pytest.raises(ValueError, match='camera_info is 48x36 but the image is 48x18: their '
                                         'aspect ratios differ'):
        camera_from_info(_info(CAMERA), 48, 18)
    with pytest.raises(ValueError, match=r'camera_info has an invalid size 0x0'):
        camera_from_info(SimpleNamespace(width=0, height=0, k=[0] * 9, p=[0] * 12))
    with pytest.raises(ValueError, match=r'camera_info.k has no valid intrinsics: fx=0.0'):
        camera_from_info(SimpleNamespace(width=4, height=3, k=[0.0] * 9, p=[0.0] * 12))


def test_baseline_from_the_right_camera_info():
    right = SimpleNamespace(p=[700.0, 0, 640, -700.0 * 0.12, 0, 700.0, 360, 0, 0, 0, 1, 0])
    assert baseline_from_info(right) == pytest.approx(0.12)
    assert baseline_from_info(_info(CAMERA)) is None


def _set(**override):
    depth = np.full((36, 48), 2.0, np.float32)
    msgs = {'disparity': _image(np.full((36, 48), 0.5, np.float32), '32FC1'),
            'depth': _image(depth, '32FC1'),
            'confidence': _image(np.full((36, 48), 10.0, np.float32), '32FC1'),
            'image': _image(np.zeros((36, 48, 3), np.uint8), 'bgr8'),
            'camera_info': _info(CAMERA)}
    msgs.update(override)
    return msgs


def test_decode_set_returns_checked_arrays():
    out = decode_set(_set())
    assert out.relative.shape == (36, 48) and out.depth.dtype == np.float32
    assert out.bgr.shape == (36, 48, 3) and out.camera == CAMERA
    assert (out.frame_id, out.stamp_ns, out.resized) == ('cam', 5, False)


@pytest.mark.parametrize('override, text', [
    ({'disparity': _image(np.zeros((36, 48, 3), np.uint8), 'bgr8')},
     "disparity has encoding 'bgr8'; expected 32FC1"),
    ({'disparity': _image(np.full((36, 48), np.nan, np.float32), '32FC1')},
     'disparity has 1728 NaN/inf values of 1728'),
    ({'disparity': _image(np.zeros((36, 10), np.float32), '32FC1')},
     'disparity is 10x36 but depth is 48x36: their aspect ratios must match'),
    ({'confidence': _image(np.zeros((18, 24), np.float32), '32FC1')},
     'confidence is 24x18 but depth is 48x36'),
    ({'confidence': _image(np.full((36, 48), np.inf, np.float32), '32FC1')},
     'confidence has NaN/inf values'),
    ({'image': _image(np.zeros((18, 24, 3), np.uint8), 'bgr8')},
     'depth is 48x36 but image is 24x18; they must match'),
    ({'depth': _image(np.zeros((36, 48, 3), np.uint8), 'bgr8')},
     "stereo depth has encoding 'bgr8'"),
    ({'camera_info': _info(PinholeCamera(40.0, 40.0, 23.5, 8.5, 48, 18))},
     'their aspect ratios differ'),
    ({'image': _image(np.zeros((36, 48, 3), np.uint8), 'bgr8', frame='')},
     "image has an empty header.frame_id"),
    ({'image': _image(np.zeros((36, 48, 3), np.uint8), 'bgr8', frame='other')},
     'the set mixes frames: camera_info=cam, confidence=cam, depth=cam, disparity=cam, '
     'image=other'),
    ({'depth': SimpleNamespace(header=_header(), height=0, width=0, encoding='32FC1', step=0,
                               is_bigendian=0, data=b'')},
     'image is empty: height=0 width=0'),
])
def test_decode_set_names_what_is_wrong(override, text):
    with pytest.raises(ValueError) as info:
        decode_set(_set(**override))
    if text is not None:
        assert text in str(info.value), 'expected {!r} in {!r}'.format(text, str(info.value))


def test_resize_policy_resizes_the_image_to_the_depth_size():
    out = decode_set(_set(image=_image(np.full((18, 24, 3), 7, np.uint8), 'bgr8')), 'resize')
    assert out.resized and out.bgr.shape == (36, 48, 3) and int(out.bgr[0, 0, 0]) == 7
    with pytest.raises(ValueError, match="`size_policy` must be one of drop, resize, got 'x'"):
        decode_set(_set(), 'x')


def test_one_pixel_sets_decode():
    one = PinholeCamera(1.0, 1.0, 0.0, 0.0, 1, 1)
    out = decode_set({'depth': _image(np.ones((1, 1), np.float32), '32FC1'),
                      'disparity': _image(np.ones((1, 1), np.float32), '32FC1'),
                      'camera_info': _info(one)})
    assert out.depth.shape == (1, 1) and out.camera == one

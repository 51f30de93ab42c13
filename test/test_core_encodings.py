"""sensor_msgs/Image byte layouts against hand-written bytes (no ROS; runs on Python 3.8)."""
from __future__ import annotations

import array
import struct
from types import SimpleNamespace

from depth_ros.core.encodings import array_to_image_fields, canonical_encoding, image_to_array, \
    SUPPORTED, to_bgr8
import numpy as np
import pytest


def msg(height, width, encoding, step, data, is_bigendian=0):
    return SimpleNamespace(height=height, width=width, encoding=encoding, step=step,
                           data=data, is_bigendian=is_bigendian)


def check_equal(received, expected):
    assert received.dtype == expected.dtype, \
        'expected dtype {}, received {}'.format(expected.dtype, received.dtype)
    assert received.shape == expected.shape, \
        'expected shape {}, received {}'.format(expected.shape, received.shape)
    # assert_array_equal treats NaN == NaN and reports both arrays on failure.
    np.testing.assert_array_equal(received, expected)


def test_bgr8_two_by_two_from_literal_bytes():
    # Row 0: pixel (1,2,3), pixel (4,5,6); row 1: (7,8,9), (10,11,12). B, G, R order per pixel.
    data = bytes(range(1, 13))
    out = image_to_array(msg(2, 2, 'bgr8', 6, data))
    check_equal(out, np.array([[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [10, 11, 12]]], np.uint8))


def test_rgb8_keeps_channel_order_and_to_bgr8_swaps():
    data = bytes([10, 20, 30])
    out = image_to_array(msg(1, 1, 'rgb8', 3, data))
    check_equal(out, np.array([[[10, 20, 30]]], np.uint8))
    check_equal(to_bgr8(out, 'rgb8'), np.array([[[30, 20, 10]]], np.uint8))


def test_step_padding_is_skipped():
    # mono8 3 wide, step 5: two padding bytes (0xEE) per row must not appear in the output.
    data = bytes([1, 2, 3, 0xEE, 0xEE, 4, 5, 6, 0xEE, 0xEE])
    out = image_to_array(msg(2, 3, 'mono8', 5, data))
    check_equal(out, np.array([[1, 2, 3], [4, 5, 6]], np.uint8))


def test_32fc1_little_endian_with_padding_and_nan():
    row0 = struct.pack('<2f', 1.5, float('nan')) + b'\x00\x00\x00'   # 3 pad bytes: unaligned
    row1 = struct.pack('<2f', -float('inf'), 2.25) + b'\x00\x00\x00'
    out = image_to_array(msg(2, 2, '32FC1', 11, row0 + row1))
    check_equal(out, np.array([[1.5, np.nan], [-np.inf, 2.25]], np.float32))


def test_32fc1_big_endian():
    data = struct.pack('>3f', 1.0, -2.0, 1e-3)
    out = image_to_array(msg(1, 3, '32FC1', 12, data, is_bigendian=1))
    check_equal(out, np.array([[1.0, -2.0, 1e-3]], np.float32))
    assert out.dtype.isnative, 'expected native byte order, received {}'.format(out.dtype)


@pytest.mark.parametrize('encoding', ['mono16', '16UC1'])
def test_16bit_both_byte_orders(encoding):
    little = image_to_array(msg(1, 2, encoding, 4, struct.pack('<2H', 1, 65534)))
    big = image_to_array(msg(1, 2, encoding, 4, struct.pack('>2H', 1, 65534), is_bigendian=1))
    check_equal(little, np.array([[1, 65534]], np.uint16))
    check_equal(big, np.array([[1, 65534]], np.uint16))


def test_bgra8_and_aliases():
    data = bytes([1, 2, 3, 4])
    check_equal(image_to_array(msg(1, 1, 'bgra8', 4, data)),
                np.array([[[1, 2, 3, 4]]], np.uint8))
    check_equal(image_to_array(msg(1, 1, '8UC4', 4, data)),
                np.array([[[1, 2, 3, 4]]], np.uint8))
    check_equal(image_to_array(msg(1, 1, '8UC3', 3, data[:3])),
                np.array([[[1, 2, 3]]], np.uint8))
    assert canonical_encoding('8UC3') == 'bgr8'
    assert canonical_encoding('8UC4') == 'bgra8'


@pytest.mark.parametrize('container', [bytes, bytearray, list,
                                       lambda b: array.array('B', b),
                                       lambda b: np.frombuffer(b, np.uint8)])
def test_data_containers_of_rclpy_and_rosbags(container):
    # rclpy stores uint8[] as array.array('B'); rosbags as a numpy uint8 array.
    raw = struct.pack('<2f', 3.0, 4.0)
    out = image_to_array(msg(1, 2, '32FC1', 8, container(raw)))
    check_equal(out, np.array([[3.0, 4.0]], np.float32))


def test_unsupported_encoding_is_named():
    with pytest.raises(ValueError, match=r"unsupported image encoding 'yuv422'"):
        image_to_array(msg(1, 1, 'yuv422', 2, b'\x00\x00'))


def test_data_size_mismatch_is_named():
    with pytest.raises(ValueError, match=r'image `data` has 5 bytes but step\*height = 3\*2 = 6'):
        image_to_array(msg(2, 3, 'mono8', 3, bytes(5)))


def test_step_too_small_is_named():
    with pytest.raises(ValueError, match=r'image `step` 5 is smaller than .* = 6'):
        image_to_array(msg(1, 2, 'bgr8', 5, bytes(5)))


def test_empty_image_rejected():
    with pytest.raises(ValueError, match='image is empty: height=0 width=4'):
        image_to_array(msg(0, 4, 'mono8', 4, b''))


def test_array_to_fields_byte_layout_little_and_big():
    fields = array_to_image_fields(np.array([[1.0, -2.0]], np.float32), '32FC1')
    assert (fields['height'], fields['width'], fields['step'], fields['is_bigendian']) == \
        (1, 2, 8, 0), 'received {}'.format(fields)
    assert fields['data'].tobytes() == struct.pack('<2f', 1.0, -2.0)
    big = array_to_image_fields(np.array([[1.0, -2.0]], np.float32), '32FC1', bigendian=True)
    assert big['is_bigendian'] == 1
    assert big['data'].tobytes() == struct.pack('>2f', 1.0, -2.0)
    bgr = array_to_image_fields(np.array([[[1, 2, 3], [4, 5, 6]]], np.uint8), 'bgr8')
    assert bgr['step'] == 6 and bgr['data'].tobytes() == bytes([1, 2, 3, 4, 5, 6])
    assert bgr['data'].dtype == np.uint8 and bgr['data'].ndim == 1


@pytest.mark.parametrize('encoding,dtype,shape', [
    ('bgr8', np.uint8, (3, 5, 3)), ('rgb8', np.uint8, (3, 5, 3)),
    ('bgra8', np.uint8, (3, 5, 4)), ('rgba8', np.uint8, (3, 5, 4)),
    ('mono8', np.uint8, (3, 5)), ('mono16', np.uint16, (3, 5)),
    ('16UC1', np.uint16, (3, 5)), ('32FC1', np.float32, (3, 5))])
@pytest.mark.parametrize('bigendian', [False, True])
def test_round_trip_every_encoding(encoding, dtype, shape, bigendian):
    rng = np.random.RandomState(0)
    if dtype == np.float32:
        values = rng.randn(*shape).astype(np.float32)
        values[0, 0] = np.nan
        values[1, 1] = np.inf
    else:
        values = rng.randint(0, np.iinfo(dtype).max, size=shape).astype(dtype)
    fields = array_to_image_fields(values, encoding, bigendian=bigendian)
    out = image_to_array(SimpleNamespace(**fields))
    check_equal(out, values)


def test_non_contiguous_and_non_native_input_arrays():
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    view = base[::2, ::3]                     # non-contiguous
    out = image_to_array(SimpleNamespace(**array_to_image_fields(view, '32FC1')))
    check_equal(out, view.copy())
    swapped = base.astype('>f4')
    out = image_to_array(SimpleNamespace(**array_to_image_fields(swapped, '32FC1')))
    check_equal(out, base)


def test_copy_false_shares_and_copy_true_does_not():
    data = bytearray(4)
    shared = image_to_array(msg(1, 4, 'mono8', 4, data))
    owned = image_to_array(msg(1, 4, 'mono8', 4, data), copy=True)
    data[0] = 9
    assert shared[0, 0] == 9 and owned[0, 0] == 0, \
        'expected shared 9 / owned 0, received {} / {}'.format(shared[0, 0], owned[0, 0])


def test_array_does_not_fit_encoding():
    with pytest.raises(ValueError, match=r"`array` has dtype float64 but encoding '32FC1' needs "
                                         r'float32'):
        array_to_image_fields(np.zeros((2, 2)), '32FC1')
    with pytest.raises(ValueError, match=r"`array` of shape \(2, 2\) does not fit encoding "
                                         r"'bgr8' \(3 channels\)"):
        array_to_image_fields(np.zeros((2, 2), np.uint8), 'bgr8')
    with pytest.raises(ValueError, match="unsupported image encoding 'bayer_rggb8'"):
        array_to_image_fields(np.zeros((2, 2), np.uint8), 'bayer_rggb8')


def test_to_bgr8_conversions():
    check_equal(to_bgr8(np.array([[[1, 2, 3, 4]]], np.uint8), 'rgba8'),
                np.array([[[3, 2, 1]]], np.uint8))
    check_equal(to_bgr8(np.array([[[1, 2, 3, 4]]], np.uint8), 'bgra8'),
                np.array([[[1, 2, 3]]], np.uint8))
    check_equal(to_bgr8(np.array([[7]], np.uint8), 'mono8'), np.array([[[7, 7, 7]]], np.uint8))
    check_equal(to_bgr8(np.array([[0x1234]], np.uint16), 'mono16'),
                np.array([[[0x12, 0x12, 0x12]]], np.uint8))
    with pytest.raises(ValueError, match="encoding '32FC1' is not a colour or mono image"):
        to_bgr8(np.zeros((1, 1), np.float32), '32FC1')


def test_supported_list():
    assert set(SUPPORTED) == {'bgr8', 'rgb8', 'bgra8', 'rgba8', 'mono8', 'mono16', '16UC1',
                              '32FC1', '8UC1', '8UC3', '8UC4'}

"""colorize: colour-map lookup, range, NaN colour, reverse, errors. Python 3.8, numpy + cv2."""
import cv2
from depth_ros.core.visualize import auto_range, colorize
import numpy as np
import pytest


def lut(cmap=cv2.COLORMAP_TURBO):
    return cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(1, -1), cmap)[0]


def test_values_map_to_colour_map_entries():
    v = np.array([[0.0, 1.0, 2.0, 0.5]], np.float32)
    out = colorize(v, 0.0, 2.0)
    assert out.dtype == np.uint8 and out.shape == (1, 4, 3)
    table = lut()
    for i, level in enumerate([0, 128, 255, 64]):     # 255 * (v - 0) / 2, rounded
        np.testing.assert_array_equal(out[0, i], table[level], err_msg='pixel {}'.format(i))


def test_nan_gets_invalid_colour_and_inf_is_clipped_to_the_ends():
    v = np.array([[np.nan, np.inf, -np.inf, 3.0, -5.0]], np.float32)
    out = colorize(v, 0.0, 2.0, invalid_color=(1, 2, 3))
    table = lut()
    np.testing.assert_array_equal(out[0, 0], [1, 2, 3])
    np.testing.assert_array_equal(out[0, 1], table[255])   # +inf: too far, far colour
    np.testing.assert_array_equal(out[0, 2], table[0])
    np.testing.assert_array_equal(out[0, 3], table[255])   # clipped
    np.testing.assert_array_equal(out[0, 4], table[0])


def test_reverse_flips_the_map():
    v = np.array([[0.0, 2.0]], np.float32)
    out = colorize(v, 0.0, 2.0, reverse=True)
    np.testing.assert_array_equal(out[0], lut()[[255, 0]])


def test_auto_range_uses_percentiles_of_finite_values():
    v = np.tile(np.arange(100, dtype=np.float32), (10, 1))
    v[0, 0] = np.nan
    v[1, 1] = 1e9      # one stray value must not set the range
    lo, hi = auto_range(v)
    assert abs(lo - 2) < 1.5 and abs(hi - 97) < 1.5, (lo, hi)
    assert auto_range(np.full((4, 4), np.nan, np.float32)) == (0.0, 1.0)
    out = colorize(v)
    np.testing.assert_array_equal(out[1, 1], lut()[255])


def test_integer_input_and_constant_image():
    out = colorize(np.full((3, 4), 7, np.uint16))
    assert out.shape == (3, 4, 3)
    assert (out == out[0, 0]).all()


@pytest.mark.parametrize('shape', [(1, 1), (4, 1), (1, 4), (2, 2)])
@pytest.mark.parametrize('reverse', [False, True])
def test_images_of_a_few_pixels_are_not_read_as_a_scalar(shape, reverse):
    # OpenCV's binary operations take an array of up to 4 values for a scalar.
    v = np.array([-1.0, 5.0, 30.0, 12.5][:shape[0] * shape[1]], np.float32).reshape(shape)
    out = colorize(v, 0.0, 20.0, reverse=reverse)
    levels = np.clip(v, 0.0, 20.0) * 255.0 / 20.0
    levels = np.rint(255.0 - levels if reverse else levels).astype(int)
    np.testing.assert_array_equal(out, lut()[levels])


def test_result_is_new_each_call():
    v = np.random.RandomState(0).rand(8, 8).astype(np.float32)
    a = colorize(v, 0, 1)
    snap = a.copy()
    colorize(1 - v, 0, 1)
    np.testing.assert_array_equal(a, snap)


@pytest.mark.parametrize('args, kwargs, message', [
    ((np.ones((4, 4, 3), np.float32),), {}, '`values` must be HxW'),
    ((np.ones((0, 4), np.float32),), {}, '`values` is empty'),
    ((np.ones((4, 4), np.complex64),), {}, '`values` must be a real-valued image'),
    ((np.ones((4, 4), np.float32), 2.0, 1.0), {}, '`vmax` (1.0) must be >= `vmin` (2.0)'),
    ((np.ones((4, 4), np.float32), float('nan')), {},
     '`vmin` must be a finite number or None, got nan'),
    ((np.ones((4, 4), np.float32),), {'invalid_color': (0, 0)},
     '`invalid_color` must be 3 integers in [0, 255] (B, G, R), got (0, 0)'),
    ((np.ones((4, 4), np.float32),), {'invalid_color': (0, 0, 300)},
     '`invalid_color` must be 3 integers in [0, 255] (B, G, R), got (0, 0, 300)'),
])
def test_bad_input(args, kwargs, message):
    with pytest.raises(ValueError) as info:
        colorize(*args, **kwargs)
    assert message in str(info.value), 'expected {!r} in {!r}'.format(message, str(info.value))

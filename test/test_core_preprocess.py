"""
depth_ros.core.preprocess against straightforward reference computations (numpy + OpenCV).

Runs under Python 3.8 (make test-py38): no torch here.
"""
import cv2
from depth_ros.core.preprocess import (check_input_size, DEFAULT_SIZE, IMAGENET_MEAN,
                                       IMAGENET_STD, prepare_input, restore_output)
import numpy as np
import pytest

MEAN = np.array([0.485, 0.456, 0.406])  # RGB, as published with ImageNet
STD = np.array([0.229, 0.224, 0.225])


def reference_normalise(bgr):
    """Apply the official transform: BGR -> RGB, / 255, (x - mean) / std, HWC -> [1, 3, H, W]."""
    rgb = bgr[:, :, ::-1].astype(np.float64) / 255.0
    return ((rgb - MEAN) / STD).transpose(2, 0, 1)[None]


def reference_bilinear(img, height, width):
    """Bilinear resampling with pixel centres aligned (align_corners=False), in float64."""
    h, w = img.shape
    ys = np.clip((np.arange(height) + 0.5) * h / height - 0.5, 0, h - 1)
    xs = np.clip((np.arange(width) + 0.5) * w / width - 0.5, 0, w - 1)
    y0 = np.floor(ys).astype(int)
    x0 = np.floor(xs).astype(int)
    y1 = np.minimum(y0 + 1, h - 1)
    x1 = np.minimum(x0 + 1, w - 1)
    wy = (ys - y0)[:, None]
    wx = (xs - x0)[None, :]
    img = img.astype(np.float64)
    top = img[y0][:, x0] * (1 - wx) + img[y0][:, x1] * wx
    bottom = img[y1][:, x0] * (1 - wx) + img[y1][:, x1] * wx
    return top * (1 - wy) + bottom * wy


def smooth_image(h, w):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    b = 128 + 100 * np.sin(x / 17.0) * np.cos(y / 23.0)
    g = 128 + 90 * np.cos((x + y) / 31.0)
    r = 40 + 180 * x / w
    return np.clip(np.dstack([b, g, r]), 0, 255).round().astype(np.uint8)


def test_constants_are_imagenet():
    assert np.allclose(IMAGENET_MEAN, MEAN) and np.allclose(IMAGENET_STD, STD)
    assert DEFAULT_SIZE == (518, 294)


def test_normalisation_at_model_size_equals_the_reference():
    bgr = np.random.default_rng(0).integers(0, 256, size=(42, 56, 3), dtype=np.uint8)
    got = prepare_input(bgr, (56, 42))
    want = reference_normalise(bgr)
    assert got.shape == (1, 3, 42, 56) and got.dtype == np.float32, (got.shape, got.dtype)
    err = np.abs(got - want).max()
    assert err < 1e-5, 'max abs error {} (expected < 1e-5)'.format(err)


def test_channel_order_is_rgb():
    bgr = np.zeros((14, 28, 3), np.uint8)
    bgr[:, :, 0] = 255  # pure blue in BGR
    got = prepare_input(bgr, (28, 14))[0, :, 0, 0]
    want = (np.array([0.0, 0.0, 1.0]) - MEAN) / STD
    assert np.allclose(got, want, atol=1e-5), 'expected {}, received {}'.format(want, got)


def test_resize_then_normalise_matches_normalise_then_resize():
    # The official transform normalises in float and then resizes (bicubic); prepare_input
    # resizes uint8 first. On a smooth image they differ by at most uint8 rounding.
    bgr = smooth_image(720, 1280)
    got = prepare_input(bgr)
    normalised = reference_normalise(bgr)[0].transpose(1, 2, 0).astype(np.float32)
    want = cv2.resize(normalised, DEFAULT_SIZE, interpolation=cv2.INTER_CUBIC)
    want = want.transpose(2, 0, 1)[None]
    err = np.abs(got - want).max()
    one_level = 1.0 / (255 * STD.min())
    assert got.shape == (1, 3, 294, 518)
    assert err <= one_level, 'max abs error {} (expected <= {})'.format(err, one_level)


def test_out_buffer_is_reused_and_checked():
    bgr = smooth_image(100, 200)
    buf = np.full((1, 3, 28, 42), np.nan, np.float32)
    got = prepare_input(bgr, (42, 28), out=buf)
    assert got is buf and np.isfinite(buf).all()
    assert np.array_equal(buf, prepare_input(bgr, (42, 28)))
    with pytest.raises(ValueError) as err:
        prepare_input(bgr, (42, 28), out=np.zeros((1, 3, 28, 42), np.float64))
    assert str(err.value) == ('`out` must be [1, 3, 28, 42] float32, got array of shape '
                              '(1, 3, 28, 42) and dtype float64')


@pytest.mark.parametrize('value, message', [
    (np.zeros((10, 10), np.uint8),
     '`bgr` must be HxWx3, got array of shape (10, 10) and dtype uint8'),
    (np.zeros((10, 10, 4), np.uint8),
     '`bgr` must be HxWx3, got array of shape (10, 10, 4) and dtype uint8'),
    (np.zeros((10, 10, 3), np.float32),
     '`bgr` must have dtype uint8, got array of shape (10, 10, 3) and dtype float32'),
    (np.zeros((0, 10, 3), np.uint8),
     '`bgr` is empty: array of shape (0, 10, 3) and dtype uint8'),
    ([[1, 2, 3]], "`bgr` must be a numpy array, got list [[1, 2, 3]]"),
])
def test_bad_images_are_named(value, message):
    with pytest.raises(ValueError) as err:
        prepare_input(value)
    assert str(err.value) == message, 'expected {!r}, received {!r}'.format(
        message, str(err.value))


@pytest.mark.parametrize('size, message', [
    ((500, 294), 'input `width` must be a positive multiple of 14, got 500'),
    ((518, 0), 'input `height` must be a positive multiple of 14, got 0'),
    ((-14, 294), 'input `width` must be a positive multiple of 14, got -14'),
    ((518.0, 294), 'input `width` must be a positive multiple of 14, got 518.0'),
    ((True, 294), 'input `width` must be a positive multiple of 14, got True'),
])
def test_bad_input_sizes_are_named(size, message):
    with pytest.raises(ValueError) as err:
        check_input_size(*size)
    assert str(err.value) == message, 'expected {!r}, received {!r}'.format(
        message, str(err.value))


def test_input_size_accepts_numpy_integers():
    got = check_input_size(np.int64(518), np.int32(294))
    assert got == (518, 294) and all(type(v) is int for v in got)


@pytest.mark.parametrize('src, dst', [((42, 70), (60, 100)), ((294, 518), (720, 1280)),
                                      ((60, 100), (30, 50)), ((42, 70), (121, 37))])
def test_restore_output_is_pixel_centre_bilinear(src, dst):
    pred = np.random.default_rng(1).standard_normal(src).astype(np.float32)
    got = restore_output(pred[None], *dst)
    want = reference_bilinear(pred, *dst)
    assert got.shape == dst and got.dtype == np.float32, (got.shape, got.dtype)
    err = np.abs(got - want).max()
    assert err < 1e-4, '{} -> {}: max abs error {} (expected < 1e-4)'.format(src, dst, err)


def test_restore_output_shapes_and_copy():
    pred = np.arange(12, dtype=np.float64).reshape(1, 1, 3, 4)
    got = restore_output(pred, 3, 4)
    assert got.dtype == np.float32 and np.array_equal(got, pred[0, 0])
    same = np.arange(12, dtype=np.float32).reshape(3, 4)
    out = restore_output(same, 3, 4)
    assert out is not same and not np.shares_memory(out, same)
    with pytest.raises(ValueError) as err:
        restore_output(np.zeros((0, 5), np.float32), 3, 4)
    assert str(err.value) == ('model output must be [h, w], got array of shape (0, 5) and '
                              'dtype float32')

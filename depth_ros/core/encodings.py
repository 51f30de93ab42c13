"""
sensor_msgs/Image byte layouts <-> numpy, without ROS or cv_bridge.

This is the fallback that ``depth_ros.ros.conversions`` uses where cv_bridge is not installed, and
the converter the rosbag tools use (rosbags' ``Image`` dataclass has the same fields). It is
duck-typed: any object with ``height``, ``width``, ``encoding``, ``step``, ``is_bigendian`` and
``data`` works (an rclpy message, a rosbags dataclass, a SimpleNamespace).

Layout (sensor_msgs/Image): ``height`` rows of ``step`` bytes each; a row holds ``width`` pixels of
``channels`` elements, then optional padding up to ``step``. Multi-byte elements are big-endian
when ``is_bigendian`` is non-zero.
"""
from __future__ import annotations

import sys

import cv2
from depth_ros.core.checks import check_number
import numpy as np

# encoding -> (element dtype, channels). The dtype's byte order is set from is_bigendian.
ENCODINGS = {
    'bgr8': (np.uint8, 3),
    'rgb8': (np.uint8, 3),
    'bgra8': (np.uint8, 4),
    'rgba8': (np.uint8, 4),
    'mono8': (np.uint8, 1),
    'mono16': (np.uint16, 1),
    '16UC1': (np.uint16, 1),
    '32FC1': (np.float32, 1),
}

# Generic OpenCV-style names accepted on input, read as the colour encoding cv_bridge assumes.
ALIASES = {'8UC3': 'bgr8', '8UC4': 'bgra8', '8UC1': 'mono8'}

SUPPORTED = tuple(sorted(ENCODINGS)) + tuple(sorted(ALIASES))
# What to_bgr8 turns into a network input (16-bit mono is intensity here, not depth).
COLOUR_ENCODINGS = ('bgr8', 'rgb8', 'bgra8', 'rgba8', 'mono8', 'mono16', '16UC1')

_NATIVE = '<' if sys.byteorder == 'little' else '>'


def canonical_encoding(encoding: str) -> str:
    """
    Return the encoding name used internally (``'8UC3'`` -> ``'bgr8'``).

    :raises ValueError: for an unsupported encoding, naming it.
    """
    name = ALIASES.get(encoding, encoding)
    if name not in ENCODINGS:
        raise ValueError('unsupported image encoding {!r}; supported: {}'.format(
            encoding, ', '.join(SUPPORTED)))
    return name


def _int_field(msg, name: str) -> int:
    return check_number(name, getattr(msg, name), low=0, integer=True, kind='image')


def _byte_buffer(data) -> np.ndarray:
    """Return an Image's ``data`` (bytes, array.array, a list of ints, an array) as uint8 1-D."""
    if isinstance(data, np.ndarray):
        buf = data.reshape(-1).view(np.uint8) if data.dtype.itemsize == 1 else data
    else:
        try:
            buf = np.frombuffer(data, dtype=np.uint8)
        except TypeError:  # a plain list of ints
            buf = np.asarray(data, dtype=np.uint8)
    if buf.dtype != np.uint8 or buf.ndim != 1:
        raise ValueError('image `data` must be a flat byte buffer, got {} {}'.format(
            type(data).__name__, getattr(buf, 'dtype', '')))
    return buf


def _data_bytes(data) -> int:
    try:
        return memoryview(data).nbytes   # bytes, array.array, a numpy array: no copy
    except TypeError:
        return len(data)                 # a plain list of ints


def check_layout(msg) -> tuple:
    """
    Check an Image-like message's fields against each other, reading no pixel.

    :returns: (dtype with the message's byte order, channels, height, width, step).
    :raises ValueError: unsupported encoding, an empty image, a ``step`` shorter than a row,
        or ``data`` that is not ``step * height`` bytes.
    """
    base, channels = ENCODINGS[canonical_encoding(msg.encoding)]
    height = _int_field(msg, 'height')
    width = _int_field(msg, 'width')
    step = _int_field(msg, 'step')
    if height == 0 or width == 0:
        raise ValueError('image is empty: height={} width={}'.format(height, width))
    dtype = np.dtype(base).newbyteorder('>' if msg.is_bigendian else '<')
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ValueError('image `step` {} is smaller than width*channels*bytes = {}*{}*{} = {} '
                         'for encoding {!r}'.format(step, width, channels, dtype.itemsize,
                                                    row_bytes, msg.encoding))
    size = _data_bytes(msg.data)
    if size != step * height:
        raise ValueError('image `data` has {} bytes but step*height = {}*{} = {} for a {}x{} {} '
                         'image'.format(size, step, height, step * height, width, height,
                                        msg.encoding))
    return dtype, channels, height, width, step


def image_to_array(msg, copy: bool = False) -> np.ndarray:
    """
    Decode an Image-like message into an HxW or HxWxC array in native byte order.

    Channel order is kept as the encoding says (an ``rgb8`` image stays RGB; see
    :func:`to_bgr8`). Padding bytes at the end of each row (``step``) are skipped.

    :param msg: object with height, width, encoding, step, is_bigendian and data.
    :param copy: when False the result may share memory with ``msg.data``.
    :returns: uint8, uint16 or float32 array; HxW for one channel, HxWxC otherwise.
    :raises ValueError: as :func:`check_layout`.
    """
    dtype, channels, height, width, step = check_layout(msg)
    row_bytes = width * channels * dtype.itemsize
    buf = _byte_buffer(msg.data)
    if step == row_bytes:
        rows = buf  # unpadded: zero-copy
    else:
        # Padded rows need one contiguous byte copy: elements may not be aligned to the step.
        rows = np.ascontiguousarray(buf.reshape(height, step)[:, :row_bytes]).reshape(-1)
    array = rows.view(dtype).reshape((height, width, channels) if channels > 1
                                     else (height, width))
    if dtype.byteorder not in ('=', '|') and dtype.byteorder != _NATIVE:
        array = array.byteswap().view(array.dtype.newbyteorder())
    elif copy:
        array = array.copy()
    return array


def array_to_image_fields(array: np.ndarray, encoding: str, bigendian: bool = False) -> dict:
    """
    Encode an array as the fields of a sensor_msgs/Image (header excluded).

    :param array: HxW (one channel) or HxWxC array whose dtype and channels fit ``encoding``:
        uint8 for the 8-bit encodings, uint16 for mono16/16UC1, float32 for 32FC1.
    :param encoding: one of :data:`SUPPORTED`; kept as given in the ``encoding`` field.
    :param bigendian: write multi-byte elements big-endian (default: little-endian).
    :returns: dict with height, width, encoding, is_bigendian (0/1), step (no padding) and data
        (a flat, C-contiguous uint8 numpy array: rosbags wants it so; ``ros.conversions`` turns it
        into the array.array rclpy stores).
    :raises ValueError: unsupported encoding, or an array that does not fit it.
    """
    name = canonical_encoding(encoding)
    base, channels = ENCODINGS[name]
    if not isinstance(array, np.ndarray):
        raise ValueError('`array` must be a numpy array, got {}'.format(type(array).__name__))
    shape_ok = (array.ndim == 2 and channels == 1) or (
        array.ndim == 3 and array.shape[2] == channels)
    if channels == 1 and array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
        shape_ok = True
    if not shape_ok:
        raise ValueError('`array` of shape {} does not fit encoding {!r} ({} channel{})'.format(
            array.shape, encoding, channels, '' if channels == 1 else 's'))
    if array.dtype.base.kind != np.dtype(base).kind or \
            array.dtype.itemsize != np.dtype(base).itemsize:
        raise ValueError('`array` has dtype {} but encoding {!r} needs {}'.format(
            array.dtype, encoding, np.dtype(base).name))
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError('`array` is empty: shape {}'.format(array.shape))
    height, width = array.shape[:2]
    target = np.dtype(base).newbyteorder('>' if bigendian else '<')
    out = np.ascontiguousarray(array, dtype=target)
    return {
        'height': int(height),
        'width': int(width),
        'encoding': encoding,
        'is_bigendian': 1 if bigendian and target.itemsize > 1 else 0,
        'step': int(width * channels * target.itemsize),
        'data': out.reshape(-1).view(np.uint8),
    }


def colour_encoding(encoding: str) -> str:
    """
    Return the internal name of a colour or mono image encoding (one :func:`to_bgr8` takes).

    :raises ValueError: for an unsupported encoding, or 32FC1 (depth, not an image).
    """
    name = canonical_encoding(encoding)
    if name not in COLOUR_ENCODINGS:
        raise ValueError('encoding {!r} is not a colour or mono image; expected one of '
                         'bgr8, rgb8, bgra8, rgba8, mono8, mono16'.format(encoding))
    return name


def to_bgr8(array: np.ndarray, encoding: str) -> np.ndarray:
    """
    Convert a decoded colour or mono image to HxWx3 bgr8, the network input.

    mono16/16UC1 are scaled down by 256 (16-bit intensity, not depth).

    :raises ValueError: as :func:`colour_encoding`.
    """
    name = colour_encoding(encoding)
    if name == 'bgr8':
        return array
    if name == 'rgb8':
        # numpy, not cv2.cvtColor: OpenCV 4.5.4 (JetPack 5.1) fails on a 1x1x3 array.
        return np.ascontiguousarray(array[:, :, ::-1])
    if name == 'bgra8':
        return cv2.cvtColor(array, cv2.COLOR_BGRA2BGR)
    if name == 'rgba8':
        return cv2.cvtColor(array, cv2.COLOR_RGBA2BGR)
    if name == 'mono8':
        return cv2.cvtColor(array, cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor((array >> 8).astype(np.uint8), cv2.COLOR_GRAY2BGR)   # mono16, 16UC1

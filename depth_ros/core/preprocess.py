"""
Depth Anything V2 input and output transforms: the one implementation every backend uses.

Input: BGR uint8 -> RGB, / 255, ImageNet mean and std, resized to the model size (multiples of
14), as [1, 3, h, w] float32. Output: [h, w] relative disparity upsampled to the image size.
"""
from __future__ import annotations

from typing import Optional, Tuple

import cv2
from depth_ros.core.checks import check_image, describe
from depth_ros.util import check_number_as
import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)  # RGB
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)   # RGB
PATCH = 14
DEFAULT_SIZE = (518, 294)  # (width, height) for 16:9 cameras

# Per-channel affine in BGR order, folded so the normalisation is one multiply-add.
_SCALE_BGR = (1.0 / (255.0 * IMAGENET_STD))[::-1].copy()
_OFFSET_BGR = (-IMAGENET_MEAN / IMAGENET_STD)[::-1].copy()


def check_input_size(width: int, height: int,
                     names: Tuple[str, str] = ('input `width`', 'input `height`')
                     ) -> Tuple[int, int]:
    """
    Validate a model input size: positive multiples of the ViT patch size (14).

    :param names: what the errors call the width and the height (a command names its options).
    """
    message = '{name} must be a positive multiple of ' + str(PATCH) + ', got {value!r}'
    size = tuple(check_number_as(message, name, value, low=1, integer=True)
                 for name, value in zip(names, (width, height)))
    for name, value in zip(names, size):
        if value % PATCH:
            raise ValueError(message.format(name=name, value=value))
    return size


def prepare_input(bgr: np.ndarray, size: Tuple[int, int] = DEFAULT_SIZE,
                  out: Optional[np.ndarray] = None) -> np.ndarray:
    """
    BGR uint8 [H, W, 3] -> normalised RGB [1, 3, h, w] float32 for ``size`` = (w, h).

    Resizing happens first, on uint8 (bicubic, as the official transform), so the float work is
    at model size; resize and the per-channel affine commute up to uint8 rounding.
    :param out: optional preallocated [1, 3, h, w] float32 buffer (e.g. a page-locked one).
    """
    check_image('bgr', bgr, channels=3, dtypes=(np.uint8,))
    width, height = check_input_size(*size)
    if bgr.shape[1] != width or bgr.shape[0] != height:
        small = cv2.resize(bgr, (width, height), interpolation=cv2.INTER_CUBIC)
    else:
        small = bgr
    if out is None:
        out = np.empty((1, 3, height, width), dtype=np.float32)
    elif out.shape != (1, 3, height, width) or out.dtype != np.float32:
        raise ValueError('`out` must be [1, 3, {}, {}] float32, got {}'.format(
            height, width, describe(out)))
    for c_out, c_in in ((0, 2), (1, 1), (2, 0)):  # RGB planes from BGR channels
        np.multiply(small[:, :, c_in], _SCALE_BGR[c_in], out=out[0, c_out],
                    casting='unsafe')
        out[0, c_out] += _OFFSET_BGR[c_in]
    return out


def restore_output(pred: np.ndarray, height: int, width: int) -> np.ndarray:
    """
    Model output [h, w] (or [1, h, w], [1, 1, h, w]) -> [height, width] float32.

    Bilinear, pixel-centre aligned (as torch's interpolate with align_corners=False).
    """
    pred = np.asarray(pred)
    pred = pred.reshape(pred.shape[-2:]) if pred.ndim > 2 else pred
    if pred.ndim != 2 or pred.size == 0:
        raise ValueError('model output must be [h, w], got {}'.format(describe(pred)))
    pred = pred.astype(np.float32, copy=False)
    if pred.shape == (height, width):
        return np.array(pred, dtype=np.float32, copy=True)
    return cv2.resize(pred, (int(width), int(height)), interpolation=cv2.INTER_LINEAR)

"""
Stereo depth with OpenCV's semi-global block matching, standing in for the ZED SDK's depth.

Replay sources (the bundled sample, a folder of stereo pairs) have no ZED SDK to compute depth,
so they compute it here and return what the SDK returns: depth in metres and a confidence map
on the SDK's scale (1..100, larger = less reliable).

Disparity convention: a left pixel at column ``x`` with disparity ``d`` matches the right pixel
at ``x - d``. Depth is ``baseline * fx / (d + doffs)``, where ``doffs`` is the difference of
the two principal points (``cx_right - cx_left`` in Middlebury's calib.txt; 0 for a ZED, whose
rectified images share one principal point).

Confidence comes from left-right consistency. The right view's disparity is matched too, and
each left match is checked against it: ``lr = |d_left(x) - d_right(x - d_left(x))|``.

- ``confidence = 1 + 99 * min(lr / lr_tolerance, 1)``: 1 for a match both views agree on,
  100 for one they disagree on by ``lr_tolerance`` pixels or more.
- A match the right view has no answer for (its own match failed there) is unconfirmed:
  confidence ``UNCONFIRMED_CONFIDENCE`` (50).
- Pixels without a depth (no match, OpenCV's uniqueness test failed, ``lr > max_lr_diff``,
  speckle) get depth NaN and confidence 100.

Why not texture as well: measured on the bundled Middlebury sample, SGBM's errors (> 1 px)
happen at depth edges, which are textured, while flat windows are as accurate as the rest
(semi-global smoothing carries disparity across them). A texture term made the map less
predictive of error, so it is left out; the left-right difference predicts it well: 5 % of
pixels with ``lr`` < 0.25 px are wrong by > 1 px, 25-47 % with 0.25-1 px, 67-71 % above 1 px
(see docs/sources.md).
"""
from __future__ import annotations

import threading
from typing import Optional, Tuple

import cv2
from depth_ros.core.camera import PinholeCamera
from depth_ros.core.checks import check_image, check_number, check_same_size
from depth_ros.util import check_number_as
import numpy as np

CONFIDENCE_MIN = 1.0
CONFIDENCE_MAX = 100.0
UNCONFIRMED_CONFIDENCE = 50.0  # the right view has no match to check against


def default_num_disparities(width: int) -> int:
    """
    Search range for an image ``width`` pixels wide: width / 8 rounded up to a multiple of 16.

    A ZED2 at 1280 px with a 12 cm baseline sees 0.5 m at ~210 px of disparity; width / 8
    (160 px) reaches ~0.65 m, close to the SDK's default minimum depth, at a third of the cost.
    """
    return max(16, int(np.ceil(width / 8.0 / 16.0)) * 16)


_MULTIPLE_OF_16 = '`{name}` must be an integer >= 16 and a multiple of 16, got {value!r}'


def sgbm_disparity(left_gray: np.ndarray, right_gray: np.ndarray, num_disparities: int,
                   min_disparity: int = 0, block_size: int = 5, uniqueness_ratio: int = 10,
                   speckle_window: int = 100, speckle_range: int = 2,
                   right_view: bool = False) -> np.ndarray:
    """
    SGBM disparity of the left view (or of the right view), [H, W] float32 px, NaN invalid.

    The right view's disparity is computed by matching the mirrored pair, so that both views
    use the same matcher and parameters (cv2.ximgproc is not in opencv-python-headless).
    """
    # P1/P2 as the OpenCV sample recommends for single-channel input.
    matcher = cv2.StereoSGBM_create(
        minDisparity=min_disparity, numDisparities=num_disparities, blockSize=block_size,
        P1=8 * block_size * block_size, P2=32 * block_size * block_size,
        disp12MaxDiff=-1, uniquenessRatio=uniqueness_ratio,
        speckleWindowSize=speckle_window, speckleRange=speckle_range,
        mode=cv2.STEREO_SGBM_MODE_SGBM_3WAY)
    if right_view:
        raw = matcher.compute(np.ascontiguousarray(right_gray[:, ::-1]),
                              np.ascontiguousarray(left_gray[:, ::-1]))[:, ::-1]
    else:
        raw = matcher.compute(left_gray, right_gray)
    disp = raw.astype(np.float32) * (1.0 / 16.0)  # fixed point, 4 fractional bits
    disp[raw < min_disparity * 16] = np.nan       # OpenCV marks invalid as minDisparity - 1
    return disp


def sgbm_depth(left_bgr: np.ndarray, right_bgr: np.ndarray, camera: PinholeCamera,
               baseline_m: float, doffs: float = 0.0, num_disparities: Optional[int] = None,
               min_disparity: int = 0, block_size: int = 5, uniqueness_ratio: int = 10,
               max_lr_diff: Optional[float] = 1.0,
               lr_tolerance: float = 1.0) -> Tuple[np.ndarray, np.ndarray]:
    """
    Depth and confidence from a rectified stereo pair (see the module docstring).

    :param left_bgr, right_bgr: [H, W, 3] uint8 BGR rectified images of the same size.
    :param camera: intrinsics of the left image at its size (fx is used).
    :param baseline_m: stereo baseline in metres (> 0).
    :param doffs: principal-point offset between the views in pixels (Middlebury ``doffs``).
    :param num_disparities: search range in pixels, a multiple of 16; default
        ``default_num_disparities(W)``.
    :param min_disparity: smallest disparity searched (may be negative when ``doffs`` > 0).
    :param block_size: odd matching window size in pixels (3..11 is usual).
    :param uniqueness_ratio: OpenCV's uniqueness margin in percent (0 disables).
    :param max_lr_diff: left-right disagreement in pixels above which a pixel is invalid;
        None keeps every match (the confidence still reports the disagreement).
    :param lr_tolerance: left-right disagreement in pixels that maps to confidence 100.
    :returns: (depth [H, W] float32 metres, NaN invalid; confidence [H, W] float32 1..100,
        larger = less reliable).
    """
    check_image('left_bgr', left_bgr, channels=3, dtypes=(np.uint8,))
    check_image('right_bgr', right_bgr, channels=3, dtypes=(np.uint8,))
    check_same_size('left_bgr', left_bgr, 'right_bgr', right_bgr)
    if not isinstance(camera, PinholeCamera):
        raise ValueError('`camera` must be a PinholeCamera, got {!r}'.format(camera))
    height, width = left_bgr.shape[:2]
    if (camera.width, camera.height) != (width, height):
        raise ValueError('`camera` is for {}x{} but the images are {}x{}'.format(
            camera.width, camera.height, width, height))
    baseline_m = check_number('baseline_m', baseline_m, low=0, low_open=True)
    doffs = check_number('doffs', doffs)
    if num_disparities is None:
        num_disparities = default_num_disparities(width)
    num_disparities = check_number_as(_MULTIPLE_OF_16, 'num_disparities', num_disparities,
                                      low=16, integer=True)
    if num_disparities % 16:
        raise ValueError(_MULTIPLE_OF_16.format(name='num_disparities', value=num_disparities))
    min_disparity = check_number('min_disparity', min_disparity, integer=True)
    block_size = check_number('block_size', block_size, low=1, integer=True)
    if block_size % 2 == 0:
        raise ValueError('`block_size` must be odd, got {!r}'.format(block_size))
    uniqueness_ratio = check_number('uniqueness_ratio', uniqueness_ratio, low=0, integer=True)
    max_lr_diff = check_number_as('`{name}` must be >= 0 or None, got {value!r}', 'max_lr_diff',
                                  max_lr_diff, low=0, allow_none=True)
    lr_tolerance = check_number('lr_tolerance', lr_tolerance, low=0, low_open=True)
    # StereoSGBM needs the image wider than its search range: below that OpenCV 4.5 (the
    # Jetson's) ends the process with std::terminate and OpenCV 5 raises or crashes.
    needed = num_disparities + max(int(min_disparity), 0)
    if width <= needed:
        raise ValueError('the images are {} px wide but `num_disparities` {} (+ `min_disparity` '
                         '{}) needs more than {} px'.format(
                             width, num_disparities, min_disparity, needed))

    left_gray = cv2.cvtColor(left_bgr, cv2.COLOR_BGR2GRAY)
    right_gray = cv2.cvtColor(right_bgr, cv2.COLOR_BGR2GRAY)
    opts = dict(num_disparities=num_disparities, min_disparity=int(min_disparity),
                block_size=block_size, uniqueness_ratio=uniqueness_ratio)
    # The two views' matchers run at once, the right view's on a thread of its own (OpenCV
    # releases the GIL): whatever OpenCV's own pool (off in our node processes, ros/entry.py),
    # a frame's SGBM then takes the longer of the two, not their sum, where a core is free.
    disp, disp_right = _both_views(left_gray, right_gray, opts)  # [H, W] float32 px, NaN invalid

    # NaN marks 'no match' all through; comparisons with it are False, as intended.
    with np.errstate(invalid='ignore'):
        # Column in the right view that each left pixel matched; NaN disparities stay NaN.
        xr = np.rint(np.arange(width, dtype=np.float32)[None, :] - disp)
        inside = np.isfinite(xr) & (xr >= 0) & (xr <= width - 1)
        back = disp_right[np.arange(height)[:, None], np.where(inside, xr, 0).astype(np.intp)]
        lr_diff = np.abs(disp - back)  # NaN where either view has no match
        confirmed = inside & np.isfinite(lr_diff)
        if max_lr_diff is not None:
            disp[confirmed & (lr_diff > max_lr_diff)] = np.nan

        denom = disp + np.float32(doffs)
        valid = np.isfinite(denom) & (denom > 0)  # d + doffs <= 0 is behind the camera: no match
        depth = np.full((height, width), np.nan, dtype=np.float32)
        depth[valid] = np.float32(baseline_m * camera.fx) / denom[valid]

    confidence = np.full((height, width), UNCONFIRMED_CONFIDENCE, dtype=np.float32)
    lr_term = np.minimum(lr_diff[confirmed] * (1.0 / lr_tolerance), 1.0)
    confidence[confirmed] = CONFIDENCE_MIN + (CONFIDENCE_MAX - CONFIDENCE_MIN) * lr_term
    confidence[~valid] = CONFIDENCE_MAX
    return depth, confidence


def _both_views(left_gray, right_gray, opts):
    """Return the left and the right view's SGBM disparity (sgbm_disparity), computed at once."""
    right = {}

    def run_right():
        try:
            right['disp'] = sgbm_disparity(left_gray, right_gray, right_view=True, **opts)
        except BaseException as exc:    # re-raised on the caller's thread below
            right['error'] = exc

    worker = threading.Thread(target=run_right, name='sgbm_right', daemon=True)
    worker.start()
    try:
        left = sgbm_disparity(left_gray, right_gray, **opts)
    finally:
        worker.join()
    if 'error' in right:
        raise right['error']
    return left, right['disp']


SGBM_OPTIONS = ('num_disparities', 'min_disparity', 'block_size', 'uniqueness_ratio',
                'max_lr_diff', 'lr_tolerance')


def check_sgbm_options(options: dict) -> dict:
    """Raise ValueError naming any key that sgbm_depth does not take as an option."""
    unknown = sorted(set(options) - set(SGBM_OPTIONS))
    if unknown:
        raise ValueError('unknown SGBM option(s) {}; valid: {}'.format(
            ', '.join(unknown), ', '.join(SGBM_OPTIONS)))
    return options

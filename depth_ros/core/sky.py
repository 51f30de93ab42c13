"""
Sky patches: the parts of the sky the network gave a finite depth, found at low resolution.

DA-V2 predicts about 0 for the sky, which the sky rule (``MetricAligner`` step 8) makes +inf,
but it gives patches of the sky (haze, clouds, glare) a finite disparity: aligned, they are a
phantom surface tens of metres away. A patch is found where three cues that do not depend on
the network's value there agree, on the statistics grid (every ``step``-th output pixel):

* the stereo says "too far" (+inf, the ZED's value beyond its range and on the sky), and the
  aligned mono puts the pixel beyond the stereo's range (``0 < y < 1 / max_depth``);
* its colour is within ``tolerance`` grey levels, per channel, of the sky's nearby (the mean
  colour of the pixels the sky rule already made sky, over about 24 grid pixels around);
* it is connected (8-neighbours) to that sky through such pixels.

A far object (a building beyond 20 m, a tree line) is kept unless it has the sky's colour and
touches it; an object within the stereo's range is never a candidate. Without an image, or for
a relative map that is not a disparity, there is no patch test.
"""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

COLOUR_TOLERANCE = 20       # grey levels per channel from the sky's median colour
_NEAR = 8                   # grid pixels: the sky's colour nearby is over 2 _NEAR + 1 of them
_KERNEL = np.ones((3, 3), np.uint8)
_TINY = float(np.finfo(np.float32).tiny)   # the smallest normal float32: > 0 (not the sky)


def sky_patches(mono_s: np.ndarray, too_far_s: np.ndarray, image_s: np.ndarray,
                far_inv: float, tolerance: float = COLOUR_TOLERANCE) -> Optional[np.ndarray]:
    """
    Return the sky patches on the grid as a uint8 mask (1), or None when there are none.

    The mask marks grid pixels (each standing for a block of output pixels) to be cleared:
    the patches, the sky's blocks around them, and never a block next to a grid pixel whose
    mono is within the stereo's range.

    :param mono_s: [sh, sw] float32 aligned mono inverse depth (1/m) on a grid of the output:
        0 where the sky rule found sky, NaN where unknown.
    :param too_far_s: [sh, sw] uint8, 255 where the stereo says +inf (too far).
    :param image_s: [sh, sw, 3] uint8 BGR image on the same grid.
    :param far_inv: inverse depth (1/m) of the stereo's range (1 / max_depth): candidates
        are beyond it.
    :param tolerance: grey levels per channel from the sky's colour nearby.
    """
    sky = cv2.compare(mono_s, 0.0, cv2.CMP_EQ)           # [sh, sw] uint8 255: the sky rule
    # Candidates: the stereo says too far, the mono is beyond the stereo's range (NaN fails).
    candidate = too_far_s & cv2.inRange(mono_s, _TINY, float(np.nextafter(
        np.float32(far_inv), np.float32(0))))
    if cv2.countNonZero(sky) == 0 or cv2.countNonZero(candidate) == 0:
        return None
    # ... and the colour is the sky's nearby.
    colour_off = cv2.absdiff(image_s.astype(np.float32), _sky_colour_near(image_s, sky))
    candidate &= cv2.inRange(colour_off, (0, 0, 0), (tolerance,) * 3)
    # Connected to the sky through candidates: the components of the candidates that touch it.
    n, labels = cv2.connectedComponents(candidate, connectivity=8)
    touching = labels[cv2.dilate(sky, _KERNEL) & candidate > 0]
    if touching.size == 0:
        return None
    keep = np.zeros(n, np.uint8)
    keep[touching] = 1
    patches = keep[labels]
    # A grid pixel stands for a block of output pixels: the sky's blocks next to a patch
    # hold its blurred rim, and blocks next to anything within the stereo's range may hold
    # a part of it (a car below the sky).
    patches |= cv2.dilate(patches, _KERNEL) & (sky >> 7)
    near = cv2.compare(mono_s, far_inv, cv2.CMP_GE)      # NaN fails
    patches &= 1 - (cv2.dilate(near, _KERNEL) >> 7)
    return patches if cv2.countNonZero(patches) else None


def _sky_colour_near(image_s, sky):
    """
    Return the sky's mean colour near each grid pixel ([sh, sw, 3] float32).

    Over a window of ``2 _NEAR + 1`` grid pixels (skies are brighter toward the horizon), with
    the mean colour of all of the sky as a prior worth one pixel: where the window has no
    sky, that mean.
    """
    k = (2 * _NEAR + 1, 2 * _NEAR + 1)
    colours = cv2.bitwise_and(image_s, image_s, mask=sky).astype(np.float32)
    weight = cv2.boxFilter(sky, cv2.CV_32F, k, normalize=False, borderType=cv2.BORDER_CONSTANT)
    total = cv2.boxFilter(colours, -1, k, normalize=False, borderType=cv2.BORDER_CONSTANT)
    mean = np.array(cv2.sumElems(colours)[:3]) / max(cv2.countNonZero(sky), 1)
    # weight counts 255 per sky pixel: the prior is one pixel of the mean colour.
    den = cv2.add(weight, 255.0) * np.float32(1.0 / 255.0)
    return cv2.divide(cv2.add(total, tuple(mean) + (0.0,)), cv2.merge([den, den, den]))


__all__ = ['COLOUR_TOLERANCE', 'sky_patches']

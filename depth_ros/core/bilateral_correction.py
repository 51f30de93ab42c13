"""
Dense, edge-aware local correction of the aligned mono, computed at low resolution.

The target is the ratio ``p = stereo_inv / mono_inv`` where stereo is trusted. Per cell
(``downsample`` x ``downsample`` output pixels, read on a sub-lattice of every
``downsample / 2``-th pixel) ``p`` is the ratio of the sums of the two inverse depths over the
cell's usable stereo, with a weight from the stereo noise model (the noise of a cell mean,
relative to the cell's inverse depth). Usable: within the ``band`` of the aligned mono (gross
outliers out), away from the mono's bends (the blurred ramps of depth edges, where neither
the mono nor, with its edge fattening, the stereo tells the smooth correction), and within
3 sigma of a first-pass estimate.

A joint-bilateral normalised convolution spreads ``p`` to every cell: spatial boxes of about
``radius`` output pixels, and a range kernel on a guide, so that a surface takes the correction
of cells that look like it and not of the object next to it: the image's intensity when an
image is given, else the mono's log inverse depth. It is piecewise-linear over a few guide
levels (Durand and Dorsey's fast bilateral filter). Where a surface has little stereo nearby
the estimate is shrunk toward a coarse normalised convolution, and that toward 1 (no
correction) far from any stereo. The factor is bounded by ``max_correction`` and upsampled
bilinearly: two full-resolution passes.

One frame: ``cell_means(...)`` gathers the per-cell targets (:class:`CellTargets`),
``compute(targets, ...)`` spreads them into the factor map (:class:`Correction`),
``apply(mono_inv, correction)`` multiplies it onto the mono, and ``remember(targets,
correction)`` keeps what the temporal filter of the next frame needs. The object holds only
the per-shape sizes and that temporal state.

Temporal filter (metric space): the previous output's inverse depth per cell is a second
observation of the same target (``p_prev = prev_inv / mono_inv``), weighted by
``1 - temporal_alpha`` times the stereo precision the previous frame had there (not
accumulated over frames), and only where it agrees with this frame's stereo (or, where this
frame has none, with its aligned mono within ``max_correction``): content that moved or
changed is not smoothed.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import cv2
from depth_ros.core.robust_fit import median
import numpy as np

_EPS = 1e-12
EDGE_GAIN = 0.85     # the mono's relative error at a bend, per unit of relative bend
BEND_MAX = 0.03      # stereo where the mono bends more than this is not used as a target
RANGE_SIGMA_DEPTH = 0.15     # range kernel on log inverse depth
RANGE_SIGMA_IMAGE = 0.08     # range kernel on intensity (0..1)


class CellTargets(NamedTuple):
    """This frame's target of the correction, one value per cell ([lh, lw] float32 each)."""

    ratio: np.ndarray        # stereo_inv / mono_inv over the cell's usable stereo (1: none)
    weight: np.ndarray       # precision of the ratio (0: no usable stereo)
    mono_inv: np.ndarray     # mean aligned mono inverse depth (1/m)
    bend_var: np.ndarray     # the mono's relative variance from its bends (edges)
    guide: np.ndarray        # range guide: intensity 0..1, or log inverse depth
    range_sigma: float       # range kernel width on the guide


class Grid(NamedTuple):
    """One frame on the statistics grid (every ``step``-th output pixel), sampled once."""

    mono_inv: np.ndarray     # [sh, sw] float32 aligned mono inverse depth (0 sky, NaN unknown)
    stereo_inv: np.ndarray   # [sh, sw] float32 stereo inverse depth (finite) ...
    trusted: np.ndarray      # [sh, sw] uint8 ... trusted where 255
    image: Optional[np.ndarray]   # [sh, sw] or [sh, sw, 3] uint8 guide image, or None
    image_guide: Optional[np.ndarray] = None   # [lh, lw] float32 its intensity on the cells


class Correction(NamedTuple):
    """The correction of one frame ([lh, lw] float32 each)."""

    factor: np.ndarray       # multiplies the mono inverse depth, within max_correction
    support: np.ndarray      # 0..1: how much local stereo the factor rests on
    weight: np.ndarray       # the precision per cell it was spread from (this frame's stereo,
    #                          plus the previous output's where the temporal filter took it)


def _box(x, r):
    k = 2 * r + 1
    return cv2.boxFilter(x, cv2.CV_32F, (k, k), normalize=True, borderType=cv2.BORDER_REFLECT)


def bilateral_nc(p, w, guide, radius, range_sigma, max_levels=4):
    """
    Joint-bilateral normalised convolution.

    Of ``p`` (weights ``w``) with a spatial box of ``radius`` cells
    and a Gaussian range kernel of ``range_sigma`` on ``guide``,
    piecewise-linear over at most ``max_levels`` guide levels.

    Returns (estimate, weight density); the estimate is 1 where no weight reaches.
    """
    ok = w > 0
    if not ok.any():
        return np.ones_like(p), np.zeros_like(p)
    lo, hi = float(guide[ok].min()), float(guide[ok].max())
    n = int(min(max_levels, max(2, np.ceil((hi - lo) / range_sigma) + 1)))
    step = max((hi - lo) / (n - 1), 1e-9)
    sigma = max(range_sigma, 0.5 * step)       # levels never further apart than 2 sigma
    pos = np.clip((guide - lo) / step, 0.0, n - 1.0)     # the guide in level units
    wp = w * p
    est, den = np.zeros_like(p), np.zeros_like(p)
    ones = np.ones_like(p)
    # The interpolation weight and the masked estimate with OpenCV: numpy 1.17's maximum
    # and where cost 0.3 ms more per frame (the same values).
    with np.errstate(divide='ignore', invalid='ignore'):
        for i in range(n):
            kr = cv2.exp((guide - (lo + i * step)) ** 2 * (-0.5 / (sigma * sigma)))   # range
            num_i, den_i = _box(wp * kr, radius), _box(w * kr, radius)
            # max(0, 1 - |pos - i|): the linear interpolation weight of level i
            t = cv2.max(cv2.subtract(1.0, cv2.absdiff(pos, float(i))), 0.0)
            # num / den where den > eps, else 1
            q = cv2.copyTo(num_i / den_i, cv2.compare(den_i, _EPS, cv2.CMP_GT), ones.copy())
            est += t * q
            den += t * den_i
    return est, den


def _coarse(x, factor):
    """Heavy smoothing through a pyramid: area-downsample by ``factor``, box, upsample."""
    h, w = x.shape
    small = cv2.resize(x, (max(1, w // factor), max(1, h // factor)),
                       interpolation=cv2.INTER_AREA)
    small = _box(_box(small, 1), 1)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


class BilateralCorrection(object):
    """
    Sizes and temporal state of the local correction (see the module docstring).

    Sizes: the output ``shape`` (H, W); the statistics grid (every ``step``-th output pixel,
    ``stats_size`` (w, h)); the cells (``downsample`` output pixels, ``low_size`` (w, h)).
    """

    def __init__(self, height: int, width: int, downsample: int, radius_px: int):
        self.shape = (height, width)
        self.d = int(downsample)
        self.step = max(1, min(self.d // 2, height // 4, width // 4))  # every step-th pixel
        self.stats_size = (max(1, width // self.step), max(1, height // self.step))
        # At least 3 x 3 cells: OpenCV would read a plane of 4 or fewer values as a scalar.
        self.low_size = (max(3, int(np.ceil(width / float(self.d)))),
                         max(3, int(np.ceil(height / float(self.d)))))
        self.r = max(1, int(round(radius_px / float(self.d))))
        self.prev_inv = None        # [lh, lw] previous output inverse depth (cell means)
        self.prev_w = None          # [lh, lw] stereo precision the previous frame had
        self._maps = {}

    def reset(self) -> None:
        """Forget the temporal state."""
        self.prev_inv = None
        self.prev_w = None

    # ------------------------------------------------------------------ low resolution

    def stats(self, plane):
        """
        Return a plane at the statistics resolution.

        Output pixel (i, j) is the plane at the output pixel (step i, step j): a full-size
        plane is subsampled (nearest); a plane of another size (the mono at the network's
        size) is interpolated there (bilinear).
        """
        h, w = self.shape
        if plane.shape[:2] == (h, w):
            return cv2.resize(plane, self.stats_size, interpolation=cv2.INTER_NEAREST)
        key = plane.shape[:2]
        maps = self._maps.get(key)
        if maps is None:
            ph, pw = key
            sw, sh = self.stats_size
            xs = (np.arange(sw) * self.step + 0.5) * pw / float(w) - 0.5
            ys = (np.arange(sh) * self.step + 0.5) * ph / float(h) - 0.5
            mx, my = np.meshgrid(xs.astype(np.float32), ys.astype(np.float32))
            maps = self._maps[key] = (mx, my)
        return cv2.remap(plane, maps[0], maps[1], cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)

    def to_stats(self, low):
        """Bilinear upsampling of a cell map to the statistics resolution."""
        return cv2.resize(low, self.stats_size, interpolation=cv2.INTER_LINEAR)

    def to_low(self, x):
        """Area average of a statistics-size plane over the cells."""
        return cv2.resize(x, self.low_size, interpolation=cv2.INTER_AREA)

    def sample(self, mono_inv, stereo) -> Grid:
        """
        Return the frame on the statistics grid (:class:`Grid`).

        :param mono_inv: [h, w] float32 aligned mono inverse depth (0 sky, NaN unknown), at
            the output size or another (the network's).
        :param stereo: the stereo side, already on the grid: ``stereo_s`` (the stereo inverse
            depth, finite), ``trusted_s`` (uint8 255: trusted), ``image_s`` (the guide image
            or None) and ``guide_low`` (its intensity on the cells, ``range_guide_image``).
        """
        return Grid(self.stats(mono_inv), stereo.stereo_s, stereo.trusted_s, stereo.image_s,
                    stereo.guide_low)

    def range_guide_image(self, small):
        """Return the range guide of a statistics-grid image: its intensity 0..1 on the cells."""
        gray = small if small.ndim == 2 else cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        return self.to_low(gray.astype(np.float32) * (1.0 / 255.0))

    def cell_means(self, grid: Grid, sigma_inv, band, rho=0.01) -> CellTargets:
        """
        Per-cell target ratio and precision, mean mono inverse depth, bends and range guide.

        :param grid: the frame on the statistics grid (``sample``).
        :param sigma_inv: stereo inverse-depth noise (1 sigma).
        :param band: relative band of gross stereo outliers against the mono.
        :param rho: the mono's relative pixel noise.
        """
        ya = cv2.patchNaNs(grid.mono_inv.copy(), 0.0)  # [sh, sw] float32 1/m; unknown: no target
        ys = grid.stereo_inv
        # |ys - ya| <= band ya + 4 sigma: gross outliers out; 0 (untrusted) falls out too.
        tol = cv2.addWeighted(ya, band, ya, 0.0, 4.0 * sigma_inv)
        lo = cv2.subtract(ya, tol)
        hi = cv2.add(ya, tol)
        ok = cv2.compare(ys, lo, cv2.CMP_GE) & cv2.compare(ys, hi, cv2.CMP_LE) & \
            cv2.compare(ys, 0.0, cv2.CMP_GT) & grid.trusted   # [sh, sw] uint8 255: usable
        # Where the mono bends (|Laplacian| of inverse depth, 0 on any plane) its detail loss
        # makes pixel errors: their variance is larger, and they do not inform the target
        # (the whole ramp of an edge: dilated).
        lap = cv2.Laplacian(ya, cv2.CV_32F, ksize=1)
        bend = cv2.divide(cv2.absdiff(lap, 0.0), cv2.max(ya, 1e-9), scale=0.25)
        cv2.min(bend, 1.0, dst=bend)
        bend_var = self.to_low(cv2.multiply(bend, bend, scale=EDGE_GAIN * EDGE_GAIN))
        ok &= cv2.compare(cv2.dilate(bend, np.ones((3, 3), np.uint8)), BEND_MAX, cv2.CMP_LE)
        p, c, sya = self._ratio(ok, ys, ya)
        # Second pass: stereo further than 3 sigma (its noise and the mono's relative
        # ``rho``) from the first pass's smooth estimate is left out (outliers in the band).
        smooth = cv2.resize(_box(p, 1), self.stats_size, interpolation=cv2.INTER_LINEAR)
        dev = cv2.absdiff(ys, cv2.multiply(ya, smooth))
        tol = cv2.addWeighted(ya, 3.0 * rho, ya, 0.0, 3.0 * sigma_inv)
        p, c, sya = self._ratio(ok & cv2.compare(dev, tol, cv2.CMP_LE), ys, ya)
        ya_low = self.to_low(ya)
        n_cell = (self.d / float(self.step)) ** 2       # statistics samples per cell
        with np.errstate(invalid='ignore', divide='ignore'):
            ybar = sya / cv2.max(c, _EPS)
            # Correlated stereo noise: about a quarter of the samples are independent; 1 %
            # (the mono's pixel noise and model error of a cell) does not average out.
            n_eff = cv2.max(c * n_cell / 4.0, 1.0)
            var = sigma_inv ** 2 / cv2.max(ybar * ybar, _EPS) / n_eff + 1e-4
            # (var is float64 under numpy 2's promotion of sigma_inv, float32 under 1.17's.)
            w = (1.0 / var).astype(np.float32)
            w[(c <= 0) | (sya <= _EPS)] = 0.0
        if grid.image_guide is not None:
            guide, range_sigma = grid.image_guide, RANGE_SIGMA_IMAGE
        else:
            guide, range_sigma = self._range_guide(grid.image, ya_low)
        return CellTargets(p, w, ya_low, bend_var, guide, range_sigma)

    def _ratio(self, ok, ys, ya):
        """Cell ratio of the sums of stereo and mono inverse depth over ``ok``; counts; sums."""
        # [sh, sw] 1: usable. Through uint8 0/1: numpy 1.17 converts bool to float 16x slower
        # (0.2 ms a call).
        mf = cv2.min(ok, 1).astype(np.float32)
        c = self.to_low(mf)
        sys_ = self.to_low(ys * mf)
        sya = self.to_low(ya * mf)
        with np.errstate(invalid='ignore', divide='ignore'):
            # sys / sya where sya > eps, else 1 (np.where's values, faster on numpy 1.17)
            p = cv2.copyTo(sys_ / sya, cv2.compare(sya, _EPS, cv2.CMP_GT), np.ones_like(sya))
        return p, c, sya

    def _range_guide(self, small, ya_low):
        """(guide, range sigma) at low resolution: intensity 0..1, or log inverse depth."""
        if small is None:
            return np.log(np.maximum(ya_low, 1e-6)).astype(np.float32), RANGE_SIGMA_DEPTH
        return self.range_guide_image(small), RANGE_SIGMA_IMAGE

    def compute(self, targets: CellTargets, max_correction: float,
                temporal_alpha: float) -> Correction:
        """Spread the targets into the factor map (bounded) and its support."""
        p, w = self._temporal(targets, temporal_alpha, max_correction)
        q, den = bilateral_nc(p, w, targets.guide, self.r, targets.range_sigma)
        pos = w[w > 0]
        w_typ = float(median(pos)) if pos.size else 1.0
        wc = _coarse(w, 2 * self.r)
        pc = _coarse(w * p, 2 * self.r) / cv2.max(wc, _EPS)
        prior = 0.02 * w_typ
        fallback = (wc * pc + prior) / (wc + prior)
        # Support from the information in the window (its sum, not its mean): two cells of
        # typical precision on the same surface are as good as the fallback.
        info = den * float((2 * self.r + 1) ** 2)
        lam = info / (info + 2.0 * w_typ)
        q = lam * q + (1.0 - lam) * fallback
        factor = np.clip(q, math.exp(-max_correction), math.exp(max_correction))
        return Correction(factor.astype(np.float32), lam.astype(np.float32), w)

    def _temporal(self, targets, alpha, max_correction):
        """Combine this frame's target with the previous output's where they agree."""
        p, w = targets.ratio, targets.weight
        if self.prev_inv is None or alpha >= 1.0 or self.prev_inv.shape != p.shape:
            return p, w
        ya_low = targets.mono_inv
        with np.errstate(invalid='ignore', divide='ignore'):
            pp = np.where(ya_low > _EPS, self.prev_inv / np.maximum(ya_low, _EPS), np.nan)
            wp = (1.0 - alpha) * self.prev_w
            var = 1.0 / np.maximum(w, _EPS) + 1.0 / np.maximum(wp, _EPS)
            agree_stereo = (w > 0) & (np.abs(pp - p) <= 3.0 * np.sqrt(var))
            agree_mono = (w <= 0) & (np.abs(np.log(pp)) <= max_correction)
            use = np.isfinite(pp) & (wp > 0) & (agree_stereo | agree_mono)
        wp = np.where(use, wp, 0.0).astype(np.float32)
        wt = w + wp
        pt = np.where(wt > 0, (w * p + wp * np.where(use, pp, 0.0)) / np.maximum(wt, _EPS),
                      p).astype(np.float32)
        # The weight is this frame's alone: the previous output's information is not
        # accumulated over frames (content moves; an old estimate must not linger in holes).
        return pt, wt.astype(np.float32)

    def remember(self, targets: CellTargets, correction: Correction, held: bool = False) -> None:
        """
        Keep this frame's corrected inverse depth per cell and its stereo precision.

        A held frame (no usable stereo of its own) passes on the precision it took from the
        previous output, times ``1 - alpha`` (so it fades over held frames): a run of held
        frames keeps the last stereo's local correction instead of losing it after one.
        """
        self.prev_inv = (targets.mono_inv * correction.factor).astype(np.float32)
        self.prev_w = correction.weight if held else targets.weight

    # ------------------------------------------------------------------ full resolution

    def apply(self, mono_inv: np.ndarray, correction: Correction,
              out: Optional[np.ndarray] = None) -> np.ndarray:
        """
        Return ``mono_inv`` times the factor, upsampled bilinearly to its size.

        In ``out`` (float32, ``mono_inv``'s shape) when given, else in a new array.
        """
        h, w = mono_inv.shape
        full = cv2.resize(correction.factor, (w, h), dst=out, interpolation=cv2.INTER_LINEAR)
        return cv2.multiply(mono_inv, full, dst=full)

    def upsample(self, low: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Bilinear upsampling of a low-resolution map to the output size."""
        h, w = self.shape
        return cv2.resize(low, (w, h), dst=out, interpolation=cv2.INTER_LINEAR)


__all__ = ['BilateralCorrection', 'CellTargets', 'Correction', 'Grid', 'bilateral_nc']

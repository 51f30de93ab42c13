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

Temporal filter (metric space): the previous output's inverse depth per cell is a second
observation of the same target (``p_prev = prev_inv / mono_inv``), weighted by
``1 - temporal_alpha`` times the stereo precision the previous frame had there (not
accumulated over frames), and only where it agrees with this frame's stereo (or, where this
frame has none, with its aligned mono within ``max_correction``): content that moved or
changed is not smoothed.
"""
from __future__ import annotations


import cv2
import numpy as np

_EPS = 1e-12
EDGE_GAIN = 0.85     # the mono's relative error at a bend, per unit of relative bend
BEND_MAX = 0.03      # stereo where the mono bends more than this is not used as a target
RANGE_SIGMA_DEPTH = 0.15     # range kernel on log inverse depth
RANGE_SIGMA_IMAGE = 0.08     # range kernel on intensity (0..1)


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
    g_ok = guide[ok]
    lo, hi = float(g_ok.min()), float(g_ok.max())
    n = int(min(max_levels, max(2, np.ceil((hi - lo) / range_sigma) + 1)))
    step = max((hi - lo) / (n - 1), 1e-9)
    sigma = max(range_sigma, 0.5 * step)       # levels never further apart than 2 sigma
    # All levels at once, stacked on a leading axis (the same float32 operations, element
    # for element, as level by level; a few calls instead of twenty per level). Clipping
    # by cv2.max / cv2.min: numpy 1.17's maximum and clip are 5x slower (no NaN here).
    h, w_ = p.shape
    levels = np.array([lo + i * step for i in range(n)], np.float32).reshape(n, 1, 1)
    kr = np.subtract(guide, levels)
    flat = kr.reshape(n * h, w_)                # a 2-D view for OpenCV
    np.square(kr, out=kr)
    kr *= np.float32(-0.5 / (sigma * sigma))
    cv2.exp(flat, dst=flat)
    num = np.multiply(kr, w * p)
    den = np.multiply(kr, w, out=kr)
    for i in range(n):
        _box_into(num[i], radius)
        _box_into(den[i], radius)
    pos = cv2.min(cv2.max((guide - lo) / step, 0.0), n - 1.0)
    t = np.subtract(pos, np.arange(n, dtype=np.float32).reshape(n, 1, 1))
    np.abs(t, out=t)
    np.subtract(np.float32(1.0), t, out=t)
    cv2.max(t.reshape(n * h, w_), 0.0, dst=t.reshape(n * h, w_))   # interpolation weights
    ratio = cv2.max(flat, _EPS).reshape(n, h, w_)
    np.divide(num, ratio, out=ratio)
    ratio[den <= _EPS] = 1.0
    ratio *= t
    den *= t
    # Summed level by level, in order (the rounding of accumulating them one by one).
    est, wsum = ratio[0], den[0]
    for i in range(1, n):
        est += ratio[i]
        wsum += den[i]
    return est, wsum


def _box_into(x, r):
    k = 2 * r + 1
    cv2.boxFilter(x, cv2.CV_32F, (k, k), dst=x, normalize=True, borderType=cv2.BORDER_REFLECT)


def _coarse(x, factor):
    """Heavy smoothing through a pyramid: area-downsample by ``factor``, box, upsample."""
    h, w = x.shape
    small = cv2.resize(x, (max(1, w // factor), max(1, h // factor)),
                       interpolation=cv2.INTER_AREA)
    small = _box(_box(small, 1), 1)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


class BilateralCorrection(object):
    """
    Per-shape state and buffers of the local correction (see the module docstring).

    ``cell_means(...)`` builds the low-resolution target, ``compute(...)`` the factor map,
    ``apply(mono_inv, out)`` multiplies its bilinear upsampling onto ``mono_inv``.
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
        lw, lh = self.low_size
        self.factor = np.ones((lh, lw), np.float32)
        self.support = np.zeros((lh, lw), np.float32)    # 0..1: local stereo support
        self.local_var = np.zeros((lh, lw), np.float32)  # mono variance from its bends
        self.cell_w = np.zeros((lh, lw), np.float32)
        self.prev_inv = None        # [lh, lw] previous output inverse depth (cell means)
        self.prev_w = None          # [lh, lw] stereo precision the previous frame had
        self.full = np.empty((height, width), np.float32)
        self.valid = False
        self._kernel = np.ones((3, 3), np.uint8)
        self._maps = {}
        self._buffers = {}

    def reset(self) -> None:
        """Forget the temporal state."""
        self.prev_inv = None
        self.prev_w = None
        self.valid = False

    # ------------------------------------------------------------------ low resolution

    def stats(self, plane, key=None):
        """
        Return a plane at the statistics resolution.

        Output pixel (i, j) is the plane at the output
        pixel (step i, step j). A full-size plane is subsampled (nearest, a copy); a plane of
        another size (the mono at the network's size) is interpolated there (bilinear).

        ``key``: a full-size single-channel plane is copied into a buffer kept under this
        name (overwritten by the next call with the same key), not a new array.
        """
        h, w = self.shape
        if plane.shape[:2] == (h, w):
            if self.step == 1:
                return plane.copy()
            s = self.step
            if key is not None and plane.ndim == 2 and h % s == 0 and w % s == 0:
                # The nearest resize by an integer factor is the strided view; copied into a
                # kept buffer it is several times faster (no fresh pages, no resize setup).
                out = self._buffers.get(key)
                if out is None or out.dtype != plane.dtype:
                    sw, sh = self.stats_size
                    out = self._buffers[key] = np.empty((sh, sw), plane.dtype)
                np.copyto(out, plane[::s, ::s])
                return out
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

    def _to_low(self, x):
        return cv2.resize(x, self.low_size, interpolation=cv2.INTER_AREA)

    def cell_means(self, mono_inv, stereo_inv, image, sigma_inv, band, rho=0.01,
                   trusted=None):
        """
        Per-cell target ratio and precision, mean mono inverse depth, and the range guide.

        :param mono_inv: [H, W] float32 aligned mono inverse depth (0 sky, NaN unknown).
        :param stereo_inv: [H, W] float32 stereo inverse depth, 0 where not trusted ...
        :param trusted: ... and, when given, where this [H, W] uint8 mask (0 or 255) is 0.
        :param image: optional [H, W] or [H, W, 3] uint8 guide image.
        :param sigma_inv: stereo inverse-depth noise (1 sigma).
        :param band: relative band of gross stereo outliers against the mono.
        :param rho: the mono's relative pixel noise.
        """
        ya = self.stats(mono_inv)
        ys = self.stats(stereo_inv, 'stereo')
        cv2.patchNaNs(ya, 0.0)                           # unknown mono: no target
        # |ys - ya| <= band ya + 4 sigma: gross outliers out; 0 (untrusted) falls out too.
        tol = cv2.addWeighted(ya, band, ya, 0.0, 4.0 * sigma_inv)
        lo = cv2.subtract(ya, tol)
        hi = cv2.add(ya, tol)
        ok = cv2.compare(ys, lo, cv2.CMP_GE) & cv2.compare(ys, hi, cv2.CMP_LE) & \
            cv2.compare(ys, 0.0, cv2.CMP_GT)
        if trusted is not None:
            # Every use of ys below is masked by ok: as good as ys = 0 there.
            ok &= self.stats(trusted, 'trusted')
        # Where the mono bends (|Laplacian| of inverse depth, 0 on any plane) its detail loss
        # makes pixel errors: their variance is larger, and they do not inform the target
        # (the whole ramp of an edge: dilated).
        lap = cv2.Laplacian(ya, cv2.CV_32F, ksize=1)
        bend = cv2.divide(cv2.absdiff(lap, 0.0), cv2.max(ya, 1e-9), scale=0.25)
        cv2.min(bend, 1.0, dst=bend)
        self.local_var = self._to_low(cv2.multiply(bend, bend, scale=EDGE_GAIN * EDGE_GAIN))
        ok &= cv2.compare(cv2.dilate(bend, self._kernel), BEND_MAX, cv2.CMP_LE)
        p, c, sya = self._ratio(ok, ys, ya)
        # Second pass: stereo further than 3 sigma (its noise and the mono's relative
        # ``rho``) from the first pass's smooth estimate is left out (outliers in the band).
        smooth = cv2.resize(_box(p, 1), self.stats_size, interpolation=cv2.INTER_LINEAR)
        dev = cv2.absdiff(ys, cv2.multiply(ya, smooth))
        tol = cv2.addWeighted(ya, 3.0 * rho, ya, 0.0, 3.0 * sigma_inv)
        p, c, sya = self._ratio(ok & cv2.compare(dev, tol, cv2.CMP_LE), ys, ya)
        ya_low = self._to_low(ya)
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
        return p, w, ya_low, self._range_guide(image, ya_low)

    def _ratio(self, ok, ys, ya):
        """Cell ratio of the sums of stereo and mono inverse depth over ``ok``; counts; sums."""
        mf = cv2.threshold(ok, 0, 1, cv2.THRESH_BINARY)[1].astype(np.float32)
        c = self._to_low(mf)
        sys_ = self._to_low(cv2.multiply(ys, mf))
        sya = self._to_low(cv2.multiply(ya, mf))
        p = cv2.max(sya, _EPS)
        np.divide(sys_, p, out=p)
        p[sya <= _EPS] = 1.0
        return p, c, sya

    def _range_guide(self, image, ya_low):
        """(guide, range sigma) at low resolution: intensity 0..1, or log inverse depth."""
        if image is None:
            return np.log(np.maximum(ya_low, 1e-6)).astype(np.float32), RANGE_SIGMA_DEPTH
        small = self.stats(image)
        gray = small if small.ndim == 2 else cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
        return self._to_low(gray.astype(np.float32) * np.float32(1.0 / 255.0)), \
            RANGE_SIGMA_IMAGE

    def compute(self, p, w, ya_low, guide, max_correction: float,
                temporal_alpha: float) -> None:
        """Return the low-resolution factor map, its support and the cells' weights."""
        self.cell_w = w      # this frame's stereo precision: the next frame's prior weight
        p, w = self._temporal(p, w, ya_low, temporal_alpha, max_correction)
        g, range_sigma = guide
        q, den = bilateral_nc(p, w, g, self.r, range_sigma)
        pos = w[w > 0]
        w_typ = float(np.median(pos)) if pos.size else 1.0
        wc = _coarse(w, 2 * self.r)
        pc = _coarse(w * p, 2 * self.r) / cv2.max(wc, _EPS)
        prior = 0.02 * w_typ
        fallback = (wc * pc + prior) / (wc + prior)
        # Support from the information in the window (its sum, not its mean): two cells of
        # typical precision on the same surface are as good as the fallback.
        info = den * float((2 * self.r + 1) ** 2)
        lam = info / (info + 2.0 * w_typ)
        q = lam * q + (1.0 - lam) * fallback
        # = np.clip(q, ...).astype(np.float32) (q float32, no NaN), several times faster.
        self.factor = cv2.min(cv2.max(q.astype(np.float32, copy=False),
                                      float(np.exp(-max_correction))),
                              float(np.exp(max_correction)))
        self.support = lam.astype(np.float32)
        self.valid = True

    def _temporal(self, p, w, ya_low, alpha, max_correction):
        """Combine this frame's target with the previous output's where they agree."""
        if self.prev_inv is None or alpha >= 1.0 or self.prev_inv.shape != p.shape:
            return p, w
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

    def remember(self, ya_low: np.ndarray) -> None:
        """Keep this frame's corrected inverse depth per cell and its stereo precision."""
        self.prev_inv = (ya_low * self.factor).astype(np.float32)
        self.prev_w = self.cell_w

    # ------------------------------------------------------------------ full resolution

    def apply(self, mono_inv: np.ndarray) -> np.ndarray:
        """``mono_inv * factor``, the factor upsampled bilinearly to ``mono_inv``'s size."""
        h, w = mono_inv.shape
        if mono_inv.shape == self.shape:
            full = self.full
        else:
            full = None
        full = cv2.resize(self.factor, (w, h), dst=full, interpolation=cv2.INTER_LINEAR)
        return cv2.multiply(mono_inv, full, dst=full)

    def upsample(self, low: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Bilinear upsampling of a low-resolution map to the output size."""
        h, w = self.shape
        return cv2.resize(low, (w, h), dst=out, interpolation=cv2.INTER_LINEAR)


__all__ = ['BilateralCorrection', 'bilateral_nc']

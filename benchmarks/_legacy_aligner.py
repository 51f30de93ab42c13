"""
FROZEN copy of depth_ros/core/alignment.py as of commit d8d36e1 (before its rework).

benchmarks/fusion.py measures it as the "current MetricAligner" baseline, so that the baseline
stays measurable after the rework. Do not edit or improve it: its job is to stay the same.
Only the module docstring and the class alias at the end were added.

Original module docstring:
Metric alignment of relative (affine-invariant) depth to stereo depth, and fusion.

``MetricAligner.update(relative, stereo_depth, confidence)`` fits the affine that maps the
relative prediction to metric inverse depth, robustly (RANSAC then IRLS with Tukey weights) on a
fixed subsample of trustworthy stereo pixels, filters it over time, adds a smooth spatially
varying correction, and fuses: stereo where it is trustworthy, aligned mono elsewhere.

Conventions (see docs/core.md):

* ``relative_kind='disparity'`` (Depth Anything V2): ``1/depth = scale * relative + shift``.
* ``relative_kind='depth'`` (Marigold, 0 near, 1 far): ``depth = scale * relative + shift``.
  The residuals of the fit are still weighted as inverse-depth residuals (first order:
  ``d(1/z) = dz / z**2``), so both kinds are fitted in inverse-depth space.
* The spatial correction multiplies the aligned inverse depth by a smooth factor map
  ``c(u, v)`` built from per-cell medians of ``log(stereo_inv / aligned_inv)``.
* Output depth is float32 metres: NaN invalid, +inf "too far" (REP 117: sky and anything the
  fit places beyond ``max_output_depth``).
"""
from __future__ import annotations

from dataclasses import dataclass
import logging
from typing import Dict, Optional, Tuple

import cv2
from depth_ros.core.checks import check_image, check_same_size
import numpy as np

LOG = logging.getLogger('depth_ros.alignment')

RELATIVE_KINDS = ('disparity', 'depth')
STATUSES = ('ok', 'held', 'no_fit')
_FLOATS = (np.float32, np.float64, np.float16)
_TUKEY_C = 4.685      # 95 % efficiency under Gaussian noise
_MAD_TO_SIGMA = 1.4826


@dataclass
class AlignedDepth:
    """
    Result of one ``MetricAligner.update``.

    ``depth`` [H, W] float32 metres (NaN invalid, +inf too far); ``scale``/``shift`` of the
    global affine (NaN when no fit exists); ``inlier_ratio`` of the valid fit samples;
    ``valid_fraction`` of fit samples whose stereo passed the trust tests; ``uncertainty``
    [H, W] float32 metres (1-sigma, first order) or None; ``status`` 'ok', 'held' (this frame
    could not be fitted or its fit was rejected, the last good fit was reused) or 'no_fit'.
    """

    depth: np.ndarray
    scale: float
    shift: float
    inlier_ratio: float
    valid_fraction: float
    uncertainty: Optional[np.ndarray]
    status: str
    reason: str = ''           # why the status is not 'ok' ('' when it is)
    stereo_fraction: float = 0.0   # fraction of output pixels that took the stereo value

    def to_dict(self) -> Dict[str, object]:
        """Return the scalar fields, JSON-ready (NaN becomes None)."""
        def num(v):
            v = float(v)
            return v if np.isfinite(v) else None
        return {'scale': num(self.scale), 'shift': num(self.shift),
                'inlier_ratio': num(self.inlier_ratio),
                'valid_fraction': num(self.valid_fraction), 'status': self.status,
                'reason': self.reason, 'stereo_fraction': num(self.stereo_fraction)}


def _check_number(name, value, low=None, high=None, low_open=False, integer=False,
                  allow_none=False):
    if value is None and allow_none:
        return None
    ok = not isinstance(value, bool) and isinstance(
        value, (int, np.integer) if integer else (int, float, np.integer, np.floating))
    if ok:
        ok = bool(np.isfinite(value))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        rng = '{}{}, {}]'.format('(' if low_open else '[', low, high)
        raise ValueError('option `{}` must be {} in {}, got {!r}'.format(
            name, 'an integer' if integer else 'a finite number', rng, value))
    return int(value) if integer else float(value)


class MetricAligner(object):
    """
    Robust, temporally filtered metric alignment of relative depth to stereo depth.

    All options are keyword arguments, validated here (ValueError names option and value):

    :param relative_kind: 'disparity' (DA-V2, default) or 'depth' (Marigold, 0 near 1 far).
    :param min_depth, max_depth: stereo range (m) trusted for the fit and the fusion.
    :param confidence_threshold: ZED confidence (1..100, larger = less reliable) above which a
        stereo pixel is not trusted. 100 trusts every pixel.
    :param max_output_depth: plausible range (m); aligned mono beyond it is +inf (too far).
    :param sky_fraction: 'disparity' only: relative values at or below this fraction of the
        frame's 99th-percentile relative value are sky, +inf whatever the fit's shift (DA-V2
        predicts about 0 for the sky; a positive fitted shift would otherwise map it to a finite
        1/shift wall). 0 disables the rule.
    :param fit_samples: size of the fixed pixel subsample the fit uses.
    :param min_valid_samples: fewer valid stereo samples than this -> 'held' / 'no_fit'.
    :param ransac_iterations: number of two-point hypotheses.
    :param inlier_threshold: relative inverse-depth error below which a sample is an inlier.
    :param min_inlier_ratio: a fit with fewer inliers (of the valid samples) is rejected.
    :param irls_iterations: Tukey-weighted least-squares refinements after RANSAC.
    :param temporal_alpha: EMA weight of the new fit (1.0 disables filtering).
    :param jump_threshold: a new fit whose median relative change of predicted depth against
        the filtered fit exceeds this is rejected ('held') ...
    :param jump_frames: ... unless it persists this many consecutive frames (scene change).
    :param grid: (rows, cols) of the spatial correction grid; (0, 0) disables it.
    :param grid_min_samples: inlier samples a cell needs to carry full weight.
    :param max_correction: bound on |log| of the spatial correction factor.
    :param consistency: stereo that differs from the aligned mono by more than this relative
        factor is treated as an outlier and replaced by mono; None disables the test.
    :param consistency_min_inliers: the consistency test runs only while the fit explains at
        least this fraction of the stereo samples (inlier ratio): a mono prediction that
        stereo does not confirm (a poor or untrained model, an unusual scene) never vetoes
        trusted stereo.
    :param fuse_stereo: if False the output is aligned mono only.
    :param compute_uncertainty: whether to fill ``AlignedDepth.uncertainty``.
    :param seed: RANDOM seed of the RANSAC sampler and the subsample (reproducible runs).
    """

    def __init__(self, relative_kind: str = 'disparity', min_depth: float = 0.3,
                 max_depth: float = 20.0, confidence_threshold: float = 50.0,
                 max_output_depth: float = 100.0, sky_fraction: float = 0.02,
                 fit_samples: int = 4096,
                 min_valid_samples: int = 64, ransac_iterations: int = 64,
                 inlier_threshold: float = 0.1, min_inlier_ratio: float = 0.3,
                 irls_iterations: int = 3, temporal_alpha: float = 0.3,
                 jump_threshold: float = 0.25, jump_frames: int = 3,
                 grid: Tuple[int, int] = (6, 8), grid_min_samples: int = 8,
                 max_correction: float = 0.5, consistency: Optional[float] = 0.15,
                 consistency_min_inliers: float = 0.6, fuse_stereo: bool = True,
                 compute_uncertainty: bool = True, seed: int = 0, **unknown):
        if unknown:
            raise ValueError('unknown MetricAligner option(s) {}; see help(MetricAligner)'.format(
                ', '.join('`{}`'.format(k) for k in sorted(unknown))))
        if relative_kind not in RELATIVE_KINDS:
            raise ValueError('option `relative_kind` must be one of {}, got {!r}'.format(
                RELATIVE_KINDS, relative_kind))
        self.relative_kind = relative_kind
        self.min_depth = _check_number('min_depth', min_depth, 0.0, None, low_open=True)
        self.max_depth = _check_number('max_depth', max_depth, 0.0, None, low_open=True)
        if self.max_depth <= self.min_depth:
            raise ValueError('option `max_depth` ({!r}) must be > `min_depth` ({!r})'.format(
                max_depth, min_depth))
        self.confidence_threshold = _check_number('confidence_threshold',
                                                  confidence_threshold, 0.0, 100.0)
        self.max_output_depth = _check_number('max_output_depth', max_output_depth, 0.0,
                                              None, low_open=True)
        self.sky_fraction = _check_number('sky_fraction', sky_fraction, 0.0, 0.5)
        self.fit_samples = _check_number('fit_samples', fit_samples, 16, 10 ** 7,
                                         integer=True)
        self.min_valid_samples = _check_number('min_valid_samples', min_valid_samples, 2,
                                               10 ** 7, integer=True)
        self.ransac_iterations = _check_number('ransac_iterations', ransac_iterations, 1,
                                               10 ** 5, integer=True)
        self.inlier_threshold = _check_number('inlier_threshold', inlier_threshold, 0.0, 10.0,
                                              low_open=True)
        self.min_inlier_ratio = _check_number('min_inlier_ratio', min_inlier_ratio, 0.0, 1.0)
        self.irls_iterations = _check_number('irls_iterations', irls_iterations, 0, 100,
                                             integer=True)
        self.temporal_alpha = _check_number('temporal_alpha', temporal_alpha, 0.0, 1.0,
                                            low_open=True)
        self.jump_threshold = _check_number('jump_threshold', jump_threshold, 0.0, None,
                                            low_open=True)
        self.jump_frames = _check_number('jump_frames', jump_frames, 1, 10 ** 6,
                                         integer=True)
        try:
            rows, cols = grid
        except (TypeError, ValueError):
            raise ValueError('option `grid` must be (rows, cols), got {!r}'.format(grid))
        for value in (rows, cols):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
                    or value < 0 or value > 256 or (value == 0) != (rows == 0 and cols == 0):
                raise ValueError('option `grid` must be two integers in [1, 256] '
                                 '(or (0, 0) to disable), got {!r}'.format(grid))
        self.grid = (int(rows), int(cols))
        self.grid_min_samples = _check_number('grid_min_samples', grid_min_samples, 1,
                                              10 ** 6, integer=True)
        self.max_correction = _check_number('max_correction', max_correction, 0.0, 5.0)
        self.consistency = _check_number('consistency', consistency, 0.0, None,
                                         low_open=True, allow_none=True)
        self.consistency_min_inliers = _check_number(
            'consistency_min_inliers', consistency_min_inliers, 0.0, 1.0)
        for name, value in (('fuse_stereo', fuse_stereo),
                            ('compute_uncertainty', compute_uncertainty)):
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError('option `{}` must be a bool, got {!r}'.format(name, value))
        self.fuse_stereo = bool(fuse_stereo)
        self.compute_uncertainty = bool(compute_uncertainty)
        self.seed = _check_number('seed', seed, 0, 2 ** 32 - 1, integer=True)
        self._shape = None
        self._sky_threshold = None
        self._rel_invalid = None
        self.reset()

    # ------------------------------------------------------------------ state

    def reset(self) -> None:
        """Forget the fit history (next update starts from 'no_fit')."""
        self._rng = np.random.RandomState(self.seed)
        self.scale = float('nan')      # filtered global affine in use
        self.shift = float('nan')
        self.sigma_inv = float('nan')  # robust inverse-depth residual spread of the last fit
        self.fit_inlier_ratio = float('nan')  # inlier ratio of the last accepted fit
        self._log_grid = None          # [rows, cols] float32 filtered log correction
        self._pending = 0              # consecutive frames whose fit jumped
        self.frames = 0

    @property
    def has_fit(self) -> bool:
        """Whether a fit exists (after the first successful frame)."""
        return bool(np.isfinite(self.scale))

    def _prepare_shape(self, height: int, width: int) -> None:
        """Per-shape subsample indices, grid cells and scratch buffers (allocated once)."""
        if self._shape == (height, width):
            return
        self._shape = (height, width)
        n = height * width
        # A regular lattice read through strided views: cheap to gather (no cache-missing
        # random reads of full frames) and every grid cell gets samples.
        step = max(1.0, np.sqrt(n / float(self.fit_samples)))
        sy = max(1, int(round(step)))
        sx = max(1, int(round(n / float(self.fit_samples) / sy)))
        self._lattice = (slice(sy // 2, None, sy), slice(sx // 2, None, sx))
        ys = np.arange(height)[self._lattice[0]]
        xs = np.arange(width)[self._lattice[1]]
        yy, xx = np.meshgrid(ys, xs, indexing='ij')
        self._rows = yy.ravel()
        self._cols = xx.ravel()
        rows, cols = self.grid
        if rows:
            self._cells = (self._rows * rows // height) * cols + self._cols * cols // width
        self._buf = np.empty((height, width), np.float32)
        self._buf2 = np.empty((height, width), np.float32)
        self._rel = np.empty((height, width), np.float32)
        self._mask = np.empty((height, width), np.uint8)
        self._mask2 = np.empty((height, width), np.uint8)
        self._log_grid = None

    # ------------------------------------------------------------------ checks

    def _check_inputs(self, relative, stereo_depth, confidence):
        check_image('relative_disparity', relative, dtypes=_FLOATS)
        check_image('stereo_depth', stereo_depth, dtypes=_FLOATS)
        if confidence is not None:
            check_image('confidence', confidence, dtypes=_FLOATS + (np.uint8,))
            check_same_size('confidence', confidence, 'stereo_depth', stereo_depth)
        h, w = stereo_depth.shape
        hr, wr = relative.shape
        # Resizing between very different aspect ratios would silently misalign pixels.
        if abs(float(wr) / hr - float(w) / h) > 0.02 * float(w) / h:
            raise ValueError(
                '`relative_disparity` has size {} but `stereo_depth` has size {}; their aspect '
                'ratios must match (the relative map is resized to the stereo size)'.format(
                    relative.shape, stereo_depth.shape))

    # ------------------------------------------------------------------ fit

    def _fit(self, r, y, base_w):
        """RANSAC + IRLS of ``y ~ s*r + t`` (r, y float64 samples). Returns a dict or None."""
        n = r.size
        ref = y if self.relative_kind == 'disparity' else 1.0 / y   # inverse depth
        # Two-point hypotheses, vectorised. Score on at most 1024 samples (speed).
        m = self.ransac_iterations
        i = self._rng.randint(0, n, m)
        j = self._rng.randint(0, n, m)
        dr = r[i] - r[j]
        with np.errstate(divide='ignore', invalid='ignore'):
            s = (y[i] - y[j]) / dr
            t = y[i] - s * r[i]
            good = np.isfinite(s) & (s > 0) & (np.abs(dr) > 1e-12)
        if not good.any():
            return None
        s, t = s[good], t[good]
        sub = slice(None) if n <= 1024 else self._rng.randint(0, n, 1024)
        rs, ys = r[sub], y[sub]
        # Inlier: relative error of y below the threshold (y = inverse depth or depth).
        res = np.abs(s[:, None] * rs[None, :] + t[:, None] - ys[None, :])
        counts = (res <= self.inlier_threshold * ys[None, :]).sum(axis=1)
        best = int(np.argmax(counts))
        s0, t0 = float(s[best]), float(t[best])
        inl = np.abs(s0 * r + t0 - y) <= self.inlier_threshold * y
        if inl.sum() < 2:
            return None
        # IRLS on the inverse-depth residual e = (s r + t - y) * sqrt(base_w).
        sq = np.sqrt(base_w)
        w = inl.astype(np.float64)
        sigma = float('nan')
        st = (s0, t0)
        for _ in range(self.irls_iterations + 1):
            st2 = _weighted_affine(r, y, w * base_w)
            if st2 is None or not st2[0] > 0:
                break
            st = st2
            e = (st[0] * r + st[1] - y) * sq
            sigma = _MAD_TO_SIGMA * float(np.median(np.abs(e[inl]))) if inl.any() else 0.0
            # Floor: a noise-free synthetic fit must not divide by zero.
            sigma = max(sigma, 1e-4 * float(np.median(ref)))
            u = e / (_TUKEY_C * sigma)
            w = np.where(np.abs(u) < 1.0, (1.0 - u * u) ** 2, 0.0)
            inl = np.abs(st[0] * r + st[1] - y) <= self.inlier_threshold * y
        return {'scale': st[0], 'shift': st[1], 'inliers': inl, 'sigma_inv': sigma}

    def _spatial(self, r, y, inliers, s, t, fresh):
        """Update the filtered log-correction grid from inlier samples."""
        rows, cols = self.grid
        pred = s * r + t
        with np.errstate(divide='ignore', invalid='ignore'):
            if self.relative_kind == 'disparity':
                lr = np.log(y / pred)          # log(stereo_inv / aligned_inv)
            else:
                lr = np.log(pred / y)          # same quantity from depths
        ok = inliers & np.isfinite(lr)
        cells = self._cells_valid[ok]
        lr = lr[ok]
        ncell = rows * cols
        med = np.zeros(ncell)
        cnt = np.bincount(cells, minlength=ncell).astype(np.float64)
        if lr.size:
            order = np.lexsort((lr, cells))
            sorted_lr = lr[order]
            starts = np.concatenate(([0], np.cumsum(cnt)[:-1])).astype(np.intp)
            has = cnt > 0
            lo = starts + ((cnt.astype(np.intp) - 1) // 2)
            hi = starts + (cnt.astype(np.intp) // 2)
            med[has] = 0.5 * (sorted_lr[lo[has]] + sorted_lr[hi[has]])
        weight = np.minimum(cnt / self.grid_min_samples, 1.0)
        # Normalised convolution: cells without support borrow from their neighbours; the
        # smoothing also keeps the correction low-frequency.
        num = _smooth3((weight * med).reshape(rows, cols))
        den = _smooth3(weight.reshape(rows, cols))
        grid = np.where(den > 1e-3, num / np.maximum(den, 1e-3), 0.0).astype(np.float32)
        # Shrink poorly supported cells toward "no correction".
        grid *= np.minimum(den / 0.5, 1.0)
        np.clip(grid, -self.max_correction, self.max_correction, out=grid)
        if self._log_grid is None or fresh:
            self._log_grid = grid
        else:
            a = self.temporal_alpha
            self._log_grid = ((1.0 - a) * self._log_grid + a * grid).astype(np.float32)

    # ------------------------------------------------------------------ update

    def update(self, relative_disparity: np.ndarray, stereo_depth: np.ndarray,  # noqa: C901
               confidence: Optional[np.ndarray] = None) -> AlignedDepth:
        """
        Align one frame. Returns a new AlignedDepth whose arrays the aligner never reuses.

        :param relative_disparity: [h, w] float relative prediction (kind per ``relative_kind``;
            the name follows the default kind), resized to the stereo size when different.
        :param stereo_depth: [H, W] float metres; NaN, +-inf and 0 are invalid.
        :param confidence: optional [H, W] ZED confidence, 1..100, larger = less reliable.
        """
        self._check_inputs(relative_disparity, stereo_depth, confidence)
        h, w = stereo_depth.shape
        self._prepare_shape(h, w)
        self.frames += 1
        if relative_disparity.shape != (h, w):
            rel = cv2.resize(relative_disparity.astype(np.float32, copy=False), (w, h),
                             dst=self._rel, interpolation=cv2.INTER_LINEAR)
        else:
            rel = relative_disparity.astype(np.float32, copy=False)
        self._rel_invalid = None
        # NaN and +-inf propagate into a double-precision sum (0.07 ms, against 0.6 ms for
        # cv2.checkRange at 1280x720); float32 values cannot overflow it.
        if not np.isfinite(cv2.sumElems(rel)[0]):
            # Rare: NaN or +-inf in the prediction. It is unknown there, so the output is NaN
            # (not depth 0 or +inf; OpenCV 4.5's threshold also turns NaN into 0).
            self._rel_invalid = ~np.isfinite(rel)
            rel = np.where(self._rel_invalid, np.float32(np.nan), rel).astype(np.float32)
        stereo = stereo_depth.astype(np.float32, copy=False)

        # ---- fit on the subsample; every non-finite input is masked out here.
        lat = self._lattice
        r = rel[lat].astype(np.float64).ravel()
        self._sky_threshold = None
        if self.relative_kind == 'disparity' and self.sky_fraction > 0:
            finite = r[np.isfinite(r)]
            if finite.size:
                self._sky_threshold = self.sky_fraction * float(np.percentile(finite, 99))
        d = stereo[lat].astype(np.float64).ravel()
        with np.errstate(invalid='ignore'):
            valid = np.isfinite(r) & (d >= self.min_depth) & (d <= self.max_depth)
            if confidence is not None:
                c = confidence[lat].astype(np.float64).ravel()
                valid &= c <= self.confidence_threshold   # NaN compares False
        n_samples = r.size
        n_valid = int(valid.sum())
        valid_fraction = n_valid / float(n_samples)
        r, d = r[valid], d[valid]
        if self.grid[0]:
            self._cells_valid = self._cells[valid]
        inlier_ratio = float('nan')
        status, reason = 'ok', ''
        fit = None
        if n_valid < self.min_valid_samples:
            reason = 'too few valid stereo samples ({} < {})'.format(
                n_valid, self.min_valid_samples)
        else:
            if self.relative_kind == 'disparity':
                y, base_w = 1.0 / d, np.ones_like(d)
            else:
                y, base_w = d, d ** -4.0
            fit = self._fit(r, y, base_w)
            if fit is None:
                reason = 'no consistent fit'
            else:
                inlier_ratio = float(fit['inliers'].mean())
                if inlier_ratio < self.min_inlier_ratio:
                    reason = 'inlier ratio {:.3f} < {}'.format(inlier_ratio,
                                                               self.min_inlier_ratio)
                    fit = None
        fresh = False
        if fit is not None:
            s_new, t_new = fit['scale'], fit['shift']
            if not self.has_fit:
                accept, fresh = True, True
            else:
                old = self.scale * r + self.shift
                new = s_new * r + t_new
                with np.errstate(divide='ignore', invalid='ignore'):
                    change = float(np.median(np.abs(new - old) / np.abs(old)))
                if not change <= self.jump_threshold:
                    self._pending += 1
                    accept = self._pending >= self.jump_frames
                    fresh = accept
                    if not accept:
                        reason = 'fit jumped by {:.3f} (> {}), frame {} of {}'.format(
                            change, self.jump_threshold, self._pending, self.jump_frames)
                else:
                    accept = True
            if accept:
                self._pending = 0
                if fresh:
                    self.scale, self.shift = s_new, t_new
                else:
                    a = self.temporal_alpha
                    self.scale = (1.0 - a) * self.scale + a * s_new
                    self.shift = (1.0 - a) * self.shift + a * t_new
                self.sigma_inv = fit['sigma_inv']
                self.fit_inlier_ratio = inlier_ratio
                if self.grid[0]:
                    self._spatial(r, y, fit['inliers'], self.scale, self.shift, fresh)
            else:
                fit = None
        if fit is None:
            status = 'held' if self.has_fit else 'no_fit'
            LOG.debug('frame %d: %s (%s)', self.frames, status, reason)

        depth, stereo_fraction = self._render(rel, stereo, confidence)
        uncertainty = None
        if self.compute_uncertainty and self.has_fit:
            uncertainty = cv2.multiply(depth, depth, scale=self.sigma_inv)
        return AlignedDepth(depth=depth, scale=float(self.scale), shift=float(self.shift),
                            inlier_ratio=inlier_ratio, valid_fraction=valid_fraction,
                            uncertainty=uncertainty, status=status, reason=reason,
                            stereo_fraction=stereo_fraction)

    def _render(self, rel, stereo, confidence):
        """
        Full-frame output: aligned mono (+inf too far), stereo where trusted.

        Few full-frame passes (about a dozen cv2 calls): this runs on every frame at the
        camera resolution on the Jetson's slow cores.
        """
        h, w = stereo.shape
        out = np.empty((h, w), np.float32)
        if self.has_fit:
            inv = self._mono(rel, out)
        else:
            out.fill(np.nan)
            inv = None
        if not self.fuse_stereo and self.has_fit:
            return out, 0.0
        trusted = cv2.inRange(stereo, self.min_depth, self.max_depth, dst=self._mask)
        if confidence is not None:
            conf = confidence.astype(np.float32, copy=False)
            ok = cv2.compare(conf, self.confidence_threshold, cv2.CMP_LE, dst=self._mask2)
            cv2.bitwise_and(trusted, ok, dst=trusted)      # NaN confidence compares false
        if self.has_fit and self.consistency is not None \
                and self.fit_inlier_ratio >= self.consistency_min_inliers:
            # Stereo that disagrees with the aligned mono is a gross outlier (edges,
            # reflections); where mono is +inf (inverse 0) or NaN the ratio fails too.
            if inv is not None:
                ratio = cv2.multiply(stereo, inv, dst=self._buf2)    # stereo / mono depth
            else:
                with np.errstate(divide='ignore', invalid='ignore'):
                    ratio = np.divide(stereo, out, out=self._buf2)
            lim = 1.0 + self.consistency
            ok = cv2.inRange(ratio, 1.0 / lim, lim, dst=self._mask2)
            cv2.bitwise_and(trusted, ok, dst=trusted)
        cv2.copyTo(stereo, trusted, out)
        frac = cv2.countNonZero(trusted) / float(h * w)
        return out, frac

    def _correction(self, h, w):
        """Return the smooth correction factor at full size (in ``self._buf2``), or None."""
        if not self.grid[0] or self._log_grid is None:
            return None
        factor = np.exp(self._log_grid).astype(np.float32)
        # Two bilinear steps: a direct 6x8 -> 1280x720 resize is about twice as slow, and
        # the result is as smooth.
        mid = cv2.resize(factor, (max(1, w // 8), max(1, h // 8)),
                         interpolation=cv2.INTER_LINEAR)
        return cv2.resize(mid, (w, h), dst=self._buf2, interpolation=cv2.INTER_LINEAR)

    def _mono(self, rel, out):
        """
        Aligned monocular depth into ``out``.

        Returns the aligned inverse depth buffer for 'disparity' (0 where +inf), else None.
        """
        h, w = rel.shape
        buf = self._buf
        affine = np.array([[self.scale, self.shift]], np.float64)
        cv2.transform(rel, affine, dst=buf)          # s * rel + t in one pass
        corr = self._correction(h, w)
        if self.relative_kind == 'disparity':
            if corr is not None:
                cv2.multiply(buf, corr, dst=buf)
            if self._sky_threshold is not None and self._sky_threshold > 0:
                # Sky (relative near 0) -> inverse depth 0; ``out`` is free scratch here.
                cv2.threshold(rel, self._sky_threshold, 1.0, cv2.THRESH_BINARY, dst=out)
                cv2.multiply(buf, out, dst=buf)
            # Inverse depth at or below 1/max_output_depth (sky) -> 0 -> 1/0 = +inf; NaN
            # stays NaN through both steps.
            cv2.threshold(buf, 1.0 / self.max_output_depth, 0.0, cv2.THRESH_TOZERO, dst=buf)
            with np.errstate(divide='ignore'):
                np.divide(np.float32(1.0), buf, out=out)
            if self._rel_invalid is not None:
                out[self._rel_invalid] = np.nan
                buf[self._rel_invalid] = np.nan
            return buf
        # 'depth': depth = (s r + t) / c. A non-positive predicted depth means the fit is
        # extrapolated past the near end: unknown, so NaN (not -inf, which claims a reading).
        with np.errstate(invalid='ignore', divide='ignore'):
            bad = buf <= 0
            if corr is not None:
                np.divide(buf, corr, out=out)
            else:
                out[...] = buf
            out[bad] = np.nan
            out[out > self.max_output_depth] = np.inf
            if self._rel_invalid is not None:
                out[self._rel_invalid] = np.nan
        return None


def _smooth3(a):
    """Separable [1, 2, 1] / 4 smoothing with replicated borders, for a tiny grid."""
    p = np.pad(a, 1, mode='edge')
    a = 0.25 * p[:-2] + 0.5 * p[1:-1] + 0.25 * p[2:]
    return 0.25 * a[:, :-2] + 0.5 * a[:, 1:-1] + 0.25 * a[:, 2:]


def _weighted_affine(r, y, w):
    """Closed-form weighted least squares of y ~ s*r + t; None when degenerate."""
    sw = w.sum()
    if not sw > 0:
        return None
    mr = (w * r).sum() / sw
    my = (w * y).sum() / sw
    dr = r - mr
    var = (w * dr * dr).sum()
    if not var > 0:
        return None
    s = (w * dr * (y - my)).sum() / var
    return float(s), float(my - s * mr)


LegacyMetricAligner = MetricAligner

__all__ = ['AlignedDepth', 'LegacyMetricAligner', 'MetricAligner', 'RELATIVE_KINDS']

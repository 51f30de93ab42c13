"""
Metric alignment of relative (affine-invariant) depth to stereo depth, and noise-aware fusion.

``MetricAligner.update(relative, stereo_depth, confidence, guide=..., camera=...)`` takes one
frame through numbered steps, in two sides: ``prepare(stereo_depth, confidence, guide, camera)``
(steps 1-4) needs only the stereo set and changes nothing in the aligner; ``finish(relative,
prepared)`` (steps 5-14) aligns the relative map to it. ``update`` is ``finish(relative,
prepare(...))``. The comments in ``prepare`` and ``finish`` carry the same numbers:

1. check the stereo inputs;
2. the stereo noise model, constant in inverse depth (``sigma_d / (f B)``);
3. the stereo and confidence as float32; the stereo in inverse depth and where it is trusted;
4. the stereo where the mono side reads it: on the fit lattice (its tests and noise gains,
   and the ground plane it sees, whose horizon bounds the sky and which bounds the far
   output in step 12: core/ground.py), on the
   statistics grid (inverse depth, trust, image, confidence) and on the cells (the range
   guide's intensity, the sky's colours and too-far stereo);
5. check the relative map against the stereo's size; as float32 (a non-finite value is
   unknown);
6. sample the relative map on the fit lattice: the fit samples and their noise, the sky
   (above the ground's horizon, when there is one: also in steps 8 and 9);
7. fit this frame's affine robustly (RANSAC, then Tukey IRLS; the sky as an infinite-depth
   anchor of the shift). A frame with too little stereo, or whose fit jumps against the
   previous metric output, is fitted to the previous output instead (status 'held'): no
   affine is carried from one frame to the next. Without a fit: the trusted stereo alone;
8. the aligned mono in inverse depth (the sky 0);
9. the local correction (core/bilateral_correction.py): a joint-bilateral normalised
   convolution of ``stereo_inv / mono_inv`` per cell, its range kernel on the image (or the
   mono), applied to the mono and resized to the output size; the sky's patches that the
   network gave a finite depth (core/sky.py) become 0;
10. this frame's noise: the stereo model's calibration ``beta`` and the mono's relative error;
11. the fusion (core/fusion.py): per pixel, inverse-variance weighted in inverse depth, stereo
    outliers (beyond ``outlier_sigma`` or the ``consistency`` band) left out;
12. the ground bound (``ground_bound``): below the ground plane's horizon, beyond the
    trusted stereo, no output is farther than the plane along its ray (times 1 +
    ``ground_bound_margin``); and the ground contact (``ground_contact``): a vertical face
    standing on the ground there takes the plane's depth at its contact row (core/ground.py);
13. depth (float32 metres, NaN unknown, +inf too far: the sky and beyond
    ``max_output_depth``) and its per-pixel 1-sigma uncertainty (metres, the model's sigma
    times ``SIGMA_CALIBRATION``);
14. remember the output on the lattice for the next frame.

Conventions (see docs/core.md):

* ``relative_kind='disparity'`` (Depth Anything V2): ``1/depth = scale * relative + shift``.
* ``relative_kind='depth'`` (Marigold, 0 near, 1 far): ``depth = scale * relative + shift``,
  fitted with inverse-depth noise weights (first order: ``d(1/z) = dz / z**2``).
"""
from __future__ import annotations

from dataclasses import dataclass
import logging
from typing import Dict, NamedTuple, Optional

import cv2
from depth_ros.core.alignment_options import AlignerOptions, make_options, OPTION_NAMES, \
    option_specs, RELATIVE_KINDS
from depth_ros.core.bands import RowBands
from depth_ros.core.bilateral_correction import BilateralCorrection
from depth_ros.core.camera import PinholeCamera
from depth_ros.core.checks import check_image, check_number, check_same_size, describe
from depth_ros.core.edges import TOZERO_ZEROES_NAN
from depth_ros.core.fusion import Fusion, interior_stereo, stereo_inverse_sigma, \
    stereo_variance
from depth_ros.core.ground import fit_ground, ground_contact, RELATIVE_TOLERANCE, sky_rows
from depth_ros.core.robust_fit import Anchor, median, robust_affine
from depth_ros.core.sky import sky_patches
import numpy as np

LOG = logging.getLogger('depth_ros.alignment')

STATUSES = ('ok', 'held', 'no_fit')
MIN_SIZE = 16             # smallest stereo frame (pixels, each side)
ANCHOR_KAPPA = 2.5        # the sky anchor may widen the stereo residuals by this factor
_FLOATS = (np.float32, np.float64, np.float16)
_CHI2_MEDIAN = 0.4549     # median of a chi-square with one degree of freedom
_MAD_TO_SIGMA = 1.4826
_RHO_DEFAULT = 0.05       # relative mono noise assumed before any frame measured it
_RHO_FLOOR = 0.003
_SIGMA_INV_DEFAULT = 0.003   # stereo inverse-depth noise (1/m) when no focal length is known
# The fused variance assumes Gaussian errors, independent between mono and stereo; but the
# correction is learnt from the stereo it is then fused with, and the errors are heavy-tailed.
# On 12 development scenes per family of benchmarks/fusion.py (as alignment_node runs), the
# mean fraction of errors within k model sigmas is 68 % at k = 1.16 (per family: Middlebury
# 1.15, road 1.10, indoor 1.25): the reported sigma is scaled by it. The fusion's weights
# (ratios of variances) do not change.
SIGMA_CALIBRATION = 1.16
# A held frame (too little or untrusted stereo) takes the previous output per cell as an
# observation of its correction (the temporal filter's, with this alpha), where it agrees with
# this frame's mono: the held frames of 10 development road scenes (6 at 640 px, 4 at 1280
# px) 0.071 -> 0.061 and 0.069 -> 0.055 (AbsRel < 80 m), those scenes' road AbsRel 12-16 %
# lower; frames with stereo are not changed (temporal_alpha, default 1: off).
HELD_TEMPORAL_ALPHA = 0.5
GROUND_STRIDE = 2         # the ground plane is fitted to every other lattice row and column


@dataclass
class AlignedDepth:
    """
    Result of one ``MetricAligner.update``.

    ``depth`` [H, W] float32 metres (NaN unknown, +inf too far); ``scale``/``shift`` of this
    frame's global affine (NaN when no fit exists); ``inlier_ratio`` of the valid fit samples;
    ``valid_fraction`` of fit samples whose stereo passed the trust tests; ``uncertainty``
    [H, W] float32 metres (1 sigma per pixel) or None; ``status`` 'ok' (fitted to this frame's
    stereo), 'held' (too little or untrusted stereo: fitted to the previous output) or
    'no_fit' (nothing to fit to yet: trusted stereo only).
    """

    depth: np.ndarray
    scale: float
    shift: float
    inlier_ratio: float
    valid_fraction: float
    uncertainty: Optional[np.ndarray]
    status: str
    reason: str = ''           # why the status is not 'ok' ('' when it is)
    stereo_fraction: float = 0.0   # fraction of output pixels that fused a stereo value
    anchored: bool = False     # the sky anchored this frame's fit

    def to_dict(self) -> Dict[str, object]:
        """Return the scalar fields, JSON-ready (NaN becomes None)."""
        def num(v):
            v = float(v)
            return v if np.isfinite(v) else None
        return {'scale': num(self.scale), 'shift': num(self.shift),
                'inlier_ratio': num(self.inlier_ratio),
                'valid_fraction': num(self.valid_fraction), 'status': self.status,
                'reason': self.reason, 'stereo_fraction': num(self.stereo_fraction)}


class _Samples(NamedTuple):
    """The fit lattice of one frame (float64, 1-D over the lattice or its valid samples)."""

    r: np.ndarray            # relative values of the valid samples
    d: np.ndarray            # stereo depth of the valid samples (m)
    var_s: np.ndarray        # stereo inverse-depth variance of the valid samples (1/m^2)
    n_total: int
    n_valid: int
    r_all: np.ndarray        # relative values of every lattice sample
    sky_threshold: Optional[float]   # relative values at or below it are sky (None: no rule)
    sky_r: Optional[float]   # median relative value of the sky samples (anchor), or None


class _Fit(NamedTuple):
    """This frame's affine and how it was found."""

    scale: float             # NaN: no fit
    shift: float
    inlier_ratio: float      # of the samples it was fitted to
    source: str              # 'stereo', 'previous' (the previous output) or '' (none)
    status: str              # 'ok', 'held' or 'no_fit' (AlignedDepth.status)
    reason: str              # why the status is not 'ok'
    anchored: bool           # the sky anchored the fit
    stereo_suspect: bool     # the stereo jumped against the metric history: not used


def _no_fit(status, reason):
    return _Fit(float('nan'), float('nan'), float('nan'), '', status, reason, False, False)


class MetricAligner(object):
    """
    Per-frame robust metric alignment of relative depth to stereo depth, fused per pixel.

    ``MetricAligner(**options)`` or ``MetricAligner(AlignerOptions(...))``: every option is a
    field of :class:`~depth_ros.core.alignment_options.AlignerOptions` (defaults, ranges and
    descriptions there and in docs/core.md); values are checked (ValueError names option and
    value). ``aligner.options`` is the frozen options object; ``aligner.<option>`` reads one.

    Between frames the aligner keeps the last affine (``scale``, ``shift``), the noise
    estimates (``rho_pre``, ``rho_post``, ``beta``, ``sigma_inv``), the previous output on the
    fit lattice (jump test, self-alignment), the count of jumped frames, the RANSAC generator,
    the correction's temporal state and per-shape buffers. Everything else is local to
    ``finish``, or held by the :class:`PreparedStereo` of ``prepare``.
    """

    def __init__(self, options: Optional[AlignerOptions] = None, **kwargs):
        self.options = make_options(options, **kwargs)
        self._shape = None
        self._geom = None               # (shape, lattice, correction) of _prepare_shape
        self._token = object()          # marks the sets this aligner prepared
        self._spare = []                # step-3 planes of spent sets, for the next prepare
        self._generation = 0            # set_options and resets so far (is_current)
        self._bands = None              # RowBands of finish_threads (the ``bands`` property)
        self.reset()

    def __getattr__(self, name):
        # Only called when normal lookup fails: options read as attributes.
        if name in OPTION_NAMES and 'options' in self.__dict__:
            return getattr(self.__dict__['options'], name)
        raise AttributeError('{!r} object has no attribute {!r}'.format(
            type(self).__name__, name))

    def set_options(self, **changes) -> AlignerOptions:
        """
        Change options while running (keeps the temporal state); return the new options.

        Options marked not runtime-changeable (``relative_kind``, ``seed``) raise ValueError.
        """
        fixed = [s.name for s in option_specs() if not s.runtime and s.name in changes
                 and changes[s.name] != getattr(self.options, s.name)]
        if fixed:
            raise ValueError('option(s) {} cannot change while running; build a new '
                             'MetricAligner'.format(', '.join('`{}`'.format(n) for n in fixed)))
        new = self.options.replace(**changes)
        keys = ('correction_downsample', 'correction_radius_px', 'fit_samples')
        if any(getattr(new, k) != getattr(self.options, k) for k in keys):
            self._shape = None          # lattice and buffers are rebuilt on the next frame
            self._geom = None
        self.options = new
        self._generation += 1           # sets prepared before are prepared again
        return new

    # ------------------------------------------------------------------ state

    def reset(self) -> None:
        """Forget the history (the next update fits from scratch, or is 'no_fit')."""
        self._generation = getattr(self, '_generation', 0) + 1
        self._rng = np.random.RandomState(self.options.seed)
        self.scale = float('nan')       # affine of the last frame
        self.shift = float('nan')
        self.rho_pre = _RHO_DEFAULT     # relative mono noise before the local correction
        self.rho_post = _RHO_DEFAULT    # ... and after it
        self.sigma_inv = float('nan')   # stereo inverse-depth noise model (1/m), last frame
        self.beta = 1.0                 # variance calibration of the stereo noise model
        self._noise_frames = 0
        self._prev_inv = None           # previous output inverse depth on the lattice
        self._prev_var = None           # ... and its variance
        self._pending = 0               # consecutive frames whose stereo fit jumped
        self._plane = None              # the last frame's ground plane (the ground bound)
        self.frames = 0
        if getattr(self, '_correction', None) is not None:
            self._correction.reset()

    @property
    def bands(self) -> RowBands:
        """
        Return the RowBands of finish's full-resolution per-pixel passes: ``finish_threads``.

        A caller may run the frame's other per-pixel passes on them (alignment_node: the
        cloud, ``depth_to_cloud(bands=...)``), from the thread that calls ``finish``.
        """
        bands = self._bands
        if bands is None or bands.threads != self.options.finish_threads:
            if bands is not None:
                bands.close()
            bands = self._bands = RowBands(self.options.finish_threads)
        return bands

    def close(self) -> None:
        """Stop the threads of ``finish_threads`` > 1 (a later ``finish`` starts them again)."""
        if self._bands is not None:
            self._bands.close()

    @property
    def has_fit(self) -> bool:
        """Whether a fit exists (after the first successful frame)."""
        return bool(np.isfinite(self.scale))

    def _prepare_shape(self, height: int, width: int) -> None:
        """Per-shape lattice, correction and fusion buffers (allocated once)."""
        if self._shape == (height, width):
            return
        self._shape = (height, width)
        o = self.options
        self._lattice = _lattice(height, width, o.fit_samples)
        self._lattice_maps = None
        self._fusion = Fusion(height, width)
        self._mono_plane = None         # step 8's aligned mono (disparity kind)
        # Steps 9-11, corrected and fused, when the relative map is at another size (else
        # the mono's plane is).
        self._inv_plane = np.empty((height, width), np.float32)
        self._correction = BilateralCorrection(height, width, o.correction_downsample,
                                               max(1, o.correction_radius_px))
        self._geom = (self._shape, self._lattice, self._correction)
        self._prev_inv = None
        self._prev_var = None

    def _geometry(self, height, width):
        """
        Return the lattice and the correction's sizes for a frame size, changing nothing.

        The aligner's own when it runs at that size; else new ones (the first frame, or a
        new size: ``finish`` then rebuilds the aligner's per-shape state with the same sizes).
        """
        geom = self._geom
        if geom is not None and geom[0] == (height, width):
            return geom[1], geom[2]
        o = self.options
        return _lattice(height, width, o.fit_samples), BilateralCorrection(
            height, width, o.correction_downsample, max(1, o.correction_radius_px))

    # ------------------------------------------------------------------ prepare / finish

    def update(self, relative_disparity: np.ndarray, stereo_depth: np.ndarray,
               confidence: Optional[np.ndarray] = None, guide: Optional[np.ndarray] = None,
               camera: Optional[PinholeCamera] = None,
               focal_px: Optional[float] = None) -> AlignedDepth:
        """
        Align one frame. Returns a new AlignedDepth whose arrays the aligner never reuses.

        ``finish(relative_disparity, prepare(stereo_depth, confidence, guide, camera,
        focal_px))``: the stereo side and the mono side of the frame in one call.

        :param relative_disparity: [h, w] float relative prediction (kind per ``relative_kind``;
            the name follows the default kind), resized to the stereo size when different.
        :param stereo_depth: [H, W] float metres; NaN, +-inf and 0 are invalid.
        :param confidence: optional [H, W] ZED confidence, 1..100, larger = less reliable.
        :param guide: optional [H, W] or [H, W, 3] uint8 image (gray or BGR) registered to the
            stereo depth: the local correction follows its edges.
        :param camera: PinholeCamera of the images (its fx, scaled to the stereo width, is the
            focal length of the stereo noise model) ...
        :param focal_px: ... or the focal length in pixels at the stereo size. Without either,
            the stereo noise is estimated from the fit residuals.
        """
        return self.finish(relative_disparity, self.prepare(stereo_depth, confidence, guide,
                                                            camera, focal_px))

    def prepare(self, stereo_depth: np.ndarray, confidence: Optional[np.ndarray] = None,
                guide: Optional[np.ndarray] = None, camera: Optional[PinholeCamera] = None,
                focal_px: Optional[float] = None) -> 'PreparedStereo':
        """
        Prepare the stereo side of a frame (steps 1-4): all that does not need the relative map.

        Arguments as ``update``'s. Reads the options, never the per-frame state, and changes
        nothing in the aligner: a prepared set may be dropped unused (the network dropped
        the frame), or prepared on another thread while ``finish`` runs (``finish`` calls of
        one aligner run one at a time: it is one stream's history). The set holds arrays of
        its own; ``finish`` spends it (a second ``finish`` prepares it again).
        """
        # The options' generation first: a set_options while this runs makes the set stale.
        generation = self._generation
        o = self.options
        # 1. Check the stereo inputs, before any compute; the focal length (px) at the
        #    stereo size.
        focal = self._check_stereo(stereo_depth, confidence, guide, camera, focal_px)
        h, w = stereo_depth.shape
        lat, corr = self._geometry(h, w)

        # 2. The stereo noise model: constant in inverse depth (1/m, 1 sigma). Without a focal
        #    length it has the right shape and beta calibrates its level from the data.
        sigma_s = _SIGMA_INV_DEFAULT if focal is None else stereo_inverse_sigma(
            o.disparity_noise_px, focal, o.baseline_m)

        # 3. The stereo and confidence as float32; the stereo in inverse depth (0 where
        #    untrusted), and where it is trusted.
        stereo = stereo_depth.astype(np.float32, copy=False)    # [H, W] float32 metres
        conf = None if confidence is None else \
            confidence.astype(np.float32, copy=False)           # [H, W] float32 1..100
        planes = self._stereo_inverse(stereo, conf)
        ys, trust = planes[:2]                  # [H, W] float32 1/m, [H, W] uint8 255

        # 4. The stereo where the mono side reads it: on the fit lattice (the samples' stereo
        #    tests and noise gains), on the statistics grid (inverse depth, trust, image,
        #    confidence) and on the cells (the range guide's intensity, the sky's colours and
        #    where the stereo says too far).
        p = PreparedStereo(self._token, generation,
                           (stereo_depth, confidence, guide, camera, focal_px))
        p.shape, p.focal, p.sigma_inv = (h, w), focal, sigma_s
        p.stereo, p.conf, p.ys, p.trust, p.planes = stereo, conf, ys, trust, planes
        # The rows that hold trusted stereo (first, end): the fusion's per-pixel passes skip
        # the others (a sky without stereo above them: nothing to fuse there).
        _, first, _, n = cv2.boundingRect(trust)
        p.trust_rows = (first, first + n)
        self._stereo_lattice(p, lat)
        self._ground(p, lat, camera)
        self._stereo_grid(p, corr, guide)
        return p

    def is_current(self, prepared: 'PreparedStereo') -> bool:
        """
        Tell whether ``finish`` would use ``prepared`` as it is (no second ``prepare``).

        True for a set this aligner prepared since its last ``set_options`` or ``reset`` (a
        ``set_options`` that raised changed nothing) and no ``finish`` spent yet. False for a
        stale or spent set (``finish`` prepares it again from its inputs) and for another
        aligner's (``finish`` refuses it: ValueError). Not a ``PreparedStereo``: ValueError.
        Changes nothing; read it on the thread that calls ``set_options``, ``reset`` and
        ``finish`` (a set may turn stale after it returns on another).
        """
        _check_prepared_type(prepared)
        return prepared.owner is self._token and prepared.generation == self._generation \
            and not prepared.spent

    def finish(self, relative_disparity: np.ndarray, prepared: 'PreparedStereo',
               out: Optional[np.ndarray] = None) -> AlignedDepth:
        """
        Finish a frame, the mono side (steps 5-14): align ``relative_disparity`` to a prepared set.

        ``prepared`` comes from this aligner's ``prepare``; a set prepared before a
        ``set_options`` or ``reset``, or already spent by a ``finish``, is prepared again from
        its inputs. Returns what ``update`` returns.

        :param out: optional [H, W] float32 C-contiguous array the depth is written into (the
            result's ``depth`` is then ``out``, which the caller owns: a message's buffer, so
            that publishing the depth copies nothing); None: a new array.
        """
        prepared = self._check_prepared(prepared)
        # 5. Check the relative map against the stereo's size; as float32 (a non-finite
        #    relative value is unknown: NaN).
        self._check_relative(relative_disparity, prepared.shape)
        _check_out(out, prepared.shape)
        prepared.spent = True
        self._prepare_shape(*prepared.shape)
        self.frames += 1
        sigma_s = self.sigma_inv = prepared.sigma_inv
        # Whether every relative value is finite is found in step 8, from the aligned mono
        # (one pass over the map less); until then only the lattice reads it, per sample.
        rel = relative_disparity.astype(np.float32, copy=False)   # [h, w] float32 relative
        stereo, ys, trust = prepared.stereo, prepared.ys, prepared.trust

        # 6. Sample the fit lattice: valid stereo, its noise, the sky.
        samples = self._samples(rel, prepared, sigma_s)

        # 7. Fit this frame's affine to its stereo, else to the previous output.
        fit = self._fit(samples)
        if fit.source:
            self.scale, self.shift = fit.scale, fit.shift
        if fit.status != 'ok':
            LOG.debug('frame %d: %s (%s)', self.frames, fit.status, fit.reason)
        if not fit.source:
            # No fit: the trusted stereo alone, NaN elsewhere (never a guess). Remembered
            # (step 14) with the mono's relative noise.
            depth, unc, n_stereo = self._stereo_only(ys, trust, sigma_s)
            if out is not None:
                np.copyto(out, depth)
                depth = out
            self._remember(depth, None)
            self._spend(prepared, False)
            return _result(fit, samples, depth, unc, n_stereo)
        if fit.stereo_suspect:
            # Stereo that jumped against the metric history informs nothing this frame.
            for plane in (trust, ys, prepared.lat_trusted, prepared.stereo_s,
                          prepared.trusted_s):
                plane.fill(0)

        # 8. The aligned mono, at the relative map's size (0 sky, NaN unknown).
        mono, rel_finite = self._mono_inverse(rel, fit, samples.sky_threshold,
                                              _sky_limit(prepared, rel.shape))
        # mono: [h, w] float32 1/m (the aligner's plane, disparity kind); rel_finite: bool

        # 9. The local correction, applied to the mono and resized to the output size; 0 at
        #    or beyond max_output_depth and on the sky's patches. A held frame also learns it
        #    from the previous output per cell. The cells are None without a correction.
        inv, unknown, cells = self._correct(mono, prepared, rel_finite,
                                            sigma_s * np.sqrt(self.beta),
                                            fit.source == 'previous')
        # inv: [H, W] float32 1/m (becomes the output); unknown: [H, W] bool or None

        # 10. This frame's noise: the stereo model's calibration beta and the mono's relative
        #     error rho_post (from the lattice), and the mono's variance map.
        mono_var, mono_s = self._noise(inv, prepared, sigma_s, cells,
                                       fit.source == 'previous')
        # mono_var: [sh, sw] float32 1/m^2; mono_s: [sh, sw] float32 1/m, the corrected mono
        sigma_s = sigma_s * np.sqrt(self.beta)          # the calibrated stereo noise, 1/m

        # 11. Fuse the trusted stereo into inv, in place, and its variance when asked for;
        #     ys is spent (the fusion writes y_s - y_m into its plane, on the rows that
        #     hold trusted stereo: the others have nothing to fuse).
        var, n_stereo, kept = self._fuse(inv, ys, trust, unknown, mono_var, mono_s, sigma_s,
                                         prepared.conf_s, fit, prepared.interior,
                                         prepared.trust_rows)
        # var: [H, W] float32 1/m^2 or None; kept: [H, W] uint8, nonzero where the stereo is
        #      taken as is (the trust plane), or None

        # 12. The ground bound: below the ground's horizon, nothing is farther than the
        #     plane along its ray (beyond the stereo's reach, within max_output_depth).
        #     The ground contact: an object standing on the ground there is at the plane's
        #     depth at its contact row.
        self._ground_steps(inv, var, prepared, rel, fit, samples.sky_threshold, trust)

        # 13. Depth and its 1-sigma uncertainty, in metres: the depth in ``out``, else in the
        #     set's stereo plane (spent; mapped already: the mono side maps no new pages for
        #     it), the uncertainty in var's array.
        depth = prepared.ys if out is None else out            # [H, W] float32 metres
        unc = var                                               # [H, W] float32 metres
        self.bands.run(lambda r0, r1: _depth_and_sigma(
            inv[r0:r1], None if var is None else var[r0:r1], depth[r0:r1]), depth.shape[0])
        if kept is not None:
            _masked_copy(stereo, kept, depth)   # exactly the stereo (1 / (1 / z) may not be)

        # 14. Remember for the next frame: the output on the lattice (jump test,
        #     self-alignment) and the cells (the correction's temporal filter).
        self._remember(depth, unc)
        if cells is not None:
            self._correction.remember(*cells, held=fit.source == 'previous')
        self._spend(prepared, out is None)
        return _result(fit, samples, depth, unc, n_stereo)

    # ------------------------------------------------------------------ 1. and 5. checks

    def _check_stereo(self, stereo_depth, confidence, guide, camera, focal_px):
        check_image('stereo_depth', stereo_depth, dtypes=_FLOATS)
        if confidence is not None:
            check_image('confidence', confidence, dtypes=_FLOATS + (np.uint8,))
            check_same_size('confidence', confidence, 'stereo_depth', stereo_depth)
        if guide is not None:
            _check_guide(guide, stereo_depth)
        h, w = stereo_depth.shape
        if h < MIN_SIZE or w < MIN_SIZE:
            # OpenCV takes arrays of a few elements for scalars: tiny frames cannot be fused.
            raise ValueError('`stereo_depth` must be at least {0}x{0} pixels, got {1}x{2} (W x H)'
                             .format(MIN_SIZE, w, h))
        return _focal_length(camera, focal_px, w)

    @staticmethod
    def _check_relative(relative, shape):
        check_image('relative_disparity', relative, dtypes=_FLOATS)
        h, w = shape
        hr, wr = relative.shape
        # Resizing between very different aspect ratios would silently misalign pixels.
        if abs(float(wr) / hr - float(w) / h) > 0.02 * float(w) / h:
            raise ValueError(
                '`relative_disparity` has size {} but `stereo_depth` has size {}; their aspect '
                'ratios must match (the relative map is resized to the stereo size)'.format(
                    relative.shape, tuple(shape)))

    def _check_prepared(self, prepared):
        """Return ``prepared``, or it prepared again when stale or spent; another's: error."""
        _check_prepared_type(prepared)
        if prepared.owner is not self._token:
            raise ValueError('`prepared` was prepared by another MetricAligner: prepare the '
                             'stereo with the aligner that finishes it')
        if not self.is_current(prepared):
            # Options changed (set_options) or the aligner was reset since, or a finish
            # already spent its planes: the same inputs, prepared again.
            return self.prepare(*prepared.inputs)
        return prepared

    # ------------------------------------------------------------------ 4. and 6. fit lattice

    def _lattice_values(self, rel):
        """Return the relative map at the lattice pixels (bilinear, as cv2.resize gives)."""
        if rel.shape == self._shape:
            return rel[self._lattice].astype(np.float64).ravel()
        key = rel.shape
        if self._lattice_maps is None or self._lattice_maps[0] != key:
            h, w = self._shape
            hr, wr = rel.shape
            ys = np.arange(h, dtype=np.float64)[self._lattice[0]]
            xs = np.arange(w, dtype=np.float64)[self._lattice[1]]
            my, mx = np.meshgrid((ys + 0.5) * hr / h - 0.5, (xs + 0.5) * wr / w - 0.5,
                                 indexing='ij')
            self._lattice_maps = (key, mx.astype(np.float32), my.astype(np.float32))
        _, mx, my = self._lattice_maps
        return cv2.remap(rel, mx, my, cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE).astype(np.float64).ravel()

    def _stereo_lattice(self, p, lat):
        """Step 4 on the fit lattice: the stereo's tests and noise gains per sample (into p)."""
        o = self.options
        d = p.stereo[lat].astype(np.float64).ravel()
        with np.errstate(invalid='ignore'):
            valid = (d >= o.min_depth) & (d <= o.max_depth)
            c = gain = None
            if p.conf is not None:
                c = p.conf[lat].astype(np.float64).ravel()
                valid &= c <= o.confidence_threshold   # NaN compares False
                if o.confidence_noise_gain > 0:
                    gain = (1.0 + o.confidence_noise_gain * (c - 1.0) / 99.0) ** 2
        p.lat_d, p.lat_c, p.lat_valid, p.lat_gain = d, c, valid, gain
        p.lat_ys = p.ys[lat].ravel().astype(np.float64)
        p.lat_trusted = p.trust[lat].ravel() != 0

    def _ground(self, p, lat, camera):
        """
        Step 4: the ground plane of the trusted lattice samples and where the sky may be (into p).

        ``p.ground`` (core/ground.py's Ground, or None) and ``p.lat_sky_ok`` (bool over the
        lattice: samples above the horizon moved down by ``sky_horizon_margin_deg``, or
        None: everywhere): only with ``sky_horizon`` and the sky rule on. ``p.plane``: the
        same plane for the ground bound (step 12), only with ``ground_bound``. Disparity
        kind, with a camera (the intrinsics).
        """
        o = self.options
        p.ground, p.lat_sky_ok, p.intrinsics, p.plane = None, None, None, None
        sky = o.sky_horizon and o.sky_fraction > 0
        if camera is None or o.relative_kind != 'disparity' or \
                not (sky or o.ground_bound or o.ground_contact):
            return
        h, w = p.shape
        cam = camera if (camera.width, camera.height) == (w, h) else camera.scaled(w, h)
        p.intrinsics = k = (cam.fx, cam.fy, cam.cx, cam.cy)
        p.margin_deg = o.sky_horizon_margin_deg
        rows = np.arange(h, dtype=np.float64)[lat[0]]
        cols = np.arange(w, dtype=np.float64)[lat[1]]
        # Every other lattice row and column (a quarter of the samples) locate a plane well
        # enough: its horizon is within a pixel (tests), at a quarter of the cost.
        sub = (slice(None, None, GROUND_STRIDE),) * 2
        shape = (rows.size, cols.size)
        trusted = p.lat_trusted.reshape(shape)[sub].ravel()
        rs, cs = rows[sub[0]], cols[sub[1]]
        vv, uu = np.repeat(rs, cs.size), np.tile(cs, rs.size)      # the samples' pixels
        y = p.lat_ys.reshape(shape)[sub].ravel()[trusted]
        tol = 3.0 * p.sigma_inv
        if p.lat_gain is not None:
            tol = tol * np.sqrt(p.lat_gain.reshape(shape)[sub].ravel()[trusted])
        plane = fit_ground(uu[trusted], vv[trusted], y, tol + RELATIVE_TOLERANCE * y,
                           trusted.size, *k)
        p.plane = plane if o.ground_bound or o.ground_contact else None   # step 12's
        p.ground = plane if sky else None               # the sky's horizon
        if p.ground is not None:
            limit = sky_rows(p.ground, o.sky_horizon_margin_deg, cols, *k)
            p.lat_sky_ok = (rows[:, None] < limit[None, :]).ravel()

    def _samples(self, rel, p, sigma_s) -> _Samples:
        """Gather the fit lattice: valid stereo samples, their noise, and the sky."""
        o = self.options
        r_all = self._lattice_values(rel)
        d = p.lat_d
        finite_r = np.isfinite(r_all)
        valid = finite_r & p.lat_valid
        sky_threshold = None
        if o.relative_kind == 'disparity' and o.sky_fraction > 0 and finite_r.any():
            sky_threshold = o.sky_fraction * _percentile_99(r_all[finite_r])
        sky_r = self._sky_anchor(r_all, finite_r, valid, sky_threshold, p.lat_sky_ok)
        var_s = np.full(int(valid.sum()), sigma_s * sigma_s * self.beta)
        if p.lat_gain is not None:
            var_s *= p.lat_gain[valid]
        return _Samples(r_all[valid], d[valid], var_s, r_all.size, int(valid.sum()), r_all,
                        sky_threshold, sky_r)

    def _sky_anchor(self, r_all, finite_r, valid, sky_threshold,
                    sky_ok) -> Optional[float]:
        """
        Median relative value of a large sky region without stereo, or None.

        ``sky_ok``: bool over the lattice, where the sky may be (above the ground's horizon),
        or None (everywhere).
        """
        o = self.options
        if sky_threshold is None or o.sky_anchor_weight <= 0:
            return None
        with np.errstate(invalid='ignore'):
            sky = finite_r & (r_all <= sky_threshold)
        if sky_ok is not None:
            sky &= sky_ok
        n_sky = int(sky.sum())
        if n_sky < o.sky_anchor_min_fraction * r_all.size or \
                (sky & valid).sum() > 0.1 * n_sky:
            return None
        return float(median(r_all[sky]))

    # ------------------------------------------------------------------ 7. fit

    def _fit(self, s: _Samples) -> _Fit:
        """Return the frame's fit: to its stereo, else to the previous output, else none."""
        fit, reason = self._fit_stereo(s)
        if fit is None:
            self._pending = 0
            prev = self._fit_previous(s)
            if prev is not None:
                return prev._replace(status='held',
                                     reason=reason + '; aligned to the previous output')
            if self.has_fit:
                return _no_fit('held', reason + '; no previous output to align to')
            return _no_fit('no_fit', reason)
        why = self._jumped(fit, s)
        if why is None:
            return fit
        prev = self._fit_previous(s)
        if prev is None or prev.inlier_ratio < self.options.consistency_min_inliers:
            # The new frame does not agree with the previous output either: a new scene,
            # followed at once.
            self._pending = 0
            return fit
        # The stereo is inconsistent with the metric history: held, the stereo unused.
        return prev._replace(status='held', reason=why + '; aligned to the previous output',
                             stereo_suspect=True)

    def _fit_stereo(self, s: _Samples):
        """Fit this frame's affine to its stereo; return (fit or None, reason)."""
        o = self.options
        if s.n_valid < o.min_valid_samples:
            return None, 'too few valid stereo samples ({} < {})'.format(
                s.n_valid, o.min_valid_samples)
        fit, anchored = self._robust_fit(s.r, s.d, s.var_s, s.sky_r)
        if fit is None:
            return None, 'no consistent fit'
        ratio = float(fit.inliers.mean())
        if ratio < o.min_inlier_ratio:
            return None, 'inlier ratio {:.3f} < {}'.format(ratio, o.min_inlier_ratio)
        self._update_rho_pre(s, fit)
        return _Fit(fit.scale, fit.shift, ratio, 'stereo', 'ok', '', anchored, False), ''

    def _fit_previous(self, s: _Samples) -> Optional[_Fit]:
        """Self-alignment: this frame's affine fitted to the previous output; or None."""
        o = self.options
        if self._prev_inv is None:
            return None
        prev = self._prev_inv
        with np.errstate(invalid='ignore'):
            ok = np.isfinite(s.r_all) & np.isfinite(prev) & (prev > 1.0 / o.max_output_depth)
        if ok.sum() < o.min_valid_samples:
            return None
        var = np.maximum(self._prev_var[ok], 1e-12)
        fit, anchored = self._robust_fit(s.r_all[ok], 1.0 / prev[ok], var, s.sky_r)
        if fit is None or fit.inliers.mean() < o.min_inlier_ratio:
            return None
        return _Fit(fit.scale, fit.shift, float(fit.inliers.mean()), 'previous', 'held', '',
                    anchored, False)

    def _robust_fit(self, r, target_depth, var_inv, anchor_r):
        """Fit robustly in the kind's space, with the sky anchor if it holds: (fit, anchored)."""
        o = self.options
        inv = 1.0 / target_depth
        rho2 = self.rho_pre * self.rho_pre
        var = var_inv + rho2 * inv * inv
        tol = np.maximum(o.inlier_threshold * inv, 3.0 * np.sqrt(var_inv))
        anchor = None
        if o.relative_kind == 'disparity':
            y = inv
            if anchor_r is not None:
                anchor = Anchor(anchor_r, 0.0, o.sky_anchor_weight)
        else:
            y = target_depth
            d2 = target_depth * target_depth
            var, tol = var * d2 * d2, tol * d2
        fit = robust_affine(r, y, var, tol, self._rng, o.ransac_iterations,
                            o.irls_iterations, anchor=anchor)
        if fit is None or anchor is None:
            return fit, False
        free = robust_affine(r, y, var, tol, self._rng, 1, 2, start=(fit.scale, fit.shift))
        # The anchor must not contradict the stereo (a network whose sky is not at its own
        # infinity): keep it only if the stereo residuals stay about as small.
        if free is not None and (fit.kappa > ANCHOR_KAPPA * free.kappa or
                                 fit.inliers.mean() < 0.98 * free.inliers.mean()):
            LOG.debug('sky anchor dropped: kappa %.3f vs %.3f, inliers %.3f vs %.3f',
                      fit.kappa, free.kappa, fit.inliers.mean(), free.inliers.mean())
            return free, False
        return fit, True

    def _update_rho_pre(self, s: _Samples, fit):
        """Relative mono noise before correction, from this fit's inlier residuals."""
        pred = self._predict_inv(fit.scale, fit.shift, s.r)
        inv = 1.0 / s.d
        ok = fit.inliers & (pred > 0)
        if ok.sum() >= 8:
            u2 = ((inv[ok] - pred[ok]) / pred[ok]) ** 2
            rho_pre = float(np.sqrt(_robust_rho2(u2, s.var_s[ok] / pred[ok] ** 2)))
            self.rho_pre = min(max(rho_pre, _RHO_FLOOR), 1.0)

    def _predict_inv(self, scale, shift, r):
        with np.errstate(divide='ignore', invalid='ignore'):
            if self.options.relative_kind == 'disparity':
                return scale * r + shift
            return 1.0 / (scale * r + shift)

    def _jumped(self, fit: _Fit, s: _Samples) -> Optional[str]:
        """Why a stereo fit is not trusted against the previous metric output, or None."""
        o = self.options
        if self._prev_inv is None:
            return None
        prev = self._prev_inv
        new = self._predict_inv(fit.scale, fit.shift, s.r_all)
        with np.errstate(divide='ignore', invalid='ignore'):
            ok = np.isfinite(new) & np.isfinite(prev) & (prev > 0) & (new > 0)
            if ok.sum() < o.min_valid_samples:
                return None
            change = float(median(np.abs(new[ok] / prev[ok] - 1.0)))
        if change <= o.jump_threshold:
            self._pending = 0
            return None
        self._pending += 1
        if self._pending >= o.jump_frames:
            self._pending = 0
            return None
        return 'fit jumped by {:.3f} (> {}), frame {} of {}'.format(
            change, o.jump_threshold, self._pending, o.jump_frames)

    # ------------------------------------------------------------------ 3. and 4. stereo

    def _stereo_inverse(self, stereo, conf):
        """
        Return the stereo inverse depth, its trust mask and the planes (``_planes``) they are in.

        Inverse depth [H, W] float32 1/m: finite everywhere (the correction sums products
        with masks: 0 * inf would be NaN), 0 outside [1/max_depth, 1/min_depth] (float32
        bounds) and where the depth is NaN. Trust [H, W] uint8: 255 where that range holds
        and the confidence is at most the threshold (NaN is never trusted); the confidence
        does not zero the inverse depth.
        """
        o = self.options
        ys, trust, confident = self._planes(stereo.shape)
        with np.errstate(divide='ignore', invalid='ignore'):
            np.divide(np.float32(1.0), stereo, out=ys)
        far = np.nextafter(np.float32(1.0) / np.float32(o.max_depth), np.float32(0.0))
        cv2.threshold(ys, 1.0 / o.min_depth, 0.0, cv2.THRESH_TOZERO_INV, dst=ys)  # too near: 0
        cv2.threshold(ys, float(far), 0.0, cv2.THRESH_TOZERO, dst=ys)   # too far, negative: 0
        if not TOZERO_ZEROES_NAN:
            cv2.patchNaNs(ys, 0.0)              # OpenCV 5's thresholds keep NaN (4.5's: 0)
        cv2.compare(ys, 0.0, cv2.CMP_GT, dst=trust)
        if conf is not None:
            cv2.compare(conf, o.confidence_threshold, cv2.CMP_LE, dst=confident)  # NaN fails
            cv2.bitwise_and(trust, confident, dst=trust)
        return ys, trust, confident

    def _planes(self, shape):
        """
        Return planes for step 3 (inverse depth, trust, confidence test) of a frame size.

        Those of a set that ``finish`` spent when there are (their pages are mapped already:
        three new 1280x720 planes cost about 0.3 ms more), else new ones. Each set owns its
        planes until it is spent.
        """
        try:
            planes = self._spare.pop()
            if planes[1].shape == shape:
                return (np.empty(shape, np.float32) if planes[0] is None else planes[0],) + \
                    planes[1:]
        except IndexError:
            pass
        return (np.empty(shape, np.float32), np.empty(shape, np.uint8),
                np.empty(shape, np.uint8))

    def _spend(self, prepared, output_in_ys):
        """
        Mark a set spent; its step-3 planes go to the next ``prepare``.

        Not the stereo's plane when it holds the output (``output_in_ys``): the result owns it.
        """
        planes = prepared.planes
        prepared.spent, prepared.planes, prepared.ys, prepared.trust = True, None, None, None
        if planes is not None and len(self._spare) < 2:
            self._spare.append((None,) + planes[1:] if output_in_ys else planes)

    def _stereo_grid(self, p, corr, guide):
        """
        Step 4 on the statistics grid and the cells (into p).

        The stereo inverse depth, trust and image on the statistics grid; the confidence
        there (non-finite: 100, see ``_stats_confidence``); the range guide's intensity on the
        cells; the sky's too-far mask and colours on the cells (disparity kind, colour guide);
        the fusion's interior stereo on the grid (with a consistency band).
        """
        o = self.options
        p.stereo_s, p.trusted_s = corr.stats(p.ys), corr.stats(p.trust)
        # The fusion's wider gate: where it holds needs only the stereo on the grid (the
        # variances' grid: the fusion resizes the same planes there, nearest).
        p.interior = None if o.consistency is None else \
            interior_stereo(p.stereo_s, p.trusted_s, o.consistency)
        p.image_s = None if guide is None else corr.stats(guide)
        p.guide_low = None if p.image_s is None else corr.range_guide_image(p.image_s)
        p.conf_s = None if p.conf is None else _stats_confidence(corr, p.conf)
        p.sky_too_far = p.sky_image = None
        if p.image_s is not None and p.image_s.ndim == 3 and \
                o.relative_kind == 'disparity' and o.sky_fraction > 0:
            size = corr.low_size                  # every other grid pixel: the cells

            def sub(x):
                return cv2.resize(x, size, interpolation=cv2.INTER_NEAREST)
            p.sky_too_far = cv2.compare(sub(p.stereo), np.inf, cv2.CMP_EQ)   # the ZED's +inf
            p.sky_image = sub(p.image_s)

    def _stereo_only(self, ys, trust, sigma_s):
        """Return depth, uncertainty and the stereo pixel count of a frame without a fit."""
        trusted = trust != 0
        depth = np.full(ys.shape, np.nan, np.float32)
        np.divide(np.float32(1.0), ys, out=depth, where=trusted)
        unc = None
        if self.options.compute_uncertainty and self.has_fit:
            unc = np.full(ys.shape, np.nan, np.float32)
            np.multiply(depth, depth, out=unc, where=trusted)
            unc *= np.float32(sigma_s)
        return depth, unc, int(trusted.sum())

    # ------------------------------------------------------------------ 8. aligned mono

    def _mono_inverse(self, rel, fit, sky_threshold, sky_limit=None):
        """
        Return the aligned mono inverse depth at the relative map's size, and if all is known.

        The inverse depth (the aligner's plane, disparity kind) is 0 on the sky, NaN where
        unknown (a non-finite relative value). At the network's size this costs little; it is
        resized once, after the local correction. The sky rule ``relative <= sky_threshold``
        is ``inverse <= scale * sky_threshold + shift`` (scale > 0): one threshold. With a
        ground plane, only above its horizon: ``sky_limit`` (float64 [w], rows at the map's
        size), the rule holds on rows less than it; None: everywhere.
        """
        # s * rel + t in one pass, in double precision (rounded once to float32), into a kept
        # plane whose pages are mapped already (a new 1280x720 plane costs 0.2 ms more).
        disparity = self.options.relative_kind == 'disparity'
        if disparity:
            if self._mono_plane is None or self._mono_plane.shape != rel.shape:
                self._mono_plane = np.empty(rel.shape, np.float32)
            y = self._mono_plane
        else:
            y = np.empty(rel.shape, np.float32)
        affine = np.array([[fit.scale, fit.shift]], np.float64)
        sky = None
        if disparity and sky_threshold is not None and sky_threshold > 0:
            sky = fit.scale * sky_threshold + fit.shift

        def band(r0, r1):
            # The affine, whether the band is finite and the sky rule, per row band.
            yb = cv2.transform(rel[r0:r1], affine, dst=y[r0:r1])
            # The mono is finite wherever the map is (or it overflowed, and the map is
            # tested): a sum of the mono just written costs less than one of the map.
            finite = _all_finite(yb) or _all_finite(rel[r0:r1])
            if finite and sky is not None:
                _threshold_above(yb, sky, sky_limit, r0)
            return finite
        rel_finite = all(self.bands.run(band, rel.shape[0]))
        if not rel_finite:
            # Rare: the prediction is unknown there, so the output is NaN (not 0 or +inf).
            rel = np.where(np.isfinite(rel), rel, np.float32(np.nan))
            y = cv2.transform(rel, affine, dst=y)
            if sky is not None:
                _threshold_above(y, sky, sky_limit)
                y[np.isnan(rel)] = np.nan         # OpenCV 4.5's threshold made it 0
        if disparity:
            return y, rel_finite
        z = y                                   # depth kind: the fit is in metres
        with np.errstate(divide='ignore', invalid='ignore'):
            y = np.float32(1.0) / z
            y[~(z > 0)] = np.nan      # extrapolated past the near end (or NaN): unknown
        return y, rel_finite

    # ------------------------------------------------------------------ 9. correction

    def _correct(self, mono, prepared, rel_finite, sigma_s, held):
        """
        Return the corrected mono at the output size, where it is unknown, and the cells.

        The corrected inverse depth [H, W] float32 1/m (the mono's own plane, written in
        place, when the mono is at the output size; else the aligner's plane) is 0 at or
        below 1/max_output_depth and on the sky's patches (+inf depth), and NaN where
        unknown; the unknown mask [H, W] bool, or None when every pixel is known; the cells
        (CellTargets, Correction) for the temporal filter and the noise, or None without a
        local correction. ``held``: the frame is aligned to the previous output, whose cells
        are then observations of the correction (``HELD_TEMPORAL_ALPHA``).
        """
        o = self.options
        h, w = self._shape
        corr = self._correction
        grid = corr.sample(mono, prepared)  # the frame on the statistics grid
        cells = None
        inv = mono
        factor = None       # the correction's factor at the output size, to apply per band
        if o.correction_radius_px > 0:
            # Twice the fusion's band: the correction must see object-scale mono errors
            # that are larger than the band the fusion accepts stereo in.
            band = 2.0 * o.consistency if o.consistency is not None else 1.0
            targets = corr.cell_means(grid, sigma_s, band, max(self.rho_post, 0.01))
            # A held frame has little or no usable stereo: the previous output, per cell
            # where it agrees with this frame's mono, is its local information.
            alpha = min(o.temporal_alpha, HELD_TEMPORAL_ALPHA) if held else o.temporal_alpha
            correction = corr.compute(targets, o.max_correction, alpha)
            if mono.shape == (h, w):
                # corr.apply's product, per row band below (the upsampling in one piece), in
                # the mono's own plane (dead after it); the factor upsampled into the fusion's
                # scratch plane (free until step 11, which then writes a plane the cache
                # holds: one plane fewer passes through it).
                factor = corr.upsample(correction.factor, self._fusion.bound_gain)
            else:
                inv = corr.apply(mono, correction)
            cells = (targets, correction)
        if inv.shape != (h, w):
            inv = cv2.resize(inv, (w, h), dst=self._inv_plane, interpolation=cv2.INTER_LINEAR)
        # Unknown pixels (NaN) are found before the threshold: OpenCV 4.5 makes NaN 0 there.
        find_unknown = not rel_finite or o.relative_kind == 'depth'
        far = 1.0 / o.max_output_depth

        def band(r0, r1):
            b = inv[r0:r1]
            if factor is not None:
                cv2.multiply(b, factor[r0:r1], dst=b)
            if not find_unknown:
                # At or below 1/max_output_depth: 0 (+inf depth).
                cv2.threshold(b, far, 0.0, cv2.THRESH_TOZERO, dst=b)
        self.bands.run(band, h)
        unknown = None
        if find_unknown:
            unknown = ~np.isfinite(inv)
            unknown = unknown if unknown.any() else None
            cv2.threshold(inv, far, 0.0, cv2.THRESH_TOZERO, dst=inv)
            if unknown is not None:
                inv[unknown] = np.nan
        patches = self._sky_patches(grid, prepared)   # [lh, lw] uint8 1, or None
        if patches is not None:
            _clear_sky_patches(inv, patches, corr.d)
        return inv, unknown, cells

    def _sky_patches(self, grid, prepared):
        """
        Return the sky's patches on the cells grid ([lh, lw] uint8, 1), or None.

        Disparity kind with a colour image only (core/sky.py); the stereo's and the image's
        part are prepared (step 4).
        """
        if prepared.sky_too_far is None:
            return None
        mono = cv2.resize(grid.mono_inv, self._correction.low_size,
                          interpolation=cv2.INTER_NEAREST)   # every other grid pixel
        patches = sky_patches(mono, prepared.sky_too_far, prepared.sky_image,
                              1.0 / self.options.max_depth)
        if patches is not None and prepared.ground is not None:
            # Only above the horizon: a cell (i, j) is the output pixel (d i, d j).
            d = self._correction.d
            lh, lw = patches.shape
            limit = _limit_at(prepared, d * np.arange(lw, dtype=np.float64))
            patches[(d * np.arange(lh)[:, None] >= limit[None, :])] = 0
            patches = patches if cv2.countNonZero(patches) else None
        return patches

    # ------------------------------------------------------------------ 10. noise

    def _noise(self, inv, prepared, sigma_s, cells, held):
        """
        Estimate the noise of this frame from the lattice residuals; return the mono's maps.

        Relative residuals ``u = y_s / y_c - 1`` of trusted stereo against the corrected mono
        have variance ``beta * (sigma_s / y)^2 + rho^2``: stereo noise grows with depth, the
        mono's relative error does not, so near and far samples tell the two apart. ``beta``
        calibrates the stereo noise model, ``rho`` (``rho_post``) is the mono's relative error.
        """
        o = self.options
        yc = inv[self._lattice].ravel().astype(np.float64)
        y = prepared.lat_ys
        with np.errstate(invalid='ignore'):      # unknown mono (NaN) fails, as meant
            ok = prepared.lat_trusted & np.isfinite(yc) & (yc > 0)
        if ok.sum() >= 32:
            u = y[ok] / yc[ok] - 1.0
            band = o.consistency if o.consistency is not None else 1.0
            keep = np.abs(u) <= band + 4.0 * sigma_s * np.sqrt(self.beta) / yc[ok]
            u, ycs = u[keep], yc[ok][keep]
            var_s = np.full(u.size, sigma_s * sigma_s)
            if prepared.lat_c is not None and o.confidence_noise_gain > 0:
                c = prepared.lat_c[ok][keep]
                var_s *= (1.0 + o.confidence_noise_gain * (c - 1.0) / 99.0) ** 2
            if u.size >= 32:
                beta, rho2 = _noise_regression(u, var_s / (ycs * ycs))
                a = 0.3 if self._noise_frames else 1.0      # smooth over frames
                self.beta = (1.0 - a) * self.beta + a * beta
                self.rho_post = (1.0 - a) * self.rho_post + a * float(np.sqrt(rho2))
                self._noise_frames += 1
        return self._mono_variance(inv, cells, held)

    def _mono_variance(self, inv, cells, held):
        """
        Return the corrected mono's inverse-depth variance and the mono, at the statistics size.

        ``rho^2 y^2`` with the relative variance ``rho^2`` = the residual spread, plus the
        local excess at the mono's bends (edges), plus the uncorrected mono's where the
        correction had little stereo support. Both planes are smooth (from the cells) with a
        correction; without one the mono is sampled (NaN is 0). A held frame's correction
        rests on the previous output, not on stereo of its own: its support counts as none
        (its sigma is the uncorrected mono's, as before the held correction; measured: the
        inherited support took the 1-sigma coverage of the small bench from 59 % to 54 %).
        """
        corr = self._correction
        if cells is None:
            y = corr.stats(inv)                                  # [sh, sw] float32 1/m
            cv2.patchNaNs(y, 0.0)
            return cv2.multiply(y, y, scale=self.rho_pre ** 2), y
        targets, correction = cells
        unsupported = 1.0 if held else (1.0 - correction.support) ** 2
        rho2_low = self.rho_post ** 2 + targets.bend_var + \
            unsupported * self.rho_pre ** 2                       # [lh, lw] relative variance
        y_low = targets.mono_inv * correction.factor             # [lh, lw] 1/m
        return corr.to_stats((rho2_low * y_low * y_low).astype(np.float32)), \
            corr.to_stats(y_low.astype(np.float32))

    # ------------------------------------------------------------------ 11. fusion

    def _fuse(self, inv, ys, trust, unknown, mono_var, mono_s, sigma_s, conf_small, fit,
              interior, rows=None):
        """
        Fuse the trusted stereo into ``inv`` in place (ys is spent).

        ``rows``: (first, end), no trusted stereo outside them (``Fusion.fuse``); None: any.

        Returns (variance, stereo pixels, kept): the variance [H, W] float32 (1/m)^2, a new
        array, or None without uncertainty; kept: [H, W] uint8, nonzero where the stereo was
        taken as is (the mono not confirmed: the trust plane), or None.
        """
        o = self.options
        var = np.empty(inv.shape, np.float32) if o.compute_uncertainty else None
        fuse = o.fuse_stereo and not fit.stereo_suspect
        # The mono is fused with, and may veto, stereo only while the fit explains enough of
        # the stereo samples.
        confirmed = fit.source == 'previous' or fit.inlier_ratio >= o.consistency_min_inliers
        use = None
        if unknown is not None and fuse:
            # Unknown mono, trusted stereo: the stereo value (kept aside: the fusion
            # overwrites ys).
            use = unknown & (trust != 0)
            stereo_where_unknown = ys[use]
        kept, n = None, 0
        if fuse and confirmed:
            vs_small = stereo_variance(sigma_s, conf_small, o.confidence_noise_gain)
            n = self._fusion.fuse(inv, ys, trust, mono_var, vs_small, o.outlier_sigma,
                                  o.consistency, inv, var, mono_s, bands=self.bands,
                                  interior=interior, rows=rows)
        else:
            if var is not None:
                self._correction.upsample(mono_var, var)
            if fuse:
                # A mono prediction the stereo does not confirm never vetoes trusted stereo.
                # Through the uint8 trust plane as OpenCV's mask: numpy's boolean gather and
                # scatter cost 0.5-4 ms a 1280x720 plane, with the mask's branches mispredicted.
                kept = trust
                _masked_copy(ys, kept, inv)
                n = cv2.countNonZero(kept)
                if var is not None:
                    np.copyto(var, np.float32(sigma_s * sigma_s), where=kept != 0)
        if use is not None:
            inv[use] = stereo_where_unknown
            if var is not None:
                var[use] = sigma_s * sigma_s
        return var, n, kept

    # ------------------------------------------------------------------ 12. ground bound

    def _bound_plane(self, prepared, held):
        """
        Return the ground plane of the bound, or None.

        This frame's; a held frame's (too little or untrusted stereo) the last plane of a
        frame fitted to its stereo, at the same size.
        """
        o = self.options
        if not (o.ground_bound or o.ground_contact) or prepared.intrinsics is None:
            self._plane = None
            return None
        if not held:
            self._plane = None if prepared.plane is None else (prepared.plane, prepared.shape)
            return prepared.plane
        if self._plane is not None and self._plane[1] == prepared.shape:
            return self._plane[0]
        return None

    def _ground_bound(self, inv, var, plane, rel, sky_threshold):
        """
        Raise ``inv`` (in place) to the ground plane's inverse depth / (1 + margin) below it.

        A ray below the ground's horizon meets the ground: nothing seen along it is farther
        than the plane (a crest, where the road falls away, excepted: the plane is then
        extrapolated ground). Only on the rows where the plane's depth lies in ``[max_depth,
        max_output_depth / (1 + margin)]`` (beyond the trusted stereo: there the correction
        has nothing to learn from, and the fit's pitch error stays small), and not where the
        relative map is sky-like (at or below the sky rule's threshold: a crest's sky). NaN
        (unknown) stays NaN. The variance of a bounded pixel: the plane's at the margin
        (``(margin y)^2``), or the mono's when larger.
        """
        o = self.options
        h, w = inv.shape
        grow = 1.0 + o.ground_bound_margin
        y_lo, y_hi = grow / o.max_output_depth, 1.0 / o.max_depth
        if y_hi <= y_lo:
            return
        a, b, c = plane.a, plane.b, plane.c
        # 1/z = a u + b v + c, b > 0 (ground): the rows of [y_lo, y_hi] at either end column.
        ends = np.array([0.0, w - 1.0])
        v_lo, v_hi = (y_lo - a * ends - c) / b, (y_hi - a * ends - c) / b
        r0, r1 = max(int(np.floor(v_lo.min())), 0), min(int(np.ceil(v_hi.max())) + 1, h)
        if r0 >= r1:
            return
        y = (a * np.arange(w, dtype=np.float64)[None, :] +
             b * np.arange(r0, r1, dtype=np.float64)[:, None] + c).astype(np.float32)
        bound = y * np.float32(1.0 / grow)
        band = inv[r0:r1]
        with np.errstate(invalid='ignore'):
            act = (y >= y_lo) & (y <= y_hi) & (band < bound)       # NaN compares False
        if sky_threshold is not None:
            with np.errstate(invalid='ignore'):
                if rel.shape == inv.shape:
                    act &= ~(rel[r0:r1] <= sky_threshold)
                else:       # the relative map's nearest pixel, read where the bound acts
                    rs, cs = np.nonzero(act)
                    hr, wr = rel.shape
                    rr = np.clip(np.rint((rs + r0 + 0.5) * hr / h - 0.5), 0, hr - 1)
                    cc = np.clip(np.rint((cs + 0.5) * wr / w - 0.5), 0, wr - 1)
                    sky = rel[rr.astype(np.intp), cc.astype(np.intp)] <= sky_threshold
                    act[rs[sky], cs[sky]] = False
        np.copyto(band, bound, where=act)
        if var is not None:
            vb = var[r0:r1]
            plane_var = np.square(bound * np.float32(o.ground_bound_margin))
            np.copyto(vb, np.maximum(vb, plane_var), where=act)

    def _ground_steps(self, inv, var, prepared, rel, fit, sky_threshold, trust):
        """Step 12 (in place): the ground bound, then the ground contact, when switched on."""
        plane = self._bound_plane(prepared, fit.source == 'previous')
        if plane is None:
            return
        if self.options.ground_bound:
            self._ground_bound(inv, var, plane, rel, sky_threshold)
        if self.options.ground_contact:
            self._ground_contact(inv, var, plane, rel, fit, sky_threshold, trust)

    def _ground_contact(self, inv, var, plane, rel, fit, sky_threshold, trust):
        """
        Set (in place) the faces standing on the ground beyond the stereo to its depth there.

        A face takes the plane's inverse depth at its contact row (core/ground.py's
        ``ground_contact``).

        Only where the contact's depth lies in ``[max_depth, max_output_depth]`` and not on
        trusted stereo; a set pixel's variance is the contact's (its row's uncertainty).
        """
        o = self.options
        y_lo, y_hi = 1.0 / o.max_output_depth, 1.0 / o.max_depth
        if y_hi <= y_lo:
            return
        h, w = inv.shape
        top, bottom, y, sigma = ground_contact(rel, fit.scale, fit.shift, sky_threshold,
                                               plane, (h, w), y_lo, y_hi)
        cols = np.nonzero(np.isfinite(y))[0]
        if cols.size == 0:
            return
        c0, c1 = int(cols[0]), int(cols[-1]) + 1
        # The rows of each column's face, first <= v <= last (16-bit: fewer bytes to compare);
        # first = h, last = -1 where none (no contact, or no row between top and bottom).
        ok = np.isfinite(y[c0:c1])
        it, ut = (np.int16, np.uint16) if h < 2 ** 15 else (np.int32, np.uint32)
        first, last = np.full(c1 - c0, h, it), np.full(c1 - c0, -1, it)
        first[ok] = np.ceil(top[c0:c1][ok])
        last[ok] = np.floor(bottom[c0:c1][ok])
        empty = last < first
        first[empty], last[empty] = h, -1
        r0, r1 = max(int(first.min()), 0), min(int(last.max()) + 1, h)
        if r1 <= r0:
            return
        # first <= v <= last as one unsigned comparison, 0 <= v - first <= last - first (where
        # none: v - first in [-h, -1] and last - first = -1 - h, unsigned above it); then not
        # on trusted stereo (uint8 trust, nonzero there: the saturated 0/1 - trust is 0).
        rows = np.arange(r0, r1, dtype=it)[:, None]
        act = np.subtract(rows, first).view(ut) <= (last - first).view(ut)
        act = cv2.subtract(act.view(np.uint8), trust[r0:r1, c0:c1])
        # OpenCV's masked copy (four times numpy's copyto with a mask), from a full source.
        source = np.empty(act.shape, np.float32)
        source[...] = y[c0:c1].astype(np.float32)
        _masked_copy(source, act, inv[r0:r1, c0:c1])
        if var is not None:
            # The contact's variance (its row's uncertainty), not the mono's: the value is not
            # the mono's.
            source.fill(sigma * sigma)
            _masked_copy(source, act, var[r0:r1, c0:c1])

    # ------------------------------------------------------------------ 14. history

    def _remember(self, depth, unc):
        """Keep the output on the lattice for the next frame's jump test / self-alignment."""
        lat = self._lattice
        with np.errstate(divide='ignore', invalid='ignore'):
            self._prev_inv = (1.0 / depth[lat].astype(np.float64)).ravel()
            if unc is not None:
                u = unc[lat].astype(np.float64).ravel() * self._prev_inv ** 2
                self._prev_var = u * u
            else:
                self._prev_var = (self.rho_post * self._prev_inv) ** 2


def _masked_copy(source, mask, dst):
    """Copy ``source`` into ``dst`` (a view, written in place) where ``mask`` (uint8) is set."""
    out = cv2.copyTo(source, mask, dst)
    if not np.may_share_memory(out, dst):      # OpenCV wrote elsewhere: numpy's, in place
        np.copyto(dst, source, where=mask.view(bool))


class PreparedStereo(object):
    """
    The stereo side of one frame (``MetricAligner.prepare``), for ``MetricAligner.finish``.

    Opaque: arrays of its own (the stereo, its inverse depth and trust, their samples on the
    fit lattice, the statistics grid and the cells), ``shape`` (H, W) and ``sigma_inv`` (the
    stereo noise model, 1/m), the inputs it was prepared from, and which aligner prepared it
    under which options (``MetricAligner.is_current`` tells whether it still is the
    aligner's). ``finish`` spends its planes.
    """

    def __init__(self, owner, generation, inputs):
        self.owner, self.generation, self.inputs = owner, generation, inputs
        self.spent = False


def _check_out(out, shape):
    """Raise ValueError unless ``out`` is None or a C-contiguous float32 array of ``shape``."""
    if out is not None and not (isinstance(out, np.ndarray) and out.dtype == np.float32 and
                                out.shape == tuple(shape) and out.flags.c_contiguous and
                                out.flags.writeable):
        raise ValueError('`out` must be a writable C-contiguous float32 array of shape {}, '
                         'got {}'.format(tuple(shape), describe(out)))


def _check_prepared_type(prepared):
    """Raise ValueError unless ``prepared`` is a PreparedStereo (the argument named)."""
    if not isinstance(prepared, PreparedStereo):
        raise ValueError('`prepared` must be a PreparedStereo from MetricAligner.prepare, '
                         'got {}'.format(describe(prepared)))


def _lattice(height, width, fit_samples):
    """Return the fit lattice of a frame size: regular, read through strided views (cheap)."""
    n = height * width
    step = max(1.0, np.sqrt(n / float(fit_samples)))
    sy = max(1, int(round(step)))
    sx = max(1, int(round(n / float(fit_samples) / sy)))
    return (slice(sy // 2, None, sy), slice(sx // 2, None, sx))


def _stats_confidence(corr, conf):
    """
    Return the confidence at the statistics size.

    A non-finite value counts as 100 (the least reliable: such stereo is never trusted).
    Not +inf: its variance would be inf, and NaN (0 * inf) in the smooth planes the fusion
    interpolates, which vetoed the whole frame's stereo.
    """
    c = corr.stats(conf)                                   # [sh, sw] float32 1..100
    c[~np.isfinite(c)] = 100.0
    return c


def _check_guide(guide, stereo_depth):
    if isinstance(guide, np.ndarray) and guide.ndim == 3:
        check_image('guide', guide, channels=3, dtypes=(np.uint8,))
    else:
        check_image('guide', guide, dtypes=(np.uint8,))
    check_same_size('guide', guide, 'stereo_depth', stereo_depth)


def _focal_length(camera, focal_px, width):
    """Return the focal length (px) at the stereo width from ``camera`` or ``focal_px``."""
    if camera is not None and focal_px is not None:
        raise ValueError('give `camera` or `focal_px`, not both')
    if camera is not None:
        if not isinstance(camera, PinholeCamera):
            raise ValueError('`camera` must be a PinholeCamera, got {}'.format(
                describe(camera)))
        # The camera may be for another size.
        return camera.fx * float(width) / camera.width
    if focal_px is not None:
        return check_number('focal_px', focal_px, 0.0, None, low_open=True)
    return None


def _clear_sky_patches(inv, mask, step):
    """
    Set the corrected mono ``inv`` to 0 (+inf depth) on the sky's patches.

    ``mask`` (uint8, 1) is on a grid of every ``step``-th output pixel: its pixel (i, j) is
    the output's (step i, step j) and stands for the ``step`` x ``step`` block below and right
    of it. Only the bounding box of the mask is upsampled.
    """
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = rows[0] * step, (rows[-1] + 1) * step, cols[0] * step, (cols[-1] + 1) * step
    block = cv2.resize(mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], (c1 - c0, r1 - r0),
                       interpolation=cv2.INTER_NEAREST)
    h, w = inv.shape
    r1, c1 = min(r1, h), min(c1, w)
    np.copyto(inv[r0:r1, c0:c1], 0.0, where=block[:r1 - r0, :c1 - c0].view(bool))  # 0 or 1


def _limit_at(prepared, cols):
    """Return the sky's row limit (output pixels) at output columns ``cols`` (float64)."""
    return sky_rows(prepared.ground, prepared.margin_deg, cols, *prepared.intrinsics)


def _sky_limit(prepared, shape):
    """
    Return where the sky may be on a map of ``shape`` (the relative map's), or None.

    Per column, the row (float64 [w], at that size) above which it may; None without a
    ground plane.
    """
    if prepared.ground is None:
        return None
    h, w = prepared.shape
    hr, wr = shape
    cols = (np.arange(wr, dtype=np.float64) + 0.5) * w / wr - 0.5    # at the output size
    return (_limit_at(prepared, cols) + 0.5) * hr / h - 0.5


def _threshold_above(y, thresh, limit, r0=0):
    """
    Set ``y`` to 0 where at or below ``thresh`` (in place), on rows less than ``limit``.

    ``limit``: float64 [w] per column, or None (every row). Whole rows above the line in
    one threshold, the rows it crosses by a mask, none below it. ``y`` may be a row band:
    its first row is row ``r0`` of the map ``limit`` is for.
    """
    if limit is None:
        cv2.threshold(y, thresh, 0.0, cv2.THRESH_TOZERO, dst=y)
        return
    h = y.shape[0]
    lo = int(min(max(np.ceil(limit.min()) - r0, 0), h))     # rows < lo: all above the line
    hi = int(min(max(np.ceil(limit.max()) - r0, 0), h))     # rows >= hi: all below
    if lo > 0:
        cv2.threshold(y[:lo], thresh, 0.0, cv2.THRESH_TOZERO, dst=y[:lo])
    if hi > lo:
        band = y[lo:hi]
        rows = np.arange(r0 + lo, r0 + hi, dtype=np.float64)[:, None]
        np.copyto(band, cv2.threshold(band, thresh, 0.0, cv2.THRESH_TOZERO)[1],
                  where=rows < limit[None, :])


def _percentile_99(x):
    """Return ``np.percentile(x, 99)`` (linear interpolation) by one partition (4x faster)."""
    pos = 0.99 * (x.size - 1)
    k = int(pos)
    if k + 1 >= x.size:
        return float(np.max(x))
    part = np.partition(x, (k, k + 1))
    return float(part[k] + (pos - k) * (part[k + 1] - part[k]))


def _all_finite(x):
    """Whether every value of a float32 array is finite."""
    # A sum is finite exactly when every value is (float32 values cannot overflow a double
    # sum): one read of the array instead of a mask and its test (0.3 ms at 1280x720).
    return bool(np.isfinite(cv2.sumElems(x)[0] if x.size > 4 else np.sum(x, dtype=np.float64)))


def _result(fit, samples, depth, unc, n_stereo):
    return AlignedDepth(depth=depth, scale=fit.scale, shift=fit.shift,
                        inlier_ratio=fit.inlier_ratio if fit.source == 'stereo'
                        else float('nan'),
                        valid_fraction=samples.n_valid / float(samples.n_total),
                        uncertainty=unc, status=fit.status, reason=fit.reason,
                        stereo_fraction=n_stereo / float(depth.size), anchored=fit.anchored)


def _depth_and_sigma(inv, var, out):
    """
    Return depth (metres, in ``out``) and its 1-sigma uncertainty (in ``var``'s array).

    Inverse depth 0 (at or below 1/max_output_depth, the sky) is +inf depth; NaN stays NaN.
    The uncertainty is ``SIGMA_CALIBRATION sigma_y z^2`` (+inf on the sky, NaN where
    unknown); None without ``var``.
    """
    with np.errstate(divide='ignore', invalid='ignore'):
        depth = np.divide(np.float32(1.0), inv, out=out)      # [H, W] float32 metres
    if var is None:
        return depth, None
    # A floor keeps sigma > 0, so that the sky (z = +inf) gets +inf, not 0 * inf.
    unc = cv2.sqrt(cv2.max(var, 1e-20, dst=var), dst=var)     # [H, W] float32 1/m
    cv2.multiply(unc, depth, dst=unc, scale=SIGMA_CALIBRATION)
    cv2.multiply(unc, depth, dst=unc)                         # [H, W] float32 metres
    return depth, unc


def _robust_rho2(u2, base):
    """
    Relative variance rho^2 >= the floor of residuals with variance ``base + rho^2``.

    ``u2``: squared relative residuals; ``base``: their known variance part (stereo noise).
    The median of a chi-square with one degree of freedom is 0.455: ``rho^2 = median(u2) /
    0.455 - median(base)``, robust to outliers (one sort instead of an iterative solve).
    """
    rho2 = float(median(u2)) / _CHI2_MEDIAN - float(median(base))
    return max(rho2, _RHO_FLOOR ** 2)


def _row_medians(x):
    """Return ``np.median(x, axis=1)`` of a 2-D array by one partition."""
    k = x.shape[1] // 2
    if x.shape[1] % 2:
        return np.partition(x, k, axis=1)[:, k]
    part = np.partition(x, (k - 1, k), axis=1)
    return (part[:, k - 1] + part[:, k]) / 2


def _noise_regression(u, a, fixed_beta=None, bins=6):
    """
    (beta, rho^2) of ``var(u) = beta * a + rho^2`` from robust variances in quantile bins of a.

    beta is ``fixed_beta`` when given, else fitted and kept in [0.5, 2] (the stereo model is
    roughly right; without a focal length its level is a default the data corrects);
    rho^2 >= the floor.
    """
    order = np.argsort(a)
    n = a.size // bins * bins              # bins of similar stereo noise, equal sizes
    a_bins = a[order[:n]].reshape(bins, -1)
    u_bins = np.abs(u[order[:n]]).reshape(bins, -1)
    av = a_bins.mean(axis=1)
    # Robust variances of zero-mean residuals: (1.4826 median |u|)^2 per bin.
    vv = (_MAD_TO_SIGMA * _row_medians(u_bins)) ** 2
    wv = 1.0 / np.maximum(vv, 1e-12)        # relative precision of each bin's variance
    # Weighted least squares of vv ~ beta * av + rho2, then the bounds.
    sw, sa, sv = wv.sum(), (wv * av).sum(), (wv * vv).sum()
    saa, sav = (wv * av * av).sum(), (wv * av * vv).sum()
    det = sw * saa - sa * sa
    if det > 1e-30:
        beta = (sw * sav - sa * sv) / det
        rho2 = (sv - beta * sa) / sw
    else:
        beta, rho2 = 1.0, float(median(vv))
    # beta is identifiable only when the stereo term varies enough across the bins (a range
    # of depths): otherwise the stereo model is taken as given.
    if fixed_beta is None and av[-1] < 10.0 * av[0]:
        fixed_beta = 1.0
    if fixed_beta is not None or not 0.5 <= beta <= 2.0:
        beta = fixed_beta if fixed_beta is not None else min(max(beta, 0.5), 2.0)
        rho2 = float(((vv - beta * av) * wv).sum() / sw)
    return float(beta), max(float(rho2), _RHO_FLOOR ** 2)


__all__ = ['AlignedDepth', 'AlignerOptions', 'MetricAligner', 'PreparedStereo', 'RELATIVE_KINDS',
           'STATUSES', 'option_specs']

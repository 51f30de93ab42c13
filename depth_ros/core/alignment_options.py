"""
MetricAligner's options: one frozen dataclass, the single source of truth.

Each field carries its default and, in ``dataclasses.field(metadata=...)``, its range (``low`` /
``high``, with ``low_open`` / ``high_open`` ends; None = unbounded), whether it is an integer,
its ``choices``, a one-line ``description`` and whether it is safe to change while running
(``runtime``). ``AlignerOptions(**kwargs)`` validates every value with
``depth_ros.core.checks.check_number`` (ValueError naming option and value) and the
cross-option rules; ``option_specs()`` lists the fields for whoever declares them as
parameters (alignment_node derives its ROS parameters from it).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import List, NamedTuple, Optional, Tuple

from depth_ros.core.checks import check_number
import numpy as np

RELATIVE_KINDS = ('disparity', 'depth')


class OptionSpec(NamedTuple):
    """One option: what a parameter declaration needs."""

    name: str
    default: object
    low: Optional[float]
    high: Optional[float]
    integer: bool
    choices: Optional[Tuple[str, ...]]
    description: str
    low_open: bool = False
    high_open: bool = False
    runtime: bool = True        # may change while running (a new AlignerOptions is applied)
    allow_none: bool = False    # None is a legal value (the feature is off)


def _opt(default, description, low=None, high=None, integer=False, choices=None,
         low_open=False, high_open=False, runtime=True, allow_none=False):
    return field(default=default, metadata=dict(
        description=description, low=low, high=high, integer=integer, choices=choices,
        low_open=low_open, high_open=high_open, runtime=runtime, allow_none=allow_none))


@dataclass(frozen=True)
class AlignerOptions(object):
    """
    Options of MetricAligner (keyword arguments of ``MetricAligner(**kwargs)``).

    See docs/core.md for what each does; ``option_specs()`` gives ranges and descriptions.
    """

    relative_kind: str = _opt(
        'disparity', 'convention of the relative input: disparity (Depth Anything V2: '
        '1/depth = scale*relative + shift) or depth (Marigold, 0 near 1 far)',
        choices=RELATIVE_KINDS, runtime=False)
    min_depth: float = _opt(0.3, 'stereo depth trusted from (m)', 0.0, None, low_open=True)
    max_depth: float = _opt(20.0, 'stereo depth trusted up to (m)', 0.0, None, low_open=True)
    confidence_threshold: float = _opt(
        50.0, 'ZED confidence (1..100, larger = less reliable) above which stereo is not '
        'trusted; 100 trusts every pixel', 0.0, 100.0)
    max_output_depth: float = _opt(
        100.0, 'aligned depth beyond this is +inf (too far) (m)', 0.0, None, low_open=True)
    sky_fraction: float = _opt(
        0.02, "disparity kind: relative values at or below this fraction of the frame's "
        '99th percentile are sky, +inf (DA-V2 predicts about 0 there); 0 disables', 0.0, 0.5)
    sky_anchor_weight: float = _opt(
        0.3, 'weight of the sky as an infinite-depth sample in the fit, relative to all '
        'stereo samples together (anchors the shift, hence the far range); 0 disables',
        0.0, 100.0)
    sky_anchor_min_fraction: float = _opt(
        0.03, 'the sky anchors the fit only when at least this fraction of the fit samples '
        'is sky with no trusted stereo', 0.0, 1.0, low_open=True)
    sky_horizon: bool = _opt(
        True, 'disparity kind, with a camera: the sky rule holds only above the horizon of '
        'the ground plane the stereo sees (when it sees one), down to '
        'sky_horizon_margin_deg below it')
    sky_horizon_margin_deg: float = _opt(
        0.5, 'the sky may reach this angle (degrees) below the ground plane\'s horizon (a '
        'crest ahead)', 0.0, 45.0)
    ground_bound: bool = _opt(
        True, 'disparity kind, with a camera: below the horizon of the ground plane the '
        'stereo sees, no output is farther than the plane along its ray (times 1 + '
        'ground_bound_margin); only where the plane is beyond max_depth and within '
        'max_output_depth')
    ground_bound_margin: float = _opt(
        0.05, 'relative margin of the ground bound: depth at most (1 + this) times the '
        "plane's depth", 0.0, 1.0)
    ground_contact: bool = _opt(
        True, 'disparity kind, with a camera: an object standing on the ground plane beyond '
        "max_depth (its contact row found in the mono's columns) takes the plane's depth at "
        'its contact row over its vertical face; only where that depth is within '
        'max_output_depth, never on trusted stereo')
    baseline_m: float = _opt(
        0.12, 'stereo baseline (m; ZED2 0.12; -P[0,3]/P[0,0] of the right CameraInfo)',
        0.0, 10.0, low_open=True)
    disparity_noise_px: float = _opt(
        0.3, 'stereo disparity noise (px, 1 sigma, at the stereo resolution): depth noise '
        'is depth^2 * this / (focal * baseline)', 0.0, 100.0, low_open=True)
    confidence_noise_gain: float = _opt(
        1.0, 'the disparity noise grows by this factor times (confidence - 1) / 99 with the '
        'ZED confidence', 0.0, 100.0)
    fit_samples: int = _opt(4096, 'size of the fixed pixel subsample the fit uses', 16,
                            10 ** 7, integer=True)
    min_valid_samples: int = _opt(
        64, 'fewer valid stereo samples than this: aligned to the previous output '
        "instead ('held')", 2, 10 ** 7, integer=True)
    ransac_iterations: int = _opt(64, 'two-point RANSAC hypotheses of the fit', 1, 10 ** 5,
                                  integer=True)
    inlier_threshold: float = _opt(
        0.1, 'relative inverse-depth error of an inlier (at least 3 sigma of the stereo '
        'noise)', 0.0, 10.0, low_open=True)
    min_inlier_ratio: float = _opt(0.3, 'a fit with fewer inliers is rejected', 0.0, 1.0)
    irls_iterations: int = _opt(3, 'Tukey-weighted refinements after RANSAC', 0, 100,
                                integer=True)
    temporal_alpha: float = _opt(
        1.0, 'weight of this frame against the previous metric output in the local '
        'correction, where they agree (1: off; the default, see docs/core.md)', 0.0, 1.0,
        low_open=True)
    jump_threshold: float = _opt(
        0.25, 'a stereo fit whose metric depth differs from the previous output by more '
        'than this (median relative change) is not trusted ...', 0.0, None, low_open=True)
    jump_frames: int = _opt(3, '... unless the jump persists this many frames (scene '
                            'change)', 1, 10 ** 6, integer=True)
    correction_radius_px: int = _opt(
        32, 'radius (px at the output size) of the edge-aware local correction; 0 disables',
        0, 4096, integer=True)
    correction_downsample: int = _opt(
        8, 'the local correction is computed at 1/this of the output size', 1, 64,
        integer=True)
    max_correction: float = _opt(0.5, 'bound on |log| of the local correction factor', 0.0,
                                 5.0)
    consistency: Optional[float] = _opt(
        0.25, 'stereo further from the aligned mono than this fraction of its inverse depth '
        '(plus 2 sigma of the stereo noise) is an outlier, however uncertain the mono is '
        '(the local correction uses twice this band); None: only the statistical test', 0.0,
        None, low_open=True, allow_none=True)
    outlier_sigma: float = _opt(
        6.0, 'stereo further than this many combined sigmas from the aligned mono is an '
        'outlier (not fused)', 0.0, None, low_open=True)
    consistency_min_inliers: float = _opt(
        0.6, 'mono is fused with (and may veto) stereo only while the fit explains at '
        'least this fraction of the stereo samples', 0.0, 1.0)
    fuse_stereo: bool = _opt(True, 'fuse trusted stereo; false: aligned mono only')
    compute_uncertainty: bool = _opt(True, 'fill AlignedDepth.uncertainty')
    finish_threads: int = _opt(
        1, 'threads of the full-resolution per-pixel passes after inference (finish and '
        'the cloud), in row bands; the output is the same for any number', 1, 64,
        integer=True)
    seed: int = _opt(0, 'seed of the RANSAC sampler (reproducible runs)', 0, 2 ** 32 - 1,
                     integer=True, runtime=False)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _check(f, getattr(self, f.name)))
        if self.max_depth <= self.min_depth:
            raise ValueError('option `max_depth` ({!r}) must be > `min_depth` ({!r})'.format(
                self.max_depth, self.min_depth))

    def replace(self, **changes) -> 'AlignerOptions':
        """Return a checked copy with ``changes`` applied."""
        unknown = sorted(set(changes) - set(OPTION_NAMES))
        if unknown:
            raise ValueError(_unknown_message(unknown))
        return dataclasses.replace(self, **changes)


def _check(f, value):
    meta = f.metadata
    if meta['choices'] is not None:
        if value not in meta['choices']:
            raise ValueError('option `{}` must be one of {}, got {!r}'.format(
                f.name, tuple(meta['choices']), value))
        return value
    if isinstance(f.default, bool):
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError('option `{}` must be a bool, got {!r}'.format(f.name, value))
        return bool(value)
    return check_number(f.name, value, meta['low'], meta['high'], integer=meta['integer'],
                        low_open=meta['low_open'], high_open=meta['high_open'],
                        allow_none=meta['allow_none'], kind='option')


def _unknown_message(names) -> str:
    return 'unknown MetricAligner option(s) {}; see help(MetricAligner)'.format(
        ', '.join('`{}`'.format(k) for k in sorted(names)))


def option_specs() -> List[OptionSpec]:
    """(name, default, low, high, integer, choices, description, ...) of every option."""
    out = []
    for f in dataclasses.fields(AlignerOptions):
        m = f.metadata
        out.append(OptionSpec(f.name, f.default, m['low'], m['high'], m['integer'],
                              tuple(m['choices']) if m['choices'] else None,
                              m['description'], m['low_open'], m['high_open'], m['runtime'],
                              m['allow_none']))
    return out


OPTION_NAMES = tuple(f.name for f in dataclasses.fields(AlignerOptions))


def make_options(options: Optional[AlignerOptions] = None, **kwargs) -> AlignerOptions:
    """Make AlignerOptions from an instance and/or keyword arguments (unknown: ValueError)."""
    unknown = sorted(set(kwargs) - set(OPTION_NAMES))
    if unknown:
        raise ValueError(_unknown_message(unknown))
    if options is None:
        return AlignerOptions(**kwargs)
    if not isinstance(options, AlignerOptions):
        raise ValueError('`options` must be an AlignerOptions, got {!r}'.format(options))
    return options.replace(**kwargs) if kwargs else options


__all__ = ['AlignerOptions', 'OPTION_NAMES', 'OptionSpec', 'RELATIVE_KINDS', 'make_options',
           'option_specs']

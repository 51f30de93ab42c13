"""
A tiny run of the fusion benchmark (benchmarks/fusion.py): its goals, with margins.

Small frames (320 px: the network's detail loss covers four times more of the image than at
1280 px) and one short sequence, so the margins are wider than the goals; no timings (those
are the benchmark's job). Runs on Python 3.8 with numpy, OpenCV and pytest only: the
Middlebury scene needs scikit-image and is left out here.
"""
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def report():
    spec = importlib.util.spec_from_file_location(
        'fusion_benchmark', os.path.join(ROOT, 'benchmarks', 'fusion.py'))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench.run_benchmark(quick=True, width=320, n_frames=10, seeds=(0,),
                               methods=('stereo', 'legacy', 'fused'), middlebury=False,
                               timing=False, plots=False, echo=lambda line: None)


def scene(report, name, method='fused'):
    return report['scenes'][name][method]


def test_dense_in_every_frame_and_held_without_stereo(report):
    fused = scene(report, 'driving')
    assert fused['density_min'] >= 0.99, fused['density_min']
    # The frames with 0.3 % of the stereo and the one without any are 'held': aligned to
    # the previous metric output.
    assert fused['statuses'].get('held', 0) >= 3, fused['statuses']
    assert scene(report, 'driving', 'stereo')['density_min'] == 0.0


def test_a_flickering_network_costs_little(report):
    g = report['goals']['flicker_cost']
    assert g['value'] <= 1.2, g
    legacy = scene(report, 'static', 'legacy')['all']['abs_rel'] / \
        scene(report, 'static_single_frame', 'legacy')['all']['abs_rel']
    assert g['value'] < legacy, (g['value'], legacy)


def test_better_than_stereo_and_the_legacy_aligner(report):
    fused, legacy, stereo = (scene(report, 'driving', m) for m in ('fused', 'legacy', 'stereo'))
    assert fused['road']['abs_rel'] < 0.6 * legacy['road']['abs_rel'], (
        fused['road']['abs_rel'], legacy['road']['abs_rel'])
    assert fused['stereo_valid']['abs_rel'] < stereo['stereo_valid']['abs_rel']
    assert fused['20-80 m']['abs_rel'] < legacy['20-80 m']['abs_rel']
    assert fused['per_frame_max_abs_rel'] < legacy['per_frame_max_abs_rel']
    assert fused['temporal'] < legacy['temporal']


def test_sky_flying_points_and_uncertainty(report):
    fused = scene(report, 'driving')
    assert fused['sky_inf_min'] >= 0.9, fused['sky_inf_min']     # 98 % at 1280 px
    assert fused['flying'] <= 0.02, fused['flying']
    assert fused['flying'] < fused['flying_unfiltered'], 'the cloud edge test removes some'
    assert 0.5 <= fused['calib_1sigma_all'] <= 0.9, fused['calib_1sigma_all']
    assert fused['calib_2sigma_all'] > fused['calib_1sigma_all']

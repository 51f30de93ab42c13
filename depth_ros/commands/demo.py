"""
`depth-ros demo`: the whole pipeline on the bundled sample, with no ROS and no camera.

Steps: the Middlebury 2014 Motorcycle pair (scikit-image, with ground truth) -> stereo depth
with OpenCV SGBM (standing in for the ZED SDK) -> Depth Anything V2 -> MetricAligner fusion
-> the outputs of `depth-ros fuse` (depth.npy, depth.png, points.ply, alignment.json)
plus report.md / report.json: AbsRel, delta1 and density against the ground truth, for stereo
alone and for the fused depth. The inputs are saved next to them
(stereo_depth.npy, confidence.npy, relative.npy, gt_depth.npy, left.png) so every number in
the report can be recomputed from the files.

Without --model the network is the one depth_node runs with no model argument (backend auto,
model auto: depth_ros.inference.auto and default_model), on the model `depth-ros model setup`
prepares. When it cannot be had (nothing on disk, no internet): where torch is installed (the
documented `make demo` fallback) an UNTRAINED ViT-S, which the demo announces in its first
lines and in the report, its numbers then showing that the pipeline runs, not what the model
can do; elsewhere (a robot with onnxruntime and no torch) one line that names the fix, exit 2.

``--backend`` takes depth_node's networks, auto | onnxruntime | tensorrt | torch (default auto),
for the default model as for a --model; a backend whose packages are not installed is one line
that names what to install, exit 2, before anything runs.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Dict, List, Optional, Tuple

from depth_ros.cli import HelpFormatter
from depth_ros.commands import _args

LOG = logging.getLogger('depth_ros.demo')

UNTRAINED_LABEL = 'UNTRAINED network: numbers show the pipeline runs, not model quality'
# What the one line says to do when the default model cannot be had (depth_node's FATAL line
# says `ros2 run depth_ros depth-ros model setup`).
FIX = ('run `depth-ros model setup` (with internet access; offline machines: docs/models.md, '
       '"Offline robots"), or pass --model FILE.onnx')
BACKEND_NAMES = {'onnxruntime': 'ONNX Runtime', 'tensorrt': 'TensorRT', 'torch': 'PyTorch'}
# depth_node's `backend` choices that are networks (standin is not a model: nothing to report).
BACKENDS = ('auto', 'onnxruntime', 'tensorrt', 'torch')
# What each backend imports, and how to install it.
BACKEND_MODULES = {'onnxruntime': ('onnxruntime',), 'tensorrt': ('tensorrt', 'pycuda'),
                   'torch': ('torch', 'transformers')}
BACKEND_INSTALL = {'onnxruntime': 'install depth_ros[onnx]',
                   'tensorrt': 'install TensorRT and pycuda (JetPack: apt install '
                               'python3-libnvinfer; pip install pycuda)',
                   'torch': 'install depth_ros[export]'}
INPUT_FILES = ('left.png', 'stereo_depth.npy', 'confidence.npy', 'relative.npy',
               'gt_depth.npy')


def default_input_size(width: int, height: int, model_width: int = 518) -> Tuple[int, int]:
    """
    Model input (w, h) for an image: ``model_width`` wide, the image's aspect, multiples of 14.

    The sample is 741x500 (about 3:2), so 518x294 (16:9, the ZED default) would distort it.
    """
    h = max(14, int(round(model_width * height / float(width) / 14.0)) * 14)
    return model_width, h


def _missing_modules(backend: str) -> List[str]:
    """Return the modules of ``backend`` that are not installed (asked, not imported)."""
    import importlib.util
    return [name for name in BACKEND_MODULES.get(backend, ())
            if importlib.util.find_spec(name) is None]


def _torch_installed() -> bool:
    """Whether torch and transformers are installed (asked, not imported: that takes seconds)."""
    return not _missing_modules('torch')


def check_backend(backend: str) -> None:
    """Raise a one-line ValueError naming what to install where ``backend`` is missing."""
    if backend not in BACKENDS:
        raise ValueError('--backend must be one of {}, got {!r}'.format(
            ', '.join(BACKENDS), backend))
    missing = _missing_modules(backend)
    if missing:
        raise ValueError('--backend {}: {} is not installed here (no module named {}); {}, '
                         'or leave --backend auto'.format(
                             backend, BACKEND_NAMES[backend], ' or '.join(missing),
                             BACKEND_INSTALL[backend]))


def _announce_untrained(echo, reason: str) -> None:
    """Say first, in two lines, that the network about to run is untrained, and why."""
    echo('*** {} ***'.format(UNTRAINED_LABEL))
    echo('*** running Depth Anything V2 with RANDOM weights: {} ***'.format(reason))


def _untrained(size: Tuple[int, int], cache_dir: Optional[str], threads: Optional[int],
               reason: str, backend: str = 'auto'):
    """Open the documented fallback (torch installed): an untrained ViT-S, ONNX Runtime if any."""
    from depth_ros.inference import load_depth_model
    from depth_ros.inference.model_store import untrained_description, untrained_vits

    if backend == 'torch' or _missing_modules('onnxruntime'):
        net = load_depth_model('vits', backend='torch', input_size=size, random_weights=True,
                               seed=0)
        return net, untrained_description(0, reason) + ' (PyTorch)', False, None, 'torch'
    path, description, trained = untrained_vits(cache_dir, size, reason)
    options = {'intra_op_threads': threads} if threads else {}
    net = load_depth_model(path, backend='onnxruntime', **options)
    return net, description, trained, path, 'onnxruntime'


def open_default_model(size: Tuple[int, int], cache_dir: Optional[str] = None,
                       threads: Optional[int] = None, echo=print, api=None,
                       backend: str = 'auto'):
    """
    Open the default model as depth_node does with no model argument; returns a tuple.

    (model, description, trained, onnx path or None, backend). Backend ``backend``, auto by
    default (a TensorRT engine where TensorRT runs, else ONNX Runtime, else PyTorch where only
    it is installed), and model auto (depth_ros.inference.default_model: the prepared or
    public ONNX in the depth_ros cache, the models folders or the Hugging Face cache, a
    download, the checkpoint where torch is installed). When none can be had: where torch is
    installed (`make demo`'s depth_ros[export]), the documented fallback, an UNTRAINED ViT-S
    (on the backend given, but for tensorrt, which has none), announced first (two lines
    through ``echo``); elsewhere default_model.ModelUnavailable, one line with the fix.
    """
    from depth_ros.inference import auto, default_model, ModelLoadError

    fallback = backend != 'tensorrt' and _torch_installed()
    try:
        opened = auto.open_depth_model(backend, auto.AUTO, input_size=size,
                                       cache_dir=cache_dir, intra_op_threads=threads,
                                       fix=FIX, api=api)
    except default_model.ModelUnavailable as exc:
        if not fallback:
            raise
        reason = str(exc)
    except ModelLoadError as exc:
        if backend == 'torch' and fallback:
            # The checkpoint is neither cached nor downloadable (the text says what to do).
            _announce_untrained(echo, str(exc))
            return _untrained(size, cache_dir, threads, 'the trained checkpoint is not on this '
                              'machine and cannot be had (the line above says why)', 'torch')
        # backend auto found neither TensorRT nor onnxruntime: PyTorch, where installed
        # (fallback: with backend auto, whether torch is).
        if exc.backend != auto.AUTO or not fallback:
            raise
        try:
            opened = auto.open_depth_model('torch', auto.AUTO, input_size=size)
        except ModelLoadError as torch_exc:
            reason = '{}; fix: install depth_ros[onnx] and {}'.format(torch_exc, FIX)
        else:
            return opened.model, _describe(opened), True, None, 'torch'
    else:
        for warning in opened.warnings:
            LOG.warning('%s', warning)
        return opened.model, _describe(opened), True, opened.onnx, opened.backend
    _announce_untrained(echo, reason)
    return _untrained(size, cache_dir, threads, 'the trained model is not on this machine and '
                      'cannot be had (the line above says where the demo looked)', backend)


def open_given_model(model: str, size: Tuple[int, int], backend: str = 'auto',
                     cache_dir: Optional[str] = None, threads: Optional[int] = None, echo=print,
                     api=None):
    """
    Open ``--model`` on ``backend``; returns the tuple of :func:`open_default_model`.

    auto and onnxruntime: ONNX Runtime on the .onnx file, or on the ONNX exported once from a
    checkpoint (folder, .pth, hub id; needs torch). torch: the checkpoint itself. tensorrt:
    an engine (.engine, .plan) as it is, else the engine built once from that ONNX file.
    """
    from depth_ros.inference import auto, load_depth_model, resolve_demo_model

    engine = model.strip().lower().endswith(('.engine', '.plan'))
    if engine and backend != 'tensorrt':
        raise ValueError('--model {} is a TensorRT engine: run it with --backend tensorrt'
                         .format(model))
    if backend == 'torch':
        if model.strip().lower().endswith('.onnx'):
            raise ValueError('--backend torch runs a checkpoint (a folder, .pth or hub id), got '
                             'the ONNX file {}: run it with --backend onnxruntime'.format(model))
        net = load_depth_model(model, backend='torch', input_size=size)
        return net, 'Depth Anything V2 checkpoint {} (PyTorch)'.format(model), True, None, \
            'torch'
    if engine:
        opened = auto.open_depth_model('tensorrt', model, api=api)
        return opened.model, 'TensorRT engine {}'.format(opened.path), True, None, 'tensorrt'
    onnx_path, description, trained = resolve_demo_model(model, cache_dir=cache_dir,
                                                         input_size=size)
    if not trained:
        echo('*** {} ***'.format(UNTRAINED_LABEL))
    if backend == 'tensorrt':
        opened = auto.open_depth_model('tensorrt', onnx_path, input_size=size, api=api)
        return opened.model, '{}; TensorRT engine {}'.format(description, opened.path), \
            trained, onnx_path, 'tensorrt'
    options = {'intra_op_threads': threads} if threads else {}
    return load_depth_model(onnx_path, backend='onnxruntime', **options), description, \
        trained, onnx_path, 'onnxruntime'


def _describe(opened) -> str:
    """Depth Anything V2 Small (repo, Apache-2.0): backend, file, why, input size."""
    from depth_ros.inference import default_model

    text = opened.summary()
    prefix = 'depth model: '
    return 'Depth Anything V2 Small ({}, Apache-2.0): {}'.format(
        default_model.DEFAULT_REPO, text[len(prefix):] if text.startswith(prefix) else text)


def evaluate(stereo_depth, fused_depth, gt_depth) -> Dict[str, Dict[str, float]]:
    """
    Metrics against ground truth: each prediction on its own valid pixels, plus density.

    ``density`` is the fraction of ground-truth pixels with a finite, positive prediction;
    AbsRel and delta1 are over those pixels. ``fused_in_stereo_holes`` scores the fused depth
    only where stereo has no depth: what the network adds.
    """
    import numpy as np

    from depth_ros.core.metrics import compute_metrics

    def score(pred, region=None):
        with np.errstate(invalid='ignore'):
            ok = np.isfinite(pred) & (pred > 0)
        gt_ok = np.isfinite(gt_depth) & (gt_depth > 0)
        if region is not None:
            gt_ok &= region
        n_gt = int(gt_ok.sum())
        covered = ok & gt_ok
        out = {'density': float(covered.sum()) / n_gt if n_gt else float('nan'),
               'n_gt': n_gt, 'n': int(covered.sum())}
        if covered.any():
            m = compute_metrics(pred, gt_depth, mask=covered)
            out.update(abs_rel=m['abs_rel'], delta1=m['delta1'], rmse=m['rmse'])
        else:
            out.update(abs_rel=float('nan'), delta1=float('nan'), rmse=float('nan'))
        return out

    with np.errstate(invalid='ignore'):
        holes = ~(np.isfinite(stereo_depth) & (stereo_depth > 0))
    return {'stereo': score(stereo_depth), 'fused': score(fused_depth),
            'fused_in_stereo_holes': score(fused_depth, holes)}


def _fmt(value, pct=False) -> str:
    if value is None or value != value:
        return 'n/a'
    return '{:.1f} %'.format(100.0 * value) if pct else '{:.4f}'.format(value)


def write_report(out_dir: str, report: Dict) -> Tuple[str, str]:
    """report.json and report.md in ``out_dir``; returns their paths."""
    json_path = os.path.join(out_dir, 'report.json')
    md_path = os.path.join(out_dir, 'report.md')
    with open(json_path, 'w') as f:
        json.dump(report, f, indent=2, sort_keys=True)
        f.write('\n')
    m = report['metrics']
    lines = ['# depth-ros demo report', '']
    if not report['trained']:
        lines += ['**{}.**'.format(UNTRAINED_LABEL), '']
    lines += ['- Sample: {}'.format(report['sample']['name']),
              '- Model: {}'.format(report['model']),
              '- Stereo: OpenCV SGBM (stands in for the ZED SDK depth)',
              '- Alignment: status {status}, scale {scale:.6g}, shift {shift:.6g}, '
              'inlier ratio {inlier}'.format(status=report['alignment']['status'],
                                             scale=report['alignment']['scale'] or 0.0,
                                             shift=report['alignment']['shift'] or 0.0,
                                             inlier=_fmt(report['alignment']['inlier_ratio'],
                                                         True)),
              '',
              '| depth | AbsRel | delta1 | RMSE (m) | density |',
              '|---|---|---|---|---|']
    names = (('stereo', 'stereo (SGBM)'), ('fused', 'fused'),
             ('fused_in_stereo_holes', 'fused, in stereo holes only'))
    for key, label in names:
        r = m[key]
        lines.append('| {} | {} | {} | {} | {} |'.format(
            label, _fmt(r['abs_rel']), _fmt(r['delta1'], True), _fmt(r['rmse']),
            _fmt(r['density'], True)))
    lines += ['', 'AbsRel, delta1 and RMSE are over the ground-truth pixels that each depth '
              'covers; density is the fraction of ground-truth pixels covered. Timings (ms): '
              + ', '.join('{} {:.0f}'.format(k, v) for k, v in report['timing_ms'].items()),
              '']
    with open(md_path, 'w') as f:
        f.write('\n'.join(lines))
    return json_path, md_path


def apply_threads(threads: Optional[int], backend: str, echo=print) -> None:
    """
    Give ``--threads`` to the backend that runs.

    ONNX Runtime took it as its intra-op threads when the session opened; PyTorch's pool is set
    here (``torch.set_num_threads``); TensorRT runs on the GPU, so the demo says the count is
    not used rather than drop it silently.
    """
    if not threads:
        return
    if backend == 'torch':
        import torch
        torch.set_num_threads(int(threads))
    elif backend == 'tensorrt':
        echo('--threads {}: not used by TensorRT (the network runs on the GPU)'.format(threads))


def run_demo(model: Optional[str], out_dir: str, input_size: Optional[Tuple[int, int]] = None,
             threads: Optional[int] = None, cache_dir: Optional[str] = None,
             show_progress: bool = True, echo=print, backend: str = 'auto') -> Dict:
    """Run the demo (the CLI and the tests call it); return the report dict."""
    check_backend(backend)
    import cv2
    import numpy as np
    from tqdm.auto import tqdm

    from depth_ros.commands.fuse import fuse_and_write
    from depth_ros.sources.sample import load_sample, sample_stereo_depth

    timing = {}
    t0 = time.perf_counter()
    sample = load_sample()
    size = input_size or default_input_size(sample.camera.width, sample.camera.height)
    if model is None:
        net, description, trained, onnx_path, backend = open_default_model(
            size, cache_dir=cache_dir, threads=threads, echo=echo, backend=backend)
    else:
        net, description, trained, onnx_path, backend = open_given_model(
            model, size, backend, cache_dir=cache_dir, threads=threads, echo=echo)
    timing['model_load'] = (time.perf_counter() - t0) * 1e3
    apply_threads(threads, backend, echo)
    echo('model: {}'.format(description))
    echo('sample: Middlebury 2014 Motorcycle ({}x{}), ground truth from its disparity'.format(
        sample.camera.width, sample.camera.height))

    steps = tqdm(total=3, desc='demo', unit='step', disable=not show_progress)
    try:
        steps.set_postfix_str('stereo (SGBM)')
        t = time.perf_counter()
        stereo_depth, confidence = sample_stereo_depth(sample)
        timing['stereo_sgbm'] = (time.perf_counter() - t) * 1e3
        steps.update(1)

        steps.set_postfix_str('network ({})'.format(BACKEND_NAMES.get(backend, backend)))
        t = time.perf_counter()
        relative = net.predict(sample.left)
        timing['network'] = (time.perf_counter() - t) * 1e3
        steps.update(1)

        steps.set_postfix_str('fuse and write')
        t = time.perf_counter()
        result = fuse_and_write(sample.left, relative, stereo_depth, confidence, sample.camera,
                                out_dir)
        timing['fuse_and_write'] = (time.perf_counter() - t) * 1e3
        steps.update(1)
    finally:
        steps.close()

    inputs = {'stereo_depth.npy': stereo_depth, 'confidence.npy': confidence,
              'relative.npy': relative, 'gt_depth.npy': sample.gt_depth}
    for name, array in inputs.items():
        np.save(os.path.join(out_dir, name), array.astype(np.float32, copy=False))
    cv2.imwrite(os.path.join(out_dir, 'left.png'), sample.left)

    metrics = evaluate(stereo_depth, result['depth'], sample.gt_depth)
    report = {
        'label': '' if trained else UNTRAINED_LABEL,
        'trained': bool(trained),
        'model': description,
        'backend': backend,
        'onnx': onnx_path,
        'input_size': list(net.input_size),
        'sample': {'name': 'Middlebury 2014 Motorcycle (scikit-image stereo_motorcycle)',
                   'width': sample.camera.width, 'height': sample.camera.height,
                   'fx': sample.camera.fx, 'cx': sample.camera.cx, 'cy': sample.camera.cy,
                   'baseline_m': sample.baseline_m, 'doffs': sample.doffs},
        'alignment': result['alignment'],
        'metrics': metrics,
        'timing_ms': {k: round(v, 1) for k, v in timing.items()},
        'files': sorted(list(result['files']) + list(INPUT_FILES)
                        + ['report.json', 'report.md']),
    }
    write_report(out_dir, report)
    for key, label in (('stereo', 'stereo'), ('fused', 'fused ')):
        r = metrics[key]
        echo('{}: AbsRel {}  delta1 {}  density {}'.format(
            label, _fmt(r['abs_rel']), _fmt(r['delta1'], True), _fmt(r['density'], True)))
    if not trained:
        echo('({})'.format(UNTRAINED_LABEL))
    echo('wrote {} (report.md, report.json, depth.npy, depth.png, points.ply, '
         'alignment.json)'.format(out_dir))
    return report


def run(args) -> int:
    """Entry point of `depth-ros demo`."""
    size = None
    if args.input_size:
        size = _args.parse_size(args.input_size, '--input-size', '518x350', model_input=True)
    if args.threads is not None and args.threads < 1:
        raise ValueError('--threads must be >= 1, got {}'.format(args.threads))
    run_demo(args.model, args.out, input_size=size, threads=args.threads,
             cache_dir=args.cache_dir, show_progress=not args.no_progress,
             backend=args.backend)
    return 0


def register(subparsers) -> None:
    """Add the `demo` sub-command."""
    p = subparsers.add_parser(
        'demo', help='run the whole pipeline on the bundled sample (no ROS, no camera)',
        description='Stereo (SGBM) + Depth Anything V2 + fusion on the bundled Middlebury '
                    'sample; writes the fuse outputs and a report against ground truth. '
                    'Without --model it runs the model depth_node runs with no model '
                    'argument (backend auto, model auto; `depth-ros model setup` prepares '
                    'it). Where that cannot be had and torch is installed it runs an '
                    'UNTRAINED network and says so; without torch it stops with one line.',
        formatter_class=HelpFormatter)
    p.add_argument('--model', default=None,
                   help='an .onnx file, a checkpoint folder, an official .pth or a hub id '
                        '(ONNX Runtime for backend auto; a TensorRT engine with --backend '
                        'tensorrt) (default: depth_node\'s model auto)')
    p.add_argument('--backend', default='auto', choices=BACKENDS,
                   help='depth_node\'s backend: auto (TensorRT where it runs, else ONNX '
                        'Runtime, else PyTorch), onnxruntime (CPU), tensorrt (an engine '
                        'built once into the engine cache), torch (the checkpoint); '
                        'default auto')
    p.add_argument('--out', default=os.path.join('out', 'demo'), type=_args.output_dir,
                   help='output folder')
    p.add_argument('--input-size', default=None,
                   help='network input WIDTHxHEIGHT, multiples of 14 (default: 518 wide at '
                        "the sample's aspect, 518x350; an .onnx file fixes its own)")
    p.add_argument('--threads', type=int, default=None,
                   help="the network's CPU threads: ONNX Runtime's intra-op threads, "
                        "PyTorch's pool (TensorRT: not used) (default: the backend's own)")
    p.add_argument('--cache-dir', default=None,
                   help='the depth_ros cache: prepared and exported ONNX files in DIR/onnx '
                        '(default: DEPTH_ROS_CACHE or ~/.cache/depth_ros)')
    p.add_argument('--no-progress', action='store_true', help='no progress bars')
    p.set_defaults(func=run)

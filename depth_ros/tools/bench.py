"""
Per-stage latency of the depth pipeline without ROS: the figures `depth-ros bench` prints.

Stages, in pipeline order, each timed alone on every frame:

* ``preprocess``: BGR uint8 -> normalised [1, 3, h, w] (depth_ros.core.preprocess);
* ``inference``: the backend call alone;
* ``postprocess``: model output -> relative map at the camera size;
* ``alignment``: ``MetricAligner.update`` (fit, temporal filter, fusion);
* ``cloud``: ``depth_to_cloud`` with colours at stride 1;
* ``conversion``: what alignment_node does to publish, when sensor_msgs is importable
  (``ros``): ``numpy_to_image`` of the depth into a reused MessageBuffer and
  ``cloud_to_pointcloud2`` of a cloud written straight into its own MessageBuffer
  (depth_ros.ros.conversions). Without sensor_msgs (``bytes``) only the payload byte packing
  (``tobytes`` of depth and cloud) is timed, and the table and JSON say so.

Inputs are a synthetic scene at the camera size (smooth depth, textured image, ZED-like holes
and confidence); latency does not depend on the picture for these stages.
"""
from __future__ import annotations

from dataclasses import dataclass
import logging
import time
from typing import Dict, List, Optional, Tuple

import cv2
from depth_ros.core.camera import PinholeCamera
from depth_ros.core.checks import check_number
from depth_ros.inference.base import DepthModel
from depth_ros.tools import write_reports
import numpy as np

LOG = logging.getLogger('depth_ros.bench')

STAGES = ('preprocess', 'inference', 'postprocess', 'alignment', 'cloud', 'conversion')
PERCENTILES = (50, 90, 99)
# The name of the stand-in (depth_ros.inference.standin) when it replaces the network.
STAND_IN_LABEL = ('stand-in (no network: image intensity; latency of a real model not '
                  'included)')
CONVERSIONS = ('auto', 'ros', 'bytes')
CONVERSION_LABELS = {
    'ros': 'ROS messages: numpy_to_image + cloud_to_pointcloud2 into reused MessageBuffers, '
           'as alignment_node',
    'bytes': 'byte packing only (depth and cloud tobytes): sensor_msgs not importable, not '
             'the ROS message conversion',
}


def synthetic_frame(width: int, height: int, seed: int = 0):
    """Make a ZED-like frame: textured BGR, smooth stereo depth (m) with holes, confidence."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(1.0, 8.0, (6, 8)).astype(np.float32)
    depth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)   # [H, W] m
    depth = np.clip(depth, 0.5, None)
    bgr = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    stereo = depth.copy()
    stereo[rng.random((height, width)) < 0.1] = np.nan            # stereo holes
    confidence = rng.uniform(1, 100, (height, width)).astype(np.float32)
    camera = PinholeCamera(0.75 * width, 0.75 * width, width / 2.0 - 0.5, height / 2.0 - 0.5,
                           width, height)   # synthetic intrinsics of a synthetic scene
    return bgr, depth, stereo, confidence, camera


@dataclass
class BenchResult:
    """Per-stage samples in milliseconds."""

    model: str
    backend: str
    size: Tuple[int, int]
    frames: int
    samples: Dict[str, List[float]]
    conversion: str = 'bytes'   # what the conversion stage timed: 'ros' or 'bytes'

    def summary(self) -> Dict[str, Dict[str, float]]:
        """Stage -> mean, p50, p90, p99, max (ms); 'total' is the per-frame sum."""
        out = {}
        stages = [s for s in STAGES if self.samples.get(s)]
        totals = np.sum([self.samples[s] for s in stages], axis=0) if stages else []
        for name, values in [(s, self.samples[s]) for s in stages] + [('total', totals)]:
            v = np.asarray(values, dtype=np.float64)
            row = {'mean': float(v.mean())}
            row.update({'p%d' % q: float(np.percentile(v, q)) for q in PERCENTILES})
            row['max'] = float(v.max())
            out[name] = row
        return out

    def to_dict(self) -> Dict[str, object]:
        """JSON-ready dict."""
        return {'model': self.model, 'backend': self.backend,
                'size': '{}x{}'.format(*self.size), 'frames': self.frames,
                'conversion': self.conversion,
                'conversion_label': CONVERSION_LABELS[self.conversion],
                'summary': self.summary(), 'samples_ms': self.samples}


def ros_messages_available() -> bool:
    """Tell whether sensor_msgs (and so depth_ros.ros.conversions) can be used here."""
    try:
        import sensor_msgs.msg  # noqa: F401
        import std_msgs.msg  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_conversion(conversion: str) -> str:
    """'auto' -> 'ros' when sensor_msgs is importable, else 'bytes'; checks the value."""
    if conversion not in CONVERSIONS:
        raise ValueError('`conversion` must be one of {}, got {!r}'.format(
            '|'.join(CONVERSIONS), conversion))
    if conversion == 'auto':
        return 'ros' if ros_messages_available() else 'bytes'
    if conversion == 'ros' and not ros_messages_available():
        raise ImportError('`conversion` ros needs sensor_msgs: source a ROS 2 install or '
                          'install depth_ros[ros]')
    return conversion


def run_bench(model, size: Tuple[int, int] = (1280, 720), frames: int = 50, warmup: int = 3,
              progress: bool = True, relative_kind: Optional[str] = None,
              conversion: str = 'auto') -> BenchResult:
    """
    Time every stage on ``frames`` frames after ``warmup`` untimed ones.

    :param model: a DepthModel (pre/infer/post timed apart) or anything with ``predict``
        (timed as inference alone, e.g. MarigoldDepth).
    :param conversion: 'ros' times the nodes' message conversion, 'bytes' only the payload
        byte packing, 'auto' the first when sensor_msgs is importable.
    """
    from depth_ros.core.alignment import MetricAligner
    from depth_ros.core.pointcloud import CLOUD_DTYPE, depth_to_cloud
    conversion = resolve_conversion(conversion)
    frames = check_number('frames', frames, low=1, integer=True)
    width, height = size
    bgr, _, stereo, confidence, camera = synthetic_frame(width, height)
    kind = relative_kind or getattr(model, 'relative_kind', 'disparity')
    aligner = MetricAligner(relative_kind=kind)
    split = isinstance(model, DepthModel)
    samples = {s: [] for s in STAGES}
    iterator = range(int(warmup) + int(frames))
    if progress:
        from tqdm import tqdm
        iterator = tqdm(iterator, desc='bench', unit='frame')
    if split:
        from depth_ros.core.preprocess import prepare_input, restore_output
        batch = model._input_buffer()
    if conversion == 'ros':
        from depth_ros.ros import conversions as conv
        header = conv.make_header(0, 'bench_optical_frame')
        depth_buffer, cloud_buffer = conv.MessageBuffer(), conv.MessageBuffer()
    for i in iterator:
        t = [time.perf_counter()]
        if split:
            prepare_input(bgr, model.input_size, out=batch)
            t.append(time.perf_counter())
            raw = model._infer(batch)
            t.append(time.perf_counter())
            rel = restore_output(raw, height, width)
        else:
            t.append(t[0])
            rel = model.predict(bgr)
            t.append(time.perf_counter())
        t.append(time.perf_counter())
        aligned = aligner.update(rel, stereo, confidence)
        t.append(time.perf_counter())
        if conversion == 'ros':
            # As alignment_node: the cloud goes straight into the message's byte buffer.
            out = cloud_buffer.array(aligned.depth.shape, CLOUD_DTYPE)
            cloud = depth_to_cloud(aligned.depth, camera, bgr=bgr, out=out)
            t.append(time.perf_counter())
            payload = (conv.numpy_to_image(aligned.depth, '32FC1', header, buffer=depth_buffer),
                       conv.cloud_to_pointcloud2(cloud, header, buffer=cloud_buffer))
        else:
            cloud = depth_to_cloud(aligned.depth, camera, bgr=bgr)
            t.append(time.perf_counter())
            payload = (aligned.depth.tobytes(), cloud.tobytes())   # Image.data, PointCloud2.data
        t.append(time.perf_counter())
        del payload
        if i < warmup:
            continue
        for name, a, b in zip(STAGES, t[:-1], t[1:]):
            if name == 'preprocess' and not split:
                continue
            if name == 'postprocess' and not split:
                continue
            samples[name].append((b - a) * 1e3)
    return BenchResult(getattr(model, 'name', '') or type(model).__name__,
                       getattr(model, 'backend', '?'), (width, height), int(frames), samples,
                       conversion)


def markdown_table(result: BenchResult) -> str:
    """Stage latency table (ms)."""
    lines = ['{} ({}), {}x{}, {} frames'.format(result.model, result.backend, result.size[0],
                                                result.size[1], result.frames), '',
             '| stage | mean | p50 | p90 | p99 | max |', '|---|---:|---:|---:|---:|---:|']
    for name, row in result.summary().items():
        label = name
        if name == 'conversion':
            label = 'conversion ({})'.format(
                'ROS messages' if result.conversion == 'ros' else 'bytes only')
        lines.append('| {} | {:.2f} | {:.2f} | {:.2f} | {:.2f} | {:.2f} |'.format(
            label, row['mean'], row['p50'], row['p90'], row['p99'], row['max']))
    lines += ['', 'conversion: {}'.format(CONVERSION_LABELS[result.conversion])]
    return '\n'.join(lines) + '\n'


def pyplot():
    """Return the Agg plotting module; ImportError naming depth_ros[tools] where it is missing."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError('install depth_ros[tools] (matplotlib) for the plot: {}'.format(exc))
    return plt


def write_report(result: BenchResult, out_dir: str) -> Dict[str, str]:
    """Write bench.md, bench.json and bench.png (p50 bars with p90/p99 marks) to ``out_dir``."""
    paths = write_reports(out_dir, 'bench.md', markdown_table(result), 'bench.json',
                          result.to_dict(), 'bench.png')
    plt = pyplot()
    summary = result.summary()
    names = list(summary)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    x = np.arange(len(names))
    ax.bar(x, [summary[n]['p50'] for n in names], color='tab:blue', label='p50')
    ax.scatter(x, [summary[n]['p90'] for n in names], color='tab:orange', zorder=3,
               label='p90')
    ax.scatter(x, [summary[n]['p99'] for n in names], color='tab:red', marker='x', zorder=3,
               label='p99')
    ax.set_xticks(x)
    ax.set_xticklabels(names)
    p50 = [summary[n]['p50'] for n in names]
    if min(p50) > 0 and max(p50) / min(p50) > 50:
        ax.set_yscale('log')   # a slow network would flatten the other stages to nothing
    ax.set_ylabel('ms')
    ax.set_title('{} {}x{}'.format(result.backend, *result.size))
    ax.legend()
    ax.grid(axis='y', alpha=0.3)
    fig.tight_layout()
    fig.savefig(paths['plot'], dpi=100)
    plt.close(fig)
    return paths

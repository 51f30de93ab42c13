"""
What the GIL costs in the composed process: inference and alignment times, composed vs separate.

Runs the graph on the bundled sample (zed_node at 10 fps) with the ONNX Runtime CPU backend, in
both modes, interleaved (separate, composed, separate, composed, ...), and reads from
/diagnostics, after a warm-up, per mode:

- depth_node ``inference_ms_mean`` (the whole ``predict``: preprocessing, ONNX Runtime, resize
  back) and ``backend_ms_mean`` (the ONNX Runtime call alone, which releases the GIL), and the
  inference rate;
- alignment_node ``processing_ms`` (decode/take, fit, correction, cloud) and its output rate.

A probe subscribes to ``/alignment_node/points`` (a planner), so clouds are built in both modes.
Composed, alignment (numpy and Python) and the grab thread share one interpreter with the
inference: the difference in ``inference_ms_mean`` and ``processing_ms`` between the modes is
what the GIL costs, on top of the CPU competition that both modes have.

The network is Depth Anything V2 ViT-S with RANDOM weights (seed 0), exported once to ONNX at
518x294 (the node's default input): an UNTRAINED network, used here for its timings only; its
output is not depth and nothing here reads it as such.

    .venv/bin/python benchmarks/bench_gil.py [--rounds 2] [--seconds 30]

A benchmark that prints figures, not a test: run it on an otherwise idle machine.
"""
import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'test'))
sys.path.insert(0, ROOT)

from conftest import NodeProcess, Probe, wait_until  # noqa: E402
from graph_support import diag_values  # noqa: E402
from test_composed import composed_arguments, ComposedProcess  # noqa: E402

UNTRAINED = 'UNTRAINED random-weight ViT-S (timings only; its output is not depth)'


def untrained_vits(path):
    """Export the random-weight ViT-S once (labelled untrained in its metadata)."""
    if not os.path.isfile(path):
        from depth_ros.inference.export import export_onnx
        from depth_ros.inference.torch_model import build_model
        os.makedirs(os.path.dirname(path), exist_ok=True)
        export_onnx(build_model('vits', seed=0), path, input_size=(518, 294), opset=16,
                    metadata={'trained': 'false', 'note': UNTRAINED}, show_progress=False)
    return path


def start(mode, model):
    depth = {'backend': 'onnxruntime', 'model_path': model}
    if mode == 'composed':
        return [ComposedProcess(composed_arguments(depth=depth))]
    image = '/zed/zed_node/left/image_rect_color'
    return [NodeProcess('zed_node', params={'source': 'sample'},
                        extra_ros_args=['-r', '__ns:=/zed']),
            NodeProcess('depth_node', params=depth, remaps={'image': image}),
            NodeProcess('alignment_node', remaps={
                'disparity': '/depth_node/disparity',
                'inference_started': '/depth_node/inference_started',
                'depth_registered': '/zed/zed_node/depth/depth_registered',
                'confidence': '/zed/zed_node/confidence/confidence_map',
                'camera_info': '/zed/zed_node/left/camera_info',
                'right_camera_info': '/zed/zed_node/right/camera_info', 'image': image})]


def measure(probe, diag, mode, model, seconds):
    from sensor_msgs.msg import PointCloud2
    points = probe.subscribe(PointCloud2, '/alignment_node/points')
    procs = start(mode, model)
    try:
        # Warm-up: ONNX Runtime's first runs, discovery; then a fresh window of 50 frames max.
        ok = wait_until(lambda: len(points) >= 5, 180)
        assert ok, [p.output()[-2000:] for p in procs]
        time.sleep(seconds)
        depth = diag_values(diag, 'depth_node')
        align = diag_values(diag, 'alignment_node')
        clouds = len(points)
    finally:
        for p in procs:
            p.interrupt()
        for p in procs:
            p.stop()
        probe.node.destroy_subscription(points.sub)
    return {'inference_ms': float(depth['inference_ms_mean']),
            'backend_ms': float(depth['backend_ms_mean']),
            'inference_hz': float(depth['output_rate_hz']),
            'align_ms': float(align['processing_ms']),
            'align_hz': float(align['output_rate_hz']), 'clouds': clouds}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('--rounds', type=int, default=2)
    parser.add_argument('--seconds', type=float, default=30.0)
    parser.add_argument('--model', default=os.path.join(ROOT, 'out', 'bench_gil',
                                                        'vits_untrained_518x294.onnx'))
    args = parser.parse_args()
    print('*** {} ***'.format(UNTRAINED))
    model = untrained_vits(args.model)
    from diagnostic_msgs.msg import DiagnosticArray
    probe = Probe('bench_gil_probe')
    diag = probe.subscribe(DiagnosticArray, '/diagnostics', probe.qos('reliable', 50))
    results = {'separate': [], 'composed': []}
    try:
        for r in range(args.rounds):
            for mode in ('separate', 'composed'):
                row = measure(probe, diag, mode, model, args.seconds)
                results[mode].append(row)
                print('round {} {:9s} inference {inference_ms:7.1f} ms (ONNX Runtime '
                      '{backend_ms:7.1f} ms) at {inference_hz:4.2f} Hz; alignment '
                      '{align_ms:6.1f} ms at {align_hz:4.2f} Hz'.format(r + 1, mode, **row),
                      flush=True)
    finally:
        probe.close()
    print('\nmean over {} rounds ({})'.format(args.rounds, UNTRAINED))
    mean = {}
    for mode, rows in results.items():
        mean[mode] = {k: sum(row[k] for row in rows) / len(rows) for k in rows[0]}
        print('{:9s} inference {inference_ms:7.1f} ms (ONNX Runtime {backend_ms:7.1f} ms), '
              'alignment {align_ms:6.1f} ms'.format(mode, **mean[mode]))
    s, c = mean['separate'], mean['composed']
    print('composed / separate: inference x{:.3f}, ONNX Runtime call x{:.3f}, non-ORT part of '
          'predict x{:.3f}, alignment x{:.3f}'.format(
              c['inference_ms'] / s['inference_ms'], c['backend_ms'] / s['backend_ms'],
              (c['inference_ms'] - c['backend_ms']) / max(1e-9, s['inference_ms'] -
                                                          s['backend_ms']),
              c['align_ms'] / s['align_ms']))


if __name__ == '__main__':
    main()

"""
CPU per output frame of the whole graph, ``composed:=true`` against ``composed:=false``.

Runs ``ros2 launch depth_ros zed_depth.launch.py publish_tf:=false composed:=<mode>`` (a colcon
build of this checkout in a temporary workspace) in rounds that alternate the two modes (A B A
B ...), for each frame size and backend:

- sizes: ``sample`` (the bundled 741x500 pair, source:=sample), ``720p`` (a rosbag2 of
  synthetic 1280x720 ZED frames, source:=bag, written here as benchmarks/soak.py does); zed_node
  delivers at ``--fps`` with wall-clock stamps (its ``fps`` parameter, through a params file),
  and ``720p-zed``: the same 20 frames and camera through zed_node's live ZED path
  (source:=live, depth_ros/sources/zed.py) on a simulated SDK, test/pyzed_double.py's live
  camera (a Scene): its grab() waits for the camera's next frame at ``--fps`` (zed_node's
  ``grab_fps``), its retrieves copy the precomputed frame into the Mat's buffer (the real SDK's
  CPU side, a GPU->CPU copy), stamps are capture times on the wall clock. What the real SDK
  itself costs (capture, rectification, depth on the GPU, its threads) is not in these rows,
  in either mode; the bag's replay (SQLite reads of 11 MB a frame), which the robot never
  pays, is not either. Both 720p inputs carry the same frames.
- backends: ``standin`` (fixed latency, not a model) and ``onnxruntime`` (CPU): a random-weight
  Depth Anything V2 ONNX in the public file's layout (test/model_files.py; ViT-S by default, the
  public file's architecture and size). Its output is NOT depth: it is run for its cost only,
  as test_graph_nodes runs one; the clouds are counted and timed, never looked at.

Per round, after ``--warmup-s`` past the first cloud, over ``--seconds``:

- CPU: the user + system time of every process of the launch's tree (``ros2 launch`` and all
  its descendants, read from /proc/<pid>/stat, reaped children included), divided by the
  clouds that an outside subscriber (this process) received on /alignment_node/points;
- latency: cloud arrival (wall clock) minus the camera stamp, median and p90; beyond inference:
  that minus the inference time depth_node reports on /diagnostics (``inference_ms_mean``;
  the stand-in: its fixed ``standin_latency_ms``);
- the latency beyond inference split into alignment_node's stage (its ``processing_ms``) and
  the handover around it (the rest: frames, disparity and cloud moved, and the queues), with
  the parts the nodes' /diagnostics give (:func:`latency_split`);
- output rate, and how busy the machine was (/proc/stat, load average).

Goals (issue 18): CPU per cloud composed <= 0.5x separate at the same output rate; latency
beyond inference <= 8 ms at 720p. Also an ESTIMATE of the 720p CPU per frame on a Xavier NX
Carmel core, from a stated single-core ratio (see XAVIER_NX below).

    .venv/bin/python benchmarks/bench_composed.py [--rounds 2] [--seconds 20] \
        [--sizes sample 720p 720p-zed] [--backends standin onnxruntime] [--quick]

A benchmark that prints figures and ratios measured in one run, not a test. Results also go to
``--out`` (JSON).
"""
import argparse
import atexit
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'test'))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))

import numpy as np  # noqa: E402

MODES = ('separate', 'composed')
SIZES = ('sample', '720p', '720p-zed')
SIZE_LABELS = {
    'sample': 'the bundled 741x500 pair (source:=sample)',
    '720p': 'rosbag2 replay of synthetic 1280x720 ZED frames (source:=bag; SQLite reads '
            'included, which the robot does not pay)',
    '720p-zed': 'ZED live path, simulated SDK (SDK\'s own cost excluded): zed_node '
                'source:=live on test/pyzed_double.py\'s camera, the same 1280x720 frames',
}
ZED_LAYOUT = 'v4.1'         # the pyzed layout of the simulated SDK (JetPack 5.1's ZED SDK 4.x)
ZED_LAYOUTS = ('v3.8', 'v4.0', 'v4.1', 'v5.0')   # test/pyzed_double.py's (v5.0: 5.0.2)
BAG_FRAMES = 20             # frames of the 720p inputs, served in a loop
BACKENDS = ('standin', 'onnxruntime')
CPU_GOAL = 0.5              # composed / separate CPU per cloud
SAME_RATE = 0.95            # "at the same output rate": composed delivers >= 95 % of separate's
BEYOND_INFERENCE_GOAL_MS = 8.0

# The Xavier NX estimate: single-thread 7-zip ratings (MIPS), the CPU figure sbc-bench
# publishes for many boards (github.com/ThomasKaiser/sbc-bench, Results.md, column "7-zip
# single"). Jetson Xavier NX: 2201 at 1890 MHz (results/3YWp.txt: Bionic, kernel 4.9, p7zip
# 16.02). This machine's core: ``7zz b -mmt1`` (7-Zip 26.01, Debian bookworm), the rating per
# 100 % of a core (R/U), measured here; --x86-7zip-mips overrides it. The NX's default power
# mode, MODE_15W_6CORE, caps the six cores at 1420.8 MHz (NVIDIA's nvpmodel_t194_p3668.conf;
# 1907.2 MHz only with two cores online): scaled by clock, 2201 * 1420.8 / 1890. A ratio of two
# integer benchmarks, not of our workload (numpy copies, serialization, Python): an estimate.
XAVIER_NX = {'7zip_single_mips': 2201.0, 'mhz': 1890.0, 'six_core_mhz': 1420.8,
             'source': 'sbc-bench Results.md (github.com/ThomasKaiser/sbc-bench), '
                       'Jetson Xavier NX, results/3YWp.txt: 7-zip single-threaded 2201 MIPS '
                       'at 1890 MHz; six-core clock: NVIDIA nvpmodel_t194_p3668.conf, '
                       'MODE_15W_6CORE (the default) CPU max 1420800 kHz'}
# This machine's core (Intel Xeon, Sapphire Rapids class, 2.6 GHz, KVM), measured 2026-12-06
# with 7zz 26.01 under load from other users (usage 35 %): R/U 3450, rating 1232 MIPS.
# --measure-7zip measures it again in the run.
X86_7ZIP_SINGLE_MIPS = 3450.0
X86_7ZIP_CPU = 'Xeon'       # the model name the stored rating belongs to (/proc/cpuinfo)


# --------------------------------------------------------------------------- pure functions
def read_stat(pid, proc='/proc'):
    """
    Return (ppid, name, cpu seconds) of one process from ``/proc/<pid>/stat``.

    cpu seconds = utime + stime + cutime + cstime: the process's threads, and its children that
    it has waited for (so that a child which exits inside a window still counts).
    """
    with open(os.path.join(proc, str(pid), 'stat')) as f:
        stat = f.read()
    name = stat[stat.index('(') + 1:stat.rindex(')')]
    fields = stat[stat.rindex(')') + 2:].split()
    # fields[0] is field 3 (state) of proc(5): ppid is 4, utime..cstime are 14..17.
    ticks = sum(int(v) for v in fields[11:15])
    return int(fields[1]), name, ticks / float(os.sysconf('SC_CLK_TCK'))


def process_tree(root, proc='/proc'):
    """Return {pid: (name, cpu seconds)} of ``root`` and all its descendants (one /proc walk)."""
    stats = {}
    for entry in os.listdir(proc):
        if entry.isdigit():
            try:
                stats[int(entry)] = read_stat(entry, proc)
            except (OSError, ValueError, IndexError):
                continue   # exited meanwhile
    children = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in stats and pid not in tree:
            tree[pid] = stats[pid][1:]
            todo.extend(children.get(pid, ()))
    return tree


def tree_cpu(before, after):
    """
    CPU seconds a process tree spent between two :func:`process_tree` snapshots.

    Returns (total, {name: seconds}). The total is the difference of the sums, so a process
    that exited and was reaped inside the tree moves into its parent's children time and still
    counts (under the parent's name in the breakdown); one that started in between counts from
    zero.
    """
    total = sum(c for _, c in after.values()) - sum(c for _, c in before.values())
    by_name = {}
    for snapshot, sign in ((after, 1.0), (before, -1.0)):
        for name, cpu in snapshot.values():
            by_name[name] = by_name.get(name, 0.0) + sign * cpu
    return total, by_name


def machine_busy(proc='/proc'):
    """Return (busy, total) CPU seconds of the whole machine so far (/proc/stat, all cores)."""
    with open(os.path.join(proc, 'stat')) as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)   # idle + iowait
    # guest and guest_nice (fields 9, 10) are already inside user and nice.
    total = sum(values[:8])
    tick = float(os.sysconf('SC_CLK_TCK'))
    return (total - idle) / tick, total / tick


def cdr_stamp_ns(raw):
    """Return the header stamp (ns) of a serialized message whose first field is a Header."""
    little = raw[1] == 1   # encapsulation: 0x0000 CDR_BE, 0x0001 CDR_LE
    sec, nanosec = struct.unpack('<iI' if little else '>iI', bytes(raw[4:12]))
    return sec * 1000000000 + nanosec


def latency_stats(latencies_ms):
    """Return {'n', 'median', 'p90'} (ms) of a list of latencies; NaN where there are none."""
    v = np.asarray(latencies_ms, dtype=np.float64)
    if v.size == 0:
        return {'n': 0, 'median': float('nan'), 'p90': float('nan')}
    return {'n': int(v.size), 'median': float(np.median(v)),
            'p90': float(np.percentile(v, 90))}


def combine(rounds):
    """
    Figures of one (size, backend, mode) over its rounds.

    Each round: {'seconds', 'clouds', 'cpu_s', 'latency_ms': [...], 'inference_ms'}. Rate and
    CPU are the sums over the rounds (clouds / seconds, CPU / clouds); latencies are pooled; the
    inference time is the mean of the rounds' weighted by their clouds.
    """
    seconds = sum(r['seconds'] for r in rounds)
    clouds = sum(r['clouds'] for r in rounds)
    cpu = sum(r['cpu_s'] for r in rounds)
    lat = [x for r in rounds for x in r['latency_ms']]
    inference = (sum(r['inference_ms'] * r['clouds'] for r in rounds) / clouds
                 if clouds else float('nan'))
    by_process = {}
    for r in rounds:
        for name, cpu_s in r.get('cpu_s_by_process', {}).items():
            by_process[name] = by_process.get(name, 0.0) + cpu_s
    out = {'rounds': len(rounds), 'seconds': seconds, 'clouds': clouds,
           'cpu_ms_per_cloud_by_process': {n: 1e3 * c / clouds if clouds else float('nan')
                                           for n, c in sorted(by_process.items())},
           'rate_hz': clouds / seconds if seconds else float('nan'),
           'cpu_ms_per_cloud': 1e3 * cpu / clouds if clouds else float('nan'),
           'cpu_pct_core': 100.0 * cpu / seconds if seconds else float('nan'),
           'inference_ms': inference, 'latency': latency_stats(lat),
           'beyond_inference': latency_stats([x - inference for x in lat]),
           'depth_beyond_inference': latency_stats(
               [x - inference for r in rounds for x in r.get('depth_latency_ms', [])])}
    out['latency_split'] = latency_split(rounds, out['beyond_inference']['median'], inference)
    return out


def _diag_mean(rounds, node, key):
    """Mean of one diagnostics value (a string) over the rounds, weighted by their clouds."""
    pairs = []
    for r in rounds:
        try:
            value = float((r.get(node) or {})[key])
        except (KeyError, TypeError, ValueError):
            continue
        if value == value and r['clouds']:
            pairs.append((value, r['clouds']))
    if not pairs:
        return float('nan')
    return sum(v * n for v, n in pairs) / float(sum(n for _, n in pairs))


def latency_split(rounds, beyond_median_ms, inference_ms):
    """
    Split the latency beyond inference into the alignment stage and the handover around it.

    From each round's last /diagnostics (means over the nodes' last 50 frames, weighted by the
    rounds' clouds) and the measured latencies:

    - ``alignment_stage_ms``: alignment_node's ``processing_ms``, its worker from taking a set
      to the cloud published (convert, ``MetricAligner.update``, lazy outputs, the cloud);
    - ``handover_ms``: the rest of the mean beyond inference (``beyond_inference_mean_ms``, the
      measured latencies' mean minus ``inference_ms``, minus the stage, a mean too, so that
      the two parts add up; the median is kept apart, ``beyond_inference_median_ms``): moving
      the frame, the disparity and the cloud, and the queues. Of it, from the diagnostics
      means: ``upstream_ms`` (stamp -> the set in alignment_node: zed_node's
      publish or hand-over, depth_node's queue, conversion, check and publish or hand-over,
      transport, pairing; alignment_node's ``input_age_ms`` minus inference),
      ``alignment_queue_ms`` (``stage_wait_ms``), ``delivery_ms`` (the mean measured latency
      minus alignment_node's ``latency_ms``, stamp -> cloud published: the cloud's way to the
      subscriber); they need not add up exactly (each node's last 50 frames).

    Also the depth_node side: ``depth_input_age_ms`` (stamp -> frame taken) and
    ``depth_queue_ms`` (its ``stage_wait_ms``). Composed, alignment_node prepares each frame's
    stereo side while the network runs on it (``stage_prepare_ms``, off the latency path, not
    in ``processing_ms``): ``prepare_ms`` and ``prepared_fraction``, the share of sets finished
    from a prepared side (the rest were aligned whole after inference). NaN where a value is
    missing.
    """
    stage = _diag_mean(rounds, 'alignment_node', 'processing_ms')
    lat = [x for r in rounds for x in r['latency_ms']]
    mean_latency = float(np.mean(lat)) if lat else float('nan')
    return {
        'beyond_inference_median_ms': beyond_median_ms,
        'beyond_inference_mean_ms': mean_latency - inference_ms,
        'alignment_stage_ms': stage,
        'handover_ms': mean_latency - inference_ms - stage,
        'upstream_ms': _diag_mean(rounds, 'alignment_node', 'input_age_ms') - inference_ms,
        'alignment_queue_ms': _diag_mean(rounds, 'alignment_node', 'stage_wait_ms'),
        'delivery_ms': mean_latency - _diag_mean(rounds, 'alignment_node', 'latency_ms'),
        'depth_input_age_ms': _diag_mean(rounds, 'depth_node', 'input_age_ms_mean'),
        'depth_queue_ms': _diag_mean(rounds, 'depth_node', 'stage_wait_ms'),
        'alignment_stages_ms': {k: _diag_mean(rounds, 'alignment_node', 'stage_{}_ms'.format(k))
                                for k in _stage_names(rounds)},
        'prepare_ms': _diag_mean(rounds, 'alignment_node', 'stage_prepare_ms'),
        'prepared_fraction': _prepared_fraction(rounds),
    }


def _prepared_fraction(rounds):
    """Share of alignment_node's sets finished from a prepared stereo side (NaN: none said)."""
    used = missed = 0
    for r in rounds:
        values = r.get('alignment_node') or {}
        try:
            used += int(values['prepared_used'])
            missed += int(values['prepared_missed'])
        except (KeyError, TypeError, ValueError):
            continue
    return used / float(used + missed) if used + missed else float('nan')


def _stage_names(rounds):
    """alignment_node's stages of a set in order (not its queue, not the prepare)."""
    names = []
    for r in rounds:
        for k in (r.get('alignment_node') or {}):
            name = k[len('stage_'):-len('_ms')]
            if k.startswith('stage_') and k.endswith('_ms') and \
                    name not in ('wait', 'prepare') and name not in names:
                names.append(name)
    return names


def verdicts(separate, composed, size, backend='standin'):
    """
    Goals of issue 18 for one (size, backend): the CPU ratio and the latency beyond inference.

    Returns {'ratio', 'cpu_goal', 'latency_goal'}: 'met', 'missed' or '-' (not applicable: the
    latency goal is for 720p, and read where the inference time is fixed, the stand-in's;
    nothing measured).
    """
    ratio = composed['cpu_ms_per_cloud'] / separate['cpu_ms_per_cloud'] \
        if separate['clouds'] and composed['clouds'] else float('nan')
    if ratio != ratio:
        cpu_goal = '-'
    else:
        same_rate = composed['rate_hz'] >= SAME_RATE * separate['rate_hz']
        cpu_goal = 'met' if ratio <= CPU_GOAL and same_rate else 'missed'
    latency_goal = '-'
    if is_720p(size) and backend == 'standin' and composed['clouds']:
        latency_goal = 'met' if composed['beyond_inference']['median'] \
            <= BEYOND_INFERENCE_GOAL_MS else 'missed'
    return {'ratio': ratio, 'cpu_goal': cpu_goal, 'latency_goal': latency_goal}


def is_720p(size):
    """Tell whether a size is one of the 1280x720 inputs (the bag or the ZED live path)."""
    return size in ('720p', '720p-zed')


def carmel_ratio(x86_mips, nx=XAVIER_NX, six_core=True):
    """Return how many times slower one Carmel core is than this one (7-zip single ratings)."""
    nx_mips = nx['7zip_single_mips'] * (nx['six_core_mhz'] / nx['mhz'] if six_core else 1.0)
    return x86_mips / nx_mips


def parse_7zip(text):
    """Return (usage %, R/U MIPS, rating MIPS) from the ``Tot:`` line of ``7z b`` output."""
    for line in text.splitlines():
        if line.startswith('Tot:'):
            usage, per_usage, rating = (float(v) for v in line.split()[1:4])
            return usage, per_usage, rating
    raise ValueError('no "Tot:" line in the 7-Zip benchmark output:\n' + text[-500:])


def measure_7zip():
    """Run 7-Zip's single-thread benchmark; return its R/U rating (MIPS per 100 % of a core)."""
    import shutil
    exe = next((shutil.which(n) for n in ('7zz', '7z', '7za', '7zr') if shutil.which(n)), None)
    if exe is None:
        raise SystemExit('--measure-7zip: no 7-Zip here (apt-get install 7zip, or pass '
                         '--x86-7zip-mips)')
    out = subprocess.run([exe, 'b', '-mmt1'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         universal_newlines=True, timeout=600).stdout
    return parse_7zip(out)[1]


# --------------------------------------------------------------------------- the graph
class Listener(object):
    """The outside subscriber: cloud arrivals (raw, never deserialized) and /diagnostics."""

    def __init__(self, probe, depth=False):
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import Image, PointCloud2
        self.lock = threading.Lock()
        self.clouds = []       # (monotonic arrival, latency ms)
        self.depths = []       # the same of ~/depth (with --depth)
        if depth:
            # A planner's ~/depth reader too: alignment_node then publishes it (lazy), before
            # the cloud is built.
            self.depth_sub = probe.node.create_subscription(
                Image, '/alignment_node/depth', self._on_depth, probe.qos('best_effort', 5),
                raw=True)
        self.sub = probe.node.create_subscription(
            PointCloud2, '/alignment_node/points', self._on_cloud,
            probe.qos('best_effort', 5), raw=True)
        self.diag = probe.subscribe(DiagnosticArray, '/diagnostics', probe.qos('reliable', 50))

    def _on_cloud(self, raw):
        wall, mono = time.time_ns(), time.monotonic()
        with self.lock:
            self.clouds.append((mono, (wall - cdr_stamp_ns(raw)) * 1e-6))

    def _on_depth(self, raw):
        wall, mono = time.time_ns(), time.monotonic()
        with self.lock:
            self.depths.append((mono, (wall - cdr_stamp_ns(raw)) * 1e-6))

    def reset(self):
        """Forget what the previous round received."""
        with self.lock:
            self.clouds = []
            self.depths = []
        with self.diag.lock:
            self.diag.msgs, self.diag.times = [], []

    def count(self):
        """Return how many clouds arrived since the last reset."""
        with self.lock:
            return len(self.clouds)

    def window(self, t0, t1, depth=False):
        """Return the latencies (ms) of the clouds (``depth``: ~/depth) arrived in [t0, t1)."""
        with self.lock:
            return [lat for t, lat in (self.depths if depth else self.clouds) if t0 <= t < t1]


def launch_arguments(env):
    """Return the text of ``ros2 launch depth_ros zed_depth.launch.py --show-args``."""
    from launch_support import tool
    done = subprocess.run([tool('ros2'), 'launch', 'depth_ros', 'zed_depth.launch.py',
                           '--show-args'], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True, timeout=120)
    if done.returncode != 0:
        raise SystemExit('ros2 launch --show-args failed:\n' + done.stdout[-3000:])
    return done.stdout


def params_file(path, fps, standin_ms, overrides=()):
    """
    Write config/zed_depth.yaml with zed_node's fps (wall-clock stamps) and the stand-in's.

    ``grab_fps`` (the ZED camera's rate, source:=live) is set to ``fps`` too where that is a
    whole number (the SDK takes integers; main() refuses another with ``720p-zed``).

    ``overrides``: ``NODE.NAME=VALUE`` strings (``--param``), the value read as YAML.
    """
    import yaml
    with open(os.path.join(ROOT, 'config', 'zed_depth.yaml')) as f:
        params = yaml.safe_load(f)
    params['/**/zed_node']['ros__parameters']['fps'] = float(fps)
    if float(fps) == int(fps):
        params['/**/zed_node']['ros__parameters']['grab_fps'] = int(fps)
    params['/**/depth_node']['ros__parameters']['standin_latency_ms'] = float(standin_ms)
    for text in overrides:
        key, _, value = text.partition('=')
        node, _, name = key.partition('.')
        if not (node and name and _):
            raise SystemExit('--param takes NODE.NAME=VALUE, got {!r}'.format(text))
        section = params.get('/**/' + node)
        if section is None:
            raise SystemExit('--param {!r}: no node {!r} in config/zed_depth.yaml'.format(
                text, node))
        section['ros__parameters'][name] = yaml.safe_load(value)
    with open(path, 'w') as f:
        yaml.safe_dump(params, f)
    return path


def stop(launch):
    """Ctrl-C the launch's process group; kill it if it does not end within 30 s."""
    if launch.poll() is None:
        os.killpg(launch.pid, signal.SIGINT)
        try:
            launch.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(launch.pid, signal.SIGKILL)
            launch.wait(10)


def launch_argv(setup, size, backend, mode):
    """Return the ``ros2 launch depth_ros zed_depth.launch.py`` arguments of one round."""
    argv = ['publish_tf:=false', 'backend:=' + backend, 'params_file:=' + setup['params']]
    if size == 'sample':
        argv.append('source:=sample')
    elif size == '720p':
        argv += ['source:=bag', 'path:=' + setup['bag']]
    else:   # 720p-zed: the ZED's live path, on the simulated SDK that round_env puts first
        argv.append('source:=live')
    if backend == 'onnxruntime':
        argv.append('model:=' + setup['model'])
    if setup['has_composed']:
        argv.append('composed:=' + ('true' if mode == 'composed' else 'false'))
    return argv


def round_env(env, setup, size):
    """Return the launch's environment of one round: ``720p-zed`` finds the simulated pyzed."""
    if size != '720p-zed':
        return env
    env = dict(env)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (setup['pyzed_site'],
                                                    env.get('PYTHONPATH')) if p)
    return env


def simulated_zed(work, frames=BAG_FRAMES, layout=ZED_LAYOUT, grab_work_ms=0.0):
    """
    Write the ``720p-zed`` input: soak.write_bag's frames and camera as a pyzed double's Scene.

    Returns the folder to put first on PYTHONPATH: its ``pyzed`` package is test/pyzed_double.py
    (``layout``: up to v4.1 its grab and retrieves keep the GIL, as pyzed's before 5.0.2 do;
    v5.0 releases it) serving ``frames`` synthetic 1280x720 frames (bench_graph's, as the
    bag's) in a loop as a live camera, paced at zed_node's ``grab_fps``; ``grab_work_ms``: the
    SDK's own work in each grab (its depth), the GIL kept as the layout does. The frames are
    computed here once and loaded by zed_node's process at import.
    """
    from bench_graph import synthetic_frame
    import pyzed_double
    from soak import CAMERA
    scene = pyzed_double.Scene.from_bgr((synthetic_frame(i) for i in range(frames)), CAMERA)
    site = os.path.join(work, 'pyzed_site')
    os.makedirs(os.path.join(site, 'pyzed'))
    path = scene.save(os.path.join(work, 'zed_scene.npz'))
    with open(os.path.join(site, 'pyzed', '__init__.py'), 'w') as f:
        f.write('# The simulated ZED SDK of bench_composed.py (720p-zed): test/pyzed_double.py\n'
                'import sys\n'
                'sys.path.insert(0, {!r})\n'
                'import pyzed_double\n'
                'sl = pyzed_double.make_sl({!r}, scene=pyzed_double.Scene.load({!r}), '
                'grab_work_s={!r})\n'
                "sys.modules['pyzed.sl'] = sl\n".format(os.path.join(ROOT, 'test'),
                                                        layout, path, grab_work_ms * 1e-3))
    return site


def run_round(env, setup, size, backend, mode, listener, args):
    """Launch one configuration, measure one window after the warm-up, stop; return figures."""
    from launch_support import tool
    from soak import latest_diag
    argv = launch_argv(setup, size, backend, mode)
    log = tempfile.NamedTemporaryFile(prefix='bench_composed_', suffix='.log', delete=False)
    listener.reset()
    launch = subprocess.Popen([tool('ros2'), 'launch', 'depth_ros', 'zed_depth.launch.py']
                              + argv, env=round_env(env, setup, size), stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)

    def broken(what):
        stop(launch)
        log.close()
        with open(log.name, errors='replace') as f:
            text = f.read()
        return SystemExit('{} {} {}: {}\n$ ros2 launch depth_ros zed_depth.launch.py {}\n{}'
                          .format(size, backend, mode, what, ' '.join(argv), text[-4000:]))
    try:
        if not wait_alive(launch, lambda: listener.count() > 0, args.start_timeout_s):
            raise broken('no cloud within {:.0f} s'.format(args.start_timeout_s)
                         if launch.poll() is None else 'the launch ended')
        wait_alive(launch, lambda: False, args.warmup_s)
        if launch.poll() is not None:
            raise broken('the launch ended during the warm-up')
        t0, before, busy0, load0 = time.monotonic(), process_tree(launch.pid), \
            machine_busy(), os.getloadavg()[0]
        wait_alive(launch, lambda: False, args.seconds)
        t1, after, busy1, load1 = time.monotonic(), process_tree(launch.pid), \
            machine_busy(), os.getloadavg()[0]
        if launch.poll() is not None:
            raise broken('the launch ended during the measurement')
        depth = latest_diag(listener.diag, 'depth_node')
        align = latest_diag(listener.diag, 'alignment_node')
    finally:
        stop(launch)
        log.close()
        os.unlink(log.name)
    seconds = t1 - t0
    cpu, by_name = tree_cpu(before, after)
    lat = listener.window(t0, t1)
    inference = float(depth.get('inference_ms_mean', 'nan')) if backend != 'standin' \
        else args.standin_ms
    return {'size': size, 'backend': backend, 'mode': mode, 'seconds': seconds,
            'clouds': len(lat), 'cpu_s': cpu, 'cpu_s_by_process': by_name,
            'processes': len(after), 'latency_ms': lat, 'inference_ms': inference,
            'depth_latency_ms': listener.window(t0, t1, depth=True),
            'machine_busy_cores': (busy1[0] - busy0[0]) / seconds, 'loadavg': [load0, load1],
            'depth_node': depth, 'alignment_node': align}


def wait_alive(proc, predicate, timeout):
    """Wait until ``predicate`` or ``timeout``, or until ``proc`` ends; return ``predicate()``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


# --------------------------------------------------------------------------- report
def summarize(rounds, sizes, backends, modes):
    """Return {(size, backend): {mode: combined figures, 'verdicts': ...}}."""
    out = {}
    for size in sizes:
        for backend in backends:
            entry = {}
            for mode in modes:
                mine = [r for r in rounds if (r['size'], r['backend'], r['mode'])
                        == (size, backend, mode)]
                if mine:
                    entry[mode] = combine(mine)
            if entry:
                if set(MODES) <= set(entry):
                    entry['verdicts'] = verdicts(entry['separate'], entry['composed'], size,
                                                 backend)
                out[(size, backend)] = entry
    return out


def table(summary):
    """Return the markdown table of the summary."""
    lines = ['| size | backend | mode | clouds/s | CPU ms/cloud | CPU % of a core | latency '
             'median / p90 (ms) | inference (ms) | beyond inference median / p90 (ms) | '
             'CPU/cloud composed/separate | CPU goal (<= 0.5x, same rate) | latency goal '
             '(<= 8 ms, 720p) |',
             '|---|---|---|---|---|---|---|---|---|---|---|---|']
    for (size, backend), entry in summary.items():
        for mode in MODES:
            if mode not in entry:
                continue
            f = entry[mode]
            v = entry.get('verdicts') if mode == 'composed' else None
            lat, beyond = f['latency'], f['beyond_inference']
            latency_goal = '-'
            if is_720p(size) and backend == 'standin' and f['clouds']:
                latency_goal = 'met' if beyond['median'] <= BEYOND_INFERENCE_GOAL_MS \
                    else 'missed'
            lines.append(
                '| {} | {} | {} | {:.2f} | {:.1f} | {:.0f} % | {:.1f} / {:.1f} | {:.1f} | '
                '{:.1f} / {:.1f} | {} | {} | {} |'.format(
                    size, backend, mode, f['rate_hz'], f['cpu_ms_per_cloud'],
                    f['cpu_pct_core'], lat['median'], lat['p90'], f['inference_ms'],
                    beyond['median'], beyond['p90'],
                    '{:.2f}x'.format(v['ratio']) if v else '-',
                    v['cpu_goal'] if v else '-', latency_goal))
    return '\n'.join(lines)


def split_lines(summary):
    """Return the lines of the latency split (latency_split) of each row."""
    lines = ['Latency beyond inference, split (alignment_node\'s and depth_node\'s /diagnostics, '
             'means over their last 50 frames; the total is the mean, the median beside it): '
             'the alignment stage '
             '(processing_ms, after inference: convert, align (finish from the stereo side '
             'prepared during inference, else update), lazy outputs, cloud) and the handover '
             'around it (the rest: moving frames, disparity and cloud, and the queues); the '
             'prepare runs during inference, off the path:']
    for (size, backend), entry in summary.items():
        for mode in MODES:
            if mode not in entry or not entry[mode]['clouds']:
                continue
            x = entry[mode]['latency_split']
            stages = ', '.join('{} {:.1f}'.format(k, v)
                               for k, v in x['alignment_stages_ms'].items())
            prepared = '; prepared during inference: {:.1f} ms, {:.0f} % of the sets ' \
                'finished from it'.format(x['prepare_ms'], 100 * x['prepared_fraction']) \
                if x['prepared_fraction'] == x['prepared_fraction'] else ''
            lines.append(
                '  {} {} {}: beyond inference (median {:.1f}) mean {:.1f} ms = alignment stage '
                '{:.1f} ({}) + handover/queues {:.1f} (upstream of alignment_node {:.1f} '
                '[depth_node: stamp -> frame taken {:.1f}, its queue {:.1f}], alignment queue '
                '{:.1f}, cloud to the subscriber {:.1f}){}'.format(
                    size, backend, mode, x['beyond_inference_median_ms'],
                    x['beyond_inference_mean_ms'], x['alignment_stage_ms'], stages,
                    x['handover_ms'], x['upstream_ms'], x['depth_input_age_ms'],
                    x['depth_queue_ms'], x['alignment_queue_ms'],
                    x['delivery_ms'], prepared))
    return lines


def xavier_estimate(summary, x86_mips):
    """
    Return (lines, data) of the Xavier NX estimate from the 720p stand-in rows.

    ``data['rows']``: the bag replay's (``720p``) by mode; ``data['by_size']``: each 720p
    input's (``720p``, ``720p-zed``) by mode.
    """
    data = {'x86_7zip_single_mips': x86_mips, 'nx': XAVIER_NX, 'rows': {}, 'by_size': {}}
    if not x86_mips:
        return ['Xavier NX estimate: no 7-Zip rating of this core (--x86-7zip-mips or '
                '--measure-7zip)'], data
    ratio_19 = carmel_ratio(x86_mips, six_core=False)
    ratio_14 = carmel_ratio(x86_mips)
    data.update(ratio_1890mhz=ratio_19, ratio_1421mhz=ratio_14)
    lines = ['ESTIMATE (not measured on a Jetson) of the graph\'s CPU on a Xavier NX, from the '
             '720p stand-in rows (the graph without a network: on the NX, TensorRT runs the '
             'network on the GPU):',
             '  single-core ratio: this core {:.0f} MIPS (7-Zip single-thread, R/U) vs. Carmel '
             '{:.0f} MIPS at 1890 MHz -> {:.2f}x slower; at 1421 MHz (the default 6-core power '
             'mode, scaled by clock) {:.2f}x slower'.format(
                 x86_mips, XAVIER_NX['7zip_single_mips'], ratio_19, ratio_14),
             '  source: ' + XAVIER_NX['source']]
    for (size, backend), entry in summary.items():
        if not is_720p(size) or backend != 'standin':
            continue
        lines.append('  {} ({}):'.format(size, SIZE_LABELS[size]))
        for mode in MODES:
            if mode not in entry or not entry[mode]['clouds']:
                continue
            ms = entry[mode]['cpu_ms_per_cloud']
            rate = entry[mode]['rate_hz']
            row = {'x86_ms': ms, 'carmel_ms_1890': ms * ratio_19, 'carmel_ms_1421': ms * ratio_14,
                   'carmel_cores_at_rate_1421': ms * ratio_14 * rate / 1e3, 'rate_hz': rate}
            data['by_size'].setdefault(size, {})[mode] = row
            if size == '720p':
                data['rows'][mode] = row
            lines.append('    {}: {:.1f} ms per frame here -> about {:.0f} ms per frame on a '
                         'Carmel core at 1.9 GHz, {:.0f} ms at 1.42 GHz: {:.2f} of the NX\'s 6 '
                         'cores at {:.1f} clouds/s (ESTIMATE)'.format(
                             mode, ms, row['carmel_ms_1890'], row['carmel_ms_1421'],
                             row['carmel_cores_at_rate_1421'], rate))
    return lines, data


def report(rounds, args, machine):
    """Print the table, the machine's load and the Xavier estimate; write the JSON."""
    summary = summarize(rounds, args.sizes, args.backends, args.modes)
    print('\nbench_composed: {} round(s) of {:.0f} s per configuration (after {:.0f} s of '
          'warm-up), camera {} fps, stand-in {} ms, ONNX Runtime model: {} (random weights: '
          'timed, its output is not depth)'.format(args.rounds, args.seconds, args.warmup_s,
                                                   args.fps, args.standin_ms, args.ort_label))
    print(table(summary))
    print('\n'.join('  {}: {}'.format(size, SIZE_LABELS[size]) for size in args.sizes))
    if '720p-zed' in args.sizes:
        print('  720p-zed\'s simulated SDK: pyzed layout {} ({}), {:g} ms of the SDK\'s own '
              'work in each grab'.format(
                  args.zed_layout, 'grab and retrieves release the GIL, as pyzed 5.0.2+'
                  if args.zed_layout == 'v5.0' else 'grab and retrieves keep the GIL, as pyzed '
                  'before 5.0.2: zed_node times its grabs to the frames',
                  args.zed_grab_work_ms))
    print('\nCPU ms per cloud by process (the launch\'s tree; `ros2` is ros2 launch itself):')
    for (size, backend), entry in summary.items():
        for mode in MODES:
            if mode in entry:
                print('  {} {} {}: {}'.format(size, backend, mode, ', '.join(
                    '{} {:.1f}'.format(n, v) for n, v in
                    entry[mode]['cpu_ms_per_cloud_by_process'].items())))
    print('\n' + '\n'.join(split_lines(summary)))
    for (size, backend), entry in summary.items():
        for mode in MODES:
            d = entry.get(mode, {}).get('depth_beyond_inference', {})
            if d.get('n'):
                print('  {} {} {}: ~/depth (published before the cloud is built), beyond '
                      'inference median {:.1f} / p90 {:.1f} ms ({} images); the cloud\'s '
                      '{:.1f} / {:.1f}'.format(size, backend, mode, d['median'], d['p90'],
                                               d['n'], entry[mode]['beyond_inference']['median'],
                                               entry[mode]['beyond_inference']['p90']))
    if 'onnxruntime' in args.backends:
        print('onnxruntime rows: inference is depth_node\'s mean over its last 100 inferences '
              '(at these rates that reaches back before the window, and it varies 2x with the '
              'load of this shared machine), so latency minus it is rough and can go below '
              'zero; where inference takes longer than a camera period, it also holds the wait '
              'of the newest frame for the busy worker (up to one period). The latency goal is '
              'read on the stand-in rows, whose inference time is fixed.')
    busy = [r['machine_busy_cores'] for r in rounds]
    others = [r['machine_busy_cores'] - r['cpu_s'] / r['seconds'] for r in rounds]
    loads = [x for r in rounds for x in r['loadavg']]
    print('\nmachine: {} cores ({}); during the windows {:.2f}-{:.2f} cores busy in all, '
          'of which other processes than the launch {:.2f}-{:.2f} (mean {:.2f}); load '
          'average {:.1f}-{:.1f}. CPU time per cloud is less sensitive to that than rates and '
          'latencies.'.format(machine['cores'], machine['cpu'], min(busy), max(busy),
                              min(others), max(others), float(np.mean(others)), min(loads),
                              max(loads)))
    lines, estimate = xavier_estimate(summary, args.x86_7zip_mips)
    if args.x86_7zip_mips == X86_7ZIP_SINGLE_MIPS and X86_7ZIP_CPU not in machine['cpu']:
        # The stored rating is another core's: the estimate is off by the two cores' ratio.
        lines.append('  NOTE: the single-core rating above was measured on an Intel {} (the '
                     'stored default), this run is on {}: pass --measure-7zip (7-Zip '
                     'installed) or --x86-7zip-mips for this core'.format(
                         X86_7ZIP_CPU, machine['cpu']))
        estimate['rating_of_another_cpu'] = True
    print('\n' + '\n'.join(lines))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump({'args': vars(args), 'machine': machine, 'rounds': rounds,
                   'summary': {'{} {}'.format(*k): v for k, v in summary.items()},
                   'xavier_nx_estimate': estimate}, f, indent=1)
    print('\nJSON: ' + args.out)


def parse_args(argv=None):
    """Return the command line's options (refusals as argparse's: exit 2 with the usage)."""
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--rounds', type=int, default=2, help='rounds per mode (A B A B ...)')
    parser.add_argument('--seconds', type=float, default=20.0, help='measurement per round')
    parser.add_argument('--warmup-s', type=float, default=5.0,
                        help='after the first cloud, before the measurement')
    parser.add_argument('--sizes', nargs='+', choices=SIZES, default=list(SIZES),
                        help='sample, 720p (bag replay), 720p-zed (ZED live path, simulated '
                        'SDK: the SDK\'s own cost excluded); default: all three, so that the '
                        'two 720p inputs are read side by side')
    parser.add_argument('--backends', nargs='+', choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument('--modes', nargs='+', choices=MODES, default=list(MODES))
    parser.add_argument('--zed-layout', choices=ZED_LAYOUTS, default=ZED_LAYOUT,
                        help='pyzed layout of the simulated SDK for 720p-zed (default {}: '
                        'JetPack 5.1\'s SDK 4.x, whose grab keeps the GIL; v5.0: 5.0.2, which '
                        'releases it)'.format(ZED_LAYOUT))
    parser.add_argument('--zed-grab-work-ms', type=float, default=0.0,
                        help='720p-zed: the simulated SDK\'s own work in each grab (its depth '
                        'on the GPU; the GIL kept with --zed-layout before v5.0)')
    parser.add_argument('--fps', type=float, default=10.0, help='camera rate of zed_node '
                        '(a whole number with 720p-zed: the ZED\'s grab_fps)')
    parser.add_argument('--standin-ms', type=float, default=30.0, help='stand-in inference')
    parser.add_argument('--ort-model', default='vits', help='vits | tiny (random-weight '
                        'Depth Anything V2 exports of test/model_files.py) or an .onnx path')
    parser.add_argument('--start-timeout-s', type=float, default=180.0)
    parser.add_argument('--x86-7zip-mips', type=float, default=X86_7ZIP_SINGLE_MIPS,
                        help='7-Zip single-thread R/U rating of this machine\'s core')
    parser.add_argument('--measure-7zip', action='store_true',
                        help='measure that rating here first (7zz b -mmt1)')
    parser.add_argument('--quick', action='store_true', help='a smoke run: 1 round of 5 s, '
                        'sample size, stand-in (options given explicitly still apply)')
    parser.add_argument('--workspace', help='colcon workspace of this checkout (default: '
                        'a temporary one)')
    parser.add_argument('--out', default=os.path.join(ROOT, 'out', 'bench_composed.json'))
    parser.add_argument('--depth', action='store_true',
                        help='also subscribe ~/depth (a planner\'s reader) and report its latency')
    parser.add_argument('--param', action='append', default=[], metavar='NODE.NAME=VALUE',
                        help='a parameter of config/zed_depth.yaml for every round, e.g. '
                        'alignment_node.finish_threads=2 (repeatable)')
    args = parser.parse_args(argv)
    if args.quick:
        given = set(a.split('=')[0] for a in (argv if argv is not None else sys.argv[1:]))
        for option, value in (('--rounds', 1), ('--seconds', 5.0), ('--warmup-s', 2.0),
                              ('--sizes', ['sample']), ('--backends', ['standin'])):
            if option not in given:
                setattr(args, option[2:].replace('-', '_'), value)
    if args.rounds < 1 or args.seconds <= 0:
        parser.error('--rounds must be >= 1 and --seconds > 0, got {} and {}'.format(
            args.rounds, args.seconds))
    if '720p-zed' in args.sizes and not (1 <= args.fps <= 120 and args.fps == int(args.fps)):
        parser.error('--sizes 720p-zed runs the ZED at --fps as its grab_fps, a whole number '
                     'in [1, 120]; got {:g}'.format(args.fps))
    if not 0 <= args.zed_grab_work_ms < 1000.0 / max(args.fps, 1e-9):
        parser.error('--zed-grab-work-ms must be >= 0 and less than a frame period ({:g} ms at '
                     '--fps {:g}); got {:g}'.format(1000.0 / max(args.fps, 1e-9), args.fps,
                                                    args.zed_grab_work_ms))
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.measure_7zip:
        args.x86_7zip_mips = measure_7zip()
        print('7-Zip single-thread rating of this core: {:.0f} MIPS (R/U)'.format(
            args.x86_7zip_mips), flush=True)
    import conftest  # noqa: F401 - this run's ROS domain and DDS settings, for the launch too
    from conftest import Probe
    from launch_support import overlay_environment
    work = tempfile.mkdtemp(prefix='bench_composed_')
    # Its workspace, the bag and the simulated ZED's frames: ~0.5 GB, removed at exit.
    atexit.register(shutil.rmtree, work, True)
    env, how = overlay_environment(args.workspace or os.path.join(work, 'ws'))
    shown = launch_arguments(env)
    setup = {'has_composed': "'composed':" in shown,
             'params': params_file(os.path.join(work, 'params.yaml'), args.fps,
                                   args.standin_ms, args.param)}
    if 'composed' in args.modes and not setup['has_composed']:
        raise SystemExit('launch/zed_depth.launch.py has no launch argument `composed` (issue '
                         '18, point 1; merge branch `composed`), so composed:=true cannot be '
                         'measured: run with --modes separate')
    if '720p' in args.sizes:
        from soak import write_bag
        setup['bag'] = write_bag(os.path.join(work, 'bag'), BAG_FRAMES)
    if '720p-zed' in args.sizes:
        setup['pyzed_site'] = simulated_zed(work, layout=args.zed_layout,
                                            grab_work_ms=args.zed_grab_work_ms)
    args.ort_label = '-'
    if 'onnxruntime' in args.backends:
        setup['model'], args.ort_label = ort_model(args.ort_model)
    machine = {'cores': os.cpu_count(), 'cpu': cpu_name(), 'launch': how,
               'launch_has_composed': setup['has_composed']}
    print('depth_ros launch: {}; {} cores, load average {:.1f}'.format(
        how, machine['cores'], os.getloadavg()[0]), flush=True)
    probe = Probe('bench_composed')
    listener = Listener(probe, depth=args.depth)
    rounds = []
    try:
        for size in args.sizes:
            for backend in args.backends:
                for index in range(args.rounds):
                    for mode in args.modes:
                        r = run_round(env, setup, size, backend, mode, listener, args)
                        r['round'] = index
                        rounds.append(r)
                        print('{} {} {} round {}: {} clouds in {:.1f} s, CPU {:.1f} ms/cloud, '
                              'latency median {:.1f} ms, machine {:.2f} cores busy'.format(
                                  size, backend, mode, index + 1, r['clouds'], r['seconds'],
                                  1e3 * r['cpu_s'] / max(r['clouds'], 1),
                                  latency_stats(r['latency_ms'])['median'],
                                  r['machine_busy_cores']), flush=True)
    finally:
        probe.close()
    report(rounds, args, machine)


def ort_model(name):
    """Return (path, label) of the ONNX file the onnxruntime rounds run."""
    if name.endswith('.onnx'):
        if not os.path.isfile(name):
            raise SystemExit('--ort-model {} is not a file'.format(name))
        return name, os.path.basename(name)
    if name not in ('vits', 'tiny'):
        raise SystemExit('--ort-model must be vits, tiny or an .onnx path, got {!r}'.format(name))
    from model_files import community_onnx
    return community_onnx(name), 'random-weight Depth Anything V2 {} (public file layout, ' \
        'test/model_files.py)'.format('ViT-S' if name == 'vits' else 'tiny')


def cpu_name():
    """Return the CPU model name (/proc/cpuinfo)."""
    with open('/proc/cpuinfo') as f:
        for line in f:
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    return '?'


if __name__ == '__main__':
    main()

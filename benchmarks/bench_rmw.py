"""
Benchmark of the middleware: clouds/s of the sample graph, and 720p frame sets/s, per RMW.

Each RMW runs with and without our configuration.

Run it in a sourced ROS 2 environment (Humble: both rmw_fastrtps_cpp and rmw_cyclonedds_cpp).

``graph``: ``ros2 launch depth_ros zed_depth.launch.py source:=sample backend:=standin
publish_tf:=false`` (the user's command, in a colcon workspace of this checkout built on the
sourced underlay) for ``--seconds``; a probe counts the clouds on /alignment_node/points (best
effort; reliable with ``--reliable``), and reads alignment_node's drop counters, each node's CPU
time and the WARN/ERROR lines of the log.

``transport``: one process publishes what alignment_node receives per camera frame at 720p
(bgr8 image 2.8 MB, stereo depth, confidence and disparity 3.7 MB each, camera_info) at 10 Hz,
best effort; another counts the frames whose five messages all arrived. No node code: the
middleware alone.

Configurations: ``ours`` is what the launch file sets (config/fastdds_large_messages.xml,
config/cyclonedds_large_messages.xml and, localhost-only, cyclonedds_localhost.xml); ``none`` is
the RMW's defaults; ``capped`` is ours with Cyclone DDS's receive buffer request cut to 212992
bytes (``--capped``), which is what a stock Ubuntu or JetPack kernel (net.core.rmem_max =
212992) grants.

    python benchmarks/bench_rmw.py graph transport --config none ours capped --seconds 15

The numbers depend on the machine and its load: compare rows of one run.
"""
import argparse
import atexit
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'test'))
sys.path.insert(0, ROOT)

from depth_ros.nodes_core import middleware  # noqa: E402

CONFIG = os.path.join(ROOT, 'config')
CAPPED = '<CycloneDDS><Domain Id="any"><Internal><SocketReceiveBufferSize min="default" ' \
    'max="{}B"/></Internal></Domain></CycloneDDS>'
DOMAIN = str(150 + os.getpid() % 50)


def environment(rmw, config, capped=212992):
    """Return the environment of one run: RMW, domain, localhost-only and the DDS config."""
    env = dict(os.environ)
    for var in (middleware.OLD, middleware.NEW, middleware.CYCLONEDDS_URI):
        env.pop(var, None)
    env.update(RMW_IMPLEMENTATION=rmw, ROS_DOMAIN_ID=DOMAIN, ROS_LOCALHOST_ONLY='1',
               ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', PYTHONUNBUFFERED='1')
    if config in ('ours', 'capped'):
        env.update(middleware.profile_environment(
            os.path.join(CONFIG, 'fastdds_large_messages.xml'), env))
        env.update(middleware.cyclonedds_environment(CONFIG, env))
        if config == 'capped':
            env[middleware.CYCLONEDDS_URI] += ',' + CAPPED.format(capped)
    elif middleware.localhost_only(env):
        # The RMW's defaults, but without Cyclone's warning line and with room for processes.
        env[middleware.CYCLONEDDS_URI] = 'file://' + os.path.join(
            CONFIG, middleware.CYCLONEDDS_LOCALHOST)
    return env


def cpu_seconds(session):
    """CPU seconds (user + system) of the processes of one session, by executable name."""
    out = {}
    tick = os.sysconf('SC_CLK_TCK')
    for pid in os.listdir('/proc'):
        if not pid.isdigit():
            continue
        try:
            with open('/proc/{}/stat'.format(pid)) as f:
                stat = f.read()
            with open('/proc/{}/cmdline'.format(pid)) as f:
                cmd = f.read().split('\0')
        except OSError:
            continue
        fields = stat[stat.rindex(')') + 2:].split()
        if int(fields[3]) != session:
            continue
        names = [os.path.basename(c) for c in cmd if c.endswith('_node')]
        name = names[0] if names else os.path.basename(cmd[0])
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


PROBE = r'''
import sys, time, rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy, HistoryPolicy
from sensor_msgs.msg import PointCloud2
from diagnostic_msgs.msg import DiagnosticArray
seconds, reliable = float(sys.argv[1]), sys.argv[2] == 'reliable'
rclpy.init()
node = rclpy.create_node('bench_rmw_probe')
qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=2, reliability=(
    ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT))
clouds, diag = [], {}
node.create_subscription(PointCloud2, '/alignment_node/points',
                         lambda m: clouds.append(time.monotonic()), qos, raw=True)
def on_diag(msg):
    for s in msg.status:
        if s.name.startswith('alignment_node'):
            diag.update({kv.key: kv.value for kv in s.values})
node.create_subscription(DiagnosticArray, '/diagnostics', on_diag, 50)
end = time.monotonic() + 90
while len(clouds) < 3 and time.monotonic() < end:
    rclpy.spin_once(node, timeout_sec=0.1)
print('START', flush=True)
start, n0 = time.monotonic(), len(clouds)
while time.monotonic() - start < seconds:
    rclpy.spin_once(node, timeout_sec=0.1)
print('CLOUDS', (len(clouds) - n0) / seconds)
print('UNPAIRED', diag.get('dropped_unpaired', '?'), 'INPUT', diag.get('input_rate_hz', '?'))
'''


def run_graph(workspace_env, rmw, config, seconds, reliable, capped):
    """Launch the sample graph; return (clouds/s, dropped_unpaired, CPU s/s by node, log)."""
    env = environment(rmw, config, capped)
    env.update({k: v for k, v in workspace_env.items()
                if k in ('AMENT_PREFIX_PATH', 'PYTHONPATH', 'PATH', 'LD_LIBRARY_PATH')})
    args = ['source:=sample', 'backend:=standin', 'publish_tf:=false', 'clean_shm:=false']
    if config == 'none':
        args += ['fastdds_profile:=false', 'cyclonedds_config:=false']
    if reliable:
        args.append('reliability:=reliable')
    log = tempfile.NamedTemporaryFile(prefix='bench_rmw_', suffix='.log', delete=False)
    from launch_support import tool
    launch = subprocess.Popen([tool('ros2'), 'launch', 'depth_ros', 'zed_depth.launch.py']
                              + args, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    probe = subprocess.Popen([sys.executable, '-c', PROBE, str(seconds),
                              'reliable' if reliable else 'best_effort'], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             universal_newlines=True)
    # The probe waits 90 s at most for its first clouds, then counts for ``seconds``: past
    # that and a minute more (a probe stuck in rclpy), it is killed and this run says so.
    limit = 90 + seconds + 60
    watchdog = threading.Timer(limit, probe.kill)
    watchdog.start()
    cpu0 = None
    lines = []
    try:
        for line in probe.stdout:
            lines.append(line)
            if line.startswith('START'):
                cpu0, t0 = cpu_seconds(launch.pid), time.monotonic()
        probe.wait(10)
    except subprocess.TimeoutExpired:
        probe.kill()
        probe.wait(10)
    finally:
        watchdog.cancel()
    if probe.returncode is not None and probe.returncode < 0:
        print('{} {}: the cloud probe did not finish within {:.0f} s and was killed'.format(
            rmw, config, limit), file=sys.stderr, flush=True)
    cpu = {}
    if cpu0 is not None:
        cpu1, dt = cpu_seconds(launch.pid), time.monotonic() - t0
        cpu = {k: (v - cpu0.get(k, 0.0)) / dt for k, v in cpu1.items() if k.endswith('_node')}
    os.killpg(launch.pid, signal.SIGINT)
    try:
        launch.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(launch.pid, signal.SIGKILL)
    log.close()
    with open(log.name, errors='replace') as f:
        text = f.read()
    os.unlink(log.name)
    out = ''.join(lines)
    clouds = re.search(r'CLOUDS ([0-9.]+)', out)
    unpaired = re.search(r'UNPAIRED (\S+)', out)
    return (float(clouds.group(1)) if clouds else 0.0, unpaired.group(1) if unpaired else '?',
            cpu, text if clouds else text + out)


PUBLISHER = r'''
import sys, time, numpy as np, rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy, HistoryPolicy
from sensor_msgs.msg import CameraInfo, Image
rclpy.init()
node = rclpy.create_node('bench_rmw_camera')
qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=2,
                 reliability=ReliabilityPolicy.BEST_EFFORT)
W, H = 1280, 720
def image(encoding, step, data):
    return Image(height=H, width=W, encoding=encoding, step=step, data=data)
payload = {'image': ('bgr8', W * 3, bytes(np.random.RandomState(0).randint(0, 255, H * W * 3,
                                                                          np.uint8))),
           'depth': ('32FC1', W * 4, np.ones(H * W, np.float32).tobytes()),
           'confidence': ('32FC1', W * 4, np.ones(H * W, np.float32).tobytes()),
           'disparity': ('32FC1', W * 4, np.ones(H * W, np.float32).tobytes())}
msgs = {k: image(*v) for k, v in payload.items()}
pubs = {k: node.create_publisher(Image, '/bench/' + k, qos) for k in msgs}
info = CameraInfo(height=H, width=W)
pub_info = node.create_publisher(CameraInfo, '/bench/camera_info', qos)
end = time.monotonic() + 30
while pubs['image'].get_subscription_count() < 1 and time.monotonic() < end:
    time.sleep(0.05)
time.sleep(1.0)
seconds = float(sys.argv[1])
n, t_next = 0, time.monotonic()
while n < seconds * 10:
    time.sleep(max(0.0, t_next - time.monotonic()))
    t_next += 0.1
    stamp = node.get_clock().now().to_msg()
    for k in ('image', 'camera_info', 'depth', 'confidence', 'disparity'):
        m = info if k == 'camera_info' else msgs[k]
        m.header.stamp = stamp
        (pub_info if k == 'camera_info' else pubs[k]).publish(m)
    n += 1
print('SENT', n, flush=True)
time.sleep(1.0)
'''

SUBSCRIBER = r'''
import collections, sys, time, rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy, HistoryPolicy
from sensor_msgs.msg import CameraInfo, Image
rclpy.init()
node = rclpy.create_node('bench_rmw_alignment')
qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5,
                 reliability=ReliabilityPolicy.BEST_EFFORT)
got = collections.defaultdict(set)
def keep(kind):
    def cb(msg):
        got[(msg.header.stamp.sec, msg.header.stamp.nanosec)].add(kind)
    return cb
for k in ('image', 'depth', 'confidence', 'disparity'):
    node.create_subscription(Image, '/bench/' + k, keep(k), qos)
node.create_subscription(CameraInfo, '/bench/camera_info', keep('camera_info'), qos)
end = time.monotonic() + float(sys.argv[1])
try:
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.1)
except KeyboardInterrupt:   # the publisher is done
    pass
print('SETS', sum(1 for v in got.values() if len(v) == 5), 'OF', len(got), flush=True)
'''


def run_transport(rmw, config, seconds, capped):
    """Send ``seconds`` of 720p frame sets at 10 Hz; return (complete sets, frames sent)."""
    env = environment(rmw, config, capped)
    sub = subprocess.Popen([sys.executable, '-c', SUBSCRIBER, str(seconds + 30)], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           universal_newlines=True)
    try:
        pub = subprocess.run([sys.executable, '-c', PUBLISHER, str(seconds)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             universal_newlines=True, timeout=seconds + 90)
        pub_out = pub.stdout
    except subprocess.TimeoutExpired as exc:
        text = exc.output.decode(errors='replace') if isinstance(exc.output, bytes) \
            else exc.output or ''
        pub_out = 'the publisher did not finish within {:.0f} s (killed); it printed: {}'.format(
            seconds + 90, text)
    sub.send_signal(signal.SIGINT)
    try:
        out = sub.communicate(timeout=20)[0]
    except subprocess.TimeoutExpired:
        sub.kill()
        try:
            out = sub.communicate(timeout=10)[0]
        except subprocess.TimeoutExpired:
            out = 'the subscriber did not end within 10 s of SIGKILL'
    sent = re.search(r'SENT (\d+)', pub_out)
    sets = re.search(r'SETS (\d+)', out)
    if not (sent and sets):
        return None, pub_out[-500:] + out[-500:]
    return int(sets.group(1)), int(sent.group(1))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('what', nargs='+', choices=('graph', 'transport'))
    parser.add_argument('--rmw', nargs='+', default=['rmw_fastrtps_cpp', 'rmw_cyclonedds_cpp'])
    parser.add_argument('--config', nargs='+', default=['none', 'ours'],
                        choices=('none', 'ours', 'capped'))
    parser.add_argument('--seconds', type=float, default=15.0)
    parser.add_argument('--reliable', action='store_true', help='graph: reliability:=reliable')
    parser.add_argument('--capped', type=int, default=212992, help='the receive buffer (bytes) '
                        'that the capped configuration asks for (212992: a stock kernel)')
    parser.add_argument('--workspace', help='colcon workspace of this checkout (built when '
                        'it has no install/depth_ros; default: a temporary one)')
    args = parser.parse_args(argv)
    print('machine: {} CPUs, load average {:.1f}, net.core.rmem_max {}, ROS_DISTRO {}, '
          'Python {}.{}'.format(os.cpu_count(), os.getloadavg()[0], middleware.rmem_max(),
                                os.environ.get('ROS_DISTRO', '?'), *sys.version_info[:2]))
    if 'graph' in args.what:
        from launch_support import colcon_build, sourced_environment
        workspace = args.workspace
        if workspace is None:
            workspace = tempfile.mkdtemp(prefix='bench_rmw_ws_')
            atexit.register(shutil.rmtree, workspace, True)   # a build of ours, at exit
        if not os.path.isdir(os.path.join(workspace, 'install', 'depth_ros')):
            built = colcon_build(workspace)
            if built.returncode != 0:
                raise SystemExit(built.stdout.decode()[-3000:])
        workspace_env = sourced_environment(workspace)
        print('\nsample graph (741x500 at 10 fps, stand-in backend, {}), {:.0f} s each:'.format(
            'reliable' if args.reliable else 'best effort', args.seconds))
        print('{:20s} {:7s} {:>9s} {:>9s}  {:>5s} {:>5s}  {}'.format(
            'rmw', 'config', 'clouds/s', 'unpaired', 'WARN', 'ERROR',
            'CPU s/s zed, depth, alignment'))
        for rmw in args.rmw:
            for config in args.config:
                rate, unpaired, cpu, log = run_graph(workspace_env, rmw, config, args.seconds,
                                                     args.reliable, args.capped)
                lines = log.splitlines()
                print('{:20s} {:7s} {:9.2f} {:>9s}  {:5d} {:5d}  {}'.format(
                    rmw, config, rate, unpaired, sum('[WARN]' in x for x in lines),
                    sum('[ERROR]' in x for x in lines), ', '.join(
                        '{:.2f}'.format(cpu.get(n, float('nan')))
                        for n in ('zed_node', 'depth_node', 'alignment_node'))))
                notes = [x for x in lines if 'rmem_max' in x]
                if notes:
                    print('    launch said: ' + notes[0].split(']: ')[-1])
    if 'transport' in args.what:
        print('\n720p frame sets (image, depth, confidence, disparity, camera_info: 13.9 MB) '
              'at 10 Hz, best effort, {:.0f} s each:'.format(args.seconds))
        print('{:20s} {:7s} {:>14s}'.format('rmw', 'config', 'complete sets'))
        for rmw in args.rmw:
            for config in args.config:
                sets, sent = run_transport(rmw, config, args.seconds, args.capped)
                if sets is None:
                    print('{:20s} {:7s} failed: {}'.format(rmw, config, sent))
                    continue
                print('{:20s} {:7s} {:6d} of {:4d} ({:.1f}/s)'.format(
                    rmw, config, sets, sent, sets / args.seconds))


if __name__ == '__main__':
    main()

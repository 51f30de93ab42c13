"""
What publishing alignment_node's 720p cloud costs (640x360 points at cloud_stride 2, 3.7 MB).

Times, for the same cloud: the node's message built from its reused buffer
(``conversions.cloud_to_pointcloud2(buffer=...)``, no copy), the alternatives (``msg.data =
cloud.tobytes()``; a new ``array.array`` copied from the cloud), ``publish`` of the message,
and ``publish`` of the same message pre-serialized (``rclpy.serialization``, its bytes copied
each time), first with no subscriber, then with one raw Python subscriber in another process
(this script, ``sub``). Prints medians and quartiles in ms. Run it with the distribution's
environment sourced and the RMW of interest (``RMW_IMPLEMENTATION``); the launch file's DDS
profile (config/) applies as it does to the nodes when its variables are set.

Usage: python benchmarks/bench_publish.py [--frames 40]
A benchmark that prints figures, not a test.
"""
import argparse
import array
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
TOPIC = '/bench_publish/points'


def quartiles(seconds):
    """Return 'median [q1, q3]' in ms."""
    ms = 1e3 * np.asarray(seconds)
    return '{:.3f} [{:.3f}, {:.3f}]'.format(
        np.median(ms), np.percentile(ms, 25), np.percentile(ms, 75))


def subscriber():
    """Receive the clouds raw (never deserialized) for 60 s or until stopped."""
    import rclpy
    from sensor_msgs.msg import PointCloud2
    from depth_ros.ros.runtime import sensor_qos
    rclpy.init()
    node = rclpy.create_node('bench_publish_sub')
    node.create_subscription(PointCloud2, TOPIC, lambda raw: None,
                             sensor_qos('best_effort', 2), raw=True)
    end = time.time() + 60.0
    try:
        while time.time() < end and rclpy.ok():
            rclpy.spin_once(node, timeout_sec=0.1)
    except Exception:  # noqa: B902 - stopped by the parent
        pass


def measure(pub, cloud, buffer, header, frames):
    """Return {what: [seconds]} over ``frames`` rounds, 20 per second."""
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import PointCloud2
    from depth_ros.ros import conversions as conv
    serialized = serialize_message(conv.cloud_to_pointcloud2(cloud, header, buffer=buffer))
    times = {k: [] for k in ('build', 'bytes', 'array', 'publish', 'publish_serialized')}
    for i in range(frames):
        t0 = time.perf_counter()
        msg = conv.cloud_to_pointcloud2(cloud, header, buffer=buffer)
        times['build'].append(time.perf_counter() - t0)
        # The two publishes in turns, each first every other round (the second finds the
        # cloud in the caches and the transport busy with the first).
        for key in (('publish', 'publish_serialized') if i % 2 else
                    ('publish_serialized', 'publish')):
            t0 = time.perf_counter()
            pub.publish(msg if key == 'publish' else bytes(serialized))
            times[key].append(time.perf_counter() - t0)
        other = PointCloud2()
        t0 = time.perf_counter()
        other.data = cloud.tobytes()
        times['bytes'].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        data = array.array('B')
        data.frombytes(memoryview(cloud).cast('B'))
        other.data = data
        times['array'].append(time.perf_counter() - t0)
        time.sleep(0.05)
    return times


def main(argv=None):
    """Print the figures with no subscriber, then with one in another process."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--frames', type=int, default=40)
    parser.add_argument('role', nargs='?', default='pub', choices=('pub', 'sub'))
    args = parser.parse_args(argv)
    if args.role == 'sub':
        subscriber()
        return 0
    import rclpy
    from sensor_msgs.msg import PointCloud2
    from depth_ros.core.pointcloud import CLOUD_DTYPE
    from depth_ros.ros import conversions as conv
    from depth_ros.ros.runtime import sensor_qos
    rclpy.init()
    node = rclpy.create_node('bench_publish')
    pub = node.create_publisher(PointCloud2, TOPIC, sensor_qos('best_effort', 2))
    buffer = conv.MessageBuffer()
    cloud = buffer.array((360, 640), CLOUD_DTYPE)
    planes = cloud.view(np.float32)
    planes[...] = np.random.RandomState(0).rand(*planes.shape)
    header = conv.make_header(123456789012, 'zed_left_camera_optical_frame')
    print('Python {}, RMW {}: a {} MB cloud'.format(
        sys.version.split()[0], os.environ.get('RMW_IMPLEMENTATION', '(default)'),
        round(cloud.nbytes / 1e6, 1)), flush=True)
    sub = None
    try:
        for label in ('no subscriber', 'one raw subscriber in another process'):
            if sub is None and label != 'no subscriber':
                sub = subprocess.Popen([sys.executable, os.path.abspath(__file__), 'sub'],
                                       stderr=subprocess.DEVNULL)
                end = time.time() + 30.0
                while pub.get_subscription_count() == 0 and time.time() < end:
                    time.sleep(0.1)
                if pub.get_subscription_count() == 0:
                    raise SystemExit('the subscriber process (bench_publish.py sub) did not '
                                     'match {} within 30 s'.format(TOPIC))
                time.sleep(1.0)
            t = measure(pub, cloud, buffer, header, args.frames)
            print('{}: message from the buffer {} ms; publish {} ms; publish pre-serialized '
                  '(copy included) {} ms; instead: data = bytes {} ms, data = a new array.array '
                  '{} ms'.format(label, quartiles(t['build']), quartiles(t['publish']),
                                 quartiles(t['publish_serialized']), quartiles(t['bytes']),
                                 quartiles(t['array'])), flush=True)
    finally:
        if sub is not None:
            sub.terminate()
            try:
                sub.wait(10)
            except subprocess.TimeoutExpired:
                print('the subscriber process did not end within 10 s of SIGTERM: killed it',
                      file=sys.stderr)
                sub.kill()
                sub.wait(10)
        node.destroy_node()
        rclpy.shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())

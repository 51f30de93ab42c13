"""
A fed graph for node tests: depth_node and alignment_node as processes, inputs from a probe.

The probe publishes images, stand-in disparity, stereo depth, confidence and camera_info whose
stereo depth is an exact affine of the stand-in's disparity, under a test namespace, and
collects every output and /diagnostics. Waits are polls with deadlines or diagnostics stamped
after an event, never fixed sleeps.
"""
import time

from conftest import NodeProcess, wait_until
import numpy as np

H, W = 48, 64
FRAME = 'zed_left_camera_optical_frame'
SCALE, SHIFT = 2.0, 0.1          # stereo depth = 1 / (SCALE * disparity + SHIFT)
FX, FY, CX, CY = 50.0, 52.0, 31.5, 23.5


def make_bgr(seed, h=H, w=W):
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = (40 + 3 * xx * 64.0 / w + 2 * yy * 48.0 / h).astype(np.float32)
    bgr = np.stack([base, base * 0.8 + 10, 255 - base], axis=2) + rng.uniform(-8, 8, (h, w, 3))
    return np.clip(bgr, 0, 255).astype(np.uint8)


def expected_disparity(bgr):
    # Independent of the stand-in's code: BT.601 luma, then the documented affine map.
    gray = bgr[..., 0] * 0.114 + bgr[..., 1] * 0.587 + bgr[..., 2] * 0.299
    return 0.1 + 0.9 * gray / 255.0


def frame_set(seed, h=H, w=W):
    from depth_ros.inference.standin import standin_disparity
    bgr = make_bgr(seed, h, w)
    disparity = standin_disparity(bgr)
    depth = (1.0 / (SCALE * disparity + SHIFT)).astype(np.float32)
    depth[:max(1, h // 12), :] = np.nan      # a stereo hole, as at the ZED's image border
    confidence = np.full((h, w), 10.0, np.float32)
    return bgr, disparity, depth, confidence


def diag_values(collector, prefix, since=None):
    """Return the values of the newest status named ``prefix``* (stamped after ``since``)."""
    for msg in reversed(collector.msgs):
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        if since is not None and stamp <= since:
            continue
        for status in msg.status:
            # The status name is '<namespace/node>: <task>' ('zed/zed_node: camera'); the
            # hardware id is the fully qualified node name ('/depth_node_f'): either serves.
            if status.name.startswith(prefix) or status.hardware_id == '/' + prefix:
                values = {kv.key: kv.value for kv in status.values}
                values['_level'] = int.from_bytes(status.level, 'little') \
                    if isinstance(status.level, bytes) else int(status.level)
                values['_message'] = status.message
                return values
    return None


def diag_since(collector, prefix, since, timeout=10.0):
    """Wait for diagnostics of ``prefix`` taken after wall time ``since``; return them."""
    assert wait_until(lambda: diag_values(collector, prefix, since) is not None, timeout), \
        'no {} diagnostics after {:.3f}'.format(prefix, since)
    return diag_values(collector, prefix, since)


def diag_until(collector, prefix, predicate, timeout=10.0, since=None):
    """
    Poll /diagnostics of ``prefix`` until ``predicate(values)``; return the values.

    ``since`` (wall time) skips reports taken before it: a report published just before a
    case's input can still be the newest one received when the case starts to poll.
    """
    def ok():
        values = diag_values(collector, prefix, since)
        return values is not None and predicate(values)
    wait_until(ok, timeout)
    values = diag_values(collector, prefix, since)
    assert values is not None and predicate(values), 'diagnostics of {} never matched; last: ' \
        '{}'.format(prefix, values)
    return values


class FedGraph(object):
    """depth_node + alignment_node fed by ``probe`` under namespace ``ns``."""

    def __init__(self, probe, node_processes, ns='/t', depth_params=None, align_params=None,
                 suffix='', align_env=None):
        from depth_ros.core.camera import PinholeCamera
        from depth_ros.ros import conversions as conv
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2
        self.conv, self.ns, self.probe = conv, ns, probe
        depth_name, align_name = 'depth_node' + suffix, 'alignment_node' + suffix
        params = {'backend': 'standin', 'standin_latency_ms': 0.0, 'log_throttle_s': 0.0}
        params.update(depth_params or {})
        self.depth_node = NodeProcess('depth_node', name=depth_name, params=params,
                                      remaps={'image': ns + '/image'})
        params = {'log_throttle_s': 0.0}
        params.update(align_params or {})
        self.align_node = NodeProcess('alignment_node', name=align_name, params=params, remaps={
            'disparity': ns + '/disparity', 'depth_registered': ns + '/depth',
            'confidence': ns + '/confidence', 'camera_info': ns + '/camera_info',
            'image': ns + '/image', 'inference_started': ns + '/inference_started',
            'right_camera_info': ns + '/right_camera_info'},
            env=align_env)
        node_processes.extend([self.depth_node, self.align_node])
        self.depth_name, self.align_name = depth_name, align_name
        self.camera = PinholeCamera(FX, FY, CX, CY, W, H)
        self.pub = {k: probe.publisher(t, ns + '/' + k) for k, t in (
            ('image', Image), ('disparity', Image), ('depth', Image), ('confidence', Image),
            ('camera_info', CameraInfo))}
        self.disp = probe.subscribe(Image, '/{}/disparity'.format(depth_name))
        self.colorized = probe.subscribe(Image, '/{}/colorized'.format(depth_name))
        self.depth = probe.subscribe(Image, '/{}/depth'.format(align_name))
        self.info = probe.subscribe(CameraInfo, '/{}/camera_info'.format(align_name))
        self.points = probe.subscribe(PointCloud2, '/{}/points'.format(align_name))
        self.colored = probe.subscribe(Image, '/{}/colored'.format(align_name))
        self.diag = probe.subscribe(DiagnosticArray, '/diagnostics', probe.qos('reliable', 50))
        assert probe.wait_for_subscribers(self.pub['image'], 2, 30), \
            'nodes did not subscribe to the image; outputs:\n{}\n{}'.format(
                self.depth_node.output(), self.align_node.output())
        for k in ('disparity', 'depth', 'confidence', 'camera_info'):
            assert probe.wait_for_subscribers(self.pub[k], 1, 15), 'no subscriber on ' + k
        assert probe.wait_for_publishers('/{}/points'.format(align_name), 1, 15)
        assert wait_until(lambda: self.probe.node.count_publishers(
            '/{}/colored'.format(align_name)) >= 1, 15)
        # Those counts are our side's. A node's writer matches our reader on its side in its
        # own time: until then its output is not sent to us, and a lazy one (the cloud, the
        # colored view) not even computed. Discovery data come in order and the /diagnostics
        # reader above was announced after every output reader: a report of each node received
        # here says that node has matched them all (no frame is sent for it: a node's first set
        # is still the tests').
        for name in (depth_name, align_name):
            assert wait_until(lambda name=name: diag_values(self.diag, name) is not None, 20), \
                'no /diagnostics from {}; its output:\n{}'.format(name, (
                    self.depth_node if name == depth_name else self.align_node).output())
        self.stamp = 1700000000 * 10 ** 9

    def next_stamp(self):
        self.stamp += 100000000
        return self.stamp

    def warm(self):
        """
        Pass a good image and a good set through before a case sends one message alone.

        Our publishers see the nodes' subscriptions (``__init__``) before the nodes' side has
        matched ours, so a message sent once right after can be lost in transport (a fault
        case then waits in vain for its log line). A frame answered both ways ends discovery.
        """
        self.send_good_image(0, timeout=20.0)
        self.send_good(0, timeout=20.0)
        return self

    def send(self, stamp, bgr, disparity, depth, confidence, skip=(), image_encoding='bgr8',
             disparity_encoding='32FC1', frame=FRAME, camera=None, frames=None, tamper=None):
        """Publish one set; ``frames`` overrides the frame id per kind, ``tamper(kind, msg)``."""
        conv = self.conv
        frames = frames or {}

        def header(kind):
            return conv.make_header(stamp, frames.get(kind, frame))
        msgs = {}
        cam = camera or self.camera.scaled(depth.shape[1], depth.shape[0])
        msgs['camera_info'] = conv.camera_to_info(cam, header('camera_info'))
        msgs['confidence'] = conv.numpy_to_image(confidence, '32FC1', header('confidence'))
        msgs['depth'] = conv.numpy_to_image(depth, depth_encoding(depth), header('depth'))
        msg = conv.numpy_to_image(disparity, '32FC1', header('disparity'))
        msg.encoding = disparity_encoding
        msgs['disparity'] = msg
        if image_encoding == 'bgr8':
            msgs['image'] = conv.numpy_to_image(bgr, 'bgr8', header('image'))
        else:  # raw bytes under an encoding the nodes do not take
            msg = conv.numpy_to_image(bgr[:, :, :2].copy().reshape(bgr.shape[0], -1),
                                      'mono8', header('image'))
            msg.encoding, msg.width = image_encoding, bgr.shape[1]
            msgs['image'] = msg
        for kind in ('camera_info', 'confidence', 'depth', 'disparity', 'image'):
            if kind in skip:
                continue
            if tamper is not None:
                tamper(kind, msgs[kind])
            self.pub[kind].publish(msgs[kind])

    def send_good(self, seed, timeout=10.0, retry=True, resend_s=2.0):
        """
        Send a good set and wait for its metric depth; return its stamp.

        Best effort: a set can be lost in transport (right after discovery above all), so
        without an answer in ``resend_s`` a new set is sent (``retry``), up to ``timeout``.
        """
        end = time.monotonic() + timeout
        while True:
            stamp = self.next_stamp()
            self.send(stamp, *frame_set(seed))
            wait = min(resend_s, max(0.0, end - time.monotonic())) if retry else timeout
            if wait_until(lambda: self.depth.by_stamp(stamp) is not None, wait):
                return stamp
            assert retry and time.monotonic() < end, \
                'no metric depth for good frame {}; alignment_node output:\n{}'.format(
                    stamp, self.align_node.output()[-3000:])

    def send_good_image(self, seed, timeout=10.0, also=None):
        """
        Send a good image to depth_node only and wait for its disparity; return the stamp.

        Resent (new stamp) when no answer comes in 2 s (best effort), up to ``timeout``;
        ``also(stamp)`` is a further condition to wait for (another output of that stamp).
        """
        end = time.monotonic() + timeout
        bgr = make_bgr(seed)
        while True:
            stamp = self.next_stamp()
            self.pub['image'].publish(self.conv.numpy_to_image(
                bgr, 'bgr8', self.conv.make_header(stamp, FRAME)))
            wait = min(2.0, max(0.0, end - time.monotonic()))
            if wait_until(lambda: self.disp.by_stamp(stamp) is not None and
                          (also is None or also(stamp)), wait):
                return stamp
            assert time.monotonic() < end, 'no disparity for good image {}; depth_node ' \
                'output:\n{}'.format(stamp, self.depth_node.output()[-3000:])

    def diagnostics(self, node, since=None, wait=True):
        """
        Return the newest diagnostics of ``node`` ('depth' or 'alignment'), after ``since``.

        With ``since``, wait for such a report unless ``wait`` is false (then None if none).
        """
        name = self.depth_name if node == 'depth' else self.align_name
        if since is None or not wait:
            return diag_values(self.diag, name, since)
        return diag_since(self.diag, name, since)

    def diagnostics_until(self, node, predicate, timeout=10.0, since=None):
        """Poll the diagnostics of ``node`` (taken after ``since``) until ``predicate``."""
        name = self.depth_name if node == 'depth' else self.align_name
        return diag_until(self.diag, name, predicate, timeout, since)


def depth_encoding(depth):
    """Return the encoding of a stereo depth array (16UC1 millimetres or 32FC1 metres)."""
    return '16UC1' if depth.dtype == np.uint16 else '32FC1'


def set_param(probe, node, name, value):
    """Set one parameter of ``node`` through its service; assert it was taken."""
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter
    client = probe.node.create_client(SetParameters, '/{}/set_parameters'.format(node))
    try:
        assert client.wait_for_service(10.0), 'no parameter service on ' + node
        future = client.call_async(SetParameters.Request(
            parameters=[Parameter(name, value=value).to_parameter_msg()]))
        assert wait_until(future.done, 10), 'set {} on {}: no answer'.format(name, node)
        result = future.result().results[0]
        assert result.successful, 'set {}={} on {}: {}'.format(name, value, node, result.reason)
    finally:
        probe.node.destroy_client(client)


def now():
    """Wall time (seconds) on the nodes' clock, for :func:`diag_since`."""
    return time.time()

"""
zed_node with a replay source, the three-node pipeline, and start-up failures, as processes.

- The sample source (bundled Middlebury pair, SGBM depth) drives zed_node -> depth_node
  (stand-in backend, not a model) -> alignment_node, wired exactly as the launch file wires
  them, with config/zed_depth.yaml. The cloud must carry the camera image's stamp and frame.
- The source disappears mid-run (ReplaySource's simulated outage: read and open fail for a
  while) and zed_node must report it, retry, reconnect and publish again.
- A model that cannot load and an invalid parameter end the process at start-up with a
  one-line message and a non-zero exit code, never a traceback.
"""
from conftest import NodeProcess, wait_until
import numpy as np
import pytest

pytestmark = pytest.mark.graph
rclpy = pytest.importorskip('rclpy', reason='rclpy is not installed (depth_ros[ros])')
pytest.importorskip('skimage', reason='the sample source needs scikit-image (depth_ros[tools])')

ZED = '/zed/zed_node'
FRAME = 'zed_left_camera_optical_frame'


@pytest.fixture(scope='module')
def pipeline(probe, node_processes):
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2
    zed = NodeProcess('zed_node', params={
        'source': 'sample', 'fps': 8.0, 'drop_after': 48, 'outage_s': 2.5,
        'retry_initial_s': 0.1, 'retry_max_s': 0.4, 'log_throttle_s': 0.0},
        extra_ros_args=['-r', '__ns:=/zed'])
    depth = NodeProcess('depth_node', params={'backend': 'standin', 'standin_latency_ms': 20.0},
                        remaps={'image': ZED + '/left/image_rect_color'})
    align = NodeProcess('alignment_node', remaps={
        'disparity': '/depth_node/disparity', 'depth_registered': ZED + '/depth/depth_registered',
        'confidence': ZED + '/confidence/confidence_map', 'camera_info': ZED + '/left/camera_info',
        'image': ZED + '/left/image_rect_color'})
    node_processes.extend([zed, depth, align])

    class P(object):
        pass
    p = P()
    p.zed, p.depth, p.align = zed, depth, align
    p.image = probe.subscribe(Image, ZED + '/left/image_rect_color')
    p.info = probe.subscribe(CameraInfo, ZED + '/left/camera_info')
    p.stereo = probe.subscribe(Image, ZED + '/depth/depth_registered')
    p.conf = probe.subscribe(Image, ZED + '/confidence/confidence_map')
    p.points = probe.subscribe(PointCloud2, '/alignment_node/points')
    p.diag = probe.subscribe(DiagnosticArray, '/diagnostics', probe.qos('reliable', 100))
    ok = wait_until(lambda: len(p.points) >= 2 and all(
        len(c) for c in (p.image, p.info, p.stereo, p.conf)), 40)
    assert ok, 'no point cloud from the pipeline; logs:\n{}\n{}\n{}'.format(
        zed.output()[-2000:], depth.output()[-2000:], align.output()[-2000:])
    return p


def test_zed_node_topics_types_encodings_frames(pipeline):
    from depth_ros.ros import conversions as conv
    from depth_ros.sources.sample import CX, CY, FOCAL_PX
    image, stereo, conf, info = (pipeline.image.msgs[-1], pipeline.stereo.msgs[-1],
                                 pipeline.conf.msgs[-1], pipeline.info.msgs[-1])
    received = [(m.encoding, m.header.frame_id, m.width, m.height) for m in (image, stereo, conf)]
    assert received == [('bgr8', FRAME, 741, 500), ('32FC1', FRAME, 741, 500),
                        ('32FC1', FRAME, 741, 500)], 'received {}'.format(received)
    camera = conv.camera_from_info(info)
    assert (camera.fx, camera.cx, camera.cy) == pytest.approx((FOCAL_PX, CX, CY)), \
        'expected the sample calibration, received {}'.format(camera)
    assert list(info.p)[3] == 0.0 and info.header.frame_id == FRAME
    depth = conv.image_to_numpy(stereo)
    finite = depth[np.isfinite(depth)]
    assert finite.size > 0.3 * depth.size and 0.5 < np.median(finite) < 20, \
        'expected metric SGBM depth, received median {} over {} pixels'.format(
            np.median(finite), finite.size)
    # Every stream of one frame carries the same stamp (the pairing relies on it). The streams
    # of the newest frame may still be on their way (confidence is published after depth):
    # wait for a frame that all four streams have delivered.

    def common():
        return set(pipeline.stereo.stamps()).intersection(
            *(c.stamps() for c in (pipeline.image, pipeline.conf, pipeline.info)))
    assert wait_until(common, 10), 'no stamp common to the four streams: {}'.format(
        [c.stamps()[-3:] for c in (pipeline.stereo, pipeline.image, pipeline.conf,
                                   pipeline.info)])


def test_cloud_carries_the_camera_stamp_and_frame(pipeline):
    # The probe's best-effort subscription may miss the first images during discovery, so
    # wait for a cloud whose camera image the probe also received.
    def matched():
        images = set(pipeline.image.stamps())
        return [m for m in pipeline.points.msgs if conv_stamp(m) in images]

    assert wait_until(lambda: len(matched()) > 0, 15), \
        'no cloud stamp {} is a camera image stamp {}'.format(
            pipeline.points.stamps()[-5:], pipeline.image.stamps()[-5:])
    cloud = matched()[-1]
    layout = [(f.name, f.offset) for f in cloud.fields]
    assert layout == [('x', 0), ('y', 4), ('z', 8), ('rgb', 12)] and cloud.point_step == 16, \
        'received {} step {}'.format(layout, cloud.point_step)
    assert (cloud.header.frame_id, cloud.height, cloud.width) == (FRAME, 250, 370), \
        'received {} {}x{}'.format(cloud.header.frame_id, cloud.width, cloud.height)


def test_diagnostic_status_names_carry_the_namespace(pipeline, node_processes):
    # rqt_robot_monitor and diagnostic_aggregator key statuses by name: a second instance
    # of a node (the Marigold graph's /marigold/alignment_node, a second camera) must be a
    # row of its own, not the same "alignment_node: metric alignment" as the first one.
    other = NodeProcess('alignment_node', extra_ros_args=['-r', '__ns:=/cam2'])
    node_processes.append(other)
    expected = {'zed/zed_node: camera': '/zed/zed_node', 'depth_node: inference': '/depth_node',
                'alignment_node: metric alignment': '/alignment_node',
                'cam2/alignment_node: metric alignment': '/cam2/alignment_node'}

    def seen():
        return {s.name: s.hardware_id for m in pipeline.diag.msgs for s in m.status
                if s.name in expected}
    assert wait_until(lambda: len(seen()) == len(expected), 20), \
        'statuses seen: {}; second node output:\n{}'.format(
            sorted({s.name for m in pipeline.diag.msgs for s in m.status}), other.output())
    assert seen() == expected


def conv_stamp(msg):
    from depth_ros.ros import conversions as conv
    return conv.stamp_to_ns(msg.header.stamp)


def test_camera_disappears_mid_run_and_zed_node_reconnects(pipeline):
    zed = pipeline.zed
    assert zed.wait_for_output('grab failed', 30), 'no outage reported:\n' + zed.output()
    n_before = len(pipeline.image)
    assert zed.wait_for_output('reconnected', 20), 'no reconnection:\n' + zed.output()[-3000:]
    points_at_reconnect = len(pipeline.points)
    assert wait_until(lambda: len(pipeline.image) >= n_before + 3, 15), \
        'no images after reconnecting'
    # The whole graph resumes, not only the camera topics: new clouds of new camera frames.
    assert wait_until(lambda: len(pipeline.points) >= points_at_reconnect + 2, 15), \
        'expected >= {} clouds after reconnecting, received {}; alignment_node:\n{}'.format(
            points_at_reconnect + 2, len(pipeline.points), pipeline.align.output()[-2000:])
    last_before = pipeline.image.stamps()[n_before - 1]
    assert max(pipeline.points.stamps()) > last_before, \
        'no cloud from a frame after the outage (last image before it: {})'.format(last_before)
    stamps = pipeline.image.stamps()
    assert all(b > a for a, b in zip(stamps, stamps[1:])), 'stamps not increasing'

    def camera_status():
        out = []
        for msg in list(pipeline.diag.msgs):
            for s in msg.status:
                if s.hardware_id == ZED:
                    out.append((s.level, s.message, {kv.key: kv.value for kv in s.values}))
        return out
    statuses = camera_status()
    assert any(level == b'\x02' and 'grab failed' in message for level, message, _ in statuses), \
        'expected an ERROR camera status during the outage, received {}'.format(
            [(lv, m) for lv, m, _ in statuses])
    assert wait_until(lambda: any(v.get('reconnects', '0') != '0'
                                  for _, _, v in camera_status()), 5), \
        'reconnects not counted on /diagnostics'
    assert pipeline.depth.alive() and pipeline.align.alive()


def test_model_that_fails_to_load_exits_cleanly():
    proc = NodeProcess('depth_node', params={'backend': 'onnxruntime',
                                             'model_path': '/nonexistent/model.onnx'})
    code = proc.wait(60)
    out = proc.output()
    proc.stop()
    assert code == 1, 'expected exit code 1, received {}; output:\n{}'.format(code, out)
    assert "cannot load onnxruntime model '/nonexistent/model.onnx'" in out and \
        'Traceback' not in out, 'expected a one-line message, received:\n' + out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith('[FATAL]'), 'received:\n' + out


def test_engine_outside_the_configured_cache_exits_cleanly(tmp_path):
    cache = tmp_path / 'engines'
    cache.mkdir()
    engine = tmp_path / 'elsewhere.engine'
    engine.write_bytes(b'not an engine')
    proc = NodeProcess('depth_node', params={'backend': 'tensorrt', 'model_path': str(engine),
                                             'engine_cache_dir': str(cache)})
    code = proc.wait(60)
    out = proc.output()
    proc.stop()
    assert code == 1, 'expected exit code 1, received {}; output:\n{}'.format(code, out)
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith('[FATAL]') and \
        'outside the engine cache directory {};'.format(cache) in lines[0], 'received:\n' + out


@pytest.mark.parametrize('module,param,value,text', [
    ('depth_node', 'backend', 'tensorflow',
     'parameter `backend` must be one of auto|onnxruntime|tensorrt|torch|standin'),
    ('zed_node', 'source', 'svo', 'parameter `path` is empty; source \'svo\' needs one'),
    # A range is rclpy's check, and its text (Humble and Kilted alike).
    ('alignment_node', 'cloud_stride', '0',
     'Parameter cloud_stride out of range. Min: 1, Max: 32, value: 0'),
])
def test_invalid_parameter_rejected_at_startup(module, param, value, text):
    proc = NodeProcess(module, params={param: value})
    code = proc.wait(60)
    out = proc.output()
    proc.stop()
    assert code == 2 and text in out and 'Traceback' not in out, \
        'expected exit 2 and {!r}, received {} and:\n{}'.format(text, code, out)


def test_live_source_without_pyzed_says_so():
    import importlib.util
    if importlib.util.find_spec('pyzed') is not None:
        pytest.skip('pyzed is installed here')
    proc = NodeProcess('zed_node', params={'source': 'live'})
    code = proc.wait(60)
    out = proc.output()
    proc.stop()
    assert code == 1 and 'pyzed not installed' in out and 'source:=sample|folder|bag' in out \
        and 'Traceback' not in out, 'received exit {} and:\n{}'.format(code, out)


def _pyzed_double_path(tmp_path, layout='v4.0'):
    """Return a PYTHONPATH whose ``pyzed`` is test/pyzed_double.py in ``layout``."""
    import os
    package = tmp_path / 'pyzed_double_site' / 'pyzed'
    package.mkdir(parents=True)
    here = os.path.dirname(os.path.abspath(__file__))
    (package / '__init__.py').write_text(
        'import sys\n'
        'sys.path.insert(0, {!r})\n'
        'import pyzed_double\n'
        'sl = pyzed_double.make_sl({!r}, frames=5)\n'
        "sys.modules['pyzed.sl'] = sl\n".format(here, layout))
    return os.pathsep.join(p for p in (str(package.parent), os.environ.get('PYTHONPATH'))
                           if p)


def test_svo_source_streams_through_zed_node(tmp_path, probe, node_processes):
    # `source:=svo path:=...` (README): an SVO comes wrapped in the replay pacing; the SDK
    # check at start-up must reach the ZED source inside it (it once met the wrapper and
    # ended the node with an AttributeError traceback, whatever the SDK).
    from sensor_msgs.msg import Image
    svo = tmp_path / 'run.svo2'
    svo.write_bytes(b'not read by the double')
    zed = NodeProcess('zed_node', params={'source': 'svo', 'path': str(svo)},
                      extra_ros_args=['-r', '__ns:=/svo'],
                      env={'PYTHONPATH': _pyzed_double_path(tmp_path)})
    node_processes.append(zed)
    images = probe.subscribe(Image, '/svo/zed_node/left/image_rect_color')
    assert wait_until(lambda: len(images) >= 2 or not zed.alive(), 40) and zed.alive(), \
        'no image from an SVO; output:\n' + zed.output()
    import pyzed_double as pd
    image = images.msgs[-1]
    assert (image.encoding, image.width, image.height) == ('bgr8', pd.WIDTH, pd.HEIGHT) and \
        image.header.frame_id == FRAME, image
    # /diagnostics names the SDK and whether its pyzed keeps the GIL (4.0.8: yes); an SVO's
    # grabs are not timed to a camera.
    from diagnostic_msgs.msg import DiagnosticArray
    diag = probe.subscribe(DiagnosticArray, '/diagnostics', probe.qos('reliable', 100))

    def camera_values():
        for m in diag.msgs:
            for status in m.status:
                if status.name == 'svo/zed_node: camera':
                    return {v.key: v.value for v in status.values}
        return None
    assert wait_until(lambda: camera_values() is not None, 20), zed.output()
    values = camera_values()
    assert (values['zed_sdk'], values['pyzed_keeps_gil'], values['grab_paced']) == \
        ('4.0.8', 'True', 'False'), values
    assert float(values['grab_ms_mean']) >= 0 and float(values['retrieve_ms_mean']) >= 0
    assert 'Traceback' not in zed.output(), zed.output()


def test_svo_source_without_pyzed_says_so(tmp_path):
    import importlib.util
    if importlib.util.find_spec('pyzed') is not None:
        pytest.skip('pyzed is installed here')
    svo = tmp_path / 'run.svo2'
    svo.write_bytes(b'')
    proc = NodeProcess('zed_node', params={'source': 'svo', 'path': str(svo)})
    code = proc.wait(60)
    out = proc.output()
    proc.stop()
    assert code == 1 and 'pyzed not installed' in out and 'Traceback' not in out, \
        'received exit {} and:\n{}'.format(code, out)


def test_bag_source_stops_without_a_warning(tmp_path, probe):
    # A sqlite3 bag's connection belongs to the thread that opened it (the grab thread):
    # closed from the main thread at Ctrl-C, rosbags' sqlite raised ProgrammingError and
    # every clean stop of source:=bag printed "closing the source failed" (Humble's rosbags).
    pytest.importorskip('rosbags', reason='bags need rosbags (depth_ros[bag])')
    from depth_ros.core.camera import PinholeCamera
    from depth_ros.sources.base import Frame
    from depth_ros.sources.rosbag import write_test_bag
    from graph_support import frame_set
    from sensor_msgs.msg import Image
    cam = PinholeCamera(50.0, 50.0, 31.5, 23.5, 64, 48)
    bag = write_test_bag(str(tmp_path / 'bag'), [
        Frame(left=frame_set(i)[0], depth=frame_set(i)[2], confidence=None, camera=cam,
              stamp_ns=(i + 1) * 10 ** 8, frame_id=FRAME) for i in range(3)])
    images = probe.subscribe(Image, '/zed_bag/zed_node/left/image_rect_color')
    proc = NodeProcess('zed_node', params={'source': 'bag', 'path': bag},
                       extra_ros_args=['-r', '__ns:=/zed_bag'])
    try:
        assert wait_until(lambda: len(images) >= 2, 30), 'no images:\n' + proc.output()
        proc.interrupt()
        code = proc.wait(20, 'its exit after SIGINT')
    finally:
        proc.stop()
    out = proc.output()
    assert code == 0 and 'WARN' not in out and 'Traceback' not in out, \
        'expected a quiet exit 0, received {}:\n{}'.format(code, out)


def test_a_path_under_the_home_folder_is_found(tmp_path, probe):
    # `ros2 launch ... path:=~/bag`: the shell leaves a `~` after `path:=` as it is, and
    # zed_node checked the path expanded but opened it as given ("bag not found: '~/bag'").
    pytest.importorskip('rosbags', reason='bags need rosbags (depth_ros[bag])')
    from depth_ros.core.camera import PinholeCamera
    from depth_ros.sources.base import Frame
    from depth_ros.sources.rosbag import write_test_bag
    from graph_support import frame_set
    from sensor_msgs.msg import Image
    cam = PinholeCamera(50.0, 50.0, 31.5, 23.5, 64, 48)
    write_test_bag(str(tmp_path / 'bag'), [
        Frame(left=frame_set(i)[0], depth=frame_set(i)[2], confidence=None, camera=cam,
              stamp_ns=(i + 1) * 10 ** 8, frame_id=FRAME) for i in range(3)])
    images = probe.subscribe(Image, '/zed_home/zed_node/left/image_rect_color')
    proc = NodeProcess('zed_node', params={'source': 'bag', 'path': '~/bag'},
                       extra_ros_args=['-r', '__ns:=/zed_home'], env={'HOME': str(tmp_path)})
    try:
        assert wait_until(lambda: len(images) >= 2, 30), 'no images:\n' + proc.output()
    finally:
        proc.stop()


def test_a_node_run_by_hand_without_a_fastdds_profile_says_what_to_export(tmp_path):
    # The quick start without the launch file: on Fast DDS with no XML profile, the sample's
    # 1.1 MB frames went in UDP fragments and alignment_node got almost none, without a word
    # about why (the launch file sets the profile; by hand, nobody did).
    from depth_ros.nodes_core import middleware
    if not middleware.rmw().startswith('rmw_fastrtps'):
        pytest.skip('{}: no Fast DDS profile to miss (test_nodes_core checks the note is '
                    'not given)'.format(middleware.rmw()))
    unset = {middleware.OLD: '', middleware.NEW: ''}
    proc = NodeProcess('zed_node', params={'source': 'sample'}, env=unset,
                       extra_ros_args=['-r', '__ns:=/zed_noprofile'])
    try:
        told = proc.wait_for_output('Fast DDS runs with no XML profile', 30)
        proc.interrupt()
        code = proc.wait(20, 'its exit after SIGINT')
    finally:
        proc.stop()
    out = proc.output()
    variable = middleware.profile_variables()[-1]
    assert told and code == 0 and out.count('no XML profile') == 1 and \
        'export {}=$(ros2 pkg prefix depth_ros)/share/depth_ros/config/' \
        'fastdds_large_messages.xml'.format(variable) in out, out

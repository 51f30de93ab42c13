"""
Run ``ros2 launch depth_ros zed_depth.launch.py`` for real.

launch_pytest starts the installed launch file with the argument combinations users rely on,
and a probe node checks the graph.

The package is the installed one (``colcon test``) or a ``colcon build`` of this checkout in a
temporary workspace. Every wait goes through :class:`launch_support.LaunchWatch`: when an
action fails or one of our nodes exits, the test fails at once with the launch's own error and
the nodes' output, not after its timeout. The bad-argument cases run the ``ros2 launch`` command
line, as a user would, and check its one-line error and exit status.

The sample graph, the start-up failure and the configured launch run in both modes
(``composed:=true``, the default: one composed_nodes process; ``composed:=false``: a process
per node); the other cases run in the default mode.
"""
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

from conftest import decode_cloud, end_process, run_bounded, wait_until
from launch_support import LAUNCH_STACK, LaunchWatch, MISSING, overlay_environment, tool
import pytest

pytestmark = [pytest.mark.graph, pytest.mark.launch_file,
              pytest.mark.skipif(not LAUNCH_STACK, reason=MISSING or 'launch stack present')]

if LAUNCH_STACK:
    import launch_pytest
    from launch import LaunchDescription
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource
    from launch_pytest.actions import ReadyToTest
else:  # pragma: no cover - the module is skipped; the decorators need a stand-in
    class launch_pytest(object):
        fixture = staticmethod(pytest.fixture)

rclpy = pytest.importorskip('rclpy', reason='rclpy is not installed (depth_ros[ros])')
pytest.importorskip('skimage', reason='the sample source needs scikit-image')

TIMEOUT = 90.0


# --------------------------------------------------------------------------- environment
@pytest.fixture(scope='module')
def overlay(tmp_path_factory):
    """Make depth_ros an installed ROS package for this module (env restored afterwards)."""
    env, how = overlay_environment(str(tmp_path_factory.mktemp('overlay_ws')))
    patch = pytest.MonkeyPatch()
    for key, value in env.items():
        if os.environ.get(key) != value:
            patch.setenv(key, value)
    yield how
    patch.undo()


@pytest.fixture
def watch():
    """Record the launch's output, exits and errors."""
    w = LaunchWatch()
    yield w
    w.close()


def _launch_file():
    from ament_index_python.packages import get_package_share_directory
    return os.path.join(get_package_share_directory('depth_ros'), 'launch',
                        'zed_depth.launch.py')


def _describe(watch, **arguments):
    # ReadyToTest first: the test starts at once and watches the launch itself, so a launch
    # whose actions fail is reported with its error instead of hanging the fixture.
    return LaunchDescription([ReadyToTest()] + watch.actions() + [
        IncludeLaunchDescription(PythonLaunchDescriptionSource(_launch_file()),
                                 launch_arguments=sorted(arguments.items()))])


def _stamp(msg):
    return msg.header.stamp.sec * 10 ** 9 + msg.header.stamp.nanosec


def _common_stamps(*collectors):
    sets = [set(c.stamps()) for c in collectors]
    return set.intersection(*sets) if sets else set()


def _plain(line):
    """Return a log line without its colour codes."""
    return re.sub(r'\x1b\[[0-9;]*m', '', line).strip()


def _clean(lines):
    """Lines of a log that would alarm a user: errors and tracebacks."""
    return [line for line in lines if '[ERROR]' in line or 'Traceback' in line or
            '[FATAL]' in line]


@pytest.fixture(params=['true', 'false'], ids=['composed', 'separate'])
def composed(request):
    """Give the launch argument composed:= of a test that runs in both modes."""
    return request.param


# Our processes in each mode, by the names launch gives them.
PROCESSES = {'true': ['composed_nodes'], 'false': ['alignment_node', 'depth_node', 'zed_node']}
# What the graph publishes, in both modes (and the types).
TOPICS = {
    '/zed/zed_node/left/image_rect_color': 'sensor_msgs/msg/Image',
    '/zed/zed_node/left/camera_info': 'sensor_msgs/msg/CameraInfo',
    '/zed/zed_node/right/camera_info': 'sensor_msgs/msg/CameraInfo',
    '/zed/zed_node/depth/depth_registered': 'sensor_msgs/msg/Image',
    '/zed/zed_node/confidence/confidence_map': 'sensor_msgs/msg/Image',
    '/depth_node/disparity': 'sensor_msgs/msg/Image',
    '/depth_node/colorized': 'sensor_msgs/msg/Image',
    '/depth_node/inference_started': 'std_msgs/msg/Header',
    '/alignment_node/depth': 'sensor_msgs/msg/Image',
    '/alignment_node/camera_info': 'sensor_msgs/msg/CameraInfo',
    '/alignment_node/points': 'sensor_msgs/msg/PointCloud2',
    '/alignment_node/colored': 'sensor_msgs/msg/Image',
    '/alignment_node/uncertainty': 'sensor_msgs/msg/Image',
    '/diagnostics': 'diagnostic_msgs/msg/DiagnosticArray',
}


def _processes(watch):
    ours = ('composed_nodes', 'zed_node', 'depth_node', 'alignment_node', 'marigold_node')
    with watch.lock:
        names = [re.sub(r'-\d+$', '', name) for name in watch.started]
    return sorted(name for name in names if name in ours)


# ----------------------------------------------------------------- the sample graph
@launch_pytest.fixture
def sample_launch(overlay, watch, composed):
    """Launch the laptop command: the bundled sample, the stand-in network, default TF."""
    return _describe(watch, source='sample', backend='standin', composed=composed)


@pytest.mark.launch(fixture=sample_launch)
def test_sample_graph_publishes_clouds_and_matching_depth_and_info(watch, probe, composed):
    from diagnostic_msgs.msg import DiagnosticArray
    from graph_support import diag_until, diag_values
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2
    points = probe.subscribe(PointCloud2, '/alignment_node/points')
    depth = probe.subscribe(Image, '/alignment_node/depth')
    info = probe.subscribe(CameraInfo, '/alignment_node/camera_info')
    # An outside subscriber of an edge that is internal when composed: still published.
    disparity = probe.subscribe(Image, '/depth_node/disparity')
    diagnostics = probe.subscribe(DiagnosticArray, '/diagnostics', probe.qos('reliable', 50))
    watch.wait_for(lambda: len(points) >= 3 and _common_stamps(depth, info) and
                   _common_stamps(depth, disparity), TIMEOUT,
                   'three clouds and a depth image with its camera_info and disparity')
    assert _processes(watch) == PROCESSES[composed], watch.report()
    # The same topics and types in both modes, and the same nodes.
    topics = {name: types for name, types in probe.node.get_topic_names_and_types()
              if name in TOPICS}
    assert topics == {name: [kind] for name, kind in TOPICS.items()}, topics
    # Node names arrive by their own discovery (ros_discovery_info), which can lag the topics
    # (seen on Humble with Fast DDS): wait for them, then assert.
    ours = {('zed_node', '/zed'), ('depth_node', '/'), ('alignment_node', '/')}
    watch.wait_for(lambda: ours <= set(probe.node.get_node_names_and_namespaces()), 30,
                   'the three nodes in the ROS graph')
    nodes = set(probe.node.get_node_names_and_namespaces())
    assert ours <= nodes, nodes
    # The rate: every frame of the 10 fps sample gives a cloud (the stand-in takes 30 ms).
    diag_until(diagnostics, 'zed/zed_node', lambda v: float(v['rate_hz']) > 5.0, 30)
    # Against zed_node's newest rate, polled: both move together on a busy machine.
    align = diag_until(diagnostics, 'alignment_node', lambda v: float(v['output_rate_hz']) >
                       0.7 * float(diag_values(diagnostics, 'zed/zed_node')['rate_hz']), 30)
    assert align['input'] == ('in-process' if composed == 'true' else 'topics'), align
    # The disparity published for us is the one the cloud was computed from: its stamp.
    stamp = sorted(_common_stamps(depth, disparity))[-1]
    assert disparity.by_stamp(stamp).header.frame_id == 'zed_left_camera_optical_frame'
    cloud = points.msgs[-1]
    assert [(f.name, f.offset) for f in cloud.fields] == \
        [('x', 0), ('y', 4), ('z', 8), ('rgb', 12)] and cloud.point_step == 16
    assert cloud.header.frame_id == 'zed_left_camera_optical_frame'
    xyz = decode_cloud(cloud)
    finite = [v for v in xyz['z'].ravel().tolist() if v == v and v != float('inf')]
    assert finite and min(finite) > 0, 'the cloud has no finite points in front of the camera'
    stamp = sorted(_common_stamps(depth, info))[-1]
    d, i = depth.by_stamp(stamp), info.by_stamp(stamp)
    assert (d.width, d.height) == (i.width, i.height) and d.encoding == '32FC1'
    assert d.header.frame_id == i.header.frame_id == 'zed_left_camera_optical_frame'
    # tf2_ros is a C++ package this machine lacks: the launch says so in one line, goes on.
    if not _has_tf2_ros():
        told = [line for line in watch.launch_log if 'publish_tf: package tf2_ros is not '
                'installed' in line]
        assert len(told) == 1, watch.report()
    assert not _clean(watch.lines()), 'errors in a clean run:\n' + watch.report()
    # The default log level: our nodes say what runs (test_params_file... has log_level warn).
    assert [line for line in watch.lines() if '[INFO]' in line and 'depth_node' in line], \
        watch.report()


def _has_tf2_ros():
    try:
        from ament_index_python.packages import get_package_prefix
        get_package_prefix('tf2_ros')
        return True
    except Exception:  # noqa: B902
        return False


# ------------------------------------------- no backend, no model: the default model
@pytest.fixture
def hub_environment(tmp_path, monkeypatch):
    """Give this test a Hugging Face cache and a depth_ros cache of its own, the hub offline."""
    for name in ('hub', 'cache', 'engines'):
        (tmp_path / name).mkdir()
    monkeypatch.setenv('HF_HUB_CACHE', str(tmp_path / 'hub'))
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setenv('DEPTH_ROS_CACHE', str(tmp_path / 'cache'))
    monkeypatch.setenv('DEPTH_ROS_ENGINE_CACHE', str(tmp_path / 'engines'))
    return tmp_path


@launch_pytest.fixture
def default_model_launch(overlay, watch, hub_environment):
    from model_files import community_onnx, make_hub_cache
    pytest.importorskip('onnxruntime', reason='the default backend here is ONNX Runtime '
                        '(make test-humble-firstrun runs it with numpy 1.24.4)')
    make_hub_cache(str(hub_environment / 'hub'), community_onnx('tiny'))
    return _describe(watch, source='sample', publish_tf='false')


@pytest.mark.launch(fixture=default_model_launch)
def test_no_model_argument_runs_the_default_model_from_the_hub_cache(watch, probe):
    # The user's first command: no backend, no model. The hub is offline, its cache holds the
    # community file (a random-weight stand-in with its layout): prepared once, then clouds.
    from sensor_msgs.msg import PointCloud2
    points = probe.subscribe(PointCloud2, '/alignment_node/points')
    watch.wait_for(lambda: len(points) >= 3, TIMEOUT, 'three clouds from the default model')
    # depth_node's lines (composed:=true, the default: in the composed_nodes process).
    lines = [_plain(line) for line in watch.lines() if '[depth_node]' in line]
    warn = [line for line in lines if 'backend auto: ONNX Runtime on the CPU' in line]
    assert len(warn) == 1 and '[WARN]' in warn[0] and 'onnxruntime-gpu' in warn[0], \
        watch.report()
    # The library's lines while depth_node starts are depth_node's, not the process's.
    assert [line for line in watch.lines() if 'prepared ' in line and '[depth_node]' in line], \
        watch.report()
    info = [line for line in lines if 'depth model: backend onnxruntime (auto: ' in line]
    assert len(info) == 1 and '-518x294-default.onnx (Hugging Face cache, source sha256 ' in \
        info[0] and info[0].endswith('; input 518x294'), watch.report()
    assert not _clean(watch.lines()), 'errors in a clean run:\n' + watch.report()


# -------------------------------------------------- zed_node:=false next to the wrapper
@launch_pytest.fixture
def upstream_launch(overlay, watch):
    return _describe(watch, zed_node='false', backend='standin', publish_tf='false')


@pytest.mark.launch(fixture=upstream_launch)
def test_without_zed_node_the_graph_runs_on_the_wrappers_topic_names(watch, probe):
    import numpy as np
    from depth_ros.core.camera import PinholeCamera
    from depth_ros.ros import conversions as conv
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2
    base = '/zed/zed_node/'
    pubs = {k: probe.publisher(t, base + k) for k, t in (
        ('left/image_rect_color', Image), ('left/camera_info', CameraInfo),
        ('depth/depth_registered', Image), ('confidence/confidence_map', Image))}
    points = probe.subscribe(PointCloud2, '/alignment_node/points')
    depth_out = probe.subscribe(Image, '/alignment_node/depth')
    watch.wait_for(lambda: all(p.get_subscription_count() for p in pubs.values()), TIMEOUT,
                   'depth_node and alignment_node to subscribe to the wrapper topics')
    h, w = 72, 128
    camera = PinholeCamera(100.0, 100.0, 63.5, 35.5, w, h)
    yy, xx = np.mgrid[0:h, 0:w]
    metres = (2.0 + xx / float(w)).astype(np.float32)
    gray = np.clip(255 * (1.0 / metres - 0.3), 0, 255).astype(np.uint8)
    bgr = np.dstack([gray, gray, gray])
    sent = []

    def publish_one():
        stamp = 1800000000 * 10 ** 9 + len(sent) * 10 ** 8
        header = conv.make_header(stamp, 'zed_left_camera_optical_frame')
        pubs['depth/depth_registered'].publish(conv.numpy_to_image(metres, '32FC1', header))
        pubs['confidence/confidence_map'].publish(conv.numpy_to_image(
            np.full((h, w), 5.0, np.float32), '32FC1', header))
        pubs['left/camera_info'].publish(conv.camera_to_info(camera, header))
        pubs['left/image_rect_color'].publish(conv.numpy_to_image(bgr, 'bgr8', header))
        sent.append(stamp)
        return len(points) >= 2
    end = time.monotonic() + TIMEOUT
    while not publish_one() and time.monotonic() < end:
        broken = watch.failure()
        assert not broken, broken + '\n' + watch.report()
        time.sleep(0.1)
    assert len(points) >= 2, 'no clouds from the wrapper topics\n' + watch.report()
    assert set(points.stamps()) <= set(sent), 'outputs must carry the input stamps'
    got = depth_out.msgs[-1]
    assert (got.width, got.height, got.header.frame_id) == \
        (w, h, 'zed_left_camera_optical_frame')


# ------------------------------------------- params_file:=, reliability:=, camera_name:=
@launch_pytest.fixture
def configured_launch(overlay, watch, tmp_path, composed):
    from launch_support import ROOT
    with open(os.path.join(ROOT, 'config', 'zed_depth.yaml')) as f:
        text = f.read()
    # source and backend from the params file alone (the launch arguments' defaults, live
    # and auto, overrode them); reliability from the argument given, over the file's.
    for old, new in (('    cloud_stride: 2\n', '    cloud_stride: 4\n'),
                     ('    source: live ', '    source: sample '),
                     ('    backend: auto ', '    backend: standin ')):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    assert text.count('reliability: best_effort') == 3, text
    params = tmp_path / 'robot.yaml'
    params.write_text(text)
    return _describe(watch, publish_tf='false', camera_name='front', reliability='reliable',
                     params_file=str(params), composed=composed, log_level='warn')


@pytest.mark.launch(fixture=configured_launch)
def test_params_file_reliability_and_camera_name_are_applied(watch, probe, composed):
    from sensor_msgs.msg import Image, PointCloud2
    reliable = probe.qos('reliable', 5)
    points = probe.subscribe(PointCloud2, '/alignment_node/points', reliable)
    image = probe.subscribe(Image, '/front/zed_node/left/image_rect_color', reliable)
    watch.wait_for(lambda: len(points) >= 1 and len(image) >= 1, TIMEOUT,
                   'a cloud and a camera image over reliable QoS under camera_name front')
    cloud, img = points.msgs[-1], image.msgs[-1]
    assert cloud.header.frame_id == 'front_left_camera_optical_frame', cloud.header.frame_id
    # cloud_stride 4 from the params file: the cloud is a quarter of the image each way.
    assert (cloud.width, cloud.height) == (img.width // 4, img.height // 4), \
        ((cloud.width, cloud.height), (img.width, img.height))
    watch.wait_for(lambda: ('zed_node', '/front') in probe.node.get_node_names_and_namespaces(),
                   10, 'zed_node in the ROS graph (node names can lag the topics)')
    assert _processes(watch) == PROCESSES[composed], watch.report()
    # The parameter services `ros2 param` calls (test_colcon_workspace.py runs the command on
    # the default launch) reach each node of the process as a process of its own.
    assert _parameters(probe, '/alignment_node', ['cloud_stride']) == [4]
    assert _parameters(probe, '/front/zed_node', ['camera_name', 'source']) == ['front', 'sample']
    assert _set_parameter(probe, '/alignment_node', 'cloud_stride', 2) == (True, '')
    ok, reason = _set_parameter(probe, '/alignment_node', 'cloud_stride', 0)
    assert not ok and 'Parameter cloud_stride out of range' in reason, reason
    end = time.monotonic() + 20
    while time.monotonic() < end and (points.msgs[-1].width, points.msgs[-1].height) != \
            (img.width // 2, img.height // 2):
        time.sleep(0.1)
    assert (points.msgs[-1].width, points.msgs[-1].height) == (img.width // 2, img.height // 2)
    # log_level:=warn reached every node of ours: none said anything at INFO.
    assert not [line for line in watch.lines() if '[INFO]' in line], watch.report()


def _call(probe, node, service, srv_type, request):
    client = probe.node.create_client(srv_type, node + '/' + service)
    try:
        assert client.wait_for_service(timeout_sec=15.0), node + '/' + service
        future = client.call_async(request)
        end = time.monotonic() + 15
        while not future.done() and time.monotonic() < end:
            time.sleep(0.02)
        assert future.done(), 'no answer from ' + node + '/' + service
        return future.result()
    finally:
        probe.node.destroy_client(client)


def _parameters(probe, node, names):
    from rclpy.parameter import parameter_value_to_python
    from rcl_interfaces.srv import GetParameters
    answer = _call(probe, node, 'get_parameters', GetParameters, GetParameters.Request(
        names=names))
    return [parameter_value_to_python(v) for v in answer.values]


def _set_parameter(probe, node, name, value):
    from rclpy.parameter import Parameter
    from rcl_interfaces.srv import SetParameters
    answer = _call(probe, node, 'set_parameters', SetParameters, SetParameters.Request(
        parameters=[Parameter(name, value=value).to_parameter_msg()]))
    return answer.results[0].successful, answer.results[0].reason


# ---------------------------------------------------------------------- marigold:=true
@launch_pytest.fixture
def marigold_launch(overlay, watch, tmp_path):
    from launch_support import ROOT
    pytest.importorskip('diffusers', reason='marigold:=true needs diffusers (depth_ros[marigold])')
    with open(os.path.join(ROOT, 'config', 'zed_depth.yaml')) as f:
        text = f.read()
    params = tmp_path / 'marigold.yaml'
    params.write_text(text + textwrap.dedent('''
        /**/marigold_node:
          ros__parameters:
            checkpoint: tiny-random
            device: cpu
            keyframe_period_s: 1.0
        '''))
    return _describe(watch, source='sample', backend='standin', publish_tf='false',
                     marigold='true', params_file=str(params))


@pytest.mark.launch(fixture=marigold_launch)
def test_marigold_keyframes_are_aligned_by_the_second_instance(watch, probe):
    from sensor_msgs.msg import Image
    keyframes = probe.subscribe(Image, '/marigold_node/depth')
    aligned = probe.subscribe(Image, '/marigold/alignment_node/depth')

    # Each of our subscriptions is matched by its node in its own time (discovery): a keyframe
    # sent before marigold_node matched ours can still reach us aligned. So the aligned
    # keyframes from the first keyframe received on (a keyframe is sent before its alignment).
    def since_first():
        stamps = keyframes.stamps()
        return [s for s in aligned.stamps() if stamps and s >= min(stamps)]
    watch.wait_for(lambda: since_first(), 2 * TIMEOUT, 'a Marigold keyframe aligned to metres')
    wait_until(lambda: set(since_first()) <= set(keyframes.stamps()), 5)
    assert set(since_first()) <= set(keyframes.stamps()), \
        'the metric keyframe must carry the keyframe\'s (camera) stamp: {} not in {}'.format(
            since_first(), keyframes.stamps())
    assert aligned.msgs[-1].encoding == '32FC1'


# ------------------------------------------------ included under PushRosNamespace
@launch_pytest.fixture
def pushed_launch(overlay, watch, composed):
    """Include ours as a robot's launch file does: a GroupAction, PushRosNamespace('robot1')."""
    from launch.actions import GroupAction
    from launch_ros.actions import PushRosNamespace
    arguments = dict(source='sample', backend='standin', publish_tf='false', composed=composed,
                     log_level='debug')
    return LaunchDescription([ReadyToTest()] + watch.actions() + [GroupAction([
        PushRosNamespace('robot1'),
        IncludeLaunchDescription(PythonLaunchDescriptionSource(_launch_file()),
                                 launch_arguments=sorted(arguments.items()))])])


@pytest.mark.launch(fixture=pushed_launch)
def test_included_under_a_namespace_the_graph_runs_there(watch, probe, composed):
    # Absolute remaps (/depth_node/disparity, /zed/zed_node/...) left the nodes under /robot1
    # waiting on the root's topics (composed:=false); the composed sections' absolute
    # -r __ns:=/zed put zed_node at the root whatever was pushed; log_level:=debug named
    # loggers without the namespace (zed.zed_node, not robot1.zed.zed_node).
    from sensor_msgs.msg import PointCloud2
    points = probe.subscribe(PointCloud2, '/robot1/alignment_node/points')
    watch.wait_for(lambda: len(points) >= 2, TIMEOUT,
                   'two clouds on /robot1/alignment_node/points')
    ours = {('zed_node', '/robot1/zed'), ('depth_node', '/robot1'),
            ('alignment_node', '/robot1')}
    watch.wait_for(lambda: ours <= set(probe.node.get_node_names_and_namespaces()), 30,
                   'the three nodes under /robot1 in the ROS graph')
    # Nothing of ours at the root: every topic our nodes publish or read (but /diagnostics,
    # /rosout and /parameter_events, global by design) is under /robot1.
    shared = {'/diagnostics', '/rosout', '/parameter_events'}
    topics = set()
    for name, namespace in sorted(ours):
        for by_node in (probe.node.get_publisher_names_and_types_by_node,
                        probe.node.get_subscriber_names_and_types_by_node):
            topics |= {topic for topic, _ in by_node(name, namespace)}
    assert topics and not [t for t in topics - shared if not t.startswith('/robot1/')], \
        sorted(topics)
    assert {'/robot1/zed/zed_node/left/image_rect_color', '/robot1/depth_node/disparity',
            '/robot1/alignment_node/points'} <= topics, sorted(topics)
    # Frames follow camera_name alone.
    assert points.msgs[-1].header.frame_id == 'zed_left_camera_optical_frame'
    # log_level:=debug reaches the namespaced loggers (the library's line, through the node's).
    assert [line for line in watch.lines() if re.search(
        r'\[DEBUG\] \[[0-9.]+\] \[robot1\.zed\.zed_node\]: sample loaded', _plain(line))], \
        watch.report()
    assert _processes(watch) == PROCESSES[composed], watch.report()
    assert not _clean(watch.lines()), 'errors in a clean run:\n' + watch.report()


# ---------------------------------------------------------- bad arguments: one line

def _ros2_launch(*arguments, timeout=60):
    return run_bounded([tool('ros2'), 'launch', 'depth_ros', 'zed_depth.launch.py'] +
                       list(arguments), timeout)


@pytest.mark.parametrize('arguments, text', [
    (('source:=foo',), 'launch argument source:=foo must be one of live | svo | sample | '
                       'folder | bag'),
    (('source:=sample', 'backend:=foo'), 'launch argument backend:=foo must be one of'),
    (('source:=bag',), 'launch argument source:=bag needs path:=<rosbag2 folder>'),
    (('source:=bag', 'path:=/nonexistent/bag'), 'launch argument path:=/nonexistent/bag does '
                                                'not exist'),
    (('source:=sample', 'rviz:=maybe'), 'launch argument rviz:=maybe must be true or false'),
    # Names zed_depth.launch.py does not declare: launch ignored them, and the nodes ran.
    (('source:=sample', 'backend:=standin', 'publsh_tf:=false'),
     "launch argument publsh_tf:=false is not one of zed_depth.launch.py's: did you mean "
     "publish_tf:=?"),
    (('source:=sample', 'backend:=standin', 'cloud_stride:=4'),
     "launch argument cloud_stride:=4 is not one of zed_depth.launch.py's: `cloud_stride` is a "
     "parameter of alignment_node: set it in a parameters file given as params_file:="),
])
@pytest.mark.rmw_independent   # the launch ends before any node starts
def test_bad_arguments_end_the_launch_with_one_clear_line(overlay, arguments, text):
    done = _ros2_launch(*arguments)
    out = done.stdout.decode('utf-8', 'replace')
    errors = [line for line in out.splitlines() if 'ERROR' in line]
    assert done.returncode != 0 and len(errors) == 1 and text in errors[0], out
    assert 'Traceback' not in out and 'process started' not in out, out


@pytest.mark.rmw_independent   # the launch ends before any node starts
def test_rviz_without_rviz2_ends_the_launch_before_any_node_starts(overlay):
    # launch's "package 'rviz2' not found" came after our nodes had started, and the launch
    # exited leaving them running (orphans publishing on the graph).
    from ament_index_python.packages import get_package_prefix, PackageNotFoundError
    try:
        get_package_prefix('rviz2')
        pytest.skip('rviz2 is installed here')
    except PackageNotFoundError:
        pass
    done = _ros2_launch('source:=sample', 'backend:=standin', 'publish_tf:=false', 'rviz:=true')
    out = done.stdout.decode('utf-8', 'replace')
    errors = [line for line in out.splitlines() if 'ERROR' in line]
    assert done.returncode != 0 and len(errors) == 1 and \
        'launch argument rviz:=true needs the rviz2 package, which is not installed' in \
        errors[0], out
    assert 'process started' not in out, out


@pytest.mark.rmw_independent   # the launch ends before any node starts
def test_a_params_file_that_is_not_yaml_ends_the_launch_with_one_line(overlay, tmp_path):
    # Left to the nodes, the processes started, the first to read the file ended the launch
    # with its FATAL line and launch's "process has died" line, exit 0.
    path = tmp_path / 'robot.yaml'
    path.write_text('/**:\n  ros__parameters: {cloud_stride: [2\n')
    done = _ros2_launch('source:=sample', 'backend:=standin', 'publish_tf:=false',
                        'composed:=false', 'params_file:={}'.format(path))
    out = done.stdout.decode('utf-8', 'replace')
    errors = [line for line in out.splitlines() if 'ERROR' in line or 'FATAL' in line]
    assert done.returncode != 0 and len(errors) == 1 and \
        'launch argument params_file:={}: not valid YAML: '.format(path) in errors[0], out
    assert 'Traceback' not in out and 'process started' not in out, out


@pytest.mark.parametrize('composed, processes', [('false', 3), ('true', 1)])
@pytest.mark.rmw_independent   # the nodes are stopped before they join the graph
def test_ctrl_c_while_the_nodes_still_import_is_quiet(overlay, tmp_path, composed, processes):
    # SIGINT once every process has begun to import numpy (its extension is mapped): they
    # are still importing OpenCV, rclpy and the messages (a second here, longer on a Jetson).
    # Python's default handler made that a KeyboardInterrupt traceback in each, or an
    # ImportError inside an extension's import, exit 1. (Earlier, during the interpreter's
    # own start-up, no code of ours can take the signal.)
    def importing_numpy(pid):
        try:
            with open('/proc/{}/maps'.format(pid)) as f:
                return '_multiarray_umath' in f.read()
        except OSError:     # ended
            return True
    log = tmp_path / 'launch.log'
    # As from a shell: SIGINT at its default action when ros2 launch starts, whatever this
    # test process does with it (launch notices SIGINT through Python's own handler, which
    # Python does not install where the signal is inherited as ignored).
    default_sigint = 'import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); ' \
        'os.execv(sys.argv[1], sys.argv[1:])'
    with open(str(log), 'w') as out:
        proc = subprocess.Popen([sys.executable, '-c', default_sigint, tool('ros2'), 'launch',
                                 'depth_ros', 'zed_depth.launch.py', 'source:=sample',
                                 'backend:=standin', 'publish_tf:=false',
                                 'composed:=' + composed], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        end = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < end:
            pids = re.findall(r'process started with pid \[(\d+)\]', log.read_text())
            if len(pids) == processes and all(importing_numpy(p) for p in pids):
                break
            time.sleep(0.005)
        # A terminal's Ctrl-C: SIGINT to the whole foreground group, launch and nodes alike
        # (once: two to ros2 launch in quick succession can leave Humble's launch waiting
        # forever, docs/ros.md); not gone within 30 s, the group is killed and the test fails.
        os.killpg(proc.pid, signal.SIGINT)
        code = end_process(proc, 30, 'ros2 launch, waiting for its exit after one SIGINT to '
                           'its process group (Ctrl-C)', lambda: log.read_text(errors='replace'),
                           group=True)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    text = log.read_text()
    assert text.count('process started') == processes, text
    assert code == 0 and 'Traceback' not in text and 'Error' not in text, text
    assert text.count('process has finished cleanly') == processes, text


# ------------------------------------------- how ros2 launch ends: its exit code, the nodes
# One of our processes that exits non-zero ends the launch with one line naming it and its
# code, and ``ros2 launch`` exits 1 (it exited 0: a service manager, a container health check
# or a CI script could not tell a failure from a stop).

def _launch_errors(out):
    return [line for line in out.splitlines() if '[ERROR] [launch]' in line]


def _failed(label, code):
    return ('[ERROR] [launch]: Caught exception in launch (see debug for traceback): {} exited '
            'with code {}: the launch stops, and exits 1'.format(label, code))


COMPOSED = 'composed_nodes (zed/zed_node, depth_node, alignment_node)'


def test_a_node_that_fails_at_start_up_ends_the_launch_with_exit_1_and_one_line(
        overlay, tmp_path, composed):
    # engine:= names an engine in the configured cache: the backend is tensorrt, and without
    # TensorRT depth_node ends at start-up with one FATAL line that names the model.
    (tmp_path / 'da2_vits_fp16.engine').write_bytes(b'not an engine')
    done = _ros2_launch('source:=sample', 'engine:=da2_vits_fp16.engine',
                        'engine_cache_dir:={}'.format(tmp_path), 'publish_tf:=false',
                        'composed:=' + composed, timeout=60)
    out = _plain(done.stdout.decode('utf-8', 'replace'))
    fatal = [line for line in out.splitlines() if 'FATAL' in line]
    assert len(fatal) == 1 and "cannot load tensorrt model 'da2_vits_fp16.engine'" in \
        fatal[0] and '[depth_node]' in fatal[0], out
    assert 'outside the engine cache' not in fatal[0], fatal[0]
    assert 'Traceback' not in out, out
    process, label = ('composed_nodes', COMPOSED) if composed == 'true' else \
        ('depth_node', 'depth_node')
    assert re.search(r'\[{}-\d+\]: process has died \[pid \d+, exit code 1,'.format(process),
                     out), out
    assert _launch_errors(out) == [_failed(label, 1)], out
    assert done.returncode == 1, (done.returncode, out)
    # The others are stopped as on Ctrl-C, quietly.
    finished = re.findall(r'\[(\w+)-\d+\]: process has finished cleanly', out)
    assert sorted(finished) == ([] if composed == 'true' else ['alignment_node', 'zed_node']), \
        out


@pytest.mark.rmw_independent   # zed_node gives up on its source: no topic is needed
def test_a_node_that_gives_up_mid_run_ends_the_launch_with_exit_1_and_one_line(
        overlay, tmp_path):
    from launch_support import ROOT
    with open(os.path.join(ROOT, 'config', 'zed_depth.yaml')) as f:
        text = f.read()
    params = tmp_path / 'dying.yaml'
    # The replay source's simulated outage: after 10 frames the camera is gone for 30 s, and
    # zed_node gives up after its first retry (max_retries 1): one FATAL line, mid-run, and
    # the composed process (every node in it) exits 1.
    params.write_text(text + textwrap.dedent('''
        /**/zed_node:
          ros__parameters:
            drop_after: 10
            outage_s: 30.0
            max_retries: 1
            retry_initial_s: 0.1
        '''))
    done = _ros2_launch('source:=sample', 'backend:=standin', 'publish_tf:=false',
                        'params_file:={}'.format(params), timeout=60)
    out = _plain(done.stdout.decode('utf-8', 'replace'))
    fatal = [line for line in out.splitlines() if 'FATAL' in line]
    assert len(fatal) == 1 and '[zed.zed_node]' in fatal[0] and \
        'failed 2 times in a row (max_retries)' in fatal[0], out
    assert 'Traceback' not in out, out
    assert _launch_errors(out) == [_failed(COMPOSED, 1)], out
    assert done.returncode == 1, (done.returncode, out)


def _drive(tmp_path, action, *arguments, until=None):
    """
    Run ros2 launch under launch_driver.py; return (its report, the launch's output).

    The action comes 2 s after depth_node names its model, or with ``until`` once the output
    has that text (at most 30 s from the start).
    """
    import json
    log = tmp_path / 'launch.log'
    driver = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'launch_driver.py')
    # The driver bounds each of its waits (at most 30 + 2 + 30 + 15 s: a run takes 4 s here)
    # and kills the launch's group on its way out, whatever happened.
    options = ['--until', until] if until else []
    done = run_bounded([sys.executable, driver, action, str(log)] + options +
                       ['--', tool('ros2'), 'launch', 'depth_ros', 'zed_depth.launch.py',
                        'source:=sample', 'backend:=standin', 'publish_tf:=false'] +
                       list(arguments), 100)
    out = _plain(log.read_text(errors='replace'))
    assert done.returncode == 0, done.stdout.decode('utf-8', 'replace') + out
    return json.loads(done.stdout.decode().strip().splitlines()[-1]), out


@pytest.mark.rmw_independent   # how processes end, not what they publish
def test_a_node_killed_mid_run_ends_the_launch_with_exit_1_and_the_others_stop_cleanly(
        tmp_path, overlay):
    report, out = _drive(tmp_path, 'kill:zed_node', 'composed:=false')
    assert _launch_errors(out) == [
        '[ERROR] [launch]: Caught exception in launch (see debug for traceback): zed/zed_node '
        'was killed by SIGKILL (exit code -9): the launch stops, and exits 1'], out
    assert report['launch'] == 1, (report, out)
    assert sorted(p['name'] for p in report['processes']) == \
        ['alignment_node', 'depth_node', 'zed_node'], (report, out)
    assert all(p['orphan'] is None for p in report['processes']), (report, out)
    finished = re.findall(r'\[(\w+)-\d+\]: process has finished cleanly', out)
    assert sorted(finished) == ['alignment_node', 'depth_node'], out
    assert 'Traceback' not in out and '[FATAL]' not in out, out


LOGGER = re.compile(r'\[(DEBUG|INFO|WARN|ERROR|FATAL)\] \[[0-9.]+\] \[([^\]]+)\]')
OUR_LOGGERS = ('zed.zed_node', 'depth_node', 'alignment_node', 'composed_nodes')


@pytest.mark.parametrize('composed', ['true', 'false'], ids=['composed', 'separate'])
@pytest.mark.rmw_independent   # which loggers print, not what the nodes publish
def test_log_level_debug_is_our_nodes_debug_not_rcls(tmp_path, overlay, composed):
    # log_level:=debug once gave the process's default level: rcl's and the RMW's debug
    # lines (973 in the first 14 s) and none of ours. Now our nodes' loggers alone, and the
    # library's debug records reach them.
    # The stop comes once metric depth flows: under load the separate processes' discovery
    # once took more than the 2 s the driver gives by default (a CI run: 10 frames dropped for
    # want of stereo, which had not matched yet).
    report, out = _drive(tmp_path, 'int', 'composed:=' + composed, 'log_level:=debug',
                         until='first metric depth')
    assert report['launch'] == 0, (report, out)
    debug = [m.group(2) for m in LOGGER.finditer(out) if m.group(1) == 'DEBUG']
    theirs = sorted(set(name for name in debug if name.split('.')[0] not in
                        ('zed', 'depth_node', 'alignment_node', 'composed_nodes')))
    assert not theirs, 'debug lines of loggers not ours: {}\n{}'.format(theirs, out)
    # zed_node's source (library code, Python logging) says at debug how long the sample
    # took, through the node's logger.
    assert re.search(r'\[DEBUG\] \[[0-9.]+\] \[zed\.zed_node\]: sample loaded, SGBM depth in '
                     r'\d+ ms', out), out
    # info lines still come, ours included (what runs), and once each that frames and
    # metric depth flow.
    assert '[INFO]' in out and 'depth model:' in out, out
    assert re.search(r'\[INFO\] \[[0-9.]+\] \[zed\.zed_node\]: first frame from source '
                     r'replay\(sample\): 741x500, image, depth, confidence on /zed/zed_node/',
                     out), out
    assert re.search(r'\[INFO\] \[[0-9.]+\] \[alignment_node\]: first metric depth: '
                     r'741x500, fit ok, \d+ % of the pixels from stereo', out), out
    assert out.count('first frame from source') == 1 and out.count('first metric depth') == 1


@pytest.mark.parametrize('action, composed, launch_code', [
    # A terminal's Ctrl-C (SIGINT to the process group): launch stops the nodes, exit 0.
    ('int', 'true', 0),
    # SIGINT to ros2 launch alone (docker stop with STOPSIGNAL SIGINT, systemd's
    # KillSignal=SIGINT): the same stop, from launch.
    ('int:launch', 'false', 0),
    # SIGTERM (docker stop, kill, systemd's KillMode=mixed) or SIGKILL to ros2 launch alone:
    # launch installs no Python handler for SIGTERM, so it dies at once (exit -15, the
    # shell's 143), as with SIGKILL, and stops nothing. Each of our processes asked the
    # kernel for SIGTERM at its parent's death (depth_ros/ros/entry.py): they stop cleanly,
    # exit 0, where they ran on as orphans before.
    ('term', 'false', -int(signal.SIGTERM)),
    ('kill', 'true', -int(signal.SIGKILL)),
], ids=['ctrl-c', 'sigint-to-launch', 'sigterm-to-launch', 'sigkill-to-launch'])
@pytest.mark.rmw_independent   # how processes end, not what they publish
def test_stopping_the_launch_stops_every_node_cleanly(tmp_path, overlay, action, composed,
                                                      launch_code):
    report, out = _drive(tmp_path, action, 'composed:=' + composed)
    assert report['launch'] == launch_code, (report, out)
    names = sorted(p['name'] for p in report['processes'])
    assert names == (['composed_nodes'] if composed == 'true' else
                     ['alignment_node', 'depth_node', 'zed_node']), (report, out)
    if action.startswith('int'):
        # Launch stopped and reaped them; nothing alarming (their exits during the stop
        # are not failures).
        assert all(p['orphan'] is None for p in report['processes']), (report, out)
        assert sorted(re.findall(r'\[(\w+)-\d+\]: process has finished cleanly', out)) == \
            names, out
        assert not [line for line in out.splitlines() if '[ERROR]' in line or
                    'Traceback' in line], out
        # Nor the teardown watchdog's stacks (runtime.watch_teardown): a stop within bounds.
        assert 'Timeout (' not in out, out
    else:
        # Orphans, reaped by the driver: each ended by its own clean exit.
        assert [p['orphan']['exit'] for p in report['processes']
                if 'exit' in p['orphan']] == [0] * len(names), (report, out)

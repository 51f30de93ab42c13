"""
launch/zed_depth.launch.py: a real launch_pytest test, plus a wiring check that runs anywhere.

``test_launch_sample_standin_publishes_cloud`` starts the launch file (source:=sample,
backend:=standin) with launch_pytest and waits for the metric cloud. launch, launch_ros and
launch_pytest come with a ROS 2 install (``colcon test``); where they are missing the test
skips and says so.

``test_launch_wiring_matches_the_nodes`` evaluates the launch file's node list with minimal
stand-ins for the launch classes (they only record their keyword arguments) and checks that
every remapping points at a topic the upstream node publishes and every parameter the launch
file sets is one the node declares.
"""
import importlib.util
import math
import os
import sys
import time
import types

from conftest import ROOT
import pytest
import yaml

LAUNCH_FILE = os.path.join(ROOT, 'launch', 'zed_depth.launch.py')


def _launch_file_path():
    try:
        from ament_index_python.packages import get_package_share_directory
        path = os.path.join(get_package_share_directory('depth_ros'), 'launch',
                            'zed_depth.launch.py')
        if os.path.exists(path):
            return path
    except Exception:  # not installed in a workspace: use the source tree
        pass
    return LAUNCH_FILE


try:
    import launch_pytest
except ImportError:
    launch_pytest = None

if launch_pytest is not None:
    from launch import LaunchDescription
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource
    from launch_pytest.actions import ReadyToTest

    @launch_pytest.fixture
    def zed_depth_launch():
        """Launch the product launch file on the bundled sample with the stand-in backend."""
        return LaunchDescription([
            IncludeLaunchDescription(
                PythonLaunchDescriptionSource(_launch_file_path()),
                launch_arguments={'source': 'sample', 'backend': 'standin',
                                  'rviz': 'false'}.items()),
            ReadyToTest(),
        ])

    @pytest.mark.graph
    @pytest.mark.launch(fixture=zed_depth_launch)
    def test_launch_sample_standin_publishes_cloud():
        import rclpy
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import PointCloud2
        rclpy.init()
        node = rclpy.create_node('zed_depth_launch_test')
        clouds = []
        node.create_subscription(PointCloud2, '/alignment_node/points', clouds.append,
                                 qos_profile_sensor_data)
        try:
            end = time.monotonic() + 90.0
            while not clouds and time.monotonic() < end:
                rclpy.spin_once(node, timeout_sec=0.2)
        finally:
            node.destroy_node()
            rclpy.shutdown()
        assert clouds, 'no cloud on /alignment_node/points within 90 s'
        cloud = clouds[0]
        assert [(f.name, f.offset) for f in cloud.fields] == \
            [('x', 0), ('y', 4), ('z', 8), ('rgb', 12)] and cloud.point_step == 16
        assert cloud.header.frame_id == 'zed_left_camera_optical_frame'
else:
    def test_launch_sample_standin_publishes_cloud():
        pytest.importorskip('launch_pytest', reason='launch_pytest is not installed (it comes '
                            'with a ROS 2 install; `colcon test` runs this test there)')


class _Recorder(object):
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


class _Env(_Recorder):
    pass


class _Config(object):
    values = {}

    def __init__(self, name):
        self.name = name

    def perform(self, context):
        return self.values[self.name]


def _evaluate(monkeypatch, **overrides):
    """Run the launch file's node-building function with recording stand-ins."""
    fake = {
        'launch': types.ModuleType('launch'),
        'launch.actions': types.ModuleType('launch.actions'),
        'launch.substitutions': types.ModuleType('launch.substitutions'),
        'launch_ros': types.ModuleType('launch_ros'),
        'launch_ros.actions': types.ModuleType('launch_ros.actions'),
        'ament_index_python': types.ModuleType('ament_index_python'),
        'ament_index_python.packages': types.ModuleType('ament_index_python.packages'),
    }
    fake['launch'].LaunchDescription = _Recorder
    fake['launch.actions'].DeclareLaunchArgument = _Recorder
    fake['launch.actions'].OpaqueFunction = _Recorder
    fake['launch.actions'].SetEnvironmentVariable = _Env
    fake['launch.substitutions'].LaunchConfiguration = _Config
    fake['launch_ros.actions'].Node = _Recorder
    fake['ament_index_python.packages'].get_package_share_directory = lambda pkg: '/share/' + pkg
    for name, module in fake.items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location('zed_depth_launch', LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module.os.path, 'exists', lambda path: True)
    monkeypatch.delenv('FASTDDS_DEFAULT_PROFILES_FILE', raising=False)
    monkeypatch.delenv('FASTRTPS_DEFAULT_PROFILES_FILE', raising=False)
    description = module.generate_launch_description()
    declared = {a.args[0]: a.kwargs['default_value'] for a in description.args[0]
                if isinstance(a, _Recorder) and a.args}
    values = dict(declared)
    values.update(overrides)
    monkeypatch.setattr(_Config, 'values', values)
    actions = module._nodes(None)
    env = [a for a in actions if isinstance(a, _Env)]
    return declared, [a for a in actions if not isinstance(a, _Env)], env


def _params(node):
    merged = {}
    for entry in node.kwargs.get('parameters', []):
        if isinstance(entry, dict):
            merged.update(entry)
    return merged


def test_launch_wiring_matches_the_nodes(monkeypatch):
    from depth_ros.ros import alignment_node, depth_node, marigold_node, zed_node
    declared, nodes, env = _evaluate(monkeypatch, source='sample', backend='standin',
                                     marigold='true', rviz='true')
    assert [e.args for e in env] == [
        ('FASTRTPS_DEFAULT_PROFILES_FILE', '/share/depth_ros/config/fastdds_large_messages.xml'),
        ('FASTDDS_DEFAULT_PROFILES_FILE', '/share/depth_ros/config/fastdds_large_messages.xml')]
    assert {'source', 'path', 'backend', 'model', 'rviz', 'marigold', 'publish_tf'} <= \
        set(declared), 'received launch arguments {}'.format(sorted(declared))
    by_exe = {}
    for n in nodes:
        by_exe.setdefault(n.kwargs['executable'], []).append(n)
    assert sorted(by_exe) == ['alignment_node', 'depth_node', 'marigold_node', 'rviz2',
                              'static_transform_publisher', 'zed_node'], sorted(by_exe)
    zed = by_exe['zed_node'][0]
    assert (zed.kwargs['namespace'], zed.kwargs['name']) == ('zed', 'zed_node')
    prefix = '/zed/zed_node/'
    zed_topics = {prefix + t for t in ('left/image_rect_color', 'left/camera_info',
                                       'depth/depth_registered', 'confidence/confidence_map')}
    published = zed_topics | {'/depth_node/disparity', '/marigold_node/depth'}
    declared_params = {'zed_node': zed_node.PARAMS, 'depth_node': depth_node.PARAMS,
                       'alignment_node': alignment_node.PARAMS,
                       'marigold_node': marigold_node.PARAMS}
    for exe, instances in by_exe.items():
        for n in instances:
            assert '/share/depth_ros/config/zed_depth.yaml' in n.kwargs.get(
                'parameters', ['/share/depth_ros/config/zed_depth.yaml']) or exe in (
                'rviz2', 'static_transform_publisher'), exe
            for src, dst in n.kwargs.get('remappings', []):
                assert dst in published, '{} remaps {} to {}, which nobody publishes'.format(
                    exe, src, dst)
            if exe in declared_params:
                names = {p.name for p in declared_params[exe]}
                unknown = set(_params(n)) - names
                assert not unknown, '{} gets undeclared parameters {}'.format(exe, unknown)
    assert _params(by_exe['depth_node'][0])['backend'] == 'standin'
    assert _params(by_exe['zed_node'][0])['source'] == 'sample'
    assert 'path' not in _params(by_exe['zed_node'][0]), 'empty path must not be passed'
    # docs/marigold.md: marigold_node on the camera image, and a second alignment_node in
    # namespace marigold that takes its keyframes as relative depth, with the stereo inputs
    # of the first, pairing by age (keyframes come seconds late) and without the colour
    # image in the waiting sets (memory, docs/ros.md).
    assert by_exe['marigold_node'][0].kwargs['remappings'] == [
        ('image', prefix + 'left/image_rect_color')]
    marigold = [n for n in by_exe['alignment_node'] if n.kwargs.get('namespace') == 'marigold']
    assert len(marigold) == 1 and marigold[0].kwargs['name'] == 'alignment_node'
    params = _params(marigold[0])
    assert (params['relative_kind'], params['pairing_window_s'], params['use_image']) == \
        ('depth', 10.0, False), params
    assert 'buffer_size' not in params, 'keyframes pair by age, not by a count: {}'.format(params)
    with open(os.path.join(ROOT, 'config', 'zed_depth.yaml')) as f:
        yaml_align = yaml.safe_load(f)['/**/alignment_node']['ros__parameters']
    assert yaml_align['pairing_window_s'] == 0.0 and yaml_align['pairing_max_mb'] > 0, \
        'the camera-rate instance pairs by count under a memory cap; received {}'.format(
            yaml_align)
    first = [n for n in by_exe['alignment_node'] if not n.kwargs.get('namespace')]
    expected = dict(first[0].kwargs['remappings'])
    assert expected['disparity'] == '/depth_node/disparity'
    expected['disparity'] = '/marigold_node/depth'
    assert dict(marigold[0].kwargs['remappings']) == expected, \
        'expected {}, received {}'.format(expected, marigold[0].kwargs['remappings'])
    assert set(expected) == {'disparity', 'depth_registered', 'confidence', 'camera_info',
                             'image'}
    assert _tf_chain(by_exe['static_transform_publisher']) == [
        ('zed_camera_link', 'zed_left_camera_frame', [0.0, 0.06, 0.0], [0.0, 0.0, 0.0]),
        ('zed_left_camera_frame', 'zed_left_camera_optical_frame', [0.0, 0.0, 0.0],
         [-math.pi / 2, 0.0, -math.pi / 2])], 'received {}'.format(
            _tf_chain(by_exe['static_transform_publisher']))
    rviz = by_exe['rviz2'][0].kwargs['arguments']
    assert rviz == ['-d', '/share/depth_ros/rviz/zed_depth.rviz']


def _tf_chain(publishers):
    # (parent, child, xyz, rpy) of each static_transform_publisher, in launch order.
    chain = []
    for node in publishers:
        a = node.kwargs['arguments']

        def value(flag):
            return float(a[a.index(flag) + 1])
        chain.append((a[a.index('--frame-id') + 1], a[a.index('--child-frame-id') + 1],
                      [value('--x'), value('--y'), value('--z')],
                      [value('--roll'), value('--pitch'), value('--yaw')]))
    return chain


def test_launch_defaults_and_switches(monkeypatch):
    _, nodes, _ = _evaluate(monkeypatch)
    exes = sorted(n.kwargs['executable'] for n in nodes)
    assert exes == ['alignment_node', 'depth_node', 'static_transform_publisher',
                    'static_transform_publisher', 'zed_node'], exes
    _, nodes, _ = _evaluate(monkeypatch, camera_name='front')
    frames = [(p, c) for p, c, _, _ in _tf_chain(
        [n for n in nodes if n.kwargs['executable'] == 'static_transform_publisher'])]
    assert frames == [('front_camera_link', 'front_left_camera_frame'),
                      ('front_left_camera_frame', 'front_left_camera_optical_frame')], frames
    _, nodes, env = _evaluate(monkeypatch, zed_node='false', publish_tf='false',
                              fastdds_profile='false')
    exes = sorted(n.kwargs['executable'] for n in nodes)
    assert exes == ['alignment_node', 'depth_node'] and env == [], (exes, env)
    with pytest.raises(ValueError, match="expected true or false, got 'maybe'"):
        _evaluate(monkeypatch, rviz='maybe')


def test_engine_argument_selects_tensorrt_and_the_cache(monkeypatch):
    def depth_params(**overrides):
        _, nodes, _ = _evaluate(monkeypatch, **overrides)
        return _params([n for n in nodes if n.kwargs['executable'] == 'depth_node'][0])
    params = depth_params(engine='da2_vits_fp16.engine')
    assert (params['backend'], params['model_path']) == ('tensorrt', 'da2_vits_fp16.engine'), \
        params
    assert 'engine_cache_dir' not in params, 'an empty cache dir must be left to the yaml'
    params = depth_params(backend='tensorrt', engine='/c/e.engine', engine_cache_dir='/c')
    assert (params['backend'], params['model_path'], params['engine_cache_dir']) == \
        ('tensorrt', '/c/e.engine', '/c'), params
    params = depth_params(backend='tensorrt', model='/c/e.engine')
    assert (params['backend'], params['model_path']) == ('tensorrt', '/c/e.engine'), params
    with pytest.raises(ValueError, match='engine:= needs backend tensorrt, got backend:=torch'):
        depth_params(backend='torch', engine='e.engine')
    with pytest.raises(ValueError, match='give either model:= or engine:=, got model:=m.onnx'):
        depth_params(model='m.onnx', engine='e.engine')


def test_rviz_config_uses_best_effort_and_graph_topics():
    import yaml
    with open(os.path.join(ROOT, 'rviz', 'zed_depth.rviz')) as f:
        config = yaml.safe_load(f)
    displays = {d['Name']: d for d in config['Visualization Manager']['Displays']}
    cloud = displays['Metric cloud']
    assert cloud['Topic']['Value'] == '/alignment_node/points' and \
        cloud['Color Transformer'] == 'RGB8'
    topics = {d['Topic']['Value']: d['Topic']['Reliability Policy']
              for d in displays.values() if 'Topic' in d}
    assert topics == {'/alignment_node/points': 'Best Effort',
                      '/alignment_node/depth': 'Best Effort',
                      '/alignment_node/colored': 'Best Effort',
                      '/zed/zed_node/left/image_rect_color': 'Best Effort'}, topics

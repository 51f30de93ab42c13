"""
launch/zed_depth.launch.py, evaluated with the real launch library (no process started).

The launch file's node-building function runs in a real ``LaunchContext`` with the declared
defaults plus each test's overrides; every launch_ros ``Node`` it returns has its substitutions
performed, exactly as ``ros2 launch`` does before starting a process, and the tests read the
result: executables, names, namespaces, remappings and the parameter files the nodes get.
test_launch_graph.py runs the same file for real.

With ``composed:=true`` (the default) our nodes are ``--node`` sections of one composed_nodes
process; :class:`Evaluated` reads each section as the node it makes (:class:`InProcess`), so
the same assertions hold in both modes, and the tests that matter run in both.
"""
import importlib.util
import math
import os
import sys

from launch_support import LAUNCH_STACK, MISSING, ROOT
import pytest
import yaml

needs_launch = pytest.mark.skipif(not LAUNCH_STACK, reason=MISSING or 'launch stack present')

LAUNCH_FILE = os.path.join(ROOT, 'launch', 'zed_depth.launch.py')
# The source tree has the installed share's layout (config/, rviz/, launch/).
SHARE = ROOT
PARAMS_FILE = os.path.join(ROOT, 'config', 'zed_depth.yaml')


def _console_scripts():
    import re
    with open(os.path.join(ROOT, 'setup.py')) as f:
        text = f.read()
    return set(re.findall(r"'([a-z_-]+) = depth_ros\.", text))


MODES = pytest.mark.parametrize('composed', ['true', 'false'])


class InProcess(object):
    """
    A node that a composed_nodes process makes: one ``--node`` section of its arguments.

    Read with the composed executable's own parser; its attributes are those of a launch_ros
    Node that the tests read (name, namespace, remappings, parameter files).
    """

    def __init__(self, section):
        self.node_package = 'depth_ros'
        self.node_executable = section.kind
        self.source = section.source
        args = section.ros_args
        assert args[0] == '--ros-args' and args[-1] == '--', args
        rules = [args[i + 1] for i, a in enumerate(args) if a == '-r']
        self.files = [args[i + 1] for i, a in enumerate(args) if a == '--params-file']
        assert len(rules) + len(self.files) == (len(args) - 2) // 2, \
            'only -r and --params-file expected: {}'.format(args)
        remaps = [tuple(r.split(':=', 1)) for r in rules]
        special = dict(r for r in remaps if r[0].startswith('__'))
        self.expanded_remapping_rules = [r for r in remaps if not r[0].startswith('__')]
        self.expanded_node_namespace = special.get('__ns', '/')
        self.node_name = self.expanded_node_namespace.rstrip('/') + '/' + special['__node']


class Evaluated(object):
    """What the launch file asks launch to do for one set of arguments."""

    def __init__(self, actions, context, namespace=None):
        from depth_ros.ros.composed import parse
        from launch.actions import LogInfo, SetEnvironmentVariable
        from launch.utilities import perform_substitutions
        from launch_ros.actions import Node
        self.nodes, self.env, self.log, self.processes = [], [], [], []
        for action in actions:
            if isinstance(action, Node):
                action._perform_substitutions(context)   # what Node.execute does first
                self.processes.append(action)
                if action.node_executable != 'composed_nodes':
                    self.nodes.append(action)
                    continue
                arguments = [perform_substitutions(context, a) for a in action.cmd[1:]]
                glob, sections = parse(arguments)
                # launch_ros ends the command with an empty --ros-args block; the loggers'
                # levels (log_level:=) are the only global ROS arguments.
                self.glob = [a for a in glob if a not in ('--ros-args', '--')]
                if namespace:   # launch_ros's own, for the process under PushRosNamespace
                    pushed = ['-r', '__ns:=' + namespace]
                    assert self.glob[-2:] == pushed, (self.glob, pushed)
                    self.glob = self.glob[:-2]
                assert self.glob[::2] == ['--log-level'] * (len(self.glob) // 2) and \
                    len(self.glob) % 2 == 0, \
                    'composed_nodes gets no global ROS arguments but log levels: {}'.format(glob)
                self.nodes += [InProcess(section) for section in sections]
            elif isinstance(action, SetEnvironmentVariable):
                self.env.append((perform_substitutions(context, action.name),
                                 perform_substitutions(context, action.value)))
            elif isinstance(action, LogInfo):
                self.log.append(perform_substitutions(context, action.msg))

    def by_exe(self, exe):
        return [n for n in self.nodes if n.node_executable == exe]

    @staticmethod
    def params(node):
        """Merge the parameters of the node's params files (the YAML launch_ros writes)."""
        merged, files = {}, []
        expanded = [(f, True) for f in node.files] if isinstance(node, InProcess) else \
            node._Node__expanded_parameter_arguments or []
        for value, is_file in expanded:
            assert is_file, 'parameters are passed as files, got {!r}'.format(value)
            files.append(value)
            if value == PARAMS_FILE:
                continue      # the shipped config/zed_depth.yaml (checked separately)
            with open(value) as f:
                data = yaml.safe_load(f)
            for key, section in data.items():
                assert key in ('/**', node.node_name), \
                    '{} gets a parameters section for {}'.format(node.node_name, key)
                merged.update(section['ros__parameters'])
        return merged, files

    @staticmethod
    def remaps(node):
        return dict(node.expanded_remapping_rules or [])


def _evaluate(monkeypatch, tf2_ros=False, undeclared=None, command_line=None, shm_result=None,
              ran=None, namespace=None, **overrides):
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument
    spec = importlib.util.spec_from_file_location('zed_depth_launch', LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ran = [] if ran is None else ran
    monkeypatch.setattr(module, 'get_package_share_directory', lambda pkg: SHARE)
    monkeypatch.setattr(module, '_installed', lambda pkg: tf2_ros)
    if shm_result is None:   # `fastdds shm clean` found nothing to remove
        shm_result = module.middleware.ShmClean(0, 'fastdds shm clean: nothing to remove')
    monkeypatch.setattr(module.middleware, 'clean_shm',
                        lambda timeout=10.0: ran.append(timeout) or shm_result)
    for var in ('FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE',
                'CYCLONEDDS_URI'):
        monkeypatch.delenv(var, raising=False)
    description = module.generate_launch_description()
    declared = {a.name: a for a in description.entities if isinstance(a, DeclareLaunchArgument)}
    # command_line: the words after `ros2 launch` (its argv; the name:=value ones are the
    # context's argv). Left out, this file was included by another (sys.argv is pytest's).
    if command_line is not None:
        monkeypatch.setattr(sys, 'argv', ['/opt/ros/humble/bin/ros2', 'launch'] + command_line)
    context = LaunchContext(argv=[a for a in command_line or () if ':=' in a])
    if namespace is not None:   # included under PushRosNamespace(namespace), as launch_ros does
        from launch_ros.actions import PushRosNamespace
        PushRosNamespace(namespace).execute(context)
        pushed = context.launch_configurations['ros_namespace']
        # What launch_ros's Node.execute gives the `-r __ns:=` its command line ends with.
        context.extend_locals({'ros_specific_arguments': {'ns': '__ns:=' + pushed}})
    # As ros2 launch runs it: the arguments given are set first, then the launch file notes
    # them (_note_given), then the declarations set the defaults of the others.
    context.launch_configurations.update(
        {name: value for name, value in overrides.items() if name in declared})
    module._note_given(context)
    for name, action in declared.items():
        default = ''.join(s.perform(context) for s in action.default_value)
        context.launch_configurations[name] = overrides.pop(name, default)
    assert not overrides, 'not launch arguments: {}'.format(sorted(overrides))
    # name:=value pairs the file does not declare (ros2 launch takes them all).
    context.launch_configurations.update(undeclared or {})
    return declared, Evaluated(module._nodes(context), context,
                               namespace and context.launch_configurations['ros_namespace'])


@needs_launch
@MODES
def test_every_node_action_starts_a_console_script_with_its_declared_parameters(
        monkeypatch, composed):
    from depth_ros.nodes_core import config
    declared, ev = _evaluate(monkeypatch, composed=composed,
                             source='sample', backend='standin', marigold='true',
                             rviz='true', tf2_ros=True)
    assert {'source', 'path', 'backend', 'model', 'engine', 'rviz', 'marigold', 'publish_tf',
            'camera_name', 'reliability', 'params_file', 'zed_node'} <= set(declared), \
        'received launch arguments {}'.format(sorted(declared))
    exes = sorted(n.node_executable for n in ev.nodes)
    assert exes == ['alignment_node', 'alignment_node', 'depth_node', 'marigold_node', 'rviz2',
                    'static_transform_publisher', 'static_transform_publisher', 'zed_node'], \
        exes
    scripts = _console_scripts()
    specs = {'zed_node': config.ZED_PARAMS, 'depth_node': config.DEPTH_PARAMS,
             'alignment_node': config.ALIGNMENT_PARAMS, 'marigold_node': config.MARIGOLD_PARAMS}
    for node in ev.nodes:
        if node.node_package != 'depth_ros':
            continue
        assert node.node_executable in scripts, '{} is not a console script of setup.py ' \
            '{}'.format(node.node_executable, sorted(scripts))
        params, files = ev.params(node)
        assert files[0] == PARAMS_FILE, files
        unknown = set(params) - {p.name for p in specs[node.node_executable]}
        assert not unknown, '{} gets undeclared parameters {}'.format(node.node_name, unknown)


@needs_launch
@MODES
def test_remappings_point_at_topics_that_are_published(monkeypatch, composed):
    _, ev = _evaluate(monkeypatch, composed=composed,
                      source='sample', backend='standin', marigold='true')
    zed = ev.by_exe('zed_node')[0]
    assert zed.node_name == '/zed/zed_node' and zed.expanded_node_namespace == '/zed'
    prefix = '/zed/zed_node/'
    published = {prefix + t for t in ('left/image_rect_color', 'left/camera_info',
                                      'right/camera_info', 'depth/depth_registered',
                                      'confidence/confidence_map')}
    published |= {'/depth_node/disparity', '/depth_node/inference_started',
                  '/marigold_node/depth', '/marigold_node/keyframe_started'}
    for node in ev.nodes:
        for src, dst in ev.remaps(node).items():
            assert dst in published, '{} remaps {} to {}, which nobody publishes'.format(
                node.node_name, src, dst)
    first = [n for n in ev.by_exe('alignment_node')
             if n.expanded_node_namespace != '/marigold'][0]
    expected = ev.remaps(first)
    assert expected['disparity'] == '/depth_node/disparity' and \
        expected['inference_started'] == '/depth_node/inference_started'
    assert set(expected) == {'disparity', 'inference_started', 'depth_registered',
                             'confidence', 'camera_info', 'right_camera_info', 'image'}, expected
    # docs/marigold.md: the second alignment_node, in namespace marigold, aligns the keyframes
    # with the stereo inputs of the first, by age (keyframes come seconds late), without the
    # colour image in the waiting sets, keeping the frame each keyframe started on.
    marigold = [n for n in ev.by_exe('alignment_node')
                if n.node_name == '/marigold/alignment_node']
    assert len(marigold) == 1
    expected.update(disparity='/marigold_node/depth',
                    inference_started='/marigold_node/keyframe_started')
    assert ev.remaps(marigold[0]) == expected, ev.remaps(marigold[0])
    params, _ = ev.params(marigold[0])
    assert (params['relative_kind'], params['pairing_window_s'], params['use_image']) == \
        ('depth', 10.0, False), params
    assert ev.remaps(ev.by_exe('marigold_node')[0]) == {'image': prefix + 'left/image_rect_color'}


@needs_launch
@MODES
def test_arguments_reach_the_nodes(monkeypatch, composed):
    _, ev = _evaluate(monkeypatch, composed=composed,
                      source='sample', backend='standin', reliability='reliable')
    params = {n.node_executable: ev.params(n)[0] for n in ev.nodes}
    assert params['depth_node']['backend'] == 'standin'
    assert params['zed_node']['source'] == 'sample' and 'path' not in params['zed_node'], \
        'an empty path must be left to the params file: {}'.format(params['zed_node'])
    assert {p['reliability'] for p in params.values()} == {'reliable'}, params


@needs_launch
@MODES
def test_a_params_file_is_overridden_only_by_the_arguments_given(monkeypatch, composed):
    # The defaults of source:=, backend:=, model:= and reliability:= went to the nodes whether
    # given or not: `source: sample` or `reliability: reliable` in params_file:= gave way to
    # live and best_effort without a word. camera_name is the launch's (namespace, frames).
    _, ev = _evaluate(monkeypatch, composed=composed)
    params = {n.node_executable: ev.params(n)[0] for n in ev.nodes}
    assert params == {'zed_node': {'camera_name': 'zed'}, 'depth_node': {},
                      'alignment_node': {}}, params
    # Given, even at their defaults, they override the file.
    _, ev = _evaluate(monkeypatch, composed=composed, source='live', backend='auto',
                      model='auto', reliability='best_effort', engine_cache_dir='/engines')
    params = {n.node_executable: ev.params(n)[0] for n in ev.nodes}
    assert params == {
        'zed_node': {'camera_name': 'zed', 'source': 'live', 'reliability': 'best_effort'},
        'depth_node': {'backend': 'auto', 'model_path': 'auto', 'engine_cache_dir': '/engines',
                       'reliability': 'best_effort'},
        'alignment_node': {'reliability': 'best_effort'}}, params


@needs_launch
@MODES
def test_camera_name_moves_namespaces_topics_and_frames(monkeypatch, composed):
    _, ev = _evaluate(monkeypatch, composed=composed,
                      source='sample', backend='standin', camera_name='front',
                      tf2_ros=True)
    zed = ev.by_exe('zed_node')[0]
    assert zed.node_name == '/front/zed_node', zed.node_name
    assert ev.params(zed)[0]['camera_name'] == 'front'
    align = ev.by_exe('alignment_node')[0]
    assert ev.remaps(align)['image'] == '/front/zed_node/left/image_rect_color'
    assert _tf_chain(ev.by_exe('static_transform_publisher')) == [
        ('front_camera_link', 'front_left_camera_frame', [0.0, 0.06, 0.0], [0.0, 0.0, 0.0]),
        ('front_left_camera_frame', 'front_left_camera_optical_frame', [0.0, 0.0, 0.0],
         [-math.pi / 2, 0.0, -math.pi / 2])]


def _tf_chain(publishers):
    # (parent, child, xyz, rpy) of each static_transform_publisher, in launch order.
    from launch import LaunchContext
    from launch.utilities import perform_substitutions
    chain = []
    for node in publishers:
        a = []
        for part in node.cmd[1:]:     # the executable, then the arguments, then --ros-args
            text = perform_substitutions(LaunchContext(), part)
            if text == '--ros-args':
                break
            a.append(text)

        def value(flag):
            return float(a[a.index(flag) + 1])
        chain.append((a[a.index('--frame-id') + 1], a[a.index('--child-frame-id') + 1],
                      [value('--x'), value('--y'), value('--z')],
                      [value('--roll'), value('--pitch'), value('--yaw')]))
    return chain


def _rpy_matrix(roll, pitch, yaw):
    # tf2's convention for static_transform_publisher --roll/--pitch/--yaw (and
    # Quaternion.setRPY): fixed axes, R = Rz(yaw) Ry(pitch) Rx(roll), parent <- child.
    cr, sr, cp, sp, cy, sy = (math.cos(roll), math.sin(roll), math.cos(pitch),
                              math.sin(pitch), math.cos(yaw), math.sin(yaw))
    rx = [[1, 0, 0], [0, cr, -sr], [0, sr, cr]]
    ry = [[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]]
    rz = [[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]]

    def mul(a, b):
        return [[sum(a[i][k] * b[k][j] for k in range(3)) for j in range(3)] for i in range(3)]
    return mul(rz, mul(ry, rx))


@needs_launch
def test_a_cloud_point_lands_where_rep_103_puts_it_in_the_camera_link(monkeypatch):
    # A planner transforms ~/points from the optical frame (x right, y down, z forward) to
    # the camera link (x forward, y left, z up) through the launch's two static TFs. A point
    # 2 m ahead, 0.5 m right and 0.25 m down of the left camera must come out 2 m forward,
    # 0.5 m right of the left camera (which sits 0.06 m left of the link) and 0.25 m down.
    _, ev = _evaluate(monkeypatch, source='sample', backend='standin', tf2_ros=True)
    chain = _tf_chain(ev.by_exe('static_transform_publisher'))
    assert [(parent, child) for parent, child, _, _ in chain] == [
        ('zed_camera_link', 'zed_left_camera_frame'),
        ('zed_left_camera_frame', 'zed_left_camera_optical_frame')]
    point = [0.5, 0.25, 2.0]                 # in zed_left_camera_optical_frame
    for _, _, xyz, rpy in reversed(chain):   # child -> parent, the optical frame first
        r = _rpy_matrix(*rpy)
        point = [sum(r[i][k] * point[k] for k in range(3)) + xyz[i] for i in range(3)]
    expected = [2.0, 0.06 - 0.5, -0.25]
    assert all(abs(a - b) < 1e-9 for a, b in zip(point, expected)), (point, expected)


@MODES
def test_publish_tf_without_tf2_ros_says_so_in_one_line_and_goes_on(monkeypatch, composed):
    _, ev = _evaluate(monkeypatch, composed=composed,
                      source='sample', backend='standin', tf2_ros=False)
    assert not ev.by_exe('static_transform_publisher')
    told = [line for line in ev.log if 'tf2_ros is not installed' in line]
    assert len(told) == 1 and 'publish_tf:=false' in told[0], ev.log
    assert sorted(n.node_executable for n in ev.nodes) == \
        ['alignment_node', 'depth_node', 'zed_node']
    _, ev = _evaluate(monkeypatch, composed=composed,
                      source='sample', backend='standin', publish_tf='false')
    assert not [line for line in ev.log if 'tf2_ros' in line], ev.log


@needs_launch
def test_switches(monkeypatch):
    monkeypatch.setenv('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')
    _, ev = _evaluate(monkeypatch, zed_node='false', publish_tf='false',
                      fastdds_profile='false', clean_shm='false', cyclonedds_config='false',
                      backend='standin', composed='false')
    assert sorted(n.node_executable for n in ev.nodes) == ['alignment_node', 'depth_node']
    assert ev.env == [] and ev.log == []


@needs_launch
@pytest.mark.parametrize('rmw, runs', [('', True), ('rmw_fastrtps_cpp', True),
                                       ('rmw_fastrtps_dynamic_cpp', True),
                                       ('rmw_cyclonedds_cpp', False)])
def test_the_shm_cleaner_runs_under_fast_dds_and_speaks_when_it_removed_something(
        monkeypatch, rmw, runs):
    # Every launch said "shared memory: 0 zombie segments cleaned", with Cyclone DDS too
    # (whose processes make no Fast DDS segments). RMW_IMPLEMENTATION unset: Fast DDS, the
    # default of Humble and Kilted. The tool's output is read in test_nodes_core.py. (Our
    # Cyclone DDS configuration off: its rmem_max line is another test's.)
    from depth_ros.nodes_core.middleware import ShmClean
    monkeypatch.setenv('RMW_IMPLEMENTATION', rmw)
    ran = []
    _, ev = _evaluate(monkeypatch, source='sample', backend='standin', tf2_ros=True,
                      cyclonedds_config='false', ran=ran)
    assert ev.log == [] and len(ran) == (1 if runs else 0), (ev.log, ran)
    removed = ShmClean(2, 'fastdds shm clean removed 2 zombie segments that killed processes '
                       'left in /dev/shm')
    _, ev = _evaluate(monkeypatch, source='sample', backend='standin', tf2_ros=True,
                      cyclonedds_config='false', shm_result=removed)
    assert ev.log == (['shared memory: ' + removed.text] if runs else []), ev.log
    failed = ShmClean(None, 'fastdds shm clean failed: no answer within 10 s')
    _, ev = _evaluate(monkeypatch, source='sample', backend='standin', tf2_ros=True,
                      cyclonedds_config='false', shm_result=failed)
    assert ev.log == (['shared memory: ' + failed.text] if runs else []), ev.log
    ran = []
    _, ev = _evaluate(monkeypatch, source='sample', backend='standin', tf2_ros=True,
                      cyclonedds_config='false', shm_result=removed, clean_shm='false',
                      ran=ran)
    assert ev.log == [] and ran == [], (ev.log, ran)


@needs_launch
@pytest.mark.parametrize('distro, names', [
    ('humble', ['FASTRTPS_DEFAULT_PROFILES_FILE']),
    ('jazzy', ['FASTRTPS_DEFAULT_PROFILES_FILE']),
    ('kilted', ['FASTDDS_DEFAULT_PROFILES_FILE']),
])
def test_the_fastdds_profile_goes_in_the_variable_fast_dds_reads(monkeypatch, distro, names):
    # Fast DDS 3 (Kilted) warns at every start when it finds the old variable; Fast DDS 2
    # (Humble, Jazzy) reads only the old one.
    monkeypatch.setenv('ROS_DISTRO', distro)
    _, ev = _evaluate(monkeypatch, source='sample', backend='standin', cyclonedds_config='false')
    profile = os.path.join(SHARE, 'config', 'fastdds_large_messages.xml')
    assert ev.env == [(n, profile) for n in names], ev.env
    monkeypatch.setenv('FASTRTPS_DEFAULT_PROFILES_FILE', '/mine.xml')
    monkeypatch.setattr(os, 'environ', dict(os.environ))
    from depth_ros.nodes_core import middleware
    assert middleware.profile_environment('/p.xml') == {}, 'a user profile must be kept'


@needs_launch
@pytest.mark.parametrize('localhost', ['1', '0'])
def test_the_cyclonedds_config_goes_in_cyclonedds_uri_unless_one_is_set(monkeypatch, localhost):
    monkeypatch.setenv('ROS_LOCALHOST_ONLY', localhost)
    _, ev = _evaluate(monkeypatch, source='sample', backend='standin', fastdds_profile='false')
    config = os.path.join(SHARE, 'config')
    expected = 'file://' + os.path.join(config, 'cyclonedds_large_messages.xml')
    if localhost == '1':   # unicast discovery on lo, without Cyclone's warning in every node
        expected += ',file://' + os.path.join(config, 'cyclonedds_localhost.xml')
    assert ev.env == [('CYCLONEDDS_URI', expected)], ev.env
    monkeypatch.setattr(os, 'environ', dict(os.environ, CYCLONEDDS_URI='/mine.xml'))
    from depth_ros.nodes_core import middleware
    assert middleware.cyclonedds_environment(config) == {}, 'a user configuration must be kept'


@needs_launch
@pytest.mark.parametrize('rmw, rmem_max, told', [
    ('rmw_cyclonedds_cpp', 212992, True),      # a stock Ubuntu / JetPack kernel
    ('rmw_cyclonedds_cpp', 16777216, False),
    ('rmw_fastrtps_cpp', 212992, False),       # Fast DDS carries images in shared memory
])
def test_one_line_says_when_rmem_max_caps_the_cyclonedds_buffer(monkeypatch, rmw, rmem_max,
                                                                told):
    from depth_ros.nodes_core import middleware
    monkeypatch.setenv('RMW_IMPLEMENTATION', rmw)
    monkeypatch.setattr(middleware, 'rmem_max', lambda: rmem_max)
    _, ev = _evaluate(monkeypatch, source='sample', backend='standin', clean_shm='false')
    lines = [line for line in ev.log if 'rmem_max' in line]
    if not told:
        assert lines == [], ev.log
        return
    assert lines == ['Cyclone DDS: net.core.rmem_max (212992 bytes) caps the 16777216-byte socket '
                     'receive buffer of cyclonedds_large_messages.xml, and best-effort images '
                     'may be lost: sudo sysctl -w net.core.rmem_max=16777216 (and in '
                     '/etc/sysctl.d/ to keep it)'], ev.log
    # Not when the user's own Cyclone DDS configuration is in use, or ours is switched off.
    monkeypatch.setenv('CYCLONEDDS_URI', '/mine.xml')
    assert middleware.receive_buffer_note(os.path.join(
        SHARE, 'config', 'cyclonedds_large_messages.xml')) is None
    _, ev = _evaluate(monkeypatch, source='sample', backend='standin', clean_shm='false',
                      cyclonedds_config='false')
    assert not [line for line in ev.log if 'rmem_max' in line], ev.log


def test_cyclonedds_memsize_units_are_cyclones():
    from depth_ros.nodes_core import middleware
    # Cyclone DDS's kB and MB are 1024-based, as its KiB and MiB.
    assert [middleware._memsize(t) for t in ('16MiB', '16MB', '64 kB', '1GB', '4096', 'x',
                                             'default')] == \
        [16 << 20, 16 << 20, 64 << 10, 1 << 30, 4096, None, None]
    assert middleware.rmem_max('/nonexistent/rmem_max') is None


@needs_launch
@MODES
def test_engine_argument_selects_tensorrt_and_the_cache(monkeypatch, composed):
    def depth_params(**overrides):
        _, ev = _evaluate(monkeypatch, composed=composed, source='sample', **overrides)
        return ev.params(ev.by_exe('depth_node')[0])[0]
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
    with pytest.raises(ValueError) as err:   # it was taken, and built an engine from the ONNX
        depth_params(engine='/m/da2.onnx')
    assert str(err.value) == 'engine:= names a TensorRT engine (.engine, .plan or a name in ' \
        'the engine cache), got /m/da2.onnx: give an ONNX file as model:=/m/da2.onnx (backend ' \
        'auto builds its engine where TensorRT is installed)'


@needs_launch
@pytest.mark.parametrize('overrides, text', [
    (dict(source='foo'), 'launch argument source:=foo must be one of live | svo | sample | '
                         'folder | bag'),
    (dict(source='sample', backend='foo'), 'launch argument backend:=foo must be one of '
                                           'auto | onnxruntime | tensorrt | torch | standin'),
    (dict(source='svo'), 'launch argument source:=svo needs path:=<file.svo2>'),
    (dict(source='sample', path='/x'), 'launch argument path:=/x is only for '
                                       'source:=svo|folder|bag'),
    (dict(source='folder', path='/nonexistent'), 'launch argument path:=/nonexistent does not '
                                                 'exist'),
    (dict(source='sample', reliability='fast'), 'launch argument reliability:=fast must be one '
                                                'of best_effort | reliable'),
    (dict(source='sample', marigold='maybe'), 'launch argument marigold:=maybe must be true or '
                                              'false'),
    (dict(source='sample', params_file='/nope.yaml'), 'launch argument params_file:=/nope.yaml '
                                                      'is not a file'),
    (dict(source='sample', composed='yes please'), 'launch argument composed:=yes please must '
                                                   'be true or false'),
    # (_evaluate: rviz2 is not installed.) launch's own error came after the nodes started.
    (dict(source='sample', rviz='true'), 'launch argument rviz:=true needs the rviz2 package, '
                                         'which is not installed'),
    # A namespace: rcl refused it only in the node, with its lexer's message.
    (dict(source='sample', camera_name='my cam'), 'launch argument camera_name:=my cam must be '
                                                  'a ROS name'),
    (dict(source='sample', camera_name='2nd'), 'launch argument camera_name:=2nd must be a ROS '
                                               'name'),
    (dict(source='sample', log_level='verbose'), 'launch argument log_level:=verbose must be one '
                                                 'of debug | info | warn | error | fatal'),
    # A replay source's path check asks whether zed_node runs: a bad zed_node:= was then
    # "expected true or false, got 'flase'", naming no argument.
    (dict(source='bag', zed_node='flase'), 'launch argument zed_node:=flase must be true or '
                                           'false'),
    (dict(source='folder', path='/nonexistent', zed_node='maybe'), 'launch argument '
                                                                   'zed_node:=maybe must be '
                                                                   'true or false'),
])
def test_bad_arguments_are_refused_before_any_node_starts(monkeypatch, overrides, text):
    with pytest.raises(ValueError) as info:
        _evaluate(monkeypatch, **overrides)
    assert str(info.value).startswith(text), 'expected {!r}, received {!r}'.format(
        text, str(info.value))


def test_rviz_config_uses_best_effort_and_graph_topics():
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


@needs_launch
@pytest.mark.parametrize('marigold', ['false', 'true'])
def test_composed_is_one_process_whose_nodes_get_what_separate_processes_get(
        monkeypatch, marigold):
    declared, ev = _evaluate(monkeypatch, source='sample', backend='standin', marigold=marigold,
                             camera_name='front', reliability='reliable')
    default = declared['composed'].default_value[0].perform(None)
    assert default == 'true', default
    ours = [p for p in ev.processes if p.node_package == 'depth_ros']
    assert [p.node_executable for p in ours] == ['composed_nodes'], ours
    _, separate = _evaluate(monkeypatch, source='sample', backend='standin', marigold=marigold,
                            camera_name='front', reliability='reliable', composed='false')
    assert all(p.node_executable != 'composed_nodes' for p in separate.processes)

    def described(evaluated):
        out = {}
        for node in evaluated.nodes:
            if node.node_package == 'depth_ros':
                params, files = evaluated.params(node)
                # launch_ros spells the root namespace of a Node without one as a placeholder.
                unset = '<node_namespace_unspecified>'
                out[node.node_name.replace(unset, '')] = (
                    node.node_executable, node.expanded_node_namespace.replace(unset, '/'),
                    sorted(evaluated.remaps(node).items()), params, files[0])
        return out
    composed, apart = described(ev), described(separate)
    assert composed == apart, (composed, apart)
    expected = {'/front/zed_node', '/depth_node', '/alignment_node'}
    if marigold == 'true':
        expected |= {'/marigold_node', '/marigold/alignment_node'}
    assert set(composed) == expected, sorted(composed)
    # In-process inputs on the camera -> network -> alignment edges; Marigold's keyframes
    # are paired by stamp on topics (docs/ros.md, Composed mode).
    sources = {n.node_name: n.source for n in ev.nodes if isinstance(n, InProcess)}
    assert sources == dict({'/front/zed_node': None, '/depth_node': 'zed_node',
                            '/alignment_node': 'depth_node'},
                           **({'/marigold_node': 'zed_node', '/marigold/alignment_node': None}
                              if marigold == 'true' else {})), sources


@needs_launch
def test_without_zed_node_the_nodes_run_as_separate_processes_and_the_launch_says_so(
        monkeypatch):
    _, ev = _evaluate(monkeypatch, zed_node='false', backend='standin', publish_tf='false')
    assert sorted(p.node_executable for p in ev.processes) == ['alignment_node', 'depth_node']
    told = [line for line in ev.log if 'composed:=true' in line]
    assert len(told) == 1 and 'zed_node:=false' in told[0] and 'separate processes' in \
        told[0], ev.log
    assert not [line for line in ev.log if 'not used' in line], ev.log
    # zed_node's own arguments given next to the wrapper: said, not ignored in silence.
    _, ev = _evaluate(monkeypatch, zed_node='false', source='bag', path='/nonexistent',
                      backend='standin', publish_tf='false')
    assert [line for line in ev.log if 'not used' in line] == [
        "source:=bag path:=/nonexistent are our zed_node's: with zed_node:=false they are not "
        "used (the camera topics come from the running wrapper)"], ev.log


@needs_launch
def test_source_and_path_from_a_params_file_are_checked_as_the_node_will_read_them(
        monkeypatch, tmp_path):
    # The launch's own check read the arguments only: `path:` in the file with source:=bag
    # given was refused ("needs path:="), though zed_node would have read the file's path.
    bag = tmp_path / 'run1'
    bag.mkdir()
    robot = tmp_path / 'robot.yaml'
    robot.write_text('/**/zed_node:\n  ros__parameters:\n    path: {}\n'.format(bag))
    _, ev = _evaluate(monkeypatch, source='bag', params_file=str(robot))
    zed = ev.by_exe('zed_node') or ev.by_exe('composed_nodes')
    assert zed, 'no zed_node'
    # Both in the file, nothing given: the file's pair is checked, and it passes.
    robot.write_text('zed:\n  zed_node:\n    ros__parameters:\n      source: bag\n'
                     '      path: {}\n'.format(bag))
    _evaluate(monkeypatch, params_file=str(robot))
    # What the node would refuse is refused here, naming where each value came from.
    for text, args, want in [
            ('source: bag\n', {}, 'source: bag in {} needs path:=<rosbag2 folder>'),
            ('source: tape\n', {}, 'source: tape in {} must be one of live | svo | sample'),
            ('path: /nonexistent\n', dict(source='svo'),
             'path: /nonexistent in {} does not exist'),
            ('path: {}\n'.format(bag), dict(source='sample'),
             'path: {} in {{}} is only for source:=svo|folder|bag, got source:=sample'.format(
                 bag)),
            ('source: live\n', dict(path=str(bag)),
             'launch argument path:={} is only for source:=svo|folder|bag, got source: live '
             'in {{}}'.format(bag))]:
        robot.write_text('/**/zed_node:\n  ros__parameters:\n    ' + text)
        with pytest.raises(ValueError) as info:
            _evaluate(monkeypatch, params_file=str(robot), **args)
        assert str(info.value).startswith(want.format(robot)), (text, str(info.value))
    # Another node's section, or another camera's, is not zed_node's.
    robot.write_text('/**/depth_node:\n  ros__parameters:\n    path: /nonexistent\n'
                     'front/zed_node:\n  ros__parameters:\n    source: bag\n')
    _evaluate(monkeypatch, source='sample', params_file=str(robot))


@needs_launch
@MODES
def test_a_params_file_under_the_home_folder_is_found(monkeypatch, tmp_path, composed):
    # The shell expands `~` only at the start of a word: `params_file:=~/robot.yaml` reached
    # the launch as it is and was refused as "not a file" (path:=~/... and model:=~/... were
    # already expanded).
    monkeypatch.setenv('HOME', str(tmp_path))
    robot = tmp_path / 'robot.yaml'
    robot.write_text('/**:\n  ros__parameters:\n    reliability: reliable\n')
    _, ev = _evaluate(monkeypatch, composed=composed, source='sample', backend='standin',
                      params_file='~/robot.yaml')
    for node in ev.nodes:
        params, files = ev.params(node)
        assert str(robot) in files and params['reliability'] == 'reliable', (node, files)
    with pytest.raises(ValueError) as info:
        _evaluate(monkeypatch, composed=composed, source='sample', params_file='~/nope.yaml')
    assert str(info.value) == 'launch argument params_file:={} is not a file'.format(
        tmp_path / 'nope.yaml'), str(info.value)


@needs_launch
def test_a_params_file_section_that_misses_our_namespaced_zed_node_is_told(monkeypatch, tmp_path):
    # rcl reads a node key without a namespace as the root namespace's: `zed_node:` is
    # /zed_node, not /zed/zed_node. The file's `source: sample` was ignored in silence and the
    # node ended the launch with "source 'live' is not available", naming nothing of the file.
    robot = tmp_path / 'robot.yaml'

    def told(text, **args):
        robot.write_text(text)
        _, ev = _evaluate(monkeypatch, params_file=str(robot), backend='standin', **args)
        return [line for line in ev.log if str(robot) in line]
    section = 'ros__parameters:\n    source: sample\n'
    for key in ('zed_node', '/zed_node'):
        lines = told('{}:\n  {}'.format(key, section))
        assert len(lines) == 1, lines
        assert lines[0] == (
            'params_file:={}: its section `{}` is ignored: zed_node runs as /zed/zed_node, and a '
            'node key without a namespace matches only /zed_node; write `/**/zed_node:` (any '
            'namespace) or `/zed/zed_node:`'.format(robot, key)), lines[0]
    # Keys that do reach our nodes, another camera's, another node's, or no zed_node here.
    for text, args in [('/**/zed_node:\n  ' + section, {}),
                       ('/zed/zed_node:\n  ' + section, {}),
                       ('zed:\n  zed_node:\n    ' + section.replace('\n    ', '\n      '), {}),
                       ('/zed/zed_node:\n  ' + section, dict(camera_name='front')),
                       ('depth_node:\n  ros__parameters:\n    backend: standin\n', {}),
                       ('planner:\n  ros__parameters:\n    rate: 1.0\n', {}),
                       ('zed_node:\n  ' + section, dict(zed_node='false', publish_tf='false'))]:
        assert told(text, **args) == [], text


@needs_launch
@pytest.mark.parametrize('text, problem', [
    ('/**:\n  ros__parameters: {cloud_stride: [2\n', 'not valid YAML: '),
    ('hello\n', 'expected node sections (`/**/node: ros__parameters: ...`), got a str'),
])
def test_a_params_file_that_does_not_read_is_refused_before_any_node_starts(
        monkeypatch, tmp_path, text, problem):
    # Left to the nodes, the processes started and the first to read it ended the launch.
    path = tmp_path / 'robot.yaml'
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        _evaluate(monkeypatch, source='sample', params_file=str(path))
    want = 'launch argument params_file:={}: {}'.format(path, problem)
    assert str(info.value).startswith(want), str(info.value)


@needs_launch
@MODES
@pytest.mark.parametrize('level', ['info', 'debug', 'WARN'])
def test_log_level_reaches_every_node_of_ours(monkeypatch, composed, level):
    from launch import LaunchContext
    from launch.utilities import perform_substitutions
    _, ev = _evaluate(monkeypatch, composed=composed, source='sample', backend='standin',
                      log_level=level)
    context = LaunchContext()
    ours = [p for p in ev.processes if p.node_package == 'depth_ros']
    assert len(ours) == (1 if composed == 'true' else 3), ours
    for process in ours:
        # composed_nodes: its global ROS arguments (Evaluated read them); a node's process:
        # the ROS arguments launch_ros puts on its command line.
        cmd = ev.glob if process.node_executable == 'composed_nodes' else [
            a if isinstance(a, str) else perform_substitutions(context, a)
            for a in process._Node__ros_arguments or []]
        told = [cmd[i + 1] for i, a in enumerate(cmd) if a == '--log-level']
        # info is rcl's own default: nothing is added to the command. Otherwise our nodes'
        # loggers (rcl's names: namespace and name by dots) and composed_nodes' own, never
        # the process's default level (which would be rcl's and the RMW's too).
        node_loggers = {'zed_node': 'zed.zed_node', 'depth_node': 'depth_node',
                        'alignment_node': 'alignment_node'}
        loggers = ['composed_nodes'] + sorted(node_loggers.values()) \
            if process.node_executable == 'composed_nodes' else \
            [node_loggers[process.node_executable]]
        assert sorted(told) == ([] if level == 'info' else sorted(
            '{}:={}'.format(name, level.lower()) for name in loggers)), cmd


@needs_launch
def test_a_misspelt_argument_is_told_not_ignored_silently(monkeypatch):
    # ros2 launch takes any name:=value: publish_ft:=false left the TF publishers on, in
    # silence. In a launch file that includes this one (its own configurations reach this
    # context too), a name close to one of ours, or a parameter of our nodes, is told; others
    # are not; the launch goes on.
    _, ev = _evaluate(monkeypatch, source='sample', backend='standin',
                      undeclared={'publish_ft': 'false', 'use_sim': 'true', 'robot': 'r1',
                                  'cloud_stride': '4'})
    told = [line for line in ev.log if 'launch argument' in line]
    assert told == [
        "launch argument cloud_stride:=4 is not one of zed_depth.launch.py's, and is ignored: "
        "`cloud_stride` is a parameter of alignment_node: set it in a parameters file given as "
        "params_file:= (a copy of config/zed_depth.yaml)",
        "launch argument publish_ft:=false is not one of zed_depth.launch.py's, and is ignored: "
        "did you mean publish_tf:=?"], ev.log


@needs_launch
@pytest.mark.parametrize('typed, text', [
    # A typo: publish_tf stayed true, TFs beside the wrapper's.
    ('publsh_tf:=false', "launch argument publsh_tf:=false is not one of "
                         "zed_depth.launch.py's: did you mean publish_tf:=?"),
    # A node's parameter given as a launch argument changed nothing, in silence.
    ('max_depth:=30.0', "launch argument max_depth:=30.0 is not one of zed_depth.launch.py's: "
                        "`max_depth` is a parameter of zed_node, alignment_node: set it in a "
                        "parameters file given as params_file:= (a copy of config/zed_depth."
                        "yaml)"),
    ('use_sim_time:=true', "`use_sim_time` is a parameter of zed_node, depth_node, "
                           "alignment_node, marigold_node: set it in a parameters file"),
    ('model_path:=da2.onnx', "launch argument model_path:=da2.onnx is not one of "
                             "zed_depth.launch.py's: did you mean model:=?"),
    ('foo:=1', "launch argument foo:=1 is not one of zed_depth.launch.py's: ros2 launch "
               "depth_ros zed_depth.launch.py --show-args lists them"),
])
@pytest.mark.parametrize('launch_file', ['depth_ros zed_depth.launch.py', LAUNCH_FILE])
def test_an_unknown_argument_on_the_command_line_ends_the_launch(monkeypatch, typed, text,
                                                                 launch_file):
    # `ros2 launch depth_ros zed_depth.launch.py publsh_tf:=false` (or the file's path): the
    # name was meant for this file, so it is refused with one line, before any node starts.
    name, value = typed.split(':=')
    with pytest.raises(ValueError) as refused:
        _evaluate(monkeypatch, source='sample', backend='standin', undeclared={name: value},
                  command_line=launch_file.split() + ['source:=sample', 'backend:=standin',
                                                      typed])
    assert text in str(refused.value) and ';' not in str(refused.value), str(refused.value)


@needs_launch
def test_unknown_arguments_are_refused_in_one_line_and_ros2_launch_own_are_not(monkeypatch):
    with pytest.raises(ValueError) as refused:
        _evaluate(monkeypatch, source='sample', undeclared={
            'sorce': 'bag', 'cloud_strid': '4', 'launch-prefix': 'gdb -ex run --args'},
            command_line=['--launch-prefix', 'gdb -ex run --args', 'depth_ros',
                          'zed_depth.launch.py', 'source:=sample', 'sorce:=bag',
                          'cloud_strid:=4', 'launch-prefix:=gdb -ex run --args'])
    assert str(refused.value) == (
        "launch argument cloud_strid:=4 is not one of zed_depth.launch.py's: ros2 launch "
        "depth_ros zed_depth.launch.py --show-args lists them; launch argument sorce:=bag is "
        "not one of zed_depth.launch.py's: did you mean source:=?")


@needs_launch
def test_this_file_is_launched_directly_only_when_ros2_launch_names_it(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location('zed_depth_launch', LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ros2 = '/opt/ros/humble/bin/ros2'
    other = tmp_path / 'zed_depth.launch.py'      # a robot's own file of the same name
    other.write_text('')
    assert module._launched_directly([ros2, 'launch', 'depth_ros', 'zed_depth.launch.py'])
    assert module._launched_directly([ros2, 'launch', '-d', LAUNCH_FILE, 'source:=sample'])
    assert module._launched_directly([ros2, 'launch', os.path.relpath(LAUNCH_FILE)])
    assert not module._launched_directly([ros2, 'launch', 'my_robot', 'zed_depth.launch.py'])
    assert not module._launched_directly([ros2, 'launch', str(other)])
    assert not module._launched_directly([ros2, 'launch', 'my_robot', 'robot.launch.py',
                                          'publsh_tf:=false'])
    assert not module._launched_directly(['pytest', 'test/test_launch.py'])
    # The file's bare name in the folder it is in: ros2 launch's single-file mode (its first
    # word an existing path) runs this file; a package's file of that name, or the robot's
    # own file of that name in the current folder, is another.
    monkeypatch.chdir(os.path.dirname(LAUNCH_FILE))
    assert module._launched_directly([ros2, 'launch', 'zed_depth.launch.py', 'source:=sample'])
    assert module._launched_directly([ros2, 'launch', '-d', 'zed_depth.launch.py'])
    assert not module._launched_directly([ros2, 'launch', 'my_robot', 'zed_depth.launch.py'])
    monkeypatch.chdir(str(tmp_path))
    assert not module._launched_directly([ros2, 'launch', 'zed_depth.launch.py'])


@needs_launch
def test_a_process_exit_ends_the_launch_and_a_failure_raises_one_line_naming_it():
    # launch exits 1 only when an exception is raised inside it (a Shutdown gives 0): our
    # processes' on_exit raises for any code but 0, and adds nothing during a stop.
    import types
    from launch.actions import Shutdown
    spec = importlib.util.spec_from_file_location('zed_depth_launch', LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    handler = module._on_exit('composed_nodes (zed/zed_node, depth_node, alignment_node)')
    running, stopping = (types.SimpleNamespace(is_shutdown=flag) for flag in (False, True))
    assert isinstance(handler(types.SimpleNamespace(returncode=0), running), Shutdown)
    for code, how in ((1, 'exited with code 1'), (2, 'exited with code 2'),
                      (-9, 'was killed by SIGKILL (exit code -9)'),
                      (-15, 'was killed by SIGTERM (exit code -15)')):
        with pytest.raises(RuntimeError) as raised:
            handler(types.SimpleNamespace(returncode=code), running)
        assert str(raised.value) == 'composed_nodes (zed/zed_node, depth_node, ' \
            'alignment_node) {}: the launch stops, and exits 1'.format(how)
        # Ctrl-C, or another process's failure: the exits of the stop add nothing.
        assert handler(types.SimpleNamespace(returncode=code), stopping) is None
    assert handler(types.SimpleNamespace(returncode=0), stopping) is None


# ------------------------------------------------------------- under PushRosNamespace
# A robot's launch file includes ours in GroupAction([PushRosNamespace('robot1'), Include...]):
# the same graph, every node of ours and every topic it wires under the pushed namespace.
PUSHED = pytest.mark.parametrize('namespace, base', [('robot1', '/robot1'),
                                                     ('fleet/robot1', '/fleet/robot1')])
OURS = ['/zed/zed_node', '/depth_node', '/alignment_node', '/marigold_node',
        '/marigold/alignment_node']


UNSPECIFIED = '<node_namespace_unspecified>'   # launch_ros's, for a process at the root: /


def _by_name(ev, base=''):
    """Our nodes by full name, less the pushed namespace ``base``."""
    return {n.node_name.replace(UNSPECIFIED, '')[len(base):]: n for n in ev.nodes
            if n.node_package == 'depth_ros'}


@needs_launch
@MODES
@PUSHED
def test_under_a_pushed_namespace_every_node_and_topic_of_ours_is_under_it(
        monkeypatch, composed, namespace, base):
    args = dict(composed=composed, source='sample', backend='standin', marigold='true',
                tf2_ros=True)
    _, root = _evaluate(monkeypatch, **args)
    _, ev = _evaluate(monkeypatch, namespace=namespace, **args)
    at_root, pushed = _by_name(root), _by_name(ev, base)
    # Every node of ours, by its full name: the pushed namespace, then the one it has at the root.
    assert sorted(n.node_name for n in ev.nodes if n.node_package == 'depth_ros') == \
        sorted(base + name for name in OURS)
    assert sorted(pushed) == sorted(at_root) == sorted(OURS)
    for name, node in pushed.items():
        assert node.expanded_node_namespace == base + name.rpartition('/')[0], \
            (name, node.expanded_node_namespace)
        # Wired to the topics of the namespace: each remap's target is the root's, under it
        # (absolute names: the Marigold aligner's own namespace is not its producers').
        want = {src: base + dst for src, dst in ev.remaps(at_root[name]).items()}
        assert ev.remaps(node) == want, (name, ev.remaps(node), want)
        assert getattr(node, 'source', None) == getattr(at_root[name], 'source', None)
        # The same parameters (composed: the sections written for the node's full name,
        # which Evaluated.params checks), the shipped file first.
        assert ev.params(node)[0] == ev.params(at_root[name])[0], name
        assert ev.params(node)[1][0] == PARAMS_FILE
    # Nothing more is said (launch_ros's ros_namespace is not taken for an argument of ours).
    assert ev.log == root.log, ev.log
    # Frames follow camera_name alone: the same static TFs.
    assert _tf_chain(ev.by_exe('static_transform_publisher')) == \
        _tf_chain(root.by_exe('static_transform_publisher'))
    assert {n.node_name for n in ev.by_exe('static_transform_publisher')} == \
        {base + '/zed_left_camera_tf', base + '/zed_optical_frame_tf'}


@needs_launch
@PUSHED
def test_under_a_pushed_namespace_the_composed_sections_get_it(monkeypatch, namespace, base):
    # The section's -r __ns:= is node-local and absolute: without the pushed namespace, zed_node
    # ran as /zed/zed_node whatever the including file pushed (two robots collided), while the
    # others followed launch_ros's global -r __ns:= of the process.
    _, ev = _evaluate(monkeypatch, namespace=namespace, source='sample', backend='standin',
                      marigold='true')
    assert [p.node_executable for p in ev.processes if p.node_package == 'depth_ros'] == \
        ['composed_nodes']
    assert sorted(n.expanded_node_namespace for n in ev.nodes) == sorted(
        [base, base, base, base + '/zed', base + '/marigold']), \
        [n.expanded_node_namespace for n in ev.nodes]


@needs_launch
@MODES
@PUSHED
def test_under_a_pushed_namespace_log_level_reaches_the_namespaced_loggers(
        monkeypatch, composed, namespace, base):
    from launch import LaunchContext
    from launch.utilities import perform_substitutions
    _, ev = _evaluate(monkeypatch, namespace=namespace, composed=composed, source='sample',
                      backend='standin', log_level='debug')
    dots = base.strip('/').replace('/', '.') + '.'
    loggers = {'zed_node': dots + 'zed.zed_node', 'depth_node': dots + 'depth_node',
               'alignment_node': dots + 'alignment_node'}
    told = []
    for process in ev.processes:
        if process.node_package != 'depth_ros':
            continue
        cmd = ev.glob if process.node_executable == 'composed_nodes' else [
            a if isinstance(a, str) else perform_substitutions(LaunchContext(), a)
            for a in process._Node__ros_arguments or []]
        told += [cmd[i + 1] for i, a in enumerate(cmd) if a == '--log-level']
    # rcl names a node's logger by its full name (robot1.zed.zed_node); composed_nodes' own
    # logger is the process's, not a node's.
    want = sorted('{}:=debug'.format(name) for name in loggers.values())
    assert sorted(t for t in told if not t.startswith('composed_nodes:')) == want, told
    assert [t for t in told if t.startswith('composed_nodes:')] == \
        (['composed_nodes:=debug'] if composed == 'true' else []), told


@needs_launch
@PUSHED
def test_under_a_pushed_namespace_the_shipped_params_file_still_reaches_every_node(
        monkeypatch, tmp_path, namespace, base):
    from depth_ros.nodes_core.params import node_key_matches
    with open(PARAMS_FILE) as f:
        keys = list(yaml.safe_load(f))
    # config/zed_depth.yaml keys its sections /**/<node>: any namespace, the pushed one too.
    # (marigold_node has none: its parameters are its declared defaults.)
    for name in OURS:
        assert [k for k in keys if node_key_matches(k, base + name)] == \
            [k for k in keys if node_key_matches(k, name)] != [] or name == '/marigold_node', \
            (name, keys)
    # zed_node's source and path from a params file, checked as at the root: the launch
    # reads them for the node's full name (a section keyed by it, too).
    robot = tmp_path / 'robot.yaml'
    robot.write_text(base + '/zed/zed_node:\n  ros__parameters:\n    source: bag\n')
    with pytest.raises(ValueError) as info:
        _evaluate(monkeypatch, namespace=namespace, params_file=str(robot), backend='standin')
    assert str(info.value) == 'source: bag in {} needs path:=<rosbag2 folder>'.format(robot)


@needs_launch
@MODES
@PUSHED
def test_under_a_pushed_namespace_a_params_file_key_that_misses_our_node_is_told(
        monkeypatch, tmp_path, composed, namespace, base):
    # rcl matches a node key against the node's full name: `/zed/zed_node:` (right at the
    # root) and `depth_node:` miss /robot1/zed/zed_node and /robot1/depth_node.
    robot = tmp_path / 'robot.yaml'

    def told(text):
        robot.write_text(text)
        _, ev = _evaluate(monkeypatch, namespace=namespace, composed=composed,
                          params_file=str(robot), source='sample', backend='standin')
        return [line for line in ev.log if str(robot) in line]
    section = '  ros__parameters:\n    qos_depth: 3\n'
    assert told('/zed/zed_node:\n' + section) == [
        'params_file:={0}: its section `/zed/zed_node` is ignored: zed_node runs as '
        '{1}/zed/zed_node, and a node key is a full name: it matches only /zed/zed_node; write '
        '`/**/zed_node:` (any namespace) or `{1}/zed/zed_node:`'.format(robot, base)]
    assert told('depth_node:\n' + section) == [
        'params_file:={0}: its section `depth_node` is ignored: depth_node runs as '
        '{1}/depth_node, and a node key without a namespace matches only /depth_node; write '
        '`/**/depth_node:` (any namespace) or `{1}/depth_node:`'.format(robot, base)]
    for key in ('/**/zed_node', base + '/zed/zed_node', base + '/depth_node', '/**',
                '/front/zed_node', 'planner'):
        assert told('{}:\n{}'.format(key, section)) == [], key


@needs_launch
@PUSHED
def test_under_a_pushed_namespace_rviz_shows_the_namespaced_topics(monkeypatch, namespace, base):
    # rviz/zed_depth.rviz names absolute topics: remapped under the pushed namespace (its
    # frames and /tf do not change).
    _, root = _evaluate(monkeypatch, source='sample', backend='standin', rviz='true',
                        tf2_ros=True)
    _, ev = _evaluate(monkeypatch, namespace=namespace, source='sample', backend='standin',
                      rviz='true', tf2_ros=True)
    assert root.remaps(root.by_exe('rviz2')[0]) == {}
    topics = ['/alignment_node/colored', '/alignment_node/depth', '/alignment_node/points',
              '/zed/zed_node/left/image_rect_color']
    assert ev.remaps(ev.by_exe('rviz2')[0]) == {t: base + t for t in topics}
    assert ev.by_exe('rviz2')[0].node_name == base + '/rviz2'


@needs_launch
@pytest.mark.parametrize('namespace, base', [(None, ''), ('robot1', '/robot1')])
def test_rviz_follows_camera_name(monkeypatch, namespace, base):
    # rviz/zed_depth.rviz names /zed/zed_node/left/image_rect_color and the fixed frame
    # zed_left_camera_frame; with camera_name:=robot1_zed (docs/ros.md, two robots on one
    # domain) zed_node's image is /robot1/robot1_zed/zed_node/... and the frames robot1_zed_*:
    # the image display was empty and the fixed frame did not exist.
    from launch import LaunchContext
    from launch.utilities import perform_substitutions
    _, ev = _evaluate(monkeypatch, namespace=namespace, source='sample', backend='standin',
                      rviz='true', tf2_ros=True, camera_name='robot1_zed')
    rviz = ev.by_exe('rviz2')[0]
    assert ev.remaps(rviz)['/zed/zed_node/left/image_rect_color'] == \
        base + '/robot1_zed/zed_node/left/image_rect_color'
    args = []
    for part in rviz.cmd[1:]:     # the executable, then the arguments, then --ros-args
        args.append(perform_substitutions(LaunchContext(), part))
        if args[-1] == '--ros-args':
            break
    assert '-f' in args and args[args.index('-f') + 1] == 'robot1_zed_left_camera_frame', args

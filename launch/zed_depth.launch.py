"""
Launch the ZED2 metric-depth graph: zed_node -> depth_node -> alignment_node (+ options).

    ros2 launch depth_ros zed_depth.launch.py                       # live ZED2, backend/model auto
    ros2 launch depth_ros zed_depth.launch.py engine:=da2_vits_518x294_fp16_<key>.engine
    ros2 launch depth_ros zed_depth.launch.py source:=sample backend:=standin rviz:=true
    ros2 launch depth_ros zed_depth.launch.py source:=bag path:=/data/zed_bag model:=vits.onnx
    ros2 launch depth_ros zed_depth.launch.py zed_node:=false    # next to the official wrapper
    ros2 launch depth_ros zed_depth.launch.py composed:=false    # one process per node

composed:=true (the default) runs our nodes as Node objects in one process (composed_nodes),
where zed_node hands its frames to depth_node, and depth_node (frame, disparity) to
alignment_node, by reference; composed:=false starts one process per node, joined by topics.
zed_node:=false (the official wrapper's topics) runs separate processes.

Every node reads config/zed_depth.yaml (override with params_file:=); the launch arguments given
(on the command line, or by an including launch file) override the entries they name, and
those not given leave the file's values, except camera_name (the namespace, topics and frames
follow the argument). Written for ROS 2 Humble (launch, launch_ros).

Included under ``PushRosNamespace('robot1')`` (a GroupAction of a robot's launch file), every
node of ours runs under /robot1 in both modes (/robot1/zed/zed_node, /robot1/depth_node, ...),
wired to the topics of that namespace; TF frame ids follow camera_name alone.
"""
import difflib
import os
import re
import signal
import sys
import tempfile

from ament_index_python.packages import get_package_prefix, get_package_share_directory, \
    PackageNotFoundError
from depth_ros.nodes_core import config, middleware
from depth_ros.nodes_core.config import DEPTH_BACKENDS, SOURCES
from depth_ros.nodes_core.params import file_values, keys_missing_namespace, \
    params_file_error
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction, \
    SetEnvironmentVariable, Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
import yaml

PACKAGE = 'depth_ros'
ZED2_BASELINE_M = 0.12   # stereo baseline of the ZED2 (and ZED); the ZED Mini's is 0.063

ARGUMENTS = (
    ('source', 'live', 'frame source: live | svo | sample | folder | bag'),
    ('path', '', 'SVO file, stereo folder or rosbag2 path (source svo, folder, bag)'),
    ('backend', 'auto', 'depth backend: auto | tensorrt | onnxruntime | torch | standin '
     '(auto: tensorrt where TensorRT and a GPU answer, else onnxruntime; standin is a '
     'fixed-latency stand-in for tests, not a model)'),
    ('model', 'auto', 'auto (Depth Anything V2 Small: engine cache, prepared ONNX, Hugging Face '
     'cache or download, once), or an ONNX file, TensorRT engine, checkpoint or hub id'),
    ('engine', '', 'TensorRT engine inside the engine cache (a path or a bare file name); '
     'implies backend tensorrt and becomes depth_node\'s model_path'),
    ('engine_cache_dir', '', 'engine cache directory of the tensorrt backend (empty: '
     '$DEPTH_ROS_ENGINE_CACHE or ~/.cache/depth_ros/engines)'),
    ('camera_name', 'zed', 'camera name; frames are <camera_name>_left_camera_optical_frame'),
    ('zed_node', 'true', 'start our zed_node; false when the official zed-ros2-wrapper runs '
     '(its topics have the same names)'),
    ('publish_tf', 'true', 'publish the static TFs <camera>_camera_link -> '
     '<camera>_left_camera_frame -> <camera>_left_camera_optical_frame (false when a wrapper '
     'or URDF provides them; skipped with one line where tf2_ros is not installed)'),
    ('composed', 'true', 'run our nodes in one process (composed_nodes: arrays handed over by '
     'reference between zed_node, depth_node and alignment_node, topics still published for '
     'outside subscribers); false: one process per node. zed_node:=false runs separate '
     'processes'),
    ('rviz', 'false', 'open RViz with rviz/zed_depth.rviz'),
    ('marigold', 'false', 'also run marigold_node and a second alignment_node for its keyframes'),
    ('reliability', 'best_effort', 'QoS of image and cloud topics: best_effort | reliable '
     '(RViz on Humble subscribes reliable: the shipped .rviz file asks for best effort)'),
    ('params_file', '', 'parameters file (default: share/depth_ros/config/zed_depth.yaml); '
     'the arguments given override its entries, those not given leave them (camera_name is '
     'always the argument\'s)'),
    ('fastdds_profile', 'true', 'use config/fastdds_large_messages.xml (shared-memory segments '
     'for whole images) unless a Fast DDS profile is already set in the environment'),
    ('clean_shm', 'true', 'remove the Fast DDS shared-memory segments that killed processes '
     'left in /dev/shm (`fastdds shm clean`: only segments no live process holds; where Fast '
     'DDS is the RMW, and one line only when it removed something)'),
    ('cyclonedds_config', 'true', 'use config/cyclonedds_large_messages.xml (socket receive '
     'buffer and message size for whole images; with ROS_LOCALHOST_ONLY=1 also '
     'config/cyclonedds_localhost.xml) unless CYCLONEDDS_URI is already set'),
    ('log_level', 'info', "log level of our nodes' loggers (not rcl's nor the RMW's): debug | "
     'info | warn | error | fatal'),
)
RELIABILITIES = ('best_effort', 'reliable')
# The launch configuration that names the arguments given (see _note_given).
GIVEN = 'depth_ros_given_arguments'

LOG_LEVELS = ('debug', 'info', 'warn', 'error', 'fatal')
# The live camera and the replay sources that read a file or folder.
PATH_SOURCES = ('svo', 'folder', 'bag')


def _truthy(value):
    if value.lower() in ('true', '1', 'yes', 'on'):
        return True
    if value.lower() in ('false', '0', 'no', 'off'):
        return False
    raise ValueError('expected true or false, got {!r}'.format(value))


def _nonempty(base, **values):
    # An empty string is not a valid parameter override in launch_ros: leave those to the
    # params file, whose defaults are empty.
    out = dict(base)
    out.update({k: v for k, v in values.items() if v != ''})
    return out


def _note_given(context):
    """
    Record which of our arguments were given, before their declarations set the defaults.

    A default passed on to the nodes overrode the params file: ``source: sample`` or
    ``reliability: reliable`` in ``params_file:=`` gave way to ``live`` and ``best_effort``
    without a word. Only the arguments given (``name:=value`` on the command line, or an
    including launch file's) override the file.
    """
    context.launch_configurations[GIVEN] = ' '.join(
        name for name, _, _ in ARGUMENTS if name in context.launch_configurations)
    return []


def _given_only(arg, given, **pairs):
    """Keep the parameter=argument pairs whose argument was given (all, where unknown)."""
    return {param: arg[name] for param, name in pairs.items() if given is None or name in given}


def _source_and_path(arg, given, params_file, base=''):
    """
    Return zed_node's source and path, and where each comes from (an argument or the file).

    An argument given wins; one not given leaves the params file's value for zed_node, if the
    file sets one (``source: bag`` and ``path:`` in the file, ``source:=bag`` alone on the
    command line), else the argument's default.
    """
    names = [n for n in ('source', 'path') if given is not None and n not in given]
    found = file_values(params_file, _fqn(base, arg['camera_name'], 'zed_node'), names) \
        if names and os.path.isfile(params_file) else {}
    return {n: (str(found[n]) if found.get(n) is not None else arg[n],
                'in {}'.format(params_file) if n in found else 'launch argument')
            for n in ('source', 'path')}


def _check_source_and_path(arg, located):
    """Refuse zed_node's source and path as :func:`_source_and_path` located them."""
    def what(name):
        value, where = located[name]
        if where == 'launch argument':
            return '{} {}:={}'.format(where, name, value)
        return '{}: {} {}'.format(name, value, where)
    source, path = located['source'][0], located['path'][0]
    if source not in SOURCES:       # from the params file (the argument was checked before)
        raise ValueError('{} must be one of {}'.format(what('source'), ' | '.join(SOURCES)))
    if source in PATH_SOURCES and not path and _truthy(arg['zed_node']):
        raise ValueError('{} needs path:=<{}>'.format(what('source'), {
            'svo': 'file.svo2', 'folder': 'folder', 'bag': 'rosbag2 folder'}[source]))
    if path and source not in PATH_SOURCES:
        raise ValueError('{} is only for source:=svo|folder|bag, got {}'.format(
            what('path'), what('source').replace('launch argument ', '')))
    if path and _truthy(arg['zed_node']) and not os.path.exists(os.path.expanduser(path)):
        raise ValueError('{} does not exist'.format(what('path')))


def _check_arguments(arg, located=None):
    """
    Refuse argument values the nodes would refuse, before any node starts (one line).

    ``located``: zed_node's source and path as :func:`_source_and_path` finds them (default:
    the arguments').
    """
    def one_of(name, choices):
        if arg[name] not in choices:
            raise ValueError('launch argument {}:={} must be one of {}'.format(
                name, arg[name], ' | '.join(choices)))
    one_of('source', SOURCES)
    one_of('backend', DEPTH_BACKENDS)
    one_of('reliability', RELIABILITIES)
    one_of('log_level', LOG_LEVELS)
    if not re.match(r'^[A-Za-z_][A-Za-z0-9_]*$', arg['camera_name']):
        # It becomes zed_node's namespace: rcl refused it only once the node started.
        raise ValueError('launch argument camera_name:={} must be a ROS name: letters, digits '
                         'and underscores, not starting with a digit'.format(arg['camera_name']))
    for name in ('zed_node', 'publish_tf', 'rviz', 'marigold', 'fastdds_profile', 'clean_shm',
                 'cyclonedds_config', 'composed'):
        # Before the path check, which asks whether zed_node runs.
        try:
            _truthy(arg[name])
        except ValueError:
            raise ValueError('launch argument {}:={} must be true or false'.format(
                name, arg[name])) from None
    _check_source_and_path(arg, located or {n: (arg[n], 'launch argument')
                                            for n in ('source', 'path')})
    if arg['params_file'] and not os.path.isfile(arg['params_file']):
        raise ValueError('launch argument params_file:={} is not a file'.format(
            arg['params_file']))
    if arg['params_file']:
        # Here, before any process starts: one line naming the argument, not the FATAL line
        # of whichever node read it first and launch's "process has died" line.
        problem = params_file_error(['--ros-args', '--params-file', arg['params_file']])
        if problem:
            raise ValueError('launch argument params_file:={}'.format(
                problem[len('--params-file '):]))
    if _truthy(arg['rviz']) and not _installed('rviz2'):
        # Here, before any process starts: launch's own "package 'rviz2' not found" came
        # after the nodes had started, and left them running when the launch exited.
        raise ValueError('launch argument rviz:=true needs the rviz2 package, which is not '
                         'installed (install it, or leave rviz:=false)')


def _installed(package):
    try:
        get_package_prefix(package)
    except PackageNotFoundError:
        return False
    return True


def _depth_backend(arg):
    """Return (backend, model_path) from the backend, model and engine arguments."""
    engine, backend = arg['engine'], arg['backend']
    if not engine:
        return backend, arg['model']
    if arg['model'] not in ('', 'auto', engine):
        raise ValueError('give either model:= or engine:=, got model:={} engine:={}'.format(
            arg['model'], engine))
    if engine.strip().lower().endswith('.onnx'):
        # It ran: the tensorrt backend builds an engine from an ONNX file. model:= says so.
        raise ValueError('engine:= names a TensorRT engine (.engine, .plan or a name in the '
                         'engine cache), got {0}: give an ONNX file as model:={0} (backend auto '
                         'builds its engine where TensorRT is installed)'.format(engine))
    # engine:= alone (backend auto) means tensorrt.
    if backend not in ('tensorrt', 'auto'):
        raise ValueError('engine:= needs backend tensorrt, got backend:={}'.format(backend))
    return 'tensorrt', engine


def _environment(arg, share):
    """
    Each RMW's configuration for whole images, and stale Fast DDS segments.

    Fast DDS: the profile, in the variable the installed Fast DDS reads. Cyclone DDS:
    CYCLONEDDS_URI, and one line when the kernel caps the receive buffer it asks for.
    """
    actions = []
    config = os.path.join(share, 'config')
    profile = os.path.join(config, 'fastdds_large_messages.xml')
    if _truthy(arg['fastdds_profile']) and os.path.exists(profile):
        actions += [SetEnvironmentVariable(name, value) for name, value in
                    sorted(middleware.profile_environment(profile).items())]
    cyclone = os.path.join(config, middleware.CYCLONEDDS_CONFIG)
    if _truthy(arg['cyclonedds_config']) and os.path.exists(cyclone):
        uri = middleware.cyclonedds_environment(config)
        actions += [SetEnvironmentVariable(name, value) for name, value in sorted(uri.items())]
        note = middleware.receive_buffer_note(cyclone, dict(os.environ, **uri))
        if note:
            actions.append(LogInfo(msg=note))
    if _truthy(arg['clean_shm']):
        # Fast DDS's segments only, where Fast DDS is the RMW; a line only when something
        # was removed or the tool failed.
        note = middleware.shm_clean_note()
        if note:
            actions.append(LogInfo(msg=note))
    return actions


def _pushed(context):
    """Return the namespace an including launch file pushed (PushRosNamespace), or ''."""
    return ''.join('/' + p for p in (context.launch_configurations.get('ros_namespace') or
                                     '').split('/') if p)


def _fqn(base, namespace, name):
    """Return a node's full name: the pushed namespace ``base``, its own, and its name."""
    return '/'.join([base] + [p for p in (namespace, name) if p])


def _logger(fqn):
    """Return a node's logger name as rcl forms it: its full name's parts, by dots."""
    return '.'.join(p for p in fqn.split('/') if p)


def _log_arguments(level, loggers):
    """
    ROS arguments for the level of ``loggers``, our nodes' (none for info: rcl's own default).

    One ``--log-level NAME:=LEVEL`` each (rcl: a logger's children follow it), not the
    process's default level: ``--log-level debug`` also gave rcl's and the RMW's debug lines
    (973 lines in the first 14 s of ``source:=sample``, none of them ours).
    """
    if level == 'info':
        return []
    arguments = []
    for logger in loggers:
        arguments += ['--log-level', '{}:={}'.format(logger, level)]
    return arguments


def _exit_line(label, code):
    """Return the line that names the process and how it ended (code: Popen's returncode)."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = 'signal {}'.format(-code)
        return '{} was killed by {} (exit code {}): the launch stops, and exits 1'.format(
            label, name, code)
    return '{} exited with code {}: the launch stops, and exits 1'.format(label, code)


def _on_exit(label):
    """
    Return the handler of one of our processes' exit: the launch ends with it.

    Exit 0 (the node was stopped on its own) is a Shutdown: ``ros2 launch`` exits 0. Any other
    code (a FATAL line at start-up, a node that gave up mid-run, a crash, SIGKILL) raises,
    which launch (Humble and Kilted) logs as one line, ``Caught exception in launch (see
    debug for traceback): <label> exited with code 1: ...``, then shuts the others down and
    exits 1: a Shutdown action alone made ``ros2 launch`` exit 0 whatever the code. A process
    that exits while the launch is already shutting down (Ctrl-C, another node's exit) is
    part of that stop: nothing more is said, and the launch's exit code stays as it is.
    """
    def on_exit(event, context):
        if context.is_shutdown:
            return None
        if event.returncode == 0:
            return Shutdown(reason='{} exited'.format(label))
        raise RuntimeError(_exit_line(label, event.returncode))
    return on_exit


# Our processes stop with the launch: a ``ros2 launch`` that dies without stopping them
# (SIGTERM or SIGKILL to it alone: launch has no handler for SIGTERM unless one is installed
# in Python, and then it only cancels its run) has the kernel send them SIGTERM. See
# depth_ros/ros/entry.py.
def _launch_env():
    return {'DEPTH_ROS_LAUNCH_PID': str(os.getpid())}


def _ours(executable, name, namespace=None, log_level='info', base='', **kwargs):
    """
    One of our nodes: when it exits (a FATAL line at start-up), the launch ends with it.

    ``namespace`` is relative: launch_ros puts it under the pushed namespace ``base``.
    """
    fqn = _fqn(base, namespace, name)
    label = fqn.lstrip('/')
    return Node(package=PACKAGE, executable=executable, name=name, namespace=namespace,
                output='screen', emulate_tty=True,
                ros_arguments=_log_arguments(log_level, [_logger(fqn)]) or None,
                on_exit=_on_exit(label), additional_env=_launch_env(), **kwargs)


def _spec(executable, name, namespace=None, parameters=(), remappings=(), source=None):
    """One of our nodes, to start as a process (_ours) or inside composed_nodes (_composed)."""
    return {'executable': executable, 'name': name, 'namespace': namespace,
            'parameters': list(parameters), 'remappings': list(remappings), 'source': source}


def _params_file(fqn, values):
    """Write ``values`` as a parameters file for the node ``fqn`` (as launch_ros does)."""
    handle, path = tempfile.mkstemp(prefix='depth_ros_{}_'.format(fqn.strip('/').replace(
        '/', '_')), suffix='.yaml')
    with os.fdopen(handle, 'w') as f:
        yaml.safe_dump({fqn: {'ros__parameters': dict(values)}}, f, default_flow_style=False)
    return path


def _composed(specs, log_level='info', base=''):
    """
    Return one composed_nodes process running ``specs``.

    A ``--node`` section each, whose node-local ROS arguments are the name, namespace,
    parameter files and remappings the node would get as a process of its own; ``--from``
    wires it in-process to its producer. The log level is that of our nodes' loggers and the
    process's own (global arguments). A section's namespace is absolute: the pushed one
    ``base`` (launch_ros gives the process's Node action alone) and the node's own.
    """
    fqns = [_fqn(base, spec['namespace'], spec['name']) for spec in specs]
    level = _log_arguments(log_level, ['composed_nodes'] + [_logger(f) for f in fqns])
    arguments = ['--ros-args'] + level + ['--'] if level else []
    for spec, fqn in zip(specs, fqns):
        arguments += ['--node', spec['executable']]
        if spec['source']:
            arguments += ['--from', spec['source']]
        arguments += ['--ros-args', '-r', '__node:=' + spec['name']]
        if fqn.rpartition('/')[0]:
            arguments += ['-r', '__ns:=' + fqn.rpartition('/')[0]]
        for item in spec['parameters']:
            path = item if isinstance(item, str) else _params_file(fqn, item)
            arguments += ['--params-file', path]
        for src, dst in spec['remappings']:
            arguments += ['-r', '{}:={}'.format(src, dst)]
        arguments.append('--')
    return Node(package=PACKAGE, executable='composed_nodes', output='screen',
                emulate_tty=True, arguments=arguments, additional_env=_launch_env(),
                on_exit=_on_exit('composed_nodes ({})'.format(', '.join(
                    f.lstrip('/') for f in fqns))))


def _static_tfs(camera):
    if not _installed('tf2_ros'):
        return [LogInfo(msg='publish_tf: package tf2_ros is not installed, so the static TFs '
                            '{0}_camera_link -> {0}_left_camera_frame -> {0}_left_camera_'
                            'optical_frame are not published (install tf2_ros, or set '
                            'publish_tf:=false to silence this)'.format(camera))]
    # The ZED2's left camera sits half the 0.12 m baseline left of the camera's centre
    # (REP 103 body frame: +y is left); the camera link is taken at that centre.
    # REP 103: the optical frame is the camera frame rotated (x right, y down, z forward).
    chain = [('{}_camera_link', '{}_left_camera_frame', '{}_left_camera_tf',
              ('0', str(ZED2_BASELINE_M / 2.0), '0'), ('0', '0', '0')),
             ('{}_left_camera_frame', '{}_left_camera_optical_frame', '{}_optical_frame_tf',
              ('0', '0', '0'), ('-1.5707963267948966', '0', '-1.5707963267948966'))]
    actions = []
    for parent, child, name, xyz, rpy in chain:
        actions.append(Node(
            package='tf2_ros', executable='static_transform_publisher',
            name=name.format(camera), output='log',
            arguments=['--x', xyz[0], '--y', xyz[1], '--z', xyz[2],
                       '--roll', rpy[0], '--pitch', rpy[1], '--yaw', rpy[2],
                       '--frame-id', parent.format(camera),
                       '--child-frame-id', child.format(camera)]))
    return actions


def _rviz_topics(path):
    """Return the topics of an RViz config's displays (absolute names, as written)."""
    with open(path) as f:
        displays = (yaml.safe_load(f).get('Visualization Manager') or {}).get('Displays') or []
    return sorted({d['Topic']['Value'] for d in displays
                   if isinstance(d.get('Topic'), dict) and d['Topic'].get('Value')})


RVIZ_ZED = '/zed/zed_node'   # zed_node and the frames' prefix as rviz/zed_depth.rviz names them


def _rviz(path, base, zed=RVIZ_ZED, camera='zed'):
    """
    Return the rviz2 node for ``path``; under a pushed namespace ``base``, its topics there.

    The config names /alignment_node/points and the like (absolute names: rcl does not put them
    under RViz's namespace); frames and /tf do not change with the namespace. zed_node's
    topics and the fixed frame follow camera_name (``zed``: zed_node's full name; ``camera``:
    the frames' prefix).
    """
    remaps = []
    for t in _rviz_topics(path):
        to = zed + t[len(RVIZ_ZED):] if t.startswith(RVIZ_ZED + '/') else \
            base + t if t.startswith('/') else t
        if to != t:
            remaps.append((t, to))
    frame = ['-f', camera + '_left_camera_frame'] if camera != RVIZ_ZED.split('/')[1] else []
    return Node(package='rviz2', executable='rviz2', name='rviz2', output='log',
                arguments=['-d', path] + frame, remappings=remaps or None)


def _marigold(params_file, qos, image, inputs, composed, base=''):
    # Keyframes arrive seconds after their camera frame: a 10 s latency bound, and the colour
    # image left out of the waiting sets (a third of their bytes); marigold_node announces the
    # frame each keyframe starts on, whose stereo set is kept (docs/marigold.md). Composed,
    # marigold_node takes zed_node's frames in-process; its alignment_node reads topics: the
    # keyframes are paired by stamp.
    return [
        _spec('marigold_node', 'marigold_node', parameters=[params_file, qos],
              remappings=[('image', image)], source=composed and 'zed_node'),
        _spec('alignment_node', 'alignment_node', namespace='marigold',
              parameters=[params_file, dict(qos, relative_kind='depth', pairing_window_s=10.0,
                                            use_image=False)],
              remappings=[('disparity', base + '/marigold_node/depth'),
                          ('inference_started', base + '/marigold_node/keyframe_started')]
              + inputs),
    ]


# Set by ros2 launch itself (its --launch-prefix and --launch-prefix-filter options).
ROS2_LAUNCH_OWN = ('launch-prefix', 'launch-prefix-filter')
# Node parameters that are set through a launch argument of another name.
PARAMETER_ARGUMENTS = {'model_path': 'model'}


def _launched_directly(argv=None):
    """
    Whether ``ros2 launch`` was given this file, not a launch file that includes it.

    ``ros2 launch depth_ros zed_depth.launch.py ...`` or ``ros2 launch <path of this file>``;
    a launch file of the robot's that includes this one has other names on its command line.
    """
    tokens = [a for a in (sys.argv if argv is None else argv)[1:] if ':=' not in a]
    if 'launch' not in tokens:
        return False
    mine = os.path.realpath(__file__)
    for i, token in enumerate(tokens):
        if os.path.basename(token) != os.path.basename(mine):
            continue
        if os.path.dirname(token):
            if os.path.realpath(token) == mine:
                return True
        elif i > 0 and tokens[i - 1] == PACKAGE:
            return True
        elif i > 0 and (tokens[i - 1] == 'launch' or tokens[i - 1].startswith('-')) and \
                os.path.realpath(token) == mine:
            return True     # its bare name, in its folder: ros2 launch's single-file mode
    return False


def _whose(name):
    """Our nodes that declare parameter ``name`` (rclpy's use_sim_time: all of them)."""
    return [node for node, params in config.NODE_PARAMS.items()
            if name == 'use_sim_time' or name in {p.name for p in params}]


def _unknown_argument(name, value, names, refuse):
    """Return the line for a name:=value that is not one of our arguments (None: say nothing)."""
    head = 'launch argument {}:={} is not one of zed_depth.launch.py\'s{}: '.format(
        name, value, '' if refuse else ', and is ignored')
    close = [PARAMETER_ARGUMENTS[name]] if name in PARAMETER_ARGUMENTS else \
        difflib.get_close_matches(name, names, n=1, cutoff=0.8)
    if close:
        return head + 'did you mean {}:=?'.format(close[0])
    nodes = _whose(name)
    if nodes:
        return head + '`{}` is a parameter of {}: set it in a parameters file given as ' \
            'params_file:= (a copy of config/zed_depth.yaml)'.format(name, ', '.join(nodes))
    if refuse:
        return head + 'ros2 launch depth_ros zed_depth.launch.py --show-args lists them'
    return None


def _misspelt(given, argv=(), directly=False):
    """
    Return (refused, told): lines for launch configurations that are not arguments of this file.

    ``ros2 launch`` takes any ``name:=value``, and launch ignores a name the file does not
    declare: a typo (``publish_ft:=false``) or a node's parameter (``cloud_stride:=4``) changed
    nothing, in silence. Given on the command line of ``ros2 launch`` run on this file
    (``directly``), each is refused: the launch ends with them, before any node starts.
    Otherwise (a parent launch file's own configurations reach this context too) only a name
    close to one of ours, or a parameter of our nodes, is told, and the launch goes on.
    """
    names = [name for name, _, _ in ARGUMENTS]
    typed = {a.split(':=', 1)[0] for a in argv if ':=' in a}
    refused, told = [], []
    for name in sorted(set(given) - set(names) - {GIVEN} - set(ROS2_LAUNCH_OWN)):
        refuse = directly and name in typed
        line = _unknown_argument(name, given[name], names, refuse)
        if line:
            (refused if refuse else told).append(line)
    return refused, told


def _missed_sections(params_file, specs, base=''):
    """
    Lines for the params file's sections keyed by a part of our node's full name.

    rcl applies ``zed_node:`` to /zed_node: zed_node ran on its defaults in silence
    (``source: sample`` in the file gave a FATAL "source 'live' is not available" that named
    nothing of the file). Under a pushed namespace (``base``), ``/zed/zed_node:`` misses
    /robot1/zed/zed_node the same way.
    """
    fqns = [_fqn(base, s['namespace'], s['name']) for s in specs]
    return ['params_file:={}: its section `{}` is ignored: {} runs as {}, and a node key {} '
            'matches only /{}; write `/**/{}:` (any namespace) or `{}:`'
            .format(params_file, key, fqn.rpartition('/')[2], fqn,
                    'without a namespace' if '/' not in key.strip('/') else 'is a full name: it',
                    key.strip('/'), fqn.rpartition('/')[2], fqn)
            for key, fqn in keys_missing_namespace(params_file, fqns)]


def _nodes(context):
    arg = {name: LaunchConfiguration(name).perform(context) for name, _, _ in ARGUMENTS}
    arg['log_level'] = arg['log_level'].lower()
    # The shell leaves the `~` of params_file:=~/robot.yaml alone (not a word's start).
    arg['params_file'] = os.path.expanduser(arg['params_file'])
    share = get_package_share_directory(PACKAGE)
    params_file = arg['params_file'] or os.path.join(share, 'config', 'zed_depth.yaml')
    noted = context.launch_configurations.get(GIVEN)
    given = None if noted is None else set(noted.split())
    refused, told = _misspelt(context.launch_configurations, context.argv,
                              _launched_directly())
    if refused:
        raise ValueError('; '.join(refused))
    base = _pushed(context)     # '/robot1' under an including file's PushRosNamespace
    _check_arguments(arg, _source_and_path(arg, given, params_file, base))
    camera = arg['camera_name']
    # zed-ros2-wrapper 4.x: /<camera>/zed_node/...; our topics, under the pushed namespace.
    zed = _fqn(base, camera, 'zed_node')
    image = zed + '/left/image_rect_color'
    qos = _given_only(arg, given, reliability='reliability')
    actions = [LogInfo(msg=line) for line in told]
    actions += _environment(arg, share)
    with_zed = _truthy(arg['zed_node'])
    composed = _truthy(arg['composed'])
    if composed and not with_zed:
        actions.append(LogInfo(msg='composed:=true runs our nodes in one process with our '
                                   'zed_node; with zed_node:=false they run as separate '
                                   'processes on the camera topics'))
        composed = False
    if not with_zed and (arg['source'] != 'live' or arg['path']):
        actions.append(LogInfo(msg='source:={} path:={} are our zed_node\'s: with '
                                   'zed_node:=false they are not used (the camera topics come '
                                   'from the running wrapper)'.format(arg['source'],
                                                                      arg['path'])))
    specs = []
    if with_zed:
        specs.append(_spec('zed_node', 'zed_node', namespace=camera, parameters=[
            params_file, _nonempty(dict(qos, camera_name=camera), **_given_only(
                arg, given, source='source', path='path'))]))
    backend, model_path = _depth_backend(arg)
    model = _given_only(dict(arg, backend=backend, model=model_path), given,
                        backend='backend', model_path='model', engine_cache_dir='engine_cache_dir')
    if arg['engine']:
        model.update(backend=backend, model_path=model_path)   # engine:= sets both
    depth_params = _nonempty(qos, **model)
    specs.append(_spec('depth_node', 'depth_node', parameters=[params_file, depth_params],
                       remappings=[('image', image)], source=composed and 'zed_node'))
    inputs = [('depth_registered', zed + '/depth/depth_registered'),
              ('confidence', zed + '/confidence/confidence_map'),
              ('camera_info', zed + '/left/camera_info'),
              ('right_camera_info', zed + '/right/camera_info'), ('image', image)]
    specs.append(_spec('alignment_node', 'alignment_node', parameters=[params_file, qos],
                       remappings=[('disparity', base + '/depth_node/disparity'),
                                   ('inference_started', base + '/depth_node/inference_started')]
                       + inputs, source=composed and 'depth_node'))
    if _truthy(arg['marigold']):
        specs += _marigold(params_file, qos, image, inputs, composed, base)
    actions += [LogInfo(msg=line) for line in _missed_sections(params_file, specs, base)]
    if composed:
        actions.append(_composed(specs, arg['log_level'], base))
    else:
        actions += [_ours(s['executable'], s['name'], s['namespace'], arg['log_level'], base,
                          parameters=s['parameters'], remappings=s['remappings'])
                    for s in specs]
    if _truthy(arg['publish_tf']):
        actions += _static_tfs(camera)
    if _truthy(arg['rviz']):
        actions.append(_rviz(os.path.join(share, 'rviz', 'zed_depth.rviz'), base, zed, camera))
    return actions


def generate_launch_description():
    """Describe the graph with its launch arguments (see the module docstring)."""
    declared = [DeclareLaunchArgument(name, default_value=default, description=text)
                for name, default, text in ARGUMENTS]
    return LaunchDescription([OpaqueFunction(function=_note_given)] + declared +
                             [OpaqueFunction(function=_nodes)])

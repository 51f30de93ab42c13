"""
Launch the ZED2 metric-depth graph: zed_node -> depth_node -> alignment_node (+ options).

    ros2 launch depth_ros zed_depth.launch.py                       # live ZED2, ONNX Runtime
    ros2 launch depth_ros zed_depth.launch.py engine:=da2_vits_518x294_fp16_<key>.engine
    ros2 launch depth_ros zed_depth.launch.py source:=sample backend:=standin rviz:=true
    ros2 launch depth_ros zed_depth.launch.py source:=bag path:=/data/zed_bag model:=vits.onnx
    ros2 launch depth_ros zed_depth.launch.py zed_node:=false    # next to the official wrapper

Every node reads config/zed_depth.yaml (override with params_file:=); launch arguments override
the entries they name. Written for ROS 2 Humble (launch, launch_ros).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = 'depth_ros'
ZED2_BASELINE_M = 0.12   # stereo baseline of the ZED2 (and ZED); the ZED Mini's is 0.063

ARGUMENTS = (
    ('source', 'live', 'frame source: live | svo | sample | folder | bag'),
    ('path', '', 'SVO file, stereo folder or rosbag2 path (source svo, folder, bag)'),
    ('backend', 'onnxruntime', 'depth backend: tensorrt | onnxruntime | torch | standin '
     '(standin is a fixed-latency stand-in for tests, not a model)'),
    ('model', '', 'ONNX file, TensorRT engine or torch checkpoint for the backend'),
    ('engine', '', 'TensorRT engine inside the engine cache (a path or a bare file name); '
     'implies backend tensorrt and becomes depth_node\'s model_path'),
    ('engine_cache_dir', '', 'engine cache directory of the tensorrt backend (empty: '
     '$DEPTH_ROS_ENGINE_CACHE or ~/.cache/depth_ros/engines)'),
    ('camera_name', 'zed', 'camera name; frames are <camera_name>_left_camera_optical_frame'),
    ('zed_node', 'true', 'start our zed_node; false when the official zed-ros2-wrapper runs '
     '(its topics have the same names)'),
    ('publish_tf', 'true', 'publish the static TFs <camera>_camera_link -> '
     '<camera>_left_camera_frame -> <camera>_left_camera_optical_frame (false when a wrapper '
     'or URDF provides them)'),
    ('rviz', 'false', 'open RViz with rviz/zed_depth.rviz'),
    ('marigold', 'false', 'also run marigold_node and a second alignment_node for its keyframes'),
    ('reliability', 'best_effort', 'QoS of image and cloud topics: best_effort | reliable '
     '(RViz on Humble subscribes reliable: the shipped .rviz file asks for best effort)'),
    ('params_file', '', 'parameters file (default: share/depth_ros/config/zed_depth.yaml)'),
    ('fastdds_profile', 'true', 'use config/fastdds_large_messages.xml (shared-memory segments '
     'for whole images) unless a Fast DDS profile is already set in the environment'),
)


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


def _depth_backend(arg):
    """Return (backend, model_path) from the backend, model and engine arguments."""
    engine, backend = arg['engine'], arg['backend']
    if not engine:
        return backend, arg['model']
    if arg['model'] and arg['model'] != engine:
        raise ValueError('give either model:= or engine:=, got model:={} engine:={}'.format(
            arg['model'], engine))
    # backend keeps its default (onnxruntime) unless set: engine:= alone means tensorrt.
    if backend not in ('tensorrt', 'onnxruntime'):
        raise ValueError('engine:= needs backend tensorrt, got backend:={}'.format(backend))
    return 'tensorrt', engine


def _nodes(context):
    arg = {name: LaunchConfiguration(name).perform(context) for name, _, _ in ARGUMENTS}
    share = get_package_share_directory(PACKAGE)
    params_file = arg['params_file'] or os.path.join(share, 'config', 'zed_depth.yaml')
    camera = arg['camera_name']
    zed = '/{}/zed_node'.format(camera)   # zed-ros2-wrapper 4.x: /<camera>/zed_node/...
    image = zed + '/left/image_rect_color'
    qos = {'reliability': arg['reliability']}
    actions = []
    profile = os.path.join(share, 'config', 'fastdds_large_messages.xml')
    if _truthy(arg['fastdds_profile']) and os.path.exists(profile) and not (
            os.environ.get('FASTRTPS_DEFAULT_PROFILES_FILE')
            or os.environ.get('FASTDDS_DEFAULT_PROFILES_FILE')):
        # Fast DDS 2.x (Humble) reads the first name, Fast DDS 3 the second.
        actions += [SetEnvironmentVariable('FASTRTPS_DEFAULT_PROFILES_FILE', profile),
                    SetEnvironmentVariable('FASTDDS_DEFAULT_PROFILES_FILE', profile)]
    if _truthy(arg['zed_node']):
        actions.append(Node(
            package=PACKAGE, executable='zed_node', name='zed_node', namespace=camera,
            output='screen', emulate_tty=True,
            parameters=[params_file, _nonempty(qos, source=arg['source'], path=arg['path'],
                                               camera_name=camera)]))
    backend, model_path = _depth_backend(arg)
    actions.append(Node(
        package=PACKAGE, executable='depth_node', name='depth_node', output='screen',
        emulate_tty=True,
        parameters=[params_file, _nonempty(qos, backend=backend, model_path=model_path,
                                           engine_cache_dir=arg['engine_cache_dir'])],
        remappings=[('image', image)]))
    inputs = [('depth_registered', zed + '/depth/depth_registered'),
              ('confidence', zed + '/confidence/confidence_map'),
              ('camera_info', zed + '/left/camera_info'), ('image', image)]
    actions.append(Node(
        package=PACKAGE, executable='alignment_node', name='alignment_node', output='screen',
        emulate_tty=True, parameters=[params_file, qos],
        remappings=[('disparity', '/depth_node/disparity')] + inputs))
    if _truthy(arg['marigold']):
        actions.append(Node(
            package=PACKAGE, executable='marigold_node', name='marigold_node', output='screen',
            emulate_tty=True, parameters=[params_file, qos], remappings=[('image', image)]))
        # Keyframes arrive seconds after their camera frame: pair by age (a 10 s window)
        # rather than by count, and leave the colour image out of the waiting sets (a third of
        # their bytes); pairing_max_mb (params file) caps the memory (docs/ros.md).
        actions.append(Node(
            package=PACKAGE, executable='alignment_node', name='alignment_node',
            namespace='marigold', output='screen', emulate_tty=True,
            parameters=[params_file, dict(qos, relative_kind='depth', pairing_window_s=10.0,
                                          use_image=False)],
            remappings=[('disparity', '/marigold_node/depth')] + inputs))
    if _truthy(arg['publish_tf']):
        # The ZED2's left camera sits half the 0.12 m baseline left of the camera's centre
        # (REP 103 body frame: +y is left); the camera link is taken at that centre.
        actions.append(Node(
            package='tf2_ros', executable='static_transform_publisher',
            name='{}_left_camera_tf'.format(camera), output='log',
            arguments=['--x', '0', '--y', str(ZED2_BASELINE_M / 2.0), '--z', '0',
                       '--roll', '0', '--pitch', '0', '--yaw', '0',
                       '--frame-id', '{}_camera_link'.format(camera),
                       '--child-frame-id', '{}_left_camera_frame'.format(camera)]))
        # REP 103: the optical frame is the camera frame rotated (x right, y down, z forward).
        actions.append(Node(
            package='tf2_ros', executable='static_transform_publisher',
            name='{}_optical_frame_tf'.format(camera), output='log',
            arguments=['--x', '0', '--y', '0', '--z', '0',
                       '--roll', '-1.5707963267948966', '--pitch', '0',
                       '--yaw', '-1.5707963267948966',
                       '--frame-id', '{}_left_camera_frame'.format(camera),
                       '--child-frame-id', '{}_left_camera_optical_frame'.format(camera)]))
    if _truthy(arg['rviz']):
        actions.append(Node(
            package='rviz2', executable='rviz2', name='rviz2', output='log',
            arguments=['-d', os.path.join(share, 'rviz', 'zed_depth.rviz')]))
    return actions


def generate_launch_description():
    """Describe the graph with its launch arguments (see the module docstring)."""
    declared = [DeclareLaunchArgument(name, default_value=default, description=text)
                for name, default, text in ARGUMENTS]
    return LaunchDescription(declared + [OpaqueFunction(function=_nodes)])

"""
ros.conversions and the parameter callbacks with the real rclpy message classes, without a graph.

Clouds are checked against an independent decoder (rosbags' CDR reader and numpy), never the
writer's own inverse. The ROS-free plumbing is tested in test_nodes_core.py.
"""
import struct

from conftest import decode_cloud
from depth_ros.core.camera import PinholeCamera
from depth_ros.core.pointcloud import depth_to_cloud
from depth_ros.ros import conversions as conv
import numpy as np
import pytest

pytest.importorskip('sensor_msgs.msg', reason='ROS 2 message types are not installed')


def test_image_round_trip_keeps_header_values_and_nan():
    header = conv.make_header(1700000000123456789, 'cam_optical')
    depth = np.array([[1.0, np.nan], [np.inf, -np.inf], [0.5, 2.0]], np.float32)
    msg = conv.numpy_to_image(depth, '32FC1', header)
    assert (msg.height, msg.width, msg.step, msg.encoding, msg.is_bigendian) == \
        (3, 2, 8, '32FC1', 0), 'received {}'.format(msg)
    assert conv.stamp_to_ns(msg.header.stamp) == 1700000000123456789
    assert msg.header.frame_id == 'cam_optical' and msg.header is not header
    assert bytes(msg.data[:8]) == struct.pack('<2f', 1.0, float('nan'))
    np.testing.assert_array_equal(conv.image_to_numpy(msg), depth)


def test_image_from_rclpy_message_with_padding_and_bgr8():
    from sensor_msgs.msg import Image
    msg = Image(height=2, width=1, encoding='bgr8', step=4, is_bigendian=0,
                data=bytes([1, 2, 3, 0, 4, 5, 6, 0]))
    out = conv.image_to_numpy(msg)
    np.testing.assert_array_equal(out, np.array([[[1, 2, 3]], [[4, 5, 6]]], np.uint8))


def test_image_errors_name_the_problem():
    from sensor_msgs.msg import Image
    with pytest.raises(ValueError, match="unsupported image encoding 'yuv422'"):
        conv.image_to_numpy(Image(height=1, width=1, encoding='yuv422', step=2, data=b'\0\0'))
    with pytest.raises(ValueError, match=r'image `data` has 3 bytes but step\*height = 4\*1'):
        conv.image_to_numpy(Image(height=1, width=1, encoding='32FC1', step=4, data=b'\0\0\0'))
    with pytest.raises(ValueError, match="`array` has dtype float64 but encoding '32FC1'"):
        conv.numpy_to_image(np.zeros((2, 2)), '32FC1')


def test_camera_info_round_trip_and_projection_preferred():
    camera = PinholeCamera(500.0, 510.0, 320.5, 240.25, 640, 480)
    info = conv.camera_to_info(camera, conv.make_header(5, 'f'))
    assert list(info.k) == [500.0, 0.0, 320.5, 0.0, 510.0, 240.25, 0.0, 0.0, 1.0]
    assert list(info.p) == [500.0, 0.0, 320.5, 0.0, 0.0, 510.0, 240.25, 0.0, 0.0, 0.0, 1.0,
                            0.0]
    assert conv.camera_from_info(info) == camera
    # A rectified camera: P differs from K (the unrectified matrix); P is the one to use.
    info.k = [400.0, 0.0, 300.0, 0.0, 400.0, 200.0, 0.0, 0.0, 1.0]
    assert conv.camera_from_info(info) == camera
    assert conv.camera_from_info(info, use_projection=False).fx == 400.0
    half = conv.camera_from_info(info, 320, 240)
    assert half == camera.scaled(320, 240), 'expected {}, received {}'.format(
        camera.scaled(320, 240), half)


def test_camera_info_without_intrinsics_is_rejected():
    from sensor_msgs.msg import CameraInfo
    with pytest.raises(ValueError, match=r'camera_info has an invalid size 0x0'):
        conv.camera_from_info(CameraInfo())
    with pytest.raises(ValueError, match=r'camera_info.k has no valid intrinsics: fx=0.0'):
        conv.camera_from_info(CameraInfo(width=4, height=3))


def test_pointcloud2_layout_and_round_trip():
    camera = PinholeCamera(2.0, 2.0, 1.5, 0.5, 4, 2)
    depth = np.array([[1.0, 2.0, np.nan, 4.0], [1.0, np.inf, 3.0, 0.0]], np.float32)
    bgr = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    cloud = depth_to_cloud(depth, camera, bgr=bgr)
    header = conv.make_header(42, 'zed_left_camera_optical_frame')
    msg = conv.cloud_to_pointcloud2(cloud, header)
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == \
        [('x', 0, 7, 1), ('y', 4, 7, 1), ('z', 8, 7, 1), ('rgb', 12, 7, 1)]
    assert (msg.height, msg.width, msg.point_step, msg.row_step, msg.is_dense,
            msg.is_bigendian) == (2, 4, 16, 64, False, False)
    assert msg.header.frame_id == 'zed_left_camera_optical_frame' and \
        conv.stamp_to_ns(msg.header.stamp) == 42
    assert bytes(msg.data) == cloud.tobytes()
    back = decode_cloud(msg)
    # Point (row 0, col 0): z 1, x = (0 - 1.5) * 1 / 2, y = (0 - 0.5) * 1 / 2.
    assert (back['x'][0, 0], back['y'][0, 0], back['z'][0, 0]) == (-0.75, -0.25, 1.0)
    assert np.isnan(back['z'][0, 2]) and np.isnan(back['z'][1, 1])
    xyz = depth_to_cloud(depth, camera)
    assert conv.cloud_to_pointcloud2(xyz, header).point_step == 12


def test_pointcloud2_rejects_non_clouds():
    with pytest.raises(ValueError, match='`cloud` must be a 2-D structured array'):
        conv.cloud_to_pointcloud2(np.zeros((2, 2), np.float32), conv.make_header(0, ''))


def test_cloud_written_into_message_buffer_is_the_message_data_without_a_copy():
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import PointCloud2
    camera = PinholeCamera(2.0, 2.0, 1.5, 0.5, 4, 2)
    depth = np.array([[1.0, 2.0, np.nan, 4.0], [1.0, np.inf, 3.0, 0.5]], np.float32)
    bgr = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    header = conv.make_header(42, 'f')
    expected = conv.cloud_to_pointcloud2(depth_to_cloud(depth, camera, bgr=bgr), header)
    buffer = conv.MessageBuffer()
    out = buffer.array((2, 4), depth_to_cloud(depth, camera, bgr=bgr).dtype)
    cloud = depth_to_cloud(depth, camera, bgr=bgr, out=out)
    msg = conv.cloud_to_pointcloud2(cloud, header, buffer=buffer)
    assert msg.data is buffer.data, 'the message copied the buffer (type {})'.format(
        type(msg.data).__name__)
    assert bytes(msg.data) == bytes(expected.data) and msg.fields == expected.fields
    wire = serialize_message(msg)
    # The next frame overwrites the buffer: what was published (serialized) must not change.
    depth_to_cloud(depth * 2.0, camera, bgr=bgr, out=buffer.array((2, 4), cloud.dtype))
    assert buffer.array((2, 4), cloud.dtype) is out, 'same size: the buffer must be reused'
    assert bytes(deserialize_message(wire, PointCloud2).data) == bytes(expected.data)
    assert bytes(msg.data) != bytes(expected.data)
    with pytest.raises(ValueError, match='`cloud` must be the array that `buffer.array'):
        conv.cloud_to_pointcloud2(cloud.copy(), header, buffer=buffer)


def test_image_through_message_buffer_equals_plain_conversion_and_reuses_it():
    buffer = conv.MessageBuffer()
    header = conv.make_header(7, 'f')
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    first = conv.numpy_to_image(a, '32FC1', header, buffer=buffer)
    assert first.data is buffer.data and bytes(first.data) == a.tobytes()
    data = buffer.data
    second = conv.numpy_to_image(a + 1, '32FC1', header, buffer=buffer)
    assert buffer.data is data, 'same size: the buffer must be reused'
    np.testing.assert_array_equal(conv.image_to_numpy(second), a + 1)
    bgr = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    third = conv.numpy_to_image(bgr, 'bgr8', header, buffer=buffer)   # new size: reallocated
    assert buffer.data is not data and third.step == 12
    np.testing.assert_array_equal(conv.image_to_numpy(third), bgr)
    assert bytes(conv.numpy_to_image(bgr, 'bgr8', header).data) == bytes(third.data)


def test_an_image_written_into_the_buffer_is_published_without_a_copy(monkeypatch):
    """The depth finish wrote into the buffer's view (finish(out=...)) becomes the data as is."""
    from rclpy.serialization import deserialize_message, serialize_message
    from sensor_msgs.msg import Image
    buffer = conv.MessageBuffer()
    header = conv.make_header(7, 'f')
    depth = buffer.array((3, 4), np.float32)
    depth[...] = np.arange(12, dtype=np.float32).reshape(3, 4)
    copies = []
    copyto = np.copyto
    monkeypatch.setattr(np, 'copyto', lambda *a, **k: copies.append(a) or copyto(*a, **k))
    msg = conv.numpy_to_image(depth, '32FC1', header, buffer=buffer)
    assert not copies and msg.data is buffer.data
    wire = serialize_message(msg)
    np.testing.assert_array_equal(conv.image_to_numpy(deserialize_message(wire, Image)),
                                  np.arange(12, dtype=np.float32).reshape(3, 4))
    # An array that is not the view (a copy of it) is copied in, as before.
    conv.numpy_to_image(depth.copy() + 1, '32FC1', header, buffer=buffer)
    assert len(copies) == 1
    np.testing.assert_array_equal(buffer.view.view(np.float32).reshape(3, 4), depth + 1)


def test_a_buffer_view_whose_bytes_the_encoding_changes_is_copied_as_encoded():
    """Only a view already holding the message's bytes skips the copy: not a byte-swapped one."""
    buffer = conv.MessageBuffer()
    header = conv.make_header(7, 'f')
    want = np.arange(12, dtype=np.float32).reshape(3, 4) + 0.5
    view = buffer.array((3, 4), '>f4')            # big-endian floats in the buffer
    view[...] = want
    msg = conv.numpy_to_image(view, '32FC1', header, buffer=buffer)
    assert msg.is_bigendian == 0 and msg.data is buffer.data
    np.testing.assert_array_equal(conv.image_to_numpy(msg), want)


def test_ns_stamp_round_trip():
    for ns in (0, 1, 999999999, 1000000000, 1700000000123456789):
        assert conv.stamp_to_ns(conv.ns_to_stamp(ns)) == ns
    with pytest.raises(ValueError, match='`ns` must be >= 0, got -1'):
        conv.ns_to_stamp(-1)


def _node_with(specs, overrides=(), validate=None, args=None, name='params_probe'):
    """Make a DepthRosNode with ``specs`` on its own context; return (node, context, applied)."""
    import rclpy
    from depth_ros.ros.runtime import DepthRosNode
    from rclpy.parameter import Parameter
    context = rclpy.Context()
    rclpy.init(context=context, args=args)
    applied = []
    try:
        node = DepthRosNode(name, specs, validate=validate, apply=applied.append,
                            context=context, parameter_overrides=[
                                Parameter(k, value=v) for k, v in overrides])
    except BaseException:
        rclpy.shutdown(context=context)
        raise
    return node, context, applied


def _specs():
    from depth_ros.nodes_core.params import DIAGNOSTICS_PERIOD, LOG_THROTTLE, Param
    return (Param('a', 1, 'd', low=0, high=5), Param('b', 'x', 'd', read_only=True),
            Param('mode', 'fast', 'd', choices=('fast', 'slow')),
            Param('gain', 0.5, 'd', low=0.0, high=1.0), LOG_THROTTLE, DIAGNOSTICS_PERIOD)


def test_runtime_changes_are_checked_by_rclpy_and_by_the_node_then_applied_once():
    # rclpy enforces the descriptor (type, range, read-only) before our on-set callback, which
    # adds the choices and the cross-parameter check; a change is applied once, after it is
    # set (Humble: at the end of the on-set callback; rclpy >= 3.7: the post-set callback,
    # depth_ros.ros.compat).
    import rclpy
    from rclpy.parameter import Parameter
    node, context, applied = _node_with(
        _specs(), validate=lambda v: 'parameter `a` too big for slow' if v['a'] > 3 and
        v['mode'] == 'slow' else None)
    try:
        def reason(name, value):
            result = node.set_parameters([Parameter(name, value=value)])[0]
            return '' if result.successful else result.reason
        assert 'a' in reason('a', 9) and '9' in reason('a', 9), reason('a', 9)
        assert 'read-only' in reason('b', 'y'), reason('b', 'y')
        assert reason('gain', 1) != '', 'an integer for a double parameter was accepted'
        assert reason('mode', 'medium') == \
            "parameter `mode` must be one of fast|slow, got 'medium'"
        assert reason('a', 4) == '' and reason('mode', 'slow') == \
            'parameter `a` too big for slow'
        assert applied == [{'a': 4}] and node.cfg['a'] == 4 and node.cfg['mode'] == 'fast', \
            (applied, node.cfg)
        assert reason('a', 2) == '' and reason('mode', 'slow') == ''
        assert applied == [{'a': 4}, {'a': 2}, {'mode': 'slow'}], applied
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_a_runtime_change_of_the_wrong_type_names_the_parameter_and_how_to_write_it():
    # `ros2 param set /alignment_node max_depth 25` (an integer for a double) said "Wrong
    # parameter type, expected '3' got '2'" on Kilted (rclpy formats its enums as numbers on
    # Python 3.11), naming neither the parameter nor the fix; nothing was set or applied.
    import rclpy
    from depth_ros.nodes_core.params import Param
    from rclpy.parameter import Parameter
    specs = _specs() + (Param('flag', True, 'd'),)
    node, context, applied = _node_with(specs)
    try:
        def reason(name, value):
            result = node.set_parameters([Parameter(name, value=value)])[0]
            assert result.successful is not bool(result.reason), result
            return result.reason
        assert reason('gain', 1) == \
            'Wrong parameter type: `gain` is a double, got an integer 1 (write 1.0)'
        assert reason('a', 2.0) == \
            'Wrong parameter type: `a` is an integer, got a double 2.0 (write 2)'
        assert reason('a', 2.5) == 'Wrong parameter type: `a` is an integer, got a double 2.5'
        assert reason('mode', 3) == "Wrong parameter type: `mode` is a string, got an integer 3"
        assert reason('flag', 'yes') == \
            "Wrong parameter type: `flag` is a boolean (true or false), got a string 'yes'"
        assert applied == [] and node.cfg['gain'] == 0.5 and node.cfg['a'] == 1, \
            (applied, node.cfg)
        # rclpy's other refusals and a good change are as before.
        assert reason('b', 'y') == 'Trying to set a read-only parameter: b.'
        assert reason('gain', 1.0) == '' and applied == [{'gain': 1.0}], applied
        # rclpy's parameters (no spec of ours) keep rclpy's text.
        assert reason('use_sim_time', 'x').startswith('Wrong parameter type, expected')
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_a_runtime_change_of_an_undeclared_name_names_it_and_the_parameter_meant():
    # `ros2 param set /alignment_node cloud_strid 4` answered "Setting parameter failed:
    # ('Invalid access to undeclared parameter(s)', [])" on Humble (and Kilted): the service
    # sends str() of rclpy's exception, a tuple with an always-empty list. Through the
    # node's set_parameters service, as `ros2 param set` calls it.
    import rclpy
    from rcl_interfaces.srv import SetParameters
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    node, context, applied = _node_with(_specs())
    client_node = rclpy.create_node('params_probe_client', context=context)
    executor = SingleThreadedExecutor(context=context)
    try:
        executor.add_node(node)
        executor.add_node(client_node)
        client = client_node.create_client(SetParameters, '/params_probe/set_parameters')
        assert client.wait_for_service(timeout_sec=20.0)

        def reasons(*pairs):
            request = SetParameters.Request(parameters=[
                Parameter(name, value=value).to_parameter_msg() for name, value in pairs])
            future = client.call_async(request)
            executor.spin_until_future_complete(future, timeout_sec=20.0)
            return [r.reason if not r.successful else '' for r in future.result().results]
        assert reasons(('gian', 0.7), ('a', 2), ('zzz', 1)) == [
            'parameter `gian` is not declared by /params_probe: did you mean `gain`?', '',
            'parameter `zzz` is not declared by /params_probe: not a parameter of this node '
            '(`ros2 param list` shows them)']
        assert applied == [{'a': 2}] and not node.has_parameter('gian'), applied
        # node.set_parameters raises rclpy's exception type, with the names in its text.
        with pytest.raises(rclpy.exceptions.ParameterNotDeclaredException,
                           match='`gian` is not declared by /params_probe: did you mean `gain`'):
            node.set_parameters([Parameter('gian', value=0.7)])
        # rclpy's own parameter and a declared one are as before.
        assert reasons(('use_sim_time', True), ('gain', 0.25)) == ['', ''] and \
            node.cfg['gain'] == 0.25
    finally:
        executor.shutdown()
        client_node.destroy_node()
        node.destroy_node()
        rclpy.shutdown(context=context)


@pytest.mark.parametrize('overrides, text', [
    # rclpy's own text for its range and type checks names the parameter and the value.
    ((('a', 9),), 'Parameter a out of range. Min: 0, Max: 5, value: 9'),
    ((('gain', 2),), "Trying to set parameter 'gain' to '2' of type 'INTEGER', expecting "
                     "type 'DOUBLE'"),
    ((('gain', float('nan')),), 'value: nan'),
    ((('mode', 'medium'),), "parameter `mode` must be one of fast|slow, got 'medium'"),
])
def test_a_bad_start_up_value_is_a_config_error_naming_parameter_and_value(overrides, text):
    from depth_ros.nodes_core.params import ConfigError
    with pytest.raises(ConfigError) as info:
        _node_with(_specs(), overrides)
    assert text in str(info.value), 'expected {!r} in {!r}'.format(text, str(info.value))


@pytest.mark.parametrize('overrides, hint', [
    # `max_depth: 20` in a parameters file: an integer, and the parameter is a double.
    ((('gain', 2),), ' (write 2.0)'),
    ((('gain', -3),), ' (write -3.0)'),
    ((('a', 2.0),), "expecting type 'INTEGER'"),      # rclpy's text alone
    ((('gain', 'x'),), "expecting type 'DOUBLE'"),
])
def test_an_integer_for_a_double_at_start_up_says_how_to_write_it(overrides, hint):
    from depth_ros.nodes_core.params import ConfigError
    with pytest.raises(ConfigError) as info:
        _node_with(_specs(), overrides)
    text = str(info.value)
    assert text.startswith("Trying to set parameter '{}' to '{}' of type".format(
        *overrides[0])), text
    # Kilted's rclpy ends its own text with ': <name>'.
    assert text.endswith(hint) if 'write' in hint else hint in text, text
    assert text.count('(write') == (1 if 'write' in hint else 0), text


def _one_sided_specs():
    from depth_ros.nodes_core.params import LOG_THROTTLE, DIAGNOSTICS_PERIOD, Param
    return (Param('max_depth', 20.0, 'd', low=0.0), Param('floor', -1.0, 'd', high=0.0),
            Param('seed', 0, 'd', low=-1), LOG_THROTTLE, DIAGNOSTICS_PERIOD)


def test_a_one_sided_range_is_open_on_its_other_side():
    # `ros2 param describe /alignment_node max_depth` printed "Max value: 1e+300": a one-sided
    # double range had +-1e300 for its missing bound, an integer one +-2**62. Now +-inf for a
    # double (rclpy accepts it, Humble and Kilted) and the int64 limits for an integer. The
    # descriptor as the describe_parameters service sends it, and rclpy's range check with it,
    # through the set_parameters service (what `ros2 param describe` and `set` call).
    import math
    import rclpy
    from rcl_interfaces.srv import DescribeParameters, SetParameters
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    node, context, applied = _node_with(_one_sided_specs(), [('max_depth', 1e200)])
    client_node = rclpy.create_node('params_probe_client', context=context)
    executor = SingleThreadedExecutor(context=context)
    try:
        executor.add_node(node)
        executor.add_node(client_node)

        def call(service, srv_type, request):
            client = client_node.create_client(srv_type, '/params_probe/' + service)
            assert client.wait_for_service(timeout_sec=20.0), service
            future = client.call_async(request)
            executor.spin_until_future_complete(future, timeout_sec=20.0)
            assert future.done(), 'no answer from /params_probe/' + service
            return future.result()
        described = call('describe_parameters', DescribeParameters, DescribeParameters.Request(
            names=['max_depth', 'floor', 'seed'])).descriptors
        ranges = [(r.from_value, r.to_value) for d in described
                  for r in list(d.floating_point_range) + list(d.integer_range)]
        assert ranges == [(0.0, math.inf), (-math.inf, 0.0), (-1, 2 ** 63 - 1)], ranges

        def reasons(*pairs):
            answer = call('set_parameters', SetParameters, SetParameters.Request(parameters=[
                Parameter(name, value=value).to_parameter_msg() for name, value in pairs]))
            return [r.reason if not r.successful else '' for r in answer.results]
        # A start-up value far above the given bound was taken; a change too.
        assert node.cfg['max_depth'] == 1e200
        assert reasons(('max_depth', 1e300), ('floor', -1e300), ('seed', 2 ** 62 + 1)) == \
            ['', '', ''], node.cfg
        # The given bound is rclpy's, with its text, which now names inf as the open side.
        assert reasons(('max_depth', -0.5), ('floor', 0.5), ('seed', -2)) == [
            'Parameter max_depth out of range Min: 0.0, Max: inf, value: -0.5',
            'Parameter floor out of range Min: -inf, Max: 0.0, value: 0.5',
            'Parameter seed out of range. Min: -1, Max: 9223372036854775807, value: -2']
        assert node.cfg['max_depth'] == 1e300 and node.cfg['seed'] == 2 ** 62 + 1, node.cfg
    finally:
        executor.shutdown()
        client_node.destroy_node()
        node.destroy_node()
        rclpy.shutdown(context=context)
    # A start-up value beyond the given bound: the node does not start, and says why.
    from depth_ros.nodes_core.params import ConfigError
    with pytest.raises(ConfigError, match=r'Parameter max_depth out of range Min: 0\.0, '
                       r'Max: inf, value: -2\.0'):
        _node_with(_one_sided_specs(), [('max_depth', -2.0)])


def test_given_parameter_names_are_the_ones_rclpy_applies(tmp_path):
    # nodes_core.params.given_names reads --params-file and -p as rcl does, without rclpy's
    # private attributes; rclpy itself, told to declare every override it applies to a node
    # (a public option), is the reference.
    import rclpy
    from depth_ros.nodes_core.params import given_names
    from rclpy.node import Node
    path = tmp_path / 'p.yaml'
    path.write_text(
        '/**/probe:\n  ros__parameters:\n    cloud_stride: 7\n    nested: {a: 1, b: {c: 2}}\n'
        '/*/probe:\n  ros__parameters:\n    seed: 3\n'
        '/ns/*:\n  ros__parameters:\n    max_depth: 9.0\n'
        'probe:\n  ros__parameters:\n    flag: false\n'
        '/other:\n  ros__parameters:\n    not_mine: 1\n'
        '/**:\n  ros__parameters:\n    everyone: 1\n'
        'ns:\n  probe:\n    ros__parameters:\n      nested_key: 1\n')
    for extra in ([], ['-r', '__ns:=/ns'], ['-r', '__node:=other']):
        args = ['prog', '--ros-args', '--params-file', str(path), '-p', 'probe:x:=1',
                '-p', 'y:=2'] + extra
        context = rclpy.Context()
        rclpy.init(context=context, args=args)
        try:
            plain = Node('plain_probe', context=context)
            node = Node('probe', context=context,
                        automatically_declare_parameters_from_overrides=True)
            expected = set(node.get_parameters_by_prefix('')) - \
                set(plain.get_parameters_by_prefix(''))
            got = given_names(args, node.get_fully_qualified_name())
            assert set(got) == expected, '{}: expected {}, received {}'.format(
                node.get_fully_qualified_name(), sorted(expected), got)
            node.destroy_node()
            plain.destroy_node()
        finally:
            rclpy.shutdown(context=context)


def test_depth_node_engine_cache_dir_is_the_cache_engines_load_from(tmp_path, monkeypatch):
    from depth_ros.nodes_core.config import DEPTH_PARAMS, open_model
    from depth_ros.nodes_core.params import StartupError
    cache, other = tmp_path / 'cache', tmp_path / 'other'
    cache.mkdir()
    other.mkdir()
    (cache / 'e.engine').write_bytes(b'not an engine')
    (other / 'e.engine').write_bytes(b'not an engine')
    monkeypatch.setenv('DEPTH_ROS_ENGINE_CACHE', str(other))
    values = {p.name: p.default for p in DEPTH_PARAMS}
    values.update(backend='tensorrt', model_path=str(other / 'e.engine'),
                  engine_cache_dir=str(cache))
    with pytest.raises(StartupError) as info:
        open_model(values)
    assert 'outside the engine cache directory {};'.format(cache) in str(info.value), \
        'received {}'.format(info.value)
    # The way out names depth_node's parameter (it named only --cache-dir and cache_dir, the
    # command line's and the API's).
    assert "depth_node's `engine_cache_dir`" in str(info.value), str(info.value)
    # A bare name is looked up in the configured cache: it gets past the cache check (and
    # fails later here, where TensorRT is missing).
    values['model_path'] = 'e.engine'
    with pytest.raises(StartupError) as info:
        open_model(values)
    assert str(info.value).startswith("cannot load tensorrt model 'e.engine': ") and \
        'outside the engine cache' not in str(info.value), 'received {}'.format(info.value)
    # Empty: the default cache ($DEPTH_ROS_ENGINE_CACHE), where the configured file is outside.
    values.update(model_path=str(cache / 'e.engine'), engine_cache_dir='')
    with pytest.raises(StartupError, match='outside the engine cache directory {};'.format(
            other)):
        open_model(values)

"""
The one conversion boundary between ROS messages and numpy / core objects.

- Image <-> numpy: cv_bridge where it is installed, otherwise ``depth_ros.core.encodings``
  (same encodings: bgr8, rgb8, bgra8, rgba8, mono8, mono16, 16UC1, 32FC1; 8UC3/8UC4 read as
  bgr8/bgra8). Both raise ValueError naming the encoding or size that does not fit.
- CameraInfo <-> PinholeCamera: ``depth_ros.core.messages`` (the rectified projection P when
  it is set, K otherwise; scaled when the image it describes has another size).
- PointCloud2 from ``depth_ros.core.pointcloud``'s structured array: fields and offsets from
  ``CLOUD_FIELDS``, organized (height = rows), is_dense false, header copied from the input.

Core functions never see a message; nodes never touch bytes.
"""
from __future__ import annotations

import array
import os
from typing import Optional

from depth_ros.core.camera import PinholeCamera
from depth_ros.core.encodings import array_to_image_fields, canonical_encoding, image_to_array
from depth_ros.core.messages import camera_from_info, camera_info_fields, stamp_to_ns
import numpy as np

__all__ = ['camera_from_info', 'camera_to_info', 'cloud_to_pointcloud2', 'copy_header',
           'image_to_numpy', 'make_header', 'MessageBuffer', 'ns_to_stamp', 'numpy_to_image',
           'stamp_to_ns', 'uses_cv_bridge']

_BRIDGE = []  # [CvBridge or None], resolved once


def _bridge():
    """Return a CvBridge when cv_bridge is importable (and not disabled), else None."""
    if not _BRIDGE:
        bridge = None
        if os.environ.get('DEPTH_ROS_NO_CV_BRIDGE', '') in ('', '0'):
            try:
                from cv_bridge import CvBridge
                bridge = CvBridge()
            except ImportError:
                bridge = None
        _BRIDGE.append(bridge)
    return _BRIDGE[0]


def uses_cv_bridge() -> bool:
    """Whether Image conversion goes through cv_bridge here."""
    return _bridge() is not None


def _message_types():
    try:
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
    except ImportError as exc:
        raise ImportError('ROS 2 message types are missing: source a ROS 2 install or '
                          'install depth_ros[ros]') from exc
    return Image, CameraInfo, PointCloud2, PointField


def ns_to_stamp(ns: int):
    """Integer nanoseconds -> builtin_interfaces/Time."""
    from builtin_interfaces.msg import Time
    ns = int(ns)
    if ns < 0:
        raise ValueError('`ns` must be >= 0, got {!r}'.format(ns))
    return Time(sec=ns // 1000000000, nanosec=ns % 1000000000)


def make_header(stamp_ns: int, frame_id: str):
    """std_msgs/Header from nanoseconds and a frame id."""
    from std_msgs.msg import Header
    return Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame_id)


def copy_header(header):
    """Copy a std_msgs/Header (outputs carry the input's stamp and frame)."""
    from std_msgs.msg import Header
    return Header(stamp=type(header.stamp)(sec=header.stamp.sec, nanosec=header.stamp.nanosec),
                  frame_id=header.frame_id)


def image_to_numpy(msg, copy: bool = False) -> np.ndarray:
    """
    sensor_msgs/Image -> HxW or HxWxC array (channel order as the encoding says).

    :raises ValueError: unsupported encoding, or a size that does not match the data.
    """
    bridge = _bridge()
    if bridge is None:
        return image_to_array(msg, copy=copy)
    name = canonical_encoding(msg.encoding)  # same accepted set with or without cv_bridge
    try:
        out = bridge.imgmsg_to_cv2(msg, desired_encoding='passthrough')
    except Exception as exc:  # CvBridgeError, TypeError: give the same kind of error
        raise ValueError('cannot convert a {}x{} {!r} image (step {}, {} bytes): {}'.format(
            msg.width, msg.height, msg.encoding, msg.step, len(msg.data), exc)) from exc
    if name in ('bgr8', 'rgb8', 'bgra8', 'rgba8') and out.ndim != 3:
        raise ValueError('image with encoding {!r} decoded to shape {}'.format(
            msg.encoding, out.shape))
    return out.copy() if copy else out


def _new_message(cls):
    """
    Return an empty message whose ``data`` setter stores an array.array as it is.

    Humble's generated setters always do; later distributions copy it again unless the
    message checks its fields (``check_fields``, which Humble's constructor does not take).
    """
    try:
        return cls(check_fields=True)
    except (AssertionError, TypeError):
        return cls()


def numpy_to_image(array_: np.ndarray, encoding: str, header=None,
                   buffer: Optional['MessageBuffer'] = None):
    """
    Convert an HxW or HxWxC array to a sensor_msgs/Image with ``header`` (copied) and ``encoding``.

    The pixels are copied once, into the array.array the message keeps: a new one, or
    ``buffer``'s (reused from frame to frame; see :class:`MessageBuffer`). An array that is
    ``buffer``'s view already (written there: ``MetricAligner.finish(out=...)``) is not copied
    when its bytes are the message's already (a view the encoding byte-swaps is copied).

    :raises ValueError: the array's dtype or channels do not fit ``encoding``.
    """
    Image = _message_types()[0]
    fields = array_to_image_fields(array_, encoding)  # validates before anything is built
    msg = _new_message(Image)
    if header is not None:
        msg.header = copy_header(header)
    msg.height = fields['height']
    msg.width = fields['width']
    msg.encoding = fields['encoding']
    msg.is_bigendian = fields['is_bigendian']
    msg.step = fields['step']
    # array.array('B') is what rclpy stores for uint8[]; any other container is checked
    # element by element in Python, which costs tens of milliseconds per frame.
    if buffer is not None:
        # Not copied when the encoded bytes are the view's own (encoding made no copy: not
        # byte-swapped, not converted).
        if array_ is not buffer.view or not np.may_share_memory(fields['data'], array_):
            np.copyto(buffer.array(fields['data'].shape, np.uint8), fields['data'])
        msg.data = buffer.data
    else:
        data = array.array('B')
        data.frombytes(fields['data'])
        msg.data = data
    return msg


def camera_to_info(camera: PinholeCamera, header=None, distortion_model: str = 'plumb_bob',
                   baseline_m: Optional[float] = None):
    """
    Convert a PinholeCamera to the CameraInfo of a rectified image (D zero, R identity).

    ``baseline_m``: the right camera of the pair (P[0,3] = -fx * baseline).
    """
    CameraInfo = _message_types()[1]
    msg = CameraInfo()
    if header is not None:
        msg.header = copy_header(header)
    for name, value in camera_info_fields(camera, distortion_model, baseline_m).items():
        setattr(msg, name, value)
    return msg


class MessageBuffer(object):
    """
    A reusable message byte buffer (``array.array('B')``, what rclpy keeps for uint8[]).

    ``array(shape, dtype)`` returns a numpy view of it, reallocated only when the shape or
    dtype changes, so a node that publishes the same size every frame touches no fresh memory.
    ``depth_to_cloud(..., out=buffer.array(...))`` writes the cloud straight into it and
    :func:`cloud_to_pointcloud2` with ``buffer=`` hands it to the message without a copy;
    :func:`numpy_to_image` with ``buffer=`` copies the pixels into it (none when they were written
    into its view: ``MetricAligner.finish(out=buffer.array(...))``).

    Reuse is safe because rclpy's ``publish`` serializes the message before it returns: the
    next frame may overwrite the buffer after that. The publishing thread must not keep the
    message, and only one thread may fill a buffer.
    """

    def __init__(self):
        self.data = None     # array.array('B'), the message bytes
        self.view = None     # structured numpy view of ``data``

    def array(self, shape, dtype) -> np.ndarray:
        """Return the view for ``shape`` and ``dtype``; reallocated only when they change."""
        shape, dtype = tuple(int(n) for n in shape), np.dtype(dtype)
        if self.view is None or self.view.shape != shape or self.view.dtype != dtype:
            self.view = None  # drop the export of the old buffer first
            data = array.array('B')
            data.frombytes(bytes(int(np.prod(shape)) * dtype.itemsize))
            self.data = data
            self.view = np.frombuffer(data, dtype=dtype).reshape(shape)
        return self.view


def cloud_to_pointcloud2(cloud: np.ndarray, header, buffer: Optional[MessageBuffer] = None):
    """
    Organized structured array from ``depth_to_cloud`` -> sensor_msgs/PointCloud2.

    Fields, offsets and point_step come from the array's dtype, which ``depth_to_cloud`` builds
    from ``CLOUD_FIELDS`` (x, y, z, rgb float32 at 0, 4, 8, 12; point_step 16), so the message
    cannot disagree with the bytes.

    :param buffer: the MessageBuffer whose view ``cloud`` is: its bytes become the message data
        without a copy. Without it the bytes are copied once.
    :raises ValueError: not a 2-D structured array with float32 fields, or ``cloud`` is not
        ``buffer``'s view.
    """
    _, _, PointCloud2, PointField = _message_types()
    if not isinstance(cloud, np.ndarray) or cloud.dtype.names is None or cloud.ndim != 2:
        raise ValueError('`cloud` must be a 2-D structured array from depth_to_cloud, got '
                         '{}'.format(getattr(cloud, 'dtype', type(cloud).__name__)))
    fields = []
    for name in cloud.dtype.names:
        dtype, offset = cloud.dtype.fields[name][:2]
        if dtype.base != np.dtype('<f4'):
            raise ValueError('`cloud` field {!r} must be little-endian float32, got {}'.format(
                name, dtype))
        fields.append(PointField(name=name, offset=int(offset), datatype=PointField.FLOAT32,
                                 count=1))
    if buffer is not None and cloud is not buffer.view:
        raise ValueError('`cloud` must be the array that `buffer.array()` returned')
    msg = _new_message(PointCloud2)
    msg.header = copy_header(header)
    msg.height, msg.width = int(cloud.shape[0]), int(cloud.shape[1])
    msg.fields = fields
    msg.is_bigendian = False
    msg.point_step = int(cloud.dtype.itemsize)
    msg.row_step = msg.point_step * msg.width
    msg.is_dense = False  # invalid points are NaN and kept, so the cloud stays organized
    if buffer is not None:
        msg.data = buffer.data
    else:
        data = array.array('B')
        data.frombytes(np.ascontiguousarray(cloud).view(np.uint8).reshape(-1))
        msg.data = data
    return msg

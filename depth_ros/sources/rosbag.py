"""
A rosbag2 recording (sqlite3 or mcap) of ZED topics, read with `rosbags` (no ROS needed).

Topics default to stereolabs/zed-ros2-wrapper 4.x names for a camera called ``zed``:

=============  ==============================================  =========================
key            topic                                            type
=============  ==============================================  =========================
image          /zed/zed_node/left/image_rect_color              sensor_msgs/Image (bgra8)
camera_info    /zed/zed_node/left/camera_info                   sensor_msgs/CameraInfo
depth          /zed/zed_node/depth/depth_registered             sensor_msgs/Image (32FC1)
confidence     /zed/zed_node/confidence/confidence_map          sensor_msgs/Image (32FC1)
=============  ==============================================  =========================

Messages are streamed in recording order (never the whole bag in memory) and paired by exact
header stamp. A frame is complete when it has the image, the depth and, if the bag records the
topic, the confidence. Camera info is paired by stamp too; when a stamp has none (some recorders
keep camera_info at a lower rate), the latest one of the same image size is used. At most
``max_pending`` incomplete stamps wait; older ones are dropped and counted in ``dropped``.
"""
from __future__ import annotations

from collections import OrderedDict
import logging
import os
from typing import Dict, Iterable, Optional

from depth_ros.core.camera import PinholeCamera
from depth_ros.sources.base import Frame, FrameSource, SourceError
import numpy as np

LOG = logging.getLogger('depth_ros.sources.rosbag')

IMAGE = 'sensor_msgs/msg/Image'
CAMERA_INFO = 'sensor_msgs/msg/CameraInfo'


def zed_topics(camera: str = 'zed', node: str = 'zed_node') -> Dict[str, str]:
    """Return the zed-ros2-wrapper 4.x topic names for ``/<camera>/<node>``."""
    base = '/{}/{}'.format(camera, node)
    return {
        'image': base + '/left/image_rect_color',
        'camera_info': base + '/left/camera_info',
        'depth': base + '/depth/depth_registered',
        'confidence': base + '/confidence/confidence_map',
    }


DEFAULT_TOPICS = zed_topics()
TOPIC_TYPES = {'image': IMAGE, 'camera_info': CAMERA_INFO, 'depth': IMAGE,
               'confidence': IMAGE}


def _rosbags():
    try:
        from rosbags.rosbag2 import Reader, Writer
        from rosbags.typesys import get_typestore, Stores
    except ImportError as exc:
        raise ImportError('reading bags needs rosbags: install depth_ros[bag] '
                          '(pip install rosbags)') from exc
    return Reader, Writer, get_typestore, Stores


def _stamp_ns(header) -> int:
    return int(header.stamp.sec) * 1000000000 + int(header.stamp.nanosec)


def depth_to_metres(array: np.ndarray, encoding: str) -> np.ndarray:
    """ZED depth image -> [H, W] float32 metres; 16UC1 (millimetres, 0 = invalid) is converted."""
    if encoding == '32FC1':
        return np.asarray(array, dtype=np.float32)
    if encoding in ('16UC1', 'mono16'):
        depth = array.astype(np.float32) * np.float32(0.001)
        depth[array == 0] = np.nan
        return depth
    raise ValueError('depth image encoding must be 32FC1 or 16UC1, got {!r}'.format(encoding))


class RosbagSource(FrameSource):
    """
    Frames from a rosbag2 of ZED topics (see the module docstring).

    :param path: bag folder (metadata.yaml and a .db3 or .mcap file).
    :param topics: overrides of DEFAULT_TOPICS by key (image, camera_info, depth, confidence).
    :param max_pending: bound on incomplete stamps held while pairing.
    """

    name = 'bag'

    def __init__(self, path: str, topics: Optional[Dict[str, str]] = None,
                 max_pending: int = 30):
        if not path or not os.path.exists(path):
            raise FileNotFoundError('bag not found: {!r}'.format(path))
        self.topics = dict(DEFAULT_TOPICS)
        for key, topic in (topics or {}).items():
            if key not in DEFAULT_TOPICS:
                raise ValueError('`topics` key must be one of {}, got {!r}'.format(
                    ', '.join(DEFAULT_TOPICS), key))
            self.topics[key] = topic
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise ValueError('`max_pending` must be an integer >= 1, got {!r}'.format(
                max_pending))
        self.path = path
        self.max_pending = max_pending
        self.dropped = 0          # incomplete stamps evicted from the pairing buffer
        self.bad_frames = 0       # complete stamps that could not be decoded
        self._reader = None
        self._messages = None
        self._typestore = None
        self._keys = {}
        self._pending: 'OrderedDict[int, Dict[str, object]]' = OrderedDict()
        self._infos: 'OrderedDict[int, object]' = OrderedDict()
        self._latest_info = None
        self._required = ()

    def open(self) -> None:
        reader_cls, _, get_typestore, stores = _rosbags()
        self.close()
        try:
            reader = reader_cls(self.path)
            reader.open()
        except Exception as exc:  # rosbags raises its own error types; name the file
            raise SourceError('cannot open bag {}: {}'.format(self.path, exc)) from exc
        self._reader = reader
        self._typestore = get_typestore(stores.ROS2_HUMBLE)
        by_topic = {}
        for conn in reader.connections:
            by_topic.setdefault(conn.topic, []).append(conn)
        missing = [k for k in ('image', 'depth') if self.topics[k] not in by_topic]
        if 'camera_info' not in [k for k in self.topics if self.topics[k] in by_topic]:
            missing.append('camera_info')
        if missing:
            self.close()
            raise SourceError('bag {} has no {} topic(s) {}; it has: {}'.format(
                self.path, '/'.join(missing),
                ', '.join(self.topics[k] for k in missing),
                ', '.join(sorted(by_topic)) or 'nothing'))
        self._keys = {self.topics[k]: k for k in self.topics if self.topics[k] in by_topic}
        self._required = tuple(k for k in ('image', 'depth', 'confidence')
                               if self.topics[k] in by_topic)
        for key in self._keys.values():
            for conn in by_topic[self.topics[key]]:
                if conn.msgtype != TOPIC_TYPES[key]:
                    self.close()
                    raise SourceError('bag {}: topic {} has type {}, expected {}'.format(
                        self.path, conn.topic, conn.msgtype, TOPIC_TYPES[key]))
        conns = [c for t in self._keys for c in by_topic[t]]
        self._messages = reader.messages(connections=conns)
        self._pending.clear()
        self._infos.clear()
        self._latest_info = None

    def close(self) -> None:
        self._messages = None
        if self._reader is not None:
            try:
                self._reader.close()
            finally:
                self._reader = None

    def _remember_info(self, stamp: int, msg) -> None:
        self._infos[stamp] = msg
        self._latest_info = msg
        while len(self._infos) > self.max_pending:
            self._infos.popitem(last=False)

    def read(self) -> Optional[Frame]:
        if self._messages is None:
            self.open()
        for conn, _, raw in self._messages:
            key = self._keys[conn.topic]
            try:
                msg = self._typestore.deserialize_cdr(raw, conn.msgtype)
            except Exception as exc:  # a corrupt record: drop it, keep streaming
                LOG.warning('bag %s: cannot deserialize a %s message: %s', self.path, key, exc)
                continue
            stamp = _stamp_ns(msg.header)
            if key == 'camera_info':
                self._remember_info(stamp, msg)
                continue
            entry = self._pending.get(stamp)
            if entry is None:
                entry = self._pending[stamp] = {}
                while len(self._pending) > self.max_pending:
                    old, parts = self._pending.popitem(last=False)
                    self.dropped += 1
                    LOG.warning('bag %s: dropped stamp %d with only %s', self.path, old,
                                ', '.join(sorted(parts)))
            entry[key] = msg
            if all(k in entry for k in self._required):
                del self._pending[stamp]
                frame = self._frame(stamp, entry)
                if frame is not None:
                    return frame
        if self._pending:  # the end of the bag: what is still incomplete never will be
            self.dropped += len(self._pending)
            LOG.warning('bag %s: %d incomplete stamp(s) at the end', self.path,
                        len(self._pending))
            self._pending.clear()
        return None

    def _frame(self, stamp: int, entry: Dict[str, object]) -> Optional[Frame]:
        from depth_ros.core.encodings import image_to_array, to_bgr8

        image = entry['image']
        info = self._infos.get(stamp, self._latest_info)
        try:
            if info is None:
                raise ValueError('no camera_info received yet')
            if (info.width, info.height) != (image.width, image.height):
                raise ValueError('camera_info is {}x{} but the image is {}x{}'.format(
                    info.width, info.height, image.width, image.height))
            camera = PinholeCamera.from_K(info.k, int(info.width), int(info.height))
            left = np.ascontiguousarray(to_bgr8(image_to_array(image, copy=True),
                                                image.encoding))
            depth_msg = entry['depth']
            depth = depth_to_metres(image_to_array(depth_msg, copy=True), depth_msg.encoding)
            confidence = None
            if 'confidence' in entry:
                confidence = np.asarray(image_to_array(entry['confidence'], copy=True),
                                        dtype=np.float32)
            for name, arr in (('depth', depth), ('confidence', confidence)):
                if arr is not None and arr.shape != left.shape[:2]:
                    raise ValueError('{} is {}x{} but the image is {}x{}'.format(
                        name, arr.shape[1], arr.shape[0], left.shape[1], left.shape[0]))
        except ValueError as exc:
            # A bad frame is logged and dropped; the stream goes on.
            self.bad_frames += 1
            LOG.warning('bag %s: dropped frame at stamp %d: %s', self.path, stamp, exc)
            return None
        return Frame(left=left, depth=depth, confidence=confidence, camera=camera,
                     stamp_ns=stamp, frame_id=image.header.frame_id)


def _header(typestore, stamp_ns: int, frame_id: str):
    types = typestore.types
    return types['std_msgs/msg/Header'](
        stamp=types['builtin_interfaces/msg/Time'](sec=int(stamp_ns // 1000000000),
                                                   nanosec=int(stamp_ns % 1000000000)),
        frame_id=frame_id)


def image_message(typestore, array: np.ndarray, encoding: str, stamp_ns: int, frame_id: str):
    """Build a rosbags sensor_msgs/Image from an array (fields from core.encodings)."""
    from depth_ros.core.encodings import array_to_image_fields

    fields = array_to_image_fields(array, encoding)
    return typestore.types[IMAGE](header=_header(typestore, stamp_ns, frame_id), **fields)


def camera_info_message(typestore, camera: PinholeCamera, stamp_ns: int, frame_id: str):
    """Build a rosbags CameraInfo for a rectified left camera (zero distortion, Tx = 0)."""
    types = typestore.types
    k = camera.K.reshape(-1)
    p = np.array([camera.fx, 0.0, camera.cx, 0.0,
                  0.0, camera.fy, camera.cy, 0.0, 0.0, 0.0, 1.0, 0.0])
    roi_type = types['sensor_msgs/msg/RegionOfInterest']
    roi = roi_type(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return types[CAMERA_INFO](
        header=_header(typestore, stamp_ns, frame_id), height=camera.height, width=camera.width,
        distortion_model='plumb_bob', d=np.zeros(5), k=k, r=np.eye(3).reshape(-1), p=p,
        binning_x=0, binning_y=0, roi=roi)


def write_test_bag(path: str, frames: Iterable[Frame], topics: Optional[Dict[str, str]] = None,
                   storage: str = 'sqlite3', image_encoding: str = 'bgra8',
                   frame_id: str = 'zed_left_camera_optical_frame',
                   skip: Optional[Dict[str, Iterable[int]]] = None,
                   reverse_topics: bool = False) -> str:
    """
    Write frames as a ZED-topic rosbag2 (for tests and examples), streaming.

    :param path: output bag folder (must not exist; rosbags refuses to overwrite).
    :param frames: Frames with left, depth (and confidence, written when not None).
    :param topics: overrides of DEFAULT_TOPICS by key.
    :param storage: 'sqlite3' or 'mcap'.
    :param image_encoding: 'bgra8' (as the ZED wrapper publishes), 'bgr8' or 'rgb8'.
    :param frame_id: header frame_id, unless the Frame has one.
    :param skip: key -> frame indices whose message of that key is left out (pairing tests).
    :param reverse_topics: within a frame, write the topics in reverse order (depth first).
    :returns: ``path``.
    """
    import cv2

    _, writer_cls, get_typestore, stores = _rosbags()
    from rosbags.rosbag2 import StoragePlugin

    plugins = {'sqlite3': StoragePlugin.SQLITE3, 'mcap': StoragePlugin.MCAP}
    if storage not in plugins:
        raise ValueError('`storage` must be sqlite3 or mcap, got {!r}'.format(storage))
    conversions = {'bgra8': cv2.COLOR_BGR2BGRA, 'bgr8': None, 'rgb8': cv2.COLOR_BGR2RGB}
    if image_encoding not in conversions:
        raise ValueError('`image_encoding` must be one of {}, got {!r}'.format(
            ', '.join(conversions), image_encoding))
    names = dict(DEFAULT_TOPICS)
    names.update(topics or {})
    skip = {k: set(v) for k, v in (skip or {}).items()}
    typestore = get_typestore(stores.ROS2_HUMBLE)
    with writer_cls(path, version=8, storage_plugin=plugins[storage]) as writer:
        conns = {}
        for index, frame in enumerate(frames):
            fid = frame.frame_id or frame_id
            left = frame.left
            if conversions[image_encoding] is not None:
                left = cv2.cvtColor(left, conversions[image_encoding])
            msgs = [('image', image_message(typestore, left, image_encoding, frame.stamp_ns,
                                            fid)),
                    ('camera_info', camera_info_message(typestore, frame.camera,
                                                        frame.stamp_ns, fid))]
            if frame.depth is not None:
                msgs.append(('depth', image_message(
                    typestore, np.asarray(frame.depth, np.float32), '32FC1', frame.stamp_ns,
                    fid)))
            if frame.confidence is not None:
                msgs.append(('confidence', image_message(
                    typestore, np.asarray(frame.confidence, np.float32), '32FC1',
                    frame.stamp_ns, fid)))
            if reverse_topics:
                msgs.reverse()
            for offset, (key, msg) in enumerate(msgs):
                if index in skip.get(key, ()):
                    continue
                if key not in conns:
                    conns[key] = writer.add_connection(names[key], TOPIC_TYPES[key],
                                                       typestore=typestore)
                # Receive time: the stamp plus a little per topic, as a recorder would see.
                writer.write(conns[key], frame.stamp_ns + 1000 * offset,
                             typestore.serialize_cdr(msg, TOPIC_TYPES[key]))
    return path

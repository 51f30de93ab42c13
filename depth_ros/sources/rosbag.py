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

Each record is deserialized from a memoryview of the bytes the storage returned, so rosbags'
arrays are views of them (``numpy.frombuffer``): a frame's depth, confidence and (bgr8) image
are read-only views of their records, kept alive by the arrays, never copied; a bgra8 or rgb8
image is converted once (a new array). A 720p record of 3.7 MB used to be copied twice (rosbags
slices the CDR header off a ``bytes`` record, then the array was copied).

With rosbags 0.9 (Python 3.8, the robot's), SQLite reads the bag through a memory map
(``PRAGMA mmap_size``, see ``enable_mmap``): it copies a record's pages from the page cache
instead of one ``pread`` per 4 KiB page, 0.77x the replay's CPU per 720p frame. rosbags 0.10
and later read through apsw's own SQLite, which the map does not make faster (1.0-1.17x), so
it is left off there. Mapped pages are the page cache's (file-backed, shared, reclaimable):
they show in a process's ``RssFile``, not ``RssAnon``.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, Iterable, Optional

from depth_ros.core.camera import PinholeCamera
from depth_ros.core.checks import check_number
from depth_ros.core.encodings import image_to_array
from depth_ros.core.messages import camera_info_fields, decode_set, header_ns
from depth_ros.core.pairing import PairingBuffer
from depth_ros.sources.base import Frame, FrameSource, SourceConfigError, SourceError
from depth_ros.util import describe_error
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


STORAGES = ('sqlite3', 'mcap')


_TYPESTORES = {}


def _typestore():
    """
    Return the ROS 2 Humble typestore, made once per process.

    ``get_typestore`` builds a new store whose message classes and (de)serializers are
    generated again on first use (tens of ms per type); a looping replay reopens the bag every
    pass.
    """
    store = _TYPESTORES.get('humble')
    if store is None:
        _, _, get_typestore, stores = _rosbags()
        store = _TYPESTORES.setdefault('humble', get_typestore(stores.ROS2_HUMBLE))
    return store


def open_writer(path: str, storage: str = 'sqlite3', version: int = 8):
    """
    Return a rosbags ``Writer`` of a new bag at ``path`` (use it as a context manager).

    rosbags 0.10 and later choose the storage and the metadata version; rosbags 0.9 (the last
    for Python 3.8, JetPack 5's) writes sqlite3 bags of metadata version 8 only, and asking it
    for anything else is a ValueError naming what to install.
    """
    if storage not in STORAGES:
        raise ValueError('`storage` must be sqlite3 or mcap, got {!r}'.format(storage))
    _, writer_cls, _, _ = _rosbags()
    try:
        from rosbags.rosbag2 import StoragePlugin
    except ImportError:   # rosbags < 0.10
        if (storage, version) != ('sqlite3', 8):
            raise ValueError('writing a {} bag of version {} needs rosbags >= 0.10 (Python '
                             '>= 3.10); this rosbags writes sqlite3 bags of version 8 '
                             'only'.format(storage, version)) from None
        return writer_cls(path)
    plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
    return writer_cls(path, version=version, storage_plugin=plugin)


def _bag_problem(path: str) -> Optional[str]:
    """Return what makes ``path`` not a rosbag2 folder (None when it looks like one)."""
    if not os.path.exists(path):
        return 'bag not found: {!r}'.format(path)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, 'metadata.yaml')):
            files = sorted(os.listdir(path))[:5]
            return '{} is not a rosbag2 folder: it has no metadata.yaml (it has: {})'.format(
                path, ', '.join(files) or 'nothing')
        return None
    if not path.endswith(('.db3', '.mcap')):
        return '{} is not a rosbag2 folder or .db3/.mcap file'.format(path)
    return None


# SQLite's default ceiling on a memory map (SQLITE_MAX_MMAP_SIZE, 0x7fff0000): a larger bag
# is mapped up to there and read beyond it.
MMAP_BYTES = 0x7fff0000
# The modules whose connections are mapped: where it was measured to read faster (the module
# docstring; docs/ros.md "One process or three, at 720p").
MMAP_MODULES = ('sqlite3',)


def sqlite_connections(reader):
    """
    Return ``(connections, unreachable)`` of an open rosbags ``Reader``'s sqlite storage.

    ``connections`` are the SQLite connections rosbags reads with: rosbags 0.9 (Python 3.8)
    keeps ``reader.storage.dbconns`` (``sqlite3``); 0.10 and later keep ``dbconn`` (``apsw``) on
    each of ``reader.storage.storages`` (a bag folder) or on ``reader.storage`` (a .db3 file).
    ``unreachable`` names the sqlite storages that have neither (other rosbags internals). An
    mcap bag has neither.
    """
    connections, unreachable = [], []
    pending = [getattr(reader, 'storage', None)]
    while pending:
        storage = pending.pop()
        if storage is None:
            continue
        pending.extend(getattr(storage, 'storages', None) or ())
        if 'sqlite' not in type(storage).__name__.lower():
            continue
        dbconn = getattr(storage, 'dbconn', None)
        dbconns = getattr(storage, 'dbconns', None)
        if dbconn is not None:
            connections.append(dbconn)
        elif dbconns:
            connections.extend(dbconns)
        else:
            unreachable.append(type(storage).__name__)
    return connections, unreachable


def enable_mmap(reader, path: str, size: int = MMAP_BYTES, modules=MMAP_MODULES) -> int:
    """
    Have SQLite read an open rosbags ``Reader``'s storage through a memory map of ``size`` bytes.

    Only connections of the Python ``modules`` given (``sqlite3``, ``apsw``) are mapped.
    Returns the smallest ``mmap_size`` its connections report afterwards (0: none mapped: an
    mcap bag, connections of another module, other rosbags internals, or an SQLite built
    without it). Nothing raises: where the connections cannot be reached or the PRAGMA fails,
    the bag is read as before and the reason is logged at debug level.
    """
    connections, unreachable = sqlite_connections(reader)
    if unreachable:
        LOG.debug('bag %s: no memory map: rosbags storage %s has no dbconn/dbconns',
                  path, ', '.join(unreachable))
        return 0
    other = sorted(set(type(c).__module__.split('.')[0] for c in connections) - set(modules))
    if other:
        LOG.debug('bag %s: no memory map for %s connections (not measured faster)', path,
                  ', '.join(other))
        return 0
    sizes = []
    for dbconn in connections:
        try:
            dbconn.execute('PRAGMA mmap_size={:d}'.format(int(size)))
            rows = list(dbconn.execute('PRAGMA mmap_size'))
        except Exception as exc:  # noqa: B902 - sqlite3.Error or apsw.Error, by version
            LOG.debug('bag %s: no memory map: %s', path, describe_error(exc))
            return 0
        sizes.append(int(rows[0][0]) if rows else 0)
    return min(sizes) if sizes else 0


class BagNotFoundError(SourceConfigError, FileNotFoundError):
    """The bag path does not exist (a configuration error, and a FileNotFoundError)."""


def bag_error(path: str, exc: BaseException, doing: str) -> SourceError:
    """One-line SourceError for a bag that rosbags or sqlite cannot read (permanent)."""
    # A truncated or corrupt recording does not heal by retrying.
    return SourceConfigError('cannot {} bag {}: {}'.format(doing, path, describe_error(exc)))


class RosbagSource(FrameSource):
    """
    Frames from a rosbag2 of ZED topics (see the module docstring).

    :param path: bag folder (metadata.yaml and a .db3 or .mcap file).
    :param topics: overrides of DEFAULT_TOPICS by key (image, camera_info, depth, confidence).
    :param max_pending: bound on incomplete stamps held while pairing.
    :raises BagNotFoundError: ``path`` does not exist (a FileNotFoundError and a
        SourceConfigError). ``SourceConfigError``: it is not a bag.
    """

    name = 'bag'

    def __init__(self, path: str, topics: Optional[Dict[str, str]] = None,
                 max_pending: int = 30):
        if not path or not os.path.exists(path):
            raise BagNotFoundError('bag not found: {!r}'.format(path))
        self.topics = dict(DEFAULT_TOPICS)
        for key, topic in (topics or {}).items():
            if key not in DEFAULT_TOPICS:
                raise ValueError('`topics` key must be one of {}, got {!r}'.format(
                    ', '.join(DEFAULT_TOPICS), key))
            self.topics[key] = topic
        self.max_pending = check_number('max_pending', max_pending, 1, None, integer=True)
        problem = _bag_problem(path)
        if problem:
            raise SourceConfigError(problem)
        self.path = path
        self.bad_frames = 0       # complete stamps that could not be decoded
        self._reader = None
        self.mmap_bytes = 0       # what SQLite maps of the open bag (0: none, or mcap)
        self._messages = None
        self._typestore = None
        self._keys = {}
        self._conns = []
        self._required = ()
        self._pairing = None

    @property
    def dropped(self) -> int:
        """Incomplete stamps evicted from the pairing buffer or left at the end."""
        return self._pairing.dropped if self._pairing is not None else 0

    def open(self) -> None:
        reader_cls, _, _, _ = _rosbags()
        self.close()
        try:
            reader = reader_cls(self.path)
            reader.open()
        except Exception as exc:  # rosbags/sqlite raise their own types; name the file
            raise bag_error(self.path, exc, 'open') from None
        self._reader = reader
        self.mmap_bytes = enable_mmap(reader, self.path)
        self._typestore = _typestore()
        by_topic = {}
        for conn in reader.connections:
            by_topic.setdefault(conn.topic, []).append(conn)
        self._check_topics(by_topic)
        self._keys = {self.topics[k]: k for k in self.topics if self.topics[k] in by_topic}
        self._required = tuple(k for k in ('image', 'depth', 'confidence')
                               if self.topics[k] in by_topic)
        self._conns = [c for t in self._keys for c in by_topic[t]]
        self._start()

    def _start(self) -> None:
        # The stream from the first record, and a pairing buffer with nothing held.
        self._messages = self._reader.messages(connections=self._conns)
        self._pairing = PairingBuffer(self._required, self._on_drop,
                                      max_count=self.max_pending,
                                      latest_kinds=('camera_info',), sizeof=lambda m: 0)

    def rewind(self) -> bool:
        """Start again from the first record on the open bag (False when it is not open)."""
        if self._reader is None:
            return False
        try:
            self._start()
        except Exception as exc:  # rosbags/sqlite raise their own types; name the file
            raise bag_error(self.path, exc, 'rewind') from None
        return True

    def _check_topics(self, by_topic) -> None:
        missing = [k for k in ('image', 'depth') if self.topics[k] not in by_topic]
        if self.topics['camera_info'] not in by_topic:
            missing.append('camera_info')
        problem = None
        if missing:
            problem = 'bag {} has no {} topic(s) {}; it has: {}'.format(
                self.path, '/'.join(missing), ', '.join(self.topics[k] for k in missing),
                ', '.join(sorted(by_topic)) or 'nothing')
        for key in [k for k in self.topics if self.topics[k] in by_topic]:
            for conn in by_topic[self.topics[key]]:
                if problem is None and conn.msgtype != TOPIC_TYPES[key]:
                    problem = 'bag {}: topic {} has type {}, expected {}'.format(
                        self.path, conn.topic, conn.msgtype, TOPIC_TYPES[key])
        if problem:
            self.close()
            raise SourceConfigError(problem)

    def _on_drop(self, drop):
        have = sorted(k for k in self._pairing.kinds if k not in drop.missing)
        LOG.warning('bag %s: dropped stamp %d with only %s (%s)', self.path, drop.stamp,
                    ', '.join(have) or 'nothing', drop.why)

    def close(self) -> None:
        self._messages = None
        self.mmap_bytes = 0
        if self._reader is not None:
            try:
                self._reader.close()
            finally:
                self._reader = None

    def _records(self):
        try:
            for record in self._messages:
                yield record
        except Exception as exc:  # noqa: B902 - truncated/corrupt storage mid-stream
            raise bag_error(self.path, exc, 'read') from None

    def read(self) -> Optional[Frame]:
        if self._messages is None:
            self.open()
        for conn, _, raw in self._records():
            key = self._keys[conn.topic]
            try:
                # A view: rosbags' arrays share the record's bytes (module docstring).
                msg = self._typestore.deserialize_cdr(memoryview(raw), conn.msgtype)
            except Exception as exc:  # noqa: B902 - a corrupt record: drop it, keep going
                LOG.warning('bag %s: cannot deserialize a %s message: %s', self.path, key, exc)
                continue
            complete = self._pairing.add(key, header_ns(msg), msg)
            if complete is not None:
                frame = self._frame(header_ns(msg), complete)
                if frame is not None:
                    return frame
        # The end of the bag: what is still incomplete never will be.
        self._pairing.flush('end of the bag')
        return None

    def _frame(self, stamp: int, entry: Dict[str, object]) -> Optional[Frame]:
        try:
            if 'camera_info' not in entry:
                raise ValueError('no camera_info received yet')
            image = entry['image']
            # No copy: read-only views of the records (module docstring).
            decoded = decode_set(entry, 'drop', to_array=image_to_array)
        except ValueError as exc:
            # A bad frame is logged and dropped; the stream goes on.
            self.bad_frames += 1
            LOG.warning('bag %s: dropped frame at stamp %d: %s', self.path, stamp, exc)
            return None
        return Frame(left=np.ascontiguousarray(decoded.bgr), depth=decoded.depth,
                     confidence=decoded.confidence, camera=decoded.camera, stamp_ns=stamp,
                     frame_id=image.header.frame_id,
                     confidence_finite=decoded.confidence is not None)   # decode_set checked


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
    fields = camera_info_fields(camera)
    for name in ('d', 'k', 'r', 'p'):
        fields[name] = np.asarray(fields[name], dtype=np.float64)
    roi_type = types['sensor_msgs/msg/RegionOfInterest']
    roi = roi_type(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return types[CAMERA_INFO](header=_header(typestore, stamp_ns, frame_id), binning_x=0,
                              binning_y=0, roi=roi, **fields)


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

    _, _, get_typestore, stores = _rosbags()
    if storage not in STORAGES:
        raise ValueError('`storage` must be sqlite3 or mcap, got {!r}'.format(storage))
    conversions = {'bgra8': cv2.COLOR_BGR2BGRA, 'bgr8': None, 'rgb8': cv2.COLOR_BGR2RGB}
    if image_encoding not in conversions:
        raise ValueError('`image_encoding` must be one of {}, got {!r}'.format(
            ', '.join(conversions), image_encoding))
    names = dict(DEFAULT_TOPICS)
    names.update(topics or {})
    skip = {k: set(v) for k, v in (skip or {}).items()}
    typestore = get_typestore(stores.ROS2_HUMBLE)
    with open_writer(path, storage) as writer:
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

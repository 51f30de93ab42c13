"""
Offline pipeline over a rosbag2 of ZED topics: copy every message, add metric depth and clouds.

Reads and writes with the ``rosbags`` library (no ROS install). The input is streamed in log-time
order; every input message is copied unchanged (same connection, same log time). The image,
stereo depth, confidence and camera_info are paired by exact header stamp in a bounded buffer
(oldest incomplete stamps are dropped and counted), so memory stays flat on long bags. For each
complete stamp it runs the model, ``MetricAligner`` and ``depth_to_cloud`` - the same core the
nodes use - and writes:

* ``OUT_NS/depth``: sensor_msgs/Image 32FC1 metres (NaN invalid, +inf too far, REP 117/118);
* ``OUT_NS/camera_info``: the input camera_info;
* ``OUT_NS/points``: sensor_msgs/PointCloud2 x, y, z, rgb float32 (``CLOUD_FIELDS``), organized.

All three carry the image's header (stamp and frame_id); their log time is that of the message
that completed the stamp, so the output stays in log-time order.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
import logging
import os
import shutil
from typing import Dict, List, Optional

from depth_ros.core.checks import check_number
from depth_ros.core.encodings import array_to_image_fields
from depth_ros.core.messages import decode_set, header_ns
from depth_ros.core.pairing import PairingBuffer
from depth_ros.sources.rosbag import bag_error, open_writer
import numpy as np

LOG = logging.getLogger('depth_ros.bag')

_INSTALL = 'install depth_ros[bag] (rosbags) to read and write rosbag2 files'

# The ZED topics by their suffix (stereolabs/zed-ros2-wrapper 4.x names, ours too).
ZED_SUFFIXES = {
    'image': 'left/image_rect_color',
    'depth': 'depth/depth_registered',
    'confidence': 'confidence/confidence_map',
    'camera_info': 'left/camera_info',
}
DEFAULT_OUT_NS = '/alignment_node'


def _rosbags():
    try:
        from rosbags.rosbag2 import Reader
        from rosbags.typesys import get_typestore, Stores
    except ImportError as exc:
        raise ImportError('{}: {}'.format(_INSTALL, exc))
    return Reader, get_typestore(Stores.ROS2_HUMBLE)


@dataclass
class BagTopics:
    """Input topic names; None = find the topic by its ZED suffix (confidence is optional)."""

    image: Optional[str] = None
    depth: Optional[str] = None
    confidence: Optional[str] = None
    camera_info: Optional[str] = None

    def resolve(self, available: List[str]) -> Dict[str, Optional[str]]:
        """Fill the unset names from ``available``; ValueError when a required one is absent."""
        out = {}
        for key, suffix in ZED_SUFFIXES.items():
            name = getattr(self, key)
            if name is None:
                found = sorted(t for t in available if t.rstrip('/').endswith(suffix))
                if len(found) > 1:
                    raise ValueError('several {} topics in the bag ({}); choose one with '
                                     '--{}-topic'.format(key, ', '.join(found),
                                                         key.replace('_', '-')))
                name = found[0] if found else None
            elif name not in available:
                raise ValueError('--{}-topic {!r} is not in the bag (topics: {})'.format(
                    key.replace('_', '-'), name, ', '.join(sorted(available))))
            if name is None and key != 'confidence':
                raise ValueError('no {} topic (*/{}) in the bag (topics: {}); name it with '
                                 '--{}-topic'.format(key, suffix, ', '.join(sorted(available)),
                                                     key.replace('_', '-')))
            out[key] = name
        return out


@dataclass
class BagStats:
    """What process_bag did."""

    messages_in: int = 0
    frames_out: int = 0
    dropped_incomplete: int = 0
    dropped_bad: int = 0
    images_resized: int = 0     # image at another size than depth, resized to the depth size
    status_counts: Dict[str, int] = field(default_factory=dict)
    topics_out: Dict[str, str] = field(default_factory=dict)


class _BagJob(object):
    """One process_bag run: the reader, the writer into a temporary folder, the pairing."""

    def __init__(self, reader, writer, typestore, model, aligner, names, stride, stats,
                 max_pending):
        from depth_ros.core.pointcloud import CLOUD_FIELDS
        self.reader, self.writer, self.ts = reader, writer, typestore
        self.model, self.aligner, self.stride, self.stats = model, aligner, stride, stats
        self.wanted = {v: k for k, v in names.items() if v is not None}
        required = [k for k, v in names.items() if v is not None and k != 'camera_info']
        self.pairing = PairingBuffer(required, self._on_drop, max_count=max_pending,
                                     latest_kinds=('camera_info',), sizeof=lambda m: 0)
        field_type = typestore.types['sensor_msgs/msg/PointField']
        self.fields = [field_type(name=f.name, offset=f.offset, datatype=f.datatype,
                                  count=f.count) for f in CLOUD_FIELDS]
        self.out_conn = {}
        self.added = {}

    def _on_drop(self, drop):
        self.stats.dropped_incomplete += 1

    def add_connections(self, out_ns: str) -> None:
        """Copy the input's connections and add the three output topics."""
        for conn in self.reader.connections:
            ext = conn.ext
            # rosbags 0.10+: msgdef is a MessageDefinition; 0.9 (Python 3.8): the text itself.
            msgdef = getattr(conn.msgdef, 'data', conn.msgdef)
            self.out_conn[conn.id] = self.writer.add_connection(
                conn.topic, conn.msgtype, msgdef=msgdef, rihs01=conn.digest,
                serialization_format=getattr(ext, 'serialization_format', 'cdr'),
                offered_qos_profiles=getattr(ext, 'offered_qos_profiles', ()))
        for key, msgtype in (('depth', 'sensor_msgs/msg/Image'),
                             ('camera_info', 'sensor_msgs/msg/CameraInfo'),
                             ('points', 'sensor_msgs/msg/PointCloud2')):
            topic = out_ns + '/' + key
            if topic in self.reader.topics:
                raise ValueError('output topic {!r} is already in the input bag; choose '
                                 'another --out-ns'.format(topic))
            self.added[key] = self.writer.add_connection(topic, msgtype, typestore=self.ts)
            self.stats.topics_out[key] = topic

    def run(self, messages) -> None:
        """Copy every message; align and write each complete stamp."""
        for conn, log_ns, raw in messages:
            self.stats.messages_in += 1
            self.writer.write(self.out_conn[conn.id], log_ns, raw)
            key = self.wanted.get(conn.topic)
            if key is None:
                continue
            msg = self.ts.deserialize_cdr(raw, conn.msgtype)
            stamp = header_ns(msg)
            complete = self.pairing.add(key, stamp, msg)
            if complete is not None:
                self._frame(stamp, complete, log_ns)
        self.pairing.flush('end of the bag')

    def _frame(self, stamp, slot, log_ns) -> None:
        if 'camera_info' not in slot:
            self.stats.dropped_bad += 1
            LOG.warning('stamp %d: no camera_info yet; frame dropped', stamp)
            return
        try:
            depth, cloud, header = _run_frame(slot, self.model, self.aligner, self.stride,
                                              self.stats)
        except ValueError as exc:   # a bad frame is logged and dropped, not fatal
            self.stats.dropped_bad += 1
            LOG.warning('stamp %d: %s; frame dropped', stamp, exc)
            return
        self._write(log_ns, header, depth, cloud, slot['camera_info'])
        self.stats.frames_out += 1

    def _write(self, log_ns, header, depth, cloud, info) -> None:
        types = self.ts.types
        image = types['sensor_msgs/msg/Image'](header=header,
                                               **array_to_image_fields(depth, '32FC1'))
        self.writer.write(self.added['depth'], log_ns, self.ts.serialize_cdr(
            image, 'sensor_msgs/msg/Image'))
        self.writer.write(self.added['camera_info'], log_ns, self.ts.serialize_cdr(
            dataclasses.replace(info, header=header), 'sensor_msgs/msg/CameraInfo'))
        data = cloud.reshape(-1).view(np.uint8)
        msg_cloud = types['sensor_msgs/msg/PointCloud2'](
            header=header, height=int(cloud.shape[0]), width=int(cloud.shape[1]),
            fields=self.fields, is_bigendian=False, point_step=cloud.dtype.itemsize,
            row_step=cloud.dtype.itemsize * int(cloud.shape[1]), data=data, is_dense=False)
        self.writer.write(self.added['points'], log_ns, self.ts.serialize_cdr(
            msg_cloud, 'sensor_msgs/msg/PointCloud2'))


def check_paths(in_path: str, out_path: str) -> None:
    """Refuse a missing input bag, a folder that is not one, or an existing output (one line)."""
    if not os.path.exists(in_path):
        raise FileNotFoundError('input bag {!r} does not exist'.format(in_path))
    if os.path.isdir(in_path) and not os.path.isfile(os.path.join(in_path, 'metadata.yaml')):
        raise ValueError('input {!r} is not a rosbag2 folder: it has no metadata.yaml'.format(
            in_path))
    if os.path.exists(out_path):
        raise FileExistsError('output bag {!r} already exists; choose a new path'.format(
            out_path))


def _open_reader(in_path: str):
    """Return an open rosbags Reader of ``in_path``; a one-line SourceError if it cannot open."""
    Reader, _ = _rosbags()
    try:
        reader = Reader(in_path)
        reader.open()
    except Exception as exc:  # noqa: B902 - rosbags/sqlite errors: one line
        raise bag_error(in_path, exc, 'open') from None
    return reader


def check_topics(in_path: str, topics: Optional[BagTopics] = None) -> Dict[str, Optional[str]]:
    """Open the input bag and resolve its topics (:meth:`BagTopics.resolve`); one-line errors."""
    reader = _open_reader(in_path)
    try:
        return (topics or BagTopics()).resolve(list(reader.topics))
    finally:
        reader.close()


def _storage(in_path: str) -> str:
    # Keep the input's storage format: an mcap recording gives an mcap output.
    files = os.listdir(in_path) if os.path.isdir(in_path) else [in_path]
    return 'mcap' if any(f.endswith('.mcap') for f in files) else 'sqlite3'


def _temporary_sibling(out_path: str) -> str:
    parent = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(parent):
        raise FileNotFoundError('the folder of the output bag {!r} does not exist'.format(
            out_path))
    # A folder name of our own next to the output; rosbags creates it (it must not exist).
    return os.path.join(parent, '.{}.partial-{}'.format(os.path.basename(
        os.path.abspath(out_path)), os.getpid()))


def process_bag(in_path: str, out_path: str, model, topics: Optional[BagTopics] = None,
                out_ns: str = DEFAULT_OUT_NS, aligner_options: Optional[dict] = None,
                cloud_stride: int = 1, max_pending: int = 30, progress: bool = True,
                version: int = 8) -> BagStats:
    """
    Run ``model`` + ``MetricAligner`` + ``depth_to_cloud`` over a ZED bag; write a new bag.

    The output is written into a temporary folder next to ``out_path`` and renamed to it only
    when the whole bag is done: an error or Ctrl-C leaves no partial bag (and a rerun works).

    :param model: anything with ``predict(bgr) -> [H, W] relative``; its ``relative_kind``
        ('disparity' unless set, 'depth' for Marigold) configures the aligner.
    :param out_ns: namespace of the added topics (``/alignment_node`` by default).
    :param max_pending: stamps held while waiting for their other topics (bounded memory).
    :param version: rosbag2 metadata version of the output (rosbags writes 8 or 9).
    :raises FileNotFoundError: ``in_path`` does not exist. ``FileExistsError``: ``out_path`` does.
        ``SourceError`` (one line): the input is truncated or corrupt.
    """
    from depth_ros.core.alignment import MetricAligner
    _, typestore = _rosbags()
    check_paths(in_path, out_path)
    check_number('max_pending', max_pending, 1, None, integer=True)
    check_number('cloud_stride', cloud_stride, 1, None, integer=True)
    out_ns = '/' + out_ns.strip('/') if out_ns.strip('/') else ''
    options = dict(aligner_options or {})
    options.setdefault('relative_kind', getattr(model, 'relative_kind', 'disparity'))
    aligner = MetricAligner(**options)
    stats = BagStats()
    partial = _temporary_sibling(out_path)
    try:
        reader = _open_reader(in_path)
        try:
            names = (topics or BagTopics()).resolve(list(reader.topics))
            with open_writer(partial, _storage(in_path), version) as writer:
                job = _BagJob(reader, writer, typestore, model, aligner, names, cloud_stride,
                              stats, max_pending)
                job.add_connections(out_ns)
                job.run(_messages(reader, in_path, progress))
        finally:
            reader.close()
        os.rename(partial, out_path)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    LOG.info('process-bag: %d messages copied, %d frames added (%d images resized to the '
             'depth size), %d incomplete stamps dropped, %d bad frames dropped',
             stats.messages_in, stats.frames_out, stats.images_resized,
             stats.dropped_incomplete, stats.dropped_bad)
    return stats


def _messages(reader, path: str, progress: bool):
    iterator = reader.messages()
    if progress:
        from tqdm import tqdm
        iterator = tqdm(iterator, total=reader.message_count, desc='process-bag', unit='msg')
    try:
        for record in iterator:
            yield record
    except Exception as exc:  # noqa: B902 - truncated or corrupt storage mid-stream
        raise bag_error(path, exc, 'read') from None


def frame_inputs(slot: dict, info=None):
    """
    Decode one paired stamp: (bgr, stereo depth, confidence or None, camera) at depth size.

    The image is resized to the depth size when the recording has them at different sizes
    (``core.messages.decode_set`` with the 'resize' policy).
    """
    parts = dict(slot)
    if info is not None:
        parts['camera_info'] = info
    decoded = decode_set(parts, 'resize')
    return decoded.bgr, decoded.depth, decoded.confidence, decoded.camera


def _run_frame(slot, model, aligner, stride, stats):
    from depth_ros.core.pointcloud import depth_to_cloud
    decoded = decode_set(slot, 'resize')
    if decoded.resized:
        # Unlike alignment_node, which drops such a set (live, a size mismatch is a
        # configuration to fix), a recording cannot be fixed: resize, and say so once.
        img = slot['image']
        if not stats.images_resized:
            LOG.warning('image %dx%d resized to the depth size %dx%d (the live alignment_node '
                        'drops frames whose sizes differ)', img.width, img.height,
                        decoded.depth.shape[1], decoded.depth.shape[0])
        stats.images_resized += 1
    relative = model.predict(decoded.bgr)
    aligned = aligner.update(relative, decoded.depth, decoded.confidence)
    stats.status_counts[aligned.status] = stats.status_counts.get(aligned.status, 0) + 1
    depth = np.ascontiguousarray(aligned.depth, dtype=np.float32)   # [H, W] metres
    cloud = depth_to_cloud(depth, decoded.camera, bgr=decoded.bgr, stride=stride)
    return depth, cloud, slot['image'].header

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

import collections
import dataclasses
from dataclasses import dataclass, field
import logging
import os
from typing import Dict, List, Optional

import cv2
from depth_ros.core.encodings import array_to_image_fields, image_to_array, to_bgr8
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
        from rosbags.rosbag2 import Reader, StoragePlugin, Writer
        from rosbags.typesys import get_typestore, Stores
    except ImportError as exc:
        raise ImportError('{}: {}'.format(_INSTALL, exc))
    return Reader, Writer, StoragePlugin, get_typestore(Stores.ROS2_HUMBLE)


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
                raise ValueError('topic `{}` = {!r} is not in the bag (topics: {})'.format(
                    key, name, ', '.join(sorted(available))))
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


def _stamp_ns(header) -> int:
    return int(header.stamp.sec) * 1000000000 + int(header.stamp.nanosec)


def process_bag(in_path: str, out_path: str, model, topics: Optional[BagTopics] = None,
                out_ns: str = DEFAULT_OUT_NS, aligner_options: Optional[dict] = None,
                cloud_stride: int = 1, max_pending: int = 30, progress: bool = True,
                version: int = 8) -> BagStats:
    """
    Run ``model`` + ``MetricAligner`` + ``depth_to_cloud`` over a ZED bag; write a new bag.

    :param model: anything with ``predict(bgr) -> [H, W] relative``; its ``relative_kind``
        ('disparity' unless set, 'depth' for Marigold) configures the aligner.
    :param out_ns: namespace of the added topics (``/alignment_node`` by default).
    :param max_pending: stamps held while waiting for their other topics (bounded memory).
    :param version: rosbag2 metadata version of the output (rosbags writes 8 or 9).
    :raises FileNotFoundError: ``in_path`` does not exist. ``FileExistsError``: ``out_path`` does.
    """
    from depth_ros.core.alignment import MetricAligner
    from depth_ros.core.pointcloud import CLOUD_FIELDS, depth_to_cloud
    Reader, Writer, StoragePlugin, typestore = _rosbags()
    if not os.path.exists(in_path):
        raise FileNotFoundError('input bag {!r} does not exist'.format(in_path))
    if os.path.exists(out_path):
        raise FileExistsError('output bag {!r} already exists; choose a new path'.format(
            out_path))
    if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
        raise ValueError('`max_pending` must be an integer >= 1, got {!r}'.format(max_pending))
    if isinstance(cloud_stride, bool) or not isinstance(cloud_stride, int) or cloud_stride < 1:
        raise ValueError('`cloud_stride` must be an integer >= 1, got {!r}'.format(cloud_stride))
    out_ns = '/' + out_ns.strip('/') if out_ns.strip('/') else ''
    options = dict(aligner_options or {})
    options.setdefault('relative_kind', getattr(model, 'relative_kind', 'disparity'))
    aligner = MetricAligner(**options)
    stats = BagStats()
    Image = typestore.types['sensor_msgs/msg/Image']
    Cloud = typestore.types['sensor_msgs/msg/PointCloud2']
    Field = typestore.types['sensor_msgs/msg/PointField']
    fields = [Field(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count)
              for f in CLOUD_FIELDS]

    with Reader(in_path) as reader:
        names = (topics or BagTopics()).resolve(list(reader.topics))
        wanted = {v: k for k, v in names.items() if v is not None}
        required = [k for k, v in names.items() if v is not None and k != 'camera_info']
        # Keep the input's storage format: an mcap recording gives an mcap output.
        files = os.listdir(in_path) if os.path.isdir(in_path) else [in_path]
        storage = StoragePlugin.MCAP if any(f.endswith('.mcap') for f in files) \
            else StoragePlugin.SQLITE3
        writer = Writer(out_path, version=version, storage_plugin=storage)
        with writer:
            out_conn = {}
            for conn in reader.connections:
                ext = conn.ext
                out_conn[conn.id] = writer.add_connection(
                    conn.topic, conn.msgtype, msgdef=conn.msgdef.data, rihs01=conn.digest,
                    serialization_format=getattr(ext, 'serialization_format', 'cdr'),
                    offered_qos_profiles=getattr(ext, 'offered_qos_profiles', ()))
            added = {}
            for key, msgtype in (('depth', 'sensor_msgs/msg/Image'),
                                 ('camera_info', 'sensor_msgs/msg/CameraInfo'),
                                 ('points', 'sensor_msgs/msg/PointCloud2')):
                topic = out_ns + '/' + key
                if topic in reader.topics:
                    raise ValueError('output topic {!r} is already in the input bag; choose '
                                     'another --out-ns'.format(topic))
                added[key] = writer.add_connection(topic, msgtype, typestore=typestore)
                stats.topics_out[key] = topic

            pending = collections.OrderedDict()   # stamp_ns -> {key: msg, '_t': log time}
            infos = {}                            # stamp_ns -> CameraInfo (bounded like pending)
            last_info = None
            iterator = reader.messages()
            if progress:
                from tqdm import tqdm
                iterator = tqdm(iterator, total=reader.message_count, desc='process-bag',
                                unit='msg')
            for conn, log_ns, raw in iterator:
                stats.messages_in += 1
                writer.write(out_conn[conn.id], log_ns, raw)
                key = wanted.get(conn.topic)
                if key is None:
                    continue
                msg = typestore.deserialize_cdr(raw, conn.msgtype)
                stamp = _stamp_ns(msg.header)
                if key == 'camera_info':
                    last_info = msg
                    infos[stamp] = msg
                    while len(infos) > max_pending:
                        infos.pop(next(iter(infos)))
                    continue
                slot = pending.get(stamp)
                if slot is None:
                    slot = pending[stamp] = {}
                    while len(pending) > max_pending:
                        pending.popitem(last=False)
                        stats.dropped_incomplete += 1
                slot[key] = msg
                if not all(k in slot for k in required):
                    continue
                del pending[stamp]
                info = infos.get(stamp, last_info)
                if info is None:
                    stats.dropped_bad += 1
                    LOG.warning('stamp %d: no camera_info yet; frame dropped', stamp)
                    continue
                try:
                    depth, cloud, header = _run_frame(slot, info, model, aligner, depth_to_cloud,
                                                      cloud_stride, stats)
                except ValueError as exc:   # a bad frame is logged and dropped, not fatal
                    stats.dropped_bad += 1
                    LOG.warning('stamp %d: %s; frame dropped', stamp, exc)
                    continue
                writer.write(added['depth'], log_ns, typestore.serialize_cdr(
                    Image(header=header, **array_to_image_fields(depth, '32FC1')),
                    'sensor_msgs/msg/Image'))
                info_out = dataclasses.replace(info, header=header)
                writer.write(added['camera_info'], log_ns, typestore.serialize_cdr(
                    info_out, 'sensor_msgs/msg/CameraInfo'))
                data = cloud.reshape(-1).view(np.uint8)
                msg_cloud = Cloud(header=header, height=int(cloud.shape[0]),
                                  width=int(cloud.shape[1]), fields=fields, is_bigendian=False,
                                  point_step=cloud.dtype.itemsize,
                                  row_step=cloud.dtype.itemsize * int(cloud.shape[1]),
                                  data=data, is_dense=False)
                writer.write(added['points'], log_ns, typestore.serialize_cdr(
                    msg_cloud, 'sensor_msgs/msg/PointCloud2'))
                stats.frames_out += 1
    stats.dropped_incomplete += len(pending)
    LOG.info('process-bag: %d messages copied, %d frames added (%d images resized to the '
             'depth size), %d incomplete stamps dropped, %d bad frames dropped',
             stats.messages_in, stats.frames_out, stats.images_resized,
             stats.dropped_incomplete, stats.dropped_bad)
    return stats


def frame_inputs(slot: dict, info):
    """Decode one paired stamp: (bgr, stereo depth, confidence or None, camera) at depth size."""
    img = slot['image']
    bgr = to_bgr8(image_to_array(img), img.encoding)
    from depth_ros.ros.conversions import camera_from_info
    from depth_ros.sources.rosbag import depth_to_metres
    stereo = depth_to_metres(image_to_array(slot['depth']), slot['depth'].encoding)
    confidence = None
    if 'confidence' in slot:
        confidence = image_to_array(slot['confidence']).astype(np.float32, copy=False)
    h, w = stereo.shape
    # The live alignment_node's reading of CameraInfo (P for rectified images), scaled to the
    # depth size when the recording published depth at another resolution.
    camera = camera_from_info(info, width=w, height=h)
    if bgr.shape[:2] != (h, w):
        bgr = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA)
    return bgr, stereo, confidence, camera


def _run_frame(slot, info, model, aligner, depth_to_cloud, stride, stats):
    bgr, stereo, confidence, camera = frame_inputs(slot, info)
    img = slot['image']
    if (int(img.height), int(img.width)) != stereo.shape[:2]:
        # Unlike alignment_node, which drops such a set (live, a size mismatch is a
        # configuration to fix), a recording cannot be fixed: resize, and say so once.
        if not stats.images_resized:
            LOG.warning('image %dx%d resized to the depth size %dx%d (the live alignment_node '
                        'drops frames whose sizes differ)', img.width, img.height,
                        stereo.shape[1], stereo.shape[0])
        stats.images_resized += 1
    relative = model.predict(bgr)
    aligned = aligner.update(relative, stereo, confidence)
    stats.status_counts[aligned.status] = stats.status_counts.get(aligned.status, 0) + 1
    depth = np.ascontiguousarray(aligned.depth, dtype=np.float32)   # [H, W] metres
    cloud = depth_to_cloud(depth, camera, bgr=bgr, stride=stride)
    return depth, cloud, slot['image'].header

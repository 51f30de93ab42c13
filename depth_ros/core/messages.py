"""
Message fields <-> core objects, duck-typed: the same code reads rclpy and rosbags messages.

Every reader of ZED-style messages in the package goes through here: the live alignment_node
(rclpy messages), the rosbag replay source and ``process-bag`` (rosbags dataclasses). Nothing
here imports ROS; a message is any object with the sensor_msgs field names.

- :func:`stamp_to_ns`: builtin_interfaces/Time -> integer nanoseconds.
- :func:`depth_to_metres`: 32FC1 metres as is; 16UC1/mono16 millimetres -> float32 metres.
- :func:`camera_from_info` / :func:`camera_info_fields`: CameraInfo <-> PinholeCamera.
- :func:`check_message` and :func:`check_parts`: what can be checked of a message, and of the
  messages of one stamp, from their fields alone (no pixel is read): alignment_node refuses a
  wrong message when it arrives with them.
- :func:`decode_set`: one paired set of messages -> arrays and camera, checked (the same two
  checks, then the values), with the size policy as an argument ('drop' live, 'resize'
  offline).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import cv2
from depth_ros.core.camera import PinholeCamera
from depth_ros.core.encodings import check_layout, colour_encoding, image_to_array, to_bgr8
import numpy as np

SIZE_POLICIES = ('drop', 'resize')
_MM_PER_M = np.float32(1000.0)
# Relative tolerance on aspect ratios between a set's images and its camera_info.
_ASPECT_TOLERANCE = 0.02
# kind -> (encodings it takes, its name in errors, what is expected)
_ENCODINGS = {
    'disparity': (('32FC1',), 'disparity', '32FC1'),
    'depth': (('32FC1', '16UC1', 'mono16'), 'stereo depth', '32FC1 (m) or 16UC1 (mm)'),
    'confidence': (('32FC1',), 'confidence', '32FC1'),
}


def _check_encoding(kind: str, encoding: str) -> None:
    accepted, name, expected = _ENCODINGS[kind]
    if encoding not in accepted:
        raise ValueError('{} has encoding {!r}; expected {}'.format(name, encoding, expected))


def stamp_to_ns(stamp) -> int:
    """builtin_interfaces/Time (``sec``, ``nanosec``) -> integer nanoseconds."""
    return int(stamp.sec) * 1000000000 + int(stamp.nanosec)


def header_ns(msg) -> int:
    """Stamp of a message's header in integer nanoseconds."""
    return stamp_to_ns(msg.header.stamp)


def depth_to_metres(array: np.ndarray, encoding: str) -> np.ndarray:
    """
    Stereo depth image -> [H, W] float32 metres (REP 118).

    32FC1 is metres already (returned as is, no copy). 16UC1 / mono16 is millimetres: divided
    by 1000 in float32 (the correctly rounded metre value of every uint16), 0 (no data) -> NaN.

    :raises ValueError: for any other encoding, naming it.
    """
    _check_encoding('depth', encoding)
    if encoding == '32FC1':
        return np.asarray(array, dtype=np.float32)
    out = array.astype(np.float32) / _MM_PER_M      # 16UC1, mono16
    out[array == 0] = np.nan
    return out


def camera_from_info(msg, width: Optional[int] = None, height: Optional[int] = None,
                     use_projection: bool = True) -> PinholeCamera:
    """
    Read a PinholeCamera from a CameraInfo, optionally for an image of another size.

    :param use_projection: take fx, fy, cx, cy from P (the rectified camera) when P is set;
        K otherwise. Our images are rectified, for which P is the right model.
    :param width, height: size of the image the camera is wanted for (default: the info's);
        the intrinsics are scaled when it differs, which needs the same aspect ratio.
    :raises ValueError: zero size, K/P without positive focal lengths (names the field), or an
        image whose aspect ratio differs from the info's (x and y would scale differently).
    """
    if msg.width <= 0 or msg.height <= 0:
        raise ValueError('camera_info has an invalid size {}x{}'.format(msg.width, msg.height))
    p = np.asarray(msg.p, dtype=np.float64).reshape(-1)
    k = np.asarray(msg.k, dtype=np.float64).reshape(-1)
    if use_projection and p.size == 12 and p[0] > 0 and p[5] > 0:
        fx, fy, cx, cy, field = float(p[0]), float(p[5]), float(p[2]), float(p[6]), 'p'
    elif k.size == 9:
        fx, fy, cx, cy, field = float(k[0]), float(k[4]), float(k[2]), float(k[5]), 'k'
    else:
        raise ValueError('camera_info has neither a 3x4 p nor a 3x3 k (sizes {} and {})'.format(
            p.size, k.size))
    values = np.array([fx, fy, cx, cy])
    if not np.all(np.isfinite(values)) or fx <= 0 or fy <= 0:
        raise ValueError('camera_info.{} has no valid intrinsics: fx={!r} fy={!r} cx={!r} '
                         'cy={!r}'.format(field, fx, fy, cx, cy))
    camera = PinholeCamera(fx, fy, cx, cy, int(msg.width), int(msg.height))
    if width is not None and height is not None and (width, height) != (msg.width, msg.height):
        sx, sy = float(width) / msg.width, float(height) / msg.height
        if abs(sx - sy) > _ASPECT_TOLERANCE * max(sx, sy):
            raise ValueError('camera_info is {}x{} but the image is {}x{}: their aspect ratios '
                             'differ, so the intrinsics cannot be scaled'.format(
                                 msg.width, msg.height, width, height))
        camera = camera.scaled(int(width), int(height))
    return camera


def baseline_from_info(msg) -> Optional[float]:
    """
    Stereo baseline in metres from the RIGHT camera's CameraInfo: ``-P[0,3] / P[0,0]``.

    Returns None when P has no baseline (a left camera's info, or no P).
    """
    p = np.asarray(getattr(msg, 'p', ()), dtype=np.float64).reshape(-1)
    if p.size != 12 or not p[0] > 0 or not np.isfinite(p[3]) or p[3] == 0:
        return None
    return float(-p[3] / p[0])


def camera_info_fields(camera: PinholeCamera, distortion_model: str = 'plumb_bob',
                       baseline_m: Optional[float] = None) -> dict:
    """
    Return the CameraInfo fields of a rectified image (D zero, R identity, P = [K | 0]).

    With ``baseline_m`` it is the RIGHT camera of a rectified pair: P[0,3] = -fx * baseline
    (the ROS stereo convention, as zed-ros2-wrapper's ``right/camera_info``). Both the rclpy and
    the rosbags builders fill their message from this dict.
    """
    tx = 0.0 if baseline_m is None else -camera.fx * float(baseline_m)
    return {
        'height': int(camera.height), 'width': int(camera.width),
        'distortion_model': distortion_model,
        'd': [0.0] * 5,
        'k': [camera.fx, 0.0, camera.cx, 0.0, camera.fy, camera.cy, 0.0, 0.0, 1.0],
        'r': [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        'p': [camera.fx, 0.0, camera.cx, tx, 0.0, camera.fy, camera.cy, 0.0, 0.0, 0.0, 1.0,
              0.0],
    }


class DecodedSet(object):
    """
    Arrays of one paired set; attributes are None where the set had no such message.

    ``relative`` [h, w] float32; ``depth`` [H, W] float32 metres; ``confidence`` [H, W]
    float32; ``bgr`` [H, W, 3] uint8; ``camera`` at the depth size; ``frame_id`` and
    ``stamp_ns`` of the depth header; ``resized``: the image was resized to the depth size.
    """

    __slots__ = ('relative', 'depth', 'confidence', 'bgr', 'camera', 'frame_id', 'stamp_ns',
                 'resized')

    def __init__(self):
        for name in self.__slots__:
            setattr(self, name, None)
        self.resized = False


def _check_frames(msgs: Dict[str, object]) -> str:
    frames = {k: m.header.frame_id for k, m in msgs.items() if hasattr(m, 'header')}
    if not frames:
        return ''
    ids = set(frames.values())
    if '' in ids:
        empty = sorted(k for k, f in frames.items() if not f)
        raise ValueError('{} has an empty header.frame_id; outputs need a frame (set the '
                         'source\'s frame id)'.format(', '.join(empty)))
    if len(ids) > 1:
        raise ValueError('the set mixes frames: {}'.format(', '.join(
            '{}={}'.format(k, frames[k]) for k in sorted(frames))))
    return ids.pop()


def _decode_relative(msg, to_array) -> np.ndarray:
    relative = to_array(msg)
    bad = relative.size - int(np.count_nonzero(np.isfinite(relative)))
    if bad:
        raise ValueError('disparity has {} NaN/inf values of {}'.format(bad, relative.size))
    return relative


def _decode_confidence(msg, to_array) -> np.ndarray:
    return check_confidence(to_array(msg))


def check_confidence(confidence: np.ndarray) -> np.ndarray:
    """Return the confidence as float32 (no copy when it is); ValueError on NaN/inf."""
    confidence = np.asarray(confidence, dtype=np.float32)
    if not np.all(np.isfinite(confidence)):
        raise ValueError('confidence has NaN/inf values')
    return confidence


def _decode_image(msg, to_array, depth: np.ndarray, out: DecodedSet):
    bgr = to_bgr8(to_array(msg), msg.encoding)
    if bgr.shape[:2] != depth.shape:    # the 'resize' policy (check_parts refuses it else)
        h, w = depth.shape
        bgr = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA)
        out.resized = True
    return bgr


def check_sizes(sizes: Dict[str, Tuple[int, int]], size_policy: str = 'drop') -> None:
    """
    Check the image sizes of one set against its depth's: ``{kind: (width, height)}``.

    The confidence (and, with the 'drop' size policy, the image) of the depth's size; a
    disparity of the depth's aspect ratio (the aligner resizes it to the stereo size; very
    different aspect ratios would misalign pixels). Messages (check_parts) and arrays handed
    over in-process (alignment_node) are checked by this one function.

    :raises ValueError: naming the kinds that disagree.
    """
    depth = sizes.get('depth')
    if depth is None:
        return
    dw, dh = depth
    for kind, (w, h) in sizes.items():
        if kind == 'confidence' and (w, h) != depth:
            raise ValueError('confidence is {}x{} but depth is {}x{}'.format(w, h, dw, dh))
        if kind == 'image' and size_policy == 'drop' and (w, h) != depth:
            raise ValueError('depth is {}x{} but image is {}x{}; they must match'.format(
                dw, dh, w, h))
        if kind == 'disparity' and \
                abs(float(w) / h - float(dw) / dh) > _ASPECT_TOLERANCE * dw / dh:
            raise ValueError('disparity is {}x{} but depth is {}x{}: their aspect ratios '
                             'must match'.format(w, h, dw, dh))


def check_message(kind: str, msg) -> None:
    """
    Check one message of a set on its own, from its fields (no pixel is read).

    An image kind (disparity, depth, confidence, image): the encodings the kind takes, and a
    layout that holds together (a size, a ``step``, ``step * height`` bytes of data). A
    camera_info: a size and intrinsics.

    :raises ValueError: naming the kind and what is wrong.
    """
    if kind == 'camera_info':
        camera_from_info(msg)
        return
    if kind == 'image':
        colour_encoding(msg.encoding)
    else:
        _check_encoding(kind, msg.encoding)
    check_layout(msg)


def check_parts(msgs: Dict[str, object], size_policy: str = 'drop',
                camera_info=None) -> str:
    """
    Check that the messages of one stamp agree, from their fields; return their frame id.

    Checked: one non-empty header.frame_id; confidence (and, with the 'drop' size policy,
    the image) of the depth's size; a disparity of the depth's aspect ratio; images of the
    camera_info's aspect ratio (another size of the same aspect is scaled). Any subset of a
    set can be checked (the messages of a stamp so far). Each message passed
    :func:`check_message`.

    :param camera_info: the camera_info that ``msgs`` are checked against when they have none
        (alignment_node: the newest valid one), frame and sizes.
    :raises ValueError: naming the messages that disagree.
    """
    info = msgs.get('camera_info', camera_info)
    frame_id = _check_frames(msgs if info is None else dict(msgs, camera_info=info))
    images = {k: m for k, m in msgs.items() if k != 'camera_info'}
    check_sizes({k: (m.width, m.height) for k, m in images.items()}, size_policy)
    for kind, msg in images.items():
        if kind != 'disparity' and info is not None and \
                (kind != 'image' or size_policy == 'drop'):
            camera_from_info(info, msg.width, msg.height)
    return frame_id


def decode_set(msgs: Dict[str, object], size_policy: str = 'drop',
               to_array: Callable = image_to_array) -> DecodedSet:
    """
    Decode one paired set ``{kind: message}`` into checked arrays and a camera.

    Kinds: disparity, depth, confidence, image, camera_info; depth and camera_info are
    required.

    Checks what a bad frame can get wrong and raises ValueError naming it: encodings, sizes,
    NaN/inf in the relative map or the confidence, an empty or mixed header.frame_id, a
    camera_info whose aspect ratio differs from the depth's.

    :param size_policy: an image of another size than the depth is dropped ('drop', the live
        node: a configuration to fix) or resized to the depth size ('resize', offline tools:
        a recording cannot be fixed; ``DecodedSet.resized`` says so).
    :param to_array: Image message -> array (``conversions.image_to_numpy`` in a node, which
        uses cv_bridge where installed).
    """
    if size_policy not in SIZE_POLICIES:
        raise ValueError('`size_policy` must be one of {}, got {!r}'.format(
            ', '.join(SIZE_POLICIES), size_policy))
    for key in ('depth', 'camera_info'):
        if key not in msgs:
            raise ValueError('the set has no {} message'.format(key))
    for kind, msg in msgs.items():
        check_message(kind, msg)
    out = DecodedSet()
    out.frame_id = check_parts(msgs, size_policy)
    depth_msg = msgs['depth']
    out.stamp_ns = header_ns(depth_msg)
    out.depth = depth_to_metres(to_array(depth_msg), depth_msg.encoding)   # [H, W] float32 m
    h, w = out.depth.shape
    if 'disparity' in msgs:
        out.relative = _decode_relative(msgs['disparity'], to_array)   # [h, w] float32
    if 'confidence' in msgs:
        out.confidence = _decode_confidence(msgs['confidence'], to_array)   # [H, W] float32
    if 'image' in msgs:
        out.bgr = _decode_image(msgs['image'], to_array, out.depth, out)   # [H, W, 3] uint8
    out.camera = camera_from_info(msgs['camera_info'], w, h)
    return out

"""`depth-ros process-bag` on a ZED bag written here: topics, stamps, values, cloud bytes."""
import logging
import os

import cv2
from depth_ros import cli
from depth_ros.core.alignment import MetricAligner
from depth_ros.core.camera import PinholeCamera
from depth_ros.core.encodings import image_to_array
from depth_ros.core.pointcloud import CLOUD_FIELDS, depth_to_cloud
from depth_ros.sources.base import Frame
from depth_ros.sources.rosbag import DEFAULT_TOPICS, write_test_bag
from depth_ros.tools.bag import BagTopics, process_bag
import numpy as np
import pytest

rosbags = pytest.importorskip('rosbags')

H, W = 36, 48
CAMERA = PinholeCamera(40.0, 40.0, 23.5, 17.5, W, H)
STAMPS = [1700000000 * 10 ** 9 + i * 50 * 10 ** 6 for i in range(5)]


class GrayModel(object):
    """A deterministic stand-in network: brightness as relative disparity."""

    relative_kind = 'disparity'
    name = 'gray'

    def predict(self, bgr):
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255.0 + 0.1


def _frames():
    rng = np.random.default_rng(0)
    for i, stamp in enumerate(STAMPS):
        depth = np.linspace(1.0, 4.0, W, dtype=np.float32)[None].repeat(H, 0) + 0.1 * i
        # Brightness follows inverse depth, so the stand-in's disparity is a real affine of it.
        gray = np.clip(255 * (1.0 / depth - 0.2), 0, 255).astype(np.uint8)
        left = cv2.merge([gray, gray, gray])
        depth[rng.random((H, W)) < 0.1] = np.nan
        conf = rng.uniform(1, 30, (H, W)).astype(np.float32)
        yield Frame(left=left, depth=depth, confidence=conf, camera=CAMERA, stamp_ns=stamp,
                    frame_id='zed_left_camera_optical_frame')


def _read(path):
    from rosbags.rosbag2 import Reader
    from rosbags.typesys import get_typestore, Stores
    ts = get_typestore(Stores.ROS2_HUMBLE)
    out = {}
    with Reader(path) as reader:
        for conn, t, raw in reader.messages():
            out.setdefault(conn.topic, []).append((t, ts.deserialize_cdr(raw, conn.msgtype)))
    return out


def test_process_bag_adds_depth_info_cloud(tmp_path):
    src = write_test_bag(str(tmp_path / 'in'), _frames())
    dst = str(tmp_path / 'out')
    stats = process_bag(src, dst, GrayModel(), progress=False)
    assert stats.frames_out == 5 and stats.dropped_incomplete == 0, stats
    inp, out = _read(src), _read(dst)
    for topic, msgs in inp.items():   # every input message copied unchanged, same log time
        assert [t for t, _ in out[topic]] == [t for t, _ in msgs], topic
    depth_msgs = out['/alignment_node/depth']
    info_msgs = out['/alignment_node/camera_info']
    cloud_msgs = out['/alignment_node/points']
    for msgs in (depth_msgs, info_msgs, cloud_msgs):
        stamps = [m.header.stamp.sec * 10 ** 9 + m.header.stamp.nanosec for _, m in msgs]
        assert stamps == STAMPS, 'expected {}, received {}'.format(STAMPS, stamps)
        assert all(m.header.frame_id == 'zed_left_camera_optical_frame' for _, m in msgs)
    # Depth equals MetricAligner on the same inputs, frame by frame (temporal state included).
    aligner = MetricAligner(relative_kind='disparity')
    model = GrayModel()
    for frame, (_, dmsg), (_, cmsg) in zip(_frames(), depth_msgs, cloud_msgs):
        want = aligner.update(model.predict(frame.left), frame.depth, frame.confidence).depth
        got = image_to_array(dmsg)
        assert dmsg.encoding == '32FC1' and got.shape == (H, W)
        np.testing.assert_array_equal(got, want)
        assert np.isfinite(got).mean() > 0.9
        # Cloud bytes decode back to depth_to_cloud of that depth.
        assert [(f.name, f.offset, f.datatype, f.count) for f in cmsg.fields] == \
            [tuple(f) for f in CLOUD_FIELDS]
        assert cmsg.point_step == 16 and cmsg.row_step == 16 * W and not cmsg.is_dense
        assert (cmsg.height, cmsg.width) == (H, W)
        cloud = np.frombuffer(cmsg.data.tobytes(), dtype='<f4').reshape(H, W, 4)
        ref = depth_to_cloud(want, CAMERA, bgr=frame.left)
        np.testing.assert_array_equal(cloud.view(np.uint32), ref.view('<u4').reshape(H, W, 4))
    info = info_msgs[0][1]
    np.testing.assert_allclose(np.asarray(info.k).reshape(3, 3), CAMERA.K)


def test_pairing_drops_incomplete_and_bounded(tmp_path):
    # Frame 1 has no depth and frame 3 no confidence: both are dropped, the rest pair up even
    # with the topics written in reverse order.
    src = write_test_bag(str(tmp_path / 'in'), _frames(), skip={'depth': [1], 'confidence': [3]},
                         reverse_topics=True, image_encoding='rgb8')
    stats = process_bag(src, str(tmp_path / 'out'), GrayModel(), progress=False, max_pending=2)
    assert stats.frames_out == 3 and stats.dropped_incomplete == 2, stats
    out = _read(str(tmp_path / 'out'))
    stamps = [m.header.stamp.sec * 10 ** 9 + m.header.stamp.nanosec
              for _, m in out['/alignment_node/depth']]
    assert stamps == [STAMPS[0], STAMPS[2], STAMPS[4]], stamps


def test_errors_name_the_problem(tmp_path):
    src = write_test_bag(str(tmp_path / 'in'), _frames())
    with pytest.raises(FileNotFoundError, match='input bag .*nope.* does not exist'):
        process_bag(str(tmp_path / 'nope'), str(tmp_path / 'o'), GrayModel())
    with pytest.raises(FileExistsError, match='already exists'):
        process_bag(src, src, GrayModel())
    with pytest.raises(ValueError, match="--image-topic '/cam/image' is not in the bag"):
        process_bag(src, str(tmp_path / 'o2'), GrayModel(), BagTopics(image='/cam/image'))
    with pytest.raises(ValueError) as err:
        process_bag(src, str(tmp_path / 'o3'), GrayModel(), max_pending=0)
    assert str(err.value) == '`max_pending` must be an integer >= 1, got 0'
    assert BagTopics().resolve(list(DEFAULT_TOPICS.values()))['depth'] == \
        DEFAULT_TOPICS['depth']


def test_cli_process_bag(tmp_path, monkeypatch, capsys):
    try:
        from rosbags.rosbag2 import StoragePlugin  # noqa: F401
    except ImportError:
        pytest.skip('writing an mcap bag needs rosbags >= 0.10 (Python >= 3.10)')
    src = write_test_bag(str(tmp_path / 'in'), _frames(), storage='mcap')
    from depth_ros.commands import _args
    monkeypatch.setattr(_args, 'load_model', lambda *a, **k: GrayModel())
    dst = str(tmp_path / 'out')
    assert cli.main(['process-bag', src, dst, '--model', 'x', '--out-ns', '/fused']) == 0
    out = _read(dst)
    assert len(out['/fused/points']) == 5 and len(out['/fused/depth']) == 5
    assert any(f.endswith('.mcap') for f in os.listdir(dst)), os.listdir(dst)
    assert cli.main(['process-bag', src, dst, '--model', 'x']) == 2
    assert 'already exists' in capsys.readouterr().err


def test_depth_at_half_the_image_resolution(tmp_path, caplog):
    # The wrapper can publish depth downscaled: the cloud uses the camera scaled to depth size
    # and the image resized to it. alignment_node drops such sets; process-bag resizes, counts
    # and says so once.
    big = PinholeCamera(80.0, 80.0, 47.5, 35.5, 2 * W, 2 * H)

    def frames():
        for f in _frames():
            left = cv2.resize(f.left, (2 * W, 2 * H), interpolation=cv2.INTER_NEAREST)
            yield Frame(left=left, depth=f.depth, confidence=f.confidence, camera=big,
                        stamp_ns=f.stamp_ns, frame_id=f.frame_id)

    src = write_test_bag(str(tmp_path / 'in'), frames(), image_encoding='bgr8')
    with caplog.at_level(logging.WARNING, logger='depth_ros'):
        stats = process_bag(src, str(tmp_path / 'out'), GrayModel(), progress=False)
    assert stats.frames_out == 5
    assert stats.images_resized == 5, 'expected 5 resized, received {}'.format(
        stats.images_resized)
    want_line = ('image {}x{} resized to the depth size {}x{} (the live alignment_node drops '
                 'frames whose sizes differ)'.format(2 * W, 2 * H, W, H))
    lines = [r.getMessage() for r in caplog.records if 'resized' in r.getMessage()]
    assert lines == [want_line], 'expected [{!r}], received {}'.format(want_line, lines)
    out = _read(str(tmp_path / 'out'))
    aligner = MetricAligner()
    scaled = big.scaled(W, H)
    for frame, (_, dmsg), (_, cmsg) in zip(frames(), out['/alignment_node/depth'],
                                           out['/alignment_node/points']):
        bgr = cv2.resize(frame.left, (W, H), interpolation=cv2.INTER_AREA)
        want = aligner.update(GrayModel().predict(bgr), frame.depth, frame.confidence).depth
        np.testing.assert_array_equal(image_to_array(dmsg), want)
        ref = depth_to_cloud(want, scaled, bgr=bgr)
        cloud = np.frombuffer(cmsg.data.tobytes(), dtype='<u4').reshape(H, W, 4)
        np.testing.assert_array_equal(cloud, ref.view('<u4').reshape(H, W, 4))


@pytest.mark.parametrize('paths, options, message', [
    (('nope', 'out'), [], "input bag '{tmp}/nope' does not exist"),
    (('empty', 'out'), [], "input '{tmp}/empty' is not a rosbag2 folder: it has no metadata.yaml"),
    (('in', 'in'), [], "output bag '{tmp}/in' already exists; choose a new path"),
    (('in', 'out'), ['--cloud-stride', '0'], "argument --cloud-stride: must be an integer > 0, "
                                             "got '0'"),
    (('in', 'out'), ['--max-pending', '-1'], "argument --max-pending: must be an integer > 0, "
                                             "got '-1'"),
    # Was "topic `image` = '/nope' is not in the bag", told once the model had loaded.
    (('in', 'out'), ['--image-topic', '/nope'], "--image-topic '/nope' is not in the bag "
     "(topics: /zed/zed_node/confidence/confidence_map, /zed/zed_node/depth/depth_registered, "
     "/zed/zed_node/left/camera_info, /zed/zed_node/left/image_rect_color)"),
    (('in', 'out'), ['--camera-info-topic', '/x'], "--camera-info-topic '/x' is not in the bag "
     "(topics: /zed/zed_node/confidence/confidence_map, /zed/zed_node/depth/depth_registered, "
     "/zed/zed_node/left/camera_info, /zed/zed_node/left/image_rect_color)"),
])
def test_cli_refuses_bad_paths_and_numbers_before_loading_the_model(tmp_path, monkeypatch,
                                                                    capsys, paths, options,
                                                                    message):
    # A model may take a minute to load: these were found only after it (a stride or a cap
    # below 1 only once the bag was open).
    write_test_bag(str(tmp_path / 'in'), _frames())
    (tmp_path / 'empty').mkdir()
    from depth_ros.commands import _args
    monkeypatch.setattr(_args, 'load_model', lambda *a, **k: pytest.fail('model loaded'))
    argv = ['process-bag'] + [str(tmp_path / p) for p in paths] + ['--model', 'x'] + options
    try:
        code = cli.main(argv)
    except SystemExit as done:   # argparse's own refusals
        code = done.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].endswith(message.format(tmp=tmp_path)), err
    assert not (tmp_path / 'out').exists()


def test_cli_marigold_needs_no_model_and_the_others_name_it(tmp_path, monkeypatch, capsys):
    # `process-bag IN OUT --backend marigold` said "the following arguments are required:
    # --model", though Marigold has a default checkpoint (eval took it without --model).
    import depth_ros.inference as inference
    src = write_test_bag(str(tmp_path / 'in'), _frames(), storage='sqlite3')
    asked = []

    def load(backend, model, **options):
        asked.append((backend, model))
        return GrayModel()

    monkeypatch.setattr(inference, 'load_model', load)
    assert cli.main(['process-bag', src, str(tmp_path / 'o1')]) == 2
    assert capsys.readouterr().err == (
        'depth-ros process-bag: error: `--backend onnxruntime` needs `--model` (an ONNX file, '
        'engine, checkpoint or hub id)\n')
    assert not os.path.exists(str(tmp_path / 'o1')) and asked == []
    assert cli.main(['process-bag', src, str(tmp_path / 'o2'), '--backend', 'marigold']) == 0
    assert asked == [('marigold', None)], asked
    assert len(_read(str(tmp_path / 'o2'))['/alignment_node/depth']) == 5

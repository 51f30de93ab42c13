"""INT8 calibration source: batching through the shared preprocess, skipping, and its cache."""
from __future__ import annotations

import logging
import os

import cv2
from depth_ros.core.preprocess import prepare_input
from depth_ros.inference.tensorrt.calibrator import (CalibrationCache, CalibrationSource,
                                                     list_images)
import numpy as np
import pytest

SIZE = (42, 28)  # (width, height), multiples of 14


def _frames(folder, n, shape=(60, 80)):
    """Write n distinct BGR frames as PNG; return them in file-name order."""
    os.makedirs(str(folder), exist_ok=True)
    rng = np.random.default_rng(1)
    frames = []
    for i in range(n):
        bgr = rng.integers(0, 256, size=shape + (3,), dtype=np.uint8)
        cv2.imwrite(os.path.join(str(folder), 'frame_{:03d}.png'.format(i)), bgr)
        frames.append(bgr)
    return frames


def test_list_images_sorted_and_filtered(tmp_path):
    _frames(tmp_path, 3)
    (tmp_path / 'notes.txt').write_text('x')
    (tmp_path / 'B.JPG').write_bytes(b'')
    got = [os.path.basename(p) for p in list_images(str(tmp_path))]
    assert got == ['B.JPG', 'frame_000.png', 'frame_001.png', 'frame_002.png'], got


def test_list_images_errors_name_the_folder(tmp_path):
    with pytest.raises(ValueError, match=r"`calib_dir` must be a folder of images, got '.*nope' "
                                         r'\(not a folder\)'):
        list_images(str(tmp_path / 'nope'))
    with pytest.raises(ValueError, match=r"`calib_dir` '.*' holds no images"):
        list_images(str(tmp_path))


def test_batches_are_the_shared_preprocess_of_each_frame_and_partial_batch_is_dropped(tmp_path):
    frames = _frames(tmp_path, 7)
    source = CalibrationSource.from_folder(str(tmp_path), SIZE, batch_size=3)
    assert source.num_batches == 2
    assert source.batch_nbytes == 3 * 3 * 28 * 42 * 4
    seen = []
    while True:
        batch = source.next_batch()
        if batch is None:
            break
        assert batch.shape == (3, 3, 28, 42) and batch.dtype == np.float32
        assert batch.flags['C_CONTIGUOUS']
        seen.append(batch.copy())
    assert len(seen) == 2, 'expected 2 full batches of 3 (7th frame dropped), received {}'.format(
        len(seen))
    for i, frame in enumerate(frames[:6]):
        expected = prepare_input(frame, SIZE)[0]
        np.testing.assert_array_equal(seen[i // 3][i % 3], expected,
                                      err_msg='frame {} differs from prepare_input'.format(i))
    assert source.next_batch() is None, 'stays exhausted'
    source.reset()
    np.testing.assert_array_equal(source.next_batch(), seen[0])


def test_unreadable_frames_are_skipped(tmp_path, caplog):
    frames = _frames(tmp_path, 4)
    (tmp_path / 'frame_001b.png').write_bytes(b'not a png')
    source = CalibrationSource.from_folder(str(tmp_path), SIZE, batch_size=2)
    with caplog.at_level(logging.WARNING, logger='depth_ros.tensorrt'):
        first, second = source.next_batch().copy(), source.next_batch().copy()
    assert source.next_batch() is None
    assert [os.path.basename(p) for p in source.skipped] == ['frame_001b.png']
    assert 'cannot read image' in caplog.text and 'frame_001b.png' in caplog.text
    np.testing.assert_array_equal(first[1], prepare_input(frames[1], SIZE)[0])
    np.testing.assert_array_equal(second[0], prepare_input(frames[2], SIZE)[0])


def test_batch_size_is_clamped_to_the_number_of_images(tmp_path, caplog):
    _frames(tmp_path, 2)
    with caplog.at_level(logging.WARNING, logger='depth_ros.tensorrt'):
        source = CalibrationSource.from_folder(str(tmp_path), SIZE, batch_size=8)
    assert source.batch_size == 2 and 'using 2' in caplog.text
    assert source.next_batch().shape == (2, 3, 28, 42)


def test_max_images(tmp_path):
    _frames(tmp_path, 5)
    source = CalibrationSource.from_folder(str(tmp_path), SIZE, batch_size=2, max_images=4)
    assert len(source.images) == 4 and source.num_batches == 2


@pytest.mark.parametrize('kwargs, message', [
    ({'batch_size': 0}, '`batch_size` must be an integer > 0, got 0'),
    ({'batch_size': 2.5}, '`batch_size` must be an integer > 0, got 2.5'),
    ({'max_images': -1}, '`max_images` must be an integer > 0, got -1'),
])
def test_bad_options(tmp_path, kwargs, message):
    _frames(tmp_path, 2)
    with pytest.raises(ValueError) as info:
        CalibrationSource.from_folder(str(tmp_path), SIZE, **kwargs)
    assert str(info.value) == message, 'expected {!r}, received {!r}'.format(message,
                                                                             str(info.value))


def test_bad_input_size_is_refused(tmp_path):
    _frames(tmp_path, 1)
    with pytest.raises(ValueError, match='input `width` must be a positive multiple of 14'):
        CalibrationSource.from_folder(str(tmp_path), (40, 28))


def test_cache_round_trip_and_empty_cache(tmp_path, caplog):
    path = str(tmp_path / 'sub' / 'vits.calib')
    cache = CalibrationCache(path)
    assert cache.read() is None, 'no file yet'
    table = b'TRT-8502-EntropyCalibration2\ninput: 3c010a14\n'
    cache.write(table)
    assert cache.read() == table
    assert [n for n in os.listdir(str(tmp_path / 'sub'))] == ['vits.calib'], 'no temp file left'
    open(path, 'wb').close()
    with caplog.at_level(logging.WARNING, logger='depth_ros.tensorrt'):
        assert cache.read() is None
    assert 'is empty' in caplog.text
    CalibrationCache(None).write(b'x')  # no path configured: nothing written, no error
    assert CalibrationCache(None).read() is None


def test_cache_write_that_fails_leaves_the_old_table_and_no_temp_file(tmp_path):
    path = str(tmp_path / 'vits.calib')
    cache = CalibrationCache(path)
    cache.write(b'old table')

    class Unwritable(object):
        def __bytes__(self):
            raise KeyboardInterrupt   # e.g. Ctrl-C while TensorRT hands the table over

    with pytest.raises(KeyboardInterrupt):
        cache.write(Unwritable())
    assert os.listdir(str(tmp_path)) == ['vits.calib'], 'temp file left: {}'.format(
        os.listdir(str(tmp_path)))
    assert cache.read() == b'old table'


def test_source_without_images_needs_a_cache(tmp_path):
    with pytest.raises(ValueError, match='`images` is empty and there is no calibration cache'):
        CalibrationSource([], SIZE, cache_path=str(tmp_path / 'none.calib'))
    CalibrationCache(str(tmp_path / 'c.calib')).write(b'table')
    source = CalibrationSource([], SIZE, cache_path=str(tmp_path / 'c.calib'))
    assert source.read_cache() == b'table' and source.next_batch() is None
    source.write_cache(b'new table')
    assert CalibrationCache(str(tmp_path / 'c.calib')).read() == b'new table'

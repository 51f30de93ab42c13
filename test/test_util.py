"""depth_ros.util: atomic writes, sha256, cache folders, one-line errors, the heartbeat."""
from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading

from conftest import wait_until
from depth_ros import util
import pytest


def forbid_network(monkeypatch):
    """Make every socket connection fail the test (for "offline means no network" checks)."""
    def connect(self, address, *args):
        raise AssertionError('network access to {!r} while offline'.format(address))
    monkeypatch.setattr(socket.socket, 'connect', connect)
    monkeypatch.setattr(socket.socket, 'connect_ex', connect)


def test_forbid_network_catches_a_connection(monkeypatch):
    forbid_network(monkeypatch)
    with pytest.raises(AssertionError, match="network access to .*'127.0.0.1', 9"):
        socket.create_connection(('127.0.0.1', 9), timeout=0.1)


# ----------------------------------------------------------------------------- cache folders

def test_user_cache_dir_env_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv('DEPTH_ROS_TEST_CACHE', str(tmp_path / 'env'))
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    assert util.user_cache_dir('engines', env_var='DEPTH_ROS_TEST_CACHE') == \
        str(tmp_path / 'env')
    monkeypatch.delenv('DEPTH_ROS_TEST_CACHE')
    assert util.user_cache_dir('engines', env_var='DEPTH_ROS_TEST_CACHE') == \
        os.path.join(str(tmp_path / 'xdg'), 'depth_ros', 'engines')
    monkeypatch.delenv('XDG_CACHE_HOME')
    monkeypatch.setenv('HOME', str(tmp_path / 'home'))
    assert util.user_cache_dir() == os.path.join(str(tmp_path / 'home'), '.cache', 'depth_ros')
    assert not os.path.exists(str(tmp_path / 'home')), 'nothing is created'


def test_onnx_and_engine_caches_are_the_xdg_folders(monkeypatch, tmp_path):
    from depth_ros.inference import model_store
    from depth_ros.inference.tensorrt import cache
    for name in ('DEPTH_ROS_CACHE', 'DEPTH_ROS_ENGINE_CACHE'):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
    assert model_store.default_cache_dir() == os.path.join(str(tmp_path), 'depth_ros')
    assert cache.default_cache_dir() == os.path.join(str(tmp_path), 'depth_ros', 'engines')
    monkeypatch.setenv('DEPTH_ROS_CACHE', str(tmp_path / 'mine'))
    assert model_store.default_cache_dir() == str(tmp_path / 'mine')


# ----------------------------------------------------------------------------- atomic writes

def test_write_atomic_creates_the_folder_and_replaces(tmp_path):
    path = str(tmp_path / 'a' / 'b' / 'plan.bin')
    util.write_atomic(path, b'first')
    util.write_atomic(path, bytearray(b'second'))
    with open(path, 'rb') as f:
        assert f.read() == b'second'
    assert os.listdir(str(tmp_path / 'a' / 'b')) == ['plan.bin']


@pytest.mark.parametrize('error', [OSError('disk full'), KeyboardInterrupt()])
def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, error):
    path = str(tmp_path / 'model.onnx')
    util.write_atomic(path, b'previous model')
    with pytest.raises(type(error)):
        with util.atomic_path(path) as tmp:
            assert os.path.dirname(tmp) == str(tmp_path), 'the temporary is next to the target'
            with open(tmp, 'wb') as f:
                f.write(b'half a mod')          # a half-written file ...
            raise error                         # ... then the failure (or Ctrl-C)
    assert os.listdir(str(tmp_path)) == ['model.onnx'], os.listdir(str(tmp_path))
    with open(path, 'rb') as f:
        assert f.read() == b'previous model', 'the target must never be half-written'


def test_interrupted_write_atomic_leaves_nothing(tmp_path):
    class Interrupting(object):
        def __bytes__(self):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        util.write_atomic(str(tmp_path / 'x.calib'), Interrupting())
    assert os.listdir(str(tmp_path)) == []


# ----------------------------------------------------------------------------- hashes, errors

def test_file_sha256_matches_hashlib_across_chunks(tmp_path):
    data = bytes(range(256)) * 41 + b'tail'
    path = tmp_path / 'w.bin'
    path.write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    for chunk in (7, 256, 1 << 20):
        got = util.file_sha256(str(path), chunk=chunk)
        assert got == want, 'chunk {}: expected {}, received {}'.format(chunk, want, got)


@pytest.mark.parametrize('exc, default, expected', [
    (ValueError('bad thing\nTraceback-like detail\nmore'), None, 'bad thing'),
    (RuntimeError('\n  leading blank lines\nsecond'), None, 'leading blank lines'),
    (KeyError(), None, 'KeyError'),
    (AssertionError(''), 'no details', 'no details'),
])
def test_first_line(exc, default, expected):
    got = util.first_line(exc, default)
    assert got == expected, 'expected {!r}, received {!r}'.format(expected, got)


def test_describe_error_is_type_and_first_line():
    assert util.describe_error(FileNotFoundError('x.onnx\nmore')) == 'FileNotFoundError: x.onnx'
    assert util.describe_error(AssertionError()) == 'AssertionError: no details'
    assert util.describe_error(KeyError('k')) == "KeyError: 'k'"
    assert util.describe_error(OSError('one\ntwo')) == 'OSError: one'


# ----------------------------------------------------------------------------- heartbeat

def test_heartbeat_beats_with_elapsed_time_until_the_block_ends():
    elapsed = []
    two = threading.Event()

    def beat(seconds):
        elapsed.append(seconds)
        if len(elapsed) >= 2:
            two.set()

    with util.Heartbeat(beat, interval_s=0.01) as heartbeat:
        assert two.wait(10), 'expected 2 beats within 10 s, received {}'.format(len(elapsed))
        assert heartbeat.running
    assert not heartbeat.running, 'the thread is joined on exit'
    count = len(elapsed)
    assert heartbeat.beats == count and elapsed == sorted(elapsed) and elapsed[0] > 0, elapsed
    with pytest.raises(ValueError, match='`interval_s` must be > 0, got 0'):
        util.Heartbeat(beat, interval_s=0)
    with pytest.raises(ValueError, match='`interval_s` must be > 0, got nan'):
        util.Heartbeat(beat, interval_s=float('nan'))


def test_log_heartbeat_message(caplog):
    log = logging.getLogger('depth_ros.test_util')
    with caplog.at_level(logging.INFO, logger='depth_ros.test_util'):
        with util.log_heartbeat(log, 'exporting', interval_s=0.01) as heartbeat:
            assert wait_until(lambda: heartbeat.beats >= 1, 10), 'no beat within 10 s'
    assert caplog.records[0].getMessage() == 'exporting: 0 s elapsed', caplog.text


def test_progress_heartbeat_disabled_starts_no_thread():
    before = set(threading.enumerate())
    with util.progress_heartbeat('x', enabled=False):
        assert set(threading.enumerate()) == before


def test_atomic_files_commit_all_or_none(tmp_path):
    from depth_ros.util import atomic_files
    a, b = str(tmp_path / 'a.npy'), str(tmp_path / 'sub' / 'b.png')
    with atomic_files([a, b]) as tmp:
        assert tmp[a].endswith('.npy') and tmp[b].endswith('.png'), tmp
        for path in (a, b):
            with open(tmp[path], 'w') as f:
                f.write('new ' + path)
        assert not os.path.exists(a), 'nothing is renamed before the block ends'
    assert open(a).read() == 'new ' + a and open(b).read() == 'new ' + b
    with pytest.raises(KeyboardInterrupt):
        with atomic_files([a, b]) as tmp:
            with open(tmp[a], 'w') as f:
                f.write('half')
            raise KeyboardInterrupt
    assert open(a).read() == 'new ' + a, 'the old file must stay whole'
    with pytest.raises(RuntimeError, match='output not written'):
        with atomic_files([a, b]) as tmp:
            with open(tmp[a], 'w') as f:
                f.write('only one')
    assert open(a).read() == 'new ' + a
    assert sorted(os.listdir(str(tmp_path))) == ['a.npy', 'sub'] and \
        os.listdir(str(tmp_path / 'sub')) == ['b.png'], 'temporaries were left'


def test_window_mean_reads_a_copy_and_says_empty_as_asked():
    import collections
    import math
    from depth_ros.util import window_mean
    window = collections.deque([1.0, 2.0, 4.5], maxlen=3)
    assert window_mean(window) == 2.5
    window.append(10.0)                       # the oldest (1.0) leaves the window
    assert window_mean(window) == (2.0 + 4.5 + 10.0) / 3
    assert math.isnan(window_mean(collections.deque()))
    assert window_mean([], 0.0) == 0.0

"""core.bands.RowBands: a per-pixel pass in row bands on a few threads."""
import threading
import time

from depth_ros.core import bands
from depth_ros.core.bands import RowBands
import numpy as np
import pytest


@pytest.mark.parametrize('threads,rows,want', [
    (1, 720, [0, 720]),
    (2, 720, [0, 360, 720]),
    (3, 720, [0, 240, 480, 720]),
    (3, 130, [0, 65, 130]),          # at least MIN_BAND_ROWS (64) rows a band
    (4, 100, [0, 100]),
    (8, 0, [0, 0]),
])
def test_edges_cover_the_rows_once_in_bands_of_at_least_min_rows(threads, rows, want):
    assert RowBands(threads).edges(rows) == want


def test_run_returns_each_bands_result_in_order_and_uses_the_pool(monkeypatch):
    monkeypatch.setattr(bands, 'MIN_BAND_ROWS', 1)
    b = RowBands(3)
    idents = []
    out = np.zeros(10)

    def fn(r0, r1):
        idents.append(threading.get_ident())
        out[r0:r1] += 1
        return (r0, r1)
    assert b.run(fn, 10) == [(0, 3), (3, 6), (6, 10)]
    assert out.tolist() == [1.0] * 10
    assert idents.count(threading.get_ident()) == 1 and len(set(idents)) >= 2
    b.close()
    assert b.run(fn, 10) == [(0, 3), (3, 6), (6, 10)]     # a closed pool starts again
    b.close()


def test_an_error_in_a_band_is_raised_after_every_band_ended(monkeypatch):
    monkeypatch.setattr(bands, 'MIN_BAND_ROWS', 1)
    b = RowBands(3)
    ended = []

    def fn(r0, r1):
        if r0 == 0:
            raise ValueError('first band')
        time.sleep(0.05)
        ended.append(r0)
    with pytest.raises(ValueError, match='first band'):
        b.run(fn, 9)
    assert sorted(ended) == [3, 6]         # the others had finished writing

    def late(r0, r1):
        if r0 == 6:
            raise RuntimeError('last band')
    with pytest.raises(RuntimeError, match='last band'):
        b.run(late, 9)
    b.close()


@pytest.mark.parametrize('threads', [0, -1, 65, 1.5, True, '2', None])
def test_threads_is_checked_by_name(threads):
    with pytest.raises(ValueError, match='`threads` must be an integer in'):
        RowBands(threads)


def test_a_band_that_cannot_start_is_raised_after_the_started_ones_ended(monkeypatch):
    # The pool refuses a band (close() from another thread, or the interpreter shutting
    # down): the bands already handed to it still write the caller's planes, so run waits
    # for them before it raises, and the calling thread's band is not started.
    monkeypatch.setattr(bands, 'MIN_BAND_ROWS', 1)
    b = RowBands(3)
    ended = []

    def fn(r0, r1):
        time.sleep(0.05)
        ended.append(r0)
    b.run(fn, 9)                        # the pool started
    submit = b._pool.submit
    calls = []

    def refuse_second(*args):
        calls.append(args)
        if len(calls) == 2:
            raise RuntimeError('cannot schedule new futures after shutdown')
        return submit(*args)
    monkeypatch.setattr(b._pool, 'submit', refuse_second)
    del ended[:]
    with pytest.raises(RuntimeError, match='after shutdown'):
        b.run(fn, 9)
    assert ended == [3]                 # the band handed over had ended; no other ran
    b.close()

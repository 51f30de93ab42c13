"""
Row bands: a per-pixel pass over an image split into horizontal bands on a few threads.

OpenCV and numpy release the GIL in their loops, so the bands of a full-resolution pass run
at the same time on as many cores. Only passes whose every output pixel depends on the same
pixel of the inputs (or reads neighbouring rows from inputs nobody writes meanwhile) are
split, so the result is the same, bit for bit, for any number of threads.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
import threading
from typing import Callable, List

from depth_ros.core.checks import check_number

# A band has at least this many rows: a small frame runs in fewer bands than threads (a
# round trip through the pool costs ~17 us here, a 1280 x 64 pass of one OpenCV call ~20 us).
MIN_BAND_ROWS = 64
MAX_THREADS = 64


class RowBands(object):
    """
    Run ``fn(r0, r1)`` over the row bands of ``rows`` rows on ``threads`` threads.

    The calling thread takes the first band, ``threads - 1`` pool threads (started on first
    use) the others. ``threads`` 1: one call on the calling thread, no pool.
    """

    def __init__(self, threads: int = 1):
        self.threads = int(check_number('threads', threads, 1, MAX_THREADS, integer=True))
        self._pool = None
        self._lock = threading.Lock()

    def edges(self, rows: int) -> List[int]:
        """Return the band edges for ``rows`` rows (first 0, last ``rows``)."""
        n = max(1, min(self.threads, rows // MIN_BAND_ROWS))
        return [rows * i // n for i in range(n + 1)]

    def run(self, fn: Callable[[int, int], object], rows: int) -> list:
        """Return ``[fn(r0, r1) for each band]``, in band order; the first error is raised."""
        e = self.edges(rows)
        if len(e) == 2:
            return [fn(0, rows)]
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads - 1,
                                                thread_name_prefix='row_bands')
            pool = self._pool
        futures = []
        try:
            for i in range(1, len(e) - 1):
                # A refused band (the pool closed meanwhile, the interpreter shutting down)
                # raises here, after the bands already handed over ended (finally).
                futures.append(pool.submit(fn, e[i], e[i + 1]))
            first = fn(e[0], e[1])
        finally:
            # Every band ends before the caller goes on (they write its planes), errors too.
            results = [_outcome(f) for f in futures]
        out = [first]
        for ok, value in results:
            if not ok:
                raise value
            out.append(value)
        return out

    def close(self) -> None:
        """Stop the pool threads (a later ``run`` starts them again)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)


def _outcome(future):
    try:
        return True, future.result()
    except BaseException as exc:  # noqa: B902 - re-raised by run, after every band ended
        return False, exc


__all__ = ['MIN_BAND_ROWS', 'RowBands']

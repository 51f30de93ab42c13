"""
Small helpers shared by core, inference, commands and tools.

Files (atomic writes, sha256), cache folders, one-line errors, progress heartbeats, the
mean of a window of numbers, and number checks with a message of their own.

Standard library only at import (check_number_as imports depth_ros.core.checks when called), so
that any layer can use them and importing this module costs nothing.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import time
from typing import Callable, Iterator, Optional

APP = 'depth_ros'


def user_cache_dir(*parts: str, env_var: Optional[str] = None) -> str:
    """
    Return a cache folder: ``$env_var`` when set, else ``<XDG cache>/depth_ros/<parts...>``.

    The XDG cache is ``$XDG_CACHE_HOME``, else ``~/.cache``. Nothing is created.
    """
    if env_var:
        value = os.environ.get(env_var)
        if value:
            return value
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(base, APP, *parts)


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """
    Yield a temporary file name next to ``path``; when the block ends, rename it to ``path``.

    The folder is created if missing. The temporary lives in the target's folder, so the
    rename is atomic: ``path`` is either its old content or the complete new one, never a
    half-written file. When the block raises anything (KeyboardInterrupt included) the
    temporary is removed, ``path`` is left as it was, and the exception propagates.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp',
                               dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_files(paths) -> Iterator[dict]:
    """
    Yield {path: temporary path} for several outputs; all are renamed into place at the end.

    A writer fills every temporary (each keeps its target's extension, so numpy and OpenCV
    pick the right format); only when the block ends without an exception are they renamed to
    their targets, one ``os.replace`` each. A failure or Ctrl-C while writing removes every
    temporary and leaves the old files as they were: never a mix of new and old outputs.
    """
    temps = {}
    for path in paths:
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        stem, ext = os.path.splitext(os.path.basename(path))
        temps[path] = os.path.join(folder, '.{}.partial-{}{}'.format(stem, os.getpid(), ext))
    try:
        yield dict(temps)
        missing = [t for t in temps.values() if not os.path.exists(t)]
        if missing:
            raise RuntimeError('output not written: {}'.format(', '.join(missing)))
        for path, tmp in temps.items():
            os.replace(tmp, path)
    finally:
        for tmp in temps.values():
            if os.path.lexists(tmp):
                os.remove(tmp)


def write_atomic(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_path` (no half-written file, ever)."""
    with atomic_path(path) as tmp:
        with open(tmp, 'wb') as f:
            f.write(bytes(data))


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    """Return the hex sha256 of a file, read in chunks (engines and weights are large)."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            digest.update(block)
    return digest.hexdigest()


def window_mean(values, empty: float = float('nan')) -> float:
    """
    Return the mean of a window of numbers (a deque another thread appends to), or ``empty``.

    The window is copied first, so a concurrent append cannot change it while it is read.
    """
    values = list(values)
    return sum(values) / len(values) if values else empty


def check_number_as(message: str, name: str, value, **limits):
    """
    Run ``depth_ros.core.checks.check_number(name, value, **limits)``; raise ``message`` instead.

    For checks whose message says more than check_number's (the domain, what None means) or
    that users and tests already rely on: the rules (bools, arrays, NaN and infinities refused,
    integers when ``integer=True``, the bounds) are check_number's, the words are the caller's.

    :param message: formatted with ``name`` and ``value``, e.g.
        ``'`{name}` must be an integer > 0, got {value!r}'``.
    :returns: what check_number returns (``int``, ``float`` or None).
    :raises ValueError: ``message``.
    """
    from depth_ros.core.checks import check_number

    try:
        return check_number(name, value, **limits)
    except ValueError:
        raise ValueError(message.format(name=name, value=value)) from None


def first_line(exc: BaseException, default: Optional[str] = None) -> str:
    """
    Return the first line of an exception's message, for one-line error reports.

    :param default: what to return for an empty message; None: the exception's type name.
    """
    text = str(exc).strip()
    if text:
        return text.splitlines()[0]
    return type(exc).__name__ if default is None else default


def describe_error(exc: BaseException) -> str:
    """Return ``'<Type>: <first line>'`` ('no details' for an empty message)."""
    return '{}: {}'.format(type(exc).__name__, first_line(exc, 'no details'))


class Heartbeat(object):
    """
    Call ``beat(elapsed_s)`` every ``interval_s`` from a daemon thread while the block runs.

    For long steps that report no progress of their own (an ONNX export, a TensorRT 8.5 build).
    The thread is stopped and joined on exit, so no beat comes after the block. ``beats``
    counts the calls.
    """

    def __init__(self, beat: Callable[[float], None], interval_s: float = 1.0,
                 name: str = 'heartbeat'):
        if not interval_s > 0:
            raise ValueError('`interval_s` must be > 0, got {!r}'.format(interval_s))
        self.interval_s = float(interval_s)
        self.beats = 0
        self._beat = beat
        self._name = name
        self._stop = threading.Event()
        self._thread = None
        self._t0 = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.beats += 1
            self._beat(time.monotonic() - self._t0)

    def __enter__(self) -> 'Heartbeat':
        self._t0 = time.monotonic()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> bool:
        self._stop.set()
        self._thread.join()
        return False

    @property
    def running(self) -> bool:
        """Tell whether the beating thread is alive."""
        return self._thread is not None and self._thread.is_alive()


def log_heartbeat(log, what: str, interval_s: float = 15.0) -> Heartbeat:
    """Return a Heartbeat that logs ``'<what>: N s elapsed'`` at INFO on ``log``."""
    return Heartbeat(lambda elapsed: log.info('%s: %.0f s elapsed', what, elapsed), interval_s,
                     name='heartbeat-' + what)


@contextlib.contextmanager
def progress_heartbeat(desc: str, enabled: bool = True) -> Iterator[None]:
    """Show a tqdm line with the elapsed seconds while a step without its own progress runs."""
    if not enabled:
        yield
        return
    from tqdm.auto import tqdm

    bar = tqdm(desc=desc, unit='s', bar_format='{desc}: {elapsed}', leave=True)
    try:
        with Heartbeat(lambda elapsed: bar.update(1), 1.0, name='progress-' + desc):
            yield
    finally:
        bar.close()

"""
What the nodes do between their callbacks and their publishers, without ROS.

The worker thread with its newest-frame slot, rate meters, stage timers, rate-limited logs,
stamp order checks, frame health for /diagnostics, and the bridge from Python logging to a
node's logger. The tests run them everywhere (Python 3.8 included) without rclpy.
"""
from __future__ import annotations

import collections
import ctypes
import logging
import os
import threading
import time
from typing import Callable, Dict, Optional

from depth_ros.util import describe_error

LOG = logging.getLogger(__name__)


class Worker(object):
    """
    One worker thread fed through a newest-frame slot of depth 1 (DESIGN.md, "Latency").

    ``put(item)`` (from a subscription callback) replaces any item still waiting and asks for
    it to be worked on: when the work is slower than the input, items are dropped, never
    queued, and the output age stays bounded by about two processing times (depth_node,
    alignment_node). ``offer(item)`` only replaces the waiting item; ``request()`` asks for a
    job on the newest item, now or when the running job ends (marigold_node's keyframes on a
    timer or a service call). The work runs off the executor thread; a failing item is
    reported to ``on_error`` (else logged) and the thread goes on.

    :param on_start: called in the worker thread with each item it takes, before the work
        (depth_node announces the stamp it computes).
    :param background: work of lower priority, on items given to :meth:`put_background`
        (alignment_node prepares the stereo side of a frame while the network runs on it).
        It runs in the same thread, only when no requested item waits: a ready item never
        waits for a background item that has not started (it may wait for one that has).
    """

    def __init__(self, work: Callable[[object], None], name: str = 'worker',
                 on_error: Optional[Callable[[BaseException], None]] = None,
                 on_start: Optional[Callable[[object], None]] = None,
                 background: Optional[Callable[[object], None]] = None):
        self._work = work
        self._on_error = on_error
        self._on_start = on_start
        self._background = background
        self._cond = threading.Condition()
        self._item = None
        self._background_item = None
        self.background_replaced = 0   # background items replaced before they ran
        self.background_done = 0
        self._wanted = False    # a job is requested on the item in the slot (or the next one)
        self._stop = False
        self.received = 0
        self.dropped = 0        # requested items replaced before the worker took them
        self.done = 0
        self.failed = 0
        self.busy = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """Tell whether the worker thread runs (it only ends on stop())."""
        return self._thread.is_alive()

    def offer(self, item) -> None:
        """Put ``item`` in the slot, replacing the one waiting there; start nothing."""
        with self._cond:
            self.received += 1
            if self._item is not None and self._wanted:
                self.dropped += 1
            self._item = item
            self._cond.notify()

    def request(self) -> str:
        """
        Ask for a job on the newest item; return 'started', 'queued' or 'no_frame'.

        'queued': it starts when the running job ends, on the newest item then. Never blocks;
        requests made while one is pending count once.
        """
        with self._cond:
            if self._item is None and not self.busy:
                return 'no_frame'
            self._wanted = True
            self._cond.notify()
            return 'queued' if self.busy else 'started'

    def put(self, item) -> bool:
        """
        Offer ``item`` and request a job on it (the newest-frame policy).

        Returns whether the worker was idle: the job on ``item`` starts at once, not after
        the running one (unless a newer ``put`` replaces it first).
        """
        with self._cond:
            idle = not self.busy
            self.offer(item)
            self._wanted = True
        return idle

    def put_background(self, item) -> None:
        """
        Give ``item`` to the ``background`` work, replacing one still waiting there.

        It runs when no requested item waits (the class docstring); items of this slot are
        not counted in ``received`` or ``dropped``.
        """
        if self._background is None:
            raise ValueError('this Worker has no `background` work')
        with self._cond:
            if self._background_item is not None:
                self.background_replaced += 1
            self._background_item = item
            self._cond.notify()

    def _ready(self) -> bool:
        return (self._wanted and self._item is not None) or self._background_item is not None

    def _take(self):
        with self._cond:
            while not self._stop and not self._ready():
                self._cond.wait()
            if self._stop:
                return None, None
            self.busy = True
            if self._wanted and self._item is not None:
                item, self._item, self._wanted = self._item, None, False
                return self._work, item
            item, self._background_item = self._background_item, None
            return self._background, item

    def _run(self) -> None:
        while True:
            work, item = self._take()
            if work is None:
                return
            background = work is self._background
            ok = False
            try:
                if self._on_start is not None and not background:
                    self._on_start(item)
                work(item)
                ok = True
            except Exception as exc:  # noqa: B902 - a bad frame must not kill the worker
                if self._on_error is not None:
                    self._on_error(exc)
                else:
                    LOG.exception('worker failed on a frame')
            finally:
                with self._cond:
                    self.busy = False
                    if background:
                        self.background_done += 1
                    else:
                        self.done += ok
                        self.failed += not ok
                    self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no job runs or waits to run; return whether that happened in time."""
        end = time.monotonic() + timeout
        with self._cond:
            while self.busy or self._ready():
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def stop(self, timeout: float = 2.0) -> bool:
        """Stop the thread after the job in progress; return whether it ended in time."""
        with self._cond:
            self._stop = True
            self._item = self._background_item = None
            self._cond.notify_all()
        self._thread.join(timeout)
        return not self._thread.is_alive()


class RateMeter(object):
    """Events per second over a sliding window of ``window`` seconds (thread-safe)."""

    def __init__(self, window: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.window = float(window)
        self._clock = clock
        self._times = collections.deque()
        self._lock = threading.Lock()
        self.count = 0
        self.last = None      # clock time of the last event

    def tick(self) -> None:
        """Record one event now."""
        with self._lock:
            now = self._clock()
            self._times.append(now)
            self.count += 1
            self.last = now
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._times and self._times[0] < now - self.window:
            self._times.popleft()

    @property
    def rate(self) -> float:
        """Events per second in the window (0 when fewer than two)."""
        with self._lock:
            self._trim(self._clock())
            if len(self._times) < 2:
                return 0.0
            span = self._times[-1] - self._times[0]
            return (len(self._times) - 1) / span if span > 0 else 0.0

    def age(self) -> float:
        """Return the seconds since the last event (inf when there was none)."""
        with self._lock:
            return float('inf') if self.last is None else self._clock() - self.last


class FrameHealth(object):
    """Good and bad frames over the last seconds, for a /diagnostics level that tells the truth."""

    def __init__(self, window: float = 5.0):
        self.good = RateMeter(window)
        self.bad = RateMeter(window)
        self.last_reason = ''

    def status(self, inputs: RateMeter, stale_s: float):
        """(level, message) from the recent inputs, good outputs and bad frames."""
        if inputs.age() > stale_s:
            return 'warn', 'no input images' if inputs.count == 0 else \
                'no input image for {:.1f} s'.format(inputs.age())
        if self.good.age() > stale_s and self.bad.age() <= stale_s:
            return 'error', 'every frame of the last {:.0f} s was dropped: {}'.format(
                stale_s, self.last_reason)
        if self.good.count == 0:
            return 'warn', 'waiting for the first result'
        return 'ok', 'running'


class StageTimes(object):
    """
    Per-frame stage durations: mean milliseconds of each named stage over the last frames.

    A node marks the end of each stage with ``mark(name)`` after ``start()``; the means go on
    /diagnostics so that the time of a frame can be split where it is spent.
    """

    def __init__(self, window: int = 50):
        self.window = int(window)
        self._ms = collections.OrderedDict()   # name -> deque of ms
        self._lock = threading.Lock()
        self._t = None

    def start(self) -> None:
        """Begin a frame (the worker thread's clock)."""
        self._t = time.perf_counter()

    def mark(self, name: str) -> None:
        """End stage ``name`` now; the next stage starts here."""
        now = time.perf_counter()
        self.add(name, (now - self._t) * 1e3)
        self._t = now

    def add(self, name: str, ms: float) -> None:
        """Record ``ms`` for stage ``name``."""
        with self._lock:
            values = self._ms.get(name)
            if values is None:
                values = self._ms[name] = collections.deque(maxlen=self.window)
            values.append(float(ms))

    def means(self) -> Dict[str, float]:
        """Return {stage: mean ms} in the order the stages were first seen."""
        with self._lock:
            return collections.OrderedDict(
                (k, sum(v) / len(v)) for k, v in self._ms.items() if v)


class ThrottledLog(object):
    """
    Rate-limit log lines per kind of error, in our own code (thread-safe).

    rclpy's ``throttle_duration_sec`` keys its state by call site, raises ``ValueError`` when
    the period changes between calls at one site (a runtime change of ``log_throttle_s``), and
    one call site shared by several kinds lets one kind hide the others. Here each ``kind`` has
    its own window, the period is read on every call, and the logger is called without
    throttling arguments. Lines held back are counted and reported on the next line of the
    kind: ``... (3 similar suppressed)``. A period of 0 logs every line and keeps no window.

    Usage::

        self.log = ThrottledLog(self.get_logger())
        self.log.error('stamp', 'dropped image: ...', self.cfg['log_throttle_s'])
    """

    def __init__(self, logger, clock: Callable[[], float] = time.monotonic):
        self._logger = logger
        self._clock = clock
        self._lock = threading.Lock()
        self._last = {}          # kind -> clock time of the last line logged
        self._suppressed = collections.Counter()

    def _admit(self, kind: str, text: str, period: float) -> Optional[str]:
        with self._lock:
            now = self._clock()
            last = self._last.get(kind)
            if period <= 0:
                # Throttling off: nothing is remembered, so when a period is set later its
                # first line is logged (earlier unthrottled lines do not count against it).
                self._last.pop(kind, None)
            elif last is not None and now - last < period:
                self._suppressed[kind] += 1
                return None
            else:
                self._last[kind] = now
            held = self._suppressed.pop(kind, 0)
        return text + (' ({} similar suppressed)'.format(held) if held else '')

    def error(self, kind: str, text: str, period: float) -> bool:
        """Log ``text`` as an error unless ``kind`` was logged less than ``period`` s ago."""
        line = self._admit(kind, text, period)
        if line is not None:
            self._logger.error(line)
        return line is not None

    def warn(self, kind: str, text: str, period: float) -> bool:
        """Log ``text`` as a warning, rate-limited as :meth:`error` (own window per kind)."""
        line = self._admit(kind, text, period)
        if line is not None:
            self._logger.warning(line)
        return line is not None

    def suppressed(self, kind: str) -> int:
        """Return how many lines of ``kind`` are held back since its last logged line."""
        with self._lock:
            return self._suppressed.get(kind, 0)


class StampGuard(object):
    """
    Order check of one stream's header stamps, with source restarts told apart.

    ``check(stamp)`` returns ``('ok', '')``, ``('restart', text)`` when the stamp jumped back
    by more than ``reset_ns`` (rosbag play --loop, an SVO reopened, sim time reset: accepted,
    the caller starts over), or ``('old', text)`` for a smaller step back or a repeat (the
    caller drops the message).
    """

    def __init__(self, name: str, reset_ns: int):
        self.name = name
        self.reset_ns = int(reset_ns)
        self.last = None

    def check(self, stamp: int):
        """Classify ``stamp`` against the previous one and remember it unless it is old."""
        last = self.last
        if last is not None and last - stamp > self.reset_ns:
            self.last = stamp
            return 'restart', '{} stamp jumped back {:.3f} s (from {} to {}): source ' \
                'restarted'.format(self.name, (last - stamp) * 1e-9, last, stamp)
        if last is not None and stamp <= last:
            return 'old', '{} {}: {} the previous stamp {} (out-of-order or duplicated)'.format(
                self.name, stamp, 'equal to' if stamp == last else 'older than', last)
        self.last = stamp
        return 'ok', ''

    def reset(self) -> None:
        """Forget the previous stamp (after a restart of another stream)."""
        self.last = None


# glibc's mallopt parameters (<malloc.h>) and the values our node processes run with.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
LARGE_BLOCK_BYTES = 32 << 20    # glibc's most for M_MMAP_THRESHOLD on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_BYTES = 64 << 20
# Set, any of these is the user's own malloc tuning, left as it is. (Setting any of them also
# turns off glibc's own raising of the mmap threshold: glibc's defaults come back only with
# DEPTH_ROS_KEEP_LARGE_BLOCKS=0.)
MALLOC_VARIABLES = ('MALLOC_MMAP_THRESHOLD_', 'MALLOC_TRIM_THRESHOLD_', 'MALLOC_TOP_PAD_',
                    'MALLOC_MMAP_MAX_')
KEEP_LARGE_BLOCKS = 'DEPTH_ROS_KEEP_LARGE_BLOCKS'   # 0: glibc's own behaviour; 1 (default): ours


def keep_large_blocks(environ=None, libc=None) -> str:
    """
    Keep freed large blocks in glibc's heap for the next frame; return what was done, a line.

    Every frame brings new 1-4 MB arrays (a message's image, depth and confidence, the
    network's output, the cloud's buffer). Above glibc's mmap threshold (128 kB at start,
    raised by glibc as large blocks are freed) each is mapped, its pages faulted in and
    zeroed, and unmapped when freed; free memory at the heap's top above the trim threshold
    goes back to the system at once. At 1280x720 that was hundreds to thousands of page
    faults per frame in each node (docs/ros.md, "glibc keeps a frame's large blocks").
    ``mallopt`` fixes the mmap threshold at 32 MB (glibc's most on 64-bit) and the trim
    threshold at 64 MB, as ``MALLOC_MMAP_THRESHOLD_=33554432
    MALLOC_TRIM_THRESHOLD_=67108864`` would: a frame's blocks serve the next one, and
    the heap's free top still goes back to the system beyond 64 MB (the Jetson's memory is the
    GPU's too). Memory after a burst goes back by alignment_node's :class:`HeapTrim`
    (``malloc_trim``).

    Left alone with ``DEPTH_ROS_KEEP_LARGE_BLOCKS=0`` (glibc's own behaviour, its threshold
    raised as it goes), where the environment tunes malloc (any of ``MALLOC_VARIABLES``, or a
    ``glibc.malloc`` entry in ``GLIBC_TUNABLES``: the user's settings), and where the C
    library has no ``mallopt`` (not glibc). ``environ`` and ``libc`` are for tests.

    :raises ValueError: ``DEPTH_ROS_KEEP_LARGE_BLOCKS`` is neither 0 nor 1 (named, with its value).
    """
    environ = os.environ if environ is None else environ
    keep = environ.get(KEEP_LARGE_BLOCKS, '').strip()
    if keep not in ('', '0', '1'):
        raise ValueError('{}={!r} must be 0 (glibc\'s own malloc behaviour) or 1 (the default: '
                         'a frame\'s large blocks kept for the next)'.format(
                             KEEP_LARGE_BLOCKS, environ[KEEP_LARGE_BLOCKS]))
    if keep == '0':
        return 'malloc left as it is ({}=0)'.format(KEEP_LARGE_BLOCKS)
    tuned = [name for name in MALLOC_VARIABLES if environ.get(name)]
    if 'glibc.malloc.' in environ.get('GLIBC_TUNABLES', ''):
        tuned.append('GLIBC_TUNABLES')
    if tuned:
        return 'malloc left as the environment sets it ({})'.format(', '.join(tuned))
    try:
        mallopt = (ctypes.CDLL(None) if libc is None else libc).mallopt
    except (OSError, AttributeError):
        return 'malloc left as it is (no mallopt: not glibc)'
    done = [mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK_BYTES), mallopt(M_TRIM_THRESHOLD, TRIM_BYTES)]
    if not all(done):
        return 'malloc left as it is (mallopt refused {})'.format(' and '.join(
            name for name, ok in zip(('M_MMAP_THRESHOLD', 'M_TRIM_THRESHOLD'), done) if not ok))
    return 'malloc keeps large blocks (mmap threshold {} MB, trim threshold {} MB)'.format(
        LARGE_BLOCK_BYTES >> 20, TRIM_BYTES >> 20)


def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim    # glibc; absent elsewhere (musl, macOS)
    except (AttributeError, OSError):
        return None


class HeapTrim(object):
    """
    Give the heap back to the system after a burst of large messages.

    glibc keeps freed blocks in its heap unless they lie at its top: after the pairing buffer
    held hundreds of MB and let them go, the process kept most of it (measured: 261 MB of 372
    MB on Python 3.8; at times on 3.11, benchmarks/bench_burst_memory.py). ``malloc_trim(0)``
    returns the free pages (about 10 ms for 350 MB, 0.15 ms with nothing to return). It runs
    here only after a burst. The rule: ``high`` is the most of (bytes held now + bytes refused
    since the last trim) seen since the last trim; :meth:`maybe_trim` trims when ``high``
    reached ``min_bytes`` and what is held now is under a quarter of ``high``, then counts
    again from what is held. A stream whose buffer stays under ``min_bytes`` (64 MB: six
    1280x720 sets) never pays for pages it would fault in again.
    """

    def __init__(self, min_bytes: int = 64 << 20):
        self.min_bytes = int(min_bytes)
        self.high = 0          # most of (bytes held + bytes refused) since the last trim
        self.refused = 0       # bytes refused since the last trim
        self.trims = 0
        self._held = 0         # bytes held at the last note
        self._trim = _malloc_trim()

    def held(self, nbytes: int) -> None:
        """Note the bytes held now (the pairing buffer's payloads)."""
        self._held = int(nbytes)
        self.high = max(self.high, self._held + self.refused)

    def refuse(self, nbytes: int) -> None:
        """Note a message of ``nbytes`` let go at once (refused on arrival)."""
        self.refused += int(nbytes)
        self.high = max(self.high, self._held + self.refused)

    def maybe_trim(self, held_now: int) -> bool:
        """Trim when a burst is over (see the class docstring); return whether it did."""
        if self._trim is None or self.high < self.min_bytes or held_now * 4 >= self.high:
            return False
        self._trim(0)
        self._held = self.high = int(held_now)
        self.refused = 0
        self.trims += 1
        return True


class LogForwarder(logging.Handler):
    """
    A logging.Handler that hands library log records to a node's logger (rclpy's).

    Library code logs with ``logging`` (``depth_ros.*`` loggers); under a node those records
    would go to stderr without the node's name, or nowhere. Forwarded, they reach /rosout and
    the console with the node's name and the ROS severity.
    """

    def __init__(self, logger, level: int = logging.INFO):
        super().__init__(level)
        self.logger = logger   # run_node points it at the node's logger once there is a node

    def emit(self, record: logging.LogRecord) -> None:
        """Forward one record at its severity."""
        try:
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                text += ' ({})'.format(describe_error(record.exc_info[1]))
            self._log(record.levelno, text)
        except Exception:  # noqa: B902 - logging must never raise into library code
            self.handleError(record)

    def _log(self, levelno: int, text: str) -> None:
        # One call site per severity: rclpy's logger keeps a context per call site and
        # refuses another severity from the same one ("Logger severity cannot be changed
        # between calls"), which lost every record whose level differed from the first.
        logger = self.logger
        if levelno >= logging.CRITICAL:
            logger.fatal(text)
        elif levelno >= logging.ERROR:
            logger.error(text)
        elif levelno >= logging.WARNING:
            logger.warning(text)
        elif levelno >= logging.INFO:
            logger.info(text)
        else:
            logger.debug(text)


def forward_library_logs(logger, name: str = 'depth_ros') -> LogForwarder:
    """Attach a :class:`LogForwarder` to the ``name`` logger; return it (to remove later)."""
    handler = LogForwarder(logger)
    library = logging.getLogger(name)
    library.addHandler(handler)
    if library.level == logging.NOTSET or library.level > logging.INFO:
        library.setLevel(logging.INFO)
    library.propagate = False
    return handler


def forward_debug_if_asked(handler: LogForwarder, loggers, name: str = 'depth_ros') -> bool:
    """
    Forward the library's debug records too when one of ``loggers`` (a node's) logs debug.

    ``log_level:=debug`` sets our nodes' loggers (rcl's ``--log-level NODE:=debug``); the
    library's ``logging`` records follow them. Returns whether debug is forwarded.
    """
    debug = any(_logs_debug(logger) for logger in loggers)
    if debug:
        handler.setLevel(logging.DEBUG)
        logging.getLogger(name).setLevel(logging.DEBUG)
    return debug


def node_logger_name(ros_args, name: str) -> str:
    """
    Return the logger name rcl gives the node ``name`` started with ``ros_args``.

    Before the node exists, so that the library's debug records of its start-up (the model
    search, the engine build, a bag's opening) are forwarded at ``log_level:=debug``: rcl names
    a node's logger by its namespace's parts and its name, dot-separated
    (``-r __ns:=/zed -r __node:=zed_node``: ``zed.zed_node``). Remaps inside ``--ros-args``
    only, the bare ones and those prefixed with the node's own name (``name:__ns:=...``);
    ``__name`` is rcl's other spelling of ``__node``, and rcl's first matching rule wins.
    """
    node, namespace, inside, i = None, None, False, 0
    args = list(ros_args or [])
    while i < len(args):
        token = args[i]
        if token == '--ros-args':
            inside = True
        elif token == '--':
            inside = False
        elif inside and token in ('-r', '--remap') and i + 1 < len(args):
            rule = args[i + 1]
            i += 1
            target, _, value = rule.partition(':=')
            prefix, _, key = target.rpartition(':')
            if prefix in ('', name) and key in ('__node', '__name') and node is None:
                node = value
            elif prefix in ('', name) and key == '__ns' and namespace is None:
                namespace = value
        i += 1
    return '.'.join([p for p in (namespace or '').split('/') if p] + [node or name])


def _logs_debug(logger) -> bool:
    try:
        return int(logger.get_effective_level()) <= 10   # rclpy's LoggingSeverity.DEBUG
    except (AttributeError, TypeError, ValueError):
        return False

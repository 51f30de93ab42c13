"""
Exact-stamp pairing of several message streams, bounded in time, count and memory.

One class serves the live alignment_node, the rosbag replay source and ``process-bag``:
messages of several kinds (disparity, depth, confidence, camera_info, image) arrive in any
interleaving and are grouped by their header stamp (integer nanoseconds); a group is handed out
once every required kind is in.

The slowest stream drives the pairing (DESIGN.md, "Latency"). On a robot the network is the
slowest stream: at 30 fps with a 300 ms network, a stereo set waits ~10 newer sets for its
disparity. So a waiting set is dropped only when

* a newer set is complete first (the driver delivers in stamp order: the older set's answer
  will never come) - an *expected* drop when the driver's part is missing (and the driver did
  not announce the set), since the newest-frame policy upstream skips frames on purpose;
* it is more than ``max_age_ns`` older than the newest stamp seen (the latency bound), unless
  it is the set the driver announced last: a network slower than the window (ViT-S on a CPU:
  seconds per frame) still gets its answer paired. An announced set waits until its answer or
  the driver's next announcement (the driver answers in order, so an older pin's answer has
  come or never will);
* more than ``max_count`` sets wait (bags: bounded memory whatever the interleaving);
* the waiting payloads exceed ``max_bytes``: oldest first, but never a *pinned* set (one the
  driver announced it is computing, see :meth:`pin`) and never the ``keep_newest`` newest
  sets, so no cap inside its range can starve the output. Such drops, and the drops of what
  arrives for a set after the cap took it, are the policy's (``expected``), except when the
  driver's answer comes for a set the cap took: that is reported as unexpected, naming the cap
  (it is too small; no message was lost).

Drops are reported to ``on_drop(drop)`` as a :class:`Drop`: its ``reason`` (a :class:`Reason`)
is for the caller's decisions, its ``why`` text for logs. A set refused by the caller (a bad
message, :meth:`PairingBuffer.refuse`) is dropped at once and its later messages are not kept.
Not thread-safe: the caller holds a lock. No ROS import: messages are opaque objects here.
"""
from __future__ import annotations

import collections
import enum
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional

from depth_ros.core.checks import check_number

SUPERSEDED = 'a newer frame was complete first'


class Reason(enum.Enum):
    """Why a waiting set was dropped."""

    SUPERSEDED = 'a newer set completed first'
    AGE = 'older than the latency bound'
    COUNT = 'too many sets waiting'
    CAPPED = 'the byte cap took it'
    CAPPED_EARLIER = 'a part came after the byte cap took its set'
    FLUSHED = 'the input ended'


class Drop(NamedTuple):
    """One dropped set: its stamp, the kinds it lacked, the line's text, whether expected."""

    stamp: int
    missing: List[str]
    why: str
    expected: bool
    reason: Reason


def message_bytes(msg) -> int:
    """Payload bytes of a message: the length of its ``data`` (0 for CameraInfo)."""
    data = getattr(msg, 'data', None)
    return len(data) if data is not None else 0


class PairingBuffer(object):
    """
    Group messages by exact stamp until every required kind has arrived (module docstring).

    :param kinds: the kinds a set needs to be complete.
    :param on_drop: ``f(drop)`` with a :class:`Drop` for every dropped set.
    :param max_age_ns: latency bound: a set older than the newest stamp by more than this is
        dropped (0: no bound), except the set the driver announced last.
    :param max_count: at most this many sets wait (0: no bound); the oldest unpinned goes
        (only the set just added is exempt).
    :param max_bytes: cap on the waiting payloads (``sizeof``; 0: none), see the module
        docstring for what it never drops.
    :param driver: the slowest kind (disparity): a set missing only it, dropped because a newer
        set completed, is an expected drop.
    :param latest_kinds: kinds that are not required: kept by stamp (bounded) and attached to
        a completed set by its stamp, else the newest one received (camera_info recorded at a
        lower rate).
    :param keep_newest: the byte cap never drops the newest this-many sets.
    """

    def __init__(self, kinds: Iterable[str], on_drop: Optional[Callable] = None,
                 max_age_ns: int = 0, max_count: int = 0, max_bytes: int = 0,
                 driver: Optional[str] = None, latest_kinds: Iterable[str] = (),
                 keep_newest: int = 3, sizeof: Callable[[object], int] = message_bytes):
        self.kinds = tuple(kinds)
        if not self.kinds:
            raise ValueError('`kinds` must name at least one kind, got {!r}'.format(kinds))
        if driver is not None and driver not in self.kinds:
            raise ValueError('`driver` must be one of `kinds` {}, got {!r}'.format(
                self.kinds, driver))
        self.latest_kinds = tuple(latest_kinds)
        self.max_age_ns = check_number('max_age_ns', max_age_ns, 0, None, integer=True)
        self.max_count = check_number('max_count', max_count, 0, None, integer=True)
        self.max_bytes = check_number('max_bytes', max_bytes, 0, None, integer=True)
        self.keep_newest = check_number('keep_newest', keep_newest, 1, None, integer=True)
        self.driver = driver
        self.on_drop = on_drop
        self.sizeof = sizeof
        self.pending = collections.OrderedDict()   # stamp -> {kind: msg}, oldest first
        self.bytes = 0            # payload bytes waiting
        self.newest = None        # newest stamp seen
        self.dropped = 0
        self.dropped_expected = 0
        self._pins = collections.OrderedDict()     # stamps announced by the driver
        self._newest_pin = None                    # the set the driver computes now
        self._capped = collections.deque(maxlen=64)  # stamps dropped for the byte cap
        self._refused = collections.deque(maxlen=64)  # stamps the caller refused
        self._latest = collections.OrderedDict()   # stamp -> message of a latest kind
        self._latest_newest = {}                   # kind -> newest message

    # ------------------------------------------------------------------ public
    def add(self, kind: str, stamp: int, msg) -> Optional[Dict[str, object]]:
        """Add one message; return the complete set ``{kind: msg}`` for ``stamp`` or None."""
        if kind in self.latest_kinds:
            self._remember_latest(kind, stamp, msg)
            return None
        if kind not in self.kinds:
            raise ValueError('`kind` must be one of {}, got {!r}'.format(
                self.kinds + self.latest_kinds, kind))
        if stamp in self._refused:
            return None
        entry = self._entry(stamp)
        old = entry.get(kind)
        if old is not None:
            self.bytes -= self.sizeof(old)
        entry[kind] = msg
        self.bytes += self.sizeof(msg)
        if self.newest is None or stamp > self.newest:
            self.newest = stamp
        if len(entry) == len(self.kinds):
            return self._complete(stamp)
        self._evict()
        return None

    def pin(self, stamp: int) -> None:
        """
        Mark ``stamp`` as the one the driver is computing (depth_node announces it).

        A pinned set is never dropped by the byte or count cap, and the newest pin not by age
        either: only by a newer complete set. A pin may come before the set's first message.
        """
        self._pins[stamp] = True
        while len(self._pins) > 16:
            self._pins.popitem(last=False)
        self._newest_pin = max(stamp, self._newest_pin) if self._newest_pin is not None \
            else stamp

    def refuse(self, stamp: int) -> None:
        """
        Drop the set of ``stamp`` now, unreported, and keep none of its later messages.

        The caller refused one of its messages (and counted the frame): the set can never
        be complete, so nothing of it waits.
        """
        parts = self.pending.pop(stamp, None)
        if parts:
            self.bytes -= sum(self.sizeof(m) for m in parts.values())
        self._pins.pop(stamp, None)
        if stamp not in self._refused:
            self._refused.append(stamp)

    def refused(self, stamp: int) -> bool:
        """Return whether :meth:`refuse` was called for ``stamp``: none of its messages is kept."""
        return stamp in self._refused

    def parts(self, stamp: int) -> Dict[str, object]:
        """Return the messages waiting for ``stamp`` (empty when none), not a copy."""
        return self.pending.get(stamp, {})

    def flush(self, why: str = 'end of the input') -> int:
        """Drop every waiting set (the input ended: they will never complete); return how many."""
        count = len(self.pending)
        while self.pending:
            self._drop(next(iter(self.pending)), Reason.FLUSHED, why)
        return count

    def clear(self) -> None:
        """Forget everything without reporting drops (a restarted source, a new timeline)."""
        self.pending.clear()
        self._pins.clear()
        self._newest_pin = None
        self._capped.clear()
        self._refused.clear()
        self._latest.clear()
        self._latest_newest.clear()
        self.bytes = 0
        self.newest = None

    def waiting_kinds(self) -> Dict[str, int]:
        """Return how many waiting sets hold each kind (diagnostics)."""
        counts = collections.Counter()
        for entry in self.pending.values():
            counts.update(entry.keys())
        return dict(counts)

    # ------------------------------------------------------------------ steps
    def _entry(self, stamp: int) -> dict:
        entry = self.pending.get(stamp)
        if entry is None:
            # Keep the dict ordered by stamp whatever the interleaving of the streams.
            unordered = bool(self.pending) and stamp < next(reversed(self.pending))
            entry = self.pending[stamp] = {}
            if unordered:
                self.pending = collections.OrderedDict(sorted(self.pending.items()))
        return entry

    def _complete(self, stamp: int) -> Dict[str, object]:
        complete = self.pending.pop(stamp)
        self.bytes -= sum(self.sizeof(m) for m in complete.values())
        self._pins.pop(stamp, None)
        for older in [s for s in self.pending if s < stamp]:
            self._drop(older, Reason.SUPERSEDED, SUPERSEDED)
        for kind in self.latest_kinds:
            msg = self._latest.get((kind, stamp), self._latest_newest.get(kind))
            if msg is not None:
                complete[kind] = msg
        return complete

    def _evict(self) -> None:
        if self.max_age_ns:
            limit = self.newest - self.max_age_ns
            for stamp in [s for s in self.pending if s < limit and s != self._newest_pin]:
                self._drop(stamp, Reason.AGE, 'older than the pairing window of {:g} s'.format(
                    self.max_age_ns * 1e-9))
        if self.max_count:
            while len(self.pending) > self.max_count:
                victim = self._evictable(keep=1)
                if victim is None:
                    break
                self._drop(victim, Reason.COUNT, 'pairing buffer full ({} sets)'.format(
                    self.max_count))
        while self.max_bytes and self.bytes > self.max_bytes:
            victim = self._evictable()
            if victim is None:
                break
            self._capped.append(victim)
            self._drop(victim, Reason.CAPPED, 'pairing buffer over {:g} MB'.format(
                self.max_bytes / 1e6))

    def _evictable(self, keep: Optional[int] = None) -> Optional[int]:
        """Return the oldest set that is neither pinned nor among the newest ``keep``."""
        stamps = list(self.pending)
        keep = self.keep_newest if keep is None else keep
        for stamp in stamps[:max(0, len(stamps) - keep)]:
            if stamp not in self._pins:
                return stamp
        return None

    def _drop(self, stamp: int, reason: Reason, why: str) -> None:
        parts = self.pending.pop(stamp)
        self.bytes -= sum(self.sizeof(m) for m in parts.values())
        pinned = self._pins.pop(stamp, None) is not None
        missing = [k for k in self.kinds if k not in parts]
        capped = reason is Reason.CAPPED
        if stamp in self._capped and not capped:
            # What came after the byte cap dropped this set (the driver's answer, late parts):
            # say so, it is the cap (a configuration), not a lost message.
            reason = Reason.CAPPED_EARLIER
            why = 'its set was dropped earlier to stay under the pairing cap of {:g} MB'.format(
                self.max_bytes / 1e6)
            capped = self.driver not in parts      # an answer lost to the cap is worth a word
        # The newest-frame policy upstream skips frames on purpose: a set without the driver's
        # part that was not announced would never have been output, whatever else it lacks
        # (a stereo part lost in transport with it is no loss of output): not a fault.
        expected = capped or (self.driver is not None and self.driver in missing and
                              not pinned)
        self.dropped += 1
        if expected:
            self.dropped_expected += 1
        if self.on_drop is not None:
            self.on_drop(Drop(stamp, missing, why, expected, reason))

    def _remember_latest(self, kind: str, stamp: int, msg) -> None:
        self._latest[(kind, stamp)] = msg
        self._latest_newest[kind] = msg
        bound = max(self.max_count, 32)
        while len(self._latest) > bound:
            self._latest.popitem(last=False)


def missing_text(missing: List[str]) -> str:
    """'disparity, depth' for drop messages."""
    return ', '.join(missing) if missing else 'nothing'

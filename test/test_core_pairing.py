"""
core.pairing.PairingBuffer: exact-stamp pairing driven by the slowest stream.

The timeline tests replay what the live graph does: a camera at 30 fps publishes the stereo
set of every frame, the network answers one frame in ``inference`` seconds (always the newest
when it becomes free) and announces the stamp it starts on.
"""
from depth_ros.core.pairing import message_bytes, PairingBuffer, SUPERSEDED
import pytest

MS = 10 ** 6


class _Msg(object):
    def __init__(self, nbytes):
        self.data = bytes(nbytes)


def _recorder():
    drops = []
    # (stamp, missing kinds, why, expected) of each Drop
    return drops, lambda drop: drops.append(tuple(drop[:4]))


def test_complete_set_is_returned_and_older_sets_are_superseded():
    drops, on_drop = _recorder()
    buf = PairingBuffer(('disparity', 'depth'), on_drop, driver='disparity')
    assert buf.add('depth', 10, 'd10') is None
    assert buf.add('depth', 20, 'd20') is None
    assert buf.add('depth', 30, 'd30') is None
    assert buf.add('disparity', 20, 'r20') == {'disparity': 'r20', 'depth': 'd20'}
    # 10 never gets its disparity (the network skipped it): an expected drop.
    assert drops == [(10, ['disparity'], SUPERSEDED, True)], drops
    assert list(buf.pending) == [30] and buf.dropped == 1 and buf.dropped_expected == 1


def test_streams_in_any_interleaving_and_late_stamps_keep_the_order():
    buf = PairingBuffer(('a', 'b'))
    for stamp in (30, 10, 20):
        assert buf.add('a', stamp, stamp) is None
    assert list(buf.pending) == [10, 20, 30]
    assert buf.add('b', 10, 'b') == {'a': 10, 'b': 'b'}


def test_a_set_missing_stereo_is_an_unexpected_drop():
    drops, on_drop = _recorder()
    buf = PairingBuffer(('disparity', 'depth', 'camera_info'), on_drop, driver='disparity')
    buf.add('disparity', 10, 'r')                  # its depth was lost upstream
    buf.add('depth', 20, 'd')
    buf.add('camera_info', 20, 'i')
    assert buf.add('disparity', 20, 'r') is not None
    assert drops == [(10, ['depth', 'camera_info'], SUPERSEDED, False)], drops


def test_latency_bound_drops_by_age_relative_to_the_newest_stamp():
    drops, on_drop = _recorder()
    buf = PairingBuffer(('disparity', 'depth'), on_drop, driver='disparity',
                        max_age_ns=100 * MS)
    for t in range(0, 200, 33):
        buf.add('depth', t * MS, _Msg(1))
    # 198 ms is the newest: 0, 33 and 66 ms are more than 100 ms older.
    assert [d[0] for d in drops] == [0, 33 * MS, 66 * MS], drops
    assert drops[0][2] == 'older than the pairing window of 0.1 s' and drops[0][3]


def _simulate(inference_s, fps=30.0, seconds=10.0, max_bytes=0, max_age_s=1.0, pins=True,
              set_bytes=10 * 10 ** 6, max_count=0):
    """Frames completed when a camera at ``fps`` meets a network of ``inference_s``."""
    drops, on_drop = _recorder()
    buf = PairingBuffer(('disparity', 'depth', 'image'), on_drop, driver='disparity',
                        max_age_ns=int(max_age_s * 1e9), max_bytes=max_bytes,
                        max_count=max_count)
    period = 1.0 / fps
    events = []                               # (time, order, kind, stamp)
    busy_until, frame = 0.0, 0
    t = 0.0
    while t < seconds:
        stamp = int(round(t * 1e9))
        events.append((t, 0, 'depth', stamp))
        events.append((t + 0.002, 0, 'image', stamp))
        if t >= busy_until:                   # the network is free: it takes the newest frame
            events.append((t + 0.004, 1, 'pin', stamp))
            events.append((t + inference_s, 2, 'disparity', stamp))
            busy_until = t + inference_s
        frame += 1
        t = frame * period
    complete = []
    for when, _, kind, stamp in sorted(events):
        if kind == 'pin':
            if pins:
                buf.pin(stamp)
            continue
        if buf.add(kind, stamp, _Msg(set_bytes // 2)) is not None:
            complete.append(stamp)
    return complete, drops


@pytest.mark.parametrize('inference_s', [0.03, 0.15, 0.3, 0.6])
def test_a_slow_network_lowers_the_output_rate_and_never_stops_it(inference_s):
    # The issue this class fixes: 30 fps and a 300 ms network gave 0 clouds (every stereo set
    # was evicted by count before its disparity came).
    import math
    complete, drops = _simulate(inference_s)
    # The network takes the next camera frame after it is free: one output per whole number
    # of camera periods.
    expected = 10.0 / (math.ceil(inference_s * 30 - 1e-9) / 30.0) - 1
    assert len(complete) >= expected, 'expected about {:.0f} outputs in 10 s, received {}' \
        .format(expected, len(complete))
    unexpected = [d for d in drops if not d[3]]
    assert not unexpected, 'only frames the network skipped may be dropped: {}'.format(
        unexpected[:3])


@pytest.mark.parametrize('max_mb', [1.0, 30.0])
def test_no_memory_cap_inside_its_range_starves_the_output(max_mb):
    # 1 MB at 720p: one partial set is already over the cap; the pinned set survives it.
    complete, drops = _simulate(0.3, max_bytes=int(max_mb * 1e6))
    assert len(complete) >= 30, 'expected ~32 outputs, received {}'.format(len(complete))
    assert any(d[2].startswith('pairing buffer over') for d in drops)
    pinned_lost = [d for d in drops if not d[3]]
    assert not pinned_lost, 'a set being inferred was dropped: {}'.format(pinned_lost[:3])


def test_without_announcements_the_newest_sets_are_kept_and_the_window_bounds_memory():
    # A third-party relative-depth source (no inference_started): a generous cap keeps every
    # set of the latency window, so the output still flows.
    complete, drops = _simulate(0.3, pins=False, max_bytes=int(512e6))
    assert len(complete) >= 30, len(complete)


def test_byte_cap_never_drops_pinned_or_newest_sets():
    drops, on_drop = _recorder()
    buf = PairingBuffer(('disparity', 'depth'), on_drop, driver='disparity', max_bytes=25,
                        keep_newest=2)
    buf.pin(1)
    for stamp in range(1, 6):
        buf.add('depth', stamp, _Msg(10))
    # 50 bytes waiting, cap 25: 2, 3 go (1 is pinned, 4 and 5 are the newest two).
    assert [d[0] for d in drops] == [2, 3], drops
    assert all(d[2] == 'pairing buffer over 2.5e-05 MB' and d[3] for d in drops)
    assert list(buf.pending) == [1, 4, 5] and buf.bytes == 30
    assert buf.add('disparity', 1, _Msg(0)) is not None
    assert buf.bytes == 20


def test_a_pinned_set_that_never_gets_its_disparity_is_an_unexpected_drop():
    drops, on_drop = _recorder()
    buf = PairingBuffer(('disparity', 'depth'), on_drop, driver='disparity')
    buf.pin(10)
    buf.add('depth', 10, 'd')
    buf.add('depth', 20, 'd')
    buf.add('disparity', 20, 'r')
    assert drops == [(10, ['disparity'], SUPERSEDED, False)], drops


def test_count_bound_for_bags_and_latest_kinds():
    drops, on_drop = _recorder()
    buf = PairingBuffer(('image', 'depth'), on_drop, max_count=2,
                        latest_kinds=('camera_info',), sizeof=lambda m: 0)
    buf.add('camera_info', 1, 'info1')
    for stamp in (1, 2, 3):
        buf.add('image', stamp, 'img{}'.format(stamp))
    assert drops == [(1, ['depth'], 'pairing buffer full (2 sets)', False)], drops
    # camera_info by stamp when recorded, else the newest one received.
    assert buf.add('depth', 2, 'd2') == {'image': 'img2', 'depth': 'd2',
                                         'camera_info': 'info1'}
    buf.add('camera_info', 3, 'info3')
    assert buf.add('depth', 3, 'd3')['camera_info'] == 'info3'
    buf.add('image', 4, 'img4')
    assert buf.flush('end of the bag') == 1 and drops[-1][2] == 'end of the bag'


def test_clear_forgets_without_reporting_and_waiting_kinds():
    drops, on_drop = _recorder()
    buf = PairingBuffer(('a', 'b'), on_drop)
    buf.add('a', 1, _Msg(3))
    buf.add('b', 2, _Msg(4))
    assert buf.waiting_kinds() == {'a': 1, 'b': 1} and buf.bytes == 7
    buf.clear()
    assert (len(buf.pending), buf.bytes, buf.newest, drops) == (0, 0, None, [])
    assert message_bytes(_Msg(7)) == 7 and message_bytes(object()) == 0


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match=r"`driver` must be one of `kinds` \('a',\), got 'x'"):
        PairingBuffer(('a',), driver='x')
    with pytest.raises(ValueError, match=r'^`max_age_ns` must be an integer >= 0, got -1'):
        PairingBuffer(('a',), max_age_ns=-1)
    with pytest.raises(ValueError, match=r'`kinds` must name at least one kind'):
        PairingBuffer(())
    with pytest.raises(ValueError, match=r"`kind` must be one of \('a', 'info'\), got 'c'"):
        PairingBuffer(('a',), latest_kinds=('info',)).add('c', 1, None)


def test_the_old_count_bound_starved_a_slow_network_and_pins_fix_it():
    # Eight waiting sets by count (the 0.1 policy) at 30 fps: a 300 ms answer finds its set
    # evicted. The same bound with the network's announcements keeps the set being inferred.
    starved, _ = _simulate(0.3, pins=False, max_age_s=1000.0, max_count=8)
    pinned, drops = _simulate(0.3, pins=True, max_age_s=1000.0, max_count=8)
    assert len(starved) <= 1 and len(pinned) >= 30, (len(starved), len(pinned))
    assert not [d for d in drops if not d[3]]


def test_an_answer_for_a_set_the_cap_dropped_names_the_cap():
    drops, on_drop = _recorder()
    buf = PairingBuffer(('disparity', 'depth'), on_drop, driver='disparity', max_bytes=15,
                        keep_newest=1)
    buf.add('depth', 1, _Msg(10))
    buf.add('depth', 2, _Msg(10))          # 20 bytes > 15: set 1 goes for memory
    assert drops[-1][:2] == (1, ['disparity'])
    buf.add('disparity', 1, _Msg(0))       # its answer comes, alone
    buf.add('disparity', 2, _Msg(0))       # set 2 completes: the lone answer 1 is dropped
    assert drops[-1] == (1, ['depth'], 'its set was dropped earlier to stay under the '
                         'pairing cap of 1.5e-05 MB', False), drops
    # Late stereo parts of a set the cap took are the policy's drops, not errors.
    buf.add('depth', 3, _Msg(10))
    buf.add('depth', 4, _Msg(10))          # set 3 goes for memory
    buf.add('depth', 5, _Msg(10))
    assert all(d[3] for d in drops if d[0] in (3, 4)), drops


@pytest.mark.parametrize('inference_s', [1.5, 2.8])
def test_a_network_slower_than_the_window_still_gets_its_announced_sets(inference_s):
    # ViT-S on a busy CPU takes 2.6-2.9 s a frame; the window is 1 s. The set the network
    # announced waits past the window for its answer (the others go by age, as the policy's
    # expected drops), so clouds come out at the network's rate.
    complete, drops = _simulate(inference_s, fps=10.0, seconds=12.0, max_age_s=1.0,
                                max_bytes=int(512e6))
    assert len(complete) >= int(12.0 / inference_s) - 1, (len(complete), drops[:3])
    assert not [d for d in drops if not d[3]], [d for d in drops if not d[3]][:3]
    # Without the announcements, nothing older than the window pairs (only the last set of
    # the run, which no newer stamp pushed out of the window).
    starved, _ = _simulate(inference_s, fps=10.0, seconds=12.0, max_age_s=1.0, pins=False)
    assert len(starved) <= 1, starved


def test_only_the_newest_announcement_outlives_the_window():
    drops, on_drop = _recorder()
    buf = PairingBuffer(('disparity', 'depth'), on_drop, driver='disparity',
                        max_age_ns=100 * MS)
    buf.pin(0)
    buf.add('depth', 0, _Msg(1))
    buf.add('depth', 150 * MS, _Msg(1))       # 0 is 150 ms old: kept, it is being inferred
    assert list(buf.pending) == [0, 150 * MS] and drops == []
    buf.pin(150 * MS)                         # the network moved on: 0's answer never came
    buf.add('depth', 300 * MS, _Msg(1))
    assert [d[0] for d in drops] == [0] and list(buf.pending) == [150 * MS, 300 * MS]
    assert drops[0][2] == 'older than the pairing window of 0.1 s' and not drops[0][3]

"""The event-time clock: replays stay in their own time, live streams follow the wall clock."""

from __future__ import annotations

import pytest

from journey.core.eventclock import EventClock

T1997 = 852_076_800.0  # 1997-01-01
NOW = 1_800_000_000.0


def test_no_time_before_any_event():
    clock = EventClock()
    assert clock.now(NOW) is None
    clock.observe(None, NOW)
    assert clock.now(NOW) is None


def test_replay_gives_event_time_less_lateness_and_ignores_the_wall_clock():
    clock = EventClock(allowed_lateness_s=120.0)
    clock.observe(T1997 + 5000, NOW)
    assert not clock.live
    assert clock.now(NOW) == T1997 + 5000 - 120
    # Hours of wall time without events: a replay's clock does not move.
    assert clock.now(NOW + 7200) == T1997 + 5000 - 120
    clock.observe(T1997 + 9000, NOW + 7300)
    assert clock.now(NOW + 7300) == T1997 + 9000 - 120


def test_never_moves_backwards():
    clock = EventClock(allowed_lateness_s=0.0)
    clock.observe(T1997 + 100, NOW)
    clock.observe(T1997 + 50, NOW)  # a late event
    assert clock.now(NOW) == T1997 + 100
    assert clock.max_event_time == T1997 + 100


def test_live_stream_follows_the_wall_clock_through_silence():
    clock = EventClock(allowed_lateness_s=30.0, live_window_s=300.0)
    clock.observe(NOW - 10, NOW)
    assert clock.live
    assert clock.now(NOW) == NOW - 30
    # No events for a day: silence keeps counting.
    assert clock.now(NOW + 86400) == NOW + 86400 - 30


def test_a_late_event_after_a_quiet_spell_does_not_end_a_live_stream():
    clock = EventClock(allowed_lateness_s=30.0, live_window_s=300.0)
    clock.observe(NOW - 10, NOW)
    clock.observe(NOW - 3600, NOW + 600)  # ten quiet minutes, then an event an hour late
    assert clock.live
    assert clock.now(NOW + 86400) == NOW + 86400 - 30  # silence still counts
    clock.observe(NOW + 86400 - 2 * 86400, NOW + 86400)  # a backfill of older events: still live
    assert clock.live


def test_a_stream_far_behind_the_wall_clock_is_not_live():
    clock = EventClock(live_window_s=300.0, allowed_lateness_s=0.0)
    clock.observe(NOW - 301, NOW)
    assert not clock.live
    assert clock.now(NOW + 1000) == NOW - 301


def test_event_times_far_in_the_future_are_not_trusted():
    clock = EventClock(max_future_s=3600.0, allowed_lateness_s=0.0)
    clock.observe(T1997, NOW)
    clock.observe(NOW + 2 * 3600, NOW)
    assert clock.now(NOW) == T1997
    clock.observe(NOW + 1800, NOW)  # within the tolerance
    assert clock.now(NOW) == NOW + 1800


def test_rejects_negative_settings():
    with pytest.raises(ValueError, match="allowed_lateness_s"):
        EventClock(allowed_lateness_s=-1)

"""The stream's event-time clock: what "now" means for silence, timers and churn risk.

Now = the highest event time seen, less an allowed lateness (events that late still land before
the clock passes them). When the stream is live (its newest event time is close to the wall
clock), the clock also moves with the wall clock, so silence keeps counting when no events
arrive at all. A replay of 1997 data is never live: the clock then stays at 1997.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from journey.errors import SettingsError


@dataclass
class EventClock:
    #: How late (event time) an event may arrive and still be counted before the clock passes it.
    allowed_lateness_s: float = 60.0
    #: The stream is live when its newest event time is at most this far behind the wall clock.
    live_window_s: float = 300.0
    #: Event times further than this ahead of the wall clock are not trusted (a producer with a
    #: wrong clock must not jump every customer's silence ahead).
    max_future_s: float = 3600.0
    _max_event: float | None = field(default=None, init=False)
    _live: bool = field(default=False, init=False)
    _now: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.allowed_lateness_s < 0 or self.live_window_s < 0 or self.max_future_s < 0:
            raise SettingsError(
                f"event clock: allowed_lateness_s={self.allowed_lateness_s}, live_window_s="
                f"{self.live_window_s} and max_future_s={self.max_future_s} must all be >= 0; "
                f"check JOURNEY_CHURN_ALLOWED_LATENESS_S and JOURNEY_CHURN_LIVE_WINDOW_S"
            )

    def observe(self, event_time: float | None, wall: float) -> None:
        """Take the highest event time of a batch (None: the batch had none)."""
        if event_time is None or event_time > wall + self.max_future_s:
            return
        if self._max_event is None or event_time > self._max_event:
            self._max_event = event_time
            # Judged when the newest event time moves: a live stream that goes quiet stays live
            # (silence counts), and a late event after a quiet spell does not end it.
            self._live = wall - event_time <= self.live_window_s

    @property
    def live(self) -> bool:
        return self._live

    @property
    def max_event_time(self) -> float | None:
        return self._max_event

    def now(self, wall: float) -> float | None:
        """The event-time clock (epoch seconds), never moving backwards; None before any event."""
        if self._max_event is None:
            return None
        t = self._max_event - self.allowed_lateness_s
        if self._live:
            t = max(t, wall - self.allowed_lateness_s)
        if self._now is None or t > self._now:
            self._now = t
        return self._now

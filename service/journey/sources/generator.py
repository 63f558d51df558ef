"""Synthetic touchpoints: realistic customer journeys for the dev feed and the benchmark.

The journeys carry the imperfections a real feed has (duplicates, late events, unknown types,
anonymous visitors, malformed payloads) because the service must cope with them, and everything
is deterministic for a seed. Details: docs/data-sources.md.
"""

from __future__ import annotations

import heapq
import itertools
import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, NamedTuple

from journey.errors import UsageError

__all__ = ["GeneratorMix", "Emission", "emissions", "generate", "live_feed", "bad_events"]

Event = dict[str, Any]
# One step of a journey: seconds since the customer's previous step, type, channel, properties.
Step = tuple[float, str, str | None, dict[str, Any] | None]


@dataclass(frozen=True)
class GeneratorMix:
    """Probabilities that shape the crowd. The defaults give ~10 events per customer."""

    #: Visitors who never log in: anonymous_id only, short browse-only journeys.
    anonymous: float = 0.08
    #: Known customers whose events also carry a device anonymous_id.
    with_anonymous_id: float = 0.10
    #: Funnel: chance to go on to the next stage (the rest drop off there).
    to_consideration: float = 0.78
    to_decision: float = 0.70
    #: Of those who reach decision: chance to buy (the rest abandon their cart).
    to_purchase: float = 0.65
    #: Of buyers: chance the first purchase is in a physical store (no cart).
    store_purchase: float = 0.20
    #: One order reported by several purchase events (same order_id: still one purchase).
    split_purchase: float = 0.08
    #: Of buyers: chance to come back for more orders (each extra order repeats with `repeat_again`).
    repeat: float = 0.50
    repeat_again: float = 0.45
    #: Of buyers: subscription renewals.
    subscriber: float = 0.15
    #: Of buyers: reviews 4-5, referrals and shares.
    advocate: float = 0.35
    #: Of buyers: support tickets, complaints, bad reviews, refunds, returns, unsubscribes.
    complainer: float = 0.15
    #: Of considering customers: a review before ever buying (moves nothing: no purchase yet).
    early_review: float = 0.03
    #: Per journey phase: an event type the journey definition does not know.
    unknown_type: float = 0.10
    #: Per emitted event: the same event (same event_id) delivered a second time.
    duplicate: float = 0.01
    #: Per event: emitted well after its event time, out of order.
    late: float = 0.005
    #: Identity (IDENTITY_MIX turns these on). Of known customers: the journey starts on a
    #: device, anonymously, until a login (an `identify` carrying both ids) after 1-6 steps
    #: (a guest checkout when the purchase comes first).
    anonymous_first: float = 0.0
    #: Of those: a second device later, browsed anonymously for 1-2 steps, then logged in too.
    second_device: float = 0.0
    #: Per step after the login: logged out (the device's anonymous id only).
    logged_out: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(
                    f"GeneratorMix.{f.name}={value!r} is not a probability; give a number in [0, 1]"
                )


#: Anonymous-first traffic: most customers browse before they log in, some on two devices, some
#: check out as guests or logged out (`journey dev --identity`, `bench/throughput.py --identity`).
IDENTITY_MIX = GeneratorMix(anonymous_first=0.7, second_device=0.3, logged_out=0.15, with_anonymous_id=0.0)


class _Identity:
    """Which ids a customer's next event carries, and when a login happens."""

    __slots__ = ("customer", "device", "second", "anonymous_steps", "second_at", "step")

    def __init__(self, customer: str | None, device: str | None, second: str | None = None,
                 anonymous_steps: int = 0, second_at: int = -1) -> None:
        self.customer, self.device, self.second = customer, device, second
        self.anonymous_steps, self.second_at, self.step = anonymous_steps, second_at, 0


class Emission(NamedTuple):
    """One event as the feed sends it: ``due`` is when it is emitted (epoch seconds)."""

    due: float
    event: Event
    #: Emitted after its event time (a deliberate late event or a delayed redelivery).
    late: bool
    #: A second delivery of an event already emitted (same event_id).
    duplicate: bool


@dataclass(frozen=True)
class _Pace:
    """Gap ranges (seconds, lo-hi, drawn log-uniformly) for one time scale."""

    session: tuple[float, float]  # between clicks of one visit
    visit: tuple[float, float]  # between visits while shopping around
    order: tuple[float, float]  # between orders, renewals, post-purchase follow-ups
    late: tuple[float, float]  # how far behind its event time a late event arrives
    redelivery: tuple[float, float]  # how long after the original a duplicate arrives


_BATCH = _Pace(
    session=(5.0, 300.0),
    visit=(3600.0, 3 * 86400.0),
    order=(5 * 86400.0, 30 * 86400.0),
    late=(60.0, 6 * 3600.0),
    redelivery=(0.5, 120.0),
)
# Live mode: a whole journey fits in well under a minute so the dashboard moves visibly.
_LIVE = _Pace(
    session=(0.3, 2.0),
    visit=(1.5, 5.0),
    order=(3.0, 8.0),
    late=(3.0, 15.0),
    redelivery=(0.05, 2.0),
)

# --- what people do, per stage (types match schemas/journey.yaml; the unit test cross-checks)

# First touches, weighted by repetition: mostly paid/social/search/email/referral.
#: (event type, channel; None: the event leaves the channel out).
_Touch = tuple[str, str | None]

_FIRST_TOUCH: tuple[_Touch, ...] = (
    *[("ad_impression", "ads")] * 3,
    *[("ad_click", "ads")] * 3,
    *[("social_engagement", "social")] * 4,
    *[("page_view", "search")] * 4,
    *[("email_open", "email")] * 2,
    *[("campaign_received", "email")] * 1,
    *[("referral_visit", "referral")] * 2,
    *[("page_view", "direct")] * 1,
)
_MORE_AWARENESS: tuple[_Touch, ...] = (
    ("page_view", "direct"),
    ("page_view", "search"),
    ("ad_click", "ads"),
    ("email_open", "email"),
    ("social_engagement", "social"),
)
_RETURN_VISIT: tuple[_Touch, ...] = (("page_view", "direct"),) * 3 + (("email_open", "email"), ("page_view", "search"))
_CONSIDERATION: tuple[_Touch, ...] = (
    *[("product_view", "direct")] * 5,
    *[("search", "direct")] * 3,
    ("pricing_view", "direct"),
    ("pricing_view", "direct"),
    ("review_read", "direct"),
    ("content_download", "direct"),
    ("newsletter_signup", "email"),
    ("contact_form", "direct"),
)
_UNKNOWN: tuple[_Touch, ...] = (
    ("wishlist_add", "direct"),
    ("app_open", "other"),
    ("app_open", None),  # channel omitted: the schema default ("other") applies
    ("coupon_viewed", "email"),
    ("chat_started", "support"),
)
_CURRENCIES = ("USD",) * 16 + ("EUR",) * 3 + ("GBP",)
_CAMPAIGNS = ("spring-sale", "new-arrivals", "loyalty", "retargeting", "brand")


def _gap(rng: random.Random, lo_hi: tuple[float, float]) -> float:
    lo, hi = lo_hi
    return float(lo * (hi / lo) ** rng.random())


class _Ids:
    """Run-wide counters, so order, cart and product ids never collide between customers."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._orders = itertools.count(1)
        self._carts = itertools.count(1)

    def order(self) -> str:
        return f"{self.prefix}o{next(self._orders)}"

    def cart(self) -> str:
        return f"{self.prefix}k{next(self._carts)}"


def _customer(rng: random.Random, mix: GeneratorMix, pace: _Pace, ids: _Ids) -> Iterator[Step]:
    """A known customer's journey, step by step; each ``return`` is a drop-off."""
    r = rng.random
    choice = rng.choice
    session, visit, order = pace.session, pace.visit, pace.order
    currency = choice(_CURRENCIES)

    # Awareness: a first touch from outside, maybe a few more glances.
    typ, ch = choice(_FIRST_TOUCH)
    yield 0.0, typ, ch, ({"campaign": choice(_CAMPAIGNS)} if ch in ("ads", "email") else None)
    for _ in range(rng.randrange(3)):
        typ, ch = choice(_MORE_AWARENESS)
        yield _gap(rng, session), typ, ch, None
    if r() < mix.unknown_type:
        typ, ch = choice(_UNKNOWN)
        yield _gap(rng, session), typ, ch, None
    if r() >= mix.to_consideration:
        return  # bounced after awareness

    # Consideration: one to three visits of a few views each.
    for _ in range(1 + rng.randrange(3)):
        typ, ch = choice(_RETURN_VISIT)
        yield _gap(rng, visit), typ, ch, None
        for _ in range(1 + rng.randrange(3)):
            typ, ch = choice(_CONSIDERATION)
            props = {"product_id": f"p{rng.randrange(500)}"} if typ == "product_view" else None
            yield _gap(rng, session), typ, ch, props
    if r() < mix.early_review:
        # Reviewing before buying (e.g. a gifted item): must not count as advocacy.
        yield _gap(rng, session), "review_submitted", "direct", {"rating": rng.randint(1, 5)}
    if r() < mix.unknown_type:
        typ, ch = choice(_UNKNOWN)
        yield _gap(rng, session), typ, ch, None
    if r() >= mix.to_decision:
        return  # stalled in consideration

    # Decision.
    store = r() < mix.store_purchase
    if store:
        # Researched online, bought at the till: no cart.
        yield from _purchase(rng, mix, pace, ids, _gap(rng, visit), "store", currency)
    else:
        lead = r()
        if lead < 0.08:
            yield _gap(rng, session), "trial_started", "direct", None
        elif lead < 0.14:
            yield _gap(rng, session), "quote_requested", choice(("direct", "email")), None
        cart = ids.cart()
        for _ in range(1 + (r() < 0.3)):
            props = {"cart_id": cart, "product_id": f"p{rng.randrange(500)}"}
            yield _gap(rng, session), "add_to_cart", "direct", props
        if r() < 0.6:
            yield _gap(rng, session), "checkout_started", "direct", {"cart_id": cart}
        if r() >= mix.to_purchase:
            # Abandoned cart; sometimes a reminder mail that goes unanswered.
            if r() < 0.4:
                yield _gap(rng, visit), "campaign_received", "email", {"campaign": "cart-reminder"}
            return
        yield from _purchase(rng, mix, pace, ids, _gap(rng, session), "direct", currency)

    # After the first purchase: retention, advocacy, complaints, in a plausible order.
    complainer = r() < mix.complainer
    advocate = r() < (mix.advocate * (0.3 if complainer else 1.0))
    if complainer:
        yield _gap(rng, visit), "support_ticket", "support", {"topic": choice(("delivery", "billing", "defect"))}
        if r() < 0.6:
            yield _gap(rng, session), "complaint", "support", None
        if r() < 0.5:
            yield _gap(rng, visit), "review_submitted", "direct", {"rating": rng.randint(1, 2)}
        if r() < 0.5:
            if store or r() < 0.4:
                yield _gap(rng, visit), "return", "store", None
            else:
                yield _gap(rng, visit), "refund", "support", None
        if r() < 0.4:
            yield _gap(rng, visit), "unsubscribe", "email", None
            return  # gone
    if advocate:
        yield _gap(rng, visit), "review_submitted", "direct", {"rating": rng.randint(4, 5)}
        if r() < 0.5:
            yield _gap(rng, visit), "referral_sent", "referral", None
        if r() < 0.5:
            yield _gap(rng, session), "social_share", "social", None
    if r() < mix.subscriber:
        plan = {"plan": choice(("monthly", "annual")), "amount": 9.99, "currency": currency}
        for _ in range(1 + rng.randrange(3)):
            yield _gap(rng, order), "subscription_renewed", "email", plan
    if r() < mix.repeat * (0.4 if complainer else 1.0):
        while True:
            typ, ch = choice(_RETURN_VISIT)
            yield _gap(rng, order), typ, ch, None
            if r() < mix.unknown_type:
                typ, ch = choice(_UNKNOWN)
                yield _gap(rng, session), typ, ch, None
            yield _gap(rng, session), "product_view", "direct", {"product_id": f"p{rng.randrange(500)}"}
            if r() < 0.25:
                yield from _purchase(rng, mix, pace, ids, _gap(rng, session), "store", currency)
            else:
                cart = ids.cart()
                yield _gap(rng, session), "add_to_cart", "direct", {"cart_id": cart}
                yield from _purchase(rng, mix, pace, ids, _gap(rng, session), "direct", currency)
            if r() >= mix.repeat_again:
                break
        if advocate and r() < 0.3:
            yield _gap(rng, visit), "social_share", "social", None


def _purchase(
    rng: random.Random,
    mix: GeneratorMix,
    pace: _Pace,
    ids: _Ids,
    gap: float,
    channel: str,
    currency: str,
) -> Iterator[Step]:
    order_id = ids.order()
    amount = round(rng.lognormvariate(3.6, 0.8), 2)
    yield gap, "purchase", channel, {"order_id": order_id, "amount": amount, "currency": currency}
    if rng.random() < mix.split_purchase:
        # The shop reports the same order again (payment captured, shipped): one purchase, and no
        # amount (a purchase's amount is its own line's, and these add no line: revenue stays).
        for status in ("paid", "shipped")[: 1 + rng.randrange(2)]:
            props = {"order_id": order_id, "currency": currency, "status": status}
            yield _gap(rng, pace.session), "purchase", channel, props


def _visitor(rng: random.Random, mix: GeneratorMix, pace: _Pace, ids: _Ids) -> Iterator[Step]:
    """An anonymous visitor: browses a little, sometimes fills a cart, never logs in."""
    typ, ch = rng.choice(_FIRST_TOUCH)
    yield 0.0, typ, ch, None
    for _ in range(rng.randrange(4)):
        typ, ch = rng.choice(_CONSIDERATION[:8])  # views, searches, pricing
        yield _gap(rng, pace.session), typ, ch, None
    if rng.random() < mix.unknown_type:
        typ, ch = rng.choice(_UNKNOWN)
        yield _gap(rng, pace.session), typ, ch, None
    if rng.random() < 0.15:
        yield _gap(rng, pace.session), "add_to_cart", "direct", {"cart_id": ids.cart()}


@lru_cache(maxsize=4096)
def _day_prefix(day: int) -> str:
    return (datetime(1970, 1, 1) + timedelta(days=day)).strftime("%Y-%m-%dT")


@lru_cache(maxsize=1 << 16)
def _minute_prefix(minute: int) -> str:
    day, rest = divmod(minute, 1440)
    hour, minute = divmod(rest, 60)
    return f"{_day_prefix(day)}{hour:02d}:{minute:02d}:"


def _rfc3339(ts: float) -> str:
    """UTC, millisecond precision, fixed width (so strings sort like times); cheap per event."""
    sec, ms = divmod(int(ts * 1000.0), 1000)
    minute, second = divmod(sec, 60)
    return f"{_minute_prefix(minute)}{second:02d}.{ms:03d}+00:00"


# Heap entry kinds.
_ARRIVAL, _STEP, _LATE, _DUP = 0, 1, 2, 3


def _merge(
    rng: random.Random,
    mix: GeneratorMix,
    pace: _Pace,
    arrivals: Iterator[float],
    prefix: str,
) -> Iterator[Emission]:
    """Merge every customer's timeline into one stream ordered by emission time."""
    r = rng.random
    push, pop = heapq.heappush, heapq.heappop
    seq = itertools.count()
    event_no = itertools.count(1)
    customer_no = itertools.count(1)
    ids = _Ids(prefix)
    late_p, dup_p = mix.late, mix.duplicate
    heap: list[tuple[Any, ...]] = []
    # Entry: (due, seq, kind, event_time, journey, step, identity). seq breaks ties, so
    # journeys and dicts are never compared.

    def advance(journey: Iterator[Step], t: float, identity: _Identity) -> None:
        for gap, typ, ch, props in journey:
            t += gap
            if r() < late_p:
                # Parked on its own; the journey goes on without waiting for it.
                push(heap, (t + _gap(rng, pace.late), next(seq), _LATE, t, None, (typ, ch, props), identity))
                continue
            push(heap, (t, next(seq), _STEP, t, journey, (typ, ch, props), identity))
            return

    first = next(arrivals, None)
    if first is not None:
        push(heap, (first, next(seq), _ARRIVAL, first, None, None, None))
    while heap:
        due, _, kind, t, journey, step, identity = pop(heap)
        if kind == _ARRIVAL:
            n = next(customer_no)
            if r() < mix.anonymous:
                identity = _Identity(None, f"{prefix}v{n}")
                journey = _visitor(rng, mix, pace, ids)
            elif mix.anonymous_first and r() < mix.anonymous_first:
                second = f"{prefix}m{n}" if r() < mix.second_device else None
                identity = _Identity(f"{prefix}c{n}", f"{prefix}d{n}", second, rng.randint(1, 6), rng.randint(2, 9))
                journey = _customer(rng, mix, pace, ids)
            else:
                device = f"{prefix}d{n}" if r() < mix.with_anonymous_id else None
                identity = _Identity(f"{prefix}c{n}", device)
                journey = _customer(rng, mix, pace, ids)
            advance(journey, t, identity)
            following = next(arrivals, None)
            if following is not None:
                push(heap, (following, next(seq), _ARRIVAL, following, None, None, None))
            continue
        if kind == _DUP:
            yield Emission(due, step, due > t, True)
            continue
        typ, ch, props = step
        customer_id, anonymous_id = identity.customer, identity.device
        if identity.anonymous_steps or identity.second:
            # Anonymous-first journeys: which device, logged in or not; a login comes as an
            # identify event of its own just before the first logged-in step on a device.
            identity.step += 1
            on_second = identity.second is not None and identity.step >= identity.second_at
            device = identity.second if on_second else identity.device
            logged_in = identity.step > identity.anonymous_steps + (2 if on_second else 0) and (
                not on_second or identity.step >= identity.second_at + 2)
            if logged_in and not on_second and identity.step == identity.anonymous_steps + 1 or (
                    on_second and identity.step == identity.second_at + 2):
                yield Emission(due, {"event_id": f"{prefix}e{next(event_no)}", "customer_id": customer_id,
                                     "anonymous_id": device, "type": "identify", "timestamp": _rfc3339(t - 1.0),
                                     "channel": "direct", "properties": {}}, False, False)
            if not logged_in or r() < mix.logged_out:
                customer_id = None
            anonymous_id = device
        event: Event = {"event_id": f"{prefix}e{next(event_no)}"}
        if customer_id is not None:
            event["customer_id"] = customer_id
        if anonymous_id is not None:
            event["anonymous_id"] = anonymous_id
        event["type"] = typ
        event["timestamp"] = _rfc3339(t)
        if ch is not None:
            event["channel"] = ch
        event["properties"] = dict(props) if props else {}
        if r() < dup_p:
            # Half the redeliveries are immediate retries, the rest arrive a little later.
            delay = 0.0 if r() < 0.5 else _gap(rng, pace.redelivery)
            copy = {**event, "properties": dict(event["properties"])}
            push(heap, (due + delay, next(seq), _DUP, t, None, copy, identity))
        yield Emission(due, event, kind == _LATE, False)
        if kind == _STEP:
            advance(journey, t, identity)


def _sorted_arrivals(rng: random.Random, n: int, start: float, span: float) -> Iterator[float]:
    # n sorted uniform times generated one by one (descending order statistics, mirrored),
    # so 100,000 arrivals never sit in a list.
    top = 1.0
    for i in range(n, 0, -1):
        top *= (1.0 - rng.random()) ** (1.0 / i)
        yield start + (1.0 - top) * span


def emissions(
    n_customers: int,
    *,
    seed: int = 7,
    start: datetime,
    span: timedelta = timedelta(days=30),
    mix: GeneratorMix | None = None,
) -> Iterator[Emission]:
    """Like ``generate`` but says for each event when it is emitted and whether it is late/duplicate."""
    if not isinstance(n_customers, int) or n_customers < 0:
        raise ValueError(f"n_customers={n_customers!r}: give a whole number >= 0")
    if start.tzinfo is None or start.utcoffset() is None:
        raise ValueError(
            f"start={start.isoformat()} has no time zone; "
            "pass an aware datetime, e.g. datetime(2024, 1, 1, tzinfo=timezone.utc)"
        )
    if span <= timedelta(0):
        raise ValueError(f"span={span} must be positive (customers arrive over this period)")
    rng = random.Random(seed)
    arrivals = _sorted_arrivals(rng, n_customers, start.timestamp(), span.total_seconds())
    return _merge(rng, mix or GeneratorMix(), _BATCH, arrivals, prefix=f"s{seed}-")


def generate(
    n_customers: int,
    *,
    seed: int = 7,
    start: datetime,
    span: timedelta = timedelta(days=30),
    mix: GeneratorMix | None = None,
) -> Iterator[Event]:
    """Touchpoints for ``n_customers`` journeys (anonymous visitors included), in emission order.

    Customers arrive uniformly over ``[start, start + span)``; their later steps may run past
    the end. Emission order is event-time order except the deliberate late events and
    delayed duplicates (see ``emissions`` to tell them apart). Lazy: memory holds only the
    customers whose journey is still going.
    """
    return (e.event for e in emissions(n_customers, seed=seed, start=start, span=span, mix=mix))


def _mean_events_per_customer(seed: int, mix: GeneratorMix) -> float:
    sample = 400
    count = sum(1 for _ in emissions(sample, seed=seed, start=datetime(2000, 1, 1, tzinfo=UTC), mix=mix))
    return max(count / sample, 1.0)


def live_feed(
    rate_per_s: float,
    *,
    seed: int,
    clock: Callable[[], float] = time.time,
    mix: GeneratorMix | None = None,
) -> Iterator[tuple[float, Event]]:
    """An endless stream of ``(due, event)``: send ``event`` when ``clock()`` reaches ``due``.

    About ``rate_per_s`` events per second on average. Timestamps are the due time (late
    events: earlier). ``due`` never decreases, so a producer loop can simply do::

        for due, event in live_feed(50, seed=1):
            await asyncio.sleep(max(0.0, due - time.time()))
            await send(event)

    Ids carry the start time, so a restarted feed does not replay ids the service has seen.
    """
    if not rate_per_s > 0:
        raise UsageError(f"rate_per_s={rate_per_s!r}: give a positive number of events per second (journey dev --rate)")
    mix = mix or GeneratorMix()
    customers_per_s = rate_per_s / _mean_events_per_customer(seed, mix)

    def arrivals(rng: random.Random, t0: float) -> Iterator[float]:
        t = t0
        while True:
            yield t
            t += rng.expovariate(customers_per_s)

    def feed() -> Iterator[tuple[float, Event]]:
        t0 = clock()
        rng = random.Random(seed)
        prefix = f"live{int(t0 * 1000):x}-"
        for e in _merge(rng, mix, _LIVE, arrivals(rng, t0), prefix):
            yield e.due, e.event

    return feed()


def bad_events(seed: int) -> Iterator[bytes]:
    """An endless stream of malformed payloads (each one must land on the dead-letter topic)."""
    rng = random.Random(seed)
    serial = itertools.count(1)

    def good() -> Event:
        n = next(serial)
        return {
            "event_id": f"bad{seed}-{n}",
            "customer_id": f"bad{seed}-c{rng.randrange(100)}",
            "type": "page_view",
            "timestamp": _rfc3339(1_700_000_000 + rng.randrange(10_000_000)),
            "channel": "direct",
            "properties": {},
        }

    def dumps(event: Any) -> bytes:
        return json.dumps(event).encode()

    def no_event_id() -> bytes:
        event = good()
        del event["event_id"]
        return dumps(event)

    def naive_timestamp() -> bytes:
        event = good()
        event["timestamp"] = event["timestamp"].removesuffix("+00:00")
        return dumps(event)

    def camel_type() -> bytes:
        return dumps({**good(), "type": "AddToCart"})

    def no_identity() -> bytes:
        event = good()
        del event["customer_id"]
        return dumps(event)

    def bad_rating() -> bytes:
        return dumps({**good(), "type": "review_submitted", "properties": {"rating": 7}})

    def bad_channel() -> bytes:
        return dumps({**good(), "channel": "television"})

    def not_an_object() -> bytes:
        return dumps([good()])

    def not_json() -> bytes:
        return b"event_id=42&type=page_view"

    def truncated() -> bytes:
        raw = dumps(good())
        return raw[: len(raw) // 2]

    def invalid_utf8() -> bytes:
        return dumps({**good(), "type": "page_view"}).replace(b"page_view", b"page_\xff\xfeview")

    makers = [
        no_event_id, naive_timestamp, camel_type, no_identity, bad_rating,
        bad_channel, not_an_object, not_json, truncated, invalid_utf8,
    ]
    while True:
        rng.shuffle(makers)
        for make in makers:
            yield make()

"""`journey churn fit` and `journey churn score`: the worker's code run over a file.

Touchpoints are read with the replay readers, folded per customer through the journey machine
(journey.core.machine.apply) exactly as the worker applies them, and scored with the same
update step (journey.churn.update) the worker runs after each batch and on its timer.
"""

from __future__ import annotations

import bisect
import csv
import json
import math
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from journey.churn import bgnbd, learned, validation
from journey.churn.calibration import Order
from journey.churn.config import ChurnSettings
from journey.churn.learned import Layer, Spec
from journey.churn.risk import ChurnModel, RiskConfig, StageTimes, load_model, save_model
from journey.churn.update import ChurnConfig, note_touchpoint, update
from journey.core import painpoints
from journey.core.clock import DAY_S, utc_day
from journey.core.definition import JourneyDefinition, Kind, load_definition
from journey.core.events import InvalidTouchpoint, Touchpoint, decode
from journey.core.machine import Limits, apply
from journey.core.state import CustomerState
from journey.errors import InputError, UsageError
from journey.settings import Settings


def parse_as_of(value: str) -> float:
    """A DATE (YYYY-MM-DD: its whole UTC day counts) or an RFC 3339 time -> epoch seconds."""
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return (day.toordinal() - date(1970, 1, 1).toordinal() + 1) * DAY_S - 1e-3
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(f"date {value!r} is neither YYYY-MM-DD nor an RFC 3339 time like 1997-09-30T12:00:00+00:00") from None
    if parsed.tzinfo is None:
        raise UsageError(f"time {value!r} has no UTC offset; write it like {value}+00:00")
    return parsed.timestamp()


def read_touchpoints(path: str | Path, fmt: str, *, quiet: bool = False) -> list[Touchpoint]:
    """Every valid touchpoint of the file, in event-time order (invalid ones are counted, skipped)."""
    errors = None if quiet else sys.stderr
    from journey.sources.records import records_for_format

    records, _total = records_for_format(path, fmt)
    out: list[Touchpoint] = []
    bad = 0
    for _key, value, _when in records:
        try:
            out.append(decode(value))
        except InvalidTouchpoint as exc:
            bad += 1
            if errors is not None and bad <= 5:
                print(f"skipping an invalid touchpoint in {path}: {exc.error}", file=errors)
    if bad and errors is not None:
        print(f"skipped {bad} invalid touchpoints in {path}", file=errors)
    out.sort(key=lambda tp: tp.ts)  # stable: same-time events keep their file order
    return out


@dataclass
class Folded:
    states: dict[str, CustomerState]
    stage_times: StageTimes


def fold(
    touchpoints: Iterable[Touchpoint],
    definition: JourneyDefinition,
    config: ChurnConfig,
    *,
    until: float,
    limits: Limits = Limits(),
    snapshots: Sequence[float] = (),
    on_snapshot: Callable[[float, Folded], None] | None = None,
) -> Folded:
    """Apply every touchpoint with event time <= ``until`` to its customer's state, as the worker
    does. ``touchpoints`` in event-time order; ``on_snapshot(t, folded)`` is called at each of the
    increasing ``snapshots`` times, once everything up to it is applied."""
    states: dict[str, CustomerState] = {}
    stage_times = StageTimes(config.risk)
    folded = Folded(states, stage_times)
    pending = [t for t in snapshots if t <= until]
    for tp in touchpoints:
        if tp.ts > until:
            continue
        while pending and tp.ts > pending[0] and on_snapshot is not None:
            on_snapshot(pending.pop(0), folded)
        key = tp.profile_id
        outcome = apply(states.get(key), tp, definition, limits)
        if outcome.duplicate:
            continue
        states[key] = outcome.state
        note_touchpoint(outcome.state, tp.type, tp.ts, tp.channel, config)
        t = outcome.transition
        if t is not None:
            stage_times.observe(t.from_stage, t.seconds_in_previous_stage)
    while pending and on_snapshot is not None:
        on_snapshot(pending.pop(0), folded)
    return folded


@dataclass(frozen=True)
class ScoreRow:
    customer_id: str
    score: float
    level: str
    reasons: list[str]
    reason_codes: list[dict[str, Any]] = field(default_factory=list)


def score_all(folded: Folded, as_of: float, model: ChurnModel, config: ChurnConfig) -> Iterator[ScoreRow]:
    """Every folded customer's churn risk as of ``as_of`` (the states are updated in place)."""
    for customer_id in sorted(folded.states, key=_id_order):
        u = update(folded.states[customer_id], as_of, model, config, folded.stage_times)
        yield ScoreRow(customer_id, u.risk.score, u.risk.level_name, u.risk.reasons, u.risk.reason_codes)


CSV_COLUMNS = ("customer_id", "score", "level", "reasons", "reason_codes")


def write_csv(rows: Iterable[ScoreRow], out: TextIO) -> int:
    """customer_id, score, level, reasons ("; "-joined text), reason_codes (a JSON list of
    {"code", "value", "effect"}, as in the churn-risk event)."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    n = 0
    for row in rows:
        codes = json.dumps(row.reason_codes, separators=(",", ":"))
        writer.writerow([row.customer_id, f"{row.score:.6f}", row.level, "; ".join(row.reasons), codes])
        n += 1
    return n


def orders_from(touchpoints: Iterable[Touchpoint], definition: JourneyDefinition, *, until: float) -> list[Order]:
    """Distinct purchases (by order_id, else event id) with their amounts, up to ``until``."""
    orders: dict[tuple[str, str], list[Any]] = {}
    for tp in touchpoints:
        if tp.ts > until or definition.classify(tp.type, tp.properties) is not Kind.PURCHASE:
            continue
        order_id = tp.properties.get("order_id")
        key = (tp.profile_id, str(order_id) if order_id is not None else f"event:{tp.event_id}")
        amount = tp.properties.get("amount")
        amount = float(amount) if isinstance(amount, (int, float)) and not isinstance(amount, bool) and math.isfinite(amount) else 0.0
        entry = orders.setdefault(key, [tp.ts, 0.0])
        entry[0] = min(entry[0], tp.ts)
        entry[1] += amount
    return [Order(cid, ts, amount) for (cid, _), (ts, amount) in orders.items()]


def fit_model(
    touchpoints: list[Touchpoint],
    definition: JourneyDefinition,
    *,
    until: float,
    time_unit_days: float = 7.0,
    horizon_days: float = 90.0,
    source: str = "",
    calibrate: bool = True,
    config: ChurnConfig | None = None,
    log: Callable[[str], None] = lambda _s: None,
) -> tuple[ChurnModel, dict[str, Any]]:
    """BG/NBD fit on the purchases up to ``until`` (per UTC day), then the learned layer, validated
    out of time inside the history (journey.churn.validation). ``touchpoints`` in event-time order."""
    orders = orders_from(touchpoints, definition, until=until)
    if not orders:
        raise InputError(
            f"no purchases ({', '.join(sorted(definition.purchase_types))}) on or before the --until date in "
            f"{source or 'the input'}; give a later --until, or a file with purchases"
        )
    churn, result = bgnbd.fit_churn_params(
        [(o.customer_id, o.ts) for o in orders], until=until, time_unit_days=time_unit_days, source=source
    )
    report: dict[str, Any] = {"fit": result.diagnostics()}
    config = config or ChurnConfig(risk=RiskConfig(horizon_days=horizon_days))
    window = config.risk.signal_window_days
    if not calibrate:
        report["validation"] = {"skipped": "--no-calibration: the plain BG/NBD probability, as it is"}
        return ChurnModel(churn, None, plain_layer(horizon_days, window, report["validation"]["skipped"])), report
    until_day = utc_day(until)
    first_day = min(utc_day(o.ts) for o in orders)
    try:
        the_plan = validation.plan(first_day, until_day, horizon_days)
        snapshots = snapshot_rows(touchpoints, definition, config, orders, the_plan, churn, time_unit_days, log)
        outcome = validation.validate_and_fit(
            snapshots, the_plan, horizon_days=horizon_days, signal_window_days=window,
            degenerate=result.degenerate, log=log,
        )
    except validation.ValidationSkipped as exc:
        why = f"no out-of-time validation: {exc}. The plain BG/NBD probability ships, as it is"
        report["validation"] = {"skipped": why}
        return ChurnModel(churn, None, plain_layer(horizon_days, window, why)), report
    report["validation"] = outcome.report
    return ChurnModel(churn, None, outcome.layer), report


def plain_layer(horizon_days: float, signal_window_days: float, why: str) -> Layer:
    """The BG/NBD probability as it is, as a layer: sigmoid(logit(P)); no signal has an effect."""
    spec = Spec((0.0, 1.0), signal_window_days=signal_window_days, horizon_days=horizon_days)
    weights = tuple(1.0 if n == learned.BGNBD_LOG_ODDS else 0.0 for n in spec.names)
    return Layer(spec, 0.0, weights, tuple(0.0 for _ in spec.names), "bgnbd-raw", {"validation": {"skipped": why}})


def snapshot_rows(
    touchpoints: Sequence[Touchpoint],
    definition: JourneyDefinition,
    config: ChurnConfig,
    orders: Sequence[Order],
    the_plan: validation.Plan,
    churn: bgnbd.ChurnParams,
    time_unit_days: float,
    log: Callable[[str], None] = lambda _s: None,
) -> dict[int, validation.Rows]:
    """Every purchaser as the worker sees them at the end of each snapshot day (one fold through
    the machine), their BG/NBD probability under a fit on what came before, and their label."""
    days = sorted({*the_plan.grid, the_plan.until})
    times = [(d + 1) * DAY_S - 1e-3 for d in days]  # the end of the day, like `--as-of DATE`
    window_days = config.risk.signal_window_days
    W = the_plan.window_days
    rows: dict[int, validation.Rows] = {}

    def take(at: float, folded: Folded) -> None:
        day = utc_day(at)
        ids, repeat, span, t_days, observations = [], [], [], [], []
        for customer_id, state in folded.states.items():
            if state.first_purchase is None:
                continue
            pain = state.extra.get(painpoints.KEY)
            if pain and pain.get("c"):
                painpoints.evaluate_due(state, at, config.pain)  # carts due by now, as update() would
            first = utc_day(state.first_purchase)
            last = utc_day(state.last_purchase if state.last_purchase is not None else state.first_purchase)
            ids.append(customer_id)
            repeat.append(max(state.purchase_days - 1, 0))
            span.append(last - first)
            t_days.append(max(day - first, last - first))
            observations.append(learned.snapshot(learned.observe(state, at, window_days)))
        rows[day] = validation.Rows(day, ids, np.array(repeat, dtype=np.int64), np.array(span, dtype=np.int64),
                                    np.array(t_days, dtype=np.int64), observations)

    until = (max(days) + 1) * DAY_S
    fold(touchpoints, definition, config, until=until, snapshots=times, on_snapshot=take)
    by_customer: dict[str, list[float]] = {}
    for o in orders:
        by_customer.setdefault(str(o.customer_id), []).append(o.ts)
    for ts in by_customer.values():
        ts.sort()
    previous = churn.params
    for at, day in zip(times, days, strict=True):
        r = rows[day]
        unit = time_unit_days
        if day == the_plan.until:  # the end of the history: the main fit, no label
            args = (r.repeat.astype(float), r.span / unit, r.t_days / unit)
            r.p = bgnbd.p_no_purchase_within_batch(churn.params, *args, W / unit)
            r.p_h = bgnbd.p_no_purchase_within_batch(churn.params, *args, config.risk.horizon_days / unit)
            continue
        _ids, x, t_x, T = bgnbd.summaries(((o.customer_id, o.ts) for o in orders if o.ts <= at),
                                           until=day * DAY_S, time_unit_days=time_unit_days)
        fitted = bgnbd.fit(x, t_x, T, starts=(previous,), quick=True) if len(x) else None
        if fitted is None:
            continue
        previous = fitted.params
        r.degenerate = fitted.degenerate
        r.p = bgnbd.p_no_purchase_within_batch(fitted.params, r.repeat.astype(float), r.span / unit, r.t_days / unit, W / unit)
        end = at + W * DAY_S
        r.y = np.array([not _any_between(by_customer.get(c, []), at, end) for c in r.ids], dtype=bool)
        log(f"  snapshot {validation.day_text(day)}: {len(r)} purchasers, {r.y.mean():.0%} without a purchase in the next "
            f"{W} days; BG/NBD {'degenerate' if fitted.degenerate else 'ok'}")
    return rows


def _any_between(sorted_ts: list[float], lo: float, hi: float) -> bool:
    """Is there a time t with lo < t <= hi?"""
    i = bisect.bisect_right(sorted_ts, lo)
    return i < len(sorted_ts) and sorted_ts[i] <= hi


def cmd_fit(args: Any, definition: JourneyDefinition, config: ChurnConfig | None = None) -> int:
    until = parse_as_of(args.until)
    touchpoints = read_touchpoints(args.file, args.format)
    model, report = fit_model(
        touchpoints, definition, until=until, time_unit_days=args.time_unit_days,
        horizon_days=args.horizon_days, source=f"{args.file} (until {args.until})",
        calibrate=not args.no_calibration, config=config,
    )
    p = model.params.params
    fit = report["fit"]
    print(f"BG/NBD ({model.params.time_unit_days:g}-day units, {fit['n_customers']} customers): "
          f"r={p.r:.4f} alpha={p.alpha:.4f} a={p.a:.4f} b={p.b:.4f} LL={fit['log_likelihood']:.1f}")
    print(f"  {fit['message']}")
    if fit["degenerate"]:
        print("  WARNING: degenerate fit (see above): the plain BG/NBD probability is its no-dropout (NBD) limit; "
              "the validation below decides what ships instead", file=sys.stderr)
    for line in describe(report):
        print(line)
    save_model(args.out, model)
    print(f"wrote {args.out} (model {model.name}, version {model.version})")
    return 0


def describe(report: dict[str, Any]) -> list[str]:
    """What `journey churn fit` prints about the validation and the shipped score."""
    v = report.get("validation") or {}
    if "skipped" in v:
        return [f"validation: {v['skipped']}"]
    lines = validation.format_table(v)
    signals = v["features"]["signals"]
    if signals:
        learned_ones = [k for k, s in signals.items() if s["learned"]]
        rare = [f"{k} ({s['customers']} customers)" for k, s in signals.items() if not s["learned"]]
        if v["selection"]["shipped"] in ("learned", "features"):
            effects = v.get("effects", {})
            parts = []
            for k in learned_ones:
                w = effects.get(f"signal_count:{k}", 0.0) + effects.get(f"signal_recent:{k}", 0.0)
                parts.append(f"{k} {'raises' if w > 0 else 'lowers' if w < 0 else 'does not change'} the risk "
                             f"(count {effects.get(f'signal_count:{k}', 0.0):+.3f}, recent {effects.get(f'signal_recent:{k}', 0.0):+.3f})")
            if parts:
                lines.append("  signals learned: " + "; ".join(parts))
        if rare:
            lines.append(f"  signals too rare to learn (fewer than {validation.MIN_SUPPORT} customers): no effect: {', '.join(rare)}")
    return lines


def cmd_score(args: Any, definition: JourneyDefinition, config: ChurnConfig, model: ChurnModel) -> int:
    as_of = parse_as_of(args.as_of)
    folded = fold(read_touchpoints(args.file, args.format), definition, config, until=as_of)
    write_csv(score_all(folded, as_of, model, config), sys.stdout)
    return 0


def _id_order(customer_id: str) -> tuple[int, int | str]:
    # Numeric ids in numeric order (CDNOW), then the rest as text.
    return (0, int(customer_id)) if customer_id.isdigit() else (1, customer_id)


def run(args: Any, settings: Settings) -> int:
    """`journey churn fit|score` (argparse in journey.cli); settings give the defaults."""
    definition = load_definition(settings.journey_path)
    churn_settings = ChurnSettings.from_settings(settings)
    if args.horizon_days is not None:
        churn_settings = replace(churn_settings, horizon_days=args.horizon_days)
    if args.churn_command == "fit":
        args.horizon_days = churn_settings.horizon_days
        return cmd_fit(args, definition, churn_settings.config(definition.purchase_types))
    model = load_model(args.params or churn_settings.params_path(settings))
    mismatch = model.horizon_mismatch(churn_settings.horizon_days)
    if mismatch is not None:
        print(f"journey: warning: {mismatch}", file=sys.stderr)
    return cmd_score(args, definition, churn_settings.config(definition.purchase_types), model)

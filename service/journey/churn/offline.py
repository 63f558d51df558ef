"""`journey churn fit` and `journey churn score`: the worker's code run over a file.

Touchpoints are read with the replay readers, folded per customer through the journey machine
(journey.core.machine.apply) exactly as the worker applies them, and scored with the same
update step (journey.churn.update) the worker runs after each batch and on its timer.
"""

from __future__ import annotations

import csv
import math
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import date, datetime
from pathlib import Path
from typing import Any, TextIO

from journey.churn import bgnbd
from journey.churn.calibration import CalibrationError, Order, fit_calibration
from journey.churn.config import ChurnSettings
from journey.churn.risk import ChurnModel, StageTimes, load_model, save_model
from journey.churn.update import ChurnConfig, note_touchpoint, update
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
) -> Folded:
    """Apply every touchpoint with event time <= ``until`` to its customer's state, as the worker does."""
    states: dict[str, CustomerState] = {}
    stage_times = StageTimes(config.risk)
    for tp in touchpoints:
        if tp.ts > until:
            continue
        key = tp.profile_id
        outcome = apply(states.get(key), tp, definition, limits)
        if outcome.duplicate:
            continue
        states[key] = outcome.state
        note_touchpoint(outcome.state, tp.type, tp.ts, tp.channel, config)
        t = outcome.transition
        if t is not None:
            stage_times.observe(t.from_stage, t.seconds_in_previous_stage)
    return Folded(states, stage_times)


@dataclass(frozen=True)
class ScoreRow:
    customer_id: str
    score: float
    level: str
    reasons: list[str]


def score_all(folded: Folded, as_of: float, model: ChurnModel, config: ChurnConfig) -> Iterator[ScoreRow]:
    """Every folded customer's churn risk as of ``as_of`` (the states are updated in place)."""
    for customer_id in sorted(folded.states, key=_id_order):
        u = update(folded.states[customer_id], as_of, model, config, folded.stage_times)
        yield ScoreRow(customer_id, u.risk.score, u.risk.level_name, u.risk.reasons)


def write_csv(rows: Iterable[ScoreRow], out: TextIO) -> int:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["customer_id", "score", "level", "reasons"])
    n = 0
    for row in rows:
        writer.writerow([row.customer_id, f"{row.score:.6f}", row.level, "; ".join(row.reasons)])
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
) -> tuple[ChurnModel, dict[str, Any]]:
    """BG/NBD fit on the purchases up to ``until`` (per UTC day), plus the backtest calibration."""
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
    calibration = None
    if calibrate:
        try:
            calibration, report["calibration"] = fit_calibration(
                orders, until_day=utc_day(until), time_unit_days=time_unit_days, horizon_days=horizon_days
            )
        except CalibrationError as exc:
            report["calibration"] = {"skipped": str(exc)}
    return ChurnModel(churn, calibration), report


def cmd_fit(args: Any, definition: JourneyDefinition) -> int:
    until = parse_as_of(args.until)
    touchpoints = read_touchpoints(args.file, args.format)
    model, report = fit_model(
        touchpoints, definition, until=until, time_unit_days=args.time_unit_days,
        horizon_days=args.horizon_days, source=f"{args.file} (until {args.until})",
        calibrate=not args.no_calibration,
    )
    p = model.params.params
    fit = report["fit"]
    print(f"BG/NBD ({model.params.time_unit_days:g}-day units, {fit['n_customers']} customers): "
          f"r={p.r:.4f} alpha={p.alpha:.4f} a={p.a:.4f} b={p.b:.4f} LL={fit['log_likelihood']:.1f}")
    print(f"  {fit['message']}")
    if fit["degenerate"]:
        print("  WARNING: degenerate fit (see above); the scores stay usable but re-fit on a longer history", file=sys.stderr)
    cal = report.get("calibration") or {}
    if model.calibration is not None:
        print(f"calibration (backtest cut {cal['cut_day']}, {cal['label_window_days']}-day window, "
              f"{cal['customers']} customers): AUC {cal['backtest_auc_bgnbd']:.3f} -> {cal['backtest_auc_calibrated']:.3f}")
    elif "skipped" in cal:
        print(f"calibration skipped: {cal['skipped']}")
    save_model(args.out, model)
    print(f"wrote {args.out} (model {model.name}, version {model.version})")
    return 0


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
        return cmd_fit(args, definition)
    model = load_model(args.params or churn_settings.params_path(settings))
    return cmd_score(args, definition, churn_settings.config(definition.purchase_types), model)

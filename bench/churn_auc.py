"""Churn-score benchmark: `journey churn fit`'s out-of-time validation table, then the score the
worker computes measured on a real holdout, for CDNOW and for the Complete Journey.

- CDNOW master, the paper's split (FHL 2005): history = purchases up to 1997-09-30, holdout = the
  next 39 weeks, H = 39 weeks. Label = no purchase in the holdout.
- Complete Journey (data/completejourney, a sample of the transaction lines): history up to
  2017-09-30, holdout = the next 90 days, H = 90 days.

For each, the params are fitted with `journey churn fit`'s code on the history only (BG/NBD, the
learned layer and its out-of-time validation, all inside the history; the table it prints is the
fit's own), the touchpoints are folded through journey.core.machine.apply and scored by
journey.churn.update, exactly as the worker and `journey churn score` do. Nothing is fitted on
the holdout.

    python bench/churn_auc.py [--only cdnow|completejourney]

The shipped default params (90-day horizon) come from
``journey churn fit data/cdnow/CDNOW_master.txt --format cdnow --until 1997-09-30 --out schemas/churn-params.json``.
The last line of each data set is machine-readable: ``<name>: auc_score=0.xxx auc_recency=0.xxx ... n=...``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "service"))

from journey.churn import validation  # noqa: E402
from journey.churn.offline import describe, fit_model, fold, parse_as_of, plain_layer, read_touchpoints, score_all  # noqa: E402
from journey.churn.risk import RiskConfig  # noqa: E402
from journey.churn.update import ChurnConfig  # noqa: E402
from journey.core.definition import Kind, load_definition  # noqa: E402


@dataclass(frozen=True)
class Case:
    name: str
    path: Path
    fmt: str
    until: date
    horizon_days: int
    time_unit_days: float = 7.0


CASES = {
    "cdnow": Case("CDNOW master", REPO / "data/cdnow/CDNOW_master.txt", "cdnow", date(1997, 9, 30), 39 * 7),
    "completejourney": Case("Complete Journey", REPO / "data/completejourney", "completejourney", date(2017, 9, 30), 90),
}


def run(case: Case) -> dict[str, float]:
    definition = load_definition(REPO / "schemas/journey.yaml")
    until = parse_as_of(case.until.isoformat())
    holdout_end = case.until + timedelta(days=case.horizon_days)
    touchpoints = read_touchpoints(case.path, case.fmt, quiet=True)
    config = ChurnConfig(risk=RiskConfig(horizon_days=float(case.horizon_days)))

    started = time.perf_counter()
    model, report = fit_model(
        touchpoints, definition, until=until, time_unit_days=case.time_unit_days, horizon_days=float(case.horizon_days),
        source=f"{case.path.name} (history to {case.until})", config=config,
    )
    fit_s = time.perf_counter() - started
    p = model.params.params
    fit = report["fit"]
    print(f"== {case.name}: history to {case.until}, holdout to {holdout_end} (H = {case.horizon_days} days)")
    print(f"`journey churn fit` ({fit_s:.0f}s): BG/NBD r={p.r:.4f} alpha={p.alpha:.4f} a={p.a:.4f} b={p.b:.4f} "
          f"converged={fit['converged']} degenerate={fit['degenerate']}; ships {model.name}")
    for line in describe(report):
        print(line)

    def worker_scores(m) -> tuple[list[str], np.ndarray, list]:  # type: ignore[no-untyped-def]
        folded = fold(touchpoints, definition, config, until=until)
        rows = [r for r in score_all(folded, until, m, config) if folded.states[r.customer_id].first_purchase is not None]
        return [r.customer_id for r in rows], np.array([r.score for r in rows]), [folded.states[r.customer_id] for r in rows]

    started = time.perf_counter()
    ids, score, states = worker_scores(model)
    score_s = time.perf_counter() - started
    plain_model = replace(model, learned=plain_layer(float(case.horizon_days), config.risk.signal_window_days, "bench"))
    _, plain, _ = worker_scores(plain_model)

    holdout_stop = parse_as_of(holdout_end.isoformat())
    bought = {tp.profile_id for tp in touchpoints
              if until < tp.ts <= holdout_stop and definition.classify(tp.type, tp.properties) is Kind.PURCHASE}
    churned = np.array([cid not in bought for cid in ids])
    last_day = np.array([int(s.last_purchase // 86400) for s in states])
    recency = float(int(until // 86400)) - last_day
    first_day = np.array([int(s.first_purchase // 86400) for s in states])
    repeat = np.array([s.purchase_days > 1 for s in states])
    print()
    print(f"holdout ({len(ids)} purchasers scored as of {case.until} by the worker's code in {score_s:.1f}s; "
          f"churned = no purchase in the holdout: {churned.mean():.1%}):")
    print(f"  {'score':<42}{'AUC':>7}{'Brier':>8}{'ECE':>7}{'prec@10%':>10}{'AUC repeat':>12}")
    # recency alone as a probability: its churn rate by rank is not known before the holdout, so
    # only its ranking measures mean anything.
    for name, s in (("plain BG/NBD P(no purchase within H)", plain), ("recency alone (rank only)", recency),
                    (f"shipped: {model.name}", score)):
        m = validation.measures(s, churned)
        calib = f"{m['brier']:>8.3f}{m['ece']:>7.3f}" if "recency" not in name else f"{'-':>8}{'-':>7}"
        print(f"  {name:<42}{m['auc']:>7.3f}{calib}{m['precision_top10']:>10.3f}"
              f"{validation.roc_auc(s[repeat], churned[repeat]):>12.3f}")
    del first_day
    out = {"auc_score": validation.roc_auc(score, churned), "auc_recency": validation.roc_auc(recency, churned),
           "auc_bgnbd": validation.roc_auc(plain, churned), "ece_score": validation.ece(score, churned)}
    print(f"{case.fmt}: " + " ".join(f"{k}={v:.3f}" for k, v in out.items()) + f" n={len(ids)}")
    print()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--only", choices=sorted(CASES), default=None)
    args = parser.parse_args(argv)
    for key, case in CASES.items():
        if args.only in (None, key):
            run(case)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Churn-score benchmark on the full CDNOW master file: the score the worker computes vs recency.

Split (FHL 2005): calibration = purchases up to 1997-09-30, holdout = the next 39 weeks
(1997-10-01 .. 1998-06-30), H = 39 weeks. Label = the customer makes no purchase in the holdout.
The score is computed exactly as the worker and `journey churn score` compute it: the params
are fitted with `journey churn fit`'s code on the calibration period only (BG/NBD + its
backtest calibration, which also stays inside the calibration period), the touchpoints are
folded through journey.core.machine.apply and scored by journey.churn.update. Nothing is fitted
on the holdout.

    python bench/churn_auc.py [--master data/cdnow/CDNOW_master.txt]

The shipped default params (90-day horizon) come from
``journey churn fit data/cdnow/CDNOW_master.txt --format cdnow --until 1997-09-30 --out schemas/churn-params.json``.
The last line is machine-readable: ``auc_score=0.xxx auc_recency=0.xxx ... n=...``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from datetime import date, timedelta
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "service"))

from journey.churn import bgnbd  # noqa: E402
from journey.churn.calibration import roc_auc  # noqa: E402
from journey.churn.offline import fit_model, fold, parse_as_of, read_touchpoints, score_all  # noqa: E402
from journey.churn.risk import RiskConfig  # noqa: E402
from journey.churn.update import ChurnConfig  # noqa: E402
from journey.core.definition import load_definition  # noqa: E402

CALIBRATION_END = date(1997, 9, 30)
HOLDOUT_WEEKS = 39
TIME_UNIT_DAYS = 7.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--master", type=Path, default=REPO / "data/cdnow/CDNOW_master.txt")
    args = parser.parse_args(argv)

    definition = load_definition(REPO / "schemas/journey.yaml")
    horizon_days = HOLDOUT_WEEKS * 7.0
    until = parse_as_of(CALIBRATION_END.isoformat())
    holdout_end = CALIBRATION_END + timedelta(weeks=HOLDOUT_WEEKS)
    touchpoints = read_touchpoints(args.master, "cdnow")

    started = time.perf_counter()
    model, report = fit_model(
        touchpoints, definition, until=until, time_unit_days=TIME_UNIT_DAYS, horizon_days=horizon_days,
        source=f"data/cdnow/{args.master.name} (calibration to {CALIBRATION_END})",
    )
    fit_s = time.perf_counter() - started
    config = ChurnConfig(risk=RiskConfig(horizon_days=horizon_days))

    def worker_scores(m) -> tuple[list[str], np.ndarray]:
        folded = fold(touchpoints, definition, config, until=until)
        rows = list(score_all(folded, until, m, config))
        return [r.customer_id for r in rows], np.array([r.score for r in rows])

    started = time.perf_counter()
    ids, score = worker_scores(model)
    score_s = time.perf_counter() - started
    _, plain = worker_scores(replace(model, calibration=None))

    holdout_start = parse_as_of(CALIBRATION_END.isoformat())
    holdout_stop = parse_as_of(holdout_end.isoformat())
    bought = {tp.profile_id for tp in touchpoints if holdout_start < tp.ts <= holdout_stop}
    churned = np.array([cid not in bought for cid in ids])
    # Recency baseline from the same calibration summaries (weeks since the last purchase day).
    sids, x, t_x, T = bgnbd.summaries(
        [(tp.profile_id, tp.ts) for tp in touchpoints if tp.ts <= until], until=CALIBRATION_END, time_unit_days=TIME_UNIT_DAYS
    )
    assert sids and sorted(sids) == sorted(ids), "the worker path and the summaries disagree on the customers"
    order = {cid: i for i, cid in enumerate(sids)}
    idx = np.array([order[cid] for cid in ids])
    x, t_x, T = x[idx], t_x[idx], T[idx]
    recency = T - t_x

    p = model.params.params
    fit = report["fit"]
    cal = report.get("calibration", {})
    print(f"CDNOW master: {len(ids)} customers, calibration to {CALIBRATION_END}, "
          f"holdout to {holdout_end} (H = {HOLDOUT_WEEKS} weeks)")
    print(f"fit ({fit_s:.1f}s): r={p.r:.4f} alpha={p.alpha:.4f} a={p.a:.4f} b={p.b:.4f} "
          f"LL={fit['log_likelihood']:.1f} converged={fit['converged']} degenerate={fit['degenerate']}")
    if model.calibration is not None:
        print(f"backtest calibration: cut {cal['cut_day']}, {cal['label_window_days']}-day label window, "
              f"weights {dict(zip(('log_odds', 'recency', 'repeat_days', 'order_value'), (round(w, 3) for w in model.calibration.weights), strict=True))}")
    else:
        print(f"backtest calibration skipped: {cal.get('skipped')}")
    print(f"worker-path scoring of {len(ids)} customers: {score_s:.1f}s; churned (no holdout purchase): {churned.mean():.1%}")
    print()
    repeat = x > 0
    print(f"{'segment':<22}{'n':>7}{'churn%':>8}{'AUC score':>11}{'AUC BG/NBD':>12}{'AUC recency':>13}")
    for name, mask in (("all", np.ones(len(ids), bool)), ("one-time (x=0)", ~repeat), ("repeat (x>0)", repeat)):
        row = f"{name:<22}{int(mask.sum()):>7}{churned[mask].mean():>8.1%}"
        row += f"{roc_auc(score[mask], churned[mask]):>11.3f}{roc_auc(plain[mask], churned[mask]):>12.3f}"
        row += f"{roc_auc(recency[mask], churned[mask]):>13.3f}"
        print(row)

    print(f"auc_score={roc_auc(score, churned):.3f} auc_recency={roc_auc(recency, churned):.3f} "
          f"auc_bgnbd={roc_auc(plain, churned):.3f} n={len(ids)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

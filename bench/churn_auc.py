"""Churn-score benchmark on the full CDNOW master file (BG/NBD vs recency alone).

Split (FHL 2005): calibration = purchases up to 1997-09-30, holdout = the next 39 weeks
(1997-10-01 .. 1998-06-30). Label = the customer makes no purchase in the holdout. Scores are
computed from the calibration period only; nothing is tuned on the holdout.

    python bench/churn_auc.py [--master data/cdnow/CDNOW_master.txt] [--write-params PATH]

``--write-params schemas/churn-params.json`` also writes the calibration fit as the shipped
default params file. The last line is machine-readable:
``auc_score=0.xxx auc_recency=0.xxx n=...``.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "service"))

from journey.churn import bgnbd  # noqa: E402

CALIBRATION_END = date(1997, 9, 30)
HOLDOUT_WEEKS = 39
TIME_UNIT_DAYS = 7.0


def read_master(path: Path) -> list[tuple[str, date]]:
    """(customer_id, purchase date) from CDNOW_master.txt (header line, then id date cds dollars)."""
    rows = []
    with path.open(encoding="ascii") as fh:
        next(fh)  # header
        for line in fh:
            fields = line.split()
            if not fields:
                continue
            d = fields[1]
            rows.append((fields[0], date(int(d[:4]), int(d[4:6]), int(d[6:8]))))
    return rows


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC via the Mann-Whitney U statistic; tied scores get their average rank."""
    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels, dtype=bool)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both positive and negative labels")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores))
    # Average rank (1-based) over each run of equal scores.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + 1 + e) / 2.0
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--master", type=Path, default=REPO / "data/cdnow/CDNOW_master.txt")
    parser.add_argument("--write-params", type=Path, default=None, help="also save the calibration fit here")
    args = parser.parse_args(argv)

    rows = read_master(args.master)
    holdout_end = CALIBRATION_END + timedelta(weeks=HOLDOUT_WEEKS)
    horizon = HOLDOUT_WEEKS * 7 / TIME_UNIT_DAYS

    started = time.perf_counter()
    churn, result = bgnbd.fit_churn_params(
        rows,
        until=CALIBRATION_END,
        time_unit_days=TIME_UNIT_DAYS,
        source=f"data/cdnow/{args.master.name} (calibration to {CALIBRATION_END})",
    )
    fit_s = time.perf_counter() - started
    ids, x, t_x, T = bgnbd.summaries(rows, until=CALIBRATION_END, time_unit_days=TIME_UNIT_DAYS)
    bought_in_holdout = {cid for cid, d in rows if CALIBRATION_END < d <= holdout_end}
    churned = np.array([cid not in bought_in_holdout for cid in ids])

    p = churn.params
    score = bgnbd.p_no_purchase_within_batch(p, x, t_x, T, horizon)
    recency = T - t_x  # time since last purchase, higher = riskier
    dead = 1.0 - bgnbd.p_alive_batch(p, x, t_x, T)
    scalar = np.array([bgnbd.p_no_purchase_within(p, *row, horizon) for row in zip(x, t_x, T)])
    assert np.allclose(scalar, score, rtol=1e-9, atol=1e-12), "scalar and batch scores disagree"

    repeat = x > 0
    print(f"CDNOW master: {len(ids)} customers, calibration to {CALIBRATION_END}, "
          f"holdout to {holdout_end} (H = {horizon:g} weeks)")
    print(f"fit ({fit_s:.1f}s): r={p.r:.4f} alpha={p.alpha:.4f} a={p.a:.4f} b={p.b:.4f} "
          f"LL={result.log_likelihood:.1f} converged={result.converged} degenerate={result.degenerate}")
    print(f"churned (no holdout purchase): {churned.mean():.1%}")
    print()
    print(f"{'segment':<22}{'n':>7}{'churn%':>8}{'AUC score':>11}{'AUC recency':>13}{'AUC 1-P(alive)':>16}")
    for name, mask in (("all", np.ones(len(ids), bool)), ("one-time (x=0)", ~repeat), ("repeat (x>0)", repeat)):
        n = int(mask.sum())
        row = f"{name:<22}{n:>7}{churned[mask].mean():>8.1%}"
        row += f"{roc_auc(score[mask], churned[mask]):>11.3f}{roc_auc(recency[mask], churned[mask]):>13.3f}"
        alive_auc = roc_auc(dead[mask], churned[mask]) if churned[mask].any() and (~churned[mask]).any() else float("nan")
        row += f"{alive_auc:>16.3f}" if name != "one-time (x=0)" else f"{'(const)':>16}"
        print(row)

    if args.write_params is not None:
        bgnbd.save_params(args.write_params, churn)
        print(f"\nwrote {args.write_params} (version {churn.version})")

    auc_score = roc_auc(score, churned)
    auc_recency = roc_auc(recency, churned)
    print(f"auc_score={auc_score:.3f} auc_recency={auc_recency:.3f} n={len(ids)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

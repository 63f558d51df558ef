"""BG/NBD: paper reproduction, likelihood, scoring, summaries, degenerate fits, params file."""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from journey.churn import bgnbd
from journey.churn.bgnbd import BGNBDParams, ChurnParams, ChurnParamsError

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data/cdnow/CDNOW_sample.txt"
CALIBRATION_END = date(1997, 9, 30)
# Fader, Hardie & Lee (2005), table/text for the CDNOW sample, weeks, 39-week calibration.
PAPER = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
PAPER_LL = -9582.4


def read_sample() -> list[tuple[str, date]]:
    rows = []
    for line in SAMPLE.read_text(encoding="ascii").splitlines():
        f = line.split()
        if f:
            rows.append((f[0], date(int(f[2][:4]), int(f[2][4:6]), int(f[2][6:8]))))
    return rows


@pytest.fixture(scope="module")
def sample_fit() -> tuple[bgnbd.FitResult, tuple]:
    ids, x, t_x, T = bgnbd.summaries(read_sample(), until=CALIBRATION_END, time_unit_days=7)
    return bgnbd.fit(x, t_x, T), (ids, x, t_x, T)


# --- paper reproduction


def test_fit_reproduces_paper_on_cdnow_sample(sample_fit):
    result, (ids, *_rest) = sample_fit
    assert len(ids) == 2357
    got = result.params.to_dict()
    for name, expected in PAPER.items():
        assert got[name] == pytest.approx(expected, rel=0.01), f"{name}: {got[name]} vs paper {expected}"
    assert result.log_likelihood == pytest.approx(PAPER_LL, abs=0.1)
    assert result.converged and not result.degenerate


# --- likelihood


def direct_likelihood(r: float, alpha: float, a: float, b: float, x: int, t_x: float, T: float) -> float:
    """FHL 2005 eq. 6 written out literally with gamma/beta functions (no logs, no vectors)."""
    beta = lambda p, q: math.gamma(p) * math.gamma(q) / math.gamma(p + q)  # noqa: E731
    common = math.gamma(r + x) * alpha**r / math.gamma(r)
    value = beta(a, b + x) / beta(a, b) * common / (alpha + T) ** (r + x)
    if x > 0:
        value += beta(a + 1, b + x - 1) / beta(a, b) * common / (alpha + t_x) ** (r + x)
    return value


def test_log_likelihood_matches_direct_formula():
    rng = np.random.default_rng(7)
    for _ in range(200):
        r, alpha, a, b = rng.uniform(0.1, 3, 4)
        x = int(rng.integers(0, 12))
        T = float(rng.uniform(0.5, 40))
        t_x = 0.0 if x == 0 else float(rng.uniform(0, T))
        expected = math.log(direct_likelihood(r, alpha, a, b, x, t_x, T))
        got = bgnbd.log_likelihood((r, alpha, a, b), np.array([x]), np.array([t_x]), np.array([T]))[0]
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_log_likelihood_stays_finite_at_extremes():
    x = np.array([0, 1, 500, 5000, 3])
    t_x = np.array([0.0, 1e-9, 1e4, 1e5, 3.0])
    T = np.array([1e-9, 1e6, 1e4, 1e5, 3.0])
    for params in [(1e-4, 1e-4, 1e-4, 1e-4), (1e4, 1e6, 1e4, 1e4), (0.24, 4.4, 0.79, 2.4), (2.0, 1.0, 5.0, 0.5)]:
        assert np.all(np.isfinite(bgnbd.log_likelihood(params, x, t_x, T))), params


# --- scoring


def random_customers(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = rng.integers(0, 30, n).astype(float)
    T = rng.uniform(0, 80, n)
    t_x = np.where(x > 0, rng.uniform(0, 1, n) * T, 0.0)
    # Edge cases: last purchase right now, and repeat purchase on the first day.
    t_x[:5] = T[:5]
    t_x[5:10] = 0.0
    return x, t_x, T


@pytest.mark.parametrize("params", [BGNBDParams(0.243, 4.414, 0.793, 2.426), BGNBDParams(3.0, 0.5, 0.01, 50.0)])
def test_scalar_and_batch_scores_agree(params):
    x, t_x, T = random_customers(np.random.default_rng(3), 400)
    for H in (0.0, 1.0, 39.0, 500.0):
        batch = bgnbd.p_no_purchase_within_batch(params, x, t_x, T, H)
        scalar = [bgnbd.p_no_purchase_within(params, *c, H) for c in zip(x, t_x, T, strict=True)]
        np.testing.assert_allclose(scalar, batch, rtol=1e-10, atol=1e-13)
        assert np.all((batch >= 0) & (batch <= 1))
    alive = bgnbd.p_alive_batch(params, x, t_x, T)
    np.testing.assert_allclose([bgnbd.p_alive(params, *c) for c in zip(x, t_x, T, strict=True)], alive, rtol=1e-10, atol=1e-13)
    assert np.all(alive[x == 0] == 1.0)


def test_p_alive_matches_paper_formula_and_is_one_without_repeats():
    p = BGNBDParams(0.243, 4.414, 0.793, 2.426)
    x, t_x, T = 4, 20.0, 38.0
    expected = 1 / (1 + p.a / (p.b + x - 1) * ((p.alpha + T) / (p.alpha + t_x)) ** (p.r + x))
    assert bgnbd.p_alive(p, x, t_x, T) == pytest.approx(expected, rel=1e-12)
    assert bgnbd.p_alive(p, 0, 0.0, 38.0) == 1.0
    # One-time buyer: the score is the purchase-rate term alone, and it grows with silence.
    assert bgnbd.p_no_purchase_within(p, 0, 0.0, 38.0, 39.0) == pytest.approx(
        ((p.alpha + 38.0) / (p.alpha + 38.0 + 39.0)) ** p.r, rel=1e-12
    )


def test_score_is_monotone_in_horizon_and_recency():
    p = BGNBDParams(0.243, 4.414, 0.793, 2.426)
    horizons = np.linspace(0, 200, 101)
    for x, t_x, T in [(0, 0.0, 10.0), (3, 5.0, 30.0), (20, 29.0, 30.0)]:
        scores = [bgnbd.p_no_purchase_within(p, x, t_x, T, H) for H in horizons]
        # A longer window leaves more time to buy; the floor is P(dropped out). (For a heavy
        # buyer the purchase-rate term reaches float precision, hence <= beyond the start.)
        steps = np.diff(scores)
        assert scores[0] == 1.0 and np.all(steps[:10] < 0) and np.all(steps <= 0), (x, t_x, T)
        assert scores[-1] >= 1.0 - bgnbd.p_alive(p, x, t_x, T)
    # Same frequency and tenure, older last purchase -> riskier.
    for x in (1, 2, 10):
        scores = [bgnbd.p_no_purchase_within(p, x, t_x, 39.0, 13.0) for t_x in np.linspace(39.0, 0.0, 40)]
        assert np.all(np.diff(scores) > 0), x
    # One-time buyers: recency is T itself.
    scores = [bgnbd.p_no_purchase_within(p, 0, 0.0, T, 13.0) for T in np.linspace(0, 60, 31)]
    assert np.all(np.diff(scores) > 0)


def test_scoring_rejects_inconsistent_inputs():
    p = BGNBDParams(1, 1, 1, 1)
    with pytest.raises(ValueError, match="t_x"):
        bgnbd.p_alive(p, 2, 5.0, 3.0)
    with pytest.raises(ValueError, match="horizon H >= 0"):
        bgnbd.p_no_purchase_within(p, 2, 1.0, 3.0, -1.0)


def simulate(params: BGNBDParams, n: int, T: float, H: float, rng: np.random.Generator):
    """BG/NBD customers who all made a first purchase at time 0: calibration (x, t_x) and
    whether they bought in (T, T+H]."""
    lam = rng.gamma(params.r, 1 / params.alpha, n)
    drop = rng.beta(params.a, params.b, n)
    now = np.zeros(n)
    alive = np.ones(n, bool)
    x = np.zeros(n)
    t_x = np.zeros(n)
    bought_later = np.zeros(n, bool)
    while alive.any():
        now = np.where(alive, now + rng.exponential(1 / lam), now)
        in_cal = alive & (now <= T)
        in_hold = alive & (now > T) & (now <= T + H)
        x += in_cal
        t_x = np.where(in_cal, now, t_x)
        bought_later |= in_hold
        # Past the horizon nothing more matters; otherwise drop out after this purchase w.p. p.
        alive = alive & (now <= T + H) & (rng.uniform(size=n) >= drop)
    return x, t_x, np.full(n, T), bought_later


def test_fit_and_score_on_simulated_bgnbd_data():
    truth = BGNBDParams(0.8, 6.0, 0.6, 2.5)
    x, t_x, T, bought_later = simulate(truth, 8000, 40.0, 26.0, np.random.default_rng(11))
    result = bgnbd.fit(x, t_x, T)
    assert not result.degenerate
    for name in ("r", "alpha", "a", "b"):
        assert getattr(result.params, name) == pytest.approx(getattr(truth, name), rel=0.25), name
    # Calibration: the mean predicted P(no purchase in the holdout) matches the observed share.
    predicted = bgnbd.p_no_purchase_within_batch(truth, x, t_x, T, 26.0)
    assert predicted.mean() == pytest.approx(1 - bought_later.mean(), abs=0.015)
    for mask in (x == 0, x > 0):
        assert predicted[mask].mean() == pytest.approx(1 - bought_later[mask].mean(), abs=0.025)


# --- degenerate fits


def test_degenerate_fit_is_detected_and_still_usable():
    rng = np.random.default_rng(1)
    T = rng.uniform(20, 40, 400)
    period = rng.uniform(1, 5, 400)  # every customer buys like clockwork and never stops
    x = np.floor(T / period)
    t_x = x * period
    result = bgnbd.fit(x, t_x, T)
    assert result.degenerate
    assert "dropout" in result.message and "clamped" in result.message
    p = result.params
    for name, (lo, hi) in bgnbd.DEFAULT_BOUNDS.items():
        assert lo <= getattr(p, name) <= hi
    assert p.a / (p.a + p.b) < bgnbd.DEGENERATE_DROPOUT
    scores = bgnbd.p_no_purchase_within_batch(p, x, t_x, T, 4.0)
    assert np.all(np.isfinite(scores) & (scores >= 0) & (scores <= 1))
    assert np.all(bgnbd.p_alive_batch(p, x, t_x, T) > 0.99)


def test_custom_bounds_clamp_and_are_reported(sample_fit):
    _, (_ids, x, t_x, T) = sample_fit
    result = bgnbd.fit(x, t_x, T, bounds={"b": (0.1, 1.0)})
    assert result.params.b <= 1.0
    assert result.degenerate and "b hit its upper bound" in result.message
    with pytest.raises(ValueError, match="bounds"):
        bgnbd.fit(x, t_x, T, bounds={"b": (2.0, 1.0)})


def test_fit_rejects_inconsistent_summaries():
    with pytest.raises(ValueError, match="customer #1"):
        bgnbd.fit([0, 2], [0.0, 5.0], [3.0, 4.0])
    with pytest.raises(ValueError, match="empty"):
        bgnbd.fit([], [], [])


# --- summaries


def test_summaries_count_distinct_utc_days():
    utc = UTC
    purchases = [
        ("a", datetime(1997, 1, 1, 9, tzinfo=utc)),
        ("a", datetime(1997, 1, 1, 23, 30, tzinfo=utc)),  # same day: not a repeat
        # 1997-01-08 23:30 at -05:00 is 1997-01-09 UTC.
        ("a", datetime(1997, 1, 8, 23, 30, tzinfo=timezone(timedelta(hours=-5)))),
        ("a", date(1997, 1, 15)),
        ("a", datetime(1997, 2, 1, tzinfo=utc)),  # after `until`: ignored
        ("b", datetime(1997, 1, 10, tzinfo=utc).timestamp()),  # epoch seconds
        ("c", date(1997, 1, 20)),  # first purchase after `until`: excluded
    ]
    ids, x, t_x, T = bgnbd.summaries(purchases, until=date(1997, 1, 15), time_unit_days=7)
    assert ids == ["a", "b"]
    np.testing.assert_allclose(x, [2, 0])
    np.testing.assert_allclose(t_x, [14 / 7, 0])
    np.testing.assert_allclose(T, [14 / 7, 5 / 7])
    ids_days, _, t_days, T_days = bgnbd.summaries(purchases, until=date(1997, 1, 15), time_unit_days=1)
    np.testing.assert_allclose(t_days, [14, 0])
    np.testing.assert_allclose(T_days, [14, 5])


def test_summaries_reject_naive_datetimes():
    with pytest.raises(ValueError, match="time zone"):
        bgnbd.summaries([("a", datetime(1997, 1, 1))], until=date(1997, 2, 1), time_unit_days=7)


# --- params file


def test_params_file_round_trip(tmp_path):
    churn = ChurnParams(
        params=BGNBDParams(0.25, 4.8, 0.72, 2.16),
        time_unit_days=7.0,
        fitted_on={"source": "test"},
        diagnostics={"degenerate": False},
    )
    path = bgnbd.save_params(tmp_path / "sub" / "churn.json", churn)
    loaded = bgnbd.load_params(path)
    assert loaded == churn
    assert loaded.version == bgnbd.params_version(churn.params, 7.0)
    assert loaded.unit_seconds == 7 * 86400
    assert json.loads(path.read_text())["model"] == "bgnbd"
    other = ChurnParams(params=BGNBDParams(0.25, 4.8, 0.72, 2.17), time_unit_days=7.0)
    assert other.version != churn.version


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "does not exist"),
        ("{not json", "not valid JSON"),
        ('{"model": "pareto", "time_unit_days": 7, "r": 1, "alpha": 1, "a": 1, "b": 1}', "model='pareto'"),
        ('{"model": "bgnbd", "time_unit_days": 7, "r": 1, "alpha": 1, "a": 1}', "b are missing"),
        ('{"model": "bgnbd", "time_unit_days": 7, "r": -1, "alpha": 1, "a": 1, "b": 1}', "r=-1.0"),
        ('{"model": "bgnbd", "r": 1, "alpha": 1, "a": 1, "b": 1}', "time_unit_days"),
        ('{"model": "bgnbd", "time_unit_days": 0, "r": 1, "alpha": 1, "a": 1, "b": 1}', "time_unit_days=0"),
        ('{"model": "bgnbd", "time_unit_days": 7, "r": "1", "alpha": 1, "a": 1, "b": 1}', "must be a number"),
    ],
)
def test_load_params_errors_name_the_file_and_problem(tmp_path, content, match):
    path = tmp_path / "churn.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ChurnParamsError, match=match) as info:
        bgnbd.load_params(path)
    assert str(path) in str(info.value)


def test_shipped_default_params_file_is_consistent():
    churn = bgnbd.load_params(REPO / "schemas/churn-params.json")
    assert churn.time_unit_days == 7.0
    assert churn.version == bgnbd.params_version(churn.params, churn.time_unit_days), "edited by hand?"
    assert churn.diagnostics["converged"] and not churn.diagnostics["degenerate"]
    assert churn.fitted_on["until"] == CALIBRATION_END.isoformat()


# --- the AUC the benchmark and the calibration report


def test_roc_auc_matches_pairwise_definition():
    from journey.churn.calibration import roc_auc

    rng = np.random.default_rng(5)
    scores = rng.integers(0, 6, 300).astype(float)  # many ties
    labels = rng.uniform(size=300) < 0.3 + 0.1 * scores
    pos, neg = scores[labels], scores[~labels]
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert roc_auc(scores, labels) == pytest.approx(pairwise, rel=1e-12)
    assert roc_auc(-scores, labels) == pytest.approx(1 - pairwise, rel=1e-12)


def test_a_history_that_ends_on_every_first_purchase_is_a_degenerate_fit():
    """T = 0 for everyone: the likelihood is flat, the optimum arbitrary; the fit must say so
    (it reported r=0.5, alpha=5e5 as a converged, sound fit)."""
    result = bgnbd.fit([0] * 50, [0] * 50, [0] * 50)
    assert result.degenerate and "T = 0 for all" in result.message

"""CustomerState.copy: equal, and independent in every container, whatever slot is added."""

from __future__ import annotations

from typing import Any

from journey.core.state import CustomerState


def _filled() -> CustomerState:
    st = CustomerState()
    values: dict[str, Any] = {
        "stage": 3, "reached": [1.0, 2.0, 3.0, 4.0, None, None], "events": 7, "channels": {"email": 2, "ads": 5},
        "first_channel": "ads", "last_channel": "email", "first_seen": 1.0, "last_seen": 9.0, "purchases": 2,
        "purchase_days": 2, "revenue": 12.5, "first_purchase": 4.0, "last_purchase": 8.0, "orders": [11, 12],
        "days": [100, 101], "advocacy_max": 2.0, "renewal_max": 3.0, "negatives": {"return": 1}, "last_negative": 5.0,
        "seen": bytearray(b"12345678abcdefgh"), "seen_legacy": [1, 2, 3], "recent": [[0, 1, 2.0, "product_view", "ads"]], "partition": 4, "attribution": ["ads", "email"],
        "extra": {"id": {"l": ["d1"], "m": []}, "c": [1, 2], "n": 3}, "order_times": [4.0, 8.0],
        "pre_purchase": [[1.0, "ads", 0], [2.0, "email", 0]],
    }
    assert set(values) == set(CustomerState.__slots__), "a new slot: give it a value here (and a line in copy())"
    for name, value in values.items():
        setattr(st, name, value)
    return st


def test_a_copy_is_equal_and_shares_no_container_one_level_down() -> None:
    st = _filled()
    new = st.copy()
    assert new.to_wire() == st.to_wire()
    for name in CustomerState.__slots__:
        value = getattr(st, name)
        assert getattr(new, name) == value, name
        if isinstance(value, (list, dict, bytearray)):
            assert getattr(new, name) is not value, f"{name} is shared"
        if isinstance(value, (list, dict)):
            inner = value.values() if isinstance(value, dict) else value
            copied = getattr(new, name).values() if isinstance(value, dict) else getattr(new, name)
            for a, b in zip(inner, copied, strict=True):
                if isinstance(a, (list, dict)):
                    assert a is not b, f"a container inside {name} is shared"


def test_changing_a_copy_leaves_the_original() -> None:
    st = _filled()
    before = st.to_wire()
    new = st.copy()
    new.recent[0][1] = 5
    new.pre_purchase[0][1] = "other"
    new.extra["id"]["l"] = ["x"]
    new.extra["c"].append(3)
    new.channels["ads"] = 0
    new.seen += b"ABCDEFGH"
    new.seen_legacy.append(4)
    assert st.to_wire() == before


def test_the_customer_view_names_the_other_concerns_fields_and_gives_their_times_in_rfc3339() -> None:
    """GET /customers/{id} showed churn, pain and identity memories as kept: {"s", "l", "at", "due"},
    epoch seconds. Now named fields and RFC 3339 times; a key this build does not know, as it is."""
    st = CustomerState()
    st.extra = {
        "churn": {"s": 0.61, "l": "medium", "at": 1_700_000_000.0, "due": 1_700_086_400.0, "n": 1},
        "pain": {"c": [[1_699_990_000.0, "email"]], "a": [2, 1_699_900_000.0], "s": 2, "r": 1_699_000_000.0},
        "id": {"m": ["dev-1"], "l": ["dev-1", "dev-2"]},
        "upgraded": 1,
        "future": {"x": 1},
    }
    view = st.to_public()
    assert view["churn_risk"] == {"level": "medium", "score": 0.61, "as_of": "2023-11-14T22:13:20+00:00",
                                  "next_check": "2023-11-15T22:13:20+00:00"}
    assert view["pain_points"] == {"open_carts": [{"opened_at": "2023-11-14T19:26:40+00:00", "channel": "email"}],
                                   "carts_abandoned": 2, "last_cart_abandoned_at": "2023-11-13T18:26:40+00:00",
                                   "stalled_in": "decision"}
    assert view["identity"] == {"merged_anonymous_ids": ["dev-1"], "anonymous_ids_asked_to_link": ["dev-1", "dev-2"],
                                "anonymous_visitor": False}
    assert view["future"] == {"x": 1}
    assert not {"churn", "pain", "id", "upgraded"} & view.keys()

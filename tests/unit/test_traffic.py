"""Simulated users' clicks: what they like they click more, and the report per version."""

from __future__ import annotations

import numpy as np

from pipelines.traffic import (
    SimulatedUsers,
    TrafficResult,
    VersionCounts,
    _feedback,
    click_probability,
    report,
)


def test_clicks_follow_affinity_and_fall_with_position() -> None:
    assert click_probability(1.0, 0) > click_probability(0.5, 0) > click_probability(0.0, 0)
    assert click_probability(1.0, 0) > click_probability(1.0, 9) > 0
    assert 0 < click_probability(0.0, 0) < click_probability(1.0, 0) <= 1


def test_a_model_that_recommends_what_users_like_earns_more_clicks() -> None:
    items = list(range(100))
    affinity = {u: {i: i / 99 for i in items} for u in (1, 2, 3)}  # everyone likes high ids
    users = SimulatedUsers(ids=np.array([1, 2, 3]), affinity=affinity)
    headers = {"X-Request-Id": "r1"}

    def clicks(shown: list[int]) -> int:
        rng = np.random.default_rng(0)
        events = [
            e for _ in range(300) for u in (1, 2, 3)
            for e in _feedback(users, u, shown, headers, "v", rng)
        ]  # fmt: skip
        return sum(e["type"] == "click" for e in events)

    good, bad = clicks(items[-10:][::-1]), clicks(items[:10])
    assert good > 3 * bad, (good, bad)


def test_feedback_names_the_prediction_and_needs_its_request_id() -> None:
    users = SimulatedUsers(ids=np.array([7]), affinity={7: {5: 1.0, 6: 0.0}})
    events = _feedback(users, 7, [5, 6, -1], {"X-Request-Id": "abc"}, "3", np.random.default_rng(1))
    impressions = [e for e in events if e["type"] == "impression"]
    assert impressions == [
        {"type": "impression", "item_id": 5, "position": 0, "request_id": "abc",
         "model_version": "3", "user_id": "7"},
        {"type": "impression", "item_id": 6, "position": 1, "request_id": "abc",
         "model_version": "3", "user_id": "7"},
    ]  # fmt: skip
    assert _feedback(users, 7, [5], {}, "3", np.random.default_rng(1)) == []


def test_the_report_has_one_row_per_version() -> None:
    result = TrafficResult(
        by_version={"2": VersionCounts(10, 100, 5), "10": VersionCounts(10, 100, 9)}
    )
    rows = [line.split() for line in report(result).splitlines()]
    assert rows[0] == ["version", "requests", "impressions", "clicks", "ctr"]
    assert rows[1] == ["2", "10", "100", "5", "5.00%"]
    assert rows[2] == ["10", "10", "100", "9", "9.00%"]

"""Ranking metrics and the holdout split, on cases small enough to compute by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from pipelines.evaluate import (
    SplitProtocol,
    _merge_duplicates,
    evaluate_models,
    ranking_metrics,
    split_holdout,
)


def test_metrics_match_hand_computed_values() -> None:
    # user A: hits at ranks 1 and 3 of 3 recommended, 2 relevant items
    # user B: one hit at rank 2, 4 relevant items (one never recommended)
    recommended = np.array([[10, 11, 12], [20, 21, 22]])
    relevant = [np.array([10, 12]), np.array([21, 30, 31, 32])]
    got = ranking_metrics(recommended, relevant, k=3, n_items=10)

    assert got["precision@3"] == pytest.approx(((2 / 3) + (1 / 3)) / 2)
    assert got["recall@3"] == pytest.approx((2 / 2 + 1 / 4) / 2)
    d = [1 / math.log2(r + 1) for r in (1, 2, 3)]
    ndcg_a = (d[0] + d[2]) / (d[0] + d[1])
    ndcg_b = d[1] / (d[0] + d[1] + d[2])
    assert got["ndcg@3"] == pytest.approx((ndcg_a + ndcg_b) / 2)
    map_a = (1 / 1 + 2 / 3) / 2  # precision at the two hit ranks / min(k, 2)
    map_b = (1 / 2) / 3  # precision at rank 2 / min(k, 4)
    assert got["map@3"] == pytest.approx((map_a + map_b) / 2)
    assert got["coverage"] == pytest.approx(6 / 10)


def test_perfect_and_empty_rankings() -> None:
    perfect = ranking_metrics(np.array([[1, 2]]), [np.array([2, 1])], k=2)
    assert perfect["ndcg@2"] == pytest.approx(1.0)
    assert perfect["map@2"] == pytest.approx(1.0)
    # Padding (-1) and duplicates never count as hits.
    padded = ranking_metrics(np.array([[5, 5, -1]]), [np.array([5, -1])], k=3)
    assert padded["precision@3"] == pytest.approx(1 / 3)


def test_users_without_relevant_items_are_skipped() -> None:
    got = ranking_metrics(np.array([[1], [2]]), [np.array([1]), np.array([], dtype=int)], k=1)
    assert got["precision@1"] == pytest.approx(1.0)


def _frame(n_users: int = 30, per_user: int = 8, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        items = rng.choice(50, per_user, replace=False)
        for j, item in enumerate(items):
            rows.append((u, int(item), float(rng.integers(1, 6)), pd.Timestamp(2024, 1, 1 + j)))
    return pd.DataFrame(rows, columns=["user_id", "content_id", "rating", "timestamp"])


def test_time_split_holds_out_each_users_latest_quarter() -> None:
    frame = _frame()
    frame.loc[frame["user_id"] == 0, "user_id"] = 999
    small = pd.DataFrame(
        {"user_id": [7777] * 3, "content_id": [1, 2, 3], "rating": [1.0] * 3}
    ).assign(timestamp=pd.Timestamp(2024, 1, 1))
    train, test, used = split_holdout(pd.concat([frame, small]), seed=0)
    assert used is SplitProtocol.TIME
    assert 7777 not in set(test["user_id"])  # too few interactions: all in train
    assert (test.groupby("user_id").size() == 2).all()  # round(8 * 0.25)
    latest_train = train.groupby("user_id")["timestamp"].max()
    earliest_test = test.groupby("user_id")["timestamp"].min()
    assert (earliest_test > latest_train.loc[earliest_test.index]).all()


def test_random_split_is_seeded_and_disjoint() -> None:
    frame = _frame().drop(columns="timestamp")
    a_train, a_test, used = split_holdout(frame, seed=3)
    _, b_test, _ = split_holdout(frame, seed=3)
    _, c_test, _ = split_holdout(frame, seed=4)
    assert used is SplitProtocol.RANDOM
    pd.testing.assert_frame_equal(a_test, b_test)
    assert not a_test.equals(c_test)
    pairs = set(zip(a_train.user_id, a_train.content_id, strict=True))
    assert not pairs & set(zip(a_test.user_id, a_test.content_id, strict=True))
    assert len(a_train) + len(a_test) == len(frame)


def test_evaluate_models_returns_one_row_per_model() -> None:
    results = evaluate_models(_frame(), None, models=["popularity", "ease"], k=5)
    assert list(results["model"]) == ["popularity", "ease"]
    for column in ("precision@5", "recall@5", "ndcg@5", "map@5", "coverage"):
        assert results[column].between(0, 1).all()


def _merge_one_pair_at_a_time(frame: pd.DataFrame) -> pd.DataFrame:
    """The former merge (a Python call per (user, content) group): the reference."""
    agg = {"watch_seconds": lambda s: s.sum(min_count=1), "rating": "max", "timestamp": "max"}
    return frame.groupby(["user_id", "content_id"], as_index=False, sort=True).agg(agg)


def test_duplicate_pairs_merge_like_the_per_pair_reference() -> None:
    rng = np.random.default_rng(5)
    n = 3000
    frame = pd.DataFrame(
        {
            "user_id": rng.integers(0, 300, n),
            "content_id": rng.integers(0, 60, n),
            "watch_seconds": np.where(rng.random(n) < 0.3, np.nan, rng.uniform(0, 7200, n)),
            "rating": np.where(rng.random(n) < 0.3, np.nan, rng.integers(1, 11, n)).astype(float),
            "timestamp": pd.to_datetime(rng.integers(0, 10**6, n), unit="s", utc=True),
        }
    )
    assert frame.duplicated(["user_id", "content_id"]).sum() > 200  # many re-watched pairs

    merged = _merge_duplicates(frame)

    pd.testing.assert_frame_equal(merged, _merge_one_pair_at_a_time(frame))
    # the split built on it is the same as well: same rows, same order, same held-out rows
    train, test, _ = split_holdout(frame, seed=1, protocol=SplitProtocol.RANDOM)
    assert len(train) + len(test) == len(merged)
    assert not train.duplicated(["user_id", "content_id"]).any()


@pytest.mark.parametrize("ids", ["negative", "naive timestamps", "integer ratings"])
def test_duplicate_merge_takes_any_ids_and_dtypes(ids: str) -> None:
    rng = np.random.default_rng(2)
    n = 800
    frame = pd.DataFrame(
        {
            "user_id": rng.integers(-50, 50, n) if ids == "negative" else rng.integers(0, 100, n),
            "content_id": rng.integers(0, 20, n),
            "watch_seconds": np.where(rng.random(n) < 0.3, np.nan, rng.uniform(0, 7200, n)),
            "rating": rng.integers(1, 11, n)
            if ids == "integer ratings"
            else np.where(rng.random(n) < 0.3, np.nan, rng.integers(1, 11, n)).astype(float),
            "timestamp": pd.to_datetime(
                rng.integers(0, 10**6, n), unit="s", utc=ids != "naive timestamps"
            ),
        }
    )
    pd.testing.assert_frame_equal(_merge_duplicates(frame), _merge_one_pair_at_a_time(frame))

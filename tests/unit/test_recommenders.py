"""Behaviour of the recommenders a caller would notice."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.evaluate import evaluate_models
from recommenders import BEST_MODEL, EASE, MODELS, MoviePredictor, Popularity
from recommenders.data import build_matrix, interaction_confidence
from recommenders.ease import ease_weights
from recommenders.errors import (
    HyperparameterError,
    InvalidRequestError,
    TrainingDataError,
)
from recommenders.synthetic import synthetic_interactions
from recommenders.topk import top_k, top_k_row


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame]:
    return synthetic_interactions(n_users=600, n_items=150, n_interactions=12_000, seed=1)


@pytest.fixture(scope="module")
def ease(data: tuple[pd.DataFrame, pd.DataFrame]):
    return EASE(lambda_=50.0).fit(*data)


def test_known_user_gets_k_unseen_items_best_first(ease, data) -> None:
    interactions, _ = data
    user = int(interactions["user_id"].iloc[0])
    seen = set(interactions.loc[interactions["user_id"] == user, "content_id"])
    rec = ease.recommend(user_id=user, k=10)
    assert len(rec.content_ids) == 10
    assert rec.fallback is False
    assert not seen & set(rec.content_ids.tolist())
    assert np.all(np.diff(rec.scores) <= 0)
    with_seen = ease.recommend(user_id=user, k=10, exclude_seen=False)
    assert seen & set(with_seen.content_ids.tolist())


def test_anonymous_history_is_scored_and_excluded(ease, data) -> None:
    interactions, _ = data
    user = int(interactions["user_id"].iloc[0])
    history = interactions.loc[interactions["user_id"] == user, "content_id"].tolist()
    rec = ease.recommend(history=[*history, 123456789], k=10)  # unknown id ignored
    assert rec.fallback is False
    assert not set(history) & set(rec.content_ids.tolist())
    # The same items as a known user's profile rank the same way (binary vs weighted aside).
    assert len(rec.content_ids) == 10


def test_unknown_user_falls_back_to_popularity(ease) -> None:
    rec = ease.recommend(user_id=-5, k=5)
    assert rec.fallback is True
    assert "unknown user -5" in (rec.reason or "")
    popular = ease.item_ids[np.argsort(-ease.popularity, kind="stable")[:5]]
    np.testing.assert_array_equal(rec.content_ids, popular)
    only_unknown = ease.recommend(history=[123456789], k=5)
    assert only_unknown.fallback is True
    assert "no known content id" in (only_unknown.reason or "")


def test_recommend_many_equals_recommend_one_by_one(ease, data) -> None:
    interactions, _ = data
    users = [*interactions["user_id"].drop_duplicates().head(40).tolist(), None, -1]
    histories = [None] * (len(users) - 2) + [[interactions["content_id"].iloc[3]], None]
    batch = ease.recommend_many(users, histories, k=7)
    for user, history, rec in zip(users, histories, batch, strict=True):
        one = ease.recommend(user_id=user, history=history, k=7)
        np.testing.assert_array_equal(rec.content_ids, one.content_ids)
        np.testing.assert_array_equal(rec.scores, one.scores)  # bit-identical, not just close
        assert rec.fallback == one.fallback
    # Anonymous histories take the vectorised path too once there are enough of them.
    many = [interactions["content_id"].iloc[i : i + 4].tolist() for i in range(0, 120, 4)]
    for history, rec in zip(many, ease.recommend_many(None, many, k=5), strict=True):
        one = ease.recommend(history=history, k=5)
        np.testing.assert_array_equal(rec.content_ids, one.content_ids)
        np.testing.assert_array_equal(rec.scores, one.scores)


def _dense_ease_scores(interactions: pd.DataFrame, lambda_: float) -> np.ndarray:
    """Reference: the unpruned EASE solution applied as a dense matrix product."""
    x = build_matrix(interactions, EASE().weighting).matrix
    weights = ease_weights((x.T @ x).toarray().astype(np.float32), lambda_)
    return np.asarray(x @ weights)


def test_unpruned_sparse_ease_ranks_like_the_dense_solution(data) -> None:
    interactions, catalog = data
    sparse = EASE(lambda_=50.0, neighbours=10**6).fit(interactions, catalog)
    assert sparse.weights.nnz > 0.9 * sparse.n_items**2  # nothing pruned but exact zeros
    scores = _dense_ease_scores(interactions, 50.0)
    for row in range(0, sparse.n_users, 7):
        seen = sparse.seen[row].indices
        expected = scores[row].copy()
        expected[seen] = -np.inf
        rec = sparse.recommend(user_id=int(sparse.user_ids[row]), k=10)
        best = np.argsort(-expected, kind="stable")[:10]
        np.testing.assert_array_equal(rec.content_ids, sparse.item_ids[best])
        np.testing.assert_allclose(rec.scores, expected[best], rtol=1e-4, atol=1e-6)


def test_pruning_keeps_each_items_strongest_neighbours(data) -> None:
    interactions, catalog = data
    full = EASE(lambda_=50.0, neighbours=10**6).fit(interactions, catalog).weights.toarray()
    pruned = EASE(lambda_=50.0, neighbours=5).fit(interactions, catalog).weights
    assert pruned.indices.dtype == np.int32 and pruned.data.dtype == np.float32
    assert np.all(np.diff(pruned.indptr) == 5)
    for item in range(0, full.shape[0], 3):
        kept = pruned.indices[pruned.indptr[item] : pruned.indptr[item + 1]]
        strongest = np.argsort(-np.abs(full[item]), kind="stable")[:5]
        assert set(kept.tolist()) == set(strongest.tolist())
        np.testing.assert_array_equal(pruned[item].toarray()[0, kept], full[item, kept])
    # Fewer neighbours, fewer weights, and still a personalised (different) ranking.
    user = int(interactions["user_id"].iloc[0])
    assert len(EASE(lambda_=50.0, neighbours=5).fit(interactions).recommend(user_id=user).scores)


def test_neighbours_must_be_positive() -> None:
    with pytest.raises(HyperparameterError):
        EASE(neighbours=0)


def test_invalid_k_and_bad_training_data_are_refused(ease) -> None:
    with pytest.raises(InvalidRequestError):
        ease.recommend(user_id=1, k=0)
    with pytest.raises(TrainingDataError):
        EASE().fit(pd.DataFrame({"user_id": [1]}))
    with pytest.raises(TrainingDataError):
        Popularity().fit(pd.DataFrame(columns=["user_id", "content_id", "rating"]))


def test_server_validation_helpers(ease, data) -> None:
    interactions, _ = data
    assert ease.has_item(int(interactions["content_id"].iloc[0]))
    assert not ease.has_item(-1)
    assert ease.has_user(int(interactions["user_id"].iloc[0]))
    assert ease.n_items == interactions["content_id"].nunique()
    assert ease.catalog is not None
    assert {"title", "poster_path"} <= set(ease.catalog.columns)


def test_ties_are_broken_towards_the_smaller_id() -> None:
    scores = np.zeros((2, 3000), dtype=np.float32)
    scores[0, [2999, 5, 700]] = 1.0
    scores[1, 10:] = -np.inf
    idx, _ = top_k(scores, 4)
    np.testing.assert_array_equal(idx[0], [5, 700, 2999, 0])
    np.testing.assert_array_equal(idx[1], [0, 1, 2, 3])
    # The single-row variant agrees, dropping the excluded (-inf) items.
    one, _ = top_k_row(scores[0], 4)
    np.testing.assert_array_equal(one, [5, 700, 2999, 0])
    np.testing.assert_array_equal(top_k_row(scores[1], 20)[0], np.arange(10))


@pytest.mark.parametrize("width", [7, 300, 10_000, 10_001])
def test_single_row_top_k_equals_batch_top_k(width: int) -> None:
    rng = np.random.default_rng(width)
    rows = [
        rng.standard_normal(width).astype(np.float32),
        rng.integers(0, 3, width).astype(np.float32),  # many ties
        np.where(rng.random(width) < 0.98, -np.inf, rng.random(width)).astype(np.float32),
    ]
    for row in rows:
        for k in (1, 10, 50):
            idx, vals = top_k(row[None, :], k)
            finite = np.isfinite(vals[0])
            one_idx, one_vals = top_k_row(row, k)
            np.testing.assert_array_equal(one_idx, idx[0][finite])
            np.testing.assert_array_equal(one_vals, vals[0][finite])


def test_confidence_uses_whatever_signal_a_row_has() -> None:
    frame = pd.DataFrame(
        {"watch_seconds": [7200.0, None, None, 0.0], "rating": [None, 10.0, None, 5.0]}
    )
    np.testing.assert_allclose(interaction_confidence(frame, alpha=1.0), [2.0, 2.0, 1.0, 1.25])
    only_watch = frame.drop(columns="rating")
    np.testing.assert_allclose(interaction_confidence(only_watch), [2.0, 1.0, 1.0, 1.0])


def test_mlp_learns_a_learnable_problem() -> None:
    # Each of 6 content ids has its own (rating, watch) signature: a separable problem.
    rng = np.random.default_rng(0)
    n = 3000
    item = rng.integers(0, 6, n)
    frame = pd.DataFrame(
        {
            "user_id": rng.integers(0, 300, n),
            "content_id": item + 1,
            "rating": item * 1.5 + rng.normal(0, 0.2, n),
            "watch_seconds": (5 - item) * 900 + rng.normal(0, 60, n),
        }
    )
    fitted = MoviePredictor(epochs=8, seed=0).fit(frame)
    losses = fitted.loss_history
    assert losses[-1] < 0.5 * losses[0]
    assert losses[-1] < np.log(6) * 0.5  # chance level is log(C)
    features = (
        np.column_stack(
            [frame["rating"], np.log1p(np.bincount(item)[item]), frame["watch_seconds"]]
        )
        - fitted.arrays["feature_mean"]
    ) / fitted.arrays["feature_std"]
    accuracy = (fitted.probabilities(features.astype(np.float32)).argmax(axis=1) == item).mean()
    assert accuracy > 0.8  # chance is 1/6


def test_mlp_recommends_for_users_and_histories(data) -> None:
    interactions, catalog = data
    fitted = MoviePredictor(epochs=2).fit(interactions, catalog)
    rec = fitted.recommend(user_id=int(interactions["user_id"].iloc[0]), k=5)
    assert len(rec.content_ids) == 5
    assert not rec.fallback
    assert len(fitted.recommend(history=interactions["content_id"].iloc[:3].tolist()).scores)


def test_strong_model_clearly_beats_popularity(data) -> None:
    interactions, catalog = data
    results = evaluate_models(
        interactions, catalog, models=["popularity", ("ease", {"lambda_": 50.0})], k=10
    ).set_index("model")
    assert results.loc["ease", "ndcg@10"] > 1.5 * results.loc["popularity", "ndcg@10"]
    assert results.loc["ease", "coverage"] > results.loc["popularity", "coverage"]


def test_training_is_deterministic(data) -> None:
    interactions, catalog = data
    users = interactions["user_id"].drop_duplicates().head(20).tolist()
    for name in MODELS:
        params = {"epochs": 1} if name == "movie_predictor" else {}
        a = MODELS[name](**params).fit(interactions, catalog).recommend_many(users, k=10)
        b = MODELS[name](**params).fit(interactions, catalog).recommend_many(users, k=10)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x.content_ids, y.content_ids)
            np.testing.assert_array_equal(x.scores, y.scores)
    assert BEST_MODEL in MODELS

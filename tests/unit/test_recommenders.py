"""Behaviour of the recommenders a caller would notice."""

from __future__ import annotations

import re
import tracemalloc

import numpy as np
import pandas as pd
import psutil
import pytest
import threadpoolctl

from pipelines.evaluate import evaluate_models
from recommenders import BEST_MODEL, EASE, MODELS, MoviePredictor, Popularity
from recommenders.data import Weighting, build_matrix, interaction_confidence
from recommenders.ease import (
    THREADED_LAPACK_MAX_ITEMS,
    ease_weights,
    fit_memory_bytes,
    gram_matrix,
    max_items_within,
)
from recommenders.errors import (
    HyperparameterError,
    InvalidRequestError,
    ModelTooLargeError,
    TrainingDataError,
)
from recommenders.resources import available_memory, single_threaded_blas
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


# -- fitting within the machine: max_items, the memory estimate, BLAS threads -----------------


def test_max_items_fits_on_the_most_interacted_items_only(data) -> None:
    interactions, catalog = data
    users_per_item = (
        interactions.drop_duplicates(["user_id", "content_id"])
        .groupby("content_id")["user_id"]
        .size()
    )
    ranked = sorted(users_per_item.items(), key=lambda kv: (-kv[1], kv[0]))
    expected = sorted(item for item, _ in ranked[:40])

    model = EASE(lambda_=50.0, max_items=40).fit(interactions, catalog)

    assert model.n_items == 40 and model.item_ids.tolist() == expected
    assert model.params["max_items"] == 40
    kept = interactions[interactions["content_id"].isin(expected)]
    assert model.seen.nnz == kept.drop_duplicates(["user_id", "content_id"]).shape[0]
    user = int(kept["user_id"].iloc[0])
    assert set(model.recommend(user_id=user, k=10).content_ids.tolist()) <= set(expected)
    # a bound above the catalog changes nothing
    unbounded = EASE(lambda_=50.0).fit(interactions, catalog)
    same = EASE(lambda_=50.0, max_items=10**6).fit(interactions, catalog)
    np.testing.assert_array_equal(same.weights.toarray(), unbounded.weights.toarray())
    with pytest.raises(HyperparameterError, match="max_items"):
        EASE(max_items=0)


def test_a_fit_that_cannot_fit_in_memory_is_refused_with_the_bound_that_would() -> None:
    n_items = 250_000  # a 250,000² float32 matrix: 250 GB, more than any test machine has
    frame = pd.DataFrame(
        {"user_id": np.arange(n_items) // 5, "content_id": np.arange(n_items) + 1, "rating": 4.0}
    )

    with pytest.raises(ModelTooLargeError) as refused:
        EASE().fit(frame)

    message = str(refused.value)
    needed = float(re.search(r"items needs ~([\d.]+) GB", message).group(1)) * 1e9
    assert 4 * n_items**2 <= needed <= 4 * n_items**2 * 1.01  # one float32 n² matrix + work
    available = float(re.search(r"but ([\d.]+) GB is available", message).group(1)) * 1e9
    suggested = int(re.search(r"--max-items ([\d,]+) keeps", message).group(1).replace(",", ""))
    assert 0 < suggested < n_items
    assert fit_memory_bytes(suggested, 200) <= available + 1e8  # (GB rounded in the message)
    assert fit_memory_bytes(int(suggested * 1.05), 200) > available - 1e8
    assert refused.value.exit_code == 13


def test_the_memory_estimate_bounds_what_a_fit_allocates() -> None:
    interactions, _ = synthetic_interactions(n_users=3000, n_items=1500, n_interactions=60_000)
    n_items = interactions["content_id"].nunique()
    tracemalloc.start()
    try:
        EASE().fit(interactions)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert 4 * n_items**2 <= peak <= fit_memory_bytes(n_items, 200)


def test_max_items_within_inverts_the_estimate() -> None:
    for memory in (10**9, 8 * 10**9, 24 * 10**9):
        n = max_items_within(memory, 200)
        assert fit_memory_bytes(n, 200) <= memory < fit_memory_bytes(int(n * 1.01) + 1, 200)


def test_available_memory_is_what_psutil_reports_or_a_container_limit() -> None:
    ours = available_memory()
    theirs = psutil.virtual_memory().available
    assert ours is not None and ours > 0
    assert ours <= theirs * 1.05 + 64 * 2**20  # never more than the machine has free


def test_single_threaded_blas_limits_scipys_openblas_and_restores_it() -> None:
    def scipy_threads() -> list[int]:
        return [
            info["num_threads"]
            for info in threadpoolctl.threadpool_info()
            if info["internal_api"] == "openblas" and "scipy.libs" in info["filepath"]
        ]

    before = scipy_threads()
    assert before, "scipy's bundled OpenBLAS is loaded"
    with single_threaded_blas() as limited:
        assert limited and scipy_threads() == [1] * len(before)
    assert scipy_threads() == before


def test_ease_weights_single_threaded_equal_the_threaded_ones(data) -> None:
    interactions, _ = data
    x = build_matrix(interactions, Weighting.CONFIDENCE).matrix
    threaded = ease_weights(gram_matrix(x), 50.0, single_threaded=False)
    single = ease_weights(gram_matrix(x), 50.0, single_threaded=True)
    np.testing.assert_allclose(single, threaded, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(gram_matrix(x), (x.T @ x).toarray(), rtol=1e-6)
    assert THREADED_LAPACK_MAX_ITEMS < 36_000  # measured safe on 2 threads (resources docs)

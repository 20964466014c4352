"""The watch-log simulator: the classic mode keeps the original's maths, the default mode has
structure a recommender can learn, and both are deterministic for a seed."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from pipelines.simulator import (
    MAX_WATCH_SECONDS,
    SimulatorMode,
    SimulatorParams,
    classic_watch_seconds,
    simulate,
)
from tmdb_sandbox.catalog import generate

ANCHOR = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def catalog() -> pd.DataFrame:
    movies = generate(n_movies=600, seed=3).movies
    return pd.DataFrame(
        {
            "content_id": [m["id"] for m in movies],
            "vote_average": [m["vote_average"] for m in movies],
            "popularity": [m["popularity"] for m in movies],
            "genre_ids": [m["genre_ids"] for m in movies],
        }
    )


def test_classic_watch_seconds_matches_the_original_formula() -> None:
    r = np.array([0.0, 5.0, 10.0])
    expected = 7200 * (1.1 ** (r - 5) - 1.1**-5) / (1.1**5 - 1.1**-5)
    np.testing.assert_allclose(classic_watch_seconds(r), expected)
    assert classic_watch_seconds(np.array([0.0]))[0] == 0.0
    assert classic_watch_seconds(np.array([10.0]))[0] == pytest.approx(7200.0)


def test_classic_mode_has_100_users_each_0_to_20_picks(catalog: pd.DataFrame) -> None:
    frame = simulate(catalog, SimulatorParams(mode=SimulatorMode.CLASSIC, seed=1), ANCHOR)
    per_user = frame.groupby("user_id").size()
    assert per_user.index.min() >= 1 and per_user.index.max() <= 100
    assert per_user.max() <= 20
    # rating is the movie's vote_average, watch time follows it within the 10 % noise band
    votes = catalog.set_index("content_id")["vote_average"]
    np.testing.assert_allclose(frame["rating"], votes.loc[frame["content_id"]].to_numpy())
    base = classic_watch_seconds(frame["rating"].to_numpy())
    inside = np.abs(frame["watch_seconds"] - base) <= 0.5 * base + 1e-9
    assert inside.mean() > 0.99
    assert frame["watch_seconds"].between(0, MAX_WATCH_SECONDS).all()
    # the pool weights movies by 2**vote_average: good films are picked far more often
    assert frame["rating"].mean() > catalog["vote_average"].mean() + 0.5


def test_same_seed_same_log_other_seed_other_log(catalog: pd.DataFrame) -> None:
    params = SimulatorParams(seed=11, users=300)
    first, second = simulate(catalog, params, ANCHOR), simulate(catalog, params, ANCHOR)
    pd.testing.assert_frame_equal(first, second)
    other = simulate(catalog, SimulatorParams(seed=12, users=300), ANCHOR)
    assert not first.equals(other)


def test_default_mode_users_have_genre_tastes(catalog: pd.DataFrame) -> None:
    """A user's views concentrate on a few genres far more than the catalog does."""
    frame = simulate(catalog, SimulatorParams(seed=5, users=400, mean_items=30), ANCHOR)
    genres = catalog.set_index("content_id")["genre_ids"]
    catalog_share = pd.Series([g for ids in catalog["genre_ids"] for g in ids]).value_counts(
        normalize=True
    )
    top_shares = []
    for _, views in frame.groupby("user_id"):
        if len(views) < 15:
            continue
        counts = pd.Series([g for c in views["content_id"] for g in genres[c]]).value_counts(
            normalize=True
        )
        top_shares.append(counts.iloc[0])
    assert np.mean(top_shares) > catalog_share.iloc[0] + 0.15
    # activity differs: heavy users watch many times what light users do
    sizes = frame.groupby("user_id").size()
    assert sizes.quantile(0.9) > 3 * sizes.quantile(0.1)
    # no user sees a film twice; about a third of views carry a rating on 1..10
    assert not frame.duplicated(["user_id", "content_id"]).any()
    assert 0.25 < frame["rating"].notna().mean() < 0.45
    assert frame["rating"].dropna().between(1, 10).all()
    assert frame["timestamp"].max() <= pd.Timestamp(ANCHOR)


def test_engagement_follows_taste(catalog: pd.DataFrame) -> None:
    """Ratings and watch time move together, as the rating-vs-watch plot shows."""
    frame = simulate(catalog, SimulatorParams(seed=2, users=300), ANCHOR).dropna()
    assert np.corrcoef(frame["rating"], frame["watch_seconds"])[0, 1] > 0.6


def test_empty_catalog_is_an_error() -> None:
    empty = pd.DataFrame(columns=["content_id", "vote_average", "popularity", "genre_ids"])
    with pytest.raises(ValueError, match="empty catalog"):
        simulate(empty, SimulatorParams(), ANCHOR)

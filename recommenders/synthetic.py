"""Synthetic interactions with real structure, for tests and benchmarks.

Items belong to genres and have Zipf-like popularity; each user has a taste (a sparse Dirichlet
over genres) and an activity level (log-normal number of interactions). An interaction picks a
genre from the user's taste, then an item of that genre in proportion to its popularity, so a
collaborative model can learn tastes that a popularity ranking cannot. Watch time and rating
grow with how well the item's genre matches the user's taste; timestamps increase per user.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def synthetic_interactions(
    n_users: int = 2000,
    n_items: int = 500,
    n_interactions: int = 40_000,
    n_genres: int = 12,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return ``(interactions, catalog)`` in the feature-snapshot schema (subset of columns).

    Rows are oversampled and duplicate (user, item) pairs dropped, so the result has about
    ``n_interactions`` distinct pairs (fewer only when users run out of items to pick).
    """
    wanted = n_interactions
    n_interactions = int(n_interactions * 1.4)
    rng = np.random.default_rng(seed)
    item_genre = rng.integers(0, n_genres, n_items)
    item_pop = rng.zipf(1.8, n_items).clip(max=1000).astype(np.float64)
    taste = rng.dirichlet(np.full(n_genres, 0.15), n_users)
    activity = rng.lognormal(0.0, 0.8, n_users)
    users = rng.choice(n_users, n_interactions, p=activity / activity.sum())
    # Sample a genre per row from the user's taste (inverse CDF, vectorised).
    cum_taste = np.cumsum(taste, axis=1)
    genre = (cum_taste[users] < rng.random(n_interactions)[:, None]).sum(axis=1)
    genre = np.minimum(genre, n_genres - 1)
    # Then an item of that genre by popularity: items ordered by genre, one global CDF.
    order = np.argsort(item_genre, kind="stable")
    mass = item_pop[order]
    cum = np.cumsum(mass)
    starts = np.searchsorted(item_genre[order], np.arange(n_genres), side="left")
    ends = np.searchsorted(item_genre[order], np.arange(n_genres), side="right")
    before = np.where(starts > 0, cum[np.maximum(starts - 1, 0)], 0.0)
    seg_mass = np.where(ends > starts, cum[np.maximum(ends - 1, 0)] - before, 0.0)
    target = before[genre] + rng.random(n_interactions) * seg_mass[genre]
    pos = np.minimum(np.searchsorted(cum, target, side="right"), n_items - 1)
    empty = seg_mass[genre] == 0  # a genre without items: fall back to any item
    pos[empty] = np.searchsorted(cum, rng.random(int(empty.sum())) * cum[-1], side="right")
    items = order[np.minimum(pos, n_items - 1)]

    match = taste[users, item_genre[items]]
    watch = np.clip(rng.normal(1800 + 6000 * match, 900), 60, 3 * 7200)
    rating = np.clip(np.round(2 + 6 * match + rng.normal(0, 1.2, n_interactions)), 1, 10)
    start = pd.Timestamp("2024-01-01", tz="UTC")
    seconds = np.sort(rng.integers(0, 365 * 86400, n_interactions))
    interactions = pd.DataFrame(
        {
            "user_id": users.astype(np.int64) + 1,
            "content_id": items.astype(np.int64) * 7 + 100,  # ids that are not indices
            "watch_seconds": watch,
            "rating": rating,
            "timestamp": start + pd.to_timedelta(seconds, unit="s"),
        }
    ).drop_duplicates(["user_id", "content_id"], ignore_index=True)
    interactions = interactions.iloc[:wanted].copy()
    catalog = pd.DataFrame(
        {
            "content_id": np.arange(n_items, dtype=np.int64) * 7 + 100,
            "title": [f"Movie {i}" for i in range(n_items)],
            "genre_ids": [[int(g)] for g in item_genre],
            "popularity": item_pop,
            "vote_average": np.round(rng.uniform(4, 9, n_items), 1),
            "poster_path": [f"/p{i}.jpg" for i in range(n_items)],
            "release_date": ["2020-01-01"] * n_items,
        }
    )
    return interactions, catalog

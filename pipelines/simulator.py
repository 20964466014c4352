"""Watch-log simulator: synthetic interactions over a movie catalog.

Two modes.

``classic`` — the original project's generator, kept for lineage: 100 users; each picks 0..20
movies *with replacement* from a pool in which every movie appears ``int(2 ** vote_average)``
times; ``rating`` is the movie's vote_average r and
``watch_seconds = 7200 · (1.1^(r−5) − 1.1^−5) / (1.1^5 − 1.1^−5)`` plus Gaussian noise of 10 %,
clipped to [0, 7200]. Every user has the same taste, so no recommender can beat popularity on it.

``default`` — users with structure a recommender can learn and a popularity list cannot:

* **taste**: each user u has genre weights θ_u ~ Dirichlet(α=0.3) over TMDB's 19 genres — a few
  favourite genres, most others near zero; a movie's genre vector g_i is its genre indicator
  normalised to sum 1, and affinity a_ui = log(θ_u · g_i + 0.01);
* **popularity bias**: β_u ~ N(0.5, 0.25) clipped to [0, 1.2] scales log(popularity_i);
* **quality**: every user likes better-rated films a little: 0.3 · (vote_average_i − 6.5);
* **activity**: the number of films watched n_u ~ LogNormal(log(mean_items), 0.8), clipped to
  [1, min(300, catalog size)] — a few heavy users, many light ones;
* **choice**: a user watches the n_u films with the highest s_ui = 2·a_ui + β_u·log(pop_i) +
  quality_i + Gumbel noise — the Gumbel-top-k trick, i.e. sampling without replacement with
  probability ∝ exp(s_ui);
* **engagement**: e_ui = sigmoid(1.5·z(a_ui) + 0.4·(vote_average_i − 6.5) + N(0, 0.5)) where z
  standardises affinity per user; ``watch_seconds = 7200 · e_ui`` (plus 10 % noise, clipped), and
  35 % of views also leave a ``rating`` on TMDB's 1..10 scale, round(1 + 9·e_ui + N(0, 0.7));
* **time**: views fall uniformly in the 90 days before the anchor (the source crawl's end), in
  whole seconds.

All randomness flows from one ``numpy.random.Generator(PCG64(seed))`` in a fixed order, so the same
catalog, parameters and seed give identical interactions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

MAX_WATCH_SECONDS = 7200.0
# Bumped whenever the same seed would give different rows; part of the feature version digest.
GENERATOR_VERSION = 2
TMDB_GENRE_IDS = (28, 12, 16, 35, 80, 99, 18, 10751, 14, 36, 27, 10402, 9648, 10749, 878, 10770,
                  53, 10752, 37)  # fmt: skip
_CHUNK_USERS = 1024


class SimulatorMode(StrEnum):
    """Which generative model produces the watch log."""

    DEFAULT = "default"
    CLASSIC = "classic"


@dataclass(frozen=True)
class SimulatorParams:
    """Parameters of the generator; recorded in the feature snapshot's manifest."""

    mode: SimulatorMode = SimulatorMode.DEFAULT
    seed: int = 42
    users: int = 2000
    mean_items: float = 25.0
    days: int = 90

    def as_dict(self) -> dict[str, object]:
        if self.mode is SimulatorMode.CLASSIC:
            return {
                "mode": self.mode.value,
                "generator_version": GENERATOR_VERSION,
                "seed": self.seed,
                "users": 100,
            }
        return {
            "mode": self.mode.value,
            "generator_version": GENERATOR_VERSION,
            "seed": self.seed,
            "users": self.users,
            "mean_items": self.mean_items,
            "days": self.days,
        }


def classic_watch_seconds(rating: np.ndarray) -> np.ndarray:
    """The original mapping from a movie's rating (0..10) to seconds watched (0..7200)."""
    lo, hi = 1.1**-5, 1.1**5
    return MAX_WATCH_SECONDS * (np.power(1.1, rating - 5.0) - lo) / (hi - lo)


def _timestamps(rng: np.random.Generator, n: int, anchor: datetime, days: int) -> pd.Series:
    offsets = rng.integers(0, days * 86400, size=n, dtype=np.int64)
    end = np.int64(int(pd.Timestamp(anchor).tz_convert("UTC").timestamp()))
    return pd.Series(pd.to_datetime(end - offsets, unit="s", utc=True).as_unit("us"))


def _simulate_classic(
    catalog: pd.DataFrame, params: SimulatorParams, anchor: datetime
) -> pd.DataFrame:
    rng = np.random.default_rng(params.seed)
    votes = catalog["vote_average"].to_numpy(dtype=np.float64)
    pool = np.repeat(np.arange(len(catalog)), (2.0**votes).astype(np.int64))
    if pool.size == 0:
        pool = np.arange(len(catalog))
    per_user = rng.integers(0, 21, size=100)  # 0..20 inclusive, as the original
    users = np.repeat(np.arange(1, 101, dtype=np.int64), per_user)
    picks = pool[rng.integers(0, pool.size, size=users.size)]
    rating = votes[picks]
    watch = classic_watch_seconds(rating)
    watch = np.clip(watch + rng.normal(0.0, 0.1, size=watch.size) * watch, 0.0, MAX_WATCH_SECONDS)
    return pd.DataFrame(
        {
            "user_id": users,
            "content_id": catalog["content_id"].to_numpy(dtype=np.int64)[picks],
            "watch_seconds": watch,
            "rating": rating,
            "timestamp": _timestamps(rng, users.size, anchor, params.days),
        }
    )


def _genre_matrix(catalog: pd.DataFrame) -> np.ndarray:
    index = {g: j for j, g in enumerate(TMDB_GENRE_IDS)}
    mat = np.zeros((len(catalog), len(TMDB_GENRE_IDS)), dtype=np.float64)
    for row, ids in enumerate(catalog["genre_ids"]):
        cols = [index[g] for g in (ids if ids is not None else []) if g in index]
        if cols:
            mat[row, cols] = 1.0 / len(cols)
        else:
            mat[row, :] = 1.0 / len(TMDB_GENRE_IDS)  # no genre known: neutral
    return mat


def _draw_tastes(rng: np.random.Generator, users: int) -> np.ndarray:
    return rng.dirichlet(np.full(len(TMDB_GENRE_IDS), 0.3), size=users)


def user_tastes(params: SimulatorParams) -> np.ndarray:
    """θ_u, the genre weights of the ``default`` mode's users (row u-1 is user u, over
    `TMDB_GENRE_IDS`): the generator's first draw, so the same seed gives the same users."""
    return _draw_tastes(np.random.default_rng(params.seed), params.users)


def genre_vectors(catalog: pd.DataFrame) -> np.ndarray:
    """g_i, each film's genre indicator normalised to sum 1 (rows in catalog order)."""
    return _genre_matrix(catalog)


def _simulate_default(
    catalog: pd.DataFrame,
    params: SimulatorParams,
    anchor: datetime,
    progress: Callable[[int, int], None] | None,
) -> pd.DataFrame:
    rng = np.random.default_rng(params.seed)
    n_items = len(catalog)
    genres = _genre_matrix(catalog)
    log_pop = np.log1p(catalog["popularity"].to_numpy(dtype=np.float32))
    quality = np.float32(0.3) * (catalog["vote_average"].to_numpy(dtype=np.float32) - 6.5)
    content_ids = catalog["content_id"].to_numpy(dtype=np.int64)

    taste = _draw_tastes(rng, params.users)
    beta = np.clip(rng.normal(0.5, 0.25, size=params.users), 0.0, 1.2).astype(np.float32)
    activity = rng.lognormal(np.log(params.mean_items), 0.8, size=params.users)
    n_watch = np.clip(np.rint(activity), 1, min(300, n_items)).astype(np.int64)

    parts_user, parts_item, parts_aff = [], [], []
    for start in range(0, params.users, _CHUNK_USERS):
        stop = min(start + _CHUNK_USERS, params.users)
        # float32 halves the memory traffic of the (chunk x items) matrices
        affinity = np.log(taste[start:stop] @ genres.T + 0.01).astype(np.float32)
        score = 2.0 * affinity + beta[start:stop, None] * log_pop[None, :] + quality[None, :]
        uniform = rng.random(size=score.shape, dtype=np.float32)
        score -= np.log(-np.log(uniform + np.float32(1e-12)))  # Gumbel(0, 1) noise
        k_max = int(n_watch[start:stop].max())
        top = np.argpartition(-score, k_max - 1, axis=1)[:, :k_max]
        order = np.take_along_axis(score, top, axis=1).argsort(axis=1)[:, ::-1]
        top = np.take_along_axis(top, order, axis=1)  # best first: keep the first n_u
        keep = np.arange(k_max)[None, :] < n_watch[start:stop, None]
        rows = np.nonzero(keep)[0]
        items = top[keep]
        aff = affinity[rows, items]
        # standardise affinity per user so engagement depends on relative taste
        mean = affinity.mean(axis=1)[rows]
        std = affinity.std(axis=1)[rows] + 1e-9
        parts_user.append(rows + start + 1)
        parts_item.append(items)
        parts_aff.append((aff - mean) / std)
        if progress is not None:
            progress(stop, params.users)

    users = np.concatenate(parts_user).astype(np.int64)
    items = np.concatenate(parts_item)
    z_aff = np.concatenate(parts_aff)
    n = users.size
    logit = 1.5 * z_aff + 0.4 * (quality[items] / 0.3) + rng.normal(0.0, 0.5, size=n)
    engagement = 1.0 / (1.0 + np.exp(-logit))
    watch = MAX_WATCH_SECONDS * engagement
    watch = np.clip(watch + rng.normal(0.0, 0.1, size=n) * watch, 0.0, MAX_WATCH_SECONDS)
    rated = rng.random(size=n) < 0.35
    rating = np.clip(np.rint(1.0 + 9.0 * engagement + rng.normal(0.0, 0.7, size=n)), 1.0, 10.0)
    return pd.DataFrame(
        {
            "user_id": users,
            "content_id": content_ids[items],
            "watch_seconds": np.round(watch, 1),
            "rating": np.where(rated, rating, np.nan),
            "timestamp": _timestamps(rng, n, anchor, params.days),
        }
    )


def simulate(
    catalog: pd.DataFrame,
    params: SimulatorParams,
    anchor: datetime,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Generate a watch log over ``catalog`` (needs content_id, vote_average, popularity,
    genre_ids). Rows are sorted by (user_id, timestamp, content_id)."""
    if catalog.empty:
        raise ValueError("cannot simulate interactions over an empty catalog")
    log.info("simulating %s watch logs (seed %d)", params.mode.value, params.seed)
    if params.mode is SimulatorMode.CLASSIC:
        frame = _simulate_classic(catalog, params, anchor)
    else:
        frame = _simulate_default(catalog, params, anchor, progress)
    frame = frame.sort_values(["user_id", "timestamp", "content_id"], kind="stable")
    return frame.reset_index(drop=True)

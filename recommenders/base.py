"""What every recommender shares: the scoring object and the trainer.

Two halves, so training and serving never drift apart:

- a *trainer* (`Trainer` subclass, a frozen dataclass of hyperparameters) whose
  ``fit(interactions, catalog)`` returns
- a *fitted recommender* (`FittedRecommender` subclass): the load-once / predict-many scoring
  object. The KServe predictor and the MLflow pyfunc wrapper both call `recommend` /
  `recommend_many` on the object `recommenders.load` returns, so they rank identically.

Input preparation is `recommenders.data`, top-k selection `recommenders.topk`, the artefact
format `recommenders.artifact`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recommenders.errors import InvalidRequestError
from recommenders.topk import top_k, top_k_row

log = logging.getLogger(__name__)

# Rows scored at once by `recommend_many`; bounds the dense (rows x n_items) float32 score block
# (2.5 MB at 10k items). At 256 rows (10 MB) glibc handed each block out as fresh mmap'd pages:
# ~13,500 page faults, ~20 ms of system time per 1,000 users x 10k items (59 ms -> ~35 ms with
# 64 here and ease._GATHER_ROWS = 8; other pairs, e.g. 64/32, fault even more).
_CHUNK_ROWS = 64
# Known users' top PRECOMPUTED_K (seen items excluded) are scored once, when the artefact is
# written (batch inference over all users), and served by lookup: per-version results that
# depend only on the artefact. The online path stays for anonymous histories,
# exclude_seen=False and k > PRECOMPUTED_K (the model server's largest k is 100).
PRECOMPUTED_K = 100
# Up to this many requests, `recommend_many` answers each with the single-request path: the
# vectorised path's fixed cost (sparse row slicing, index arrays) only pays off on larger batches.
_ONE_BY_ONE_MAX = 8
# A long step (a fit's Gram matrix, the batch top-k of every user) logs its progress this often.
_PROGRESS_EVERY_S = 5.0


class Progress:
    """Logs ``what: done/total`` about every `_PROGRESS_EVERY_S` seconds of a long loop."""

    def __init__(self, what: str, total: int) -> None:
        self.what, self.total = what, total
        self.started = self.last = time.monotonic()

    def update(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last >= _PROGRESS_EVERY_S and done < self.total:
            self.last = now
            rate = done / max(now - self.started, 1e-9)
            eta = (self.total - done) / rate if rate else float("inf")
            log.info("%s: %d/%d (%.0f s, ETA %.0f s)", self.what, done, self.total,
                     now - self.started, eta)  # fmt: skip


@dataclass(frozen=True, eq=False)
class Recommendation:
    """The top-k of one request, best first.

    ``fallback`` is True when the model could not personalise (unknown user, no usable history)
    and answered with the popularity ranking; ``reason`` then says why.
    """

    content_ids: np.ndarray  # int64
    scores: np.ndarray  # float32
    fallback: bool = False
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what a V1 ``predictions`` entry carries)."""
        return {
            "content_ids": self.content_ids.tolist(),
            "scores": [float(s) for s in self.scores],
            "fallback": self.fallback,
            "reason": self.reason,
        }


# -- the scoring object ------------------------------------------------------------------------


class FittedRecommender(ABC):
    """A trained model, ready to score: pure numpy on arrays prepared once.

    Subclasses implement `_score_profiles` (and may override `_score_users`); everything about
    id lookup, exclusion of seen items, fallbacks, batching and tie-breaking lives here, so all
    models behave the same way at the edges.
    """

    model_type: ClassVar[str]

    def __init__(
        self,
        *,
        params: Mapping[str, Any],
        user_ids: np.ndarray,
        item_ids: np.ndarray,
        seen: sp.csr_matrix,
        popularity: np.ndarray,
        arrays: Mapping[str, np.ndarray],
        catalog: pd.DataFrame | None = None,
        trained_on: Mapping[str, Any] | None = None,
        precomputed: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        self.params = dict(params)
        self.user_ids = np.asarray(user_ids, dtype=np.int64)
        self.item_ids = np.asarray(item_ids, dtype=np.int64)
        self.seen = seen.tocsr()
        self.popularity = np.asarray(popularity, dtype=np.float32)
        self.arrays = dict(arrays)
        self.catalog = catalog
        self.trained_on = dict(trained_on or {})
        self._popular_order = top_k(self.popularity[None, :], self.n_items)[0][0]
        # Plain arrays of the training rows: slicing them costs no scipy object per request.
        self._seen_indptr = self.seen.indptr
        self._seen_indices = self.seen.indices
        self._seen_data = np.asarray(self.seen.data, dtype=np.float32)
        # id -> row as a dict: one hash lookup per request instead of a numpy binary search
        # (~60 bytes per known user)
        self._user_rows: dict[int, int] = dict(
            zip(self.user_ids.tolist(), range(len(self.user_ids)), strict=True)
        )
        self._top_cols: np.ndarray | None = None
        self._top_scores: np.ndarray | None = None
        if precomputed is not None:
            self._top_cols, self._top_scores = precomputed
        self._prepare()

    def _prepare(self) -> None:  # noqa: B027 - optional hook, most models need nothing
        """Hook: derive whatever scoring needs from ``self.arrays`` (runs once, at load)."""

    # -- what a server needs to validate input --------------------------------------------

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def known_items(self) -> np.ndarray:
        """Content ids the model can score (sorted int64)."""
        return self.item_ids

    @property
    def known_users(self) -> np.ndarray:
        """User ids seen in training (sorted int64)."""
        return self.user_ids

    def has_item(self, content_id: int) -> bool:
        return bool(self._lookup(self.item_ids, np.array([content_id]))[0] >= 0)

    def has_user(self, user_id: int) -> bool:
        return bool(self._lookup(self.user_ids, np.array([user_id]))[0] >= 0)

    @staticmethod
    def _lookup(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Index of each id in a sorted id array, -1 where absent."""
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.searchsorted(sorted_ids, ids)
        pos_c = np.minimum(pos, len(sorted_ids) - 1)
        found = (pos < len(sorted_ids)) & (sorted_ids[pos_c] == ids)
        return np.where(found, pos_c, -1)

    # -- scoring ---------------------------------------------------------------------------

    @abstractmethod
    def _score_profiles(self, profiles: sp.csr_matrix) -> np.ndarray:
        """Scores (rows x n_items, float32) of users given as weighted item rows."""

    def _score_users(self, user_index: np.ndarray) -> np.ndarray:
        """Scores of known users (by row index); default: their training row as the profile."""
        return self._score_profiles(self.seen[user_index])

    def _score_one(self, user_index: int, items: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Scores (n_items, a fresh array the caller may modify) of one request.

        ``user_index`` is a known user's row (``items``/``weights`` are then their training row)
        or -1 for an anonymous profile of ``items`` weighted by ``weights``. Must equal the
        matching row of `_score_users` / `_score_profiles` exactly, so that `recommend` and
        `recommend_many` rank alike; models override it to skip the batch machinery.
        """
        if user_index >= 0:
            return self._score_users(np.array([user_index]))[0]
        profile = sp.csr_matrix(
            (weights, items, np.array([0, len(items)])), shape=(1, self.n_items)
        )
        return self._score_profiles(profile)[0]

    def recommend(
        self,
        user_id: int | None = None,
        history: Sequence[int] | None = None,
        k: int = 10,
        exclude_seen: bool = True,
    ) -> Recommendation:
        """Top-k for one request.

        - a known ``user_id``: personalised from the user's training interactions, excluding
          them unless ``exclude_seen`` is False (a passed ``history`` is then ignored);
        - otherwise a ``history`` of content ids: scored as an anonymous user with that
          history, excluding the history; unknown ids in it are ignored;
        - otherwise (unknown user, no usable history): the popularity ranking, with
          ``fallback=True`` and the reason.
        """
        if k < 1:
            raise InvalidRequestError(f"k must be at least 1, got {k}")
        index = self._user_index(user_id)
        top = self._top_cols
        if index >= 0 and exclude_seen and top is not None and k <= top.shape[1]:
            cols = top[index, :k]
            if len(cols) and cols[-1] < 0:  # the user has seen all but fewer than k items
                cols = cols[cols >= 0]
            return Recommendation(self.item_ids[cols], self._top_scores[index, : len(cols)].copy())
        if index >= 0:
            start, stop = self._seen_indptr[index], self._seen_indptr[index + 1]
            items = self._seen_indices[start:stop]
            scores = self._score_one(index, items, self._seen_data[start:stop])
        else:
            items = self._history_columns(history)
            if not len(items):
                return self._fallback(k, self._fallback_reason(user_id, history))
            scores = self._score_one(-1, items, np.ones(len(items), dtype=np.float32))
        if exclude_seen:
            scores[items] = -np.inf
        idx, vals = top_k_row(scores, k)
        return Recommendation(self.item_ids[idx], vals)

    def _user_index(self, user_id: int | None) -> int:
        """Row of a known user, -1 for None or an unknown id."""
        if user_id is None:
            return -1
        return self._user_rows.get(user_id, -1)

    def _history_columns(self, history: Sequence[int] | None) -> np.ndarray:
        """Sorted unique columns of the known content ids in a history (unknown ids dropped)."""
        cols = self._lookup(self.item_ids, np.asarray(history or [], dtype=np.int64))
        return np.unique(cols[cols >= 0])

    def recommend_many(
        self,
        user_ids: Sequence[int | None] | np.ndarray | None = None,
        histories: Sequence[Sequence[int] | None] | None = None,
        k: int = 10,
        exclude_seen: bool = True,
    ) -> list[Recommendation]:
        """`recommend` for a batch of requests, scored in vectorised chunks.

        ``user_ids`` and ``histories`` are parallel lists (either may be None); the result has
        one `Recommendation` per request, in order.
        """
        if k < 1:
            raise InvalidRequestError(f"k must be at least 1, got {k}")
        if user_ids is None and histories is None:
            raise InvalidRequestError("give user_ids, histories or both")
        n = len(user_ids) if user_ids is not None else len(histories)  # type: ignore[arg-type]
        if histories is not None and len(histories) != n:
            raise InvalidRequestError("user_ids and histories must have the same length")
        raw_users = [None] * n if user_ids is None else list(user_ids)
        if n <= _ONE_BY_ONE_MAX:
            return [
                self.recommend(u, None if histories is None else histories[i], k, exclude_seen)
                for i, u in enumerate(raw_users)
            ]
        has_user = np.array([u is not None for u in raw_users], dtype=bool)
        ids = np.array([u if u is not None else 0 for u in raw_users], dtype=np.int64)
        user_index = np.where(has_user, self._lookup(self.user_ids, ids), -1)

        results: list[Recommendation | None] = [None] * n
        known = np.flatnonzero(user_index >= 0)
        top = self._top_cols
        if exclude_seen and top is not None and k <= top.shape[1] and len(known):
            cols, vals = top[user_index[known], :k], self._top_scores[user_index[known], :k]
            ids = self.item_ids[np.maximum(cols, 0)]
            for r, i in enumerate(known):
                if cols[r, -1] >= 0:
                    results[i] = Recommendation(ids[r], vals[r])
                else:
                    keep = cols[r] >= 0
                    results[i] = Recommendation(ids[r][keep], vals[r][keep])
            known = known[:0]
        for start in range(0, len(known), _CHUNK_ROWS):
            rows = known[start : start + _CHUNK_ROWS]
            scores = self._score_users(user_index[rows])
            if exclude_seen:
                block = self.seen[user_index[rows]]
                scores[
                    np.repeat(np.arange(len(rows)), np.diff(block.indptr)), block.indices
                ] = -np.inf
            self._fill(results, rows, scores, k)

        anonymous: list[int] = []
        columns: list[np.ndarray] = []
        for i in np.flatnonzero(user_index < 0):
            history = None if histories is None else histories[i]
            cols = self._history_columns(history)
            if len(cols):
                anonymous.append(int(i))
                columns.append(cols)
            else:
                results[i] = self._fallback(k, self._fallback_reason(raw_users[i], history))
        for start in range(0, len(anonymous), _CHUNK_ROWS):
            rows = np.array(anonymous[start : start + _CHUNK_ROWS])
            cols = columns[start : start + _CHUNK_ROWS]
            indptr = np.concatenate([[0], np.cumsum([len(c) for c in cols])])
            indices = np.concatenate(cols)
            profiles = sp.csr_matrix(
                (np.ones(len(indices), dtype=np.float32), indices, indptr),
                shape=(len(rows), self.n_items),
            )
            scores = self._score_profiles(profiles)
            if exclude_seen:
                scores[np.repeat(np.arange(len(rows)), np.diff(indptr)), indices] = -np.inf
            self._fill(results, rows, scores, k)
        return results  # type: ignore[return-value]

    def _fill(
        self, results: list[Recommendation | None], rows: np.ndarray, scores: np.ndarray, k: int
    ) -> None:
        idx, vals = top_k(scores, k)
        for r, i in enumerate(rows):
            keep = np.isfinite(vals[r])
            results[i] = Recommendation(self.item_ids[idx[r][keep]], vals[r][keep])

    def _fallback(self, k: int, reason: str) -> Recommendation:
        top = self._popular_order[:k]
        return Recommendation(self.item_ids[top], self.popularity[top], True, reason)

    @staticmethod
    def _fallback_reason(user_id: int | None, history: Sequence[int] | None) -> str:
        if user_id is None and not history:
            return "no user_id or history given: popularity ranking"
        who = "no user_id" if user_id is None else f"unknown user {user_id}"
        if not history:
            return f"{who} and no history: popularity ranking"
        return f"{who} and no known content id in history: popularity ranking"

    def precompute_top(self, k: int = PRECOMPUTED_K) -> tuple[np.ndarray, np.ndarray]:
        """Every known user's top-k columns and scores, seen items excluded (batch inference).

        Columns are -1 (and scores -inf) past the last item a user has not seen. The same
        scoring, masking and `top_k` as `recommend_many`, so a lookup returns what the online
        path would (a prefix of a deterministic top-k is the smaller top-k).
        """
        k = min(k, self.n_items)
        cols = np.full((self.n_users, k), -1, dtype=np.int32)
        vals = np.full((self.n_users, k), -np.inf, dtype=np.float32)
        progress = Progress(f"top-{k} of every known user", self.n_users)
        started = time.monotonic()
        for start in range(0, self.n_users, _CHUNK_ROWS):
            progress.update(start)
            rows = np.arange(start, min(start + _CHUNK_ROWS, self.n_users))
            scores = self._score_users(rows)
            block = self.seen[rows]
            scores[np.repeat(np.arange(len(rows)), np.diff(block.indptr)), block.indices] = -np.inf
            idx, top_vals = top_k(scores, k)
            finite = np.isfinite(top_vals)
            cols[rows] = np.where(finite, idx, -1)
            vals[rows] = np.where(finite, top_vals, -np.inf)
        if time.monotonic() - started >= _PROGRESS_EVERY_S:
            log.info("top-%d of %d users in %.0f s", k, self.n_users, time.monotonic() - started)
        return cols, vals

    def use_precomputed(self, cols: np.ndarray, scores: np.ndarray) -> None:
        """Serve known users' top-k from ``precompute_top``'s arrays from now on."""
        self._top_cols, self._top_scores = cols, scores

    @property
    def precomputed(self) -> tuple[np.ndarray, np.ndarray] | None:
        if self._top_cols is None or self._top_scores is None:
            return None
        return self._top_cols, self._top_scores


@dataclass(frozen=True)
class Trainer(ABC):
    """Hyperparameters of one model; `fit` returns its `FittedRecommender`."""

    name: ClassVar[str]

    @abstractmethod
    def fit(
        self,
        interactions: pd.DataFrame,
        catalog: pd.DataFrame | None = None,
        trained_on: Mapping[str, Any] | None = None,
    ) -> FittedRecommender:
        """Train on interactions (feature-snapshot columns); ``trained_on`` is stored as-is."""

    def params(self) -> dict[str, Any]:
        """The hyperparameters as a JSON-ready dict (what MLflow logs, what the artefact keeps)."""
        return {
            f.name: (v.value if isinstance(v := getattr(self, f.name), Enum) else v)
            for f in dataclasses.fields(self)
        }

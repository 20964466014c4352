"""Input preparation shared by every trainer: validation, confidence weights, the matrix.

The item universe is the set of content ids that occur in the training interactions (a catalog
item nobody interacted with cannot be scored by a collaborative model; it becomes known at the
next training run). User and item ids are kept sorted, so index order is id order and ties are
broken towards the smaller content id.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recommenders.errors import TrainingDataError

# Display fields that travel with a model so a server can show titles without the feature store.
DISPLAY_COLUMNS = ["content_id", "title", "poster_path", "release_date", "vote_average"]

# Watch time that counts as "one full feature film" when turning seconds into confidence.
FULL_WATCH_SECONDS = 7200.0


class Weighting(str, Enum):
    """How an interaction enters a collaborative model's user-item matrix."""

    BINARY = "binary"  # 1 for every (user, item) seen: the classic implicit-feedback input
    CONFIDENCE = "confidence"  # `interaction_confidence`: more watch time / rating, more weight


def validate_interactions(interactions: pd.DataFrame) -> pd.DataFrame:
    """Check the columns a model trains on; return the frame with int64 ids.

    ``rating`` and ``watch_seconds`` are both optional and may hold nulls; a row with neither
    still counts as an interaction (confidence 1).
    """
    missing = {"user_id", "content_id"} - set(interactions.columns)
    if missing:
        raise TrainingDataError(f"interactions lack column(s) {sorted(missing)}")
    if interactions.empty:
        raise TrainingDataError("interactions are empty: nothing to train on")
    ids = interactions[["user_id", "content_id"]]
    if ids.isna().any().any():
        raise TrainingDataError("interactions have null user_id or content_id")
    try:
        out = interactions.assign(
            user_id=ids["user_id"].astype("int64"), content_id=ids["content_id"].astype("int64")
        )
    except (TypeError, ValueError) as err:
        raise TrainingDataError(f"user_id/content_id are not integers: {err}") from err
    return out


def interaction_confidence(interactions: pd.DataFrame, alpha: float = 1.0) -> np.ndarray:
    """Confidence of each interaction row: ``1 + alpha * strength``, strength in [0, ~1].

    strength is the mean of the signals a row has: ``watch_seconds / 7200`` (clipped to [0, 2],
    so a binge does not drown everything) and ``rating / max rating`` of the frame. A row with
    neither signal has strength 0 (it still happened).
    """
    n = len(interactions)
    parts: list[np.ndarray] = []
    if "watch_seconds" in interactions:
        watch = pd.to_numeric(interactions["watch_seconds"], errors="coerce").to_numpy(
            dtype=np.float64, na_value=np.nan
        )
        parts.append(np.clip(watch / FULL_WATCH_SECONDS, 0.0, 2.0))
    if "rating" in interactions:
        rating = pd.to_numeric(interactions["rating"], errors="coerce").to_numpy(
            dtype=np.float64, na_value=np.nan
        )
        top = np.nanmax(rating) if np.isfinite(rating).any() else 1.0
        parts.append(np.clip(rating / (top if top > 0 else 1.0), 0.0, 1.0))
    if not parts:
        return np.ones(n, dtype=np.float32)
    stacked = np.vstack(parts)
    present = np.isfinite(stacked)
    total = np.where(present, stacked, 0.0).sum(axis=0)
    count = present.sum(axis=0)
    strength = np.divide(total, count, out=np.zeros(n), where=count > 0)
    return (1.0 + alpha * strength).astype(np.float32)


@dataclass(frozen=True, eq=False)
class InteractionMatrix:
    """Training interactions as a CSR user x item matrix over sorted id universes."""

    user_ids: np.ndarray  # int64, sorted, unique
    item_ids: np.ndarray  # int64, sorted, unique
    matrix: sp.csr_matrix  # float32 weights; duplicate (user, item) rows are summed
    user_index: np.ndarray  # row index of every interaction row
    item_index: np.ndarray  # column index of every interaction row


def build_matrix(
    interactions: pd.DataFrame, weighting: Weighting, alpha: float = 1.0
) -> InteractionMatrix:
    """Index users and items and build the weighted user x item matrix."""
    frame = validate_interactions(interactions)
    user_ids, user_index = np.unique(frame["user_id"].to_numpy(), return_inverse=True)
    item_ids, item_index = np.unique(frame["content_id"].to_numpy(), return_inverse=True)
    if weighting is Weighting.BINARY:
        weights = np.ones(len(frame), dtype=np.float32)
    else:
        weights = interaction_confidence(frame, alpha)
    matrix = sp.csr_matrix(
        (weights, (user_index, item_index)),
        shape=(len(user_ids), len(item_ids)),
        dtype=np.float32,
    )
    matrix.sum_duplicates()
    if weighting is Weighting.BINARY:
        matrix.data[:] = 1.0
    matrix.sort_indices()
    return InteractionMatrix(user_ids, item_ids, matrix, user_index, item_index)


def item_popularity(matrix: sp.csr_matrix) -> np.ndarray:
    """Number of distinct users per item (float32): the popularity ranking and fallback."""
    return np.bincount(matrix.indices, minlength=matrix.shape[1]).astype(np.float32)


def display_catalog(catalog: pd.DataFrame | None, item_ids: np.ndarray) -> pd.DataFrame | None:
    """The display fields of the catalog rows of known items (None without a catalog)."""
    if catalog is None or "content_id" not in catalog:
        return None
    columns = [c for c in DISPLAY_COLUMNS if c in catalog.columns]
    rows = catalog.loc[catalog["content_id"].isin(item_ids), columns]
    return rows.drop_duplicates("content_id").sort_values("content_id").reset_index(drop=True)

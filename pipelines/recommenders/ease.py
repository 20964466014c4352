"""EASE: closed-form item-item ridge regression for implicit feedback (Steck, WWW 2019).

With X the user x item matrix (binary, or weighted by watch-time/rating confidence), EASE
learns the item-item matrix B minimising ``||X - X B||² + λ||B||²`` subject to ``diag(B) = 0``.
The solution is closed form: ``P = (XᵀX + λI)⁻¹``, ``B = -P / diag(P)`` (column-wise), with
the diagonal zeroed. A user's scores are ``x_u B``: the sum of the B rows of the items they saw.

Cost: one dense n_items x n_items Cholesky inverse (O(n³), float32, in place, ~0.4 GB at 10k
items) — independent of the number of users and interactions, which is why it trains 1M rows
in seconds. The artefact holds B (n_items² float32), so this model suits catalogs up to a few
tens of thousands of items; beyond that a low-rank model is the better trade.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import scipy.linalg.lapack as lapack
import scipy.sparse as sp

from pipelines.recommenders.base import (
    FittedRecommender,
    Trainer,
    Weighting,
    build_matrix,
    display_catalog,
    item_popularity,
)
from pipelines.recommenders.errors import TrainingDataError

log = logging.getLogger(__name__)

_SYMMETRISE_BLOCK = 1024


def ease_weights(gram: np.ndarray, lambda_: float) -> np.ndarray:
    """B from the Gram matrix XᵀX (float32, overwritten in place to save a copy)."""
    gram = np.asarray(gram, dtype=np.float32)
    if not gram.flags.f_contiguous:
        gram = gram.T  # symmetric: the transpose is the same matrix, in Fortran order, no copy
    gram[np.diag_indices_from(gram)] += lambda_
    chol, info = lapack.spotrf(gram, lower=0, overwrite_a=1, clean=0)
    if info != 0:
        raise TrainingDataError(f"EASE Gram matrix is not positive definite (info={info})")
    inv, info = lapack.spotri(chol, lower=0, overwrite_c=1)
    if info != 0:
        raise TrainingDataError(f"EASE inverse failed (info={info})")
    # spotri fills the upper triangle only; mirror it block by block (no n² index arrays).
    n = inv.shape[0]
    for start in range(0, n, _SYMMETRISE_BLOCK):
        stop = min(start + _SYMMETRISE_BLOCK, n)
        inv[start:stop, :start] = inv[:start, start:stop].T
        block = inv[start:stop, start:stop]
        lower = np.tril_indices(stop - start, -1)
        block[lower] = block.T[lower]
    inv = inv.T  # symmetric again: a C-ordered view, still no copy
    diag = np.diag(inv).copy()
    inv /= -diag[None, :]
    inv[np.diag_indices_from(inv)] = 0.0
    return inv


class FittedEASE(FittedRecommender):
    """Scores = profile @ B."""

    model_type = "ease"

    def _prepare(self) -> None:
        self.weights = np.ascontiguousarray(self.arrays["B"], dtype=np.float32)

    def _score_profiles(self, profiles: sp.csr_matrix) -> np.ndarray:
        if profiles.shape[0] == 1:
            # One user: a weighted sum of a few rows of B (gemv), no sparse machinery.
            return (profiles.data @ self.weights[profiles.indices])[None, :]
        return np.asarray(profiles @ self.weights, dtype=np.float32)


@dataclass(frozen=True)
class EASE(Trainer):
    """Hyperparameters: ridge strength and how interactions are weighted."""

    name: ClassVar[str] = "ease"
    # Chosen on a validation split carved out of ML-100k's training part (the test part was not
    # used): confidence weighting with λ=1000 and binary with λ=500 tie (NDCG@10 0.266 / 0.265).
    lambda_: float = 1000.0
    weighting: Weighting = Weighting.CONFIDENCE
    alpha: float = 1.0

    def fit(
        self,
        interactions: pd.DataFrame,
        catalog: pd.DataFrame | None = None,
        trained_on: Mapping[str, Any] | None = None,
    ) -> FittedEASE:
        data = build_matrix(interactions, Weighting(self.weighting), self.alpha)
        x = data.matrix
        gram = (x.T @ x).toarray().astype(np.float32, copy=False)
        log.info("EASE: inverting a %d x %d Gram matrix", *gram.shape)
        weights = ease_weights(gram, self.lambda_)
        del gram
        return FittedEASE(
            params=self.params(),
            user_ids=data.user_ids,
            item_ids=data.item_ids,
            seen=x,
            popularity=item_popularity(x),
            arrays={"B": weights},
            catalog=display_catalog(catalog, data.item_ids),
            trained_on=trained_on,
        )

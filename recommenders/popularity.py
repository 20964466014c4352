"""Popularity baseline: everyone gets the most-interacted items they have not seen yet."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recommenders.base import FittedRecommender, Trainer
from recommenders.data import Weighting, build_matrix, display_catalog, item_popularity


class FittedPopularity(FittedRecommender):
    """Scores every item by its number of distinct users in training."""

    model_type = "popularity"

    def _score_profiles(self, profiles: sp.csr_matrix) -> np.ndarray:
        return np.tile(self.popularity, (profiles.shape[0], 1))


@dataclass(frozen=True)
class Popularity(Trainer):
    """The baseline every other model must beat."""

    name: ClassVar[str] = "popularity"

    def fit(
        self,
        interactions: pd.DataFrame,
        catalog: pd.DataFrame | None = None,
        trained_on: Mapping[str, Any] | None = None,
    ) -> FittedPopularity:
        data = build_matrix(interactions, Weighting.BINARY)
        return FittedPopularity(
            params=self.params(),
            user_ids=data.user_ids,
            item_ids=data.item_ids,
            seen=data.matrix,
            popularity=item_popularity(data.matrix),
            arrays={},
            catalog=display_catalog(catalog, data.item_ids),
            trained_on=trained_on,
        )

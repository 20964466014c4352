"""Numpy recommenders and the model artefact format that training and serving share.

Train::

    fitted = get_trainer(BEST_MODEL).fit(interactions, catalog, trained_on={...})
    save(fitted, directory)

Serve (KServe predictor, MLflow pyfunc)::

    model = load(directory)               # verifies checksums, numpy only
    model.recommend(user_id=42, k=10)     # or history=[...], or recommend_many(...)

Depends on numpy, scipy, pandas (and `contracts`) only: the predictor image carries this
package and nothing of the batch stages.
"""

from __future__ import annotations

from recommenders.artifact import load, save, verify_artifact
from recommenders.base import FittedRecommender, Recommendation, Trainer
from recommenders.data import Weighting, interaction_confidence
from recommenders.ease import EASE, FittedEASE
from recommenders.errors import UnknownModelError
from recommenders.movie_predictor import FittedMoviePredictor, MoviePredictor
from recommenders.popularity import FittedPopularity, Popularity
from recommenders.registry import BEST_MODEL, FITTED, MODELS, get_trainer

__all__ = [
    "BEST_MODEL",
    "EASE",
    "FITTED",
    "MODELS",
    "FittedEASE",
    "FittedMoviePredictor",
    "FittedPopularity",
    "FittedRecommender",
    "MoviePredictor",
    "Popularity",
    "Recommendation",
    "Trainer",
    "UnknownModelError",
    "Weighting",
    "get_trainer",
    "interaction_confidence",
    "load",
    "save",
    "verify_artifact",
]

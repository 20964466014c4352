"""Numpy recommenders and the model artefact format that training and serving share.

Train::

    fitted = MODELS[BEST_MODEL]().fit(interactions, catalog, trained_on={...})
    fitted.save(directory)

Serve (KServe predictor, MLflow pyfunc)::

    model = load(directory)               # verifies checksums, numpy only
    model.recommend(user_id=42, k=10)     # or history=[...], or recommend_many(...)
"""

from __future__ import annotations

from pipelines.recommenders.artifact import load, save, verify_artifact
from pipelines.recommenders.base import (
    FittedRecommender,
    Recommendation,
    Trainer,
    Weighting,
    interaction_confidence,
)
from pipelines.recommenders.ease import EASE, FittedEASE
from pipelines.recommenders.errors import UnknownModelError
from pipelines.recommenders.movie_predictor import FittedMoviePredictor, MoviePredictor
from pipelines.recommenders.popularity import FittedPopularity, Popularity

# name -> trainer class; `MODELS[name](**params).fit(...)`.
MODELS: dict[str, type[Trainer]] = {
    Popularity.name: Popularity,
    MoviePredictor.name: MoviePredictor,
    EASE.name: EASE,
}
# model_type in recommender.json -> scoring class; `load` dispatches on it.
FITTED: dict[str, type[FittedRecommender]] = {
    cls.model_type: cls for cls in (FittedPopularity, FittedMoviePredictor, FittedEASE)
}
# Chosen by measurement (docs in pipelines.evaluate; numbers in the bench output).
BEST_MODEL = EASE.name


def get_trainer(name: str, **params: object) -> Trainer:
    """The trainer registered under ``name``, with ``params`` overriding its defaults."""
    try:
        cls = MODELS[name]
    except KeyError as err:
        known = ", ".join(sorted(MODELS))
        raise UnknownModelError(f"unknown model {name!r} (known: {known})") from err
    return cls(**params)  # type: ignore[arg-type]


__all__ = [
    "BEST_MODEL",
    "EASE",
    "FITTED",
    "MODELS",
    "FittedRecommender",
    "MoviePredictor",
    "Popularity",
    "Recommendation",
    "Trainer",
    "Weighting",
    "get_trainer",
    "interaction_confidence",
    "load",
    "save",
    "verify_artifact",
]

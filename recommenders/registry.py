"""The model types: name -> trainer class, model_type -> scoring class.

`recommenders.artifact.load` dispatches on ``FITTED``; training and evaluation on ``MODELS``.
A new model registers here (see `popularity`, the smallest).
"""

from __future__ import annotations

from recommenders.base import FittedRecommender, Trainer
from recommenders.ease import EASE, FittedEASE
from recommenders.errors import UnknownModelError
from recommenders.movie_predictor import FittedMoviePredictor, MoviePredictor
from recommenders.popularity import FittedPopularity, Popularity

# name -> trainer class; `MODELS[name](**params).fit(...)`.
MODELS: dict[str, type[Trainer]] = {
    Popularity.name: Popularity,
    MoviePredictor.name: MoviePredictor,
    EASE.name: EASE,
}
# model_type in recommender.json -> scoring class.
FITTED: dict[str, type[FittedRecommender]] = {
    cls.model_type: cls for cls in (FittedPopularity, FittedMoviePredictor, FittedEASE)
}
# Chosen by measurement (`python -m pipelines.evaluate`; numbers in the README).
BEST_MODEL = EASE.name


def get_trainer(name: str, **params: object) -> Trainer:
    """The trainer registered under ``name``, with ``params`` overriding its defaults."""
    try:
        cls = MODELS[name]
    except KeyError as err:
        known = ", ".join(sorted(MODELS))
        raise UnknownModelError(f"unknown model {name!r} (known: {known})") from err
    return cls(**params)  # type: ignore[arg-type]

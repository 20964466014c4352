"""The project's counters, next to KServe's own histograms on the same ``/metrics``.

KServe serves ``prometheus_client.REGISTRY`` on ``/metrics``; `Metrics` registers there unless
given another registry (unit tests), and only when constructed — never at import.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter


@dataclass(frozen=True)
class Metrics:
    """``movie_recommender_{predictions,fallbacks,rejected_requests}_total``."""

    predictions: Counter
    fallbacks: Counter
    rejected: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry = REGISTRY) -> Metrics:
        return cls(
            predictions=Counter(
                "movie_recommender_predictions",
                "Predictions served (one per instance), by model version.",
                ["model_version"],
                registry=registry,
            ),
            fallbacks=Counter(
                "movie_recommender_fallbacks",
                "Predictions answered with the popularity fallback, by model version.",
                ["model_version"],
                registry=registry,
            ),
            rejected=Counter(
                "movie_recommender_rejected_requests",
                "Requests refused with a 4xx, by reason.",
                ["reason"],
                registry=registry,
            ),
        )

"""The project's metrics, next to KServe's own histograms on the same ``/metrics``.

KServe serves ``prometheus_client.REGISTRY`` on ``/metrics``; `Metrics` registers there unless
given another registry (unit tests), and only when constructed — never at import.

KServe's histograms carry only ``model_name``, so two revisions of one InferenceService (a
canary and its stable) cannot be told apart by them. Every series here carries
``model_version``: the canary analysis (`pipelines.rollout.analysis`) compares arms by it.
``movie_recommender_request_seconds`` times each inference request (V1 predict, V2 infer)
from its first byte to its last, whatever its status; ``movie_recommender_responses_total``
counts them by status class (``2xx``, ``4xx``, ``5xx``). Both are created at zero for the
served version at load, so a fresh revision's first failures are counted by ``increase()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from contracts.monitoring import CODE_CLASSES, REQUEST_BUCKETS, code_class


@dataclass
class Metrics:
    """``movie_recommender_{predictions,fallbacks,rejected_requests,responses}_total`` and
    ``movie_recommender_request_seconds``, all by ``model_version``."""

    predictions: Counter
    fallbacks: Counter
    rejected: Counter
    request_seconds: Histogram
    responses: Counter
    version: str = field(default="")  # the served version, set by `bind` once loaded

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
                "Requests refused with a 4xx, by reason and model version.",
                ["reason", "model_version"],
                registry=registry,
            ),
            request_seconds=Histogram(
                "movie_recommender_request_seconds",
                "Inference requests (V1 predict, V2 infer), first byte to last, by model version.",
                ["model_version"],
                buckets=REQUEST_BUCKETS,
                registry=registry,
            ),
            responses=Counter(
                "movie_recommender_responses",
                "Inference responses by model version and status class (2xx, 4xx, 5xx).",
                ["model_version", "code"],
                registry=registry,
            ),
        )

    def bind(self, version: str) -> None:
        """Name the served version and create its request series at zero."""
        self.version = version
        self.request_seconds.labels(model_version=version)
        for code in CODE_CLASSES:
            self.responses.labels(model_version=version, code=code)

    def observe(self, seconds: float, status: int) -> None:
        """One inference request answered with ``status`` after ``seconds``."""
        self.request_seconds.labels(model_version=self.version).observe(seconds)
        self.responses.labels(model_version=self.version, code=code_class(status)).inc()

"""Metric names that cross a component boundary: who exports them, and who queries them.

The predictor exports the ``movie_recommender_*`` series (labelled ``model_version``), the event
sink the ``movie_mlops_*`` ones, the local ingress ``movie_mlops_ingress_*``. The canary
analysis (`pipelines.rollout.analysis`) queries them through Prometheus's HTTP API, with the
same PromQL on one machine and in a cluster.
"""

from __future__ import annotations

# predictor (model_server.metrics)
REQUEST_SECONDS = "movie_recommender_request_seconds"  # histogram {model_version}
RESPONSES = "movie_recommender_responses_total"  # counter {model_version, code="2xx"|"4xx"|"5xx"}
PREDICTIONS = "movie_recommender_predictions_total"  # counter {model_version}
FALLBACKS = "movie_recommender_fallbacks_total"  # counter {model_version}
REJECTED = "movie_recommender_rejected_requests_total"  # counter {reason, model_version}
# Buckets of the request histogram (seconds): fine where predictions live (5 ms .. 1 s).
REQUEST_BUCKETS = (
    0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5,
    2.5, 5.0, 10.0,
)  # fmt: skip
CODE_CLASSES = ("2xx", "4xx", "5xx")

# event sink (contract of #11 and #12)
FEEDBACK = "movie_mlops_feedback_total"  # counter {event="impression"|"click", model_version}

# local ingress (localstack.ingress, GET /__local/metrics on loopback only)
INGRESS_REQUESTS = "movie_mlops_ingress_requests_total"  # counter {revision, model_version, code}

# Prometheus job names of the scrape targets (local config; the cluster's PodMonitors)
JOB_MODEL_SERVER = "model-server"
JOB_INGRESS = "ingress"
JOB_EVENTS = "event-sink"


def code_class(status: int) -> str:
    """``"2xx"`` for 200..299 and so on (``"5xx"`` for anything >= 500 or unknown)."""
    return f"{status // 100}xx" if 100 <= status < 500 else "5xx"

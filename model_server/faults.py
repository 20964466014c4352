"""Test-only faults of the predictor, and the timing of every inference request.

**For tests and demos only — never set these in a real deployment.** They exist so that a
canary revision can be started deliberately bad and the canary analysis can be seen (and
tested) rolling it back:

- ``MODEL_SERVER_FAULT_ERROR_RATE`` / ``--fault_error_rate`` (0..1): that share of inference
  requests is answered ``500`` without reaching the model;
- ``MODEL_SERVER_FAULT_LATENCY_MS`` / ``--fault_latency_ms``: every inference request waits
  that long first.

The local InferenceService passes them to a revision like any container environment
(``python -m pipelines.rollout canary --version N --fault-error-rate 0.05``, local target only;
the cluster's admission policy refuses such a change from the rollout ServiceAccount).

`RequestTiming` sits outside `FaultInjection`, so injected failures and delays are measured
like real ones (``movie_recommender_request_seconds``, ``…_responses_total{code}``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
from collections.abc import Callable
from typing import Any

from contracts.names import VERSION_HEADER

log = logging.getLogger(__name__)

_INFERENCE = re.compile(r"/v1/models/[^/]+:predict|/v2/models/[^/]+/infer")


def is_inference(scope: dict[str, Any]) -> bool:
    return (
        scope["type"] == "http"
        and scope["method"] == "POST"
        and _INFERENCE.fullmatch(scope["path"]) is not None
    )


class RequestTiming:
    """Observes every inference request's duration and status class (`Metrics.observe`)."""

    def __init__(self, app: Any, observe: Callable[[float, int], None]) -> None:
        self.app = app
        self.observe = observe

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not is_inference(scope):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception before the response started: the client gets a 500

        async def timed_send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            self.observe(time.perf_counter() - started, status)


class FaultInjection:
    """Fails a share of inference requests with 500 and/or delays them (tests and demos only)."""

    def __init__(
        self, app: Any, error_rate: float, latency_ms: float, version: Callable[[], str]
    ) -> None:
        self.app = app
        self.error_rate = error_rate
        self.latency_s = latency_ms / 1000.0
        self.version = version
        self._random = random.Random()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not is_inference(scope):
            await self.app(scope, receive, send)
            return
        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        if self.error_rate > 0 and self._random.random() < self.error_rate:
            body = json.dumps(
                {"error": "injected fault (MODEL_SERVER_FAULT_ERROR_RATE, tests only)"}
            ).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (VERSION_HEADER.lower().encode(), self.version().encode()),
            ]
            await send({"type": "http.response.start", "status": 500, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)

"""An InferenceService held in memory, reconciled at once with KServe's traffic rules.

A stand-in for the Kubernetes API plus KServe's controller (both outside this project) in fast
tests of `pipelines.rollout`: every write bumps the generation, a changed predictor template
creates a revision that is ready at once (or never, when its ``STORAGE_URI`` is in ``failing``),
and traffic follows ``ksvc_reconciler.go``: the latest ready revision gets
``canaryTrafficPercent`` and the last rolled-out one the rest; the rolled-out revision moves
only when the latest ready one has 100 %.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from typing import Any

_SCALING = {"canaryTrafficPercent", "minReplicas", "maxReplicas", "scaleTarget"}


class InMemoryBackend:
    def __init__(self, failing: set[str] | None = None) -> None:
        self.isvc: dict[str, Any] | None = None
        self.revisions: list[dict[str, Any]] = []  # name, hash, version, ready
        self.rolled_out: dict[str, Any] | None = None
        self.failing = failing or set()
        self.writes = 0

    def lock(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def get(self) -> dict[str, Any] | None:
        return None if self.isvc is None else copy.deepcopy(self.isvc)

    def apply(self, isvc: dict[str, Any]) -> dict[str, Any]:
        self.writes += 1
        isvc = copy.deepcopy(isvc)
        meta = isvc.setdefault("metadata", {})
        meta["generation"] = int(meta.get("generation", 0)) + 1
        self.isvc = isvc
        self._reconcile()
        return copy.deepcopy(isvc)

    def status(self) -> dict[str, Any] | None:
        return None if self.isvc is None else copy.deepcopy(self.isvc.get("status"))

    def _reconcile(self) -> None:
        assert self.isvc is not None
        predictor = self.isvc["spec"]["predictor"]
        template = {k: v for k, v in predictor.items() if k not in _SCALING}
        digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()
        env = {e["name"]: e.get("value") for e in predictor["containers"][0].get("env", [])}
        if not self.revisions or self.revisions[-1]["hash"] != digest:
            self.revisions.append(
                {
                    "name": f"predictor-{len(self.revisions) + 1:05d}",
                    "hash": digest,
                    "version": env.get("MODEL_VERSION"),
                    "ready": env.get("STORAGE_URI") not in self.failing,
                }
            )
        latest = self.revisions[-1]
        ready = [r for r in self.revisions if r["ready"]]
        latest_ready = ready[-1] if ready else None
        percent = predictor.get("canaryTrafficPercent")
        if latest_ready is None:
            traffic = []
        elif self.rolled_out is None or percent is None or percent >= 100:
            traffic = [(latest_ready, 100)]
        else:
            traffic = [(latest_ready, int(percent)), (self.rolled_out, 100 - int(percent))]
        traffic = [(r, p) for r, p in traffic if p > 0] or traffic[:1]
        if traffic and traffic[0][1] == 100:
            self.rolled_out = traffic[0][0]
        ready_now = latest["ready"]
        self.isvc["status"] = {
            "observedGeneration": self.isvc["metadata"]["generation"],
            "conditions": [
                {"type": "Ready", "status": "True" if traffic else "False"},
                {
                    "type": "LatestDeploymentReady",
                    "status": "True" if ready_now else "False",
                    "message": "" if ready_now else "revision failed to become ready",
                },
            ],
            "components": {
                "predictor": {
                    "latestCreatedRevision": latest["name"],
                    "latestReadyRevision": latest_ready["name"] if latest_ready else None,
                    "latestRolledoutRevision": self.rolled_out["name"] if self.rolled_out else None,
                    "traffic": [
                        {"revisionName": r["name"], "percent": p, "modelVersion": r["version"]}
                        for r, p in traffic
                    ],
                }
            },
        }

    def served(self) -> dict[str, int]:
        """model version -> percent summed over the status's traffic entries (a failed canary
        leaves two entries, P and 100 - P, both on the old revision, as Knative does)."""
        served: dict[str, int] = {}
        for t in self.status()["components"]["predictor"]["traffic"]:  # type: ignore[index]
            served[t["modelVersion"]] = served.get(t["modelVersion"], 0) + t["percent"]
        return served

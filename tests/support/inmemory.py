"""An InferenceService held in memory, reconciled at once by the twin's KServe/Knative logic.

A stand-in for the Kubernetes API (outside this project) in fast tests of `pipelines.rollout`:
a write that changes the spec bumps the generation (an unchanged one does not, as the API
server), and the status is what `localstack.kserve.reconcile` — the local controller's pure
core, checked against upstream in ``tests/unit/test_twin_conformance.py`` — computes, with every
revision ready at once (or failed, when its ``STORAGE_URI`` is in ``failing``).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

from localstack.kserve import KServeState, RevisionHealth, reconcile

_READY = RevisionHealth(ready="True", serving=True)
_FAILED = RevisionHealth(ready="False", message="revision failed to become ready")


class InMemoryBackend:
    def __init__(self, failing: set[str] | None = None) -> None:
        self.isvc: dict[str, Any] | None = None
        self.kserve = KServeState()
        self.revisions: dict[str, dict[str, str | None]] = {}  # name -> version, storage URI
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
        old = self.isvc or {}
        generation = int((old.get("metadata") or {}).get("generation", 0))
        meta["generation"] = generation + (old.get("spec") != isvc.get("spec"))
        isvc["status"] = old.get("status")
        self.isvc = isvc
        self._reconcile()
        return copy.deepcopy(isvc)

    def status(self) -> dict[str, Any] | None:
        return None if self.isvc is None else copy.deepcopy(self.isvc.get("status"))

    def _health(self) -> dict[str, RevisionHealth]:
        return {
            name: _FAILED if r["uri"] in self.failing else _READY
            for name, r in self.revisions.items()
        }

    def _reconcile(self) -> None:
        assert self.isvc is not None
        reconcile(self.kserve, self.isvc, self._health())
        env = {
            e["name"]: e.get("value")
            for e in self.isvc["spec"]["predictor"]["containers"][0].get("env", [])
        }
        for name, _ in self.kserve.revisions:
            self.revisions.setdefault(
                name, {"version": env.get("MODEL_VERSION"), "uri": env.get("STORAGE_URI")}
            )
        status = reconcile(self.kserve, self.isvc, self._health())
        for entry in status["components"]["predictor"]["traffic"]:
            entry["modelVersion"] = self.revisions[entry["revisionName"]]["version"]
        self.isvc["status"] = status

    def served(self) -> dict[str, int]:
        """model version -> percent summed over the status's traffic entries (a failed canary
        leaves two entries, P and 100 - P, both on the old revision, as Knative does)."""
        served: dict[str, int] = {}
        for t in self.status()["components"]["predictor"]["traffic"]:  # type: ignore[index]
            if t["percent"]:
                served[t["modelVersion"]] = served.get(t["modelVersion"], 0) + t["percent"]
        return served

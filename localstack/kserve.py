"""What KServe's InferenceService controller and Knative Serving compute: pure functions of the
InferenceService, the revisions' readiness and the previous status — no processes, no I/O.

`localstack.controller` runs the revisions and calls `reconcile` every tick; the unit tests
(``tests/unit/test_twin_conformance.py``) drive the same function through the sequences the
upstream reconcilers handle. Sources read (pinned tags):

* KServe v0.20.0 ``pkg/controller/v1beta1/inferenceservice/reconcilers/knative/ksvc_reconciler.go``
  l.102-121 (the InferenceService's annotations, autoscaling ones derived from min/maxReplicas
  and scaleTarget, become the Knative Service's *template* annotations: changing any of them
  makes a new revision) and l.132-165 (the traffic targets: `traffic_targets`);
* KServe v0.20.0 ``pkg/controller/v1beta1/inferenceservice/components/predictor.go`` l.100-102
  (metadata annotations minus ``serviceAnnotationDisallowedList``, ``pkg/constants/constants.go``
  l.534-540);
* KServe v0.20.0 ``pkg/apis/serving/v1beta1/inference_service_status.go`` l.567-636
  (``PropagateStatus``: `propagate_status`), l.271-298 (which condition goes where; ``Ready`` is
  the living set of PredictorReady and IngressReady) and l.546-565 (RoutesReady /
  LatestDeploymentReady across components); ``controller.go`` l.340-352;
  ``reconcilers/ingress/ingress_reconciler.go`` l.103-121 (IngressReady once the URL is known);
* Knative Serving knative-v1.21.1 ``pkg/reconciler/configuration/configuration.go`` l.95-125 and
  ``pkg/apis/serving/v1/configuration_lifecycle.go`` l.76-82 (the Configuration is Ready as its
  latest *created* revision is: Unknown while it starts, False when it failed; the latest ready
  revision stays where it was), ``pkg/reconciler/route/traffic/errors.go`` l.60-85 (a route whose
  configuration has no ready revision is not ready: Unknown, or False when it failed) and
  ``pkg/apis/serving/v1/service_lifecycle.go`` l.33-36 (the Service is Ready when its
  configuration and route are); a ``latestRevision: true`` target resolves to the latest *ready*
  revision.

Where the twin adds to upstream (it runs processes, not pods): a routed revision whose process is
down right now (the kubelet restarting it) makes PredictorReady/Ready False, naming it, and the
traffic entries carry ``modelVersion`` and ``ready`` besides Knative's fields.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ENABLE_TAG_ROUTING = "serving.kserve.io/enable-tag-routing"  # constants.go l.116
# constants.ServiceAnnotationDisallowedList (constants.go l.534-540): never copied to the template
DISALLOWED_ANNOTATIONS = frozenset(
    {
        "autoscaling.knative.dev/min-scale",
        "autoscaling.knative.dev/max-scale",
        "internal.serving.kserve.io/storage-initializer-sourceuri",
        "kubectl.kubernetes.io/last-applied-configuration",
        "modelFormat",
    }
)
# managedKsvcAnnotations (ksvc_reconciler.go l.50-54): on the ksvc itself, not its template
KSVC_ANNOTATIONS = frozenset(
    {"serving.knative.dev/rollout-duration", "serving.knative.openshift.io/enablePassthrough"}
)
# componentExt fields that are not part of the revision template (the traffic split)
_NOT_TEMPLATE = frozenset({"canaryTrafficPercent"})

TRUE, FALSE, UNKNOWN = "True", "False", "Unknown"


@dataclass(frozen=True)
class RevisionHealth:
    """What Knative and the kubelet say about one revision.

    ``ready``: the Revision's Ready condition (True once it was ready — Knative's latest ready
    revision is sticky —, False when it failed, Unknown while it starts). ``serving``: its
    process answers its readiness probe right now (the twin's kubelet part).
    """

    ready: str = UNKNOWN
    serving: bool = False
    message: str = ""


@dataclass
class KServeState:
    """The objects the two controllers keep between reconciles (survives a restart)."""

    revisions: list[tuple[str, str]] = field(default_factory=list)  # (name, template) by age
    generation: int = 0  # the Knative Service's metadata.generation
    template: str | None = None  # the ksvc's spec.template, hashed
    traffic: list[dict[str, Any]] = field(default_factory=list)  # the ksvc's spec.traffic
    latest_rolled_out: str | None = None  # status.components.predictor.latestRolledoutRevision
    previous_rolled_out: str | None = None  # …previousRolledoutRevision
    url: bool = False  # status.components.predictor.url is set (the ksvc was Ready once)

    def record(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "template": self.template,
            "traffic": self.traffic,
            "url": self.url,
        }

    def restore(self, record: Mapping[str, Any]) -> None:
        self.generation = int(record.get("generation") or 0)
        self.template = record.get("template")
        self.traffic = list(record.get("traffic") or [])
        self.url = bool(record.get("url"))


def template_annotations(isvc: Mapping[str, Any]) -> dict[str, str]:
    """The InferenceService's annotations as the revision template carries them."""
    annotations = (isvc.get("metadata") or {}).get("annotations") or {}
    return {
        k: str(v)
        for k, v in annotations.items()
        if k not in DISALLOWED_ANNOTATIONS and k not in KSVC_ANNOTATIONS
    }


def template_hash(isvc: Mapping[str, Any]) -> str:
    """The Knative revision template: the predictor (pod spec, min/maxReplicas and scaleTarget
    as autoscaling annotations, timeouts) and the copied annotations — all but the split."""
    predictor = ((isvc.get("spec") or {}).get("predictor")) or {}
    template = {
        "predictor": {k: v for k, v in predictor.items() if k not in _NOT_TEMPLATE},
        "annotations": template_annotations(isvc),
    }
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:12]


def traffic_targets(isvc: Mapping[str, Any], latest_rolled_out: str | None) -> list[dict[str, Any]]:
    """The Knative Service's ``spec.traffic`` (ksvc_reconciler.go l.132-165)."""
    percent = (((isvc.get("spec") or {}).get("predictor")) or {}).get("canaryTrafficPercent")
    tagged = template_annotations(isvc).get(ENABLE_TAG_ROUTING) == "true"
    latest: dict[str, Any] = {"latestRevision": True, "percent": 100}
    if tagged:
        latest["tag"] = "latest"
    if percent is None or not latest_rolled_out:  # "blue-green": the first rollout ignores P
        return [latest]
    latest["percent"] = int(percent)
    targets = [latest]
    if int(percent) < 100:
        targets.append(
            {
                "revisionName": latest_rolled_out,
                "latestRevision": False,
                "percent": 100 - int(percent),
                "tag": "prev",
            }
        )
    return targets


def _condition(kind: str, status: str, reason: str = "", message: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"type": kind, "status": status}
    if reason:
        out["reason"] = reason
    if message:
        out["message"] = message
    return out


def _living(kind: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """A living condition set's happy condition: False if one is, else Unknown, else True."""
    for wanted in (FALSE, UNKNOWN):
        for part in parts:
            if part["status"] == wanted:
                return _condition(kind, wanted, part.get("reason", ""), part.get("message", ""))
    return _condition(kind, TRUE)


def knative_status(state: KServeState, health: Mapping[str, RevisionHealth]) -> dict[str, Any]:
    """The Knative Service's status for its spec in ``state`` and the revisions' health."""
    created = state.revisions[-1][0] if state.revisions else None
    ready_names = [n for n, _ in state.revisions if health.get(n, RevisionHealth()).ready == TRUE]
    latest_ready = ready_names[-1] if ready_names else None
    mine = health.get(created or "", RevisionHealth())
    if created is None:
        config = _condition("ConfigurationsReady", UNKNOWN, "NoRevision")
    elif mine.ready == FALSE:
        config = _condition(
            "ConfigurationsReady",
            FALSE,
            "RevisionFailed",
            f"Revision {created!r} failed with message: {mine.message}.",
        )
    elif created == latest_ready:
        config = _condition("ConfigurationsReady", TRUE)
    else:
        config = _condition("ConfigurationsReady", UNKNOWN, "", f"Revision {created!r} not ready")
    traffic: list[dict[str, Any]] = []
    if latest_ready is None:
        failed = config["status"] == FALSE
        route = _condition(
            "RoutesReady",
            FALSE if failed else UNKNOWN,
            "RevisionFailed" if failed else "RevisionMissing",
            "Configuration does not have any ready Revision.",
        )
    else:
        route = _condition("RoutesReady", TRUE)
        for target in state.traffic:
            entry = copy.deepcopy(target)
            if target.get("latestRevision"):
                entry["revisionName"] = latest_ready
            traffic.append(entry)
    return {
        "observedGeneration": state.generation,
        "latestCreatedRevisionName": created,
        "latestReadyRevisionName": latest_ready,
        "traffic": traffic,
        "conditions": [
            _living("Ready", [config, route]),
            config,
            route,
        ],
    }


def propagate_status(state: KServeState, ksvc: Mapping[str, Any]) -> None:
    """``PropagateStatus``'s rolled-out bookkeeping (inference_service_status.go l.575-606)."""
    latest_ready, created = ksvc["latestReadyRevisionName"], ksvc["latestCreatedRevisionName"]
    by_revision: dict[str, int] = {}
    for t in ksvc["traffic"]:
        by_revision[t["revisionName"]] = by_revision.get(t["revisionName"], 0) + t["percent"]
    for t in ksvc["traffic"]:
        if t["revisionName"] != latest_ready or not t.get("latestRevision"):
            continue
        if state.latest_rolled_out != latest_ready:
            if t["percent"] == 100:  # l.585-590: track the last revision fully rolled out
                state.previous_rolled_out = state.latest_rolled_out
                state.latest_rolled_out = latest_ready
        elif (
            latest_ready == created
            and t["percent"] < 100
            and by_revision.get(t["revisionName"]) == 100
            and state.previous_rolled_out
        ):
            # l.591-603: rolled out at 100 % and then given less with no new revision: both
            # targets name the same revision, so route the rest to the previous rolled-out one
            state.latest_rolled_out = state.previous_rolled_out
    if next(c for c in ksvc["conditions"] if c["type"] == "Ready")["status"] == TRUE:
        state.url = True  # l.612-620: the URL is copied once the ksvc is Ready


def _step(
    state: KServeState, isvc: Mapping[str, Any], health: Mapping[str, RevisionHealth]
) -> dict[str, Any]:
    """One reconcile of the InferenceService: write the ksvc, observe it, propagate."""
    name = (isvc.get("metadata") or {}).get("name") or "isvc"
    template = template_hash(isvc)
    targets = traffic_targets(isvc, state.latest_rolled_out)
    if template != state.template or targets != state.traffic:
        state.generation += 1  # the API server bumps it on a spec change only
    if template != state.template:  # Knative's Configuration stamps a new revision
        state.revisions.append((f"{name}-predictor-{len(state.revisions) + 1:05d}", template))
        state.template = template
    state.traffic = targets
    ksvc = knative_status(state, health)
    propagate_status(state, ksvc)
    return ksvc


def reconcile(
    state: KServeState, isvc: Mapping[str, Any], health: Mapping[str, RevisionHealth]
) -> dict[str, Any]:
    """The InferenceService's status once the controllers have settled (``state`` is updated).

    A status change requeues the InferenceService (controller.go watches it without a
    predicate), so the ksvc is rewritten with the new rolled-out revision at once; this runs
    those reconciles until nothing changes.
    """
    for _ in range(4):
        before = (state.latest_rolled_out, state.previous_rolled_out)
        ksvc = _step(state, isvc, health)
        if (state.latest_rolled_out, state.previous_rolled_out) == before:
            break
    return isvc_status(state, ksvc, health)


def isvc_status(
    state: KServeState, ksvc: Mapping[str, Any], health: Mapping[str, RevisionHealth]
) -> dict[str, Any]:
    """The InferenceService's ``status`` (PropagateStatus l.575-636 and the conditions)."""
    conditions = {c["type"]: c for c in ksvc["conditions"]}
    predictor_ready = dict(conditions["Ready"], type="PredictorReady")
    down = [
        t["revisionName"]
        for t in ksvc["traffic"]
        if t["percent"] > 0 and not health.get(t["revisionName"], RevisionHealth()).serving
    ]
    if predictor_ready["status"] == TRUE and down:  # the twin's kubelet: a routed one is down
        names = ", ".join(dict.fromkeys(down))
        details = "; ".join(
            f"{n}: {health[n].message}"
            for n in dict.fromkeys(down)
            if n in health and health[n].message
        )
        predictor_ready = _condition(
            "PredictorReady",
            FALSE,
            "RevisionUnavailable",
            f"{names} not serving. {details}".strip(),
        )
    ingress = _condition("IngressReady", TRUE) if state.url else _condition("IngressReady", UNKNOWN)
    route = dict(conditions["RoutesReady"], type="PredictorRouteReady")
    config = dict(conditions["ConfigurationsReady"], type="PredictorConfigurationReady")
    return {
        "observedGeneration": ksvc["observedGeneration"],
        "conditions": [
            _living("Ready", [predictor_ready, ingress]),
            predictor_ready,
            ingress,
            dict(route, type="RoutesReady"),
            dict(config, type="LatestDeploymentReady"),
            route,
            config,
        ],
        "components": {
            "predictor": {
                "latestCreatedRevision": ksvc["latestCreatedRevisionName"],
                "latestReadyRevision": ksvc["latestReadyRevisionName"],
                "latestRolledoutRevision": state.latest_rolled_out,
                "previousRolledoutRevision": state.previous_rolled_out,
                "traffic": copy.deepcopy(list(ksvc["traffic"])),
            }
        },
    }

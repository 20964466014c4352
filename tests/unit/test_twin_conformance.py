"""The local twin's InferenceService status against what KServe v0.20.0 and Knative 1.21 compute.

Each case is a sequence of InferenceService specs, each with the readiness of the revisions at
that point, and the status upstream reaches once its reconcilers settle. The expectations were
worked out by hand from the upstream sources, not from the twin:

* ``pkg/controller/v1beta1/inferenceservice/reconcilers/knative/ksvc_reconciler.go`` l.132-165:
  with ``canaryTrafficPercent`` P and a rolled-out revision, ``[{latestRevision, P, tag latest
  (only with serving.kserve.io/enable-tag-routing: "true")}, {latestRolledoutRevision, 100-P,
  tag prev} (only if P < 100)]``; otherwise ``[{latestRevision, 100, tag latest?}]``;
  l.102-121 and ``components/predictor.go`` l.100-102: annotations (minus the disallowed list,
  ``pkg/constants/constants.go`` l.534-540) and min/maxReplicas are in the revision template;
* ``pkg/apis/serving/v1beta1/inference_service_status.go`` ``PropagateStatus`` l.567-636: the
  rolled-out revision moves only when the latest ready one has 100 %; a split over one revision
  after a promote falls back to ``previousRolledoutRevision`` (l.592-603), leaving it unchanged;
  ``observedGeneration`` is the Knative Service's (l.635); conditions l.271-298, 546-565;
* Knative ``configuration.go`` l.95-125 / ``route/traffic/errors.go`` l.60-85: a
  ``latestRevision`` target resolves to the latest *ready* revision; the configuration (hence
  LatestDeploymentReady, PredictorReady, Ready) is Unknown while the latest created revision
  starts and False when it failed.

The function under test is the one `localstack.controller.Controller` runs every tick.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import pytest

from localstack.kserve import KServeState, RevisionHealth, reconcile

NAME = "movie-recommender"
R1, R2, R3 = (f"{NAME}-predictor-0000{i}" for i in (1, 2, 3))
TAGS = "serving.kserve.io/enable-tag-routing"
STEP = "movie-mlops.io/canary-step-percent"

OK = RevisionHealth(ready="True", serving=True)
STARTING = RevisionHealth(ready="Unknown")
FAILED = RevisionHealth(ready="False", message="model server exited with 1 before it was ready")
CRASHED = RevisionHealth(ready="True", serving=False, message="model server exited (exit -9)")


def isvc(
    version: str, percent: int | None = None, *, tags: bool = True, **extra: Any
) -> dict[str, Any]:
    annotations = {"serving.kserve.io/deploymentMode": "Knative", STEP: "50"}
    if tags:
        annotations[TAGS] = "true"
    annotations.update(extra.pop("annotations", {}))
    predictor: dict[str, Any] = {
        "minReplicas": 1,
        "containers": [
            {
                "name": "kserve-container",
                "env": [
                    {"name": "STORAGE_URI", "value": f"pvc://mlflow-artifacts/{version}"},
                    {"name": "MODEL_VERSION", "value": version},
                ],
            }
        ],
        **extra,
    }
    if percent is not None:
        predictor["canaryTrafficPercent"] = percent
    return {
        "metadata": {"name": NAME, "annotations": annotations},
        "spec": {"predictor": predictor},
    }


def t(revision: str, percent: int, latest: bool, tag: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"revisionName": revision, "percent": percent, "latestRevision": latest}
    if tag:
        entry["tag"] = tag
    return entry


ALL_TRUE = dict.fromkeys(
    [
        "Ready",
        "PredictorReady",
        "IngressReady",
        "RoutesReady",
        "LatestDeploymentReady",
        "PredictorRouteReady",
        "PredictorConfigurationReady",
    ],
    "True",
)


def conditions(**changed: str) -> dict[str, str]:
    return {**ALL_TRUE, **changed}


@dataclass
class Case:
    steps: list[tuple[dict[str, Any], dict[str, RevisionHealth]]]
    traffic: list[dict[str, Any]]
    created: str | None
    ready: str | None
    rolled_out: str | None
    previous: str | None
    generation: int
    conditions: dict[str, str]


V1 = (isvc("1"), {R1: OK})
CANARY = (isvc("2", 50), {R1: OK, R2: OK})
PROMOTED = (isvc("2"), {R1: OK, R2: OK})

CASES = {
    # -- first rollout: blue-green, P ignored without a rolled-out revision (l.134, l.154-164)
    "first revision ready": Case(
        [(isvc("1"), {R1: OK})],
        [t(R1, 100, True, "latest")], R1, R1, R1, None, 1, conditions(),
    ),
    "first rollout with a percent: 100 % until rolled out, then P and 100-P on it": Case(
        # the status update requeues the InferenceService (controller.go l.668, no predicate):
        # the next ksvc has the prev target on the one revision; previous is empty (l.598)
        [(isvc("1", 10), {R1: OK})],
        [t(R1, 10, True, "latest"), t(R1, 90, False, "prev")], R1, R1, R1, None, 2,
        conditions(),
    ),
    "first revision starting": Case(
        [(isvc("1"), {R1: STARTING})],
        [], R1, None, None, None, 1,
        dict.fromkeys(ALL_TRUE, "Unknown"),
    ),
    "first revision failed": Case(
        [(isvc("1"), {R1: FAILED})],
        [], R1, None, None, None, 1,
        conditions(Ready="False", PredictorReady="False", IngressReady="Unknown",
                   RoutesReady="False", LatestDeploymentReady="False",
                   PredictorRouteReady="False", PredictorConfigurationReady="False"),
    ),
    # -- a canary: P on the latest ready revision, 100-P on the rolled-out one, tagged prev
    "canary ready": Case(
        [V1, CANARY],
        [t(R2, 50, True, "latest"), t(R1, 50, False, "prev")], R2, R2, R1, None, 2,
        conditions(),
    ),
    "canary starting: both targets resolve to the old revision": Case(
        [V1, (isvc("2", 50), {R1: OK, R2: STARTING})],
        [t(R1, 50, True, "latest"), t(R1, 50, False, "prev")], R2, R1, R1, None, 2,
        conditions(Ready="Unknown", PredictorReady="Unknown", LatestDeploymentReady="Unknown",
                   PredictorConfigurationReady="Unknown"),
    ),
    "canary failed: two entries on the old revision, Ready False": Case(
        [V1, (isvc("2", 50), {R1: OK, R2: FAILED})],
        [t(R1, 50, True, "latest"), t(R1, 50, False, "prev")], R2, R1, R1, None, 2,
        conditions(Ready="False", PredictorReady="False", LatestDeploymentReady="False",
                   PredictorConfigurationReady="False"),
    ),
    "promoting a failed canary keeps the old revision and Ready False": Case(
        [V1, (isvc("2", 50), {R1: OK, R2: FAILED}), (isvc("2"), {R1: OK, R2: FAILED})],
        [t(R1, 100, True, "latest")], R2, R1, R1, None, 3,
        conditions(Ready="False", PredictorReady="False", LatestDeploymentReady="False",
                   PredictorConfigurationReady="False"),
    ),
    "without enable-tag-routing the latest target has no tag; prev keeps its own": Case(
        [(isvc("1", tags=False), {R1: OK}), (isvc("2", 30, tags=False), {R1: OK, R2: OK})],
        [t(R2, 30, True), t(R1, 70, False, "prev")], R2, R2, R1, None, 2, conditions(),
    ),
    # -- promote: the latest ready revision at 100 % becomes the rolled-out one (l.585-590)
    "promote: no prev target outside a canary": Case(
        [V1, CANARY, PROMOTED],
        [t(R2, 100, True, "latest")], R2, R2, R2, R1, 3, conditions(),
    ),
    "canary at 100 is a promote": Case(
        [V1, CANARY, (isvc("2", 100), {R1: OK, R2: OK})],
        [t(R2, 100, True, "latest")], R2, R2, R2, R1, 3, conditions(),
    ),
    # -- rollback
    "rollback during a canary: P 0, all on the rolled-out revision": Case(
        [V1, CANARY, (isvc("2", 0), {R1: OK, R2: OK})],
        [t(R2, 0, True, "latest"), t(R1, 100, False, "prev")], R2, R2, R1, None, 3,
        conditions(),
    ),
    "P 0 after a promote routes back to previousRolledoutRevision, left unchanged": Case(
        # ksvc written twice: [R2 0, R2 100 prev] (l.592-603 moves latestRolledout), then R1
        [V1, CANARY, PROMOTED, (isvc("2", 0), {R1: OK, R2: OK})],
        [t(R2, 0, True, "latest"), t(R1, 100, False, "prev")], R2, R2, R1, R1, 5,
        conditions(),
    ),
    "a percent after a promote splits with previousRolledoutRevision": Case(
        [V1, CANARY, PROMOTED, (isvc("2", 30), {R1: OK, R2: OK})],
        [t(R2, 30, True, "latest"), t(R1, 70, False, "prev")], R2, R2, R1, R1, 5,
        conditions(),
    ),
    "promote again after the rollback": Case(
        [V1, CANARY, PROMOTED, (isvc("2", 0), {R1: OK, R2: OK}), PROMOTED],
        [t(R2, 100, True, "latest")], R2, R2, R2, R1, 6, conditions(),
    ),
    "a new canary after a rollback splits with the revision serving": Case(
        [V1, CANARY, PROMOTED, (isvc("2", 0), {R1: OK, R2: OK}),
         (isvc("3", 50), {R1: OK, R2: OK, R3: OK})],
        [t(R3, 50, True, "latest"), t(R1, 50, False, "prev")], R3, R3, R1, R1, 6,
        conditions(),
    ),
    "a canary starting after a rollback: its share goes to the rolled-back revision": Case(
        # the latestRevision target resolves to the latest *ready* revision, R2
        [V1, CANARY, PROMOTED, (isvc("2", 0), {R1: OK, R2: OK}),
         (isvc("3", 50), {R1: OK, R2: OK, R3: STARTING})],
        [t(R2, 50, True, "latest"), t(R1, 50, False, "prev")], R3, R2, R1, R1, 6,
        conditions(Ready="Unknown", PredictorReady="Unknown", LatestDeploymentReady="Unknown",
                   PredictorConfigurationReady="Unknown"),
    ),
    "P 0 after the very first rollout has no previous: both targets stay on it": Case(
        [V1, (isvc("1", 0), {R1: OK})],
        [t(R1, 0, True, "latest"), t(R1, 100, False, "prev")], R1, R1, R1, None, 2,
        conditions(),
    ),
    # -- what makes a revision, and what bumps the Knative Service's generation
    "an annotation change makes a revision": Case(
        [V1, (isvc("1", annotations={STEP: "10"}), {R1: OK, R2: OK})],
        [t(R2, 100, True, "latest")], R2, R2, R2, R1, 2, conditions(),
    ),
    "a minReplicas change makes a revision": Case(
        [V1, (isvc("1", minReplicas=2), {R1: OK, R2: OK})],
        [t(R2, 100, True, "latest")], R2, R2, R2, R1, 2, conditions(),
    ),
    "a disallowed annotation is not copied: no revision, no generation": Case(
        [V1, (isvc("1", annotations={"kubectl.kubernetes.io/last-applied-configuration": "{}"}),
              {R1: OK})],
        [t(R1, 100, True, "latest")], R1, R1, R1, None, 1, conditions(),
    ),
    "canaryTrafficPercent 100 once rolled out writes the same ksvc: no generation": Case(
        [V1, (isvc("1", 100), {R1: OK})],
        [t(R1, 100, True, "latest")], R1, R1, R1, None, 1, conditions(),
    ),
    # -- the twin's kubelet: a routed revision whose process is down is not serving
    "a routed revision down right now: PredictorReady False, the deployment still ready": Case(
        [V1, CANARY, (isvc("2", 50), {R1: OK, R2: CRASHED})],
        [t(R2, 50, True, "latest"), t(R1, 50, False, "prev")], R2, R2, R1, None, 2,
        conditions(Ready="False", PredictorReady="False"),
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_the_twin_reaches_the_status_upstream_reaches(case: Case) -> None:
    state = KServeState()
    for spec, health in case.steps:
        status = reconcile(state, copy.deepcopy(spec), health)
    predictor = status["components"]["predictor"]
    assert predictor["traffic"] == case.traffic
    assert (
        predictor["latestCreatedRevision"],
        predictor["latestReadyRevision"],
        predictor["latestRolledoutRevision"],
        predictor["previousRolledoutRevision"],
    ) == (case.created, case.ready, case.rolled_out, case.previous)
    assert status["observedGeneration"] == case.generation
    assert {c["type"]: c["status"] for c in status["conditions"]} == case.conditions
    assert status["conditions"][0]["type"] == "Ready"
    # settled: reconciling the same spec again changes nothing, the generation included
    assert reconcile(state, copy.deepcopy(spec), health) == status


def test_a_failed_revision_is_named_in_the_conditions() -> None:
    state = KServeState()
    reconcile(state, isvc("1"), {R1: OK})
    status = reconcile(state, isvc("2", 50), {R1: OK, R2: FAILED})
    latest = {c["type"]: c for c in status["conditions"]}["LatestDeploymentReady"]
    assert R2 in latest["message"] and FAILED.message in latest["message"]


def test_a_routed_revision_that_is_down_is_named_in_ready() -> None:
    state = KServeState()
    reconcile(state, isvc("1"), {R1: OK})
    status = reconcile(state, isvc("1"), {R1: CRASHED})
    ready = status["conditions"][0]
    assert ready["status"] == "False" and R1 in ready["message"]

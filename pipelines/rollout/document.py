"""The InferenceService document: what a rollout step changes in it, and nothing else."""

from __future__ import annotations

from typing import Any

from contracts.inferenceservice import (
    API_VERSION,
    CONTAINER,
    LOCAL_STEP_PERCENT,
    MODEL_DIGEST_ENV,
    MODEL_VERSION_ENV,
    STEP_ANNOTATION,
    STORAGE_URI_ENV,
)
from contracts.settings import FAULT_ERROR_RATE, FAULT_LATENCY_MS
from pipelines.errors import RolloutError

FAULT_ENV = (FAULT_ERROR_RATE.name, FAULT_LATENCY_MS.name)


def new_inferenceservice(name: str) -> dict[str, Any]:
    """The local stack's starting document (the cluster's comes from the kustomize overlay)."""
    return {
        "apiVersion": API_VERSION,
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "annotations": {
                "serving.kserve.io/deploymentMode": "Knative",
                "serving.kserve.io/enable-tag-routing": "true",
                STEP_ANNOTATION: str(LOCAL_STEP_PERCENT),
            },
        },
        "spec": {
            "predictor": {
                "minReplicas": 1,
                "containers": [
                    {
                        "name": CONTAINER,
                        "args": [f"--model_name={name}", "--model_dir=/mnt/models"],
                        "env": [],
                    }
                ],
            }
        },
    }


def container(isvc: dict[str, Any]) -> dict[str, Any]:
    """The predictor's ``kserve-container``."""
    for item in isvc["spec"]["predictor"].get("containers") or []:
        if item.get("name") == CONTAINER:
            return item
    raise RolloutError(f"the InferenceService has no predictor container named {CONTAINER}")


def _set_env(target: dict[str, Any], name: str, value: str) -> None:
    env = target.setdefault("env", [])
    for item in env:
        if item.get("name") == name:
            item.pop("valueFrom", None)
            item["value"] = value
            return
    env.append({"name": name, "value": value})


def served_version(isvc: dict[str, Any]) -> str | None:
    """The ``MODEL_VERSION`` the predictor template names."""
    for item in container(isvc).get("env", []):
        if item.get("name") == MODEL_VERSION_ENV:
            return item.get("value")
    return None


def set_version(isvc: dict[str, Any], storage_uri: str, version: str, digest: str | None) -> None:
    """Point the predictor template at a version's artefact (and the digest it must have)."""
    target = container(isvc)
    _set_env(target, STORAGE_URI_ENV, storage_uri)
    _set_env(target, MODEL_VERSION_ENV, version)
    if digest:
        _set_env(target, MODEL_DIGEST_ENV, digest)
    else:
        target["env"] = [e for e in target.get("env", []) if e.get("name") != MODEL_DIGEST_ENV]


def set_faults(isvc: dict[str, Any], faults: dict[str, str]) -> None:
    """The predictor's test-only fault environment: exactly ``faults`` (names in FAULT_ENV)."""
    target = container(isvc)
    target["env"] = [e for e in target.get("env", []) if e.get("name") not in FAULT_ENV]
    for name, value in faults.items():
        if name not in FAULT_ENV:
            raise ValueError(f"{name} is not a predictor fault variable")
        _set_env(target, name, value)


def step_percent(isvc: dict[str, Any]) -> str:
    """The overlay's canary step (annotation), as written."""
    return isvc.get("metadata", {}).get("annotations", {}).get(STEP_ANNOTATION, "10")


def template(isvc: dict[str, Any]) -> dict[str, Any]:
    """What KServe copies into the Knative revision template: the predictor but its split, and
    the annotations (ksvc_reconciler.go l.102-121, components/predictor.go l.100-102). Two
    documents with the same template make no new revision."""
    predictor = {k: v for k, v in isvc["spec"]["predictor"].items() if k != "canaryTrafficPercent"}
    return {"predictor": predictor, "annotations": isvc.get("metadata", {}).get("annotations")}


def spec_only(isvc: dict[str, Any]) -> dict[str, Any]:
    """What we write: the object without its status (the controller owns status)."""
    return {k: v for k, v in isvc.items() if k != "status"}


def merge_patch(old: Any, new: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns ``old`` into ``new``.

    Objects are diffed key by key (a removed key becomes ``null``); anything else, lists
    included, is replaced whole — which is what a merge patch can express.
    """
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_patch(old[key], value)
    return patch


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386's apply: what the API server makes of ``target`` and a merge ``patch``."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


def spec_patch(read: dict[str, Any], wanted: dict[str, Any]) -> dict[str, Any] | None:
    """The merge patch a rollout step sends: the spec's changes, guarded by ``resourceVersion``.

    Only ``spec`` is diffed (the tool never writes metadata or status). The read object's
    ``resourceVersion`` rides along: the API server treats it as a precondition and answers 409
    when the object changed since it was read. ``None`` when there is nothing to change.
    """
    diff = merge_patch(read.get("spec") or {}, wanted.get("spec") or {})
    if not diff:
        return None
    version = (read.get("metadata") or {}).get("resourceVersion")
    return {"metadata": {"resourceVersion": version}, "spec": diff}

"""The rollout ServiceAccount's admission policy, evaluated on allowed and refused patches.

kustomize/cluster/rollout-admission.yaml is a ValidatingAdmissionPolicy: its CEL rules are what
stops the rollout tool's credentials from changing anything but the canary percent and the
model variables. The rules run here in cel-python on the real InferenceService of each overlay,
patched the way the API server applies a JSON merge patch (RFC 7386) — the patch type the
rollout tool sends (pipelines/rollout/backends.py `ClusterBackend.apply`).
"""

from __future__ import annotations

import copy
import functools
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml
from celpy import celtypes

from contracts.inferenceservice import MODEL_DIGEST_ENV, MODEL_VERSION_ENV, STORAGE_URI_ENV
from pipelines.rollout import document

ROOT = Path(__file__).resolve().parents[2]
ROLLOUT_USER = "system:serviceaccount:{ns}:rollout"


def _render(path: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not found: install it (docs/cluster.md, 'Tools') to render overlays")
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, check=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@functools.cache
def _policy() -> dict[str, Any]:
    (policy,) = [
        d
        for d in _render(ROOT / "kustomize" / "cluster")
        if d["kind"] == "ValidatingAdmissionPolicy"
    ]
    return policy


@functools.cache
def _isvc(env: str) -> dict[str, Any]:
    docs = _render(ROOT / "kustomize" / "overlays" / env)
    (isvc,) = [d for d in docs if d["kind"] == "InferenceService"]
    return isvc


_cel = celpy.Environment()


def _eval(expression: str, activation: dict[str, Any]) -> Any:
    return _cel.program(_cel.compile(expression)).evaluate(activation)


def admit(old: dict[str, Any], new: dict[str, Any], *, user: str, namespace: str) -> str | None:
    """None when the policy lets the update through, else the message of the first failed rule.

    As in the API server: a policy whose match condition is false does not apply; a rule that
    evaluates to anything but true (false, or an evaluation error) denies (failurePolicy Fail).
    """
    spec = _policy()["spec"]
    request = {"userInfo": {"username": user}, "namespace": namespace, "operation": "UPDATE"}
    act: dict[str, Any] = {
        "object": celpy.json_to_cel(new),
        "oldObject": celpy.json_to_cel(old),
        "request": celpy.json_to_cel(request),
    }
    for condition in spec["matchConditions"]:
        if _eval(condition["expression"], act) != celtypes.BoolType(True):
            return None
    variables: dict[celtypes.StringType, Any] = {}
    for var in spec["variables"]:
        act["variables"] = celtypes.MapType(variables)
        variables[celtypes.StringType(var["name"])] = _eval(var["expression"], act)
    act["variables"] = celtypes.MapType(variables)
    for rule in spec["validations"]:
        try:
            ok = _eval(rule["expression"], act)
        except Exception as err:  # an evaluation error denies, like failurePolicy: Fail
            return f"{rule['message'].strip()} (error: {err})"
        if ok != celtypes.BoolType(True):
            return rule["message"].strip()
    return None


def _container(isvc: dict[str, Any]) -> dict[str, Any]:
    return document.container(isvc)


def _env(isvc: dict[str, Any]) -> list[dict[str, Any]]:
    return _container(isvc).setdefault("env", [])


def _served(isvc: dict[str, Any]) -> dict[str, Any]:
    """The object after a first rollout: version 3 at 100 %, with its digest."""
    isvc = copy.deepcopy(isvc)
    document.set_version(isvc, "pvc://mlflow-artifacts/1/run3/artifacts/kserve", "3", "ab" * 32)
    return isvc


Edit = Callable[[dict[str, Any]], None]


def _set(path: tuple[str, ...], value: Any) -> Edit:
    def edit(isvc: dict[str, Any]) -> None:
        target = isvc
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = value

    return edit


def _canary(isvc):
    isvc["spec"]["predictor"]["canaryTrafficPercent"] = 10
    document.set_version(isvc, "pvc://mlflow-artifacts/1/run4/artifacts/kserve", "4", "cd" * 32)


def _promote(isvc):
    _canary(isvc)
    isvc["spec"]["predictor"].pop("canaryTrafficPercent")


def _first_rollout_without_digest(isvc):
    document.set_version(isvc, "pvc://mlflow-artifacts/1/run5/artifacts/kserve", "5", None)


ALLOWED: dict[str, Edit] = {
    "canary: percent and the three model variables": _canary,
    "promote: the percent removed": _promote,
    "rollback during a canary: percent 0": _set(("spec", "predictor", "canaryTrafficPercent"), 0),
    "percent 100": _set(("spec", "predictor", "canaryTrafficPercent"), 100),
    "a version without a digest (the variable removed)": _first_rollout_without_digest,
    "nothing changed": lambda isvc: None,
}


def _add_env(name, value="x"):
    return lambda isvc: _env(isvc).append({"name": name, "value": value})


def _env_from_secret(isvc):
    for item in _env(isvc):
        if item["name"] == STORAGE_URI_ENV:
            item.pop("value")
            item["valueFrom"] = {"secretKeyRef": {"name": "mlflow-admin", "key": "password"}}


def _change_other_env(isvc):
    _env(isvc).append({"name": "PYTHONPATH", "value": "/tmp"})


def _sidecar(isvc):
    isvc["spec"]["predictor"]["containers"].append({"name": "shell", "image": "busybox"})


def _mount_secret(isvc):
    predictor = isvc["spec"]["predictor"]
    predictor.setdefault("volumes", []).append({"name": "s", "secret": {"secretName": "x"}})


REFUSED: dict[str, Edit] = {
    "another image": lambda isvc: _container(isvc).__setitem__("image", "evil/model:latest"),
    "another command": lambda isvc: _container(isvc).__setitem__("command", ["sh", "-c", "id"]),
    "other args": lambda isvc: _container(isvc).__setitem__("args", ["--http_port", "1"]),
    "resources": lambda isvc: _container(isvc).__setitem__("resources", {}),
    "securityContext dropped": lambda isvc: _container(isvc).pop("securityContext"),
    "a new env variable": _add_env("LD_PRELOAD", "/tmp/x.so"),
    "the predictor's test-only faults": _add_env("MODEL_SERVER_FAULT_ERROR_RATE", "0.05"),
    "a model variable read from a Secret": _env_from_secret,
    "another variable of the container": _change_other_env,
    "a sidecar container": _sidecar,
    "a Secret volume": _mount_secret,
    "a service account": _set(("spec", "predictor", "serviceAccountName"), "default"),
    "token automount back on": _set(("spec", "predictor", "automountServiceAccountToken"), True),
    "replicas": _set(("spec", "predictor", "maxReplicas"), 50),
    "a node selector": _set(("spec", "predictor", "nodeSelector"), {"a": "b"}),
    "a transformer": _set(("spec", "transformer"), {"containers": [{"name": "t", "image": "x"}]}),
    "an annotation": _set(("metadata", "annotations", "serving.kserve.io/deploymentMode"), "Raw"),
    "a label": _set(("metadata", "labels", "team"), "x"),
    "percent over 100": _set(("spec", "predictor", "canaryTrafficPercent"), 150),
    "percent below 0": _set(("spec", "predictor", "canaryTrafficPercent"), -1),
    "the container renamed": lambda isvc: _container(isvc).__setitem__("name", "other"),
    # spec.predictor.annotations reach the Knative revision (prod's Guaranteed queue-proxy)
    "queue-proxy limits lifted": _set(
        (
            "spec",
            "predictor",
            "annotations",
            "queue.sidecar.serving.knative.dev/cpu-resource-limit",
        ),
        "64",
    ),
}


def _patched(env: str, edit: Edit) -> tuple[dict[str, Any], dict[str, Any]]:
    """(old, new): the object as served, and as the API server makes it from our merge patch."""
    old = _served(_isvc(env))
    wanted = copy.deepcopy(old)
    edit(wanted)
    # the rollout tool sends only spec changes; a metadata edit goes straight through here
    patch = document.merge_patch(old, wanted)
    new = document.apply_merge_patch(old, patch)
    assert new == wanted
    return old, new


@pytest.mark.parametrize("env", ["dev", "staging", "prod"])
@pytest.mark.parametrize("case", list(ALLOWED))
def test_the_rollout_tool_may_change_the_percent_and_the_model(env, case):
    old, new = _patched(env, ALLOWED[case])
    ns = f"movie-mlops-{env}"
    assert admit(old, new, user=ROLLOUT_USER.format(ns=ns), namespace=ns) is None


@pytest.mark.parametrize("case", list(REFUSED))
def test_the_rollout_tool_may_change_nothing_else(case):
    old, new = _patched("prod", REFUSED[case])
    ns = "movie-mlops-prod"
    reason = admit(old, new, user=ROLLOUT_USER.format(ns=ns), namespace=ns)
    assert reason is not None, f"the policy let '{case}' through"


def test_other_identities_are_not_this_policys_business():
    """An admin (or the rollout account of another namespace's policy scope) is not matched."""
    old, new = _patched("prod", REFUSED["another image"])
    assert admit(old, new, user="kubernetes-admin", namespace="movie-mlops-prod") is None
    # the rollout account of dev editing prod: matched by prod's namespace, so refused anyway
    # by RBAC (its Role lives in dev); the policy keys on the request's own namespace
    assert (
        admit(
            old, new, user=ROLLOUT_USER.format(ns="movie-mlops-dev"), namespace="movie-mlops-prod"
        )
        is None
    )


def test_every_rollout_step_passes_the_policy():
    """canary → promote → canary → rollback (percent 0) → a version without a digest, as the
    rollout steps write them, each applied as the merge patch `ClusterBackend` sends."""
    ns = "movie-mlops-staging"
    current = copy.deepcopy(_isvc("staging"))
    current["metadata"]["resourceVersion"] = "1"
    steps: list[Edit] = [
        lambda i: document.set_version(i, "pvc://m/1/r1/artifacts/kserve", "1", "11" * 32),
        _canary,
        lambda i: i["spec"]["predictor"].pop("canaryTrafficPercent"),
        _set(("spec", "predictor", "canaryTrafficPercent"), 10),
        _set(("spec", "predictor", "canaryTrafficPercent"), 0),
        _first_rollout_without_digest,
    ]
    for number, step in enumerate(steps, start=2):
        wanted = copy.deepcopy(current)
        step(wanted)
        patch = document.spec_patch(current, wanted)
        if patch is None:
            continue
        assert set(patch) == {"metadata", "spec"}
        assert patch["metadata"] == {"resourceVersion": current["metadata"]["resourceVersion"]}
        new = document.apply_merge_patch(current, patch)
        new["metadata"]["resourceVersion"] = str(number)
        assert new["spec"] == wanted["spec"]
        assert admit(current, new, user=ROLLOUT_USER.format(ns=ns), namespace=ns) is None
        current = new
    served = {e["name"]: e.get("value") for e in _env(current)}
    assert served[MODEL_VERSION_ENV] == "5"
    assert MODEL_DIGEST_ENV not in served


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ({"a": 1, "b": {"c": 2, "d": 3}}, {"a": 1, "b": {"c": 4}}),
        ({"a": [1, 2]}, {"a": [2]}),
        ({"a": {"b": 1}}, {"a": 5}),
        ({}, {"x": {"y": [1, {"z": None}]}}),
        ({"k": "v"}, {}),
    ],
)
def test_merge_patch_round_trips(old, new):
    assert document.apply_merge_patch(old, document.merge_patch(old, new)) == new


def test_an_unchanged_spec_sends_no_patch():
    isvc = _served(_isvc("dev"))
    assert document.spec_patch(isvc, copy.deepcopy(isvc)) is None

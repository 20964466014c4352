"""The whole cluster path on a real kind cluster: deploy dev, crawl -> features -> train, serve,
canary, promote, roll back, tear down.

Runs only with E2E_CLUSTER=1 and a reachable cluster prepared by `scripts/kind-up.sh`,
`scripts/images.sh` and `scripts/kind-load.sh`. CI only collects it (`--collect-only -m e2e`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = "dev"
NAMESPACE = f"movie-mlops-{ENV}"
INGRESS = os.environ.get("E2E_INGRESS", "http://127.0.0.1:8081")
HOST = f"movie-recommender-predictor.{NAMESPACE}.example.com"

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _cluster_ready() -> str | None:
    """Why the test cannot run, or None."""
    if os.environ.get("E2E_CLUSTER") != "1":
        return "set E2E_CLUSTER=1 to run against a kind cluster (scripts/kind-up.sh)"
    if shutil.which("kubectl") is None:
        return "kubectl not found"
    probe = subprocess.run(
        ["kubectl", "get", "crd", "inferenceservices.serving.kserve.io"],
        capture_output=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return "no cluster with KServe in the current kube context"
    return None


@pytest.fixture(scope="module")
def deployed():
    reason = _cluster_ready()
    if reason:
        pytest.skip(reason)
    _script("deploy.sh", ENV)
    yield
    _script("undeploy.sh", ENV)


def _script(name: str, *args: str, timeout: int = 3600) -> None:
    subprocess.run([str(ROOT / "scripts" / name), *args], check=True, timeout=timeout)


def _kubectl(*args: str) -> str:
    return subprocess.run(
        ["kubectl", "-n", NAMESPACE, *args], check=True, capture_output=True, text=True, timeout=600
    ).stdout


def _isvc() -> dict:
    return json.loads(_kubectl("get", "inferenceservice", "movie-recommender", "-o", "json"))


def _latest_registered_version() -> int:
    """Ask MLflow, through the Service, for the newest registered version."""
    out = _kubectl(
        "exec",
        "deploy/mlflow",
        "--",
        "python",
        "-c",
        "import os, mlflow; os.environ['MLFLOW_TRACKING_USERNAME'] = 'admin'; "
        "os.environ['MLFLOW_TRACKING_PASSWORD'] = os.environ['MLFLOW_AUTH_ADMIN_PASSWORD']; "
        "c = mlflow.MlflowClient('http://127.0.0.1:5000'); "
        "print(max(int(v.version) for v in c.search_model_versions(\"name='movie-recommender'\")))",
    )
    return int(out.strip().splitlines()[-1])


def _predict(host: str = HOST) -> tuple[int, dict]:
    body = json.dumps({"instances": [{"user_id": 1, "k": 5}]}).encode()
    request = urllib.request.Request(
        f"{INGRESS}/v1/models/movie-recommender:predict",
        data=body,
        headers={"Host": host, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read())


def _predictor() -> dict:
    return _isvc()["status"]["components"]["predictor"]


def _conditions() -> dict[str, str]:
    return {c["type"]: c["status"] for c in _isvc()["status"].get("conditions", [])}


def _wait_for(what: str, check, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(5)
    raise AssertionError(f"not {what} after {timeout:.0f} s: {json.dumps(_isvc()['status'])}")


def _wait_ready(timeout: float = 600) -> None:
    """Ready with the latest created revision ready: a Ready of an older revision is not it."""

    def settled() -> bool:
        predictor = _predictor()
        return _conditions().get("Ready") == "True" and predictor.get(
            "latestCreatedRevision"
        ) == predictor.get("latestReadyRevision")

    _wait_for("Ready", settled, timeout)


def _entries() -> dict[str, dict]:
    """Traffic entries by tag (``latest``, ``prev``); each has revisionName and percent."""
    traffic = _predictor().get("traffic", [])
    by_tag = {t.get("tag"): t for t in traffic}
    assert len(by_tag) == len(traffic), traffic  # one entry per tag, none untagged twice
    return by_tag


def _assert_canary(step: int, canary_revision: str, stable_revision: str) -> None:
    """KServe's canary shape (ksvc_reconciler.go l.132-165): P on the latest revision, tagged
    latest; 100-P on the rolled-out one, tagged prev."""
    predictor, entries = _predictor(), _entries()
    assert set(entries) == {"latest", "prev"}, entries
    assert entries["latest"]["latestRevision"] is True
    assert entries["latest"]["percent"] == step
    assert entries["latest"]["revisionName"] == canary_revision
    assert entries["prev"]["percent"] == 100 - step
    assert entries["prev"]["revisionName"] == predictor["latestRolledoutRevision"]
    assert entries["prev"]["revisionName"] == stable_revision


def _assert_rolled_out(revision: str) -> None:
    """One entry, 100 %, tagged latest: no `prev` target outside a canary."""
    predictor, entries = _predictor(), _entries()
    assert set(entries) == {"latest"}, entries
    assert entries["latest"]["percent"] == 100
    assert entries["latest"]["revisionName"] == revision
    assert predictor["latestRolledoutRevision"] == revision
    assert predictor["latestCreatedRevision"] == predictor["latestReadyRevision"] == revision


def _absent(host: str) -> bool:
    """No route for the host (Kourier answers 404 for an unknown tag)."""
    try:
        _predict(host)
    except urllib.error.HTTPError as err:
        return err.code == 404
    return False


def _generation() -> int:
    return int(_isvc()["metadata"]["generation"])


def test_pipeline_serves_canaries_promotes_and_rolls_back(deployed):
    _script("run-stage.sh", ENV, "crawl")
    _script("run-stage.sh", ENV, "features")
    _script("train.sh", ENV)
    first = _latest_registered_version()

    _script("rollout.sh", ENV, "canary", "--version", str(first), "--percent", "100")
    _wait_ready()
    stable = _predictor()["latestCreatedRevision"]
    _assert_rolled_out(stable)
    generation = _generation()
    _script("rollout.sh", ENV, "promote")  # nothing to promote: an unchanged spec, no generation
    assert _generation() == generation
    assert isinstance(_isvc()["status"]["observedGeneration"], int)
    status, answer = _predict()
    assert status == 200
    assert answer["predictions"]
    assert answer["model_version"] == str(first)
    assert _absent(f"prev-{HOST}")  # the prev tag exists only during a canary

    # a failing canary (an artefact that does not exist): Knative keeps both targets on the
    # serving revision, the InferenceService is not Ready, traffic is untouched
    container = _isvc()["spec"]["predictor"]["containers"][0]
    env = [e for e in container["env"] if e["name"] not in ("STORAGE_URI", "MODEL_DIGEST")]
    env.append({"name": "STORAGE_URI", "value": "pvc://mlflow-artifacts/no/such/artefact"})
    container["env"] = env
    step = int(_isvc()["metadata"]["annotations"]["movie-mlops.io/canary-step-percent"])
    patch = {"spec": {"predictor": {"canaryTrafficPercent": step, "containers": [container]}}}
    _kubectl("patch", "inferenceservice", "movie-recommender", "--type=merge",
             "-p", json.dumps(patch))  # fmt: skip
    _wait_for("the canary failed", lambda: _conditions().get("LatestDeploymentReady") == "False")
    predictor = _predictor()
    assert predictor["latestCreatedRevision"] != stable
    assert predictor["latestReadyRevision"] == stable
    assert _conditions()["Ready"] == "False"
    entries = _entries()
    assert entries["latest"]["percent"] == step and entries["prev"]["percent"] == 100 - step
    # the latest target resolves to the latest *ready* revision: both on the serving one
    assert entries["latest"]["revisionName"] == entries["prev"]["revisionName"] == stable
    assert _predict(f"latest-{HOST}")[1]["model_version"] == str(first)
    assert {_predict()[1]["model_version"] for _ in range(10)} == {str(first)}

    _script("train.sh", ENV)
    second = _latest_registered_version()
    assert second > first
    generation = _generation()
    _script("rollout.sh", ENV, "canary", "--version", str(second), "--percent", str(step))
    _wait_ready()
    assert _generation() == generation + 1
    assert _isvc()["spec"]["predictor"]["canaryTrafficPercent"] == step
    candidate = _predictor()["latestCreatedRevision"]
    assert candidate != stable
    _assert_canary(step, candidate, stable)
    # Tag routing: each revision answers on its own host, with its own version.
    assert _predict(f"latest-{HOST}")[1]["model_version"] == str(second)
    assert _predict(f"prev-{HOST}")[1]["model_version"] == str(first)

    # rollback during a canary: canaryTrafficPercent 0, all traffic on the rolled-out revision
    _script("rollout.sh", ENV, "rollback")
    _wait_ready()
    assert _isvc()["spec"]["predictor"]["canaryTrafficPercent"] == 0
    _assert_canary(0, candidate, stable)
    assert {_predict()[1]["model_version"] for _ in range(10)} == {str(first)}

    # the same version again: no new template, so no new revision
    _script("rollout.sh", ENV, "canary", "--version", str(second), "--percent", str(step))
    _wait_ready()
    assert _predictor()["latestCreatedRevision"] == candidate
    _assert_canary(step, candidate, stable)

    _script("rollout.sh", ENV, "promote")
    _wait_ready()
    _assert_rolled_out(candidate)
    assert _predictor()["previousRolledoutRevision"] == stable
    assert "canaryTrafficPercent" not in _isvc()["spec"]["predictor"]
    assert _predict()[1]["model_version"] == str(second)
    _wait_for("prev- route gone", lambda: _absent(f"prev-{HOST}"), 120)

    # rollback after a promote: back to previousRolledoutRevision, no new revision
    _script("rollout.sh", ENV, "rollback")
    _wait_ready()
    predictor = _predictor()
    assert predictor["latestCreatedRevision"] == candidate
    assert predictor["latestRolledoutRevision"] == stable
    assert predictor["previousRolledoutRevision"] == stable
    _assert_canary(0, candidate, stable)
    envs = {e["name"]: e.get("value") for e in _isvc()["spec"]["predictor"]["containers"][0]["env"]}
    assert envs["MODEL_VERSION"] == str(second)  # the template stays; the split moved
    assert _isvc()["spec"]["predictor"]["canaryTrafficPercent"] == 0
    _wait_for("first served", lambda: _predict()[1]["model_version"] == str(first), 300)
    assert {_predict()[1]["model_version"] for _ in range(10)} == {str(first)}

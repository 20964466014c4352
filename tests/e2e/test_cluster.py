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


def _wait_ready(timeout: float = 600) -> None:
    _kubectl(
        "wait",
        "--for=condition=Ready",
        "inferenceservice/movie-recommender",
        f"--timeout={int(timeout)}s",
    )


def _traffic() -> dict[str, int]:
    status = _isvc()["status"]["components"]["predictor"]
    return {t.get("tag", t["revisionName"]): t["percent"] for t in status.get("traffic", [])}


def test_pipeline_serves_canaries_promotes_and_rolls_back(deployed):
    _script("run-stage.sh", ENV, "crawl")
    _script("run-stage.sh", ENV, "features")
    _script("train.sh", ENV)
    first = _latest_registered_version()

    _script("rollout.sh", ENV, "canary", "--version", str(first), "--percent", "100")
    _script("rollout.sh", ENV, "promote")
    _wait_ready()
    status, answer = _predict()
    assert status == 200
    assert answer["predictions"]
    assert answer["model_version"] == str(first)

    _script("train.sh", ENV)
    second = _latest_registered_version()
    assert second > first
    step = _isvc()["metadata"]["annotations"]["movie-mlops.io/canary-step-percent"]
    _script("rollout.sh", ENV, "canary", "--version", str(second), "--percent", step)
    _wait_ready()
    assert _isvc()["spec"]["predictor"]["canaryTrafficPercent"] == int(step)
    # Tag routing: the candidate answers on its own `latest-` host before it gets full traffic.
    status, _ = _predict(f"latest-{HOST}")
    assert status == 200
    assert sorted(_traffic().values()) == sorted([int(step), 100 - int(step)])

    _script("rollout.sh", ENV, "promote")
    _wait_ready()
    envs = {e["name"]: e.get("value") for e in _isvc()["spec"]["predictor"]["containers"][0]["env"]}
    assert envs["MODEL_VERSION"] == str(second)
    assert _predict()[1]["model_version"] == str(second)

    _script("rollout.sh", ENV, "rollback")
    _wait_ready()
    time.sleep(5)
    envs = {e["name"]: e.get("value") for e in _isvc()["spec"]["predictor"]["containers"][0]["env"]}
    assert envs["MODEL_VERSION"] == str(first)
    status, answer = _predict()
    assert status == 200
    assert answer["model_version"] == str(first)

"""The InferenceService fields the rollout tool writes and the local controller reads.

KServe's own names (`serving.kserve.io/v1beta1`, the ``kserve-container`` predictor container,
``canaryTrafficPercent``) plus the project's: the predictor's ``STORAGE_URI`` and
``MODEL_VERSION`` environment and the per-overlay canary step annotation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

KSERVE_GROUP = "serving.kserve.io"
KSERVE_VERSION = "v1beta1"
KSERVE_PLURAL = "inferenceservices"
API_VERSION = f"{KSERVE_GROUP}/{KSERVE_VERSION}"

CONTAINER = "kserve-container"
STORAGE_URI_ENV = "STORAGE_URI"
MODEL_VERSION_ENV = "MODEL_VERSION"
MODEL_DIGEST_ENV = "MODEL_DIGEST"  # the artefact digest recorded at registration
# Set per overlay (dev 50, staging 10, prod 5); the local stack is the dev overlay's twin.
STEP_ANNOTATION = "movie-mlops.io/canary-step-percent"
LOCAL_STEP_PERCENT = 50

# The automated rollout (`python -m pipelines.rollout auto`): its steps and thresholds, per
# overlay as annotations on the InferenceService; the local stack uses the dev overlay's values.
CANARY_ANNOTATION_PREFIX = "movie-mlops.io/canary-"
CANARY_PLAN_DEFAULTS = {  # annotation suffix -> dev's value
    "steps": "50,100",  # traffic percents; the last must be 100 (the promote)
    "interval-seconds": "30",  # wait this long at each step, then analyse
    "failure-threshold": "2",  # failed analyses before an automatic rollback
    "deadline-seconds": "600",  # a step with too few samples by then is rolled back
    "max-error-rate": "0.01",  # canary 5xx share
    "max-p99-ms": "500",  # canary p99 request latency
    "min-requests": "50",  # canary requests per analysis window before judging
    # impressions on each arm before the CTR test judges (0: no CTR check); exposure, not
    # clicks, so a canary whose CTR collapsed is judged as soon as a healthy one would be
    "min-impressions": "4000",
    "ctr-alpha": "0.05",  # one-sided significance of "the canary's CTR is lower"
}

# A registered version's artefact on the volume that holds MLflow's artefact store.
ARTIFACTS_PVC_PREFIX = "pvc://mlflow-artifacts/"
# What the MLflow server (``--serve-artifacts``) names a run's artefact root.
MLFLOW_ARTIFACTS_PREFIX = "mlflow-artifacts:/"


def storage_uri(artifact_uri: str, artifact_path: str) -> str:
    """``pvc://mlflow-artifacts/<experiment>/<run>/artifacts/<artifact_path>`` of a run.

    Raises ValueError for a run whose artefacts are not in the server's proxied store.
    """
    if not artifact_uri.startswith(MLFLOW_ARTIFACTS_PREFIX):
        raise ValueError(
            f"artefacts at {artifact_uri}; the serving path expects the MLflow server's proxied "
            "artefact store (mlflow server --serve-artifacts)"
        )
    path = artifact_uri.removeprefix(MLFLOW_ARTIFACTS_PREFIX).strip("/")
    return f"{ARTIFACTS_PVC_PREFIX}{path}/{artifact_path}"


def local_model_dir(uri: str, artifacts_root: Path) -> Path:
    """The directory a ``STORAGE_URI`` names on one machine (``file://`` or the local PVC)."""
    if uri.startswith(ARTIFACTS_PVC_PREFIX):
        return Path(artifacts_root) / uri.removeprefix(ARTIFACTS_PVC_PREFIX)
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    raise ValueError(
        f"STORAGE_URI {uri!r}: the local stack serves {ARTIFACTS_PVC_PREFIX}… "
        "(the local MLflow artefact store) or file://… URIs"
    )


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """name -> value of a container's plain ``env`` entries."""
    return {e["name"]: str(e.get("value", "")) for e in container.get("env", []) if "name" in e}


def traffic_table(status: dict[str, Any]) -> str:
    """The predictor's traffic entries of an InferenceService status, one line each."""
    predictor = (status.get("components") or {}).get("predictor") or {}
    rows = [f"  {'revision':<40} {'percent':>7}  {'tag':<7} {'version':<8} ready"]
    for t in predictor.get("traffic") or []:
        ready = {True: "yes", False: "NO"}.get(t.get("ready"), "")
        rows.append(
            f"  {t.get('revisionName', '?'):<40} {t.get('percent', 0):>6}%  "
            f"{t.get('tag') or '':<7} {t.get('modelVersion') or '':<8} {ready}"
        )
    return "\n".join(rows)

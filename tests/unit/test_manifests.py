"""Offline checks of the cluster path: every overlay renders, validates and obeys the policy.

Rendering uses `kubectl kustomize` (no cluster needed). Built-in kinds are validated strictly
against the Kubernetes 1.32 schemas (`kubernetes-validate`), the InferenceService against the
KServe SDK's own types. The policy tests encode docs/cluster.md: what every container must carry,
what the overlays must differ in, and that the manifests only set variables the code reads.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ("dev", "staging", "prod")
K8S_VERSION = "1.32.0"
NAMESPACES = {env: f"movie-mlops-{env}" for env in OVERLAYS}
CANARY_STEP = {"dev": "50", "staging": "10", "prod": "5"}
BATCH_KINDS = {"CronJob", "Job"}
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "CronJob", "Job"}
REQUIRED_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
)

# Variables that a manifest sets and that are read by something other than this repository's
# Python code. Each names its reader; the test below checks the claim where the reader is on disk.
THIRD_PARTY_ENV = {
    "STORAGE_URI": "KServe's storage-initializer injector (pod mutating webhook)",
    "MLFLOW_SERVER_ALLOWED_HOSTS": "mlflow server (security middleware)",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "mlflow server (job execution switch)",
    "MLFLOW_TRACKING_URI": "the mlflow client library",
    "MLFLOW_TRACKING_USERNAME": "the mlflow client library (basic auth)",
    "MLFLOW_TRACKING_PASSWORD": "the mlflow client library (basic auth)",
    "MLFLOW_AUTH_CONFIG_PATH": "mlflow server --app-name basic-auth",
    "MLFLOW_AUTH_ADMIN_PASSWORD": "mlflow server --app-name basic-auth (first admin password)",
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "mlflow server --app-name basic-auth (CSRF)",
    "POD_NAMESPACE": "docker/frontend/default.conf.template (nginx envsubst)",
    "PREDICTOR_HOST": "docker/frontend/default.conf.template (nginx envsubst)",
    "PREDICTOR_UPSTREAM": "docker/frontend/default.conf.template (nginx envsubst)",
}


def _kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip(
            "kubectl not found: install it (see docs/cluster.md, 'Tools') to render overlays"
        )
    return path


@functools.cache
def _render(env: str) -> tuple[dict[str, Any], ...]:
    out = subprocess.run(
        [_kubectl(), "kustomize", str(ROOT / "kustomize" / "overlays" / env)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, tuple[dict[str, Any], ...]]:
    return request.param, _render(request.param)


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    kind = obj["kind"]
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if kind in POD_KINDS:
        return obj["spec"]["template"]["spec"]
    if kind == "InferenceService":
        return obj["spec"]["predictor"]
    return None


def containers(objs: tuple[dict[str, Any], ...]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(owner, container) for every container and init container of every workload."""
    found = []
    for obj in objs:
        spec = pod_spec(obj)
        if spec is None:
            continue
        for c in [*spec.get("initContainers", []), *spec.get("containers", [])]:
            found.append((obj, c))
    return found


def by_kind(objs: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def test_every_overlay_renders_objects(overlay):
    _, objs = overlay
    kinds = {o["kind"] for o in objs}
    assert {
        "Namespace",
        "CronJob",
        "Deployment",
        "InferenceService",
        "PersistentVolumeClaim",
    } <= kinds


def test_builtin_objects_validate_strictly_against_kubernetes_1_32(overlay):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    _, objs = overlay
    checked = 0
    for obj in objs:
        if obj["kind"] == "InferenceService":
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(
                f"{obj['kind']}/{obj['metadata']['name']}: {err.message} at {list(err.path)}"
            )
        checked += 1
    assert checked > 10


_PRIMITIVES = {"str", "int", "float", "bool", "object", "datetime", "date", "Quantity"}


def _unknown_fields(value: Any, type_name: str, path: str) -> list[str]:
    """Paths in `value` that the OpenAPI model `type_name` (KServe or Kubernetes) does not know.

    Walks the SDK's own `openapi_types` / `attribute_map`, the tables its deserializer uses, so
    a field the SDK would silently drop on the way to the cluster is reported here.
    """
    import kserve
    from kubernetes import client as k8s

    type_name = type_name.strip()
    if value is None or type_name in _PRIMITIVES:
        return []
    match = re.fullmatch(r"(?:list|List)\[(.+)\]", type_name)
    if match:
        return [
            bad
            for i, item in enumerate(value)
            for bad in _unknown_fields(item, match.group(1), f"{path}[{i}]")
        ]
    match = re.fullmatch(r"(?:dict\(str, *|Dict\[str, *)(.+?)[)\]]", type_name)
    if match:
        return [
            bad
            for k, v in value.items()
            for bad in _unknown_fields(v, match.group(1), f"{path}.{k}")
        ]
    model = getattr(kserve, type_name, None) or getattr(k8s, type_name)
    json_to_attr = {json_key: attr for attr, json_key in model.attribute_map.items()}
    bad = []
    for key, item in value.items():
        if key not in json_to_attr:
            bad.append(f"{path}.{key}")
            continue
        bad += _unknown_fields(item, model.openapi_types[json_to_attr[key]], f"{path}.{key}")
    return bad


def test_inference_service_matches_kserve_sdk_types_without_unknown_fields(overlay):
    pytest.importorskip("kserve")
    _, objs = overlay
    isvcs = [o for o in objs if o["kind"] == "InferenceService"]
    assert [o["metadata"]["name"] for o in isvcs] == ["movie-recommender"]
    for isvc in isvcs:
        assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
        unknown = _unknown_fields(isvc, "V1beta1InferenceService", "$")
        assert not unknown, f"fields the kserve SDK does not know: {unknown}"


def test_unknown_field_detection_is_not_vacuous():
    pytest.importorskip("kserve")
    isvc = {"spec": {"predictor": {"containers": [{"name": "x", "imagePullSecret": "typo"}]}}}
    assert _unknown_fields(isvc, "V1beta1InferenceService", "$") == [
        "$.spec.predictor.containers[0].imagePullSecret"
    ]


def test_inference_service_is_knative_with_tag_routing_and_kserve_container(overlay):
    env, objs = overlay
    isvc = by_kind(objs, "InferenceService")["movie-recommender"]
    ann = isvc["metadata"]["annotations"]
    assert ann["serving.kserve.io/deploymentMode"] == "Knative"
    assert ann["serving.kserve.io/enable-tag-routing"] == "true"
    assert ann["movie-mlops.io/canary-step-percent"] == CANARY_STEP[env]
    predictor = isvc["spec"]["predictor"]
    assert [c["name"] for c in predictor["containers"]] == ["kserve-container"]
    envs = {e["name"]: e.get("value") for e in predictor["containers"][0]["env"]}
    assert envs["STORAGE_URI"].startswith("pvc://mlflow-artifacts/")
    assert envs["STORAGE_URI"].endswith("/artifacts/kserve")
    assert "MODEL_VERSION" in envs
    assert predictor["minReplicas"] >= 1


def test_images_are_pinned(overlay):
    _, objs = overlay
    for owner, c in containers(objs):
        image = c["image"]
        name_part = image.split("@")[0].rsplit("/", 1)[-1]
        assert "@sha256:" in image or ":" in name_part, (
            f"{owner['metadata']['name']}: untagged {image}"
        )
        assert not image.endswith(":latest"), f"{owner['metadata']['name']}: {image}"


def test_every_container_has_requests_limits_and_hardened_security_context(overlay):
    _, objs = overlay
    for owner, c in containers(objs):
        where = f"{owner['kind']}/{owner['metadata']['name']}/{c['name']}"
        res = c.get("resources", {})
        for section in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(res.get(section, {})), f"{where}: {section}"
        sc = c.get("securityContext", {})
        assert sc.get("runAsNonRoot") is True, where
        assert sc.get("runAsUser") == 10001, where
        assert sc.get("allowPrivilegeEscalation") is False, where
        assert sc.get("readOnlyRootFilesystem") is True, where
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
        assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        # A read-only root needs an explicit writable scratch directory.
        mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
        assert "/tmp" in mounts, f"{where}: no writable /tmp"


def test_long_running_containers_have_probes_and_batch_jobs_do_not(overlay):
    _, objs = overlay
    for owner, c in containers(objs):
        where = f"{owner['kind']}/{owner['metadata']['name']}/{c['name']}"
        if owner["kind"] in BATCH_KINDS:
            # A Job's container exits by design: a liveness probe would only kill slow work.
            assert "livenessProbe" not in c, where
            assert "readinessProbe" not in c, where
        else:
            assert "readinessProbe" in c, where
            assert "livenessProbe" in c, where


def test_no_inline_secret_data_except_the_dev_sandbox_fake(overlay):
    env, objs = overlay
    for obj in objs:
        if obj["kind"] != "Secret" or not (obj.get("data") or obj.get("stringData")):
            continue
        labels = obj["metadata"].get("labels", {})
        where = f"{env}: Secret {obj['metadata']['name']} carries data; create it with kubectl"
        assert env == "dev", where
        assert labels.get("movie-mlops.io/fake-credential") == "true", where
    for cm in by_kind(objs, "ConfigMap").values():
        text = yaml.safe_dump(cm.get("data", {})).lower()
        assert "token" not in text.replace("$", "") or cm["metadata"]["name"].endswith("dashboard")


def test_tmdb_credentials_come_only_from_an_optional_secret(overlay):
    env, objs = overlay
    crawl = by_kind(objs, "CronJob")["crawl"]
    (c,) = pod_spec(crawl)["containers"]
    refs = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in c["env"]}
    for name, key in (("TMDB_ACCESS_TOKEN", "access-token"), ("TMDB_API_KEY", "api-key")):
        if env == "dev" and name == "TMDB_API_KEY":
            assert refs[name]["optional"] is True
            continue
        ref = refs[name]
        assert ref is not None, f"{name} must come from a Secret"
        assert ref["name"].startswith("tmdb-credentials")
        assert ref["key"] == key
        assert ref["optional"] is True
    if env != "dev":
        assert refs["TMDB_ACCESS_TOKEN"]["name"] == "tmdb-credentials"
        assert "Secret" not in {o["kind"] for o in objs}


def test_pvc_names_agree_between_writers_and_readers(overlay):
    _, objs = overlay
    pvcs = set(by_kind(objs, "PersistentVolumeClaim"))
    assert {"pipeline-data", "mlflow-db", "mlflow-artifacts"} <= pvcs
    claimed: dict[str, set[str]] = {}
    for obj in objs:
        spec = pod_spec(obj)
        for vol in (spec or {}).get("volumes", []):
            if "persistentVolumeClaim" in vol:
                claim = vol["persistentVolumeClaim"]["claimName"]
                claimed.setdefault(claim, set()).add(obj["metadata"]["name"])
    assert set(claimed) <= pvcs, f"claims without a PVC: {set(claimed) - pvcs}"
    assert {"crawl", "features", "train"} <= claimed["pipeline-data"]
    assert claimed["mlflow-artifacts"] == {"mlflow"}
    isvc = by_kind(objs, "InferenceService")["movie-recommender"]
    uri = {e["name"]: e.get("value") for e in isvc["spec"]["predictor"]["containers"][0]["env"]}[
        "STORAGE_URI"
    ]
    assert uri.split("/")[2] in pvcs


def test_one_namespace_per_overlay_and_it_is_declared(overlay):
    env, objs = overlay
    namespaces = {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"}
    assert namespaces == {NAMESPACES[env]}
    assert [o["metadata"]["name"] for o in objs if o["kind"] == "Namespace"] == [NAMESPACES[env]]


def test_labels_on_every_object_and_pod_template(overlay):
    _, objs = overlay
    for obj in objs:
        labels = obj["metadata"].get("labels", {})
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        assert labels.get("app.kubernetes.io/part-of") == "movie-mlops", where
        if obj["kind"] != "Namespace":
            assert all(k in labels for k in REQUIRED_LABELS), where
        if obj["kind"] in POD_KINDS:
            tpl = (
                obj["spec"]["jobTemplate"]["spec"]["template"]
                if obj["kind"] == "CronJob"
                else obj["spec"]["template"]
            )
            assert all(k in tpl["metadata"]["labels"] for k in REQUIRED_LABELS), where


def _minutes(schedule: str) -> tuple[int, int | None]:
    """(minute, hour or None for hourly) of the 'M H * * *' / 'M * * * *' forms the overlays use."""
    minute, hour, *rest = schedule.split()
    assert rest == ["*", "*", "*"], f"unsupported schedule {schedule!r}"
    return int(minute), None if hour == "*" else int(hour)


def test_cronjob_settings_and_features_run_after_crawl(overlay):
    _, objs = overlay
    cronjobs = by_kind(objs, "CronJob")
    assert {"crawl", "features", "train", "rollout"} <= set(cronjobs)
    for name, cj in cronjobs.items():
        spec = cj["spec"]
        assert spec["concurrencyPolicy"] == "Forbid", name
        assert spec["startingDeadlineSeconds"] > 0, name
        assert spec["successfulJobsHistoryLimit"] >= 1, name
        assert spec["failedJobsHistoryLimit"] >= 1, name
        job = spec["jobTemplate"]["spec"]
        assert job["activeDeadlineSeconds"] > 0, name
        assert "backoffLimit" in job, name
        assert job["template"]["spec"]["restartPolicy"] == "Never", name
    assert cronjobs["train"]["spec"]["suspend"] is True
    assert cronjobs["rollout"]["spec"]["suspend"] is True
    crawl_min, crawl_hour = _minutes(cronjobs["crawl"]["spec"]["schedule"])
    feat_min, feat_hour = _minutes(cronjobs["features"]["spec"]["schedule"])
    assert (crawl_hour is None) == (feat_hour is None), "crawl and features share a cadence"
    gap = (feat_min - crawl_min) + 60 * ((feat_hour or 0) - (crawl_hour or 0))
    deadline = cronjobs["crawl"]["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"]
    assert gap * 60 >= deadline, "features would start before crawl's deadline has passed"


def test_rollout_rbac_is_namespaced_and_minimal(overlay):
    _, objs = overlay
    assert "ClusterRole" not in {o["kind"] for o in objs}
    (rule,) = by_kind(objs, "Role")["rollout"]["rules"]
    assert rule["resources"] == ["inferenceservices"]
    # get and patch of the one object: the rollout tool sends a merge patch carrying the
    # resourceVersion it read (optimistic lock); no update, list, watch, create or delete
    assert rule["resourceNames"] == [
        by_kind(objs, "InferenceService")["movie-recommender"]["metadata"]["name"]
    ]
    assert set(rule["verbs"]) == {"get", "patch"}
    binding = by_kind(objs, "RoleBinding")["rollout"]
    assert binding["subjects"][0]["name"] == "rollout"
    rollout = pod_spec(by_kind(objs, "CronJob")["rollout"])
    assert rollout["serviceAccountName"] == "rollout"


CANARY_STEPS = {"dev": (50, 100), "staging": (10, 50, 100), "prod": (5, 10, 25, 50, 100)}


def test_each_overlay_sets_a_measured_rollout_plan_and_the_job_reaches_prometheus(overlay):
    from pipelines.rollout.auto import Plan

    env, objs = overlay
    isvc = by_kind(objs, "InferenceService")["movie-recommender"]
    plan = Plan.of(isvc, {})  # every annotation parses
    assert plan.steps == CANARY_STEPS[env]
    assert str(plan.steps[0]) == CANARY_STEP[env]  # `canary` without --percent: the first step
    intervals = {"dev": 30, "staging": 60, "prod": 300}
    assert plan.interval == intervals[env]
    assert plan.failure_threshold >= 2 and plan.thresholds.min_requests > 0
    rollout = pod_spec(by_kind(objs, "CronJob")["rollout"])["containers"][0]
    envs = {e["name"]: e.get("value") for e in rollout["env"]}
    assert envs["PROMETHEUS_URL"].startswith("http://prometheus-operated.monitoring.svc:")
    job = by_kind(objs, "CronJob")["rollout"]["spec"]["jobTemplate"]["spec"]
    longest = len(plan.steps) * plan.interval + plan.deadline
    assert job["activeDeadlineSeconds"] >= longest, "the Job would be killed mid-rollout"


def test_predictor_pods_mount_no_service_account_token(overlay):
    _, objs = overlay
    predictor = by_kind(objs, "InferenceService")["movie-recommender"]["spec"]["predictor"]
    assert predictor["automountServiceAccountToken"] is False


def test_cluster_scoped_policy_validates_and_carries_no_namespace():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    out = subprocess.run(
        [_kubectl(), "kustomize", str(ROOT / "kustomize" / "cluster")],
        capture_output=True,
        check=True,
    )
    objs = [o for o in yaml.safe_load_all(out.stdout) if o]
    assert {o["kind"] for o in objs} == {
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
    for obj in objs:
        assert "namespace" not in obj["metadata"], obj["metadata"]["name"]
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_mlflow_is_single_writer_and_allows_its_namespaced_hosts(overlay):
    env, objs = overlay
    mlflow = by_kind(objs, "Deployment")["mlflow"]
    assert mlflow["spec"]["replicas"] == 1
    assert mlflow["spec"]["strategy"]["type"] == "Recreate"
    (c,) = mlflow["spec"]["template"]["spec"]["containers"]
    assert "--workers=1" in c["args"]
    assert any(a.startswith("--backend-store-uri=sqlite:////mlflow/db/") for a in c["args"])
    envs = {e["name"]: e.get("value") for e in c["env"]}
    hosts = envs["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert f"mlflow.{NAMESPACES[env]}.svc.cluster.local" in hosts
    assert "mlflow" in hosts
    assert envs["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health"


def test_overlays_differ_as_documented():
    dev, staging, prod = (_render(env) for env in OVERLAYS)

    def isvc(objs):
        return by_kind(objs, "InferenceService")["movie-recommender"]

    assert (
        isvc(prod)["spec"]["predictor"]["minReplicas"]
        > isvc(dev)["spec"]["predictor"]["minReplicas"]
    )
    assert by_kind(prod, "Deployment")["frontend"]["spec"]["replicas"] > 1
    pdbs = by_kind(prod, "PodDisruptionBudget")
    assert {"frontend", "movie-recommender-predictor"} <= set(pdbs)
    assert not by_kind(dev, "PodDisruptionBudget")
    assert not by_kind(staging, "PodDisruptionBudget")
    # Prod's predictor is Guaranteed QoS.
    res = isvc(prod)["spec"]["predictor"]["containers"][0]["resources"]
    assert res["requests"] == res["limits"]
    # The sandbox runs only in dev; network policies only outside dev.
    assert "tmdb-sandbox" in by_kind(dev, "Deployment")
    assert "tmdb-sandbox" not in by_kind(staging, "Deployment")
    assert "tmdb-sandbox" not in by_kind(prod, "Deployment")
    assert not by_kind(dev, "NetworkPolicy")
    for objs in (staging, prod):
        netpols = by_kind(objs, "NetworkPolicy")
        assert netpols["default-deny"]["spec"]["podSelector"] == {}
        assert set(netpols["default-deny"]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    dev_crawl = by_kind(dev, "CronJob")["crawl"]["spec"]["schedule"]
    prod_crawl = by_kind(prod, "CronJob")["crawl"]["spec"]["schedule"]
    assert _minutes(dev_crawl)[1] is None, "dev crawls hourly"
    assert _minutes(prod_crawl)[1] is not None, "prod crawls daily"


def _python_sources() -> str:
    texts = []
    for package in ("contracts", "recommenders", "pipelines", "model_server", "tmdb_sandbox"):
        for path in sorted((ROOT / package).rglob("*.py")):
            texts.append(path.read_text(encoding="utf-8"))
    return "\n".join(texts)


def test_every_env_var_the_manifests_set_is_read_by_the_code(overlay):
    _, objs = overlay
    names = {e["name"] for _, c in containers(objs) for e in c.get("env", [])}
    sources = _python_sources()
    unread = sorted(
        n for n in names if n not in THIRD_PARTY_ENV and not re.search(rf"[\"']{n}[\"']", sources)
    )
    assert not unread, f"set by the manifests but read by no code: {unread}"


def test_third_party_env_readers_exist():
    template = (ROOT / "docker" / "frontend" / "default.conf.template").read_text(encoding="utf-8")
    for name in ("PREDICTOR_HOST", "PREDICTOR_UPSTREAM"):
        assert f"${{{name}}}" in template, name
    frontend = by_kind(_render("dev"), "Deployment")["frontend"]
    envs = {e["name"]: e for e in frontend["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "$(POD_NAMESPACE)" in envs["PREDICTOR_HOST"]["value"]
    mlflow = pytest.importorskip("mlflow")
    mlflow_src = "\n".join(
        p.read_text(encoding="utf-8", errors="ignore")
        for p in Path(mlflow.__file__).parent.rglob("*.py")
        if p.name in {"environment_variables.py", "cli.py", "__init__.py"}
    )
    for name in ("MLFLOW_SERVER_ALLOWED_HOSTS", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"):
        assert name in mlflow_src, f"mlflow no longer reads {name}"

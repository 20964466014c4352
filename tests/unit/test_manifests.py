"""Offline checks of the cluster path: every overlay renders, validates and obeys the policy.

Rendering uses `kubectl kustomize` (no cluster needed). Built-in kinds are validated strictly
against the Kubernetes 1.32 schemas (`kubernetes-validate`), the InferenceService against the
KServe SDK's own types. The policy tests encode docs/cluster.md: what every container must carry,
what the overlays must differ in, and that the manifests only set variables the code reads.
"""

from __future__ import annotations

import configparser
import copy
import functools
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from contracts import credentials
from contracts.inferenceservice import CANARY_ANNOTATION_PREFIX, CANARY_PLAN_DEFAULTS

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
    "CANARY_PERCENT": "docker/frontend/canary-split.envsh (nginx entrypoint)",
    "EVENTS_UPSTREAM": "docker/frontend/default.conf.template (nginx envsubst)",
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
        # custom resources: the KServe SDK's types and the Prometheus operator's CRD schemas
        # check those (below)
        if obj["kind"] == "InferenceService" or obj["apiVersion"].startswith("monitoring."):
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
    assert {"crawl", "features", "train", "event-sink"} <= claimed["pipeline-data"]
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
    settings = {
        key.removeprefix(CANARY_ANNOTATION_PREFIX)
        for key in isvc["metadata"]["annotations"]
        if key.startswith(CANARY_ANNOTATION_PREFIX)
    }
    # every setting is one the plan reads (no stale name, e.g. min-clicks), and all are set
    assert settings == {*CANARY_PLAN_DEFAULTS, "step-percent"}
    assert plan.thresholds.min_impressions > 0  # the CTR check is on in every overlay
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
    ini = configparser.ConfigParser()
    ini.read_string(by_kind(objs, "ConfigMap")["mlflow-auth-config"]["data"]["basic_auth.ini"])
    assert ini.getint("mlflow", "auth_cache_ttl_seconds") == credentials.AUTH_CACHE_TTL_S
    assert ini.get("mlflow", "default_permission") == "NO_PERMISSIONS"


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
    for name in ("PREDICTOR_HOST", "PREDICTOR_UPSTREAM", "CANARY_SPLIT", "EVENTS_UPSTREAM"):
        assert f"${{{name}}}" in template, name
    envsh = (ROOT / "docker" / "frontend" / "canary-split.envsh").read_text(encoding="utf-8")
    assert "CANARY_PERCENT" in envsh and "export CANARY_SPLIT" in envsh
    dockerfile = (ROOT / "docker" / "frontend.Dockerfile").read_text(encoding="utf-8")
    assert "/docker-entrypoint.d/16-canary-split.envsh" in dockerfile
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


# --- images, the API server placeholder, monitors, the dashboard, sizing -------------------------


def _lib_value(name: str) -> str:
    """A constant of scripts/lib.sh (`NAME=value` or `NAME="${NAME:-value}"`)."""
    text = (ROOT / "scripts" / "lib.sh").read_text(encoding="utf-8")
    match = re.search(rf'^{name}=(?:"\$\{{{name}:-)?"?([^"\n}}]+)', text, re.MULTILINE)
    assert match, f"{name} not set in scripts/lib.sh"
    return match.group(1).replace("$REGISTRY", _lib_value("REGISTRY") if name != "REGISTRY" else "")


PROJECT_IMAGES = ("pipelines", "model-server", "frontend")


def test_project_images_are_named_in_the_kind_registry(overlay):
    _, objs = overlay
    prefix = _lib_value("IMAGE_PREFIX")
    assert prefix == "localhost:5001/movie-mlops"
    ours = set()
    for owner, c in containers(objs):
        image = c["image"]
        # never Docker Hub's namespace: an unqualified movie-mlops/... is docker.io/movie-mlops/...
        assert not image.startswith("movie-mlops/"), f"{owner['metadata']['name']}: {image}"
        if "movie-mlops/" in image:
            assert image.startswith(f"{prefix}/"), image
            ours.add(image.split("@")[0].rsplit(":", 1)[0].rsplit("/", 1)[-1])
    assert ours == set(PROJECT_IMAGES)


def test_the_api_server_placeholder_is_the_rollout_policys_only_destination():
    placeholder = _lib_value("API_SERVER_PLACEHOLDER")
    assert placeholder == "192.0.2.1/32"  # RFC 5737 TEST-NET-1: routes nowhere if left in
    for env in ("staging", "prod"):
        netpols = by_kind(_render(env), "NetworkPolicy")
        holders = [n for n, p in netpols.items() if placeholder in yaml.safe_dump(p)]
        assert holders == ["rollout-to-api-server"], env
        (rule,) = netpols["rollout-to-api-server"]["spec"]["egress"]
        assert rule["to"] == [{"ipBlock": {"cidr": placeholder}}]
        # No rule lets the rollout pods (or any pod) reach a port at any address.
        for name, pol in netpols.items():
            for egress in pol["spec"].get("egress", []):
                assert egress.get("to"), f"{env}: {name} allows {egress.get('ports')} anywhere"


_CRD_SCHEMAS = ROOT / "tests" / "fixtures" / "prometheus-operator"


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The CRD's schema with unknown fields refused (as `kubectl apply --validate=strict`)."""
    schema = dict(schema)
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        schema["properties"] = {k: _strict(v) for k, v in schema["properties"].items()}
        schema.setdefault("additionalProperties", False)
    if isinstance(schema.get("items"), dict):
        schema["items"] = _strict(schema["items"])
    if schema.get("x-kubernetes-int-or-string"):
        schema.pop("type", None)
        schema["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    return schema


def _validate_monitor(obj: dict[str, Any]) -> None:
    import jsonschema

    name = {"PodMonitor": "podmonitors", "ServiceMonitor": "servicemonitors"}[obj["kind"]]
    fixture = json.loads((_CRD_SCHEMAS / f"{name}.v1.json").read_text(encoding="utf-8"))
    assert fixture["kind"] == obj["kind"] and obj["apiVersion"] == "monitoring.coreos.com/v1"
    schema = _strict(fixture["openAPIV3Schema"])
    # metadata is the API server's ObjectMeta, not part of the CRD schema
    schema["properties"]["metadata"] = {"type": "object"}
    jsonschema.validate(obj, schema)


def test_monitors_validate_against_the_prometheus_operator_crds(overlay):
    _, objs = overlay
    monitors = [o for o in objs if o["apiVersion"].startswith("monitoring.coreos.com/")]
    assert {(o["kind"], o["metadata"]["name"]) for o in monitors} == {
        ("PodMonitor", "movie-recommender-predictor"),
        ("ServiceMonitor", "event-sink"),
    }
    for obj in monitors:
        _validate_monitor(obj)


def test_monitor_validation_is_not_vacuous():
    import jsonschema

    pod_monitor = by_kind(_render("dev"), "PodMonitor")["movie-recommender-predictor"]
    typo = copy.deepcopy(pod_monitor)
    typo["spec"]["podMetricsEndpoints"][0]["prot"] = "user-port"
    with pytest.raises(jsonschema.ValidationError):
        _validate_monitor(typo)
    missing = copy.deepcopy(pod_monitor)
    del missing["spec"]["selector"]
    with pytest.raises(jsonschema.ValidationError):
        _validate_monitor(missing)


def test_the_predictor_is_scraped_on_its_own_port_and_queue_proxys(overlay):
    """Not through prometheus.io annotations: KServe points them at queue-proxy (9091) without
    the model server's metrics (kserve v0.20.0 metrics_aggregate_injector.go), and the Prometheus
    operator ignores them anyway."""
    _, objs = overlay
    isvc = by_kind(objs, "InferenceService")["movie-recommender"]
    assert "serving.kserve.io/enable-prometheus-scraping" not in isvc["metadata"]["annotations"]
    pm = by_kind(objs, "PodMonitor")["movie-recommender-predictor"]
    assert pm["metadata"]["namespace"] == isvc["metadata"]["namespace"]
    # the labels KServe puts on predictor pods (components/predictor.go:
    # InferenceServicePodLabelKey, KServiceComponentLabel)
    assert pm["spec"]["selector"]["matchLabels"] == {
        "serving.kserve.io/inferenceservice": isvc["metadata"]["name"],
        "component": "predictor",
    }
    endpoints = {e["port"]: e for e in pm["spec"]["podMetricsEndpoints"]}
    # Knative names the user container's port `user-port` (deploy.go buildContainerPorts) and
    # queue-proxy's request-metrics port `http-usermetric` (revision_helpers.go).
    assert set(endpoints) == {"user-port", "http-usermetric"}
    (port,) = isvc["spec"]["predictor"]["containers"][0]["ports"]
    args = isvc["spec"]["predictor"]["containers"][0]["args"]
    assert args[args.index("--http_port") + 1] == str(port["containerPort"])
    assert "/metrics" in (ROOT / "model_server" / "server.py").read_text(encoding="utf-8")
    for e in endpoints.values():
        assert e["path"] == "/metrics"
        assert {
            "sourceLabels": ["__meta_kubernetes_pod_label_serving_knative_dev_revision"],
            "targetLabel": "revision",
        } in e["relabelings"]


def test_the_event_sink_is_scraped_by_its_service_label(overlay):
    _, objs = overlay
    sm = by_kind(objs, "ServiceMonitor")["event-sink"]
    assert sm["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "event-sink"}
    assert sm["spec"]["endpoints"] == [{"targetPort": 8080, "path": "/metrics", "interval": "15s"}]
    service = by_kind(objs, "Service").get("event-sink")
    if service is not None:  # the sink's manifests (issue #11) agree with the monitor
        assert service["metadata"]["labels"]["app.kubernetes.io/name"] == "event-sink"
        assert 8080 in {p.get("targetPort", p["port"]) for p in service["spec"]["ports"]} or any(
            p.get("containerPort") == 8080
            for _, c in containers(objs)
            if c["name"] == "event-sink"
            for p in c.get("ports", [])
        )


# What each scraped component exports, with the labels of each series. Knative (Go) is read from
# knative/serving knative-v1.21.1 pkg/queue/request_metric.go: OpenTelemetry instruments
# `kn.serving.invocation.duration` (histogram, unit s, attribute http.response.status_code) and
# `kn.serving.queue.depth` (gauge), exported by the OTel Prometheus exporter with
# UnderscoreEscapingWithSuffixes (knative/pkg observability/metrics/prometheus_enabled.go), which
# also adds otel_scope_* labels. The OpenCensus names (revision_app_request_count, ...) are gone.
KNATIVE_QUEUE_PROXY = {
    "kn_serving_invocation_duration_seconds": ("histogram", {"http_response_status_code"}),
    "kn_serving_queue_depth": ("gauge", set()),
}
OTEL_SCOPE_LABELS = {"otel_scope_name", "otel_scope_version", "otel_scope_schema_url"}
# Labels every scraped series gets from the Prometheus operator's target relabelling.
TARGET_LABELS = {"namespace", "pod", "container", "endpoint", "job", "instance", "service"}


def _prometheus_series(metric: Any) -> dict[str, set[str]]:
    """The series names a prometheus_client metric exposes, each with its label names."""
    labels = set(metric._labelnames)
    name, kind = metric._name, metric._type
    if kind == "counter":
        return {f"{name}_total": labels}
    if kind == "histogram":
        return {f"{name}_bucket": labels | {"le"}, f"{name}_sum": labels, f"{name}_count": labels}
    return {name: labels}


def _exported_series() -> dict[str, set[str]]:
    import dataclasses

    import kserve.metrics
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics import MetricWrapperBase

    from model_server.metrics import Metrics
    from pipelines.events.sink import Metrics as SinkMetrics

    series: dict[str, set[str]] = {}
    ours = Metrics.create(CollectorRegistry())
    for field in dataclasses.fields(ours):
        if isinstance(getattr(ours, field.name), MetricWrapperBase):
            series.update(_prometheus_series(getattr(ours, field.name)))
    for value in vars(SinkMetrics()).values():  # the event sink's own registry
        if isinstance(value, MetricWrapperBase):
            series.update(_prometheus_series(value))
    for value in vars(kserve.metrics).values():
        if isinstance(value, MetricWrapperBase):
            series.update(_prometheus_series(value))
    for name, (kind, labels) in KNATIVE_QUEUE_PROXY.items():
        labels = labels | OTEL_SCOPE_LABELS
        if kind == "histogram":
            series.update(
                {f"{name}_bucket": labels | {"le"}, f"{name}_sum": labels, f"{name}_count": labels}
            )
        else:
            series[name] = labels
    return series


_PROMQL_WORDS = {
    "sum", "avg", "min", "max", "count", "by", "without", "rate", "irate", "increase",
    "histogram_quantile", "clamp_min", "clamp_max", "on", "ignoring", "group_left", "and", "or",
    "unless", "offset", "topk", "bottomk", "e",
}  # fmt: skip


def _promql_references(expr: str) -> list[tuple[str, set[str]]]:
    """(series name, label names matched on it) for every selector, plus ("", labels) for every
    by/without clause: enough PromQL for the dashboard's expressions."""
    refs: list[tuple[str, set[str]]] = []
    for clause in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        refs.append(("", {x.strip() for x in clause.split(",") if x.strip()}))
    rest = re.sub(r"\b(?:by|without)\s*\([^)]*\)", " ", expr)
    for name, matchers in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}", rest):
        refs.append((name, set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers))))
    rest = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"|\b\d+(?:\.\d+)?(?:e-?\d+)?\b", " ", rest)
    for word in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rest):
        if word not in _PROMQL_WORDS and not any(n == word for n, _ in refs):
            refs.append((word, set()))
    return refs


def _unknown_references(expr: str, series: dict[str, set[str]]) -> list[str]:
    bad, names = [], []
    for name, labels in _promql_references(expr):
        if not name:
            continue
        names.append(name)
        if name in series:
            known = series[name] | TARGET_LABELS | {"revision"}
        else:
            bad.append(f"series {name}")
            continue
        bad += [f"label {label} on {name}" for label in sorted(labels - known)]
    in_expr = set().union(*(series.get(n, set()) for n in names)) | TARGET_LABELS | {"revision"}
    for name, labels in _promql_references(expr):
        if not name:
            bad += [f"grouping label {label}" for label in sorted(labels - in_expr)]
    return bad


def test_every_dashboard_query_uses_series_and_labels_the_components_export():
    dashboard = json.loads(
        (ROOT / "kustomize" / "components" / "monitoring" / "dashboard.json").read_text("utf-8")
    )
    series = _exported_series()
    assert "request_predict_seconds_bucket" in series  # KServe's own histogram
    assert "movie_recommender_predictions_total" in series
    # `revision` is what the PodMonitor's relabelling adds
    pm = by_kind(_render("dev"), "PodMonitor")["movie-recommender-predictor"]
    assert all(
        r["targetLabel"] == "revision" for e in pm["spec"]["podMetricsEndpoints"]
        for r in e["relabelings"]
    )  # fmt: skip
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 8
    assert any("kn_serving_" in e for e in exprs), "no Knative panel"
    for expr in exprs:
        assert not _unknown_references(expr, series), (expr, _unknown_references(expr, series))
    for var in dashboard["templating"]["list"]:
        match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var.get("query", ""))
        if match:
            assert match.group(1) in series and match.group(2) in TARGET_LABELS, var


def test_the_dashboard_check_refuses_knatives_pre_1_19_names():
    series = _exported_series()
    old = (
        'sum by (response_code_class) (rate(revision_app_request_count{namespace="x",'
        ' response_code_class=~"5xx"}[5m]))'
    )
    assert _unknown_references(old, series) == [
        "series revision_app_request_count",
        "grouping label response_code_class",
    ]
    wrong_label = (
        'sum by (model_version) (rate(request_predict_seconds_count{model_version="1"}[5m]))'
    )
    assert _unknown_references(wrong_label, series) == [
        "label model_version on request_predict_seconds_count",
        "grouping label model_version",
    ]


# What the platform itself requests on a one-node kind cluster, in millicores / MiB (estimates
# from the upstream manifests: kube-system ~950m/300Mi (apiserver 250m, controller-manager 200m,
# scheduler 100m, etcd 100m/100Mi, coredns 2x100m/70Mi, kindnet 100m/50Mi); Knative Serving
# knative-v1.21.1 config/core/deployments activator 300m/60Mi, autoscaler, controller, webhook
# 100m/100Mi each; KServe v0.20.0 config/manager 100m/200Mi and config/llmisvc 100m/300Mi;
# Kourier and cert-manager ~300m/300Mi together).
PLATFORM_MILLICPU = 2050
PLATFORM_MIB = 1500
# Knative's queue-proxy request when no annotation sets one (pkg/deployment/config.go
# QueueSidecarCPURequestDefault 25m; no memory request by default).
QUEUE_PROXY_DEFAULT_MILLICPU = 25


def _millicpu(value: str) -> int:
    return int(value[:-1]) if value.endswith("m") else int(float(value) * 1000)


def _mib(value: str) -> float:
    for unit, factor in (("Ki", 1 / 1024), ("Mi", 1), ("Gi", 1024)):
        if value.endswith(unit):
            return float(value[:-2]) * factor
    return float(value) / 2**20


def _canary_peak(objs: tuple[dict[str, Any], ...]) -> tuple[int, float]:
    """Requests during a canary: Deployments at their replicas, every batch Job at once, and two
    predictor revisions at minReplicas each (kserve-container plus queue-proxy)."""
    cpu, mib = 0, 0.0
    for obj in objs:
        spec = pod_spec(obj)
        if spec is None:
            continue
        pods = obj["spec"].get("replicas", 1) if obj["kind"] == "Deployment" else 1
        requests = [c["resources"]["requests"] for c in spec["containers"]]
        if obj["kind"] == "InferenceService":
            pods = 2 * spec["minReplicas"]
            ann = spec.get("annotations", {})
            requests.append(
                {
                    "cpu": ann.get(
                        "queue.sidecar.serving.knative.dev/cpu-resource-request",
                        f"{QUEUE_PROXY_DEFAULT_MILLICPU}m",
                    ),
                    "memory": ann.get(
                        "queue.sidecar.serving.knative.dev/memory-resource-request", "0"
                    ),
                }
            )
        cpu += pods * sum(_millicpu(r["cpu"]) for r in requests)
        mib += pods * sum(_mib(r["memory"]) for r in requests)
    return cpu + PLATFORM_MILLICPU, mib + PLATFORM_MIB


def test_each_overlay_declares_the_node_it_needs_during_a_canary(overlay):
    env, objs = overlay
    (ns,) = by_kind(objs, "Namespace").values()
    ann = ns["metadata"]["annotations"]
    cpu, mib = _canary_peak(objs)
    declared_cpu = int(ann["movie-mlops.io/min-node-cpu"])
    declared_gi = int(ann["movie-mlops.io/min-node-memory-gi"])
    assert declared_cpu * 1000 >= cpu, f"{env} needs {cpu}m during a canary"
    assert declared_gi * 1024 >= mib, f"{env} needs {mib:.0f}Mi during a canary"
    # not padded either: the check in deploy.sh must not refuse a node that fits
    assert (declared_cpu - 1) * 1000 < cpu and (declared_gi - 1) * 1024 < mib, env
    if env == "dev":
        assert declared_cpu <= 4, "dev must fit a 4-CPU Docker host"


def test_prod_predictor_pods_are_guaranteed_qos_queue_proxy_included():
    predictor = by_kind(_render("prod"), "InferenceService")["movie-recommender"]["spec"][
        "predictor"
    ]
    res = predictor["containers"][0]["resources"]
    assert res["requests"] == res["limits"]
    # queue-proxy gets requests == limits only through these revision annotations
    # (knative/serving knative-v1.21.1 pkg/reconciler/revision/resources/queue.go)
    ann = predictor["annotations"]
    prefix = "queue.sidecar.serving.knative.dev/"
    for resource in ("cpu", "memory"):
        request = ann[f"{prefix}{resource}-resource-request"]
        assert request == ann[f"{prefix}{resource}-resource-limit"], resource
    for env in ("dev", "staging"):
        other = by_kind(_render(env), "InferenceService")["movie-recommender"]["spec"]["predictor"]
        assert not other.get("annotations"), f"{env} keeps Knative's queue-proxy defaults"


def test_the_predictor_logs_to_the_event_sink_which_writes_to_the_data_pvc(overlay):
    env, objs = overlay
    predictor = by_kind(objs, "InferenceService")["movie-recommender"]["spec"]["predictor"]
    logger = predictor["logger"]
    service = by_kind(objs, "Service")["event-sink"]
    (port,) = service["spec"]["ports"]
    # KServe's payload logger: requests and responses, to the sink's Service by its FQDN
    assert logger["mode"] == "all"
    assert logger["url"] == f"http://event-sink.{NAMESPACES[env]}.svc.cluster.local:{port['port']}/"
    assert logger["metadataHeaders"] == ["X-User-Id"]
    sink = by_kind(objs, "Deployment")["event-sink"]
    assert sink["spec"]["replicas"] == 1 and sink["spec"]["strategy"]["type"] == "Recreate"
    template = sink["spec"]["template"]
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    (c,) = template["spec"]["containers"]
    assert c["command"] == ["python", "-m", "pipelines.events"] and c["args"][0] == "serve"
    assert {p["name"]: p["containerPort"] for p in c["ports"]}[port["targetPort"]] == 8080
    assert {e["name"]: e.get("value") for e in c["env"]}["DATA_DIR"] == "/data"
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in template["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert [(mounts[name], claim) for name, claim in claims.items()] == [("/data", "pipeline-data")]
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/healthz"


def _allows(rules: list[dict[str, Any]], direction: str, selector: dict[str, str], port: int):
    """Whether one of ``rules`` lets pods matching ``selector`` through on TCP ``port``."""
    for rule in rules:
        peers = rule.get(direction, [])
        ports = {p["port"] for p in rule.get("ports", [])}
        if ports and port not in ports:
            continue
        if not peers or any(
            "podSelector" in peer
            and "namespaceSelector" not in peer
            and peer["podSelector"].get("matchLabels", {}).items() <= selector.items()
            for peer in peers
        ):
            return True
    return False


def test_network_policies_let_the_predictor_and_front_end_reach_the_event_sink():
    for env in ("staging", "prod"):
        netpols = by_kind(_render(env), "NetworkPolicy")
        predictor = {"serving.kserve.io/inferenceservice": "movie-recommender"}
        frontend = {"app.kubernetes.io/name": "frontend"}
        sink = {"app.kubernetes.io/name": "event-sink"}
        ingress = netpols["event-sink-ingress"]["spec"]
        assert ingress["podSelector"]["matchLabels"] == sink
        for who in (predictor, frontend):
            assert _allows(ingress["ingress"], "from", who, 8080), (env, who)
        assert not _allows(ingress["ingress"], "from", {"app.kubernetes.io/name": "crawl"}, 8080)
        assert _allows(netpols["predictor-egress"]["spec"]["egress"], "to", sink, 8080)
        assert _allows(netpols["frontend"]["spec"]["egress"], "to", sink, 8080)
        assert not _allows(netpols["train-egress"]["spec"]["egress"], "to", sink, 8080)

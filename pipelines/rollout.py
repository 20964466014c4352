"""Canary, promote and roll back model versions of the `movie-recommender` InferenceService.

The same steps drive the cluster (the InferenceService object, through the Kubernetes API) and the
local stack (the same document in ``.local/stack/inferenceservice.json``, reconciled by
``localstack.ingress``). Semantics are KServe's (Knative deployment mode):

``canary --version N [--percent P]``
    Point the predictor at registered version N (``STORAGE_URI`` = that version's artefact on the
    ``mlflow-artifacts`` volume, ``MODEL_VERSION`` = N) with ``canaryTrafficPercent: P``. KServe
    starts a new revision and, once it is ready, sends it P % of the traffic; the last rolled-out
    revision keeps the rest. With nothing rolled out yet, the version simply gets 100 %.
``promote``
    Drop ``canaryTrafficPercent``: the canary's revision gets 100 % and becomes the rolled-out one;
    the MLflow alias ``champion`` moves to its version and the old champion becomes ``previous``.
``rollback``
    During a canary, ``canaryTrafficPercent: 0``: all traffic returns to the last rolled-out
    revision at once, no new pods needed, ``champion`` unchanged. After a promote, the predictor
    is pointed back at the version aliased ``previous`` (a full rollout) and ``champion`` with it.

The registry's aliases are the deployment record (``champion`` = what is served at 100 %); the
InferenceService carries only what KServe needs (``STORAGE_URI``, ``MODEL_VERSION``, the split).

Every step waits, with a timeout, until the controller has observed the change and the new
revision is ready (or has failed, which fails the step with the controller's message).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Protocol

import typer

from pipelines import cli
from pipelines.errors import ConfigError, RolloutError, TrackingUnavailableError
from pipelines.snapshots import atomic_write_json

log = logging.getLogger(__name__)

MODEL_NAME = "movie-recommender"
KSERVE_GROUP, KSERVE_VERSION, KSERVE_PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
ARTIFACT_PATH = "kserve"  # where training logs the plain numpy artefact inside the run
CHAMPION_ALIAS, PREVIOUS_ALIAS = "champion", "previous"  # MLflow aliases: what is (was) served
STEP_ANNOTATION = (
    "movie-mlops.io/canary-step-percent"  # set per overlay: dev 50, staging 10, prod 5
)
LOCAL_STEP_PERCENT = "50"  # the local stack is the dev overlay's twin
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class Target(StrEnum):
    """Where the InferenceService lives."""

    LOCAL = "local"
    CLUSTER = "cluster"


@dataclass(frozen=True)
class RolloutSettings:
    target: Target = Target.LOCAL
    namespace: str = "default"
    isvc_name: str = MODEL_NAME
    model_name: str = MODEL_NAME
    tracking_uri: str = "http://127.0.0.1:5000"
    local_root: Path = Path(".local")
    timeout: float = 300.0


# -- where the InferenceService lives --------------------------------------------------------


class Backend(Protocol):
    def get(self) -> dict[str, Any] | None: ...

    def apply(self, isvc: dict[str, Any]) -> dict[str, Any]: ...

    def status(self) -> dict[str, Any] | None: ...


class LocalBackend:
    """The local stack's InferenceService: a JSON document the local controller reconciles."""

    def __init__(self, root: Path, name: str) -> None:
        self.stack_dir = root / "stack"
        self.name = name

    def get(self) -> dict[str, Any] | None:
        path = self.stack_dir / "inferenceservice.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def apply(self, isvc: dict[str, Any]) -> dict[str, Any]:
        isvc = copy.deepcopy(isvc)
        meta = isvc.setdefault("metadata", {})
        meta["generation"] = int(meta.get("generation", 0)) + 1
        self.stack_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.stack_dir / "inferenceservice.json", isvc)
        return isvc

    def status(self) -> dict[str, Any] | None:
        path = self.stack_dir / "status.json"
        return json.loads(path.read_text()).get("status") if path.is_file() else None


class ClusterBackend:
    """The InferenceService object, through the Kubernetes API (in-cluster or kubeconfig)."""

    def __init__(self, namespace: str, name: str) -> None:
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        self.api = client.CustomObjectsApi()
        self.namespace, self.name = namespace, name

    def _args(self) -> tuple[str, str, str, str]:
        return KSERVE_GROUP, KSERVE_VERSION, self.namespace, KSERVE_PLURAL

    def get(self) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.get_namespaced_custom_object(*self._args(), self.name)
        except ApiException as err:
            if err.status == 404:
                return None
            raise RolloutError(f"cannot read InferenceService {self.name}: {err.reason}") from err

    def apply(self, isvc: dict[str, Any]) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:  # replace carries resourceVersion: a concurrent edit fails instead of being lost
            return self.api.replace_namespaced_custom_object(*self._args(), self.name, isvc)
        except ApiException as err:
            raise RolloutError(f"cannot update InferenceService {self.name}: {err.reason}") from err

    def status(self) -> dict[str, Any] | None:
        current = self.get()
        return None if current is None else current.get("status")


def make_backend(settings: RolloutSettings) -> Backend:
    if settings.target is Target.CLUSTER:
        return ClusterBackend(settings.namespace, settings.isvc_name)
    return LocalBackend(settings.local_root, settings.isvc_name)


# -- MLflow ----------------------------------------------------------------------------------


def storage_uri_for(tracking_uri: str, model_name: str, version: str) -> str:
    """``pvc://mlflow-artifacts/…`` of a registered version's numpy artefact."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        mv = client.get_model_version(model_name, version)
        run = client.get_run(mv.run_id)
    except MlflowException as err:
        raise RolloutError(f"{model_name} version {version}: {err.message}") from err
    except OSError as err:
        raise TrackingUnavailableError(f"MLflow at {tracking_uri} is unreachable: {err}") from err
    artifact_uri = run.info.artifact_uri  # mlflow-artifacts:/<experiment>/<run>/artifacts
    prefix = "mlflow-artifacts:/"
    if not artifact_uri.startswith(prefix):
        raise RolloutError(
            f"run {mv.run_id} stores artefacts at {artifact_uri}; the serving path expects the "
            "MLflow server's proxied artefact store (mlflow server --serve-artifacts)"
        )
    return f"pvc://mlflow-artifacts/{artifact_uri.removeprefix(prefix).strip('/')}/{ARTIFACT_PATH}"


# -- the steps ---------------------------------------------------------------------------------


def new_inferenceservice(name: str) -> dict[str, Any]:
    """The local stack's starting document (the cluster's comes from the kustomize overlay)."""
    return {
        "apiVersion": f"{KSERVE_GROUP}/{KSERVE_VERSION}",
        "kind": "InferenceService",
        "metadata": {
            "name": name,
            "annotations": {
                "serving.kserve.io/deploymentMode": "Knative",
                "serving.kserve.io/enable-tag-routing": "true",
                STEP_ANNOTATION: LOCAL_STEP_PERCENT,
            },
        },
        "spec": {
            "predictor": {
                "minReplicas": 1,
                "containers": [
                    {
                        "name": "kserve-container",
                        "args": [f"--model_name={name}", "--model_dir=/mnt/models"],
                        "env": [],
                    }
                ],
            }
        },
    }


def _container(isvc: dict[str, Any]) -> dict[str, Any]:
    containers = isvc["spec"]["predictor"].get("containers") or []
    for container in containers:
        if container.get("name") == "kserve-container":
            return container
    raise RolloutError("the InferenceService has no predictor container named kserve-container")


def _set_env(container: dict[str, Any], name: str, value: str) -> None:
    env = container.setdefault("env", [])
    for item in env:
        if item.get("name") == name:
            item.pop("valueFrom", None)
            item["value"] = value
            return
    env.append({"name": name, "value": value})


def served_version(isvc: dict[str, Any]) -> str | None:
    for item in _container(isvc).get("env", []):
        if item.get("name") == "MODEL_VERSION":
            return item.get("value")
    return None


def wait_rollout(backend: Backend, generation: int, timeout: float) -> dict[str, Any]:
    """Wait until the controller observed ``generation`` and its latest revision is ready."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        status = backend.status() or {}
        if int(status.get("observedGeneration", 0)) >= generation:
            conditions = {c["type"]: c for c in status.get("conditions", [])}
            latest = conditions.get("LatestDeploymentReady", {})
            if latest.get("status") == "False":
                raise RolloutError(f"the new revision failed: {latest.get('message') or 'unknown'}")
            if (
                latest.get("status") == "True"
                and conditions.get("Ready", {}).get("status") == "True"
            ):
                return status
            message = latest.get("message") or "revision starting"
        else:
            message = "waiting for the controller to observe the change"
        if message != last:
            log.info("%s", message)
            last = message
        time.sleep(0.5)
    raise RolloutError(
        f"not ready after {timeout:.0f} s ({last}); the previous traffic is unchanged"
    )


def _apply_version(isvc: dict[str, Any], storage_uri: str, version: str) -> None:
    container = _container(isvc)
    _set_env(container, "STORAGE_URI", storage_uri)
    _set_env(container, "MODEL_VERSION", version)


def canary(
    settings: RolloutSettings, backend: Backend, version: str, percent: int | None = None
) -> dict[str, Any]:
    """Roll ``version`` out to ``percent`` % of traffic (100 % when nothing is rolled out).

    Without ``percent`` the environment's step applies: the InferenceService's
    ``movie-mlops.io/canary-step-percent`` annotation (set by the overlay). A rollout to 100 %
    (the first one, or ``--percent 100``) is a promotion and moves the aliases like `promote`.
    """
    isvc = backend.get()
    if isvc is None:
        if settings.target is Target.CLUSTER:
            raise RolloutError(
                f"InferenceService {settings.isvc_name} not found in {settings.namespace}: "
                "deploy the overlay first (make deploy ENV=…)"
            )
        isvc = new_inferenceservice(settings.isvc_name)
    if percent is None:
        step = isvc.get("metadata", {}).get("annotations", {}).get(STEP_ANNOTATION, "10")
        try:
            percent = int(step)
        except ValueError as err:
            raise ConfigError(f"annotation {STEP_ANNOTATION}={step!r} is not a number") from err
    if not 0 < percent <= 100:
        raise ConfigError(f"--percent must be in 1..100, got {percent}")
    storage_uri = storage_uri_for(settings.tracking_uri, settings.model_name, version)
    status = isvc.get("status") or backend.status() or {}
    rolled_out = (status.get("components", {}).get("predictor", {}) or {}).get(
        "latestRolledoutRevision"
    )
    _apply_version(isvc, storage_uri, version)
    predictor = isvc["spec"]["predictor"]
    full = not rolled_out or percent == 100
    if full:
        predictor.pop("canaryTrafficPercent", None)
    else:
        predictor["canaryTrafficPercent"] = percent
    applied = backend.apply(_spec_only(isvc))
    log.info("version %s -> %s (%s)", version, storage_uri,
             "full rollout" if full else f"canary {percent}%")  # fmt: skip
    status = wait_rollout(backend, int(applied["metadata"]["generation"]), settings.timeout)
    if full:
        _move_champion(settings, version)
    return status


def promote(settings: RolloutSettings, backend: Backend) -> dict[str, Any]:
    """Give the canary 100 % and move the `champion` alias to its version."""
    isvc = _require(backend, settings)
    predictor = isvc["spec"]["predictor"]
    if predictor.get("canaryTrafficPercent") == 0:
        raise RolloutError("the canary was rolled back; start a new canary before promoting")
    version = served_version(isvc)
    predictor.pop("canaryTrafficPercent", None)
    applied = backend.apply(_spec_only(isvc))
    status = wait_rollout(backend, int(applied["metadata"]["generation"]), settings.timeout)
    if version:
        _move_champion(settings, version)
    return status


def rollback(settings: RolloutSettings, backend: Backend) -> dict[str, Any]:
    """Undo the last step.

    During a canary: ``canaryTrafficPercent: 0`` — KServe sends all traffic back to the last
    rolled-out revision at once, no new pods needed. After a promote: the predictor is pointed
    at the version aliased ``previous`` (a full rollout), and ``champion`` moves back to it.
    """
    isvc = _require(backend, settings)
    predictor = isvc["spec"]["predictor"]
    if predictor.get("canaryTrafficPercent") not in (None, 100):
        predictor["canaryTrafficPercent"] = 0
        applied = backend.apply(_spec_only(isvc))
        return wait_rollout(backend, int(applied["metadata"]["generation"]), settings.timeout)
    previous = _alias_version(settings, PREVIOUS_ALIAS)
    if previous is None:
        raise RolloutError(
            f"nothing to roll back to: no canary is running and no version is aliased "
            f"{PREVIOUS_ALIAS!r} (it is set when a promote replaces a champion)"
        )
    storage_uri = storage_uri_for(settings.tracking_uri, settings.model_name, previous)
    _apply_version(isvc, storage_uri, previous)
    predictor.pop("canaryTrafficPercent", None)
    applied = backend.apply(_spec_only(isvc))
    log.info("rolling back to version %s (%s)", previous, storage_uri)
    status = wait_rollout(backend, int(applied["metadata"]["generation"]), settings.timeout)
    _move_champion(settings, previous, keep_previous=False)
    return status


def _alias_version(settings: RolloutSettings, alias: str) -> str | None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    try:
        return str(client.get_model_version_by_alias(settings.model_name, alias).version)
    except MlflowException:
        return None


def _move_champion(settings: RolloutSettings, version: str, keep_previous: bool = True) -> None:
    """``champion`` -> version; the old champion becomes ``previous`` (the rollback target)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    old = _alias_version(settings, CHAMPION_ALIAS)
    if old == version:
        return
    if keep_previous and old is not None:
        client.set_registered_model_alias(settings.model_name, PREVIOUS_ALIAS, old)
    elif not keep_previous:
        client.delete_registered_model_alias(settings.model_name, PREVIOUS_ALIAS)
    client.set_registered_model_alias(settings.model_name, CHAMPION_ALIAS, version)
    log.info("alias %s -> version %s (was %s)", CHAMPION_ALIAS, version, old)


def _require(backend: Backend, settings: RolloutSettings) -> dict[str, Any]:
    isvc = backend.get()
    if isvc is None:
        raise RolloutError(
            f"InferenceService {settings.isvc_name} does not exist yet; run `canary` first"
        )
    return isvc


def _spec_only(isvc: dict[str, Any]) -> dict[str, Any]:
    """What we write: the object without its status (the controller owns status)."""
    return {k: v for k, v in isvc.items() if k != "status"}


def traffic_table(status: dict[str, Any]) -> str:
    predictor = status.get("components", {}).get("predictor", {})
    rows = [f"  {'revision':<40} {'percent':>7}  {'tag':<7} version"]
    for t in predictor.get("traffic", []):
        rows.append(
            f"  {t.get('revisionName', '?'):<40} {t.get('percent', 0):>6}%  "
            f"{t.get('tag') or '':<7} {t.get('modelVersion') or ''}"
        )
    return "\n".join(rows)


# -- CLI ---------------------------------------------------------------------------------------

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n\n")[0])

TargetOpt = Annotated[
    Target, typer.Option("--target", envvar="ROLLOUT_TARGET", help="local stack or cluster.")
]
NamespaceOpt = Annotated[
    str | None,
    typer.Option(
        "--namespace",
        envvar="POD_NAMESPACE",
        help="Namespace (cluster target; default: the pod's own, else 'default').",
    ),
]
TrackingOpt = Annotated[
    str, typer.Option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", help="MLflow server.")
]
TimeoutOpt = Annotated[float, typer.Option("--timeout", min=1, help="Seconds to wait for ready.")]


def _namespace(given: str | None) -> str:
    if given:
        return given
    try:  # inside a pod: the namespace of its service account
        return SA_NAMESPACE_FILE.read_text().strip() or "default"
    except OSError:
        return "default"


def _settings(
    target: Target, namespace: str | None, tracking_uri: str, timeout: float
) -> RolloutSettings:
    return RolloutSettings(
        target=target,
        namespace=_namespace(namespace),
        tracking_uri=tracking_uri,
        local_root=Path(os.environ.get("LOCAL_ROOT", ".local")),
        timeout=timeout,
    )


def _run(settings: RolloutSettings, step: str, fn: Any) -> None:
    cli.configure_logging(False)
    status = cli.run(lambda: fn(make_backend(settings)))
    typer.echo(f"{step} done; traffic:\n{traffic_table(status)}")


@app.callback()
def _options(
    ctx: typer.Context,
    target: TargetOpt = Target.LOCAL,
    namespace: NamespaceOpt = None,
    tracking_uri: TrackingOpt = "http://127.0.0.1:5000",
    timeout: TimeoutOpt = 300.0,
) -> None:
    """Options every step shares (also read from the environment)."""
    ctx.obj = _settings(target, namespace, tracking_uri, timeout)


@app.command("canary")
def canary_cmd(
    ctx: typer.Context,
    version: Annotated[str, typer.Option("--version", help="Registered model version.")],
    percent: Annotated[
        int | None,
        typer.Option(
            "--percent",
            envvar="CANARY_PERCENT",
            help="Canary share 1..100 (default: the environment's canary-step-percent).",
        ),
    ] = None,
) -> None:
    """Start a canary of a registered version (or the first rollout, at 100 %)."""
    settings: RolloutSettings = ctx.obj
    _run(settings, "canary", lambda backend: canary(settings, backend, version, percent))


@app.command("promote")
def promote_cmd(ctx: typer.Context) -> None:
    """Give the canary all traffic and make it `champion`."""
    settings: RolloutSettings = ctx.obj
    _run(settings, "promote", lambda backend: promote(settings, backend))


@app.command("rollback")
def rollback_cmd(ctx: typer.Context) -> None:
    """Undo the last step: pin a running canary to 0 %, or restore the `previous` version."""
    settings: RolloutSettings = ctx.obj
    _run(settings, "rollback", lambda backend: rollback(settings, backend))


@app.command("status")
def status_cmd(ctx: typer.Context) -> None:
    """Show the InferenceService's traffic split."""
    settings: RolloutSettings = ctx.obj
    status = cli.run(lambda: make_backend(settings).status())
    if not status:
        typer.echo(f"InferenceService {settings.isvc_name}: no status yet")
        raise typer.Exit(1)
    typer.echo(traffic_table(status))


def main() -> None:
    app()


if __name__ == "__main__":
    main()

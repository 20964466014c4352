"""The rollout steps — canary, promote, rollback — over any `Backend`.

Every step waits, with a timeout, until the controller has observed the change and the new
revision is ready (or has failed, which fails the step with the controller's message).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from contracts.inferenceservice import STEP_ANNOTATION, storage_uri
from contracts.names import ARTIFACT_PATH, CHAMPION, MODEL_NAME, PREVIOUS
from contracts.settings import LOCAL_ROOT, MLFLOW_TRACKING_URI
from pipelines import registry
from pipelines.errors import ConfigError, RolloutError
from pipelines.rollout import document
from pipelines.rollout.backends import Backend

log = logging.getLogger(__name__)


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
    tracking_uri: str = MLFLOW_TRACKING_URI.default
    local_root: Path = LOCAL_ROOT.default_path
    timeout: float = 300.0
    connect_retries: int = 3


def parse_version(value: str) -> str:
    """A registered version number as MLflow names it: a positive integer (else exit 2)."""
    text = value.strip()
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"--version must be a registered version number (1, 2, …), got {value!r}")
    return str(int(text))


def storage_uri_for(client: Any, settings: RolloutSettings, version: str) -> str:
    """``pvc://mlflow-artifacts/…`` of a registered version's numpy artefact."""
    with registry.mlflow_errors(f"reading version {version}", settings.tracking_uri):
        mv = client.get_model_version(settings.model_name, version)
        run = client.get_run(mv.run_id)
    try:
        return storage_uri(run.info.artifact_uri, ARTIFACT_PATH)
    except ValueError as err:
        raise RolloutError(f"run {mv.run_id}: {err}") from err


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


def _apply_and_wait(backend: Backend, isvc: dict[str, Any], timeout: float) -> dict[str, Any]:
    applied = backend.apply(document.spec_only(isvc))
    return wait_rollout(backend, int(applied["metadata"]["generation"]), timeout)


def canary(
    settings: RolloutSettings,
    backend: Backend,
    version: str,
    percent: int | None = None,
    *,
    force: bool = False,
) -> dict[str, Any]:
    """Roll ``version`` out to ``percent`` % of traffic (100 % when nothing is rolled out).

    Without ``percent`` the environment's step applies: the InferenceService's
    ``movie-mlops.io/canary-step-percent`` annotation (set by the overlay). A rollout to 100 %
    (the first one, or ``--percent 100``) is a promotion and moves the aliases like `promote`.
    A version that failed its quality gate is refused unless ``force``.
    """
    version = parse_version(version)
    isvc = backend.get()
    if isvc is None:
        if settings.target is Target.CLUSTER:
            raise RolloutError(
                f"InferenceService {settings.isvc_name} not found in {settings.namespace}: "
                "deploy the overlay first (make deploy ENV=…)"
            )
        isvc = document.new_inferenceservice(settings.isvc_name)
    if percent is None:
        step = document.step_percent(isvc)
        try:
            percent = int(step)
        except ValueError as err:
            raise ConfigError(f"annotation {STEP_ANNOTATION}={step!r} is not a number") from err
    if not 0 < percent <= 100:
        raise ConfigError(f"--percent must be in 1..100, got {percent}")
    client = registry.connect(settings.tracking_uri, settings.connect_retries)
    with registry.mlflow_errors(f"reading version {version}", settings.tracking_uri):
        mv = client.get_model_version(settings.model_name, version)
    if not registry.gate_passed(mv) and not force:
        raise RolloutError(
            f"{settings.model_name} version {version} failed its quality gate at training "
            f"({(mv.tags or {}).get('quality_gate_detail', 'no detail')}); pass --force to "
            "roll it out anyway"
        )
    uri = storage_uri_for(client, settings, version)
    status = isvc.get("status") or backend.status() or {}
    rolled_out = (status.get("components", {}).get("predictor", {}) or {}).get(
        "latestRolledoutRevision"
    )
    document.set_version(isvc, uri, version)
    predictor = isvc["spec"]["predictor"]
    full = not rolled_out or percent == 100
    if full:
        predictor.pop("canaryTrafficPercent", None)
    else:
        predictor["canaryTrafficPercent"] = percent
    log.info("version %s -> %s (%s)", version, uri,
             "full rollout" if full else f"canary {percent}%")  # fmt: skip
    status = _apply_and_wait(backend, isvc, settings.timeout)
    if full:
        with registry.mlflow_errors("moving the champion alias", settings.tracking_uri):
            registry.move_champion(client, settings.model_name, version)
    return status


def promote(settings: RolloutSettings, backend: Backend) -> dict[str, Any]:
    """Give the canary 100 % and move the `champion` alias to its version."""
    isvc = _require(backend, settings)
    predictor = isvc["spec"]["predictor"]
    if predictor.get("canaryTrafficPercent") == 0:
        raise RolloutError("the canary was rolled back; start a new canary before promoting")
    client = registry.connect(settings.tracking_uri, settings.connect_retries)
    version = document.served_version(isvc)
    predictor.pop("canaryTrafficPercent", None)
    status = _apply_and_wait(backend, isvc, settings.timeout)
    if version:
        with registry.mlflow_errors("moving the champion alias", settings.tracking_uri):
            registry.move_champion(client, settings.model_name, version)
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
        return _apply_and_wait(backend, isvc, settings.timeout)
    client = registry.connect(settings.tracking_uri, settings.connect_retries)
    with registry.mlflow_errors("reading the previous alias", settings.tracking_uri):
        previous = registry.alias_version(client, settings.model_name, PREVIOUS)
    if previous is None:
        raise RolloutError(
            f"nothing to roll back to: no canary is running and no version is aliased "
            f"{PREVIOUS!r} (it is set when a promote replaces a {CHAMPION})"
        )
    uri = storage_uri_for(client, settings, previous)
    document.set_version(isvc, uri, previous)
    predictor.pop("canaryTrafficPercent", None)
    log.info("rolling back to version %s (%s)", previous, uri)
    status = _apply_and_wait(backend, isvc, settings.timeout)
    with registry.mlflow_errors("moving the champion alias back", settings.tracking_uri):
        registry.restore_previous(client, settings.model_name, previous)
    return status


def _require(backend: Backend, settings: RolloutSettings) -> dict[str, Any]:
    isvc = backend.get()
    if isvc is None:
        raise RolloutError(
            f"InferenceService {settings.isvc_name} does not exist yet; run `canary` first"
        )
    return isvc

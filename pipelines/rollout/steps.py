"""The rollout steps — canary, promote, rollback — over any `Backend`.

Every step waits, with a timeout, until the controller has observed the change and the new
revision is ready (or has failed, which fails the step with the controller's message).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from contracts.credentials import ROLLOUT
from contracts.inferenceservice import STEP_ANNOTATION, storage_uri
from contracts.names import ARTIFACT_PATH, CHAMPION, DIGEST_TAG, MODEL_NAME, PREVIOUS
from contracts.settings import LOCAL_ROOT, MLFLOW_TRACKING_URI, PROMETHEUS_URL
from pipelines import registry
from pipelines.errors import ConfigError, PipelineError, RolloutError
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
    prometheus_url: str = PROMETHEUS_URL.default


def parse_version(value: str) -> str:
    """A registered version number as MLflow names it: a positive integer (else exit 2)."""
    text = value.strip()
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"--version must be a registered version number (1, 2, …), got {value!r}")
    return str(int(text))


def artefact_of(
    client: Any, settings: RolloutSettings, version: str, *, force: bool
) -> tuple[str, str | None]:
    """``pvc://mlflow-artifacts/…`` of a registered version's numpy artefact, and the digest
    recorded for it at registration (which the predictor will insist on).

    A version without a digest (registered before digests were recorded) is refused unless
    ``force``: its files could not be checked.
    """
    with registry.mlflow_errors(f"reading version {version}", settings.tracking_uri):
        mv = client.get_model_version(settings.model_name, version)
        run = client.get_run(mv.run_id)
    digest = (mv.tags or {}).get(DIGEST_TAG)
    if not digest and not force:
        raise RolloutError(
            f"{settings.model_name} version {version} has no recorded artefact digest, so the "
            "predictor could not check its files; retrain it, or pass --force"
        )
    try:
        return storage_uri(run.info.artifact_uri, ARTIFACT_PATH), digest
    except ValueError as err:
        raise RolloutError(f"run {mv.run_id}: {err}") from err


@dataclass(frozen=True)
class Expected:
    """The status a step waits for: KServe's traffic shape for what was written.

    ``percent``: the ``latestRevision: true`` entry's share, on ``latestCreatedRevision``;
    ``replaces``: the ``latestCreatedRevision`` before a template change (the new one must be
    another), or None when the template did not change; ``prev``: the revision the other entry
    must name (a rollback to ``previousRolledoutRevision``), else ``latestRolledoutRevision``.
    """

    percent: int
    replaces: str | None = None
    new_template: bool = False
    prev: str | None = None


def _predictor(status: dict[str, Any]) -> dict[str, Any]:
    return (status.get("components") or {}).get("predictor") or {}


def _shape_problem(status: dict[str, Any], expected: Expected) -> str | None:
    """Why ``status`` is not (yet) the expected one, or None when it is."""
    predictor = _predictor(status)
    created, ready = predictor.get("latestCreatedRevision"), predictor.get("latestReadyRevision")
    rolled_out = predictor.get("latestRolledoutRevision")
    if created is None or (expected.new_template and created == expected.replaces):
        return "waiting for the controller to create the new revision"
    if created != ready:
        return f"revision {created} starting (latest ready: {ready})"
    traffic = predictor.get("traffic") or []
    latest = [t for t in traffic if t.get("latestRevision")]
    if len(latest) != 1 or latest[0].get("revisionName") != created:
        return f"waiting for the traffic to name {created} as the latest revision"
    if int(latest[0].get("percent", -1)) != expected.percent:
        return f"waiting for {created} to get {expected.percent} % (has {latest[0].get('percent')})"
    if expected.percent == 100:
        if rolled_out != created:
            return f"waiting for {created} to become the rolled-out revision"
        return None
    prev = expected.prev or rolled_out
    others = [t for t in traffic if not t.get("latestRevision")]
    if not any(
        t.get("revisionName") == prev and int(t.get("percent", -1)) == 100 - expected.percent
        for t in others
    ) or (expected.prev is not None and rolled_out != expected.prev):
        return f"waiting for {prev} to get {100 - expected.percent} %"
    return None


def wait_rollout(backend: Backend, expected: Expected, timeout: float) -> dict[str, Any]:
    """Wait until the status shows the expected revision and traffic, and Ready.

    Not by generations: ``status.observedGeneration`` is the Knative Service's generation
    (inference_service_status.go l.635), which an annotation change bumps without the
    InferenceService's and a no-op spec change (``canaryTrafficPercent: 100`` once rolled out)
    leaves alone. The revision names and shares cannot be stale: a new template must show a new
    ``latestCreatedRevision`` equal to ``latestReadyRevision``, and the ``latestRevision`` entry
    must carry the share written. A failed new revision fails the step with its message.
    """
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        status = backend.status() or {}
        conditions = {c["type"]: c for c in status.get("conditions", [])}
        latest = conditions.get("LatestDeploymentReady", {})
        created = _predictor(status).get("latestCreatedRevision")
        current = not expected.new_template or (created and created != expected.replaces)
        if current and latest.get("status") == "False":
            raise RolloutError(f"the new revision failed: {latest.get('message') or 'unknown'}")
        message = _shape_problem(status, expected)
        if message is None:
            ready = conditions.get("Ready", {})
            if ready.get("status") == "True":
                return status
            message = ready.get("message") or "waiting for Ready"
        if message != last:
            log.info("%s", message)
            last = message
        time.sleep(0.5)
    raise RolloutError(
        f"not ready after {timeout:.0f} s ({last}); the previous traffic is unchanged"
    )


def _apply_and_wait(
    backend: Backend,
    isvc: dict[str, Any],
    timeout: float,
    before: dict[str, Any] | None,
    *,
    prev: str | None = None,
) -> dict[str, Any]:
    """Write the spec and wait for KServe's traffic shape of it (``before``: the document read,
    with its status)."""
    before = before or {}
    status = before.get("status") or {}
    new_template = not before.get("spec") or document.template(before) != document.template(isvc)
    percent = isvc["spec"]["predictor"].get("canaryTrafficPercent")
    rolled_out = _rolled_out(status) or prev
    expected = Expected(
        percent=100 if percent is None or not rolled_out else int(percent),
        replaces=_predictor(status).get("latestCreatedRevision"),
        new_template=new_template,
        prev=prev,
    )
    backend.apply(document.spec_only(isvc))
    wait_rollout(backend, expected, timeout)
    return backend.status() or {}  # what is observed now, not what was written


def _rolled_out(status: dict[str, Any]) -> str | None:
    return _predictor(status).get("latestRolledoutRevision")


def check_servable(settings: RolloutSettings, mv: Any, force: bool) -> None:
    """Refuse a version the registry does not vouch for (unless forced)."""
    tags = mv.tags or {}
    if not registry.gate_passed(mv) and not force:
        raise RolloutError(
            f"{settings.model_name} version {mv.version} failed its quality gate at training "
            f"({tags.get('quality_gate_detail', 'no detail')}); pass --force to roll it out anyway"
        )
    if tags.get(registry.REGISTRATION_TAG) == registry.PENDING and not force:
        raise RolloutError(
            f"{settings.model_name} version {mv.version} was registered by a training run that "
            "did not finish (its aliases were never set); retrain, or pass --force"
        )


def _moved_registry_then_failed(
    settings: RolloutSettings,
    client: Any,
    version: str,
    before: dict[str, str | None],
    err: RolloutError,
) -> RolloutError:
    """After the registry moved first and traffic did not follow: put the registry back.

    The old version keeps serving, so the aliases return to what they were; when even that
    cannot be written, say exactly which command makes the two agree.
    """
    try:
        with registry.mlflow_errors("restoring the aliases", settings.tracking_uri):
            registry.restore_aliases(client, settings.model_name, before)
    except PipelineError as undo:
        return RolloutError(
            f"{err}; the registry says {CHAMPION}={version} but traffic did not move, and "
            f"restoring the aliases failed ({undo}): rerun the same command once MLflow answers"
        )
    return RolloutError(f"{err}; {CHAMPION} stays version {before[CHAMPION]}")


def canary(
    settings: RolloutSettings,
    backend: Backend,
    version: str,
    percent: int | None = None,
    *,
    force: bool = False,
    faults: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Roll ``version`` out to ``percent`` % of traffic (100 % when nothing is rolled out).

    Without ``percent`` the environment's step applies: the InferenceService's
    ``movie-mlops.io/canary-step-percent`` annotation (set by the overlay). A rollout to 100 %
    (the first one, or ``--percent 100``) is a promotion: the registry moves first
    (``champion``), then traffic. A version that failed its quality gate (or whose
    registration did not finish) is refused unless ``force``.

    ``faults`` (tests and demos only, local target only): the predictor's
    ``MODEL_SERVER_FAULT_*`` environment of the revision (`model_server.faults`): exactly these
    (``{}``: none). ``None`` keeps the revision's as they are for the same version (a later
    step of one canary) and clears them for another version.
    """
    version = parse_version(version)
    if faults and settings.target is Target.CLUSTER:
        raise ConfigError("test faults (--fault-*) are for the local stack only")
    with backend.lock():
        isvc = backend.get()
        status = backend.status() or {}  # the local stack down: fails here, nothing written
        read = _as_read(isvc, status)
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
        client = registry.connect(settings.tracking_uri, settings.connect_retries, identity=ROLLOUT)
        with registry.mlflow_errors(f"reading version {version}", settings.tracking_uri):
            mv = client.get_model_version(settings.model_name, version)
        check_servable(settings, mv, force)
        uri, digest = artefact_of(client, settings, version, force=force)
        if faults is not None or document.served_version(isvc) != version:
            document.set_faults(isvc, faults or {})
        document.set_version(isvc, uri, version, digest)
        predictor = isvc["spec"]["predictor"]
        rolled_out = _rolled_out(read["status"])
        full = not rolled_out or percent == 100
        if full:
            predictor.pop("canaryTrafficPercent", None)
        else:
            predictor["canaryTrafficPercent"] = percent
            same = read.get("spec") and document.template(read) == document.template(isvc)
            if same and rolled_out == _predictor(read["status"]).get("latestCreatedRevision"):
                # KServe would split over the one revision, and PropagateStatus (l.592-603)
                # would then send the rest to the previous rolled-out one: not a canary
                raise RolloutError(
                    f"version {version} is already rolled out (revision {rolled_out}); "
                    "nothing was changed"
                )
        log.info("version %s -> %s (%s)", version, uri,
                 "full rollout" if full else f"canary {percent}%")  # fmt: skip
        if not full:
            stale = _predictor(read["status"]).get("latestReadyRevision")
            if stale and stale != rolled_out and document.template(read) != document.template(isvc):
                # the latestRevision target resolves to the latest *ready* revision: until the
                # new one is ready, its share would go to `stale` (a rolled-back or
                # rolled-back-from revision). Start it at 0 %, then give it its share.
                log.info("starting the new revision at 0 %% first (%s is the latest ready one)",
                         stale)  # fmt: skip
                predictor["canaryTrafficPercent"] = 0
                _apply_and_wait(backend, isvc, settings.timeout, read)
                isvc = backend.get() or isvc
                read = _as_read(isvc, backend.status() or {})
                isvc["spec"]["predictor"]["canaryTrafficPercent"] = percent
            return _apply_and_wait(backend, isvc, settings.timeout, read)
        with registry.mlflow_errors("moving the champion alias", settings.tracking_uri):
            before = registry.alias_snapshot(client, settings.model_name)
            registry.move_champion(client, settings.model_name, version)
        try:
            return _apply_and_wait(backend, isvc, settings.timeout, read)
        except RolloutError as err:
            raise _moved_registry_then_failed(settings, client, version, before, err) from err


def _canary_problem(status: dict[str, Any], percent: int) -> str | None:
    """Why the canary is not (yet) serving its share, or None when it is."""
    predictor = (status.get("components") or {}).get("predictor") or {}
    created, ready = predictor.get("latestCreatedRevision"), predictor.get("latestReadyRevision")
    if created is None or created != ready:
        return f"the canary revision {created} is not ready (latest ready: {ready})"
    entry = next(
        (t for t in predictor.get("traffic") or [] if t.get("revisionName") == created), None
    )
    if entry is None or int(entry.get("percent", 0)) != percent:
        share = 0 if entry is None else entry.get("percent")
        return f"the canary revision {created} serves {share} %, not its {percent} %"
    if entry.get("ready") is False:
        return f"the canary revision {created} is down (restarting)"
    return None


def promote(settings: RolloutSettings, backend: Backend) -> dict[str, Any]:
    """Give the canary 100 % and make its version `champion` (registry first, then traffic).

    Refused unless the canary was observed ready at its share. Idempotent: after an interrupted
    promote, rerunning it finishes the job.
    """
    with backend.lock():
        isvc = _require(backend, settings)
        status = backend.status() or {}
        read = _as_read(isvc, status)
        predictor = isvc["spec"]["predictor"]
        percent = predictor.get("canaryTrafficPercent")
        if percent == 0:
            raise RolloutError("the canary was rolled back; start a new canary before promoting")
        client = registry.connect(settings.tracking_uri, settings.connect_retries, identity=ROLLOUT)
        version = document.served_version(isvc)
        if percent is not None and percent < 100:
            problem = _canary_problem(status, int(percent))
            if problem is not None:
                raise RolloutError(f"not promoting: {problem}; nothing was changed")
        if version is None:
            raise RolloutError("the InferenceService names no MODEL_VERSION to promote")
        with registry.mlflow_errors("moving the champion alias", settings.tracking_uri):
            before = registry.alias_snapshot(client, settings.model_name)
            registry.move_champion(client, settings.model_name, version)
        predictor.pop("canaryTrafficPercent", None)
        try:
            return _apply_and_wait(backend, isvc, settings.timeout, read)
        except RolloutError as err:
            raise _moved_registry_then_failed(settings, client, version, before, err) from err


def rollback(settings: RolloutSettings, backend: Backend) -> dict[str, Any]:
    """Undo the last step.

    During a canary: ``canaryTrafficPercent: 0`` — KServe sends all traffic back to the last
    rolled-out revision at once, the registry unchanged. After a promote, ``champion`` moves back
    to the version aliased ``previous`` (registry first), then traffic follows: when KServe still
    knows the revision that served it (``previousRolledoutRevision``, and the promoted template is
    what is rolled out), ``canaryTrafficPercent: 0`` routes back to that revision — no new
    revision (PropagateStatus l.592-603); otherwise the predictor is pointed at the version (a
    new revision, a full rollout). When the registry and the InferenceService disagree (an
    interrupted command), traffic is made to follow ``champion`` with a new revision.
    """
    with backend.lock():
        isvc = _require(backend, settings)
        status = backend.status() or {}
        read = _as_read(isvc, status)
        predictor = isvc["spec"]["predictor"]
        percent = predictor.get("canaryTrafficPercent")
        if percent not in (None, 100, 0):
            predictor["canaryTrafficPercent"] = 0
            return _apply_and_wait(backend, isvc, settings.timeout, read)
        client = registry.connect(settings.tracking_uri, settings.connect_retries, identity=ROLLOUT)
        # with the split at 0 the template's version is not served: the rolled-out one, champion
        served = document.served_version(isvc) if percent != 0 else None
        with registry.mlflow_errors("reading the aliases", settings.tracking_uri):
            champion = registry.alias_version(client, settings.model_name, CHAMPION)
            previous = registry.alias_version(client, settings.model_name, PREVIOUS)
        instant = None
        if served is not None and champion is not None and champion != served:
            target = champion  # an interrupted rollback or promote: finish it
            log.info("registry says %s=%s, traffic serves %s: moving traffic to %s",
                     CHAMPION, champion, served, champion)  # fmt: skip
        elif previous is not None:
            target = previous
            instant = _instant_rollback_revision(read["status"]) if percent != 0 else None
            with registry.mlflow_errors("moving the champion alias back", settings.tracking_uri):
                registry.restore_previous(client, settings.model_name, previous)
        else:
            raise RolloutError(
                f"nothing to roll back to: no canary is running and no version is aliased "
                f"{PREVIOUS!r} (it is set when a promote replaces a {CHAMPION})"
            )
        if instant is not None:
            predictor["canaryTrafficPercent"] = 0
            log.info("rolling back to version %s: all traffic to revision %s (no new revision)",
                     target, instant)  # fmt: skip
        else:
            uri, digest = artefact_of(client, settings, target, force=True)
            if digest is None:
                log.warning("version %s has no recorded artefact digest: rolling back "
                            "unverified", target)  # fmt: skip
            document.set_version(isvc, uri, target, digest)
            predictor.pop("canaryTrafficPercent", None)
            log.info("rolling back to version %s (%s): a new revision", target, uri)
        try:
            return _apply_and_wait(backend, isvc, settings.timeout, read, prev=instant)
        except RolloutError as err:
            raise RolloutError(
                f"{err}; the registry already names version {target} {CHAMPION}: rerun "
                "`rollout rollback` to move traffic to it"
            ) from err


def _instant_rollback_revision(status: dict[str, Any]) -> str | None:
    """The revision KServe routes back to on ``canaryTrafficPercent: 0`` after a promote, or
    None when it cannot (nothing rolled out before, already rolled back, or the latest created
    revision is not the rolled-out one: then the split would stay on one revision)."""
    predictor = _predictor(status)
    rolled_out, previous = (
        predictor.get("latestRolledoutRevision"),
        predictor.get("previousRolledoutRevision"),
    )
    created, ready = predictor.get("latestCreatedRevision"), predictor.get("latestReadyRevision")
    if previous and previous != rolled_out and rolled_out == created == ready:
        return previous
    return None


def _as_read(isvc: dict[str, Any] | None, status: dict[str, Any]) -> dict[str, Any]:
    """The document as read, with the status its controller observed (before any change)."""
    read = copy.deepcopy(isvc) if isvc is not None else {}
    read["status"] = read.get("status") or status or {}
    return read


def _require(backend: Backend, settings: RolloutSettings) -> dict[str, Any]:
    isvc = backend.get()
    if isvc is None:
        raise RolloutError(
            f"InferenceService {settings.isvc_name} does not exist yet; run `canary` first"
        )
    return isvc

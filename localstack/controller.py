"""Local twin of KServe's controller (and of the kubelet that keeps its pods alive).

Declarative, durable and self-healing, as the cluster is:

* **desired state** is the local InferenceService (``.local/stack/inferenceservice.json``, the
  document ``pipelines.rollout`` writes in the cluster's shape); every change of the predictor
  template creates a new *revision* (``python -m model_server`` on a free loopback port, its
  artefact taken from ``STORAGE_URI`` — ``pvc://mlflow-artifacts/<path>`` maps to the local
  MLflow artefact store, the way KServe's storage initializer mounts the PVC);
* **the controller's own record** (``controller.json``: every revision, which one is rolled out)
  survives a restart: after ``make down && make up`` or a ``kill -9`` the same revisions come
  back and traffic is what it was;
* **traffic and status** are what KServe and Knative compute (`localstack.kserve`, a pure
  function of the InferenceService and the revisions' readiness, cited line by line from
  ``ksvc_reconciler.go`` and ``PropagateStatus``): with ``canaryTrafficPercent: p`` and a
  rolled-out revision, the latest *ready* revision gets p % (tag ``latest`` when the
  InferenceService has ``serving.kserve.io/enable-tag-routing: "true"``) and the last rolled-out
  one the rest (tag ``prev``); otherwise the latest ready revision gets everything and becomes
  the rolled-out one; ``observedGeneration`` is the Knative Service's generation;
* **supervision**, the kubelet's part: every revision that carries traffic is watched (process
  alive, readiness probe every tick); a dead one is restarted with exponential backoff and is
  reported not ready meanwhile; a revision that never became ready and exits is Failed and never
  gets traffic. Requests go only to revisions that are ready now: while the canary is down the
  stable revision takes its share, and the other way round;
* **revisions die with the controller** (``PR_SET_PDEATHSIG``), so a killed ingress leaves no
  orphan; the next controller starts them again from its record;
* **scrape targets**: every revision with a running process is listed, with its revision name
  and model version as labels, in Prometheus's file_sd format (``prometheus/targets/
  model-server.json``, replaced atomically as revisions start and stop), the twin of the
  cluster's PodMonitor;
* **status** (``status.json``) is observed, never remembered: it is rewritten every tick with
  the time and the controller's pid, so a reader can tell a live stack from a stale file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import sys
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import aiohttp

from contracts.assignment import CANARY, CANARY_TAG, STABLE, STABLE_TAG, bucket, is_canary
from contracts.files import atomic_write_json, pid_alive
from contracts.inferenceservice import (
    MODEL_DIGEST_ENV,
    MODEL_VERSION_ENV,
    STORAGE_URI_ENV,
    container_env,
    local_model_dir,
)
from contracts.layout import StackLayout
from contracts.names import MODEL_NAME
from contracts.settings import FAULT_ERROR_RATE, FAULT_LATENCY_MS, MLFLOW_TRACKING_URI
from localstack.kserve import FALSE, TRUE, UNKNOWN, KServeState, RevisionHealth, reconcile
from localstack.processes import free_port, spawn, stop_group

log = logging.getLogger(__name__)

RECONCILE_SECONDS = 0.5
READY_TIMEOUT = 120.0  # a revision not ready by then is Failed (Knative's progress deadline)
PROBE_FAILURES = 2  # consecutive failed probes before a ready revision counts as not ready
RECOVER_SECONDS = 30.0  # a revision that served before and is not ready again by then restarts
BACKOFF_START, BACKOFF_MAX = 1.0, 30.0  # restart backoff, doubling (the kubelet's CrashLoop)
_STATE_VERSION = 2  # 2: the Knative Service's generation, traffic and template
# container environment passed through to a revision's process besides the model's own:
# the predictor's test-only faults (`model_server.faults`)
PASSED_ENV = (FAULT_ERROR_RATE.name, FAULT_LATENCY_MS.name)


class RevisionState(StrEnum):
    STARTING = "Starting"  # process started, not ready yet
    READY = "Ready"
    UNREADY = "Unready"  # was ready; the process died or stopped answering: restarting
    FAILED = "Failed"  # never became ready: gets no traffic, is not restarted
    STOPPED = "Stopped"  # carries no traffic: not running (Knative scales it to zero)


@dataclass
class Revision:
    """One immutable predictor revision and the process serving it now (if any)."""

    name: str
    template_hash: str
    model_name: str
    model_version: str | None
    storage_uri: str
    digest: str | None = None  # MODEL_DIGEST: the predictor refuses other files
    env: dict[str, str] = field(default_factory=dict)  # `PASSED_ENV` entries of the template
    ever_ready: bool = False  # Knative's "latest ready" is sticky: pods restart, it stays
    state: RevisionState = RevisionState.STOPPED
    message: str = ""
    restarts: int = 0
    port: int | None = None
    pid: int | None = None
    process: Any = None
    started_at: float = 0.0
    next_start: float = 0.0
    backoff: float = BACKOFF_START
    probe_failures: int = 0
    log_file: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ready(self) -> bool:
        return self.state is RevisionState.READY

    def health(self) -> RevisionHealth:
        """Knative's Ready condition of the revision (sticky once ready) and whether it serves."""
        if self.state is RevisionState.FAILED:
            condition = FALSE
        else:
            condition = TRUE if self.ever_ready else UNKNOWN
        return RevisionHealth(ready=condition, serving=self.ready, message=self.message)

    def record(self) -> dict[str, Any]:
        """What survives a restart of the controller."""
        return {
            "name": self.name,
            "template_hash": self.template_hash,
            "model_version": self.model_version,
            "storage_uri": self.storage_uri,
            "digest": self.digest,
            "env": self.env,
            "ever_ready": self.ever_ready,
            "failed": self.state is RevisionState.FAILED,
            "message": self.message if self.state is RevisionState.FAILED else "",
            "pid": self.pid,
        }


@dataclass
class Routing:
    """Where requests go now: the traffic split restricted to revisions that are ready."""

    traffic: list[tuple[Revision, int]] = field(default_factory=list)
    tags: dict[str, Revision] = field(default_factory=dict)

    def choose(
        self, host: str, exclude: set[str] | None = None, key: str | None = None
    ) -> Revision | None:
        """The revision for one request: a tag host's, the user's arm (``key``), or the split."""
        exclude = exclude or set()
        for tag, revision in self.tags.items():
            if host.startswith(f"{tag}-") and revision.ready and revision.name not in exclude:
                return revision
        if key is not None:
            sticky = self.arm_of(key)
            if sticky is not None and sticky[1].ready and sticky[1].name not in exclude:
                return sticky[1]
            # the user's arm is down: any other ready revision (stickiness never fails a request)
        live = [(r, p) for r, p in self.traffic if p > 0 and r.ready and r.name not in exclude]
        if not live:
            # a revision with 0 % that is ready still beats a 503 (e.g. the stable one is down)
            live = [(r, 1) for r, _ in self.traffic if r.ready and r.name not in exclude]
        if not live:
            return None
        pick = random.uniform(0, sum(p for _, p in live))
        for revision, percent in live:
            pick -= percent
            if pick <= 0:
                return revision
        return live[-1][0]

    def canary(self) -> tuple[Revision, Revision, int] | None:
        """(canary, stable, canary percent) while a canary splits traffic, else None.

        The canary is the revision tagged ``latest`` and the stable one the revision tagged
        ``prev`` (the rolled-out one), as KServe tags them; both must carry traffic.
        """
        canary, stable = self.tags.get(CANARY_TAG), self.tags.get(STABLE_TAG)
        shares = {id(r): p for r, p in self.traffic}
        if canary is None or stable is None or canary is stable:
            return None
        percent, rest = shares.get(id(canary)), shares.get(id(stable))
        if percent is None or rest is None or not 0 < percent < 100:
            return None
        return canary, stable, percent

    def arm_of(self, key: str) -> tuple[str, Revision] | None:
        """The arm (``canary``/``stable``) and revision of the user ``key`` during a canary."""
        split = self.canary()
        if split is None:
            return None
        canary, stable, percent = split
        return (CANARY, canary) if is_canary(bucket(key), percent) else (STABLE, stable)

    def arm_name(self, revision: Revision) -> str | None:
        """``canary``/``stable`` for a revision that answered during a canary, else None."""
        split = self.canary()
        if split is None:
            return None
        return CANARY if revision is split[0] else STABLE if revision is split[1] else None


def _last_line(log_file: Path | None) -> str:
    """The last line a revision logged (why it exited), shortened."""
    try:
        lines = [ln for ln in log_file.read_text(errors="replace").splitlines() if ln.strip()]
    except (AttributeError, OSError):
        return ""
    return lines[-1][-300:] if lines else ""


def _is_model_server(pid: int) -> bool:
    try:
        return b"model_server" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


class Controller:
    """Reconciles the local InferenceService into supervised revisions and traffic."""

    def __init__(self, root: Path, mlflow_url: str) -> None:
        self.root = root
        self.layout = StackLayout(root)
        self.stack_dir = self.layout.stack
        self.artifacts_dir = self.layout.artifacts
        self.mlflow_url = mlflow_url
        self.revisions: list[Revision] = []
        self.kserve = KServeState()  # what KServe and Knative keep (localstack.kserve)
        self.routing = Routing()
        self.isvc_name = MODEL_NAME
        self._session: aiohttp.ClientSession | None = None
        self._saved = ""
        self._targets_written = ""

    # -- the controller's record -------------------------------------------------------

    def restore(self) -> None:
        """Rebuild the revisions and the rolled-out pointer from ``controller.json``.

        A model server of the previous controller that is somehow still alive (it should have
        died with it) is stopped: this controller starts its own.
        """
        path = self.layout.controller_file
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except (OSError, json.JSONDecodeError) as err:
            log.error("%s is unreadable (%s); starting without it", path, err)
            return
        by_name: dict[str, Revision] = {}
        for item in state.get("revisions", []):
            revision = Revision(
                name=item["name"],
                template_hash=item["template_hash"],
                model_name=state.get("isvc_name", self.isvc_name),
                model_version=item.get("model_version"),
                storage_uri=item.get("storage_uri", ""),
                digest=item.get("digest"),
                env=dict(item.get("env") or {}),
                ever_ready=bool(item.get("ever_ready")),
            )
            if item.get("failed"):
                revision.state, revision.message = RevisionState.FAILED, item.get("message", "")
            pid = item.get("pid")
            if isinstance(pid, int) and pid_alive(pid) and _is_model_server(pid):
                log.warning("stopping leftover model server pid %d of %s", pid, revision.name)
                stop_group(pid, timeout=5.0)
            self.revisions.append(revision)
            by_name[revision.name] = revision
        self.isvc_name = state.get("isvc_name", self.isvc_name)
        self.kserve.revisions = [(r.name, r.template_hash) for r in self.revisions]
        self.kserve.latest_rolled_out = (
            state.get("rolled_out") if state.get("rolled_out") in by_name else None
        )
        self.kserve.previous_rolled_out = (
            state.get("previous") if state.get("previous") in by_name else None
        )
        self.kserve.restore(state.get("ksvc") or {})
        log.info("restored %d revision(s); rolled out: %s", len(self.revisions),
                 self.kserve.latest_rolled_out or "none")  # fmt: skip

    def _save(self) -> None:
        state = {
            "version": _STATE_VERSION,
            "isvc_name": self.isvc_name,
            "revisions": [r.record() for r in self.revisions],
            "rolled_out": self.kserve.latest_rolled_out,
            "previous": self.kserve.previous_rolled_out,
            "ksvc": self.kserve.record(),
        }
        text = json.dumps(state, sort_keys=True)
        if text != self._saved:
            atomic_write_json(self.layout.controller_file, state)
            self._saved = text

    # -- desired state -----------------------------------------------------------------

    def _read_spec(self) -> dict[str, Any] | None:
        path = self.layout.isvc_file
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as err:  # writers replace atomically; this is a bad edit
            log.error("%s is not valid JSON: %s", path, err)
            return None

    def _new_revision(self, predictor: dict[str, Any], name: str, digest: str) -> Revision:
        env = container_env((predictor.get("containers") or [{}])[0])
        return Revision(
            name=name,
            template_hash=digest,
            model_name=self.isvc_name,
            model_version=env.get(MODEL_VERSION_ENV),
            storage_uri=env.get(STORAGE_URI_ENV, ""),
            digest=env.get(MODEL_DIGEST_ENV) or None,
            env={k: env[k] for k in PASSED_ENV if env.get(k)},
        )

    # -- supervision (the kubelet's part) ----------------------------------------------

    def _start(self, revision: Revision) -> None:
        try:
            model_dir = local_model_dir(revision.storage_uri, self.artifacts_dir)
        except ValueError as err:
            revision.state, revision.message = RevisionState.FAILED, str(err)
            return
        revision.port = free_port()
        revision.log_file = self.layout.logs / "revisions" / f"{revision.name}.log"
        argv = [
            sys.executable, "-m", "model_server",
            "--model_name", revision.model_name,
            "--model_dir", str(model_dir),
            "--http_port", str(revision.port),
        ]  # fmt: skip
        extra = {
            MODEL_VERSION_ENV: revision.model_version or "",
            MODEL_DIGEST_ENV: revision.digest or "",
            MLFLOW_TRACKING_URI.name: self.mlflow_url,
            **{name: revision.env.get(name, "") for name in PASSED_ENV},
        }
        revision.process = spawn(argv, log_file=revision.log_file, env=extra, die_with_parent=True)
        revision.pid = revision.process.pid
        revision.started_at = time.monotonic()
        revision.probe_failures = 0
        if revision.state is not RevisionState.UNREADY:
            revision.state = RevisionState.STARTING
        log.info("revision %s: serving version %s on port %d (pid %d)%s",
                 revision.name, revision.model_version, revision.port, revision.pid,
                 f", restart {revision.restarts}" if revision.restarts else "")  # fmt: skip

    def _stop(self, revision: Revision) -> None:
        if revision.pid is not None and pid_alive(revision.pid):
            stop_group(revision.pid, timeout=5.0)
        if revision.process is not None:
            with contextlib.suppress(Exception):
                revision.process.wait(timeout=1)
        revision.process, revision.pid = None, None
        if revision.state is not RevisionState.FAILED:
            revision.state = RevisionState.STOPPED

    def _exited(self, revision: Revision) -> bool:
        if revision.process is not None:
            return revision.process.poll() is not None
        return revision.pid is None or not pid_alive(revision.pid)

    def _crashed(self, revision: Revision, why: str) -> None:
        """A revision that served before went away: not ready now, restart after a backoff."""
        code = revision.process.returncode if revision.process is not None else None
        revision.process, revision.pid = None, None
        revision.state = RevisionState.UNREADY
        revision.restarts += 1
        revision.next_start = time.monotonic() + revision.backoff
        last = _last_line(revision.log_file)
        revision.message = (
            f"{why}{'' if code is None else f' (exit {code})'}; restart {revision.restarts} "
            f"in {revision.backoff:.0f} s{f': {last}' if last else ''}"
        )
        log.error("revision %s: %s", revision.name, revision.message)
        revision.backoff = min(revision.backoff * 2, BACKOFF_MAX)

    async def _supervise(self, revision: Revision) -> None:
        """Keep a revision that should run running and its readiness observed."""
        if revision.state is RevisionState.FAILED:
            return
        now = time.monotonic()
        if revision.process is None and revision.pid is None:
            if revision.state is RevisionState.UNREADY and now < revision.next_start:
                return  # in backoff
            self._start(revision)
            return
        if self._exited(revision):
            if revision.ever_ready:
                self._crashed(revision, "model server exited")
            else:
                code = revision.process.returncode if revision.process is not None else None
                revision.state = RevisionState.FAILED
                last = _last_line(revision.log_file) or f"see {revision.log_file}"
                revision.message = f"model server exited with {code} before it was ready: {last}"
                revision.process, revision.pid = None, None
                log.error("revision %s failed: %s", revision.name, revision.message)
            return
        ready = await self._probe(revision)
        if ready:
            if not revision.ready:
                log.info("revision %s is ready", revision.name)
            revision.state, revision.message = RevisionState.READY, ""
            revision.ever_ready, revision.probe_failures = True, 0
            revision.backoff = BACKOFF_START
            return
        if revision.ever_ready:
            revision.probe_failures += 1
            if revision.ready and revision.probe_failures >= PROBE_FAILURES:
                revision.state = RevisionState.UNREADY  # routed around from now on
                revision.message = "readiness probe failing"
                log.warning("revision %s: %s", revision.name, revision.message)
            elif revision.probe_failures * RECONCILE_SECONDS >= RECOVER_SECONDS:
                self._stop(revision)
                self._crashed(revision, f"not ready for {RECOVER_SECONDS:.0f} s")
            return
        if now - revision.started_at > READY_TIMEOUT:
            self._stop(revision)
            revision.state = RevisionState.FAILED
            revision.message = f"not ready after {READY_TIMEOUT:.0f} s; see {revision.log_file}"

    async def _probe(self, revision: Revision) -> bool:
        if self._session is None or revision.port is None:
            return False
        url = f"{revision.url}/v1/models/{revision.model_name}"
        try:
            async with self._session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as resp:
                body = await resp.json(content_type=None)
                return resp.status == 200 and bool(body.get("ready"))
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError, AttributeError):
            return False

    def mark_unreachable(self, revision: Revision) -> None:
        """The proxy could not connect to a revision: no requests until a probe says ready."""
        if revision.ready:
            revision.state = (
                RevisionState.UNREADY if self._exited(revision) else RevisionState.STARTING
            )
            revision.message = "refused a connection; probing"

    # -- traffic and status (KServe's and Knative's rules: localstack.kserve) -------------

    def _health(self) -> dict[str, RevisionHealth]:
        return {r.name: r.health() for r in self.revisions}

    def _routing(self, status: dict[str, Any]) -> Routing:
        """Knative's route: the status's traffic entries, tags pinning their revision."""
        by_name = {r.name: r for r in self.revisions}
        traffic: list[tuple[Revision, int]] = []
        tags: dict[str, Revision] = {}
        for entry in status["components"]["predictor"]["traffic"]:
            revision = by_name.get(entry["revisionName"])
            if revision is None:
                continue
            traffic.append((revision, int(entry["percent"])))
            if entry.get("tag"):
                tags[entry["tag"]] = revision
        return Routing(traffic=traffic, tags=tags)

    async def reconcile(self) -> None:
        spec = self._read_spec()
        if spec is None:
            self.routing = Routing()
            status = {
                "observedAt": time.time(),
                "controller": {"pid": os.getpid()},
                "conditions": [
                    {"type": "Ready", "status": "False", "message": "no InferenceService yet"}
                ],
            }
            atomic_write_json(self.layout.status_file, {"status": status})
            return
        self.isvc_name = spec.get("metadata", {}).get("name", self.isvc_name)
        predictor = spec.get("spec", {}).get("predictor", {})
        status = reconcile(self.kserve, spec, self._health())
        for name, digest in self.kserve.revisions[len(self.revisions) :]:
            self.revisions.append(self._new_revision(predictor, name, digest))
        # the kubelet's part: run the latest created revision and every routed one
        wanted = {name for name, _ in self.kserve.revisions[-1:]}
        wanted |= {t["revisionName"] for t in status["components"]["predictor"]["traffic"]}
        await asyncio.gather(*(self._supervise(r) for r in self.revisions if r.name in wanted))
        status = reconcile(self.kserve, spec, self._health())
        wanted |= {t["revisionName"] for t in status["components"]["predictor"]["traffic"]}
        for revision in self.revisions:
            if revision.name not in wanted and revision.state in (
                RevisionState.READY,
                RevisionState.STARTING,
                RevisionState.UNREADY,
            ):
                log.info("revision %s no longer routed; stopping it", revision.name)
                self._stop(revision)
        self.routing = self._routing(status)
        self._save()
        self._write_targets()
        self._write_status(status)

    def _write_targets(self) -> None:
        """The revisions to scrape now (Prometheus file_sd), replaced only when they change."""
        targets = [
            {
                "targets": [f"127.0.0.1:{r.port}"],
                "labels": {"revision": r.name, "model_version": r.model_version or ""},
            }
            for r in self.revisions
            if r.port is not None and (r.process is not None or r.pid is not None)
        ]
        text = json.dumps(targets, sort_keys=True)
        if text != self._targets_written:
            path = self.layout.revision_targets
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(path, targets)
            self._targets_written = text

    def _write_status(self, status: dict[str, Any]) -> None:
        """KServe's status plus what only a process supervisor knows (pids, states, versions)."""
        by_name = {r.name: r for r in self.revisions}
        for entry in status["components"]["predictor"]["traffic"]:
            revision = by_name.get(entry["revisionName"])
            entry["modelVersion"] = revision.model_version if revision else None
            entry["ready"] = revision.ready if revision else False
        status.update(
            {
                "observedAt": time.time(),
                "controller": {"pid": os.getpid()},
                "url": None,
                "revisions": [
                    {
                        "name": r.name,
                        "state": r.state.value,
                        "modelVersion": r.model_version,
                        "storageUri": r.storage_uri,
                        "url": r.url if r.ready else None,
                        "restarts": r.restarts,
                        "pid": r.pid,
                        "message": r.message,
                    }
                    for r in self.revisions
                ],
            }
        )
        atomic_write_json(self.layout.status_file, {"status": status})

    async def run(self) -> None:
        self.stack_dir.mkdir(parents=True, exist_ok=True)
        self.restore()
        self._session = aiohttp.ClientSession()
        try:
            while True:
                try:
                    await self.reconcile()
                except Exception:  # keep reconciling: one bad spec must not kill the ingress
                    log.exception("reconcile failed")
                await asyncio.sleep(RECONCILE_SECONDS)
        finally:
            await self._session.close()

    def shutdown(self) -> None:
        for revision in self.revisions:
            if revision.process is not None or revision.pid is not None:
                self._stop(revision)
        with contextlib.suppress(OSError):
            self._save()
            self._write_targets()

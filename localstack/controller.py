"""Local twin of KServe's controller: the InferenceService document → revisions and traffic.

It **reconciles** the local InferenceService (``.local/stack/inferenceservice.json``, the same
document ``pipelines.rollout`` patches in the cluster) into model-server *revisions*: every change
of the predictor template starts a new revision (``python -m model_server`` on a free loopback
port, its artefact taken from ``STORAGE_URI`` — ``pvc://mlflow-artifacts/<path>`` maps to the
local MLflow artefact store, the way KServe's storage initializer mounts the PVC).

It **splits traffic** the way KServe drives Knative: with ``canaryTrafficPercent: p`` the latest
ready revision gets p % and the last rolled-out revision the rest; without it (or at 100) the
latest revision is rolled out and gets everything; ``0`` pins everything to the previous one. A
revision that fails to become ready never gets traffic. Status is written to
``.local/stack/status.json`` in KServe's shape (``latestRolledoutRevision``, ``traffic`` …).
`localstack.ingress` routes requests by the `Routing` it computes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import sys
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import aiohttp

from contracts.files import atomic_write_json, pid_alive
from contracts.inferenceservice import (
    MODEL_VERSION_ENV,
    STORAGE_URI_ENV,
    container_env,
    local_model_dir,
)
from contracts.layout import StackLayout
from contracts.names import MODEL_NAME
from contracts.settings import MLFLOW_TRACKING_URI
from localstack.processes import free_port, spawn, stop_group

log = logging.getLogger(__name__)

_RECONCILE_SECONDS = 0.5
_READY_TIMEOUT = 120.0


class RevisionState(StrEnum):
    STARTING = "Starting"
    READY = "Ready"
    FAILED = "Failed"
    STOPPED = "Stopped"


@dataclass
class Revision:
    """One immutable predictor revision and the process serving it."""

    name: str
    template_hash: str
    model_name: str
    model_version: str | None
    storage_uri: str
    port: int
    started_at: float
    pid: int | None = None
    process: Any = None
    state: RevisionState = RevisionState.STARTING
    message: str = ""
    log_file: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Routing:
    """Traffic as the controller last computed it."""

    traffic: list[tuple[Revision, int]] = field(default_factory=list)
    tags: dict[str, Revision] = field(default_factory=dict)

    def choose(self, host: str) -> Revision | None:
        for tag, revision in self.tags.items():
            if host.startswith(f"{tag}-"):
                return revision
        live = [(rev, pct) for rev, pct in self.traffic if pct > 0]
        if not live:
            return None
        pick = random.uniform(0, sum(pct for _, pct in live))
        for rev, pct in live:
            pick -= pct
            if pick <= 0:
                return rev
        return live[-1][0]


def template_hash(predictor: dict[str, Any]) -> str:
    """Revisions change with the pod template, not with the traffic split or scaling."""
    template = {
        k: v
        for k, v in predictor.items()
        if k not in {"canaryTrafficPercent", "minReplicas", "maxReplicas", "scaleTarget"}
    }
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:12]


class Controller:
    """Reconciles the local InferenceService into revisions and traffic."""

    def __init__(self, root: Path, mlflow_url: str) -> None:
        self.root = root
        self.layout = StackLayout(root)
        self.stack_dir = self.layout.stack
        self.artifacts_dir = self.layout.artifacts
        self.mlflow_url = mlflow_url
        self.revisions: list[Revision] = []
        self.rolled_out: Revision | None = None
        self.previous: Revision | None = None
        self.routing = Routing()
        self.generation_seen = 0
        self.isvc_name = MODEL_NAME
        self._session: aiohttp.ClientSession | None = None

    # -- reconcile -----------------------------------------------------------------------

    def _read_spec(self) -> dict[str, Any] | None:
        path = self.layout.isvc_file
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except json.JSONDecodeError as err:  # writers replace atomically; this is a bad edit
            log.error("%s is not valid JSON: %s", path, err)
            return None

    def _model_dir(self, storage_uri: str) -> Path:
        return local_model_dir(storage_uri, self.artifacts_dir)

    def _start_revision(self, predictor: dict[str, Any], digest: str) -> Revision:
        number = len(self.revisions) + 1
        name = f"{self.isvc_name}-predictor-{number:05d}"
        container = (predictor.get("containers") or [{}])[0]
        env = container_env(container)
        storage_uri = env.get(STORAGE_URI_ENV, "")
        revision = Revision(
            name=name,
            template_hash=digest,
            model_name=self.isvc_name,
            model_version=env.get(MODEL_VERSION_ENV),
            storage_uri=storage_uri,
            port=free_port(),
            started_at=time.monotonic(),
        )
        revision.log_file = self.layout.logs / "revisions" / f"{name}.log"
        try:
            model_dir = self._model_dir(storage_uri)
        except ValueError as err:
            revision.state, revision.message = RevisionState.FAILED, str(err)
            return revision
        argv = [
            sys.executable, "-m", "model_server",
            "--model_name", self.isvc_name,
            "--model_dir", str(model_dir),
            "--http_port", str(revision.port),
        ]  # fmt: skip
        extra = {
            MODEL_VERSION_ENV: revision.model_version or "",
            MLFLOW_TRACKING_URI.name: self.mlflow_url,
        }
        revision.process = spawn(argv, log_file=revision.log_file, env=extra)
        revision.pid = revision.process.pid
        log.info("revision %s: serving version %s on port %d (pid %d)",
                 name, revision.model_version, revision.port, revision.pid)  # fmt: skip
        return revision

    async def _probe(self, revision: Revision) -> None:
        if revision.state is not RevisionState.STARTING:
            return
        if revision.process is not None and revision.process.poll() is not None:
            revision.state = RevisionState.FAILED
            revision.message = (
                f"model server exited with {revision.process.returncode}; see {revision.log_file}"
            )
            log.error("revision %s failed: %s", revision.name, revision.message)
            return
        if time.monotonic() - revision.started_at > _READY_TIMEOUT:
            self._stop(revision)
            revision.state = RevisionState.FAILED
            revision.message = f"not ready after {_READY_TIMEOUT:.0f} s; see {revision.log_file}"
            return
        if self._session is None:  # not running yet: nothing to probe with
            return
        try:
            url = f"{revision.url}/v1/models/{revision.model_name}"
            async with self._session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as resp:
                body = await resp.json(content_type=None)
                if resp.status == 200 and body.get("ready"):
                    revision.state = RevisionState.READY
                    log.info("revision %s is ready", revision.name)
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError, AttributeError):
            pass

    def _stop(self, revision: Revision) -> None:
        if revision.pid is not None and pid_alive(revision.pid):
            stop_group(revision.pid, timeout=5.0)
        if revision.process is not None:
            with contextlib.suppress(Exception):
                revision.process.wait(timeout=1)
        if revision.state in (RevisionState.STARTING, RevisionState.READY):
            revision.state = RevisionState.STOPPED

    async def reconcile(self) -> None:
        spec = self._read_spec()
        if spec is None:
            self.routing = Routing()
            return
        self.isvc_name = spec.get("metadata", {}).get("name", self.isvc_name)
        self.generation_seen = int(spec.get("metadata", {}).get("generation", 1))
        predictor = spec.get("spec", {}).get("predictor", {})
        digest = template_hash(predictor)
        latest = self.revisions[-1] if self.revisions else None
        if latest is None or latest.template_hash != digest:
            latest = self._start_revision(predictor, digest)
            self.revisions.append(latest)
        await asyncio.gather(*(self._probe(r) for r in self.revisions))

        percent = predictor.get("canaryTrafficPercent")
        traffic: list[tuple[Revision, int]] = []
        if latest.state is RevisionState.READY:
            if percent == 0 and self.rolled_out is latest and self.previous is not None:
                # rollback after a promote: the previous rolled-out revision takes over again
                self.rolled_out, self.previous = self.previous, latest
            if (
                self.rolled_out is None
                or self.rolled_out is latest
                or percent is None
                or percent >= 100
            ):
                if self.rolled_out is not latest:
                    self.previous, self.rolled_out = self.rolled_out, latest
                traffic = [(latest, 100)]
            else:
                traffic = [(self.rolled_out, 100 - int(percent)), (latest, int(percent))]
        elif self.rolled_out is not None:
            traffic = [(self.rolled_out, 100)]
        tags = {"latest": latest}
        if self.rolled_out is not None and self.rolled_out is not latest:
            tags["prev"] = self.rolled_out
        elif self.previous is not None:
            tags["prev"] = self.previous
        self.routing = Routing(
            traffic=[(r, p) for r, p in traffic if r.state is RevisionState.READY],
            tags={t: r for t, r in tags.items() if r.state is RevisionState.READY},
        )
        keep = {id(r) for r in (latest, self.rolled_out, self.previous) if r is not None}
        for revision in self.revisions:
            if id(revision) not in keep and revision.state in (
                RevisionState.READY,
                RevisionState.STARTING,
            ):
                log.info("revision %s no longer routed; stopping it", revision.name)
                self._stop(revision)
        self._write_status(latest, traffic)

    def _write_status(self, latest: Revision, traffic: list[tuple[Revision, int]]) -> None:
        ready = any(p > 0 and r.state is RevisionState.READY for r, p in traffic)
        tag_of = {id(r): t for t, r in self.routing.tags.items()}
        status = {
            "observedGeneration": self.generation_seen,
            "url": None,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "message": ""
                    if ready
                    else (latest.message or f"revision {latest.name} {latest.state.value}"),
                },
                {
                    "type": "LatestDeploymentReady",
                    "status": {"Ready": "True", "Starting": "Unknown"}.get(
                        latest.state.value, "False"
                    ),
                    "message": latest.message,
                },
            ],
            "components": {
                "predictor": {
                    "latestCreatedRevision": latest.name,
                    "latestReadyRevision": next(
                        (
                            r.name
                            for r in reversed(self.revisions)
                            if r.state is RevisionState.READY
                        ),
                        None,
                    ),
                    "latestRolledoutRevision": self.rolled_out.name if self.rolled_out else None,
                    "previousRolledoutRevision": self.previous.name if self.previous else None,
                    "traffic": [
                        {
                            "revisionName": r.name,
                            "percent": p,
                            "latestRevision": r is latest,
                            "tag": tag_of.get(id(r)),
                            "modelVersion": r.model_version,
                        }
                        for r, p in traffic
                    ],
                }
            },
            "revisions": [
                {
                    "name": r.name,
                    "state": r.state.value,
                    "modelVersion": r.model_version,
                    "storageUri": r.storage_uri,
                    "url": r.url if r.state is RevisionState.READY else None,
                    "message": r.message,
                }
                for r in self.revisions
            ],
        }
        atomic_write_json(self.layout.status_file, {"status": status})

    async def run(self) -> None:
        self.stack_dir.mkdir(parents=True, exist_ok=True)
        self._session = aiohttp.ClientSession()
        try:
            while True:
                try:
                    await self.reconcile()
                except Exception:  # keep reconciling: one bad spec must not kill the ingress
                    log.exception("reconcile failed")
                await asyncio.sleep(_RECONCILE_SECONDS)
        finally:
            await self._session.close()

    def shutdown(self) -> None:
        for revision in self.revisions:
            self._stop(revision)

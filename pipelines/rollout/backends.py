"""Where the InferenceService lives: a local JSON document, or the Kubernetes API."""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from contracts.files import atomic_write_json, pid_alive
from contracts.inferenceservice import KSERVE_GROUP, KSERVE_PLURAL, KSERVE_VERSION
from contracts.layout import StackLayout
from pipelines.errors import RolloutError, StackDownError
from pipelines.rollout.document import spec_patch

log = logging.getLogger(__name__)


# a status older than this, or written by a controller that is gone, is not an observation
STALE_STATUS_SECONDS = 10.0


class Backend(Protocol):
    """Read and write one InferenceService; read the status its controller observed."""

    def lock(self) -> AbstractContextManager[None]:
        """Held for a whole read-modify-write-wait, so that two commands never interleave."""
        ...

    def get(self) -> dict[str, Any] | None: ...

    def apply(self, isvc: dict[str, Any]) -> dict[str, Any]: ...

    def status(self) -> dict[str, Any] | None: ...


class LocalBackend:
    """The local stack's InferenceService: a JSON document the local controller reconciles."""

    def __init__(self, root: Path, name: str) -> None:
        self.layout = StackLayout(root)
        self.name = name

    @contextlib.contextmanager
    def lock(self, timeout: float = 600.0) -> Iterator[None]:
        """An exclusive ``flock`` on ``stack/rollout.lock``; waits (saying so) for a holder."""
        self.layout.stack.mkdir(parents=True, exist_ok=True)
        with self.layout.rollout_lock.open("a+") as fh:
            deadline, told = time.monotonic() + timeout, False
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not told:
                        fh.seek(0)
                        holder = fh.read().strip() or "?"
                        log.info("waiting for another rollout command (pid %s) to finish", holder)
                        told = True
                    if time.monotonic() > deadline:
                        raise RolloutError(
                            f"another rollout command still holds {self.layout.rollout_lock} "
                            f"after {timeout:.0f} s; nothing was changed"
                        ) from None
                    time.sleep(0.2)
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()}\n")
            fh.flush()
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def get(self) -> dict[str, Any] | None:
        path = self.layout.isvc_file
        return json.loads(path.read_text()) if path.is_file() else None

    def apply(self, isvc: dict[str, Any]) -> dict[str, Any]:
        """Write the document; as the API server, bump ``metadata.generation`` only when the
        spec changed (an unchanged write changes nothing)."""
        isvc = copy.deepcopy(isvc)
        current = self.get() or {}
        meta = isvc.setdefault("metadata", {})
        generation = int((current.get("metadata") or {}).get("generation", 0))
        meta["generation"] = generation + (current.get("spec") != isvc.get("spec"))
        if isvc == current:
            return isvc
        self.layout.stack.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.layout.isvc_file, isvc)
        return isvc

    def status(self) -> dict[str, Any] | None:
        """The status the running controller observed; `StackDownError` when none runs."""
        path = self.layout.status_file
        try:
            status = json.loads(path.read_text()).get("status") or {}
        except FileNotFoundError:
            raise StackDownError(
                "the local stack is not running (no controller has written a status): "
                "start it with `make up`; nothing was changed"
            ) from None
        pid = (status.get("controller") or {}).get("pid")
        age = time.time() - float(status.get("observedAt") or 0)
        if not isinstance(pid, int) or not pid_alive(pid) or age > STALE_STATUS_SECONDS:
            raise StackDownError(
                f"the local stack is not running (its status was last observed {age:.0f} s "
                "ago): start it with `make up`"
            )
        return status


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
        self._read: dict[str, dict[str, Any]] = {}  # resourceVersion -> the object as read

    def _args(self) -> tuple[str, str, str, str]:
        return KSERVE_GROUP, KSERVE_VERSION, self.namespace, KSERVE_PLURAL

    def get(self) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            current = self.api.get_namespaced_custom_object(*self._args(), self.name)
        except ApiException as err:
            if err.status == 404:
                return None
            raise RolloutError(f"cannot read InferenceService {self.name}: {err.reason}") from err
        self._read[current["metadata"]["resourceVersion"]] = copy.deepcopy(current)
        return current

    def apply(self, isvc: dict[str, Any]) -> dict[str, Any]:
        """Patch the spec's changes since ``isvc`` was read, never the whole object.

        The Role grants ``patch`` on this one InferenceService only (no ``update``), and the
        ValidatingAdmissionPolicy ``movie-mlops-rollout-fields`` lets this ServiceAccount change
        only the canary percent and the container's STORAGE_URI / MODEL_VERSION / MODEL_DIGEST.
        """
        from kubernetes.client.exceptions import ApiException

        version = (isvc.get("metadata") or {}).get("resourceVersion")
        read = self._read.get(version)
        if read is None:
            raise RolloutError(
                f"InferenceService {self.name} at resourceVersion {version} was not read by this "
                "command; nothing was written"
            )
        patch = spec_patch(read, isvc)
        if patch is None:  # the API server would not bump the generation either
            return read
        try:  # resourceVersion in the patch: a concurrent edit fails (409) instead of being lost
            return self.api.patch_namespaced_custom_object(
                *self._args(), self.name, patch, _content_type="application/merge-patch+json"
            )
        except ApiException as err:
            if err.status == 409:
                raise RolloutError(
                    f"InferenceService {self.name} was changed by someone else since it was "
                    "read (resourceVersion conflict); nothing was written: rerun the command"
                ) from err
            if err.status in (403, 422) and "ValidatingAdmissionPolicy" in str(err.body or ""):
                raise RolloutError(
                    f"the cluster's admission policy refused the change to {self.name}: "
                    f"{err.body}; nothing was written"
                ) from err
            raise RolloutError(f"cannot patch InferenceService {self.name}: {err.reason}") from err

    def lock(self) -> AbstractContextManager[None]:
        """Nothing to hold: the API server's optimistic concurrency (resourceVersion) guards."""
        return contextlib.nullcontext()

    def status(self) -> dict[str, Any] | None:
        current = self.get()
        return None if current is None else current.get("status")


def make_backend(target: str, *, namespace: str, name: str, local_root: Path) -> Backend:
    """The backend of a target (``local`` or ``cluster``)."""
    if target == "cluster":
        return ClusterBackend(namespace, name)
    return LocalBackend(local_root, name)

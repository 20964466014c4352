"""Where the InferenceService lives: a local JSON document, or the Kubernetes API."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Protocol

from contracts.files import atomic_write_json
from contracts.inferenceservice import KSERVE_GROUP, KSERVE_PLURAL, KSERVE_VERSION
from contracts.layout import StackLayout
from pipelines.errors import RolloutError


class Backend(Protocol):
    """Read and write one InferenceService; read the status its controller observed."""

    def get(self) -> dict[str, Any] | None: ...

    def apply(self, isvc: dict[str, Any]) -> dict[str, Any]: ...

    def status(self) -> dict[str, Any] | None: ...


class LocalBackend:
    """The local stack's InferenceService: a JSON document the local controller reconciles."""

    def __init__(self, root: Path, name: str) -> None:
        self.layout = StackLayout(root)
        self.name = name

    def get(self) -> dict[str, Any] | None:
        path = self.layout.isvc_file
        return json.loads(path.read_text()) if path.is_file() else None

    def apply(self, isvc: dict[str, Any]) -> dict[str, Any]:
        isvc = copy.deepcopy(isvc)
        meta = isvc.setdefault("metadata", {})
        meta["generation"] = int(meta.get("generation", 0)) + 1
        self.layout.stack.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.layout.isvc_file, isvc)
        return isvc

    def status(self) -> dict[str, Any] | None:
        path = self.layout.status_file
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


def make_backend(target: str, *, namespace: str, name: str, local_root: Path) -> Backend:
    """The backend of a target (``local`` or ``cluster``)."""
    if target == "cluster":
        return ClusterBackend(namespace, name)
    return LocalBackend(local_root, name)

"""Environment variables that more than one component reads, each with its one default.

A CLI option names the variable (``envvar=DATA_DIR.name``) and its default
(``= DATA_DIR.default``); a settings object reads it with ``DATA_DIR.get(env)``. The defaults
point at the local stack (`make up`), so every CLI works on one machine without configuration.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from contracts.names import MODEL_NAME as _MODEL_NAME


@dataclass(frozen=True)
class EnvVar:
    """One environment variable and the default used when it is unset or empty."""

    name: str
    default: str
    meaning: str

    def get(self, env: Mapping[str, str] | None = None) -> str:
        value = (os.environ if env is None else env).get(self.name, "")
        return value or self.default

    def path(self, env: Mapping[str, str] | None = None) -> Path:
        return Path(self.get(env))

    @property
    def default_path(self) -> Path:
        return Path(self.default)


LOOPBACK = "127.0.0.1"

DATA_DIR = EnvVar("DATA_DIR", ".local/data", "raw, feature and event snapshots")
LOCAL_ROOT = EnvVar("LOCAL_ROOT", ".local", "local stack state")
MLFLOW_PORT = EnvVar("MLFLOW_PORT", "5000", "local MLflow port")
INGRESS_PORT = EnvVar("INGRESS_PORT", "8080", "local ingress port")
SANDBOX_PORT = EnvVar("SANDBOX_PORT", "8090", "local TMDB sandbox port")
EVENTS_PORT = EnvVar("EVENTS_PORT", "8070", "local event sink port")
EVENTS_URL = EnvVar(
    "EVENTS_URL", f"http://{LOOPBACK}:{EVENTS_PORT.default}", "event sink the ingress logs to"
)
MLFLOW_TRACKING_URI = EnvVar(
    "MLFLOW_TRACKING_URI", f"http://{LOOPBACK}:{MLFLOW_PORT.default}", "MLflow server"
)
MODEL_NAME = EnvVar("MODEL_NAME", _MODEL_NAME, "registered model name")
MODEL_VERSION = EnvVar("MODEL_VERSION", "", "version the predictor reports")
MODEL_DIGEST = EnvVar("MODEL_DIGEST", "", "artefact digest the predictor must find")
MODEL_SERVER_HOST = EnvVar("MODEL_SERVER_HOST", LOOPBACK, "address the predictor binds")
# The largest request body the serving edge reads (the predictor and the local ingress): a body
# over it is refused with 413 before it is read whole. 1 MiB holds 1,000 instances with long
# histories many times over; the cluster's nginx refuses the same size (client_max_body_size).
MAX_REQUEST_BYTES = EnvVar(
    "MAX_REQUEST_BYTES", str(1 << 20), "largest request body the predictor and ingress read"
)
# The local Prometheus (#12); its URL defaults to the local stack.
PROMETHEUS_PORT = EnvVar("PROMETHEUS_PORT", "9090", "local Prometheus port")
PROMETHEUS_URL = EnvVar(
    "PROMETHEUS_URL", f"http://{LOOPBACK}:{PROMETHEUS_PORT.default}", "Prometheus (canary analysis)"
)
# Test/demo-only faults of the predictor (`model_server.faults`): never set them in production.
FAULT_ERROR_RATE = EnvVar(
    "MODEL_SERVER_FAULT_ERROR_RATE", "", "tests only: share of predictions answered 500"
)
FAULT_LATENCY_MS = EnvVar(
    "MODEL_SERVER_FAULT_LATENCY_MS", "", "tests only: delay added to every prediction"
)

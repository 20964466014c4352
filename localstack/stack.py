"""The one-machine twin of the cluster: MLflow, the TMDB sandbox, the ingress/controller and
Prometheus.

``make up`` starts these background processes, all bound to 127.0.0.1:

| service  | cluster twin                                  | default address          |
|----------|-----------------------------------------------|--------------------------|
| mlflow   | the MLflow Deployment (sqlite + artefact PVC) | http://127.0.0.1:5000    |
| sandbox  | the dev overlay's in-cluster TMDB sandbox     | http://127.0.0.1:8090/3  |
| events   | the ``event-sink`` Deployment (prediction log) | http://127.0.0.1:8070    |
| ingress  | Knative ingress + KServe controller           | http://127.0.0.1:8080    |
| prometheus | the monitoring component's Prometheus       | http://127.0.0.1:9090    |

Prometheus (`localstack.prometheus`) is Debian's package (`make prometheus`); without it the
stack starts without it and says so.

State lives under ``.local/`` (``LOCAL_ROOT``): ``mlflow/`` (database and the artefact store that
plays the ``mlflow-artifacts`` PVC), ``run/`` (pid files), ``logs/``, ``stack/`` (the local
InferenceService and its status). The event sink writes under ``DATA_DIR/events/``. ``make down``
stops everything; the state stays.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from contracts import credentials
from contracts.layout import StackLayout
from contracts.settings import (
    DATA_DIR,
    EVENTS_PORT,
    INGRESS_PORT,
    LOCAL_ROOT,
    LOOPBACK,
    MLFLOW_PORT,
    PROMETHEUS_PORT,
    SANDBOX_PORT,
)
from localstack import prometheus
from localstack.processes import (
    ProcessError,
    pid_alive,
    port_in_use,
    spawn,
    stop_group,
    wait_healthy,
)

log = logging.getLogger(__name__)

# started in this order, stopped in the reverse: the sink outlives the ingress that logs to it
SERVICES = ("mlflow", "sandbox", "events", "ingress", "prometheus")
SANDBOX_TOKEN = "sandbox-token"  # the sandbox's own fake credential, not a secret


@dataclass(frozen=True)
class StackSettings:
    """Where the local stack keeps its state and which loopback ports it uses."""

    root: Path = LOCAL_ROOT.default_path
    host: str = LOOPBACK
    mlflow_port: int = int(MLFLOW_PORT.default)
    sandbox_port: int = int(SANDBOX_PORT.default)
    ingress_port: int = int(INGRESS_PORT.default)
    events_port: int = int(EVENTS_PORT.default)
    frontend_dist: Path = Path("frontend/dist")
    data_dir: Path = DATA_DIR.default_path  # the event sink writes DATA_DIR/events/
    log_predictions: bool = True  # False: the ingress logs nothing (`make bench` compares)
    prometheus_port: int = int(PROMETHEUS_PORT.default)

    @property
    def layout(self) -> StackLayout:
        return StackLayout(self.root)

    @property
    def mlflow_dir(self) -> Path:
        return self.layout.mlflow

    @property
    def artifacts_dir(self) -> Path:
        """The local stand-in for the cluster's ``mlflow-artifacts`` PVC."""
        return self.layout.artifacts

    @property
    def run_dir(self) -> Path:
        return self.layout.run

    @property
    def logs_dir(self) -> Path:
        return self.layout.logs

    @property
    def stack_dir(self) -> Path:
        return self.layout.stack

    @property
    def sandbox_control_token_file(self) -> Path:
        """The sandbox's control-API token (``/__sandbox/faults``...), mode 0600."""
        return self.layout.run / "sandbox-control-token"

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def sandbox_url(self) -> str:
        return f"http://{self.host}:{self.sandbox_port}/3"

    @property
    def ingress_url(self) -> str:
        return f"http://{self.host}:{self.ingress_port}"

    @property
    def events_url(self) -> str:
        return f"http://{self.host}:{self.events_port}"

    @property
    def prometheus_url(self) -> str:
        return f"http://{self.host}:{self.prometheus_port}"

    @classmethod
    def from_env(cls) -> StackSettings:
        return cls(
            root=LOCAL_ROOT.path(),
            mlflow_port=int(MLFLOW_PORT.get()),
            sandbox_port=int(SANDBOX_PORT.get()),
            ingress_port=int(INGRESS_PORT.get()),
            events_port=int(EVENTS_PORT.get()),
            data_dir=DATA_DIR.path(),
            prometheus_port=int(PROMETHEUS_PORT.get()),
        )


def _pidfile(settings: StackSettings, name: str) -> Path:
    return settings.run_dir / f"{name}.pid"


def running_pid(settings: StackSettings, name: str) -> int | None:
    """The pid of a running service, or None (a stale pid file is removed)."""
    path = _pidfile(settings, name)
    try:
        pid = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    if pid_alive(pid):
        return pid
    path.unlink(missing_ok=True)
    return None


def _argv(settings: StackSettings, name: str) -> tuple[list[str], dict[str, str], str, float]:
    """(argv, extra env, health URL, start timeout) of a service."""
    py = sys.executable
    if name == "mlflow":
        settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
        db = (settings.mlflow_dir / "mlflow.db").resolve()
        argv = [
            py, "-m", "mlflow", "server",
            "--host", settings.host,
            "--port", str(settings.mlflow_port),
            "--backend-store-uri", f"sqlite:///{db}",
            "--serve-artifacts",
            "--artifacts-destination", str(settings.artifacts_dir.resolve()),
            "--workers", "1",
        ]  # fmt: skip
        argv[4:4] = ["--app-name", "basic-auth"]  # every call authenticated (contracts.credentials)
        # lean: one worker, no server-side job runner
        env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **_auth_env(settings)}
        return argv, env, f"{settings.mlflow_url}/health", 120.0
    if name == "sandbox":
        argv = [
            py, "-m", "tmdb_sandbox",
            "--host", settings.host,
            "--port", str(settings.sandbox_port),
            "--token", SANDBOX_TOKEN,
            # its fault-control API takes a token of its own, random, readable by this user only
            "--control-token-file", str(settings.sandbox_control_token_file),
        ]  # fmt: skip
        return argv, {}, f"http://{settings.host}:{settings.sandbox_port}/__sandbox/health", 60.0
    if name == "ingress":
        argv = [
            py, "-m", "localstack.ingress",
            "--host", settings.host,
            "--port", str(settings.ingress_port),
            "--root", str(settings.root),
            "--mlflow-url", settings.mlflow_url,
            "--poster-base-url", f"http://{settings.host}:{settings.sandbox_port}/t/p",
            "--frontend-dist", str(settings.frontend_dist),
            "--events-url", settings.events_url if settings.log_predictions else "",
        ]  # fmt: skip
        return argv, {}, f"{settings.ingress_url}/healthz", 60.0
    if name == "events":
        argv = [
            py, "-m", "pipelines.events", "serve",
            "--host", settings.host,
            "--port", str(settings.events_port),
            "--data-dir", str(settings.data_dir),
        ]  # fmt: skip
        return argv, {}, f"{settings.events_url}/healthz", 60.0
    if name == "prometheus":
        layout = settings.layout
        config = prometheus.prepare(
            layout, f"{settings.host}:{settings.ingress_port}", settings.events_url
        )
        argv = prometheus.argv(layout, settings.host, settings.prometheus_port, config)
        return argv, {}, f"{settings.prometheus_url}/-/ready", 60.0
    raise ValueError(f"unknown service {name!r}")


def _auth_env(settings: StackSettings) -> dict[str, str]:
    """MLflow's basic-auth app: its config (no secret in it) and the admin's first password.

    The credentials are generated on first start (`contracts.credentials.ensure`, mode 0600)
    and reach the server through its environment only.
    """
    users = credentials.ensure(settings.root)
    secret = credentials.secrets_dir(settings.root) / "mlflow-flask-secret"
    if not secret.is_file():
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32))
    config = settings.mlflow_dir / "basic_auth.ini"
    config.write_text(
        "[mlflow]\n"
        "default_permission = NO_PERMISSIONS\n"
        f"database_uri = sqlite:///{(settings.mlflow_dir / 'auth.db').resolve()}\n"
        f"admin_username = {users[credentials.ADMIN][0]}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # MLflow's own cache of verified credentials (HMAC-keyed, per process, successes only):
        # without it every request pays a PBKDF2 check, ~0.3 s on this machine (docs/security.md)
        f"auth_cache_ttl_seconds = {credentials.AUTH_CACHE_TTL_S}\n"
    )
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(config.resolve()),
        "MLFLOW_AUTH_ADMIN_PASSWORD": users[credentials.ADMIN][1],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secret.read_text().strip(),
    }


def provision_mlflow(settings: StackSettings) -> None:
    """Create the stages' MLflow users and permissions (`python -m pipelines.registry`)."""
    admin = credentials.read(settings.root, credentials.ADMIN)
    if admin is None:
        raise ProcessError(f"no MLflow admin credential under {settings.root}")
    env = {
        credentials.USERNAME_ENV: admin[0],
        credentials.PASSWORD_ENV: admin[1],
        "MLFLOW_TRACKING_URI": settings.mlflow_url,
        "LOCAL_ROOT": str(settings.root),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.registry", "provision"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise ProcessError(f"provisioning MLflow users failed: {proc.stderr.strip()[-2000:]}")


def _port(settings: StackSettings, name: str) -> int:
    return {
        "mlflow": settings.mlflow_port,
        "sandbox": settings.sandbox_port,
        "ingress": settings.ingress_port,
        "events": settings.events_port,
        "prometheus": settings.prometheus_port,
    }[name]


def start(settings: StackSettings, name: str) -> int:
    """Start one service in the background unless it already runs; wait until healthy."""
    pid = running_pid(settings, name)
    if pid is not None:
        log.info("%s already running (pid %d)", name, pid)
        return pid
    port = _port(settings, name)
    if port_in_use(settings.host, port):
        raise ProcessError(
            f"{settings.host}:{port} is taken by another program; stop it or set "
            f"{name.upper()}_PORT to a free port"
        )
    argv, env, health, timeout = _argv(settings, name)
    log_file = settings.logs_dir / f"{name}.log"
    proc = spawn(argv, log_file=log_file, env=env)
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    _pidfile(settings, name).write_text(f"{proc.pid}\n")
    log.info("starting %s (pid %d, log %s)", name, proc.pid, log_file)
    try:
        wait_healthy(health, timeout=timeout, process=proc, log_file=log_file)
    except ProcessError:
        stop(settings, name)
        raise
    return proc.pid


def stop(settings: StackSettings, name: str) -> bool:
    """Stop one service (and its children); True if something was running."""
    pid = running_pid(settings, name)
    if pid is None:
        return False
    stop_group(pid)
    _pidfile(settings, name).unlink(missing_ok=True)
    log.debug("stopped %s (pid %d)", name, pid)
    return True


def installed(name: str) -> bool:
    """Whether a service's program is on this machine (only Prometheus may be missing)."""
    return name != "prometheus" or prometheus.binary() is not None


def up(settings: StackSettings) -> dict[str, str]:
    """Start the whole stack; return the URLs to show the user."""
    urls = {
        "mlflow": settings.mlflow_url,
        "tmdb sandbox": settings.sandbox_url,
        "ingress (page + predict)": settings.ingress_url,
        "event sink": settings.events_url,
        "prometheus": settings.prometheus_url,
    }
    for name in SERVICES:
        if not installed(name):
            log.warning(
                "note: %s is not installed (`make prometheus` as root): the stack runs without "
                "it, and `rollout analyze`/`auto` cannot measure canaries",
                name,
            )
            urls.pop(name)
            continue
        start(settings, name)
        if name == "mlflow":
            provision_mlflow(settings)
    return urls


def down(settings: StackSettings) -> list[str]:
    """Stop the whole stack (ingress first: it owns the model-server revisions)."""
    return [name for name in reversed(SERVICES) if stop(settings, name)]


def status(settings: StackSettings) -> dict[str, object]:
    """Which services run, and the local InferenceService's status."""
    services = {name: running_pid(settings, name) for name in SERVICES}
    isvc_status = settings.layout.status_file
    isvc = json.loads(isvc_status.read_text()) if isvc_status.is_file() else None
    return {"services": services, "inferenceservice": isvc}

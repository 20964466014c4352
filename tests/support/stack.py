"""The local stack as tests drive it: one `Session` per stack, the CLIs run against it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import requests

from contracts.names import MODEL_NAME as MODEL
from localstack.processes import free_port
from localstack.stack import StackSettings, down, up

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Session:
    settings: StackSettings
    data_dir: Path
    env: dict[str, str]
    versions: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)  # stdout of named runs

    @property
    def predict_url(self) -> str:
        return f"{self.settings.ingress_url}/v1/models/{MODEL}:predict"

    def run(
        self,
        *argv: str,
        check: bool = True,
        timeout: float = 300,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """`python -m <argv>` in the repo with the stack's environment (plus ``env``)."""
        proc = subprocess.run(
            [sys.executable, "-m", *argv],
            cwd=REPO_ROOT,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check:
            assert proc.returncode == 0, f"{argv} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
        return proc

    def predict(self, instances: list[dict[str, object]], **kwargs: object) -> requests.Response:
        return requests.post(self.predict_url, json={"instances": instances}, timeout=10, **kwargs)


@contextlib.contextmanager
def local_stack(root: Path) -> Iterator[Session]:
    """Start a local stack with its state under ``root`` on free loopback ports; stop it after."""
    settings = StackSettings(
        root=root / ".local",
        mlflow_port=free_port(),
        sandbox_port=free_port(),
        ingress_port=free_port(),
        frontend_dist=REPO_ROOT / "frontend" / "dist",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TMDB_", "MLFLOW_"))}
    env.update(
        DATA_DIR=str(root / "data"),
        LOCAL_ROOT=str(settings.root),
        MLFLOW_TRACKING_URI=settings.mlflow_url,
        TMDB_BASE_URL=settings.sandbox_url,
        TMDB_ACCESS_TOKEN="sandbox-token",
        TMDB_RATE_LIMIT="0",
    )
    try:
        up(settings)
        yield Session(settings=settings, data_dir=root / "data", env=env)
    finally:
        down(settings)


def registered_version(stdout: str) -> str:
    for line in stdout.splitlines():
        if line.startswith(f"registered {MODEL} version "):
            return line.split()[3]
    raise AssertionError(f"no registered version in:\n{stdout}")

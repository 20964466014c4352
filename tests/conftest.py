"""Shared fixtures: a real TMDB sandbox process on loopback, and real crawls into tmp dirs.

- ``tmdb_sandbox`` (session): ``python -m tmdb_sandbox --port 0`` as a subprocess.
- ``sandbox`` (function): the same process with faults and stats reset before the test.
- ``raw_data_dir`` / ``raw_snapshot_dir`` (session): a DATA_DIR holding one published raw
  snapshot crawled from the sandbox (5 pages), for stages downstream of the crawl.
- ``crawl_into(sandbox, data_dir, pages=...)``: run a real crawl (in-process, real HTTP).
- ``stack`` (module): a real local stack (`localstack.up`: MLflow, sandbox, ingress) on free
  loopback ports with its own state, and a `Session` that runs the CLIs against it.
"""

from __future__ import annotations

import os
import secrets
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from pipelines.crawl import CrawlResult, CrawlSettings, ProgressMode, crawl
from tests.support.stack import Session, local_stack

REPO_ROOT = Path(__file__).resolve().parents[1]
SANDBOX_MOVIES = 2000  # 100 pages
_STARTUP_TIMEOUT_S = 30.0


@dataclass
class Sandbox:
    """A running sandbox: where it listens, what it accepts, and its control endpoints."""

    base_url: str  # e.g. http://127.0.0.1:40123/3, what TMDB_BASE_URL should be
    token: str
    api_key: str
    control_token: str  # the control API's own token (not the TMDB credential)
    process: subprocess.Popen[str]
    log_path: Path

    @property
    def control_url(self) -> str:
        return self.base_url.removesuffix("/3") + "/__sandbox"

    @property
    def control_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.control_token}"}

    def set_faults(self, faults: dict[str, Any]) -> dict[str, Any]:
        """Replace the faults, e.g. ``{"scripted": [{"page": 3, "kind": "status", ...}]}``."""
        response = requests.put(
            f"{self.control_url}/faults", json=faults, headers=self.control_headers, timeout=5
        )
        response.raise_for_status()
        return response.json()

    def reset(self) -> None:
        """Zero the stats and clear the faults."""
        requests.post(
            f"{self.control_url}/reset", headers=self.control_headers, timeout=5
        ).raise_for_status()

    def stats(self) -> dict[str, Any]:
        response = requests.get(
            f"{self.control_url}/stats", headers=self.control_headers, timeout=5
        )
        response.raise_for_status()
        return response.json()

    def page_requests(self, page: int) -> int:
        """How many times `/movie/popular?page=<page>` was requested since the last reset."""
        return sum(self.stats()["pages"].get(str(page), {}).values())

    def env(self, data_dir: Path, *, auth: str = "token") -> dict[str, str]:
        """Environment for `python -m pipelines.crawl` against this sandbox."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TMDB_", "DATA_DIR"))}
        env.update(TMDB_BASE_URL=self.base_url, DATA_DIR=str(data_dir), TMDB_RATE_LIMIT="0")
        if auth == "token":
            env["TMDB_ACCESS_TOKEN"] = self.token
        elif auth == "api_key":
            env["TMDB_API_KEY"] = self.api_key
        return env


def _read_url(process: subprocess.Popen[str], log_path: Path) -> str:
    assert process.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + _STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        if selector.select(timeout=0.2):
            line = process.stdout.readline()
            if "listening on " in line:
                return line.strip().rsplit("listening on ", 1)[1]
    process.kill()
    raise RuntimeError(f"tmdb_sandbox did not start; its log:\n{log_path.read_text()}")


@pytest.fixture(scope="session")
def tmdb_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """One sandbox process for the whole session (2000 movies, seed 7, random credentials)."""
    token, api_key = f"tok-{secrets.token_hex(16)}", f"key-{secrets.token_hex(16)}"
    control = f"ctl-{secrets.token_hex(16)}"
    log_path = tmp_path_factory.mktemp("sandbox") / "sandbox.log"
    env = {
        **os.environ,
        "SANDBOX_TOKEN": token,
        "SANDBOX_API_KEY": api_key,
        "SANDBOX_CONTROL_TOKEN": control,
    }
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "tmdb_sandbox", "--port", "0", "--movies", str(SANDBOX_MOVIES)],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
        )
    try:
        base_url = _read_url(process, log_path)
        yield Sandbox(base_url, token, api_key, control, process, log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()


@pytest.fixture
def sandbox(tmdb_sandbox: Sandbox) -> Sandbox:
    """The session sandbox with no faults and zeroed stats."""
    tmdb_sandbox.reset()
    return tmdb_sandbox


def crawl_into(sandbox: Sandbox, data_dir: Path, pages: int = 5, **overrides: Any) -> CrawlResult:
    """Run a real crawl of pages 1..`pages` from the sandbox into `data_dir` (faults cleared)."""
    sandbox.reset()
    settings = CrawlSettings(
        **{
            "data_dir": data_dir,
            "base_url": sandbox.base_url,
            "access_token": sandbox.token,
            "start_page": 1,
            "end_page": pages,
            "rate_limit": 0,
            "timeout": 5.0,
            "max_retries": 2,
            "backoff_factor": 0.05,
            "progress": ProgressMode.LOG,
            **overrides,
        }
    )
    return crawl(settings)


@pytest.fixture(scope="session")
def raw_data_dir(tmdb_sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DATA_DIR whose ``raw/latest`` is a 5-page crawl of the sandbox (treat as read-only)."""
    data_dir = tmp_path_factory.mktemp("data")
    crawl_into(tmdb_sandbox, data_dir, pages=5)
    return data_dir


@pytest.fixture(scope="session")
def raw_snapshot_dir(raw_data_dir: Path) -> Path:
    """The published raw snapshot directory inside `raw_data_dir` (treat as read-only)."""
    raw = raw_data_dir / "raw"
    return raw / (raw / "latest").read_text().strip()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    """One real local stack for the whole run (see `tests.support.stack`).

    Tests never rely on what another test left: each establishes the state it needs
    (`serve_only`, `train_two_versions`, its own versions), so any one runs alone or in any order.
    """
    with local_stack(tmp_path_factory.mktemp("local")) as session:
        yield session

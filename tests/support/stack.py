"""The local stack as tests drive it: one `Session` per stack, the CLIs run against it."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests

from contracts import credentials
from contracts.names import MODEL_NAME as MODEL
from contracts.names import VERSION_HEADER
from localstack.processes import free_ports
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
    mlflow, sandbox, ingress, events, prometheus = free_ports(5)  # distinct, all free now
    settings = StackSettings(
        root=root / ".local",
        mlflow_port=mlflow,
        sandbox_port=sandbox,
        ingress_port=ingress,
        events_port=events,
        frontend_dist=REPO_ROOT / "frontend" / "dist",
        data_dir=root / "data",
        prometheus_port=prometheus,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TMDB_", "MLFLOW_"))}
    env.update(
        DATA_DIR=str(root / "data"),
        LOCAL_ROOT=str(settings.root),
        MLFLOW_PORT=str(settings.mlflow_port),
        INGRESS_PORT=str(settings.ingress_port),
        SANDBOX_PORT=str(settings.sandbox_port),
        EVENTS_PORT=str(settings.events_port),
        PROMETHEUS_PORT=str(settings.prometheus_port),
        PROMETHEUS_URL=settings.prometheus_url,
        EVENTS_URL=settings.events_url,
        MLFLOW_TRACKING_URI=settings.mlflow_url,
        TMDB_BASE_URL=settings.sandbox_url,
        TMDB_ACCESS_TOKEN="sandbox-token",
        TMDB_RATE_LIMIT="0",
    )
    saved = {k: os.environ.get(k) for k in (credentials.USERNAME_ENV, credentials.PASSWORD_ENV)}
    try:
        up(settings)
        # the test process reads MLflow as its admin; the CLIs it runs use their own identities
        admin = credentials.read(settings.root, credentials.ADMIN)
        assert admin is not None
        os.environ[credentials.USERNAME_ENV], os.environ[credentials.PASSWORD_ENV] = admin
        yield Session(settings=settings, data_dir=root / "data", env=env)
    finally:
        down(settings)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def registered_version(stdout: str, model: str = MODEL) -> str:
    for line in stdout.splitlines():
        if line.startswith(f"registered {model} version "):
            return line.split()[3]
    raise AssertionError(f"no registered version in:\n{stdout}")


def train_two_versions(stack: Session) -> dict[str, str]:
    """Crawl, build features and train twice (same recipe): versions "first" and "second".

    Each test that needs them asks for this fixture, so any test runs alone (``-k``) or in any
    order; the training output is kept for the tests that check what training printed.
    """
    if "first" not in stack.versions:
        stack.run("pipelines.crawl", "--start-page", "1", "--end-page", "20")
        stack.run("pipelines.features", "build", "--users", "600", "--seed", "5")
        for name in ("first", "second"):
            proc = stack.run("pipelines.train")
            stack.versions[name] = registered_version(proc.stdout)
            stack.outputs[name] = proc.stdout
    # these two only: other helpers keep their own versions in ``stack.versions`` (popularity)
    return {name: stack.versions[name] for name in ("first", "second")}


def train_popularity(stack: Session) -> str:
    """The popularity model trained on the stack's snapshot: registered, failing the quality
    gate (exit 9, no alias) against the champion of `train_two_versions`.

    Once per session, like `train_two_versions` (a training costs ~5 s, mostly MLflow calls):
    the canary tests serve it as a version users click less, the local-stack test checks what
    the training said (its stderr is kept in ``stack.outputs["popularity"]``).
    """
    train_two_versions(stack)
    if "popularity" not in stack.versions:
        proc = stack.run("pipelines.train", "--model", "popularity", check=False)
        assert proc.returncode == 9, proc.stderr[-3000:]  # registered, gate failed
        failed = re.search(r" version (\d+) failed the quality gate", proc.stderr)
        assert failed, proc.stderr[-3000:]
        stack.versions["popularity"] = failed.group(1)
        stack.outputs["popularity"] = proc.stderr
    return stack.versions["popularity"]


def serve_only(stack: Session, version: str) -> None:
    """Start from a known state: ``version`` rolled out at 100 % (and champion)."""
    stack.run("pipelines.rollout", "canary", "--version", version, "--percent", "100")
    assert served_versions(stack, 10) == {version}


UNKEYED = {"popular": True, "k": 3}  # no user id: no sticky arm, the weighted random split


def served_versions(stack: Session, n: int) -> set[str]:
    """Versions that answered ``n`` requests without an assignment key (the split's share)."""
    return {stack.predict([UNKEYED]).headers["X-Model-Version"] for _ in range(n)}


# -- observing a stack under faults --------------------------------------------------------------


def observed(stack: Session) -> dict[str, Any]:
    return json.loads(stack.settings.layout.status_file.read_text())["status"]


def revision_of(stack: Session, version: str) -> dict[str, Any]:
    """The newest revision serving ``version`` in the observed status."""
    return [r for r in observed(stack)["revisions"] if r["modelVersion"] == version][-1]


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60.0) -> float:
    """Seconds until ``check()`` holds (fails the test after ``timeout``)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"not {what} after {timeout:.0f} s")


V2_BODY = {"inputs": [{"name": "user_id", "shape": [1], "datatype": "INT64", "data": [1]}]}


class Load:
    """Requests in a loop on a thread, counting answers by status, until stopped.

    ``protocol`` ``"v1"`` posts a V1 predict, ``"v2"`` a V2 infer, through the ingress.
    """

    def __init__(self, stack: Session, protocol: str = "v1") -> None:
        if protocol == "v1":
            self.url, self.body = stack.predict_url, {"instances": [{"user_id": 1}]}
        else:
            self.url = f"{stack.settings.ingress_url}/v2/models/{MODEL}/infer"
            self.body = V2_BODY
        self.codes = Counter[int]()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                try:
                    code = session.post(self.url, json=self.body, timeout=10).status_code
                except requests.RequestException:
                    code = 0
                self.codes[code] += 1

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    @property
    def failed(self) -> int:
        return sum(n for code, n in self.codes.items() if code != 200)


def model_servers_under(stack: Session) -> list[int]:
    """Pids of model servers serving artefacts of this stack."""
    root = str(stack.settings.artifacts_dir.resolve())
    pids = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "model_server" in cmdline and root in cmdline:
            pids.append(proc.info["pid"])
    return pids


def page_responses(base: str) -> dict[str, requests.Response]:
    """The page, its script bundle and its config.json, as a browser would fetch them."""
    index = requests.get(f"{base}/", timeout=5)
    script = re.search(r'src="(/assets/[^"]+\.js)"', index.text)
    assert script, index.text
    return {
        "page": index,
        "script": requests.get(f"{base}{script[1]}", timeout=5),
        "config": requests.get(f"{base}/config.json", timeout=5),
    }


def csp_directives(header: str) -> dict[str, str]:
    """A Content-Security-Policy header as {directive: sources}."""
    return dict(d.strip().split(" ", 1) for d in header.split(";"))


class PredictLoad:
    """Predictions through the ingress on two threads until the block ends; every answer is
    kept as (time, version, status).

    Each request is another user (1..``users``, in turn): the ingress keeps a user on one arm
    (sticky assignment), so one user's requests alone would all land on the same arm, whatever
    the canary percent.
    """

    def __init__(self, url: str, users: int = 400) -> None:
        self.url, self.users = url, users
        self.answers: list[tuple[float, str, int]] = []
        self._next_user = itertools.count()  # shared by both threads (next() holds the GIL)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(2)]

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                user = next(self._next_user) % self.users + 1
                try:
                    r = session.post(self.url, json={"instances": [{"user_id": user}]}, timeout=10)
                    answer = (r.headers.get(VERSION_HEADER, "?"), r.status_code)
                except requests.RequestException:
                    answer = ("?", 0)
                self.answers.append((time.monotonic(), *answer))

    def counts(self) -> Counter[tuple[str, int]]:
        """Answers by (version, status)."""
        return Counter((version, status) for _, version, status in self.answers)

    def of(self, version: str) -> Counter[int]:
        """Statuses of the answers that ``version`` gave."""
        return Counter(status for _, v, status in self.answers if v == version)

    def __enter__(self) -> PredictLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)

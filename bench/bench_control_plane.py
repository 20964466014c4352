"""The local control plane under faults: requests lost and time to recover.

A real local stack (MLflow, sandbox, ingress/controller) on free loopback ports, two trained
versions, then:

- ``kill -9`` of the canary revision during a 50 % canary, under load;
- ``kill -9`` of the only revision, under load;
- ``make down && make up`` with a 50 % canary (time until both arms serve again).

Each prints the requests sent and failed while the fault lasted and the seconds until the
controller reported the revision ready again.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path

from localstack.stack import down, up
from tests.support.stack import (
    Load,
    Session,
    local_stack,
    observed,
    revision_of,
    serve_only,
    served_versions,
    train_two_versions,
    wait_for,
)


def _kill_and_recover(stack: Session, version: str) -> tuple[float, float]:
    """kill -9 the revision serving ``version``; seconds until reported down and ready again."""
    victim = revision_of(stack, version)
    started = time.monotonic()
    os.kill(victim["pid"], signal.SIGKILL)
    noticed = wait_for("reported down", lambda: revision_of(stack, version)["state"] != "Ready")
    wait_for(
        "ready again",
        lambda: revision_of(stack, version)["state"] == "Ready"
        and revision_of(stack, version)["restarts"] > victim["restarts"],
        120,
    )
    return noticed, time.monotonic() - started


def _kill_under_load(stack: Session, version: str, what: str) -> None:
    """Print the requests lost to a ``kill -9`` of ``version``'s revision under load."""
    with Load(stack) as load:
        time.sleep(1.0)
        noticed, recovered = _kill_and_recover(stack, version)
        time.sleep(1.0)
    total = sum(load.codes.values())
    print(f"kill -9 of {what}: {load.failed} of {total} requests failed (codes {dict(load.codes)})")
    print(f"kill -9 of {what}: reported not ready after {noticed:.1f} s, "
          f"serving again after {recovered:.1f} s")  # fmt: skip


def run() -> None:
    with (
        tempfile.TemporaryDirectory(prefix="bench-control-") as tmp,
        local_stack(Path(tmp)) as stack,
    ):
        versions = train_two_versions(stack)
        first, second = versions["first"], versions["second"]

        serve_only(stack, first)
        stack.run("pipelines.rollout", "canary", "--version", second, "--percent", "50")
        _kill_under_load(stack, second, "the canary (50 %)")
        serve_only(stack, first)
        _kill_under_load(stack, first, "the only revision")

        stack.run("pipelines.rollout", "canary", "--version", second, "--percent", "50")
        down(stack.settings)
        started = time.monotonic()
        up(stack.settings)
        wait_for("ready", lambda: observed(stack)["conditions"][0]["status"] == "True", 120)
        ready = time.monotonic() - started
        assert served_versions(stack, 60) == {first, second}
        print(f"down + up with a 50 % canary: both arms serving again {ready:.1f} s after up")

"""The control plane under faults, for real: `kill -9` of revisions, of the ingress/controller
and of training, a restart of the stack, MLflow going away, two commands at once.

Every fault is a real signal to a real process of a real local stack; every check reads what a
user reads (HTTP answers, `status`, the CLIs' exit codes and messages, MLflow's records).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from contracts.files import pid_alive
from localstack.stack import down, running_pid, start, stop, up
from tests.support.stack import (
    MODEL,
    REPO_ROOT,
    Load,
    Session,
    model_servers_under,
    observed,
    revision_of,
    serve_only,
    served_versions,
    train_two_versions,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def versions(stack: Session) -> dict[str, str]:
    return train_two_versions(stack)


@pytest.fixture
def canary_at_50(stack: Session, versions: dict[str, str]) -> Iterator[dict[str, str]]:
    serve_only(stack, versions["first"])
    stack.run("pipelines.rollout", "canary", "--version", versions["second"], "--percent", "50")
    assert served_versions(stack, 40) == {versions["first"], versions["second"]}
    return versions


def test_a_killed_canary_is_restarted_while_the_stable_revision_serves(
    stack: Session, canary_at_50: dict[str, str]
) -> None:
    second = canary_at_50["second"]
    victim = revision_of(stack, second)
    with Load(stack) as load, Load(stack, protocol="v2") as load_v2:
        time.sleep(0.5)
        os.kill(victim["pid"], signal.SIGKILL)
        wait_for("reported down", lambda: revision_of(stack, second)["state"] != "Ready", 5)
        ready = observed(stack)["conditions"][0]
        assert ready["status"] == "False" and victim["name"] in ready["message"]
        wait_for(
            "restarted",
            lambda: revision_of(stack, second)["state"] == "Ready"
            and revision_of(stack, second)["restarts"] >= 1,
        )
        time.sleep(0.5)
    # even the request in flight when it died is answered: resent to the stable revision
    for each in (load, load_v2):  # V2 infer takes the same route and the same retries
        assert each.codes[200] > 50, each.codes
        assert each.failed == 0, each.codes
    assert served_versions(stack, 40) == set(canary_at_50.values())


def test_a_killed_only_revision_answers_503_until_it_is_back(
    stack: Session, versions: dict[str, str]
) -> None:
    first = versions["first"]
    serve_only(stack, first)
    victim = revision_of(stack, first)
    os.kill(victim["pid"], signal.SIGKILL)
    wait_for("reported down", lambda: revision_of(stack, first)["state"] != "Ready", 5)
    response = stack.predict([{"user_id": 1}])
    if response.status_code != 200:  # it may already be back on a fast machine
        assert response.status_code == 503
        assert "restarting" in response.json()["error"]
        assert response.headers["Retry-After"] == "1"
    status = subprocess.run(
        [sys.executable, "-m", "pipelines.rollout", "status"],
        cwd=REPO_ROOT, env=stack.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert status.returncode == 0
    wait_for("serving again", lambda: stack.predict([{"user_id": 1}]).status_code == 200)
    assert revision_of(stack, first)["restarts"] >= 1


def test_down_and_up_restore_the_canary_split(stack: Session, canary_at_50: dict[str, str]) -> None:
    before = observed(stack)["components"]["predictor"]["traffic"]
    down(stack.settings)
    assert model_servers_under(stack) == []  # nothing is left running
    report = stack.run("localstack", "status", check=False)
    assert report.returncode == 1 and "the local stack is down" in report.stdout
    rollout = stack.run("pipelines.rollout", "status", check=False)
    assert rollout.returncode == 10 and "not running" in rollout.stderr
    refused = stack.run("pipelines.rollout", "promote", check=False)
    assert refused.returncode == 10 and "make up" in refused.stderr

    up(stack.settings)
    wait_for("ready after up", lambda: observed(stack)["conditions"][0]["status"] == "True", 90)
    after = observed(stack)["components"]["predictor"]["traffic"]
    assert [(t["revisionName"], t["percent"]) for t in after] == [
        (t["revisionName"], t["percent"]) for t in before
    ]
    assert served_versions(stack, 60) == set(canary_at_50.values())


def test_a_killed_ingress_takes_its_revisions_and_the_next_one_restores_them(
    stack: Session, canary_at_50: dict[str, str]
) -> None:
    servers = model_servers_under(stack)
    assert len(servers) == 2
    pid = running_pid(stack.settings, "ingress")
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for("revisions gone", lambda: not any(pid_alive(p) for p in servers), 10)
    wait_for("status stale", lambda: stack.run("pipelines.rollout", "status", check=False)
             .returncode == 10, 20)  # fmt: skip
    start(stack.settings, "ingress")
    wait_for("ready again", lambda: observed(stack)["conditions"][0]["status"] == "True", 90)
    assert served_versions(stack, 60) == set(canary_at_50.values())


def test_two_canaries_at_once_run_one_after_the_other(
    stack: Session, versions: dict[str, str]
) -> None:
    first, second = versions["first"], versions["second"]
    serve_only(stack, first)
    argv = [sys.executable, "-m", "pipelines.rollout", "canary", "--version", second]
    procs = [
        subprocess.Popen(
            [*argv, "--percent", percent],
            cwd=REPO_ROOT,
            env=stack.env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for percent in ("30", "60")
    ]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    assert [code for code, _, _ in results] == [0, 0], results
    assert any("waiting for another rollout command" in err for _, _, err in results)
    # each reports what it observed at its end; the one that ran last decides the split
    spec = json.loads(stack.settings.layout.isvc_file.read_text())
    percent = spec["spec"]["predictor"]["canaryTrafficPercent"]
    traffic = {t["modelVersion"]: t["percent"] for t in
               observed(stack)["components"]["predictor"]["traffic"]}  # fmt: skip
    assert traffic == {first: 100 - percent, second: percent}


def test_with_mlflow_down_rollout_says_so_within_seconds(
    stack: Session, versions: dict[str, str]
) -> None:
    serve_only(stack, versions["first"])
    stop(stack.settings, "mlflow")
    try:
        for argv in (("canary", "--version", versions["second"]), ("rollback",), ("promote",)):
            started = time.monotonic()
            proc = stack.run("pipelines.rollout", *argv, check=False, timeout=60)
            assert proc.returncode == 8, (argv, proc.stderr)
            assert "MLflow at" in proc.stderr and "unreachable" in proc.stderr
            assert "no version is aliased" not in proc.stderr
            assert "Traceback" not in proc.stderr
            assert time.monotonic() - started < 30
        assert served_versions(stack, 20) == {versions["first"]}  # traffic untouched
    finally:
        start(stack.settings, "mlflow")


def _wait_for_running_run(stack: Session, started_after: float) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.settings.mlflow_url)
    experiment = client.get_experiment_by_name(MODEL)
    found: list[str] = []

    def running() -> bool:
        runs = client.search_runs(
            [experiment.experiment_id], filter_string="attributes.status = 'RUNNING'"
        )
        found[:] = [r.info.run_id for r in runs if r.info.start_time / 1000 > started_after]
        return bool(found)

    wait_for("a RUNNING run", running, 120)
    return found[0]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_killed_training_run_never_stays_running(
    stack: Session, versions: dict[str, str], sig: signal.Signals
) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.settings.mlflow_url)
    count = len(client.search_model_versions(f"name='{MODEL}'"))
    started = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.train"], cwd=REPO_ROOT, env=stack.env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    run_id = _wait_for_running_run(stack, started)
    proc.send_signal(sig)
    code = proc.wait(timeout=60)
    _, err = proc.communicate()
    if sig is signal.SIGTERM:
        assert code == 143, err
        assert "ended as KILLED" in err
    else:
        assert client.get_run(run_id).info.status == "RUNNING"  # nobody could end it
        # the next training closes it (the popularity model: quick, and registered even though
        # its quality gate fails against the champion, exit 9)
        nxt = stack.run("pipelines.train", "--model", "popularity", check=False)
        assert nxt.returncode == 9, nxt.stderr[-2000:]
        assert f"closed stale run {run_id}" in nxt.stderr
        count += 1  # the next run registered its own version
        assert re.search(rf"version {count} failed the quality gate", nxt.stderr), nxt.stderr
    assert client.get_run(run_id).info.status == "KILLED"
    assert len(client.search_model_versions(f"name='{MODEL}'")) == count

"""Canaries judged by measurement, for real: the local stack's Prometheus scrapes real model
servers, `rollout auto` asks it and promotes or rolls back.

A canary is made bad with the predictor's test-only faults (``rollout canary --fault-*``,
`model_server.faults`); traffic is real requests through the ingress. Intervals are seconds
(flags), so the whole module stays well under a minute and a half.

A canary with a lower CTR is the popularity model under simulated users (`pipelines.traffic`)
who click by taste; the event sink counts their impressions and clicks
(``movie_mlops_feedback_total``). The CTR check's arithmetic is unit-tested
(tests/unit/test_canary_analysis.py).
"""

from __future__ import annotations

import json
import re
import threading
import time
from typing import Any

import pytest
import requests

from contracts.names import CHAMPION, VERSION_HEADER
from localstack import prometheus
from pipelines import registry, traffic
from pipelines.rollout import analysis
from tests.support.stack import (
    MODEL,
    PredictLoad,
    Session,
    serve_only,
    train_popularity,
    train_two_versions,
    wait_for,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        prometheus.binary() is None,
        reason="prometheus is not installed (`make prometheus` installs Debian's, as root)",
    ),
]

# fast plan for tests: analyse every 4 s, roll back at the first failed analysis
FAST = ["--interval", "4", "--threshold", "1", "--deadline", "20", "--min-impressions", "0"]


USERS = 400  # of the 600 the features were built with


@pytest.fixture(scope="module")
def versions(stack: Session) -> dict[str, str]:
    return train_two_versions(stack)


@pytest.fixture
def stable(stack: Session, versions: dict[str, str]) -> str:
    """``first`` serving everything (and champion); Prometheus scraping it."""
    if not _served_only_by(stack, versions["first"]) or not _is_champion(stack, versions["first"]):
        serve_only(stack, versions["first"])
    wait_for("Prometheus ready", lambda: _ready(stack), timeout=30)
    return versions["first"]


def _ready(stack: Session) -> bool:
    try:
        url = f"{stack.settings.prometheus_url}/-/ready"
        return requests.get(url, timeout=1).ok
    except requests.RequestException:
        return False


_clients: dict[str, Any] = {}


def _client(stack: Session) -> Any:
    url = stack.settings.mlflow_url
    if url not in _clients:
        _clients[url] = registry.connect(url)
    return _clients[url]


def _version(stack: Session, version: str) -> Any:
    """The registered version as MLflow has it now (tags, aliases); one authenticated call."""
    return _client(stack).get_model_version(MODEL, version)


def _tags(stack: Session, version: str) -> dict[str, str]:
    return dict(_version(stack, version).tags)


def _is_champion(stack: Session, version: str) -> bool:
    return CHAMPION in _version(stack, version).aliases


def _served_only_by(stack: Session, version: str) -> bool:
    seen = {stack.predict([{"user_id": 1}]).headers.get(VERSION_HEADER) for _ in range(20)}
    return seen == {version}


def _auto_under_load(stack: Session, canary: str, *flags: str) -> tuple[Any, PredictLoad]:
    """`rollout auto` of ``canary`` with the fast plan and ``flags``, under prediction load."""
    with PredictLoad(stack.predict_url, USERS) as traffic:
        proc = stack.run(
            "pipelines.rollout", "auto", "--version", canary, *FAST, *flags, check=False
        )
        time.sleep(0.5)  # answers after the decision: the stable arm keeps serving
    return proc, traffic


def test_a_canary_with_5_percent_errors_is_rolled_back_within_one_interval(
    stack: Session, versions: dict[str, str], stable: str
) -> None:
    canary = versions["second"]
    proc, traffic = _auto_under_load(
        stack, canary,
        "--fault-error-rate", "0.05",  # tests only: 5 % of the canary's answers are 500
        "--max-error-rate", "0.01", "--min-requests", "100", "--max-p99-ms", "5000",
    )  # fmt: skip
    assert proc.returncode == 10, proc.stdout + proc.stderr
    assert "error-rate" in proc.stderr and "rolled back" in proc.stderr, proc.stderr
    # rolled back at the first analysis that has the canary's requests: one interval after the
    # canary took its share, or the next one when Prometheus had not yet scraped the new
    # revision (file_sd refresh + scrape interval), which waits rather than judges
    verdicts = re.findall(r"verdict: (\w+)", proc.stdout)
    assert verdicts[-1] == "fail" and set(verdicts[:-1]) <= {"wait"}, proc.stdout
    assert len(verdicts) <= 2, proc.stdout
    assert proc.stdout.count("insufficient requests") == len(verdicts) - 1, proc.stdout
    assert traffic.of(canary)[500] > 0, traffic.counts()  # the canary really failed requests
    # the stable arm never failed: before, during or after the rollback
    assert set(traffic.of(stable)) == {200}, traffic.counts()
    assert {v for _, v, _ in traffic.answers} <= {stable, canary}, traffic.counts()
    assert _served_only_by(stack, stable)
    assert _is_champion(stack, stable)
    tags = _tags(stack, canary)
    assert tags["rollout.decision"] == "rolled_back"
    assert "error-rate" in tags["rollout.reason"]
    evidence = json.loads(tags["rollout.evidence"])
    assert evidence["plan"]["max_error_rate"] == 0.01 and evidence["step_percent"] == 50
    assert "5xx error rate" in evidence["table"]
    assert evidence["analysis"]["canary"]["errors"] > 0


def test_a_canary_with_p99_over_the_threshold_is_rolled_back(
    stack: Session, versions: dict[str, str], stable: str
) -> None:
    canary = versions["second"]
    proc, traffic = _auto_under_load(
        stack, canary,
        "--fault-latency-ms", "600",  # tests only: every canary answer takes 600 ms more
        "--max-p99-ms", "400", "--min-requests", "5",
    )  # fmt: skip
    assert proc.returncode == 10, proc.stdout + proc.stderr
    assert "latency-p99" in proc.stderr, proc.stderr
    assert set(traffic.of(stable)) == {200}, traffic.counts()
    assert _served_only_by(stack, stable)
    assert _tags(stack, canary)["rollout.decision"] == "rolled_back"


def test_a_healthy_canary_is_promoted_through_every_step(
    stack: Session, versions: dict[str, str], stable: str
) -> None:
    canary = versions["second"]
    proc, traffic = _auto_under_load(
        stack, canary, "--steps", "25,50,100", "--min-requests", "10", "--max-p99-ms", "2000"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for step in ("step 25%", "step 50%", "promoted version"):
        assert step in proc.stdout, proc.stdout
    assert proc.stdout.count("verdict: pass") >= 2, proc.stdout
    assert traffic.of(canary)[200] > 0 and set(traffic.of(canary)) == {200}
    assert set(traffic.of(stable)) == {200}
    assert _served_only_by(stack, canary)
    promoted = _version(stack, canary)
    assert CHAMPION in promoted.aliases and promoted.tags["rollout.decision"] == "promoted"
    # the faulty revisions of the tests before were replaced: this canary started clean
    isvc = json.loads(stack.settings.layout.isvc_file.read_text())
    env = isvc["spec"]["predictor"]["containers"][0]["env"]
    assert not [e for e in env if e["name"].startswith("MODEL_SERVER_FAULT_")], env
    # the analysis reads the same figures now: the promoted canary vs the old champion
    shown = analysis.measure(
        analysis.Prometheus(stack.settings.prometheus_url), canary, stable, 30.0, 30.0,
        analysis.Thresholds(min_impressions=0),
    )  # fmt: skip
    assert shown.canary.requests > 0 and shown.stable.requests > 0
    assert shown.canary.p99 is not None and shown.canary.p99 < 2.0
    # every revision is a target labelled with its revision and version; the ingress counts too
    prom = analysis.Prometheus(stack.settings.prometheus_url)
    up = prom.query('max by (model_version) (up{job="model-server"})')
    assert up.get(canary) == 1.0, up
    proxied = prom.query("sum by (model_version) (movie_mlops_ingress_requests_total)")
    assert proxied.get(canary, 0) > 0 and proxied.get(stable, 0) > 0, proxied


MIN_IMPRESSIONS = 1000  # per arm: simulated users at 40/s show ~200 films a second to each


def test_a_canary_with_lower_ctr_is_rolled_back_once_both_arms_have_enough_impressions(
    stack: Session, versions: dict[str, str], stable: str
) -> None:
    """The popularity model as canary: simulated users click far less of what it shows. The
    CTR check waits for --min-impressions on both arms (exposure, not clicks: the canary earns
    few), then rolls it back, naming "ctr"."""
    canary = train_popularity(stack)  # the session's, shared with test_local_stack
    users = traffic.TrafficSettings(
        ingress_url=stack.settings.ingress_url, data_dir=stack.data_dir, users=200,
        requests=100_000, duration=90, rate=40, k=10, seed=11,
    )  # fmt: skip
    players = traffic.SimulatedUsers.from_snapshot(users)
    stop = threading.Event()
    played: list[traffic.TrafficResult | Exception] = []

    def play() -> None:
        try:
            played.append(traffic.play(users, players, stop))
        except Exception as err:  # reported by the assertion below
            played.append(err)

    thread = threading.Thread(target=play, daemon=True)
    thread.start()
    try:
        proc = stack.run(
            "pipelines.rollout", "auto", "--version", canary, "--force",
            "--interval", "2", "--threshold", "1", "--deadline", "40",
            "--min-impressions", str(MIN_IMPRESSIONS), "--min-requests", "10",
            "--max-p99-ms", "5000",
            check=False,
        )  # fmt: skip
    finally:
        stop.set()
        thread.join(timeout=15)
    assert proc.returncode == 10, proc.stdout + proc.stderr
    assert "rolled back" in proc.stderr and "ctr:" in proc.stderr, proc.stderr
    assert "too few samples" not in proc.stderr, proc.stderr  # judged worse, not timed out
    # not before enough samples: the first analyses waited for impressions on both arms...
    analyses = proc.stdout.split("verdict: ")[1:]
    assert len(analyses) >= 2, proc.stdout
    assert analyses[0].startswith("wait") and "insufficient ctr" in analyses[0], proc.stdout
    # the users saw it: the canary earned far fewer clicks per film shown, no request failed
    (result,) = played
    assert isinstance(result, traffic.TrafficResult), result
    assert not result.failed_requests, result.failed_requests
    assert result.by_version[canary].ctr < 0.5 * result.by_version[stable].ctr, result
    # ...and the analysis that decided had enough impressions on both arms
    tags = _tags(stack, canary)
    assert tags["rollout.decision"] == "rolled_back" and "ctr" in tags["rollout.reason"]
    evidence = json.loads(tags["rollout.evidence"])
    assert evidence["plan"]["min_impressions"] == MIN_IMPRESSIONS
    decided = evidence["analysis"]
    assert decided["canary"]["impressions"] >= MIN_IMPRESSIONS, decided
    assert decided["stable"]["impressions"] >= MIN_IMPRESSIONS, decided
    assert decided["ctr_test"]["p_worse"] < 0.05, decided
    assert decided["canary"]["ctr"] < decided["stable"]["ctr"], decided
    history = evidence["history"]
    assert history[0]["verdict"] == "wait" and history[-1]["failed"] == ["ctr"], history
    assert _served_only_by(stack, stable)
    assert _is_champion(stack, stable)

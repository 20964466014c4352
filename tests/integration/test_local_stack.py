"""The whole system on one machine, for real: `localstack.up` starts a real MLflow server, the TMDB
sandbox and the ingress/controller on loopback; the pipeline CLIs crawl, build features, train
and register; the rollout tool runs canaries that the controller turns into model-server
revisions; predictions go through the ingress; the page is driven in headless Chromium.

The tests share one stack (the module-scoped ``stack`` fixture of ``tests/conftest.py``).
"""

from __future__ import annotations

import http.client
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import requests

from localstack.processes import free_port, spawn, stop_group, wait_healthy
from tests.support.stack import (
    UNKEYED,
    V2_BODY,
    Session,
    csp_directives,
    page_responses,
    registered_version,
    serve_only,
    served_versions,
    train_popularity,
    train_two_versions,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "movie-recommender"


@pytest.fixture(scope="module")
def versions(stack: Session) -> dict[str, str]:
    return train_two_versions(stack)


def test_only_loopback_listens(stack: Session) -> None:
    import psutil

    ports = {stack.settings.mlflow_port, stack.settings.sandbox_port, stack.settings.ingress_port}
    listening = [
        c.laddr for c in psutil.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN
    ]
    for port in ports:
        addresses = [a.ip for a in listening if a.port == port]
        assert addresses, f"nothing listens on {port}"
        assert set(addresses) == {"127.0.0.1"}, addresses


def test_before_any_rollout_predict_says_what_to_do(stack: Session, tmp_path: Path) -> None:
    # a fresh ingress over an empty state directory: nothing deployed yet
    port = free_port()
    log_file = tmp_path / "ingress.log"
    proc = spawn(
        [sys.executable, "-m", "localstack.ingress", "--port", str(port),
         "--root", str(tmp_path / ".local"), "--mlflow-url", stack.settings.mlflow_url],
        log_file=log_file,
    )  # fmt: skip
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz", timeout=60, process=proc,
                     log_file=log_file)  # fmt: skip
        response = requests.post(
            f"http://127.0.0.1:{port}/v1/models/{MODEL}:predict",
            json={"instances": [{"user_id": 1}]},
            timeout=10,
        )
        assert response.status_code == 503
        assert "pipelines.rollout canary" in response.json()["error"]
    finally:
        stop_group(proc.pid)


def test_crawl_features_train_registers_the_first_version_as_champion(
    stack: Session, versions: dict[str, str]
) -> None:
    version = versions["first"]
    assert "aliases: challenger, champion" in stack.outputs["first"]

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.settings.mlflow_url)
    mv = client.get_model_version(MODEL, version)
    assert mv.tags["quality_gate"] == "passed"
    assert mv.tags["model_type"] == "ease"
    assert float(mv.tags["ndcg_at_10"]) > 1.5 * float(mv.tags["baseline_ndcg_at_10"])
    run = client.get_run(mv.run_id)
    features_version = (stack.data_dir / "features" / "latest").read_text().strip()
    assert run.data.tags["features_version"] == features_version
    assert run.data.params["model"] == "ease"
    artifacts = {a.path for a in client.list_artifacts(mv.run_id)}
    assert {"kserve", "plots"} <= artifacts
    kserve_files = {Path(a.path).name for a in client.list_artifacts(mv.run_id, "kserve")}
    assert {"recommender.json", "arrays.npz", "checksums.json"} <= kserve_files


def test_a_full_rollout_serves_the_version_with_its_name_on_every_response(
    stack: Session, versions: dict[str, str]
) -> None:
    version = versions["first"]
    proc = stack.run("pipelines.rollout", "canary", "--version", version, "--percent", "100")
    assert "100%" in proc.stdout
    # `localstack popular` (the README's way to pick a history) names films the served model knows
    popular = stack.run("localstack", "popular", "--n", "2").stdout.strip()
    ranked = stack.predict([{"popular": True, "k": 2}]).json()["predictions"][0]["content_ids"]
    assert popular == ",".join(map(str, ranked))
    picked = stack.run("localstack", "predict", "--history", popular, "--k", "3").stdout
    assert f"from model version {version}" in picked
    response = stack.predict([{"user_id": 1, "k": 5}, {"history": [], "k": 3}])
    assert response.status_code == 400  # an empty history is no input: a clear 4xx
    response = stack.predict([{"user_id": 1, "k": 5}, {"user_id": 987654321, "k": 3}])
    assert response.status_code == 200, response.text
    body = response.json()
    assert response.headers["X-Model-Version"] == version == body["model_version"]
    assert len(body["predictions"]) == 2
    assert len(body["predictions"][0]["content_ids"]) == 5
    assert body["predictions"][1]["fallback"] is True
    assert len(body["predictions"][1]["content_ids"]) == 3


def _server_rankings(stack: Session, instances: list[dict[str, object]]) -> list[list[int]]:
    response = stack.predict(instances)
    assert response.status_code == 200, response.text
    return [p["content_ids"] for p in response.json()["predictions"]]


def test_mlflow_pyfunc_and_kserve_predictor_return_the_same_ranking(
    stack: Session, versions: dict[str, str]
) -> None:
    import mlflow.pyfunc

    version = versions["first"]
    serve_only(stack, version)
    interactions = pd.read_parquet(
        stack.data_dir
        / "features"
        / (stack.data_dir / "features" / "latest").read_text().strip()
        / "interactions.parquet"
    )
    users = interactions["user_id"].drop_duplicates().head(5).tolist()
    history = interactions["content_id"].head(3).tolist()
    instances = [{"user_id": int(u), "k": 10} for u in users] + [{"history": history, "k": 7}]
    served = _server_rankings(stack, instances)

    mlflow.set_tracking_uri(stack.settings.mlflow_url)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}/{version}")
    frame = pd.DataFrame(
        {
            "user_id": [int(u) for u in users] + [None],
            "history": [None] * len(users) + [history],
            "k": [10] * len(users) + [7],
        }
    )
    predicted = model.predict(frame)
    assert [list(ids) for ids in predicted["content_ids"]] == served

    # and the predictor started from the registry (--model_uri) agrees too
    port = free_port()
    log_file = stack.data_dir.parent / "model-uri-server.log"
    proc = spawn(
        [sys.executable, "-m", "model_server", "--model_name", MODEL,
         "--model_uri", f"models:/{MODEL}/{version}", "--http_port", str(port),
         "--model_cache_dir", str(stack.data_dir.parent / "model-cache")],
        log_file=log_file,
        env={"MLFLOW_TRACKING_URI": stack.settings.mlflow_url},
    )  # fmt: skip
    try:
        wait_healthy(f"http://127.0.0.1:{port}/v1/models/{MODEL}", timeout=60, process=proc,
                     log_file=log_file)  # fmt: skip
        direct = requests.post(
            f"http://127.0.0.1:{port}/v1/models/{MODEL}:predict",
            json={"instances": instances},
            timeout=10,
        )
        assert direct.headers["X-Model-Version"] == version
        assert [p["content_ids"] for p in direct.json()["predictions"]] == served
    finally:
        stop_group(proc.pid)


def test_a_worse_model_is_registered_but_fails_the_quality_gate(
    stack: Session, versions: dict[str, str]
) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.settings.mlflow_url)
    # one popularity training per session (the canary tests serve it too): exit 9 is asserted
    # there, what it said is kept
    version = train_popularity(stack)
    said = stack.outputs["popularity"]
    assert f"version {version} failed the quality gate" in said
    assert "FAIL" in said
    failed = client.get_model_version(MODEL, version)
    assert failed.tags["quality_gate"] == "failed"
    assert failed.tags["model_type"] == "popularity"
    assert failed.aliases == []  # registered, but neither challenger nor champion
    assert client.get_model_version_by_alias(MODEL, "champion").version != version
    refused = stack.run("pipelines.rollout", "canary", "--version", failed.version, check=False)
    assert refused.returncode == 10, refused.stderr
    assert "failed its quality gate" in refused.stderr and "--force" in refused.stderr
    for bad in ("abc", "-1", "0"):
        usage = stack.run("pipelines.rollout", "canary", "--version", bad, check=False)
        assert usage.returncode == 2, (bad, usage.stderr)
        assert "--version must be a registered version number" in usage.stderr


def test_same_recipe_same_snapshot_same_metrics_and_it_becomes_challenger(
    stack: Session, versions: dict[str, str]
) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.settings.mlflow_url)
    first = client.get_model_version(MODEL, versions["first"]).tags
    second = client.get_model_version(MODEL, versions["second"]).tags
    for metric in ("ndcg_at_10", "precision_at_10", "recall_at_10", "map_at_10", "coverage"):
        assert second[metric] == first[metric], metric
    # the second version passed the gate against the first: challenger only
    assert "aliases: challenger\n" in stack.outputs["second"]
    assert "(its logged metric (same split))" in stack.outputs["second"]


def test_canary_splits_traffic_by_percent_and_tags_pin_revisions(
    stack: Session, versions: dict[str, str]
) -> None:
    first, second = versions["first"], versions["second"]
    serve_only(stack, first)
    stack.run("pipelines.rollout", "canary", "--version", second, "--percent", "30")
    served: Counter[str] = Counter()
    with requests.Session() as session:
        for _ in range(300):
            # no user id (popular): the weighted split; a user id would keep one arm
            response = session.post(stack.predict_url, json={"instances": [UNKEYED]}, timeout=10)
            assert response.status_code == 200
            served[response.headers["X-Model-Version"]] += 1
    assert set(served) == {first, second}
    # 30 % of 300 = 90; a binomial(300, 0.3) lies in 55..125 with overwhelming probability
    assert 55 <= served[second] <= 125, served
    status = json.loads((stack.settings.stack_dir / "status.json").read_text())["status"]
    traffic = {
        t["modelVersion"]: t["percent"] for t in status["components"]["predictor"]["traffic"]
    }
    assert traffic == {first: 70, second: 30}
    v2 = f"{stack.settings.ingress_url}/v2/models/{MODEL}/infer"
    for host, expected in (
        ("latest-movie-recommender.local", second),
        ("prev-movie-recommender.local", first),
    ):
        response = stack.predict([{"user_id": 1}], headers={"Host": host})
        assert response.headers["X-Model-Version"] == expected, host
        response = requests.post(v2, json=V2_BODY, headers={"Host": host}, timeout=10)
        assert response.headers["X-Model-Version"] == expected, host
    # the tags are cluster-local: a public Host that starts like one gets the split
    public: Counter[str] = Counter()
    for _ in range(60):
        headers = {"Host": "latest-movie-recommender.example.com"}
        public[stack.predict([UNKEYED], headers=headers).headers["X-Model-Version"]] += 1
    assert set(public) == {first, second}, public  # 0.7^60: never all on one side by chance


def test_promote_gives_the_canary_everything_and_moves_champion(
    stack: Session, versions: dict[str, str]
) -> None:
    first, second = versions["first"], versions["second"]
    serve_only(stack, first)
    stack.run("pipelines.rollout", "canary", "--version", second, "--percent", "30")
    stack.run("pipelines.rollout", "promote")
    versions = {stack.predict([{"user_id": 1}]).headers["X-Model-Version"] for _ in range(40)}
    assert versions == {second}
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.settings.mlflow_url)
    assert client.get_model_version_by_alias(MODEL, "champion").version == second
    # a promoted version is no longer a challenger: champion and challenger never share a version
    assert client.get_model_version(MODEL, second).aliases == ["champion"]


def test_rollback_after_promote_serves_and_crowns_the_previous_version(
    stack: Session, versions: dict[str, str]
) -> None:
    from mlflow import MlflowClient

    first, second = versions["first"], versions["second"]
    serve_only(stack, first)
    stack.run("pipelines.rollout", "canary", "--version", second, "--percent", "100")
    client = MlflowClient(tracking_uri=stack.settings.mlflow_url)
    assert client.get_model_version_by_alias(MODEL, "previous").version == first
    stack.run("pipelines.rollout", "rollback")
    assert served_versions(stack, 40) == {first}
    assert client.get_model_version_by_alias(MODEL, "champion").version == first
    nothing_left = stack.run("pipelines.rollout", "rollback", check=False)
    assert nothing_left.returncode == 10
    assert "nothing to roll back to" in nothing_left.stderr


def test_rollback_during_a_canary_pins_traffic_at_once(
    stack: Session, versions: dict[str, str]
) -> None:
    first, second = versions["first"], versions["second"]
    serve_only(stack, first)
    stack.run("pipelines.rollout", "canary", "--version", second, "--percent", "50")
    assert served_versions(stack, 60) == {first, second}
    stack.run("pipelines.rollout", "rollback")
    assert served_versions(stack, 40) == {first}
    refused = stack.run("pipelines.rollout", "promote", check=False)
    assert refused.returncode == 10
    assert "rolled back" in refused.stderr


def test_a_version_whose_artefact_is_corrupt_never_gets_traffic(
    stack: Session, versions: dict[str, str]
) -> None:
    from mlflow import MlflowClient

    serve_only(stack, versions["first"])
    version = registered_version(stack.run("pipelines.train").stdout)
    client = MlflowClient(tracking_uri=stack.settings.mlflow_url)
    run = client.get_run(client.get_model_version(MODEL, version).run_id)
    relative = run.info.artifact_uri.removeprefix("mlflow-artifacts:/")
    arrays = stack.settings.artifacts_dir / relative / "kserve" / "arrays.npz"
    corrupted = bytearray(arrays.read_bytes())
    corrupted[len(corrupted) // 2] ^= 0xFF
    arrays.write_bytes(bytes(corrupted))
    proc = stack.run("pipelines.rollout", "canary", "--version", version, "--percent", "50",
                     check=False, timeout=180)  # fmt: skip
    assert proc.returncode == 10, proc.stderr
    assert "the new revision failed" in proc.stderr
    # traffic stays on the stable version
    assert served_versions(stack, 30) == {versions["first"]}


def test_training_against_an_unreachable_mlflow_fails_fast_and_registers_nothing(
    stack: Session,
) -> None:
    started = time.monotonic()
    proc = stack.run(
        "pipelines.train",
        check=False,
        timeout=120,
        env={"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"},
    )
    assert proc.returncode == 8
    assert "unreachable after 3 attempts" in proc.stderr
    assert time.monotonic() - started < 60  # bounded retries, not MLflow's minutes-long default


def test_training_on_a_missing_or_unusable_snapshot_registers_nothing(
    stack: Session, versions: dict[str, str], tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.settings.mlflow_url)
    before = len(client.search_model_versions(f"name='{MODEL}'"))
    proc = stack.run("pipelines.train", check=False, env={"DATA_DIR": str(tmp_path / "empty")})
    assert proc.returncode == 3, proc.stderr
    assert "no snapshot" in proc.stderr

    log = tmp_path / "tiny.csv"  # every user has one view: nothing can be held out
    log.write_text("user_id,content_id,rating\n1,10,4\n2,20,5\n3,10,3\n")
    tiny = {"DATA_DIR": str(tmp_path / "tiny")}
    stack.run("pipelines.features", "build", "--interactions", str(log), env=tiny)
    proc = stack.run("pipelines.train", check=False, env=tiny)
    assert proc.returncode == 4, proc.stderr
    assert "no user has enough interactions for a holdout" in proc.stderr

    unknown = stack.run("pipelines.train", "--model", "nope", check=False)
    assert unknown.returncode == 2
    assert "unknown model 'nope'" in unknown.stderr
    assert len(client.search_model_versions(f"name='{MODEL}'")) == before


def _raw(stack: Session, method: str, path: str, headers: dict[str, str] | None = None) -> Any:
    """A request with ``path`` sent exactly as written (no client normalises it)."""
    connection = http.client.HTTPConnection("127.0.0.1", stack.settings.ingress_port, timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


_LEAVING = [
    ("GET", f"/v1/models/{MODEL}/%2e%2e/%2e%2e/%2e%2e/metrics"),
    ("GET", f"/v1/models/{MODEL}/%2E%2E/%2E%2E/%2E%2E/v2/health/live"),
    ("POST", f"/v1/models/{MODEL}/%2e%2e/%2e%2e/%2e%2e/v2/repository/models/{MODEL}/unload"),
    ("GET", f"/v1/models/{MODEL}:predict/../../../metrics"),
    ("GET", f"/v1/models/{MODEL}%2f..%2f..%2f..%2fmetrics"),
    ("GET", f"/v1/models//{MODEL}"),
    ("GET", "/metrics"),
    ("GET", "/v2/health/live"),
    ("GET", "/v1/models"),
    ("POST", f"/v1/models/{MODEL}:explain"),
    ("POST", f"/v2/repository/models/{MODEL}/unload"),
    ("DELETE", f"/v1/models/{MODEL}"),
]


def test_paths_off_the_inference_routes_reach_no_revision(
    stack: Session, versions: dict[str, str]
) -> None:
    serve_only(stack, versions["first"])
    for method, path in _LEAVING:
        status, headers, body = _raw(stack, method, path)
        assert status == 404, (method, path, body[:200])
        assert "X-Revision" not in headers, (method, path)  # no revision saw it
        assert b"# HELP" not in body
    # and the routes themselves, V2 included, reach a revision
    for method, path, body in (
        ("POST", f"/v1/models/{MODEL}:predict", {"instances": [{"user_id": 1}]}),
        ("GET", f"/v1/models/{MODEL}", None),
        ("POST", f"/v2/models/{MODEL}/infer", V2_BODY),
        ("GET", f"/v2/models/{MODEL}", None),
        ("GET", f"/v2/models/{MODEL}/ready", None),
    ):
        url = f"{stack.settings.ingress_url}{path}"
        response = requests.request(method, url, json=body, timeout=10)
        assert response.status_code == 200, (path, response.text)
        assert response.headers["X-Revision"].startswith(f"{MODEL}-predictor-"), path
    v2 = f"{stack.settings.ingress_url}/v2/models"
    infer = requests.post(f"{v2}/{MODEL}/infer", json=V2_BODY, timeout=10)
    assert infer.headers["X-Model-Version"] == versions["first"] == infer.json()["model_version"]
    other = requests.post(f"{v2}/other/infer", json=V2_BODY, timeout=10)
    assert other.status_code == 404


def test_the_status_route_answers_only_loopback_names(stack: Session) -> None:
    status, _, body = _raw(stack, "GET", "/__local/status")
    assert status == 200 and "status" in json.loads(body)
    status, _, body = _raw(stack, "GET", "/__local/metrics")  # the local Prometheus scrapes it
    assert status == 200 and b"movie_mlops_ingress_requests_total" in body
    for host in ("movie.example.com", "attacker.example"):  # e.g. a page rebinding its name
        for path in ("/__local/status", "/__local/metrics"):
            status, _, _ = _raw(stack, "GET", path, {"Host": host})
            assert status == 404, (host, path)


def test_a_body_over_the_limit_is_refused_by_the_ingress(
    stack: Session, versions: dict[str, str]
) -> None:
    serve_only(stack, versions["first"])
    port = stack.settings.ingress_port
    head = (
        f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/json\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(head + b"Content-Length: 50000000\r\n\r\n")  # and no body
        declared = sock.recv(65536)
    assert declared.startswith(b"HTTP/1.1 413"), declared[:200]
    assert b"MAX_REQUEST_BYTES" in declared
    chunk, sent = b" " * (128 << 10), 0
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n")
        while sent < 4 << 20 and not select.select([sock], [], [], 0.05)[0]:
            sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            sent += len(chunk)
        if sent >= 4 << 20:
            sock.sendall(b"0\r\n\r\n")
        streamed = sock.recv(65536)
    assert streamed.startswith(b"HTTP/1.1 413"), streamed[:200]
    assert sent < 4 << 20  # refused as it passed the limit, not once all was read
    assert stack.predict([{"user_id": 1}]).status_code == 200


def test_every_ingress_response_carries_the_page_security_headers(
    stack: Session, versions: dict[str, str]
) -> None:
    serve_only(stack, versions["first"])
    base = stack.settings.ingress_url
    responses = {
        **page_responses(base),
        "predict": stack.predict([{"user_id": 1}]),
        "not found": requests.get(f"{base}/metrics", timeout=5),
    }
    posters = f"http://127.0.0.1:{stack.settings.sandbox_port}/t/p/"
    for name, response in responses.items():
        headers = response.headers
        policy = csp_directives(headers["Content-Security-Policy"])
        assert policy["img-src"] == f"'self' {posters}", name
        assert policy["default-src"] == "'none'" and policy["script-src"] == "'self'", name
        assert policy["frame-ancestors"] == "'none'", name
        assert headers["X-Content-Type-Options"] == "nosniff", name
        assert headers["X-Frame-Options"] == "DENY", name
        assert headers["Referrer-Policy"] == "no-referrer", name
        assert headers["Server"] == "movie-mlops-ingress", name  # no versions
    assert "javascript" in responses["script"].headers["Content-Type"]  # nosniff needs it


def test_the_page_shows_recommendations_in_headless_chromium(
    stack: Session, versions: dict[str, str], tmp_path: Path
) -> None:
    chromium = shutil.which("chromium")
    node_modules = REPO_ROOT / "frontend" / "node_modules" / "playwright-core"
    if chromium is None or not node_modules.is_dir():
        pytest.skip("needs Debian's chromium and `npm ci` in frontend/ (make test installs both)")
    serve_only(stack, versions["first"])
    interactions = pd.read_parquet(
        stack.data_dir
        / "features"
        / (stack.data_dir / "features" / "latest").read_text().strip()
        / "interactions.parquet"
    )
    heavy_user = int(interactions.groupby("user_id").size().idxmax())
    # movies the model knows that are not the very top of the popular list the page opens on
    history = [int(i) for i in interactions["content_id"].value_counts().index[[10, 20]]]
    screenshot = tmp_path / "page.png"
    proc = subprocess.run(
        ["npm", "run", "--silent", "test:e2e"],
        cwd=REPO_ROOT / "frontend",
        env={
            **os.environ,
            "BASE_URL": stack.settings.ingress_url,
            "SCREENSHOT": str(screenshot),
            "E2E_USER_ID": str(heavy_user),
            "E2E_HISTORY": ",".join(map(str, history)),
            "CHROMIUM_PATH": chromium,
        },
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    # `/` (popular), `/?user=`, `/?history=`, an unknown user and `/?user=abc`, each in a picture
    for name in ("page", "page-popular", "page-history", "page-fallback", "page-bad-link"):
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG", name
    # the page asked the ingress for its runtime config and the sandbox served posters for it
    config = requests.get(f"{stack.settings.ingress_url}/config.json", timeout=5).json()
    assert config["posterBaseUrl"].startswith(f"http://127.0.0.1:{stack.settings.sandbox_port}")

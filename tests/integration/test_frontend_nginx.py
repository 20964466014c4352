"""The cluster's page server for real: docker/frontend/default.conf.template in a real nginx.

The template is rendered as the image's entrypoint does (envsubst of the four variables it
names), with its port and web root pointed at a free port and ``frontend/dist``, and proxies to
a real predictor process. Checked: the page's security headers on every response (the same
policy as the local ingress sends), no version in ``Server``, the inference routes reach the
predictor and nothing else of it does, a body over 1 MiB is refused, and during a canary each
X-User-Id is sent to Knative with the arm (Knative-Serving-Tag) that contracts/assignment.py
computes for it (a server in the test plays Knative and answers with the tag it received).
Skipped where nginx is not installed (``make tools`` installs it as root).
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from contracts.assignment import bucket, is_canary
from localstack.ingress import security_headers
from localstack.processes import free_port, wait_healthy
from tests.support.stack import csp_directives, page_responses

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = REPO_ROOT / "docker" / "frontend" / "default.conf.template"
ENVSH = REPO_ROOT / "docker" / "frontend" / "canary-split.envsh"
DIST = REPO_ROOT / "frontend" / "dist"
MODEL = "movie-recommender"
POSTERS = "https://image.tmdb.org/t/p"
V2_BODY = {"inputs": [{"name": "user_id", "shape": [1], "datatype": "INT64", "data": [1]}]}


def _render(variables: dict[str, str]) -> str:
    """What nginx's entrypoint does: envsubst of the defined variables, nothing else."""
    names = " ".join(f"${{{name}}}" for name in variables)
    return subprocess.run(
        ["envsubst", names],
        input=TEMPLATE.read_text(),
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **variables},
    ).stdout


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    from recommenders import EASE, save
    from recommenders.synthetic import synthetic_interactions

    root = tmp_path_factory.mktemp("predictor")
    interactions, catalog = synthetic_interactions(
        n_users=50, n_items=40, n_interactions=800, seed=5
    )
    save(EASE().fit(interactions, catalog, trained_on={"model_version": "4"}), root / "model")
    port, log = free_port(), root / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "model_server", "--model_name", MODEL,
             "--model_dir", str(root / "model"), "--http_port", str(port)],
            cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_healthy(
            f"http://127.0.0.1:{port}/v1/models/{MODEL}", timeout=60, process=process, log_file=log
        )
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


def _canary_split(percent: int) -> str:
    """CANARY_SPLIT as the image's entrypoint exports it: docker/frontend/canary-split.envsh."""
    return subprocess.run(
        ["sh", "-c", f'. "{ENVSH}" && printf %s "$CANARY_SPLIT"'],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "CANARY_PERCENT": str(percent)},
    ).stdout


@contextlib.contextmanager
def _nginx(
    upstream: str, root: Path, canary_percent: int = 0, events: str | None = None
) -> Iterator[str]:
    """The rendered template in a real nginx on a free port, proxying to ``upstream``."""
    binary = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if binary is None or shutil.which("envsubst") is None:
        pytest.skip("needs nginx and envsubst (make tools installs them as root)")
    if not (DIST / "index.html").is_file():
        pytest.skip("needs the built page: make frontend")
    port = free_port()
    site = _render(
        {
            "PREDICTOR_UPSTREAM": upstream,
            "PREDICTOR_HOST": "localhost",
            "POSTER_BASE_URL": POSTERS,
            "NGINX_LOCAL_RESOLVERS": "127.0.0.1",
            "CANARY_SPLIT": _canary_split(canary_percent),
            "EVENTS_UPSTREAM": events or upstream,
        }
    )
    assert "listen 8080;" in site and "root /usr/share/nginx/html;" in site
    site = site.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    site = site.replace("root /usr/share/nginx/html;", f"root {DIST};")
    (root / "site.conf").write_text(site)
    temp = "".join(
        f"{kind}_temp_path {root / kind};" for kind in ("client_body", "proxy", "fastcgi")
    ) + "".join(f"{kind}_temp_path {root / kind};" for kind in ("uwsgi", "scgi"))
    (root / "nginx.conf").write_text(
        f"daemon off; master_process off; pid {root / 'nginx.pid'};\n"
        f"error_log {root / 'error.log'} info;\n"
        "events {}\n"
        f"http {{ include /etc/nginx/mime.types; access_log off; {temp}\n"
        f"include {root / 'site.conf'}; }}\n"
    )
    log = root / "stderr.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, "-p", str(root), "-c", str(root / "nginx.conf")], stdout=out, stderr=out
        )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz", timeout=60, process=process, log_file=log)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def nginx(predictor: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with _nginx(f"http://127.0.0.1:{predictor}", tmp_path_factory.mktemp("nginx")) as url:
        yield url


class _Knative(http.server.BaseHTTPRequestHandler):
    """Plays Knative's ingress for the arm test: answers with the Knative-Serving-Tag it got."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        tag = self.headers.get("Knative-Serving-Tag")
        ids = [self.headers.get("X-Request-Id"), self.headers.get("Ce-Id")]
        body = json.dumps({"tag": tag, "path": self.path, "ids": ids}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture(scope="module")
def knative() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Knative)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("percent", [0, 25, 100])
def test_nginx_puts_each_user_on_the_arm_contracts_assignment_computes(
    knative: str, tmp_path: Path, percent: int
) -> None:
    """The cluster's sticky arms: Knative-Serving-Tag from split_clients == bucket < percent."""
    users = [f"user-{i}" for i in range(150)] + [f"anon-{uuid.UUID(int=i)}" for i in range(150)]
    with _nginx(knative, tmp_path, canary_percent=percent) as url, requests.Session() as http_:
        predict = f"{url}/v1/models/{MODEL}:predict"
        arms = {}
        for user in users:
            response = http_.post(predict, json={}, headers={"X-User-Id": user}, timeout=10)
            tag, arm = response.json()["tag"], response.headers.get("X-Canary-Arm")
            arms[user] = (tag, arm)
        anonymous = http_.post(predict, json={}, headers={"Knative-Serving-Tag": "prev"})
    if percent in (0, 100):  # one revision serves everyone: no tag, no arm header
        assert set(arms.values()) == {(None, None)}
    else:
        expected = {
            u: ("latest", "canary") if is_canary(bucket(u), percent) else ("prev", "stable")
            for u in users
        }
        assert arms == expected
        assert 0.15 < sum(arm == "canary" for _, arm in arms.values()) / len(users) < 0.35
    # no X-User-Id: Knative's own split; a client's own tag header never reaches Knative
    assert anonymous.json()["tag"] is None
    assert "X-Canary-Arm" not in anonymous.headers


def test_nginx_gives_each_prediction_its_own_id_for_the_payload_logger_and_the_page(
    knative: str, tmp_path: Path
) -> None:
    """KServe's logger takes the CloudEvent id from Ce-Id; the page reads X-Request-Id."""
    spoofed = {"X-Request-Id": "chosen-by-client", "Ce-Id": "chosen-by-client"}
    with _nginx(knative, tmp_path, canary_percent=0) as url, requests.Session() as http_:
        predict = f"{url}/v1/models/{MODEL}:predict"
        answers = [http_.post(predict, json={}, headers=spoofed, timeout=10) for _ in range(3)]
        page = http_.get(f"{url}/", timeout=10)
    seen = set()
    for answer in answers:
        request_id = answer.headers["X-Request-Id"]
        assert re.fullmatch(r"[0-9a-f]{32}", request_id)
        assert answer.json()["ids"] == [request_id, request_id]  # upstream got the same id
        seen.add(request_id)
    assert len(seen) == 3  # one id per prediction, never the client's
    assert "X-Request-Id" not in page.headers


def test_every_response_carries_the_same_security_headers_as_the_local_ingress(
    nginx: str,
) -> None:
    responses = {
        **page_responses(nginx),
        "predict": requests.post(
            f"{nginx}/v1/models/{MODEL}:predict", json={"instances": [{"user_id": 1}]}, timeout=10
        ),
        "not found": requests.get(f"{nginx}/v1/models", timeout=5),
        "too large": requests.post(
            f"{nginx}/v1/models/{MODEL}:predict", data=b" " * (2 << 20), timeout=10
        ),
    }
    expected = security_headers(POSTERS)
    for name, response in responses.items():
        headers = response.headers
        assert csp_directives(headers["Content-Security-Policy"]) == csp_directives(
            expected["Content-Security-Policy"]
        ), name
        for header in ("X-Content-Type-Options", "X-Frame-Options", "Referrer-Policy"):
            assert headers[header] == expected[header], (name, header)
        assert headers["Server"] == "nginx", name  # server_tokens off: no version
    assert responses["config"].headers["Cache-Control"] == "no-store"
    assert "Cache-Control" not in responses["page"].headers
    assert responses["config"].json() == {"posterBaseUrl": POSTERS, "modelName": MODEL}
    assert responses["predict"].status_code == 200
    assert responses["too large"].status_code == 413


def test_the_inference_routes_reach_the_predictor_and_nothing_else_does(nginx: str) -> None:
    for method, path, body in (
        ("POST", f"/v1/models/{MODEL}:predict", {"instances": [{"user_id": 1}]}),
        ("GET", f"/v1/models/{MODEL}", None),
        ("POST", f"/v2/models/{MODEL}/infer", V2_BODY),
        ("GET", f"/v2/models/{MODEL}", None),
        ("GET", f"/v2/models/{MODEL}/ready", None),
    ):
        response = requests.request(method, f"{nginx}{path}", json=body, timeout=10)
        assert response.status_code == 200, (path, response.text)
        if method == "POST":
            assert response.headers["X-Model-Version"] == "4", path
        else:  # readiness and metadata name the model
            assert response.json()["name"] == MODEL, path
    port = int(nginx.rsplit(":", 1)[1])
    for method, path in (
        ("GET", f"/v1/models/{MODEL}/%2e%2e/%2e%2e/%2e%2e/metrics"),
        ("GET", f"/v1/models/{MODEL}:predict/../../../v2/health/live"),
        ("POST", f"/v1/models/{MODEL}/%2e%2e/%2e%2e/%2e%2e/v2/repository/models/{MODEL}/unload"),
        ("POST", f"/v2/repository/models/{MODEL}/unload"),
        ("GET", "/metrics"),
        ("GET", "/v2/health/live"),
        ("POST", f"/v1/models/{MODEL}:explain"),
    ):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request(method, path)
        response = connection.getresponse()
        body = response.read()
        connection.close()
        assert "X-Model-Version" not in dict(response.getheaders()), (method, path)
        assert b"# HELP" not in body and b'"status"' not in body, (method, path)
        assert response.status in (200, 404), (method, path)  # 200: the page (SPA fallback)


def test_the_page_s_feedback_reaches_the_event_sink_and_nothing_else_of_it(
    knative: str, tmp_path: Path
) -> None:
    with _nginx(knative, tmp_path, events=knative) as url:
        body = {"events": [{"type": "click", "request_id": "r", "item_id": 1, "position": 0,
                            "model_version": "4", "user_id": "u"}]}  # fmt: skip
        forwarded = requests.post(f"{url}/events/feedback", json=body, timeout=10)
        other = requests.post(f"{url}/events", json=body, timeout=10)
        read = requests.get(f"{url}/events/feedback", timeout=10)
        large = requests.post(f"{url}/events/feedback", data=b" " * (100 << 10), timeout=10)
    assert forwarded.status_code == 200 and forwarded.json()["path"] == "/events/feedback"
    assert other.status_code in (404, 405) and "path" not in other.text
    assert read.status_code == 403
    assert large.status_code == 413

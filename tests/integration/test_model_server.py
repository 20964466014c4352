"""The model server as a real process on loopback: predictions, versioning, bad input, metrics.

One server (``python -m model_server --model_dir <artefact> --http_port <free>``) serves the
module; the artefact is an EASE model trained in a fixture on synthetic data. Every bad-input case
is sent over real HTTP and followed by a good request, so a server that dies or wedges fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from recommenders import EASE, FittedRecommender, load, save
from recommenders.synthetic import synthetic_interactions

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL = "movie-recommender"
VERSION = "7"
_READY_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def predict_url(self) -> str:
        return f"{self.base_url}/v1/models/{MODEL}:predict"

    def predict(self, instances: list[dict[str, Any]]) -> requests.Response:
        return requests.post(self.predict_url, json={"instances": instances}, timeout=10)

    def metric(self, name: str, labels: str) -> float:
        text = requests.get(f"{self.base_url}/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith(f"{name}{{{labels}}} "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


def _start(model_dir: Path, log_path: Path, *extra: str, env: dict[str, str] | None = None):
    port = _free_port()
    command = [sys.executable, "-m", "model_server", "--model_name", MODEL]
    command += ["--model_dir", str(model_dir), "--http_port", str(port), *extra]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT, env=env
        )
    return Server(process, port, log_path)


def _wait_ready(server: Server) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    url = f"{server.base_url}/v1/models/{MODEL}"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    _stop(server)
    raise RuntimeError(
        f"model server did not become ready; its log:\n{server.log_path.read_text()}"
    )


def _stop(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="module")
def artefact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small EASE artefact (300 users, ~120 items) with catalog display fields."""
    interactions, catalog = synthetic_interactions(
        n_users=300, n_items=120, n_interactions=6000, seed=3
    )
    directory = tmp_path_factory.mktemp("artefact") / "model"
    save(EASE(lambda_=50.0).fit(interactions, catalog, trained_on={"run_id": "r1"}), directory)
    return directory


@pytest.fixture(scope="module")
def reference(artefact: Path) -> FittedRecommender:
    """The same artefact loaded in-process: what the server must agree with."""
    return load(artefact)


@pytest.fixture(scope="module")
def server(artefact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {**os.environ, "MODEL_VERSION": VERSION}
    srv = _start(artefact, tmp_path_factory.mktemp("server") / "server.log", env=env)
    _wait_ready(srv)
    yield srv
    _stop(srv)


def _seen_items(model: FittedRecommender, user_id: int) -> set[int]:
    row = int(np.searchsorted(model.user_ids, user_id))
    return set(model.item_ids[model.seen[row].indices].tolist())


# -- predictions -----------------------------------------------------------------------------


def test_known_users_rank_as_in_process(server: Server, reference: FittedRecommender) -> None:
    users = [int(u) for u in reference.user_ids[[0, 5, 17, 42, 99]]]
    response = server.predict([{"user_id": u, "k": 10} for u in users])
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == len(users)
    for user, prediction in zip(users, predictions, strict=True):
        expected = reference.recommend(user_id=user, k=10)
        assert prediction["content_ids"] == expected.content_ids.tolist()
        assert prediction["scores"] == pytest.approx(expected.scores.tolist(), rel=1e-6)
        assert prediction["fallback"] is False
        assert prediction["reason"] is None
        assert not set(prediction["content_ids"]) & _seen_items(reference, user)


def test_response_shape_and_display_fields(server: Server, reference: FittedRecommender) -> None:
    user = int(reference.user_ids[3])
    lean = server.predict([{"user_id": user}]).json()["predictions"][0]
    assert set(lean) == {"content_ids", "scores", "fallback", "reason"}  # display is opt-in
    prediction = server.predict([{"user_id": user, "display": True}]).json()["predictions"][0]
    assert prediction["content_ids"] == lean["content_ids"]
    assert len(prediction["content_ids"]) == 10  # k defaults to 10
    catalog = reference.catalog.set_index("content_id")
    for item, cid, score in zip(
        prediction["items"], prediction["content_ids"], prediction["scores"], strict=True
    ):
        assert set(item) == {
            "content_id",
            "title",
            "poster_path",
            "release_date",
            "vote_average",
            "score",
        }
        assert (item["content_id"], item["score"]) == (cid, score)
        assert item["title"] == catalog.loc[cid, "title"]
        assert item["poster_path"] == catalog.loc[cid, "poster_path"]
        assert item["vote_average"] == pytest.approx(catalog.loc[cid, "vote_average"])


def test_anonymous_history(server: Server, reference: FittedRecommender) -> None:
    history = [int(i) for i in reference.item_ids[[1, 4, 9]]]
    prediction = server.predict([{"history": history, "k": 5}]).json()["predictions"][0]
    expected = reference.recommend(history=history, k=5)
    assert prediction["content_ids"] == expected.content_ids.tolist()
    assert prediction["fallback"] is False
    assert not set(prediction["content_ids"]) & set(history)


def test_unknown_user_gets_popularity_fallback(
    server: Server, reference: FittedRecommender
) -> None:
    prediction = server.predict([{"user_id": 10**9, "k": 4}]).json()["predictions"][0]
    assert prediction["fallback"] is True
    assert "unknown user" in prediction["reason"]
    expected = reference.recommend(user_id=10**9, k=4)
    assert prediction["content_ids"] == expected.content_ids.tolist()


def test_popular_asks_for_the_popularity_ranking(
    server: Server, reference: FittedRecommender
) -> None:
    response = server.predict([{"user_id": 10**9, "k": 6}, {"popular": True, "k": 6}])
    assert response.status_code == 200, response.text
    unknown, popular = response.json()["predictions"]
    assert popular["fallback"] is True
    assert popular["reason"] == "no user_id or history given: popularity ranking"
    assert popular["content_ids"] == reference.recommend(k=6).content_ids.tolist()
    assert popular["content_ids"] == unknown["content_ids"]  # the same ranking as the fallback
    shown = server.predict([{"popular": True, "k": 3, "display": True}]).json()
    items = shown["predictions"][0]["items"]
    assert [item["content_id"] for item in items] == popular["content_ids"][:3]
    assert all(item["title"] for item in items)


def test_mixed_batch_keeps_order_k_and_exclusion(
    server: Server, reference: FittedRecommender
) -> None:
    user = int(reference.user_ids[8])
    seen = _seen_items(reference, user)
    everything = reference.n_items
    instances = [
        {"user_id": user, "k": 3},
        {"history": [int(reference.item_ids[2])], "k": 2},
        {"user_id": user, "k": 100, "exclude_seen": False},
        {"user_id": user, "k": 100},
    ]
    predictions = server.predict(instances).json()["predictions"]
    assert [len(p["content_ids"]) for p in predictions] == [
        3,
        2,
        min(100, everything),
        min(100, everything - len(seen)),
    ]
    assert predictions[0]["content_ids"] == predictions[3]["content_ids"][:3]
    assert seen & set(predictions[2]["content_ids"])  # not excluded when asked not to
    assert not seen & set(predictions[3]["content_ids"])
    assert (
        predictions[2]["content_ids"]
        == reference.recommend(user_id=user, k=100, exclude_seen=False).content_ids.tolist()
    )


def test_partly_unknown_history_uses_known_ids_and_says_so(
    server: Server, reference: FittedRecommender
) -> None:
    known = int(reference.item_ids[4])
    prediction = server.predict([{"history": [known, 999_999_001], "k": 5}]).json()
    prediction = prediction["predictions"][0]
    assert prediction["fallback"] is False
    assert "999999001" in prediction["reason"]
    assert (
        prediction["content_ids"] == reference.recommend(history=[known], k=5).content_ids.tolist()
    )


def test_version_in_header_and_body(server: Server) -> None:
    response = server.predict([{"user_id": 1}])
    assert response.headers["X-Model-Version"] == VERSION
    body = response.json()
    assert (body["model_name"], body["model_version"]) == (MODEL, VERSION)
    bad = server.predict([{"user_id": "1"}])
    assert bad.headers["X-Model-Version"] == VERSION


def test_kserve_v1_client(server: Server, reference: FittedRecommender) -> None:
    from kserve import InferenceRESTClient, RESTConfig

    user = int(reference.user_ids[11])

    async def call() -> tuple[dict[str, Any], dict[str, str]]:
        client = InferenceRESTClient(config=RESTConfig(protocol="v1", retries=0, timeout=10))
        headers: dict[str, str] = {}
        try:
            body = await client.infer(
                server.base_url,
                {
                    "instances": [
                        {"user_id": user, "k": 5},
                        {"history": [int(reference.item_ids[0])]},
                    ]
                },
                model_name=MODEL,
                response_headers=headers,
            )
            ready = await client.is_model_ready(server.base_url, MODEL)
        finally:
            await client.close()
        assert ready
        return body, headers

    body, headers = asyncio.run(call())
    assert headers["x-model-version"] == VERSION
    assert len(body["predictions"]) == 2
    assert (
        body["predictions"][0]["content_ids"]
        == reference.recommend(user_id=user, k=5).content_ids.tolist()
    )


def test_charset_content_type_works(server: Server) -> None:
    response = requests.post(
        server.predict_url,
        data=json.dumps({"instances": [{"user_id": 1, "k": 2}]}).encode(),
        headers={"Content-Type": "application/json; charset=utf-8"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"][0]["content_ids"]) == 2


# -- bad input: a clear 4xx naming the field, and the server keeps serving ------------------

_ONE = '{"user_id": 1}'
BAD_INPUT = [
    ("invalid JSON", b'{"instances": [', None, 400, "not valid JSON"),
    ("empty body", b"", None, 400, "empty"),
    ("instances missing", b'{"inputs": []}', None, 400, "instances is required"),
    (
        "instances not a list",
        b'{"instances": {"user_id": 1}}',
        None,
        400,
        "instances must be a list",
    ),
    ("body not an object", b"[1, 2]", None, 400, "JSON object"),
    ("neither user nor history", b'{"instances": [{"k": 3}]}', None, 400, "instances[0] needs"),
    ("empty history", b'{"instances": [{"history": []}]}', None, 400, "instances[0] needs"),
    (
        "popular with a user",
        b'{"instances": [{"popular": true, "user_id": 1}]}',
        None,
        400,
        "instances[0] asks for popular movies",
    ),
    (
        "k a string",
        f'{{"instances": [{_ONE}, {{"user_id": 1, "k": "5"}}]}}'.encode(),
        None,
        400,
        "instances[1].k must be an integer in 1..100",
    ),
    ("k zero", b'{"instances": [{"user_id": 1, "k": 0}]}', None, 400, "instances[0].k"),
    ("k too big", b'{"instances": [{"user_id": 1, "k": 101}]}', None, 400, "instances[0].k"),
    ("k a float", b'{"instances": [{"user_id": 1, "k": 5.0}]}', None, 400, "instances[0].k"),
    ("k NaN", b'{"instances": [{"user_id": 1, "k": NaN}]}', None, 400, "instances[0].k"),
    ("user Infinity", b'{"instances": [{"user_id": Infinity}]}', None, 400, "instances[0].user_id"),
    ("user_id a string", b'{"instances": [{"user_id": "42"}]}', None, 400, "instances[0].user_id"),
    ("user_id a float", b'{"instances": [{"user_id": 42.5}]}', None, 400, "instances[0].user_id"),
    ("user_id a bool", b'{"instances": [{"user_id": true}]}', None, 400, "instances[0].user_id"),
    (
        "history id a string",
        b'{"instances": [{"history": [1, "2"]}]}',
        None,
        400,
        "instances[0].history[1]",
    ),
    (
        "history id a float",
        b'{"instances": [{"history": [1.5]}]}',
        None,
        400,
        "instances[0].history[0]",
    ),
    ("history not a list", b'{"instances": [{"history": 5}]}', None, 400, "instances[0].history"),
    ("unknown field", b'{"instances": [{"userid": 5}]}', None, 400, "instances[0].userid"),
    (
        "exclude_seen not bool",
        b'{"instances": [{"user_id": 1, "exclude_seen": "no"}]}',
        None,
        400,
        "instances[0].exclude_seen",
    ),
    (
        "display not bool",
        b'{"instances": [{"user_id": 1, "display": 1}]}',
        None,
        400,
        "instances[0].display",
    ),
    (
        "history only unknown ids",
        b'{"instances": [{"history": [999999001, 999999002]}]}',
        None,
        422,
        "999999001",
    ),
    (
        "too many instances",
        json.dumps({"instances": [{"user_id": 1}] * 1001}).encode(),
        None,
        413,
        "1001",
    ),
    ("not JSON media type", b'{"instances": [{"user_id": 1}]}', "text/plain", 415, "Content-Type"),
    (
        "latin-1 charset",
        b'{"instances": [{"user_id": 1}]}',
        "application/json; charset=latin-1",
        415,
        "Content-Type",
    ),
]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "names"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUT],
)
def test_bad_input_gets_a_clear_4xx(
    server: Server, body: bytes, content_type: str | None, status: int, names: str
) -> None:
    headers = {"Content-Type": content_type or "application/json"}
    response = requests.post(server.predict_url, data=body, headers=headers, timeout=10)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert names in response.json()["error"]
    after = server.predict([{"user_id": 1, "k": 1}])
    assert after.status_code == 200


def test_metrics_count_predictions_fallbacks_and_rejections(server: Server) -> None:
    version = f'model_version="{VERSION}"'
    before = (
        server.metric("movie_recommender_predictions_total", version),
        server.metric("movie_recommender_fallbacks_total", version),
        server.metric("movie_recommender_rejected_requests_total", 'reason="invalid_request"'),
    )
    assert server.predict([{"user_id": 1}, {"user_id": 10**9}]).status_code == 200
    assert server.predict([{"user_id": 1, "k": -1}]).status_code == 400
    after = (
        server.metric("movie_recommender_predictions_total", version),
        server.metric("movie_recommender_fallbacks_total", version),
        server.metric("movie_recommender_rejected_requests_total", 'reason="invalid_request"'),
    )
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 1, 1]
    text = requests.get(f"{server.base_url}/metrics", timeout=5).text
    assert f'request_predict_seconds_count{{model_name="{MODEL}"}}' in text


# -- start-up ------------------------------------------------------------------------------


def test_corrupt_artefact_is_refused_and_never_ready(artefact: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(artefact, broken)
    arrays = broken / "arrays.npz"
    data = bytearray(arrays.read_bytes())
    data[len(data) // 2] ^= 0xFF
    arrays.write_bytes(bytes(data))
    srv = _start(broken, tmp_path / "server.log")
    deadline = time.monotonic() + _READY_TIMEOUT_S
    try:
        while srv.process.poll() is None and time.monotonic() < deadline:
            try:
                ready = requests.get(f"{srv.base_url}/v1/models/{MODEL}", timeout=1)
                assert ready.status_code != 200, "a corrupt artefact was reported ready"
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        assert srv.process.poll() is not None, "server kept running with a corrupt artefact"
    finally:
        _stop(srv)
    assert srv.process.returncode not in (0, None)
    log = srv.log_path.read_text()
    assert "arrays.npz does not match its checksum" in log


def test_every_series_the_grafana_dashboard_queries_is_exported(server: Server) -> None:
    """The monitoring component's dashboard and the predictor agree on metric names."""
    import re

    dashboard = (REPO_ROOT / "kustomize/components/monitoring/dashboard.json").read_text()
    queried = set(re.findall(r"\b((?:movie_recommender|request)_[a-z_]+)\b", dashboard))
    assert queried, "the dashboard queries no metric"
    assert server.predict([{"user_id": 1}, {"user_id": 10**9}]).status_code == 200
    assert server.predict([{"user_id": 1, "k": -1}]).status_code == 400
    exported = {
        line.split("{")[0].split(" ")[0]
        for line in requests.get(f"{server.base_url}/metrics", timeout=5).text.splitlines()
        if line and not line.startswith("#")
    }
    assert queried <= exported, sorted(queried - exported)

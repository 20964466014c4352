"""The model server as a real process on loopback: predictions, versioning, bad input, metrics.

One server (``python -m model_server --model_dir <artefact> --http_port <free> --enable_grpc
true --grpc_port <free>``) serves the module; the artefact is an EASE model trained in a fixture
on synthetic data. V1 is spoken over plain HTTP and KServe's V1 client, V2 with KServe's own
clients (`kserve.InferenceRESTClient`, `kserve.InferenceGRPCClient`). Every bad-input case is
sent over the wire and followed by a good request, so a server that dies or wedges fails.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import select
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
import psutil
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
    grpc_port: int | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_url(self) -> str:
        assert self.grpc_port is not None, "started without gRPC"
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def predict_url(self) -> str:
        return f"{self.base_url}/v1/models/{MODEL}:predict"

    def predict(self, instances: list[dict[str, Any]]) -> requests.Response:
        return requests.post(self.predict_url, json={"instances": instances}, timeout=10)

    def metric(self, name: str, labels: str) -> float:
        """The sample of ``name`` whose labels include ``labels`` (``'reason="x"'``)."""
        text = requests.get(f"{self.base_url}/metrics", timeout=5).text
        wanted = set(labels.split(","))
        for line in text.splitlines():
            if line.startswith(f"{name}{{"):
                have = set(line[len(name) + 1 :].rsplit("}", 1)[0].split(","))
                if wanted <= have:
                    return float(line.rsplit(" ", 1)[1])
        return 0.0


def _start(
    model_dir: Path,
    log_path: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    grpc: bool = False,
) -> Server:
    port = _free_port()
    grpc_port = _free_port() if grpc else None
    command = [sys.executable, "-m", "model_server", "--model_name", MODEL]
    command += ["--model_dir", str(model_dir), "--http_port", str(port), *extra]
    if grpc_port is not None:
        command += ["--enable_grpc", "true", "--grpc_port", str(grpc_port)]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, stdout=log_file, stderr=subprocess.STDOUT, env=env
        )
    return Server(process, port, log_path, grpc_port)


def _wait_ready(server: Server) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT_S
    url = f"{server.base_url}/v1/models/{MODEL}"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        try:
            if requests.get(url, timeout=1).status_code == 200 and _grpc_accepts(server):
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    _stop(server)
    raise RuntimeError(
        f"model server did not become ready; its log:\n{server.log_path.read_text()}"
    )


def _grpc_accepts(server: Server) -> bool:
    if server.grpc_port is None:
        return True
    try:
        socket.create_connection(("127.0.0.1", server.grpc_port), timeout=1).close()
    except OSError:
        return False
    return True


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
    srv = _start(artefact, tmp_path_factory.mktemp("server") / "server.log", env=env, grpc=True)
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
    history = [int(i) for i in reference.item_ids[[3, 6, 12]]]
    instances = [
        {"user_id": user, "k": 3},
        {"history": [int(reference.item_ids[2])], "k": 2},
        {"history": history, "k": 100, "exclude_seen": False},  # its own items may come back
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
    assert set(history) & set(predictions[2]["content_ids"])  # not excluded when asked not to
    assert not seen & set(predictions[3]["content_ids"])
    assert (
        predictions[2]["content_ids"]
        == reference.recommend(history=history, k=100, exclude_seen=False).content_ids.tolist()
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
    (
        "too many display instances",
        json.dumps({"instances": [{"user_id": 1, "display": True}] * 51}).encode(),
        None,
        413,
        "51 instances ask for display: true; at most 50",
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


def test_every_inference_request_is_timed_and_counted_by_version_and_status(
    server: Server,
) -> None:
    version = f'model_version="{VERSION}"'
    count = "movie_recommender_request_seconds_count"
    ok, client = f'{version},code="2xx"', f'{version},code="4xx"'
    before = [server.metric(count, version), server.metric("movie_recommender_responses_total", ok)]
    before.append(server.metric("movie_recommender_responses_total", client))
    assert server.predict([{"user_id": 1}]).status_code == 200
    assert server.predict([{"user_id": 1, "k": -1}]).status_code == 400
    requests.get(f"{server.base_url}/v1/models/{MODEL}", timeout=5)  # not an inference
    after = [server.metric(count, version), server.metric("movie_recommender_responses_total", ok)]
    after.append(server.metric("movie_recommender_responses_total", client))
    assert [a - b for a, b in zip(after, before, strict=True)] == [2, 1, 1]
    # the 5xx series exists from the start (at 0), so a revision's first failure is counted
    assert server.metric("movie_recommender_responses_total", f'{version},code="5xx"') == 0
    text = requests.get(f"{server.base_url}/metrics", timeout=5).text
    assert f'movie_recommender_request_seconds_bucket{{le="0.5",{version}}}' in text


def test_test_faults_fail_a_share_and_delay_every_inference(artefact: Path, tmp_path: Path) -> None:
    env = {**os.environ, "MODEL_VERSION": "9", "MODEL_SERVER_FAULT_ERROR_RATE": "0.3"}
    srv = _start(artefact, tmp_path / "faulty.log", "--fault_latency_ms", "50", env=env)
    try:
        _wait_ready(srv)
        started = time.monotonic()
        codes = [srv.predict([{"user_id": 1}]) for _ in range(60)]
        elapsed = time.monotonic() - started
        failed = [r for r in codes if r.status_code == 500]
        assert 5 <= len(failed) <= 35, len(failed)  # 30 % of 60, very loosely
        assert {r.status_code for r in codes} == {200, 500}
        assert failed[0].headers["X-Model-Version"] == "9"  # the canary that failed says so
        assert "injected fault" in failed[0].json()["error"]
        assert elapsed >= 60 * 0.05
        assert srv.metric("movie_recommender_responses_total", 'code="5xx"') == len(failed)
        # health and metadata are never faulted (the controller's probes see a ready revision)
        assert requests.get(f"{srv.base_url}/v1/models/{MODEL}", timeout=5).status_code == 200
        assert "TEST FAULTS ON" in srv.log_path.read_text()
    finally:
        _stop(srv)


# -- V2 (Open Inference Protocol), over REST and gRPC, with KServe's own clients -----------


def _v2_request(
    users: list[int],
    histories: list[list[int]] | None = None,
    k: int | None = None,
    exclude_seen: bool | None = None,
    outputs: list[str] | None = None,
) -> Any:
    """A `kserve.InferRequest` in the documented layout (numpy tensors, as a client has them)."""
    from kserve import InferInput, InferRequest
    from kserve.protocol.infer_type import RequestedOutput

    tensors = {"user_id": np.array(users, dtype=np.int64)}
    if histories is not None:
        width = max(len(h) for h in histories)
        tensors["history"] = np.array([h + [-1] * (width - len(h)) for h in histories], np.int64)
    if k is not None:
        tensors["k"] = np.array([k], dtype=np.int64)
    if exclude_seen is not None:
        tensors["exclude_seen"] = np.array([exclude_seen])
    inputs = []
    for name, array in tensors.items():
        tensor = InferInput(name, list(array.shape), "BOOL" if array.dtype == bool else "INT64")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    requested = [RequestedOutput(name) for name in outputs] if outputs else None
    return InferRequest(MODEL, inputs, request_outputs=requested)


def _rows(response: Any) -> list[dict[str, Any]]:
    """A V2 response as V1-shaped predictions (padding dropped), checking the documented shapes."""
    outputs = {o.name: o for o in response.outputs}
    assert set(outputs) == {"content_ids", "scores", "fallback", "reason"}
    content_ids, scores = outputs["content_ids"].as_numpy(), outputs["scores"].as_numpy()
    fallback, reason = outputs["fallback"].as_numpy(), outputs["reason"].as_numpy()
    assert (outputs["content_ids"].datatype, outputs["scores"].datatype) == ("INT64", "FP32")
    assert (outputs["fallback"].datatype, outputs["reason"].datatype) == ("BOOL", "BYTES")
    n = len(fallback)
    assert content_ids.shape == scores.shape and content_ids.shape[0] == n == len(reason)
    rows = []
    for i in range(n):
        kept = content_ids[i] != -1
        assert kept.tolist() == sorted(kept.tolist(), reverse=True)  # padding only at the end
        text = reason[i].decode() if isinstance(reason[i], bytes) else str(reason[i])
        rows.append(
            {
                "content_ids": content_ids[i][kept].tolist(),
                "scores": scores[i][kept].tolist(),
                "fallback": bool(fallback[i]),
                "reason": text or None,
            }
        )
    return rows


def _assert_same_as_v1(rows: list[dict[str, Any]], v1: list[dict[str, Any]]) -> None:
    assert len(rows) == len(v1)
    for row, expected in zip(rows, v1, strict=True):
        assert row["content_ids"] == expected["content_ids"]
        assert row["scores"] == pytest.approx(expected["scores"], rel=1e-6)  # FP32 vs JSON float
        assert (row["fallback"], row["reason"]) == (expected["fallback"], expected["reason"])


def _v1_of(users: list[int], histories: list[list[int]], k: int, exclude_seen: bool) -> list[Any]:
    return [
        {
            **({"user_id": u} if u != -1 else {}),
            **({"history": h} if h else {}),
            "k": k,
            "exclude_seen": exclude_seen,
        }
        for u, h in zip(users, histories, strict=True)
    ]


def _mixed_rows(reference: FittedRecommender) -> tuple[list[int], list[list[int]]]:
    """Known users (one with a history), unknown users, anonymous histories (one partly unknown)."""
    items = [int(i) for i in reference.item_ids]
    most_seen = int(np.argmax(np.diff(reference.seen.indptr)))  # the shortest unseen ranking
    users = [int(u) for u in reference.user_ids[[most_seen, 30, 77]]] + [10**9, -1, -1, 10**9 + 1]
    histories = [[], [items[5]], [], [], [items[1], items[9]], [items[3], 999_999_001], [items[7]]]
    return users, histories


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_kserve_v2_rest_client_answers_as_v1_and_in_process(
    server: Server, reference: FittedRecommender, exclude_seen: bool
) -> None:
    from kserve import InferenceRESTClient, RESTConfig

    users, histories = _mixed_rows(reference)
    if not exclude_seen:  # refused for known users (test_a_known_users_seen_items_never_...)
        rows_kept = [i for i, user in enumerate(users) if user == -1 or user >= 10**9]
        users, histories = [users[i] for i in rows_kept], [histories[i] for i in rows_kept]
    k = 100  # longer than most known users' unseen items: short rows are padded

    async def call() -> tuple[Any, dict[str, str]]:
        client = InferenceRESTClient(config=RESTConfig(protocol="v2", retries=0, timeout=10))
        headers: dict[str, str] = {}
        try:
            response = await client.infer(
                server.base_url,
                _v2_request(users, histories, k, exclude_seen),
                model_name=MODEL,
                response_headers=headers,
            )
            assert await client.is_server_ready(server.base_url)
            assert await client.is_server_live(server.base_url)
            assert await client.is_model_ready(server.base_url, MODEL)
        finally:
            await client.close()
        return response, headers

    response, headers = asyncio.run(call())
    assert headers["x-model-version"] == VERSION
    assert response.model_name == MODEL
    rows = _rows(response)
    assert response.outputs[0].shape == [len(users), k]
    v1 = server.predict(_v1_of(users, histories, k, exclude_seen)).json()["predictions"]
    _assert_same_as_v1(rows, v1)
    if exclude_seen:  # a user who has seen more than n_items - k items gets a padded row
        assert any(len(r["content_ids"]) < k for r in rows), "no short row: padding untested"
    assert [r["fallback"] for r in rows] == [user == 10**9 for user in users]
    partly_unknown = next(i for i, h in enumerate(histories) if 999_999_001 in h)
    assert "999999001" in rows[partly_unknown]["reason"]
    for (user, history), row in zip(zip(users, histories, strict=True), rows, strict=True):
        expected = reference.recommend(
            user_id=None if user == -1 else user,
            history=[h for h in history if h != 999_999_001] or None,
            k=k,
            exclude_seen=exclude_seen,
        )
        assert row["content_ids"] == expected.content_ids.tolist()


def test_kserve_v2_grpc_client_answers_as_v1(server: Server, reference: FittedRecommender) -> None:
    from kserve import InferenceGRPCClient

    users, histories = _mixed_rows(reference)

    async def call() -> tuple[Any, Any, tuple[bool, bool, bool]]:
        async with InferenceGRPCClient(server.grpc_url, retries=0, timeout=10) as client:
            full = await client.infer(_v2_request(users, histories, k=7))
            some = await client.infer(_v2_request(users[:2], outputs=["fallback", "content_ids"]))
            health = (
                await client.is_server_ready(),
                await client.is_server_live(),
                await client.is_model_ready(MODEL),
            )
        return full, some, health

    full, some, health = asyncio.run(call())
    assert health == (True, True, True)
    assert (full.model_name, full.model_version) == (MODEL, VERSION)
    v1 = server.predict(_v1_of(users, histories, 7, True)).json()["predictions"]
    _assert_same_as_v1(_rows(full), v1)
    assert [o.name for o in some.outputs] == ["fallback", "content_ids"]
    first_two = server.predict([{"user_id": u} for u in users[:2]]).json()["predictions"]
    assert some.outputs[1].as_numpy().tolist() == [p["content_ids"] for p in first_two]


def test_v2_model_metadata_lists_the_tensors(server: Server) -> None:
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    inputs = [
        ("user_id", "INT64", [-1]),
        ("history", "INT64", [-1, -1]),
        ("k", "INT64", [1]),
        ("exclude_seen", "BOOL", [1]),
    ]
    outputs = [
        ("content_ids", "INT64", [-1, -1]),
        ("scores", "FP32", [-1, -1]),
        ("fallback", "BOOL", [-1]),
        ("reason", "BYTES", [-1]),
    ]
    rest = requests.get(f"{server.base_url}/v2/models/{MODEL}", timeout=5).json()
    assert rest["name"] == MODEL
    assert [(t["name"], t["datatype"], t["shape"]) for t in rest["inputs"]] == inputs
    assert [(t["name"], t["datatype"], t["shape"]) for t in rest["outputs"]] == outputs

    async def call() -> Any:
        async with grpc.aio.insecure_channel(server.grpc_url) as channel:
            stub = GRPCInferenceServiceStub(channel)
            return await stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL), timeout=10)

    metadata = asyncio.run(call())
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == inputs
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == outputs


def _rejections(server: Server) -> float:
    text = requests.get(f"{server.base_url}/metrics", timeout=5).text
    prefix = "movie_recommender_rejected_requests_total{"
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def _json_tensor(name: str, shape: list[int], data: list[Any], datatype: str = "INT64") -> Any:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


_USER = _json_tensor("user_id", [1], [1])
V2_REST_BAD_INPUT = [
    ("missing user_id", [_json_tensor("k", [1], [5])], 400, "input user_id is required"),
    ("wrong datatype", [_json_tensor("user_id", [1], [1.0], "FP32")], 400, "must be INT64"),
    ("float value", [_json_tensor("user_id", [1], [1.5])], 400, "input user_id must hold integ"),
    ("bool value", [_json_tensor("user_id", [1], [True])], 400, "input user_id must hold integ"),
    ("wrong rank", [_json_tensor("user_id", [1, 1], [[1]])], 400, "input user_id must have shape"),
    ("shape vs data", [_json_tensor("user_id", [2], [1])], 400, "input user_id does not hold 2"),
    ("negative user", [_json_tensor("user_id", [1], [-4])], 400, "input user_id[0]"),
    ("k zero", [_USER, _json_tensor("k", [1], [0])], 400, "input k must be an integer in 1..100"),
    ("k too big", [_USER, _json_tensor("k", [1], [101])], 400, "input k must be an integer"),
    ("k shape", [_USER, _json_tensor("k", [2], [1, 2])], 400, "input k must have shape [1]"),
    (
        "too many rows",
        [_json_tensor("user_id", [1001], [1] * 1001)],
        413,
        "input user_id has 1001 rows",
    ),
    (
        "history rows",
        [_json_tensor("user_id", [2], [1, 2]), _json_tensor("history", [1, 1], [[3]])],
        400,
        "input history must have shape [n, h]",
    ),
    (
        "history only unknown ids",
        [_json_tensor("user_id", [1], [-1]), _json_tensor("history", [1, 2], [[999999001, -1]])],
        422,
        "input history row 0 holds no content id the model knows",
    ),
    (
        "nothing to rank",
        [_json_tensor("user_id", [1], [-1])],
        400,
        "row 0 needs a user_id or a non-empty history",
    ),
    (
        "exclude_seen not BOOL",
        [_USER, _json_tensor("exclude_seen", [1], [0])],
        400,
        "input exclude_seen must be BOOL",
    ),
    ("unknown input", [_json_tensor("userid", [1], [1])], 400, "input 'userid' is not an input"),
]


@pytest.mark.parametrize(
    ("body", "status", "names"),
    [
        pytest.param(json.dumps({"inputs": case[1]}).encode(), *case[2:], id=case[0])
        for case in V2_REST_BAD_INPUT
    ]
    + [
        pytest.param(b'{"inputs": [', 400, "not valid JSON", id="invalid JSON"),
        pytest.param(b'{"input": []}', 400, "inputs: Field required", id="no inputs"),
        pytest.param(
            b'{"inputs": [{"name": "user_id", "shape": 1, "datatype": "INT64", "data": [1]}]}',
            400,
            "inputs[0].shape",
            id="shape not a list",
        ),
        pytest.param(
            json.dumps({"inputs": [_USER], "outputs": [{"name": "score"}]}).encode(),
            400,
            "output 'score' is not an output",
            id="unknown output",
        ),
    ],
)
def test_v2_rest_bad_input_gets_a_clear_4xx(
    server: Server, body: bytes, status: int, names: str
) -> None:
    _assert_v2_rest_rejects(server, body, {"Content-Type": "application/json"}, status, names)


_BINARY_USER = {"name": "user_id", "shape": [1], "datatype": "INT64"}


@pytest.mark.parametrize(
    ("header", "names"),
    [
        pytest.param({}, "lacks the field 'inputs'", id="no inputs"),
        pytest.param(
            {"inputs": [{**_BINARY_USER, "parameters": {"binary_data_size": 8}}]},
            "V2 request cannot be read",
            id="tensor bytes missing",
        ),
    ],
)
def test_v2_rest_binary_extension_bad_input_gets_a_400(
    server: Server, header: dict[str, Any], names: str
) -> None:
    """The binary-data extension: a JSON header of the given length, then the raw tensors."""
    body = json.dumps(header).encode()
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(body)),
    }
    _assert_v2_rest_rejects(server, body, headers, 400, names)


def _assert_v2_rest_rejects(
    server: Server, body: bytes, headers: dict[str, str], status: int, names: str
) -> None:
    url = f"{server.base_url}/v2/models/{MODEL}/infer"
    before = _rejections(server)
    response = requests.post(url, data=body, headers=headers, timeout=10)
    assert response.status_code == status, response.text
    assert names in response.json()["error"]
    assert response.headers["X-Model-Version"] == VERSION
    assert _rejections(server) == before + 1
    good = requests.post(url, json={"inputs": [_USER]}, timeout=10)
    assert good.status_code == 200, good.text
    assert requests.get(f"{server.base_url}/v2/health/ready", timeout=5).status_code == 200


def _grpc_tensor(name: str, shape: list[int], data: list[Any], datatype: str = "INT64") -> Any:
    """A tensor sent as typed contents (``int64_contents``...), as a client without numpy would."""
    from kserve import InferInput

    return InferInput(name, shape, datatype, data=data)


V2_GRPC_BAD_INPUT = [
    ("missing user_id", lambda: [_grpc_tensor("k", [1], [5])], "input user_id is required"),
    (
        "wrong datatype",
        lambda: [_grpc_tensor("user_id", [1], [1.0], "FP32")],
        "input user_id must be INT64, not FP32",
    ),
    (
        "wrong rank",
        lambda: [_grpc_tensor("user_id", [1, 1], [1])],
        "input user_id must have shape [n]",
    ),
    (
        "shape vs data",
        lambda: [_grpc_tensor("user_id", [3], [1, 2])],
        "input user_id does not hold 3",
    ),
    (
        "k out of range",
        lambda: [_grpc_tensor("user_id", [1], [1]), _grpc_tensor("k", [1], [500])],
        "input k must be an integer in 1..100 (got 500)",
    ),
    (
        "too many rows",
        lambda: [_grpc_tensor("user_id", [1001], [1] * 1001)],
        "input user_id has 1001 rows",
    ),
    (
        "history only unknown ids",
        lambda: [_grpc_tensor("user_id", [1], [-1]), _grpc_tensor("history", [1, 1], [999999001])],
        "input history row 0 holds no content id",
    ),
    ("unknown input", lambda: [_grpc_tensor("user", [1], [1])], "input 'user' is not an input"),
]


@pytest.mark.parametrize(
    ("make_inputs", "names"),
    [pytest.param(make, names, id=name) for name, make, names in V2_GRPC_BAD_INPUT],
)
def test_v2_grpc_bad_input_is_invalid_argument(
    server: Server, make_inputs: Any, names: str
) -> None:
    import grpc
    from kserve import InferenceGRPCClient, InferRequest

    async def call() -> tuple[Any, bool, Any]:
        async with InferenceGRPCClient(server.grpc_url, retries=0, timeout=10) as client:
            with pytest.raises(grpc.RpcError) as raised:
                await client.infer(InferRequest(MODEL, make_inputs()))
            good = await client.infer(_v2_request([1]))
            return raised.value, await client.is_server_ready(), good

    before = _rejections(server)
    error, ready, good = asyncio.run(call())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert names in error.details()
    assert _rejections(server) == before + 1
    assert ready
    assert good.outputs[0].as_numpy().shape == (1, 10)


# -- a known user's history never comes back -----------------------------------------------


def _known_users(reference: FittedRecommender) -> list[int]:
    """Known users with the most and the fewest training items, and a few in between."""
    counts = np.diff(reference.seen.indptr)
    order = np.argsort(counts)
    picks = [order[-1], order[0], order[len(order) // 2], 0, 1, 2]
    return [int(reference.user_ids[i]) for i in picks]


@pytest.mark.parametrize("exclude_seen", [None, True, False], ids=["absent", "true", "false"])
def test_a_known_users_seen_items_never_come_back_whatever_the_flag(
    server: Server, reference: FittedRecommender, exclude_seen: bool | None
) -> None:
    """With ``exclude_seen: false`` the top 100 minus the default top 100 was the user's history."""
    import grpc
    from kserve import InferenceGRPCClient, InferenceRESTClient, RESTConfig

    users = _known_users(reference)
    flag = {} if exclude_seen is None else {"exclude_seen": exclude_seen}
    v1 = server.predict([{"user_id": u, "k": 100, **flag} for u in users])
    request = _v2_request(users, k=100, exclude_seen=exclude_seen)

    async def v2() -> list[Any]:
        answers: list[Any] = []
        rest = InferenceRESTClient(config=RESTConfig(protocol="v2", retries=0, timeout=10))
        try:
            answers.append(await rest.infer(server.base_url, request, model_name=MODEL))
        except Exception as err:  # KServe's client raises on a 4xx
            answers.append(err)
        finally:
            await rest.close()
        async with InferenceGRPCClient(server.grpc_url, retries=0, timeout=10) as client:
            try:
                answers.append(await client.infer(request))
            except grpc.RpcError as err:
                answers.append(err)
        return answers

    rest, over_grpc = asyncio.run(v2())
    if exclude_seen is False:
        assert v1.status_code == 400, v1.text
        assert "instances[0].exclude_seen false is refused" in v1.json()["error"]
        assert "input exclude_seen" in str(rest) and "refused" in str(rest)
        assert over_grpc.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "input exclude_seen" in over_grpc.details()
        return
    assert v1.status_code == 200, v1.text
    answers = {
        "V1": [p["content_ids"] for p in v1.json()["predictions"]],
        "V2 REST": [r["content_ids"] for r in _rows(rest)],
        "V2 gRPC": [r["content_ids"] for r in _rows(over_grpc)],
    }
    for protocol, rankings in answers.items():
        for user, ranking in zip(users, rankings, strict=True):
            assert ranking, (protocol, user)
            assert not set(ranking) & _seen_items(reference, user), (protocol, user)


def test_refusing_exclude_seen_names_the_known_user_and_leaves_anonymous_rows_alone(
    server: Server, reference: FittedRecommender
) -> None:
    known, unknown = int(reference.user_ids[5]), 10**9
    history = [int(i) for i in reference.item_ids[[2, 8]]]
    mixed = server.predict(
        [
            {"history": history, "exclude_seen": False},
            {"user_id": unknown, "history": history, "exclude_seen": False},
            {"user_id": known, "exclude_seen": False},
        ]
    )
    assert mixed.status_code == 400
    assert mixed.json()["error"].startswith(
        "instances[2].exclude_seen false is refused: the model knows"
    )
    anonymous = server.predict(
        [
            {"history": history, "exclude_seen": False, "k": 100},
            {"user_id": unknown, "history": history, "exclude_seen": False, "k": 100},
        ]
    )
    assert anonymous.status_code == 200, anonymous.text
    for prediction in anonymous.json()["predictions"]:
        assert set(history) <= set(prediction["content_ids"])  # the caller's own items


# -- what one client may cost ----------------------------------------------------------------

_PREDICT = f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: predictor\r\n".encode()
_WAIT_S = 15.0  # far longer than any limit under test: a server without one never answers


def _exchange(port: int, data: bytes, *, wait: float = _WAIT_S) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes or stops talking."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
                if _complete(received):
                    break
        except TimeoutError:
            pass
    return received


def _complete(response: bytes) -> bool:
    head, sep, body = response.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def _status(response: bytes) -> int | None:
    first = response.split(b"\r\n", 1)[0].split()
    return int(first[1]) if len(first) >= 2 and first[0].startswith(b"HTTP/") else None


def _json_body(response: bytes) -> Any:
    return json.loads(response.partition(b"\r\n\r\n")[2])


def _rejected(server: Server, reason: str) -> float:
    return server.metric("movie_recommender_rejected_requests_total", f'reason="{reason}"')


@pytest.mark.parametrize("path", [f"/v1/models/{MODEL}:predict", f"/v2/models/{MODEL}/infer"])
def test_a_body_declared_over_the_limit_is_refused_without_being_read(
    server: Server, path: str
) -> None:
    before = _rejected(server, "body_too_large")
    head = (
        f"POST {path} HTTP/1.1\r\nHost: predictor\r\nContent-Type: application/json\r\n"
        "Content-Length: 50000000\r\n\r\n"
    ).encode()
    response = _exchange(server.port, head)  # not a byte of the 50 MB is sent
    assert _status(response) == 413, response[:300]
    message = _json_body(response)["error"]
    assert "larger than 1048576 bytes (Content-Length is 50000000)" in message
    assert "MAX_REQUEST_BYTES" in message
    assert _rejected(server, "body_too_large") == before + 1
    assert server.predict([{"user_id": 1}]).status_code == 200


def test_a_streamed_body_is_refused_as_soon_as_it_passes_the_limit(server: Server) -> None:
    limit, chunk = 1 << 20, b" " * (128 << 10)
    with socket.create_connection(("127.0.0.1", server.port), timeout=_WAIT_S) as sock:
        sock.sendall(_PREDICT + b"Content-Type: application/json\r\n")
        sock.sendall(b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n{\r\n" % 1)
        sent = 1
        while sent < 4 * limit:  # 4 MiB unless the server answers first
            readable, _, _ = select.select([sock], [], [], 0.05)
            if readable:
                break
            sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            sent += len(chunk)
        else:  # the server read it all: end the body and see what it says
            sock.sendall(b"0\r\n\r\n")
        response = b""
        while not _complete(response) and (data := sock.recv(65536)):
            response += data
    assert _status(response) == 413, response[:300]
    assert "counted as it streamed" in _json_body(response)["error"]
    assert limit < sent <= limit + 4 * len(chunk)  # refused once past the limit, not at the end
    assert server.predict([{"user_id": 1}]).status_code == 200


def test_a_body_of_the_limit_is_served_and_one_byte_more_is_not(server: Server) -> None:
    request = json.dumps({"instances": [{"user_id": 1, "k": 2}]}).encode()
    at_limit = request + b" " * ((1 << 20) - len(request))
    headers = {"Content-Type": "application/json"}
    served = requests.post(server.predict_url, data=at_limit, headers=headers, timeout=10)
    assert served.status_code == 200, served.text
    over = requests.post(server.predict_url, data=at_limit + b" ", headers=headers, timeout=10)
    assert over.status_code == 413
    assert over.headers["X-Model-Version"] == VERSION


def test_headers_over_64_kib_are_refused(server: Server) -> None:
    before = _rejected(server, "headers_too_large")
    big = b"X-Padding: " + b"a" * (70 << 10) + b"\r\n"
    response = _exchange(
        server.port, f"GET /v1/models/{MODEL} HTTP/1.1\r\n".encode() + big + b"\r\n"
    )
    assert _status(response) == 431, response[:300]
    assert "over 65536 bytes" in _json_body(response)["error"]
    assert _rejected(server, "headers_too_large") == before + 1
    small = b"X-Padding: " + b"a" * (8 << 10) + b"\r\n"
    fine = _exchange(server.port, f"GET /v1/models/{MODEL} HTTP/1.1\r\n".encode() + small + b"\r\n")
    assert _status(fine) == 200


def test_a_grpc_message_over_the_limit_is_refused(
    server: Server, reference: FittedRecommender
) -> None:
    import grpc
    from kserve import InferenceGRPCClient

    items = [int(i) for i in reference.item_ids]
    histories = [(items * 10)[:1000]] * 200  # 200 x 1000 INT64: 1.6 MB, over 1 MiB
    request = _v2_request([-1] * 200, histories)

    async def call() -> tuple[Any, Any]:
        async with InferenceGRPCClient(server.grpc_url, retries=0, timeout=10) as client:
            with pytest.raises(grpc.RpcError) as raised:
                await client.infer(request)
            return raised.value, await client.infer(_v2_request([1]))

    error, good = asyncio.run(call())
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    assert good.outputs[0].as_numpy().shape == (1, 10)


@pytest.fixture(scope="module")
def limited(artefact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with small limits: 4 KiB bodies (from the environment), 1 s to send a request,
    4 connections."""
    env = {**os.environ, "MAX_REQUEST_BYTES": "4096"}
    log_path = tmp_path_factory.mktemp("limited") / "server.log"
    extra = ("--request_read_timeout", "1", "--limit_concurrency", "4")
    srv = _start(artefact, log_path, *extra, env=env)
    _wait_ready(srv)
    yield srv
    _stop(srv)


def test_max_request_bytes_comes_from_the_environment(limited: Server) -> None:
    request = json.dumps({"instances": [{"user_id": 1}]}).encode()
    headers = {"Content-Type": "application/json"}
    fits = request + b" " * (4096 - len(request))
    assert requests.post(limited.predict_url, data=fits, headers=headers, timeout=10).ok
    over = requests.post(limited.predict_url, data=fits + b" ", headers=headers, timeout=10)
    assert over.status_code == 413
    assert "larger than 4096 bytes" in over.json()["error"]


def test_a_client_sending_its_headers_slowly_is_cut_off(limited: Server) -> None:
    before = _rejected(limited, "request_timeout")
    with socket.create_connection(("127.0.0.1", limited.port), timeout=_WAIT_S) as sock:
        sock.sendall(_PREDICT)
        response = b""
        try:
            for _ in range(int(_WAIT_S / 0.1)):  # one header byte every 100 ms
                sock.sendall(b"X")
                if select.select([sock], [], [], 0.1)[0]:
                    response = sock.recv(65536)
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
    assert _status(response) == 408, response
    assert "did not finish sending its request within 1 s" in _json_body(response)["error"]
    assert _rejected(limited, "request_timeout") == before + 1
    assert limited.predict([{"user_id": 1}]).status_code == 200


@pytest.mark.parametrize("sent", [b"", b"Content-Length: 100\r\n\r\n{"], ids=["idle", "slow body"])
def test_a_connection_that_does_not_finish_its_request_is_closed(
    limited: Server, sent: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", limited.port), timeout=_WAIT_S) as sock:
        sock.sendall((_PREDICT + sent) if sent else b"")
        try:
            closed = sock.recv(65536) == b""  # EOF: the server closed it
        except ConnectionResetError:
            closed = True
    assert closed
    assert limited.predict([{"user_id": 1}]).status_code == 200


def test_past_the_concurrency_limit_a_request_gets_503_until_slots_free_up(
    limited: Server,
) -> None:
    held = [socket.create_connection(("127.0.0.1", limited.port)) for _ in range(4)]
    try:
        for sock in held:
            sock.sendall(b"GET / HTTP/1.1\r\n")  # a request that never ends (until cut off)
        time.sleep(0.2)
        refused = limited.predict([{"user_id": 1}])
        assert refused.status_code == 503, refused.text
        deadline = time.monotonic() + _WAIT_S
        while limited.predict([{"user_id": 1}]).status_code != 200:
            assert time.monotonic() < deadline, "slots never freed"
            time.sleep(0.2)
    finally:
        for sock in held:
            sock.close()


# -- the data plane serves inference, health and metadata only ------------------------------


def test_unload_request_is_refused_and_predict_keeps_working(
    server: Server, reference: FittedRecommender
) -> None:
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    user = int(reference.user_ids[4])
    expected = server.predict([{"user_id": user, "k": 5}]).json()["predictions"]
    repository = f"{server.base_url}/v2/repository/models/{MODEL}"
    assert requests.post(f"{repository}/unload", timeout=5).status_code == 404
    assert requests.post(f"{repository}/load", timeout=5).status_code == 404

    async def call() -> list[Any]:
        codes = []
        async with grpc.aio.insecure_channel(server.grpc_url) as channel:
            stub = GRPCInferenceServiceStub(channel)
            for rpc, message in (
                (stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name=MODEL)),
                (stub.RepositoryModelLoad, pb.RepositoryModelLoadRequest(model_name=MODEL)),
            ):
                with pytest.raises(grpc.RpcError) as raised:
                    await rpc(message, timeout=10)
                codes.append(raised.value.code())
        return codes

    assert asyncio.run(call()) == [grpc.StatusCode.UNIMPLEMENTED] * 2
    after = server.predict([{"user_id": user, "k": 5}])
    assert after.status_code == 200
    assert after.json()["predictions"] == expected
    v2 = requests.post(
        f"{server.base_url}/v2/models/{MODEL}/infer",
        json={"inputs": [{"name": "user_id", "shape": [1], "datatype": "INT64", "data": [user]}]},
        timeout=10,
    )
    assert v2.status_code == 200
    for probe in ("/", "/v2/health/live", "/v2/health/ready", f"/v1/models/{MODEL}"):
        assert requests.get(f"{server.base_url}{probe}", timeout=5).status_code == 200, probe
    metadata = requests.get(f"{server.base_url}/v2", timeout=5).json()
    assert metadata["extensions"] == []  # the repository extension is not advertised either


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", f"/v1/models/{MODEL}:explain"),
        ("POST", f"/v2/models/{MODEL}/versions/1/infer"),
        ("GET", f"/v2/models/{MODEL}/versions/1"),
        ("GET", "/openapi.json"),
        ("DELETE", f"/v2/models/{MODEL}"),
    ],
)
def test_routes_beyond_inference_health_and_metadata_are_not_found(
    server: Server, method: str, path: str
) -> None:
    response = requests.request(method, f"{server.base_url}{path}", timeout=5)
    assert response.status_code == 404, response.text


def test_served_routes_answer(server: Server) -> None:
    for path in ("/", "/metrics", "/v1/models", "/v2", "/v2/models", f"/v2/models/{MODEL}/ready"):
        response = requests.get(f"{server.base_url}{path}", timeout=5)
        assert response.status_code == 200, (path, response.text)
    assert requests.get(f"{server.base_url}/v2/models", timeout=5).json()["models"] == [MODEL]


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 on a dual-stack socket
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def test_nothing_listens_beyond_loopback(server: Server) -> None:
    process = psutil.Process(server.process.pid)
    connections = getattr(process, "net_connections", process.connections)(kind="inet")
    listening = [c.laddr for c in connections if c.status == psutil.CONN_LISTEN]
    assert {address.port for address in listening} == {server.port, server.grpc_port}
    assert all(_loopback(address.ip) for address in listening), listening


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


def test_a_model_cache_others_may_write_to_is_refused_before_anything_is_fetched(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "shared-cache"
    cache.mkdir()
    cache.chmod(0o777)  # the old default, /tmp/movie-mlops-models, was shared by every user
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{_free_port()}"}  # nobody
    proc = subprocess.run(
        [sys.executable, "-m", "model_server", "--model_name", MODEL,
         "--model_uri", f"models:/{MODEL}/1", "--model_cache_dir", str(cache)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert f"the model cache {cache} is writable by group or others" in proc.stderr
    assert "cannot resolve" not in proc.stderr  # refused before MLflow was asked


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

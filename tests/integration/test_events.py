"""The prediction log and feedback, end to end over loopback (issue #11, sections 1, 2 and 4).

The session stack's ingress logs every inference to the stack's event sink (`make up` starts
both); feedback goes through the ingress to the sink; the sink's files become a feature snapshot
that training accepts. The crash test runs a sink process of its own.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import requests

from contracts import credentials
from contracts import events as ev
from localstack.processes import free_port, wait_healthy
from localstack.stack import start, stop
from pipelines.events.store import part_files, read_kind
from tests.support.stack import (
    REPO_ROOT,
    Session,
    registered_version,
    serve_only,
    train_two_versions,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(stack: Session) -> str:
    version = train_two_versions(stack)["first"]
    serve_only(stack, version)
    return version


def _rows(data_dir: Path, kind: str) -> list[dict[str, Any]]:
    return read_kind(data_dir, kind).to_pylist()


def _logged(data_dir: Path, kind: str, request_id: str) -> list[dict[str, Any]]:
    return [r for r in _rows(data_dir, kind) if r["request_id"] == request_id]


def _wait_logged(data_dir: Path, kind: str, request_id: str) -> list[dict[str, Any]]:
    wait_for(f"{kind} {request_id} on disk", lambda: bool(_logged(data_dir, kind, request_id)), 20)
    return _logged(data_dir, kind, request_id)


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    total = 0.0
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}(?:\{{(.*)\}})? (\S+)", line)
        if match and (not labels or ",".join(sorted((match[1] or "").split(","))) == want):
            total += float(match[2])
    return total


def _feedback(stack: Session, body: Any, **kwargs: Any) -> requests.Response:
    url = f"{stack.settings.ingress_url}{ev.FEEDBACK_PATH}"
    return requests.post(url, timeout=10, **({"json": body} if body is not None else {}), **kwargs)


def test_a_prediction_is_logged_as_request_and_response_with_one_id_and_a_click_joins_it(
    stack: Session, served: str
) -> None:
    response = stack.predict([{"user_id": 1, "k": 5}], headers={ev.USER_ID_HEADER: "1"})
    assert response.status_code == 200
    request_id = response.headers[ev.REQUEST_ID_HEADER]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    assert response.headers["X-Model-Version"] == served
    served_ids = response.json()["predictions"][0]["content_ids"]

    (req,) = _wait_logged(stack.data_dir, ev.REQUEST, request_id)
    (resp,) = _wait_logged(stack.data_dir, ev.RESPONSE, request_id)
    assert req["inference_service"] == resp["inference_service"] == "movie-recommender"
    assert req["component"] == "predictor" and req["user_key"] == "1"
    assert resp["model_version"] == served
    assert resp["item_ids"] == served_ids
    assert '"instances"' in req["payload"] and '"predictions"' in resp["payload"]

    # the page's feedback, through the ingress: impressions of every card, a click on the second
    events = [
        {"type": "impression", "request_id": request_id, "item_id": item, "position": pos,
         "model_version": served, "user_id": "1"}
        for pos, item in enumerate(served_ids)
    ]  # fmt: skip
    events.append({**events[1], "type": "click"})
    answer = _feedback(stack, {"events": events})
    assert answer.status_code == 202, answer.text
    (click,) = _wait_logged(stack.data_dir, ev.CLICK, request_id)
    # the join: the click names the prediction; the prediction says what was served at its position
    assert resp["item_ids"][click["position"]] == click["item_id"] == served_ids[1]
    assert resp["model_version"] == click["model_version"]
    assert len(_wait_logged(stack.data_dir, ev.IMPRESSION, request_id)) == len(served_ids)


MALFORMED = [
    (b"not json", "(body)"),
    ({"events": []}, "events"),
    ({}, "events"),
    ({"events": [{"type": "purchase"}]}, "events[0].type"),
    ({"events": [{"type": "click", "request_id": "r1", "item_id": "5", "position": 0,
                  "model_version": "1", "user_id": "u"}]}, "events[0].item_id"),
    ({"events": [{"type": "click", "request_id": "r1", "item_id": 5, "position": -1,
                  "model_version": "1", "user_id": "u"}]}, "events[0].position"),
    ({"events": [{"type": "click", "request_id": "r1", "item_id": 5, "position": 0,
                  "model_version": "1", "user_id": "u", "extra": 1}]}, "events[0].extra"),
    ({"events": [{"type": "click", "request_id": "../x", "item_id": 5, "position": 0,
                  "model_version": "1", "user_id": "u"}]}, "events[0].request_id"),
    ({"events": [{"type": "click", "request_id": "r1", "item_id": 5, "position": 0,
                  "model_version": "1"}]}, "events[0].user_id"),
    ({"events": [{"type": "impression", "request_id": "r1", "item_id": 5, "position": 0,
                  "model_version": "1", "user_id": "u"}] * 101}, "events"),
]  # fmt: skip


def test_ten_malformed_feedback_bodies_each_get_a_4xx_naming_the_field_and_write_nothing(
    stack: Session,
) -> None:
    metrics_url = f"{stack.settings.events_url}/metrics"
    before = requests.get(metrics_url, timeout=5).text
    files_before = set(part_files(stack.data_dir, ev.FEEDBACK_KINDS))
    for body, field in MALFORMED:
        kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
        answer = _feedback(stack, None, **kwargs)
        assert 400 <= answer.status_code < 500, (field, answer.status_code, answer.text)
        assert field in answer.json()["error"], (field, answer.text)
    after = requests.get(metrics_url, timeout=5).text
    for kind in ev.FEEDBACK_KINDS:
        name = ev.METRIC_RECEIVED
        assert _metric(after, name, type=kind) == _metric(before, name, type=kind)
    rejected = _metric(after, ev.METRIC_REJECTED, route="feedback", reason="invalid")
    assert rejected - _metric(before, ev.METRIC_REJECTED, route="feedback", reason="invalid") == 10
    time.sleep(2.5)  # a flush interval: nothing was buffered, so nothing is written
    assert set(part_files(stack.data_dir, ev.FEEDBACK_KINDS)) == files_before


def test_with_the_sink_down_predictions_still_answer_200_and_the_drop_counter_rises(
    stack: Session, served: str
) -> None:
    metrics_url = f"{stack.settings.ingress_url}/__local/metrics"

    def dropped() -> float:
        text = requests.get(metrics_url, timeout=5).text
        return _metric(text, ev.METRIC_INGRESS_DROPPED, reason="send_failed")

    assert requests.get(metrics_url, headers={"Host": "example.com"}, timeout=5).status_code == 404
    before = dropped()
    assert stop(stack.settings, "events")
    try:
        codes = [stack.predict([{"user_id": 2}]).status_code for _ in range(20)]
        assert codes == [200] * 20
        wait_for("the ingress counts the undelivered events", lambda: dropped() >= before + 20, 20)
        assert _feedback(stack, {"events": []}).status_code == 503  # said, not buffered
    finally:
        start(stack.settings, "events")
    response = stack.predict([{"user_id": 2}])
    _wait_logged(stack.data_dir, ev.RESPONSE, response.headers[ev.REQUEST_ID_HEADER])


def _cloud_event(i: int) -> tuple[dict[str, str], bytes]:
    headers = {
        "ce-specversion": "1.0", "ce-id": f"crash-{i}", "ce-type": ev.CE_REQUEST_TYPE,
        "ce-source": "test", "Content-Type": "application/json",
    }  # fmt: skip
    return headers, b'{"instances": [{"user_id": %d}]}' % i


def _sink(data_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable, "-m", "pipelines.events", "serve", "--port", str(port),
        "--data-dir", str(data_dir), "--flush-rows", "100", "--flush-seconds", "0.05",
    ]  # fmt: skip
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    wait_healthy(f"http://127.0.0.1:{port}/healthz", timeout=30, process=proc, log_file=log)
    return proc


def _written(data_dir: Path, files: int, rows: int) -> bool:
    """At least ``files`` part files of request events holding ``rows`` (published files always
    read whole)."""
    found = part_files(data_dir, [ev.REQUEST])
    return (
        len(found) >= files and sum(pq.ParquetFile(str(p)).metadata.num_rows for p in found) >= rows
    )


def test_kill_9_while_writing_leaves_no_partial_file_and_a_restart_continues(
    tmp_path: Path,
) -> None:
    data_dir, port, log = tmp_path / "data", free_port(), tmp_path / "sink.log"
    proc = _sink(data_dir, port, log)
    stop_load = threading.Event()

    def load() -> None:
        with requests.Session() as session:
            i = 0
            while not stop_load.is_set():
                headers, body = _cloud_event(i)
                try:
                    session.post(f"http://127.0.0.1:{port}/", data=body, headers=headers, timeout=2)
                except requests.RequestException:
                    return
                i += 1

    threads = [threading.Thread(target=load, daemon=True) for _ in range(3)]
    try:
        for t in threads:
            t.start()
        wait_for("3 part files, 100 rows", lambda: _written(data_dir, files=3, rows=100), 20)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        stop_load.set()
        for t in threads:
            t.join(timeout=5)
        if proc.poll() is None:
            proc.kill()
    events_dir = data_dir / ev.EVENTS_DIR
    visible = part_files(data_dir, [ev.REQUEST])
    rows = sum(pq.ParquetFile(str(p)).metadata.num_rows for p in visible)  # each reads whole
    assert rows >= 100
    for path in events_dir.rglob("*"):
        if path.is_file():
            assert path in visible or re.fullmatch(r"\.part-\w+\.parquet\.tmp-\d+", path.name)
    # a temporary a killed writer left behind is swept at the next start
    leftover = visible[0].parent / f".part-{'0' * 32}.parquet.tmp-{proc.pid}"
    leftover.write_bytes(b"PAR1 half")
    restarted = _sink(data_dir, port, log)
    try:
        headers, body = _cloud_event(10**6)
        answer = requests.post(f"http://127.0.0.1:{port}/", data=body, headers=headers, timeout=5)
        assert answer.status_code == 200
        wait_for(
            "the restarted sink writes", lambda: _logged(data_dir, ev.REQUEST, "crash-1000000")
        )
        assert not leftover.exists()
        assert not [p for p in events_dir.rglob(".part-*") if p.is_file()]
        assert len(_rows(data_dir, ev.REQUEST)) == rows + 1
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(timeout=15)


def test_features_build_events_gives_a_snapshot_that_train_accepts(
    stack: Session, served: str, tmp_path: Path
) -> None:
    # twelve users each click five of the ten films they were shown (one anonymous visitor)
    users = [str(u) for u in range(3, 14)] + ["anon-6f1c1f0e-8a4b-4c55-9d1e-2b7f0a9d3c11"]
    last = ""
    for user in users:
        instance = {"user_id": int(user), "k": 10} if user.isdigit() else {"popular": True}
        response = stack.predict([instance], headers={ev.USER_ID_HEADER: user})
        assert response.status_code == 200, response.text
        last = response.headers[ev.REQUEST_ID_HEADER]
        ids = response.json()["predictions"][0]["content_ids"]
        base = {"request_id": last, "model_version": served, "user_id": user}
        shown = [{**base, "type": "impression", "item_id": i, "position": p}
                 for p, i in enumerate(ids)]  # fmt: skip
        clicks = [{**e, "type": "click"} for e in shown[::2]]
        assert _feedback(stack, {"events": shown + clicks}).status_code == 202
    _wait_logged(stack.data_dir, ev.CLICK, last)

    # a data directory of this test's own: the stack's raw snapshot (titles) and its events
    data_dir = tmp_path / "data"
    shutil.copytree(stack.data_dir / "raw", data_dir / "raw")
    shutil.copytree(stack.data_dir / ev.EVENTS_DIR, data_dir / ev.EVENTS_DIR)
    env = {"DATA_DIR": str(data_dir)}
    built = stack.run("pipelines.features", "build", "--events", env=env)
    assert "interactions" in built.stdout
    from pipelines.features import load_features

    snapshot = load_features(data_dir)
    files = snapshot.manifest["source"]["events"]["files"]
    assert {f["path"].split("/")[1] for f in files} == {ev.IMPRESSION, ev.CLICK}
    assert all(re.fullmatch(r"[0-9a-f]{64}", f["sha256"]) for f in files)
    assert snapshot.manifest["source"]["generator"] is None
    assert snapshot.interactions["user_id"].nunique() >= len(users)
    assert (snapshot.path / "exposures.parquet").is_file()
    # training accepts it: the whole `pipelines.train` (load and verify, split, fit, evaluate,
    # MLflow run, gate, registration), into a registered model of this test's own, so the
    # session's `movie-recommender` versions stay what the other tests expect (as the admin:
    # the trainer identity may write `movie-recommender` only)
    model = "movie-recommender-from-events"
    identity = credentials.read(stack.settings.root, credentials.ADMIN)
    assert identity is not None
    admin = {credentials.USERNAME_ENV: identity[0], credentials.PASSWORD_ENV: identity[1]}
    trained = stack.run(
        "pipelines.train", "--model", "popularity", "--registered-model", model,
        env={**env, **admin},
    )  # fmt: skip
    version = registered_version(trained.stdout, model)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.settings.mlflow_url)
    run = client.get_run(client.get_model_version(model, version).run_id)
    assert run.data.tags["features_version"] == snapshot.version
    assert json.loads(run.data.tags["features_source"])["events"]["files"] == files
    assert 0.0 <= run.data.metrics["ndcg_at_10"] <= 1.0

"""The event sink's parts: payload extraction, flood buckets, user ids, temporaries; binary mode
and JSON batches (the sink app in-process on a loopback port, the twin's real emitter)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import ValidationError

from contracts import events as ev
from localstack.events import EventEmitter, Prediction
from pipelines.events import schema, store
from pipelines.events.sink import SinkSettings, TokenBuckets, build_app
from pipelines.events.training import ANONYMOUS_BASE, anonymous_user_id


def test_v1_and_v2_payloads_give_version_user_and_items_in_order():
    v1_req = json.dumps({"instances": [{"user_id": 42, "k": 3}, {"user_id": 7}]}).encode()
    assert schema.extract(ev.REQUEST, v1_req, "{}") == {
        "model_version": None, "user_key": "42", "item_ids": None, "instances": 2,
    }  # fmt: skip
    v1_resp = json.dumps(
        {"model_version": "3", "predictions": [{"content_ids": [9, 8, 7]}, {"content_ids": [1]}]}
    ).encode()
    found = schema.extract(ev.RESPONSE, v1_resp, '{"X-User-Id": ["anon-1"]}')
    assert found == {
        "model_version": "3",
        "user_key": "anon-1",
        "item_ids": [9, 8, 7],
        "instances": 2,
    }
    v2_resp = json.dumps(
        {"model_name": "m", "model_version": "5", "outputs": [
            {"name": "content_ids", "shape": [2, 3], "datatype": "INT64",
             "data": [4, 5, -1, 6, 7, 8]}]}
    ).encode()  # fmt: skip
    assert schema.extract(ev.RESPONSE, v2_resp, "")["item_ids"] == [4, 5]
    assert schema.extract(ev.RESPONSE, b"\xff not json", "")["model_version"] is None


def test_cloud_event_headers_are_kserves_and_case_does_not_matter():
    headers = {"Ce-Specversion": "1.0", "CE-ID": "abc", "ce-type": ev.CE_RESPONSE_TYPE,
               "ce-source": "http://localhost:9081/", "ce-endpoint": ""}  # fmt: skip
    parsed = schema.cloud_event_headers(headers)
    assert schema.kind_of(parsed) == ev.RESPONSE and parsed["endpoint"] == ""
    with pytest.raises(ValidationError):
        schema.cloud_event_headers({**headers, "ce-type": "com.example.other"})


def test_token_buckets_refuse_a_flood_refill_and_stay_bounded():
    buckets = TokenBuckets(rate=1.0, burst=3, max_clients=2)
    assert [buckets.take("a", now=0.0) for _ in range(4)] == [True, True, True, False]
    assert buckets.take("a", now=1.0) is True  # one token back after a second
    for client in ("b", "c", "d"):
        buckets.take(client, now=1.0)
    assert len(buckets) == 2


def test_anonymous_users_get_stable_ids_apart_from_numeric_ones():
    one = anonymous_user_id("anon-123")
    assert one == anonymous_user_id("anon-123") != anonymous_user_id("anon-124")
    assert ANONYMOUS_BASE <= one < 2 * ANONYMOUS_BASE


def test_parts_are_published_whole_and_a_dead_writers_temporary_is_swept(tmp_path: Path):
    root = tmp_path / "events"
    when = datetime(2026, 1, 2, 3, tzinfo=UTC)
    row = ("r", "click", 5, 0, "1", "u", when)  # FEEDBACK_SCHEMA's order
    path = store.write_part(root, ev.CLICK, [row], when)
    assert path.parent == root / "click" / "date=2026-01-02" / "hour=03"
    assert store.read_kind(tmp_path, ev.CLICK).to_pylist()[0]["item_id"] == 5
    dead = path.parent / f".part-{'a' * 32}.parquet.tmp-{2**22 + 12345}"
    live = path.parent / f".part-{'b' * 32}.parquet.tmp-{os.getppid()}"
    dead.write_bytes(b"half")
    live.write_bytes(b"someone else's, still writing")
    assert store.sweep_temporaries(root) == 1
    assert not dead.exists() and live.exists()
    assert store.part_files(tmp_path) == [path]


# -- binary mode and JSON batches: one validation, the same rows --------------------------------


async def _sink_client(data_dir: Path, **settings: Any) -> TestClient:
    """The sink's app on a loopback port of this process (flushed when the client closes)."""
    client = TestClient(TestServer(build_app(SinkSettings(data_dir=data_dir, **settings))))
    await client.start_server()
    return client


OCCURRED = datetime(2026, 5, 4, 3, 2, 1, 123456, tzinfo=UTC)


def _predictions() -> list[Prediction]:
    ns = int(OCCURRED.timestamp()) * 10**9 + OCCURRED.microsecond * 1000
    common = {"content_type": "application/json", "arrived": ns, "answered": ns + 1000,
              "endpoint": "movie-recommender-predictor-00002", "user_key": "anon-7"}  # fmt: skip
    request = b'{"instances": [ {"user_id": 42, "k": 3} ]}'  # spaces kept byte for byte
    response = b'{"model_version":"3","predictions":[{"content_ids":[9,8,7]}]}'
    return [
        Prediction("3f2a", request, response, **common),
        Prediction("3f2b", b"\xff not json", None, **common),  # a 400: its request only
    ]


def test_the_twins_batch_members_are_the_attributes_kserve_sends_plus_the_payload():
    emitter = EventEmitter("http://sink/", inference_service="movie-recommender", source="in")
    for p in _predictions():
        events = p.events()
        assert emitter._render(p) == b",".join(emitter.structured(e) for e in events)
        for event in events:
            member = json.loads(emitter.structured(event))
            assert base64.b64decode(member.pop("data_base64")) == event.body
            assert member.pop("datacontenttype") == event.content_type
            assert member == emitter.attributes(event)


def test_a_binary_event_and_the_same_event_in_the_twins_batch_store_identical_rows(tmp_path):
    predictions = _predictions()

    async def scenario() -> None:
        binary = await _sink_client(tmp_path / "binary")
        batched = await _sink_client(tmp_path / "batched")
        emitter = EventEmitter(
            str(batched.make_url("/")), inference_service="movie-recommender", source="ingress"
        )
        try:
            for event in (e for p in predictions for e in p.events()):  # as KServe: one POST each
                headers, body = emitter.binary(event)
                answer = await binary.post("/", data=body, headers=headers)
                assert answer.status == 200, await answer.text()
            await emitter.start()  # as the twin sends them: what its queue holds, one POST
            for p in predictions:
                kwargs = {"arrived": p.arrived, "endpoint": p.endpoint, "user_key": p.user_key}
                emitter.log(p.request_id, p.body, p.payload, content_type=p.content_type, **kwargs)
            await emitter.stop()
            assert (emitter.sent, emitter.batches, sum(emitter.dropped.values())) == (3, 1, 0)
        finally:
            await binary.close()
            await batched.close()

    asyncio.run(scenario())
    for kind in ev.PREDICTION_KINDS:
        one, other = (
            store.read_kind(tmp_path / d, kind).to_pylist() for d in ("binary", "batched")
        )
        for row in one + other:
            assert row.pop("received_at").tzinfo is not None
        if kind == ev.RESPONSE:  # the twin's response time is when it queued the prediction
            for row in one + other:
                assert row.pop("time") >= OCCURRED
        assert one == other and one
    rows = store.read_kind(tmp_path / "batched", ev.REQUEST).to_pylist()
    assert rows[0]["payload"] == predictions[0].body.decode() and rows[0]["user_key"] == "anon-7"
    assert rows[0]["time"] == OCCURRED
    assert rows[1]["payload"] == "\ufffd not json" and rows[1]["instances"] is None
    (response,) = store.read_kind(tmp_path / "batched", ev.RESPONSE).to_pylist()
    assert (response["request_id"], response["model_version"]) == ("3f2a", "3")
    assert response["item_ids"] == [9, 8, 7]


async def _metric(client: TestClient, name: str, **labels: str) -> float:
    text = await (await client.get("/metrics")).text()
    want = name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "} "
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(want))


def _rows(data_dir: Path, kind: str) -> list[dict[str, Any]]:
    return store.read_kind(data_dir, kind).to_pylist()


def _batch_event(i: int, **changes: Any) -> dict[str, Any]:
    event = {"specversion": "1.0", "id": f"e{i}", "type": ev.CE_RESPONSE_TYPE, "source": "test",
             "time": "2026-05-04T03:02:01Z", "inferenceservicename": "movie-recommender",
             "namespace": "ns", "component": "predictor", "endpoint": "", "metadata": "{}",
             "recordedtime": "2026-05-04T03:02:01Z", "datacontenttype": "application/json",
             "data": {"model_version": "7", "predictions": [{"content_ids": [i, 2]}]}}  # fmt: skip
    event.update(changes)
    return {k: v for k, v in event.items() if v is not None}


def test_a_batch_is_validated_whole_and_refused_whole_naming_the_index_and_attribute(tmp_path):
    batch_type = {"Content-Type": ev.CE_BATCH_CONTENT_TYPE}
    refused = [
        ([_batch_event(0), _batch_event(1, id="../x"), _batch_event(2)], "batch[1].id"),
        ([_batch_event(0), _batch_event(1, type="com.example.other")], "batch[1].type"),
        ([_batch_event(0, specversion=None)], "batch[0].specversion"),
        ([_batch_event(0, data_base64="aGk=")], "batch[0]"),  # data and data_base64
        ([_batch_event(0, data=None, data_base64="not base64!")], "batch[0].data_base64"),
        ([_batch_event(0, namespace=5)], "batch[0].namespace"),
        ({"events": []}, "batch"),
        ([_batch_event(i) for i in range(ev.MAX_CE_BATCH_EVENTS + 1)], "batch"),
    ]

    async def scenario() -> None:
        client = await _sink_client(tmp_path, max_request_bytes=1 << 20, max_buffered=5)
        try:
            for body, field in refused:
                answer = await client.post("/", data=json.dumps(body), headers=batch_type)
                text = await answer.text()
                assert answer.status == 400, (field, text)
                assert field in {f["field"] for f in json.loads(text)["fields"]}, (field, text)
            huge = json.dumps([_batch_event(0, data="x" * (1 << 20))])
            assert (await client.post("/", data=huge, headers=batch_type)).status == 413
            assert await _metric(client, ev.METRIC_RECEIVED, type="response") == 0
            # a batch counts against the buffer whole: 4 fit, the next 4 do not (429, none kept)
            four = json.dumps([_batch_event(i) for i in range(4)])
            ok = await client.post("/", data=four, headers=batch_type)
            assert (ok.status, await ok.json()) == (200, {"accepted": 4})
            full = await client.post("/", data=four, headers=batch_type)
            assert full.status == 429 and full.headers["Retry-After"] == "1"
            assert (await (await client.get("/healthz")).json())["buffered"] == 4
            assert await _metric(client, ev.METRIC_RECEIVED, type="response") == 8
            full = {"type": "response", "reason": "buffer_full"}
            assert await _metric(client, ev.METRIC_DROPPED, **full) == 4
            empty = await client.post("/", data="[]", headers=batch_type)  # valid, section 4.3
            assert (empty.status, await empty.json()) == (200, {"accepted": 0})
        finally:
            await client.close()

    asyncio.run(scenario())
    rows = store.read_kind(tmp_path, ev.RESPONSE).to_pylist()
    assert [r["request_id"] for r in rows] == ["e0", "e1", "e2", "e3"]
    assert rows[2]["item_ids"] == [2, 2] and rows[2]["model_version"] == "7"
    assert rows[2]["payload"] == '{"model_version":"7","predictions":[{"content_ids":[2,2]}]}'

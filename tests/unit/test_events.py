"""The event sink's pure parts: payload extraction, flood buckets, user ids, temporaries."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from contracts import events as ev
from pipelines.events import schema, store
from pipelines.events.sink import TokenBuckets
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
    assert parsed.kind == ev.RESPONSE and parsed.endpoint == ""
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
    row = {"request_id": "r", "type": "click", "item_id": 5, "position": 0,
           "model_version": "1", "user_id": "u", "received_at": when}  # fmt: skip
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

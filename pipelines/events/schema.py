"""What the sink accepts and what it stores: CloudEvent headers, feedback bodies, Parquet rows.

Prediction events are KServe's payload-logger CloudEvents in binary content mode (kserve
``pkg/logger/worker.go`` and ``handler.go`` at v0.20.0): headers ``ce-specversion: 1.0``,
``ce-id`` (the request's ``Ce-Id`` header or a fresh uuid; the request and the response event of
one prediction share it), ``ce-type`` (``org.kubeflow.serving.inference.request`` /
``.response``), ``ce-source`` (the agent's ``--source-uri``), ``ce-time``, the extensions
``ce-inferenceservicename``, ``ce-namespace``, ``ce-component``, ``ce-endpoint`` (may be empty),
``ce-metadata`` (JSON of the matched ``metadataHeaders``), ``ce-recordedtime`` and optionally
``ce-annotations``; ``Content-Type`` is the inference request's own (also for the response
event), the body is the payload. The logger sends a response event only for a 200.

The same events may also come as a JSON batch (``Content-Type: application/cloudevents-batch+json``,
CloudEvents JSON format 1.0.2 section 4 and HTTP binding section 3.3 "batched content mode"): an
array of structured-mode events whose members are the attributes above (``ce-`` dropped), plus
``datacontenttype`` and ``data``/``data_base64``. KServe never batches; the local ingress does,
to keep the prediction log cheap next to a Python proxy. Both modes go through one attribute
model (`CloudEventAttributes`) and one row builder (`prediction_row`), so they store the same rows.

Stored columns (one Parquet schema per kind, `ARROW_SCHEMAS`) let a reader join feedback to the
prediction by ``request_id`` and get the serving ``model_version``, the ``user_key`` and the
``item_ids`` in the order served (position = index); the raw payload is kept as text too.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, NotRequired

import orjson
import pyarrow as pa
from multidict import CIMultiDict, CIMultiDictProxy
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    with_config,
)
from typing_extensions import TypedDict  # pydantic needs this one below Python 3.12

from contracts import events as ev

_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
_VERSION = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_USER = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"

Text = Annotated[str, Field(max_length=512)]

NOPARSE: Any = object()  # `extract`: the payload has not been parsed yet


@with_config(ConfigDict(val_json_bytes="base64"))
class CloudEventAttributes(TypedDict):
    """The context attributes of one KServe inference CloudEvent — the only definition of them.

    Validated the same way however they arrived: from the ``ce-*`` headers of a binary-mode request
    (`cloud_event_headers`, what KServe's logger sends) or from the members of one event of a JSON
    batch (`StructuredCloudEvent`, what the local ingress sends). Unknown extensions
    (``recordedtime``, ``annotations``, ...) are ignored. A ``TypedDict`` rather than a model:
    pydantic-core validates it with no Python object per event, in half a model's time, and what
    comes out is a plain dict.
    """

    specversion: Literal["1.0"]
    id: Annotated[str, Field(pattern=_ID)]
    type: Literal[
        "org.kubeflow.serving.inference.request", "org.kubeflow.serving.inference.response"
    ]
    source: Annotated[str, Field(min_length=1, max_length=512)]
    time: NotRequired[datetime | None]  # a time without an offset is UTC (`prediction_row`)
    inferenceservicename: NotRequired[Text]
    namespace: NotRequired[Text]
    component: NotRequired[Text]
    endpoint: NotRequired[Text]
    metadata: NotRequired[Annotated[str, Field(max_length=8192)]]


def kind_of(attrs: CloudEventAttributes) -> str:
    """``request`` or ``response``: the kind (and folder) of a validated event."""
    return ev.CE_TYPE_KIND[attrs["type"]]


_HEADER_ATTRIBUTES: TypeAdapter[CloudEventAttributes] = TypeAdapter(CloudEventAttributes)
# binary mode: which header carries which attribute (looked up, not scanned: a request has many
# headers and only these matter)
_CE_HEADERS = tuple((ev.CE_HEADER_PREFIX + n, n) for n in CloudEventAttributes.__annotations__)


def cloud_event_headers(headers: Mapping[str, str]) -> CloudEventAttributes:
    """The ``ce-*`` headers of a request (case-insensitive), validated; `ValidationError`."""
    if not isinstance(headers, CIMultiDictProxy | CIMultiDict):
        headers = CIMultiDict(headers)
    found = {}
    for header, name in _CE_HEADERS:
        value = headers.get(header)
        if value is not None:
            found[name] = value
    return _HEADER_ATTRIBUTES.validate_python(found)


class StructuredCloudEvent(CloudEventAttributes):
    """One event of a ``application/cloudevents-batch+json`` body (CloudEvents JSON format 1.0.2,
    section 4 "JSON Batch Format": a JSON array of events in the JSON event format).

    The same attributes as binary mode, members of the object instead of ``ce-*`` headers, plus
    ``datacontenttype`` (binary mode's ``Content-Type``) and the payload: ``data_base64`` (the
    bytes, base64, decoded by pydantic-core; what the local ingress sends, so the stored payload is
    byte for byte the one binary mode would store) or ``data`` (a JSON value when
    ``datacontenttype`` is JSON or absent, else a string) — never both (section 3.1.1;
    `payload`).
    """

    datacontenttype: NotRequired[Annotated[str, Field(max_length=256)] | None]
    data: NotRequired[Any]
    data_base64: NotRequired[bytes | None]


def payload(event: StructuredCloudEvent) -> tuple[bytes, Any, str | None]:
    """A batch event's payload bytes, its parsed JSON document when already parsed (else
    `NOPARSE`), and its content type, as binary mode would have carried them. `ValueError` when
    it has both ``data`` and ``data_base64`` or a ``data`` that is not text where the content
    type is not JSON (section 3.1)."""
    content_type = event.get("datacontenttype")
    data = event.get("data_base64")
    if "data" not in event:
        return (b"" if data is None else data), NOPARSE, content_type
    if data is not None:
        raise ValueError("data and data_base64 are mutually exclusive")
    data = event["data"]
    if not _is_json(content_type):
        if data is not None and not isinstance(data, str):
            raise ValueError("data must be a string when datacontenttype is not JSON")
        return (data or "").encode(), NOPARSE, content_type
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.encode(), data, content_type or "application/json"


@functools.lru_cache(maxsize=64)
def _is_json(content_type: str | None) -> bool:
    """``*/json`` or ``*/*+json`` (parameters ignored); absent counts as JSON (section 3.1.2)."""
    if content_type is None:
        return True
    subtype = content_type.split(";", 1)[0].strip().lower().rpartition("/")[2]
    return subtype == "json" or subtype.endswith("+json")


CloudEventBatch: TypeAdapter[list[StructuredCloudEvent]] = TypeAdapter(
    Annotated[list[StructuredCloudEvent], Field(max_length=ev.MAX_CE_BATCH_EVENTS)]
)
"""Validates a whole batch body (JSON and base64 decoded in pydantic-core, no Python call per
event); errors are located ``(index, attribute)``. The payload rules are `payload`'s."""


def prediction_row(
    attrs: CloudEventAttributes,
    body: bytes,
    content_type: str | None,
    received_at: datetime,
    doc: Any = NOPARSE,
) -> tuple[Any, ...]:
    """The stored row of one request/response event, in `PREDICTION_SCHEMA`'s column order,
    whichever mode it came in: binary mode and a batch event with the same attributes and bytes
    give the same row."""
    kind = ev.CE_TYPE_KIND[attrs["type"]]
    get = attrs.get
    metadata = get("metadata") or None
    version, user, instances, items = _extract(kind, body, metadata, doc)
    occurred = get("time")
    if occurred is not None and occurred.tzinfo is None:
        occurred = occurred.replace(tzinfo=UTC)
    return (
        attrs["id"], kind, occurred, received_at, attrs["source"],
        get("inferenceservicename", ""), get("namespace", ""), get("component", ""),
        get("endpoint", ""), version, user, instances, items, content_type, metadata,
        body.decode("utf-8", errors="replace"),
    )  # fmt: skip


class FeedbackEvent(BaseModel):
    """One thing a user did with a recommendation the page showed."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    type: Literal["impression", "click"]
    request_id: Annotated[str, Field(pattern=_ID)]
    item_id: Annotated[int, Field(gt=0, lt=1 << 63)]
    position: Annotated[int, Field(ge=0, le=1000)]
    model_version: Annotated[str, Field(pattern=_VERSION)]
    user_id: Annotated[str, Field(pattern=_USER)]


def feedback_row(event: FeedbackEvent, received_at: datetime) -> tuple[Any, ...]:
    """The stored row of one feedback event, in `FEEDBACK_SCHEMA`'s column order."""
    return (
        event.request_id, event.type, event.item_id, event.position, event.model_version,
        event.user_id, received_at,
    )  # fmt: skip


class FeedbackBatch(BaseModel):
    """The body of ``POST /events/feedback``: 1..100 events."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    events: Annotated[list[FeedbackEvent], Field(min_length=1, max_length=ev.MAX_FEEDBACK_EVENTS)]


def describe(err: ValidationError, root: str = "") -> list[dict[str, str]]:
    """Each failing field (``events[3].position``; ``batch[3].id`` with ``root="batch"``) and
    why, for a 4xx body."""
    out = []
    for e in err.errors(include_url=False, include_input=False):
        field = root
        for part in e["loc"]:
            field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
        out.append({"field": field or "(body)", "error": e["msg"]})
    return out


# -- extraction from the V1 / V2 payloads -----------------------------------------------------


_INT = {int}


def _int_list(values: Any, limit: int = 1000) -> list[int]:
    """The integers of a JSON list, in order (bools and anything else left out)."""
    if not isinstance(values, list):
        return []
    values = values[:limit]
    if set(map(type, values)) <= _INT:  # the usual case, checked in C
        return values
    return [v for v in values if type(v) is int]


def _v2_tensor(doc: dict[str, Any], key: str, name: str) -> dict[str, Any] | None:
    for tensor in doc.get(key) or []:
        if isinstance(tensor, dict) and tensor.get("name") == name:
            return tensor
    return None


def _scalar_text(value: Any) -> str | None:
    """A JSON string or integer as text (at most 128 characters); else None (bools too)."""
    kind = type(value)
    if kind is str:
        return value if len(value) <= 128 else None
    if kind is int:
        text = str(value)
        return text if len(text) <= 128 else None
    return None


def extract(kind: str, body: bytes, metadata: str, doc: Any = NOPARSE) -> dict[str, Any]:
    """``model_version``, ``user_key``, ``item_ids``, ``instances`` from a prediction payload.

    V1 request ``{"instances": [{"user_id": 42, ...}]}``: the user key of the first instance;
    V1 response ``{"model_version": "3", "predictions": [{"content_ids": [...]}]}``: the first
    prediction's ids; V2 the ``user_id`` input / ``content_ids`` output's first row. A user key in
    the logger's metadata (the ``X-User-Id`` header) wins over the body's. What cannot be read is
    left null: the raw payload is stored anyway. ``doc``: the payload already parsed (a batch
    event's ``data``), else `NOPARSE` and ``body`` is parsed here.
    """
    version, user, instances, items = _extract(kind, body, metadata, doc)
    return {"model_version": version, "user_key": user, "item_ids": items, "instances": instances}


def _extract(
    kind: str, body: bytes, metadata: str | None, doc: Any
) -> tuple[str | None, str | None, int | None, list[int] | None]:
    """`extract` as ``(model_version, user_key, instances, item_ids)``: what `prediction_row`
    stores, without a dict per event."""
    version = user = instances = items = None
    if doc is NOPARSE:
        doc = _loads(body) if body else None
    if isinstance(doc, dict):
        version = _scalar_text(doc.get("model_version"))
        if kind == ev.REQUEST:
            rows = doc.get("instances")
            if isinstance(rows, list):
                instances = len(rows)
                if rows and isinstance(rows[0], dict):
                    user = _scalar_text(rows[0].get("user_id"))
            tensor = _v2_tensor(doc, "inputs", "user_id") if "inputs" in doc else None
            if tensor is not None:
                data = tensor.get("data") or []
                instances = len(data) if isinstance(data, list) else None
                if isinstance(data, list) and data and data[0] != -1:
                    user = _scalar_text(data[0])
        else:
            predictions = doc.get("predictions")
            if isinstance(predictions, list):
                instances = len(predictions)
                if predictions and isinstance(predictions[0], dict):
                    items = _int_list(predictions[0].get("content_ids"))
            tensor = _v2_tensor(doc, "outputs", "content_ids") if "outputs" in doc else None
            if tensor is not None:
                shape = tensor.get("shape") or []
                data = tensor.get("data") or []
                width = shape[1] if len(shape) == 2 and isinstance(shape[1], int) else len(data)
                instances = shape[0] if shape and isinstance(shape[0], int) else None
                items = [i for i in _int_list(data[:width]) if i >= 0]
    if metadata:
        found = _metadata_user(metadata)
        if found is not None:
            user = found
    return version, user, instances, items


def _loads(body: bytes) -> Any:
    """The JSON document, or None; orjson first (several times faster), the standard library for
    what orjson refuses and ``json`` accepts (NaN, integers beyond 64 bits)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None


@functools.lru_cache(maxsize=4096)  # a user's requests and responses repeat the same metadata
def _metadata_user(metadata: str) -> str | None:
    if not metadata or metadata == "{}":  # what the logger sends when no header matched
        return None
    doc = _loads(metadata.encode())
    if not isinstance(doc, dict):
        return None
    for key, values in doc.items():
        if key.lower() == ev.USER_ID_HEADER.lower() and isinstance(values, list) and values:
            value = values[0]
            if isinstance(value, str) and re.fullmatch(_USER, value):
                return value
    return None


# -- what is stored --------------------------------------------------------------------------

_TS = pa.timestamp("us", tz="UTC")

PREDICTION_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),  # ce-id
        pa.field("type", pa.string(), nullable=False),  # request | response
        pa.field("time", _TS),  # ce-time: when the request arrived / the response was made
        pa.field("received_at", _TS, nullable=False),
        pa.field("source", pa.string()),
        pa.field("inference_service", pa.string()),
        pa.field("namespace", pa.string()),
        pa.field("component", pa.string()),
        pa.field("endpoint", pa.string()),
        pa.field("model_version", pa.string()),  # the response's; null on request events
        pa.field("user_key", pa.string()),
        pa.field("instances", pa.int64()),
        pa.field("item_ids", pa.list_(pa.int64())),  # first prediction, best first
        pa.field("content_type", pa.string()),
        pa.field("metadata", pa.string()),
        pa.field("payload", pa.string()),  # the raw body (UTF-8, replacement for bad bytes)
    ]
)

FEEDBACK_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("type", pa.string(), nullable=False),  # impression | click
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("position", pa.int64(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("received_at", _TS, nullable=False),
    ]
)

ARROW_SCHEMAS = {
    ev.REQUEST: PREDICTION_SCHEMA,
    ev.RESPONSE: PREDICTION_SCHEMA,
    ev.IMPRESSION: FEEDBACK_SCHEMA,
    ev.CLICK: FEEDBACK_SCHEMA,
}

"""The event sink: an aiohttp app that buffers events and writes them as Parquet part files.

Routes (nothing else answers):

================================ ====== ===================================================
path                             method answer
================================ ====== ===================================================
``/``                            POST   one KServe payload-logger CloudEvent (binary mode,
                                        `pipelines.events.schema`): 200, 400 naming the
                                        header, 413, 415 (structured mode), 429 (buffer full);
                                        or a JSON batch of them (``Content-Type:
                                        application/cloudevents-batch+json``, at most
                                        ``MAX_CE_BATCH_EVENTS``): 200, 400 naming the index
                                        and attribute (nothing kept), 413, 429 (whole batch)
``/events/feedback``             POST   ``{"events": [...]}`` (1..100): 202, 400/422 naming
                                        the field (nothing written), 413, 429 (flood or full)
``/metrics``                     GET    Prometheus text (`contracts.events` names)
``/healthz``                     GET    ``{"status": "ok", "buffered": n}``
================================ ====== ===================================================

Memory is bounded: accepted events wait in per-kind buffers whose total (including a batch being
written) never passes ``max_buffered``; an event that would pass it is refused with 429 and
counted in ``movie_mlops_events_dropped_total{reason="buffer_full"}``. A background task writes a
kind's buffer when it holds ``flush_rows`` events, and every buffer every ``flush_seconds``, and
once more on shutdown (SIGTERM/SIGINT: aiohttp's graceful exit runs the cleanup). A ``kill -9``
loses at most the buffered events, which ``movie_mlops_events_buffered`` shows.

Feedback flooding: each client (the first ``X-Forwarded-For`` address, which the ingress and the
front end's nginx set — the sink is reachable only through them in the cluster (NetworkPolicy) —
else the peer address) has a token bucket of ``feedback_burst`` requests refilled at
``feedback_rate`` per second; an empty bucket is a 429 before the body is read. The table of
buckets holds at most ``max_clients`` entries (least recently seen evicted), so it is bounded too.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import ValidationError

from contracts import events as ev
from contracts.settings import MAX_REQUEST_BYTES
from pipelines.events import schema, store

log = logging.getLogger(__name__)

_MAX_VERSION_LABELS = 64  # distinct model_version label values before "other" (bounded series)
_ACCEPTED_ONE = b'{"accepted": 1}'  # the binary-mode answer, serialised once


@dataclass(frozen=True)
class SinkSettings:
    """Where the sink writes and how much it may hold."""

    data_dir: Path
    max_request_bytes: int = int(MAX_REQUEST_BYTES.default)
    max_buffered: int = 50_000
    flush_rows: int = 5_000
    flush_seconds: float = 2.0
    feedback_rate: float = 50.0
    feedback_burst: int = 100
    max_clients: int = 10_000


class Metrics:
    """The sink's Prometheus series, on a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.received = Counter(
            ev.METRIC_RECEIVED.removesuffix("_total"),
            "Valid events that reached the sink, by type.",
            ["type"],
            registry=self.registry,
        )
        self.written = Counter(
            ev.METRIC_WRITTEN.removesuffix("_total"),
            "Events published in a part file, by type.",
            ["type"],
            registry=self.registry,
        )
        self.dropped = Counter(
            ev.METRIC_DROPPED.removesuffix("_total"),
            "Valid events not written: buffer_full (answered 429) or write_error.",
            ["type", "reason"],
            registry=self.registry,
        )
        self.rejected = Counter(
            ev.METRIC_REJECTED.removesuffix("_total"),
            "Requests refused before their events were read: invalid, too_large, rate_limited.",
            ["route", "reason"],
            registry=self.registry,
        )
        self.feedback = Counter(
            ev.METRIC_FEEDBACK.removesuffix("_total"),
            "Feedback events accepted, by event and model version.",
            ["event", "model_version"],
            registry=self.registry,
        )
        self.buffered = Gauge(
            ev.METRIC_BUFFERED,
            "Events accepted and not yet on disk (what a kill -9 would lose).",
            registry=self.registry,
        )
        # every series exists from the start (rate() needs a zero); the children are kept, as
        # `labels()` costs more than the increment on the one-event-per-request path
        self.received_of = {kind: self.received.labels(type=kind) for kind in ev.KINDS}
        self.full_of = {k: self.dropped.labels(type=k, reason="buffer_full") for k in ev.KINDS}
        for kind in ev.KINDS:
            self.written.labels(type=kind)
        self._versions: set[str] = set()

    def version_label(self, version: str) -> str:
        if version in self._versions or len(self._versions) < _MAX_VERSION_LABELS:
            self._versions.add(version)
            return version
        return "other"


METRICS = web.AppKey("metrics", Metrics)


class TokenBuckets:
    """Per-client token buckets, at most ``max_clients`` of them (least recently seen go)."""

    def __init__(self, rate: float, burst: int, max_clients: int) -> None:
        self.rate, self.burst, self.max_clients = rate, float(burst), max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        allowed = tokens >= 1.0
        self._buckets[client] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return allowed

    def __len__(self) -> int:
        return len(self._buckets)


class Buffer:
    """Per-kind rows waiting to be written; ``pending`` counts them and a batch being written.

    A row is a tuple in its kind's schema order (`pipelines.events.schema`); the rows of one
    `add` share their receive time, and the hour partitions they fall in are kept as runs, so a
    write splits a kind's rows by hour without looking at each row.
    """

    def __init__(self, settings: SinkSettings, metrics: Metrics) -> None:
        self.settings, self.metrics = settings, metrics
        self.rows: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        # per kind: (the hour's start, the index of its first row) for each hour in the rows
        self.hours: dict[str, list[tuple[datetime, int]]] = defaultdict(list)
        self.pending = 0
        self.full_kind = asyncio.Event()
        metrics.buffered.set_function(lambda: self.pending)  # read at scrape time

    def room(self, n: int) -> bool:
        return self.pending + n <= self.settings.max_buffered

    def add(self, kind: str, rows: list[tuple[Any, ...]], received_at: datetime) -> None:
        held, hours = self.rows[kind], self.hours[kind]
        hour = received_at.replace(minute=0, second=0, microsecond=0)
        if not hours or hours[-1][0] != hour:
            hours.append((hour, len(held)))
        held.extend(rows)
        self.pending += len(rows)
        if len(held) >= self.settings.flush_rows:
            self.full_kind.set()

    async def flush(self, only_full: bool = False) -> int:
        """Write the buffers (only those at ``flush_rows`` when ``only_full``); rows written."""
        written = 0
        for kind in list(self.rows):
            rows = self.rows[kind]
            if not rows or (only_full and len(rows) < self.settings.flush_rows):
                continue
            hours = self.hours[kind]
            self.rows[kind], self.hours[kind] = [], []
            ends = [start for _, start in hours[1:]] + [len(rows)]
            for (hour, start), end in zip(hours, ends, strict=True):
                written += await self._write(kind, rows[start:end], hour)
        return written

    async def _write(self, kind: str, rows: list[tuple[Any, ...]], hour: datetime) -> int:
        """Publish one hour's rows of one kind as a part file; how many were written."""
        root = store.events_root(self.settings.data_dir)
        try:
            table = store.to_table(kind, rows)
            await asyncio.to_thread(store.publish_part, root, kind, table, hour)
        except Exception:  # a full or read-only disk: count the loss, keep serving
            log.exception("writing %d %s events failed; they are dropped", len(rows), kind)
            self.metrics.dropped.labels(type=kind, reason="write_error").inc(len(rows))
            return 0
        else:
            self.metrics.written.labels(type=kind).inc(len(rows))
            return len(rows)
        finally:
            self.pending -= len(rows)


def _client(request: web.Request) -> str:
    forwarded = request.headers.get("X-Forwarded-For", "")
    first = forwarded.split(",", 1)[0].strip()
    return first[:64] or (request.remote or "?")


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


async def _read(request: web.Request, limit: int) -> bytes | None:
    """The body, or None when it is larger than ``limit`` (counted as it arrives)."""
    length = request.content_length
    if length is not None:  # the usual case; aiohttp stops at client_max_size (= limit) too
        return None if length > limit else await request.read()
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _too_large(limit: int) -> web.Response:
    response = _error(413, f"body is larger than {limit} bytes (MAX_REQUEST_BYTES)")
    response.force_close()
    return response


def build_app(settings: SinkSettings) -> web.Application:
    """The sink's app; its buffers are flushed by a background task started with the app."""
    metrics = Metrics()
    buckets = TokenBuckets(settings.feedback_rate, settings.feedback_burst, settings.max_clients)
    app = web.Application(client_max_size=settings.max_request_bytes)
    buffer_key = web.AppKey("buffer", Buffer)
    flusher_key = web.AppKey("flusher", asyncio.Task)
    app[METRICS] = metrics  # for tests and benchmarks in-process

    async def flush_loop(buffer: Buffer) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(buffer.full_kind.wait(), settings.flush_seconds)
            full = buffer.full_kind.is_set()
            buffer.full_kind.clear()
            await buffer.flush(only_full=full)

    async def on_startup(app: web.Application) -> None:
        root = store.events_root(settings.data_dir)
        root.mkdir(parents=True, exist_ok=True)
        store.sweep_temporaries(root)
        app[buffer_key] = Buffer(settings, metrics)
        app[flusher_key] = asyncio.create_task(flush_loop(app[buffer_key]))
        log.info("event sink writing under %s", root)

    async def on_shutdown(app: web.Application) -> None:
        app[flusher_key].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await app[flusher_key]
        written = await app[buffer_key].flush()
        log.info("event sink stopped; %d buffered event(s) written on the way out", written)

    async def cloud_event(request: web.Request) -> web.Response:
        body = await _read(request, settings.max_request_bytes)
        if body is None:
            metrics.rejected.labels(route="cloudevent", reason="too_large").inc()
            return _too_large(settings.max_request_bytes)
        content_type = request.content_type
        if content_type == ev.CE_BATCH_CONTENT_TYPE:
            return cloud_event_batch(request.app[buffer_key], body)
        if content_type == ev.CE_STRUCTURED_CONTENT_TYPE:
            metrics.rejected.labels(route="cloudevent", reason="invalid").inc()
            return _error(
                415,
                "one structured-mode event is not accepted: send binary mode (ce-* headers) "
                f"or a batch ({ev.CE_BATCH_CONTENT_TYPE})",
            )
        try:
            attrs = schema.cloud_event_headers(request.headers)
        except ValidationError as err:
            metrics.rejected.labels(route="cloudevent", reason="invalid").inc()
            fields = [{**f, "field": f"ce-{f['field']}"} for f in schema.describe(err)]
            return _error(400, "not a KServe inference CloudEvent", fields=fields)
        kind = schema.kind_of(attrs)
        metrics.received_of[kind].inc()
        buffer = request.app[buffer_key]
        if not buffer.room(1):
            metrics.full_of[kind].inc()
            return _full()
        received_at = datetime.now(UTC)
        row = schema.prediction_row(attrs, body, request.headers.get("Content-Type"), received_at)
        buffer.add(kind, [row], received_at)
        return web.Response(body=_ACCEPTED_ONE, content_type="application/json")

    def cloud_event_batch(buffer: Buffer, body: bytes) -> web.Response:
        """A JSON batch: every event valid or none kept; room for all of them or none."""
        try:
            events = schema.CloudEventBatch.validate_json(body)
        except ValidationError as err:
            metrics.rejected.labels(route="cloudevent", reason="invalid").inc()
            fields = schema.describe(err, root="batch")
            names = ", ".join(dict.fromkeys(f["field"] for f in fields[:10]))
            return _error(400, f"invalid CloudEvent batch: {names}", fields=fields[:100])
        payloads = []
        for i, event in enumerate(events):
            try:
                payloads.append(schema.payload(event))
            except ValueError as err:  # data and data_base64 both, or a non-text data
                metrics.rejected.labels(route="cloudevent", reason="invalid").inc()
                fields = [{"field": f"batch[{i}]", "error": str(err)}]
                return _error(400, f"invalid CloudEvent batch: batch[{i}]", fields=fields)
        type_kind = ev.CE_TYPE_KIND
        kinds = [type_kind[event["type"]] for event in events]
        counts = collections.Counter(kinds)
        for kind, n in counts.items():
            metrics.received_of[kind].inc(n)
        if not buffer.room(len(events)):  # all or nothing: a batch is never split
            for kind, n in counts.items():
                metrics.full_of[kind].inc(n)
            return _full()
        received_at = datetime.now(UTC)
        rows: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        row = schema.prediction_row
        for event, kind, (data, doc, data_type) in zip(events, kinds, payloads, strict=True):
            rows[kind].append(row(event, data, data_type, received_at, doc))
        for kind, part in rows.items():
            buffer.add(kind, part, received_at)
        return web.json_response({"accepted": len(events)})

    async def feedback(request: web.Request) -> web.Response:
        if not buckets.take(_client(request)):
            metrics.rejected.labels(route="feedback", reason="rate_limited").inc()
            response = _error(429, "too many feedback requests from this client; slow down")
            response.headers["Retry-After"] = "1"
            return response
        body = await _read(request, settings.max_request_bytes)
        if body is None:
            metrics.rejected.labels(route="feedback", reason="too_large").inc()
            return _too_large(settings.max_request_bytes)
        try:
            batch = schema.FeedbackBatch.model_validate_json(body)
        except ValidationError as err:
            metrics.rejected.labels(route="feedback", reason="invalid").inc()
            fields = schema.describe(err)
            names = ", ".join(dict.fromkeys(f["field"] for f in fields))
            return _error(422, f"invalid feedback: {names}", fields=fields)
        now = datetime.now(UTC)
        rows: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
        for event in batch.events:
            rows[event.type].append(schema.feedback_row(event, now))
        for kind, part in rows.items():
            metrics.received_of[kind].inc(len(part))
        buffer = request.app[buffer_key]
        if not buffer.room(len(batch.events)):  # all or nothing: a batch is never split
            for kind, part in rows.items():
                metrics.full_of[kind].inc(len(part))
            return _full()
        for kind, part in rows.items():
            buffer.add(kind, part, now)
        for event in batch.events:
            version = metrics.version_label(event.model_version)
            metrics.feedback.labels(event=event.type, model_version=version).inc()
        return web.json_response({"accepted": len(batch.events)}, status=202)

    async def prometheus(_: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(metrics.registry))
        response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
        return response

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "buffered": request.app[buffer_key].pending})

    app.router.add_post("/", cloud_event)
    app.router.add_post(ev.FEEDBACK_PATH, feedback)
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/healthz", healthz)
    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    return app


def _full() -> web.Response:
    response = _error(429, "the event sink is full (writing cannot keep up); retry later")
    response.headers["Retry-After"] = "1"
    return response

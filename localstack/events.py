"""The local twin of KServe's payload logger: the ingress's CloudEvents to the event sink.

For every V1/V2 inference it proxies, the ingress hands `EventEmitter.log` the request and (for a
200) the response; they become two events that share one id (the ``X-Request-Id`` it assigned),
with the attributes
KServe 0.20's logger gives them (``pkg/logger/worker.go``: ``ce-type``
``org.kubeflow.serving.inference.request``/``.response``, extensions ``inferenceservicename``,
``namespace``, ``component``, ``endpoint``, ``metadata``, ``recordedtime``; the inference request's
``Content-Type`` on both).

Where KServe sends each event alone in binary content mode (`binary`: ``ce-*`` headers, the
payload as the body; one POST per event from a Go agent next to each replica), the twin sends
what its queue holds as JSON batches (``Content-Type: application/cloudevents-batch+json``,
CloudEvents JSON format 1.0.2 section 4; `structured` is one event of it): up to
``BATCH_EVENTS`` events or about ``BATCH_BYTES`` per POST. Why: here the proxy is one Python
process on a shared machine, and two extra HTTP requests per prediction cost about a fifth of its
throughput, where one request per few hundred events costs almost nothing. The payload travels as
``data_base64`` (the bytes proxied, exactly: a body that is not JSON is logged too), so the sink
stores the same row either way (tests/unit/test_events.py checks it).

Logging never delays or fails a prediction: `log` only puts one tuple per prediction on a
bounded queue (``put_nowait``; formatting happens in the senders) and ``SENDERS`` background tasks
deliver it — one at a time, given a prediction, waits ``LINGER_S`` (unless a full batch is
already queued) and takes what is queued then, while the other may be posting: under load one
POST carries hundreds of events, and an event reaches the sink within a fraction of a second
(which writes every 2 s anyway). Each event's JSON is put together from bytes (the constant
attributes rendered once, times formatted from integer nanoseconds, strings escaped by orjson):
on this 2-core machine the prediction log shares the cores with the proxy and the predictor, so
its cost per prediction is what `python -m bench events` compares.
A full queue, an unreachable sink or a refusal (429, 4xx) drops the events and counts them by
reason (`EventEmitter.prometheus_text`, served on the ingress's loopback-only ``/__local/metrics``).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import functools
import json
import logging
import time
from collections import Counter
from typing import NamedTuple

import aiohttp
import orjson

from contracts import events as ev

log = logging.getLogger(__name__)

QUEUE_SIZE = 5_000  # predictions (two events each)
SENDERS = 2
BATCH_EVENTS = 500  # per POST; the sink takes up to ev.MAX_CE_BATCH_EVENTS
BATCH_BYTES = 256 * 1024  # about, per POST (payloads counted as base64); well under 1 MiB
LINGER_S = 0.2  # a sender waits this long for company unless a full batch is already queued
_EVENT_OVERHEAD = 600  # bytes of attributes around each payload in a batch, about
SEND_TIMEOUT_S = 2.0
DRAIN_TIMEOUT_S = 2.0
_BATCH_HEADERS = {"Content-Type": ev.CE_BATCH_CONTENT_TYPE}


class LogEvent(NamedTuple):
    """One CloudEvent: what the ingress knew of a request or a response (times in ns since the
    epoch, `time.time_ns`)."""

    ce_type: str
    request_id: str
    body: bytes
    content_type: str
    occurred: int
    recorded: int
    endpoint: str
    user_key: str | None


class Prediction(NamedTuple):
    """What `EventEmitter.log` queues per prediction: its request and (for a 200) response."""

    request_id: str
    body: bytes
    payload: bytes | None  # None: not a 200, no response event (as KServe's logger)
    content_type: str
    arrived: int  # ns since the epoch
    answered: int
    endpoint: str
    user_key: str | None

    def events(self) -> list[LogEvent]:
        """The request event (at its arrival) and the response event (at its answer); both were
        recorded when the prediction was queued."""
        rid, answered, ctype, endpoint, user = (
            self.request_id, self.answered, self.content_type, self.endpoint, self.user_key
        )  # fmt: skip
        request = LogEvent(
            ev.CE_REQUEST_TYPE, rid, self.body, ctype, self.arrived, answered, endpoint, user
        )
        if self.payload is None:
            return [request]
        response = LogEvent(
            ev.CE_RESPONSE_TYPE, rid, self.payload, ctype, answered, answered, endpoint, user
        )
        return [request, response]


_second: tuple[int, bytes] = (-1, b"")


def _rfc3339(ns: int) -> bytes:
    """``2026-05-04T03:02:01.123456Z`` (microseconds, as KServe's ``time.Time``; the date and time
    of the current second are formatted once)."""
    global _second
    seconds, micros = divmod(ns // 1000, 1_000_000)
    if _second[0] != seconds:
        _second = (seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)).encode())
    return b"%s.%06dZ" % (_second[1], micros)


def rfc3339(ns: int) -> str:
    """`_rfc3339` as text."""
    return _rfc3339(ns).decode()


@functools.lru_cache(maxsize=4096)
def _metadata(user_key: str | None) -> str:
    """The ``metadata`` extension: the matched ``metadataHeaders`` as JSON (cached: a request and
    its response, and a user's next predictions, have the same)."""
    return json.dumps({ev.USER_ID_HEADER: [user_key]} if user_key else {}, separators=(",", ":"))


@functools.lru_cache(maxsize=4096)
def _json_string(text: str) -> bytes:
    """``text`` as a JSON string (cached: endpoints, content types and metadata repeat)."""
    return json.dumps(text).encode()  # ASCII: a header's odd characters are escaped


@functools.lru_cache(maxsize=4096)
def _shared(endpoint: str, user_key: str | None, content_type: str) -> bytes:
    """The members a prediction's events have in common but ``recordedtime``, as JSON."""
    return b'"endpoint":%s,"%s":%s,"datacontenttype":%s,' % (
        _json_string(endpoint), ev.CE_METADATA.encode(), _json_string(_metadata(user_key)),
        _json_string(content_type),
    )  # fmt: skip


# one event of a batch: the constant attributes, id, type, time, the shared members, recordedtime
# and the payload (what `EventEmitter.attributes` holds, plus datacontenttype and data_base64)
_EVENT = (
    b'%s"id":%s,"type":"%s","time":"%s",%s"'
    + ev.CE_RECORDED_TIME.encode()
    + (b'":"%s","data_base64":"%s"}')
)
_PAIR = _EVENT + b"," + _EVENT  # a request and its response
_REQUEST, _RESPONSE = ev.CE_REQUEST_TYPE.encode(), ev.CE_RESPONSE_TYPE.encode()


class EventEmitter:
    """A bounded queue of predictions and the tasks that send their CloudEvents to the sink."""

    def __init__(
        self,
        url: str,
        *,
        inference_service: str,
        source: str,
        namespace: str = "local",
        queue_size: int = QUEUE_SIZE,
        senders: int = SENDERS,
        batch_events: int = BATCH_EVENTS,
        batch_bytes: int = BATCH_BYTES,
        linger: float = LINGER_S,
    ) -> None:
        self.url = url.rstrip("/") + "/"
        self.inference_service, self.source, self.namespace = inference_service, source, namespace
        # a deque and an Event rather than an asyncio.Queue: `log` is one append and a flag
        # check, where Queue.put_nowait and task_done cost a microsecond each per prediction
        self._queue: collections.deque[Prediction] = collections.deque()
        self._queued_events = 0
        self._waiting = asyncio.Event()
        self._inflight = 0  # predictions taken by a sender and not yet answered for
        self.queue_size = queue_size
        self.senders = senders
        self.batch_events, self.batch_bytes, self.linger = batch_events, batch_bytes, linger
        self._constant = {
            "specversion": ev.CE_SPECVERSION,
            "source": source,
            "inferenceservicename": inference_service,
            "namespace": namespace,
            "component": "predictor",
        }
        self._head = orjson.dumps(self._constant)[:-1] + b","  # '{"specversion":"1.0",...,'
        self.sent = 0
        self.batches = 0
        self.dropped: Counter[str] = Counter({"queue_full": 0, "send_failed": 0, "rejected": 0})
        self._tasks: list[asyncio.Task[None]] = []
        self._collecting = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None

    # -- producing (on the request path: never awaits) ----------------------------------------

    def log(
        self,
        request_id: str,
        body: bytes,
        payload: bytes | None,
        *,
        content_type: str,
        arrived: int,
        endpoint: str,
        user_key: str | None,
    ) -> None:
        """Queue one prediction (``payload`` None: no response event); when the queue is full,
        count its events dropped and return at once."""
        events = 1 if payload is None else 2
        if len(self._queue) >= self.queue_size:
            self.dropped["queue_full"] += events
            return
        content_type = content_type or "application/json"
        now = time.time_ns()
        self._queue.append(
            Prediction(request_id, body, payload, content_type, arrived, now, endpoint, user_key)
        )
        self._queued_events += events
        if not self._waiting.is_set():
            self._waiting.set()

    # -- the two renditions of one event ----------------------------------------------------

    def attributes(self, event: LogEvent) -> dict[str, str]:
        """The CloudEvent attributes KServe's logger would give this event."""
        return {
            **self._constant,
            "id": event.request_id,
            "type": event.ce_type,
            "time": rfc3339(event.occurred),
            "endpoint": event.endpoint,
            ev.CE_METADATA: _metadata(event.user_key),
            ev.CE_RECORDED_TIME: rfc3339(event.recorded),
        }

    def binary(self, event: LogEvent) -> tuple[dict[str, str], bytes]:
        """The event as KServe sends it: binary content mode, headers and body of one POST."""
        headers = {ev.CE_HEADER_PREFIX + k: v for k, v in self.attributes(event).items()}
        headers["Content-Type"] = event.content_type
        return headers, event.body

    def structured(self, event: LogEvent) -> bytes:
        """The event as one element of a JSON batch (structured mode, payload base64): the
        `attributes`, ``datacontenttype`` and ``data_base64``."""
        return _EVENT % (
            self._head, orjson.dumps(event.request_id), event.ce_type.encode(),
            _rfc3339(event.occurred),
            _shared(event.endpoint, event.user_key, event.content_type),
            _rfc3339(event.recorded), base64.b64encode(event.body),
        )  # fmt: skip

    def _render(self, p: Prediction) -> bytes:
        """A prediction's events (`Prediction.events`) as `structured` renders them, joined by a
        comma: what they share is formatted once."""
        rid, answered = orjson.dumps(p.request_id), _rfc3339(p.answered)
        shared, head = _shared(p.endpoint, p.user_key, p.content_type), self._head
        request_time, request = _rfc3339(p.arrived), base64.b64encode(p.body)
        if p.payload is None:
            return _EVENT % (head, rid, _REQUEST, request_time, shared, answered, request)
        return _PAIR % (
            head, rid, _REQUEST, request_time, shared, answered, request,
            head, rid, _RESPONSE, answered, shared, answered, base64.b64encode(p.payload),
        )  # fmt: skip

    # -- sending --------------------------------------------------------------------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.senders, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=SEND_TIMEOUT_S, connect=0.5),
        )
        self._tasks = [asyncio.create_task(self._send_loop()) for _ in range(self.senders)]

    async def stop(self) -> None:
        """Send what is queued (for at most ``DRAIN_TIMEOUT_S``), then stop; the rest is dropped."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while (self._queue or self._inflight) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.dropped["send_failed"] += self._queued_events
        self._queue.clear()
        self._queued_events = 0
        if self._session is not None:
            await self._session.close()

    def _take_batch(self) -> tuple[bytes, int, int]:
        """A batch body of what is queued, up to the batch's event and byte budgets; its events
        and predictions."""
        queue, parts = self._queue, []
        events = size = 0
        while queue and events < self.batch_events and size < self.batch_bytes:
            p = queue.popleft()
            parts.append(self._render(p))
            if p.payload is None:
                events += 1
                size += len(p.body) * 4 // 3 + _EVENT_OVERHEAD
            else:
                events += 2
                size += (len(p.body) + len(p.payload)) * 4 // 3 + 2 * _EVENT_OVERHEAD
        self._queued_events -= events
        return b"[" + b",".join(parts) + b"]", events, len(parts)

    async def _send_loop(self) -> None:
        assert self._session is not None
        while True:
            async with self._collecting:  # one sender collects while the other may be posting
                while not self._queue:
                    self._waiting.clear()
                    await self._waiting.wait()
                if self.linger and self._queued_events < self.batch_events:
                    await asyncio.sleep(self.linger)  # under load: hundreds of events per POST
                body, events, predictions = self._take_batch()
                self._inflight += predictions
            outcome = "send_failed"  # unless the sink answers (a cancelled send stays this)
            try:
                async with self._session.post(
                    self.url, data=body, headers=_BATCH_HEADERS
                ) as response:
                    await response.read()
                    outcome = "sent" if response.status < 300 else "rejected"
                    if outcome == "rejected":
                        log.debug("the sink refused %d events: %s", events, response.status)
            except (aiohttp.ClientError, TimeoutError) as err:
                log.debug("%d events not delivered: %s", events, err)
            except Exception:  # a bug here must not stop the log: count, say, go on
                log.exception("%d events not delivered", events)
            finally:
                self._inflight -= predictions
                if outcome == "sent":
                    self.sent += events
                    self.batches += 1
                else:
                    self.dropped[outcome] += events

    # -- reporting ------------------------------------------------------------------------

    def prometheus_text(self) -> str:
        """The emitter's counters in Prometheus' text format."""
        lines = [
            f"# HELP {ev.METRIC_INGRESS_EMITTED} Prediction events the sink accepted.",
            f"# TYPE {ev.METRIC_INGRESS_EMITTED} counter",
            f"{ev.METRIC_INGRESS_EMITTED} {self.sent}",
            f"# HELP {ev.METRIC_INGRESS_BATCHES} Batches (POSTs) the sink accepted.",
            f"# TYPE {ev.METRIC_INGRESS_BATCHES} counter",
            f"{ev.METRIC_INGRESS_BATCHES} {self.batches}",
            f"# HELP {ev.METRIC_INGRESS_DROPPED} Prediction events not delivered, by reason.",
            f"# TYPE {ev.METRIC_INGRESS_DROPPED} counter",
            *(
                f'{ev.METRIC_INGRESS_DROPPED}{{reason="{reason}"}} {n}'
                for reason, n in sorted(self.dropped.items())
            ),
            f"# HELP {ev.METRIC_INGRESS_QUEUED} Prediction events waiting to be sent.",
            f"# TYPE {ev.METRIC_INGRESS_QUEUED} gauge",
            f"{ev.METRIC_INGRESS_QUEUED} {self._queued_events}",
        ]
        return "\n".join(lines) + "\n"

"""The local twin of KServe's payload logger: the ingress's CloudEvents to the event sink.

For every V1/V2 inference it proxies, the ingress hands `EventEmitter.emit` a request and (for a
200) a response event that share one id (the ``X-Request-Id`` it assigned), with the attributes
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

Logging never delays or fails a prediction: `emit` only puts the event on a bounded queue
(``put_nowait``; formatting happens in the senders) and ``SENDERS`` background tasks deliver it —
one at a time, given an event, waits ``LINGER_S`` (unless a full batch is already queued) and
takes what is queued then, while the other may be posting: under load one POST carries hundreds
of events, and an event reaches the sink within a fraction of a second (which writes every 2 s
anyway).
A full queue, an unreachable sink or a refusal (429, 4xx) drops the events and counts them by
reason (`EventEmitter.prometheus_text`, served on the ingress's loopback-only ``/__local/metrics``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import logging
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
import orjson

from contracts import events as ev

log = logging.getLogger(__name__)

QUEUE_SIZE = 10_000
SENDERS = 2
BATCH_EVENTS = 500  # per POST; the sink takes up to ev.MAX_CE_BATCH_EVENTS
BATCH_BYTES = 256 * 1024  # about, per POST (payloads counted as base64); well under 1 MiB
LINGER_S = 0.2  # a sender waits this long for company unless a full batch is already queued
_EVENT_OVERHEAD = 600  # bytes of attributes around each payload in a batch, about
SEND_TIMEOUT_S = 2.0
DRAIN_TIMEOUT_S = 2.0
_BATCH_HEADERS = {"Content-Type": ev.CE_BATCH_CONTENT_TYPE}


@dataclass(frozen=True, slots=True)
class LogEvent:
    """One event waiting to be sent: what the ingress knew when it emitted it."""

    ce_type: str
    request_id: str
    body: bytes
    content_type: str
    occurred: datetime
    recorded: datetime
    endpoint: str
    user_key: str | None


def _rfc3339(ts: datetime) -> str:
    """``2026-05-04T03:02:01.123456Z`` (formatted by hand: a third of strftime's cost)."""
    ts = ts if ts.tzinfo is UTC else ts.astimezone(UTC)
    return (
        f"{ts.year:04d}-{ts.month:02d}-{ts.day:02d}T{ts.hour:02d}:{ts.minute:02d}:"
        f"{ts.second:02d}.{ts.microsecond:06d}Z"
    )


@functools.lru_cache(maxsize=4096)
def _metadata(user_key: str | None) -> str:
    """The ``metadata`` extension: the matched ``metadataHeaders`` as JSON (cached: a request and
    its response, and a user's next predictions, have the same)."""
    return json.dumps({ev.USER_ID_HEADER: [user_key]} if user_key else {}, separators=(",", ":"))


class EventEmitter:
    """A bounded queue of CloudEvents and the tasks that send them to the sink in batches."""

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
        self.queue: asyncio.Queue[LogEvent] = asyncio.Queue(maxsize=queue_size)
        self.senders = senders
        self.batch_events, self.batch_bytes, self.linger = batch_events, batch_bytes, linger
        self._constant = {
            "specversion": ev.CE_SPECVERSION,
            "source": source,
            "inferenceservicename": inference_service,
            "namespace": namespace,
            "component": "predictor",
        }
        self.sent = 0
        self.batches = 0
        self.dropped: Counter[str] = Counter({"queue_full": 0, "send_failed": 0, "rejected": 0})
        self._tasks: list[asyncio.Task[None]] = []
        self._collecting = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None

    # -- producing (on the request path: never awaits) ----------------------------------------

    def emit(
        self,
        ce_type: str,
        request_id: str,
        body: bytes,
        *,
        content_type: str,
        occurred: datetime,
        endpoint: str,
        user_key: str | None,
    ) -> None:
        """Queue one event; when the queue is full, count it dropped and return at once."""
        event = LogEvent(
            ce_type, request_id, body, content_type or "application/json", occurred,
            datetime.now(UTC), endpoint, user_key,
        )  # fmt: skip
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped["queue_full"] += 1

    # -- the two renditions of one event ----------------------------------------------------

    def attributes(self, event: LogEvent) -> dict[str, str]:
        """The CloudEvent attributes KServe's logger would give this event."""
        return {
            **self._constant,
            "id": event.request_id,
            "type": event.ce_type,
            "time": _rfc3339(event.occurred),
            "endpoint": event.endpoint,
            ev.CE_METADATA: _metadata(event.user_key),
            ev.CE_RECORDED_TIME: _rfc3339(event.recorded),
        }

    def binary(self, event: LogEvent) -> tuple[dict[str, str], bytes]:
        """The event as KServe sends it: binary content mode, headers and body of one POST."""
        headers = {ev.CE_HEADER_PREFIX + k: v for k, v in self.attributes(event).items()}
        headers["Content-Type"] = event.content_type
        return headers, event.body

    def structured(self, event: LogEvent) -> dict[str, str]:
        """The event as one element of a JSON batch (structured mode, payload base64)."""
        out = self.attributes(event)
        out["datacontenttype"] = event.content_type
        out["data_base64"] = base64.b64encode(event.body).decode("ascii")
        return out

    # -- sending --------------------------------------------------------------------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.senders, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=SEND_TIMEOUT_S, connect=0.5),
        )
        self._tasks = [asyncio.create_task(self._send_loop()) for _ in range(self.senders)]

    async def stop(self) -> None:
        """Send what is queued (for at most ``DRAIN_TIMEOUT_S``), then stop; the rest is dropped."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.queue.join(), DRAIN_TIMEOUT_S)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.dropped["send_failed"] += self.queue.qsize()
        if self._session is not None:
            await self._session.close()

    def _take_batch(self, first: LogEvent) -> list[LogEvent]:
        """``first`` and whatever else is queued, up to the batch's event and byte budgets."""
        batch = [first]
        size = len(first.body) * 4 // 3 + _EVENT_OVERHEAD
        queue = self.queue
        while len(batch) < self.batch_events and size < self.batch_bytes and not queue.empty():
            event = queue.get_nowait()
            batch.append(event)
            size += len(event.body) * 4 // 3 + _EVENT_OVERHEAD
        return batch

    async def _send_loop(self) -> None:
        assert self._session is not None
        while True:
            async with self._collecting:  # one sender collects while the other may be posting
                first = await self.queue.get()
                if self.linger and self.queue.qsize() < self.batch_events:
                    await asyncio.sleep(self.linger)  # under load: hundreds of events per POST
                batch = self._take_batch(first)
            try:
                body = orjson.dumps([self.structured(e) for e in batch])
                async with self._session.post(
                    self.url, data=body, headers=_BATCH_HEADERS
                ) as response:
                    await response.read()
                    if response.status < 300:
                        self.sent += len(batch)
                        self.batches += 1
                    else:
                        self.dropped["rejected"] += len(batch)
                        log.debug("the sink refused %d events: %s", len(batch), response.status)
            except (aiohttp.ClientError, TimeoutError) as err:
                self.dropped["send_failed"] += len(batch)
                log.debug("%d events not delivered: %s", len(batch), err)
            except Exception:  # a bug here must not stop the log: count, say, go on
                self.dropped["send_failed"] += len(batch)
                log.exception("%d events not delivered", len(batch))
            finally:
                for _ in batch:
                    self.queue.task_done()

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
            f"{ev.METRIC_INGRESS_QUEUED} {self.queue.qsize()}",
        ]
        return "\n".join(lines) + "\n"

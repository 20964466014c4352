"""The local twin of KServe's payload logger: the ingress's CloudEvents to the event sink.

For every V1/V2 inference it proxies, the ingress hands `EventEmitter.emit` a request and (for a
200) a response event that share one id (the ``X-Request-Id`` it assigned); they are sent as KServe
0.20's logger sends them (``pkg/logger/worker.go``: binary content mode, ``ce-type``
``org.kubeflow.serving.inference.request``/``.response``, extensions ``inferenceservicename``,
``namespace``, ``component``, ``endpoint``, ``metadata``, ``recordedtime``; the inference request's
``Content-Type`` on both), so the sink cannot tell the twin from a cluster.

Logging never delays or fails a prediction: `emit` only puts the event on a bounded queue
(``put_nowait``) and background sender tasks deliver it. A full queue, an unreachable sink or a
refusal (429) drops the event and counts it by reason (`EventEmitter.prometheus_text`, served on
the ingress's loopback-only ``/__local/metrics``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp

from contracts import events as ev

log = logging.getLogger(__name__)

QUEUE_SIZE = 10_000
SENDERS = 4
SEND_TIMEOUT_S = 2.0
DRAIN_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class LogEvent:
    """One event waiting to be sent: its CloudEvent headers and payload."""

    headers: dict[str, str]
    body: bytes


def _rfc3339(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class EventEmitter:
    """A bounded queue of CloudEvents and the tasks that send them to the sink."""

    def __init__(
        self,
        url: str,
        *,
        inference_service: str,
        source: str,
        namespace: str = "local",
        queue_size: int = QUEUE_SIZE,
        senders: int = SENDERS,
    ) -> None:
        self.url = url.rstrip("/") + "/"
        self.inference_service, self.source, self.namespace = inference_service, source, namespace
        self.queue: asyncio.Queue[LogEvent] = asyncio.Queue(maxsize=queue_size)
        self.senders = senders
        self.sent = 0
        self.dropped: Counter[str] = Counter({"queue_full": 0, "send_failed": 0, "rejected": 0})
        self._tasks: list[asyncio.Task[None]] = []
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
        metadata = {ev.USER_ID_HEADER: [user_key]} if user_key else {}
        headers = {
            "ce-specversion": ev.CE_SPECVERSION,
            "ce-id": request_id,
            "ce-type": ce_type,
            "ce-source": self.source,
            "ce-time": _rfc3339(occurred),
            "ce-inferenceservicename": self.inference_service,
            "ce-namespace": self.namespace,
            "ce-component": "predictor",
            "ce-endpoint": endpoint,
            "ce-metadata": json.dumps(metadata, separators=(",", ":")),
            "ce-recordedtime": _rfc3339(datetime.now(UTC)),
            "Content-Type": content_type or "application/json",
        }
        try:
            self.queue.put_nowait(LogEvent(headers, body))
        except asyncio.QueueFull:
            self.dropped["queue_full"] += 1

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

    async def _send_loop(self) -> None:
        assert self._session is not None
        while True:
            event = await self.queue.get()
            try:
                async with self._session.post(
                    self.url, data=event.body, headers=event.headers
                ) as response:
                    await response.read()
                    if response.status < 300:
                        self.sent += 1
                    else:
                        self.dropped["rejected"] += 1
            except (aiohttp.ClientError, TimeoutError) as err:
                self.dropped["send_failed"] += 1
                log.debug("event %s not delivered: %s", event.headers["ce-id"], err)
            finally:
                self.queue.task_done()

    # -- reporting ------------------------------------------------------------------------

    def prometheus_text(self) -> str:
        """The emitter's counters in Prometheus' text format."""
        lines = [
            f"# HELP {ev.METRIC_INGRESS_EMITTED} Prediction events the sink accepted.",
            f"# TYPE {ev.METRIC_INGRESS_EMITTED} counter",
            f"{ev.METRIC_INGRESS_EMITTED} {self.sent}",
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

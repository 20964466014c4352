"""What one client may cost the predictor: body size, time to send a request, header size.

KServe's REST server (uvicorn + FastAPI) reads a whole request body into memory and decodes it
before the model can refuse it, with no limit on its size, no deadline for a client to finish
sending a request and no limit on its headers (httptools, which uvicorn uses when installed, has
none; h11's ``h11_max_incomplete_event_size`` does not apply to it). Measured before these
limits (``make bench``, serving): a stream of 50 MB JSON bodies took the predictor from 296 MB
to 1,011 MB RSS (past the dev overlay's 512 Mi limit; 392 MB once it ended), was answered 200,
and put other requests' p99 at 0.9 s (max 2.1 s); a client sending one header byte a second
held its connection for good. With them: 298 -> 300 MB, every such request 413, p99 11 ms
(7.5 ms without the abuse). Here:

- `RequestBodyLimit` (ASGI middleware, before anything reads the body): a ``Content-Length``
  over ``max_bytes`` is answered 413 without reading any of the body; a body without one
  (``Transfer-Encoding: chunked``) is counted as it streams and answered 413 as soon as it
  passes ``max_bytes``. What the client still sends is discarded by uvicorn as it arrives
  (never buffered), within the read deadline below;
- `read_limited_protocol`: uvicorn's httptools protocol with a deadline for reading each
  request, headers and body, from its first byte (a fresh connection: from the connect), and a
  cap on header bytes. A client still sending when the deadline passes is answered 408 (or,
  with the body half read, cut off); headers over the cap are answered 431;
- the number of connections and requests in progress is capped by uvicorn's
  ``limit_concurrency`` (set in `model_server.server`): past it, a request is answered 503.

Every refusal is counted in ``movie_recommender_rejected_requests_total{reason}`` and logged
as one line (`model_server.server.report`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from model_server.errors import Rejection

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024  # request line and headers; KServe's clients send well under 1 KiB
DEFAULT_READ_TIMEOUT_S = 10.0
DEFAULT_LIMIT_CONCURRENCY = 64

_STATUS_LINES = {
    408: b"HTTP/1.1 408 Request Timeout\r\n",
    431: b"HTTP/1.1 431 Request Header Fields Too Large\r\n",
}

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Respond = Callable[[Rejection], Any]  # -> an ASGI app that sends the rejection


def body_too_large(max_bytes: int, detail: str) -> Rejection:
    """The 413 of a body over ``max_bytes`` (``detail`` says how it was found out)."""
    return Rejection(
        413,
        "body_too_large",
        f"request body is larger than {max_bytes} bytes ({detail}); the limit is "
        "MAX_REQUEST_BYTES / --max_request_bytes",
    )


class RequestBodyLimit:
    """Refuses a request body over ``max_bytes`` with 413 before it is read whole.

    ``respond`` turns the rejection into the response (counted and logged like every other
    rejection, with ``X-Model-Version``).
    """

    def __init__(self, app: Any, max_bytes: int, respond: Respond) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.respond = respond

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _content_length(scope["headers"])
        if length is not None:
            if length > self.max_bytes:
                rejection = body_too_large(self.max_bytes, f"Content-Length is {length}")
                await self.respond(rejection)(scope, receive, send)
                return
            # the HTTP parser delivers exactly Content-Length bytes: nothing more to check
            await self.app(scope, receive, send)
            return
        body = await self._read_counted(receive)
        if body is None:  # the client went away before the body ended: nobody to answer
            return
        if len(body) > self.max_bytes:
            rejection = body_too_large(self.max_bytes, "counted as it streamed")
            await self.respond(rejection)(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read_counted(self, receive: Receive) -> bytearray | None:
        """The body (no Content-Length: chunked, or none), cut short once it is over the limit."""
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            if len(body) > self.max_bytes or not message.get("more_body", False):
                return body


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:  # the parser refuses these before the app; never trust it here
                return None
    return None


def _replay(body: bytearray, receive: Receive) -> Receive:
    """A ``receive`` that yields the already read body once, then the client's own events."""
    pending: list[Message] = [{"type": "http.request", "body": bytes(body), "more_body": False}]

    async def replayed() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replayed


def read_limited_protocol(
    read_timeout: float,
    on_refused: Callable[[Rejection], None],
    max_header_bytes: int = MAX_HEADER_BYTES,
) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with a read deadline per request and a header-size cap.

    Hooks uvicorn 0.54's `HttpToolsProtocol` callbacks (the connection's and the parser's);
    what the protocol does with a request it accepts is unchanged. A deadline is armed when a
    connection opens and when the first byte of a request arrives, and disarmed when the
    request (its body included) has been read; between requests uvicorn's own keep-alive
    timeout (``--timeout-keep-alive``) applies.
    """
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class ReadLimitedProtocol(HttpToolsProtocol):
        _read_timer: asyncio.TimerHandle | None = None
        _in_headers = True  # reading a request line or headers (or waiting for them)
        _received = 0  # bytes received while reading headers (at most one read too many)
        _header_bytes = 0  # request line and headers as parsed so far
        _begun = False  # a byte of the current request has arrived
        _refused = False  # answered and closing: the parser's further callbacks are ignored

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self._in_headers:
                self._received += len(data)
            super().data_received(data)
            # headers still arriving after many reads: refuse before they are all buffered
            if self._in_headers and self._received > max_header_bytes and not self._refused:
                self._refuse(self._headers_too_large())

        def on_message_begin(self) -> None:
            if self._refused:
                return
            super().on_message_begin()
            self._begun, self._header_bytes = True, 0
            if self._read_timer is None:
                self._arm()

        def on_url(self, url: bytes) -> None:
            self._header_bytes += len(url)
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._header_bytes += len(name) + len(value) + 4  # ": " and CRLF
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            if self._refused:
                return
            self._in_headers, self._received = False, 0
            if self._header_bytes > max_header_bytes:  # they came in one read
                self._refuse(self._headers_too_large())
                return
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            if not self._refused:
                super().on_body(body)

        def on_message_complete(self) -> None:
            if self._refused:
                return
            super().on_message_complete()
            self._disarm()
            self._in_headers, self._begun = True, False

        def _arm(self) -> None:
            self._read_timer = self.loop.call_later(read_timeout, self._timed_out)

        def _disarm(self) -> None:
            if self._read_timer is not None:
                self._read_timer.cancel()
                self._read_timer = None

        def _timed_out(self) -> None:
            self._read_timer = None
            if self.transport.is_closing():
                return
            if not self._begun:  # opened and never used: close quietly, as a keep-alive does
                self.transport.close()
                return
            self._refuse(
                Rejection(
                    408,
                    "request_timeout",
                    f"the client did not finish sending its request within {read_timeout:g} s",
                )
            )

        def _headers_too_large(self) -> Rejection:
            return Rejection(
                431,
                "headers_too_large",
                f"request line and headers are over {max_header_bytes} bytes",
            )

        def _refuse(self, rejection: Rejection) -> None:
            """Answer ``rejection`` and close, or just close while the app reads this request."""
            on_refused(rejection)
            self._disarm()
            self._refused = True
            cycle = self.cycle
            if cycle is None or cycle.response_complete:  # nobody else writes on this connection
                body = json.dumps({"error": rejection.message}).encode()
                head = (
                    b"content-type: application/json\r\n"
                    b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
                )
                self.transport.write(_STATUS_LINES[rejection.status] + head + body)
            self.transport.close()

    return ReadLimitedProtocol

"""The HTTP side of the sandbox: TMDB's routes, envelopes and errors, plus `/__sandbox/*` control.

Routes (TMDB API v3 shape):

- ``GET /3/movie/popular?page=N&language=..&region=..`` — 20 results a page, pages 1..500
- ``GET /3/genre/movie/list?language=..`` — ``{"genres": [{"id", "name"}]}``

Control (``Authorization: Bearer <control token>``, a token of its own: whoever holds the TMDB
credential the crawler uses must not be able to change what the sandbox answers; health is open
for probes):

- ``GET /__sandbox/health`` — ``{"status": "ok"}`` (no token)
- ``GET /__sandbox/stats`` — request counts per endpoint, page and status
- ``GET|PUT /__sandbox/faults`` — read or replace the fault configuration (JSON `Faults`, at
  most 64 KiB)
- ``POST /__sandbox/reset`` — zero the stats and restore the faults given at start

Without the control token these answer 401 and change nothing.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pydantic import ValidationError

from tmdb_sandbox.catalog import MAX_PAGE, PAGE_SIZE, Catalog, genres
from tmdb_sandbox.faults import Decision, Faults, FaultState, MalformedVariant, Stats
from tmdb_sandbox.posters import poster_svg

log = logging.getLogger(__name__)

API_PREFIX = "/3"
CONTROL_PREFIX = "/__sandbox"
MAX_CONTROL_BODY = 64 * 1024
IMAGE_PREFIX = "/t/p/"  # TMDB serves images from image.tmdb.org/t/p/<size><poster_path>

# TMDB's own error bodies (https://developer.themoviedb.org/docs/errors).
_ERRORS: dict[int, tuple[int, str]] = {
    401: (7, "Invalid API key: You must be granted a valid key."),
    400: (22, "Invalid page: Pages start at 1 and max at 500. They are expected to be an integer."),
    404: (34, "The resource you requested could not be found."),
    429: (25, "Your request count (#) is over the allowed limit of (40)."),
    500: (11, "Internal error: Something went wrong, contact TMDB."),
    502: (11, "Internal error: Something went wrong, contact TMDB."),
    503: (9, "Service offline: This service is temporarily offline, try again later."),
    504: (24, "Your request to the backend server timed out. Try again."),
}


@dataclass(frozen=True)
class Credentials:
    """The token (``Authorization: Bearer``) and api key (``api_key=``) the sandbox accepts."""

    token: str
    api_key: str

    def accepts(self, authorization: str | None, api_key: str | None) -> bool:
        if _bearer_matches(authorization, self.token):
            return True
        return api_key is not None and hmac.compare_digest(api_key.encode(), self.api_key.encode())


def _bearer_matches(authorization: str | None, token: str) -> bool:
    if not authorization or not authorization.startswith("Bearer "):
        return False
    given = authorization.removeprefix("Bearer ").strip()
    return hmac.compare_digest(given.encode(), token.encode())


class SandboxServer(ThreadingHTTPServer):
    """A threading HTTP server holding the catalog, the credentials, the faults and the stats."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        catalog: Catalog,
        credentials: Credentials,
        faults: Faults | None = None,
        *,
        control_token: str,
    ) -> None:
        if not control_token:
            raise ValueError("the control token must not be empty")
        super().__init__(address, SandboxHandler)
        self.catalog = catalog
        self.credentials = credentials
        self.control_token = control_token
        self.initial_faults = faults or Faults()
        self.fault_state = FaultState(self.initial_faults)
        self.stats = Stats()

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}{API_PREFIX}"

    @functools.cache  # noqa: B019 - one server object per process; the catalog never changes
    def titles_by_poster(self) -> dict[str, str]:
        return {m["poster_path"]: m["title"] for m in self.catalog.movies if m["poster_path"]}


def _corrupt(record: dict[str, Any], variant: MalformedVariant) -> None:
    if variant is MalformedVariant.VOTE_AVERAGE:
        record["vote_average"] = 42
    elif variant is MalformedVariant.MISSING_TITLE:
        record.pop("title", None)
    elif variant is MalformedVariant.STRING_ID:
        record["id"] = str(record["id"])
    elif variant is MalformedVariant.NEGATIVE_VOTE_COUNT:
        record["vote_count"] = -5
    elif variant is MalformedVariant.BAD_DATE:
        record["release_date"] = "2023-13-45"
    elif variant is MalformedVariant.GENRE_IDS:
        record["genre_ids"] = ",".join(str(g) for g in record["genre_ids"])
    elif variant is MalformedVariant.POSTER_URL:
        record["poster_path"] = "https://attacker.example/track.jpg"
    elif variant is MalformedVariant.POSTER_MARKUP:
        record["poster_path"] = '/x.jpg" onerror="alert(document.cookie)'
    elif variant is MalformedVariant.LONG_TITLE:
        record["title"] = "A" * 10_000
    elif variant is MalformedVariant.LONG_OVERVIEW:
        record["overview"] = "O" * 100_000


class SandboxHandler(BaseHTTPRequestHandler):
    """One request; keep-alive (HTTP/1.1) so a crawler reuses its connection like with TMDB."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in two writes; no 40 ms stalls
    server_version = "tmdb-sandbox/1"
    server: SandboxServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    # -- plumbing --------------------------------------------------------------------------

    def _send_json(
        self,
        status: int,
        body: Any,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> None:
        data = raw if raw is not None else json.dumps(body, ensure_ascii=False).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json;charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (e.g. its read timeout fired while we were being slow).
            self.close_connection = True

    def _send_error(self, status: int, headers: dict[str, str] | None = None) -> None:
        code, message = _ERRORS[status]
        body = {"success": False, "status_code": code, "status_message": message}
        self._send_json(status, body, headers)

    def _read_body(self) -> bytes | None:
        """The body, or None (and the connection closed) when it is over `MAX_CONTROL_BODY`."""
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_CONTROL_BODY:
            self.close_connection = True  # never read: the connection cannot be reused
            return None
        return self.rfile.read(length) if length else b""

    # -- verbs -----------------------------------------------------------------------------

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        path = url.path.rstrip("/")
        if path.startswith(CONTROL_PREFIX):
            self._control("GET", path)
        elif path == f"{API_PREFIX}/movie/popular":
            self._popular(query)
        elif path.startswith(IMAGE_PREFIX):
            self._poster(path)
        elif path == f"{API_PREFIX}/genre/movie/list":
            if self._authorized(query, "genres"):
                self.server.stats.record("genres", None, 200)
                self._send_json(200, {"genres": genres(query.get("language"))})
        else:
            self.server.stats.record("other", None, 404)
            self._send_error(404)

    def do_PUT(self) -> None:
        self._control("PUT", urlsplit(self.path).path.rstrip("/"))

    def do_POST(self) -> None:
        self._control("POST", urlsplit(self.path).path.rstrip("/"))

    # -- images ----------------------------------------------------------------------------

    def _poster(self, path: str) -> None:
        """TMDB's image CDN stand-in: ``/t/p/<size>/<file>.jpg`` -> a generated SVG poster."""
        parts = path.removeprefix(IMAGE_PREFIX).split("/")
        poster_path = "/" + parts[-1] if len(parts) == 2 else ""
        title = self.server.titles_by_poster().get(poster_path)
        if title is None:
            self.server.stats.record("image", None, 404)
            self._send_error(404)
            return
        self.server.stats.record("image", None, 200)
        body = poster_svg(poster_path, title).encode()
        self.send_response(200)
        self.send_header("Content-Type", "image/svg+xml")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "public, max-age=86400")
        self.end_headers()
        self.wfile.write(body)

    # -- TMDB ------------------------------------------------------------------------------

    def _authorized(self, query: dict[str, str], endpoint: str) -> bool:
        if self.server.credentials.accepts(self.headers.get("Authorization"), query.get("api_key")):
            return True
        self.server.stats.record(endpoint, None, 401)
        self._send_error(401)
        return False

    def _popular(self, query: dict[str, str]) -> None:
        if not self._authorized(query, "popular"):
            return
        raw_page = query.get("page", "1")
        try:
            page = int(raw_page)
        except ValueError:
            page = 0
        if not 1 <= page <= MAX_PAGE:
            self.server.stats.record("popular", None, 400)
            self._send_error(400)
            return
        decision = self.server.fault_state.decide(page)
        if decision.delay_s:
            time.sleep(decision.delay_s)
        if decision.drop:
            self.server.stats.record("popular", page, "drop")
            self.close_connection = True
            return
        if decision.status is not None:
            self.server.stats.record("popular", page, decision.status)
            headers = {}
            if decision.retry_after is not None:
                headers["Retry-After"] = str(decision.retry_after)
            self._send_error(decision.status, headers)
            return
        envelope = self._page_envelope(page, decision)
        self.server.stats.record("popular", page, 200)
        if decision.bad_json:
            data = json.dumps(envelope).encode()
            self._send_json(200, None, raw=data[: len(data) // 2])
        else:
            self._send_json(200, envelope)

    def _page_envelope(self, page: int, decision: Decision) -> dict[str, Any]:
        catalog = self.server.catalog
        results = catalog.page(page)
        if decision.shift and results:
            # The list moved down while the client crawled: the tail of the previous page
            # shows up again at the top of this one.
            previous = catalog.page(page - 1)[-decision.shift :] if page > 1 else []
            results = (previous + results)[:PAGE_SIZE]
        for fault in decision.malformed:
            if fault.index < len(results):
                _corrupt(results[fault.index], fault.variant)
        return {
            "page": page,
            "results": results,
            "total_pages": catalog.total_pages,
            "total_results": catalog.total_results,
        }

    # -- control ---------------------------------------------------------------------------

    def _control(self, method: str, path: str) -> None:
        name = path.removeprefix(CONTROL_PREFIX)
        server = self.server
        if method == "GET" and name == "/health":
            self._send_json(200, {"status": "ok"})
            return
        if not path.startswith(CONTROL_PREFIX):
            self._send_error(404)
            self.close_connection = True  # its body, if any, was not read
            return
        if not _bearer_matches(self.headers.get("Authorization"), server.control_token):
            self.close_connection = True  # its body, if any, was not read
            self._send_json(
                401,
                {
                    "success": False,
                    "status_message": "the control API needs Authorization: Bearer <control "
                    "token> (--control-token / SANDBOX_CONTROL_TOKEN)",
                },
            )
            return
        body = self._read_body() if method != "GET" else b""
        if body is None:
            self._send_json(413, {"success": False, "status_message": "body over 64 KiB"})
        elif method == "GET" and name == "/stats":
            self._send_json(200, server.stats.snapshot())
        elif method == "GET" and name == "/faults":
            self._send_json(200, server.fault_state.faults.model_dump(mode="json"))
        elif method == "PUT" and name == "/faults":
            try:
                faults = Faults.model_validate_json(body or b"{}")
            except ValidationError as err:
                self._send_json(400, {"success": False, "status_message": str(err)})
                return
            server.fault_state.set(faults)
            log.info("faults set: %s", faults.model_dump_json())
            self._send_json(200, faults.model_dump(mode="json"))
        elif method == "POST" and name == "/reset":
            server.stats.reset()
            server.fault_state.set(server.initial_faults)
            self._send_json(200, {"status": "reset"})
        else:
            self._send_error(404)


def make_server(
    host: str,
    port: int,
    catalog: Catalog,
    credentials: Credentials,
    faults: Faults | None = None,
    *,
    control_token: str,
) -> SandboxServer:
    """Bind (port 0 picks a free one) without serving yet; call ``serve_forever()`` next."""
    server = SandboxServer((host, port), catalog, credentials, faults, control_token=control_token)
    log.info(
        "catalog: %d movies, %d pages (seed %d)",
        catalog.total_results,
        catalog.total_pages,
        catalog.seed,
    )
    return server

"""Local twin of the cluster's ingress: Knative's routing plus the front end's nginx.

One process on 127.0.0.1:8080 that runs the `localstack.controller` (KServe's controller twin),
**routes** the inference routes of the predictor to a revision by weighted random choice per
request, and serves the built front end with its runtime ``/config.json``.

What it answers, and nothing else (404):

=========================================== ======== ==========================================
path                                        method   answer
=========================================== ======== ==========================================
``/v1/models/<name>:predict``               POST     a revision's answer (V1 inference)
``/v1/models/<name>``                       GET      a revision's answer (V1 model readiness)
``/v2/models/<name>/infer``                 POST     a revision's answer (V2 inference)
``/v2/models/<name>``, ``…/ready``          GET      a revision's answer (V2 metadata, readiness)
``/events/feedback``                        POST     the event sink's answer (the page's
                                                     impressions and clicks)
``/config.json``                            GET      the page's runtime configuration
``/healthz``                                GET      the ingress is up
``/__local/status``                         GET      the controller's status; only to a client
                                                     on loopback naming a loopback ``Host``
``/__local/metrics``                        GET      the ingress's own Prometheus text:
                                                     proxied requests by revision, version and
                                                     status class, and the prediction log's
                                                     counters; only to a loopback client
                                                     naming a loopback ``Host`` (``/metrics``
                                                     stays 404: no revision's metrics leak)
``/``, ``/<file>``                          GET      the page (unknown paths: ``index.html``)
=========================================== ======== ==========================================

Routing is on the parsed path only: a path with an encoded slash, a dot segment or an empty
segment is refused, a route matches the whole path, and the upstream URL is built from the
matched route (never from the request's path), so ``/v1/models/<name>/%2e%2e/%2e%2e/metrics``
reaches nothing. ``<name>`` must be the InferenceService's.

A revision is chosen as Knative does: by the traffic split, or pinned by a tag (a ``Host``
starting with ``latest-`` or ``prev-``) — tags only on the cluster-local domain (``Host``
ending in ``--tag-domain``, ``.local``: ``latest-movie-recommender.local``), as Knative's tag
routes are cluster-local; any other ``Host`` gets the split. During a canary a request with
an assignment key (``X-User-Id``, else ``instances[0].user_id`` of a V1 body) is sticky: the
canary iff `contracts.assignment.bucket` of the key is below the canary percent, else the
stable revision — the cluster's nginx computes the same bucket — and the response says which
arm answered (``X-Canary-Arm: canary|stable``). A request whose connection a revision refused,
or whose arm is not ready, goes to another ready revision (stickiness never fails a request).

A body over ``--max-request-bytes`` (``MAX_REQUEST_BYTES``, 1 MiB) is refused with 413 before
it is read whole. Every response carries the page's security headers (`security_headers`: a
Content-Security-Policy allowing images from the poster base URL only, ``nosniff``,
``X-Frame-Options: DENY``, ``Referrer-Policy: no-referrer``), as the cluster's nginx sends.

Prediction log (``--events-url``, ``EVENTS_URL``): every proxied request gets a fresh id (uuid4
hex) sent upstream and returned to the client as ``X-Request-Id``; for a V1/V2 inference the
ingress emits a request and (for a 200) a response CloudEvent with that id and KServe's payload
logger's attributes (`localstack.events`), asynchronously, through a bounded queue: logging never
delays or fails a prediction, and what it drops is counted on ``/__local/metrics``. Unlike KServe
(one binary-mode POST per event) it sends them to the sink in CloudEvents JSON batches, which
store the same rows at a small fraction of the cost to the proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated
from urllib.parse import unquote, urlsplit

import aiohttp
import typer
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from contracts import events as ev
from contracts.assignment import ARM_HEADER
from contracts.monitoring import code_class
from contracts.settings import (
    EVENTS_URL,
    INGRESS_PORT,
    LOCAL_ROOT,
    LOOPBACK,
    MAX_REQUEST_BYTES,
    MLFLOW_TRACKING_URI,
)
from localstack.controller import Controller
from localstack.events import EventEmitter

log = logging.getLogger(__name__)

_HOP_HEADERS = {"host", "content-length", "connection", "keep-alive", "transfer-encoding"}
_UPSTREAM_DROPPED = _HOP_HEADERS | {"server", "date"}
_API_PREFIXES = ("/v1/", "/v2/", "/__local/", "/metrics", "/events/")
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
DEFAULT_TAG_DOMAIN = ".local"
SERVER_NAME = "movie-mlops-ingress"  # no version, as nginx's `server_tokens off`

_NAME = r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)"


@dataclass(frozen=True)
class Route:
    """One predictor route: the method, the whole path it matches, the upstream path."""

    method: str
    path: re.Pattern[str]
    upstream: str  # formatted with the InferenceService's name

    def match(self, method: str, path: str) -> str | None:
        """The model name in ``path`` when this route takes ``method path``."""
        found = self.path.fullmatch(path) if method == self.method else None
        return found["name"] if found else None


ROUTES = (
    Route("POST", re.compile(rf"/v1/models/{_NAME}:predict"), "/v1/models/{name}:predict"),
    Route("GET", re.compile(rf"/v1/models/{_NAME}"), "/v1/models/{name}"),
    Route("POST", re.compile(rf"/v2/models/{_NAME}/infer"), "/v2/models/{name}/infer"),
    Route("GET", re.compile(rf"/v2/models/{_NAME}"), "/v2/models/{name}"),
    Route("GET", re.compile(rf"/v2/models/{_NAME}/ready"), "/v2/models/{name}/ready"),
)


def canonical_path(raw_path: str) -> str | None:
    """The decoded path, or None when it is not canonical (then nothing is routed).

    Refused: an encoded ``/``, ``\\`` or NUL, a backslash, an empty segment (``//``) and a
    ``.`` or ``..`` segment, however it is spelled (``%2e%2e``).
    """
    if re.search(r"%(2f|5c|00)", raw_path, re.IGNORECASE):
        return None
    path = unquote(raw_path)
    if not path.startswith("/") or "\\" in path:
        return None
    segments = path[1:].split("/")
    if any(s in (".", "..") for s in segments) or "" in segments[:-1]:
        return None
    return path


def poster_source(poster_base_url: str) -> str:
    """The CSP source of the poster base URL: ``https://image.tmdb.org/t/p/`` (a path prefix)."""
    parts = urlsplit(poster_base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
        raise ValueError(f"poster base URL {poster_base_url!r} is not an http(s) URL")
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}/"


def security_headers(poster_base_url: str) -> dict[str, str]:
    """The page's security headers (docker/frontend/default.conf.template sends the same).

    The page loads its script and stylesheet from its own origin, calls only its own origin
    (``/config.json``, predict) and shows posters from the poster base URL; nothing may frame
    it, and no request it makes names the page's address (``?user=42``) in a Referer.
    """
    policy = "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            f"img-src 'self' {poster_source(poster_base_url)}",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )
    return {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
    }


def assignment_key(user_header: str | None, body: bytes) -> str | None:
    """The sticky-assignment key of a request: ``X-User-Id``, else ``instances[0].user_id``.

    Only a V1 body with a user id gives a key (as text: ``42`` hashes as ``"42"``); anything
    else — no body, not JSON, an anonymous history — gets the weighted random split.
    """
    if user_header:
        return user_header
    if not body or not body.lstrip().startswith(b"{"):
        return None
    try:
        instances = json.loads(body).get("instances")
        user_id = instances[0].get("user_id") if isinstance(instances, list) else None
    except (ValueError, AttributeError, IndexError, TypeError):
        return None
    if isinstance(user_id, bool) or not isinstance(user_id, (int, str)) or user_id == "":
        return None
    return str(user_id)


def tag_host(host: str, tag_domain: str) -> str:
    """The ``Host`` that tag routing sees: itself on the tag domain, else none (the split)."""
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return host if name.lower().endswith(tag_domain.lower()) else ""


# -- HTTP ----------------------------------------------------------------------------------


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _not_found() -> web.Response:
    return _json_error(404, "not found")


def _unavailable(controller: Controller, tried: set[str]) -> web.Response:
    """503 with what to do: nothing deployed yet, or every revision down right now."""
    if not controller.revisions:
        return _json_error(
            503,
            f"no ready revision of {controller.isvc_name}: deploy one with "
            "`python -m pipelines.rollout canary --version N` (see `make status`)",
        )
    response = _json_error(
        503,
        f"no revision of {controller.isvc_name} is ready right now"
        + (f" ({', '.join(sorted(tried))} refused the connection)" if tried else "")
        + "; the controller is restarting it — see `make status`",
    )
    response.headers["Retry-After"] = "1"
    return response


class BodyTooLarge(Exception):
    """A request body over the limit (answered 413)."""


def _too_large(limit: int) -> web.Response:
    response = _json_error(
        413,
        f"request body is larger than {limit} bytes; the limit is MAX_REQUEST_BYTES / "
        "--max-request-bytes",
    )
    response.force_close()  # what the client still sends is read and dropped, not kept
    return response


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The body, counted as it arrives; `BodyTooLarge` as soon as it passes ``limit``."""
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge
    return bytes(body)


def build_app(
    controller: Controller,
    frontend_dist: Path,
    poster_base_url: str,
    max_request_bytes: int = int(MAX_REQUEST_BYTES.default),
    tag_domain: str = DEFAULT_TAG_DOMAIN,
    events_url: str | None = None,
) -> web.Application:
    headers = security_headers(poster_base_url)  # ValueError for a bad URL: refuse to start
    app = web.Application(client_max_size=max_request_bytes)
    registry = CollectorRegistry()
    proxied = Counter(
        "movie_mlops_ingress_requests",
        "Requests proxied to a revision, by revision, model version and status class.",
        ["revision", "model_version", "code"],
        registry=registry,
    )
    session_key = web.AppKey("session", aiohttp.ClientSession)
    controller_task_key = web.AppKey("controller", asyncio.Task)
    emitter = (
        EventEmitter(events_url, inference_service=controller.isvc_name, source="ingress")
        if events_url
        else None
    )

    async def on_startup(app: web.Application) -> None:
        app[session_key] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=60),
            auto_decompress=False,
        )
        app[controller_task_key] = asyncio.create_task(controller.run())
        if emitter is not None:
            await emitter.start()

    async def on_cleanup(app: web.Application) -> None:
        app[controller_task_key].cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await app[controller_task_key]
        if emitter is not None:
            await emitter.stop()
        await app[session_key].close()
        controller.shutdown()

    async def with_headers(_: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(headers)
        response.headers["Server"] = SERVER_NAME

    async def proxy(request: web.Request, upstream_path: str) -> web.StreamResponse:
        try:
            body = await _read_body(request, max_request_bytes)
        except BodyTooLarge:
            return _too_large(max_request_bytes)
        arrived = time.time_ns()  # the request event's time
        request_id = uuid.uuid4().hex  # fresh, whatever the client sent: ids are ours
        forwarded = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in _HOP_HEADERS and k.lower() != ev.REQUEST_ID_HEADER.lower()
        }
        forwarded[ev.REQUEST_ID_HEADER] = request_id
        host = tag_host(request.host, tag_domain)
        key = assignment_key(request.headers.get(ev.USER_ID_HEADER), body)
        tried: set[str] = set()
        while True:
            revision = controller.routing.choose(host, exclude=tried, key=key)
            if revision is None:
                return _unavailable(controller, tried)
            try:
                async with request.app[session_key].request(
                    request.method,
                    f"{revision.url}{upstream_path}",
                    data=body,
                    headers=forwarded,
                ) as upstream:
                    payload = await upstream.read()
                    out = {
                        k: v
                        for k, v in upstream.headers.items()
                        if k.lower() not in _UPSTREAM_DROPPED
                    }
                break
            except aiohttp.ServerTimeoutError as err:
                return _json_error(504, f"revision {revision.name} did not answer in time: {err}")
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError):
                # the revision died before answering: a prediction is a pure function of the
                # request and the immutable artefact, so another ready revision can answer it
                controller.mark_unreachable(revision)
                tried.add(revision.name)
            except aiohttp.ClientError as err:
                return _json_error(502, f"revision {revision.name} did not answer: {err}")
        out["X-Revision"] = revision.name
        version = revision.model_version or ""
        proxied.labels(revision.name, version, code_class(upstream.status)).inc()
        arm = controller.routing.arm_name(revision)
        if arm is not None:
            out[ARM_HEADER] = arm
        out[ev.REQUEST_ID_HEADER] = request_id
        if emitter is not None and request.method == "POST":
            log_prediction(emitter, request, request_id, body, arrived, revision.name,
                           upstream.status, payload)  # fmt: skip
        return web.Response(status=upstream.status, body=payload, headers=out)

    async def forward_feedback(request: web.Request) -> web.StreamResponse:
        """``POST /events/feedback`` to the sink, as the front end's nginx does in the cluster."""
        if events_url is None:
            return _not_found()
        try:
            body = await _read_body(request, max_request_bytes)
        except BodyTooLarge:
            return _too_large(max_request_bytes)
        upstream_headers = {
            "Content-Type": request.headers.get("Content-Type", "application/json"),
            "X-Forwarded-For": request.remote or "",
        }
        try:
            async with request.app[session_key].post(
                f"{events_url.rstrip('/')}{ev.FEEDBACK_PATH}",
                data=body,
                headers=upstream_headers,
                timeout=aiohttp.ClientTimeout(total=5),
            ) as upstream:
                payload = await upstream.read()
                kept = {"Content-Type", "Retry-After"}
                out = {k: v for k, v in upstream.headers.items() if k in kept}
                return web.Response(status=upstream.status, body=payload, headers=out)
        except (aiohttp.ClientError, TimeoutError) as err:
            return _json_error(503, f"the event sink did not answer: {err}")

    def on_loopback(request: web.Request) -> bool:
        host = request.host.rsplit(":", 1)[0].strip("[]").lower()
        return request.remote in _LOOPBACK_HOSTS and host in _LOOPBACK_HOSTS

    async def status(request: web.Request) -> web.Response:
        if not on_loopback(request):  # another machine, or a page rebinding a name to us
            return _not_found()
        path = controller.layout.status_file
        body = json.loads(path.read_text()) if path.is_file() else {"status": None}
        return web.json_response(body)

    async def metrics(request: web.Request) -> web.Response:
        if not on_loopback(request):
            return _not_found()
        # the proxied requests, then the prediction log's counters (names do not overlap)
        text = generate_latest(registry)
        if emitter is not None:
            text += emitter.prometheus_text().encode()
        return web.Response(body=text, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def page(request: web.Request, path: str) -> web.StreamResponse:
        root = frontend_dist.resolve()
        target = (root / (path.lstrip("/") or "index.html")).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            target = root / "index.html"  # single-page app: unknown paths get the page
        if not target.is_file():
            return web.Response(
                status=503,
                text="The front end is not built yet: run `make frontend` (or `make demo`).\n",
            )
        return web.FileResponse(target)

    fixed: dict[tuple[str, str], Callable[[web.Request], Awaitable[web.StreamResponse]]] = {
        ("GET", "/healthz"): lambda _: _ok(),
        ("GET", "/config.json"): lambda _: _config(poster_base_url, controller),
        ("GET", "/__local/status"): status,
        ("GET", "/__local/metrics"): metrics,
        ("POST", ev.FEEDBACK_PATH): forward_feedback,
    }

    async def dispatch(request: web.Request) -> web.StreamResponse:
        path = canonical_path(request.rel_url.raw_path)
        if path is None:
            return _not_found()
        method = "GET" if request.method == "HEAD" else request.method
        handler = fixed.get((method, path))
        if handler is not None:
            return await handler(request)
        for route in ROUTES:
            name = route.match(request.method, path)
            if name is None:
                continue
            if name != controller.isvc_name:
                return _json_error(404, f"Model with name {name} does not exist.")
            return await proxy(request, route.upstream.format(name=controller.isvc_name))
        if method == "GET" and not path.startswith(_API_PREFIXES):
            return await page(request, path)
        return _not_found()

    async def expect(request: web.Request) -> web.StreamResponse | None:
        """``Expect: 100-continue`` with a body over the limit: 413 before it is sent (curl)."""
        length = request.content_length
        if length is not None and length > max_request_bytes:
            return _too_large(max_request_bytes)
        expectation = request.headers.get("Expect", "")
        if request.version == aiohttp.HttpVersion11:  # as aiohttp's default expect handler
            if expectation.lower() != "100-continue":
                raise web.HTTPExpectationFailed(text=f"Unknown Expect: {expectation}")
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
        return None

    app.router.add_route("*", "/{path:.*}", dispatch, expect_handler=expect)
    app.on_response_prepare.append(with_headers)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def log_prediction(
    emitter: EventEmitter,
    request: web.Request,
    request_id: str,
    body: bytes,
    arrived: int,
    revision: str,
    status: int,
    payload: bytes,
) -> None:
    """Queue the request event and, for a 200 (as KServe's logger), the response event."""
    emitter.log(
        request_id, body, payload if status == 200 else None,
        content_type=request.headers.get("Content-Type", "application/json"),
        arrived=arrived, endpoint=revision, user_key=request.headers.get(ev.USER_ID_HEADER),
    )  # fmt: skip


async def _ok() -> web.Response:
    return web.json_response({"status": "ok"})


async def _config(poster_base_url: str, controller: Controller) -> web.Response:
    return web.json_response({"posterBaseUrl": poster_base_url, "modelName": controller.isvc_name})


def main(
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = LOOPBACK,
    port: Annotated[int, typer.Option(help="Port of the ingress.")] = int(INGRESS_PORT.default),
    root: Annotated[
        Path, typer.Option(help="Local stack state directory.")
    ] = LOCAL_ROOT.default_path,
    mlflow_url: Annotated[str, typer.Option(help="MLflow server.")] = MLFLOW_TRACKING_URI.default,
    poster_base_url: Annotated[
        str, typer.Option(help="Poster image base URL the page is told to use (and the CSP).")
    ] = "https://image.tmdb.org/t/p",
    frontend_dist: Annotated[Path, typer.Option(help="Built front end.")] = Path("frontend/dist"),
    max_request_bytes: Annotated[
        int,
        typer.Option(
            envvar=MAX_REQUEST_BYTES.name, min=1, help="Largest request body read (else 413)."
        ),
    ] = int(MAX_REQUEST_BYTES.default),
    tag_domain: Annotated[
        str,
        typer.Option(help="Hosts ending in this may pin a revision with latest-/prev- tags."),
    ] = DEFAULT_TAG_DOMAIN,
    events_url: Annotated[
        str,
        typer.Option(
            envvar=EVENTS_URL.name, help="Event sink for the prediction log ('' turns it off)."
        ),
    ] = EVENTS_URL.default,
) -> None:
    """Serve the page and the inference routes; reconcile the local InferenceService."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    controller = Controller(root, mlflow_url)
    app = build_app(
        controller, frontend_dist, poster_base_url, max_request_bytes, tag_domain,
        events_url or None,
    )  # fmt: skip
    web.run_app(app, host=host, port=port, print=None, access_log=None)


if __name__ == "__main__":  # run the imported module, so loggers keep their names
    from localstack.ingress import main as _main

    typer.run(_main)

"""HTTP wiring around `RecommenderModel`: `main`, `serve` and what KServe does not do for us.

KServe 0.20 builds its uvicorn server with ``host="0.0.0.0"``, decodes only bodies whose
Content-Type is exactly ``application/json`` (and a few others), answers errors with its own
handlers (which log a traceback per bad request) and logs a line per request. `ModelServer`
here is `kserve.ModelServer` with one change: its REST server (`RESTServer`, a subclass of
KServe's) binds ``settings.host``, adds `JSONBodyMiddleware` and registers this package's error
mapping (`register_error_handlers`). Routes, readiness, ``/metrics`` and the request path
(preprocess -> predict -> postprocess, with KServe's latency histograms) stay KServe's.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from model_server.errors import ModelSourceError, ServingError
from model_server.metrics import Metrics
from model_server.model import UNDECODED_JSON, VERSION_HEADER, RecommenderModel
from model_server.settings import AccessLog, Settings, parse_settings
from model_server.source import ResolvedModel, resolve_models_uri
from recommenders.errors import ArtifactError, RecommenderError

log = logging.getLogger(__name__)

_PREDICT_SUFFIX = ":predict"
_UTF8 = {"utf-8", "utf8"}


class JSONBodyMiddleware:
    """Marks a JSON predict body so that `RecommenderModel.preprocess` decodes it itself.

    KServe decodes a body only when the Content-Type is exactly ``application/json``; with
    ``application/json; charset=utf-8`` it would pass raw bytes on, and for invalid JSON it
    raises its own error before the model sees anything. Marking every UTF-8 JSON body (and a
    body without Content-Type) with `UNDECODED_JSON` sends all of them down one path: one
    orjson decode in the model, every error ours (named field, counted, 4xx). Other media
    types are left alone (the model answers 415 for them).
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"].endswith(_PREDICT_SUFFIX)
        ):
            scope = _mark_json(scope)
        await self.app(scope, receive, send)


def _mark_json(scope: dict[str, Any]) -> dict[str, Any]:
    headers = scope["headers"]
    content_type = next((v for k, v in headers if k == b"content-type"), None)
    if content_type is not None:
        media, *params = content_type.decode("latin-1").split(";")
        if media.strip().lower() != "application/json":
            return scope
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "charset" and value.strip().strip('"').lower() not in _UTF8:
                return scope
    marked = [(k, v) for k, v in headers if k != b"content-type"]
    marked.append((b"content-type", UNDECODED_JSON.encode()))
    return {**scope, "headers": marked}


def register_error_handlers(app: Any, metrics: Metrics, version: Callable[[], str | None]) -> None:
    """The one place errors become responses: ``{"error": "..."}`` with the error's status.

    `ServingError` and `RecommenderError` carry their status (``http_status``); KServe's
    `InvalidInput` is a 400. Every 4xx is counted in ``rejected_requests_total{reason}`` and
    logged as one line (no traceback); responses carry ``X-Model-Version`` like successes do.
    """
    from fastapi.responses import JSONResponse
    from kserve.errors import InvalidInput

    def respond(status: int, reason: str, message: str) -> Any:
        if status < 500:
            metrics.rejected.labels(reason=reason).inc()
            log.info("rejected request (%d %s): %s", status, reason, message)
        else:
            log.error("request failed (%d %s): %s", status, reason, message)
        served = version()
        headers = {VERSION_HEADER: served} if served else None
        return JSONResponse(status_code=status, content={"error": message}, headers=headers)

    async def serving_error(_: Any, exc: Exception) -> Any:
        assert isinstance(exc, ServingError)
        return respond(exc.http_status, exc.reason, str(exc))

    async def recommender_error(_: Any, exc: Exception) -> Any:
        status = getattr(exc, "http_status", 500)
        return respond(status, "invalid_request" if status < 500 else "internal", str(exc))

    async def invalid_input(_: Any, exc: Exception) -> Any:
        return respond(400, "invalid_request", str(exc))

    app.add_exception_handler(ServingError, serving_error)
    app.add_exception_handler(RecommenderError, recommender_error)
    app.add_exception_handler(InvalidInput, invalid_input)


def _rest_server_class() -> type:
    from kserve.protocol.rest.server import RESTServer as KServeRESTServer

    class RESTServer(KServeRESTServer):
        """KServe's REST server, bound to ``host``, with our middleware and error mapping."""

        def __init__(
            self, *args: Any, host: str, on_app: Callable[[Any], None], **kwargs: Any
        ) -> None:
            super().__init__(*args, **kwargs)
            self.config.host = host  # uvicorn reads it when the server starts
            self._on_app = on_app

        def _add_middlewares(self, app: Any) -> None:
            super()._add_middlewares(app)
            app.add_middleware(JSONBodyMiddleware)

        def _add_exception_handlers(self, app: Any) -> None:
            super()._add_exception_handlers(app)
            self._on_app(app)

    return RESTServer


def _model_server_class() -> type:
    from kserve import ModelServer as KServeModelServer
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING, MAX_GRPC_MESSAGE_LENGTH
    from kserve.protocol.grpc.server import GRPCServer

    class ModelServer(KServeModelServer):
        """`kserve.ModelServer` whose REST server is `RESTServer` (one worker)."""

        def __init__(self, settings: Settings, on_app: Callable[[Any], None]) -> None:
            super().__init__(
                http_port=settings.http_port,
                grpc_port=settings.grpc_port,
                workers=1,
                max_threads=settings.max_threads,
                max_asyncio_workers=settings.max_asyncio_workers,
                enable_grpc=settings.enable_grpc,
                enable_docs_url=False,
                enable_latency_logging=settings.enable_latency_logging,
                access_log_format=settings.access_log_format,
                event_loop=settings.event_loop,
                timeout_keep_alive=settings.timeout_keep_alive,
            )
            self.settings = settings
            self._on_app = on_app

        def start(self, models: list[Any]) -> None:
            """KServe's ``start`` for one worker, with our REST server (same steps, same order)."""
            self._register_and_check_atleast_one_model_is_ready(models)
            self._rest_server = _rest_server_class()(
                FASTAPI_APP_IMPORT_STRING,
                self.dataplane,
                self.model_repository_extension,
                self.http_port,
                access_log_format=self.access_log_format,
                workers=1,
                grace_period=self.grace_period,
                event_loop=self.event_loop,
                timeout_keep_alive=self.timeout_keep_alive,
                host=self.settings.host,
                on_app=self._on_app,
            )
            self.servers.append(self._rest_server.start())
            if self.enable_grpc:
                self._grpc_server = GRPCServer(
                    self.grpc_port,
                    self.dataplane,
                    self.model_repository_extension,
                    kwargs={
                        "grpc_max_send_message_length": MAX_GRPC_MESSAGE_LENGTH,
                        "grpc_max_receive_message_length": MAX_GRPC_MESSAGE_LENGTH,
                    },
                    grace_period=self.grace_period,
                )
                self.servers.append(self._grpc_server.start(self.max_threads))
            self.setup_event_loop()
            self.register_signal_handler()
            asyncio.run(self._serve())

    return ModelServer


class _AccessErrorsOnly(logging.Filter):
    """Keeps uvicorn access lines of responses with status >= 400."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (isinstance(args, tuple) and len(args) >= 5 and int(args[4]) < 400)


def configure_logging(settings: Settings) -> None:
    """KServe's log format for everything; per-request lines only where asked for."""
    if settings.configure_logging:
        from kserve.logging import KSERVE_LOGGER_DATE_FORMAT, KSERVE_LOGGER_FORMAT
        from kserve.logging import configure_logging as kserve_configure_logging

        kserve_configure_logging(settings.log_config_file)
        logging.basicConfig(
            level=logging.INFO,
            format=KSERVE_LOGGER_FORMAT,
            datefmt=KSERVE_LOGGER_DATE_FORMAT,
            stream=sys.stderr,
        )
    if not settings.enable_latency_logging:
        # KServe's timing middleware writes one kserve.trace line per request regardless.
        logging.getLogger("kserve.trace").setLevel(logging.WARNING)
    access = logging.getLogger("uvicorn.access")
    if settings.access_log is AccessLog.OFF:
        access.setLevel(logging.WARNING)
    elif settings.access_log is AccessLog.ERRORS:
        access.addFilter(_AccessErrorsOnly())


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def _keep_freed_memory() -> None:
    """Let glibc reuse freed heap memory instead of handing it back to the OS (glibc only).

    A 1,000-user request allocates score blocks of a few MB; with glibc's adaptive defaults they
    were mmap'd, or trimmed off the heap, and faulted back in on every request (up to ~49,000
    page faults, 2-3x the request's time, depending on heap layout). With fixed thresholds the
    blocks come from the heap and stay mapped: a few tens of MB at most, well inside the limit.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, macOS): nothing to tune
        return
    libc.mallopt(_M_TRIM_THRESHOLD, 256 << 20)
    libc.mallopt(_M_MMAP_THRESHOLD, 64 << 20)


def serve(model: Any, settings: Settings, metrics: Metrics) -> None:
    """Serve a loaded (``ready``) `kserve.Model` until SIGTERM/SIGINT."""
    server = _model_server_class()(
        settings,
        on_app=lambda app: register_error_handlers(
            app, metrics, lambda: getattr(model, "version", None)
        ),
    )
    # Everything alive now (modules, the loaded model, its lookups: ~150k tracked objects) lives
    # until exit; without this each full collection walks all of it again, ~80 ms that landed on
    # whichever request triggered it (every third 1,000-user request in `bench serving`).
    gc.freeze()
    _keep_freed_memory()
    log.info(
        "serving %s on http://%s:%d (gRPC %s)",
        model.name,
        settings.host,
        settings.http_port,
        f"on port {settings.grpc_port}" if settings.enable_grpc else "off",
    )
    server.start([model])


def resolve_source(settings: Settings) -> ResolvedModel:
    """The local artefact directory to load (downloading a ``models:/`` URI first)."""
    if settings.model_uri:
        return resolve_models_uri(settings.model_uri, settings.tracking_uri, settings.cache_dir)
    assert settings.model_dir is not None
    return ResolvedModel(settings.model_dir, None)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m model_server``: load and verify the artefact, then serve it.

    Exits non-zero without ever serving when the artefact cannot be fetched, is missing or
    fails its checksums (in a cluster: CrashLoopBackOff, never a ready pod with a bad model).
    """
    settings = parse_settings(sys.argv[1:] if argv is None else argv, os.environ)
    configure_logging(settings)
    metrics = Metrics.create()
    try:
        source = resolve_source(settings)
        model = RecommenderModel(
            settings.model_name,
            source.directory,
            metrics,
            version=settings.model_version or source.version,
        )
        model.load()
    except (ModelSourceError, ArtifactError) as err:
        log.error("not serving %s: %s", settings.model_name, err)
        return err.exit_code
    serve(model, settings, metrics)
    return 0

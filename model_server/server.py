"""HTTP and gRPC wiring around `RecommenderModel`: `main`, `serve` and what KServe does not do.

KServe 0.20 builds its uvicorn server with ``host="0.0.0.0"`` and its gRPC server on ``[::]``,
decodes only bodies whose Content-Type is exactly ``application/json`` (and a few others),
answers errors with its own handlers (which log a traceback per bad request), logs a line per
request, serves the model-repository extension (``POST /v2/repository/models/<name>/unload``,
unauthenticated, after which every inference 404s while liveness still passes) and reports
live and ready whether or not a model is loaded. `ModelServer` here is `kserve.ModelServer`
with these changes:

- its REST server (`RESTServer`, a subclass of KServe's) binds ``settings.host``, adds
  `JSONBodyMiddleware`, registers this package's error mapping (`register_error_handlers`),
  serves only `SERVED_ROUTES` (`ServedRoutesOnly`): inference, health and metadata of V1 and
  V2, and ``/metrics`` (no ``/v2/repository/*``, ``:explain``, ``/versions/*`` or
  ``/openapi.json``: 404), and bounds what one client may cost (`model_server.limits`: a body
  over ``--max_request_bytes`` is refused before it is read, a request not sent within
  ``--request_read_timeout`` is cut off, headers over 64 KiB are refused, and past
  ``--limit_concurrency`` connections a request gets 503);
- its gRPC server (`model_server.grpc_server.BoundGRPCServer`, with ``--enable_grpc``) binds
  the same host, refuses the repository RPCs, receives messages of ``--max_request_bytes`` at
  most and maps errors as REST does;
- its data plane (`ServingDataPlane`) is live and ready only while every registered model is
  loaded, and advertises no protocol extension.

Routes, the request path (preprocess -> predict -> postprocess, with KServe's latency
histograms) and ``/metrics`` stay KServe's.
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

from model_server.errors import ModelSourceError, Rejection, ServingError
from model_server.faults import FaultInjection, RequestTiming
from model_server.limits import RequestBodyLimit, Respond, read_limited_protocol
from model_server.metrics import Metrics
from model_server.model import UNDECODED_JSON, VERSION_HEADER, RecommenderModel
from model_server.settings import AccessLog, Settings, parse_settings
from model_server.source import ResolvedModel, resolve_models_uri
from recommenders.errors import ArtifactError, RecommenderError

log = logging.getLogger(__name__)

_PREDICT_SUFFIX = ":predict"
_UTF8 = {"utf-8", "utf8"}

_GET = frozenset({"GET", "HEAD"})
_POST = frozenset({"POST"})
# What the data plane serves (KServe's route templates and methods): inference, health and
# metadata of V1 and V2, and the metrics. Any other request is answered 404 by `ServedRoutesOnly`
# before KServe's router sees it. Inference first: it is what nearly every request is.
SERVED_ROUTES: dict[str, frozenset[str]] = {
    "/v1/models/{model_name}:predict": _POST,
    "/v2/models/{model_name}/infer": _POST,
    "/": _GET,
    "/metrics": _GET,
    "/v1/models": _GET,
    "/v1/models/{model_name}": _GET,
    "/v2": _GET,
    "/v2/health/live": _GET,
    "/v2/health/ready": _GET,
    "/v2/models": _GET,
    "/v2/models/{model_name}": _GET,
    "/v2/models/{model_name}/ready": _GET,
}


class ServedRoutesOnly:
    """Answers 404 to every request outside `SERVED_ROUTES` (an allowlist, not a denylist).

    KServe registers more than inference, health and metadata: the model-repository extension
    (``POST /v2/repository/models/<name>/load|unload``, unauthenticated: one request unloads the
    model for good), ``:explain``, ``/versions/<v>/...`` and FastAPI's ``/openapi.json``. Checked
    here rather than by removing routes, because how FastAPI stores included routers is its own
    business; a route KServe adds in a later release stays closed until it is listed.
    """

    def __init__(self, app: Any) -> None:
        from starlette.routing import compile_path

        self.app = app
        self._served = [(compile_path(path)[0], methods) for path, methods in SERVED_ROUTES.items()]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not self.served(scope["method"], scope["path"]):
            from starlette.responses import JSONResponse

            response = JSONResponse(status_code=404, content={"error": "not found"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def served(self, method: str, path: str) -> bool:
        """Whether ``method path`` is one of `SERVED_ROUTES`."""
        return any(method in methods and regex.match(path) for regex, methods in self._served)


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


def classify(exc: BaseException) -> Rejection | None:
    """The one mapping from errors to answers; None for errors left to KServe's handlers.

    `ServingError` and `RecommenderError` carry their status (``http_status``); KServe's
    `InvalidInput` (e.g. a V2 body KServe cannot decode) is a 400.
    """
    from kserve.errors import InvalidInput

    if isinstance(exc, ServingError):
        return Rejection(exc.http_status, exc.reason, str(exc))
    if isinstance(exc, RecommenderError):
        status = getattr(exc, "http_status", 500)
        return Rejection(status, "invalid_request" if status < 500 else "internal", str(exc))
    if isinstance(exc, InvalidInput):
        return Rejection(400, "invalid_request", str(exc))
    return None


def report(rejection: Rejection, metrics: Metrics) -> None:
    """Count a 4xx in ``rejected_requests_total{reason}`` and log it as one line (no traceback)."""
    if rejection.status < 500:
        metrics.rejected.labels(reason=rejection.reason, model_version=metrics.version).inc()
        log.info(
            "rejected request (%d %s): %s", rejection.status, rejection.reason, rejection.message
        )
    else:
        log.error(
            "request failed (%d %s): %s", rejection.status, rejection.reason, rejection.message
        )


def describe_invalid_body(errors: Sequence[Any]) -> Rejection:
    """A 400 naming the field for FastAPI's validation errors of a V2 body (``inputs[0].shape``).

    FastAPI checks the V2 infer body against KServe's ``InferenceRequest`` (or raw bytes) before
    the model sees it; its own answer would be a 422 listing both alternatives.
    """
    if any(e.get("type") == "json_invalid" for e in errors):
        return Rejection(400, "invalid_json", "request body is not valid JSON")
    first = next((e for e in errors if "InferenceRequest" in e.get("loc", ())), errors[0])
    path = ""
    for part in first.get("loc", ()):
        if part in ("body", "InferenceRequest"):
            continue
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    field = path.lstrip(".") or "request body"
    return Rejection(400, "invalid_request", f"{field}: {first['msg']}")


def rejection_response(
    rejection: Rejection, metrics: Metrics, version: Callable[[], str | None]
) -> Any:
    """``{"error": "..."}`` with the rejection's status and ``X-Model-Version``, once counted."""
    from starlette.responses import JSONResponse

    report(rejection, metrics)
    served = version()
    headers = {VERSION_HEADER: served} if served else None
    return JSONResponse(
        status_code=rejection.status, content={"error": rejection.message}, headers=headers
    )


def register_error_handlers(app: Any, respond: Respond) -> None:
    """The REST side of `classify`: ``respond`` (`rejection_response`) to every known error.

    Every 4xx is counted and logged once (`report`); responses carry ``X-Model-Version`` like
    successes do.
    """
    from fastapi.exceptions import RequestValidationError
    from kserve.errors import InvalidInput

    async def known_error(_: Any, exc: Exception) -> Any:
        rejection = classify(exc)
        if rejection is None:  # not one of ours after all: FastAPI's 500
            raise exc
        return respond(rejection)

    async def invalid_body(_: Any, exc: Exception) -> Any:
        errors = exc.errors() if isinstance(exc, RequestValidationError) else []
        return respond(describe_invalid_body(errors))

    for kind in (ServingError, RecommenderError, InvalidInput):
        app.add_exception_handler(kind, known_error)
    app.add_exception_handler(RequestValidationError, invalid_body)


def dataplane_class() -> type:
    """`ServingDataPlane`: KServe's `DataPlane`, healthy only while every model is loaded."""
    from kserve.errors import InvalidInput, ServerNotLive
    from kserve.protocol.dataplane import DataPlane

    class ServingDataPlane(DataPlane):
        """KServe's data plane, healthy only while every registered model is loaded.

        KServe's liveness is constant and its server readiness ignores the models, so a process
        whose model is gone (or was never loaded) would keep passing both probes. Here both
        fail then: readiness takes it out of traffic, liveness gets it restarted (which loads
        the model again). It also advertises no protocol extension and turns a V2 body KServe
        cannot read into a 400 rather than a 500.
        """

        async def not_loaded(self) -> list[str]:
            """Names of registered models that are not ready (all of them: none registered)."""
            models = self.model_registry.get_models()
            if not models:
                return ["(no model registered)"]
            return [name for name in models if not await self.model_registry.is_model_ready(name)]

        async def live(self) -> dict[str, str]:  # type: ignore[override]
            """``{"status": "alive"}``; raises `ServerNotLive` (503, UNAVAILABLE) otherwise."""
            missing = await self.not_loaded()
            if missing:
                raise ServerNotLive(f"model not loaded: {', '.join(missing)}")
            return {"status": "alive"}

        async def ready(self) -> bool:
            """KServe's readiness, and every registered model loaded."""
            return not await self.not_loaded() and await super().ready()

        def metadata(self) -> dict[str, Any]:
            """KServe's server metadata without the model-repository extension."""
            return {**super().metadata(), "extensions": []}

        def decode_inference_request(self, body: Any, headers: Any, model_name: str) -> Any:
            """KServe's decoding of a V2 REST body; a malformed one is `InvalidInput` (400).

            KServe reads the binary-data extension (``inference-header-content-length``)
            without checking it: a missing field or a short tensor became a 500.
            """
            try:
                return super().decode_inference_request(body, headers, model_name)
            except InvalidInput:
                raise
            except KeyError as err:
                raise InvalidInput(f"V2 request lacks the field {err.args[0]!r}") from err
            except (TypeError, ValueError) as err:
                raise InvalidInput(f"V2 request cannot be read: {err}") from err

    return ServingDataPlane


def _rest_server_class() -> type:
    from kserve.protocol.rest.server import RESTServer as KServeRESTServer

    class RESTServer(KServeRESTServer):
        """KServe's REST server on ``host``, with our middlewares, limits and error mapping."""

        def __init__(
            self,
            *args: Any,
            settings: Settings,
            respond: Respond,
            on_refused: Callable[[Rejection], None],
            metrics: Metrics,
            **kwargs: Any,
        ) -> None:
            super().__init__(*args, **kwargs)
            # uvicorn reads these when the server starts
            self.config.host = settings.host
            self.config.limit_concurrency = settings.limit_concurrency
            self.config.http = read_limited_protocol(settings.request_read_timeout, on_refused)
            self._max_request_bytes = settings.max_request_bytes
            self._respond = respond
            self._settings = settings
            self._metrics = metrics

        def _add_middlewares(self, app: Any) -> None:
            super()._add_middlewares(app)
            app.add_middleware(JSONBodyMiddleware)
            app.add_middleware(
                RequestBodyLimit, max_bytes=self._max_request_bytes, respond=self._respond
            )
            app.add_middleware(ServedRoutesOnly)
            settings, metrics = self._settings, self._metrics
            if settings.fault_error_rate > 0 or settings.fault_latency_ms > 0:
                app.add_middleware(
                    FaultInjection,
                    error_rate=settings.fault_error_rate,
                    latency_ms=settings.fault_latency_ms,
                    version=lambda: metrics.version,
                )
            app.add_middleware(RequestTiming, observe=metrics.observe)  # outermost: sees all

        def _add_exception_handlers(self, app: Any) -> None:
            super()._add_exception_handlers(app)
            register_error_handlers(app, self._respond)

    return RESTServer


def _model_server_class() -> type:
    from kserve import ModelServer as KServeModelServer
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING, MAX_GRPC_MESSAGE_LENGTH

    from model_server.grpc_server import BoundGRPCServer, OnError

    class ModelServer(KServeModelServer):
        """`kserve.ModelServer` with `RESTServer`, `BoundGRPCServer` and `ServingDataPlane`."""

        def __init__(
            self,
            settings: Settings,
            respond: Respond,
            on_refused: Callable[[Rejection], None],
            on_grpc_error: OnError,
            metrics: Metrics,
        ) -> None:
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
            self.dataplane = dataplane_class()(model_registry=self.registered_models)
            self.settings = settings
            self._respond = respond
            self._on_refused = on_refused
            self._on_grpc_error = on_grpc_error
            self._metrics = metrics

        def start(self, models: list[Any]) -> None:
            """KServe's ``start`` for one worker, with our servers (same steps, same order)."""
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
                settings=self.settings,
                respond=self._respond,
                on_refused=self._on_refused,
                metrics=self._metrics,
            )
            self.servers.append(self._rest_server.start())
            if self.enable_grpc:
                self._grpc_server = BoundGRPCServer(
                    self.settings.host,
                    self.grpc_port,
                    self.dataplane,
                    self.model_repository_extension,
                    max_send_length=MAX_GRPC_MESSAGE_LENGTH,
                    max_receive_length=self.settings.max_request_bytes,
                    grace_period=self.grace_period,
                    on_error=self._on_grpc_error,
                    log_calls=self.settings.access_log is AccessLog.ALL,
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

    def on_grpc_error(exc: Exception) -> Rejection | None:
        rejection = classify(exc)
        if rejection is not None:
            report(rejection, metrics)
        return rejection

    def respond(rejection: Rejection) -> Any:
        return rejection_response(rejection, metrics, lambda: getattr(model, "version", None))

    server = _model_server_class()(
        settings,
        respond=respond,
        on_refused=lambda rejection: report(rejection, metrics),
        on_grpc_error=on_grpc_error,
        metrics=metrics,
    )
    if settings.fault_error_rate > 0 or settings.fault_latency_ms > 0:
        log.warning(
            "TEST FAULTS ON: %.1f %% of inference requests answered 500, %.0f ms added to each "
            "(MODEL_SERVER_FAULT_*; for tests and demos only)",
            settings.fault_error_rate * 100,
            settings.fault_latency_ms,
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
        f"on {settings.host}:{settings.grpc_port}" if settings.enable_grpc else "off",
    )
    server.start([model])


def resolve_source(settings: Settings) -> ResolvedModel:
    """The local artefact directory to load (downloading a ``models:/`` URI first)."""
    if settings.model_uri:
        return resolve_models_uri(settings.model_uri, settings.tracking_uri, settings.cache_dir)
    if settings.model_dir is None:
        raise ModelSourceError("give --model_dir or --model_uri")
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
            digest=settings.model_digest,
        )
        model.load()
    except (ModelSourceError, ArtifactError) as err:
        log.error("not serving %s: %s", settings.model_name, err)
        return err.exit_code
    serve(model, settings, metrics)
    return 0

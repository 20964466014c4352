"""The gRPC (V2) server: KServe's, bound to the configured host, without repository RPCs.

KServe 0.20's `kserve.protocol.grpc.server.GRPCServer` listens on ``[::]:<port>`` (every
address), serves the model-repository extension (``RepositoryModelLoad``/``Unload``: anyone who
can reach the port could unload the model, after which every inference fails while the process
stays up) and maps only KServe's own exceptions to status codes (this package's errors became
INTERNAL). `BoundGRPCServer` is the same server — same options, same servicer for inference,
health and metadata — with these changes:

- it listens on ``host`` only (``--host``: loopback unless told otherwise), and receives
  messages of at most ``max_receive_length`` bytes (``--max_request_bytes``, as REST bodies;
  larger: RESOURCE_EXHAUSTED, unread);
- the repository RPCs answer UNIMPLEMENTED and touch nothing;
- errors are mapped by ``on_error`` (`model_server.server.classify`: the REST mapping), whose
  HTTP status becomes the gRPC code (`grpc_status`): a bad request is INVALID_ARGUMENT naming
  the field, as REST's 4xx does; anything else keeps KServe's mapping.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from grpc import aio
from grpc_interceptor.exceptions import Unimplemented
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.model_repository_extension import ModelRepositoryExtension

from model_server.errors import Rejection

log = logging.getLogger(__name__)

OnError = Callable[[Exception], Rejection | None]
_NO_REPOSITORY = (
    "the model repository extension is not served: the model is loaded once, at start-up"
)


def grpc_status(http_status: int) -> grpc.StatusCode:
    """The gRPC status code of a `Rejection`'s HTTP status."""
    if http_status == 404:
        return grpc.StatusCode.NOT_FOUND
    if http_status == 503:
        return grpc.StatusCode.UNAVAILABLE
    if 400 <= http_status < 500:
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.INTERNAL


class InferenceOnlyServicer(InferenceServicer):
    """KServe's servicer without the model-repository extension."""

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        """Refused: models are not loaded at runtime."""
        raise Unimplemented(_NO_REPOSITORY)

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        """Refused: nothing may unload the served model."""
        raise Unimplemented(_NO_REPOSITORY)


class ErrorsToStatus(ExceptionToStatusInterceptor):
    """KServe's exception interceptor, with this package's errors mapped by ``on_error`` first."""

    def __init__(self, on_error: OnError) -> None:
        super().__init__()
        self._on_error = on_error

    async def handle_exception(
        self, ex: Exception, request_or_iterator: Any, context: Any, method_name: str
    ) -> None:
        """Abort with the rejection's status and message, or as KServe would."""
        rejection = self._on_error(ex)
        if rejection is None:
            await super().handle_exception(ex, request_or_iterator, context, method_name)
            return
        await context.abort(grpc_status(rejection.status), rejection.message)


class BoundGRPCServer(GRPCServer):
    """KServe's `GRPCServer` on ``host:port``, with `InferenceOnlyServicer` and `ErrorsToStatus`."""

    def __init__(
        self,
        host: str,
        port: int,
        data_plane: DataPlane,
        model_repository_extension: ModelRepositoryExtension,
        *,
        max_send_length: int,
        max_receive_length: int,
        grace_period: int,
        on_error: OnError,
        log_calls: bool,
    ) -> None:
        super().__init__(
            port,
            data_plane,
            model_repository_extension,
            kwargs={
                "grpc_max_send_message_length": max_send_length,
                "grpc_max_receive_message_length": max_receive_length,
            },
            grace_period=grace_period,
        )
        self._host = host
        self._on_error = on_error
        self._log_calls = log_calls

    @property
    def address(self) -> str:
        """``host:port`` as gRPC wants it (an IPv6 literal in brackets)."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self._port}"

    async def start(self, max_workers: int) -> None:
        """KServe's ``start`` (same executor and message limits), listening on `address` only.

        Raises RuntimeError when the address cannot be bound (the process then exits).
        """
        interceptors: list[Any] = [ErrorsToStatus(self._on_error)]
        if self._log_calls:  # KServe logs a line per call; here only with --access_log all
            interceptors.insert(0, LoggingInterceptor())
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=interceptors,
            options=[
                ("grpc.max_send_message_length", self._kwargs["grpc_max_send_message_length"]),
                (
                    "grpc.max_receive_message_length",
                    self._kwargs["grpc_max_receive_message_length"],
                ),
            ],
        )
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceOnlyServicer(self._data_plane, self._model_repository_extension),
            self._server,
        )
        self._server.add_insecure_port(self.address)
        log.info("gRPC server on %s (%d threads)", self.address, max_workers)
        await self._server.start()
        await self._server.wait_for_termination()

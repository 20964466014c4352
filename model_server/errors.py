"""Domain errors of the model server.

Each error names the HTTP status a request that meets it gets (``http_status``), the label it is
counted under in ``movie_recommender_rejected_requests_total{reason}`` (``reason``) and, for
errors met at start-up, the process exit code (``exit_code``). `model_server.server` maps
errors to a `Rejection` in one place (`model_server.server.classify`), which REST answers with
its status and gRPC with the matching status code (`model_server.grpc_server.grpc_status`).
"""

from __future__ import annotations

from dataclasses import dataclass

from contracts.errors import ProjectError


@dataclass(frozen=True)
class Rejection:
    """How a failed request is answered: HTTP status, metric reason, message for the caller."""

    status: int
    reason: str
    message: str


class ServingError(ProjectError):
    """Base class: a failure with a message meant for the caller or the operator."""

    http_status: int = 500
    reason: str = "internal"
    exit_code: int = 1


class RequestError(ServingError):
    """The request is malformed; the message names the offending field."""

    http_status = 400
    reason = "invalid_request"


class InvalidJSONError(RequestError):
    """The body is empty or is not JSON (NaN and Infinity are not JSON)."""

    reason = "invalid_json"


class UnsupportedMediaTypeError(RequestError):
    """The body is sent with a Content-Type other than JSON (or a charset other than UTF-8)."""

    http_status = 415
    reason = "unsupported_media_type"


class TooManyInstancesError(RequestError):
    """More instances in one request than the server scores at once."""

    http_status = 413
    reason = "too_many_instances"


class SeenItemsRefusedError(RequestError):
    """``exclude_seen: false`` for a user the model knows: it would return what they watched."""

    reason = "exclude_seen_refused"


class UnknownContentError(RequestError):
    """A history the model must use holds only content ids it does not know."""

    http_status = 422
    reason = "unknown_content"


class ModelSourceError(ServingError):
    """The model to serve cannot be found or fetched (bad ``models:/`` URI, MLflow down)."""

    http_status = 503
    reason = "model_source"
    exit_code = 3


class ModelNotLoadedError(ServingError):
    """A request reached the model before `load` (or after it failed): not ready."""

    http_status = 503
    reason = "not_ready"

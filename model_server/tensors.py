"""The V2 (Open Inference Protocol) tensor layout of the predictor, over REST and gRPC.

``POST /v2/models/movie-recommender/infer`` (and gRPC ``ModelInfer``) take one row per user;
``GET /v2/models/movie-recommender`` (gRPC ``ModelMetadata``) lists the same tensors
(``-1``: a dimension of any size).

Inputs (only ``user_id`` is required; ``n`` is 1..1000 rows):

================ ======== ========= ==========================================================
name             datatype shape     meaning
================ ======== ========= ==========================================================
``user_id``      INT64    [n]       the user of each row; ``-1``: no user, rank the row's
                                    ``history`` (V1's instance without ``user_id``)
``history``      INT64    [n, h]    content ids each row has watched, ``h`` <= 1000; ``-1``
                                    entries are padding (rows of different lengths)
``k``            INT64    [1]       list length for every row, 1..100 (default 10)
``exclude_seen`` BOOL     [1]       leave out what the user has seen (default true); false
                                    is refused (400) when a row's user is known to the model
================ ======== ========= ==========================================================

Outputs (all four unless the request names some in ``outputs``):

================ ======== ========= ==========================================================
name             datatype shape     meaning
================ ======== ========= ==========================================================
``content_ids``  INT64    [n, k]    the ranking of each row, best first; ``-1`` pads a row
                                    that has fewer than ``k`` candidates left
``scores``       FP32     [n, k]    the score of each ranked id (``0`` where the id is ``-1``)
``fallback``     BOOL     [n]       the row got the popularity ranking (unknown user, no
                                    usable history)
``reason``       BYTES    [n]       why (fallback) or what was ignored (unknown history ids);
                                    ``""`` when there is nothing to say
================ ======== ========= ==========================================================

The response's ``model_version`` is the served version (REST also sends ``X-Model-Version``).
Each row ranks exactly as the V1 instance ``{"user_id": ..., "history": [...], "k": ...,
"exclude_seen": ...}`` does: both are answered by `RecommenderModel.recommend`. Display fields
(titles, posters) are V1 only (``"display": true``); the V2 answer is for services.

Bad input gets the V1 guarantees: a `RequestError` naming the tensor (and row) — 400 over REST,
413 for more than 1000 rows, 422 for a history of unknown ids only; INVALID_ARGUMENT over gRPC.
Over REST the JSON ``data`` is read strictly, like V1's JSON: ``1.0``, ``true`` and ``"1"`` are
not INT64 values, and ``1`` is not a BOOL.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from kserve import InferOutput, InferRequest, InferResponse
from kserve.protocol.infer_type import InferInput, RequestedOutput

from model_server.errors import RequestError, TooManyInstancesError
from model_server.request import DEFAULT_K, MAX_HISTORY, MAX_INSTANCES, MAX_K, Instance

NO_USER = -1  # user_id of a row ranked by its history alone
PAD = -1  # padding in history, and in content_ids of a short ranking

# Metadata as KServe's DataPlane.model_metadata returns it (REST and gRPC).
INPUTS: tuple[dict[str, Any], ...] = (
    {"name": "user_id", "datatype": "INT64", "shape": [-1]},
    {"name": "history", "datatype": "INT64", "shape": [-1, -1]},
    {"name": "k", "datatype": "INT64", "shape": [1]},
    {"name": "exclude_seen", "datatype": "BOOL", "shape": [1]},
)
OUTPUTS: tuple[dict[str, Any], ...] = (
    {"name": "content_ids", "datatype": "INT64", "shape": [-1, -1]},
    {"name": "scores", "datatype": "FP32", "shape": [-1, -1]},
    {"name": "fallback", "datatype": "BOOL", "shape": [-1]},
    {"name": "reason", "datatype": "BYTES", "shape": [-1]},
)
_INPUT_NAMES = ", ".join(t["name"] for t in INPUTS)
_OUTPUT_NAMES = ", ".join(t["name"] for t in OUTPUTS)
_DATATYPE = {t["name"]: t["datatype"] for t in INPUTS}
_OUTPUT_DATATYPE = {t["name"]: t["datatype"] for t in OUTPUTS}
# What a JSON value of each datatype must be (bool is a subclass of int: compared exactly).
_JSON_TYPE = {"INT64": int, "BOOL": bool}


@dataclass(frozen=True)
class TensorRequest:
    """A validated V2 request: one `Instance` per row, and what the response must carry."""

    instances: list[Instance]
    k: int
    request_id: str
    outputs: tuple[str, ...]
    requested: list[RequestedOutput] | None
    binary_outputs: bool


def input_types() -> list[dict[str, Any]]:
    """The input tensors, for ``GET /v2/models/<name>`` and gRPC ``ModelMetadata``."""
    return [dict(t, shape=list(t["shape"])) for t in INPUTS]


def output_types() -> list[dict[str, Any]]:
    """The output tensors, for ``GET /v2/models/<name>`` and gRPC ``ModelMetadata``."""
    return [dict(t, shape=list(t["shape"])) for t in OUTPUTS]


def parse_infer_request(request: InferRequest, model_name: str) -> TensorRequest:
    """Validate a decoded V2 request (REST or gRPC); raises `RequestError` subclasses."""
    given: dict[str, InferInput] = {}
    for inp in request.inputs:
        if inp.name not in _DATATYPE:
            raise RequestError(
                f"input {inp.name!r} is not an input of {model_name} (inputs: {_INPUT_NAMES})"
            )
        if inp.name in given:
            raise RequestError(f"input {inp.name} is given more than once")
        given[inp.name] = inp
    strict_json = not request.from_grpc
    if "user_id" not in given:
        raise RequestError(
            "input user_id is required: INT64 [n], one row per user (-1: no user, rank history)"
        )
    users = _read(given["user_id"], strict_json)
    n = _check_users(users)
    histories = _histories(given.get("history"), n, strict_json)
    k = _scalar(given.get("k"), strict_json, DEFAULT_K)
    if not 1 <= k <= MAX_K:
        raise RequestError(f"input k must be an integer in 1..{MAX_K} (got {k})")
    exclude_seen = bool(_scalar(given.get("exclude_seen"), strict_json, True))
    instances = []
    for row, (user, history) in enumerate(zip(users.tolist(), histories, strict=True)):
        if user == NO_USER and not history:
            raise RequestError(
                f"row {row} needs a user_id or a non-empty history "
                f"(user_id[{row}] is -1 and history row {row} holds no content id)"
            )
        instances.append(
            Instance.model_construct(
                user_id=None if user == NO_USER else user,
                history=history or None,
                k=k,
                exclude_seen=exclude_seen,
            )
        )
    outputs = _requested_outputs(request.request_outputs, model_name)
    return TensorRequest(
        instances=instances,
        k=k,
        request_id=request.id or str(uuid.uuid4()),
        outputs=outputs,
        requested=request.request_outputs,
        binary_outputs=request.use_binary_outputs,
    )


def infer_response(
    request: TensorRequest,
    predictions: Sequence[dict[str, Any]],
    model_name: str,
    model_version: str,
) -> InferResponse:
    """The V2 response for V1-shaped ``predictions`` (one per row, in order)."""
    n, k = len(predictions), request.k
    tensors: dict[str, np.ndarray] = {}
    if "content_ids" in request.outputs or "scores" in request.outputs:
        content_ids = np.full((n, k), PAD, dtype=np.int64)
        scores = np.zeros((n, k), dtype=np.float32)
        for row, prediction in enumerate(predictions):
            width = len(prediction["content_ids"])
            content_ids[row, :width] = prediction["content_ids"]
            scores[row, :width] = prediction["scores"]
        tensors["content_ids"], tensors["scores"] = content_ids, scores
    if "fallback" in request.outputs:
        tensors["fallback"] = np.array([p["fallback"] for p in predictions], dtype=bool)
    if "reason" in request.outputs:
        tensors["reason"] = np.array([p["reason"] or "" for p in predictions], dtype=np.object_)
    outputs = []
    for name in request.outputs:
        tensor = tensors[name]
        output = InferOutput(name, list(tensor.shape), _OUTPUT_DATATYPE[name], data=tensor)
        if request.binary_outputs:
            # KServe 0.20's InferResponse.to_grpc cannot take an array when the outputs go raw
            # (it tests the array's truth value): hand it the raw bytes itself.
            output.set_data_from_numpy(tensor, binary_data=True)
        outputs.append(output)
    return InferResponse(
        response_id=request.request_id,
        model_name=model_name,
        model_version=model_version,
        infer_outputs=outputs,
        use_binary_outputs=request.binary_outputs,
        requested_outputs=request.requested,
    )


# -- reading tensors -----------------------------------------------------------------------------


def _read(inp: InferInput, strict_json: bool) -> np.ndarray:
    """The tensor as a numpy array of its documented datatype and a valid shape."""
    expected = _DATATYPE[inp.name]
    if inp.datatype != expected:
        raise RequestError(f"input {inp.name} must be {expected}, not {inp.datatype}")
    shape = [int(d) for d in inp.shape]
    if any(d < 0 for d in shape):
        raise RequestError(f"input {inp.name} has a negative dimension in its shape {shape}")
    if strict_json and isinstance(inp.data, list):
        bad = _first_not(_JSON_TYPE[expected], _leaves(inp.data))
        if bad is not _ALL_GOOD:
            kind = "integers" if expected == "INT64" else "true/false"
            raise RequestError(f"input {inp.name} must hold {kind} (got {_show(bad)})")
    try:
        return inp.as_numpy()
    except (ValueError, TypeError, OverflowError) as err:
        raise RequestError(
            f"input {inp.name} does not hold {math.prod(shape)} {expected} values "
            f"for its shape {shape}"
        ) from err


def _check_users(users: np.ndarray) -> int:
    if users.ndim != 1:
        raise RequestError(f"input user_id must have shape [n], not {list(users.shape)}")
    n = len(users)
    if n == 0:
        raise RequestError("input user_id must have at least one row")
    if n > MAX_INSTANCES:
        raise TooManyInstancesError(
            f"input user_id has {n} rows; at most {MAX_INSTANCES} per request"
        )
    bad = np.flatnonzero(users < NO_USER)
    if len(bad):
        row = int(bad[0])
        raise RequestError(
            f"input user_id[{row}] must be a user id >= 0, or -1 for no user "
            f"(got {int(users[row])})"
        )
    return n


def _histories(inp: InferInput | None, n: int, strict_json: bool) -> list[list[int]]:
    if inp is None:
        return [[] for _ in range(n)]
    history = _read(inp, strict_json)
    if history.ndim != 2 or history.shape[0] != n:
        raise RequestError(
            f"input history must have shape [n, h] with the {n} row(s) of user_id, "
            f"not {list(history.shape)}"
        )
    if history.shape[1] > MAX_HISTORY:
        raise RequestError(
            f"input history has {history.shape[1]} columns; at most {MAX_HISTORY} content ids "
            "per row"
        )
    bad = np.argwhere(history < PAD)
    if len(bad):
        row, col = (int(i) for i in bad[0])
        raise RequestError(
            f"input history[{row}, {col}] must be a content id >= 0, or -1 as padding "
            f"(got {int(history[row, col])})"
        )
    return [row[row != PAD].tolist() for row in history]


def _scalar(inp: InferInput | None, strict_json: bool, default: int) -> int:
    if inp is None:
        return default
    value = _read(inp, strict_json)
    if value.shape != (1,):
        raise RequestError(f"input {inp.name} must have shape [1], not {list(value.shape)}")
    return int(value[0])


def _requested_outputs(requested: list[RequestedOutput] | None, model_name: str) -> tuple[str, ...]:
    if not requested:
        return tuple(t["name"] for t in OUTPUTS)
    names: list[str] = []
    for output in requested:
        if output.name not in _OUTPUT_DATATYPE:
            raise RequestError(
                f"output {output.name!r} is not an output of {model_name} "
                f"(outputs: {_OUTPUT_NAMES})"
            )
        if output.name in names:
            raise RequestError(f"output {output.name} is requested more than once")
        names.append(output.name)
    return tuple(names)


_ALL_GOOD = object()


def _leaves(data: list[Any]) -> Iterator[Any]:
    """The values of a flat or nested JSON list, in row-major order (no recursion limit)."""
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            yield value
        else:
            stack.pop()


def _first_not(kind: type, values: Iterator[Any]) -> Any:
    """The first value whose type is not exactly ``kind``, else `_ALL_GOOD`."""
    return next((v for v in values if type(v) is not kind), _ALL_GOOD)


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else f'"{value}"'
    return text if len(text) <= 40 else text[:37] + "..."

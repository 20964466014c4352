"""The V1 request body the predictor accepts, validated with pydantic (strict types).

::

    {"instances": [{"user_id": 42, "k": 10},
                   {"history": [550, 680], "k": 5, "exclude_seen": false},
                   {"popular": true, "k": 12}]}

- ``user_id``: a non-negative integer, or absent/null;
- ``history``: a list of at most 1000 non-negative integer content ids, or absent/null;
- at least one of them (a non-empty history) per instance, unless it asks for ``popular``;
- ``popular``: a boolean (default false): ask for the popularity ranking itself (what a page
  shows before anyone is chosen); such an instance takes no ``user_id`` or ``history``, and
  its prediction is the popularity fallback (``fallback: true`` with its ``reason``). An empty
  history stays an error rather than meaning "popular", so a client that lost its input hears
  about it instead of silently getting the popular list;
- ``k``: an integer in 1..100 (default 10); ``exclude_seen``: a boolean (default true);
  false is refused (400) for a ``user_id`` the model knows (`model_server.model`), so the
  public route never returns what a known user watched;
- ``display``: a boolean (default false): add ``items`` with the catalog's display fields
  (title, poster, date, rating) to the prediction — what a page needs, not what a service
  comparing rankings needs, so it is asked for rather than always paid for; at most 50
  instances of a request may ask for it (a page shows one list; 1,000 instances x 100 items
  with titles would be a response of tens of MB): more is a 413;
- no other keys in an instance (a typo such as ``"userid"`` would otherwise silently fall back
  to the popularity ranking); other top-level keys are ignored;
- 1..1000 instances.

Strict means JSON types are not coerced: ``"42"``, ``42.0`` and ``true`` are not integers. A body
with NaN or Infinity (which are not JSON) is re-read leniently only to name the field that holds
them in the error message; it is rejected either way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from model_server.errors import (
    InvalidJSONError,
    RequestError,
    TooManyInstancesError,
)

MAX_INSTANCES = 1000
MAX_DISPLAY_INSTANCES = 50
MAX_HISTORY = 1000
MAX_K = 100
DEFAULT_K = 10
_INT64_MAX = 2**63 - 1

Id = Annotated[int, Field(ge=0, le=_INT64_MAX)]


class Instance(BaseModel):
    """One recommendation request."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    user_id: Id | None = None
    history: Annotated[list[Id], Field(max_length=MAX_HISTORY)] | None = None
    k: Annotated[int, Field(ge=1, le=MAX_K)] = DEFAULT_K
    exclude_seen: bool = True
    display: bool = False
    popular: bool = False


_INSTANCES = TypeAdapter(list[Instance])

# What each field must be, as the error message says it (pydantic's own texts name the
# constraint, not the field's contract).
_EXPECTED = {
    "user_id": "must be a non-negative integer or null",
    "history": f"must be a list of at most {MAX_HISTORY} content ids or null",
    "history[]": "must be a non-negative integer content id",
    "k": f"must be an integer in 1..{MAX_K}",
    "exclude_seen": "must be true or false",
    "display": "must be true or false",
    "popular": "must be true or false",
}
_FIELDS = ", ".join(_EXPECTED).replace(", history[]", "")


class _NonFinite:
    """Stands for a NaN/Infinity literal while re-reading an invalid body for a better message."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


def parse_body(body: bytes) -> list[Instance]:
    """Decode and validate a raw JSON body (UTF-8)."""
    if not body.strip():
        raise InvalidJSONError('request body is empty; expected JSON {"instances": [...]}')
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as err:
        _explain_invalid_json(body, err)
    return parse_payload(data)


def parse_payload(data: Any) -> list[Instance]:
    """Validate an already decoded body."""
    if not isinstance(data, Mapping):
        raise RequestError(
            f'request body must be a JSON object {{"instances": [...]}}, not {_json_type(data)}'
        )
    if "instances" not in data:
        raise RequestError('instances is required: {"instances": [{"user_id": 42}, ...]}')
    instances = data["instances"]
    if not isinstance(instances, list):
        raise RequestError(f"instances must be a list of objects, not {_json_type(instances)}")
    if not instances:
        raise RequestError("instances must not be empty")
    if len(instances) > MAX_INSTANCES:
        raise TooManyInstancesError(
            f"instances has {len(instances)} entries; at most {MAX_INSTANCES} per request"
        )
    try:
        parsed = _INSTANCES.validate_python(instances)
    except ValidationError as err:
        raise RequestError(_describe(err)) from err
    shown = sum(1 for instance in parsed if instance.display)
    if shown > MAX_DISPLAY_INSTANCES:
        raise TooManyInstancesError(
            f"{shown} instances ask for display: true; at most {MAX_DISPLAY_INSTANCES} per "
            "request (display fields are for a page showing a list)"
        )
    for i, instance in enumerate(parsed):
        if instance.popular:
            if instance.user_id is not None or instance.history is not None:
                raise RequestError(
                    f"instances[{i}] asks for popular movies: it takes no user_id or history"
                )
        elif instance.user_id is None and not instance.history:
            raise RequestError(
                f"instances[{i}] needs a user_id, a non-empty history or popular: true"
            )
    return parsed


def _explain_invalid_json(body: bytes, err: orjson.JSONDecodeError) -> None:
    """Raise `InvalidJSONError`, naming the field when the culprit is a NaN/Infinity literal."""
    found: list[_NonFinite] = []

    def constant(name: str) -> _NonFinite:
        found.append(_NonFinite(name))
        return found[-1]

    try:
        lenient = json.loads(body, parse_constant=constant)
    except (ValueError, RecursionError):
        lenient = None
    if found:
        try:
            parse_payload(lenient)
        except RequestError as named:
            raise InvalidJSONError(f"{named} (NaN and Infinity are not valid JSON)") from err
        raise InvalidJSONError(f"request body holds {found[0]!r}, which is not valid JSON") from err
    raise InvalidJSONError(f"request body is not valid JSON: {err}") from err


def _describe(err: ValidationError) -> str:
    """The first validation error as ``instances[1].k must be an integer in 1..100 (got 0)``."""
    first = err.errors(include_url=False)[0]
    loc = first["loc"]  # (index, field) or (index, "history", position) or (index,)
    path = f"instances[{loc[0]}]"
    if first["type"] == "extra_forbidden":
        return f"{path}.{loc[1]} is not a known field (known: {_FIELDS})"
    if len(loc) == 1:
        return f"{path} must be an object with {_FIELDS}, not {_json_type(first['input'])}"
    field = str(loc[1])
    if len(loc) > 2:
        path = f"{path}.{field}[{loc[2]}]"
        expected = _EXPECTED["history[]"]
    else:
        path = f"{path}.{field}"
        expected = _EXPECTED.get(field, first["msg"])
    return f"{path} {expected} (got {_show(first['input'])})"


def _show(value: Any) -> str:
    if isinstance(value, _NonFinite):
        return repr(value)
    text = json.dumps(value, default=repr)
    return text if len(text) <= 60 else text[:57] + "..."


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__

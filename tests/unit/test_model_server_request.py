"""Request validation of the model server: what is accepted, and what each error message names."""

from __future__ import annotations

import json

import pytest

from model_server.errors import InvalidJSONError, RequestError, TooManyInstancesError
from model_server.request import parse_body


def test_defaults_and_types() -> None:
    first, second = parse_body(b'{"instances": [{"user_id": 4}, {"history": [1, 2], "k": 3}]}')
    assert (first.user_id, first.history, first.k, first.exclude_seen) == (4, None, 10, True)
    assert (second.user_id, second.history, second.k) == (None, [1, 2], 3)


@pytest.mark.parametrize(
    ("body", "error", "message"),
    [
        (b"", InvalidJSONError, "request body is empty"),
        (b'{"instances": [{"user_id": 1, "k": NaN}]}', InvalidJSONError, "instances[0].k"),
        (b'{"instances": [{"user_id": 1}], "x": -Infinity}', InvalidJSONError, "-Infinity"),
        (
            b'{"instances": [{"user_id": 1}, {"user_id": 2, "k": 500}]}',
            RequestError,
            "instances[1].k must be an integer in 1..100 (got 500)",
        ),
        (b'{"instances": [{"user_id": false}]}', RequestError, "instances[0].user_id"),
        (b'{"instances": [{"user_id": -3}]}', RequestError, "instances[0].user_id"),
        (b'{"instances": [{"history": [3, null]}]}', RequestError, "instances[0].history[1]"),
        (b'{"instances": []}', RequestError, "must not be empty"),
        (b'{"instances": [3]}', RequestError, "instances[0] must be an object"),
        (
            json.dumps({"instances": [{"user_id": 1}] * 1001}).encode(),
            TooManyInstancesError,
            "at most 1000",
        ),
    ],
)
def test_errors_name_the_field(body: bytes, error: type[Exception], message: str) -> None:
    with pytest.raises(error) as caught:
        parse_body(body)
    assert type(caught.value) is error
    assert message in str(caught.value)

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


def test_popular_needs_no_user_or_history() -> None:
    (instance,) = parse_body(b'{"instances": [{"popular": true, "k": 12, "display": true}]}')
    assert (instance.popular, instance.user_id, instance.history, instance.k) == (
        True,
        None,
        None,
        12,
    )
    (instance,) = parse_body(b'{"instances": [{"popular": true, "user_id": null}]}')
    assert instance.popular and instance.user_id is None
    first, _ = parse_body(b'{"instances": [{"user_id": 4}, {"popular": true}]}')
    assert first.popular is False


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
        (
            b'{"instances": [{"history": []}]}',
            RequestError,
            "instances[0] needs a user_id, a non-empty history or popular: true",
        ),
        (
            b'{"instances": [{"user_id": 1}, {"popular": true, "user_id": 4}]}',
            RequestError,
            "instances[1] asks for popular movies: it takes no user_id or history",
        ),
        (
            b'{"instances": [{"popular": true, "history": []}]}',
            RequestError,
            "instances[0] asks for popular movies",
        ),
        (b'{"instances": [{"popular": 1}]}', RequestError, "instances[0].popular must be true"),
        (b'{"instances": [{"popular": false}]}', RequestError, "instances[0] needs a user_id"),
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

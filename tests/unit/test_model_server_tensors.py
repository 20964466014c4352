"""The V2 tensor layout: what a REST or gRPC request becomes, what each error names, and the
response tensors; and the model server's health while its model is not loaded."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kserve import InferInput, InferRequest, ModelRepository
from kserve.errors import ServerNotLive
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.rest.v2_datamodels import InferenceRequest
from prometheus_client import CollectorRegistry

from model_server.errors import RequestError, TooManyInstancesError
from model_server.metrics import Metrics
from model_server.model import RecommenderModel
from model_server.server import dataplane_class
from model_server.tensors import TensorRequest, infer_response, parse_infer_request
from recommenders import EASE, save
from recommenders.synthetic import synthetic_interactions

MODEL = "movie-recommender"


def _rest(inputs: list[dict[str, Any]], outputs: list[str] | None = None) -> InferRequest:
    """A request as KServe decodes a V2 REST JSON body."""
    body: dict[str, Any] = {"inputs": inputs}
    if outputs is not None:
        body["outputs"] = [{"name": name} for name in outputs]
    return InferRequest.from_inference_request(InferenceRequest.model_validate(body), MODEL)


def _grpc(*inputs: InferInput) -> InferRequest:
    """A request as KServe decodes a gRPC ModelInfer message (raw tensor bytes, as its client)."""
    message = InferRequest(MODEL, list(inputs)).to_grpc()
    return InferRequest.from_grpc(pb.ModelInferRequest.FromString(message.SerializeToString()))


def _tensor(name: str, values: Any, datatype: str = "INT64") -> dict[str, Any]:
    array = np.asarray(values)
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": array.tolist()}


def _grpc_tensor(name: str, array: np.ndarray, datatype: str = "INT64") -> InferInput:
    tensor = InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def test_rows_become_instances_with_defaults_and_padding_removed() -> None:
    request = _rest(
        [
            _tensor("user_id", [4, -1, 7]),
            _tensor("history", [[-1, -1, -1], [550, -1, 680], [12, 13, -1]]),
        ]
    )
    parsed = parse_infer_request(request, MODEL)
    assert [(i.user_id, i.history, i.k, i.exclude_seen) for i in parsed.instances] == [
        (4, None, 10, True),
        (None, [550, 680], 10, True),
        (7, [12, 13], 10, True),
    ]
    assert parsed.outputs == ("content_ids", "scores", "fallback", "reason")
    assert parsed.request_id  # generated when the request has none: V2 responses need one


def test_grpc_raw_tensors_read_like_rest_json() -> None:
    request = _grpc(
        _grpc_tensor("user_id", np.array([4, -1], dtype=np.int64)),
        _grpc_tensor("history", np.array([[-1, -1], [550, 680]], dtype=np.int64)),
        _grpc_tensor("k", np.array([3], dtype=np.int64)),
        _grpc_tensor("exclude_seen", np.array([False]), "BOOL"),
    )
    parsed = parse_infer_request(request, MODEL)
    assert [(i.user_id, i.history, i.k, i.exclude_seen) for i in parsed.instances] == [
        (4, None, 3, False),
        (None, [550, 680], 3, False),
    ]


@pytest.mark.parametrize(
    ("inputs", "error", "names"),
    [
        pytest.param([_tensor("k", [5])], RequestError, "input user_id is required", id="no user"),
        pytest.param(
            [_tensor("user_id", [1.0], "FP32")],
            RequestError,
            "input user_id must be INT64, not FP32",
            id="datatype",
        ),
        pytest.param(
            [{"name": "user_id", "shape": [2], "datatype": "INT64", "data": [1, 2.5]}],
            RequestError,
            "input user_id must hold integers (got 2.5)",
            id="float value",
        ),
        pytest.param(
            [{"name": "user_id", "shape": [1], "datatype": "INT64", "data": [True]}],
            RequestError,
            "input user_id must hold integers (got True)",
            id="bool value",
        ),
        pytest.param(
            [{"name": "user_id", "shape": [1], "datatype": "INT64", "data": ["1"]}],
            RequestError,
            'input user_id must hold integers (got "1")',
            id="string value",
        ),
        pytest.param(
            [{"name": "user_id", "shape": [3], "datatype": "INT64", "data": [1, 2]}],
            RequestError,
            "input user_id does not hold 3 INT64 values for its shape [3]",
            id="shape vs data",
        ),
        pytest.param(
            [_tensor("user_id", [[1, 2]])],
            RequestError,
            "input user_id must have shape [n], not [1, 2]",
            id="user rank",
        ),
        pytest.param(
            [_tensor("user_id", np.zeros(0, dtype=np.int64))],
            RequestError,
            "at least one row",
            id="no rows",
        ),
        pytest.param(
            [_tensor("user_id", np.ones(1001, dtype=np.int64))],
            TooManyInstancesError,
            "input user_id has 1001 rows; at most 1000",
            id="too many rows",
        ),
        pytest.param(
            [_tensor("user_id", [3, -2])],
            RequestError,
            "input user_id[1] must be a user id >= 0, or -1",
            id="negative user",
        ),
        pytest.param(
            [_tensor("user_id", [3, -1]), _tensor("history", [[-1], [-1]])],
            RequestError,
            "row 1 needs a user_id or a non-empty history",
            id="nothing to rank",
        ),
        pytest.param(
            [_tensor("user_id", [-1])],
            RequestError,
            "row 0 needs a user_id or a non-empty history",
            id="no user and no history",
        ),
        pytest.param(
            [_tensor("user_id", [1, 2]), _tensor("history", [[5]])],
            RequestError,
            "input history must have shape [n, h] with the 2 row(s) of user_id, not [1, 1]",
            id="history rows",
        ),
        pytest.param(
            [_tensor("user_id", [1]), _tensor("history", np.ones((1, 1001), dtype=np.int64))],
            RequestError,
            "input history has 1001 columns; at most 1000",
            id="history too long",
        ),
        pytest.param(
            [_tensor("user_id", [-1]), _tensor("history", [[5, -3]])],
            RequestError,
            "input history[0, 1] must be a content id >= 0, or -1 as padding (got -3)",
            id="negative content id",
        ),
        pytest.param(
            [_tensor("user_id", [1]), _tensor("k", [0])],
            RequestError,
            "input k must be an integer in 1..100 (got 0)",
            id="k zero",
        ),
        pytest.param(
            [_tensor("user_id", [1]), _tensor("k", [101])],
            RequestError,
            "input k must be an integer in 1..100 (got 101)",
            id="k too big",
        ),
        pytest.param(
            [_tensor("user_id", [1]), _tensor("k", [5, 6])],
            RequestError,
            "input k must have shape [1], not [2]",
            id="k shape",
        ),
        pytest.param(
            [_tensor("user_id", [1]), _tensor("exclude_seen", [1])],
            RequestError,
            "input exclude_seen must be BOOL, not INT64",
            id="exclude_seen datatype",
        ),
        pytest.param(
            [
                _tensor("user_id", [1]),
                {"name": "exclude_seen", "shape": [1], "datatype": "BOOL", "data": ["false"]},
            ],
            RequestError,
            'input exclude_seen must hold true/false (got "false")',
            id="exclude_seen a string",
        ),
        pytest.param(
            [_tensor("userid", [1])],
            RequestError,
            "input 'userid' is not an input of movie-recommender",
            id="unknown input",
        ),
        pytest.param(
            [_tensor("user_id", [1]), _tensor("user_id", [2])],
            RequestError,
            "input user_id is given more than once",
            id="duplicate input",
        ),
    ],
)
def test_errors_name_the_tensor(
    inputs: list[dict[str, Any]], error: type[Exception], names: str
) -> None:
    with pytest.raises(error) as raised:
        parse_infer_request(_rest(inputs), MODEL)
    assert names in str(raised.value)


def test_requested_outputs_are_checked_and_kept_in_order() -> None:
    inputs = [_tensor("user_id", [1])]
    parsed = parse_infer_request(_rest(inputs, ["fallback", "content_ids"]), MODEL)
    assert parsed.outputs == ("fallback", "content_ids")
    with pytest.raises(RequestError, match="output 'score' is not an output"):
        parse_infer_request(_rest(inputs, ["score"]), MODEL)


def _request(k: int, outputs: tuple[str, ...]) -> TensorRequest:
    return TensorRequest(
        instances=[], k=k, request_id="r", outputs=outputs, requested=None, binary_outputs=False
    )


def test_response_tensors_pad_short_rankings() -> None:
    predictions = [
        {"content_ids": [3, 1, 2], "scores": [0.5, 0.25, 0.125], "fallback": False, "reason": None},
        {"content_ids": [9], "scores": [7.0], "fallback": True, "reason": "unknown user 5"},
    ]
    names = ("content_ids", "scores", "fallback", "reason")
    response = infer_response(_request(3, names), predictions, MODEL, "7")
    assert (response.id, response.model_name, response.model_version) == ("r", MODEL, "7")
    tensors = {o.name: (o.datatype, o.shape, o.data) for o in response.outputs}
    assert [o.name for o in response.outputs] == list(names)
    content_ids, scores = tensors["content_ids"], tensors["scores"]
    assert content_ids[:2] == ("INT64", [2, 3])
    assert content_ids[2].tolist() == [[3, 1, 2], [9, -1, -1]]
    assert scores[:2] == ("FP32", [2, 3])
    assert scores[2].tolist() == [[0.5, 0.25, 0.125], [7.0, 0.0, 0.0]]
    assert tensors["fallback"][2].tolist() == [False, True]
    assert tensors["reason"][2].tolist() == ["", "unknown user 5"]
    only = infer_response(_request(3, ("fallback",)), predictions, MODEL, "7")
    assert [o.name for o in only.outputs] == ["fallback"]


# -- health: live and ready only while the model is loaded ----------------------------------


@pytest.fixture
def artefact(tmp_path: Path) -> Path:
    interactions, catalog = synthetic_interactions(
        n_users=40, n_items=30, n_interactions=400, seed=5
    )
    directory = tmp_path / "model"
    save(EASE(lambda_=10.0).fit(interactions, catalog), directory)
    return directory


def test_health_fails_while_the_model_is_not_loaded(artefact: Path) -> None:
    model = RecommenderModel(MODEL, artefact, Metrics.create(CollectorRegistry()))
    registry = ModelRepository()
    registry.update(model)
    plane = dataplane_class()(model_registry=registry)
    model.start()  # what KServe calls on registration: it must not mark the model ready

    assert asyncio.run(plane.ready()) is False
    with pytest.raises(ServerNotLive, match=f"model not loaded: {MODEL}"):
        asyncio.run(plane.live())

    model.load()
    assert asyncio.run(plane.ready()) is True
    assert asyncio.run(plane.live()) == {"status": "alive"}
    assert plane.metadata()["extensions"] == []  # no model-repository extension advertised

    registry.unload(MODEL)
    assert asyncio.run(plane.ready()) is False
    with pytest.raises(ServerNotLive, match="no model registered"):
        asyncio.run(plane.live())

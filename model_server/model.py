"""`RecommenderModel`: the `kserve.Model` that serves a recommender artefact.

Load once (`load`: read and verify the artefact, build the display lookup), predict many
(`preprocess` validates, `predict` calls `FittedRecommender.recommend_many` and shapes the
answer). Scoring itself lives in `recommenders`, so this server ranks exactly as
``recommenders.load(dir).recommend(...)`` does in-process.

Response (V1)::

    {"model_name": "movie-recommender", "model_version": "3",
     "predictions": [{"content_ids": [...], "scores": [...], "fallback": false, "reason": null,
                      "items": [{"content_id", "title", "poster_path", "release_date",
                                 "vote_average", "score"}, ...]}, ...]}

(``items`` only for instances that ask ``"display": true``.)

plus the ``X-Model-Version`` response header. An instance that asks ``"popular": true`` is
answered by the recommender's own popularity fallback (no user, no history), so its prediction
has ``fallback: true`` and that fallback's ``reason``. The V2 protocol
(``/v2/models/<name>/infer`` and gRPC ``ModelInfer``) is `model_server.tensors`: its rows
become the same `Instance` objects and are answered by the same `RecommenderModel.recommend`,
on a path of its own (the V1 path is tuned for throughput and does not pay for V2).

Unknown content ids in a history: when the history is what the model scores (no ``user_id``, or
a ``user_id`` the model does not know), ids the model does not know are ignored and ``reason``
lists them; a history with no known id at all is refused (422, naming the ids), because the
caller asked for a personalised answer that cannot be given. A known user's ranking comes from
their training interactions and any ``history`` sent with it is not used (nor checked).

A known user's seen items are never returned: ``exclude_seen: false`` (V2: the
``exclude_seen`` tensor false) with a ``user_id`` the model knows is refused with a 400 naming
the field, because comparing that ranking with the default one lists exactly the films the user
watched (`SeenItemsRefusedError`; docs/security.md). An anonymous history may still ask for
its own items back: the caller sent them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from kserve import InferRequest, InferResponse, Model

from contracts.names import VERSION_HEADER
from model_server.errors import (
    ModelNotLoadedError,
    RequestError,
    SeenItemsRefusedError,
    UnknownContentError,
    UnsupportedMediaTypeError,
)
from model_server.metrics import Metrics
from model_server.request import Instance, parse_body, parse_payload
from model_server.tensors import (
    TensorRequest,
    infer_response,
    input_types,
    output_types,
    parse_infer_request,
)
from recommenders import FittedRecommender, Recommendation, load
from recommenders.artifact import CHECKSUMS, verify_digest

log = logging.getLogger(__name__)

# What `model_server.server.JSONBodyMiddleware` sets on a JSON predict body so that KServe
# hands the undecoded bytes to `preprocess` (KServe decodes only exact media types itself).
UNDECODED_JSON = "application/vnd.movie-mlops.undecoded+json"
DISPLAY_FIELDS = ("title", "poster_path", "release_date", "vote_average")
_SHOWN_UNKNOWN = 20  # unknown ids listed in a message, at most


def artifact_version(directory: Path, model: FittedRecommender) -> str:
    """The version an artefact names itself when nobody says otherwise.

    ``trained_on["model_version"]``, else ``run-<trained_on["run_id"]>``, else
    ``sha256-<12 hex of checksums.json>`` (which pins every file of the artefact).
    """
    trained_on = model.trained_on
    if trained_on.get("model_version"):
        return str(trained_on["model_version"])
    if trained_on.get("run_id"):
        return f"run-{trained_on['run_id']}"
    digest = json.loads((directory / CHECKSUMS).read_text()).get("files", {})
    text = json.dumps(digest, sort_keys=True).encode()
    return "sha256-" + hashlib.sha256(text).hexdigest()[:12]


def _display_lookup(model: FittedRecommender) -> dict[int, dict[str, Any]]:
    """content_id -> display fields (None where the catalog lacks them), built once at load."""
    catalog = model.catalog
    if catalog is None or "content_id" not in catalog:
        return {}
    lookup: dict[int, dict[str, Any]] = {}
    columns = [c for c in DISPLAY_FIELDS if c in catalog.columns]
    for row in catalog[["content_id", *columns]].itertuples(index=False):
        values = dict(zip(["content_id", *columns], row, strict=True))
        item: dict[str, Any] = {"content_id": int(values["content_id"])}
        for field in DISPLAY_FIELDS:
            item[field] = _json_value(values.get(field))
        lookup[item["content_id"]] = item
    return lookup


def _json_value(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, float | np.floating):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if hasattr(value, "isoformat"):  # a date-typed release_date
        return value.isoformat()[:10]
    return value if isinstance(value, str) else str(value)


class RecommenderModel(Model):
    """Serves one recommender artefact directory under ``name``."""

    def __init__(
        self,
        name: str,
        model_dir: str | Path,
        metrics: Metrics,
        version: str | None = None,
        digest: str | None = None,
    ) -> None:
        super().__init__(name, return_response_headers=True)
        self.model_dir = Path(model_dir)
        self.digest = digest  # when given, the artefact must have exactly this digest
        self.metrics = metrics
        self.version = version or ""
        self._requested_version = version
        self.recommender: FittedRecommender | None = None
        self._display: dict[int, dict[str, Any]] = {}

    # -- load once ---------------------------------------------------------------------------

    def load(self) -> bool:
        """Read and verify the artefact; ``ready`` only when that succeeded.

        Raises `recommenders.errors.ArtifactError` (or its subclass
        `ArtifactCorruptError`) for a missing, unreadable or corrupt artefact, and for one whose
        files are not those registered (``digest``, from ``MODEL_DIGEST``).
        """
        self.ready = False
        if self.digest is not None:
            verify_digest(self.model_dir, self.digest)
        recommender = load(self.model_dir, verify=True)
        self.version = self._requested_version or artifact_version(self.model_dir, recommender)
        self._display = _display_lookup(recommender)
        self._users = recommender.known_users
        self._items = recommender.known_items
        self._predictions = self.metrics.predictions.labels(model_version=self.version)
        self._fallbacks = self.metrics.fallbacks.labels(model_version=self.version)
        self.metrics.bind(self.version)
        self.recommender = recommender
        log.info(
            "loaded %s model version %s from %s: %d users, %d items, %d with display fields",
            recommender.model_type,
            self.version,
            self.model_dir,
            recommender.n_users,
            recommender.n_items,
            len(self._display),
        )
        self.ready = True
        return self.ready

    def start(self) -> None:
        """Nothing to start; unlike KServe's default this does not set ``ready``.

        KServe calls ``start`` on every model it registers, and its default marks the model
        ready whether or not it was loaded: readiness here means `load` succeeded.
        """

    def get_input_types(self) -> list[dict[str, Any]]:
        """The V2 input tensors (`model_server.tensors.INPUTS`), for model metadata."""
        return input_types()

    def get_output_types(self) -> list[dict[str, Any]]:
        """The V2 output tensors (`model_server.tensors.OUTPUTS`), for model metadata."""
        return output_types()

    # -- predict many --------------------------------------------------------------------------

    def preprocess(  # type: ignore[override]
        self, payload: Any, headers: dict[str, str] | None = None
    ) -> list[Instance] | TensorRequest:
        """Validate the body into `Instance` objects (raises `RequestError` subclasses).

        A V1 body arrives as bytes (or a dict KServe decoded); a V2 request (REST or gRPC) as
        KServe's `InferRequest`, which becomes a `TensorRequest`.
        """
        if isinstance(payload, bytes | bytearray):
            content_type = (headers or {}).get("content-type", "")
            if content_type != UNDECODED_JSON:
                raise UnsupportedMediaTypeError(
                    f"Content-Type {content_type!r} is not supported; send application/json (UTF-8)"
                )
            return parse_body(bytes(payload))
        if isinstance(payload, dict):  # KServe decoded it (e.g. application/cloudevents+json)
            return parse_payload(payload)
        if isinstance(payload, InferRequest):
            return parse_infer_request(payload, self.name)
        raise RequestError(
            f"model {self.name} takes V1 {{'instances': [...]}} or V2 {{'inputs': [...]}} requests"
        )

    def predict(  # type: ignore[override]
        self,
        payload: list[Instance] | TensorRequest,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> dict[str, Any] | InferResponse:
        """One prediction per instance (V2: per row), in order, and the version that made them."""
        if response_headers is not None:
            response_headers[VERSION_HEADER] = self.version
        if isinstance(payload, TensorRequest):
            return self._infer(payload)
        predictions = self.recommend(payload)
        self._count(predictions)
        return {"model_name": self.name, "model_version": self.version, "predictions": predictions}

    def _infer(self, request: TensorRequest) -> InferResponse:
        """The V2 answer: the V1 predictions of the request's rows, as tensors."""
        predictions = self.recommend(
            request.instances,
            history_field="input history row {}",
            exclude_field="input exclude_seen (row {})",
        )
        self._count(predictions)
        return infer_response(request, predictions, self.name, self.version)

    def _count(self, predictions: Sequence[dict[str, Any]]) -> None:
        self._predictions.inc(len(predictions))
        fallbacks = sum(1 for p in predictions if p["fallback"])
        if fallbacks:
            self._fallbacks.inc(fallbacks)

    def recommend(
        self,
        instances: Sequence[Instance],
        history_field: str = "instances[{}].history",
        exclude_field: str = "instances[{}].exclude_seen",
    ) -> list[dict[str, Any]]:
        """The ``predictions`` list for validated instances.

        ``history_field`` and ``exclude_field`` name instance ``i``'s history and
        ``exclude_seen`` in error messages (``.format(i)``).
        """
        model = self.recommender
        if model is None:
            raise ModelNotLoadedError(f"model {self.name} is not loaded")
        self._check_exclusion(instances, exclude_field)
        notes = self._check_histories(instances, history_field)
        if len(instances) == 1:  # the common single-request case: no grouping needed
            inst = instances[0]
            rec = model.recommend(inst.user_id, inst.history, inst.k, inst.exclude_seen)
            return [self._prediction(rec, inst.k, notes.get(0), inst.display)]
        predictions: list[dict[str, Any] | None] = [None] * len(instances)
        # recommend_many takes one k and one exclude_seen per call: group by exclude_seen and
        # ask for the largest k; top-k is deterministic, so a prefix of it is the smaller top-k.
        for exclude in (True, False):
            rows = [i for i, inst in enumerate(instances) if inst.exclude_seen is exclude]
            if not rows:
                continue
            recs = model.recommend_many(
                [instances[i].user_id for i in rows],
                [instances[i].history for i in rows],
                k=max(instances[i].k for i in rows),
                exclude_seen=exclude,
            )
            for i, rec in zip(rows, recs, strict=True):
                predictions[i] = self._prediction(
                    rec, instances[i].k, notes.get(i), instances[i].display
                )
        return predictions  # type: ignore[return-value]

    def _check_exclusion(self, instances: Sequence[Instance], field: str) -> None:
        """Raises `SeenItemsRefusedError` if a known user asks for their seen items back."""
        asking = [i for i, inst in enumerate(instances) if not inst.exclude_seen]
        if not asking:
            return
        users = np.array(
            [-1 if instances[i].user_id is None else instances[i].user_id for i in asking],
            dtype=np.int64,
        )
        known = np.flatnonzero(_isin_sorted(users, self._users))
        if len(known):
            i = asking[int(known[0])]
            raise SeenItemsRefusedError(
                f"{field.format(i)} false is refused: the model knows this user_id, and a "
                "known user's recommendations never include what they have watched (leave "
                "exclude_seen out, or send true)"
            )

    def _check_histories(self, instances: Sequence[Instance], field: str) -> dict[int, str]:
        """Notes on ignored unknown ids; raises `UnknownContentError` for an unusable history."""
        if not any(inst.history for inst in instances):
            return {}
        users = np.array(
            [-1 if inst.user_id is None else inst.user_id for inst in instances], dtype=np.int64
        )
        known_user = _isin_sorted(users, self._users)
        notes: dict[int, str] = {}
        for i, inst in enumerate(instances):
            if known_user[i] or not inst.history:
                continue
            history = np.asarray(inst.history, dtype=np.int64)
            known = _isin_sorted(history, self._items)
            if known.all():
                continue
            unknown = list(dict.fromkeys(history[~known].tolist()))
            shown = unknown[:_SHOWN_UNKNOWN] + (["..."] if len(unknown) > _SHOWN_UNKNOWN else [])
            listed = ", ".join(map(str, shown))
            if not known.any():
                raise UnknownContentError(
                    f"{field.format(i)} holds no content id the model knows (unknown: [{listed}])"
                )
            notes[i] = f"ignored {len(unknown)} unknown content id(s) in history: [{listed}]"
        return notes

    def _prediction(
        self, rec: Recommendation, k: int, note: str | None, display: bool
    ) -> dict[str, Any]:
        """`Recommendation.to_dict` of the top ``k``, plus display ``items`` when asked for.

        Built directly (``tolist`` gives the same Python ints and floats as ``to_dict``): at
        1,000 users x 10 items this loop was ~10% of a request's time.
        """
        reason = rec.reason if rec.fallback or note is None else note
        content_ids = rec.content_ids[:k].tolist()
        scores = rec.scores[:k].tolist()
        prediction = {
            "content_ids": content_ids,
            "scores": scores,
            "fallback": rec.fallback,
            "reason": reason,
        }
        if display:
            shown = self._display
            prediction["items"] = [
                {**(shown.get(cid) or _no_display(cid)), "score": score}
                for cid, score in zip(content_ids, scores, strict=True)
            ]
        return prediction


def _no_display(content_id: int) -> dict[str, Any]:
    return {"content_id": content_id, **dict.fromkeys(DISPLAY_FIELDS)}


def _isin_sorted(values: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    """Which ``values`` occur in the sorted id array (the recommenders keep ids sorted)."""
    if len(sorted_ids) == 0:
        return np.zeros(len(values), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_ids, values), len(sorted_ids) - 1)
    return sorted_ids[pos] == values

"""The MLflow pyfunc flavour of a recommender: the same artefact and scoring as the predictor.

``mlflow.pyfunc.load_model("models:/movie-recommender/<v>").predict(frame)`` takes a DataFrame with
one row per request — ``user_id`` (int64), ``history`` (list of content ids), ``k`` (default 10),
``exclude_seen`` (default true), every column optional — and returns one row per request with
``content_ids``, ``scores``, ``fallback`` and ``reason``: the same ranking the KServe predictor
returns for that version, because both call `FittedRecommender.recommend` on the same files.

``user_id`` is typed ``any`` in the signature and validated here: ids are int64, and no MLflow
column type holds "an integer or missing" — a ``long`` column refuses the NaN pandas puts beside
user rows in a mixed batch, a ``double`` column refuses int64 input (MLflow only casts integers
of up to 6 bytes to double). An integral float (``42.0``, what pandas makes of a mixed column)
is accepted; anything else is refused naming the row.

Loading this flavour runs the project's code (``pyfunc_model.py`` and the packages logged as
``code_paths``); a consumer that only needs rankings loads the numpy artefact under ``kserve/``
with `recommenders.load`, which runs none (arrays are read with ``allow_pickle=False``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, DataType, Schema
from mlflow.types.schema import AnyType, Array

from contracts.names import ARTIFACT_PATH
from recommenders.errors import InvalidRequestError

ARTIFACT_KEY = ARTIFACT_PATH
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")


def signature() -> ModelSignature:
    """Input: one row per request; output: one ranking per row."""
    return ModelSignature(
        inputs=Schema(
            [
                ColSpec(AnyType(), "user_id", required=False),  # an int64 id or missing
                ColSpec(Array(DataType.long), "history", required=False),
                ColSpec(DataType.long, "k", required=False),
                ColSpec(DataType.boolean, "exclude_seen", required=False),
            ]
        ),
        outputs=Schema(
            [
                ColSpec(Array(DataType.long), "content_ids"),
                ColSpec(Array(DataType.double), "scores"),
                ColSpec(DataType.boolean, "fallback"),
                ColSpec(DataType.string, "reason"),
            ]
        ),
    )


def requirements() -> list[str]:
    """Exact pins of what loading the model needs, taken from the running environment."""
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "numpy", "pandas", "scipy", "pyarrow")]


def _optional_int(value: Any, field: str, row: int) -> int | None:
    """An integer field of a request row: None when missing, an error naming it when not an int."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise InvalidRequestError(f"row {row}: {field} must be an integer, got {value!r}")
    if float(value) != int(value):
        raise InvalidRequestError(f"row {row}: {field} must be an integer, got {value!r}")
    return int(value)


def _history(value: Any) -> list[int] | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return [int(v) for v in value]


class RecommenderPyfunc(mlflow.pyfunc.PythonModel):
    """Loads the numpy artefact once; `predict` scores every row with it."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from recommenders.artifact import load

        self.model = load(context.artifacts[ARTIFACT_KEY], verify=True)

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        rows = []
        for row, record in enumerate(model_input.to_dict(orient="records")):
            k = _optional_int(record.get("k"), "k", row) or 10
            exclude = record.get("exclude_seen")
            rec = self.model.recommend(
                user_id=_optional_int(record.get("user_id"), "user_id", row),
                history=_history(record.get("history")),
                k=k,
                exclude_seen=True if exclude is None else bool(exclude),
            )
            rows.append(
                {
                    "content_ids": rec.content_ids.tolist(),
                    "scores": [float(s) for s in rec.scores],
                    "fallback": rec.fallback,
                    "reason": rec.reason or "",
                }
            )
        return pd.DataFrame(rows, columns=["content_ids", "scores", "fallback", "reason"])

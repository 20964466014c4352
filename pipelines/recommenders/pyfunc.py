"""The MLflow pyfunc flavour of a recommender: the same artefact and scoring as the predictor.

``mlflow.pyfunc.load_model("models:/movie-recommender/<v>").predict(frame)`` takes a DataFrame with
one row per request — ``user_id`` (nullable), ``history`` (list of content ids, nullable), ``k``
(default 10), ``exclude_seen`` (default true) — and returns one row per request with
``content_ids``, ``scores``, ``fallback`` and ``reason``: the same ranking the KServe predictor
returns for that version, because both call `FittedRecommender.recommend` on the same files.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, DataType, Schema
from mlflow.types.schema import Array

ARTIFACT_KEY = "kserve"
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")


def signature() -> ModelSignature:
    """Input: one row per request; output: one ranking per row."""
    return ModelSignature(
        inputs=Schema(
            [
                # double, not long: pandas holds a nullable integer column as float, and a batch
                # mixing user rows with history-only rows has missing user ids
                ColSpec(DataType.double, "user_id", required=False),
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


def _optional_int(value: Any) -> int | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return int(value)


def _history(value: Any) -> list[int] | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return [int(v) for v in value]


class RecommenderPyfunc(mlflow.pyfunc.PythonModel):
    """Loads the numpy artefact once; `predict` scores every row with it."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from pipelines.recommenders.artifact import load

        self.model = load(context.artifacts[ARTIFACT_KEY], verify=True)

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        rows = []
        for record in model_input.to_dict(orient="records"):
            k = _optional_int(record.get("k")) or 10
            exclude = record.get("exclude_seen")
            rec = self.model.recommend(
                user_id=_optional_int(record.get("user_id")),
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

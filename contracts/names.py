"""Names that cross a component boundary: registry, artefact, response headers."""

from __future__ import annotations

# The registered model in MLflow, the InferenceService and the KServe model name.
MODEL_NAME = "movie-recommender"
# The MLflow experiment training logs its runs in.
EXPERIMENT_NAME = "movie-recommender"
# Folder inside a run (and inside the pyfunc model) holding the plain numpy artefact that the
# KServe predictor loads: `STORAGE_URI` points at it.
ARTIFACT_PATH = "kserve"

# MLflow aliases — the deployment record:
CHAMPION = "champion"  # the version at 100 %
PREVIOUS = "previous"  # the champion it replaced: the rollback target
CHALLENGER = "challenger"  # passed the gate, not (yet) promoted

# Tag on a model version: "passed" or "failed", written by training's quality gate.
QUALITY_GATE_TAG = "quality_gate"

# Tag on a model version: `recommenders.artifact.artifact_digest` of its numpy artefact, written
# at registration; the InferenceService carries it (MODEL_DIGEST) and the predictor refuses an
# artefact that does not match it.
DIGEST_TAG = "artifact_digest"

# Every predictor response names the version that answered.
VERSION_HEADER = "X-Model-Version"

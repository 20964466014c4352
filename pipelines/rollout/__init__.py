"""Canary, promote and roll back model versions of the `movie-recommender` InferenceService.

The same steps (`pipelines.rollout.steps`) drive the cluster (the InferenceService object,
through the Kubernetes API) and the local stack (the same document in
``.local/stack/inferenceservice.json``, reconciled by ``localstack.controller``): the two
`pipelines.rollout.backends`. Semantics are KServe's (Knative deployment mode):

``canary --version N [--percent P] [--force]``
    Point the predictor at registered version N (``STORAGE_URI`` = that version's artefact on the
    ``mlflow-artifacts`` volume, ``MODEL_VERSION`` = N) with ``canaryTrafficPercent: P``. KServe
    starts a new revision and, once it is ready, sends it P % of the traffic; the last rolled-out
    revision keeps the rest. With nothing rolled out yet, the version simply gets 100 %. A
    version whose quality gate failed at training is refused unless ``--force``.
``promote``
    Drop ``canaryTrafficPercent``: the canary's revision gets 100 % and becomes the rolled-out one;
    the MLflow alias ``champion`` moves to its version, the old champion becomes ``previous`` and
    ``challenger`` is cleared from the promoted version.
``rollback``
    During a canary, ``canaryTrafficPercent: 0``: all traffic returns to the last rolled-out
    revision at once, no new pods needed, ``champion`` unchanged. After a promote, ``champion``
    moves back to the version aliased ``previous`` and ``canaryTrafficPercent: 0`` routes all
    traffic to KServe's ``previousRolledoutRevision`` (no new revision); when KServe has none to
    route back to, the predictor is pointed at that version instead (a new revision). See
    docs/cluster.md, "Canary semantics".

The registry's aliases are the deployment record (``champion`` = what is served at 100 %); the
InferenceService carries only what KServe needs (``STORAGE_URI``, ``MODEL_VERSION``, the split).
"""

from pipelines.rollout.backends import Backend, ClusterBackend, LocalBackend, make_backend
from pipelines.rollout.steps import RolloutSettings, Target, canary, promote, rollback

__all__ = [
    "Backend",
    "ClusterBackend",
    "LocalBackend",
    "RolloutSettings",
    "Target",
    "canary",
    "make_backend",
    "promote",
    "rollback",
]

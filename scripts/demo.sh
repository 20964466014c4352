#!/usr/bin/env bash
# `make demo`: the whole flow on one machine, through the local twin of the cluster.
#   TMDB (or the project's sandbox) -> raw snapshot -> feature snapshot -> MLflow version
#   -> InferenceService revision (canary, promote) -> predictions through the ingress.
# Safe to run again: every run adds new immutable snapshots and a new model version.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
PAGES="${DEMO_PAGES:-50}"
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "local stack (MLflow, TMDB sandbox, ingress, Prometheus) — make up"
$PY -m localstack up

export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-http://127.0.0.1:${MLFLOW_PORT:-5000}}"
if [[ -n "${TMDB_ACCESS_TOKEN:-}${TMDB_API_KEY:-}" ]]; then
  step "crawl pages 1..$PAGES of TMDB /movie/popular (credential from the environment)"
else
  step "crawl pages 1..$PAGES from the TMDB sandbox (no TMDB_ACCESS_TOKEN / TMDB_API_KEY set)"
  export TMDB_BASE_URL="http://127.0.0.1:${SANDBOX_PORT:-8090}/3"
  export TMDB_ACCESS_TOKEN=sandbox-token # the sandbox's own fake credential
  export TMDB_RATE_LIMIT="${TMDB_RATE_LIMIT:-0}"
fi
$PY -m pipelines.crawl --start-page 1 --end-page "$PAGES"

step "features: catalog + simulated watch logs -> versioned snapshot"
$PY -m pipelines.features build

step "evaluate: every model on this snapshot, same holdout"
$PY -m pipelines.evaluate

step "train: fit, evaluate, gate, register in MLflow"
train_log="$(mktemp)"
trap 'rm -f "$train_log"' EXIT
set +e
$PY -m pipelines.train | tee "$train_log"
train_rc=${PIPESTATUS[0]}
set -e
version="$(sed -n 's/^registered movie-recommender version \([0-9]*\) .*/\1/p' "$train_log")"
if [[ $train_rc -ne 0 ]]; then
  echo "training did not produce a version that passed the quality gate (exit $train_rc); the" \
    "served version is unchanged" >&2
  exit "$train_rc"
fi

step "serve version $version through the ingress (KServe canary semantics)"
if $PY -m pipelines.rollout status >/dev/null 2>&1; then
  $PY -m pipelines.rollout canary --version "$version"
  step "simulated users during the canary: each stays on one arm (X-User-Id), clicks by taste"
  $PY -m pipelines.traffic --users 100 --requests 300 --duration 30
  $PY -m pipelines.rollout promote
else
  $PY -m pipelines.rollout canary --version "$version" # first rollout: 100 %
fi

step "predictions"
$PY -m localstack predict --user 1 --k 5
$PY -m localstack predict --history "$($PY -m localstack popular --n 2)" --k 5
$PY -m localstack predict --user 999999999 --k 5

cat <<MSG

The page:      http://127.0.0.1:${INGRESS_PORT:-8080}
Predict:       curl -s -H 'Content-Type: application/json' \\
                 -d '{"instances": [{"user_id": 1, "k": 5}]}' \\
                 http://127.0.0.1:${INGRESS_PORT:-8080}/v1/models/movie-recommender:predict
MLflow UI:     $MLFLOW_TRACKING_URI
Prometheus UI: ${PROMETHEUS_URL:-http://127.0.0.1:${PROMETHEUS_PORT:-9090}}  (canary analysis:
               python -m pipelines.rollout analyze; automated: rollout auto --version N)
Traffic:       make status        Stop everything: make down
MSG

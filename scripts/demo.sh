#!/usr/bin/env bash
# `make demo`: the whole flow on one machine, through the local twin of the cluster.
#   TMDB (or the project's sandbox) -> raw snapshot -> feature snapshot -> MLflow version
#   -> InferenceService revision (canary judged by measurement: promote or roll back)
#   -> predictions through the ingress, logged; simulated users' clicks come back as events.
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
traffic_log="$(mktemp)"
trap 'rm -f "$train_log" "$traffic_log"' EXIT
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

INGRESS="http://127.0.0.1:${INGRESS_PORT:-8080}"
# simulated users (their genre tastes from the snapshot) ask for recommendations through the
# ingress and click by taste, in the background, while a canary is judged
traffic_start() {
  $PY -m pipelines.traffic --ingress-url "$INGRESS" --users 300 --requests 1000000 \
    --duration "$1" --rate 40 >"$traffic_log" 2>&1 &
  traffic_pid=$!
}
traffic_stop() {
  kill -TERM "$traffic_pid" 2>/dev/null || true
  wait "$traffic_pid" 2>/dev/null || true
  echo "what the simulated users did (requests, impressions, clicks, CTR by version):"
  grep -E '^(version|[0-9?]+ )' "$traffic_log" | sed 's/^/  /' || true
}

if $PY -m pipelines.rollout status >/dev/null 2>&1; then
  step "automated progressive rollout of version $version: each step judged in Prometheus" \
    "(errors, p99, CTR vs the champion) — rollout auto"
  traffic_start 600
  $PY -m pipelines.rollout auto --version "$version" --interval 15
  traffic_stop
else
  step "serve version $version through the ingress (KServe canary semantics)"
  $PY -m pipelines.rollout canary --version "$version" # first rollout: 100 %
fi

step "a deliberately bad canary: the popularity model, started with 10 % injected 5xx"
echo "(MODEL_SERVER_FAULT_ERROR_RATE: a test-only fault flag); the analysis must roll it back"
set +e
$PY -m pipelines.train --model popularity 2>&1 | tee "$train_log"
set -e
# registered either way: with a gate FAIL (the expected outcome: exit 9) or, unlikely, a PASS
bad="$(sed -n -e 's/^registered movie-recommender version \([0-9]*\) .*/\1/p' \
  -e 's/^error: movie-recommender version \([0-9]*\) failed the quality gate.*/\1/p' "$train_log")"
if [[ -z "$bad" ]]; then
  echo "the popularity model was not registered; skipping the bad canary" >&2
else
  traffic_start 300
  set +e
  $PY -m pipelines.rollout auto --version "$bad" --force --fault-error-rate 0.1 --interval 10
  auto_rc=$?
  set -e
  traffic_stop
  if [[ $auto_rc -ne 10 ]]; then
    echo "error: the bad canary was not rolled back by the analysis (exit $auto_rc)" >&2
    exit 1
  fi
  echo "version $bad rolled back automatically; the reason is on the version in MLflow" \
    "(tags rollout.decision, rollout.reason, rollout.evidence)"
  $PY -m pipelines.rollout status
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

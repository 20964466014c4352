#!/usr/bin/env bash
# Shared helpers for the cluster scripts. Sourced, never run.
# shellcheck disable=SC2034  # constants are used by the scripts that source this file

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER_NAME="${KIND_CLUSTER_NAME:-movie-mlops}"
IMAGE_TAG="${IMAGE_TAG:-0.1.0}"
IMAGES=(pipelines model-server frontend)
ENVIRONMENTS=(dev staging prod)

die() {
  echo "error: $*" >&2
  exit 1
}

info() {
  echo "==> $*" >&2
}

need() {
  local tool="$1" hint="$2"
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found: $hint"
}

need_docker() {
  need docker "install Docker (https://docs.docker.com/engine/install/) and start it"
  docker info >/dev/null 2>&1 || die "the Docker daemon is not reachable: start Docker (or check DOCKER_HOST) and retry"
}

need_kind() {
  need kind "install kind v0.30.0 (go install sigs.k8s.io/kind@v0.30.0, or its release binary)"
}

need_kubectl() {
  need kubectl "install kubectl >= 1.32 (docs/cluster.md, 'Tools')"
}

check_env() {
  local env="${1:-}" e
  for e in "${ENVIRONMENTS[@]}"; do
    [[ "$env" == "$e" ]] && return 0
  done
  die "usage: $(basename "$0") ENV  (ENV is one of: ${ENVIRONMENTS[*]})"
}

namespace_of() {
  echo "movie-mlops-$1"
}

# launch_from_cronjob NAMESPACE CRONJOB [ARG...]: run a suspended CronJob's template once as a
# Job with a generated name, optionally replacing the container args; prints the Job name.
launch_from_cronjob() {
  local ns="$1" cronjob="$2"
  shift 2
  local job
  job="${cronjob}-$(date -u +%Y%m%d%H%M%S)"
  if [[ $# -eq 0 ]]; then
    kubectl -n "$ns" create job "$job" --from="cronjob/$cronjob" >/dev/null
  else
    need python3 "python3 is needed to rewrite the Job's args"
    kubectl -n "$ns" create job "$job" --from="cronjob/$cronjob" --dry-run=client -o json \
      | python3 -c 'import json, sys
job = json.load(sys.stdin)
job["spec"]["template"]["spec"]["containers"][0]["args"] = sys.argv[1:]
json.dump(job, sys.stdout)' "$@" \
      | kubectl -n "$ns" create -f - >/dev/null
  fi
  echo "$job"
}

# wait_for_job NAMESPACE JOB TIMEOUT: succeed when the Job completes, fail (with logs) when it fails.
wait_for_job() {
  local ns="$1" job="$2" timeout="$3"
  info "waiting up to $timeout for job/$job in $ns"
  local deadline=$((SECONDS + ${timeout%s}))
  while ((SECONDS < deadline)); do
    if kubectl -n "$ns" wait --for=condition=Complete "job/$job" --timeout=10s >/dev/null 2>&1; then
      info "job/$job completed"
      return 0
    fi
    if kubectl -n "$ns" wait --for=condition=Failed "job/$job" --timeout=1s >/dev/null 2>&1; then
      kubectl -n "$ns" logs "job/$job" --tail=50 >&2 || true
      die "job/$job failed (logs above); fix the cause and run it again"
    fi
  done
  kubectl -n "$ns" logs "job/$job" --tail=50 >&2 || true
  die "job/$job did not finish within $timeout"
}

# set_canary_split NAMESPACE PERCENT: the front end's nginx pins each X-User-Id to a canary arm
# (docker/frontend/canary-split.envsh); set its CANARY_PERCENT (0: no arms, Knative's split)
# and wait until every frontend pod uses it. Nothing happens when it already has that value.
set_canary_split() {
  local ns="$1" percent="$2" current
  current="$(kubectl -n "$ns" get deployment frontend \
    -o jsonpath='{.spec.template.spec.containers[0].env[?(@.name=="CANARY_PERCENT")].value}')"
  [[ "$current" == "$percent" ]] && return 0
  info "front end: sticky canary arms at ${percent} %"
  kubectl -n "$ns" set env deployment/frontend "CANARY_PERCENT=$percent" >/dev/null
  kubectl -n "$ns" rollout status deployment/frontend --timeout=180s >/dev/null \
    || die "deployment/frontend did not roll out with CANARY_PERCENT=$percent: kubectl -n $ns describe deployment/frontend"
}

# canary_percent_of NAMESPACE: the predictor's canaryTrafficPercent as sticky arms need it
# (0 when no canary splits traffic: unset, 0 or 100).
canary_percent_of() {
  local percent
  percent="$(kubectl -n "$1" get inferenceservice movie-recommender \
    -o jsonpath='{.spec.predictor.canaryTrafficPercent}' 2>/dev/null || true)"
  if [[ -z "$percent" || "$percent" == 100 ]]; then percent=0; fi
  echo "$percent"
}

# A random URL-safe token (for generated credentials); never echo it.
random_token() {
  python3 -c 'import secrets; print(secrets.token_urlsafe(24))'
}

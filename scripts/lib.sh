#!/usr/bin/env bash
# Shared helpers for the cluster scripts. Sourced, never run.
# shellcheck disable=SC2034  # constants are used by the scripts that source this file

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER_NAME="${KIND_CLUSTER_NAME:-movie-mlops}"
IMAGE_TAG="${IMAGE_TAG:-0.1.0}"
IMAGES=(pipelines model-server frontend)
# kind's documented local registry (https://kind.sigs.k8s.io/docs/user/local-registry/): a
# `kind-registry` container published on the host's localhost:5001, which the node's containerd
# reaches as http://kind-registry:5000 (/etc/containerd/certs.d/localhost:5001/hosts.toml).
# The overlays name the images $IMAGE_PREFIX/<name> (their `images:` newName): keep them equal.
REGISTRY_NAME=kind-registry
REGISTRY=localhost:5001
IMAGE_PREFIX="$REGISTRY/movie-mlops"
# registry:3.0.0 by digest (the multi-arch index, as pinned by several public repositories;
# Docker Hub is not reachable from the machine this was written on: check it once with
# `docker buildx imagetools inspect registry:3.0.0`)
REGISTRY_IMAGE=registry:3.0.0@sha256:6c5666b861f3505b116bb9aa9b25175e71210414bd010d92035ff64018f9457e
# What scripts/images.sh pushed: one `<image>@sha256:<digest>` line per image; scripts/render.sh
# deploys exactly these digests. Generated, never committed (.local/ is ignored).
IMAGE_DIGESTS="${IMAGE_DIGESTS:-$ROOT/.local/cluster/image-digests}"
# The rollout ServiceAccount's egress to the API server: the network-policies component carries
# this documentation address (RFC 5737 TEST-NET-1, routes nowhere) and scripts/render.sh replaces
# it with the cluster's API server addresses. Left in place it fails closed.
API_SERVER_PLACEHOLDER=192.0.2.1/32
# sha256 of every release manifest kind-up.sh applies by URL (`<sha256>  <url>` lines).
ASSET_SUMS="${ASSET_SUMS:-$ROOT/scripts/cluster-assets.sha256}"
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

# The nodes' summed allocatable CPU (millicores) and memory (MiB): "MILLICPU MIB".
node_allocatable() {
  local total_cpu=0 total_mib=0 cpu mem
  while read -r cpu mem; do
    [[ -n "$cpu" ]] || continue
    if [[ "$cpu" == *m ]]; then cpu="${cpu%m}"; else cpu=$((cpu * 1000)); fi
    case "$mem" in
      *Ki) mem=$((${mem%Ki} / 1024)) ;;
      *Mi) mem="${mem%Mi}" ;;
      *Gi) mem=$((${mem%Gi} * 1024)) ;;
      *) mem=$((mem / 1048576)) ;;
    esac
    total_cpu=$((total_cpu + cpu))
    total_mib=$((total_mib + mem))
  done < <(kubectl get nodes -o jsonpath='{range .items[*]}{.status.allocatable.cpu}{" "}{.status.allocatable.memory}{"\n"}{end}')
  echo "$total_cpu $total_mib"
}

# declared_requirement RENDERED_FILE KEY: the overlay Namespace's annotation movie-mlops.io/KEY
# (min-node-cpu in cores, min-node-memory-gi in GiB): what the overlay needs during a canary,
# platform included (tests/unit/test_manifests.py recomputes it from the requests).
declared_requirement() {
  grep -m1 "movie-mlops.io/$2:" "$1" | sed -E 's/.*: *"?([0-9]+)"?.*/\1/'
}

# check_capacity ENV RENDERED_FILE: stop before applying an overlay whose canary cannot be
# scheduled (two revisions at minReplicas each, next to MLflow and the platform).
check_capacity() {
  local env="$1" rendered="$2" need_cpu need_gi have_cpu have_mib
  need_cpu="$(declared_requirement "$rendered" min-node-cpu)"
  need_gi="$(declared_requirement "$rendered" min-node-memory-gi)"
  [[ -n "$need_cpu" && -n "$need_gi" ]] || die "overlay $env declares no movie-mlops.io/min-node-cpu / min-node-memory-gi on its Namespace"
  read -r have_cpu have_mib < <(node_allocatable)
  if ((have_cpu < need_cpu * 1000 || have_mib < need_gi * 1024)); then
    die "overlay $env needs ${need_cpu} CPUs and ${need_gi} GiB allocatable during a canary (two predictor revisions, MLflow and the platform); the cluster has $((have_cpu / 1000)).$(((have_cpu % 1000) / 100)) CPUs and $((have_mib / 1024)) GiB. Give Docker more CPUs/memory (Docker Desktop: Settings > Resources) and recreate the cluster, or deploy dev/staging (docs/cluster.md, 'Sizing')"
  fi
  info "capacity: $env needs ${need_cpu} CPUs / ${need_gi} GiB, the cluster has $((have_cpu / 1000)) CPUs / $((have_mib / 1024)) GiB"
}

# fetch_asset URL: download URL into ASSET_DIR (set by the caller), check its sha256 against
# ASSET_SUMS, or record it there when RECORD_ASSETS=true (kind-up.sh --record: trust on first
# use), and print the local path. Nothing is applied from an unchecked file.
fetch_asset() {
  local url="$1" file sum recorded tmp
  file="$ASSET_DIR/$(printf '%s' "$url" | sha256sum | cut -c1-16)-$(basename "$url")"
  curl -fsSL --retry 3 -o "$file" "$url" || die "cannot download $url"
  sum="$(sha256sum "$file" | cut -d' ' -f1)"
  recorded="$(awk -v u="$url" '$2 == u { print $1 }' "$ASSET_SUMS" 2>/dev/null || true)"
  if [[ "${RECORD_ASSETS:-false}" == true ]]; then
    tmp="$(mktemp "$ASSET_SUMS.XXXXXX")"
    { awk -v u="$url" '$2 != u' "$ASSET_SUMS" 2>/dev/null || true; echo "$sum  $url"; } >"$tmp"
    mv "$tmp" "$ASSET_SUMS"
    [[ "$recorded" == "$sum" ]] || info "recorded sha256 $sum for $url (review and commit scripts/cluster-assets.sha256)"
  elif [[ -z "$recorded" ]]; then
    die "no recorded sha256 for $url in scripts/cluster-assets.sha256: run 'scripts/kind-up.sh --record' once on a network you trust, check the sums against the release pages, and commit the file"
  elif [[ "$recorded" != "$sum" ]]; then
    die "sha256 mismatch for $url: recorded $recorded, downloaded $sum. The release asset changed or the download was tampered with: nothing was applied from it. If the new file is genuine (check the release), re-record with 'scripts/kind-up.sh --record'"
  fi
  echo "$file"
}

# apply_asset URL [kubectl apply options]: fetch_asset, then kubectl apply the checked file.
apply_asset() {
  local url="$1" file
  shift
  file="$(fetch_asset "$url")"
  kubectl apply "$@" -f "$file"
}

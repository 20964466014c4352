#!/usr/bin/env bash
# Apply an overlay (as scripts/render.sh renders it: images by pushed digest, the API server's
# addresses in the rollout egress policy) and wait for its long-running workloads.
# Usage: scripts/deploy.sh ENV [--with-predictor]
# The InferenceService is created once and then owned by the rollout tool (it sets STORAGE_URI,
# MODEL_VERSION and the canary split); re-applying the manifest would roll the model back to the
# placeholder, so later deploys skip it unless --with-predictor is given.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

env="${1:-}"
check_env "$env"
with_predictor="${2:-}"
need_kubectl
ns="$(namespace_of "$env")"
kubectl get crd inferenceservices.serving.kserve.io >/dev/null 2>&1 \
  || die "KServe is not installed in the current kube context: run scripts/kind-up.sh first"

rendered="$(mktemp)"
trap 'rm -f "$rendered"' EXIT
# The overlay with the images pinned to the digests scripts/images.sh pushed, the rollout
# ServiceAccount's egress narrowed to this cluster's API server, and the PodMonitors/
# ServiceMonitors only when the Prometheus operator's CRDs exist (scripts/render.sh).
"$ROOT/scripts/render.sh" "$env" >"$rendered"
check_capacity "$env" "$rendered"

if [[ "$env" != dev ]] && ! kubectl -n "$ns" get secret tmdb-credentials >/dev/null 2>&1; then
  info "warning: secret tmdb-credentials is missing in $ns; crawl will run unauthenticated (docs/cluster.md)"
fi

# MLflow's basic-auth credentials: generated once per namespace, from a private temp file
# (never argv, never the repo); the provision Job creates the users from them.
ensure_mlflow_secrets() {
  kubectl get namespace "$ns" >/dev/null 2>&1 || kubectl create namespace "$ns" >/dev/null
  local secrets_file
  secrets_file="$(mktemp)"
  chmod 600 "$secrets_file"
  if ! kubectl -n "$ns" get secret mlflow-admin >/dev/null 2>&1; then
    printf 'password=%s\nflask-secret-key=%s\n' "$(random_token)" "$(random_token)" >"$secrets_file"
    kubectl -n "$ns" create secret generic mlflow-admin --from-env-file="$secrets_file" >/dev/null
    info "created secret mlflow-admin in $ns (the MLflow UI's admin password)"
  fi
  if ! kubectl -n "$ns" get secret mlflow-users >/dev/null 2>&1; then
    printf 'trainer=%s\nrollout=%s\nreader=%s\n' "$(random_token)" "$(random_token)" \
      "$(random_token)" >"$secrets_file"
    kubectl -n "$ns" create secret generic mlflow-users --from-env-file="$secrets_file" >/dev/null
    info "created secret mlflow-users in $ns"
  fi
  rm -f "$secrets_file"
}
ensure_mlflow_secrets
kubectl -n "$ns" delete job mlflow-provision --ignore-not-found >/dev/null

# Cluster-scoped, the same for every overlay: what the rollout ServiceAccount may change.
info "applying the cluster-scoped admission policy (kustomize/cluster)"
kubectl apply -k "$ROOT/kustomize/cluster"

info "applying overlay $env to namespace $ns"
if [[ "$with_predictor" == --with-predictor ]] || ! kubectl -n "$ns" get inferenceservice movie-recommender >/dev/null 2>&1; then
  kubectl apply -f "$rendered"
else
  info "inferenceservice/movie-recommender exists and belongs to the rollout tool: not re-applied"
  kubectl apply -f "$rendered" -l 'movie-mlops.io/apply-once!=true'
fi

kubectl -n "$ns" rollout status deployment/mlflow --timeout=300s
kubectl -n "$ns" wait --for=condition=complete job/mlflow-provision --timeout=300s \
  || die "job/mlflow-provision did not complete: kubectl -n $ns logs job/mlflow-provision"
kubectl -n "$ns" rollout status deployment/frontend --timeout=180s
# the manifest says CANARY_PERCENT=0; a canary that is running keeps its sticky arms
set_canary_split "$ns" "$(canary_percent_of "$ns")"
if kubectl -n "$ns" get deployment tmdb-sandbox >/dev/null 2>&1; then
  kubectl -n "$ns" rollout status deployment/tmdb-sandbox --timeout=180s
fi
info "deployed $env. Next: scripts/train.sh $env, then scripts/rollout.sh $env canary --version N --percent P"

#!/usr/bin/env bash
# Delete everything an overlay created, including its namespace and PVCs (data is lost).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

env="${1:-}"
check_env "$env"
need_kubectl
ns="$(namespace_of "$env")"
# Kinds the cluster does not know (PodMonitor/ServiceMonitor without the Prometheus operator)
# make kubectl delete exit non-zero after deleting the rest; their objects cannot exist, and the
# namespace's deletion below is what decides.
kubectl kustomize "$ROOT/kustomize/overlays/$env" | kubectl delete --ignore-not-found --wait=false -f - \
  || info "some kinds of the overlay are not installed in this cluster; the rest was deleted"
kubectl wait --for=delete "namespace/$ns" --timeout=300s || die "namespace $ns is still terminating; check 'kubectl get all -n $ns'"
info "removed $ns"

#!/usr/bin/env bash
# Run the rollout tool in the cluster (service account `rollout`) and wait for it.
# Usage: scripts/rollout.sh ENV canary --version N --percent P | promote | rollback | auto --version N
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

env="${1:-}"
check_env "$env"
shift
[[ $# -gt 0 ]] || die "usage: $(basename "$0") ENV canary --version N --percent P | promote | rollback | auto --version N"
need_kubectl
ns="$(namespace_of "$env")"
# Sticky arms follow the traffic: no arms while traffic moves (every request gets Knative's
# split, so no user is pinned to an arm that is going away), then the arms of the new percent.
set_canary_split "$ns" 0
trap 'set_canary_split "$ns" "$(canary_percent_of "$ns")"' EXIT
job="$(launch_from_cronjob "$ns" rollout "$@")"
info "started job/$job in $ns"
wait_for_job "$ns" "$job" 5400s

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
job="$(launch_from_cronjob "$ns" rollout "$@")"
info "started job/$job in $ns"
wait_for_job "$ns" "$job" 5400s

#!/usr/bin/env bash
# Launch one training run from the suspended `train` CronJob and wait for it.
# Usage: scripts/train.sh ENV [train args...]   e.g. scripts/train.sh dev --features-version V
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

env="${1:-}"
check_env "$env"
shift
need_kubectl
ns="$(namespace_of "$env")"
kubectl -n "$ns" get cronjob train >/dev/null 2>&1 || die "no cronjob/train in $ns: run scripts/deploy.sh $env first"
job="$(launch_from_cronjob "$ns" train "$@")"
info "started job/$job in $ns"
wait_for_job "$ns" "$job" "${TRAIN_TIMEOUT:-3600s}"

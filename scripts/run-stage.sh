#!/usr/bin/env bash
# Run one scheduled stage (crawl or features) now instead of waiting for its schedule.
# Usage: scripts/run-stage.sh ENV crawl|features
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

env="${1:-}"
check_env "$env"
stage="${2:-}"
[[ "$stage" == crawl || "$stage" == features ]] || die "usage: $(basename "$0") ENV crawl|features"
need_kubectl
ns="$(namespace_of "$env")"
job="$(launch_from_cronjob "$ns" "$stage")"
info "started job/$job in $ns"
wait_for_job "$ns" "$job" 1800s

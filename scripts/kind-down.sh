#!/usr/bin/env bash
# Delete the kind cluster (and everything in it).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

need_kind
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
  kind delete cluster --name "$CLUSTER_NAME"
else
  info "no kind cluster named $CLUSTER_NAME; nothing to do"
fi

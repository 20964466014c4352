#!/usr/bin/env bash
# Copy the locally built images into the kind node (no registry involved).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

need_docker
need_kind
kind get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME" || die "no kind cluster $CLUSTER_NAME: run scripts/kind-up.sh first"
for image in "${IMAGES[@]}"; do
  ref="movie-mlops/$image:$IMAGE_TAG"
  docker image inspect "$ref" >/dev/null 2>&1 || die "$ref is not built: run scripts/images.sh first"
  info "loading $ref"
  kind load docker-image --name "$CLUSTER_NAME" "$ref"
done

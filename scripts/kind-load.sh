#!/usr/bin/env bash
# Kept for `make kind-load`: images no longer go into the node with `kind load`. scripts/images.sh
# pushes them to the kind registry (localhost:5001) and records their digests; this only checks
# that every image has a recorded digest, so the next step (scripts/deploy.sh) can run.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

[[ -s "$IMAGE_DIGESTS" ]] || die "no pushed images recorded in ${IMAGE_DIGESTS#"$ROOT"/}: run scripts/images.sh"
for image in "${IMAGES[@]}"; do
  grep -q "^$IMAGE_PREFIX/$image@sha256:" "$IMAGE_DIGESTS" \
    || die "$image has no pushed digest: run scripts/images.sh $image"
done
info "every image is in the kind registry by digest (${IMAGE_DIGESTS#"$ROOT"/}); nothing to load"

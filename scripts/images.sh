#!/usr/bin/env bash
# Build the three images with the tag the overlays pin (IMAGE_TAG, default 0.1.0).
# Usage: scripts/images.sh [pipelines|model-server|frontend ...]
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

need_docker
[[ -f "$ROOT/requirements.lock" ]] || die "requirements.lock missing: run 'make lock' first"
git_sha="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=("${IMAGES[@]}")
for image in "${targets[@]}"; do
  dockerfile="$ROOT/docker/$image.Dockerfile"
  [[ -f "$dockerfile" ]] || die "unknown image '$image' (known: ${IMAGES[*]})"
  if [[ "$image" == frontend && ! -f "$ROOT/frontend/package-lock.json" ]]; then
    die "frontend/package-lock.json missing: run 'npm install' in frontend/ and commit the lock file"
  fi
  info "building movie-mlops/$image:$IMAGE_TAG"
  DOCKER_BUILDKIT=1 docker build -f "$dockerfile" -t "movie-mlops/$image:$IMAGE_TAG" \
    --build-arg "GIT_SHA=$git_sha" "$ROOT"
done

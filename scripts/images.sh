#!/usr/bin/env bash
# Build the three images as localhost:5001/movie-mlops/<name>:IMAGE_TAG (default 0.1.0), push
# them to the kind registry that scripts/kind-up.sh starts, and record each pushed digest in
# .local/cluster/image-digests: scripts/deploy.sh deploys those digests, never the tag.
# Usage: scripts/images.sh [pipelines|model-server|frontend ...]
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

need_docker
[[ -f "$ROOT/requirements.lock" ]] || die "requirements.lock missing: run 'make lock' first"
[[ "$(docker inspect -f '{{.State.Running}}' "$REGISTRY_NAME" 2>/dev/null || true)" == true ]] \
  || die "the $REGISTRY_NAME registry container is not running: run scripts/kind-up.sh first"
git_sha="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=("${IMAGES[@]}")

mkdir -p "$(dirname "$IMAGE_DIGESTS")"
touch "$IMAGE_DIGESTS"
for image in "${targets[@]}"; do
  dockerfile="$ROOT/docker/$image.Dockerfile"
  [[ -f "$dockerfile" ]] || die "unknown image '$image' (known: ${IMAGES[*]})"
  if [[ "$image" == frontend && ! -f "$ROOT/frontend/package-lock.json" ]]; then
    die "frontend/package-lock.json missing: run 'npm install' in frontend/ and commit the lock file"
  fi
  ref="$IMAGE_PREFIX/$image:$IMAGE_TAG"
  info "building $ref"
  DOCKER_BUILDKIT=1 docker build -f "$dockerfile" -t "$ref" --build-arg "GIT_SHA=$git_sha" "$ROOT"
  info "pushing $ref"
  docker push "$ref" >/dev/null
  # After a push, RepoDigests holds <repository>@sha256:<digest of the manifest in the registry>.
  pushed="$(docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$ref" \
    | grep -m1 "^$IMAGE_PREFIX/$image@sha256:" || true)"
  [[ -n "$pushed" ]] || die "no registry digest for $ref after the push: check 'docker push $ref'"
  # Replace this image's line; the file is rewritten whole (temp file + rename).
  tmp="$(mktemp "$IMAGE_DIGESTS.XXXXXX")"
  { grep -v "^$IMAGE_PREFIX/$image@" "$IMAGE_DIGESTS" || true; echo "$pushed"; } >"$tmp"
  mv "$tmp" "$IMAGE_DIGESTS"
  info "recorded $pushed"
done
info "digests in ${IMAGE_DIGESTS#"$ROOT"/}; next: scripts/deploy.sh ENV"

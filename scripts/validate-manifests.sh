#!/usr/bin/env bash
# Render every overlay and run the offline manifest tests (schemas, KServe types, policy).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "$0")/lib.sh"

need_kubectl
for env in "${ENVIRONMENTS[@]}"; do
  kubectl kustomize "$ROOT/kustomize/overlays/$env" >/dev/null || die "overlay $env does not render"
  info "overlay $env renders"
done
[[ -x "$ROOT/.venv/bin/python" ]] || die ".venv missing: run 'make install' first"
"$ROOT/.venv/bin/python" -m pytest -q "$ROOT/tests/unit/test_manifests.py"

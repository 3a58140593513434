#!/usr/bin/env bash
# Build FedShield's image (deploy/docker/Dockerfile) with this host's pip set-up:
#   deploy/docker/build-image.sh [TAG] [docker build options...]      (default TAG fedshield:0.1.0)
# What the host's pip is configured with (`pip config list`) reaches the build's pip steps as BuildKit
# secrets, mounted for those steps only and never stored in a layer: the CA bundle (`cert`, for a
# TLS-inspecting proxy) and the index URL. Wheels of the host's `find-links` folder are linked into
# deploy/docker/wheels/ (ignored by git, mounted the same way), and torch then comes from there.
# BASE_IMAGE=... picks another base (deploy/docker/build-local-base.sh builds one without a registry).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TAG="${1:-fedshield:0.1.0}"
shift || true

# a docker client that builds with BuildKit: `docker buildx`, or a pre-23 client's built-in BuildKit
DOCKER=docker
if ! docker buildx version >/dev/null 2>&1; then
  for candidate in $(type -ap docker); do
    major="$("$candidate" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1)"
    if [ -n "$major" ] && [ "$major" -lt 23 ]; then DOCKER="$candidate"; break; fi
  done
fi
export DOCKER_BUILDKIT=1

setting() {  # the host pip's value for KEY, from its environment or its configuration files
  python3 -m pip config list 2>/dev/null | sed -n "s/^[^.]*\.$1='\(.*\)'$/\1/p" | head -n 1
}
secrets="$(mktemp -d)"
trap 'rm -rf "$secrets"' EXIT
args=(--build-arg "BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim-bookworm}")
conf="[global]"
if cert="$(setting cert)" && [ -n "$cert" ]; then
  conf+=$'\n'"cert = /run/secrets/pip-ca.crt"
  args+=(--secret "id=pip-ca.crt,src=$cert")
fi
index="$(setting index-url)"
[ -z "$index" ] || conf+=$'\n'"index-url = $index"
rm -f "$ROOT"/deploy/docker/wheels/*.whl
links="$(setting find-links)"
if [ -n "$links" ] && [ -d "$links" ]; then
  for wheel in "$links"/*.whl; do
    [ -e "$wheel" ] && { ln "$wheel" "$ROOT/deploy/docker/wheels/" 2>/dev/null || cp "$wheel" "$ROOT/deploy/docker/wheels/"; }
  done
  conf+=$'\n'"find-links = /wheels"
  args+=(--build-arg "TORCH_INDEX_URL=")
fi
if [ "$conf" != "[global]" ]; then
  printf '%s\n' "$conf" > "$secrets/pip.conf"
  args+=(--secret "id=pip.conf,src=$secrets/pip.conf")
fi
echo "==> building $TAG (base ${BASE_IMAGE:-python:3.11-slim-bookworm})"
"$DOCKER" build -f "$ROOT/deploy/docker/Dockerfile" -t "$TAG" "${args[@]}" "$@" "$ROOT"

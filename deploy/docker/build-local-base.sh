#!/usr/bin/env bash
# Build a Python 3.11 base image without an image registry: debootstrap a minimal Debian bookworm from the
# Debian mirror this machine's apt already uses, then `docker import` it. For machines that cannot pull
# python:3.11-slim-bookworm (CI here); pass the result as the Dockerfile's BASE_IMAGE.
#   deploy/docker/build-local-base.sh [TAG]      (default fedshield-local/python:3.11-bookworm)
# An image already tagged TAG is kept (delete it with `docker rmi TAG` to rebuild).
set -euo pipefail
TAG="${1:-fedshield-local/python:3.11-bookworm}"
if docker image inspect "$TAG" >/dev/null 2>&1; then
  exit 0
fi
MIRROR="$(sed -n 's/^URIs: *\(http[^ ]*\/debian\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
ROOT="$(mktemp -d /var/tmp/fedshield-base.XXXXXX)"
trap 'rm -rf "$ROOT"' EXIT
echo "==> debootstrap bookworm from $MIRROR (a few minutes, once)"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$ROOT" "$MIRROR" \
  > "$ROOT.log" 2>&1 || { tail -n 20 "$ROOT.log" >&2; echo "debootstrap failed; full log: $ROOT.log" >&2; exit 1; }
rm -f "$ROOT.log"
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*
tar -C "$ROOT" -c . | docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$TAG" >/dev/null
echo "==> built $TAG"

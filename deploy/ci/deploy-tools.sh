#!/usr/bin/env bash
# Debian packages the deployment tests need, installed once (CI, .ci/run): Docker's engine and Compose
# (tests/test_container_federation.py, which starts dockerd itself when none answers), debootstrap (the
# image's base where no registry is reachable: deploy/docker/build-local-base.sh) and systemd-analyze
# (tests/test_systemd_units.py), ip and iptables (the network-namespace hosts of tests/netns_hosts.py).
# Prints nothing when all of them are there.
set -euo pipefail
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || need+=(docker-compose)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v ip >/dev/null || need+=(iproute2)
command -v iptables >/dev/null || need+=(iptables)
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 "${need[@]}" >/dev/null
fi

#!/usr/bin/env bash
# Run FedShield's test suite in .venv (created on first use). Extra arguments go to pytest,
# e.g. ./test.sh -m "not slow" for the fast unit tests only.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/venv.sh
exec python -m pytest "$@"

#!/usr/bin/env bash
# Run FedShield's test suite in .venv (created on first use), on two pytest workers: the end-to-end
# tests spend much of their time waiting on processes, so two at once fill the 2 cores (13½ to 16
# minutes for 289 tests; a third worker saves little).
# Extra arguments go to pytest and win, e.g. ./test.sh -m "not slow" for the fast unit tests only,
# or ./test.sh -n 0 tests/test_partitioners.py for one file in this process.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/venv.sh
exec python -m pytest -n 2 --dist worksteal --durations=15 "$@"

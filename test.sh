#!/usr/bin/env bash
# Run FedShield's test suite in .venv (created on first use), on three pytest workers: the end-to-end
# tests spend much of their time waiting on processes (start-up, SecAgg+ timeouts, polling), so on 2
# cores two workers left the CPU idle part of the time (289 tests: 15:22 on two workers, 12:20 on
# three, back to back on this machine).
# Extra arguments go to pytest and win, e.g. ./test.sh -m "not slow" for the fast unit tests only,
# or ./test.sh -n 0 tests/test_partitioners.py for one file in this process.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/venv.sh
exec python -m pytest -n 3 --dist worksteal --durations=15 "$@"

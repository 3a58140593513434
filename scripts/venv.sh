# Sourced by demo.sh and test.sh: create .venv if needed and install FedShield into it.
# torch comes first, pinned to the CPU wheel, so nothing pulls a multi-GB CUDA build.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  echo "==> creating virtual environment $ROOT/.venv"
  "$PYTHON" -m venv "$ROOT/.venv"
fi
# shellcheck disable=SC1091
. "$ROOT/.venv/bin/activate"
stamp="$ROOT/.venv/.fedshield-installed"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
  echo "==> installing torch (CPU) and FedShield with its test and tracking tools (first run only)"
  log="$ROOT/.venv/install.log"
  {
    python -m pip install --upgrade pip &&
    python -m pip install "torch==2.13.0" &&
    python -m pip install -e "$ROOT[test,tracking]"
  } > "$log" 2>&1 || { tail -n 30 "$log" >&2; echo "installation failed; full log: $log" >&2; exit 1; }
  python -c "import fedshield.server.cli, torch, flwr, opacus" || { echo "installation failed; see $log" >&2; exit 1; }
  touch "$stamp"
fi
# Nothing phones home: Flower's telemetry and update checks off for everything started from here.
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1 RAY_USAGE_STATS_ENABLED=0

#!/usr/bin/env bash
# Set up .venv, then run a real 3-site federation on loopback: a SuperLink (fl-server start) and
# three SuperNodes (fl-client join), each site training with DP-SGD on its own share of
# scikit-learn's handwritten digits. Prints per-round accuracy and per-site ε.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/venv.sh

DEMO=demo
PORT="${FEDSHIELD_DEMO_PORT:-$(python -c 'from fedshield.common.net import free_port; print(free_port())')}"
rm -rf "$DEMO"
mkdir -p "$DEMO"
echo "==> writing three hospital folders from scikit-learn's digits (Dirichlet 0.5 label skew)"
fl-sim split --dataset digits --sites 3 --dirichlet 0.5 --out "$DEMO/data"

pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

for site in hospital_a hospital_b hospital_c; do
  fl-client join --data "$DEMO/data/$site" --server "127.0.0.1:$PORT" --insecure --epsilon 8 \
    --connect-timeout 120 --threads 1 > "$DEMO/$site.log" 2>&1 &
  pids+=($!)
done
echo "==> starting the coordinator on 127.0.0.1:$PORT; sites log to $DEMO/hospital_*.log"
fl-server start --task digits-cnn --rounds 5 --min-clients 3 --run-dir "$DEMO/run" --insecure \
  --port "$PORT" --epsilon 8
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
pids=()
echo "==> each site's privacy ledger:"
for site in hospital_a hospital_b hospital_c; do
  fl-client privacy --data "$DEMO/data/$site" | tail -n 1
done
exit $status

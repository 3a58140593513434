#!/usr/bin/env bash
# Set up .venv, then run a real 3-site federation on loopback: provision it (CA, server certificate,
# one kit per site), start a SuperLink with TLS and site authentication (fl-server start --dir) and
# three SuperNodes (fl-client join --kit), each site training with DP-SGD on its own share of
# scikit-learn's handwritten digits. Prints per-round accuracy and per-site ε.
set -euo pipefail
cd "$(dirname "$0")"
. scripts/venv.sh

DEMO=demo
PORT="${FEDSHIELD_DEMO_PORT:-$(python -c 'from fedshield.common.net import free_port; print(free_port())')}"
DASHBOARD_PORT="${FEDSHIELD_DEMO_DASHBOARD_PORT:-$(python -c 'from fedshield.common.net import free_port; print(free_port())')}"
rm -rf "$DEMO"
mkdir -p "$DEMO"
echo "==> writing three hospital folders from scikit-learn's digits (Dirichlet 0.5 label skew)"
fl-sim split --dataset digits --sites 3 --dirichlet 0.5 --out "$DEMO/data"
echo "==> provisioning the federation: CA, server certificate for 127.0.0.1, a kit per hospital"
fl-server init --dir "$DEMO/federation" --server-ip 127.0.0.1 --port "$PORT" \
  --sites hospital_a hospital_b hospital_c

pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT INT TERM

for site in hospital_a hospital_b hospital_c; do
  fl-client join --kit "$DEMO/federation/kits/$site" --data "$DEMO/data/$site" --epsilon 8 \
    --connect-timeout 120 --threads 1 > "$DEMO/$site.log" 2>&1 &
  pids+=($!)
done
echo "==> starting the coordinator on 127.0.0.1:$PORT (TLS, enrolled sites only, SecAgg+); sites log to $DEMO/hospital_*.log"
echo "==> live dashboard: http://127.0.0.1:$DASHBOARD_PORT/ (open it in a browser while the run goes on)"
fl-server start --dir "$DEMO/federation" --secagg --task digits-cnn --rounds 5 --min-clients 3 --run-dir "$DEMO/run" \
  --dashboard "127.0.0.1:$DASHBOARD_PORT"
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
pids=()
echo "==> each site's privacy ledger:"
for site in hospital_a hospital_b hospital_c; do
  fl-client privacy --data "$DEMO/data/$site" | tail -n 1
done
exit $status

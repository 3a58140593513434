#!/usr/bin/env bash
# Wheels the lent GPU machine lacks, for benchmarks/gpu_check.py (docs/performance.md, "GPU check").
#
# That machine has Python 3.12, torch 2.11+cu130, numpy, scipy, scikit-learn, grpcio, protobuf, rich, typer,
# psutil and tensorboard, and no network: this script, run where PyPI is reachable, downloads the rest into
# .whl/ (git-ignored), which travels with the working tree (64 MiB in all). Flower comes without its
# simulation extra (no Ray). Each wheel is pinned and fetched alone (--no-deps): the list below is the
# closure of flwr 1.42.0, opacus 1.6.0 and FedShield's own imports on the paths gpu_check.py runs, less
# what the machine has. grpcio and protobuf are pinned here too although present there: the gRPC health
# stubs refuse a runtime older than the one they were generated with. Left out: uv (flwr's `flwr build`
# only), matplotlib (plots of fl-sim), sacrebleu (seq2seq-attention's BLEU), uvicorn's [standard] extras.
set -euo pipefail

cd "$(dirname "$0")/.."
# DEST and PYTHON_VERSION other than these only to rehearse the install on this machine's Python
DEST=${DEST:-.whl}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
LIMIT_MIB=40
WHEELS=(
    flwr==1.42.0 opacus==1.6.0 cryptography==50.0.2 cffi==2.1.1 pycparser==3.12 pycryptodome==3.24.1
    grpcio==1.85.4 grpcio-health-checking==1.81.1 protobuf==6.33.6 opt-einsum==3.4.0
    iterators==0.0.2 tomli==2.5.0 tomli-w==1.2.0 pathspec==1.1.1 prompt-toolkit==3.0.53 wcwidth==0.9.5
    pyyaml==6.0.4 requests==2.34.2 urllib3==2.8.0 idna==3.21 charset-normalizer==3.5.3 certifi==2026.10.19.post1
    httpx==0.29.0 httpcore==1.0.9 h11==0.16.0 anyio==4.16.0 sniffio==1.3.1
    typer==0.20.1 click==8.5.1 shellingham==1.5.4 packaging==25.0 typing-extensions==4.16.0
    sqlalchemy==2.1.9 greenlet==3.5.6 alembic==1.20.1 mako==1.4.3 markupsafe==3.0.4
    uvicorn==0.49.0 fastapi==0.138.2 starlette==1.3.1 pydantic==2.14.4 pydantic-core==2.50.5
    annotated-types==0.8.0 typing-inspection==0.4.5 annotated-doc==0.0.7 pillow==13.0.0
)

mkdir -p "$DEST"
for wheel in "${WHEELS[@]}"; do
    python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --dest "$DEST" \
        --python-version "$PYTHON_VERSION" --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 "$wheel"
done
bytes=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
mib=$(( (bytes + 1048575) / 1048576 ))
echo "$(ls "$DEST"/*.whl | wc -l) wheels in $DEST: ${mib} MiB (limit ${LIMIT_MIB} MiB)"
if (( bytes > LIMIT_MIB * 1048576 )); then
    echo "gpu_wheels.sh: $DEST holds ${mib} MiB, over the ${LIMIT_MIB} MiB the device transfer allows" >&2
    exit 1
fi

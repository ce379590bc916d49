#!/usr/bin/env bash
# Runs the GPU check on a GPU machine that has torch/transformers/peft/accelerate but no network: installs the wheels
# carried in .gpu-wheels/ (make gpu-wheels) into a private folder, then `python -m benchmarks.gpu_check`.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR] [gpu_check options...]     # OUT_DIR default: benchmarks/results
#
# Writes OUT_DIR/gpu_check.json (rewritten after every measurement), OUT_DIR/gpu_check.md and OUT_DIR/gpu_check.log.
# PYTHON (default python3), GPU_WHEELS (default .gpu-wheels) and GPU_SITE (default /tmp/ual-gpu-site) override.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT_DIR=${1:-benchmarks/results}
shift || true
WHEELS=${GPU_WHEELS:-.gpu-wheels}
SITE=${GPU_SITE:-/tmp/ual-gpu-site}
mkdir -p "$OUT_DIR"
tag=$("$PY" -c 'import sys; print(f"py{sys.version_info[0]}{sys.version_info[1]}")')
if compgen -G "$WHEELS/$tag/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
    "$WHEELS/$tag"/*.whl || { echo "gpu_check.sh: installing $WHEELS/$tag failed" >&2; exit 1; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "gpu_check.sh: no wheels in $WHEELS/$tag (make gpu-wheels); trl/liger sections use what $PY has" >&2
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
"$PY" -m benchmarks.gpu_check --out "$OUT_DIR/gpu_check.json" "$@" 2>&1 | tee "$OUT_DIR/gpu_check.log"
exit "${PIPESTATUS[0]}"

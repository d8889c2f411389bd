#!/usr/bin/env bash
# The GPU benchmarks in one run (about 8 minutes on one datacentre GPU), then one table:
#   DSE at B = 256, 1024, 4096 against the authors' estimator (given its checkout);
#   scan extraction throughput against timm's plain forward at the same batch;
#   the regulariser's forward + backward, and its share of a ViT-S/16 training step;
#   one probe head epoch on cached features against one epoch through the frozen backbone.
#
#   bash bench/gpu.sh [REFERENCE_DIR] [OUT_DIR]    # default OUT_DIR=gpu-bench
#
# Each part has its own time limit, so one slow part cannot take the others' time; a part
# that fails or runs out of time shows as "not measured" in the table.
set -uo pipefail
cd "$(dirname "$0")/.."
REF=${1:-}
OUT=${2:-gpu-bench}
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "bench/gpu.sh: no CUDA device is available; this script measures the GPU targets only" >&2
  exit 2
fi
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | tee "$OUT/gpu.txt"
ref=()
if [ -n "$REF" ]; then ref=(--reference "$REF"); fi

timeout 200 python bench/dse_speed.py --device cuda --sizes 256 1024 4096 --inputs overlap-1.0 --parts timing \
  --repeats 5 --max-ref-seconds 60 --ref-budget 40 --no-floor "${ref[@]}" --json "$OUT/dse.json" || echo "dse_speed: exit $?"
timeout 120 python bench/scan_speed.py --device cuda --checkpoints 2 --num-images 1024 --batch-size 256 \
  --json "$OUT/scan.json" || echo "scan_speed: exit $?"
timeout 100 python bench/regularizer_speed.py --device cuda --arch vit_small_patch16_224 --image-size 224 \
  --train-batch 64 "${ref[@]}" --json "$OUT/regularizer.json" || echo "regularizer_speed: exit $?"
timeout 60 python bench/probe_speed.py --device cuda --json "$OUT/probe.json" || echo "probe_speed: exit $?"
python bench/gpu_table.py "$OUT"

#!/usr/bin/env bash
# Dense degradation on the built-in scenes, on a CPU: DINO and MoCo v3, each without and with
# the DSE regulariser. For every run: train (official checkpoints every 2 epochs), scan
# (DSE, RankMe, alpha-ReQ, dense RankMe, LiDAR), linear-probe mIoU on the scenes' masks, and
# the report (Kendall tau of every metric with mIoU, selection gain). Then one summary table.
#
#   bash examples/degradation.sh [OUT] [BETA]      # default OUT=degradation, BETA=0.1
#
# About 12 minutes per run on a 2-core CPU (four runs). Reruns resume where they stopped.
set -euo pipefail
OUT=${1:-degradation}
BETA=${2:-0.1}
TRAIN="--num-images 512 --epochs 36 --save-every 2 --batch-size 32 --lr 2e-3 --momentum 0.98 --warmup-epochs 3"

for method in dino mocov3; do
  for beta in 0 "$BETA"; do
    run="$OUT/$method-beta$beta"
    dsekit train --method "$method" --out "$run" $TRAIN --dse-weight "$beta" --quiet
    dsekit scan "$run" --method "$method" --num-images 512 \
      --metrics rankme alpha_req dense_rankme lidar --quiet
    dsekit probe "$run" --method "$method" --dataset scenes --num-train 500 --num-val 200 --quiet
  done
done
python "$(dirname "$0")/degradation_table.py" "$OUT"/*/dse/report.json

#!/usr/bin/env bash
# Dense degradation on the built-in scenes, on a CPU: DINO and MoCo v3, each without and with
# the DSE regulariser, each with two training seeds. Every run is `dsekit demo` with those
# settings: train (the initial weights and official checkpoints), scan (DSE, RankMe, alpha-ReQ,
# dense RankMe, LiDAR, with intervals), linear-probe mIoU on the scenes' masks (with intervals
# and per-class IoU), and the report. Then one summary table.
#
#   bash examples/degradation.sh [OUT] [BETA] [SEEDS]   # default OUT=degradation, BETA=0.1, SEEDS="0 1"
#
# Each run takes what `dsekit demo` takes (see README); reruns resume where they stopped.
set -euo pipefail
OUT=${1:-degradation}
BETA=${2:-0.1}
SEEDS=${3:-0 1}

for method in dino mocov3; do
  for beta in 0 "$BETA"; do
    for seed in $SEEDS; do
      dsekit demo --method "$method" --dse-weight "$beta" --seed "$seed" --out "$OUT/$method-beta$beta-seed$seed" --quiet
    done
  done
done
python "$(dirname "$0")/degradation_table.py" "$OUT"/*/run/dse/report.json

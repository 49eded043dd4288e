#!/usr/bin/env bash
# The figures of docs/gallery.md, from one real run of the command-line workflow on the
# embedded digits (offline, about 5 minutes on two CPU cores):
#
#     bash experiments/gallery.sh [RUN_FOLDER]
set -euo pipefail
R=${1:-experiments/out/gallery}
common=(--batch-size 64 --quiet)
for seed in 1 2; do
    modeconn train --model tinyten --epochs 10 --lr 0.05 --lr-step 4 --seed "$seed" --out "$R/model-$seed" "${common[@]}"
done
modeconn align "$R/model-1" "$R/model-2" --out "$R/aligned" --quiet
modeconn fit "$R/model-1" "$R/model-2" --epochs 5 --lr 0.02 --out "$R/curve-unaligned" "${common[@]}"
modeconn fit "$R/model-1" "$R/aligned" --epochs 5 --lr 0.02 --out "$R/curve-aligned" "${common[@]}"
evaluation=(--test-samples 1000 --bn-samples 1024 --quiet)
# default labels: each path is named from its runs ("aligned line", "unaligned bezier curve (sgd)")
modeconn evaluate "$R/curve-unaligned" --plane 11 --out "$R/eval-unaligned" "${evaluation[@]}"
modeconn evaluate "$R/curve-aligned" --plane 11 --out "$R/eval-aligned" "${evaluation[@]}"
modeconn evaluate --line "$R/model-1" "$R/model-2" --out "$R/line-unaligned" "${evaluation[@]}"
modeconn evaluate --line "$R/model-1" "$R/aligned" --out "$R/line-aligned" "${evaluation[@]}"
modeconn plot "$R/eval-unaligned" "$R/eval-aligned" "$R/line-unaligned" "$R/line-aligned" \
    --out "$R/figures" --title "TinyTen on the embedded digits"
img=docs/img
cp "$R/figures/paths.png" "$img/gallery-paths.png"
cp "$R/figures/plane.png" "$img/gallery-plane.png"
cp "$R/aligned/correlation_signature.png" "$img/gallery-signature.png"

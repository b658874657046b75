#!/usr/bin/env bash
# RVM's four-stage training recipe for BiMatting (htqin/BiMatting scripts/train.sh) with `bimatting train`.
#
#   scripts/train.sh DATA_ROOT [OUT] [extra `bimatting train` options...]
#
# Stage numbers, epochs, T, learning rates and the HR pass come from bimatting/train/stages.py:
#   1  VideoMatte SD, epochs 0-19, T=15,        lr 1e-4/2e-4/2e-4/0
#   2  VideoMatte SD, epochs 20-21, T=20,       lr 5e-5/1e-4/1e-4/0
#   3  VideoMatte SD, epoch 22, T=40 + HR T=6,  lr 1e-5/1e-5/1e-5/2e-4
#   4  ImageMatte,    epochs 23-27, T=20 + HR,  lr 1e-5/1e-5/5e-5/2e-4
# Each stage starts from the last epoch checkpoint of the previous one (its weights, a fresh
# optimizer), as the official script does.
# GPUS=N (default: all visible GPUs, 1 process each, as the official 4-GPU run) launches torchrun;
# GPUS=0 trains on the CPU. ARCH=rvm trains RVM instead (its own T and lrs).
set -euo pipefail

DATA_ROOT=${1:?usage: scripts/train.sh DATA_ROOT [OUT] [bimatting train options...]}
OUT=${2:-checkpoint}
shift $(( $# >= 2 ? 2 : 1 ))
ARCH=${ARCH:-bimatting}
if [[ -z "${GPUS:-}" ]]; then
    GPUS=$(python -c "import torch; print(torch.cuda.device_count())")
fi

if (( GPUS > 0 )); then
    run=(torchrun --standalone --nproc_per_node "$GPUS" -m bimatting train --device cuda)
else
    run=(python -m bimatting train --device cpu)
fi
common=(--arch "$ARCH" --data-root "$DATA_ROOT" --out "$OUT")

# The last epoch checkpoint of a stage (epoch-19/21/22 with the stock epochs; --epochs may change it).
last_epoch() {
    local found
    found=$(ls "$OUT/stage$1"/epoch-*.pth 2>/dev/null | sort -V | tail -n 1)
    [[ -n "$found" ]] || { echo "scripts/train.sh: stage $1 left no epoch checkpoint in $OUT/stage$1" >&2; exit 1; }
    echo "$found"
}

"${run[@]}" "${common[@]}" --stage 1 "$@"
"${run[@]}" "${common[@]}" --stage 2 --resume "$(last_epoch 1)" "$@"
"${run[@]}" "${common[@]}" --stage 3 --resume "$(last_epoch 2)" "$@"
"${run[@]}" "${common[@]}" --stage 4 --resume "$(last_epoch 3)" "$@"

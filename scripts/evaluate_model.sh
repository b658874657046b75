#!/usr/bin/env bash
# Evaluate a matting model as BiMatting's test.sh does, with the bimatting CLI: recurrent inference
# one frame at a time over every clip of an evaluation set in RVM's layout (states reset per
# clip, downsample ratio min(512/max(h,w), 1)), predictions written as PNG, scored by RVM's LR
# evaluator (MAD, MSE, Grad, Conn, dtSSD, fgrMAD, fgrMSE); optionally the 1920x1080 set with
# the HR evaluator.
#
#   bash scripts/evaluate_model.sh DATA [CHECKPOINT] [OUT]
#     DATA        the 512x288 set, e.g. videomatte_512x288 (or one made by `bimatting data synth`)
#     CHECKPOINT  default (packaged BiMatting), rvm (the teacher) or a checkpoint file; default: default
#     OUT         prediction folder; default: ./<DATA name>-pred
#   env: DEVICE=cuda to run on a GPU; HD=<videomatte_1920x1080> to also test the HD set;
#        PYTHON=<interpreter> whose environment has bimatting (default: python3)
#
# Example:
#   bimatting data synth --out synth_512x288 --clips 5 --frames 100
#   bash scripts/evaluate_model.sh synth_512x288 rvm
set -euo pipefail
data=${1:?usage: bash scripts/evaluate_model.sh DATA [CHECKPOINT] [OUT]}
checkpoint=${2:-default}
out=${3:-$(basename "$data")-pred}
py=${PYTHON:-python3}
device=${DEVICE:-cpu}

"$py" -m bimatting test --data "$data" --checkpoint "$checkpoint" --out "$out" --lr --device "$device" --json
if [ -n "${HD:-}" ]; then
  # HR: s = 512/1920 with the guided-filter refiner, JPG predictions, no Conn / fgrMAD.
  "$py" -m bimatting test --data "$HD" --checkpoint "$checkpoint" --out "${out}_hd" --hr --device "$device" --json
fi

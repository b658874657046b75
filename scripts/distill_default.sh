#!/usr/bin/env bash
# The packaged default model's distillation run, exactly as it is run (CPU, one thread).
# Resumable: run it again and it continues bit for bit from <out>/resume.pth.
#   bash scripts/distill_default.sh [DATA] [OUT] [extra bimatting distill options, e.g. --stop-at 3000]
# The step runs in bfloat16 through torch.compile (2.2x the samples per CPU-second of float32
# eager; a few CPU-minutes of compiling at each start). A run saved by the float32 eager recipe
# continues under it in a new folder: add --branch-from OLD_OUT.
# DATA holds the unlabelled clips of people listed in training/README.md (DATA/people/clips and
# DATA/sam2_bedroom_video/frames). OUT, the full resume state, belongs outside the repository
# (default: the user cache); commit only a compact snapshot (scripts/snapshot.py).
# Held out (never trained on): four clips of people and the bedroom clip's frames 136-199 (the
# bedroom clip is not trained on at all).
set -euo pipefail
data=${1:-../shared/data}
out=${2:-${XDG_CACHE_HOME:-$HOME/.cache}/bimatting/distill-warm}
shift $(( $# < 2 ? $# : 2 ))
clips=$data/people/clips
exec nice -n 5 bimatting distill "$clips" \
  --heldout "$data/sam2_bedroom_video/frames@136:200" \
  --heldout "$clips/facenet_arcade_pedestrians" \
  --heldout "$clips/hybrik_taiji_indoor" \
  --heldout "$clips/liveportrait_woman_lakeshore_windy_hair" \
  --heldout "$clips/retalking_woman_blue_studio" \
  --data crops --size 128x128 --size 160x96 --batch 4 --frames 2 --hr-every 0 --ema-decay 0.998 \
  --latent-lr 5e-3 --float-lr 5e-4 --warmup-steps 100 --steps 40000 --precision bf16 --compile \
  --out "$out" --eval-every 1000 --threads 1 --resume "$@"

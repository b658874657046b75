#!/usr/bin/env bash
# The packaged default model's distillation run, exactly as it was run (CPU, one thread).
# Resumable: run it again and it continues bit for bit from <out>/resume.pth.
#   bash scripts/distill_default.sh [DATA] [OUT] [extra bimatting distill options, e.g. --stop-at 3000]
# DATA holds the unlabelled footage of people listed in the README's "Default model" section:
#   DATA/people/clips, DATA/people/images, DATA/sam2_bedroom_video/frames, DATA/p3m_portraits/image.
# Held out (never trained on): the bedroom clip's frames 136-199 and four clips of people.
set -euo pipefail
data=${1:-../shared/data}
out=${2:-training/default}
shift $(( $# < 2 ? $# : 2 ))
clips=$data/people/clips
exec nice -n 5 bimatting distill "$clips" "$data/sam2_bedroom_video/frames" \
  --images "$data/people/images" --images "$data/p3m_portraits/image" \
  --heldout "$data/sam2_bedroom_video/frames@136:200" \
  --heldout "$clips/facenet_arcade_pedestrians" \
  --heldout "$clips/hybrik_taiji_indoor" \
  --heldout "$clips/liveportrait_woman_lakeshore_windy_hair" \
  --heldout "$clips/retalking_woman_blue_studio" \
  --feature-weight 0 --no-heads-from-teacher \
  --out "$out" --steps 12000 --threads 1 --resume "$@"

#!/usr/bin/env bash
# The scale table (benchmarks/README.md): ViT-B/16 at 224 and 384 px, DINOv2-B/14 at 224, 336,
# 448 and 518 px; inference at batch 1 and 4 and the training step at batch 2; minivit (its model
# read with load_pretrained), transformers (from_pretrained, SDPA attention) and the PyTorch
# reference, each in its own processes, alternating rounds. Every record is stamped and appended
# to benchmarks/results/ (--json); then `python benchmarks/table.py` rewrites the table.
#
#   bash benchmarks/scale.sh                 # the whole table
#   bash benchmarks/scale.sh --rounds 1      # extra flags go to every bench.py call
#   SCALE_ONLY="dinov2-b14:518" bash benchmarks/scale.sh    # some models only
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
PY=${PYTHON:-python}
MODELS=${SCALE_ONLY:-"vit-b16:224 vit-b16:384 dinov2-b14:224 dinov2-b14:336 dinov2-b14:448 dinov2-b14:518"}
for model in $MODELS; do
  config=${model%%:*} size=${model##*:}
  steps=5
  if [ "$size" -ge 448 ]; then steps=3; fi
  for case in infer:1 infer:4 train:2; do
    what=${case%%:*} batch=${case##*:}
    # a failed measurement is a record of its own ("failed"); the others go on
    "$PY" benchmarks/bench.py --config "$config" --image-size "$size" --what "$what" \
      --batch "$batch" --impl minivit,transformers,torch --load --rounds 2 --steps "$steps" \
      --warmup 1 --wait-quiet 20 --json "$@" || status=1
  done
done
exit $status

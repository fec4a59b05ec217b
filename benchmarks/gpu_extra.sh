#!/usr/bin/env bash
# The optional second GPU run, for what the first (gpu_run.sh) leaves out: TF32, the per-layer
# breakdowns, ViT-S/16, three alternating rounds of ViT-B/16, and the whole test suite; the same
# time budget and files as gpu_run.sh.
#   bash benchmarks/gpu_extra.sh OUTDIR
exec "${PYTHON:-python3}" "$(dirname "$0")/gpu_run.py" --plan extra "$@"

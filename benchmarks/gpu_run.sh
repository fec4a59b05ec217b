#!/usr/bin/env bash
# The GPU run in one call: device and versions, the CuPy tests, one epoch of MNIST on the GPU and
# the benchmarks (minivit on CuPy against PyTorch on CUDA, and on NumPy on the CPU cores), each
# step under its own time limit, the whole in <= 8 minutes, at most 7 files written, in OUTDIR.
#   bash benchmarks/gpu_run.sh OUTDIR --data MNIST_DIR      # on the GPU machine
#   bash benchmarks/gpu_run.sh OUTDIR --device cpu --tiny   # the dry run, on any machine
# Every option: python benchmarks/gpu_run.py --help; how to run it on a lent GPU machine:
# benchmarks/README.md, "GPU". The exit status is 0 when every step passed.
exec "${PYTHON:-python3}" "$(dirname "$0")/gpu_run.py" "$@"

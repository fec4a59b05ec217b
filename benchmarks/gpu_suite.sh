#!/usr/bin/env bash
# Every GPU check and measurement that benchmarks/README.md asks for, in one run, each step's
# output in its own file so that a failure in one does not hide the others:
#   the test suite (its CuPy half runs when a GPU is visible), then minivit on CuPy against
#   PyTorch on CUDA for the MNIST model and ViT-B/16 (batch 64), in float32 and with TF32, and
#   minivit's per-layer breakdown on the GPU.
# Usage, from the repository root:  bash benchmarks/gpu_suite.sh [OUT_DIR [STEP ...]]
#   OUT_DIR defaults to gpu-results; STEPs (device pytest mnist mnist_tf32 b16 b16_tf32 layers
#   layers_b16) pick some steps only, e.g. to stay under a time limit per command.
# Needs numpy, cupy and (for the comparison) torch with CUDA; minivit need not be installed.
set -u
out=${1:-gpu-results}
shift $(( $# > 0 ? 1 : 0 ))
only=" $* "
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}

run() {        # run NAME COMMAND...: output to $out/NAME.txt, exit status to $out/status.txt
    local name=$1; shift
    if [ "$only" != "  " ] && [[ "$only" != *" $name "* ]]; then return; fi
    echo "== $name: $*"
    local t0=$SECONDS
    "$@" > "$out/$name.txt" 2>&1
    local rc=$?
    echo "$name rc=$rc $((SECONDS - t0))s" | tee -a "$out/status.txt"
    tail -n 3 "$out/$name.txt"
}

run device   sh -c "nvidia-smi; $py -c 'import cupy, numpy; print(\"cupy\", cupy.__version__, \"numpy\", numpy.__version__); cupy.show_config()'"
run pytest   "$py" -m pytest -q -p no:cacheprovider
run mnist    "$py" benchmarks/bench.py --config mnist --device gpu --impl all --what train,infer,peak --rounds 3
run mnist_tf32 "$py" benchmarks/bench.py --config mnist --device gpu --impl all --what train,infer --rounds 3 --tf32
run b16      "$py" benchmarks/bench.py --config vit-b16 --batch 64 --device gpu --impl all --what train,infer,peak --rounds 3
run b16_tf32 "$py" benchmarks/bench.py --config vit-b16 --batch 64 --device gpu --impl all --what train,infer --rounds 3 --tf32
run layers   "$py" benchmarks/bench.py --config mnist --device gpu --what layers
run layers_b16 "$py" benchmarks/bench.py --config vit-b16 --batch 64 --device gpu --what layers --layer-reps 10
echo "results in $out/ (status.txt: one line per step)"

#!/bin/bash
# One GPU call for issue 14's integration work (about 10 minutes): build the CUDA extension, run
# the `cuda` tests of the CUDA-graph vision path, then bench_generate.py in order of importance
# (the targets are LLaVA-NeXT-7B at batch 1), then the interleaved bench_prefill.py. Each step has
# a deadline; rows, tables, charts and logs are copied to $OUT (or ./gpu-out). Usage, from the
# repository root:  BUDGET=560 bash benchmarks/gpu_generate_run.sh
# Needs transformers >= 5.25 there (install a wheel first where the machine has an older one, as
# ../shared/gpu-results/2026-11-27-h200/run.sh does).
set -u
T0=$(date +%s); DEADLINE=$((T0 + ${BUDGET:-560})); OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
left() { local r=$((DEADLINE - $(date +%s))); [ "$1" -lt "$r" ] && r=$1; [ $r -lt 5 ] && r=5; echo $r; }
step() { echo "=== [$(( $(date +%s) - T0 ))s] $*"; }
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
step build
MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} VISIONZIP_BUILD_CUDA=1 timeout "$(left 200)" python3 setup.py build_ext --inplace > "$OUT/build.log" 2>&1
echo "build rc=$?"; tail -2 "$OUT/build.log"
step cuda-tests
timeout "$(left 90)" python3 -m pytest -q -m cuda -p no:cacheprovider tests/test_graphs.py tests/test_encoder.py 2>&1 | tail -15
step generate-next-b1
timeout "$(left 240)" python3 benchmarks/bench_generate.py --publish --models LLaVA-NeXT-7B --batches 1 2>&1 | tail -25
step generate-llava-b1
timeout "$(left 120)" python3 benchmarks/bench_generate.py --publish --models LLaVA-1.5-7B --batches 1 2>&1 | tail -8
step generate-b8
timeout "$(left 150)" python3 benchmarks/bench_generate.py --publish --batches 8 2>&1 | tail -8
step prefill-next-b1
timeout "$(left 120)" python3 benchmarks/bench_prefill.py --publish --models LLaVA-NeXT-7B --batches 1 2>&1 | tail -20
step pack
cp benchmarks/results/generate_* benchmarks/results/prefill_* "$OUT"/ 2>/dev/null; ls "$OUT"

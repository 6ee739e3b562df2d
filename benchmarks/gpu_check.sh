#!/bin/bash
# One call on a GPU machine for zip_tokens: build, the `cuda` tests, the op benchmark, and one Nsight
# Compute pass over its kernels, everything written under one folder.
#
#   bash benchmarks/gpu_check.sh [FOLDER]      # FOLDER defaults to $OUT
#
# Run from the repository root. Each stage has a deadline cut from BUDGET (seconds, default 480), so
# that the whole call ends well inside a 10-minute limit; a stage that runs out is stopped and the
# next one starts. What it writes under FOLDER:
#   env.txt                 GPU, driver, library versions, commit
#   build.log               python setup.py build_ext --inplace (CUDA extension for sm_90 only)
#   tests.log, junit.xml    pytest -m cuda on the zip_tokens test files
#   bench.log, zip_tokens_<gpu>.csv
#                           benchmarks/bench_zip_tokens.py: CLIP-L/336 and SigLIP-384, bf16, attn as
#                           rows and as full maps, B = 1 5 8 32 256; events and CUDA-graph medians,
#                           per-kernel plan/apply times, the published provider beside them
#   ncu_driver.py, ncu.log, zip_tokens.ncu-rep, ncu_details.csv, ncu_summary.txt
#                           ncu --set basic over each backend's kernels at B = 1 and 256 (CLIP, bf16)
#   apply_tiles.log, triton_apply_tiles_<gpu>.csv
#                           benchmarks/bench_triton_apply_tiles.py: the Triton apply kernel alone with
#                           its chosen tiles and variants, B = 1 8 256, fraction of copy bandwidth
# The interpreter tests (test_interpreted_in_subprocess, tests/test_triton_zip_tokens.py) are left
# out: they need no GPU and run in CI.
set -u
source "$(dirname "$0")/gpu_stages.sh"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 TRITON_DEFAULT_FP_FUSION=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
TEST_FILES="tests/test_cuda_zip_tokens.py tests/test_triton_gpu.py"
KERNELS='regex:column_sum_kernel|select_kernel|assign_kernel|apply_kernel|zip_plan_kernel|zip_apply_kernel'

el env
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__,
    'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  git rev-parse --short=12 HEAD 2>/dev/null || echo "commit unknown (no git)"
  nproc
} > "$DIR/env.txt" 2>&1
cat "$DIR/env.txt"

el build
MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 VISIONZIP_BUILD_CUDA=1 timeout "$(left 150)" \
  python3 setup.py build_ext --inplace > "$DIR/build.log" 2>&1
echo "build rc=$?"
tail -3 "$DIR/build.log"
python3 -c "import torch, visionzip_kernels as vz; print('backends on cuda:', vz.available_backends('cuda'))"

el cuda-tests
timeout "$(left 120)" python3 -m pytest -q -m cuda $TEST_FILES -p no:cacheprovider -n 16 \
  -k "not interpreted_in_subprocess" --timeout 110 -rfE --junitxml="$DIR/junit.xml" > "$DIR/tests.log" 2>&1
echo "tests rc=$?"
tail -15 "$DIR/tests.log"

el bench
timeout "$(left 170)" python3 benchmarks/bench_zip_tokens.py --models clip-l-336 siglip-384 --dtypes bfloat16 \
  --layouts rows full --batches 1 5 8 32 256 --results-dir "$DIR" > "$DIR/bench.log" 2>&1
echo "bench rc=$?"

el ncu
cat > "$DIR/ncu_driver.py" <<'PY'
"""Each backend once at B = 1 and once at 256 (CLIP-L/336, bf16, CLS rows), for ncu to profile."""
import sys
import torch
import visionzip_kernels as vz
sys.path.insert(0, "benchmarks")
from bench_zip_tokens import K_CTX, K_DOM, MODELS, make_inputs

geometry = MODELS["clip-l-336"]
device = torch.device("cuda")
for backend in [b for b in ("cuda", "triton") if b in vz.available_backends(device)]:
    for batch in (1, 256):
        hidden, attn, keys = make_inputs(geometry, batch, torch.bfloat16, "rows", device, seed=1)
        vz.zip_tokens(hidden, attn, K_DOM, K_CTX, keys, True, backend=backend)
        torch.cuda.synchronize()
        print(backend, batch, "ran")
PY
# A first run outside ncu compiles the Triton kernels into Triton's cache, so that the profiled run
# launches each kernel once per call and nothing else: 2 + 3 kernels per call, 4 calls.
timeout "$(left 40)" python3 "$DIR/ncu_driver.py" > "$DIR/ncu.log" 2>&1
timeout "$(left 80)" ncu --set basic --clock-control none --target-processes all -k "$KERNELS" --launch-count 12 \
  -f -o "$DIR/zip_tokens" python3 "$DIR/ncu_driver.py" >> "$DIR/ncu.log" 2>&1
echo "ncu rc=$?"
tail -4 "$DIR/ncu.log"
if [ -f "$DIR/zip_tokens.ncu-rep" ]; then
  ncu -i "$DIR/zip_tokens.ncu-rep" --page details --csv > "$DIR/ncu_details.csv" 2>&1
  python3 - "$DIR/ncu_details.csv" > "$DIR/ncu_summary.txt" 2>&1 <<'PY'
# One line per profiled kernel launch: its grid and the speed-of-light and occupancy figures.
import csv, sys
from collections import OrderedDict
wanted = ("Duration", "Memory Throughput", "DRAM Throughput", "Compute (SM) Throughput",
          "Registers Per Thread", "Grid Size", "Block Size", "Achieved Occupancy")
launches = OrderedDict()
with open(sys.argv[1], newline="") as handle:
    for row in csv.DictReader(line for line in handle if line.startswith('"')):
        if row.get("Metric Name") in wanted:
            key = (row["ID"], row["Kernel Name"].split("(")[0][-40:])
            value = f"{row['Metric Value']} {row.get('Metric Unit', '')}".strip()
            launches.setdefault(key, {})[row["Metric Name"]] = value
for (launch, name), metrics in launches.items():
    print(f"{launch:>3} {name:40} " + "; ".join(f"{k}: {metrics[k]}" for k in wanted if k in metrics))
PY
fi

el apply-tiles
timeout "$(left 60)" python3 benchmarks/bench_triton_apply_tiles.py --batches 1 8 256 --results-dir "$DIR" \
  > "$DIR/apply_tiles.log" 2>&1
echo "apply-tiles rc=$?"

el done
cat "$DIR/ncu_summary.txt" 2>/dev/null
tail -50 "$DIR/bench.log"
tail -25 "$DIR/apply_tiles.log"

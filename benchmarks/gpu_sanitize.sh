#!/bin/bash
# One call on a GPU machine: the CUDA C++ kernels under compute-sanitizer, everything written under
# one folder.
#
#   bash benchmarks/gpu_sanitize.sh [FOLDER]      # FOLDER defaults to $OUT
#
# Run from the repository root. Stages, each with a deadline cut from BUDGET (seconds, default 480):
#   env.txt               GPU, driver, library versions, compute-sanitizer's version, commit
#   build.log             python setup.py build_ext --inplace (CUDA extension for sm_90 only)
#   tests.log             pytest -m cuda on the CUDA C++ backends' test files
#   <tool>.log            compute-sanitizer --tool <tool> (memcheck, racecheck, synccheck,
#                         initcheck) over benchmarks/gpu_sanitize_cases.py: every kernel once, on
#                         bounded shapes, with PYTORCH_NO_CUDA_MEMORY_CACHING=1 so that memcheck
#                         and initcheck see each tensor's own allocation
#   summary.txt           per stage: exit status and compute-sanitizer's ERROR SUMMARY line
# compute-sanitizer runs on some machines and not on others: its version is printed first, and a
# tool that cannot start says so in its log and in summary.txt.
set -u
source "$(dirname "$0")/gpu_stages.sh"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
SANITIZER=${COMPUTE_SANITIZER:-compute-sanitizer}
TEST_FILES="tests/test_cuda_zip_tokens.py tests/test_attention_importance_cuda.py tests/test_varlen_gpu.py"
: > "$DIR/summary.txt"

el env
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$SANITIZER" --version || echo "compute-sanitizer: not found ($SANITIZER)"
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  git rev-parse --short=12 HEAD 2>/dev/null || echo "commit unknown (no git)"
} > "$DIR/env.txt" 2>&1
cat "$DIR/env.txt"

el build
MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 VISIONZIP_BUILD_CUDA=1 timeout "$(left 150)" \
  python3 setup.py build_ext --inplace > "$DIR/build.log" 2>&1
echo "build rc=$?" | tee -a "$DIR/summary.txt"
tail -3 "$DIR/build.log"

el cuda-tests
timeout "$(left 90)" python3 -m pytest -q -m cuda $TEST_FILES -p no:cacheprovider -rfE > "$DIR/tests.log" 2>&1
echo "tests rc=$? $(tail -1 "$DIR/tests.log")" | tee -a "$DIR/summary.txt"

for tool in memcheck racecheck synccheck initcheck; do
  el "$tool"
  extra=""
  [ "$tool" = racecheck ] && extra="--racecheck-report all"
  [ "$tool" = memcheck ] && extra="--leak-check no"
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 timeout "$(left 120)" "$SANITIZER" --tool "$tool" $extra --error-exitcode 99 \
    python3 benchmarks/gpu_sanitize_cases.py > "$DIR/$tool.log" 2>&1
  rc=$?
  echo "$tool rc=$rc $(grep -h 'ERROR SUMMARY\|RACECHECK SUMMARY' "$DIR/$tool.log" | tail -1)" | tee -a "$DIR/summary.txt"
done

el done
cat "$DIR/summary.txt"

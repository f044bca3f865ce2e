#!/usr/bin/env bash
# The one command to run on a lent GPU machine (torch + Triton, no megatron-core, no network):
#   bash bench/gpu_check.sh
# 1. the kernel tests: on a CUDA machine test_kernels_triton.py runs its kernel tests on the GPU,
#    including the ones marked `gpu` (bf16, larger fp32, FP8 kernel vs emulation, auto dispatch);
#    test_kernels.py adds the torch backend and the 2-rank gloo TP test;
# 2. bench/gpu_logprobs.py: correctness, FP8 error, then the speed/memory table;
# 3. bench/gpu_rollouts.py, only where megatron-core is importable (skipped otherwise): the
#    rollout engines (static loop, layers eager, layers + CUDA graphs), agreement and tokens/s.
# Logs go to $OUT (if set) as pytest_gpu.log, gpu_logprobs.log and gpu_rollouts.log. Exit status:
# non-zero if a step that ran failed. Extra arguments go to gpu_logprobs.py (e.g. --skip-compile, --reps 5).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PYTHON="${PYTHON:-python3}"
LOG_DIR="${OUT:-}"
log() {  # tee into $OUT/<name> when OUT is set
    if [ -n "$LOG_DIR" ]; then tee "$LOG_DIR/$1"; else cat; fi
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | log nvidia_smi.log

"$PYTHON" -m pytest -q -rs -p no:cacheprovider tests/test_kernels_triton.py tests/test_kernels.py 2>&1 \
    | log pytest_gpu.log
tests_rc=${PIPESTATUS[0]}

timeout 420 "$PYTHON" bench/gpu_logprobs.py "$@" 2>&1 | log gpu_logprobs.log
bench_rc=${PIPESTATUS[0]}

rollouts_rc=0
if "$PYTHON" -c "import megatron.core" 2>/dev/null; then
    timeout 300 "$PYTHON" bench/gpu_rollouts.py 2>&1 | log gpu_rollouts.log
    rollouts_rc=${PIPESTATUS[0]}
else
    echo "gpu_rollouts: skipped (megatron-core is not importable here)" | log gpu_rollouts.log
fi

echo "gpu_check: pytest exit ${tests_rc}, gpu_logprobs exit ${bench_rc}, gpu_rollouts exit ${rollouts_rc}"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$rollouts_rc" -eq 0 ]

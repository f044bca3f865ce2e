#!/usr/bin/env bash
# The one command to run on a lent GPU machine (torch + Triton, no megatron-core, no network):
#   bash bench/gpu_check.sh
# 1. the kernel tests: on a CUDA machine test_kernels_triton.py runs its kernel tests on the GPU,
#    including the ones marked `gpu` (bf16, larger fp32, FP8 kernel vs emulation, auto dispatch);
#    test_kernels.py adds the torch backend and the 2-rank gloo TP test;
# 2. bench/gpu_logprobs.py: correctness, FP8 error, then the speed/memory table;
# 3. megatron-core from the wheels under bench/wheels when it is not importable (the machine reaches
#    no registry; docs/gpu_check.md says how the wheels get there);
# 4. bench/gpu_rollouts.py: the rollout engines (static loop, layers eager, layers + CUDA graphs),
#    agreement and tokens/s;
# 5. bench/gpu_stack.py: a Megatron-Core GPTModel bf16 training step (local spec) and a SIP dpo
#    step with the rules judge and rollouts, each the real `megatron-sip train` on CUDA.
# Steps 4-5 are skipped when megatron-core is still not importable. Logs go to $OUT (if set) as
# pytest_gpu.log, gpu_logprobs.log, gpu_rollouts.log and gpu_stack.log; the last lines are one
# summary table. Exit status: non-zero if a step that ran failed. Extra arguments go to
# gpu_logprobs.py (e.g. --skip-compile, --reps 5). Budget: <= 8 minutes on one H100/H200.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
export PYTHONUNBUFFERED=1
PYTHON="${PYTHON:-python3}"
LOG_DIR="${OUT:-}"
log() {  # tee into $OUT/<name> when OUT is set
    if [ -n "$LOG_DIR" ]; then tee "$LOG_DIR/$1"; else cat; fi
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | log nvidia_smi.log

timeout 100 "$PYTHON" -m pytest -q -rs -p no:cacheprovider tests/test_kernels_triton.py tests/test_kernels.py 2>&1 \
    | log pytest_gpu.log
tests_rc=${PIPESTATUS[0]}

timeout 150 "$PYTHON" bench/gpu_logprobs.py "$@" 2>&1 | log gpu_logprobs.log
bench_rc=${PIPESTATUS[0]}

WHEELS=bench/wheels
if ! "$PYTHON" -c "import megatron.core" 2>/dev/null && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    # What bench/fetch_gpu_wheels.sh put there (antlr4's runtime is a source archive pip builds).
    "$PYTHON" -m pip install --quiet --no-index --find-links "$WHEELS" megatron-core omegaconf hydra-core 2>&1 \
        | log pip_wheels.log
fi

rollouts_rc=skipped
stack_rc=skipped
if "$PYTHON" -c "import megatron.core" 2>/dev/null; then
    timeout 90 "$PYTHON" bench/gpu_rollouts.py 2>&1 | log gpu_rollouts.log
    rollouts_rc=${PIPESTATUS[0]}
    stack_args=()
    if [ -d "$WHEELS/tokenizer" ]; then stack_args=(--tokenizer "$WHEELS/tokenizer"); fi
    timeout 130 "$PYTHON" bench/gpu_stack.py "${stack_args[@]}" 2>&1 | log gpu_stack.log
    stack_rc=${PIPESTATUS[0]}
else
    echo "gpu_rollouts, gpu_stack: skipped (megatron-core is not importable and no wheel in $WHEELS)" \
        | log gpu_rollouts.log
fi

echo
echo "| step | exit |"
echo "|---|---|"
echo "| kernel tests (pytest) | ${tests_rc} |"
echo "| gpu_logprobs | ${bench_rc} |"
echo "| gpu_rollouts | ${rollouts_rc} |"
echo "| gpu_stack (GPTModel bf16 step, SIP dpo step) | ${stack_rc} |"
ok() { [ "$1" = "0" ] || [ "$1" = "skipped" ]; }
ok "$tests_rc" && ok "$bench_rc" && ok "$rollouts_rc" && ok "$stack_rc"

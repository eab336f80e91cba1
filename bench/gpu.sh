#!/usr/bin/env bash
# Issue 12 measurements on one lent CUDA GPU (H100/H200 class), in under 10 minutes:
#
#   bash bench/gpu.sh            # from the repository root (or anywhere: it cds to bench/)
#
# Runs, each under its own time limit (sum 570 s, so the whole script ends inside 10 min
# even when a step hangs), and writes bench/results/*_cuda.json:
#   1. tokenizer.py   slic_torch batch throughput at 224 and 512 px (target >= 10,000 img/s at 224)
#   2. throughput.py  cast_small train step, bf16 and fp32 (the tokenizer must reach >= 5x the bf16 rate)
#   3. moco_step.py   MoCo-v3 step: CPU SEEDS loader (8 workers) vs the device path (device_augment + slic_torch)
#   4. compile.py     compiled vs eager forward and train step (static max_tokens, fullgraph)
#   5. pytest -m cuda the CUDA code paths of the test suite
# A failed or timed-out step is reported and the next one still runs; the exit status is
# 1 if any step failed. Without a visible GPU nothing runs (exit 2).
set -u
cd "$(dirname "$0")"
export PYTHONUNBUFFERED=1

if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA GPU visible to torch: nothing to measure" >&2
    exit 2
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

status=0
step() {  # step <seconds> <command...>
    local limit=$1
    shift
    echo
    echo "=== $* (limit ${limit} s)"
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@"
    local rc=$?
    echo "=== exit ${rc} after $((SECONDS - start)) s"
    if [ "$rc" -ne 0 ]; then
        status=1
    fi
}

step 90 python tokenizer.py --device cuda --skip-quality --sizes 224,512 --batch 256 --rounds 5
step 120 python throughput.py --device cuda --models cast_small --dtypes bf16,fp32 --modes train \
    --batch 128 --rounds 5 --warmup 2 --memory-batches 64,128,256
step 100 python moco_step.py --device cuda --batch 128 --workers 8 --steps 6 --amp bf16
step 180 python compile.py --device cuda --models cast_small --batch 64 --rounds 5 --warmup 2
step 80 bash -c 'cd .. && python -m pytest -m cuda -x -q tests'

echo
echo "results: $(ls results/*_cuda.json 2>/dev/null | tr '\n' ' ')"
exit $status

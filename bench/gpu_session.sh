#!/usr/bin/env bash
# One short GPU slot, prepared: every GPU measurement the performance work needs, in under ten minutes (the parts'
# time limits add up to 570 s, so it fits a ten-minute slot), each part under its own limit so that one slow part
# cannot cost the others, and all output kept in files as it is printed.
#
#   bash bench/gpu_session.sh OUT_DIR      (default: $OUT where set, else ./gpu-session)
#
# 1. bench/gpu_mfu.py at the paper's per-GPU batches, with the operator profile: MFU per case and where each
#    step's time goes (convolution, matmul, attention, normalisation, elementwise, copies, optimizer, host gaps).
# 2. MFU against per-GPU batch (32, 64) for the bf16 training cases: what a larger batch buys where memory allows.
# 3. Peak memory of XL-XXL (batch 8) and AR-XXL (batch 16) on one GPU beside the dry run's estimate for that step.
# 4. torch.compile of the tokenizer S-S and AR-B steps (compilation excluded from the timing by the warm-up steps).
# Torch and this repository only, as gpu_mfu.py.
set -o pipefail
out=${1:-${OUT:-gpu-session}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.." || exit 1
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
    python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
} | tee "$out/machine.txt"
status=0
timeout 200 python bench/gpu_mfu.py --quick --profile-ops 2>&1 | tee "$out/mfu-profile.txt" || status=1
timeout 120 python bench/gpu_mfu.py --quick --only bf16 --batches 32,64 2>&1 | tee "$out/mfu-batches.txt" || status=1
timeout 100 python bench/gpu_mfu.py --quick --memory --only memory 2>&1 | tee "$out/memory.txt" || status=1
timeout 150 python bench/gpu_mfu.py --quick --compile --only compiled 2>&1 | tee "$out/mfu-compile.txt" || status=1
exit $status

#!/usr/bin/env bash
# One short GPU slot, prepared: the measurements the GPU performance work needs next, most important first, in
# under ten minutes (the parts' time limits add up to 550 s), each part under its own limit so that one slow part
# cannot cost the others, every case's row and profile printed as it ends and all output kept in files as printed.
#
#   bash bench/gpu_session.sh OUT_DIR      (default: $OUT where set, else ./gpu-session)
#
# What the 2026-12-04 slot left open (README, "GPU MFU on one H200"), most useful first:
# 1. Eager tokenizer S-S (paper profile, per-GPU batch 16): the default (bf16 GroupNorm, on since that slot, where it
#    was measured only beside cuDNN autotuning, which made the step 0.81x) against fp32 GroupNorm, each with and
#    without channels-last, with the operator profile of each (that slot's were cut off).
# 2. The tokenizer S-S step compiled block by block (compile_scope="blocks": small graphs, short compilation).
# 3. The AR steps as training runs them by default (compile "auto": compiled on CUDA), AR-L for the first time.
# 4. The whole tokenizer step compiled, with Inductor's mix-order reduction off (with it on, Inductor 2.11 failed
#    compiling the backward: "AssertionError: 8192 v.s. 512"); it compiled for over 165 s then.
# 5. AR compiled at larger per-GPU batches, with CUDA graphs for AR-B.
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
part() {  # part NAME SECONDS ARGS...: one gpu_mfu.py invocation under its own time limit, its output in NAME.txt
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit $limit s): $*" | tee "$out/$name.txt"
    timeout "$limit" python bench/gpu_mfu.py --quick "$@" 2>&1 | tee -a "$out/$name.txt" || status=1
}
part 1-tokenizer-eager 70 --profile-ops --models tokenizer:S-S:16 --variants fp32norm,base,cl+fp32norm,cl
part 2-tokenizer-blocks 120 --profile-ops --models tokenizer:S-S:16 --variants blocks
part 3-ar-default 90 --profile-ops --models ar:B:32,ar:L:32 --variants auto
TORCHINDUCTOR_MIX_ORDER_REDUCTION=0 part 4-tokenizer-compiled 200 --models tokenizer:S-S:16 --variants compile
part 5a-ar-l-batch 35 --models ar:L:64 --variants auto
part 5b-ar-b-graphs 35 --models ar:B:128 --variants ro
exit $status

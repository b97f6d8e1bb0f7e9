#!/usr/bin/env bash
# One short GPU slot, prepared: the measurements that decide the GPU performance defaults, most important first, in
# under ten minutes (the parts' time limits add up to 560 s), each part under its own limit so that one slow part
# cannot cost the others, every case's row printed as it ends and all output kept in files as it is printed.
#
#   bash bench/gpu_session.sh OUT_DIR      (default: $OUT where set, else ./gpu-session)
#
# 1. Eager tokenizer S-S and B-L steps (paper profile, per-GPU batch 16) under each switch of PerformanceConfig
#    that could raise MFU (cuDNN autotuning, channels-last, GroupNorm in bf16), with the operator profile of each:
#    where the step's time goes and what each switch moved.
# 2. Eager AR-B and AR-L steps (batch 32) with their profiles.
# 3. torch.compile of the tokenizer S-S step and of the AR steps, plain and with CUDA graphs (reduce-overhead);
#    compilation is excluded from the timing by the warm-up steps.
# 4. MFU against per-GPU batch (tokenizer 32, 64; AR 64, 128).
# 5. torch.compile of the tokenizer B-L step.
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
tokenizer_switches=base,cudnn,cudnn+cl,cudnn+norm,cudnn+cl+norm
part 1-tokenizer-eager 100 --profile-ops --models tokenizer:S-S:16,tokenizer:B-L:16 --variants $tokenizer_switches
part 2-ar-eager 50 --profile-ops --models ar:B:32,ar:L:32 --variants base
part 3a-tokenizer-compiled 100 --profile-ops --models tokenizer:S-S:16 --variants compile+cudnn+norm,compile+cudnn+cl+norm
part 3b-ar-compiled 100 --profile-ops --models ar:B:32,ar:L:32 --variants compile,ro
part 4a-tokenizer-batches 60 --models tokenizer:S-S:32,tokenizer:S-S:64,tokenizer:B-L:32 --variants cudnn+cl+norm
part 4b-ar-batches 40 --models ar:B:64,ar:B:128,ar:L:64 --variants base
part 4c-ar-batch-compiled 50 --models ar:B:128 --variants compile
part 5-tokenizer-bl-compiled 60 --models tokenizer:B-L:16 --variants compile+cudnn+norm
exit $status

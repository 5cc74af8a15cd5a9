#!/usr/bin/env bash
# LoRA step time and peak GPU memory per rank of a random-weight Qwen2.5-VL-7B at 1 vs N GPUs with DeepSpeed ZeRO-2,
# through mulcot's own train-assistant under torchrun. Needs CUDA GPUs; installs DeepSpeed when it is missing.
#   bash bench/gpu_scale.sh                 # 1 vs every GPU
#   bash bench/gpu_scale.sh --gpus 1,2,4    # chosen process counts
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA GPU here: bench/gpu_scale.sh measures multi-GPU training (try: $PY bench/gpu_scale.py --size medium --no-deepspeed --gpus 1,2 to check the script on CPUs)" >&2
  exit 2
fi
if ! "$PY" -c "import deepspeed" 2>/dev/null; then
  "$PY" -m pip install -q deepspeed -c constraints.txt
fi
exec "$PY" bench/gpu_scale.py "$@"

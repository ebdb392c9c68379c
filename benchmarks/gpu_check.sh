#!/usr/bin/env bash
# GPU checks, run on a machine with one CUDA GPU whose python3 has torch + transformers + peft:
# the gpu-marked tests (QLoRA 4/8-bit, bf16 LoRA) and the overhead benchmark at two sizes.
# Missing packages travel as wheels in .whl/ (see docs/troubleshooting.md); results go to $OUT.
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 SUPERDUPER_LOG_LEVEL=SUCCESS
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers, peft, trl, datasets, bitsandbytes, superduper; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'trl', trl.__version__, 'bnb', bitsandbytes.__version__)" 2>&1 | tail -1 | tee -a "$OUT/gpu.txt"
timeout 240 python3 -m pytest plugin_tests/test_gpu.py -m gpu -q -p no:cacheprovider --durations=0 2>&1 | tail -25 | tee "$OUT/gpu_tests.log"
for size in small 1b; do
  timeout 200 python3 benchmarks/overhead.py --size $size --steps 60 --save-steps 20 --json "$OUT/overhead_$size.json" 2>&1 | tail -16
done

#!/usr/bin/env bash
# The GPU check, for a session that is lent an accelerator (it has never run: no GPU was lent yet).
# Needs PyTorch with CUDA, timm and pytest (the lent H200 image has them), nothing installed:
#     bash benchmarks/gpu_check.sh          # a few minutes
# 1. every algorithm trains and adapts on CUDA (tests/test_algorithms.py::test_runs_on_cuda);
# 2. one training step, SparseShared vs ERM, on CUDA, fp32 then bf16 autocast, with a timm ResNet-18 row.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python3 -c "import sys, torch; torch.cuda.is_available() or sys.exit('gpu_check: no CUDA device here'); \
print('torch', torch.__version__, '|', torch.cuda.get_device_name(0))" || exit 1
status=0
python3 -m pytest -q -p no:cacheprovider tests/test_algorithms.py -k cuda || status=1
for precision in fp32 bf16; do
    python3 benchmarks/bench_step.py --device cuda --repeats 5 --precision "$precision" --timm resnet18 || status=1
done
exit $status

#!/bin/bash
# GPU session (run by the device tool from the repo root, carrying .gpudata and .whl):
# bench/gpu_check.py, then the CIFAR-10-LT repair comparison, resumable across calls on a warm machine.
# Prepare here: .venv/bin/python bench/gpu_pack.py; wheels the image lacks into .whl/ (onnx2torch, jsonschema,
# jsonschema-specifications, referencing, rpds-py for cp312), see the device tool's README.
T0=$(date +%s)
LIMIT=${LIMIT:-585}
SETTINGS=${SETTINGS:-"REAT defaults,REAT constant,LBGAT frozen,LBGAT learnable,AT-BSL,PGD-AT class-balanced,MiSLAS,ResLT,REAT warm-up smoothing,LBGAT learnable warm-up smoothing"}  # REAT defaults = ε warm-up
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi -L; python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name(0))"
nproc
mkdir -p .cache
[ -d .cache/cifar10/test ] || (cd .cache && python3 -m zipfile -e ../.gpudata/cifar10lt.zip .)
if [ ! -f .cache/gpu_check.json ]; then
  timeout 240 python3 bench/gpu_check.py --json .cache/gpu_check.json > .cache/gpu_check.log 2>&1
  echo "gpu_check rc $?"
fi
cp .cache/gpu_check.* $OUT/ 2>/dev/null; cat .cache/gpu_check.log | grep -v -i warn
LEFT=$(( LIMIT - ($(date +%s) - T0) ))
echo "bench gets $LEFT s"
timeout $LEFT python3 bench/cifar10lt_repair.py --arch resnet10t --std-epochs 40 --n-per-class 100 --workers 8 \
  --no-reports --top 3 --resume --out .cache/br --settings "$SETTINGS" > .cache/bench.log 2>&1
echo "bench rc $?"
cp .cache/bench.log .cache/br/table.md .cache/br/table.json $OUT/ 2>/dev/null
grep -v -i warn .cache/bench.log | tail -40

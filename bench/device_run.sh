#!/usr/bin/env bash
# Issue 12 on one GPU machine, every step inside DEADLINE seconds, from the repository root:
#   bash bench/device_run.sh
# Where the machine lacks Ray, pack Ray and what Ray Train needs (jsonschema, tensorboardX,
# pydantic) as wheels into .whl/ (which git ignores), with an installer .whl/device-wheels.sh
# that this script runs with --install.
#
# Steps, each time-boxed, all inside DEADLINE seconds (default 540):
#   1. python -m bench.gpu, eager: training windows/s at batch 32 (the 8-GPU config's per-worker batch),
#      256 and 1024; host syncs per step; FLOPs vs peak; profile; backtest windows/s fp32 and bf16
#   2. the 8-worker configuration on this one GPU (gpus_per_worker 0.125, gloo: NCCL refuses two
#      ranks on one GPU), synthetic 8-zone fleet, 3 short epochs, one worker SIGKILLed after the
#      first checkpoint: must resume and finish (python -m bench.fleet_fault)
#   3. python -m bench.gpu with train.compile=true at batch 32 and 256 (training only), if time is left
# Under $OUT (7 files): device_run.log (everything printed),
# gpu_bench.txt, gpu_bench.json, profile.txt, trace.json.gz, fleet_fault.log, compile_bench.txt.
set -uo pipefail
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
START=$(date +%s)
DEADLINE=${DEADLINE:-540}

step() {  # step LIMIT_S command...: run with the smaller of LIMIT_S and the time left
  local limit=$1 left
  shift
  left=$((DEADLINE - ($(date +%s) - START) - 5))
  if ((left < 30)); then echo "== SKIPPED (only ${left}s left): $*"; return 0; fi
  ((limit > left)) && limit=$left
  echo "== $(date +%T) +$(($(date +%s) - START))s [limit ${limit}s] $*"
  timeout -k 10 "$limit" "$@"
  local rc=$?
  echo "== rc=$rc$( ((rc == 124)) && echo ' (timed out)')"
}

main() {
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,utilization.gpu --format=csv || true
if [[ -f .whl/device-wheels.sh ]]; then
  SITE=$(bash .whl/device-wheels.sh --install) || { echo "installing .whl/ failed"; exit 1; }
  export PYTHONPATH="$SITE:$PWD"
else
  echo "no .whl/ (see the header): Ray is missing, step 2 will fail"
  export PYTHONPATH="$PWD"
fi
python3 -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, torch.cuda.get_device_name())"
python3 -c "import ray; print('ray', ray.__version__)" || true

# 1. throughput, eager (the default: train.compile false)
step 200 python3 -m bench.gpu --zones 1000 --days 14 --batch-sizes 32,256,1024 --steps 100 --output "$OUT/gpu_bench.json"

# 2. eight workers on one GPU, a killed worker, resume
step 30 python3 -m bench.make_zones --synthetic --zones 8 --output /tmp/zones.csv
step 240 python3 -m bench.fleet_fault --output "$OUT/fleet_fault.log" --timeout 220 -- \
  --config configs/8gpu.yaml --data /tmp/zones.csv --storage /tmp/runs --name fleet8 \
  --set data.series_column=zone --set cluster.gpus_per_worker=0.125 --set cluster.backend=gloo \
  --set cluster.cpus_per_worker=1 --set cluster.max_failures=2 --set train.max_epochs=3 \
  --set train.limit_train_batches=20

# 3. torch.compile of each member (train.compile=true)
step 150 python3 -m bench.gpu --zones 200 --days 14 --batch-sizes 32,256 --steps 100 --compile --skip-infer \
  --profile-steps 3 --output /tmp/compile/gpu_bench.json
cp /tmp/compile/gpu_bench.txt "$OUT/compile_bench.txt" 2>/dev/null || true

echo "== done in $(($(date +%s) - START)) s"
ls -la "$OUT"
}

main 2>&1 | tee "$OUT/device_run.log"

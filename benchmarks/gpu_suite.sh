#!/usr/bin/env bash
# The GPU runs behind BENCHMARKS.md, as one background job on a machine with 1-4 GPUs.
#
# Why one script: GPU time comes in short leases, so everything that needs a GPU starts at once
# and spreads over the GPUs and cores of the machine:
#   GPU 0      train_throughput.py: the CQL rows (1 seed vs d3rlpy; 8 vectorised seeds in fp32,
#              tf32, bf16), on a GPU of its own so nothing else shares its launch queue;
#   GPU 1      hopper_behaviour.py (online SAC -> Hopper-v5 medium/random datasets), then the
#              Hopper quality rows (quality.py --skip-arm) and, if present, model_based_quality.py;
#   GPUs 2..   quality.py on the ArmReach datasets (ours on the GPU with CUDA graphs, d3rlpy's
#              CQL/BCQ on the GPU with compile_graph, its launch-bound BC/TD3+BC/IQL on CPU cores).
# With fewer GPUs the roles share GPU 0 (then the throughput numbers are not clean: rerun alone).
#
#   setsid bash benchmarks/gpu_suite.sh OUTDIR > OUTDIR.log 2>&1 &   # then poll OUTDIR/*.log
# Needs python3 with torch (CUDA), d3rlpy 2.8.0, mujoco, gymnasium, minari on the path.
set -u
out=${1:-gpu_out}
steps=${STEPS:-20000}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
num_gpus=$(python3 -c 'import torch; print(torch.cuda.device_count())')
gpu() { # role index -> a GPU id that exists
    echo $(($1 < num_gpus ? $1 : num_gpus - 1))
}
if ((num_gpus >= 3)); then
    arm_gpus=$(seq -s, 2 $((num_gpus - 1)))
else
    arm_gpus=$(gpu 1)
fi
cores=$(nproc)
workers=$(((cores - 4) / 2))
echo "gpus $num_gpus, cores $cores, quality workers $workers each, $steps updates; $(date -u)"

(
    CUDA_VISIBLE_DEVICES=$(gpu 0) python3 benchmarks/train_throughput.py --device cuda --algos cql \
        --steps 400 --rounds 2 --max-round-s 3 --vector-seeds 8 --vector-precisions fp32,tf32,bf16 \
        --json "$out/throughput.json"
) >"$out/throughput.log" 2>&1 &

(
    CUDA_VISIBLE_DEVICES=$arm_gpus python3 benchmarks/quality.py --device cuda --steps "$steps" \
        --episodes 200 --eval-episodes 20 --workers "$workers" --peer-cpu-algos bc,td3bc,iql \
        --peer-compile-algos cql --bf16-algos cql --json "$out/quality_arm.json"
) >"$out/quality_arm.log" 2>&1 &

(
    export CUDA_VISIBLE_DEVICES
    CUDA_VISIBLE_DEVICES=$(gpu 1) python3 benchmarks/hopper_behaviour.py --device cuda \
        --max-steps 150000 --start-steps 5000 --eval-every 5000 --target-return 1000 \
        --episodes 200 --random-episodes 2000 --root "$out/minari" || exit 1
    CUDA_VISIBLE_DEVICES=$(gpu 1),$arm_gpus python3 benchmarks/quality.py --device cuda --steps "$steps" \
        --skip-arm --hopper-prefix hopper --minari-root "$out/minari" --eval-episodes 10 \
        --workers "$workers" --peer-cpu-algos bc,td3bc,iql --peer-compile-algos cql --json "$out/quality_hopper.json" \
        >"$out/quality_hopper.log" 2>&1 &
    if [ -f benchmarks/model_based_quality.py ]; then
        CUDA_VISIBLE_DEVICES=$(gpu 1) python3 benchmarks/model_based_quality.py --device cuda \
            --steps 50000 --hidden 256 --episodes 200 --dynamics-steps 20000 --eval-episodes 20 \
            --hopper-prefix hopper --minari-root "$out/minari" --workers 8 --json "$out/model_based.json" \
            >"$out/model_based.log" 2>&1
    fi
    wait
) >"$out/hopper.log" 2>&1 &

wait
echo "all done $(date -u)"

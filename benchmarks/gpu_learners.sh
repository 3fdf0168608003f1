#!/usr/bin/env bash
# Issue 17's GPU runs on ONE GPU, in two leases of < 10 minutes each (device tool limits).
#
#   bash benchmarks/gpu_learners.sh data OUT     # lease 1: datasets + compile matrix + accel checks
#   bash benchmarks/gpu_learners.sh quality OUT DATA_TGZ_DIR   # lease 2: CQL/IQL/MOPO quality rows
#
# Lease 1 makes the locomotion datasets with benchmarks/hopper_behaviour.py (Hopper-v5 random +
# medium, HalfCheetah-v5 medium: the same online-SAC recipe with the task swapped) and packs them
# as OUT/<prefix>.tgz (they come back to the caller and travel to lease 2); beside them it runs
# benchmarks/accel_check.py: the compile matrix (5 algorithms x {1, 8 seeds} x {fp32, bf16}) with
# and without d3rlpy imported, one process per algorithm, and the graph/lr-schedule/Trainer checks.
# Lease 2 unpacks the datasets and runs benchmarks/quality.py (CQL: ours' default and variants vs
# d3rlpy on ArmReach mixed, Hopper medium, HalfCheetah medium; IQL cosine vs constant on both
# Hopper datasets) and benchmarks/model_based_quality.py (MOPO on Hopper, with/without
# terminations). Every process writes OUT/<name>.log; the timings of the datasets and the compile
# matrix share the GPU, so no throughput figure of lease 1 is a clean one.
# Needs python3 with torch (CUDA), mujoco, gymnasium, minari and d3rlpy 2.8.0 on the path.
set -u
phase=$1
out=$2
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=1
deadline=${DEADLINE_S:-540}
echo "$phase: $(nproc) cores, $(python3 -c 'import torch; print(torch.__version__, torch.cuda.get_device_name())'); $(date -u)"

if [ "$phase" = data ]; then
    root=/tmp/minari
    timeout "$deadline" python3 benchmarks/hopper_behaviour.py --device cuda --max-steps 150000 \
        --start-steps 5000 --eval-every 10000 --target-return 1000 --episodes 200 \
        --random-episodes 2000 --root "$root" --prefix hopper >"$out/hopper_data.log" 2>&1 &
    timeout "$deadline" python3 benchmarks/hopper_behaviour.py --device cuda --task HalfCheetah-v5 \
        --max-steps 120000 --start-steps 5000 --eval-every 20000 --target-return 1e9 --episodes 100 \
        --random-episodes 0 --root "$root" --prefix cheetah >"$out/cheetah_data.log" 2>&1 &
    if [ "${MATRIX:-1}" = 1 ]; then
        for algo in bc iql td3bc cql bcq; do
            timeout "$deadline" python3 benchmarks/accel_check.py --matrix --algos "$algo" \
                >"$out/matrix_$algo.log" 2>&1 &
            timeout "$deadline" python3 benchmarks/accel_check.py --matrix --algos "$algo" --import-d3rlpy \
                >"$out/matrix_d3rlpy_$algo.log" 2>&1 &
        done
    fi
    # Inductor settings tried against the one failing compile (CQL, one seed: a Triton MLIR error)
    for option in ${PROBES:-}; do
        timeout "$deadline" python3 benchmarks/accel_check.py --matrix --algos cql --matrix-seeds 1 \
            --matrix-precisions fp32 --inductor "$option" >"$out/probe_${option%%=*}.log" 2>&1 &
    done
    timeout "$deadline" python3 benchmarks/accel_check.py --steps 50 --seeds 2 --modes graph \
        --schedule-steps "${SCHEDULE_STEPS:-50}" --trainer-steps 300 >"$out/accel_check.log" 2>&1 &
    wait
    for prefix in hopper cheetah; do
        ls -d "$root"/"$prefix"-* >/dev/null 2>&1 && tar -czf "$out/$prefix.tgz" -C "$root" $(cd "$root" && ls -d "$prefix"-*)
    done
    cat "$out"/matrix_*.log >"$out/matrix.log" 2>/dev/null
    cat "$out"/probe_*.log >"$out/probes.log" 2>/dev/null
    rm -f "$out"/matrix_*.log "$out"/probe_*.log
    grep -h "^# inductor\|^| cql" "$out/probes.log"
    grep -h "^|\|^###" "$out/matrix.log"
    tail -n 3 "$out"/hopper_data.log "$out"/cheetah_data.log
    tail -n 30 "$out/accel_check.log"
    ls -la "$out"
elif [ "$phase" = quality ]; then
    root=/tmp/minari
    mkdir -p "$root"
    for f in "$3"/*.tgz; do tar -xzf "$f" -C "$root"; done
    ls "$root"
    workers=${WORKERS:-$(($(nproc) - 2))}
    timeout "$deadline" python3 benchmarks/quality.py --device cuda --steps "${QSTEPS:-20000}" --episodes 200 \
        --algos cql --eval-episodes 10 --hopper-prefix hopper --hopper-prefix cheetah --minari-root "$root" \
        --only-datasets "ArmReach mixed,Hopper medium,HalfCheetah medium" --peer-compile-algos cql \
        --variant cql:target_action=mean --variant "cql:lagrange=true;lagrange_lr=0.0001" \
        --variant "cql:target_action=mean;lagrange=true;lagrange_lr=0.0001" \
        --workers "$workers" --deadline-s $((deadline - 30)) --json "$out/quality_cql.json" \
        >"$out/quality_cql.log" 2>&1 &
    timeout "$deadline" python3 benchmarks/quality.py --device cuda --steps "${QSTEPS:-20000}" --skip-arm \
        --algos iql --no-peer --eval-episodes 10 --hopper-prefix hopper --minari-root "$root" \
        --variant iql:actor_lr_schedule=none --workers 2 --json "$out/quality_iql.json" \
        >"$out/quality_iql.log" 2>&1 &
    [ "${MOPO:-1}" = 1 ] && timeout "$deadline" python3 benchmarks/model_based_quality.py --device cuda \
        --methods mopo --arm-datasets "" --steps "${MOPO_STEPS:-50000}" --hidden 256 \
        --dynamics-steps "${MOPO_DYN_STEPS:-20000}" --eval-episodes 10 --hopper-prefix hopper \
        --minari-root "$root" --mopo-variant termination=none --workers "${MOPO_WORKERS:-6}" \
        --json "$out/model_based.json" >"$out/model_based.log" 2>&1 &
    wait
    tail -n 25 "$out"/quality_cql.log "$out"/quality_iql.log "$out"/model_based.log
fi
echo "done $(date -u)"

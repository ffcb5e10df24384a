#!/usr/bin/env bash
# The runs that need a 2-GPU machine (distillation, sharding and variance), each part one 10-minute device command:
#   distill  the C-GSPN and hybrid distillation runs at once (one per GPU, suite.gpu.distill_run),
#            then the same C-GSPN run under torchrun on both GPUs (DDP) and the table that compares
#            the DDP loss curve with the single-GPU one
#   scale    scenarios/attention.yaml + scenarios/cgspn-scan.yaml sharded over both GPUs
#            (cgspn-bench run --gpus all), then the variance mode (--same-case-on-every-gpu) on
#            the same scenarios, and a report of each
#   variance only the variance run and its report
# Usage: OUT=/some/dir bash suite/gpu/multi_gpu_session.sh distill|scale|variance [BUDGET_SCALE]
# Outputs: $OUT/<part>.tgz and $OUT/<part>.log (the working folder is results/runs/multi-gpu).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:-}:$(pwd)"
OUT=${OUT:?set OUT to an output folder}
PART=${1:?part: distill, scale or variance}
SCALE=${2:-0.3}
W=results/runs/multi-gpu
mkdir -p "$W" "$OUT"
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/$PART.log"; }
nvidia-smi --query-gpu=index,name,uuid,driver_version,clocks.sm,temperature.gpu --format=csv | tee -a "$OUT/$PART.log"

case "$PART" in
distill)
    log "single-GPU runs: cgspn on GPU 0, hybrid on GPU 1"
    CUDA_VISIBLE_DEVICES=0 timeout 330 python3 -m suite.gpu.distill_run --out "$W/distill" --only cgspn \
        > "$W/distill-cgspn.out" 2>&1 &
    CUDA_VISIBLE_DEVICES=1 timeout 330 python3 -m suite.gpu.distill_run --out "$W/distill" --only hybrid \
        > "$W/distill-hybrid.out" 2>&1 &
    wait
    tail -n 25 "$W/distill-cgspn.out" "$W/distill-hybrid.out"
    log "DDP run on both GPUs, then the table"
    timeout 220 python3 -m suite.gpu.distill_run --out "$W/distill" --only ddp,report 2>&1 | tail -n 40
    log "distill exit ${PIPESTATUS[0]}"
    tar czf "$OUT/distill.tgz" "$W/distill" "$W"/distill-*.out
    ;;
scale|variance)
    CLI="python3 -m suite.cli"
    runs=(variance)
    if [ "$PART" = scale ]; then
        runs=(sharded variance)
        log "sharded run over all GPUs (budget scale $SCALE)"
        timeout 270 $CLI run scenarios/attention.yaml scenarios/cgspn-scan.yaml --gpus all --out "$W/sharded" \
            --budget-scale "$SCALE" 2>&1 | tail -n 30
        log "sharded exit ${PIPESTATUS[0]}"
    fi
    log "variance run: every case on every GPU"
    timeout 270 $CLI run scenarios/attention.yaml scenarios/cgspn-scan.yaml --gpus all --same-case-on-every-gpu \
        --out "$W/variance" --budget-scale "$SCALE" 2>&1 | tail -n 30
    log "variance exit ${PIPESTATUS[0]}"
    for run in "${runs[@]}"; do $CLI report "$W/$run" --out "$W/report-$run" 2>&1 | tail -n 5; done
    tar czf "$OUT/$PART.tgz" "${runs[@]/#/$W/}" "$W"/report-*
    ;;
*)
    echo "unknown part $PART (allowed: distill, scale, variance)" >&2
    exit 2
    ;;
esac
log done

#!/usr/bin/env bash
# The gate's acceptance on a 2-GPU machine, in one command per machine (docs/gates.md):
#   first machine:  bash suite/gpu/gate_acceptance.sh first   -> baseline then an unchanged run (GPU 0), the two
#                                                               slowed runs (GPU 1) gated against that baseline
#   later machines: bash suite/gpu/gate_acceptance.sh again   -> an unchanged run on each GPU against the committed
#                                                               baseline; then optionally SLOW=SPEC on GPU 0 and
#                                                               REPRODUCE=1 (SCENARIOS=..., default the paper set) on GPU 1
# Outputs in $OUT: acceptance.tgz (run folders, logs, verdict JSONs, summaries), console.txt, and after
# "first" the new baseline as nvidia-h200.json (copy it to results/baselines/ and commit it).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:-}:$(pwd)"
OUT=${OUT:?set OUT to an output folder}
WORK=${WORK:-/tmp/acceptance}
mkdir -p "$WORK"
LIMIT=${LIMIT:-470}  # seconds per GPU's steps: the outputs are packed even when a step runs long
CHECK="timeout $LIMIT python3 -m suite.gate.device_check --out $WORK"
nvidia-smi --query-gpu=index,name,uuid,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv \
    | tee "$WORK/gpus.csv"
case "${1:?first or again}" in
first)
    BASE="$WORK/baselines/nvidia-h200.json"
    CUDA_VISIBLE_DEVICES=0 $CHECK --tag gpu0 --steps baseline,unchanged > "$WORK/gpu0.log" 2>&1 &
    CUDA_VISIBLE_DEVICES=1 $CHECK --tag gpu1 --steps slow:cgspn-scan=1.1,slow:attention-cudnn=1.1 --baseline "$BASE" \
        --wait-baseline 400 > "$WORK/gpu1.log" 2>&1 &
    wait
    cp "$BASE" "$OUT/" 2>/dev/null
    ;;
again)
    for gpu in 0 1; do
        CUDA_VISIBLE_DEVICES=$gpu $CHECK --tag "gpu$gpu" --steps unchanged \
            --baseline results/baselines/nvidia-h200.json > "$WORK/gpu$gpu.log" 2>&1 &
    done
    wait
    # optional second phase: a slowed run on GPU 0 (SLOW=SPEC) beside paper scenarios on GPU 1
    # (REPRODUCE=1; SCENARIOS="a.yaml b.yaml", default scenarios/paper; rows are kept as measured)
    if [ -n "${SLOW:-}" ]; then
        CUDA_VISIBLE_DEVICES=0 $CHECK --tag gpu0-slow --steps "slow:$SLOW" \
            --baseline results/baselines/nvidia-h200.json > "$WORK/gpu0-slow.log" 2>&1 &
    fi
    if [ "${REPRODUCE:-0}" = 1 ]; then
        # shellcheck disable=SC2086  # SCENARIOS is a list of paths
        CUDA_VISIBLE_DEVICES=1 timeout "$LIMIT" python3 -m suite.cli run ${SCENARIOS:-scenarios/paper} \
            --out "$WORK/reproduce" --force --budget-scale "${SCALE:-0.1}" > "$WORK/reproduce.log" 2>&1
        python3 -m suite.cli report "$WORK/reproduce" --out "$WORK/report" >> "$WORK/reproduce.log" 2>&1
        tail -5 "$WORK/reproduce.log"
    fi
    wait
    ;;
esac
for log in "$WORK"/gpu*.log; do echo "== $log"; grep -E "=== .*: exit|=== summary" -A0 "$log"; grep -A30 "=== summary" "$log"; done \
    | tee "$OUT/console.txt"
tar czf "$OUT/acceptance.tgz" -C "$WORK" . 2>/dev/null
ls -la "$OUT"

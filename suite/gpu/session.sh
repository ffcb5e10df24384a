#!/usr/bin/env bash
# One GPU session, every measurement the committed results rely on, time-boxed to fit one
# 10-minute command (see README "Running on a GPU runner"):
#   1. C-GSPN scan variants (suite/gpu/cgspn_scan_bench.py): forward, forward+backward, normalization
#   2. cgspn-bench reproduce: every scenario in scenarios/paper/ into one run + its report
#   3. regression gate on this card: a baseline from a gate subset, then a 10% slower cgspn-scan
#      (CGSPN_BENCH_TEST_SLOWDOWN=cgspn-scan=1.1) gated against it, which must fail on the scan only
#   4. profiles: block kernel breakdowns, scan occupancy / concurrency wall, Nsight Compute pass
# Usage: OUT=/some/dir bash suite/gpu/session.sh [BUDGET_SCALE]
# Outputs: $OUT/{scan,reproduce,gate,profile}.tgz and $OUT/session.log.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:-}:$(pwd)"
OUT=${OUT:?set OUT to an output folder}
SCALE=${1:-0.1}
CLI="python3 -m suite.cli"
W=results/runs/session
mkdir -p "$W" "$OUT"
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/session.log"; }
phase() {  # phase NAME SECONDS COMMAND...
    local name=$1 secs=$2; shift 2
    log "phase $name (limit ${secs}s): $*"
    timeout "$secs" "$@" 2>&1 | tee -a "$W/$name.log" | tail -n 40
    log "phase $name exit ${PIPESTATUS[0]}"
}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv | tee -a "$OUT/session.log"

phase scan 75 python3 -m suite.gpu.cgspn_scan_bench --out "$W/scan" --budget-s 55 --skip-tests
tar czf "$OUT/scan.tgz" "$W/scan" "$W/scan.log" 2>/dev/null

phase reproduce 345 $CLI reproduce --out "$W/reproduce" --report "$W/report" --budget-scale "$SCALE"
tar czf "$OUT/reproduce.tgz" "$W/reproduce" "$W/report" "$W/reproduce.log" 2>/dev/null

# the gate on a subset (the scan, cuDNN attention, the C-GSPN block/network): a baseline, then a 10%
# slower scan gated against it with the committed thresholds, which must fail on the scan's cases only
python3 - "$W" <<'PY'
import sys
from pathlib import Path

import yaml

data = yaml.safe_load(Path("scenarios/gate.yaml").read_text())
data.update(name="gate-subset", implementations=["cgspn-scan", "attention-cudnn", "cgspn"])
(Path(sys.argv[1]) / "gate-subset.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
PY
phase gate 120 python3 -m suite.gate.device_check --out "$W/gate" --scenario "$W/gate-subset.yaml" \
    --steps baseline,slow:cgspn-scan=1.1
tar czf "$OUT/gate.tgz" "$W/gate" "$W"/gate*.log 2>/dev/null

phase profile 75 python3 -m suite.gpu.profile_cases --out "$W/profile" --budget-ms 100 --no-check
tar czf "$OUT/profile.tgz" "$W/profile" "$W/profile.log" 2>/dev/null
log done

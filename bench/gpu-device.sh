#!/bin/bash
# The command for the device tool, whose calls last at most 10 minutes: the first call starts
# bench/gpu-run.sh in its own session (it outlives the call while the machine stays warm) and every
# call waits up to WAIT seconds for it to end, then copies its results into $OUT. Call it again,
# at once, when it says the run is still going.
#   run: bash bench/gpu-device.sh      carry: bench/gpu-kit
set -uo pipefail
cd "$(dirname "$0")/.."
WAIT=${WAIT:-560}
D=${FERRY_GPU_STATE:-/tmp/ferry-gpu-device}
mkdir -p "$D"
if [ ! -f "$D/started" ]; then
  date +%s > "$D/started"
  OUT=$D/out FERRY_GPU_WORK=$D/work setsid nohup bash -c \
    'bash bench/gpu-run.sh "$@"; echo $? > "$0/rc"' "$D" "$@" > "$D/run.log" 2>&1 < /dev/null &
fi
t0=$(date +%s)
while [ ! -f "$D/rc" ] && [ $(( $(date +%s) - t0 )) -lt "$WAIT" ]; do sleep 2; done
elapsed=$(( $(date +%s) - $(cat "$D/started") ))
if [ -n "${OUT:-}" ] && [ -d "$D/out" ]; then cp "$D"/out/* "$OUT"/ 2>/dev/null; cp "$D/run.log" "$OUT/"; fi
tail -60 "$D/run.log"
if [ -f "$D/rc" ]; then
  echo "gpu-device: gpu-run.sh ended with $(cat "$D/rc") after ${elapsed}s"
  exit "$(cat "$D/rc")"
fi
echo "gpu-device: gpu-run.sh still running after ${elapsed}s: call again"
exit 3

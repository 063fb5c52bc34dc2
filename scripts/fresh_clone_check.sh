#!/usr/bin/env bash
# The README's commands as a new user meets them: a fresh clone of this checkout with nothing beside it, its own HOME
# (pip's and the model's caches start empty), the hub offline, no data folder. Writes DIR/summary.txt.
#
#   scripts/fresh_clone_check.sh DIR demo-start   # `make demo` until its quantization starts, then stop it
#   scripts/fresh_clone_check.sh DIR test         # `make test` alone
#   scripts/fresh_clone_check.sh DIR all          # `make demo`, `make test`, then the README's torchrun command
#
# DIR is created and must not exist: nothing of yours is deleted.
set -u
D=${1:?usage: scripts/fresh_clone_check.sh DIR demo-start|test|all}
MODE=${2:-all}
case "$MODE" in demo-start|test|all) ;; *) echo "unknown mode $MODE: choose demo-start, test or all" >&2; exit 2 ;; esac
[ -e "$D" ] && { echo "$D exists: choose a new folder (this script never deletes one)" >&2; exit 2; }
SRC=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$D/home" && D=$(cd "$D" && pwd)
git clone -q "$SRC" "$D/vptq_lab" && cd "$D/vptq_lab" || exit 1
export HOME=$D/home HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
unset VPTQ_LAB_DATA VPTQ_LAB_CACHE PYTHONPATH CI OMP_NUM_THREADS
say() { echo "$*" | tee -a "$D/summary.txt"; }
say "commit $(git rev-parse --short HEAD), $(date -u +%FT%TZ), mode $MODE"

if [ "$MODE" = test ]; then
  s=$(date +%s); make test > "$D/test.log" 2>&1; say "make test rc=$? in $(( $(date +%s) - s )) s"; exit 0
fi
s=$(date +%s)
setsid make demo > "$D/demo.log" 2>&1 &
pid=$!
venv=""
while ! grep -q "quantizing blocks" "$D/demo.log" 2>/dev/null; do
  sleep 2
  [ -z "$venv" ] && [ -f .venv/.installed-core ] && venv=$(( $(date +%s) - s ))
  kill -0 $pid 2>/dev/null || break
done
say "make demo: venv ready after ${venv:-?} s; quantization started after $(( $(date +%s) - s )) s"
if [ "$MODE" = demo-start ]; then
  kill -- -$pid 2>/dev/null; wait $pid 2>/dev/null; say "make demo stopped there (demo-start mode)"; exit 0
fi
wait $pid; say "make demo rc=$? in $(( $(date +%s) - s )) s"
s=$(date +%s); make test > "$D/test.log" 2>&1; say "make test rc=$? in $(( $(date +%s) - s )) s"
s=$(date +%s)
.venv/bin/torchrun --standalone --nproc-per-node 2 -m vptq_lab.cli quantize --bits 2 --out q2 > "$D/torchrun.log" 2>&1
say "torchrun rc=$? in $(( $(date +%s) - s )) s"

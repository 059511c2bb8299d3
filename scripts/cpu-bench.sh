#!/usr/bin/env bash
# The CPU training step beside PyTorch's on the same machine, in alternating rounds (BENCHMARKS.md,
# "CPU training step"): each round runs `sliceout bench` (fp32 and bf16, the instruction set
# detected), the same fp32 with SLICEOUT_CPU_ISA=avx2, optionally an older binary, then PyTorch's
# eager and tuned variants (scripts/torch/bench_peer.py). One line per measurement:
#   who round precision keep median_ms
# Usage: scripts/cpu-bench.sh [ROUNDS]; env: SLICEOUT (binary, default target/release/sliceout),
# BEFORE (an older binary to time too), PYTHON (one with torch, default python3), ARGS (model flags).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
rounds=${1:-3}
bin=${SLICEOUT:-target/release/sliceout}
py=${PYTHON:-python3}
args=${ARGS:---depth 16 --widen 4 --batch 32}
[ -x "$bin" ] || { echo "no binary at $bin: cargo build --release first" >&2; exit 1; }
grep -m1 'model name' /proc/cpuinfo 2>/dev/null
ours() { # who, env, extra flags (words split on purpose), binary
    # shellcheck disable=SC2086
    env $2 "${4:-$bin}" bench --device cpu $args --keep 1.0,0.5 --steps 7 $3 2>&1 \
        | awk -v w="$1" -v r="$round" '/^(1\.00|0\.50) /{print w, r, $NF, $1, $2}'
}
for round in $(seq 1 "$rounds"); do
    echo "== round $round $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
    ours ours "" "--precision fp32,bf16"
    ours ours-avx2 "SLICEOUT_CPU_ISA=avx2" ""
    if [ -n "${BEFORE:-}" ]; then ours before "" "" "$BEFORE"; fi
    # shellcheck disable=SC2086
    "$py" scripts/torch/bench_peer.py --device cpu --math fp32 $args --keep 1.0,0.5 --variant eager,tuned \
        --warmup 3 --steps 10 2>&1 | awk -v r="$round" '/^torch /{sub(":", "", $6); print "torch-"$2, r, $4, $6, $8}'
done

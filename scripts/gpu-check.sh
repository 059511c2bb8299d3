#!/usr/bin/env bash
# GPU check of the CUDA backend, for a machine with an NVIDIA GPU (CUDA 13, driver 580) and no
# Rust toolchain: the release binary is built elsewhere and carried in .gpu/sliceout.
#
#   here:   cargo build --release && mkdir -p .gpu && strip -o .gpu/sliceout target/release/sliceout
#   there:  bash scripts/gpu-check.sh        (from the repository root; .gpu/ is git-ignored,
#           so the device runner must carry it)
#
# Runs the op-by-op selftest against the CPU backend and the PyTorch reference, then the step
# benchmark of WRN-28-10 and WRN-16-4 at keep 1.0/0.75/0.5 in tf32 and fp32, and ends with one
# summary table (the team's PyTorch 2.11 step times on an H100 beside ours). Full logs go to
# $OUT (when set, e.g. by the device runner) or ./gpu-check-logs.
set -u
cd "$(dirname "$0")/.."

BIN=${SLICEOUT_BIN:-.gpu/sliceout}
LOG=${OUT:-gpu-check-logs}
mkdir -p "$LOG"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

if [ ! -x "$BIN" ]; then
    echo "no binary at $BIN (build with: cargo build --release && mkdir -p .gpu && strip -o .gpu/sliceout target/release/sliceout)" >&2
    exit 2
fi

echo "== GPU"
nvidia-smi -L
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader

status=0
echo
echo "== selftest"
timeout 120 "$BIN" selftest --device cuda 2>&1 | tee "$LOG/selftest.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

run_bench() { # depth widen math
    local tag="wrn$1-$2-$3"
    echo
    echo "== bench WRN-$1-$2 $3"
    timeout 90 "$BIN" bench --device cuda --depth "$1" --widen "$2" --batch 128 \
        --keep 1.0,0.75,0.5 --steps 10 --math "$3" 2>&1 | tee "$LOG/bench-$tag.txt"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
}
run_bench 28 10 tf32
run_bench 28 10 fp32
run_bench 16 4 tf32
run_bench 16 4 fp32

echo
echo "== summary"
fails=$(grep -c -w "FAIL" "$LOG/selftest.txt" || true)
echo "selftest: $(grep -E "passed|failed" "$LOG/selftest.txt" | tr '\n' ' ') (FAIL rows: $fails)"
printf "%-10s %-5s %-5s %10s %9s %10s %11s %13s %10s %11s %10s\n" \
    model math keep "ms/step" "img/s" "arena MiB" "device MiB" "overhead MiB" "time ratio" "arena ratio" "torch ms"
for f in "$LOG"/bench-wrn*.txt; do
    [ -f "$f" ] || continue
    tag=$(basename "$f" .txt)
    tag=${tag#bench-}                       # wrn28-10-tf32
    model=WRN-${tag#wrn}; model=${model%-*} # WRN-28-10
    math=${tag##*-}
    # Table rows start with the keep value; drop the "(min..max)" column before splitting.
    grep -E '^[0-9]\.[0-9]{2} ' "$f" | sed 's/([^)]*)//' |
        awk -v model="$model" -v math="$math" '
        BEGIN {
            t["WRN-28-10 fp32 1.00"]="96.6"; t["WRN-28-10 fp32 0.75"]="77.1"; t["WRN-28-10 fp32 0.50"]="61.6"
            t["WRN-28-10 tf32 1.00"]="36.0"; t["WRN-28-10 tf32 0.75"]="31.0"; t["WRN-28-10 tf32 0.50"]="27.2"
            t["WRN-16-4 tf32 1.00"]="8.8";   t["WRN-16-4 tf32 0.50"]="12.2"
        }
        { k = model " " math " " $1; ref = (k in t) ? t[k] : "-"
          printf "%-10s %-5s %-5s %10s %9s %10s %11s %13s %10s %11s %10s\n", model, math, $1, $2, $3, $6, $8, $9, $10, $11, ref }'
done
exit $status

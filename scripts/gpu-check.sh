#!/usr/bin/env bash
# The GPU check of the CUDA backend, for a machine with an NVIDIA GPU (CUDA 13, driver 580) and
# no Rust toolchain: the release binary is built elsewhere and carried in .gpu/ together with
# Fashion-MNIST's four IDX files.
#
#   here:   cargo build --release && mkdir -p .gpu/fashion-mnist \
#             && strip -o .gpu/sliceout target/release/sliceout \
#             && cp /usr/share/datasets/fashion-mnist/*.gz .gpu/fashion-mnist/
#           (Debian's dataset-fashion-mnist package installs them there)
#   there:  bash scripts/gpu-check.sh        (from the repository root; .gpu/ is git-ignored,
#           so the device runner must carry it)
#
# In order, each with its own time limit (BENCHMARKS.md says how long the check took on a card):
#   1. the op-by-op selftest against the CPU in fp32 with SLICEOUT_CUDA_SYNC=1 (a fault names
#      its op and kernel), then in tf32; the PyTorch reference runs inside each;
#   2. selftest --full (one WRN-16-4 step, every op compared) in fp32 and tf32, and in fp32
#      with --input-grad col2im (the default computes input gradients by convolution where a
#      layer allows; the op checks above check both);
#   2b. the bf16 kernels against the CPU's bf16 ops (selftest --precision bf16, synchronised)
#      and the bf16 WRN-16-4 step (--full --precision bf16);
#   2c. the experimental Winograd convolutions (--winograd; their op rows are in stage 1):
#      the WRN-16-4 step with them, fp32 and tf32; with MEMCHECK=1 also compute-sanitizer's
#      memcheck over the fp32 op checks (every kernel, Winograd's included);
#   3. the GPU plans of WRN-28-10 (launch counts, memory) and its profiles at keep 0.5, tf32
#      and bf16 (device time per op and per kernel, from CUDA events);
#   3b. options against the default, same model, keep 1.0 and 0.5 (each a bench of its own,
#      right after the default's): tf32 with --input-grad col2im, --col-budget 128 and 1024,
#      --no-recompute (BN outputs kept from forward: more arena, no recomputation);
#      bf16 with --col-budget 46 (its plan's memory targets) and 128; both with the
#      experimental GEMM tuner (SLICEOUT_GEMM_TUNE=1, whose full steps run in stage 2b);
#      --winograd in tf32 and in fp32 math (with its profile: transforms against products);
#   4. bench of WRN-28-10 and WRN-16-4 at batch 128, keep 1.0/0.75/0.5, tf32, fp32 and bf16,
#      with the device memory in use beside the plan, and PyTorch's step on the same card right
#      after each (scripts/torch/bench_peer.py: the same network and SliceOut rules, bf16 as
#      autocast; skipped without torch);
#   5. two epochs of WRN-16-4 on Fashion-MNIST at keep 1.0 and 0.5, fp32 (tf32) and bf16;
# and ends with one summary table. Full logs go to ./gpu-check-logs; when $OUT is set (by the
# device runner, which brings back a few files only) they are also packed, checkpoints left out,
# into $OUT/gpu-check.tgz. DEVICE=cpu runs the same script on the CPU (with QUICK=1: small models and
# short runs), to check the script itself where there is no GPU.
set -u
cd "$(dirname "$0")/.."

BIN=${SLICEOUT_BIN:-.gpu/sliceout}
DATA=${FASHION_MNIST:-.gpu/fashion-mnist}
LOG=gpu-check-logs
DEVICE=${DEVICE:-cuda}
rm -rf "$LOG" && mkdir -p "$LOG"    # this run's logs only
export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

if [ "${QUICK:-0}" = 1 ]; then
    MODELS=("10 2"); BATCH=8; STEPS=2; EPOCHS=1; LIMIT=(--limit-train 256 --limit-test 128)
else
    MODELS=("28 10" "16 4"); BATCH=128; STEPS=10; EPOCHS=2; LIMIT=()
fi

if [ ! -x "$BIN" ]; then
    echo "no binary at $BIN (see the top of this script for how to build and carry it)" >&2
    exit 2
fi

status=0
# run NAME SECONDS COMMAND...: runs a step with a time limit, logs it to $LOG/NAME.txt, and
# marks the check failed when it fails.
run() {
    local name=$1 limit=$2
    shift 2
    echo
    echo "== $name"
    timeout "$limit" "$@" 2>&1 | tee "$LOG/$name.txt"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || { status=1; echo "($name exited $rc)"; }
}

echo "== machine"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi -L
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader
fi

SLICEOUT_CUDA_SYNC=1 run selftest-fp32-sync 150 "$BIN" selftest --device "$DEVICE" --math fp32
run selftest-tf32 120 "$BIN" selftest --device "$DEVICE" --math tf32
run full-fp32 120 "$BIN" selftest --full --device "$DEVICE" --math fp32
run full-tf32 120 "$BIN" selftest --full --device "$DEVICE" --math tf32
run full-fp32-input-grad-col2im 120 "$BIN" selftest --full --device "$DEVICE" --math fp32 --input-grad col2im
SLICEOUT_CUDA_SYNC=1 run selftest-bf16-sync 120 "$BIN" selftest --device "$DEVICE" --precision bf16
run full-bf16 120 "$BIN" selftest --full --device "$DEVICE" --precision bf16
# The experimental GEMM tuner (cuBLASLt, src/gpu/tune.rs): the same full steps with it on.
SLICEOUT_GEMM_TUNE=1 run full-tf32-gemm-tune 120 "$BIN" selftest --full --device "$DEVICE" --math tf32
SLICEOUT_GEMM_TUNE=1 run full-bf16-gemm-tune 120 "$BIN" selftest --full --device "$DEVICE" --precision bf16
# The experimental Winograd convolutions (src/ops/conv2d/winograd_cmds.rs, winograd.cu).
run full-fp32-winograd 120 "$BIN" selftest --full --device "$DEVICE" --math fp32 --winograd
run full-tf32-winograd 120 "$BIN" selftest --full --device "$DEVICE" --math tf32 --winograd
SANITIZER=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
if [ "${MEMCHECK:-0}" = 1 ] && [ -x "$SANITIZER" ]; then
    run memcheck-fp32 240 "$SANITIZER" --tool memcheck --error-exitcode 1 "$BIN" selftest --device "$DEVICE" --math fp32
fi
run plan-wrn28-10-bf16 30 "$BIN" plan --device "$DEVICE" --depth 28 --widen 10 --batch 128 --keep 0.5 --width 16 \
    --precision bf16
run plan-wrn28-10 30 "$BIN" plan --device "$DEVICE" --depth 28 --widen 10 --batch 128 --keep 0.5 --width 16
read -r pdepth pwiden <<<"${MODELS[0]}"
for precision in fp32 bf16; do
    run "profile-wrn$pdepth-$pwiden-$precision" 60 "$BIN" profile --device "$DEVICE" --depth "$pdepth" --widen "$pwiden" \
        --batch "$BATCH" --keep 0.5 --steps 3 --precision "$precision"
done

# "PRECISION OPTION": the default of each precision first, then its options.
for case in "fp32 " "fp32 --input-grad col2im" "fp32 --col-budget 128" "fp32 --col-budget 1024" "fp32 --no-recompute" \
    "bf16 " "bf16 --col-budget 46" "bf16 --col-budget 128"; do
    read -r precision option <<<"$case"
    tag=${option:-default}; tag=${tag//--/}; tag=${tag// /-}
    # shellcheck disable=SC2086  # the option is two words
    run "option-$precision-$tag" 120 "$BIN" bench --device "$DEVICE" --depth "$pdepth" --widen "$pwiden" \
        --batch "$BATCH" --keep 1.0,0.5 --steps "$STEPS" --math tf32 --precision "$precision" $option
done

for precision in fp32 bf16; do
    SLICEOUT_GEMM_TUNE=1 run "option-$precision-gemm-tune" 120 "$BIN" bench --device "$DEVICE" --depth "$pdepth" \
        --widen "$pwiden" --batch "$BATCH" --keep 1.0,0.5 --steps "$STEPS" --math tf32 --precision "$precision"
done

# Winograd in tf32 (against option-fp32-default) and in fp32 math (against bench-*-fp32 below).
for math in tf32 fp32; do
    run "option-fp32-winograd-$math" 120 "$BIN" bench --device "$DEVICE" --depth "$pdepth" --widen "$pwiden" \
        --batch "$BATCH" --keep 1.0,0.5 --steps "$STEPS" --math "$math" --winograd
done
run "profile-wrn$pdepth-$pwiden-fp32-winograd" 60 "$BIN" profile --device "$DEVICE" --depth "$pdepth" --widen "$pwiden" \
    --batch "$BATCH" --keep 1.0 --steps 3 --math fp32 --winograd

# "tf32", "fp32": fp32 storage with that GEMM math; "bf16": bf16 storage (and autocast for the peer).
for model in "${MODELS[@]}"; do
    read -r depth widen <<<"$model"
    for math in tf32 fp32 bf16; do
        ours=(--math "$math"); peer=(--math "$math")
        [ "$math" = bf16 ] && ours=(--precision bf16) && peer=(--precision bf16)
        run "bench-wrn$depth-$widen-$math" 120 "$BIN" bench --device "$DEVICE" --depth "$depth" --widen "$widen" \
            --batch "$BATCH" --keep 1.0,0.75,0.5 --steps "$STEPS" "${ours[@]}"
        if python3 -c "import torch" 2>/dev/null; then
            run "peer-wrn$depth-$widen-$math" 150 python3 scripts/torch/bench_peer.py --device "$DEVICE" \
                --depth "$depth" --widen "$widen" --batch "$BATCH" --keep 1.0,0.75,0.5 --steps "$STEPS" "${peer[@]}"
        else
            echo "(no PyTorch here: the peer column stays empty)"
        fi
    done
done

for precision in fp32 bf16; do
    for keep in 1.0 0.5; do
        rm -rf "$LOG/run-$precision-keep$keep"
        run "train-$precision-keep$keep" 240 "$BIN" train --device "$DEVICE" --data "$DATA" --depth 16 --widen 4 \
            --keep "$keep" --epochs "$EPOCHS" --batch 128 --precision "$precision" "${LIMIT[@]}" \
            --out "$LOG/run-$precision-keep$keep"
    done
done

echo
echo "== summary ($DEVICE)"
for f in "$LOG"/option-*.txt; do
    [ -f "$f" ] || continue
    grep -E '^[0-9]\.[0-9]{2} ' "$f" | awk -v o="$(basename "$f" .txt)" '{ printf "%-28s keep %s  %8s ms/step  arena %s MiB\n", o, $1, $2, $9 }'
done
for f in "$LOG"/selftest-*.txt "$LOG"/full-*.txt "$LOG"/memcheck-*.txt; do
    [ -f "$f" ] || continue
    printf "%-22s %s\n" "$(basename "$f" .txt)" "$(grep -E "^selftest.*passed|ERROR SUMMARY" "$f" | tail -1)"
done
grep -E "gpu step|total " "$LOG/plan-wrn28-10.txt" 2>/dev/null | sed 's/^ */plan WRN-28-10 0.5:   /'
grep -E "gpu step|total " "$LOG/plan-wrn28-10-bf16.txt" 2>/dev/null | sed 's/^ */plan WRN-28-10 0.5 bf16: /'
# Each profile's step time and its five most expensive kernels.
for precision in fp32 bf16 fp32-winograd; do
    f="$LOG/profile-wrn$pdepth-$pwiden-$precision.txt"
    head -n 2 "$f" 2>/dev/null | grep "per step"
    sed -n '/^per kernel/,/^$/p' "$f" 2>/dev/null | head -n 6
done
# PyTorch's medians from this run, "WRN-28-10 tf32 0.50=27.20;...".
peers=$(cat "$LOG"/peer-*.txt 2>/dev/null | sed -n 's/^torch \(WRN-[0-9]*-[0-9]*\) \([a-z0-9]*\) keep \([0-9.]*\): median \([0-9.]*\) ms.*/\1 \2 \3=\4/p' | paste -sd ';')
printf "%-10s %-5s %-5s %10s %9s %10s %11s %13s %10s %11s %10s %10s\n" \
    model math keep "ms/step" "img/s" "arena MiB" "device MiB" "overhead MiB" "time ratio" "arena ratio" "torch ms" "anchor ms"
for f in "$LOG"/bench-wrn*.txt; do
    [ -f "$f" ] || continue
    tag=$(basename "$f" .txt)
    tag=${tag#bench-}                       # wrn28-10-tf32
    model=WRN-${tag#wrn}; model=${model%-*} # WRN-28-10
    math=${tag##*-}
    # Table rows start with the keep value; drop the "(min..max)" column before splitting.
    grep -E '^[0-9]\.[0-9]{2} ' "$f" | sed 's/([^)]*)//' |
        awk -v model="$model" -v math="$math" -v peers="$peers" '
        BEGIN {
            n = split(peers, kv, ";")
            for (i = 1; i <= n; i++) { split(kv[i], p, "="); torch[p[1]] = p[2] }
            # Anchors: PyTorch 2.11 + cuDNN on one H100, batch 128, measured by the team earlier.
            t["WRN-28-10 fp32 1.00"]="96.6"; t["WRN-28-10 fp32 0.75"]="77.1"; t["WRN-28-10 fp32 0.50"]="61.6"
            t["WRN-28-10 tf32 1.00"]="36.0"; t["WRN-28-10 tf32 0.75"]="31.0"; t["WRN-28-10 tf32 0.50"]="27.2"
            t["WRN-16-4 tf32 1.00"]="8.8";   t["WRN-16-4 tf32 0.50"]="12.2"
            t["WRN-28-10 bf16 1.00"]="17.9"; t["WRN-28-10 bf16 0.50"]="20.9"
        }
        { k = model " " math " " $1; ref = (k in t) ? t[k] : "-"; peer = (k in torch) ? torch[k] : "-"
          printf "%-10s %-5s %-5s %10s %9s %10s %11s %13s %10s %11s %10s %10s\n", model, math, $1, $2, $3, $6, $8, $9, $10, $11, peer, ref }'
done
grep -h "context with our kernels" "$LOG"/bench-*.txt 2>/dev/null | head -1
for precision in fp32 bf16; do
    for keep in 1.0 0.5; do
        line=$(grep -E "^epoch" "$LOG/train-$precision-keep$keep.txt" 2>/dev/null | tail -1)
        echo "Fashion-MNIST WRN-16-4 $precision keep $keep: ${line:-no epoch finished}"
    done
done
if [ -n "${OUT:-}" ]; then
    tar czf "$OUT/gpu-check.tgz" --exclude='*.ckpt' -C "$LOG" .
fi
exit $status

#!/usr/bin/env bash
# The GPU check of the CUDA backend, for a machine with an NVIDIA GPU (CUDA 13, driver 580) and
# no Rust toolchain: the release binary is built elsewhere and carried in .gpu/ together with
# Fashion-MNIST's four IDX files.
#
#   here:   cargo build --release && mkdir -p .gpu/fashion-mnist \
#             && strip -o .gpu/sliceout target/release/sliceout \
#             && cp /usr/share/datasets/fashion-mnist/*.gz .gpu/fashion-mnist/
#           (Debian's dataset-fashion-mnist package installs them there)
#   there:  bash scripts/gpu-check.sh PART...   (from the repository root; .gpu/ is git-ignored,
#           so the device runner must carry it)
#
# Parts, each sized for one device call of at most 600 s (run one per call):
#   correctness  the op-by-op selftest against the CPU (fp32 synchronised, so a fault names its
#                op and kernel; tf32; bf16 synchronised), selftest --full (one WRN-16-4 step,
#                every op compared) in fp32, tf32, bf16, fp32 with --input-grad col2im, with the
#                GEMM tuner (SLICEOUT_GEMM_TUNE=1), with --winograd, with --fold-bn (fp32,
#                bf16) and in bf16 with --sgd-group; MEMCHECK=1 adds compute-sanitizer's
#                memcheck over the fp32 op checks.
#   speed        PyTorch's variants checked on the card (scripts/torch/check_peer.py), then in
#                ROUNDS (3) alternating rounds our bench and PyTorch's (scripts/torch/bench_peer.py,
#                every variant: eager, tuned, compiled, graphed) on WRN-28-10 and WRN-16-4,
#                batch 128, bf16 (SPEED_MATH=tf32 or fp32 for those), keep 1.0 and 0.5; the
#                peer is skipped without torch.
#   profile      the GPU plans and profiles of WRN-28-10 and the options against the default
#                (--input-grad col2im, --col-budget, --no-recompute, --fold-bn, the GEMM tuner,
#                --winograd, --sgd-group with updates early and at the end).
#   frontier     Fashion-MNIST, WRN-16-4, 30 epochs, bf16, keep 1.0, 0.75, 0.5 for each seed
#                of SEEDS ("0 1"), then `sliceout compare` of the runs (issue 21's GPU frontier).
# Each part ends with a short table.
#
# No stage starts within MIN_STAGE_S (10) seconds of DEADLINE (570 s from the script's start)
# and none runs past it (its time limit is cut to what is left); the stages not started are
# named. Logs go to ./gpu-check-logs and, when $OUT is set (by the device runner), are packed
# after every stage into $OUT/gpu-check.tgz (checkpoints left out), so a run killed midway keeps
# what finished. ROUNDS, VARIANTS (eager,tuned,graphed,compiled) and SEEDS narrow a part.
# Exit status: 1 if a stage failed, else 3 if a stage was skipped or cut at the deadline, else 0.
#
# DEVICE=cpu runs the same stages on the CPU (with QUICK=1: small models and short runs), to
# check the script itself where there is no GPU. DRY_RUN=1 runs nothing: each stage prints what
# it would run and sleeps DRY_STAGE_S seconds (0) instead, so that with a tiny DEADLINE the
# deadline logic and the packing can be checked anywhere, e.g.
#   DRY_RUN=1 DRY_STAGE_S=1 DEADLINE=4 MIN_STAGE_S=1 OUT=/tmp/o bash scripts/gpu-check.sh correctness
# shellcheck disable=SC2317  # the parts and their tables are called by name, "$part"
set -u
cd "$(dirname "$0")/.." || exit 2

usage() {
    echo "usage: bash scripts/gpu-check.sh PART... (PART: correctness, speed, profile, frontier)" >&2
    exit 2
}
[ $# -ge 1 ] || usage
for part in "$@"; do
    case $part in correctness | speed | profile | frontier) ;; *) usage ;; esac
done

BIN=${SLICEOUT_BIN:-.gpu/sliceout}
DATA=${FASHION_MNIST:-.gpu/fashion-mnist}
PYTHON=${PYTHON:-python3}
LOG=gpu-check-logs
DEVICE=${DEVICE:-cuda}
DEADLINE=${DEADLINE:-570}
DRY_RUN=${DRY_RUN:-0}
MIN_STAGE_S=${MIN_STAGE_S:-10}   # no stage starts with less time than this left before the deadline
ROUNDS=${ROUNDS:-3}
SEEDS=${SEEDS:-0 1}
SPEED_MATH=${SPEED_MATH:-bf16}
VARIANTS=${VARIANTS:-eager,tuned,graphed,compiled}   # compiled last: its first compile is the slowest
rm -rf "$LOG" && mkdir -p "$LOG"    # this run's logs only
export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

if [ "${QUICK:-0}" = 1 ]; then
    BIG=(10 2); SMALL=(10 1); BATCH=8; STEPS=2; WARMUP=1; EPOCHS=1; LIMIT=(--limit-train 256 --limit-test 128)
else
    BIG=(28 10); SMALL=(16 4); BATCH=128; STEPS=50; WARMUP=5; EPOCHS=30; LIMIT=()
fi

if [ "$DRY_RUN" != 1 ] && [ ! -x "$BIN" ]; then
    echo "no binary at $BIN (see the top of this script for how to build and carry it)" >&2
    exit 2
fi

status=0
skipped=()
ledger=()   # "name seconds outcome" per stage, for the closing table

pack() {
    [ -n "${OUT:-}" ] || return 0
    # Written aside then renamed, so a kill during packing leaves the previous archive whole.
    tar czf "$OUT/gpu-check.tgz.part" --exclude='*.ckpt' -C "$LOG" . && mv -f "$OUT/gpu-check.tgz.part" "$OUT/gpu-check.tgz"
}

# stage NAME SECONDS COMMAND...: runs COMMAND with the time limit SECONDS, cut to what is left
# before the deadline, logs it to $LOG/NAME.txt, marks the check failed when it fails, and packs
# the logs. A stage that would start with less than MIN_STAGE_S seconds left is skipped and named.
stage() {
    local name=$1 want=$2 limit=$2
    shift 2
    local left=$((DEADLINE - SECONDS))
    if [ "$left" -le 0 ] || [ "$left" -lt "$MIN_STAGE_S" ]; then
        skipped+=("$name")
        ledger+=("$name - skipped")
        return 0
    fi
    [ "$limit" -le "$left" ] || limit=$left
    echo
    echo "== $name (limit ${limit} s, ${SECONDS} s since the start)"
    local t0=$SECONDS rc
    if [ "$DRY_RUN" = 1 ]; then
        echo "would run: $*" | tee "$LOG/$name.txt"
        timeout "$limit" sleep "${DRY_STAGE_S:-0}"
        rc=$?
    else
        timeout --kill-after=5 "$limit" "$@" 2>&1 | tee "$LOG/$name.txt"
        rc=${PIPESTATUS[0]}
    fi
    local outcome=ok
    if { [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; } && [ "$limit" -lt "$want" ]; then
        outcome="cut at the deadline after $limit s"
        skipped+=("$name (cut)")
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        outcome="timed out after $limit s"
        status=1
    elif [ "$rc" -ne 0 ]; then
        outcome="failed ($rc)"
        status=1
    fi
    [ "$outcome" = ok ] || echo "($name: $outcome)"
    ledger+=("$name $((SECONDS - t0)) $outcome")
    pack
}

have_torch() {
    [ "$DRY_RUN" = 1 ] || "$PYTHON" -c "import torch" 2>/dev/null
}

echo "== machine"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi -L
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader
fi
have_torch && [ "$DRY_RUN" != 1 ] && "$PYTHON" -c "import torch; print('torch', torch.__version__)"
echo "parts: $*; deadline ${DEADLINE} s"

correctness() {
    SLICEOUT_CUDA_SYNC=1 stage selftest-fp32-sync 150 "$BIN" selftest --device "$DEVICE" --math fp32
    stage selftest-tf32 120 "$BIN" selftest --device "$DEVICE" --math tf32
    SLICEOUT_CUDA_SYNC=1 stage selftest-bf16-sync 120 "$BIN" selftest --device "$DEVICE" --precision bf16
    stage full-fp32 120 "$BIN" selftest --full --device "$DEVICE" --math fp32
    stage full-tf32 120 "$BIN" selftest --full --device "$DEVICE" --math tf32
    stage full-bf16 120 "$BIN" selftest --full --device "$DEVICE" --precision bf16
    stage full-fp32-input-grad-col2im 120 "$BIN" selftest --full --device "$DEVICE" --math fp32 --input-grad col2im
    # The experimental GEMM tuner (cuBLASLt, src/gpu/tune.rs): the same full steps with it on.
    SLICEOUT_GEMM_TUNE=1 stage full-tf32-gemm-tune 120 "$BIN" selftest --full --device "$DEVICE" --math tf32
    SLICEOUT_GEMM_TUNE=1 stage full-bf16-gemm-tune 120 "$BIN" selftest --full --device "$DEVICE" --precision bf16
    # The experimental Winograd convolutions (src/ops/conv2d/winograd_cmds.rs, winograd.cu).
    stage full-fp32-winograd 120 "$BIN" selftest --full --device "$DEVICE" --math fp32 --winograd
    stage full-tf32-winograd 120 "$BIN" selftest --full --device "$DEVICE" --math tf32 --winograd
    # The experimental BN + ReLU folded into im2col (--fold-bn, im2col_bn_relu in conv2d.cu).
    stage full-fp32-fold-bn 120 "$BIN" selftest --full --device "$DEVICE" --math fp32 --fold-bn
    stage full-bf16-fold-bn 120 "$BIN" selftest --full --device "$DEVICE" --precision bf16 --fold-bn
    # The experimental grouped SGD updates (one sgd_multi launch a group, src/ops/sgd/sgd.cu).
    stage full-bf16-sgd-group 120 "$BIN" selftest --full --device "$DEVICE" --precision bf16 --sgd-group
    local sanitizer
    sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
    if [ "${MEMCHECK:-0}" = 1 ] && { [ -x "$sanitizer" ] || [ "$DRY_RUN" = 1 ]; }; then
        stage memcheck-fp32 240 "$sanitizer" --tool memcheck --error-exitcode 1 "$BIN" selftest --device "$DEVICE" --math fp32
    fi
}

correctness_table() {
    echo
    echo "== correctness ($DEVICE)"
    local f
    for f in "$LOG"/selftest-*.txt "$LOG"/full-*.txt "$LOG"/memcheck-*.txt; do
        [ -f "$f" ] || continue
        printf "%-30s %s\n" "$(basename "$f" .txt)" "$(grep -E "^selftest.*passed|ERROR SUMMARY" "$f" | tail -1)"
    done
}

speed() {
    if ! have_torch; then
        echo "(no PyTorch here: our bench runs alone)"
    else
        stage peer-check 120 "$PYTHON" scripts/torch/check_peer.py --device "$DEVICE" \
            --variant eager,tuned,graphed
    fi
    local r model depth widen ours=(--precision bf16) peer=(--precision bf16)
    [ "$SPEED_MATH" = bf16 ] || { ours=(--math "$SPEED_MATH"); peer=(--math "$SPEED_MATH"); }
    for r in $(seq 1 "$ROUNDS"); do
        for model in "${BIG[*]}" "${SMALL[*]}"; do
            read -r depth widen <<<"$model"
            stage "speed-r$r-ours-wrn$depth-$widen" 90 "$BIN" bench --device "$DEVICE" --depth "$depth" --widen "$widen" \
                --batch "$BATCH" --keep 1.0,0.5 --steps "$STEPS" "${ours[@]}"
            have_torch || continue
            stage "speed-r$r-peer-wrn$depth-$widen" 300 "$PYTHON" scripts/torch/bench_peer.py --device "$DEVICE" \
                --depth "$depth" --widen "$widen" --batch "$BATCH" --keep 1.0,0.5 --warmup "$WARMUP" --steps "$STEPS" \
                "${peer[@]}" --variant "$VARIANTS"
        done
    done
}

# One row per model, keep and who (ours or a PyTorch variant): the median of each round and the
# median over the rounds, then ours against the fastest PyTorch variant by that median.
speed_table() {
    echo
    echo "== speed ($DEVICE, $SPEED_MATH, batch $BATCH; ms per step, median of each round)"
    local f
    for f in "$LOG"/speed-r*-*.txt; do
        [ -f "$f" ] || continue
        local tag round who
        tag=$(basename "$f" .txt)       # speed-r1-ours-wrn28-10
        round=${tag#speed-r}; round=${round%%-*}
        who=${tag#speed-r*-}; who=${who%%-*}
        model=WRN-${tag##*-wrn}
        if [ "$who" = ours ]; then
            grep -E '^[0-9]\.[0-9]{2} ' "$f" | awk -v m="$model" -v r="$round" '{ print m, $1, "ours", r, $2 }'
        else
            sed -n 's/^torch \([a-z]*\) \(WRN-[0-9]*-[0-9]*\) [a-z0-9]* keep \([0-9.]*\): median \([0-9.]*\) ms.*/\2 \3 \1 '"$round"' \4/p' "$f"
        fi
    done | sort -k1,1 -k2,2r -s | awk -v rounds="$ROUNDS" '
        { key = $1 " " $2 " " $3; if (!(key in seen)) { seen[key] = 1; order[++n] = key }
          ms[key, $4] = $5 }
        # The median of the rounds of one key (the mean of the middle two for an even count).
        function median(key,   r, c, v, i, j, t) {
            c = 0
            for (r = 1; r <= rounds; r++) if ((key, r) in ms) v[++c] = ms[key, r] + 0
            for (i = 2; i <= c; i++) for (j = i; j > 1 && v[j - 1] > v[j]; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
            return c % 2 ? v[(c + 1) / 2] : (v[c / 2] + v[c / 2 + 1]) / 2
        }
        END {
            printf "%-10s %-5s %-9s", "model", "keep", "who"
            for (r = 1; r <= rounds; r++) printf " %8s", "round " r
            printf " %8s\n", "median"
            for (i = 1; i <= n; i++) {
                split(order[i], k, " ")
                printf "%-10s %-5s %-9s", k[1], k[2], k[3]
                for (r = 1; r <= rounds; r++) printf " %8s", ((order[i], r) in ms) ? ms[order[i], r] : "-"
                m = median(order[i])
                printf " %8.2f\n", m
                mk = k[1] " " k[2]
                if (k[3] == "ours") ours[mk] = m
                else if (!(mk in fast) || m < fast[mk]) { fast[mk] = m; fastwho[mk] = k[3] }
            }
            for (i = 1; i <= n; i++) {
                split(order[i], k, " "); mk = k[1] " " k[2]
                if (k[3] == "ours" && (mk in fast))
                    printf "%s: ours %.2f ms, fastest PyTorch (%s) %.2f ms, ratio %.2f (medians over the rounds)\n", mk, ours[mk], fastwho[mk], fast[mk], ours[mk] / fast[mk]
            }
        }'
    grep -h "recompiles\|failed:" "$LOG"/speed-r*-peer-*.txt 2>/dev/null | sed -n 's/^torch \(compiled .*keep [0-9.]*\):.*\(first step.*\)/\1: \2/p; /failed:/p' | sort -u
    grep -h "check_peer:" "$LOG"/peer-check.txt 2>/dev/null
}

profile() {
    local depth=${BIG[0]} widen=${BIG[1]} precision
    stage "plan-wrn$depth-$widen-bf16" 30 "$BIN" plan --device "$DEVICE" --depth "$depth" --widen "$widen" --batch "$BATCH" \
        --keep 0.5 --width 16 --precision bf16
    stage "plan-wrn$depth-$widen-fp32" 30 "$BIN" plan --device "$DEVICE" --depth "$depth" --widen "$widen" --batch "$BATCH" \
        --keep 0.5 --width 16
    for precision in fp32 bf16; do
        stage "profile-wrn$depth-$widen-$precision" 60 "$BIN" profile --device "$DEVICE" --depth "$depth" --widen "$widen" \
            --batch "$BATCH" --keep 0.5 --steps 3 --precision "$precision"
    done
    # "PRECISION OPTION": the default of each precision first, then its options.
    local case option tag math
    for case in "fp32 " "fp32 --input-grad col2im" "fp32 --col-budget 128" "fp32 --col-budget 1024" "fp32 --no-recompute" \
        "fp32 --fold-bn" "bf16 " "bf16 --col-budget 46" "bf16 --col-budget 128" "bf16 --fold-bn" \
        "bf16 --sgd-group" "bf16 --update end --sgd-group"; do
        read -r precision option <<<"$case"
        tag=${option:-default}; tag=${tag//--/}; tag=${tag// /-}
        # shellcheck disable=SC2086  # the option is two words
        stage "option-$precision-$tag" 120 "$BIN" bench --device "$DEVICE" --depth "$depth" --widen "$widen" \
            --batch "$BATCH" --keep 1.0,0.5 --steps 10 --math tf32 --precision "$precision" $option
    done
    for precision in fp32 bf16; do
        SLICEOUT_GEMM_TUNE=1 stage "option-$precision-gemm-tune" 120 "$BIN" bench --device "$DEVICE" --depth "$depth" \
            --widen "$widen" --batch "$BATCH" --keep 1.0,0.5 --steps 10 --math tf32 --precision "$precision"
    done
    # Winograd in tf32 (against option-fp32-default) and in fp32 math.
    for math in tf32 fp32; do
        stage "option-fp32-winograd-$math" 120 "$BIN" bench --device "$DEVICE" --depth "$depth" --widen "$widen" \
            --batch "$BATCH" --keep 1.0,0.5 --steps 10 --math "$math" --winograd
    done
    stage "profile-wrn$depth-$widen-fp32-winograd" 60 "$BIN" profile --device "$DEVICE" --depth "$depth" --widen "$widen" \
        --batch "$BATCH" --keep 1.0 --steps 3 --math fp32 --winograd
}

profile_table() {
    echo
    echo "== profile ($DEVICE)"
    local f
    for f in "$LOG"/option-*.txt; do
        [ -f "$f" ] || continue
        grep -E '^[0-9]\.[0-9]{2} ' "$f" | awk -v o="$(basename "$f" .txt)" '{ printf "%-28s keep %s  %8s ms/step  arena %s MiB\n", o, $1, $2, $9 }'
    done
    grep -hE "gpu step|total " "$LOG"/plan-*.txt 2>/dev/null | sed 's/^ */plan: /'
    for f in "$LOG"/profile-*.txt; do
        [ -f "$f" ] || continue
        echo "$(basename "$f" .txt): $(head -n 2 "$f" | grep "per step")"
        sed -n '/^per kernel/,/^$/p' "$f" | head -n 6
    done
}

frontier() {
    local seed keep
    for seed in $SEEDS; do
        for keep in 1.0 0.75 0.5; do
            stage "frontier-keep$keep-seed$seed" 150 "$BIN" train --device "$DEVICE" --data "$DATA" --depth "${SMALL[0]}" \
                --widen "${SMALL[1]}" --keep "$keep" --epochs "$EPOCHS" --batch 128 --precision bf16 --seed "$seed" \
                "${LIMIT[@]}" --out "$LOG/frontier/keep$keep-seed$seed"
        done
    done
}

frontier_table() {
    echo
    echo "== frontier ($DEVICE): WRN-${SMALL[0]}-${SMALL[1]}, bf16, $EPOCHS epochs, seeds $SEEDS"
    [ "$DRY_RUN" = 1 ] && return 0
    compgen -G "$LOG/frontier/*" >/dev/null || { echo "no run started"; return 0; }
    timeout 30 "$BIN" compare "$LOG"/frontier/* --out "$LOG/frontier.svg" 2>&1 | tee "$LOG/frontier-compare.txt"
    # Per keep, the means over the seeds of the final accuracy (recalibrated where measured)
    # and of the training seconds, against keep 1.0's (the target: within 0.5 point in 0.8x).
    awk '$2 ~ /^WRN-/ && $6 ~ /\// { acc = ($9 == "-") ? $8 : $9; n[$3]++; a[$3] += acc; t[$3] += $11 }
        END { for (k in n) { a[k] /= n[k]; t[k] /= n[k] }
              for (k in n) if ("1.00" in n) printf "keep %s: final%s %.2f%%, %.1f s (%d seeds); against keep 1.00: %+.2f points, %.2fx the time\n",
                  k, (k == "1.00") ? "" : " (recalibrated)", a[k], t[k], n[k], a[k] - a["1.00"], t[k] / t["1.00"] }' \
        "$LOG/frontier-compare.txt" | sort -r
}

for part in "$@"; do
    "$part"
done

[ "${#skipped[@]}" -eq 0 ] || [ "$status" -ne 0 ] || status=3
{
    echo
    echo "== stages (${SECONDS} s in all, deadline ${DEADLINE} s)"
    for row in "${ledger[@]}"; do
        read -r name secs outcome <<<"$row"
        printf "%-34s %6s s  %s\n" "$name" "$secs" "$outcome"
    done
    [ "${#skipped[@]}" -eq 0 ] || echo "skipped at the deadline: ${skipped[*]}"
    for part in "$@"; do
        "${part}_table"
    done
} | tee "$LOG/summary.txt"
pack
exit $status

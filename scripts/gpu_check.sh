#!/usr/bin/env bash
# The GPU machine's one command: the CUDA half of the test suite, the GPU benchmark
# (benchmarks/gpu_step.py, gpu-gpt2s preset) and a tiny end-to-end fine-tune on cuda, then a
# summary table. Run from anywhere (it moves to the repo root): bash scripts/gpu_check.sh
# Results go to $OUT (the device runner's folder) or /tmp/gpu_check. Nothing is installed from a
# registry; the package is used from the checkout (PYTHONPATH). Sized under 6 minutes on an H200.
# A failing stage is recorded as FAILED and the next one still runs; the exit code is non-zero
# when any stage failed (or 2 when CUDA is not available at all).
set -u

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
export PYTHONPATH=$PWD
export OMP_WAIT_POLICY=PASSIVE
OUT_DIR=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT_DIR"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

if ! python3 -c "import minipeft; assert minipeft.cuda_available()" 2>/dev/null; then
    reason=$(python3 -c "import minipeft; print(minipeft.backend_info()['cuda'])" 2>&1 | tail -1)
    echo "gpu_check: CUDA is not available ($reason); this script needs CuPy and an NVIDIA GPU" >&2
    exit 2
fi
python3 -c "import minipeft; print('backend:', minipeft.backend_info())"

failed=0
now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$2"; }

# ---- 1. the CUDA half of the test suite
echo "== tests: pytest -m cuda"
t0=$(now)
timeout 240 python3 -m pytest -q -m cuda -p no:cacheprovider -x 2>&1 | tee "$OUT_DIR/pytest_cuda.log"
suite_rc=${PIPESTATUS[0]}
suite_s=$(elapsed "$t0" "$(now)")
summary=$(grep -E '[0-9]+ (passed|failed|skipped|error|deselected)' "$OUT_DIR/pytest_cuda.log" | tail -1)
count() { echo "$summary" | grep -oE "[0-9]+ $1" | grep -oE '[0-9]+' || echo 0; }
suite_counts="$(count passed) passed, $(count failed) failed, $(count skipped) skipped, $(count error) errors"
case $suite_rc in
    0) suite_state=ok ;;
    124) suite_state="FAILED (timed out after 240 s)"; failed=1 ;;
    *) suite_state="FAILED (rc $suite_rc)"; failed=1 ;;
esac

# ---- 2. the GPU benchmark
echo "== benchmark: benchmarks/gpu_step.py"
t0=$(now)
timeout 180 python3 benchmarks/gpu_step.py --json "$OUT_DIR/gpu_step.json" 2>&1 \
    | tee "$OUT_DIR/gpu_step.log"
bench_rc=${PIPESTATUS[0]}
bench_s=$(elapsed "$t0" "$(now)")
case $bench_rc in
    0) bench_state=ok ;;
    124) bench_state="FAILED (timed out after 180 s)"; failed=1 ;;
    *) bench_state="FAILED (rc $bench_rc)"; failed=1 ;;
esac
bench_rows=$(python3 - "$OUT_DIR/gpu_step.json" <<'EOF' 2>/dev/null
import json, sys
def f(v, spec):
    return "n/a" if v is None else format(v, spec)
for r in json.load(open(sys.argv[1]))["rows"]:
    extra = ""
    if r["row"] == "nf4" and r.get("fraction_of_copy") is not None:
        extra = f", {r['fraction_of_copy']:.0%} of copy bandwidth"
    met = {True: "yes", False: "no", None: "-"}[r.get("met")]
    print(f"  {r['row']:<6} ratio {f(r['ratio'], '.2f'):>5}  peak GiB mp {f(r['minipeft_peak_gib'], '.2f')}"
          f" / pt {f(r['torch_peak_gib'], '.2f')}{extra}  target met: {met}")
EOF
) || bench_rows="  (no JSON results)"

# ---- 3. a tiny end-to-end fine-tune on cuda
finetune_stage() {  # name, then the command
    local name=$1; shift
    local t0 rc
    t0=$(now)
    timeout 60 "$@" 2>&1 | tee "$OUT_DIR/$name.log"
    rc=${PIPESTATUS[0]}
    eval "${name}_s=$(elapsed "$t0" "$(now)")"
    if [ "$rc" -eq 0 ]; then eval "${name}_state=ok"; else eval "${name}_state='FAILED (rc $rc)'"; failed=1; fi
}
echo "== fine-tune: pretrain nano, then LoRA bf16 on cuda"
finetune_stage pretrain python3 -m minipeft pretrain --preset nano --steps 30 --out "$TMP/base" \
    --device cuda --quiet
finetune_stage finetune python3 -m minipeft finetune --model "$TMP/base" --steps 30 \
    --device cuda --precision bf16 --out "$TMP/lora" --quiet
# the job's last line: "docstrings: loss 6.1246 -> 6.1168; adapter saved to ..."
final_loss=$(grep -oE 'loss [0-9.]+ -> [0-9.]+' "$OUT_DIR/finetune.log" | tail -1 | sed 's/.*-> //')
pretrain_loss=$(grep -oE 'validation loss [0-9.]+' "$OUT_DIR/pretrain.log" | tail -1 | sed 's/.* //')

# ---- summary
echo
echo "================ gpu_check summary ================"
printf '%-10s %-34s %s\n' "stage" "result" "seconds"
printf '%-10s %-34s %s\n' "suite" "$suite_state: $suite_counts" "$suite_s"
printf '%-10s %-34s %s\n' "benchmark" "$bench_state" "$bench_s"
echo "$bench_rows"
printf '%-10s %-34s %s\n' "pretrain" "$pretrain_state: val loss ${pretrain_loss:-n/a}" "$pretrain_s"
printf '%-10s %-34s %s\n' "finetune" "$finetune_state: final loss ${final_loss:-n/a}" "$finetune_s"
echo "logs and gpu_step.json in $OUT_DIR"
if [ "$failed" -ne 0 ]; then
    echo "gpu_check: some stage FAILED" >&2
    exit 1
fi
echo "gpu_check: all stages ok"

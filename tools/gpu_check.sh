#!/usr/bin/env bash
# The GPU path, end to end, on one offline GPU machine in under 8 minutes (issue 22):
#   0. installs missing dependencies from the wheels in .whl/ (if present) into /tmp/site;
#   1. runs the CUDA tests (pytest -m cuda tests/test_cuda.py);
#   2. times R50-FPN cls+det+seg training at 512 px in bf16 through the trainer's step
#      (tools/gpu_bench.py: img/s, peak memory, MFU against a measured bf16 matmul peak, and the
#      share of the step the GPU is not waiting for the DataLoader);
#   3. trains COCO128 for a fixed number of minutes (tools/train.py) and evaluates it (tools/eval.py);
#   4. runs tools/infer.py on vtest.avi at 768 px;
# and prints every figure in one table (also written to $OUT/gpu_check.md when OUT is set).
#
# usage: bash tools/gpu_check.sh [--minutes N] [--compile] [--data DIR] [--dry-run] [--cpu-smoke]
#   --minutes N   COCO128 training time (default 3)
#   --compile     also time the step with train.compile=true (adds up to ~3 minutes: lower --minutes)
#   --data DIR    folder holding coco128/ and video/ (default $VISIONMTL_DATA, else ./.data if it
#                 holds coco128/, else ../shared/data)
#   --dry-run     print the plan and check the files; run nothing
#   --cpu-smoke   only the benchmark's CPU smoke run (64 px, 2 steps) and the table: checks the plumbing
# Environment: PYTHON (default python3), OUT (results folder; default runs/gpu_check),
#   GPU_CHECK_WORK (checkpoints and videos; default /tmp/gpu_check), GPU_CHECK_BUDGET (seconds, default 450).
#   For a rehearsal on a CPU: GPU_CHECK_BENCH_ARGS (default "--imgsz 512 --batch 32 --time-limit 45"),
#   GPU_CHECK_SET (extra --set for train and eval), GPU_CHECK_INFER_ARGS (default "--imgsz 768 --batch 8").
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
PY="${PYTHON:-python3}"
MINUTES=3
COMPILE=0
DRY=0
SMOKE=0
DATA="${VISIONMTL_DATA:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --minutes) MINUTES="${2:?--minutes needs a number}"; shift 2 ;;
    --compile) COMPILE=1; shift ;;
    --data) DATA="${2:?--data needs a folder}"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --cpu-smoke) SMOKE=1; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$MINUTES" in ''|*[!0-9.]*) echo "error: --minutes expects a number, got '$MINUTES'" >&2; exit 2 ;; esac
if [ -z "$DATA" ]; then
  if [ -d "$ROOT/.data/coco128" ]; then DATA="$ROOT/.data"; else DATA="$ROOT/../shared/data"; fi
fi
DATA="$(cd "$DATA" 2>/dev/null && pwd || echo "$DATA")"
export VISIONMTL_DATA="$DATA"
RES="${OUT:-$ROOT/runs/gpu_check}"
WORK="${GPU_CHECK_WORK:-/tmp/gpu_check}"
S="$WORK/state"  # every phase's files; the few worth keeping are copied to $RES at the end
BUDGET="${GPU_CHECK_BUDGET:-450}"
CONFIG="configs/coco128/r50_fpn_3heads_gpu.yaml"
BENCH_ARGS="${GPU_CHECK_BENCH_ARGS:---imgsz 512 --batch 32 --time-limit 45}"
EXTRA_SET="${GPU_CHECK_SET:-}"
INFER_ARGS="${GPU_CHECK_INFER_ARGS:---imgsz 768 --batch 8}"
IMAGES_PER_EPOCH=2048  # the config lists COCO128 16 times
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
START=$SECONDS

left() { echo $(( BUDGET - (SECONDS - START) )); }
min() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }

plan() {
  cat <<EOF
GPU check plan (budget ${BUDGET} s; each phase is cut by 'timeout' and the table is printed whatever fails)
  repo:    $ROOT
  python:  $PY
  data:    VISIONMTL_DATA=$DATA
  results: $RES (gpu_check.md, bench.json, eval.json, infer_summary.json, train_metrics.jsonl, logs.txt)
  scratch: $WORK (checkpoints, video)
  0. deps     if albumentations/pycocotools/pydantic/tqdm/pytest do not import and .whl/ exists:
              pip install --no-index --no-deps --target /tmp/site .whl/*.whl; PYTHONPATH+=/tmp/site
  1. tests    $PY -m pytest -v -m cuda tests/test_cuda.py                         (<= 150 s)
  2. bench    $PY tools/gpu_bench.py $CONFIG $BENCH_ARGS  (<= 110 s)
EOF
  [ "$COMPILE" = 1 ] && echo "  2b. compile $PY tools/gpu_bench.py ... --compile                          (<= 200 s)"
  cat <<EOF
  3. train    $PY tools/train.py $CONFIG --work-dir $WORK/coco128 --set train.epochs=E train.eval_interval=E $EXTRA_SET
              E = epochs of $IMAGES_PER_EPOCH images that fit ${MINUTES} min at the measured DataLoader img/s
  4. eval     $PY tools/eval.py $CONFIG $WORK/coco128/best.pt --out $WORK/eval (-> $RES/eval.json) (<= 75 s)
  5. infer    $PY tools/infer.py $WORK/coco128/best.pt --source $DATA/video/vtest.avi $INFER_ARGS  (<= 75 s)
  6. table    every figure in one markdown table
EOF
}

if [ "$DRY" = 1 ]; then
  plan
  missing=0
  for f in "$CONFIG" tools/gpu_bench.py tools/train.py tools/eval.py tools/infer.py tests/test_cuda.py; do
    [ -f "$f" ] || { echo "missing: $f"; missing=1; }
  done
  for d in "$DATA/coco128/images" "$DATA/coco128/annotations/instances.json" "$DATA/video/vtest.avi"; do
    [ -e "$d" ] || echo "note: $d not found (set --data or VISIONMTL_DATA)"
  done
  if [ -d .whl ]; then echo "wheels: $(ls .whl/*.whl 2>/dev/null | wc -l) in .whl/"; else echo "wheels: no .whl/ folder"; fi
  echo "dry run: nothing was run"
  exit $missing
fi

rm -rf "$S"
mkdir -p "$S/logs" "$RES"
: > "$S/phases.tsv"

# run_phase NAME SECONDS CMD...: run with a time limit, log to $S/logs/NAME.log, record status and time
run_phase() {
  local name="$1" limit="$2"; shift 2
  local t0=$SECONDS status rc
  if [ "$limit" -lt 10 ]; then
    echo "== $name: skipped (budget spent)"
    printf '%s\t%s\t%s\n' "$name" "skipped (budget)" 0 >> "$S/phases.tsv"
    return 1
  fi
  echo "== $name (<= ${limit} s): $*"
  timeout -k 10 "$limit" "$@" > "$S/logs/$name.log" 2>&1
  rc=$?
  case $rc in 0) status=ok ;; 124|137) status="timeout ${limit}s" ;; *) status="failed rc=$rc" ;; esac
  printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" >> "$S/phases.tsv"
  echo "   $status in $((SECONDS - t0)) s"
  [ $rc -eq 0 ] || tail -n 15 "$S/logs/$name.log" | sed 's/^/   | /'
  return $rc
}

# 0. dependencies from carried wheels
if ! "$PY" -c "import albumentations, pycocotools, pydantic, tqdm, pytest" 2>/dev/null; then
  if compgen -G ".whl/*.whl" > /dev/null; then
    echo "== deps: installing $(ls .whl/*.whl | wc -l) wheels into /tmp/site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      > "$S/logs/deps.log" 2>&1 || tail -n 5 "$S/logs/deps.log"
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
  else
    echo "== deps: some imports fail and there is no .whl/ folder; see README (GPU check)"
  fi
fi
"$PY" - > "$S/env.txt" 2>&1 <<'EOF'
import platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__}, cuda {torch.version.cuda}, "
      f"gpu {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
EOF
cat "$S/env.txt"

if [ "$SMOKE" = 1 ]; then
  run_phase bench 120 "$PY" tools/gpu_bench.py "$CONFIG" --cpu-smoke --json "$S/bench.json"
else
  # 1. CUDA tests
  run_phase tests "$(min 150 $(( $(left) - 300 )))" "$PY" -m pytest -v -p no:cacheprovider -m cuda tests/test_cuda.py
  # 2. throughput
  # shellcheck disable=SC2086  # word splitting of the argument lists is meant
  run_phase bench "$(min 110 $(( $(left) - 200 )))" "$PY" tools/gpu_bench.py "$CONFIG" $BENCH_ARGS --json "$S/bench.json"
  if [ "$COMPILE" = 1 ]; then
    run_phase bench_compile "$(min 200 $(( $(left) - 200 )))" "$PY" tools/gpu_bench.py "$CONFIG" --imgsz 512 \
      --batch 32 --compile --steps 15 --loader-steps 10 --no-cudnn-benchmark --time-limit 30 --json "$S/bench_compile.json"
  fi
  # 3. COCO128 for a fixed time: epochs from the measured DataLoader throughput
  # the phase may run TRAIN_S + 40 s; 100 s stay for evaluation, video and the table
  TRAIN_S=$("$PY" -c "print(int(min(float('$MINUTES') * 60, $(left) - 140)))")
  EPOCHS=$("$PY" - "$S/bench.json" "$TRAIN_S" "$IMAGES_PER_EPOCH" <<'EOF'
import json, sys
path, secs, per_epoch = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
try:
    img_s = json.load(open(path))["loader"]["img_s"]
except Exception:
    img_s = 150.0  # no measurement: a cautious guess
# 40 s: start-up and the final evaluation; 1 s per epoch: its checkpoint and the first batch of the next
print(max(1, int((secs - 40) / (per_epoch / img_s + 1.0))))
EOF
)
  echo "$MINUTES $TRAIN_S $EPOCHS" > "$S/train_plan.txt"
  rm -rf "$WORK/coco128"
  run_phase train "$(( TRAIN_S + 40 ))" "$PY" tools/train.py "$CONFIG" --work-dir "$WORK/coco128" \
    --set "train.epochs=$EPOCHS" "train.eval_interval=$EPOCHS" $EXTRA_SET
  cp "$WORK/coco128/metrics.jsonl" "$S/train_metrics.jsonl" 2>/dev/null
  CKPT="$WORK/coco128/best.pt"
  [ -f "$CKPT" ] || CKPT="$WORK/coco128/last.pt"
  # 4. evaluation, 5. video
  run_phase eval "$(min 75 $(( $(left) - 60 )))" "$PY" tools/eval.py "$CONFIG" "$CKPT" --out "$WORK/eval" --exist-ok \
    --no-plots ${EXTRA_SET:+--set $EXTRA_SET}
  cp "$WORK/eval/metrics.json" "$S/eval.json" 2>/dev/null || true
  rm -rf "$WORK/infer"
  run_phase infer "$(min 75 $(( $(left) - 5 )))" "$PY" tools/infer.py "$CKPT" --source "$DATA/video/vtest.avi" \
    $INFER_ARGS --out "$WORK/infer" --no-progress --compare-model-only 64
  cp "$WORK/infer/summary.json" "$S/infer_summary.json" 2>/dev/null
fi

# 6. the table
S="$S" TOTAL=$((SECONDS - START)) "$PY" - <<'EOF' | tee "$S/gpu_check.md"
import json, os, re
from pathlib import Path

res = Path(os.environ["S"])
def load(name):
    try:
        return json.loads((res / name).read_text())
    except Exception:
        return None
def read(name):
    p = res / name
    return p.read_text() if p.is_file() else ""
pct = lambda x: f"{100 * x:.1f}%" if isinstance(x, (int, float)) else "n/a"
gib = lambda b: f"{b / 2**30:.1f} GiB" if isinstance(b, (int, float)) else "n/a"
tf = lambda x: f"{x:.1f}" if x >= 1 else f"{x:.3g}"
rows = [("environment", read("env.txt").strip() or "n/a")]
for line in read("phases.tsv").splitlines():
    name, status, secs = line.split("\t")
    rows.append((f"phase {name}", f"{status}, {secs} s"))
log = read("logs/tests.log")
if log:
    counts = {k: len(re.findall(rf"::\S+ {k}", log)) for k in ("PASSED", "FAILED", "SKIPPED", "ERROR")}
    rows.append(("cuda tests", ", ".join(f"{v} {k.lower()}" for k, v in counts.items() if v) or "none ran"))
    for m in re.findall(r"^(tests/\S+::\S+) (FAILED|ERROR)", log, re.M):
        rows.append(("  not passed", " ".join(m)))
for name, label in (("bench.json", ""), ("bench_compile.json", " (compile)")):
    b = load(name)
    if not b:
        continue
    c, ld = b["compute"], b["loader"]
    rows += [
        (f"bench setting{label}", f"{b['backbone']}-FPN {'+'.join(b['tasks'])}, {b['imgsz']} px, batch {b['batch']}, "
                                  f"{b['amp']}, channels_last={b['channels_last']}, compile={b['compile']}"),
        (f"train img/s, batch on GPU{label}", f"{c['img_s']:.1f} ({c['step_ms']:.1f} ms/step)"),
        (f"MFU{label}", f"{pct(b['mfu'])} ({tf(c['tflops'])} of {tf(b['peak_tflops'])} TFLOP/s measured {b['peak_dtype']} "
                        f"matmul peak; {b['train_flops_per_img'] / 1e9:.1f} GFLOP/img fwd+bwd, 3x fwd "
                        f"{3 * b['fwd_flops_per_img'] / 1e9:.1f})"),
        (f"peak GPU memory{label}", f"{gib(b['peak_mem_bytes'])} (with loader {gib(b.get('peak_mem_bytes_loader'))})"),
        (f"train img/s with DataLoader{label}", f"{ld['img_s']:.1f} ({ld['workers']} workers, pin_memory={ld['pin_memory']}, "
                                                f"MFU {pct(ld['mfu'])})"),
        (f"GPU busy share (not waiting for data){label}", f"{pct(ld['busy_share'])} (waited {ld['wait_s']:.2f} s of "
                                                          f"{ld['seconds']:.2f} s)"),
        (f"img/s with DataLoader / batch on GPU{label}", pct(ld.get("useful_share"))),
        (f"warm-up{label}", f"{b['warmup_s']:.1f} s"),
    ]
    if b.get("compute_cudnn_benchmark"):
        cb = b["compute_cudnn_benchmark"]
        rows.append((f"train img/s, cudnn.benchmark on{label}", f"{cb['img_s']:.1f} (MFU {pct(cb['mfu'])})"))
plan = read("train_plan.txt").split()
if plan:
    rows.append(("COCO128 training plan", f"{plan[0]} min asked, {plan[1]} s given, {plan[2]} epochs of 2048 images"))
tlog = read("logs/train.log")
m = re.search(r"trained (\d+) iterations in ([\d.]+) s", tlog)
if m:
    it, s = int(m.group(1)), float(m.group(2))
    rows.append(("COCO128 training", f"{it} iterations x 32 images in {s:.0f} s ({it * 32 / s:.1f} img/s incl. "
                                     "epoch ends and the final evaluation)"))
ev = load("eval.json")
if ev:
    f = lambda t, k: f"{ev[t][k]:.3f}" if t in ev and isinstance(ev[t].get(k), (int, float)) else "n/a"
    rows.append(("COCO128 eval (tools/eval.py, the 128 training images)",
                 f"cls mAP {f('cls', 'mAP')}, det mAP50 {f('det', 'mAP50')} / mAP {f('det', 'mAP')}, "
                 f"seg mIoU {f('seg', 'mIoU')}"))
inf = load("infer_summary.json")
if inf:
    extra = f", model only {inf['model_only_fps']:.1f} FPS" if "model_only_fps" in inf else ""
    rows.append(("tools/infer.py vtest.avi", f"{inf['frames']} frames at imgsz {inf['imgsz']}, batch {inf['batch']}, "
                                             f"{inf['precision']}: {inf['fps']:.1f} FPS end-to-end{extra}"))
rows.append(("total time", f"{os.environ['TOTAL']} s"))
print("\n## GPU check\n\n| figure | value |\n|---|---|")
for a, b in rows:
    print(f"| {a} | {str(b).replace('|', '/')} |")
EOF

# what comes back: a few files, no folders ($OUT returns at most 8 files)
for f in gpu_check.md bench.json bench_compile.json eval.json infer_summary.json train_metrics.jsonl; do
  [ -f "$S/$f" ] && cp "$S/$f" "$RES/"
done
for f in "$S"/logs/*.log; do
  [ -f "$f" ] && { echo "===== $(basename "$f")"; tail -c 400000 "$f"; }
done > "$RES/logs.txt"
# exit status: 1 when any phase failed, timed out or was skipped
if awk -F'\t' '$2 != "ok" {bad = 1} END {exit !bad}' "$S/phases.tsv"; then exit 1; fi
exit 0

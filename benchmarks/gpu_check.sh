#!/usr/bin/env bash
# The GPU checks in one call (`make gpu-check`), in at most 8 minutes on one GPU: every stage on CUDA through the
# CLI, image bytes across repeats and batch sizes, kill-and-resume, fp16 with the gradient scaler, the
# GPU-visible tests, bench_render, bench_train and bench_curate on CUDA, a CUDA out-of-memory case, two processes sharing the GPU
# under `accelerate launch`. Each step has its own time limit and the script goes on when one fails; the summary
# (one line a step) goes to stdout, everything else to $OUT/gpu_check/ (default ./gpu-check-out).
#
# Where the environment lacks Augur's dependencies (a bare GPU image), put their wheels in .gpu-wheels/
# (../shared/gpu/fetch_wheels.sh .gpu-wheels, plus matplotlib's) and they are installed into a temporary folder.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
LOG=${OUT:-$ROOT/gpu-check-out}/gpu_check
mkdir -p "$LOG"
W=$(mktemp -d)
PY=python3
[ -x "$ROOT/.venv/bin/python" ] && PY="$ROOT/.venv/bin/python"
if [ -d "$ROOT/.gpu-wheels" ]; then
  SITE=$(mktemp -d)
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$ROOT"/.gpu-wheels/*.whl \
    > "$LOG/pip.log" 2>&1 || { echo "FAIL wheels did not install (see pip.log)"; tail -3 "$LOG/pip.log"; }
  export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
export AUGUR_HOME=$W/home HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TQDM_DISABLE=1
T_START=$(date +%s)

step() {  # step NAME SECONDS COMMAND...: runs it with a limit, logs it, prints one line
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s.%N)
  timeout -k 5 "$limit" "$@" > "$LOG/$name.log" 2>&1
  local rc=$?
  local dt=$(awk "BEGIN{printf \"%.0f\", $(date +%s.%N) - $t0}")
  local state=ok
  [ $rc -ne 0 ] && state="FAIL rc=$rc"
  [ $rc -eq 124 ] && state="TIMEOUT ${limit}s"
  echo "[$(( $(date +%s) - T_START ))s] $name: $state (${dt}s) $(grep -v '^\s*$' "$LOG/$name.log" | tail -n 1 | cut -c1-220)"
  return $rc
}
AUGUR="$PY -m cli"  # a command, not a function: `timeout` runs it
pngs() { (cd "$1" && find . -name '*.png' ! -name contact_sheet.png -exec sha256sum {} + | sort -k2 | sha256sum | cut -c1-16); }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$LOG/gpu.txt"
$PY -c "import torch, diffusers, transformers, peft, timm, accelerate; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), '| diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'timm', timm.__version__, 'accelerate', accelerate.__version__)" | tee "$LOG/versions.txt"

DEADLINE=${GPU_CHECK_SECONDS:-540}  # a step that would start after this is skipped (the rest is more valuable first)
late() { [ $(( $(date +%s) - T_START )) -gt "$DEADLINE" ] && echo "[$(( $(date +%s) - T_START ))s] $1: skipped (deadline)"; }

# --- render on CUDA through the CLI: fp16 by default, batch-size dependence (the test below checks repeats and the guard)
cat > "$W/birds.csv" <<'CSV'
subtype,species_latin_name,species_common_name,species_description,SD_prompt
raptors,Haliaeetus leucocephalus,bald eagle,white head and tail,A photograph of a bald eagle
raptors,Falco peregrinus,peregrine falcon,slate-grey back,A photograph of a peregrine falcon
songbirds,Cyanocitta cristata,blue jay,blue crest,A photograph of a blue jay
songbirds,Turdus migratorius,american robin,orange breast,A photograph of an american robin
CSV
step import 30 $AUGUR extrapolate import "$W/birds.csv" --out "$W/birds"
step render 60 $AUGUR render "$W/birds/prompts.jsonl" --model tiny-lcm --images-per-prompt 4 --out "$W/r1"
step render-batch1 60 $AUGUR render "$W/birds/prompts.jsonl" --model tiny-lcm --images-per-prompt 4 --batch-size 1 --out "$W/r3"
echo "  png digests: batch 4 $(pngs "$W/r1"), batch 1 $(pngs "$W/r3")" | tee -a "$LOG/summary.txt"
$PY - "$W/r1/manifest.jsonl" <<'PY' | tee -a "$LOG/summary.txt"
import json, sys
r = [json.loads(l) for l in open(sys.argv[1])]
print("  manifest:", {(x["device"], x["dtype"], x["compute_batch"], x.get("gpu", {}).get("name")) for x in r})
PY

# --- the render benchmark: plain diffusers vs the stage and its levers (full-size SD 1.5 LCM, random weights)
step bench-render 190 $PY benchmarks/bench_render.py --device cuda --sizes 256,512 --batches 1,8,16 --images 16 \
  --levers cl,qkv,taesd --workdir "$W/bench"
grep -A 40 "^config" "$LOG/bench-render.log" | head -40 >> "$LOG/summary.txt"
tail -n 1 "$LOG/bench-render.log"

# --- training on CUDA through the CLI: bf16 (auto), fp16 with the scaler, ImageNet + LoRA, kill and resume
late pretrain || step pretrain-lora 50 $AUGUR pretrain --data "$W/r1" --backbone efficientnet_lite0 --weights imagenet --lora --epochs 3 --out "$W/ptl"
late pretrain-fp16 || step pretrain-fp16 50 $AUGUR pretrain --data digits --epochs 2 --precision fp16 --image-size 32 --out "$W/pt16"
late dg || step dg-erm 60 $AUGUR dg --data digits --algorithm ERM --steps 300 --test-domains 0 --out "$W/dg_erm"
if ! late dg-resume; then
  AUGUR_KILL_AT=loop.after_checkpoint:2 step dg-killed 50 $AUGUR dg --data digits --steps 200 --test-domains 15 --out "$W/dg_k"
  step dg-resumed 50 $AUGUR dg --data digits --steps 200 --test-domains 15 --out "$W/dg_k"
  step dg-uninterrupted 50 $AUGUR dg --data digits --steps 200 --test-domains 15 --out "$W/dg_u"
  $PY - "$W/dg_k" "$W/dg_u" <<'PY' | tee -a "$LOG/summary.txt"
import json, sys
def rows(d):
    return [{k: v for k, v in json.loads(l).items() if k != "images_per_second"} for l in open(d + "/results.jsonl")]
print("  dg resumed after a kill == uninterrupted:", rows(sys.argv[1]) == rows(sys.argv[2]))
PY
fi
late cl || step cl-ranpac 60 $AUGUR cl --strategy ranpac --backbone efficientnet_lite0 --weights imagenet --epochs 1 --out "$W/cl_ranpac"

# --- the training benchmark on CUDA
late bench-train || step bench-train 150 $PY benchmarks/bench_train.py --device cuda --repeats 1
grep -A 12 "precision" "$LOG/bench-train.log" | head -14 >> "$LOG/summary.txt"

# --- curate on CUDA (the render folder above, the embedded ImageNet scorer) and its benchmark
late curate || step curate-cuda 60 $AUGUR curate "$W/r1" --device cuda --no-require-class-agreement --out "$W/cur"
late bench-curate || step bench-curate 90 $PY benchmarks/bench_curate.py --device cuda --images 512 --repeats 1 \
  --workers auto,0 --workdir "$W/bench-curate"
grep -A 6 "images/s" "$LOG/bench-curate.log" >> "$LOG/summary.txt" 2>/dev/null

# --- every algorithm (with and without SWAD) and every strategy on CUDA, the GPU-visible tests
late tests || step tests-cuda 120 $PY -m pytest -q -x -p no:cacheprovider tests/test_device.py -k cuda
late tests-gpu || step tests-gpu 60 $PY -m pytest -q -p no:cacheprovider tests/test_render.py tests/test_train.py \
  -k "gpu or mixed_precision"

# --- out of memory: one line, no traceback
$PY - "$W" > "$LOG/oom.log" 2>&1 <<'PY'
import sys, torch
torch.cuda.set_per_process_memory_fraction(0.0005)
sys.argv = ["augur", "dg", "--data", "digits", "--steps", "2", "--test-domains", "0", "--image-size", "224",
            "--out", sys.argv[1] + "/dg_oom"]
import cli
try:
    cli.main()
except SystemExit as e:
    print("exit", e.code)
PY
echo "[$(( $(date +%s) - T_START ))s] oom: $(grep -c Traceback "$LOG/oom.log") tracebacks; $(grep -v Warning "$LOG/oom.log" | tail -n 2 | tr '\n' ' ' | cut -c1-300)"

# --- two processes sharing the GPU: render shards side by side, merged into one manifest (accelerate maps rank r to
# cuda:r, so on one GPU the shards are started by hand: the same shard and merge code)
if ! late shards; then
  $AUGUR render "$W/birds/prompts.jsonl" --model tiny-lcm --images-per-prompt 4 --shard 0/2 --out "$W/r_sh" > "$LOG/shard0.log" 2>&1 &
  $AUGUR render "$W/birds/prompts.jsonl" --model tiny-lcm --images-per-prompt 4 --shard 1/2 --out "$W/r_sh" > "$LOG/shard1.log" 2>&1
  wait
  step merge 40 $AUGUR render merge "$W/r_sh"
  echo "  two shards merged == one process: $( [ "$(pngs "$W/r_sh")" = "$(pngs "$W/r1")" ] && echo yes || echo no)" | tee -a "$LOG/summary.txt"
fi
echo "done in $(( $(date +%s) - T_START ))s; logs in $LOG"

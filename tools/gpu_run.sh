#!/usr/bin/env bash
# The GPU runs behind the issue notes and BENCHMARKS.md, on a host with torch + CUDA but no package
# index: the offline bundle from ../shared/gpu-bundle/build.sh (EXTRA_PACKAGES="gguf==0.19.0") is
# unpacked from .bundle/gpu-site.tgz first.
#
#   tools/gpu_run.sh series                # the six notebooks headless, Unsloth backend, tiny local model
#   tools/gpu_run.sh pfcheck               # padded vs padding-free logits, Unsloth, 8B dims with 2 layers
#   tools/gpu_run.sh bench seed-recipe,fallback,fast-default   # 8B-shape benchmark, those configs
#   TAG=worst tools/gpu_run.sh bench fast-default "--lengths-from fixed:2048"   # extra bench arguments
#   tools/gpu_run.sh budget                # training stage with and without a token budget: same losses?
#   tools/gpu_run.sh launcher              # the training stage through the DDP launcher on the visible GPUs
#   tools/gpu_run.sh series8b [ARGS]       # stages 00-05 of the seed recipe on the 8B shape (bench_series)
#   tools/gpu_run.sh genpaths [ARGS]       # each generation path on the 8B shape: tokens/s, peak GiB
#   TAG=t4 tools/gpu_run.sh genpaths --gpu-gib 15 --paths unsloth   # the T4's path under a 15 GiB cap
#   TAG=prof tools/gpu_run.sh genpaths --paths unsloth --prompts 75 --new-tokens 1200 --profile-steps 5
#                                          # where a decoding step spends its time (profile-unsloth.txt)
#   tools/gpu_run.sh mergecheck [ARGS]     # after series8b: the trained 8B-shape adapter merged in each 16-bit type
#
# Results go to $OUT (or ./gpu-out) as small files.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
if [ ! -d /tmp/site/unsloth ]; then
  mkdir -p /tmp/site && tar xzf .bundle/gpu-site.tgz -C /tmp/site || exit 1
fi
# The device's Python cannot write bytecode next to its own packages, so every process compiled ~2,300 source files
# again (~11 s of the 45 s Unsloth import, tools/import_probe.sh): keep the bytecode under /tmp, as an ordinary
# install (Kaggle's included) keeps it in __pycache__.
export PYTHONPYCACHEPREFIX=/tmp/pycache
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 MPLBACKEND=Agg TOKENIZERS_PARALLELISM=false
PY=${PY:-python3}

case "${1:-}" in
  series)
    rm -rf /tmp/gpu-series
    t0=$(date +%s)
    $PY -m r1helpers.pipeline --run-dir /tmp/gpu-series --profile auto 2>&1 | tee "$OUT/series.log" | grep -E "^== |error|Error|backend|stage timings" | head -80
    echo "series wall seconds: $(( $(date +%s) - t0 ))"
    tar czf "$OUT/gpu-series.tgz" -C /tmp --exclude='*.safetensors' --exclude='*.gguf' --exclude='*.bin' \
      --exclude='checkpoints' --exclude='*.pt' --exclude='*.pth' gpu-series
    cat /tmp/gpu-series/pipeline_timings.json 2>/dev/null
    ;;
  pfcheck)
    $PY - <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "tools")  # the tools are scripts beside this one, outside the package
from bench import build_random_model
build_random_model(Path("/tmp/r1bench/llama8b-random-2l"), 2)
PY
    $PY tools/bench.py --check-padding-free --model /tmp/r1bench/llama8b-random-2l --backend unsloth 2>&1 | tee "$OUT/pfcheck.log" | grep -E "PADDING_FREE_CHECK|Error"
    ;;
  bench)
    # TAG names the JSON when one command runs several benches with the same configs.
    $PY tools/bench.py --configs "${2:?configs}" --out "$OUT/bench-${TAG:-$(echo "$2" | tr ',' '_')}.json" ${3:-} 2>&1 | tee -a "$OUT/bench.log" | grep -vE "^\s*$|Loading weights|it/s\]" | tail -60
    ;;
  budget)
    # Training stage twice on the tiny model (Unsloth): the plan's passes, then passes of at most 1500 tokens
    # (each 4-row step of ~2,700 tokens split in two or three). Losses must agree; splits must be counted.
    $PY - <<'PY' 2>&1 | tee "$OUT/budget.log" | grep -E "^BUDGET|batches:|Error|error" | head -40
import json, shutil
import r1helpers
from r1helpers.workflow import data_stage, train_stage
for budget in (0, 1500):
    d = f"/tmp/budget-{budget}"
    shutil.rmtree(d, ignore_errors=True)
    cfg, run = r1helpers.start(d, "cpu", {"train.wandb": "off", "train.token_budget": budget}, quiet=True)
    res = train_stage.ensure_trained(cfg, run, data_stage.prepare(cfg, run))
    print("BUDGET " + json.dumps({"token_budget": budget, "splits": res.metrics["token_budget_splits"],
          "plan": res.metrics["batch_plan"], "losses": res.losses(), "eval": res.losses("eval_loss")}), flush=True)
PY
    ;;
  launcher)
    rm -rf /tmp/gpu-ddp
    $PY -m r1helpers.distributed --run-dir /tmp/gpu-ddp --profile cpu --set train.wandb=off 2>&1 | tee "$OUT/launcher.log" | tail -40
    ;;
  series8b)
    shift
    $PY tools/bench_series.py --out "$OUT/series8b-${TAG:-default}.json" "$@" 2>&1 | tee "$OUT/series8b-${TAG:-default}.log" | grep -E "^== |^\{|series wall|error|Error|stopped|profile:|generation path|: batch [0-9]|tokens in [0-9]|out of memory" | head -80
    tar czf "$OUT/series8b-${TAG:-default}-run.tgz" -C /tmp/r1series --exclude='*.safetensors' --exclude='*.gguf' \
      --exclude='*.bin' --exclude='checkpoints' --exclude='*.pt' --exclude='*.pth' run 2>/dev/null
    ;;
  genpaths)
    shift
    $PY tools/bench_generation.py --out "$OUT/genpaths-${TAG:-default}.jsonl" "$@" 2>&1 | tee "$OUT/genpaths-${TAG:-default}.log" | grep -E "^GENPATH|genpaths:|ready in|Error|error" | head -40
    ;;
  mergecheck)
    shift
    $PY tools/bench_merge.py --base /tmp/r1series/llama8b-random-tinytok --adapter /tmp/r1series/run/train/adapter \
      --work /tmp "$@" 2>&1 | tee "$OUT/mergecheck-${TAG:-default}.log" | grep -E "^MERGECHECK|Error|error" | head -20
    ;;
  *)
    echo "usage: $0 series|pfcheck|bench CONFIGS|budget|launcher|series8b|genpaths|mergecheck" >&2; exit 2 ;;
esac

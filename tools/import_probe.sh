#!/usr/bin/env bash
# Where a notebook's first cell spends its time on a GPU host: torch, then Unsloth (cProfile'd, top 30 by
# cumulative time, into $OUT/import-probe-$1.txt). Run after tools/gpu_run.sh has unpacked the bundle.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 PYTHONPYCACHEPREFIX=${PYTHONPYCACHEPREFIX:-/tmp/pycache}
python3 - "$OUT/import-probe-${1:-x}.txt" <<'PY'
import cProfile, io, pstats, sys, time
t = time.time(); import torch; t_torch = time.time() - t
t = time.time(); torch.cuda.init(); t_cuda = time.time() - t
prof = cProfile.Profile(); t = time.time(); prof.enable()
import unsloth  # noqa
prof.disable(); t_unsloth = time.time() - t
t = time.time(); import r1helpers; from r1helpers.core.hardware import detect_hardware; detect_hardware(); t_hw = time.time() - t
print(f"IMPORT torch {t_torch:.1f} s, cuda init {t_cuda:.1f} s, unsloth {t_unsloth:.1f} s, detect_hardware {t_hw:.1f} s")
s = io.StringIO(); pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(40)
open(sys.argv[1], "w").write(s.getvalue())
PY

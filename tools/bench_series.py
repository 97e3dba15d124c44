"""The whole series timed on one GPU: stages 01-05 of the seed recipe on the 8B shape, random weights.

    make bench-series                           # = python tools/bench_series.py
    python tools/bench_series.py --gpu-gib 15   # a T4's memory, on a larger GPU

It builds a random model in the shape of Llama-3.1-8B (bf16, 32 layers, 128,256-token embedding)
with the tiny model's tokenizer, whose token lengths on the bundled sample rows (median ~670,
range 440-900) are close to the real data's with the Llama-3 tokenizer (median 750, p10 607,
p90 950), then runs `python -m r1helpers.pipeline` with the seed recipe (4-bit QLoRA, 60 steps,
max_new_tokens 1200) on the sample rows, with the comparison's default evaluation workload. Random
weights never emit EOS, so every answer runs to max_new_tokens: the worst case for generation.
It prints each stage's wall time with the tokens/s and peak GPU memory its manifest recorded, and for
the two generation stages together (01 and 04) the tokens/s over both, with each one's generation path
and batch (`generation_path`, `batch_size`, `tokens_per_second`, `peak_gpu_reserved_gib` in their manifests).
A benchmark prints measurements; nothing here is a timed test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

STAGES = ("00", "01", "02", "03", "04", "05")
MANIFESTS = {"01": ("baseline",), "02": ("data",), "03": ("train",), "04": ("finetuned", "compare"), "05": ("export",)}


def build_model(out: Path) -> Path:
    """The 8B shape with random bf16 weights and the tiny model's tokenizer (its ids < 2048 are used)."""
    from transformers import AutoTokenizer

    from r1helpers.modeling.tiny import ensure_tiny_model
    from bench import build_random_model

    if (out / "config.json").is_file():
        return out
    return build_random_model(out, tokenizer=AutoTokenizer.from_pretrained(ensure_tiny_model()))


def series_overrides(model: Path, eval_rows: int, extra: list[str]) -> list[str]:
    sets = [f"model.name={model}", "data.source=r1helpers/sample", "data.config_name=null",
            f"data.train_rows={72 - eval_rows}", f"data.eval_rows={eval_rows}",
            "train.wandb=off", *extra]
    return [x for s in sets for x in ("--set", s)]


def slow_cells(run_dir: Path, stage: str, over: float = 1.0) -> list[dict[str, Any]]:
    """The executed notebook's cells that took more than `over` seconds (papermill records each cell's time):
    where a stage's time went, the start cell included."""
    found = sorted((run_dir / "notebooks").glob(f"{stage}_*.ipynb"))
    found = [f for f in found if not f.name.endswith(".failed.ipynb")]
    if not found:
        return []
    cells = json.loads(found[-1].read_text()).get("cells", [])
    out = []
    for i, c in enumerate(cells):
        took = (c.get("metadata", {}).get("papermill") or {}).get("duration")
        if took is not None and took > over:
            source = "".join(c.get("source", "")).strip().splitlines()
            out.append({"cell": i, "seconds": round(took, 1), "code": source[0][:100] if source else ""})
    return out


def stage_row(run_dir: Path, stage: str, seconds: float | None) -> dict[str, Any]:
    row: dict[str, Any] = {"stage": stage, "seconds": seconds, "cells": slow_cells(run_dir, stage)}
    exported = run_dir / "export" / "exported.json"
    if stage == "05" and exported.is_file():
        record = json.loads(exported.read_text())
        row["export.artefacts"] = sorted(record.get("artefacts", {}))
        row["export.notes"] = record.get("notes", [])
        row["export.seconds"] = record.get("seconds", {})
    for name in MANIFESTS.get(stage, ()):
        path = run_dir / name / "manifest.json"
        if not path.is_file():
            continue
        m = json.loads(path.read_text())
        metrics = m.get("metrics", {})
        for key in ("tokens_per_second", "generated_tokens", "questions", "seconds", "peak_gpu_reserved_gib",
                    "peak_gpu_memory_gib", "generation_path", "batch_size"):
            if key in m:
                row[f"{name}.{key}"] = m[key]
            elif key in metrics:
                row[f"{name}.{key}"] = metrics[key]
        for key in ("train_tokens_per_second", "train_runtime", "train_loss"):
            if key in metrics:
                row[f"{name}.{key}"] = metrics[key]
    return row


def generation_summary(run_dir: Path) -> dict[str, Any]:
    """Both generation stages together: tokens, seconds, tokens/s, and each stage's path, batch and peak memory."""
    from r1helpers.inference.generate import speed

    out: dict[str, Any] = {}
    tokens = seconds = 0.0
    for name in ("baseline", "finetuned"):
        path = run_dir / name / "manifest.json"
        if not path.is_file():
            continue
        m = json.loads(path.read_text())
        tokens += m.get("generated_tokens") or 0
        seconds += m.get("seconds") or 0
        gen = m.get("generation") or {}
        stats = gen.get("stats") or {}
        out[name] = {"path": m.get("generation_path"), "weights": gen.get("weights"), "batch": m.get("batch_size"),
                     "tokens_per_second": m.get("tokens_per_second"), "peak_gpu_reserved_gib":
                     m.get("peak_gpu_reserved_gib"), "peak_gpu_allocated_gib": stats.get("peak_gpu_allocated_gib"),
                     "passed_over": gen.get("passed_over"),
                     # prefill + first step (+ compiling the decoding step on the static_16bit path), per batch
                     "warmup_seconds": stats.get("warmup_seconds"),
                     "compile_seconds": stats.get("compile_seconds"),  # torch.compile's part of the warm-up
                     "lora_layers_plain": stats.get("lora_layers_plain"),
                     "decode_tokens_per_second": speed(stats)["decoding tokens per second"]}
    out["tokens"] = int(tokens)
    out["seconds"] = round(seconds, 1)
    out["tokens_per_second"] = round(tokens / seconds, 1) if seconds else None
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/r1series", help="model and run folder go here")
    p.add_argument("--eval-rows", type=int, default=50, help="held-out questions answered by both models")
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--gpu-gib", type=float, default=None, help="cap each stage's process at this much GPU memory")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="more overrides")
    p.add_argument("--out", default=None, help="JSON results file")
    p.add_argument("--keep-run", action="store_true",
                   help="run --stages in the run folder as it is (finished stages are reused), instead of a fresh one: "
                        "a series split over two calls, e.g. --stages 00,01,02,03 then --keep-run --stages 04,05")
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("the series benchmark needs a CUDA GPU", file=sys.stderr)
        return 2
    work = Path(args.work)
    t0 = time.perf_counter()
    model = build_model(work / "llama8b-random-tinytok")
    built = time.perf_counter() - t0
    run_dir = work / "run"
    if not args.keep_run:
        shutil.rmtree(run_dir, ignore_errors=True)
    env = {**os.environ, "R1HELPERS_HEADLESS": "1"}
    if args.gpu_gib:
        env["R1HELPERS_GPU_GIB"] = str(args.gpu_gib)
    # Not --quiet: each notebook's output (generation path, batch, tokens/s) reaches the log as it runs, so a run
    # stopped by a time limit still says what it measured.
    cmd = [sys.executable, "-m", "r1helpers.pipeline", "--run-dir", str(run_dir), "--profile", "seed",
           "--stages", args.stages, *series_overrides(model, args.eval_rows, args.set)]
    print("model built in %.0f s; running: %s" % (built, " ".join(cmd)), flush=True)
    t1 = time.perf_counter()
    proc = subprocess.run(cmd, env=env)
    wall = time.perf_counter() - t1
    timings_path = run_dir / "pipeline_timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    rows = [stage_row(run_dir, s, timings.get(s)) for s in args.stages.split(",")]
    from r1helpers.core.hardware import package_versions

    generation = generation_summary(run_dir)
    report = {"gpu": torch.cuda.get_device_name(), "gpu_gib_cap": args.gpu_gib, "model_build_seconds": round(built, 1),
              "series_wall_seconds": round(wall, 1), "returncode": proc.returncode, "stages": rows,
              "generation": generation, "versions": package_versions(), "command": cmd}
    for r in rows:
        print(json.dumps(r), flush=True)
    print("generation: " + json.dumps(generation), flush=True)
    print(f"series wall (stages {args.stages}): {wall:.0f} s; exit {proc.returncode}")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return proc.returncode


if __name__ == "__main__":
    raise SystemExit(main())

"""Each generation path measured on the 8B shape: tokens/s and peak GPU memory at the planned batch.

    tools/gpu_run.sh genpaths                                       # = python tools/bench_generation.py
    python tools/bench_generation.py --gpu-gib 15 --paths unsloth   # a T4's memory

The model is bench_series' random bf16 Llama-3.1-8B shape with the tiny tokenizer; the adapter a random
LoRA (r 16, alpha 16, all seven projections, B not zero) written beside it. Each path runs in its own
process (importing Unsloth patches transformers for the whole process), loads base + adapter the way the
generation stages do (`inference.choose.load_for_generation`), plans the batch (`generation_plan`) and
generates `--new-tokens` for `--prompts` of the bundled sample questions with `inference.generate.generate`:

- unsloth: 4-bit base + LoRA through Unsloth's inference path, then Unsloth's decode graphs against its eager
  decoding (`unsloth_graph_check`);
- dynamic_4bit: transformers + bitsandbytes 4-bit + LoRA, dynamic cache.

(The static_16bit paths this script measured until the path left the package are in BENCHMARKS.md.)
Random weights seldom emit EOS, so nearly every row runs to `--new-tokens`. One JSON line per
measurement, prefixed `GENPATH `. A benchmark prints measurements; nothing here is a timed test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

ALL_PATHS = ("unsloth", "dynamic_4bit")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_adapter(model_dir: Path, out: Path, r: int = 16, alpha: int = 16, seed: int = 0) -> Path:
    """A random LoRA adapter for `model_dir`'s shapes, written without loading the model (B ~ N(0, 0.02))."""
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file
    from transformers import AutoConfig

    from r1helpers.modeling.load import lora_shapes

    if (out / "adapter_model.safetensors").is_file():
        return out
    dims = AutoConfig.from_pretrained(str(model_dir))
    shapes = lora_shapes(dims)
    where = {m: "self_attn" if m in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp" for m in LORA_TARGETS}
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(dims.num_hidden_layers):
        for m in LORA_TARGETS:
            fan_in, fan_out = shapes[m]
            key = f"base_model.model.model.layers.{layer}.{where[m]}.{m}"
            tensors[f"{key}.lora_A.weight"] = (torch.randn(r, fan_in, generator=g) / fan_in**0.5).to(torch.bfloat16)
            tensors[f"{key}.lora_B.weight"] = (torch.randn(fan_out, r, generator=g) * 0.02).to(torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM",
               base_model_name_or_path=str(model_dir)).save_pretrained(str(out))
    return out


def _config(model_dir: str, path: str, new_tokens: int):
    from r1helpers.core.config import load_config

    return load_config("seed", {"model.name": model_dir, "infer.max_new_tokens": new_tokens,
                                "infer.path": "unsloth" if path == "unsloth" else "dynamic",
                                "model.backend": "unsloth" if path == "unsloth" else "transformers"})


def _timed(loaded, questions, cfg, plan) -> dict[str, Any]:
    import torch

    from r1helpers.inference.choose import generation_kwargs
    from r1helpers.inference.generate import generate, speed

    stats: dict[str, Any] = {}
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    records = generate(loaded.model, loaded.tokenizer, questions, **{**generation_kwargs(cfg, plan),
                                                                      "progress": True, "stream": False}, stats=stats)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    tokens = sum(r["new_tokens"] for r in records)
    return {"seconds": round(seconds, 2), "generated_tokens": tokens, "tokens_per_second": round(tokens / seconds, 1),
            "warmup_seconds": stats["warmup_seconds"],
            "decode_tokens_per_second": speed(stats)["decoding tokens per second"],
            "peak_reserved_gib": stats.get("peak_gpu_reserved_gib"),
            "peak_allocated_gib": stats.get("peak_gpu_allocated_gib"), "batches": stats.get("batches"),
            "oom_retries": stats.get("oom_retries")}


def _first_tokens(loaded, questions: list[str], rows: list[int], n: int, **extra) -> list[list[int]]:
    """Greedy token ids (the first `n`) of `rows` of `questions` generated as one left-padded batch."""
    import torch

    from r1helpers.core import prompts

    tok = loaded.tokenizer
    enc = tok([prompts.build_prompt(questions[i]) for i in rows], return_tensors="pt", padding=True).to(loaded.device)
    with torch.inference_mode():
        out = loaded.model.generate(**enc, max_new_tokens=n, do_sample=False, temperature=None, top_p=None, top_k=None,
                                    eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **extra)
    return out[:, enc["input_ids"].shape[1]:].tolist()


def _agree(a: list[int], b: list[int]) -> int:
    """Tokens the two sequences share from the start."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class ProfilerStep:
    """A logits processor that advances a torch profiler's schedule once per decoding step (scores unchanged)."""

    def __init__(self, prof) -> None:
        self.prof = prof

    def __call__(self, input_ids, scores):
        self.prof.step()
        return scores


@contextlib.contextmanager
def profiled_decoding(model, steps: int, wait: int, out_file: Path | None = None) -> Iterator[dict[str, Any]]:
    """Profile `steps` decoding steps of the next `model.generate` calls, after skipping `wait` steps (the
    prefill, the compilation, the cache filling up): where a decoding step spends its time, on the GPU (kernels,
    CUDA-graph replays) and the CPU. Fills the yielded dict with the table's top rows; writes the whole table
    to `out_file`.

        with profiled_decoding(loaded.model, steps=5, wait=600) as prof:
            generate(loaded.model, tokenizer, questions, ...)
        prof["top"]   # [{"name", "device_ms", "cpu_ms", "calls"}, ...] per profiled step
    """
    import torch
    from torch.profiler import ProfilerActivity, profile, schedule
    from transformers import LogitsProcessorList

    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    result: dict[str, Any] = {"wait_steps": wait, "profiled_steps": steps}
    original = model.generate

    with profile(activities=activities, schedule=schedule(wait=wait, warmup=2, active=steps, repeat=1)) as prof:
        def generate_stepping(*args, logits_processor=None, **kwargs):
            return original(*args, logits_processor=LogitsProcessorList([*(logits_processor or []),
                                                                         ProfilerStep(prof)]), **kwargs)

        own = "generate" in vars(model)  # an instance attribute already (a library's patch): put it back after
        model.generate = generate_stepping
        try:
            yield result
        finally:
            if own:
                model.generate = original
            else:
                del model.generate  # the class's method is back
    events = prof.key_averages()
    device_attr = "device_time_total" if len(events) and hasattr(events[0], "device_time_total") else "cuda_time_total"
    sort = device_attr if cuda else "cpu_time_total"
    rows = sorted(events, key=lambda e: getattr(e, sort, 0.0), reverse=True)[:25]
    result["top"] = [{"name": e.key[:120], "device_ms": round(getattr(e, device_attr, 0.0) / 1000 / steps, 3),
                      "cpu_ms": round(e.cpu_time_total / 1000 / steps, 3), "calls": e.count // steps} for e in rows]
    steps_seen = [e for e in events if e.key.startswith("ProfilerStep")]
    result["step_ms"] = round(sum(e.cpu_time_total for e in steps_seen) / 1000 / max(1, steps), 3) if steps_seen \
        else None
    if out_file is not None:
        out_file.write_text(events.table(sort_by=sort, row_limit=60))


def run_path(path: str, model_dir: str, adapter_dir: str, prompts_n: int, new_tokens: int,
             profile_steps: int = 0, out_dir: Path | None = None) -> list[dict[str, Any]]:
    """One path in this process: load as the stages do, plan, generate once, measure."""
    from r1helpers.core.hardware import unsloth_importable

    # Before anything else loads, as r1helpers.start() does (Unsloth patches transformers for the whole process).
    unsloth_imported = path == "unsloth" and unsloth_importable()[0]
    import torch

    from r1helpers.data_sources import load_sample_rows
    from r1helpers.inference.choose import (apply_gpu_cap, generation_path, generation_plan, gpu_cap_gib,
                                            load_for_generation, set_up_decoding)

    apply_gpu_cap(gpu_cap_gib())
    cfg = _config(model_dir, path, new_tokens)
    questions = [r["Question"] for r in load_sample_rows()][:prompts_n]
    base: dict[str, Any] = {"measure": path, "prompts": len(questions), "new_tokens": new_tokens,
                            "gpu": torch.cuda.get_device_name(), "gpu_gib_cap": gpu_cap_gib(),
                            "unsloth_imported": unsloth_imported}
    t0 = time.perf_counter()
    gp = generation_path(cfg)
    loaded = load_for_generation(cfg, gp, Path(adapter_dir))
    base.update(load_seconds=round(time.perf_counter() - t0, 1), generation_path=gp.path, weights=gp.weights,
                path_reason=gp.reason, passed_over=gp.passed_over,
                weights_gib=round(torch.cuda.memory_allocated() / 2**30, 2))
    base.update(set_up_decoding(cfg, gp))
    plan = generation_plan(cfg, loaded, gp, questions)
    base.update(batch=plan.batch_size, plan_reason=plan.reason)
    out = []
    if profile_steps:  # the steps after the first half of the answers: a full cache
        with profiled_decoding(loaded.model, profile_steps, max(10, new_tokens // 2),
                               (out_dir or Path(".")) / f"profile-{path}.txt") as prof:
            first = _timed(loaded, questions, cfg, plan)
        out.append({**base, "profile": prof})
    else:
        first = _timed(loaded, questions, cfg, plan)
    out.append({**base, **first, "call": "first"})
    if gp.path == "unsloth":
        out.append({**base, **unsloth_graph_check(loaded, questions)})
    return out


def unsloth_graph_check(loaded, questions: list[str], n: int = 32, k: int = 4) -> dict[str, Any]:
    """Unsloth's path after the timed call: the memory its generate() left allocated and what freeing it gave back
    (`load.release_decode_memory`), the decoding steps it captured and replayed, then the first `n` greedy tokens of
    `k` prompts decoded with CUDA graphs against Unsloth's eager decoding (`load.unsloth_decode_graphs`)."""
    import torch

    from r1helpers.modeling.load import release_decode_memory, unsloth_decode_graphs

    held = torch.cuda.memory_allocated() / 2**30
    steps = release_decode_memory(loaded.model)
    freed = held - torch.cuda.memory_allocated() / 2**30
    rows = list(range(min(k, len(questions))))
    on = unsloth_decode_graphs(True)
    graphed = _first_tokens(loaded, questions, rows, n)
    release_decode_memory(loaded.model)
    unsloth_decode_graphs(False)
    eager = _first_tokens(loaded, questions, rows, n)
    release_decode_memory(loaded.model)
    return {"check": "unsloth decode graphs vs eager, first tokens", "graphs_on": on, "steps_of_timed_call": steps,
            "allocated_after_generate_gib": round(held, 2), "freed_by_release_gib": round(freed, 2), "tokens": n,
            "graphs_agree_tokens": [_agree(g, e) for g, e in zip(graphed, eager)], "graphs_equal": graphed == eager}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/r1series", help="model and adapter go here (shared with bench_series)")
    p.add_argument("--paths", default=",".join(ALL_PATHS), help=f"some of {','.join(ALL_PATHS)}")
    p.add_argument("--prompts", type=int, default=50)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--gpu-gib", type=float, default=None, help="cap each path's process at this much GPU memory")
    p.add_argument("--timeout", type=int, default=240, help="seconds one path may take")
    p.add_argument("--profile-steps", type=int, default=0,
                   help="profile this many decoding steps of the first call, from the middle of the answers "
                        "(torch.profiler; the table goes to profile-<path>.txt beside --out)")
    p.add_argument("--out", default=None, help="JSON lines file")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--adapter", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        try:
            rows = run_path(args.one, args.model, args.adapter, args.prompts, args.new_tokens, args.profile_steps,
                            Path(args.out).parent if args.out else None)
        except Exception as e:
            import traceback

            traceback.print_exc()
            rows = [{"measure": args.one, "error": f"{type(e).__name__}: {str(e)[:400]}"}]
        for r in rows:
            print("GENPATH " + json.dumps(r), flush=True)
        return 0
    import torch

    if not torch.cuda.is_available():
        print("the generation-path benchmark needs a CUDA GPU", file=sys.stderr)
        return 2
    from bench_series import build_model

    unknown = [x for x in args.paths.split(",") if x not in ALL_PATHS]
    if unknown:
        p.error(f"--paths: unknown {unknown}; choose from {ALL_PATHS}")
    work = Path(args.work)
    t0 = time.perf_counter()
    model = build_model(work / "llama8b-random-tinytok")
    adapter = build_adapter(model, work / "genpaths-adapter")
    print(f"model and adapter ready in {time.perf_counter() - t0:.0f} s", flush=True)
    env = {**os.environ, "R1HELPERS_HEADLESS": "1"}
    if args.gpu_gib:
        env["R1HELPERS_GPU_GIB"] = str(args.gpu_gib)
    results = []
    for path in args.paths.split(","):
        cmd = [sys.executable, __file__, "--one", path, "--model", str(model),
               "--adapter", str(adapter), "--prompts", str(args.prompts), "--new-tokens", str(args.new_tokens),
               "--profile-steps", str(args.profile_steps)]
        if args.out:
            cmd += ["--out", args.out]
        t1 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
            if args.out:  # what the process logged (TORCH_LOGS=recompiles, warnings), beside the results
                Path(args.out).with_name(f"{Path(args.out).stem}-{path}.stderr.txt").write_text(proc.stderr[-200_000:])
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("GENPATH ")]
            rows = [json.loads(ln[len("GENPATH "):]) for ln in lines]
            if not rows:
                rows = [{"measure": path, "error": f"exit {proc.returncode}: {proc.stderr[-600:]}"}]
        except subprocess.TimeoutExpired as e:  # keep what the process printed before it was stopped
            said = "".join(x.decode(errors="replace") if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr))
            rows = [{"measure": path, "error": f"over {args.timeout} s", "output_tail": said[-1500:]}]
        for r in rows:
            r["process_seconds"] = round(time.perf_counter() - t1, 1)
            print("GENPATH " + json.dumps(r), flush=True)
        results += rows
    if args.out:
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in results))
    print(f"genpaths: {time.perf_counter() - t0:.0f} s in all", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

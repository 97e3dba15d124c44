"""Training and generation throughput on the 8B shape, for each backend and batch plan.

    python tools/bench.py --out bench.json      # random 8B weights, built on the fly
    python tools/bench.py --model /path/to/model --lengths-from runs/default

Weights do not change throughput, so a randomly initialised model in the
Llama-3.1-8B shape stands in for the real one (no download). Batches are drawn
from a realistic length distribution: the prepared dataset's own token lengths
when a run folder is given, else `DEFAULT_LENGTHS` below. Each configuration
runs in its own process, because importing Unsloth patches transformers for the
whole process and would contaminate the transformers + peft measurement.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Llama-3.1-8B dimensions.
LLAMA_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0)

# Token lengths of a training example (prompt + reasoning + answer + EOS) when no prepared
# dataset is given: a log-normal fitted to 198 real medical-o1 rows tokenized with the
# Llama-3 tokenizer in the recipe's format (median 750, p10 607, p90 950, p99 1,101, longest
# 1,176: sigma ~0.17). The earlier estimate (median 700, sigma 0.45) spread lengths far wider
# than the data and so overstated what padding-free batches save. Pass --lengths-from with a
# prepared run folder to use its own lengths.
DEFAULT_LENGTHS = {"kind": "lognormal", "median": 750, "sigma": 0.17, "min": 150, "max": 2048}


@dataclass
class BenchConfig:
    name: str
    backend: str  # unsloth | transformers
    micro_batch: int
    accumulation: int
    padding_free: bool
    note: str = ""
    gradient_checkpointing: str = "unsloth"
    token_budget: int = 0  # most tokens a forward may hold; 0: never split a step


CONFIGS = {
    "seed-recipe": BenchConfig("seed-recipe", "unsloth", 2, 4, False, "Unsloth, padded micro-batches of 2, accumulation 4"),
    "fallback": BenchConfig("fallback", "transformers", 2, 4, False, "transformers + peft + bitsandbytes, padded 2 x 4"),
    "fallback-nockpt": BenchConfig("fallback-nockpt", "transformers", 2, 4, False, "the fallback without gradient checkpointing", "false"),
    "fast-16gb": BenchConfig("fast-16gb", "unsloth", 2, 4, True, "default on 16 GB GPUs (T4, P100 with Unsloth): padding-free 2 x 4"),
    # micro_batch 0: whatever r1helpers.training.plan.plan_batches picks on this GPU for these lengths.
    "fast-default": BenchConfig("fast-default", "unsloth", 0, 0, True, "the project's default: plan_batches on this GPU"),
    "fast-8x1-offload": BenchConfig("fast-8x1-offload", "unsloth", 8, 1, True, "padding-free 8 x 1, Unsloth's offloaded checkpointing"),
    "fast-8x1-ckpt": BenchConfig("fast-8x1-ckpt", "unsloth", 8, 1, True, "padding-free 8 x 1, plain checkpointing (no offload)", "true"),
    "fast-8x1-nockpt": BenchConfig("fast-8x1-nockpt", "unsloth", 8, 1, True, "padding-free 8 x 1, no checkpointing", "false"),
    "fast-4x2-nockpt": BenchConfig("fast-4x2-nockpt", "unsloth", 4, 2, True, "padding-free 4 x 2, no checkpointing", "false"),
    "fast-2x4-nockpt": BenchConfig("fast-2x4-nockpt", "unsloth", 2, 4, True, "padding-free 2 x 4, no checkpointing", "false"),
    "seed-nockpt": BenchConfig("seed-nockpt", "unsloth", 2, 4, False, "padded 2 x 4, no checkpointing", "false"),
}


def sample_lengths(n: int, seed: int, lengths_from: str | None, max_len: int) -> tuple[list[int], str]:
    import numpy as np

    rng = np.random.default_rng(seed)
    if lengths_from and lengths_from.startswith("fixed:"):
        n_tok = min(int(lengths_from.split(":", 1)[1]), max_len)
        return [n_tok] * n, f"fixed {n_tok} tokens (overstates throughput: no padding, no length spread)"
    if lengths_from:
        stats = json.loads((Path(lengths_from) / "data" / "stats.json").read_text())
        pool = [min(x, max_len) for x in stats["all_lengths"]["train"]]
        return [int(x) for x in rng.choice(pool, size=n)], f"prepared dataset {lengths_from} ({len(pool)} rows)"
    d = DEFAULT_LENGTHS
    xs = rng.lognormal(math.log(d["median"]), d["sigma"], size=n).clip(d["min"], min(d["max"], max_len))
    return [int(x) for x in xs], f"log-normal estimate {d}"


def build_random_model(out: Path, layers: int | None = None, tokenizer=None) -> Path:
    """A random model in the 8B shape, saved in bf16 (written to a temporary folder, then renamed).

    `tokenizer`: the one saved with it; by default a small one (the benchmark draws token ids directly).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from r1helpers.modeling.tiny import build_tokenizer

    if (out / "config.json").is_file():
        return out
    dims = {**LLAMA_8B, **({"num_hidden_layers": layers} if layers else {})}
    tok = tokenizer or build_tokenizer(["a b c d e f g h i j k l m n o p q r s t u v w x y z"] * 10, vocab_size=300)
    config = LlamaConfig(**dims, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=False, torch_dtype="bfloat16")
    torch.manual_seed(0)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        torch.set_default_dtype(torch.bfloat16)
        model = LlamaForCausalLM(config)
        torch.set_default_dtype(torch.float32)
    model.save_pretrained(str(tmp), max_shard_size="5GB")
    tok.save_pretrained(str(tmp))
    del model
    os.replace(tmp, out)
    return out


def matmul_peak_tflops(n: int = 8192, iters: int = 20) -> float:
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * iters / (time.perf_counter() - t0) / 1e12


def train_flops_per_token(dims: dict[str, int], seq_len: float) -> float:
    """LoRA with a frozen base: forward (2N) and the input-gradient backward (2N) per token,
    plus causal attention scores and values (forward + backward); recomputation not counted."""
    h, inter, layers, heads, kv = (dims[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                                       "num_attention_heads", "num_key_value_heads"))
    head_dim = h // heads
    per_layer = h * h * 2 + 2 * h * kv * head_dim + 3 * h * inter  # q,o + k,v + gate,up,down
    n = layers * per_layer + h * dims["vocab_size"]  # + lm_head
    attn = 2 * 2 * layers * h * seq_len / 2  # QK^T and AV, causal half, per token
    return 4 * n + 2 * attn


@dataclass
class TrainMeasure:
    config: dict[str, Any]
    steps: int = 0
    seconds_per_step: float = 0.0
    useful_tokens_per_s: float = 0.0
    padded_tokens_per_s: float = 0.0
    epoch_500_rows_minutes: float = 0.0
    peak_allocated_gib: float = 0.0
    peak_reserved_gib: float = 0.0
    gpu_gib: float = 0.0  # the memory the plan saw (less than the GPU's with --gpu-gib)
    token_budget_splits: int = 0  # measured steps run as several passes to stay within the token budget
    largest_micro_batch_tokens: int = 0  # padded, before any split into passes
    mfu: float = 0.0
    losses: list[float] = field(default_factory=list)
    generation: dict[str, float] = field(default_factory=dict)
    error: str | None = None


class _CountingCollator:
    """Counts useful (attended) and padded tokens of every batch the trainer builds."""

    def __init__(self, inner):
        self.inner, self.useful, self.padded, self.largest = inner, 0, 0, 0

    def __call__(self, features):
        batch = self.inner(features)
        ids = batch["input_ids"]
        self.padded += ids.numel()
        self.largest = max(self.largest, ids.numel())
        self.useful += int(batch["attention_mask"].sum()) if "attention_mask" in batch else ids.numel()
        return batch


def cap_gpu_memory(gib: float | None) -> float:
    """Make this process see a smaller GPU (allocations past `gib` fail as on a real one), so the
    plan for a 16 GB card can be measured on a large one; returns the memory the plan sees."""
    import torch

    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    if gib is None or gib >= total:
        return total
    torch.cuda.set_per_process_memory_fraction(gib / total)
    return gib


def run_one(name: str, model_dir: str, lengths_from: str | None, steps: int, warmup: int, seq: int,
            gen_tokens: int, gen_batches: list[int], peak: float, gpu_gib: float | None = None) -> TrainMeasure:
    """One configuration in this process: load, train `warmup + steps` optimizer steps, generate."""
    bc = CONFIGS[name]
    if bc.backend == "unsloth":
        import unsloth  # noqa: F401  (must come before transformers)
    import datasets
    import torch
    from transformers import TrainerCallback

    from r1helpers.core.config import load_config
    from r1helpers.modeling.load import for_inference
    from r1helpers.training.plan import BatchPlan
    from r1helpers.training.sft import make_trainer
    from r1helpers.inference.choose import load_base_for
    from r1helpers.workflow.train_stage import plan_from_config, sft_arguments_for, with_lora

    m = TrainMeasure(config=asdict(bc))
    m.gpu_gib = round(cap_gpu_memory(gpu_gib), 1)
    cfg = load_config("seed", {"model.name": model_dir, "model.backend": bc.backend, "model.max_seq_length": seq,
                               "train.max_steps": warmup + steps, "train.logging_steps": 1, "train.save_steps": 0,
                               "train.eval_steps": 0, "train.wandb": "off",
                               "lora.gradient_checkpointing": bc.gradient_checkpointing})
    base = load_base_for(cfg)
    eff = 8  # the recipe's effective batch
    n_rows = eff * (warmup + steps)
    lengths, _ = sample_lengths(n_rows, 3407, lengths_from, seq)
    if bc.micro_batch == 0:
        plan = plan_from_config(cfg, bc.backend, m.gpu_gib, lengths=lengths, dims=base.model.config,
                                base_gib=torch.cuda.memory_allocated() / 2**30)
        bc = BenchConfig(bc.name, bc.backend, plan.micro_batch, plan.accumulation, plan.padding_free, plan.reason,
                         plan.gradient_checkpointing or bc.gradient_checkpointing, plan.token_budget)
        m.config = asdict(bc)
    else:
        plan = BatchPlan(bc.micro_batch, bc.accumulation, bc.padding_free, bc.note, token_budget=bc.token_budget)
    loaded = with_lora(cfg, base, plan)  # the plan's checkpointing, else lora.gradient_checkpointing (bc's)
    g = torch.Generator().manual_seed(0)
    vocab = loaded.model.config.vocab_size
    rows = [{"input_ids": torch.randint(10, vocab - 10, (n,), generator=g).tolist()} for n in lengths]
    ds = datasets.Dataset.from_list(rows)
    args = sft_arguments_for(cfg, plan, Path("/tmp/bench-out") / name / "x", backend=bc.backend,
                             dtype=base.backend.dtype, on_gpu=True, report_to=[], has_eval=False, run_name=name)
    args["dataloader_drop_last"] = True
    trainer = make_trainer(loaded.model, loaded.tokenizer, ds, None, args, token_budget=plan.token_budget)
    counter = _CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    marks: dict[str, Any] = {}

    class Timer(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            if state.global_step == warmup:
                torch.cuda.synchronize()
                marks["t0"], marks["u0"], marks["p0"] = time.perf_counter(), counter.useful, counter.padded
                marks["s0"] = getattr(trainer, "_unsloth_token_budget_splits", 0)
                torch.cuda.reset_peak_memory_stats()
            if state.global_step == warmup + steps:
                torch.cuda.synchronize()
                marks["t1"], marks["u1"], marks["p1"] = time.perf_counter(), counter.useful, counter.padded
                marks["s1"] = getattr(trainer, "_unsloth_token_budget_splits", 0)

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                m.losses.append(round(float(logs["loss"]), 4))

    trainer.add_callback(Timer())
    trainer.train()
    dt = marks["t1"] - marks["t0"]
    useful, padded = marks["u1"] - marks["u0"], marks["p1"] - marks["p0"]
    m.steps = steps
    m.seconds_per_step = round(dt / steps, 3)
    m.useful_tokens_per_s = round(useful / dt, 1)
    m.padded_tokens_per_s = round(padded / dt, 1)
    m.epoch_500_rows_minutes = round(500 / (eff * steps / dt) / 60, 2)
    m.peak_allocated_gib = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    m.peak_reserved_gib = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    m.token_budget_splits = marks["s1"] - marks["s0"]
    m.largest_micro_batch_tokens = counter.largest
    mean_len = sum(lengths) / len(lengths)
    flops = train_flops_per_token(LLAMA_8B, mean_len) * useful
    m.mfu = round(flops / dt / (peak * 1e12), 4)
    m.generation = generate_throughput(for_inference(loaded), gen_tokens, gen_batches)
    return m


def generate_throughput(loaded, new_tokens: int, batches: list[int]) -> dict[str, float]:
    """Generated tokens/s at each batch size, forcing `new_tokens` so random weights cannot stop early."""
    import torch

    out: dict[str, float] = {}
    vocab = loaded.model.config.vocab_size
    for b in batches:
        g = torch.Generator().manual_seed(b)
        ids = torch.randint(10, vocab - 10, (b, 200), generator=g).to(loaded.device)
        kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, use_cache=True,
                  pad_token_id=loaded.tokenizer.pad_token_id)
        try:
            with torch.inference_mode():
                loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=4,
                                      min_new_tokens=4, do_sample=False, pad_token_id=kw["pad_token_id"])
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                loaded.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
                torch.cuda.synchronize()
            out[f"batch_{b}"] = round(b * new_tokens / (time.perf_counter() - t0), 1)
        except Exception as e:  # report, keep the other measurements
            out[f"batch_{b}_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    return out


def padding_free_check(model_dir: str, backend: str, lengths: tuple[int, ...] = (37, 411, 90, 1203)) -> dict[str, Any]:
    """Loss of the same examples padded and padding-free, through the trainer's own collator.

    Padding-free batches are one long row; the two losses agree only if no example
    attends to another (Unsloth builds a block-diagonal mask from the position ids).
    A leak shows up as a difference far above bf16 rounding.
    """
    if backend == "unsloth":
        import unsloth  # noqa: F401
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from r1helpers.core.config import load_config
    from r1helpers.inference.choose import load_base_for
    from r1helpers.workflow.train_stage import with_lora

    cfg = load_config("seed", {"model.name": model_dir, "model.backend": backend, "model.max_seq_length": 2048,
                               "lora.gradient_checkpointing": "false"})
    loaded = with_lora(cfg, load_base_for(cfg))
    g = torch.Generator().manual_seed(0)
    vocab = loaded.model.config.vocab_size
    rows = [{"input_ids": torch.randint(10, vocab - 10, (n,), generator=g).tolist()} for n in lengths]
    out: dict[str, Any] = {"lengths": list(lengths), "backend": backend}
    logits = {}
    for free in (False, True):
        batch = DataCollatorForLanguageModeling(pad_token_id=loaded.tokenizer.pad_token_id, padding_free=free)(rows)
        batch = {k: v.to(loaded.device) for k, v in batch.items()}
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=loaded.device.type == "cuda"):
            res = loaded.model(**batch)
        key = "padding_free" if free else "padded"
        out[f"{key}_loss"] = float(res.loss)
        logits[key] = res.logits.float()
    # Each example's logits: its row of the padded batch, its segment of the padding-free row.
    offsets = [sum(lengths[:i]) for i in range(len(lengths))]
    errs = []
    for i, (n, o) in enumerate(zip(lengths, offsets)):
        a, b = logits["padded"][i, :n], logits["padding_free"][0, o:o + n]
        errs.append(float((a - b).norm() / a.norm()))
    out["relative_logit_error_per_example"] = [round(e, 6) for e in errs]
    # bf16 activations round at ~4e-3; attending to another example moves logits by far more.
    out["examples_kept_apart"] = max(errs) < (3e-2 if loaded.device.type == "cuda" else 1e-4)
    return out


def table(results: list[dict[str, Any]]) -> str:
    cols = ["config", "batches", "useful tok/s", "padded tok/s", "s/step", "epoch of 500 rows (min)",
            "peak alloc GiB", "peak reserved GiB", "MFU", "gen tok/s b1", "b8", "b32"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in results:
        if r.get("error"):
            lines.append(f"| {r['config']['name']} | error: {r['error'][:80]} |" + " |" * (len(cols) - 2))
            continue
        g, c = r["generation"], r["config"]
        batches = (f"{c['micro_batch']}x{c['accumulation']}{' pf' if c['padding_free'] else ''}, ckpt "
                   f"{c['gradient_checkpointing']}" + (f", budget {c['token_budget']} ({r.get('token_budget_splits', 0)} "
                                                       "steps split)" if c.get("token_budget") else ""))
        lines.append("| " + " | ".join(str(x) for x in [
            r["config"]["name"], batches, r["useful_tokens_per_s"], r["padded_tokens_per_s"], r["seconds_per_step"],
            r["epoch_500_rows_minutes"], r["peak_allocated_gib"], r["peak_reserved_gib"], f"{r['mfu']:.1%}",
            g.get("batch_1", "-"), g.get("batch_8", "-"), g.get("batch_32", "-")]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="local model folder (default: random 8B shape in --work)")
    p.add_argument("--work", default="/tmp/r1bench", help="where the random model is built")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated from {list(CONFIGS)}")
    p.add_argument("--lengths-from", default=None, help="a prepared run folder whose token lengths to use, or fixed:N")
    p.add_argument("--steps", type=int, default=8, help="measured optimizer steps")
    p.add_argument("--warmup", type=int, default=5, help="optimizer steps before measuring (Unsloth compiles kernels for new shapes in the first steps)")
    p.add_argument("--seq", type=int, default=2048, help="max_seq_length")
    p.add_argument("--gen-tokens", type=int, default=128, help="tokens generated per sequence")
    p.add_argument("--gen-batches", default="1,8,32")
    p.add_argument("--layers", type=int, default=None, help="fewer layers for a quick check")
    p.add_argument("--gpu-gib", type=float, default=None,
                   help="plan for, and cap each run at, this much GPU memory (15 measures the T4 plan on a large GPU)")
    p.add_argument("--out", default=None, help="JSON results file")
    p.add_argument("--check-padding-free", action="store_true",
                   help="only compare padded and padding-free losses on the same rows (needs --model)")
    p.add_argument("--backend", default="unsloth", help="backend for --check-padding-free")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    p.add_argument("--peak", type=float, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    gen_batches = [int(x) for x in args.gen_batches.split(",") if x]
    if args.check_padding_free:
        print("PADDING_FREE_CHECK " + json.dumps(padding_free_check(args.model, args.backend)), flush=True)
        return 0
    if args.one:
        try:
            m = asdict(run_one(args.one, args.model, args.lengths_from, args.steps, args.warmup, args.seq,
                               args.gen_tokens, gen_batches, args.peak, args.gpu_gib))
        except Exception as e:
            import traceback

            traceback.print_exc()
            m = {"config": asdict(CONFIGS[args.one]), "error": f"{type(e).__name__}: {e}"}
        print("BENCH_RESULT " + json.dumps(m), flush=True)
        return 0
    import torch

    if not torch.cuda.is_available():
        print("the benchmark needs a CUDA GPU", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    model = args.model or str(build_random_model(Path(args.work) / ("llama8b-random" + (f"-{args.layers}l" if args.layers else "")), args.layers))
    build_s = time.perf_counter() - t0
    peak = matmul_peak_tflops()
    _, dist = sample_lengths(1, 0, args.lengths_from, args.seq)
    print(f"GPU {torch.cuda.get_device_name()}; bf16 matmul peak {peak:.0f} TFLOP/s; model {model} "
          f"(ready in {build_s:.0f} s); lengths: {dist}", flush=True)
    results = []
    for name in args.configs.split(","):
        cmd = [sys.executable, __file__, "--one", name, "--model", model, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--seq", str(args.seq), "--gen-tokens", str(args.gen_tokens),
               "--gen-batches", args.gen_batches, "--peak", str(peak)]
        if args.lengths_from:
            cmd += ["--lengths-from", args.lengths_from]
        if args.gpu_gib:
            cmd += ["--gpu-gib", str(args.gpu_gib)]
        t1 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "R1HELPERS_HEADLESS": "1"})
        line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH_RESULT ")), None)
        r = json.loads(line[len("BENCH_RESULT "):]) if line else {
            "config": asdict(CONFIGS[name]), "error": (proc.stderr or proc.stdout)[-600:]}
        r["wall_seconds"] = round(time.perf_counter() - t1, 1)
        if r.get("error"):
            print(proc.stderr[-3000:], file=sys.stderr)
        results.append(r)
        print(json.dumps(r), flush=True)
    from r1helpers.core.hardware import package_versions

    report = {"gpu": torch.cuda.get_device_name(), "versions": package_versions(), "gpu_gib_cap": args.gpu_gib, "bf16_peak_tflops": round(peak, 1), "model": model,
              "lengths": dist, "seq": args.seq, "steps": args.steps, "warmup": args.warmup, "results": results}
    print(table(results))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

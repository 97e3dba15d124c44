"""Batched generation for a list of questions, split into reasoning and answer.

Questions are sorted by prompt length (in tokens, longest first) and left-padded so one batch
wastes little; each sequence stops at EOS and records whether it did (or was cut at
max_new_tokens), which the comparison needs to be honest about unfinished answers.
With `stream=True` (`infer.stream`), the first question's answer is printed as it is
generated, from inside its batch, so streaming never changes what is generated.

Finished rows still cost work: HF `generate` keeps a row that emitted EOS in its batch, decoding
pad tokens for it, until every row has finished or `max_new_tokens` is reached; it does stop the
whole batch as soon as every row has emitted EOS. There is no way to drop finished rows from a
running batch here (that takes continuous batching), so what helps is sorting by length, which
groups questions of similar length (their answers end closer together, loosely) and puts the batch
most likely to run out of memory first. `r1helpers.inference.plan` sizes the batch so that every
row's KV cache can reach `longest prompt + max_new_tokens`, which is what a batch holds when any row
runs to the limit.

`cache_implementation="static"` (the `static_16bit` path of `r1helpers.inference.paths`) preallocates
the KV cache for the whole batch; on CUDA transformers then compiles the decoding step (`torch.compile`,
mode "reduce-overhead": CUDA graphs) the first time, which takes a minute or so and makes every later
step far cheaper. All batches then share one cache length (the longest prompt of all + max_new_tokens,
`max_cache_len`) and a short last batch is filled up with copies of a prompt whose answers are thrown
away, so the compiled step is reused instead of compiled again for a new shape. It compiles under
torch's default compile settings (`torch_compile_defaults`), not those Unsloth's import sets for training.

    python -m r1helpers.pipeline --stages 01
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator

from r1helpers.core import prompts
from r1helpers.core.hardware import free_memory, headless, is_oom
from r1helpers.inference.lora_forward import plain_lora_forward
from r1helpers.inference.plan import GenerationPlan, kv_cache_bytes_for, order_by_length, plan_generation


# torch.compile settings that importing Unsloth changes for the whole process (unsloth_zoo.patching_utils.
# patch_torch_compile), and that the static cache's compiled decoding step must not run under. Among them:
# suppress_errors=True turns a failed compilation into an eager run that compiles again on the next step,
# and recompile_limit=1024 lets a guard that fails on every step recompile up to 1,024 times; together,
# a decoding step that never finishes compiling instead of an error or a fallback after 8 tries.
DYNAMO_KEYS = ("suppress_errors", "recompile_limit", "accumulated_recompile_limit", "capture_scalar_outputs",
               "capture_dynamic_output_shape_ops", "do_not_emit_runtime_asserts", "allow_unspec_int_on_nn_module")
INDUCTOR_KEYS = ("debug", "dce", "memory_planning", "memory_pool", "efficient_conv_bn_eval_fx_passes",
                 "dynamic_scale_rblock", "max_autotune", "max_autotune_pointwise", "coordinate_descent_tuning",
                 "aggressive_fusion", "freezing", "autotune_fallback_to_aten", "autotune_multi_device",
                 "max_autotune_gemm_backends", "cuda.enable_cuda_lto", "cuda.use_fast_math", "cuda.compile_opt_level")


def _defaults(config, keys: tuple[str, ...]) -> dict[str, Any]:
    """torch's own default of each key that this torch has (aliases, whose default is a sentinel, skipped)."""
    table = getattr(config, "_config", {})
    out = {}
    for key in keys:
        entry = table.get(key)
        default = getattr(entry, "default", None)
        if entry is not None and isinstance(default, (bool, int, float, str)):
            out[key] = default
    return out


def changed_compile_settings() -> dict[str, tuple[Any, Any]]:
    """The torch.compile settings (of DYNAMO_KEYS and INDUCTOR_KEYS) that differ from torch's defaults in this
    process, as {"dynamo.key": (now, default)}: empty unless something such as Unsloth's import changed them."""
    import torch._dynamo.config as dynamo
    import torch._inductor.config as inductor

    out = {}
    for name, config, keys in (("dynamo", dynamo, DYNAMO_KEYS), ("inductor", inductor, INDUCTOR_KEYS)):
        for key, default in _defaults(config, keys).items():
            now = getattr(config, key) if "." not in key else getattr(getattr(config, key.split(".")[0]),
                                                                      key.split(".", 1)[1])
            if now != default:
                out[f"{name}.{key}"] = (now, default)
    return out


@contextlib.contextmanager
def torch_compile_defaults() -> Iterator[None]:
    """Run the block with torch's default torch.compile settings for DYNAMO_KEYS and INDUCTOR_KEYS, restored
    afterwards: the static cache's decoding step then compiles as it would without Unsloth imported (or fails
    with an error, which `generate`'s caller turns into a fallback), while Unsloth's own settings stay in force
    for training."""
    import torch._dynamo.config as dynamo
    import torch._inductor.config as inductor

    with dynamo.patch(_defaults(dynamo, DYNAMO_KEYS)), inductor.patch(_defaults(inductor, INDUCTOR_KEYS)):
        yield


# torch._dynamo's compile-time totals (seconds) that split a compiled first step: all of torch.compile's work for a
# frame; of it, the backend (AOTAutograd + inductor, or loading their output from torch's compile cache); the
# bytecode tracing; building the guards. What the warm-up spends outside torch.compile is prefill, the first
# steps' run and recording the CUDA graphs.
COMPILE_PHASES = {"torch_compile": "_compile.compile_inner", "backend": "OutputGraph.call_user_compiler",
                  "tracing": "bytecode_tracing", "guards": "build_guards"}


def compile_seconds(since: dict[str, float] | None = None) -> dict[str, float]:
    """torch.compile's time so far in this process by phase (COMPILE_PHASES), or what was added `since` an earlier
    reading; {} where torch does not keep these totals."""
    try:
        from torch._dynamo.utils import compile_times

        names, values = compile_times(repr="csv", aggregate=True)
        table = {n: float(v) for n, v in zip(names, values)}
    except Exception:  # a torch without them: the split is a measurement, never needed to generate
        return {}
    now = {k: table.get(name, 0.0) for k, name in COMPILE_PHASES.items()}
    return {k: round(v - (since or {}).get(k, 0.0), 3) for k, v in now.items()}


class LineProgress:
    """A plain line per update, for logs that cannot redraw a bar."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc, self.done, self.t0 = total, desc, 0, time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n
        print(f"{self.desc}: {self.done}/{self.total} questions ({time.perf_counter() - self.t0:.0f} s)", flush=True)

    def close(self) -> None:
        pass


def progress_bar(total: int, desc: str):
    """A notebook or terminal bar for a person; plain lines when headless."""
    if headless():
        return LineProgress(total, desc)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="q")


def row_streamer(tokenizer, row: int):
    """A TextStreamer that prints one row of a batched generation (TextStreamer itself takes batch 1 only)."""
    from transformers import TextStreamer

    class RowStreamer(TextStreamer):
        def put(self, value):
            super().put(value[row] if value.dim() > 1 else value[row : row + 1])

    return RowStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def prompt_lengths(tokenizer, questions: list[str]) -> list[int]:
    """Tokens of each question's prompt, BOS included: what a row of the batch holds before generating."""
    enc = tokenizer([prompts.build_prompt(q) for q in questions], add_special_tokens=True)
    return [len(ids) for ids in enc["input_ids"]]


def cache_dtype_bytes(model) -> int:
    """Bytes of one cached key or value number: the model's floating-point type (bf16/fp16 under 4-bit weights too)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.element_size()
    return 2


def plan_for_model(model, tokenizer, questions: list[str], *, max_new_tokens: int, path: str = "dynamic",
                   kv_slack_tokens: int = 0, gpu_gib: float | None = None, used_gib: float = 0.0,
                   max_batch: int = 128) -> GenerationPlan:
    """`plan.plan_generation` for this model and these questions: its KV bytes a token (from `model.config`
    and its type), the longest prompt, one step's fp32 logits and a prefill estimate per row.

    `gpu_gib`: the GPU's memory (or a cap), `used_gib`: what is in use now, weights included (None: no
    GPU, a fixed batch). `r1helpers.inference.paths.gpu_memory()` measures both.

        plan = plan_for_model(model, tok, questions, max_new_tokens=1200, gpu_gib=15.0, used_gib=6.1)
    """
    cfg = model.config
    longest = max(prompt_lengths(tokenizer, questions), default=0)
    width = 3 * getattr(cfg, "intermediate_size", 4 * cfg.hidden_size) + 4 * cfg.hidden_size
    return plan_generation(len(questions), longest, max_new_tokens, kv_cache_bytes_for(cfg, cache_dtype_bytes(model)),
                           free_gib=gpu_gib, weights_gib=used_gib if gpu_gib is not None else 0.0,
                           logits_bytes_per_row=cfg.vocab_size * 4 * 2, activation_bytes_per_row=longest * width * 2,
                           max_batch=max_batch, path=path, kv_slack_tokens=kv_slack_tokens)


class StepClock:
    """A logits processor that only notes the time of each decoding step (the scores pass unchanged): the
    first step follows the prefill (and, with a static cache on CUDA, the decoding step's compilation)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores

    def split(self, t0: float, rows: int) -> tuple[float, float, int]:
        """(seconds until the second step: prefill, first step and any compilation; seconds of the steps
        after it; tokens those later steps produced, pad tokens of finished rows included)."""
        if len(self.times) < 3:
            return (self.times[-1] - t0 if self.times else 0.0), 0.0, 0
        return self.times[1] - t0, self.times[-1] - self.times[1], rows * (len(self.times) - 2)


def generate(model, tokenizer, questions: list[str], *, max_new_tokens: int, batch_size: int = 8,
             do_sample: bool = False, temperature: float = 0.6, top_p: float = 0.95, seed: int = 3407,
             stream: bool = False, progress: bool = True, cache_implementation: str | None = None,
             stats: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Generate an answer to each question from the training prompt; results come back in the input order.

    Each record holds the question, the generated text (what follows the prompt's `<think>`), its
    reasoning and answer (`prompts.split_output`), `think_closed` (a `</think>` came), `finished`
    (EOS came; False: cut at `max_new_tokens`), `new_tokens` and its batch's seconds. Greedy unless
    `do_sample`; `temperature` and `top_p` apply only when sampling. `stream` prints the first
    question's answer as it is generated (not when headless). `batch_size=0` plans the batch from the
    GPU's free memory (`plan_for_model`; 8 on a CPU). `cache_implementation`: None (the dynamic KV cache)
    or "static" (compiled decoding on CUDA; see the module's notes; each LoRA layer then runs as a plain function of
    its weights while generating, `inference.lora_forward`). A batch that runs out of GPU memory
    is halved and tried again. `stats`, when given, receives the batch sizes run, each batch's seconds
    (and of those, `warmup_seconds`: prefill, first step and any compilation; then `decode_seconds` for the
    remaining steps and the tokens they made, `decode_tokens`), the out-of-memory retries and the peak
    GPU memory reserved and allocated; with a static cache also `compile_seconds`, torch.compile's part of
    the warm-up by phase (`compile_seconds`).

        records = generate(model, tokenizer, ["What causes scurvy?"], max_new_tokens=1200, batch_size=8)
    """
    import torch

    tok = tokenizer
    tok.padding_side = "left"
    device = next(model.parameters()).device
    lengths = prompt_lengths(tok, questions)
    if batch_size == 0:
        from r1helpers.inference.paths import gpu_memory

        gpu = gpu_memory() if device.type == "cuda" else None
        batch_size = plan_for_model(model, tok, questions, max_new_tokens=max_new_tokens, gpu_gib=gpu and gpu.total_gib,
                                    used_gib=gpu.used_gib if gpu else 0.0).batch_size
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1 (0: plan it), got {batch_size}")
    static = cache_implementation == "static"
    order = order_by_length(lengths)
    results: dict[int, dict[str, Any]] = {}
    gen_kwargs: dict[str, Any] = dict(
        max_new_tokens=max_new_tokens, do_sample=do_sample, use_cache=True,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    if cache_implementation is not None:
        gen_kwargs["cache_implementation"] = cache_implementation
    if static:
        gen_kwargs["max_cache_len"] = max(lengths, default=0) + max_new_tokens
    if do_sample:
        gen_kwargs.update(temperature=temperature, top_p=top_p)
    else:
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    from transformers import LogitsProcessorList

    run_stats: dict[str, Any] = {"batches": [], "batch_seconds": [], "warmup_seconds": [], "decode_seconds": [],
                                 "decode_tokens": [], "oom_retries": 0}
    on_cuda = device.type == "cuda"
    if static and on_cuda:
        run_stats["compile_settings_restored"] = sorted(changed_compile_settings())
    compile_before = compile_seconds() if static else None
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    bar = progress_bar(len(questions), "generating") if progress else None
    stream_pending = stream and bool(questions) and not headless()
    pos = 0
    while pos < len(order):
        idx = order[pos : pos + batch_size]
        # A static cache keeps one batch shape, so the compiled decoding step is reused: fill a short batch.
        rows = idx + [idx[-1]] * (batch_size - len(idx)) if static and pos > 0 else idx
        batch_prompts = [prompts.build_prompt(questions[i]) for i in rows]
        enc = tok(batch_prompts, return_tensors="pt", padding=True, add_special_tokens=True).to(device)
        streaming = stream_pending and 0 in idx
        streamer = row_streamer(tok, idx.index(0)) if streaming else None
        if streaming:
            print(f"--- streaming the answer to: {questions[0][:120]}", flush=True)
        torch.manual_seed(seed)
        clock = StepClock()
        t0 = time.perf_counter()
        out = None
        try:
            # on the static path each LoRA layer runs as a plain function of its weights: the same arithmetic,
            # traced faster when the decoding step is compiled (`inference.lora_forward`)
            compile_settings = torch_compile_defaults() if static and on_cuda else contextlib.nullcontext()
            with torch.inference_mode(), compile_settings, plain_lora_forward(model, on=static) as plain_layers:
                out = model.generate(**enc, **gen_kwargs, streamer=streamer,
                                     logits_processor=LogitsProcessorList([clock]))
            run_stats["lora_layers_plain"] = plain_layers
        except RuntimeError as e:
            if not is_oom(e):
                raise
            if len(idx) == 1:
                raise RuntimeError(
                    "CUDA out of memory while generating one question at a time: lower infer.max_new_tokens "
                    f"(now {max_new_tokens}) or model.max_seq_length, or load the model in 4-bit "
                    "(model.load_in_4bit=true)"
                ) from e
        if out is None:
            del enc
            free_memory()  # after the OOM exception is gone: its traceback holds the failed batch's tensors
            batch_size = max(1, len(idx) // 2)
            run_stats["oom_retries"] += 1
            print(f"out of memory at batch {len(idx)}: retrying with batch {batch_size} "
                  f"(set infer.batch_size={batch_size} to start there)", flush=True)
            continue
        seconds = time.perf_counter() - t0
        warmup, decode, decode_tokens = clock.split(t0, len(rows))
        run_stats["batches"].append(len(rows))
        run_stats["batch_seconds"].append(round(seconds, 3))
        run_stats["warmup_seconds"].append(round(warmup, 3))
        run_stats["decode_seconds"].append(round(decode, 3))
        run_stats["decode_tokens"].append(decode_tokens)
        stream_pending = stream_pending and not streaming
        new = out[:, enc["input_ids"].shape[1] :]
        for row, i in enumerate(idx):
            ids = new[row].tolist()
            finished = tok.eos_token_id in ids
            if finished:
                ids = ids[: ids.index(tok.eos_token_id)]
            else:
                while ids and ids[-1] == tok.pad_token_id:
                    ids.pop()
            text = tok.decode(ids, skip_special_tokens=True)
            parsed = prompts.split_output(text)
            results[i] = {
                "question": questions[i], "generated": text, "reasoning": parsed.reasoning, "answer": parsed.answer,
                "think_closed": parsed.think_closed, "finished": finished, "new_tokens": len(ids) + int(finished),
                "batch_seconds": round(seconds, 3),
            }
        pos += len(idx)
        if bar:
            bar.update(len(idx))
    if bar:
        bar.close()
    if compile_before is not None:  # how much of the warm-up torch.compile took, and of that what
        run_stats["compile_seconds"] = compile_seconds(compile_before)
    if on_cuda:
        run_stats["peak_gpu_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 2)
        # what the tensors needed at most; reserved also counts blocks the allocator keeps cached after they are freed
        run_stats["peak_gpu_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    if stats is not None:
        stats.update(run_stats)
    return [results[i] for i in range(len(questions))]


def speed(stats: dict[str, Any]) -> dict[str, Any]:
    """`generate`'s `stats` as the two speeds that tell apart a slow start from slow decoding: the warm-up of all
    batches (prefill, first step, compiling), of it torch.compile's part where it compiled, and the decoding
    steps' tokens per second."""
    decode_s = sum(stats.get("decode_seconds") or [])
    compiled = (stats.get("compile_seconds") or {}).get("torch_compile")
    return {"warm-up seconds": round(sum(stats.get("warmup_seconds") or []), 1),
            "of it compiling, seconds": round(compiled, 1) if compiled is not None else None,
            "decoding tokens per second": round(sum(stats.get("decode_tokens") or []) / decode_s, 1) if decode_s
            else None}


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """How a set of generations ended: the share that closed </think>, that reached EOS, mean new tokens."""
    n = len(records)
    return {
        "questions generated": n,
        "share that closed </think>": round(sum(r["think_closed"] for r in records) / n, 3) if n else None,
        "share that reached EOS": round(sum(r["finished"] for r in records) / n, 3) if n else None,
        "share cut at max_new_tokens": round(sum(not r["finished"] for r in records) / n, 3) if n else None,
        "mean new tokens": round(sum(r["new_tokens"] for r in records) / n, 1) if n else None,
    }

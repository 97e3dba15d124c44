"""Batched generation for a list of questions, split into reasoning and answer.

Questions are sorted by prompt length (longest first) and left-padded so one batch wastes little; each
sequence stops at EOS and records whether it did (or was cut at max_new_tokens), which the comparison needs
to be honest about unfinished answers. `stream=True` prints the first question's answer from inside its batch.
A finished row still decodes padding until its whole batch has finished; `r1helpers.inference.plan` sizes the
batch so that every row's KV cache can reach the longest prompt + max_new_tokens.

    python -m r1helpers.pipeline --stages 01
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from r1helpers.core import prompts
from r1helpers.core.hardware import free_memory, headless, is_oom
from r1helpers.inference.plan import GIB, GenerationPlan, kv_cache_bytes_for, order_by_length, plan_generation


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


@dataclass
class GPUMemory:
    total_gib: float  # the GPU's memory, or the cap when one is set
    used_gib: float  # in use now: this process's tensors, the CUDA context, other processes


def gpu_memory(cap_gib: float | None = None) -> GPUMemory | None:
    """This process's GPU: its memory (or `cap_gib`, when smaller) and what is in use now; None without CUDA.
    Blocks torch's caching allocator holds but does not use count as free."""
    import torch

    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    cached = torch.cuda.memory_reserved() - torch.cuda.memory_allocated()
    return GPUMemory(min(total / GIB, cap_gib or total / GIB), max(0.0, (total - free - cached) / GIB))


def plan_for_model(model, tokenizer, questions: list[str], *, max_new_tokens: int, kv_slack_tokens: int = 0,
                   gpu_gib: float | None = None, used_gib: float = 0.0, max_batch: int = 128) -> GenerationPlan:
    """`plan.plan_generation` for this model and these questions: its KV bytes a token, the longest prompt, one
    step's fp32 logits and a prefill estimate per row. `gpu_gib`: the GPU's memory (or a cap; None: no GPU),
    `used_gib`: what is in use now, weights included (`gpu_memory()` measures both).

        plan = plan_for_model(model, tok, questions, max_new_tokens=1200, gpu_gib=15.0, used_gib=6.1)
    """
    cfg = model.config
    longest = max(prompt_lengths(tokenizer, questions), default=0)
    width = 3 * getattr(cfg, "intermediate_size", 4 * cfg.hidden_size) + 4 * cfg.hidden_size
    return plan_generation(len(questions), longest, max_new_tokens, kv_cache_bytes_for(cfg, model.dtype.itemsize),
                           free_gib=gpu_gib, weights_gib=used_gib if gpu_gib is not None else 0.0,
                           logits_bytes_per_row=cfg.vocab_size * 4 * 2, activation_bytes_per_row=longest * width * 2,
                           max_batch=max_batch, kv_slack_tokens=kv_slack_tokens)


class StepClock:
    """A logits processor that notes the time of each decoding step (the scores pass unchanged)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores

    def split(self, t0: float, rows: int) -> tuple[float, float, int]:
        """(seconds until the second step: prefill and first step; seconds of the later steps; tokens those
        later steps produced, pad tokens of finished rows included)."""
        if len(self.times) < 3:
            return (self.times[-1] - t0 if self.times else 0.0), 0.0, 0
        return self.times[1] - t0, self.times[-1] - self.times[1], rows * (len(self.times) - 2)


def generate(model, tokenizer, questions: list[str], *, max_new_tokens: int, batch_size: int = 8,
             do_sample: bool = False, temperature: float = 0.6, top_p: float = 0.95, seed: int = 3407,
             stream: bool = False, progress: bool = True, stats: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Generate an answer to each question from the training prompt; results come back in the input order.

    Each record holds the question, the generated text (what follows the prompt's `<think>`), its reasoning and
    answer (`prompts.split_output`), `think_closed`, `finished` (EOS came; False: cut at `max_new_tokens`),
    `new_tokens` and its batch's seconds. Greedy unless `do_sample`. `stream` prints the first question's answer
    as it is generated (not when headless). `batch_size=0` plans the batch from the GPU's free memory (8 on a
    CPU). A batch that runs out of GPU memory is halved and tried again. `stats`, when given, receives the batch
    sizes and seconds (split into `warmup_seconds` and `decode_seconds` with its `decode_tokens`), the
    out-of-memory retries and the peak GPU memory reserved and allocated.

        records = generate(model, tokenizer, ["What causes scurvy?"], max_new_tokens=1200, batch_size=8)
    """
    import torch
    from transformers import LogitsProcessorList

    tok = tokenizer
    tok.padding_side = "left"
    device = next(model.parameters()).device
    on_cuda = device.type == "cuda"
    if batch_size == 0:
        gpu = gpu_memory() if on_cuda else None
        batch_size = plan_for_model(model, tok, questions, max_new_tokens=max_new_tokens, gpu_gib=gpu and gpu.total_gib,
                                    used_gib=gpu.used_gib if gpu else 0.0).batch_size
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1 (0: plan it), got {batch_size}")
    order = order_by_length(prompt_lengths(tok, questions))
    # the pad is not EOS (`modeling.tokens`), so a row's EOS is told apart from the padding after it
    gen_kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, use_cache=True,
                                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if do_sample:
        gen_kwargs.update(temperature=temperature, top_p=top_p)
    else:
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    run_stats: dict[str, Any] = {"batches": [], "batch_seconds": [], "warmup_seconds": [], "decode_seconds": [],
                                 "decode_tokens": [], "oom_retries": 0}
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    results: dict[int, dict[str, Any]] = {}
    quiet = headless()  # a plain line per batch in a log that cannot redraw a bar
    if progress and not quiet:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(questions), desc="generating", unit="q")
    stream_pending = stream and bool(questions) and not quiet
    pos = 0
    while pos < len(order):
        idx = order[pos : pos + batch_size]
        enc = tok([prompts.build_prompt(questions[i]) for i in idx], return_tensors="pt", padding=True,
                  add_special_tokens=True).to(device)
        streaming = stream_pending and 0 in idx
        streamer = row_streamer(tok, idx.index(0)) if streaming else None
        if streaming:
            print(f"--- streaming the answer to: {questions[0][:120]}", flush=True)
        torch.manual_seed(seed)
        clock = StepClock()
        t0 = time.perf_counter()
        out = None
        try:
            with torch.inference_mode():
                out = model.generate(**enc, **gen_kwargs, streamer=streamer,
                                     logits_processor=LogitsProcessorList([clock]))
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
        for key, value in zip(("batches", "batch_seconds", "warmup_seconds", "decode_seconds", "decode_tokens"),
                              (len(idx), seconds, *clock.split(t0, len(idx)))):
            run_stats[key].append(round(value, 3))
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
        if progress and quiet:
            print(f"generating: {pos}/{len(questions)} questions", flush=True)
        elif progress:
            bar.update(len(idx))
    if progress and not quiet:
        bar.close()
    if on_cuda:
        run_stats["peak_gpu_reserved_gib"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 2)
        run_stats["peak_gpu_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    if stats is not None:
        stats.update(run_stats)
    return [results[i] for i in range(len(questions))]


def speed(stats: dict[str, Any]) -> dict[str, Any]:
    """`generate`'s `stats` as two speeds that tell a slow start from slow decoding: the warm-up of all batches
    (prefill and first step) and the decoding steps' tokens per second."""
    decode_s = sum(stats.get("decode_seconds") or [])
    return {"warm-up seconds": round(sum(stats.get("warmup_seconds") or []), 1),
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

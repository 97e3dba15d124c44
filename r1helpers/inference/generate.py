"""Batched generation for a list of questions, split into reasoning and answer.

Questions are sorted by prompt length and left-padded so one batch wastes little;
each sequence stops at EOS and records whether it did (or was cut at
max_new_tokens), which the comparison needs to be honest about unfinished answers.
With `stream=True` (`infer.stream`), the first question's answer is printed as it is
generated, from inside its batch, so streaming never changes what is generated.

    python -m r1helpers.pipeline --stages 01
"""

from __future__ import annotations

import time
from typing import Any

from r1helpers.core import prompts
from r1helpers.core.hardware import free_memory, is_oom
from r1helpers.core.hardware import headless


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


def generate(model, tokenizer, questions: list[str], *, max_new_tokens: int, batch_size: int = 8,
             do_sample: bool = False, temperature: float = 0.6, top_p: float = 0.95, seed: int = 3407,
             stream: bool = False, progress: bool = True) -> list[dict[str, Any]]:
    """Generate an answer to each question from the training prompt; results come back in the input order.

    Each record holds the question, the generated text (what follows the prompt's `<think>`), its
    reasoning and answer (`prompts.split_output`), `think_closed` (a `</think>` came), `finished`
    (EOS came; False: cut at `max_new_tokens`), `new_tokens` and its batch's seconds. Greedy unless
    `do_sample`; `temperature` and `top_p` apply only when sampling. `stream` prints the first
    question's answer as it is generated (not when headless).

        records = generate(model, tokenizer, ["What causes scurvy?"], max_new_tokens=1200, batch_size=8)
    """
    import torch

    tok = tokenizer
    tok.padding_side = "left"
    device = next(model.parameters()).device
    order = sorted(range(len(questions)), key=lambda i: len(questions[i]), reverse=True)
    results: dict[int, dict[str, Any]] = {}
    gen_kwargs: dict[str, Any] = dict(
        max_new_tokens=max_new_tokens, do_sample=do_sample, use_cache=True,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    if do_sample:
        gen_kwargs.update(temperature=temperature, top_p=top_p)
    else:
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    bar = progress_bar(len(questions), "generating") if progress else None
    stream_pending = stream and bool(questions) and not headless()
    pos = 0
    while pos < len(order):
        idx = order[pos : pos + batch_size]
        batch_prompts = [prompts.build_prompt(questions[i]) for i in idx]
        enc = tok(batch_prompts, return_tensors="pt", padding=True, add_special_tokens=True).to(device)
        streaming = stream_pending and 0 in idx
        streamer = row_streamer(tok, idx.index(0)) if streaming else None
        if streaming:
            print(f"--- streaming the answer to: {questions[0][:120]}", flush=True)
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        out = None
        try:
            with torch.inference_mode():
                out = model.generate(**enc, **gen_kwargs, streamer=streamer)
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
            print(f"out of memory at batch {len(idx)}: retrying with batch {batch_size} "
                  f"(set infer.batch_size={batch_size} to start there)", flush=True)
            continue
        seconds = time.perf_counter() - t0
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
    return [results[i] for i in range(len(questions))]


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

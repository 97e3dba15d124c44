"""Held-out answers scored: teacher-forced NLL of the references, and the generated answers paired per question."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from r1helpers.core import prompts
from r1helpers.evaluate.metrics import score_generation

MODELS = ("base", "tuned")


@dataclass
class Spans:
    """Token ids of one example as trained on, and where its parts lie in them."""

    ids: list[int]
    prompt_length: int
    cot: range
    answer: range

    def clipped(self, max_len: int) -> "Spans":
        """Cut at max_len as the trainer does; a span cut away entirely becomes empty."""
        def clip(r: range) -> range:
            return range(min(r.start, max_len), min(r.stop, max_len))

        return Spans(self.ids[:max_len], min(self.prompt_length, max_len), clip(self.cot), clip(self.answer))


def completion_spans(tokenizer, question: str, cot: str, response: str) -> Spans:
    """Token ids exactly as in training (`prompts.encode_example`), and the reasoning and answer spans in them.

    The spans come from character offsets of that same tokenization; the answer span ends with EOS.
    """
    ids, prompt_len = prompts.encode_example(tokenizer, question, cot, response)
    completion = prompts.build_completion(cot, response)
    cot_text, answer_text = cot.strip(), response.strip()
    cot_start = completion.find(cot_text)
    answer_start = completion.rfind(answer_text)
    char_spans = ((cot_start, cot_start + len(cot_text)), (answer_start, answer_start + len(answer_text)))
    offsets = _completion_offsets(tokenizer, completion, ids[prompt_len:-1])
    cot_tok, answer_tok = ([k for k, (s, e) in enumerate(offsets) if s < hi and e > lo] for lo, hi in char_spans)
    cot_span = range(prompt_len + cot_tok[0], prompt_len + cot_tok[-1] + 1) if cot_tok else range(prompt_len, prompt_len)
    answer_span = range(prompt_len + answer_tok[0] if answer_tok else len(ids) - 1, len(ids))
    return Spans(ids, prompt_len, cot_span, answer_span)


def _completion_offsets(tokenizer, completion: str, expected: list[int]) -> list[tuple[int, int]]:
    """Character span of each completion token; a slow tokenizer falls back to prefix lengths."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(completion, add_special_tokens=False, return_offsets_mapping=True)
        if list(enc["input_ids"]) == list(expected):
            return [tuple(o) for o in enc["offset_mapping"]]
    out, prev = [], 0
    for k in range(1, len(expected) + 1):
        text = tokenizer.decode(expected[:k])
        out.append((prev, len(text)))
        prev = len(text)
    return out


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def completion_nll(model, tokenizer, rows: list[dict[str, Any]], max_len: int) -> list[dict[str, Any]]:
    """Mean NLL per token of each row's reference reasoning, answer and whole completion.

    `rows` are dataset rows (`Question`, `Complex_CoT`, `Response`, `source_row`), cut at `max_len` as in
    training; a span cut away entirely scores None.
    """
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    out = []
    for row in rows:
        sp = completion_spans(tokenizer, row["Question"], row["Complex_CoT"], row["Response"]).clipped(max_len)
        start, end = sp.prompt_length, len(sp.ids)
        x = torch.tensor([sp.ids], device=device)
        with torch.inference_mode():
            logits = model(input_ids=x).logits[0, start - 1 : end - 1].float()
        nll = F.cross_entropy(logits, x[0, start:end], reduction="none").tolist()
        out.append({
            "id": f"eval-{row['source_row']}",
            "cot_nll": _mean(nll[sp.cot.start - start : sp.cot.stop - start]),
            "answer_nll": _mean(nll[sp.answer.start - start : sp.answer.stop - start]),
            "completion_nll": _mean(nll),
            "cot_tokens": len(sp.cot), "answer_tokens": len(sp.answer),
        })
    return out


def teacher_forced(model, tokenizer, rows: list[dict[str, Any]], max_len: int) -> dict[str, list[dict[str, Any]]]:
    """`completion_nll` with the LoRA adapter off (exactly the base model) and on, from one loaded peft model."""
    os.environ.setdefault("UNSLOTH_RETURN_LOGITS", "1")
    with model.disable_adapter():
        base = completion_nll(model, tokenizer, rows, max_len)
    return {"base": base, "tuned": completion_nll(model, tokenizer, rows, max_len)}


def pair_generations(baseline: list[dict], tuned: list[dict]) -> list[tuple[dict, dict]]:
    """Base and fine-tuned records of the same question, in the base order; a mismatch is an error."""
    by_id = {r["id"]: r for r in tuned}
    if set(by_id) != {r["id"] for r in baseline}:
        raise ValueError("base and fine-tuned generations cover different questions; rerun stages 01 and 04")
    pairs = [(b, by_id[b["id"]]) for b in baseline]
    for b, t in pairs:
        if b["question"] != t["question"]:
            raise ValueError(f"{b['id']}: base and fine-tuned were asked different questions")
    return pairs


def question_rows(pairs, nll: dict[str, list[dict]], count_tokens: Callable[[str], int]) -> list[dict[str, Any]]:
    """Per held-out question with a reference: each model's answer, generation scores and NLL."""
    nll_by_id = {m: {r["id"]: r for r in nll.get(m, [])} for m in MODELS}
    rows = []
    for b, t in pairs:
        if b.get("reference_answer") is None:
            continue
        row: dict[str, Any] = {"id": b["id"], "question": b["question"], "reference_answer": b["reference_answer"]}
        for model, rec in zip(MODELS, (b, t)):
            scores = score_generation(rec["generated"], rec["finished"], b["reference_answer"], count_tokens,
                                      rec.get("new_tokens"))
            for key in ("cot_nll", "answer_nll", "completion_nll"):
                scores[key] = nll_by_id[model].get(b["id"], {}).get(key)
            row[model] = {"answer": rec["answer"], "reasoning": rec["reasoning"], "new_tokens": rec["new_tokens"], **scores}
        rows.append(row)
    return rows

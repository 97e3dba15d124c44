"""The dataset authors' evaluation protocol (HuatuoGPT-o1): their prompt, sampled decoding and lenient matcher."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from typing import Any

from r1helpers.evaluate.accuracy import THINK_CLOSE, grade_mcq_generation
from r1helpers.evaluate.metrics import accuracy_summary
from r1helpers.evaluate.more_sets import published_figures

# HuatuoGPT-o1's evaluation (FreedomIntelligence/HuatuoGPT-o1, evaluation/eval.py and scorer.py), as its
# authors describe it: this prompt in the model's own chat template, sampled decoding, a lenient matcher.
PROTOCOL = {
    "source": "HuatuoGPT-o1 evaluation/eval.py and scorer.py (FreedomIntelligence)",
    "prompt": "Please answer the following multiple-choice question:\n{question}\n{options}",
    "do_sample": True, "temperature": 0.5, "top_p": 0.9, "max_new_tokens": 2000,
}
MATCH_RULES = ("answer_is", "letter", "option_text", "most_similar", "empty")
_ANSWER_IS = re.compile(r"answer is\s*\**\s*\(?\s*(?P<L>[A-Z])(?![A-Za-z])", re.IGNORECASE)


def protocol_question(row: dict[str, Any]) -> str:
    """The authors' prompt for one row: the instruction, the question, then "A. text" per option line."""
    options = "\n".join(f"{k}. {v}" for k, v in row["options"].items())
    return PROTOCOL["prompt"].format(question=row["question"], options=options)


def protocol_prompt(tokenizer, row: dict[str, Any]) -> tuple[str, str]:
    """(prompt text, how it was wrapped): `protocol_question` in the tokenizer's chat template, as the authors ran
    it; the recipe's template when the tokenizer has none (the CPU profiles' models)."""
    question = protocol_question(row)
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
        return text, "the tokenizer's chat template"
    from r1helpers.core import prompts

    return prompts.build_prompt(question), "the recipe's prompt template (the tokenizer has no chat template)"


def match_choice_lenient(text: str, options: dict[str, str], pick: str = "first") -> tuple[str | None, str]:
    """The option a generated answer names, as HuatuoGPT-o1's lenient scorer reads it: (letter, rule).

    Written from the authors' description of `scorer.py`; the first rule that finds something decides:
    "answer_is" ("answer is X"), "letter" (a bare option letter, never the article "A"), "option_text"
    (an option's text in the answer), "most_similar" (difflib's ratio: a guess, never unparseable).
    Only the text after the last `</think>` counts; `pick` is "first" or "last" within a rule; "" is (None, "empty").
    """
    if pick not in ("first", "last"):
        raise ValueError(f"pick must be 'first' or 'last', got {pick!r}")
    text = (text or "").rsplit(THINK_CLOSE, 1)[-1].strip()
    if not text or not options:
        return None, "empty"
    letters = list(options)
    choose = (lambda hits: hits[0]) if pick == "first" else (lambda hits: hits[-1])
    hits = [m.group("L").upper() for m in _ANSWER_IS.finditer(text) if m.group("L").upper() in letters]
    if hits:
        return choose(hits), "answer_is"
    bare = re.compile(r"(?:^|(?<=[^A-Za-z0-9]))(?!A )(?P<L>" + "|".join(map(re.escape, letters)) + r")(?=[^A-Za-z0-9]|$)")
    hits = [m.group("L") for m in bare.finditer(text)]
    if hits:
        return choose(hits), "letter"
    low = text.lower()
    found = sorted((low.find(v.lower()) if pick == "first" else low.rfind(v.lower()), k)
                   for k, v in options.items() if v.strip() and v.lower() in low)
    if found:
        return choose(found)[1], "option_text"
    ratios = [(difflib.SequenceMatcher(None, v.lower(), low).ratio(), -i, k) for i, (k, v) in enumerate(options.items())]
    return max(ratios)[2], "most_similar"


def generate_texts(model, tokenizer, texts: Sequence[str], *, max_new_tokens: int, batch_size: int = 0,
                   do_sample: bool = True, temperature: float = 0.5, top_p: float = 0.9,
                   seed: int = 3407) -> list[dict[str, Any]]:
    """Generate from ready-made prompt texts (not the recipe's template), in batches of similar length: per text
    `generated`, `think_closed`, `finished` (EOS came), `new_tokens`. `batch_size` 0 plans it from GPU memory."""
    import torch

    tok = tokenizer
    tok.padding_side = "left"
    device = next(model.parameters()).device
    if batch_size == 0:
        batch_size = 8
        if device.type == "cuda":
            from r1helpers.inference.generate import gpu_memory, plan_for_model

            gpu = gpu_memory()
            batch_size = plan_for_model(model, tok, list(texts), max_new_tokens=max_new_tokens,
                                        gpu_gib=gpu.total_gib, used_gib=gpu.used_gib).batch_size
    order = sorted(range(len(texts)), key=lambda i: -len(tok(texts[i], add_special_tokens=False)["input_ids"]))
    sampling = dict(temperature=temperature, top_p=top_p) if do_sample else dict(temperature=None, top_p=None, top_k=None)
    out: dict[int, dict[str, Any]] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        torch.manual_seed(seed)
        with torch.inference_mode():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=do_sample, use_cache=True,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **sampling)
        for row, i in enumerate(idx):
            ids = gen[row, enc["input_ids"].shape[1]:].tolist()
            finished = tok.eos_token_id in ids
            ids = ids[: ids.index(tok.eos_token_id)] if finished else ids
            while not finished and ids and ids[-1] == tok.pad_token_id:
                ids.pop()
            text = tok.decode(ids, skip_special_tokens=True)
            out[i] = {"generated": text, "think_closed": THINK_CLOSE in text, "finished": finished,
                      "new_tokens": len(ids) + int(finished)}
    return [out[i] for i in range(len(texts))]


def answer_protocol(model, tokenizer, rows: Sequence[dict[str, Any]], *, max_new_tokens: int = PROTOCOL["max_new_tokens"],
                    batch_size: int = 0, seed: int = 3407) -> list[dict[str, Any]]:
    """One model's answers to `rows` under the authors' protocol: per row its id, the prompt's wrapping and the
    generation."""
    wrapped = [protocol_prompt(tokenizer, r) for r in rows]
    gens = generate_texts(model, tokenizer, [w[0] for w in wrapped], max_new_tokens=max_new_tokens,
                          batch_size=batch_size, do_sample=PROTOCOL["do_sample"], temperature=PROTOCOL["temperature"],
                          top_p=PROTOCOL["top_p"], seed=seed)
    return [{"id": r["id"], "wrapped_in": w[1], **g} for r, w, g in zip(rows, wrapped, gens)]


def protocol_before_after(model, tokenizer, rows: Sequence[dict[str, Any]], *, source: str | None,
                          max_new_tokens: int = PROTOCOL["max_new_tokens"], seed: int = 3407) -> dict[str, Any]:
    """`answer_protocol` with the LoRA adapter off (the base model) and on, graded by `protocol_comparison`."""
    with model.disable_adapter():
        base = answer_protocol(model, tokenizer, rows, max_new_tokens=max_new_tokens, seed=seed)
    tuned = answer_protocol(model, tokenizer, rows, max_new_tokens=max_new_tokens, seed=seed)
    return protocol_comparison(rows, base, tuned, source=source, decoding={"max_new_tokens": max_new_tokens, "seed": seed})


def grade_protocol(generated: str, row: dict[str, Any]) -> dict[str, Any]:
    """One protocol answer graded by the authors' lenient matcher and by this project's strict parser."""
    lenient, rule = match_choice_lenient(generated, row["options"])
    strict = grade_mcq_generation(generated, row)
    return {"lenient_letter": lenient, "lenient_rule": rule,
            "lenient_correct": lenient is not None and lenient == row["answer_idx"],
            "strict_letter": strict["letter"], "strict_correct": strict["correct"], "strict_unparsed": strict["unparsed"]}


def protocol_comparison(rows: Sequence[dict[str, Any]], base: Sequence[dict[str, Any]], tuned: Sequence[dict[str, Any]],
                        source: str | None = None, decoding: dict[str, Any] | None = None) -> dict[str, Any]:
    """Accuracy before and after under the authors' protocol, read by their lenient matcher (with the count of
    answers each rule decided) and by the strict parser, beside the published figures for the set `source` is."""
    rows = list(rows)
    if not (len(rows) == len(base) == len(tuned)) or any(not (r["id"] == b["id"] == t["id"])
                                                         for r, b, t in zip(rows, base, tuned)):
        raise ValueError("protocol answers are for other questions, or in another order, than the rows")
    items = [{"id": r["id"], "gold": r["answer_idx"],
              **{side: {"generated": rec["generated"], "finished": bool(rec.get("finished")),
                        "think_closed": bool(rec.get("think_closed")), "new_tokens": rec.get("new_tokens"),
                        **grade_protocol(rec["generated"], r)} for side, rec in (("base", b), ("tuned", t))}}
             for r, b, t in zip(rows, base, tuned)]
    if not items:
        return {"n": 0, "scorings": {}, "items": [], "published": []}

    def col(side: str, key: str) -> list:
        return [it[side][key] for it in items]

    lenient = accuracy_summary(col("base", "lenient_correct"), col("tuned", "lenient_correct"),
                               col("base", "lenient_rule").count("empty"), col("tuned", "lenient_rule").count("empty"))
    for side, s in (("before", "base"), ("after", "tuned")):
        lenient[side]["matched_by"] = {rule: col(s, "lenient_rule").count(rule) for rule in MATCH_RULES}
    strict = accuracy_summary(col("base", "strict_correct"), col("tuned", "strict_correct"),
                              sum(col("base", "strict_unparsed")), sum(col("tuned", "strict_unparsed")))
    return {"n": len(items), "protocol": {**PROTOCOL, **(decoding or {})},
            "wrapped_in": sorted({rec.get("wrapped_in") for rec in base if rec.get("wrapped_in")}),
            "scorings": {"lenient": {"label": "HuatuoGPT-o1's lenient matcher (answer is X, a bare letter, the option "
                                              "text, else the most similar option)", **lenient},
                         "strict": {"label": "this project's strict parser (letter stated after </think>)", **strict}},
            "published": published_figures(source), "items": items}

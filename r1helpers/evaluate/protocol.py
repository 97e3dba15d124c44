"""The dataset authors' evaluation protocol (HuatuoGPT-o1): their prompt, sampled decoding and lenient matcher."""

from __future__ import annotations

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


def protocol_question(row: dict[str, Any]) -> str:
    """The authors' prompt for one row: the instruction, the question, then "A. text" per option line."""
    options = "\n".join(f"{k}. {v}" for k, v in row["options"].items())
    return PROTOCOL["prompt"].format(question=row["question"], options=options)


def protocol_prompt(tokenizer, row: dict[str, Any]) -> tuple[str, str]:
    """(text the model is given, how it was wrapped): `protocol_question` in the tokenizer's own chat template
    (one user turn, generation prompt added), as the authors ran it; the recipe's template when the tokenizer
    has none (the CPU profiles' models)."""
    question = protocol_question(row)
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                             add_generation_prompt=True)
        return text, "the tokenizer's chat template"
    from r1helpers.core import prompts

    return prompts.build_prompt(question), "the recipe's prompt template (the tokenizer has no chat template)"


_ANSWER_IS = re.compile(r"answer is\s*\**\s*\(?\s*(?P<L>[A-Z])(?![A-Za-z])", re.IGNORECASE)


def _bare_letter(letters: Sequence[str]) -> re.Pattern:
    L = "|".join(re.escape(x) for x in letters)
    # an option letter standing alone: after the start, a space, punctuation, "*", "(" or "#", before a non-word
    # character or the end; never the article "A " / "a "
    return re.compile(r"(?:^|(?<=[^A-Za-z0-9]))(?!A )(?P<L>" + L + r")(?=[^A-Za-z0-9]|$)")


def match_choice_lenient(text: str, options: dict[str, str], pick: str = "first") -> tuple[str | None, str]:
    """The option a generated answer names, read as HuatuoGPT-o1's lenient scorer reads it: (letter, rule).

    Implemented from the authors' description of `scorer.py` (their code was not available here),
    the rules in order, the first that finds something deciding:
      1. "answer_is": an "answer is X" statement (any case, "**", "(" allowed before the letter);
      2. "letter": a bare option letter standing alone ("B", "(B)", "B.", "**B**"), not the article "A";
      3. "option_text": an option's text found in the answer (lower case);
      4. "most_similar": the option whose text is most similar to the answer (difflib's ratio):
         never unparseable, so this rule's count says how many answers were guesses.
    Only the final response counts when the reasoning is closed (the text after the last `</think>`),
    as the authors' scorer keeps only the final response of a reasoning model. `pick`: "first" or "last"
    match within a rule. An empty text is (None, "empty").
    """
    if pick not in ("first", "last"):
        raise ValueError(f"pick must be 'first' or 'last', got {pick!r}")
    text = (text or "").rsplit(THINK_CLOSE, 1)[-1].strip()
    if not text or not options:
        return None, "empty"
    letters = [k for k in options]
    choose = (lambda hits: hits[0]) if pick == "first" else (lambda hits: hits[-1])
    hits = [m.group("L").upper() for m in _ANSWER_IS.finditer(text) if m.group("L").upper() in letters]
    if hits:
        return choose(hits), "answer_is"
    hits = [m.group("L") for m in _bare_letter(letters).finditer(text)]
    if hits:
        return choose(hits), "letter"
    low = text.lower()
    found = sorted((low.find(v.lower()) if pick == "first" else low.rfind(v.lower()), k)
                   for k, v in options.items() if v.strip() and v.lower() in low)
    if found:
        return (found[0] if pick == "first" else found[-1])[1], "option_text"
    import difflib

    ratios = [(difflib.SequenceMatcher(None, v.lower(), low).ratio(), -i, k) for i, (k, v) in enumerate(options.items())]
    return max(ratios)[2], "most_similar"


def generate_texts(model, tokenizer, texts: Sequence[str], *, max_new_tokens: int, batch_size: int = 0,
                   do_sample: bool = True, temperature: float = 0.5, top_p: float = 0.9,
                   seed: int = 3407) -> list[dict[str, Any]]:
    """Generate from ready-made prompt texts (not the recipe's template): per text `generated`,
    `think_closed`, `finished` (EOS came), `new_tokens`, in the input order. Batches of similar length,
    left-padded; `batch_size` 0 plans the batch from the GPU's free memory (8 on a CPU)."""
    import torch

    tok = tokenizer
    tok.padding_side = "left"
    device = next(model.parameters()).device
    lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    if batch_size == 0:
        batch_size = 8
        if device.type == "cuda":
            from r1helpers.inference.generate import gpu_memory, plan_for_model

            gpu = gpu_memory()
            batch_size = plan_for_model(model, tok, list(texts), max_new_tokens=max_new_tokens,
                                        gpu_gib=gpu.total_gib, used_gib=gpu.used_gib).batch_size
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
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
    """One model's answers to `rows` under the authors' protocol (`PROTOCOL`: their prompt in the chat
    template, temperature 0.5, top_p 0.9), per row its id, the prompt's wrapping and the generation."""
    wrapped = [protocol_prompt(tokenizer, r) for r in rows]
    gens = generate_texts(model, tokenizer, [w[0] for w in wrapped], max_new_tokens=max_new_tokens,
                          batch_size=batch_size, do_sample=PROTOCOL["do_sample"], temperature=PROTOCOL["temperature"],
                          top_p=PROTOCOL["top_p"], seed=seed)
    return [{"id": r["id"], "wrapped_in": w[1], **g} for r, w, g in zip(rows, wrapped, gens)]


def answer_protocol_before_after(model, tokenizer, rows: Sequence[dict[str, Any]], **kwargs) -> dict[str, list]:
    """`answer_protocol` with the LoRA adapter off (the base model) and on, from one loaded peft model."""
    with model.disable_adapter():
        base = answer_protocol(model, tokenizer, rows, **kwargs)
    return {"base": base, "tuned": answer_protocol(model, tokenizer, rows, **kwargs)}


MATCH_RULES = ("answer_is", "letter", "option_text", "most_similar", "empty")


def grade_protocol(generated: str, row: dict[str, Any]) -> dict[str, Any]:
    """One protocol answer graded two ways: the authors' lenient matcher (`match_choice_lenient`) and this
    project's strict parser (`parse_answer_letter`: the letter stated after `</think>`; else an answer that is
    exactly one option's text)."""
    lenient, rule = match_choice_lenient(generated, row["options"])
    strict = grade_mcq_generation(generated, row)
    return {"lenient_letter": lenient, "lenient_rule": rule,
            "lenient_correct": lenient is not None and lenient == row["answer_idx"],
            "strict_letter": strict["letter"], "strict_correct": strict["correct"], "strict_unparsed": strict["unparsed"]}


def protocol_comparison(rows: Sequence[dict[str, Any]], base: Sequence[dict[str, Any]], tuned: Sequence[dict[str, Any]],
                        source: str | None = None, decoding: dict[str, Any] | None = None) -> dict[str, Any]:
    """Accuracy before and after under the authors' protocol, read by their lenient matcher and by the strict
    parser (`accuracy_summary` of each, unparseable counts beside both: the lenient matcher's "empty" answers and
    its "most_similar" guesses), with the published figures for the set `source` is, cited as reported."""
    rows = list(rows)
    if not (len(rows) == len(base) == len(tuned)) or any(not (r["id"] == b["id"] == t["id"])
                                                         for r, b, t in zip(rows, base, tuned)):
        raise ValueError("protocol answers are for other questions, or in another order, than the rows")
    items = []
    for r, b, t in zip(rows, base, tuned):
        item = {"id": r["id"], "gold": r["answer_idx"]}
        for side, rec in (("base", b), ("tuned", t)):
            item[side] = {"generated": rec["generated"], "finished": bool(rec.get("finished")),
                          "think_closed": bool(rec.get("think_closed")), "new_tokens": rec.get("new_tokens"),
                          **grade_protocol(rec["generated"], r)}
        items.append(item)
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

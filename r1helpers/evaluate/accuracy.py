"""Multiple-choice accuracy before and after fine-tuning: by option likelihood and by the letter stated after
`</think>` (read strictly, and leniently anywhere). Unparseable answers are COUNTED AS WRONG, never dropped;
the statistics are `metrics.accuracy_summary`'s.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

from r1helpers.evaluate.metrics import accuracy_summary
from r1helpers.evaluate.questions import SAMPLE_MCQ, load_mcq_rows, normalise_text, sample_mcq_path  # noqa: F401

THINK_CLOSE = "</think>"
# ---- prompts ------------------------------------------------------------------------------------

def _letters_phrase(letters: Sequence[str]) -> str:
    letters = list(letters)
    return letters[0] if len(letters) == 1 else ", ".join(letters[:-1]) + f" or {letters[-1]}"


def mcq_prompt(question: str, options: dict[str, str]) -> str:
    """The question, its lettered options one per line, and a line asking for the letter (not yet in the template)."""
    lines = [question.strip(), ""]
    lines += [f"{letter}. {str(text).strip()}" for letter, text in options.items()]
    lines += ["", f"Answer with the letter of the correct option ({_letters_phrase(list(options))})."]
    return "\n".join(lines)


# ---- reading the stated letter ------------------------------------------------------------------

def _letter_group(letters: Sequence[str]) -> str:
    return "(?P<L>" + "|".join(re.escape(x) for x in sorted(letters, key=len, reverse=True)) + ")"


def _patterns(letters: Sequence[str]) -> tuple[list[re.Pattern], list[re.Pattern]]:
    L = _letter_group(letters)
    end = r"(?![A-Za-z0-9])"
    # Letters are matched upper-case only, so the article "a" is never read as option A.
    boxed = r"[\(\[]?\s*\**\s*" + L + r"\s*\**\s*[\)\]]?" + end
    explicit = [
        re.compile(r"(?i:\banswer\b|\b(?:correct|best|right)\s+(?:option|choice)\b)"
                   r"\s*\**\s*(?i:is|would\s+be|should\s+be|will\s+be)?\s*\**\s*[:=\-]?\s*\**\s*"
                   r"(?i:option\s+|choice\s+)?" + boxed),
    ]
    standalone = [
        re.compile(r"(?i:\b(?:option|choice)\s+)" + r"[\(\[]?" + L + end),                     # option B
        re.compile(r"\(\s*" + L + r"\s*\)|\[\s*" + L.replace("?P<L>", "?P<L2>") + r"\s*\]"),   # (B) [B]
        re.compile(r"\*\*\s*" + L + r"\s*[.):]?\s*\*\*"),                                      # **B**
        re.compile(r"(?m)^[ \t>#*\-]*" + L + r"(?=[ \t]*$|[.):,*]|[ \t]+[-\u2013:])"),        # B / B. text / B) text
        re.compile(r"(?<![A-Za-z0-9])" + L + r"(?=\s+is\s+(?:the\s+)?(?:correct|right|best|answer)\b)"),
    ]
    return explicit, standalone


def _hits(patterns: list[re.Pattern], text: str) -> list[tuple[int, str]]:
    """(position, letter) of every match of the patterns, in text order."""
    hits = [(m.start(), m.groupdict().get("L") or m.groupdict().get("L2")) for pat in patterns for m in pat.finditer(text)]
    return sorted(h for h in hits if h[1])


def _first(patterns: list[re.Pattern], text: str) -> str | None:
    hits = _hits(patterns, text)
    return hits[0][1] if hits else None


def _last(patterns: list[re.Pattern], text: str) -> str | None:
    hits = _hits(patterns, text)
    return hits[-1][1] if hits else None


def parse_answer_letter(generated: str, letters: Sequence[str], think_close: str | None = THINK_CLOSE) -> str | None:
    """The option letter stated after the last `think_close` (None if it never came; think_close=None reads all).

    Forms: "B", "(B)", "B.", "B) text", "**B**", "option B", "Answer: B", "The answer is B", "B is correct",
    upper-case only; the first explicit "answer is X" wins, else the first standalone letter. None is unparseable.
    """
    if not generated or not letters:
        return None
    if think_close:
        if think_close not in generated:
            return None
        generated = generated.rsplit(think_close, 1)[1]
    explicit, standalone = _patterns([str(x) for x in letters])
    return _first(explicit, generated) or _first(standalone, generated)


def parse_lenient_letter(generated: str, letters: Sequence[str]) -> str | None:
    """The option letter stated anywhere in the text, reasoning included: the last explicit "answer is X", else
    the last standalone form, else the last bare letter (not the article "A"); or None."""
    if not generated or not letters:
        return None
    letters = [str(x) for x in letters]
    explicit, standalone = _patterns(letters)
    bare = re.compile(r"(?<![A-Za-z0-9])(?!A [a-z])" + _letter_group(letters) + r"(?![A-Za-z0-9])")
    return _last(explicit, generated) or _last(standalone, generated) or _last([bare], generated)


# ---- likelihood of each option ------------------------------------------------------------------

def option_loglikelihoods(model, tokenizer, prompt: str, options: dict[str, str], normalize: str = "mean",
                          template: str = " {text}") -> dict[str, dict[str, float]]:
    """Teacher-forced log-likelihood of each option's `template` text after `prompt`, in one right-padded batch.

    The default " {text}" scores the option's words only, not the model's liking for a letter. Returns
    {"sum": {letter: log-prob}, "mean": {letter: per-token mean}, "tokens": {letter: count}}.
    """
    import torch
    from torch.nn.utils.rnn import pad_sequence

    if normalize not in ("sum", "mean"):
        raise ValueError(f"normalize must be 'sum' or 'mean', got {normalize!r}")
    if not options:
        raise ValueError("no options to score")
    prompt_ids = list(tokenizer(prompt, add_special_tokens=True)["input_ids"])
    if not prompt_ids:
        raise ValueError("the prompt encodes to no tokens, so the first option token has nothing to follow")
    letters = list(options)
    conts = []
    for letter in letters:
        ids = list(tokenizer(template.format(letter=letter, text=options[letter]), add_special_tokens=False)["input_ids"])
        if not ids:
            raise ValueError(f"option {letter} encodes to no tokens; it cannot be scored")
        conts.append(ids)

    pad_id = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
    seqs = [torch.tensor(prompt_ids + c) for c in conts]
    device = getattr(model, "device", None) or next(model.parameters()).device
    input_ids = pad_sequence(seqs, batch_first=True, padding_value=pad_id).to(device)  # right-padded
    mask = pad_sequence([torch.ones(len(x), dtype=torch.long) for x in seqs], batch_first=True).to(device)

    # Only the positions that predict option tokens need logits (a 128k vocabulary is large).
    p = len(prompt_ids)
    keep = input_ids.shape[1] - p + 1
    os.environ.setdefault("UNSLOTH_RETURN_LOGITS", "1")  # Unsloth returns no logits otherwise (as in compare.py)
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        with torch.inference_mode():
            try:
                logits = model(input_ids=input_ids, attention_mask=mask, logits_to_keep=keep).logits
            except TypeError:
                logits = model(input_ids=input_ids, attention_mask=mask).logits
            logits = logits[:, -keep:].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            sums, means, counts = {}, {}, {}
            for i, (letter, c) in enumerate(zip(letters, conts)):
                # kept position j is absolute position p-1+j and predicts token p+j
                target = input_ids[i, p : p + len(c)]
                total = logprobs[i, : len(c)].gather(-1, target.unsqueeze(-1)).sum().item()
                sums[letter], means[letter], counts[letter] = total, total / len(c), len(c)
    finally:
        if was_training:
            model.train()
    return {"sum": sums, "mean": means, "tokens": counts}


def best_letter(scores: dict[str, float]) -> str:
    """The letter with the highest score; ties go to the earliest letter."""
    return max(scores, key=lambda k: (scores[k], -list(scores).index(k)))


# ---- free-text answers --------------------------------------------------------------------------

def exact_match(pred: str | None, gold: str) -> bool:
    """Whether the answers are equal after `normalise_text`; a missing prediction is wrong."""
    return pred is not None and normalise_text(pred) == normalise_text(gold)


# ---- both models on one multiple-choice set -----------------------------------------------------

def mcq_question(row: dict[str, Any]) -> str:
    """What goes where the recipe puts the question: `mcq_prompt` of the row."""
    return mcq_prompt(row["question"], row["options"])


def option_from_text(answer: str, options: dict[str, str]) -> str | None:
    """The letter of the option whose text the answer is (after `normalise_text`); None if none or several."""
    said = normalise_text(answer)
    hits = [k for k, v in options.items() if said and normalise_text(v) == said]
    return hits[0] if len(hits) == 1 else None


def grade_mcq_generation(generated: str, row: dict[str, Any], think_close: str | None = THINK_CLOSE) -> dict[str, Any]:
    """How one generated answer to a multiple-choice row is scored.

    The letter is `parse_answer_letter`'s, else the option whose whole text the answer is; `unparsed` answers are
    wrong, never dropped. `lenient_letter` is that letter, else `parse_lenient_letter` of the whole text.
    """
    generated = generated or ""
    if think_close:
        answer = generated.rsplit(think_close, 1)[1] if think_close in generated else ""
    else:
        answer = generated
    letter = parse_answer_letter(generated, list(row["options"]), think_close)
    by = "letter" if letter else None
    if letter is None and answer.strip():
        letter = option_from_text(answer, row["options"])
        by = "text" if letter else None
    lenient = letter or parse_lenient_letter(generated, list(row["options"]))
    return {"letter": letter, "by": by, "correct": letter is not None and letter == row["answer_idx"],
            "unparsed": letter is None, "exact_match": bool(answer.strip()) and exact_match(answer, row["answer"]),
            "lenient_letter": lenient, "lenient_correct": lenient is not None and lenient == row["answer_idx"]}


# What a generated answer to a multiple-choice row carries (from `inference.generate.generate`'s records).
GENERATED_FIELDS = ("generated", "think_closed", "finished", "new_tokens")


def answer_mcq(model, tokenizer, rows: Sequence[dict[str, Any]], *, decoding: dict[str, Any] | None = None,
               normalize: str = "mean", generate_rows: int | None = None) -> list[dict[str, Any]]:
    """One model's answers to multiple-choice rows, in their order: `likelihood_letter` (the most probable option
    after the recipe's prompt) with its scores; with `decoding` (`inference.generate.generate`'s keyword arguments)
    also a generated answer to the first `generate_rows` rows. `mcq_comparison` grades them."""
    from r1helpers.core import prompts

    out = []
    for row in rows:
        prompt = prompts.build_prompt(mcq_question(row))
        scores = option_loglikelihoods(model, tokenizer, prompt, row["options"], normalize=normalize)
        out.append({"id": row["id"], "likelihood_letter": best_letter(scores[normalize]),
                    "likelihood_scores": {k: round(v, 5) for k, v in scores[normalize].items()}})
    asked = list(rows)[:generate_rows] if generate_rows else list(rows)
    if decoding is not None and asked:
        from r1helpers.inference.generate import generate

        records = generate(model, tokenizer, [mcq_question(r) for r in asked], **decoding)
        for rec, g in zip(out, records):
            rec.update({k: g[k] for k in GENERATED_FIELDS})
    return out


def attach_generations(answers: Sequence[dict[str, Any]], generated: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """`answer_mcq` results (likelihood only) joined with generated answers made elsewhere, for their first
    questions in the same order."""
    if [a["id"] for a in answers[: len(generated)]] != [g["id"] for g in generated]:
        raise ValueError("the generated answers are for other questions, or in another order, than the scored ones")
    return [{**a, **{k: g[k] for k in GENERATED_FIELDS}} for a, g in zip(answers, generated)] + list(answers[len(generated):])


def answer_mcq_before_after(model, tokenizer, rows: Sequence[dict[str, Any]], *,
                            decoding: dict[str, Any] | None = None, normalize: str = "mean",
                            generate_rows: int | None = None) -> dict[str, list]:
    """`answer_mcq` with the LoRA adapter off (exactly the base model) and on, from one loaded peft model."""
    os.environ.setdefault("UNSLOTH_RETURN_LOGITS", "1")
    with model.disable_adapter():
        base = answer_mcq(model, tokenizer, rows, decoding=decoding, normalize=normalize, generate_rows=generate_rows)
    return {"base": base, "tuned": answer_mcq(model, tokenizer, rows, decoding=decoding, normalize=normalize,
                                              generate_rows=generate_rows)}


SCORINGS = {
    "likelihood": "most probable option text after the prompt (log-likelihood, no generation)",
    "generated": "letter stated after </think> in a generated answer (unparseable counted wrong)",
}
LENIENT = "letter stated anywhere in the generated answer, reasoning included (lenient read)"


def judge_reads(strict: dict[str, Any], lenient: dict[str, Any]) -> str:
    """The stated-letter verdict: a significant strict change that the lenient read does not show the same way is a
    "format change" (the model changed whether it closes </think> and states a letter, not what it knows)."""
    if strict["verdict"] in ("better", "worse") and lenient["verdict"] != strict["verdict"]:
        return "format change"
    return strict["verdict"]


def _graded_item(r: dict[str, Any], b: dict[str, Any], t: dict[str, Any]) -> dict[str, Any]:
    item = {"id": r["id"], "question": r["question"], "options": r["options"], "gold": r["answer_idx"],
            "answer": r["answer"]}
    for side, rec in (("base", b), ("tuned", t)):
        entry = {"likelihood_letter": rec["likelihood_letter"],
                 "likelihood_correct": rec["likelihood_letter"] == r["answer_idx"],
                 "likelihood_scores": rec.get("likelihood_scores")}
        if rec.get("generated") is not None:
            entry.update(generated=rec["generated"], think_closed=bool(rec.get("think_closed")),
                         finished=bool(rec.get("finished")), new_tokens=rec.get("new_tokens"),
                         **{f"generated_{k}": v for k, v in grade_mcq_generation(rec["generated"], r).items()})
        item[side] = entry
    return item


def mcq_comparison(rows: Sequence[dict[str, Any]], base: Sequence[dict[str, Any]],
                   tuned: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """`accuracy_summary` per scoring of `answer_mcq` results for `rows`: {"n", "scorings": {"likelihood",
    "generated" (its own n: the questions answered by generation; with its "lenient" read and `judge_reads`'s
    verdict) or None}, "items"}."""
    rows = list(rows)
    if not (len(rows) == len(base) == len(tuned)):
        raise ValueError(f"{len(rows)} questions but {len(base)} base and {len(tuned)} fine-tuned answers; "
                         "answer every question with both models")
    for r, b, t in zip(rows, base, tuned):
        if not (r["id"] == b["id"] == t["id"]):
            raise ValueError(f"question {r['id']}: answers are for {b['id']} and {t['id']}; keep the rows' order")
    items = [_graded_item(r, b, t) for r, b, t in zip(rows, base, tuned)]

    generated_items = [it for it in items if all("generated_correct" in it[s] for s in ("base", "tuned"))]

    def column(side: str, field: str) -> list:
        return [it[side][field] for it in (generated_items if field.startswith("generated") or field in (
            "think_closed", "finished") else items)]

    scorings: dict[str, Any] = {"likelihood": None, "generated": None}
    if items:
        scorings["likelihood"] = {"label": SCORINGS["likelihood"], **accuracy_summary(
            column("base", "likelihood_correct"), column("tuned", "likelihood_correct"))}
    if generated_items:
        summary = accuracy_summary(column("base", "generated_correct"), column("tuned", "generated_correct"),
                                   sum(column("base", "generated_unparsed")), sum(column("tuned", "generated_unparsed")))
        for side, s in (("before", "base"), ("after", "tuned")):
            summary[side].update(by_text=column(s, "generated_by").count("text"),
                                 exact_match=sum(column(s, "generated_exact_match")),
                                 think_closed=sum(column(s, "think_closed")), eos=sum(column(s, "finished")))
        lenient = {"label": LENIENT, **accuracy_summary(column("base", "generated_lenient_correct"),
                                                        column("tuned", "generated_lenient_correct"))}
        scorings["generated"] = {"label": SCORINGS["generated"], **summary, "strict_verdict": summary["verdict"],
                                 "verdict": judge_reads(summary, lenient), "lenient": lenient}
    return {"n": len(items), "scorings": scorings, "items": items}

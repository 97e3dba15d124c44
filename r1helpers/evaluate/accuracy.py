"""Multiple-choice accuracy before and after fine-tuning, with honest error bars.

Why: the free-text comparison (ROUGE, NLL, similarity) says whether answers look
more like the references; it does not say whether the model picks the right
answer more often. A multiple-choice set such as MedQA-USMLE does, and it has one
gold letter per question, so accuracy can be compared question by question.

How it is used (plain functions, plain values; torch and datasets are imported
only inside the functions that need them):

    from r1helpers.core import prompts        # the recipe's template: prompts.build_prompt
    from r1helpers.evaluate import accuracy as acc

    rows = acc.load_mcq_rows("GBaker/MedQA-USMLE-4-options", split="test", limit=200)
    # or the bundled sample: acc.load_mcq_rows(acc.sample_mcq_path())

    # 1. Generation: the model reasons, closes </think>, then states a letter.
    prompt = prompts.build_prompt(acc.format_question(row["question"], row["options"]))
    letter = acc.parse_answer_letter(generated_text, list(row["options"]))
    correct = letter == row["answer_idx"]          # None (unparseable) counts as wrong

    # 2. Likelihood: no generation; the option the model finds most probable.
    letter = acc.predict_by_likelihood(model, tokenizer, prompt, row["options"])

    summary = acc.accuracy_summary(before_correct, after_correct, before_unparsed, after_unparsed)
    summary["verdict"]   # "better", "worse" or "no clear change"

Unparseable answers (no closed </think>, or no letter that can be read after it)
are COUNTED AS WRONG, never dropped: dropping them would reward a model for
failing to answer, and the two models would no longer be scored on the same
questions. Their numbers are reported next to the accuracies so a change in
format is not mistaken for a change in knowledge.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import string
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

THINK_CLOSE = "</think>"
LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
# compare.mcq_source's name for the bundled sample (as data.source's "r1helpers/sample").
SAMPLE_MCQ = "r1helpers/sample-mcq"


# ---- loading ------------------------------------------------------------------------------------

def sample_mcq_path() -> Path:
    """The bundled 24-question sample (hand-written vignettes in the MedQA-USMLE schema)."""
    return Path(str(resources.files("r1helpers") / "assets" / "sample_mcq.jsonl"))


def _read_local(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(row label, row) per row of a .jsonl, .json or .parquet file."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return [(f"row {i}", r) for i, r in enumerate(pq.read_table(path).to_pylist(), start=1)]
    text = path.read_text(encoding="utf-8-sig")
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            data = None  # many ".json" files are JSON lines
        if data is not None:
            if isinstance(data, dict):
                lists = [v for v in data.values() if isinstance(v, list)]
                if len(lists) != 1:
                    raise ValueError(f"{path}: expected a JSON list of question objects, or an object holding "
                                     "exactly one such list; found an object with "
                                     f"{len(lists)} lists. Save the questions as a list or as JSON lines.")
                data = lists[0]
            if not isinstance(data, list):
                raise ValueError(f"{path}: expected a JSON list of question objects; save the questions as a "
                                 "list or as JSON lines (one object per line).")
            return [(f"row {i}", r) for i, r in enumerate(data, start=1)]
    out, n = [], 0
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        n += 1
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: row {n} (line {line_no}) is not valid JSON ({e.msg}); fix or delete "
                             "that line so every line holds one question object.") from None
        out.append((f"row {n} (line {line_no})", row))
    return out


def _options(raw: Any, bad) -> dict[str, str]:
    """Options as {letter: text}, from a dict, a list of {"key", "value"} records or a list of texts."""
    if isinstance(raw, dict):
        pairs = list(raw.items())
    elif isinstance(raw, (list, tuple)) and raw and all(isinstance(o, dict) for o in raw):
        if not all("key" in o and "value" in o for o in raw):
            bad("options", "is a list of records but not every record has a 'key' and a 'value'",
                'give each option as {"key": "A", "value": "<text>"}, or give options as {"A": "<text>", ...}')
        pairs = [(o["key"], o["value"]) for o in raw]
    elif isinstance(raw, (list, tuple)) and raw and all(isinstance(o, str) for o in raw):
        pairs = list(zip(string.ascii_uppercase, raw))
    else:
        bad("options", f"is {type(raw).__name__} {str(raw)[:60]!r}, not a mapping of letters to option texts",
            'give options as {"A": "<text>", "B": "<text>", ...} or as a list of {"key", "value"} records')
    out: dict[str, str] = {}
    for key, value in pairs:
        letter = str(key).strip().upper()
        if len(letter) != 1 or letter not in string.ascii_uppercase:
            bad("options", f"has the key {key!r}, which is not a single letter A-Z",
                "key every option by its letter (A, B, C, ...)")
        if letter in out:
            bad("options", f"has the letter {letter} twice", "give each option its own letter")
        if not isinstance(value, str) or not value.strip():
            bad("options", f"has no text for option {letter}", f"write the text of option {letter} or remove it")
        out[letter] = value.strip()
    if len(out) < 2:
        bad("options", f"has {len(out)} option(s)", "give at least two options")
    return dict(sorted(out.items()))


def _normalise_row(row: Any, label: str, where: str, default_id: str) -> dict[str, Any]:
    def bad(fld: str, problem: str, fix: str):
        raise ValueError(f"{where}, {label}: field '{fld}' {problem}; {fix}.")

    if not isinstance(row, dict):
        raise ValueError(f"{where}, {label}: is {type(row).__name__}, not a question object; give each row as "
                         '{"question": ..., "options": {"A": ..., ...}, "answer_idx": "A", "answer": ...}.')
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        bad("question", "is missing or empty", "write the question text in a 'question' field")
    if "options" not in row:
        bad("options", "is missing", 'add options as {"A": "<text>", "B": "<text>", ...}')
    options = _options(row["options"], bad)
    letters = ", ".join(options)

    gold = row.get("answer_idx")
    answer = row.get("answer")
    if gold is None or (isinstance(gold, str) and not gold.strip()):
        matches = [k for k, v in options.items() if isinstance(answer, str) and normalise_text(v) == normalise_text(answer)]
        if len(matches) != 1:
            bad("answer_idx", "is missing and the 'answer' text does not match exactly one option",
                f"add the gold letter (one of {letters}) as 'answer_idx'")
        gold = matches[0]
    if not isinstance(gold, str):
        bad("answer_idx", f"is {gold!r} ({type(gold).__name__}), not a letter",
            f"give the gold option's letter as a string, one of {letters}")
    gold = gold.strip().upper()
    if gold not in options:
        bad("answer_idx", f"is {gold!r} but the options are {letters}",
            f"correct the gold letter to one of {letters}, or add option {gold} to that row")
    if answer is None:
        answer = options[gold]
    elif not isinstance(answer, str) or normalise_text(answer) != normalise_text(options[gold]):
        bad("answer", f"is {str(answer)[:60]!r} but option {gold} reads {options[gold][:60]!r}",
            "make 'answer' the text of the gold option, or correct 'answer_idx' to the letter of that text")
    rid = row.get("id")
    return {"id": str(rid) if rid not in (None, "") else default_id, "question": question.strip(),
            "options": options, "answer_idx": gold, "answer": answer.strip()}


def load_mcq_rows(source: str | os.PathLike, split: str = "test", limit: int | None = None) -> list[dict[str, Any]]:
    """Multiple-choice questions as {"id", "question", "options": {letter: text}, "answer_idx", "answer"}.

    `source` is a local .jsonl, .json or .parquet file (`split` is then ignored),
    "r1helpers/sample-mcq" (the bundled 24-question sample), or
    a Hub dataset id read with `datasets.load_dataset(source, split=split)`, e.g.
    "GBaker/MedQA-USMLE-4-options". Options may be a dict of letter -> text, a list
    of {"key", "value"} records (as some MedQA copies on the Hub store them), or a
    list of texts (lettered A, B, ...). `limit` keeps the first rows. A row that
    cannot be scored raises ValueError naming the file, the row and the field.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be None or >= 0, got {limit}")
    if str(source) == SAMPLE_MCQ:
        source = sample_mcq_path()
    path = Path(source).expanduser()
    if path.suffix.lower() in LOCAL_SUFFIXES or path.is_file():
        if not path.is_file():
            raise ValueError(f"{path}: no such file; check the path (relative paths start at {Path.cwd()}).")
        if path.suffix.lower() not in LOCAL_SUFFIXES:
            raise ValueError(f"{path}: unsupported file type '{path.suffix}'; save the questions as "
                             ".jsonl, .json or .parquet.")
        raw = _read_local(path)
        if limit is not None:
            raw = raw[:limit]
        where = str(path)
        return [_normalise_row(r, label, where, f"{path.stem}-{i}") for i, (label, r) in enumerate(raw, start=1)]

    from datasets import load_dataset  # never reached in the offline tests

    ds = load_dataset(str(source), split=split)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    where = f"Hub dataset {source} (split {split})"
    return [_normalise_row(dict(r), f"row {i}", where, f"{split}-{i}") for i, r in enumerate(ds, start=1)]


# ---- prompts ------------------------------------------------------------------------------------

def _letters_phrase(letters: Sequence[str]) -> str:
    letters = list(letters)
    return letters[0] if len(letters) == 1 else ", ".join(letters[:-1]) + f" or {letters[-1]}"


def mcq_prompt(question: str, options: dict[str, str]) -> str:
    """The question, its lettered options one per line, and a line asking for the letter.

    Not wrapped in the recipe's template: pass it where the recipe puts the question,
    e.g. `prompts.build_prompt(mcq_prompt(q, opts))`.
    """
    lines = [question.strip(), ""]
    lines += [f"{letter}. {str(text).strip()}" for letter, text in options.items()]
    lines += ["", f"Answer with the letter of the correct option ({_letters_phrase(list(options))})."]
    return "\n".join(lines)


def format_question(question: str, options: dict[str, str]) -> str:
    """The text to put where the recipe puts the question (same text as `mcq_prompt`)."""
    return mcq_prompt(question, options)


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


def _first(patterns: list[re.Pattern], text: str) -> str | None:
    hits = []
    for pat in patterns:
        for m in pat.finditer(text):
            letter = m.groupdict().get("L") or m.groupdict().get("L2")
            if letter:
                hits.append((m.start(), letter))
                break
    return min(hits)[1] if hits else None


def parse_answer_letter(generated: str, letters: Sequence[str], think_close: str | None = THINK_CLOSE) -> str | None:
    """The option letter the model states after its reasoning, or None.

    Only the text after the last `think_close` counts; if it never appears the
    reasoning was not closed and the answer is None (pass think_close=None to read
    the whole text, for models that do not reason in tags). Recognised forms: "B",
    "(B)", "B.", "B) text", "**B**", "option B", "Answer: B", "The answer is B",
    "B is correct". Letters are matched upper-case only. If different letters are
    stated, the first explicit "answer is X" / "Answer: X" wins, else the first
    standalone letter. None means unparseable, and callers must count it as wrong.
    """
    if not generated or not letters:
        return None
    if think_close:
        if think_close not in generated:
            return None
        generated = generated.rsplit(think_close, 1)[1]
    explicit, standalone = _patterns([str(x) for x in letters])
    return _first(explicit, generated) or _first(standalone, generated)


def grade_generations(generated: Sequence[str], rows: Sequence[dict[str, Any]],
                      think_close: str | None = THINK_CLOSE) -> tuple[list[bool], list[str | None], int]:
    """(correct per question, parsed letter per question, number unparseable); unparseable is wrong."""
    if len(generated) != len(rows):
        raise ValueError(f"{len(generated)} generations for {len(rows)} questions; give one generation per question")
    preds = [parse_answer_letter(g, list(r["options"]), think_close) for g, r in zip(generated, rows)]
    correct = [p is not None and p == r["answer_idx"] for p, r in zip(preds, rows)]
    return correct, preds, sum(p is None for p in preds)


# ---- likelihood of each option ------------------------------------------------------------------

def option_loglikelihoods(model, tokenizer, prompt: str, options: dict[str, str], normalize: str = "mean",
                          template: str = " {text}") -> dict[str, dict[str, float]]:
    """Teacher-forced log-likelihood of each option's text after `prompt`, in one batch.

    The scored continuation is `template.format(letter=..., text=...)`; the default
    " {text}" scores the option's words only, so the model's preference for a letter
    does not enter (use " {letter}. {text}" to score the lettered line). Prompt and
    continuation are tokenized separately (the prompt with special tokens such as
    BOS, the continuation without) and concatenated, so every option is scored on
    exactly its own tokens after identical prompt ids. The batch is right-padded
    with an attention mask: padding sits after every scored token, so it cannot
    change a score.

    Returns {"sum": {letter: total log-prob}, "mean": {letter: per-token mean},
    "tokens": {letter: token count}}. `normalize` is only checked here; it is the
    key `predict_by_likelihood` ranks by ("mean" does not favour short options).
    """
    import torch

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

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pad_id = 0 if pad_id is None else pad_id
    p = len(prompt_ids)
    width = p + max(len(c) for c in conts)
    input_ids = torch.full((len(conts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(conts), width), dtype=torch.long)
    for i, c in enumerate(conts):
        seq = prompt_ids + c
        input_ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
    device = getattr(model, "device", None) or next(model.parameters()).device
    input_ids, mask = input_ids.to(device), mask.to(device)

    # Only the positions that predict option tokens need logits (a 128k vocabulary is large).
    keep = width - p + 1
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


def predict_by_likelihood(model, tokenizer, prompt: str, options: dict[str, str], normalize: str = "mean",
                          template: str = " {text}") -> str:
    """The option with the highest log-likelihood under `normalize` ("mean" or "sum")."""
    scores = option_loglikelihoods(model, tokenizer, prompt, options, normalize=normalize, template=template)
    return best_letter(scores[normalize])


# ---- free-text answers --------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalise_text(text: str | None) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in (text or "").lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(pred: str | None, gold: str) -> bool:
    """Whether the answers are equal after `normalise_text`; a missing prediction is wrong."""
    return pred is not None and normalise_text(pred) == normalise_text(gold)


# ---- statistics ---------------------------------------------------------------------------------

def wilson_interval(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (95% by default); (0, 1) when n is 0."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _paired(before: Sequence[bool], after: Sequence[bool]) -> tuple[list[bool], list[bool]]:
    if len(before) != len(after):
        raise ValueError(f"before has {len(before)} questions and after has {len(after)}; "
                         "score both models on the same questions, in the same order")
    return [bool(x) for x in before], [bool(x) for x in after]


def mcnemar(before: Sequence[bool], after: Sequence[bool]) -> dict[str, Any]:
    """Exact McNemar test on paired right/wrong outcomes.

    b: right before and wrong after; c: wrong before and right after. Under no
    change b ~ Binomial(b + c, 1/2); the p-value is the exact two-sided binomial one.
    """
    before, after = _paired(before, after)
    b = sum(x and not y for x, y in zip(before, after))
    c = sum(y and not x for x, y in zip(before, after))
    n = b + c
    p = 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n)
    return {"b": b, "c": c, "discordant": n, "both_right": sum(x and y for x, y in zip(before, after)),
            "both_wrong": sum(not x and not y for x, y in zip(before, after)), "p_value": p}


def paired_bootstrap_diff(before: Sequence[bool], after: Sequence[bool], samples: int = 1000,
                          seed: int = 3407) -> tuple[float, float, float]:
    """(accuracy after - before, 2.5th percentile, 97.5th percentile) resampling questions in pairs."""
    before, after = _paired(before, after)
    n = len(before)
    if n == 0:
        raise ValueError("no questions to compare")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    diffs = [int(y) - int(x) for x, y in zip(before, after)]
    rng = random.Random(seed)
    deltas = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(samples))
    lo = deltas[math.floor(0.025 * (samples - 1))]
    hi = deltas[math.ceil(0.975 * (samples - 1))]
    return sum(diffs) / n, lo, hi


def accuracy_summary(before_correct: Sequence[bool], after_correct: Sequence[bool], before_unparsed: int = 0,
                     after_unparsed: int = 0, samples: int = 1000, seed: int = 3407) -> dict[str, Any]:
    """Accuracy of both models on the same questions, the change, its interval and a verdict.

    Unparseable answers must already be in the lists as wrong; their counts are
    reported alongside. The verdict is "better" only when the paired-bootstrap 95%
    interval of the change lies above 0, "worse" when it lies below, else "no clear
    change". On a few dozen questions the bootstrap is optimistic; read McNemar's
    exact p-value next to it.
    """
    before, after = _paired(before_correct, after_correct)
    n = len(before)
    if n == 0:
        raise ValueError("no questions to summarise")
    out: dict[str, Any] = {"n": n}
    for side, correct, unparsed in (("before", before, before_unparsed), ("after", after, after_unparsed)):
        k = sum(correct)
        if not 0 <= unparsed <= n - k:
            raise ValueError(f"{side}: {unparsed} unparseable answers but only {n - k} wrong ones; unparseable "
                             "answers must be counted as wrong, not dropped")
        lo, hi = wilson_interval(k, n)
        out[side] = {"correct": k, "accuracy": k / n, "ci95": [lo, hi], "unparsed": unparsed}
    delta, lo, hi = paired_bootstrap_diff(before, after, samples=samples, seed=seed)
    out["delta"] = delta
    out["delta_ci95"] = [lo, hi]
    out["mcnemar"] = mcnemar(before, after)
    out["verdict"] = "better" if lo > 0 else "worse" if hi < 0 else "no clear change"
    out["bootstrap"] = {"samples": samples, "seed": seed}
    return out


# ---- both models on one multiple-choice set -----------------------------------------------------

def mcq_question(row: dict[str, Any]) -> str:
    """What goes where the recipe puts the question: `format_question` of the row."""
    return format_question(row["question"], row["options"])


def option_from_text(answer: str, options: dict[str, str]) -> str | None:
    """The letter of the option whose text the answer is (after `normalise_text`); None if none or several."""
    said = normalise_text(answer)
    hits = [k for k, v in options.items() if said and normalise_text(v) == said]
    return hits[0] if len(hits) == 1 else None


def grade_mcq_generation(generated: str, row: dict[str, Any], think_close: str | None = THINK_CLOSE) -> dict[str, Any]:
    """How one generated answer to a multiple-choice row is scored.

    The letter is `parse_answer_letter` (text after the last `think_close` only). When
    no letter can be read, an answer whose whole text is one option's text (after
    `normalise_text`, e.g. "Iron deficiency anemia.") counts as that option. `exact_match`
    says whether the answer text equals the row's gold answer string after normalisation.
    `unparsed` answers are wrong: never dropped.
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
    return {"letter": letter, "by": by, "correct": letter is not None and letter == row["answer_idx"],
            "unparsed": letter is None, "exact_match": bool(answer.strip()) and exact_match(answer, row["answer"])}


# What a generated answer to a multiple-choice row carries (from `inference.generate.generate`'s records).
GENERATED_FIELDS = ("generated", "think_closed", "finished", "new_tokens")


def answer_mcq(model, tokenizer, rows: Sequence[dict[str, Any]], *, decoding: dict[str, Any] | None = None,
               normalize: str = "mean") -> list[dict[str, Any]]:
    """One model's answers to multiple-choice rows, in their order.

    Per row: `likelihood_letter`, the option whose text is most probable right after the
    recipe's prompt around `mcq_question(row)` (`option_loglikelihoods`, ranked by
    `normalize`; no generation), with the scores. With `decoding` (the keyword arguments
    of `r1helpers.inference.generate.generate`, e.g. max_new_tokens, batch_size,
    do_sample, seed) the model also answers by generation from the same prompt:
    `generated`, `think_closed`, `finished`, `new_tokens`. Grading is left to
    `mcq_comparison`, which needs no model.
    """
    from r1helpers.core import prompts

    out = []
    for row in rows:
        prompt = prompts.build_prompt(mcq_question(row))
        scores = option_loglikelihoods(model, tokenizer, prompt, row["options"], normalize=normalize)
        out.append({"id": row["id"], "likelihood_letter": best_letter(scores[normalize]),
                    "likelihood_scores": {k: round(v, 5) for k, v in scores[normalize].items()}})
    if decoding is not None and rows:
        from r1helpers.inference.generate import generate

        records = generate(model, tokenizer, [mcq_question(r) for r in rows], **decoding)
        for rec, g in zip(out, records):
            rec.update({k: g[k] for k in GENERATED_FIELDS})
    return out


def attach_generations(answers: Sequence[dict[str, Any]], generated: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """`answer_mcq` results (likelihood only) with generated answers made elsewhere, e.g. in the same batches
    as other questions: each `generated` record (id, generated, think_closed, finished, new_tokens) joins the
    answer with its id. Both lists in the same order of the same questions.
    """
    if [a["id"] for a in answers] != [g["id"] for g in generated]:
        raise ValueError("the generated answers are for other questions, or in another order, than the scored ones")
    return [{**a, **{k: g[k] for k in GENERATED_FIELDS}} for a, g in zip(answers, generated)]


def answer_mcq_before_after(model, tokenizer, rows: Sequence[dict[str, Any]], *,
                            decoding: dict[str, Any] | None = None, normalize: str = "mean") -> dict[str, list]:
    """`answer_mcq` with the LoRA adapter off (the base model) and on, from one loaded peft model.

    Disabling a LoRA adapter gives exactly the base weights (as for the teacher-forced
    NLL), so no second model loads and both sides get the same prompts and decoding.
    """
    os.environ.setdefault("UNSLOTH_RETURN_LOGITS", "1")
    with model.disable_adapter():
        base = answer_mcq(model, tokenizer, rows, decoding=decoding, normalize=normalize)
    return {"base": base, "tuned": answer_mcq(model, tokenizer, rows, decoding=decoding, normalize=normalize)}


SCORINGS = {
    "likelihood": "most probable option text after the prompt (log-likelihood, no generation)",
    "generated": "letter stated after </think> in a generated answer (unparseable counted wrong)",
}


def mcq_comparison(rows: Sequence[dict[str, Any]], base: Sequence[dict[str, Any]], tuned: Sequence[dict[str, Any]],
                   samples: int = 1000, seed: int = 3407) -> dict[str, Any]:
    """Accuracy before and after, per scoring, with Wilson intervals, McNemar and a paired bootstrap.

    `base` and `tuned` are `answer_mcq` results for `rows` (same order). The generated
    scoring is present only when both sides generated. Returns {"n", "scorings":
    {"likelihood": accuracy_summary + counts, "generated": ... or None}, "items": per
    question}.
    """
    rows = list(rows)
    if not (len(rows) == len(base) == len(tuned)):
        raise ValueError(f"{len(rows)} questions but {len(base)} base and {len(tuned)} fine-tuned answers; "
                         "answer every question with both models")
    for r, b, t in zip(rows, base, tuned):
        if not (r["id"] == b["id"] == t["id"]):
            raise ValueError(f"question {r['id']}: answers are for {b['id']} and {t['id']}; keep the rows' order")
    items = []
    for r, b, t in zip(rows, base, tuned):
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
        items.append(item)

    scorings: dict[str, Any] = {"likelihood": None, "generated": None}
    if items:
        before = [it["base"]["likelihood_correct"] for it in items]
        after = [it["tuned"]["likelihood_correct"] for it in items]
        scorings["likelihood"] = {"label": SCORINGS["likelihood"],
                                  **accuracy_summary(before, after, samples=samples, seed=seed)}
    if items and all("generated_correct" in it[s] for it in items for s in ("base", "tuned")):
        before = [it["base"]["generated_correct"] for it in items]
        after = [it["tuned"]["generated_correct"] for it in items]
        unparsed = {s: sum(it[s]["generated_unparsed"] for it in items) for s in ("base", "tuned")}
        summary = accuracy_summary(before, after, unparsed["base"], unparsed["tuned"], samples=samples, seed=seed)
        for side, s in (("before", "base"), ("after", "tuned")):
            summary[side].update(
                by_text=sum(it[s]["generated_by"] == "text" for it in items),
                exact_match=sum(it[s]["generated_exact_match"] for it in items),
                think_closed=sum(it[s]["think_closed"] for it in items),
                eos=sum(it[s]["finished"] for it in items))
        scorings["generated"] = {"label": SCORINGS["generated"], **summary}
    return {"n": len(items), "scorings": scorings, "items": items}


def summary_rows(mcq: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One row per scoring of `mcq_comparison`'s result: before and after with 95% Wilson intervals,
    the change in points with its paired bootstrap interval, McNemar's exact p and discordant counts,
    unparseable counts, n and the verdict. Empty for None."""
    if not mcq:
        return []
    rows = []
    for scoring, s in mcq["scorings"].items():
        if s is None:
            continue
        b, a, mc = s["before"], s["after"], s["mcnemar"]
        rows.append({
            "scoring": scoring, "n": s["n"],
            "before": f"{b['correct']}/{s['n']} = {b['accuracy']:.1%}",
            "before 95% Wilson": "[{:.1%}, {:.1%}]".format(*b["ci95"]),
            "after": f"{a['correct']}/{s['n']} = {a['accuracy']:.1%}",
            "after 95% Wilson": "[{:.1%}, {:.1%}]".format(*a["ci95"]),
            "change (points)": f"{100 * s['delta']:+.1f}",
            "change 95% CI (paired bootstrap)": "[{:+.1f}, {:+.1f}]".format(*(100 * x for x in s["delta_ci95"])),
            "McNemar p": round(mc["p_value"], 4), "right only before / only after": f"{mc['b']} / {mc['c']}",
            "unparseable before / after": f"{b['unparsed']} / {a['unparsed']}" if scoring == "generated" else "-",
            "verdict": {"no clear change": "no significant change"}.get(s["verdict"], s["verdict"]),
        })
    return rows

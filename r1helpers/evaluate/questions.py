"""Multiple-choice questions from a local file, the bundled sample or the Hub, checked row by row.

Every row becomes {"id", "question", "options": {letter: text}, "answer_idx", "answer"}, from MedQA-USMLE's,
MedMCQA's or PubMedQA's schema; a row that cannot be scored raises ValueError naming the file, row and field.
"""

from __future__ import annotations

import json
import os
import re
import string
from importlib import resources
from pathlib import Path
from typing import Any

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
# compare.mcq_source's name for the bundled sample (as data.source's "r1helpers/sample").
SAMPLE_MCQ = "r1helpers/sample-mcq"


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
        if isinstance(data, dict):  # {"data": [...]}: the list it holds
            data = next((v for v in data.values() if isinstance(v, list)), data)
        if isinstance(data, list):
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


# Hub sets the project knows, with the config and split read when a source names none, and a display name.
KNOWN_SETS: dict[str, dict[str, str | None]] = {
    "GBaker/MedQA-USMLE-4-options": {"config": None, "split": "test", "name": "MedQA-USMLE (4 options), test"},
    "openlifescienceai/medmcqa": {"config": None, "split": "validation", "name": "MedMCQA, validation"},
    "qiaojin/PubMedQA": {"config": "pqa_labeled", "split": "train", "name": "PubMedQA (pqa_labeled)"},
}
MEDMCQA_LETTERS = "ABCD"
PUBMEDQA_OPTIONS = {"A": "yes", "B": "no", "C": "maybe"}


def parse_source(source: str, split: str | None = None) -> tuple[str, str | None, str]:
    """(Hub id, config, split) of "id[:config][@split]"; what it leaves out comes from `split`, KNOWN_SETS, "test"."""
    text = str(source)
    text, _, named_split = text.partition("@")
    hub_id, _, config = text.partition(":")
    known = KNOWN_SETS.get(hub_id, {})
    return (hub_id, config or known.get("config"),
            named_split or split or known.get("split") or "test")


def _from_medmcqa(row: dict[str, Any], bad) -> dict[str, Any]:
    """A MedMCQA row (question, opa..opd, cop: the gold option's index 0-3) in the MedQA schema."""
    cop = row.get("cop")
    if isinstance(cop, str) and cop.strip().isdigit():
        cop = int(cop)
    if not isinstance(cop, int) or isinstance(cop, bool) or not 0 <= cop < 4:
        bad("cop", f"is {cop!r}, not the gold option's index 0-3 (MedMCQA's test split has no answers)",
            "score a split with answers (validation), or give cop as 0, 1, 2 or 3")
    options = {letter: row.get(f"op{k}") for letter, k in zip(MEDMCQA_LETTERS, "abcd")}
    return {"id": row.get("id"), "question": row.get("question"), "options": options,
            "answer_idx": MEDMCQA_LETTERS[cop]}


def _from_pubmedqa(row: dict[str, Any], bad) -> dict[str, Any]:
    """A PubMedQA row as a three-option question (yes, no, maybe): the abstract's context paragraphs, then the question."""
    decision = str(row.get("final_decision") or "").strip().lower()
    gold = {v: k for k, v in PUBMEDQA_OPTIONS.items()}.get(decision)
    if gold is None:
        bad("final_decision", f"is {row.get('final_decision')!r}", "give yes, no or maybe")
    context = row.get("context")
    contexts = context.get("contexts") if isinstance(context, dict) else context
    if isinstance(contexts, str):
        contexts = [contexts]
    if not isinstance(contexts, (list, tuple)) or not all(isinstance(c, str) for c in contexts):
        bad("context", "has no list of context paragraphs ('contexts')",
            'give context as {"contexts": ["<paragraph>", ...]}')
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        bad("question", "is missing or empty", "write the question text in a 'question' field")
    text = "\n".join(c.strip() for c in contexts if c.strip())
    return {"id": row.get("pubid", row.get("id")),
            "question": (f"Context: {text}\nQuestion: {question.strip()}" if text else question.strip()),
            "options": dict(PUBMEDQA_OPTIONS), "answer_idx": gold}


def row_schema(row: Any) -> str:
    """"medmcqa", "pubmedqa" or "medqa" (the project's own schema), from the row's fields."""
    if isinstance(row, dict) and "cop" in row and "opa" in row:
        return "medmcqa"
    if isinstance(row, dict) and "final_decision" in row:
        return "pubmedqa"
    return "medqa"


def _normalise_row(row: Any, label: str, where: str, default_id: str) -> dict[str, Any]:
    def bad(fld: str, problem: str, fix: str):
        raise ValueError(f"{where}, {label}: field '{fld}' {problem}; {fix}.")

    schema = row_schema(row)
    if schema == "medmcqa":
        row = _from_medmcqa(row, bad)
    elif schema == "pubmedqa":
        row = _from_pubmedqa(row, bad)

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


def load_mcq_rows(source: str | os.PathLike, split: str | None = "test", limit: int | None = None) -> list[dict[str, Any]]:
    """Multiple-choice questions as {"id", "question", "options": {letter: text}, "answer_idx", "answer"}.

    `source`: a local .jsonl, .json or .parquet file, "r1helpers/sample-mcq" (the bundled 24 questions), or a Hub
    dataset "id[:config][@split]" (`parse_source`). Options may be {letter: text}, a list of {"key", "value"}
    records or a list of texts. `limit` keeps the first rows.
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

    hub_id, config, split = parse_source(str(source), split)
    ds = load_dataset(hub_id, config, split=split) if config else load_dataset(hub_id, split=split)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    where = f"Hub dataset {hub_id}" + (f" ({config})" if config else "") + f" (split {split})"
    return [_normalise_row(dict(r), f"row {i}", where, f"{split}-{i}") for i, r in enumerate(ds, start=1)]


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalise_text(text: str | None) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in (text or "").lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())

"""Data preparation: check, split and tokenize the rows (reading them: `data_sources`). The first `train_rows`
rows train and the held-out rows come right after; tokenized once, as the trainer sees them."""

from __future__ import annotations

import difflib
import statistics
from dataclasses import dataclass, field
from typing import Any

from r1helpers.core import prompts

COLUMNS = ("Question", "Complex_CoT", "Response")


class DataError(ValueError):
    """The dataset cannot be used as given; the message names the file, column or row."""


@dataclass
class Report:
    """Counted changes made to the data; shown in the notebook and saved in stats.json."""

    source: str = ""
    rows_in_source: int = 0
    dropped_invalid_json: list[int] = field(default_factory=list)  # line numbers, lenient only
    dropped_not_utf8: list[int] = field(default_factory=list)  # line numbers, lenient only
    dropped_empty: list[int] = field(default_factory=list)
    dropped_duplicate: list[int] = field(default_factory=list)
    eval_dropped_overlap: list[int] = field(default_factory=list)
    overlong: dict[str, list[int]] = field(default_factory=lambda: {"train": [], "eval": []})
    overlong_action: str = "drop"

    def lines(self) -> list[str]:
        out = [f"source: {self.source} ({self.rows_in_source} rows)"]
        if self.dropped_invalid_json:
            out.append(f"dropped {len(self.dropped_invalid_json)} lines that are not valid JSON objects: "
                       f"lines {self.dropped_invalid_json[:10]}")
        if self.dropped_not_utf8:
            out.append(f"dropped {len(self.dropped_not_utf8)} lines that are not UTF-8: lines {self.dropped_not_utf8[:10]}")
        if self.dropped_empty:
            out.append(f"dropped {len(self.dropped_empty)} rows with an empty field: rows {self.dropped_empty[:10]}")
        if self.dropped_duplicate:
            out.append(f"dropped {len(self.dropped_duplicate)} duplicate rows: rows {self.dropped_duplicate[:10]}")
        if self.eval_dropped_overlap:
            out.append(f"removed {len(self.eval_dropped_overlap)} held-out rows whose question is also in training")
        for split, rows in self.overlong.items():
            if rows:
                out.append(f"{split}: {len(rows)} rows longer than max_seq_length ({self.overlong_action}): rows {rows[:10]}")
        return out


def _close_column(name: str, candidates: list[str]) -> str | None:
    """The column the user probably meant: same letters up to case and underscores, or a near spelling."""
    def squash(s: str) -> str:
        return s.lower().replace("_", "").replace(" ", "")

    same = [c for c in candidates if squash(c) == squash(name)]
    near = difflib.get_close_matches(squash(name), [squash(c) for c in candidates], n=1, cutoff=0.75)
    if same:
        return same[0]
    return next((c for c in candidates if near and squash(c) == near[0]), None)


def _norm(text: str) -> str:
    return " ".join(str(text).split()).lower()


def column_problems(column_names: list[str], columns: tuple[str, str, str] = COLUMNS) -> list[str]:
    """The wanted columns the data lacks, each with the close spelling it has if any; empty: all there.

        column_problems(["Question", "Complex_COT", "Response"])  # ["'Complex_CoT' (did you mean 'Complex_COT'?)"]
    """
    problems = []
    for m in (c for c in columns if c not in column_names):
        close = _close_column(m, [c for c in column_names if c not in columns])
        problems.append(f"{m!r}" + (f" (did you mean {close!r}?)" if close else ""))
    return problems


def check_columns(column_names: list[str], columns: tuple[str, str, str] = COLUMNS, origin: str = "the data") -> None:
    """Raise DataError naming each missing column (and its likely misspelling) and what the data has."""
    problems = column_problems(column_names, columns)
    if problems:
        raise DataError(
            f"{origin}: missing column {', '.join(problems)}; the file has {list(column_names)}. "
            "Rename it or set data.question_column / data.cot_column / data.response_column."
        )


def check_text_columns(ds, columns: tuple[str, ...], origin: str) -> None:
    """Question, reasoning and answer must be text: a parquet, CSV or Hub column of numbers or lists is refused."""
    features = getattr(ds, "features", None) or {}
    for col in columns:
        feature = features.get(col)
        dtype = getattr(feature, "dtype", None)
        if feature is None or dtype in ("string", "large_string") or (dtype == "null"):
            continue
        example = next((r[col] for r in ds.select(range(min(len(ds), 1)))), None)
        raise DataError(
            f"{origin}: column {col!r} holds {dtype if dtype else type(feature).__name__} values "
            f"(row 0: {example!r}), not text, so it would train as digits or brackets. Point "
            "data.question_column / data.cot_column / data.response_column at the text columns, or convert "
            f"this one to text first (e.g. pandas: df[{col!r}] = df[{col!r}].astype(str))."
        )


def select_rows(ds, *, train_rows: int, eval_rows: int, columns: tuple[str, str, str] = COLUMNS,
                lenient: bool = False, origin: str = "the data",
                report: Report | None = None) -> tuple[list[dict], list[dict]]:
    """The first `train_rows` usable rows and the next `eval_rows` (minus questions also in training), renamed
    to Question / Complex_CoT / Response with their `source_row`. Without `lenient`, an empty field or a
    duplicate row is an error naming the row.

        train, held = select_rows(ds, train_rows=500, eval_rows=50)
    """
    report = report if report is not None else Report()
    cols = dict(zip(COLUMNS, columns))
    check_columns(ds.column_names, columns, origin)
    report.source, report.rows_in_source = origin, len(ds)
    need = train_rows + eval_rows
    check_text_columns(ds, columns, origin)
    rows: list[dict] = []
    seen: dict[tuple[str, str, str], int] = {}  # normalised (question, reasoning, answer): first row
    for i, raw in enumerate(ds):
        row = {k: raw[v] for k, v in cols.items()}
        empty = [k for k, v in row.items() if v is None or not str(v).strip()]
        if empty:
            if not lenient:
                col = cols[empty[0]]
                what = "no" if row[empty[0]] is None else "an empty"
                close = _close_column(col, [c for c, v in raw.items() if c not in cols.values() and v is not None])
                hint = f" but has {close!r} (misspelled?)" if close else ""
                raise DataError(
                    f"{origin}: row {i} has {what} {col!r}{hint} (rows count from 0); fix the row or set "
                    "data.lenient=true to drop such rows"
                )
            report.dropped_empty.append(i)
            continue
        key = tuple(_norm(row[k]) for k in COLUMNS)
        if key in seen:
            if not lenient:
                raise DataError(
                    f"{origin}: row {i} repeats row {seen[key]} (same question, reasoning and answer up to case "
                    "and spacing; rows count from 0); delete the copy or set data.lenient=true to drop duplicates"
                )
            report.dropped_duplicate.append(i)
            continue
        seen[key] = i
        rows.append({**{k: str(v) for k, v in row.items()}, "source_row": i})
        if len(rows) >= need:
            break
    if len(rows) <= train_rows and eval_rows > 0:
        usable = f"{len(rows)} usable row{'s' if len(rows) != 1 else ''}"
        fix = (f"lower data.train_rows to at most {len(rows) - 1} to keep some for it, or set data.eval_rows=0 "
               "to train without a held-out split" if len(rows) >= 2 else
               "set data.eval_rows=0 to train without a held-out split, or fix the data" if rows else
               "fix the data: every row was dropped (" + ("; ".join(report.lines()[1:]) or "none usable") + ")")
        raise DataError(
            f"{origin}: {usable}, but data.train_rows={train_rows} leaves none for the held-out split "
            f"(data.eval_rows={eval_rows}); {fix}"
        )
    train, held = rows[:train_rows], rows[train_rows:need]
    train_q = {_norm(r["Question"]) for r in train}
    eval_out = []
    for r in held:
        if _norm(r["Question"]) in train_q:
            report.eval_dropped_overlap.append(r["source_row"])
        else:
            eval_out.append(r)
    return train, eval_out


def shared_questions(train: list[dict], held: list[dict]) -> list[str]:
    """Held-out questions that are also training questions, up to case and spacing (select_rows leaves none)."""
    train_q = {_norm(r["Question"]) for r in train}
    return [r["Question"] for r in held if _norm(r["Question"]) in train_q]


def tokenize_rows(rows: list[dict], tokenizer, *, max_seq_length: int, overlong: str = "drop", split: str = "train",
                  report: Report | None = None) -> list[dict]:
    """Add `input_ids` (prompt + completion + EOS), `prompt_length`, `num_tokens` and `text` to each row. Rows
    over `max_seq_length`: `overlong` "drop" leaves them out, "truncate" cuts them, "error" refuses them."""
    report = report if report is not None else Report(overlong_action=overlong)
    out = []
    for r in rows:
        ids, prompt_len = prompts.encode_example(tokenizer, r["Question"], r["Complex_CoT"], r["Response"])
        n = len(ids)
        if n > max_seq_length:
            report.overlong.setdefault(split, []).append(r["source_row"])
            if overlong == "error":
                raise DataError(
                    f"{split} row {r['source_row']} is {n} tokens, over model.max_seq_length={max_seq_length}; raise "
                    "model.max_seq_length or set data.overlong=drop"
                )
            if overlong == "drop":
                continue
            ids = ids[:max_seq_length]
        elif ids[-1] != tokenizer.eos_token_id:
            raise AssertionError(f"{split} row {r['source_row']}: EOS does not end the tokenized example")
        text = prompts.build_training_text(r["Question"], r["Complex_CoT"], r["Response"], tokenizer.eos_token)
        out.append({**r, "text": text, "input_ids": ids, "prompt_length": prompt_len, "num_tokens": n})
    return out


def example_lengths(tokenizer, rows: list[dict]) -> list[int]:
    """Tokens per training example (prompt + reasoning + answer + EOS), before any overlong row is dropped."""
    return [len(prompts.encode_example(tokenizer, r["Question"], r["Complex_CoT"], r["Response"])[0]) for r in rows]


EOS_MARK = "⟨EOS {token!r} id {id}⟩"
BOUNDARY_MARK = "⟦▲ prompt: {n} tokens · completion: {m} tokens ▼⟧"


@dataclass
class ExampleView:
    """One training example as the trainer sees it: its ids, decoded, with the prompt/completion boundary marked."""

    text: str  # decoded prompt, BOUNDARY_MARK, decoded completion, EOS_MARK
    input_ids: list[int]
    prompt_tokens: int
    completion_tokens: int  # the reasoning, </think>, the answer and EOS
    eos_id: int

    def __str__(self) -> str:
        return self.text


def show_example(tokenizer, question: str, cot: str, response: str) -> ExampleView:
    """One example tokenized as `tokenize_rows` does and decoded back, marking where the prompt ends and the EOS.

        print(show_example(tokenizer, "What causes scurvy?", "Vitamin C is needed for collagen...", "Vitamin C deficiency.").text)
    """
    ids, n_prompt = prompts.encode_example(tokenizer, question, cot, response)
    assert ids[-1] == tokenizer.eos_token_id, "encode_example always ends with EOS"
    prompt_text = tokenizer.decode(ids[:n_prompt], skip_special_tokens=False)
    completion_text = tokenizer.decode(ids[n_prompt:-1], skip_special_tokens=False)
    text = (prompt_text + BOUNDARY_MARK.format(n=n_prompt, m=len(ids) - n_prompt) + completion_text
            + EOS_MARK.format(token=tokenizer.eos_token, id=ids[-1]))
    return ExampleView(text, ids, n_prompt, len(ids) - n_prompt, ids[-1])


def length_stats(lengths: list[int], max_len: int) -> dict[str, Any]:
    if not lengths:
        return {"count": 0}
    s = sorted(lengths)
    return {
        "count": len(s), "min": s[0], "mean": round(statistics.fmean(s), 1), "median": statistics.median(s),
        "p95": s[min(len(s) - 1, int(0.95 * len(s)))], "max": s[-1], "over_max_seq_length": sum(x > max_len for x in s),
        "max_seq_length": max_len,
    }


def summary(stats: dict[str, Any]) -> dict[str, Any]:
    """The numbers a reader checks after preparation, from the statistics `workflow.data_stage.build` records."""
    raw, train = stats["raw"], stats["token_lengths"]["train"]
    return {
        "rows trained": stats["counts"]["train"],
        "rows held out": stats["counts"]["eval"],
        "dropped: empty field": len(raw["dropped_empty"]),
        "dropped: duplicate row": len(raw["dropped_duplicate"]),
        "dropped: not valid JSON": len(raw["dropped_invalid_json"]),
        "dropped: not UTF-8": len(raw["dropped_not_utf8"]),
        "held out removed: question also in training": len(raw["eval_dropped_overlap"]),
        "overlong (train / held out)": f"{len(raw['overlong']['train'])} / {len(raw['overlong']['eval'])}",
        "median tokens (train)": train.get("median"),
        "p95 tokens (train)": train.get("p95"),
        "max tokens (train)": train.get("max"),
        "max_seq_length": train.get("max_seq_length"),
    }

"""Data preparation: load, check, split, tokenize, measure and save.

The recipe trains on the first `train_rows` rows; the held-out rows come right
after them, so training data stays exactly the recipe's and evaluation data is
never trained on. Examples are tokenized here, once, with the prompt and EOS as
ids (see `prompts.encode_example`), so the EOS check and the count of rows that
exceed max_seq_length are made on exactly what the trainer sees.

    python -m r1helpers.pipeline --stages 02
"""

from __future__ import annotations

import difflib
import json
import statistics
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from r1helpers.core import prompts
from r1helpers.core.config import SAMPLE_DATASET

COLUMNS = ("Question", "Complex_CoT", "Response")
LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


class DataError(ValueError):
    """The dataset cannot be used as given; the message names the file, column or row."""


def sample_path() -> Path:
    return Path(str(resources.files("r1helpers") / "assets" / "sample_medical_o1.jsonl"))


def load_sample_rows() -> list[dict[str, str]]:
    return _read_jsonl(sample_path())


def _raw_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"{path}: the file is empty; point data.source at a file that holds the rows")
    return raw


# Compressed and archive files by their first bytes: read as text they only yield "not UTF-8" or, with
# data.lenient, "holds no rows".
MAGIC = {b"\x1f\x8b": ("gzip-compressed file", "gunzip -k {name}"), b"PK\x03\x04": ("zip archive", "unzip {name}"),
         b"BZh": ("bzip2-compressed file", "bunzip2 -k {name}"), b"\xfd7zXZ\x00": ("xz-compressed file", "unxz -k {name}"),
         b"\x28\xb5\x2f\xfd": ("zstd-compressed file", "unzstd {name}"), b"PAR1": ("parquet file", None)}


def _text_bytes(path: Path) -> bytes:
    """The bytes of a text file (.jsonl/.json/.csv), refused by name when they are compressed or binary."""
    raw = _raw_bytes(path)
    kind = next((v for k, v in MAGIC.items() if raw.startswith(k)), None)
    if kind is not None:
        what, how = kind
        fix = (f"decompress it first ({how.format(name=path.name)}) and point data.source at the file inside"
               if how else "rename it to .parquet")
        raise DataError(f"{path}: a {what}, not {path.suffix} text, so no row can be read from it (data.lenient "
                        f"would drop every line); {fix}")
    nul = raw.find(b"\x00", 0, 1 << 16)
    if nul >= 0:
        raise DataError(f"{path}: a binary file (a NUL byte at byte {nul}), not {path.suffix} text, so no row can be "
                        "read from it (data.lenient would drop every line); point data.source at the rows exported "
                        "as .jsonl, .json, .csv or .parquet")
    return raw


def _read_text(path: Path) -> str:
    raw = _text_bytes(path)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}: not UTF-8 (byte {e.start}, line {line}); re-save the file as UTF-8") from None


def _decode_lines(path: Path, lenient: bool, report: Report | None) -> list[tuple[int, str]]:
    """(line number, text) per line; lenient drops (and counts) the lines that are not UTF-8."""
    out = []
    for n, line in enumerate(_text_bytes(path).removeprefix(b"\xef\xbb\xbf").split(b"\n"), start=1):
        try:
            out.append((n, line.decode("utf-8")))
        except UnicodeDecodeError as e:
            if not lenient:
                raise DataError(f"{path}: not UTF-8 (byte {e.start} of line {n}); re-save the file as UTF-8, "
                                "or set data.lenient=true to drop the lines that are not") from None
            if report is not None:
                report.dropped_not_utf8.append(n)
    return out


def _read_jsonl(path: Path, lenient: bool = False, report: Report | None = None) -> list[dict[str, Any]]:
    rows = []
    for n, line in _decode_lines(path, lenient, report):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            problem = None if isinstance(row, dict) else "is not a JSON object"
        except json.JSONDecodeError as e:
            problem = f"is not valid JSON ({e.msg})"
        if problem is None:
            rows.append(row)
        elif not lenient:
            raise DataError(f"{path}: line {n} {problem}; fix or delete the line, "
                            "or set data.lenient=true to drop such lines")
        elif report is not None:
            report.dropped_invalid_json.append(n)
    return rows


def _read_json(path: Path, lenient: bool = False, report: Report | None = None) -> list[dict[str, Any]]:
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return _read_jsonl(path, lenient, report)  # many ".json" files are JSON lines
    if isinstance(data, dict):
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{path}: expected a list of rows (or an object holding one list)")
        data = lists[0]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise DataError(f"{path}: expected a list of JSON objects")
    return data


def _first_mixed(rows: list[dict[str, Any]]) -> tuple[str, int, str, str] | None:
    """(column, row, its type, the column's first type) where a column stops holding one type."""
    first: dict[str, str] = {}
    for i, row in enumerate(rows):
        for k, v in row.items():
            if v is None:
                continue
            kind = type(v).__name__
            if first.setdefault(k, kind) != kind:
                return k, i, kind, first[k]
    return None


def check_text_values(rows: list[dict[str, Any]], columns: tuple[str, ...] | None, path: Path | str) -> None:
    """Question, reasoning and answer must be text in every row: a JSON number or boolean would train as "7" or
    "True", a list or object as brackets. The first such value is refused with its file, column and row,
    as `check_text_columns` refuses a typed parquet, CSV or Hub column."""
    for i, row in enumerate(rows):
        for col in columns or ():
            v = row.get(col)
            if v is not None and not isinstance(v, str):
                kind = {bool: "a boolean", int: "a number", float: "a number", list: "a list",
                        dict: "an object"}.get(type(v), f"a {type(v).__name__}")
                raise DataError(
                    f"{path}: column {col!r}, row {i} (rows count from 0) holds {kind} ({json.dumps(v)[:80]}), not "
                    "text, so it would train as digits, true/false or brackets. Write the value as text (in "
                    f"quotes: \"{col}\": \"...\"), delete the row, or point data.question_column / data.cot_column / "
                    "data.response_column at the text columns."
                )


def _to_dataset(rows: list[dict[str, Any]], path: Path, columns: tuple[str, ...] | None = COLUMNS):
    """Rows to a Dataset with every column any row has (so a misspelled key shows up as its own
    column) and numbers as text outside the text `columns` (where any value but text is refused);
    a column mixing text with lists or objects is named, with its row."""
    import datasets

    check_text_values(rows, columns, path)
    rows = [{k: str(v) if isinstance(v, (int, float)) else v for k, v in r.items()} for r in rows]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    try:
        return datasets.Dataset.from_dict({k: [r.get(k) for r in rows] for k in keys})
    except (TypeError, ValueError, ArithmeticError) as e:  # pyarrow's errors derive from these
        mixed = _first_mixed(rows)
        if mixed is None:
            raise DataError(f"{path}: the rows cannot form a table ({e})") from None
        k, i, kind, was = mixed
        raise DataError(f"{path}: column {k!r} holds {was} values but row {i} (counting from 0) holds a {kind}; "
                        "make every value of the column the same type (text)") from None


def _load_table(path: Path, kind: str):
    import datasets

    try:
        return datasets.load_dataset(kind, data_files=str(path), split="train")
    except Exception as e:
        raise DataError(f"{path}: not a readable {kind} file ({type(e).__name__}: {str(e)[:300]}); "
                        "re-export it, or convert it to .jsonl") from None


def is_hub_id(source: str) -> bool:
    """True for a Hub dataset id ("owner/name"): not the bundled sample, not a local file or folder."""
    path = Path(source).expanduser()
    return (source != SAMPLE_DATASET and not path.exists() and path.suffix.lower() not in LOCAL_SUFFIXES
            and not looks_local(source))


def looks_local(source: str) -> bool:
    """A path no Hub id can be: absolute, relative to . or ~, more than one "/", or a Windows path."""
    s = source.strip()
    return (s.startswith(("/", "./", "../", "~", ".\\", "..\\")) or s in (".", "..") or s.count("/") > 1
            or "\\" in s or (len(s) > 1 and s[1] == ":"))


def _missing_path(source: str) -> str:
    """Where a local path that does not exist stops existing: the deepest folder of it that exists."""
    path = Path(source).expanduser().absolute()
    parent = next((p for p in path.parents if p.is_dir()), None)
    there = (f"{parent} exists but holds no {path.relative_to(parent).parts[0]!r}" if parent is not None
             else "no part of it exists")
    return (f"{source}: no such file or folder ({there}); point data.source at an existing .jsonl/.json/.csv/"
            ".parquet file or saved datasets folder (a Hub dataset id is owner/name)")


def load_rows(source: str, *, config_name: str | None = None, split: str = "train", lenient: bool = False,
              columns: tuple[str, str, str] | None = COLUMNS, report: Report | None = None):
    """The source's rows as a `datasets.Dataset`, and where they came from, whatever form they come in.

    `source`: a Hub dataset id (with `config_name` and `split`), a local .jsonl/.json/.csv/.parquet
    file, a folder saved with `save_to_disk`, or "r1helpers/sample" (the bundled sample). `lenient`
    drops (and counts in `report`) lines that are not valid JSON or not UTF-8 instead of failing.
    `columns` (question, reasoning, answer) must exist; a missing one is named, with the close
    spelling the file has (None: no check).

        rows, origin = load_rows("FreedomIntelligence/medical-o1-reasoning-SFT", config_name="en")
    """
    ds, origin = _load(source, config_name, split, lenient, report, columns)
    if columns is not None:
        check_columns(ds.column_names, columns, origin)
    return ds, origin


def _load(source: str, config_name: str | None, split: str, lenient: bool, report: Report | None,
          columns: tuple[str, ...] | None = COLUMNS):
    import datasets

    if source == SAMPLE_DATASET:
        return datasets.Dataset.from_list(load_sample_rows()), str(sample_path())
    path = Path(source).expanduser()
    if path.is_dir():
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as e:
            raise DataError(f"{path}: not a saved datasets folder ({e})") from None
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DataError(f"{path}: no split {split!r} (has {list(loaded)}); set data.split")
            loaded = loaded[split]
        return loaded, str(path)
    if path.suffix.lower() in LOCAL_SUFFIXES or path.exists():
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            rows = _read_jsonl(path, lenient, report)
        elif suffix == ".json":
            rows = _read_json(path, lenient, report)
        elif suffix in (".csv", ".parquet"):
            # Empty or not UTF-8: said plainly here rather than by the reader's traceback.
            (_read_text if suffix == ".csv" else _raw_bytes)(path)
            return _load_table(path, suffix[1:]), str(path)
        else:
            raise DataError(f"{path}: unsupported file type; use one of {LOCAL_SUFFIXES}")
        if not rows:
            raise DataError(f"{path}: holds no rows" + (f" ({', '.join(report.lines()[1:])})" if report else ""))
        return _to_dataset(rows, path, columns), str(path)
    if looks_local(source):
        raise DataError(_missing_path(source))
    try:
        ds = datasets.load_dataset(source, config_name, split=split)
    except Exception as e:
        first = Path(source.split("/", 1)[0]).expanduser()
        if first.is_dir():  # "data/rows": a local folder's missing file more likely than a Hub dataset
            raise DataError(_missing_path(source) + f"; as a Hub dataset id it did not load either "
                            f"({type(e).__name__}: {str(e)[:200]})") from None
        raise DataError(
            f"{source}: could not load from the Hub ({type(e).__name__}: {str(e)[:300]}). "
            "Offline? Use a local file or folder, or the CPU profile's bundled sample."
        ) from None
    return ds, f"hub:{source}/{config_name or ''}:{split}"


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
    """Question, reasoning and answer must be text: numbers would train as "1" and "10" without a word.

    A parquet or Hub column typed as integers, floats or lists is refused with its name and type.
    """
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
    """Check the columns and fields, then cut the training rows and the held-out rows.

    The first `train_rows` usable rows train; the next `eval_rows` are held out, minus any whose
    question (up to case and spacing) is also a training question. Rows come back with the
    columns renamed to Question / Complex_CoT / Response and their `source_row` (from 0).
    Without `lenient`, an empty field or a duplicate row is an error naming the row.

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
    """Add `input_ids` (prompt + completion + EOS, as `prompts.encode_example`), `prompt_length`, `num_tokens`
    and `text` to each row.

    Rows longer than `max_seq_length`: `overlong="drop"` leaves them out, "truncate" cuts them (they
    lose the end of the answer and their EOS), "error" refuses them; each is counted in `report`.
    """
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
    """Tokenize one example exactly as `tokenize_rows` does and decode it back, marking where the prompt
    (what inference sends) ends and showing the last token as EOS with its id.

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

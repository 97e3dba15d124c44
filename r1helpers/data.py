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
from r1helpers.core.config import SAMPLE_DATASET, DataConfig

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


def _read_text(path: Path) -> str:
    raw = _raw_bytes(path)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}: not UTF-8 (byte {e.start}, line {line}); re-save the file as UTF-8") from None


def _decode_lines(path: Path, lenient: bool, report: Report | None) -> list[tuple[int, str]]:
    """(line number, text) per line; lenient drops (and counts) the lines that are not UTF-8."""
    out = []
    for n, line in enumerate(_raw_bytes(path).removeprefix(b"\xef\xbb\xbf").split(b"\n"), start=1):
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


def _to_dataset(rows: list[dict[str, Any]], path: Path):
    """Rows to a Dataset with every column any row has (so a misspelled key shows up as its own
    column) and numbers as text; a column mixing text with lists or objects is named, with its row."""
    import datasets

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


def load_raw(dcfg: DataConfig, report: Report | None = None):
    """The source as a `datasets.Dataset`, whatever form it comes in; lenient fixes are counted in `report`."""
    import datasets

    source = dcfg.source
    if source == SAMPLE_DATASET:
        return datasets.Dataset.from_list(load_sample_rows()), str(sample_path())
    path = Path(source).expanduser()
    if path.is_dir():
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as e:
            raise DataError(f"{path}: not a saved datasets folder ({e})") from None
        if isinstance(loaded, datasets.DatasetDict):
            if dcfg.split not in loaded:
                raise DataError(f"{path}: no split {dcfg.split!r} (has {list(loaded)}); set data.split")
            loaded = loaded[dcfg.split]
        return loaded, str(path)
    if path.suffix.lower() in LOCAL_SUFFIXES or path.exists():
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            rows = _read_jsonl(path, dcfg.lenient, report)
        elif suffix == ".json":
            rows = _read_json(path, dcfg.lenient, report)
        elif suffix in (".csv", ".parquet"):
            # Empty or not UTF-8: said plainly here rather than by the reader's traceback.
            (_read_text if suffix == ".csv" else _raw_bytes)(path)
            return _load_table(path, suffix[1:]), str(path)
        else:
            raise DataError(f"{path}: unsupported file type; use one of {LOCAL_SUFFIXES}")
        if not rows:
            raise DataError(f"{path}: holds no rows" + (f" ({', '.join(report.lines()[1:])})" if report else ""))
        return _to_dataset(rows, path), str(path)
    try:
        ds = datasets.load_dataset(source, dcfg.config_name, split=dcfg.split)
    except Exception as e:
        raise DataError(
            f"{source}: could not load from the Hub ({type(e).__name__}: {str(e)[:300]}). "
            "Offline? Use a local file or folder, or the CPU profile's bundled sample."
        ) from None
    return ds, f"hub:{source}/{dcfg.config_name or ''}:{dcfg.split}"


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


def select_rows(ds, dcfg: DataConfig, origin: str, report: Report) -> tuple[list[dict], list[dict]]:
    """Check the columns and fields, then cut the training rows and the held-out rows."""
    cols = {"Question": dcfg.question_column, "Complex_CoT": dcfg.cot_column, "Response": dcfg.response_column}
    missing = [c for c in cols.values() if c not in ds.column_names]
    if missing:
        hints = []
        for m in missing:
            close = _close_column(m, [c for c in ds.column_names if c not in cols.values()])
            hints.append(f"{m!r}" + (f" (did you mean {close!r}?)" if close else ""))
        raise DataError(
            f"{origin}: missing column {', '.join(hints)}; the file has {ds.column_names}. "
            "Rename it or set data.question_column / data.cot_column / data.response_column."
        )
    report.source, report.rows_in_source = origin, len(ds)
    need = dcfg.train_rows + dcfg.eval_rows
    rows: list[dict] = []
    seen: dict[tuple[str, str, str], int] = {}  # normalised (question, reasoning, answer): first row
    for i, raw in enumerate(ds):
        row = {k: raw[v] for k, v in cols.items()}
        empty = [k for k, v in row.items() if v is None or not str(v).strip()]
        if empty:
            if not dcfg.lenient:
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
            if not dcfg.lenient:
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
    if len(rows) <= dcfg.train_rows and dcfg.eval_rows > 0:
        raise DataError(
            f"{origin}: {len(rows)} usable rows, but data.train_rows={dcfg.train_rows} leaves none for the "
            f"held-out split (data.eval_rows={dcfg.eval_rows}); lower data.train_rows"
        )
    train, held = rows[: dcfg.train_rows], rows[dcfg.train_rows : need]
    train_q = {_norm(r["Question"]) for r in train}
    eval_rows = []
    for r in held:
        if _norm(r["Question"]) in train_q:
            report.eval_dropped_overlap.append(r["source_row"])
        else:
            eval_rows.append(r)
    return train, eval_rows


def tokenize_rows(rows: list[dict], tokenizer, max_len: int, action: str, split: str, report: Report) -> list[dict]:
    """Add input_ids; drop, truncate or refuse rows longer than max_len; check EOS ends each kept row."""
    out = []
    for r in rows:
        ids, prompt_len = prompts.encode_example(tokenizer, r["Question"], r["Complex_CoT"], r["Response"])
        n = len(ids)
        if n > max_len:
            report.overlong[split].append(r["source_row"])
            if action == "error":
                raise DataError(
                    f"{split} row {r['source_row']} is {n} tokens, over model.max_seq_length={max_len}; raise "
                    "model.max_seq_length or set data.overlong=drop"
                )
            if action == "drop":
                continue
            ids = ids[:max_len]
        elif ids[-1] != tokenizer.eos_token_id:
            raise AssertionError(f"{split} row {r['source_row']}: EOS does not end the tokenized example")
        text = prompts.build_training_text(r["Question"], r["Complex_CoT"], r["Response"], tokenizer.eos_token)
        out.append({**r, "text": text, "input_ids": ids, "prompt_length": prompt_len, "num_tokens": n})
    return out


def length_stats(lengths: list[int], max_len: int) -> dict[str, Any]:
    if not lengths:
        return {"count": 0}
    s = sorted(lengths)
    return {
        "count": len(s), "min": s[0], "mean": round(statistics.fmean(s), 1), "median": statistics.median(s),
        "p95": s[min(len(s) - 1, int(0.95 * len(s)))], "max": s[-1], "over_max_seq_length": sum(x > max_len for x in s),
        "max_seq_length": max_len,
    }










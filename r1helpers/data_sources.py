"""Reading the rows: the bundled sample, local files (each format checked), saved folders and Hub datasets."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from r1helpers.core.recipes import SAMPLE_DATASET
from r1helpers.data import COLUMNS, DataError, Report, check_columns

LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def sample_path() -> Path:
    return Path(str(resources.files("r1helpers") / "assets" / "sample_medical_o1.jsonl"))


def load_sample_rows() -> list[dict[str, str]]:
    return _read_jsonl(sample_path())


def _raw_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"{path}: the file is empty; point data.source at a file that holds the rows")
    return raw


# Compressed and archive files by their first bytes, named rather than read as text.
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
    text = "\n".join(line for _, line in _decode_lines(path, False, None))
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
    """Question, reasoning and answer must be text in every row: the first JSON number, boolean, list or object
    there is refused with its file, column and row."""
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
    """Rows to a Dataset with every column any row has (a misspelled key shows as its own) and numbers as text;
    a column mixing types is named, with its row."""
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
    """The rows of a Hub dataset id, a local .jsonl/.json/.csv/.parquet file, a saved folder or "r1helpers/sample",
    as a `datasets.Dataset`, and where they came from. `lenient` drops (and counts in `report`) lines that are
    not valid JSON or not UTF-8; `columns` must exist (None: no check).

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
            _decode_lines(path, False, None) if suffix == ".csv" else _raw_bytes(path)
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

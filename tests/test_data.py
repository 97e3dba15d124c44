import json

import pytest

from r1helpers.core.config import load_config
from r1helpers.data import DataError
from r1helpers.data_sources import load_rows, load_sample_rows, sample_path
from r1helpers.workflow.data_stage import build, prepare
from r1helpers.core.runs import Run


def rows(n, long_from=None):
    out = []
    for i in range(n):
        cot = f"step {i} " * (400 if long_from is not None and i >= long_from else 5)
        out.append({"Question": f"Question number {i}?", "Complex_CoT": cot, "Response": f"Answer {i}."})
    return out


def cfg_for(source, **over):
    return load_config("cpu", {"data.source": str(source), "data.train_rows": 8, "data.eval_rows": 4, **over})


def write_jsonl(path, items):
    path.write_text("".join(json.dumps(r) + "\n" for r in items), encoding="utf-8")
    return path


def test_sample_dataset_schema():
    data = load_sample_rows()
    assert len(data) >= 60
    assert all(set(r) == {"Question", "Complex_CoT", "Response"} and all(v.strip() for v in r.values()) for r in data)
    assert len({r["Question"] for r in data}) == len(data)


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet", "folder"])
def test_local_formats(tmp_path, fmt, tokenizer):
    import datasets

    items = rows(14)
    ds = datasets.Dataset.from_list(items)
    path = tmp_path / f"d.{fmt}"
    if fmt == "jsonl":
        write_jsonl(path, items)
    elif fmt == "json":
        path.write_text(json.dumps(items))
    elif fmt == "csv":
        ds.to_csv(str(path), index=False)
    elif fmt == "parquet":
        ds.to_parquet(str(path))
    else:
        path = tmp_path / "saved"
        datasets.DatasetDict({"train": ds}).save_to_disk(str(path))
    dd, stats = build(cfg_for(path), tokenizer)
    assert stats["counts"] == {"train": 8, "eval": 4}
    assert set(dd["train"]["Question"]).isdisjoint(dd["eval"]["Question"])
    assert stats["eos_ends_every_example"]


def test_missing_column_names_file_and_column(tmp_path, tokenizer):
    items = [{"Question": r["Question"], "Complex_COT": r["Complex_CoT"], "Response": r["Response"]} for r in rows(3)]
    path = write_jsonl(tmp_path / "bad.jsonl", items)
    with pytest.raises(DataError, match=r"bad\.jsonl.*'Complex_CoT'.*did you mean 'Complex_COT'"):
        build(cfg_for(path), tokenizer)


def test_renamed_columns_are_accepted(tmp_path, tokenizer):
    items = [{"q": r["Question"], "c": r["Complex_CoT"], "a": r["Response"]} for r in rows(14)]
    path = write_jsonl(tmp_path / "renamed.jsonl", items)
    dd, _ = build(cfg_for(path, **{"data.question_column": "q", "data.cot_column": "c", "data.response_column": "a"}), tokenizer)
    assert dd["train"][0]["Question"] == "Question number 0?"


def test_bad_files(tmp_path, tokenizer):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="empty.jsonl: the file is empty"):
        build(cfg_for(empty), tokenizer)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(rows(1)[0]) + "\n{not json\n")
    with pytest.raises(DataError, match="broken.jsonl: line 2 is not valid JSON"):
        build(cfg_for(broken), tokenizer)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(json.dumps(rows(1)[0]).encode() + b"\n" + '{"Question": "caf\xe9"}'.encode("latin-1"))
    with pytest.raises(DataError, match="latin.jsonl: not UTF-8.*line 2"):
        build(cfg_for(latin), tokenizer)
    with pytest.raises(DataError, match="no such file"):
        build(cfg_for(tmp_path / "missing.jsonl"), tokenizer)


@pytest.mark.parametrize("row3, error", [
    ({"Response": "  "}, r"gaps\.jsonl: row 3 has an empty 'Response'"),
    ({"Response": None}, r"gaps\.jsonl: row 3 has no 'Response'"),  # JSON null
    ({"Response": None, "Respnse": "Answer 3."}, r"row 3 has no 'Response' but has 'Respnse' \(misspelled\?\)"),
])
def test_empty_field_error_or_lenient_drop(tmp_path, tokenizer, row3, error):
    items = rows(14)
    items[3].update(row3)
    if items[3]["Response"] is None and "Respnse" in row3:
        del items[3]["Response"]  # the key itself misspelled in one row
    path = write_jsonl(tmp_path / "gaps.jsonl", items)
    with pytest.raises(DataError, match=error + r".*data\.lenient=true"):
        build(cfg_for(path), tokenizer)
    dd, stats = build(cfg_for(path, **{"data.lenient": True}), tokenizer)
    assert stats["raw"]["dropped_empty"] == [3] and 3 not in dd["train"]["source_row"]
    assert "dropped 1 rows with an empty field: rows [3]" in stats["report"]


def test_bad_lines_lenient_drop_and_count(tmp_path, tokenizer):
    lines = [json.dumps(r).encode() for r in rows(16)]
    lines[2] = b"{not json"
    lines[4] = b'["a list", "not an object"]'
    lines[6] = '{"Question": "caf\xe9"}'.encode("latin-1")
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DataError, match=r"mixed\.jsonl: not UTF-8 \(byte \d+ of line 7\).*data\.lenient=true"):
        build(cfg_for(path), tokenizer)
    dd, stats = build(cfg_for(path, **{"data.lenient": True}), tokenizer)
    assert stats["raw"]["dropped_invalid_json"] == [3, 5] and stats["raw"]["dropped_not_utf8"] == [7]
    assert stats["counts"] == {"train": 8, "eval": 4}
    assert any("dropped 2 lines that are not valid JSON objects: lines [3, 5]" in x for x in stats["report"])
    assert any("dropped 1 lines that are not UTF-8: lines [7]" in x for x in stats["report"])
    nothing = tmp_path / "nothing.jsonl"  # every line dropped: said, with the counts
    nothing.write_bytes(b"{not json\n\xff\xfe\n")
    with pytest.raises(DataError, match=r"nothing\.jsonl: holds no rows \(dropped 1 lines that are not valid JSON"):
        build(cfg_for(nothing, **{"data.lenient": True}), tokenizer)


def test_csv_not_utf8_or_empty(tmp_path, tokenizer):
    latin = tmp_path / "latin.csv"
    latin.write_bytes("Question,Complex_CoT,Response\ncaf\xe9?,x,y\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.csv: not UTF-8 .*line 2.*re-save the file as UTF-8"):
        build(cfg_for(latin), tokenizer)
    empty = tmp_path / "empty.csv"
    empty.write_text("\n")
    with pytest.raises(DataError, match=r"empty\.csv: the file is empty"):
        build(cfg_for(empty), tokenizer)


def test_duplicates_error_or_lenient_drop_and_held_out_never_overlaps(tmp_path, tokenizer):
    items = rows(14)
    items[5] = {k: f"  {v.upper()} " for k, v in items[1].items()}  # a copy up to case and spacing
    items[9] = {**items[2], "Response": "another answer"}  # held-out question also in training
    path = write_jsonl(tmp_path / "dups.jsonl", items)
    with pytest.raises(DataError, match=r"dups\.jsonl: row 5 repeats row 1 .*data\.lenient=true"):
        build(cfg_for(path), tokenizer)
    dd, stats = build(cfg_for(path, **{"data.lenient": True}), tokenizer)
    assert stats["raw"]["dropped_duplicate"] == [5]
    assert "dropped 1 duplicate rows: rows [5]" in stats["report"]
    assert set(dd["train"]["Question"]).isdisjoint(dd["eval"]["Question"])
    assert stats["raw"]["eval_dropped_overlap"]


@pytest.mark.parametrize("action", ["drop", "truncate", "error"])
def test_overlong_rows(tmp_path, tokenizer, action):
    path = write_jsonl(tmp_path / "long.jsonl", rows(14, long_from=6))
    cfg = cfg_for(path, **{"data.overlong": action, "model.max_seq_length": 256})
    if action == "error":
        with pytest.raises(DataError, match="train row 6 is .* tokens, over model.max_seq_length=256"):
            build(cfg, tokenizer)
        return
    dd, stats = build(cfg, tokenizer)
    assert stats["raw"]["overlong"]["train"] == [6, 7]
    assert stats["token_lengths"]["train"]["over_max_seq_length"] == 2
    if action == "drop":
        assert len(dd["train"]) == 6
        assert all(ids[-1] == tokenizer.eos_token_id for ids in dd["train"]["input_ids"])
    else:
        assert len(dd["train"]) == 8 and max(len(i) for i in dd["train"]["input_ids"]) == 256


def test_too_few_rows_for_held_out(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "few.jsonl", rows(8))
    with pytest.raises(DataError, match="lower data.train_rows"):
        build(cfg_for(path), tokenizer)


def test_hub_failure_is_clear():
    with pytest.raises(DataError, match="could not load from the Hub"):
        d = load_config("seed").data
        load_rows(d.source, config_name=d.config_name, split=d.split)


def test_prepare_saves_and_reuses(tmp_path, tokenizer):
    import datasets

    run = Run.open(tmp_path / "run")
    cfg = load_config("cpu")
    prepared = prepare(cfg, run, tokenizer)
    dd = datasets.load_from_disk(str(run.stage_dir("data") / "dataset"))
    assert len(dd["train"]) == len(prepared.train) == cfg.data.train_rows
    assert run.is_current(cfg, "data")
    again = prepare(cfg, run)  # reused: no tokenizer needed
    assert again.stats == json.loads((run.stage_dir("data") / "stats.json").read_text())
    assert sample_path().is_file()

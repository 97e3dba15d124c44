"""Stage 02 in the run folder: the prepared splits, reused when made with these settings, else built and saved."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1helpers.core.config import Config
from r1helpers.core.ddp import print0
from r1helpers.core.runs import Run, atomic_dir, read_json, write_json_atomic
from r1helpers.data import DataError, Report, example_lengths, length_stats, select_rows, tokenize_rows
from r1helpers.data_sources import load_rows
from r1helpers.inference.choose import load_tokenizer_for


@dataclass
class Prepared:
    train: Any  # datasets.Dataset
    eval: Any
    stats: dict[str, Any]
    path: Path

    def trainer_columns(self, split: str = "train"):
        """Only the token ids go to the trainer; text columns would break its collator."""
        return getattr(self, split).select_columns(["input_ids"])


def build(cfg: Config, tokenizer) -> tuple[Any, dict[str, Any]]:
    """Load, check, split and tokenize with cfg.data's and cfg.model's values; returns a DatasetDict and the statistics."""
    import datasets

    d, max_len = cfg.data, cfg.model.max_seq_length
    columns = (d.question_column, d.cot_column, d.response_column)
    report = Report(overlong_action=d.overlong)
    ds, origin = load_rows(d.source, config_name=d.config_name, split=d.split, lenient=d.lenient, columns=columns,
                           report=report)
    train_rows, eval_rows = select_rows(ds, train_rows=d.train_rows, eval_rows=d.eval_rows, columns=columns,
                                        lenient=d.lenient, origin=origin, report=report)
    # Lengths before any drop, so the histogram shows what max_seq_length cuts off.
    all_lengths = {"train": example_lengths(tokenizer, train_rows), "eval": example_lengths(tokenizer, eval_rows)}
    train = tokenize_rows(train_rows, tokenizer, max_seq_length=max_len, overlong=d.overlong, split="train",
                          report=report)
    held = tokenize_rows(eval_rows, tokenizer, max_seq_length=max_len, overlong=d.overlong, split="eval",
                         report=report)
    if not train:
        raise DataError(f"{origin}: no training rows left after the checks ({'; '.join(report.lines())})"
                        + length_advice(all_lengths["train"], max_len, d.overlong))
    train_ds = datasets.Dataset.from_list(train)
    # data.eval_rows=0: an empty split with the training columns, not a table without columns.
    held_ds = datasets.Dataset.from_list(held) if held else train_ds.select([])
    dd = datasets.DatasetDict({"train": train_ds, "eval": held_ds})
    stats = {
        "report": report.lines(),
        "counts": {"train": len(train), "eval": len(held)},
        "token_lengths": {k: length_stats(v, max_len) for k, v in all_lengths.items()},
        "all_lengths": all_lengths,
        "eos_ends_every_example": all(r["input_ids"][-1] == tokenizer.eos_token_id for r in train + held),
        "raw": {"dropped_invalid_json": report.dropped_invalid_json, "dropped_not_utf8": report.dropped_not_utf8,
                "dropped_empty": report.dropped_empty, "dropped_duplicate": report.dropped_duplicate,
                "eval_dropped_overlap": report.eval_dropped_overlap, "overlong": report.overlong},
    }
    return dd, stats


def length_advice(lengths: list[int], max_len: int, overlong: str = "drop") -> str:
    """The model.max_seq_length values that keep every row, or all but the longest tenth ("": none is over)."""
    over = sorted(n for n in lengths if n > max_len)
    if not over:
        return ""
    s = sorted(lengths)
    k = max(1, len(s) // 10)
    keep_most = s[-k - 1] if len(s) > k else None
    most = (f" or {keep_most} (keeps all but the {k} longest)" if keep_most and keep_most > max_len
            and keep_most < s[-1] else "")
    return (f". {len(over)} of the {len(s)} training rows are longer than model.max_seq_length={max_len} tokens "
            f"(data.overlong={overlong}); the longest is {s[-1]} tokens. Raise model.max_seq_length to {s[-1]} (keeps "
            f"all {len(s)} rows){most}, e.g. --set model.max_seq_length={s[-1]}, or set data.overlong=truncate to "
            "keep them cut short.")


def prepare(cfg: Config, run: Run, tokenizer=None, force: bool = False) -> Prepared:
    """The run folder's prepared splits when made with these settings, else rebuilt with `tokenizer` (default:
    cfg.model.name's)."""

    def load() -> Prepared:
        dd = load_splits(run.path("dataset"))
        return Prepared(dd["train"], dd["eval"], read_json(run.path("data_stats")), run.stage_dir("data"))

    def make() -> Prepared:
        dd, stats = build(cfg, tokenizer if tokenizer is not None else load_tokenizer_for(cfg))
        with atomic_dir(run.path("dataset")) as tmp:
            dd.save_to_disk(str(tmp))
        write_json_atomic(run.path("data_stats"), stats)
        run.write_manifest(cfg, "data", counts=stats["counts"])
        return Prepared(dd["train"], dd["eval"], stats, run.stage_dir("data"))

    return run.reuse_or_build(cfg, "data", make, load, force=force, say=print0)


def load_splits(path: Path):
    """The DatasetDict saved by stage 02; a split of zero rows, which `load_from_disk` cannot read back, is rebuilt
    empty with the training split's columns."""
    import datasets

    path = Path(path)
    splits = read_json(path / "dataset_dict.json")["splits"]
    empty = [s for s in splits if not read_json(path / s / "state.json").get("_data_files")]
    loaded = {s: datasets.Dataset.load_from_disk(str(path / s)) for s in splits if s not in empty}
    if empty and "train" in loaded:
        loaded.update({s: loaded["train"].select([]) for s in empty})
    return datasets.DatasetDict({s: loaded[s] for s in splits})


def eval_questions(prepared: Prepared, n: int) -> list[dict[str, str]]:
    """The first n held-out rows: always the same ones for base and fine-tuned models."""
    rows = prepared.eval.select(range(min(n, len(prepared.eval))))
    return [{"id": f"eval-{r['source_row']}", "question": r["Question"], "reference_cot": r["Complex_CoT"],
             "reference_answer": r["Response"]} for r in rows]

"""What stage 05 starts from: its output folder, tokenizer and probe prompts, and the trained adapter's state."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from r1helpers.core.config import Config
from r1helpers.core.runs import Run, read_json
from r1helpers.export.files import adapter_problem, with_chat_template

MERGED_FOR_GGUF = ".merged-for-gguf"  # the temporary merge GGUF is made from when merged_16bit is not kept


def output_dir(cfg: Config, run: Run) -> Path:
    """export.output_dir; unset, /kaggle/tmp on Kaggle (large files) and the run folder's export/ elsewhere."""
    if cfg.export.output_dir:
        return Path(cfg.export.output_dir).expanduser().resolve()
    from r1helpers.core.kaggle_paths import large_output_dir

    return large_output_dir(run.root.name) or run.stage_dir("export")


def export_tokenizer(cfg: Config):
    """The training tokenizer with pad distinct from EOS and the template that renders the training prompt."""
    from r1helpers.inference.choose import load_tokenizer_for

    return with_chat_template(load_tokenizer_for(cfg))


def probe_prompts(cfg: Config, prepared, tokenizer) -> tuple[list[list[int]], list[str]]:
    """The example question and two held-out ones, as the training prompt (ids with BOS, text without)."""
    from r1helpers.core import prompts
    from r1helpers.workflow.data_stage import eval_questions

    questions = list(cfg.infer.example_questions[:1]) + [q["question"] for q in eval_questions(prepared, 2)]
    questions = questions or ["What is fever?"]
    return [prompts.encode_prompt(tokenizer, q) for q in questions], [prompts.build_prompt(q) for q in questions]


def adapter_hash(adapter_dir: Path) -> str:
    """sha256 of the adapter's weights: every export records the adapter it was made from."""
    from r1helpers.export.hub import sha256

    return sha256(Path(adapter_dir) / "adapter_model.safetensors")


def dtype_candidates(requested: str, own: str) -> list[str]:
    """16-bit types to merge in, in order. `auto`: float16 first (three more mantissa bits than bfloat16 keep a
    small LoRA update that bfloat16 rounds away; a weight beyond its range fails the check), then the
    checkpoint's own type."""
    return [requested] if requested != "auto" else list(dict.fromkeys(["float16", own, "bfloat16"]))


def remove_stale_merges(out: Path) -> list[str]:
    """Delete temporary merges an interrupted export left in `out` (`.merged-for-gguf-*`, and atomic_dir's
    `..merged-for-gguf*.<pid>.<rand>.tmp` around them): the caller holds the run folder's lock."""
    stale = sorted(p for p in Path(out).glob(f"*{MERGED_FOR_GGUF}*") if p.is_dir())
    for p in stale:
        shutil.rmtree(p)
    return [f"removed {p.name}, a temporary merge left by an interrupted export" for p in stale]


def source_problem(run: Run, adapter_dir: Path) -> str | None:
    """Why train/adapter cannot be exported (damaged: it does not load, or it is not the adapter this
    training run recorded), or None. Checked before anything is replaced."""
    problem = adapter_problem(adapter_dir)
    if problem:
        return problem
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        source = read_json(run.path("exported"))["source"]
        train = run.read_manifest("train") or {}
        same_training = source["train_finished_at"] and source["train_finished_at"] == train.get("finished_at")
        if same_training and adapter_hash(adapter_dir) != source["sha256"]:
            return (f"its sha256 is not the {source['sha256'][:12]}… recorded when this training run's adapter "
                    "was exported, and training has not run since")
    return None


def damaged_message(run: Run, out: Path, adapter_dir: Path, problem: str) -> str:
    copy = out / "adapter" / "adapter_model.safetensors"
    kept = f" The exported copy {copy} was left as it is." if copy.is_file() else ""
    return (f"export refused: the trained adapter {Path(adapter_dir) / 'adapter_model.safetensors'} is damaged "
            f"({problem}), so nothing was exported or replaced.{kept} Put the adapter back (copy "
            f"{copy if copy.is_file() else 'a good copy'} into {adapter_dir}/ when it came from this training run) "
            f"or train again (move {run.stage_dir('train')} aside and run stage 03), then run stage 05 again.")

"""Export the fine-tuned model: adapter, merged 16-bit model, GGUF, Hub.

The adapter is merged into 16-bit base weights loaded fresh from the base
model, never into dequantized 4-bit weights, whose rounding would be baked in.

    python -m r1helpers.pipeline --stages 05
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from .config import Config
from .runs import Run, atomic_dir, write_json_atomic


def merged_dtype(cfg: Config):
    import torch

    from .env import detect_hardware, resolve_dtype

    name = resolve_dtype(cfg.model.dtype, detect_hardware())
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float16}[name]


def save_adapter(adapter_dir: Path, out: Path) -> Path:
    with atomic_dir(out) as tmp:
        shutil.copytree(adapter_dir, tmp, dirs_exist_ok=True)
    return out


def save_merged(cfg: Config, adapter_dir: Path, out: Path) -> Path:
    """Base weights in 16-bit + adapter, merged and saved as safetensors shards with the tokenizer."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from . import prompts
    from .modeling import load_tokenizer
    from .tinymodel import resolve_model_path

    base = AutoModelForCausalLM.from_pretrained(
        resolve_model_path(cfg.model.name), dtype=merged_dtype(cfg), revision=cfg.model.revision,
        device_map={"": 0} if torch.cuda.is_available() else None,
    )
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    tok = load_tokenizer(cfg)
    tok.chat_template = prompts.CHAT_TEMPLATE
    with atomic_dir(out) as tmp:
        merged.save_pretrained(str(tmp), safe_serialization=True, max_shard_size="5GB")
        tok.save_pretrained(str(tmp))
    return out


def export(cfg: Config, run: Run) -> dict[str, Any]:
    from .data import prepare
    from .train import ensure_trained

    result = ensure_trained(cfg, run, prepare(cfg, run))
    out = run.stage_dir("export")
    done: dict[str, Any] = {"adapter": str(save_adapter(result.adapter_dir, out / "adapter"))}
    if cfg.export.save_merged_16bit:
        done["merged_16bit"] = str(save_merged(cfg, result.adapter_dir, out / "merged_16bit"))
    write_json_atomic(out / "exported.json", done)
    run.write_manifest(cfg, "export", outputs=done)
    return done


def summary_table(exported: dict[str, Any]):
    import pandas as pd

    return pd.DataFrame([(k, v) for k, v in exported.items()], columns=["artefact", "path"]).set_index("artefact")

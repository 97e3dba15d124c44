"""Write the adapter and merged-model folders as downstream tools load them: the training tokenizer with the chat
template that renders the training prompt token for token (`prompts.template_for`), and pad distinct from EOS."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def with_chat_template(tokenizer):
    """The tokenizer with the template that renders the training prompt, BOS included exactly when the tokenizer
    adds it (changed in place, returned)."""
    from r1helpers.core import prompts

    tokenizer.chat_template = prompts.template_for(tokenizer)
    return tokenizer


def adapter_problem(adapter_dir: Path) -> str | None:
    """Why the saved adapter in `adapter_dir` would not load (its config or its safetensors file missing,
    unreadable or cut short), or None."""
    from safetensors import safe_open

    adapter_dir = Path(adapter_dir)
    try:
        json.loads((adapter_dir / "adapter_config.json").read_text())
        with safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="pt") as f:
            next(iter(f.keys()))
    except StopIteration:
        return "adapter_model.safetensors holds no tensors"
    except Exception as e:  # OSError, JSONDecodeError, SafetensorError (a truncated file: "not fully covered")
        return f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
    return None


def write_adapter(adapter_dir: Path, out_dir: Path, tokenizer) -> None:
    """Copy the adapter's weights and config into `out_dir` and save the tokenizer beside them."""
    out_dir = Path(out_dir)
    for name in ADAPTER_FILES:
        shutil.copy2(Path(adapter_dir) / name, out_dir / name)
    tokenizer.save_pretrained(str(out_dir))


def save_tokenizer(tokenizer, folder: Path) -> None:
    """The tokenizer (with its chat template) beside a merged model, and pad distinct from EOS in its
    generation_config.json, as in training, so batched generation stops at EOS."""
    tokenizer.save_pretrained(str(folder))
    path = Path(folder) / "generation_config.json"
    gen = json.loads(path.read_text()) if path.is_file() else {}
    gen.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=gen.get("eos_token_id", tokenizer.eos_token_id),
               pad_token_id=tokenizer.pad_token_id)
    path.write_text(json.dumps(gen, indent=2) + "\n")


def write_merged(base_dir: Path, adapter_dir: Path, out_dir: Path, tokenizer, dtype: str) -> dict[str, Any]:
    """Merge the adapter into the base's 16-bit weights in `out_dir`, add the tokenizer, check every weight:
    {"merge": the MergeReport as a dict, "weights": merge.weight_check's result}."""
    from r1helpers.export.merge import merge_lora, weight_check

    report = merge_lora(base_dir, adapter_dir, out_dir, dtype)
    save_tokenizer(tokenizer, out_dir)
    return {"merge": asdict(report), "weights": weight_check(base_dir, adapter_dir, out_dir)}

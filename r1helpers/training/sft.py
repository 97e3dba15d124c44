"""LoRA fine-tuning with TRL's SFTTrainer: `sft_arguments` (exactly SFTConfig's keyword arguments, from plain
values), the trainer, the checkpoint a rerun resumes from, W&B's reachability."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from r1helpers.training.plan import MAX_MICRO_BATCH, token_budget_env

# TRL's SFTConfig values this project never changes; listed so the recorded arguments are complete.
FIXED_ARGUMENTS = {"save_total_limit": 2, "packing": False, "dataloader_num_workers": 0, "remove_unused_columns": True}


def sft_arguments(*, output_dir: str | os.PathLike, per_device_train_batch_size: int,
                  gradient_accumulation_steps: int, learning_rate: float, warmup_steps: int, max_steps: int,
                  optim: str, weight_decay: float, lr_scheduler_type: str, seed: int, logging_steps: int,
                  eval_steps: int, save_steps: int, max_seq_length: int, padding_free: bool = False,
                  gradient_checkpointing: str | bool = False, mixed_precision: str = "no",
                  has_eval: bool = True, report_to: list[str] | None = None, run_name: str | None = None,
                  progress_bars: bool = True, ddp: dict[str, Any] | None = None) -> dict[str, Any]:
    """The keyword arguments for `trl.SFTConfig`, as a plain dict (nothing imported, nothing built).

    `gradient_checkpointing` is always passed (TRL would turn it on whatever add_lora chose). `mixed_precision`:
    "bfloat16" | "float16" (a T4) on a GPU, "no" on the CPU. `eval_steps` or `save_steps` 0: never. `ddp`:
    r1helpers.core.ddp.trainer_kwargs() under torchrun.
    """
    checkpointing = str(gradient_checkpointing).lower() != "false"
    eval_on = has_eval and eval_steps > 0
    return {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": per_device_train_batch_size,
        # Evaluation holds no activations for a backward, but Unsloth does not split its batches.
        "per_device_eval_batch_size": min(per_device_train_batch_size, MAX_MICRO_BATCH),
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "padding_free": padding_free,
        "gradient_checkpointing": checkpointing,
        # Non-reentrant, as add_lora: the reentrant kind breaks DDP's gradient hooks.
        "gradient_checkpointing_kwargs": {"use_reentrant": False} if checkpointing else None,
        "learning_rate": learning_rate,
        "warmup_steps": warmup_steps,
        "max_steps": max_steps,
        "optim": optim,
        "weight_decay": weight_decay,
        "lr_scheduler_type": lr_scheduler_type,
        "seed": seed,
        "data_seed": seed,
        "bf16": mixed_precision == "bfloat16",
        "fp16": mixed_precision == "float16",
        "max_length": max_seq_length,
        "logging_steps": logging_steps,
        "eval_strategy": "steps" if eval_on else "no",
        "eval_steps": eval_steps if eval_on else None,
        "save_strategy": "steps" if save_steps > 0 else "no",
        "save_steps": save_steps if save_steps > 0 else 500,
        "report_to": list(report_to) if report_to else "none",
        "run_name": run_name,
        # Headless (papermill): plain log lines from transformers' printer instead of bars.
        "disable_tqdm": not progress_bars,
        **FIXED_ARGUMENTS,
        **(ddp or {}),
    }


def make_trainer(model, tokenizer, train_dataset, eval_dataset, sft_args: dict[str, Any], token_budget: int = 0):
    """TRL's SFTTrainer over a peft model and tokenized rows (an `input_ids` column), configured by
    `SFTConfig(**sft_args)`. `token_budget` > 0: Unsloth runs a step of more tokens in several passes."""
    from trl import SFTConfig, SFTTrainer

    model.config.use_cache = False  # the KV cache is for generation; training recomputes every position
    with token_budget_env(token_budget):
        return SFTTrainer(model=model, processing_class=tokenizer, args=SFTConfig(**sft_args),
                          train_dataset=train_dataset, eval_dataset=eval_dataset)


def wandb_endpoint() -> str:
    """host:port the W&B client talks to: WANDB_BASE_URL or api.wandb.ai:443."""
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    port = url.port or (80 if url.scheme == "http" else 443)
    return f"{url.hostname or 'api.wandb.ai'}:{port}"


def wandb_reachable(timeout: float = 3.0) -> bool:
    """An online run without network hangs in retries; check that the client's own host and port answer."""
    import socket

    host, _, port = wandb_endpoint().rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError:
        return False
    return True


# Without these a resumed run silently diverges from an uninterrupted one.
RESUME_STATE = ("optimizer.pt", "scheduler.pt", "rng_state*.pth")


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why `checkpoint` cannot be resumed from exactly (trainer_state.json, written last, missing or cut short; a
    file lost afterwards), or None when it is complete."""
    checkpoint = Path(checkpoint)
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return "trainer_state.json missing or cut short"
    step = checkpoint.name.rsplit("-", 1)[-1]
    if not isinstance(state, dict) or str(state.get("global_step")) != step:
        return f"trainer_state.json is not step {step}'s"
    missing = [pattern for pattern in ("adapter_model.*", *RESUME_STATE)
               if not any(f.is_file() and f.stat().st_size > 0 for f in checkpoint.glob(pattern))]
    if missing:
        return "no " + ", ".join(m.replace("*", "") for m in missing)
    return None


def latest_checkpoint(ckpt_dir: Path, say: Callable[[str], None] | None = None) -> Path | None:
    """The newest checkpoint that was fully written. `say` gets one line naming each newer checkpoint that is
    incomplete (and what it lacks), and which one is resumed from instead."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    found = sorted(((int(p.name.rsplit("-", 1)[-1]), p) for p in ckpt_dir.glob("checkpoint-*")
                    if p.name.rsplit("-", 1)[-1].isdigit()), reverse=True)
    skipped = []
    for _, p in found:
        problem = checkpoint_problem(p)
        if problem is None:
            if skipped and say:
                say(f"train: not resuming from {'; '.join(skipped)}, so resuming from the previous complete "
                    f"checkpoint, {p.name}, instead")
            return p
        skipped.append(f"{p.name} (incomplete: {problem})")
    if skipped and say:
        say(f"train: not resuming from {'; '.join(skipped)}: no complete checkpoint is left, so training starts "
            "from step 0")
    return None


def last_value(log_history: list[dict[str, Any]], key: str) -> float | None:
    """The last logged value of `key` ("loss", "eval_loss", "num_tokens", ...) in a trainer's log history."""
    values = [r[key] for r in log_history if key in r]
    return values[-1] if values else None

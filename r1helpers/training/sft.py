"""LoRA supervised fine-tuning with TRL's SFTTrainer and the recipe's settings.

Checkpoints go to the run folder every `train.save_steps`; a rerun resumes from the
latest complete one made with the same settings (other settings: they are cleared,
never resumed; `train.resume=false` starts over). W&B logs online with a key,
offline without one, and its absence never stops training.

    python -m r1helpers.pipeline --stages 03
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1helpers.core.config import Config, ConfigError
from r1helpers.core.ddp import trainer_kwargs
from r1helpers.core.hardware import headless
from r1helpers.modeling.load import Loaded




def wandb_reachable(timeout: float = 3.0) -> bool:
    """An online run without network hangs in retries; check the API host answers first."""
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _complete(checkpoint: Path) -> bool:
    """The trainer writes trainer_state.json last (after adapter, optimizer, scheduler and RNG
    states), so a kill mid-save leaves it missing or cut short."""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    step = checkpoint.name.rsplit("-", 1)[-1]
    return str(state.get("global_step")) == step and any(checkpoint.glob("adapter_model.*"))


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest checkpoint that was fully written."""
    if not ckpt_dir.is_dir():
        return None
    done = [(int(p.name.rsplit("-", 1)[-1]), p) for p in ckpt_dir.glob("checkpoint-*")
            if p.name.rsplit("-", 1)[-1].isdigit() and _complete(p)]
    return max(done)[1] if done else None




# GPUs with at least this much memory fold gradient accumulation into one larger
# micro-batch (same effective batch, fewer and fuller kernel launches).
LARGE_GPU_GIB = 40.0
MAX_MICRO_BATCH = 8
# Activations a LoRA step keeps per token without gradient checkpointing, per layer and unit of
# (hidden + intermediate) width, for each backend. Measured on the H100 in the 8B shape (BENCHMARKS.md),
# peak allocated less ~6.5 GiB of weights over the largest pass:
# - Unsloth (fused kernels and chunked loss): 3.6 MiB a token (43.1 GiB at passes of 10,240 tokens;
#   35.5 at 8,153); 6 MiB for 32 x (4096 + 14336) keeps a margin for other GPUs and fragmentation.
# - transformers + peft + bitsandbytes (full logits, unfused MLP): 10.2 MiB a token (47.2 GiB at
#   padded micro-batches of 2 x 2048); 12 MiB.
ACTIVATION_MIB_PER_TOKEN = {"unsloth": 6.0, "transformers": 12.0}
LLAMA_8B_WIDTH_UNITS = 32 * (4096 + 14336)
# Share of the GPU a plan without checkpointing may fill; the rest absorbs fragmentation and eval.
MEMORY_HEADROOM = 0.85


@dataclass
class BatchPlan:
    micro_batch: int
    accumulation: int
    padding_free: bool
    reason: str
    gradient_checkpointing: str | None = None  # None: lora.gradient_checkpointing as configured
    # Most tokens one forward/backward may hold: a step whose rows hold more runs as several passes over
    # whole examples, each divided by the step's token count, so they sum to the unsplit loss and
    # gradient (Unsloth's UNSLOTH_TOKEN_BUDGET). 0: never split.
    token_budget: int = 0


def activation_gib(tokens: int, dims: Any, backend: str = "unsloth") -> float:
    """Activation memory of one pass of `tokens` tokens (pad tokens included) without checkpointing."""
    unit = dims.num_hidden_layers * (dims.hidden_size + dims.intermediate_size)
    return tokens * unit / LLAMA_8B_WIDTH_UNITS * ACTIVATION_MIB_PER_TOKEN[backend] / 1024


def worst_micro_batch_tokens(micro: int, max_len: int, lengths: list[int] | None, padded: bool = False) -> int:
    """Tokens in the largest micro-batch the data can form: its `micro` longest rows, or `micro`
    copies of the longest where rows are padded to the longest in the batch."""
    if not lengths:
        return micro * max_len
    longest = sorted((min(n, max_len) for n in lengths), reverse=True)
    return micro * longest[0] if padded else sum(longest[:micro])


def activation_tokens(gib: float, dims: Any, backend: str = "unsloth") -> int:
    """How many tokens' activations fit in `gib` without checkpointing (the inverse of activation_gib)."""
    return max(0, int(gib / activation_gib(1, dims, backend)))


def plan_batches(cfg: Config, backend: str, gpu_memory_gib: float | None, lengths: list[int] | None = None,
                 dims: Any = None, base_gib: float | None = None, processes: int = 1) -> BatchPlan:
    """The micro-batch, accumulation, padding and recomputation to train with, keeping the effective batch.

    Padding-free batches drop pad tokens and keep examples apart (Unsloth's block mask);
    transformers' SDPA lets them attend to each other, so that path stays padded.

    Given the model's dimensions and the memory its weights take, a padding-free Unsloth run on
    one GPU takes each optimizer step's rows as one micro-batch without gradient checkpointing
    and caps each forward at the tokens whose activations fit (a token budget): a step of short
    rows runs in one pass, a step of long rows in two or three, and no step can exceed the GPU
    whatever the lengths. That needs one full-length row to fit. Otherwise, and for padded
    batches (the transformers backend), the largest micro-batch whose longest possible batch fits
    runs without checkpointing; where none fits (a T4 at 2048 tokens) the recipe's micro-batch and
    checkpointing stay. Measured on the H100 in BENCHMARKS.md.
    `train.batch_plan=as_set` keeps every value exactly as set (the seed recipe as written).
    """
    t = cfg.train
    pf = {"true": True, "false": False}.get(str(t.padding_free).lower(), backend == "unsloth")
    if pf and backend != "unsloth":
        raise ConfigError(
            f"train.padding_free=true needs the Unsloth backend (this run uses {backend}): transformers' SDPA "
            "attention lets the examples of a padding-free row attend to each other (measured by "
            "r1helpers.tools.bench.padding_free_check); set train.padding_free=auto or false")
    effective = t.per_device_train_batch_size * t.gradient_accumulation_steps
    if t.batch_plan == "as_set" or gpu_memory_gib is None:
        why = "as set" if t.batch_plan == "as_set" else "no GPU"
        return BatchPlan(t.per_device_train_batch_size, t.gradient_accumulation_steps, pf, why)
    max_len = cfg.model.max_seq_length
    divisors = [d for d in range(min(effective, MAX_MICRO_BATCH), 0, -1) if effective % d == 0]
    if dims is not None and base_gib is not None:
        free = MEMORY_HEADROOM * gpu_memory_gib - base_gib
        fits = activation_tokens(free, dims, backend)
        longest = worst_micro_batch_tokens(1, max_len, lengths)
        # Unsloth splits a step only where every rank splits alike, so DDP keeps fixed micro-batches.
        splits = pf and backend == "unsloth" and processes == 1
        if splits and t.token_budget:
            # As set: no checkpointing only if a pass of that many tokens (or one longer row) fits.
            need = activation_gib(max(t.token_budget, longest), dims, backend)
            return BatchPlan(effective, 1, pf,
                             f"train.token_budget={t.token_budget}: each step's {effective} rows in passes of at "
                             f"most {t.token_budget} tokens (a longer row runs alone), "
                             + ("without gradient checkpointing" if need <= free else "checkpointing as configured"),
                             "false" if need <= free else None, t.token_budget)
        if splits and fits >= longest:
            worst = worst_micro_batch_tokens(effective, max_len, lengths)
            budget = 0 if worst <= fits else fits
            split = (f"steps over {budget} tokens run in several passes" if budget else
                     f"its longest possible step ({worst} tokens) fits")
            return BatchPlan(effective, 1, pf,
                             f"{gpu_memory_gib:.0f} GiB GPU: each step's {effective} rows as one padding-free "
                             f"micro-batch without gradient checkpointing; ~{fits} tokens of activations fit in "
                             f"the {free:.0f} GiB free, {split}", "false", budget)
        for micro in divisors:
            tokens = worst_micro_batch_tokens(micro, max_len, lengths, padded=not pf)
            need = activation_gib(tokens, dims, backend)
            if need <= free:
                return BatchPlan(micro, effective // micro, pf,
                                 f"{gpu_memory_gib:.0f} GiB GPU: micro-batch {micro} x accumulation "
                                 f"{effective // micro} (effective batch {effective}) without gradient "
                                 f"checkpointing: its longest batch ({tokens} tokens{'' if pf else ' with padding'}) "
                                 f"needs ~{need:.0f} GiB of activations, {free:.0f} GiB free", "false")
    if gpu_memory_gib < LARGE_GPU_GIB:
        return BatchPlan(t.per_device_train_batch_size, t.gradient_accumulation_steps, pf,
                         f"{gpu_memory_gib:.0f} GiB GPU keeps the recipe's micro-batch and checkpointing")
    micro = divisors[0]
    return BatchPlan(micro, effective // micro, pf,
                     f"{gpu_memory_gib:.0f} GiB GPU: micro-batch {micro} x accumulation {effective // micro} "
                     f"(effective batch {effective}, as the recipe)")


TOKEN_BUDGET_ENV = "UNSLOTH_TOKEN_BUDGET"


@contextlib.contextmanager
def token_budget_env(plan: BatchPlan) -> Iterator[None]:
    """Unsloth's SFTTrainer reads UNSLOTH_TOKEN_BUDGET when it is built (unsloth/utils/token_budget.py):
    set it for the trainer being built, then put back what the user had. A plan without a budget
    leaves the variable as the user set it."""
    before = os.environ.get(TOKEN_BUDGET_ENV)
    if plan.token_budget:
        os.environ[TOKEN_BUDGET_ENV] = str(plan.token_budget)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(TOKEN_BUDGET_ENV, None)
        else:
            os.environ[TOKEN_BUDGET_ENV] = before


def sft_config(cfg: Config, loaded: Loaded, output_dir: Path, report_to: list[str], has_eval: bool,
               plan: BatchPlan | None = None):
    from trl import SFTConfig

    t = cfg.train
    dtype = loaded.backend.dtype
    on_gpu = loaded.device.type == "cuda"
    eval_on = has_eval and t.eval_steps > 0
    plan = plan or plan_batches(cfg, loaded.backend.name, gpu_memory_gib())
    # TRL's SFTConfig turns checkpointing on by default, and the trainer then enables it on the model
    # whatever add_lora chose; say what the plan and the config chose instead.
    checkpointing = str(plan.gradient_checkpointing or cfg.lora.gradient_checkpointing).lower() != "false"
    return SFTConfig(
        gradient_checkpointing=checkpointing,
        # Non-reentrant, as add_lora: the reentrant kind breaks DDP's gradient hooks.
        gradient_checkpointing_kwargs={"use_reentrant": False} if checkpointing else None,
        output_dir=str(output_dir),
        per_device_train_batch_size=plan.micro_batch,
        # Evaluation holds no activations for a backward, but Unsloth does not split its batches.
        per_device_eval_batch_size=min(plan.micro_batch, MAX_MICRO_BATCH),
        gradient_accumulation_steps=plan.accumulation,
        padding_free=plan.padding_free,
        warmup_steps=t.warmup_steps,
        max_steps=t.max_steps,
        learning_rate=t.learning_rate,
        optim=t.optim,
        weight_decay=t.weight_decay,
        lr_scheduler_type=t.lr_scheduler_type,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        eval_strategy="steps" if eval_on else "no",
        eval_steps=t.eval_steps if eval_on else None,
        save_strategy="steps" if t.save_steps > 0 else "no",
        save_steps=t.save_steps if t.save_steps > 0 else 500,
        save_total_limit=2,
        bf16=on_gpu and dtype == "bfloat16",
        fp16=on_gpu and dtype == "float16",
        max_length=cfg.model.max_seq_length,
        packing=False,
        report_to=report_to or "none",
        run_name=run_name_from(output_dir),
        **trainer_kwargs(),
        # Headless (papermill): plain log lines from transformers' printer instead of bars.
        disable_tqdm=headless(),
        dataloader_num_workers=0,
        remove_unused_columns=True,
    )


def gpu_memory_gib() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**30


def run_name_from(output_dir: Path) -> str:
    return Path(output_dir).parents[1].name















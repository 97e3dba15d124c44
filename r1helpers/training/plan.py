"""The batch planner: micro-batch, accumulation, padding and recomputation for one GPU's memory, keeping the
effective batch asked for.

    plan_batches(2, 4, backend="unsloth", gpu_memory_gib=15.0, max_seq_length=2048)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from r1helpers.core.config import ConfigError

# GPUs with at least this much memory fold accumulation into one larger micro-batch (the same effective batch).
LARGE_GPU_GIB = 40.0
MAX_MICRO_BATCH = 8
# Activations a LoRA step keeps per token without gradient checkpointing in the 8B shape, with a margin over
# what the H100 measured (BENCHMARKS.md): Unsloth 3.6 MiB, transformers + peft 10.2 MiB.
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
    # Most tokens one pass may hold; a longer step runs as several passes summing to its gradient. 0: never split.
    token_budget: int = 0

    @property
    def effective_batch(self) -> int:
        """Examples averaged into one optimizer step by one process."""
        return self.micro_batch * self.accumulation

    def checkpointing(self, configured: str) -> str:
        """The gradient checkpointing this plan trains with, given lora.gradient_checkpointing."""
        return str(self.gradient_checkpointing or configured).lower()


def gpu_memory_gib() -> float | None:
    """Total memory of this process's GPU (None without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**30


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


def resolve_padding_free(padding_free: str | bool, backend: str) -> bool:
    """train.padding_free ("auto" | "true" | "false") for this backend; refuses what leaks across examples."""
    pf = {"true": True, "false": False}.get(str(padding_free).lower(), backend == "unsloth")
    if pf and backend != "unsloth":
        raise ConfigError(
            f"train.padding_free=true needs the Unsloth backend (this run uses {backend}): transformers' SDPA "
            "attention lets the examples of a padding-free row attend to each other (measured by "
            "padding_free_check in tools/bench.py); set train.padding_free=auto or false")
    return pf


def plan_batches(per_device_batch: int, accumulation: int, *, backend: str, gpu_memory_gib: float | None,
                 max_seq_length: int, padding_free: str | bool = "auto", batch_plan: str = "auto",
                 token_budget: int = 0, lengths: list[int] | None = None, dims: Any = None,
                 base_gib: float | None = None, processes: int = 1) -> BatchPlan:
    """The micro-batch, accumulation, padding and recomputation to train with, keeping the effective batch
    `per_device_batch x accumulation` (one process's share under DDP).

    Given the model's dimensions and its weights' memory (`dims`, `base_gib`), a padding-free Unsloth run on one
    GPU takes each step's rows as one micro-batch without checkpointing, capping each pass at the tokens that
    fit; otherwise the largest micro-batch whose longest batch fits runs without checkpointing, and where none
    fits (a T4 at 2048 tokens) the recipe's values stay. `batch_plan="as_set"` keeps every value as given.
    """
    pf = resolve_padding_free(padding_free, backend)
    effective = per_device_batch * accumulation
    if batch_plan == "as_set" or gpu_memory_gib is None:
        why = "as set" if batch_plan == "as_set" else "no GPU"
        return BatchPlan(per_device_batch, accumulation, pf, why)
    max_len = max_seq_length
    divisors = [d for d in range(min(effective, MAX_MICRO_BATCH), 0, -1) if effective % d == 0]
    if dims is not None and base_gib is not None:
        free = MEMORY_HEADROOM * gpu_memory_gib - base_gib
        fits = activation_tokens(free, dims, backend)
        longest = worst_micro_batch_tokens(1, max_len, lengths)
        # Unsloth splits a step only where every rank splits alike, so DDP keeps fixed micro-batches.
        splits = pf and backend == "unsloth" and processes == 1
        if splits and token_budget:
            # As set: no checkpointing only if a pass of that many tokens (or one longer row) fits.
            need = activation_gib(max(token_budget, longest), dims, backend)
            return BatchPlan(effective, 1, pf,
                             f"train.token_budget={token_budget}: each step's {effective} rows in passes of at "
                             f"most {token_budget} tokens (a longer row runs alone), "
                             + ("without gradient checkpointing" if need <= free else "checkpointing as configured"),
                             "false" if need <= free else None, token_budget)
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
        return BatchPlan(per_device_batch, accumulation, pf,
                         f"{gpu_memory_gib:.0f} GiB GPU keeps the recipe's micro-batch and checkpointing")
    micro = divisors[0]
    return BatchPlan(micro, effective // micro, pf,
                     f"{gpu_memory_gib:.0f} GiB GPU: micro-batch {micro} x accumulation {effective // micro} "
                     f"(effective batch {effective}, as the recipe)")


TOKEN_BUDGET_ENV = "UNSLOTH_TOKEN_BUDGET"


@contextlib.contextmanager
def token_budget_env(budget: BatchPlan | int) -> Iterator[None]:
    """UNSLOTH_TOKEN_BUDGET, which Unsloth's SFTTrainer reads when built, set for that while (0: as the user set it)."""
    tokens = budget.token_budget if isinstance(budget, BatchPlan) else int(budget or 0)
    before = os.environ.get(TOKEN_BUDGET_ENV)
    if tokens:
        os.environ[TOKEN_BUDGET_ENV] = str(tokens)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(TOKEN_BUDGET_ENV, None)
        else:
            os.environ[TOKEN_BUDGET_ENV] = before

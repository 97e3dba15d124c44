"""How many questions to generate for at once, from the memory the KV cache will take.

At `max_new_tokens=1200` the KV cache, not the weights, decides the batch: every row holds keys and values
for its prompt plus every token generated so far. HF `generate` keeps a finished row in its batch (decoding
padding) until every row has finished, so each row is counted at `longest prompt + max_new_tokens` tokens:
what the batch holds if any one row runs to the limit. Sorting by prompt length, longest first, keeps
padding small and runs the batch most likely to run out of memory first. A plan fills `headroom` (0.85) of
the memory it is given; the rest covers the CUDA context, fragmentation, the dynamic cache's growth and
prefill. Plain functions, numbers in and out: nothing heavy is imported.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30
# Batch where there is no GPU to plan for: CPU generation is bound by compute, not memory.
CPU_BATCH = 8


def kv_cache_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype_bytes: int = 2) -> int:
    """Bytes of KV cache one token takes in one row: keys and values in every layer (the 8B: 128 KiB)."""
    return 2 * num_layers * num_kv_heads * head_dim * dtype_bytes


def kv_cache_bytes_for(model_config, dtype_bytes: int = 2) -> int:
    """`kv_cache_bytes_per_token` from a model's config; `dtype_bytes`: the compute type's (2 for bf16/fp16,
    also under 4-bit weights; 4 for fp32 on a CPU).

        kv_cache_bytes_for(AutoConfig.from_pretrained("unsloth/DeepSeek-R1-Distill-Llama-8B"))  # 131072
    """
    heads = model_config.num_attention_heads
    kv_heads = getattr(model_config, "num_key_value_heads", None) or heads
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // heads
    return kv_cache_bytes_per_token(model_config.num_hidden_layers, kv_heads, head_dim, dtype_bytes)


@dataclass
class GenerationPlan:
    batch_size: int
    tokens_per_row: int  # longest prompt + max_new_tokens (+ kv_slack_tokens): what each row's cache holds at the end
    kv_gib_per_row: float
    budget_gib: float  # memory left for the rows: headroom x free_gib - weights_gib (0.0 without a GPU)
    reason: str  # one sentence for a person


def plan_generation(n_prompts: int, longest_prompt_tokens: int, max_new_tokens: int, kv_bytes_per_token: int,
                    free_gib: float | None, weights_gib: float = 0.0, logits_bytes_per_row: int = 0,
                    activation_bytes_per_row: int = 0, headroom: float = 0.85, max_batch: int = 128,
                    kv_slack_tokens: int = 0) -> GenerationPlan:
    """The largest batch whose rows fit in `headroom x free_gib` beside the weights.

    Each row costs its KV cache at `longest_prompt_tokens + max_new_tokens (+ kv_slack_tokens)` tokens plus
    `logits_bytes_per_row` and `activation_bytes_per_row` (prefill's intermediates, an estimate). The batch is
    capped at `n_prompts` and `max_batch`. `free_gib=None` (no GPU) gives a fixed
    batch of up to 8. If not even one row fits, the plan is batch 1 and the reason says how far to lower
    `max_new_tokens`. `kv_slack_tokens`: Unsloth's path grows its cache 512 tokens at a time.
    """
    tokens = longest_prompt_tokens + max_new_tokens + kv_slack_tokens
    kv_row = tokens * kv_bytes_per_token
    row_bytes = kv_row + logits_bytes_per_row + activation_bytes_per_row

    def plan(batch: int, budget: float, reason: str) -> GenerationPlan:
        return GenerationPlan(batch, tokens, kv_row / GIB, budget, reason)

    if free_gib is None:
        batch = max(1, min(n_prompts, CPU_BATCH, max_batch))
        return plan(batch, 0.0, f"No GPU: a fixed batch of {batch}, since generation on a CPU is bound by "
                                f"compute rather than memory.")
    budget = headroom * free_gib - weights_gib
    per_row = f"{row_bytes / 2**20:.0f} MiB a row ({tokens} tokens of KV cache plus working memory)"
    fits = int(budget * GIB // row_bytes) if budget > 0 else 0
    if fits < 1:
        spare = budget * GIB - logits_bytes_per_row - activation_bytes_per_row
        new_tokens = int(spare // kv_bytes_per_token) - longest_prompt_tokens - kv_slack_tokens
        if new_tokens < 1:
            advice = (f"the {weights_gib:.1f} GiB of weights leave no room in {headroom:.0%} of {free_gib:.1f} GiB, "
                      f"so lowering max_new_tokens (now {max_new_tokens}) will not be enough: load the model in "
                      f"4-bit or use a larger GPU")
        else:
            advice = f"lower max_new_tokens from {max_new_tokens} to at most {new_tokens} for one row to fit"
        return plan(1, budget, f"Not even one row fits: {per_row} against {max(budget, 0):.2f} GiB free after "
                               f"the weights; running one at a time, but {advice}.")
    batch = min(fits, max(1, min(n_prompts, max_batch)))
    limit = ("all the prompts" if batch == n_prompts else
             f"max_batch={max_batch}" if batch == max_batch and fits > max_batch else "memory")
    return plan(batch, budget, f"Batch {batch} (limited by {limit}): {per_row}, {batch * row_bytes / GIB:.2f} GiB "
                               f"of the {budget:.2f} GiB left in {headroom:.0%} of {free_gib:.1f} GiB after "
                               f"{weights_gib:.1f} GiB of weights.")


def order_by_length(prompt_lengths: list[int]) -> list[int]:
    """Indices of the prompts, longest first; equal lengths keep their input order."""
    return sorted(range(len(prompt_lengths)), key=lambda i: -prompt_lengths[i])


"""How many questions to generate for at once, from the memory the KV cache will take.

The training side plans its micro-batches from the memory activations take
(`plan_batches`); this plans generation the same way from the KV cache, which is what
grows with a batch here: every row holds keys and values for its prompt plus every token
generated so far, and at `max_new_tokens=1200` the cache, not the weights, decides the batch.

These are plain functions: numbers in, numbers (or a small dataclass) out, no config
object and no model, so a notebook can call them before loading anything, the tests run
offline in milliseconds, and the package restructuring cannot break them. They import
nothing heavy at all; a caller that asks torch for the free memory does so itself (e.g.
`torch.cuda.mem_get_info()`), inside its own function, as the rest of the package does.

Headroom
--------
A plan may fill `headroom` (0.85, the share `plan_batches` uses too) of the GPU memory it is
given. The other 15% is for what the estimate leaves out: the CUDA context and cuBLAS
workspaces, which count against the GPU but not against torch's allocator; fragmentation in
the caching allocator; the dynamic cache's growth, where each step's `torch.cat` briefly holds
a layer's old and new keys and values together; and prefill, whose attention and MLP
intermediates for the whole prompt are larger than a decoding step's. On a 16 GB T4 that is
about 2 GiB, on an H200 about 20 GiB. If `free_gib` is measured after the weights are loaded,
pass `weights_gib=0`; otherwise pass the GPU's memory and the weights' size.

Finished rows still cost work
-----------------------------
HF `generate` keeps a row in its batch after the row emits EOS: until every row has finished
(or `max_new_tokens` is reached) the finished row keeps decoding, its new tokens are replaced
by `pad_token_id`, it still runs through every layer each step, and its KV cache keeps
growing. A batch therefore costs about `batch_size x` its longest row's steps in compute and
`batch_size x (longest prompt + max_new_tokens)` tokens of cache at the end. That is why the
plan counts `longest prompt + max_new_tokens` tokens for every row: it is not pessimism
about short answers, it is what the batch actually holds if any one row runs to the limit.
Sorting questions by prompt length, longest first, mitigates the cost: rows of a batch need
little left padding, similar questions tend to finish closer together (prompt length
predicts answer length only loosely, so this helps less than it does for padding), and the
batch with the longest prompts, the one most likely to run out of memory, runs first, so an
out-of-memory error shows in seconds rather than at the end of a long evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30
# Batch used where there is no GPU to plan for: CPU generation is bound by compute, not
# memory, and a small batch keeps the progress bar moving.
CPU_BATCH = 8


def kv_cache_bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int, dtype_bytes: int = 2) -> int:
    """Bytes of KV cache one token takes in one row: keys and values in every layer.

    DeepSeek-R1-Distill-Llama-8B (Llama 3.1 8B): 32 layers x 8 KV heads x 128 dims x 2 (keys
    and values) x 2 bytes (bf16/fp16) = 131072 bytes = 128 KiB a token.
    """
    for name, value in (("num_layers", num_layers), ("num_kv_heads", num_kv_heads),
                        ("head_dim", head_dim), ("dtype_bytes", dtype_bytes)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    return 2 * num_layers * num_kv_heads * head_dim * dtype_bytes


def kv_cache_bytes_for(model_config, dtype_bytes: int = 2) -> int:
    """`kv_cache_bytes_per_token` from a model's config (a transformers `PretrainedConfig` or any object with
    its attributes): `num_hidden_layers`, `num_key_value_heads` (default: `num_attention_heads`) and
    `head_dim` (default: `hidden_size / num_attention_heads`). `dtype_bytes`: the cache's type, the
    compute type (2 for bf16/fp16, also under 4-bit weights; 4 for fp32 on a CPU).

        kv_cache_bytes_for(AutoConfig.from_pretrained("unsloth/DeepSeek-R1-Distill-Llama-8B"))  # 131072
    """
    heads = model_config.num_attention_heads
    kv_heads = getattr(model_config, "num_key_value_heads", None) or heads
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // heads
    return kv_cache_bytes_per_token(model_config.num_hidden_layers, kv_heads, head_dim, dtype_bytes)


@dataclass
class GenerationPlan:
    batch_size: int
    sort_by_length: bool
    tokens_per_row: int  # longest prompt + max_new_tokens (+ kv_slack_tokens): what each row's cache holds at the end
    kv_gib_per_row: float
    budget_gib: float  # memory left for the rows: headroom x free_gib - weights_gib (0.0 without a GPU)
    reason: str  # one sentence for a person
    path: str  # the generation path planned for: "unsloth", "static_16bit", "dynamic" (r1helpers.inference.paths)


def plan_generation(n_prompts: int, longest_prompt_tokens: int, max_new_tokens: int, kv_bytes_per_token: int,
                    free_gib: float | None, weights_gib: float = 0.0, logits_bytes_per_row: int = 0,
                    activation_bytes_per_row: int = 0, headroom: float = 0.85, max_batch: int = 128,
                    min_batch: int = 1, path: str = "dynamic", kv_slack_tokens: int = 0) -> GenerationPlan:
    """The largest batch whose rows fit in `headroom x free_gib` beside the weights.

    Each row costs its KV cache at `longest_prompt_tokens + max_new_tokens` tokens plus its
    working memory: `logits_bytes_per_row` (one step's logits in fp32, `vocab_size x 4`:
    128256 x 4 = 501 KiB for the 8B) and `activation_bytes_per_row` (an estimate of the
    largest per-row intermediates, which come from prefill: roughly prompt tokens x
    (3 x intermediate + 4 x hidden) x 2 bytes, ~23 MiB for 200 tokens of the 8B; it is not
    measured, and the headroom also covers it). The batch is capped at `n_prompts` and
    `max_batch` and raised to `min_batch` (with a warning in the reason if that is over the
    estimate). `free_gib=None` (no GPU) gives a fixed batch of up to 8. If not even one row
    fits, the plan is batch 1 and the reason says how far to lower `max_new_tokens`.
    `kv_slack_tokens`: cache a row may hold beyond `longest_prompt_tokens + max_new_tokens` (Unsloth's
    inference path grows its cache 512 tokens at a time, so it can hold up to 512 more).
    """
    if n_prompts < 0 or longest_prompt_tokens < 0 or max_new_tokens < 0 or kv_slack_tokens < 0:
        raise ValueError("n_prompts, longest_prompt_tokens, max_new_tokens and kv_slack_tokens must not be negative")
    if kv_bytes_per_token < 1:
        raise ValueError(f"kv_bytes_per_token must be at least 1, got {kv_bytes_per_token}")
    if not 0 < headroom <= 1:
        raise ValueError(f"headroom is a share of the GPU's memory, in (0, 1]; got {headroom}")
    if not 1 <= min_batch <= max_batch:
        raise ValueError(f"need 1 <= min_batch <= max_batch, got min_batch={min_batch}, max_batch={max_batch}")
    tokens = longest_prompt_tokens + max_new_tokens + kv_slack_tokens
    kv_row = tokens * kv_bytes_per_token
    row_bytes = kv_row + logits_bytes_per_row + activation_bytes_per_row
    cap = max(1, min(n_prompts, max_batch))

    def plan(batch: int, budget: float, reason: str) -> GenerationPlan:
        return GenerationPlan(batch, True, tokens, kv_row / GIB, budget, reason, path)

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
    batch = min(fits, cap)
    if batch < min_batch:
        batch = min(min_batch, cap)
        if batch > fits:
            return plan(batch, budget, f"Batch {batch} as min_batch asks, over the {fits} rows of {per_row} that "
                                       f"the estimate fits in {budget:.1f} GiB; expect an out-of-memory error.")
    limit = ("all the prompts" if batch == n_prompts else
             f"max_batch={max_batch}" if batch == max_batch and fits > max_batch else "memory")
    return plan(batch, budget, f"Batch {batch} (limited by {limit}): {per_row}, {batch * row_bytes / GIB:.2f} GiB "
                               f"of the {budget:.2f} GiB left in {headroom:.0%} of {free_gib:.1f} GiB after "
                               f"{weights_gib:.1f} GiB of weights.")


def order_by_length(prompt_lengths: list[int]) -> list[int]:
    """Indices of the prompts, longest first; equal lengths keep their input order.

    Rows of a batch then need little padding, and the batch most likely to run out of memory
    runs first.
    """
    return sorted(range(len(prompt_lengths)), key=lambda i: -prompt_lengths[i])


def batches(order: list[int], batch_size: int) -> list[list[int]]:
    """`order` cut into consecutive batches of `batch_size` (the last may be shorter)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return [list(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]

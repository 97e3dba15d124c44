"""Decoding attention that reads each key/value head once for its whole group of query heads.

Llama-3.1-8B has 32 query heads and 8 key/value heads (grouped-query attention, GQA). transformers' SDPA
path can let `scaled_dot_product_attention` share the key/value heads (`enable_gqa`) only when there is no
attention mask; a left-padded batch always has one, so it copies every layer's keys and values four times
(`repeat_kv`) at every decoding step. With a static KV cache of `max_cache_len` positions, that copy is
written and read in full each step: for 75 rows x 1,430 positions about 56 GB a step on the 8B shape,
several times what the weights and the cache themselves take to read. The copy grows with batch x cache
length, which is what generation at `max_new_tokens=1200` has most of.

`grouped_decode_attention` computes the same attention for one new token per row without the copy: the
query heads of a group are viewed as `(kv_heads, groups)`, so the `groups` query heads that share a key/value
head become `groups` query rows of that one head, and `scaled_dot_product_attention` runs on them with the
keys and values as they are in the cache. Every row of a group sits at the same position, so the last row of
the mask applies to all of them. Prompts (more than one query token), models without GQA, dropout and
position biases go to transformers' own SDPA function unchanged.

    from r1helpers.inference.attention import use_grouped_decode
    use_grouped_decode(model)   # registers "sdpa_grouped_decode" and switches the model to it
    # ... generate ...
    model.set_attn_implementation("sdpa")   # back

Measured on the H200 (8B shape, 75 rows x 1,200 tokens, BENCHMARKS.md): an earlier version, which multiplied
queries and keys itself (`matmul`, then softmax in float32), decoded 1,911 tokens/s against SDPA's 1,541; the
profile of its decoding step showed that one matmul running as a slow batched kernel (`magma_sgemmEx`, float32
output) for 19.6 of the step's 32.0 ms, which SDPA's own kernels do not. `tests/test_generation_paths.py`
checks that it gives SDPA's logits and greedy tokens on the tiny model, which has GQA too.
"""

from __future__ import annotations

from typing import Any

NAME = "sdpa_grouped_decode"


def grouped_decode_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                             scaling: float | None = None, is_causal: bool | None = None, **kwargs: Any):
    """An `AttentionInterface` function: (batch, heads, q_len, dim) query, (batch, kv_heads, kv_len, dim) key and
    value, a (batch, 1, q_len, kv_len) mask (bool: True attends; or additive) -> ((batch, q_len, heads, dim), None).
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    if (query.shape[2] != 1 or groups <= 1 or dropout or kwargs.get("position_bias") is not None
            or kwargs.get("output_attentions")):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    batch, heads, _, dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    # query head h uses key/value head h // groups, as repeat_kv lays them out: (batch, kv_heads, groups, dim)
    q = query.reshape(batch, kv_heads, groups, dim)
    mask = None if attention_mask is None else attention_mask[:, :, -1:, :kv_len]  # (batch, 1, 1, kv_len)
    out = torch.nn.functional.scaled_dot_product_attention(q, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None


def register() -> str:
    """Register the attention function and SDPA's mask under NAME (idempotent); returns NAME."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, grouped_decode_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


def use_grouped_decode(model) -> None:
    """Switch `model` (or the model inside a peft wrapper) to `grouped_decode_attention`."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner.set_attn_implementation(register())

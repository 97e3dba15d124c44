"""The generation planner on hand-made memory cases: no model, no GPU, milliseconds.

    .venv/bin/python -m pytest -q tests/test_generation_plan.py
"""

from __future__ import annotations

import pytest

from r1helpers.inference.plan import GenerationPlan, kv_cache_bytes_per_token, order_by_length, plan_generation

GIB = 2**30
KV_8B = kv_cache_bytes_per_token(num_layers=32, num_kv_heads=8, head_dim=128)
LOGITS_8B = 128256 * 4  # one step's logits in fp32
ACTIVATIONS_200 = 200 * (3 * 14336 + 4 * 4096) * 2  # prefill intermediates of a 200-token prompt, ~23 MiB


def row_bytes(plan: GenerationPlan, logits: int = LOGITS_8B, activations: int = ACTIVATIONS_200) -> int:
    return plan.tokens_per_row * KV_8B + logits + activations


def test_kv_bytes_for_the_8b_shape():
    assert KV_8B == 131072 == 128 * 1024
    assert kv_cache_bytes_per_token(32, 8, 128, dtype_bytes=4) == 2 * KV_8B


def test_h200_batches_all_fifty_together():
    plan = plan_generation(50, 200, 1200, KV_8B, free_gib=139, weights_gib=6, logits_bytes_per_row=LOGITS_8B,
                           activation_bytes_per_row=ACTIVATIONS_200)
    assert plan.batch_size == 50
    assert plan.tokens_per_row == 1400
    assert plan.kv_gib_per_row == pytest.approx(1400 * 131072 / GIB)  # ~0.171 GiB
    assert plan.budget_gib == pytest.approx(0.85 * 139 - 6)
    assert "all the prompts" in plan.reason


def test_t4_stays_under_14_gib_with_the_weights():
    free, weights = 15.0, 5.5
    plan = plan_generation(50, 200, 1200, KV_8B, free_gib=free, weights_gib=weights, logits_bytes_per_row=LOGITS_8B,
                           activation_bytes_per_row=ACTIVATIONS_200)
    total_gib = weights + plan.batch_size * row_bytes(plan) / GIB
    assert plan.batch_size >= 1
    assert total_gib < 14.0
    assert total_gib <= 0.85 * free
    # The largest that fits: one more row would go over the budget.
    assert weights + (plan.batch_size + 1) * row_bytes(plan) / GIB > 0.85 * free
    assert plan.batch_size == 37  # 7.25 GiB / 198 MiB a row


def test_max_batch_bounds_the_plan():
    plan = plan_generation(500, 200, 1200, KV_8B, free_gib=139, weights_gib=6, max_batch=128)
    assert plan.batch_size == 128
    assert "max_batch=128" in plan.reason
    slack = plan_generation(50, 200, 1200, KV_8B, free_gib=15, weights_gib=5.5, kv_slack_tokens=512)
    assert slack.tokens_per_row == 1912  # Unsloth's cache grows 512 tokens at a time


def test_cpu_uses_a_fixed_modest_batch():
    plan = plan_generation(50, 200, 1200, KV_8B, free_gib=None)
    assert plan.batch_size == 8
    assert "No GPU" in plan.reason
    assert plan_generation(3, 200, 1200, KV_8B, free_gib=None).batch_size == 3
    assert plan_generation(0, 0, 1200, KV_8B, free_gib=None).batch_size == 1


def test_nothing_fits_gives_batch_one_and_advice():
    # 8 GiB GPU, 5.5 GiB of weights: 1.3 GiB for rows; one row of 200 + 32768 tokens needs ~4 GiB of cache.
    plan = plan_generation(50, 200, 32768, KV_8B, free_gib=8, weights_gib=5.5, logits_bytes_per_row=LOGITS_8B)
    assert plan.batch_size == 1
    assert "max_new_tokens" in plan.reason
    advised = int(plan.reason.split("to at most ")[1].split()[0])
    assert 0 < advised < 32768
    assert plan_generation(50, 200, advised, KV_8B, free_gib=8, weights_gib=5.5,
                           logits_bytes_per_row=LOGITS_8B).batch_size >= 1
    assert "Not even one row" not in plan_generation(1, 200, advised, KV_8B, free_gib=8, weights_gib=5.5,
                                                     logits_bytes_per_row=LOGITS_8B).reason
    # Weights alone over the budget: fewer new tokens cannot help, and the reason says so.
    heavy = plan_generation(50, 200, 1200, KV_8B, free_gib=15, weights_gib=16)
    assert heavy.batch_size == 1
    assert "4-bit" in heavy.reason


def test_order_by_length_is_descending_and_stable():
    lengths = [5, 9, 5, 1, 9, 7, 5]
    order = order_by_length(lengths)
    assert order == [1, 4, 5, 0, 2, 6, 3]
    assert [lengths[i] for i in order] == sorted(lengths, reverse=True)
    assert order_by_length([]) == []


def test_kv_cache_bytes_from_a_model_config():
    from types import SimpleNamespace

    from r1helpers.inference.plan import kv_cache_bytes_for

    llama8b = SimpleNamespace(num_hidden_layers=32, num_key_value_heads=8, num_attention_heads=32, hidden_size=4096)
    assert kv_cache_bytes_for(llama8b) == 131072  # 32 layers x 8 KV heads x 128 dims x keys and values x 2 bytes
    assert kv_cache_bytes_for(llama8b, dtype_bytes=4) == 2 * 131072


def test_prompt_lengths_count_the_prompt_the_model_sees(tokenizer):
    from r1helpers.core import prompts
    from r1helpers.inference.generate import prompt_lengths

    q = "What causes scurvy?"
    assert prompt_lengths(tokenizer, [q, q + " And rickets?"])[0] == len(prompts.encode_prompt(tokenizer, q))


def test_gpu_memory_is_none_without_cuda():
    import torch

    from r1helpers.inference.generate import gpu_memory

    if torch.cuda.is_available():
        pytest.skip("a CPU-only check")
    assert gpu_memory() is None and gpu_memory(15.0) is None

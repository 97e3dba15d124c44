"""The benchmark's arithmetic; the measurements themselves need a GPU (make bench)."""

import statistics

from r1helpers.bench import CONFIGS, LLAMA_8B, sample_lengths, table, train_flops_per_token


def test_default_lengths_are_realistic_not_fixed():
    lengths, how = sample_lengths(2000, 0, None, 2048)
    assert "log-normal" in how
    assert 150 <= min(lengths) and max(lengths) <= 2048
    assert 600 < statistics.median(lengths) < 800 and len(set(lengths)) > 500


def test_lengths_from_prepared_run(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "stats.json").write_text('{"all_lengths": {"train": [100, 3000]}}')
    lengths, how = sample_lengths(50, 0, str(tmp_path), 2048)
    assert set(lengths) <= {100, 2048} and "prepared" in how


def test_flops_per_token_in_8b_shape():
    # ~8.0e9 parameters in the linear layers and lm_head: 4N is ~32 GFLOP per token.
    f = train_flops_per_token(LLAMA_8B, 1024)
    assert 30e9 < f < 34e9


def test_configs_keep_the_recipe_effective_batch():
    assert {c.micro_batch * c.accumulation for c in CONFIGS.values() if c.micro_batch} == {8}
    assert CONFIGS["fast-default"].micro_batch == 0  # planned by r1helpers.train.plan_batches on the GPU


def test_table_renders_errors_and_results():
    ok = {"config": {"name": "a"}, "useful_tokens_per_s": 1.0, "padded_tokens_per_s": 2.0, "seconds_per_step": 3,
          "epoch_500_rows_minutes": 4, "peak_allocated_gib": 5, "peak_reserved_gib": 6, "mfu": 0.5,
          "generation": {"batch_1": 7}}
    text = table([ok, {"config": {"name": "b"}, "error": "boom"}])
    assert "| a | 1.0 | 2.0 | 3 | 4 | 5 | 6 | 50.0% | 7 | - | - |" in text and "error: boom" in text


def test_padding_free_leaks_without_unsloth_so_it_is_refused(tmp_path):
    """transformers' SDPA ignores the example boundaries of a padding-free row; Unsloth's mask does not
    (checked on the GPU with `python -m r1helpers.bench --check-padding-free`)."""
    import pytest

    from r1helpers.bench import padding_free_check
    from r1helpers.config import ConfigError, load_config
    from r1helpers.tinymodel import ensure_tiny_model
    from r1helpers.train import plan_batches

    check = padding_free_check(str(ensure_tiny_model()), "transformers", (23, 61, 40))
    assert check["relative_logit_error_per_example"][0] < 1e-5  # the first example sees nothing before it
    assert not check["examples_kept_apart"]
    with pytest.raises(ConfigError, match="train.padding_free"):
        plan_batches(load_config("cpu", {"train.padding_free": "true"}), "transformers", None)
    assert plan_batches(load_config("cpu"), "transformers", None).padding_free is False
    assert plan_batches(load_config("cpu"), "unsloth", 15.0).padding_free is True


def _dims(**kw):
    from types import SimpleNamespace

    return SimpleNamespace(**{k: LLAMA_8B[k] for k in ("num_hidden_layers", "hidden_size", "intermediate_size")}, **kw)


def test_plan_drops_checkpointing_only_where_the_longest_batch_fits():
    from r1helpers.config import load_config
    from r1helpers.train import activation_gib, plan_batches

    seed = load_config("seed")
    # H100 (79 GiB), 8B in 4-bit (~6.5 GiB): 8 x 2048 tokens would need ~96 GiB, 4 x 2048 ~48 GiB.
    h100 = plan_batches(seed, "unsloth", 79.2, dims=_dims(), base_gib=6.5)
    assert (h100.micro_batch, h100.accumulation, h100.gradient_checkpointing, h100.padding_free) == (4, 2, "false", True)
    # Short rows let all 8 share one micro-batch.
    short = plan_batches(seed, "unsloth", 79.2, lengths=[700] * 500, dims=_dims(), base_gib=6.5)
    assert (short.micro_batch, short.accumulation, short.gradient_checkpointing) == (8, 1, "false")
    # A T4 with rows up to max_seq_length keeps the recipe's micro-batch and Unsloth's checkpointing...
    t4 = plan_batches(seed, "unsloth", 15.0, lengths=[900] * 499 + [2048], dims=_dims(), base_gib=5.7)
    assert (t4.micro_batch, t4.accumulation, t4.gradient_checkpointing) == (2, 4, None)
    # ...and with rows of at most 900 tokens one row at a time fits without it, under the 14 GiB target.
    t4_short = plan_batches(seed, "unsloth", 15.0, lengths=[900] * 500, dims=_dims(), base_gib=5.7)
    assert (t4_short.micro_batch, t4_short.accumulation, t4_short.gradient_checkpointing) == (1, 8, "false")
    assert 5.7 + activation_gib(900, _dims()) < 14
    # Unmeasured for transformers + peft: checkpointing stays; accumulation still folds on a large GPU.
    tf = plan_batches(seed, "transformers", 79.2, dims=_dims(), base_gib=6.5)
    assert tf.gradient_checkpointing is None and not tf.padding_free
    # The seed recipe as written.
    exact = plan_batches(load_config("seed", {"train.batch_plan": "as_set"}), "unsloth", 79.2, dims=_dims(), base_gib=6.5)
    assert (exact.micro_batch, exact.accumulation, exact.gradient_checkpointing) == (2, 4, None)

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
    assert {c.micro_batch * c.accumulation for c in CONFIGS.values()} == {8}


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

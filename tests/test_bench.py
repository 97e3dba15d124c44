"""The benchmark's arithmetic; the measurements themselves need a GPU (make bench)."""

import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))  # the tools are scripts there, not in r1helpers

from bench import CONFIGS, LLAMA_8B, sample_lengths, table, train_flops_per_token  # noqa: E402


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
    assert CONFIGS["fast-default"].micro_batch == 0  # planned by r1helpers.training.plan.plan_batches on the GPU


def test_table_renders_errors_and_results():
    cfg = {"name": "a", "micro_batch": 8, "accumulation": 1, "padding_free": True, "gradient_checkpointing": "false",
           "token_budget": 10379}
    ok = {"config": cfg, "token_budget_splits": 3, "useful_tokens_per_s": 1.0, "padded_tokens_per_s": 2.0, "seconds_per_step": 3,
          "epoch_500_rows_minutes": 4, "peak_allocated_gib": 5, "peak_reserved_gib": 6, "mfu": 0.5,
          "generation": {"batch_1": 7}}
    text = table([ok, {"config": {"name": "b"}, "error": "boom"}])
    assert ("| a | 8x1 pf, ckpt false, budget 10379 (3 steps split) | 1.0 | 2.0 | 3 | 4 | 5 | 6 | 50.0% | 7 | - | - |"
            in text and "error: boom" in text)


@pytest.mark.slow
def test_padding_free_leaks_without_unsloth_so_it_is_refused(tmp_path):
    """transformers' SDPA ignores the example boundaries of a padding-free row; Unsloth's mask does not
    (checked on the GPU with `python tools/bench.py --check-padding-free`)."""
    import pytest

    from bench import padding_free_check
    from r1helpers.core.config import ConfigError
    from r1helpers.modeling.tiny import ensure_tiny_model
    from r1helpers.training.plan import plan_batches

    check = padding_free_check(str(ensure_tiny_model()), "transformers", (23, 61, 40))
    assert check["relative_logit_error_per_example"][0] < 1e-5  # the first example sees nothing before it
    assert not check["examples_kept_apart"]
    with pytest.raises(ConfigError, match="train.padding_free"):
        plan_batches(4, 1, backend="transformers", gpu_memory_gib=None, max_seq_length=1024, padding_free="true")
    assert plan_batches(4, 1, backend="transformers", gpu_memory_gib=None, max_seq_length=1024).padding_free is False
    assert plan_batches(4, 1, backend="unsloth", gpu_memory_gib=15.0, max_seq_length=1024).padding_free is True


def _dims(**kw):
    from types import SimpleNamespace

    return SimpleNamespace(**{k: LLAMA_8B[k] for k in ("num_hidden_layers", "hidden_size", "intermediate_size")}, **kw)


def _seed(backend, gib, **kw):
    """The planner with the seed recipe's values: micro-batch 2 x accumulation 4, 2048 tokens."""
    from r1helpers.training.plan import plan_batches

    return plan_batches(2, 4, backend=backend, gpu_memory_gib=gib, max_seq_length=2048, **kw)


def test_plan_drops_checkpointing_and_caps_each_pass_at_what_fits():
    from r1helpers.training.plan import activation_gib, activation_tokens

    # H100 (79 GiB), 8B in 4-bit (~6.5 GiB): ~60.8 GiB free holds ~10,400 tokens of activations. A step's
    # 8 rows go in one micro-batch; steps longer than that (up to 8 x 2048) run in several passes.
    h100 = _seed("unsloth", 79.2, dims=_dims(), base_gib=6.5)
    assert (h100.micro_batch, h100.accumulation, h100.gradient_checkpointing, h100.padding_free) == (8, 1, "false", True)
    assert h100.token_budget == activation_tokens(0.85 * 79.2 - 6.5, _dims())
    assert 10_000 < h100.token_budget < 8 * 2048
    assert 6.5 + activation_gib(h100.token_budget, _dims()) <= 0.85 * 79.2
    # Short rows: the longest possible step fits, so no step is split.
    short = _seed("unsloth", 79.2, lengths=[700] * 500, dims=_dims(), base_gib=6.5)
    assert (short.micro_batch, short.accumulation, short.gradient_checkpointing, short.token_budget) == (8, 1, "false", 0)
    # With two processes Unsloth cannot split (ranks must split alike): the longest micro-batch must fit.
    ddp = _seed("unsloth", 79.2, dims=_dims(), base_gib=6.5, processes=2)
    assert (ddp.micro_batch, ddp.accumulation, ddp.gradient_checkpointing, ddp.token_budget) == (4, 2, "false", 0)
    # A T4 with rows up to max_seq_length: one 2048-token row does not fit without checkpointing, so the
    # recipe's micro-batch and Unsloth's checkpointing stay.
    t4 = _seed("unsloth", 15.0, lengths=[900] * 499 + [2048], dims=_dims(), base_gib=5.7)
    assert (t4.micro_batch, t4.accumulation, t4.gradient_checkpointing, t4.token_budget) == (2, 4, None, 0)
    assert t4.checkpointing("unsloth") == "unsloth" and t4.effective_batch == 8
    # With rows of at most 900 tokens one fits without it: passes capped at ~1,200 tokens, under 14 GiB.
    t4_short = _seed("unsloth", 15.0, lengths=[900] * 500, dims=_dims(), base_gib=5.7)
    assert (t4_short.micro_batch, t4_short.accumulation, t4_short.gradient_checkpointing) == (8, 1, "false")
    assert 900 <= t4_short.token_budget < 1800
    assert 5.7 + activation_gib(t4_short.token_budget, _dims()) < 14
    # A budget as set: passes of at most that many tokens, checkpointing off only if such a pass fits.
    small = _seed("unsloth", 79.2, token_budget=3000, dims=_dims(), base_gib=6.5)
    assert (small.micro_batch, small.accumulation, small.gradient_checkpointing, small.token_budget) == (8, 1, "false", 3000)
    t4_set = _seed("unsloth", 15.0, token_budget=4096, dims=_dims(), base_gib=5.7)
    assert (t4_set.micro_batch, t4_set.gradient_checkpointing, t4_set.token_budget) == (8, None, 4096)
    # Padded batches (padding_free=false) keep fixed micro-batches sized for the longest.
    padded = _seed("unsloth", 79.2, padding_free="false", dims=_dims(), base_gib=6.5)
    assert (padded.micro_batch, padded.accumulation, padded.padding_free, padded.token_budget) == (4, 2, False, 0)
    # transformers + peft keeps ~12 MiB a token (full logits, padded rows): 2 x 2048 padded (~48 GiB) fits an
    # H100 without checkpointing (measured 47.2 GiB, 1.40x the fallback with it); a P100 keeps checkpointing.
    tf = _seed("transformers", 79.2, dims=_dims(), base_gib=6.5)
    assert (tf.micro_batch, tf.accumulation, tf.gradient_checkpointing, tf.padding_free) == (2, 4, "false", False)
    # Padded rows: a micro-batch costs its row count times its longest row, not the sum of its rows.
    tf_short = _seed("transformers", 79.2, lengths=[700] * 499 + [1024], dims=_dims(), base_gib=6.5)
    assert (tf_short.micro_batch, tf_short.gradient_checkpointing) == (4, "false")
    p100 = _seed("transformers", 15.9, dims=_dims(), base_gib=5.7)
    assert (p100.micro_batch, p100.accumulation, p100.gradient_checkpointing) == (2, 4, None)
    # The seed recipe as written.
    exact = _seed("unsloth", 79.2, batch_plan="as_set", dims=_dims(), base_gib=6.5)
    assert (exact.micro_batch, exact.accumulation, exact.gradient_checkpointing) == (2, 4, None)


def test_plan_from_config_passes_the_config_values():
    """The orchestration's mapping: cfg.train / cfg.model values reach the planner unchanged."""
    from r1helpers.core.config import load_config
    from r1helpers.workflow.train_stage import plan_from_config

    cfg = load_config("seed", {"train.token_budget": 3000})
    assert plan_from_config(cfg, "unsloth", 79.2, dims=_dims(), base_gib=6.5) == _seed(
        "unsloth", 79.2, token_budget=3000, dims=_dims(), base_gib=6.5)
    two = plan_from_config(load_config("seed"), "unsloth", 79.2, dims=_dims(), base_gib=6.5, processes=2)
    assert (two.micro_batch, two.accumulation) == (4, 1), "each of 2 processes: half the effective batch"


def test_token_budget_reaches_unsloth_only_while_the_trainer_is_built(monkeypatch):
    """Unsloth's SFTTrainer reads UNSLOTH_TOKEN_BUDGET in its constructor; the user's value comes back after."""
    import os

    from r1helpers.training.plan import TOKEN_BUDGET_ENV, BatchPlan, token_budget_env

    monkeypatch.delenv(TOKEN_BUDGET_ENV, raising=False)
    with token_budget_env(BatchPlan(8, 1, True, "test", "false", 10379)):
        assert os.environ[TOKEN_BUDGET_ENV] == "10379"
    assert TOKEN_BUDGET_ENV not in os.environ
    monkeypatch.setenv(TOKEN_BUDGET_ENV, "4096")
    with token_budget_env(BatchPlan(8, 1, True, "test", "false", 9000)):
        assert os.environ[TOKEN_BUDGET_ENV] == "9000"
    assert os.environ[TOKEN_BUDGET_ENV] == "4096"
    with token_budget_env(BatchPlan(2, 4, True, "as set")):  # no budget: the user's own setting stands
        assert os.environ[TOKEN_BUDGET_ENV] == "4096"
    with token_budget_env(0):
        assert os.environ[TOKEN_BUDGET_ENV] == "4096"


def test_trainer_checkpoints_only_where_the_plan_or_config_says(tmp_path):
    """TRL's SFTConfig defaults to gradient_checkpointing=True and the trainer would then enable it on
    the model whatever add_lora chose (it did: the CPU profile and the fallback were always recomputing)."""
    from trl import SFTConfig

    from r1helpers.core.config import load_config
    from r1helpers.training.plan import BatchPlan
    from r1helpers.workflow.train_stage import sft_arguments_for

    def args(cfg, plan):
        kw = sft_arguments_for(cfg, plan, tmp_path / "a" / "b", backend="transformers", dtype="float32",
                               on_gpu=False, report_to=[], has_eval=False, run_name="r")
        return SFTConfig(**kw)

    off = args(load_config("cpu"), BatchPlan(4, 1, False, "t"))
    assert off.gradient_checkpointing is False
    seed = args(load_config("seed"), BatchPlan(2, 4, False, "t"))
    assert seed.gradient_checkpointing is True and seed.gradient_checkpointing_kwargs == {"use_reentrant": False}
    planned = args(load_config("seed"), BatchPlan(8, 1, True, "t", "false", 9000))
    assert planned.gradient_checkpointing is False


@pytest.mark.slow
def test_bench_merge_measures_each_type_against_base_plus_adapter(tiny_model_dir, tmp_path, capsys):
    """The merge benchmark on the tiny model with a random LoRA: one line per 16-bit type, from a real merge,
    the weight check read back from disk and the export's logit check, a failing type reported, not raised."""
    import json

    import bench_merge
    from bench_generation import build_adapter

    adapter = build_adapter(tiny_model_dir, tmp_path / "adapter", r=8, alpha=16)
    assert bench_merge.main(["--base", str(tiny_model_dir), "--adapter", str(adapter), "--prompts", "2",
                             "--tokens", "4", "--work", str(tmp_path)]) == 0
    rows = [json.loads(ln.split(" ", 1)[1]) for ln in capsys.readouterr().out.splitlines()
            if ln.startswith("MERGECHECK ")]
    assert [r["dtype"] for r in rows] == ["bfloat16", "float16"]
    for r in rows:
        assert "error" not in r, r
        assert r["check_device"] == "cpu" and r["merged_tensors"] > 0 and isinstance(r["passed"], bool)
        assert r["weights"]["weights_changed_by_lora"] > 0 and r["logits"]["prompts"] == 2
    # float16 keeps three more mantissa bits than bfloat16: fewer of the LoRA's changes round away
    bf16, fp16 = (r["weights"]["lora_changes_lost_to_rounding"] for r in rows)
    assert fp16 < bf16
    assert not list(tmp_path.glob("merge-*")), "the temporary merges are deleted"


@pytest.mark.slow
def test_decoding_profile_covers_only_the_steps_asked_for(tiny_model_dir, tmp_path):
    """bench_generation --profile-steps: the profiler's schedule advances once per decoding step of the real
    generate call, skipping `wait` steps; the model's own generate comes back afterwards."""
    from r1helpers.inference.generate import generate
    from r1helpers.modeling import load
    from bench_generation import profiled_decoding

    loaded = load.for_inference(load.load_base(str(tiny_model_dir), max_seq_length=512, load_in_4bit=False,
                                               dtype="float32", backend="transformers"))
    with profiled_decoding(loaded.model, steps=3, wait=4, out_file=tmp_path / "profile.txt") as prof:
        records = generate(loaded.model, loaded.tokenizer, ["What causes scurvy?", "Why is the sky blue?"],
                           max_new_tokens=12, batch_size=2, progress=False)
    assert "generate" not in vars(loaded.model) and len(records) == 2
    assert prof["profiled_steps"] == 3 and prof["top"] and prof["step_ms"] and prof["step_ms"] > 0
    assert any("aten::" in r["name"] for r in prof["top"]) and all(r["cpu_ms"] >= 0 for r in prof["top"])
    assert "Name" in (tmp_path / "profile.txt").read_text()

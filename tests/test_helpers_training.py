"""The training helpers of docs/helpers-training.md, called with plain values on the tiny model.

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q tests/test_helpers_training.py
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from r1helpers.core.config import ConfigError, load_config, validate
from r1helpers.modeling.load import (add_lora, estimated_weights_gib, expected_lora_parameters, lora_shapes,
                                     trainable_parameters)
from r1helpers.training.plan import (BatchPlan, activation_gib, activation_tokens, gpu_memory_gib, plan_batches,
                                     resolve_padding_free, token_budget_env, worst_micro_batch_tokens)
from r1helpers.training.sft import last_value, latest_checkpoint, make_trainer, sft_arguments, wandb_reachable

ALL_SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LLAMA_8B_DIMS = SimpleNamespace(num_hidden_layers=32, hidden_size=4096, intermediate_size=14336,
                                num_attention_heads=32, num_key_value_heads=8)


@pytest.fixture(scope="module")
def base_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return lambda: AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)


@pytest.fixture(scope="module")
def rows(tokenizer):
    """Eight tokenized sample rows cut to 96 tokens: what the trainer gets (an input_ids column)."""
    import datasets

    from r1helpers.core import prompts
    from r1helpers.data_sources import load_sample_rows

    ids = [prompts.encode_example(tokenizer, r["Question"], r["Complex_CoT"], r["Response"])[0][:96]
           for r in load_sample_rows()[:8]]
    return datasets.Dataset.from_list([{"input_ids": i} for i in ids])


# ---- modeling.load.add_lora -------------------------------------------------------------------------

def test_add_lora_trains_r_times_in_plus_out_per_matrix_and_starts_as_the_base(base_model, tokenizer):
    base = base_model()
    ids = tokenizer("### Question:\nWhy?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        before = base(ids).logits
    model = add_lora(base, r=8, alpha=16, target_modules=ALL_SEVEN, random_state=3407)
    trainable, total = trainable_parameters(model)
    # Tiny model: hidden 128, MLP 256, 4 heads (2 for k/v) of 32, 2 blocks: per block
    # 8 x (2 x (128 + 128) + 2 x (128 + 64) + 3 x (128 + 256)) = 16,384.
    assert trainable == expected_lora_parameters(model.config, 8, ALL_SEVEN) == 2 * 16_384
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    with torch.no_grad():
        after = model(ids).logits
    assert torch.equal(before, after), "B starts at zero: the adapted model answers as the base"
    assert trainable < 0.1 * total


def test_add_lora_rank_and_targets_scale_the_count(base_model):
    two = add_lora(base_model(), r=4, alpha=4, target_modules=["q_proj", "v_proj"])
    assert trainable_parameters(two)[0] == 2 * 4 * ((128 + 128) + (128 + 64))
    assert two.peft_config["default"].lora_alpha == 4 and two.peft_config["default"].r == 4


def test_expected_count_of_the_seed_recipe_on_the_8b():
    # The number Unsloth prints for r=16 on all seven modules of Llama-3.1-8B.
    assert expected_lora_parameters(LLAMA_8B_DIMS, 16, ALL_SEVEN) == 41_943_040
    assert lora_shapes(LLAMA_8B_DIMS)["k_proj"] == (4096, 1024)
    with pytest.raises(Exception, match="lora.target_modules"):
        expected_lora_parameters(LLAMA_8B_DIMS, 16, ["lm_head"])


def test_weights_estimate_matches_the_loaded_model(base_model):
    model = base_model()
    loaded_gib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
    assert estimated_weights_gib(model.config, False, "float32") == pytest.approx(loaded_gib, rel=0.01)
    assert 5.0 < estimated_weights_gib(SimpleNamespace(**vars(LLAMA_8B_DIMS), vocab_size=128256), True) < 6.0


# ---- training.plan ----------------------------------------------------------------------------------

def test_plan_keeps_the_effective_batch_on_every_gpu():
    dims = LLAMA_8B_DIMS
    for gib, base in ((15.0, 5.7), (24.0, 5.7), (40.0, 6.5), (80.0, 6.5)):
        for backend in ("unsloth", "transformers"):
            plan = plan_batches(2, 4, backend=backend, gpu_memory_gib=gib, max_seq_length=2048, dims=dims,
                                base_gib=base)
            assert plan.effective_batch == 8, (gib, backend, plan)
    cpu = plan_batches(4, 1, backend="transformers", gpu_memory_gib=None, max_seq_length=1024)
    assert (cpu.micro_batch, cpu.accumulation, cpu.reason, cpu.padding_free) == (4, 1, "no GPU", False)
    exact = plan_batches(2, 4, backend="unsloth", gpu_memory_gib=80.0, max_seq_length=2048, batch_plan="as_set",
                         dims=dims, base_gib=6.5)
    assert (exact.micro_batch, exact.accumulation, exact.checkpointing("unsloth")) == (2, 4, "unsloth")
    big = plan_batches(2, 4, backend="unsloth", gpu_memory_gib=80.0, max_seq_length=2048, dims=dims, base_gib=6.5)
    assert big.checkpointing("unsloth") == "false", "the plan overrides lora.gradient_checkpointing"


def test_activation_estimates_are_inverse_and_padding_counts():
    dims = LLAMA_8B_DIMS
    assert activation_gib(1024, dims) == pytest.approx(6.0, rel=1e-9)  # 6 MiB a token in the 8B shape
    assert activation_gib(1024, dims, "transformers") == pytest.approx(12.0)
    n = activation_tokens(20.0, dims)
    assert activation_gib(n, dims) <= 20.0 < activation_gib(n + 1, dims)
    lengths = [100, 900, 300, 3000]
    assert worst_micro_batch_tokens(2, 2048, lengths) == 2048 + 900  # the two longest rows, cut at 2048
    assert worst_micro_batch_tokens(2, 2048, lengths, padded=True) == 2 * 2048  # padded to the longest
    assert worst_micro_batch_tokens(2, 2048, None) == 4096


def test_padding_free_resolution():
    assert resolve_padding_free("auto", "unsloth") is True
    assert resolve_padding_free("auto", "transformers") is False
    assert resolve_padding_free("false", "unsloth") is False
    with pytest.raises(ConfigError, match="train.padding_free"):
        resolve_padding_free("true", "transformers")


def test_token_budget_env_takes_a_plan_or_a_number(monkeypatch):
    monkeypatch.delenv("UNSLOTH_TOKEN_BUDGET", raising=False)
    import os

    with token_budget_env(5000):
        assert os.environ["UNSLOTH_TOKEN_BUDGET"] == "5000"
    with token_budget_env(BatchPlan(8, 1, True, "t", "false", 0)):
        assert "UNSLOTH_TOKEN_BUDGET" not in os.environ
    assert "UNSLOTH_TOKEN_BUDGET" not in os.environ


def test_gpu_memory_is_none_without_cuda():
    assert (gpu_memory_gib() is None) == (not torch.cuda.is_available())


# ---- training.sft -----------------------------------------------------------------------------------

RECIPE = dict(learning_rate=2e-4, warmup_steps=5, max_steps=60, optim="adamw_8bit", weight_decay=0.01,
              lr_scheduler_type="linear", seed=3407, logging_steps=10, eval_steps=20, save_steps=10)


def test_sft_arguments_map_the_recipe_one_to_one(tmp_path):
    from trl import SFTConfig

    args = sft_arguments(output_dir=tmp_path / "ckpt", per_device_train_batch_size=2, gradient_accumulation_steps=4,
                         max_seq_length=2048, gradient_checkpointing="unsloth", mixed_precision="float16",
                         report_to=["wandb"], run_name="default", **RECIPE)
    for key, value in RECIPE.items():
        assert args[key] == value, key
    assert (args["per_device_train_batch_size"], args["gradient_accumulation_steps"], args["max_length"]) == (2, 4, 2048)
    assert (args["fp16"], args["bf16"], args["gradient_checkpointing"]) == (True, False, True)
    assert (args["eval_strategy"], args["save_strategy"], args["report_to"]) == ("steps", "steps", ["wandb"])
    json.dumps(args)  # recorded as is in train/metrics.json
    built = SFTConfig(**{**args, "optim": "adamw_torch", "fp16": False})  # 8-bit Adam and fp16 need CUDA
    assert (built.learning_rate, built.max_steps, built.gradient_accumulation_steps) == (2e-4, 60, 4)
    off = sft_arguments(output_dir=tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=4,
                        max_seq_length=2048, has_eval=False, **{**RECIPE, "save_steps": 0})
    assert (off["eval_strategy"], off["eval_steps"], off["save_strategy"], off["report_to"]) == ("no", None, "no", "none")
    assert off["gradient_checkpointing"] is False and off["gradient_checkpointing_kwargs"] is None


@pytest.mark.slow
def test_make_trainer_and_two_steps_lower_the_loss(base_model, tokenizer, rows, tmp_path):
    model = add_lora(base_model(), r=8, alpha=16, target_modules=ALL_SEVEN)
    args = sft_arguments(output_dir=tmp_path / "out", per_device_train_batch_size=4, gradient_accumulation_steps=1,
                         max_seq_length=128, has_eval=True, progress_bars=False,
                         **{**RECIPE, "learning_rate": 1e-2, "optim": "adamw_torch", "warmup_steps": 0, "max_steps": 2,
                            "logging_steps": 1, "eval_steps": 2, "save_steps": 2})
    trainer = make_trainer(model, tokenizer, rows, rows, args)
    assert trainer.args.per_device_train_batch_size == 4 and trainer.args.learning_rate == 1e-2
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = last_value(trainer.state.log_history, "eval_loss")
    assert after < before - 0.05, (before, after)
    assert latest_checkpoint(tmp_path / "out").name == "checkpoint-2"
    assert last_value(trainer.state.log_history, "loss") is not None


def test_last_value_and_unreachable_wandb(monkeypatch):
    history = [{"loss": 3.0, "step": 1}, {"eval_loss": 2.5, "step": 1}, {"loss": 2.0, "step": 2}]
    assert (last_value(history, "loss"), last_value(history, "eval_loss"), last_value(history, "x")) == (2.0, 2.5, None)
    monkeypatch.setenv("WANDB_BASE_URL", "https://127.0.0.1:1")
    assert wandb_reachable(timeout=1.0) is False


# ---- orchestration: cfg values reach the helpers --------------------------------------------------

def test_validate_rechecks_assignments():
    cfg = load_config("cpu")
    cfg.train.max_steps = "30"  # as from a text box
    assert validate(cfg).train.max_steps == 30
    cfg.train.max_steps = 0
    with pytest.raises(ConfigError, match=r"train\.max_steps"):
        validate(cfg)
    cfg = load_config("cpu")
    cfg.lora.r = 8.5
    with pytest.raises(ConfigError, match=r"lora\.r"):
        validate(cfg)


def test_a_changed_value_is_what_the_trainer_gets(tmp_path):
    from r1helpers.workflow import train_stage

    cfg = load_config("cpu")
    cfg.train.max_steps, cfg.lora.r = 30, 4
    plan = train_stage.plan_from_config(cfg, "transformers", None)
    args = train_stage.sft_arguments_for(cfg, plan, tmp_path, backend="transformers", dtype="float32", on_gpu=False,
                                   report_to=[], has_eval=True, run_name="r")
    assert args["max_steps"] == 30 and train_stage.lora_arguments(cfg, plan)["r"] == 4


def test_tables_show_the_values(cpu_cfg):
    from r1helpers.core import show

    lora = show.lora_table(cpu_cfg.lora)
    assert lora.loc["r (rank)", "value"] == 8 and "16 / 8 = 2" in lora.loc["alpha", "what it does"]
    plan = show.batch_plan_table({"micro_batch": 2, "accumulation": 2, "padding_free": False, "reason": "t"}, 2)
    assert plan.loc["effective batch", "value"] == 8
    assert list(show.differences({"a": 1, "b": 2}, {"a": 1, "b": 3}).index) == ["b"]
    assert list(show.differences({"a": 1}, {"a": 1}).index) == ["(none: all the same)"]


def test_runners_check_the_config_before_anything_loads(tmp_path):
    from r1helpers import distributed
    from r1helpers.core.runs import Run
    from r1helpers.workflow import train_stage

    cfg, run = load_config("cpu"), Run.open(tmp_path / "run")
    cfg.train.learning_rate = 5.0
    with pytest.raises(ConfigError, match=r"train\.learning_rate"):
        train_stage.ensure_trained(cfg, run, prepared=None)
    with pytest.raises(ConfigError, match=r"train\.learning_rate"):
        distributed.ensure_trained_anywhere(cfg, run, prepared=None)
    assert not (run.root / "train").exists()


def test_a_t4_trains_in_fp16_with_the_recipes_batch(tmp_path, tiny_model_dir):
    """Notebook 03's plan and SFTConfig arguments on a 15 GiB GPU without bf16 (a T4), from the tiny model's shapes:
    fp16 not bf16, the effective batch of 8, and checkpointing as the plan says (its activations fit, so none)."""
    from transformers import AutoConfig

    from r1helpers.modeling.load import estimated_weights_gib, expected_lora_parameters
    from r1helpers.workflow import train_stage

    cfg = load_config("cpu", {"train.per_device_train_batch_size": 2, "train.gradient_accumulation_steps": 4})
    dims = AutoConfig.from_pretrained(tiny_model_dir)
    plan = train_stage.plan_from_config(cfg, "unsloth", 15.0, lengths=[700] * 8, dims=dims,
                                        base_gib=estimated_weights_gib(dims, True, "float16"))
    args = train_stage.sft_arguments_for(cfg, plan, tmp_path, backend="unsloth", dtype="float16", on_gpu=True,
                                         report_to=[], has_eval=True, run_name="r")
    assert (args["fp16"], args["bf16"]) == (True, False)
    assert plan.effective_batch == 8 and args["per_device_train_batch_size"] * args["gradient_accumulation_steps"] == 8
    assert expected_lora_parameters(dims, cfg.lora.r, cfg.lora.target_modules) == 2 * 16_384
    assert plan.gradient_checkpointing == "false" and args["gradient_checkpointing"] is False

import pytest

from r1helpers.config import (
    SEED_DATASET, SEED_MODEL, TINY_MODEL, ConfigError, apply_overrides, auto_profile, fingerprint, load_config,
)


def test_seed_profile_is_the_recipe():
    c = load_config("seed")
    assert c.model.name == SEED_MODEL and c.model.max_seq_length == 2048 and c.model.load_in_4bit
    assert c.data.source == SEED_DATASET and c.data.config_name == "en" and c.data.train_rows == 500
    assert (c.lora.r, c.lora.alpha, c.lora.dropout, c.lora.bias, c.lora.random_state) == (16, 16, 0.0, "none", 3407)
    assert c.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    t = c.train
    assert (t.per_device_train_batch_size, t.gradient_accumulation_steps, t.warmup_steps, t.max_steps) == (2, 4, 5, 60)
    assert (t.learning_rate, t.optim, t.weight_decay, t.lr_scheduler_type, t.seed, t.logging_steps) == (
        2e-4, "adamw_8bit", 0.01, "linear", 3407, 10)
    assert c.infer.max_new_tokens == 1200


def test_cpu_profile_uses_local_model_and_sample():
    c = load_config("cpu")
    assert c.model.name == TINY_MODEL and c.data.source == "r1helpers/sample" and not c.model.load_in_4bit


def test_auto_is_cpu_without_gpu(monkeypatch):
    monkeypatch.setattr("r1helpers.config.has_cuda", lambda: False)
    assert auto_profile()[0] == "cpu"
    monkeypatch.setattr("r1helpers.config.has_cuda", lambda: True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert auto_profile()[0] == "cpu"


def test_overrides_dotted_leaf_and_nested():
    c = load_config("seed", {"max_steps": "30", "lora.r": 8, "infer": {"batch_size": 4}})
    assert (c.train.max_steps, c.lora.r, c.infer.batch_size) == (30, 8, 4)
    c = apply_overrides(c, {"lora.target_modules": "q_proj, v_proj", "data.config_name": "none"})
    assert c.lora.target_modules == ["q_proj", "v_proj"] and c.data.config_name is None


@pytest.mark.parametrize("overrides, field", [
    ({"train.max_steps": "ten"}, "train.max_steps"),
    ({"train.max_steps": 0}, "train.max_steps"),
    ({"train.learning_rate": "fast"}, "train.learning_rate"),
    ({"model.load_in_4bit": "maybe"}, "model.load_in_4bit"),
    ({"model.dtype": "int3"}, "model.dtype"),
    ({"lora.dropout": 1.5}, "lora.dropout"),
    ({"no_such_field": 1}, "no_such_field"),
    ({"seed": 1}, "seed"),  # ambiguous: train.seed and infer.seed
])
def test_bad_values_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config("seed", overrides)


def test_config_file_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  max_steps: 12\nmodel.max_seq_length: 1024\n")
    c = load_config("seed", {"train.max_steps": 13}, f)
    assert c.train.max_steps == 13 and c.model.max_seq_length == 1024
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("seed", None, tmp_path / "missing.yaml")


def test_unknown_profile():
    with pytest.raises(ConfigError, match="profile"):
        load_config("huge")


def test_fingerprint_changes_with_settings():
    a, b = load_config("seed"), load_config("seed", {"max_steps": 61})
    assert fingerprint(a.to_dict()) != fingerprint(b.to_dict())
    assert fingerprint(a.to_dict()) == fingerprint(load_config("seed").to_dict())

import os
import subprocess
import sys
from pathlib import Path

import pytest

from r1helpers.core.config import ConfigError, apply_overrides, fingerprint, load_config
from r1helpers.core.recipes import SEED_DATASET, SEED_MODEL, TINY_MODEL, auto_profile

ROOT = Path(__file__).resolve().parents[1]


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
    monkeypatch.setattr("r1helpers.core.recipes.has_cuda", lambda: False)
    assert auto_profile()[0] == "cpu"
    monkeypatch.setattr("r1helpers.core.recipes.has_cuda", lambda: True)
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


# ---- the three ways in: pipeline command line, YAML file, papermill ------------------------------


@pytest.fixture
def pipeline_calls(monkeypatch, pipeline_env):
    """`pipeline.main` with papermill replaced by a recorder: nothing is executed, no kernel starts.
    The variables the pipeline sets for its kernels are restored afterwards."""
    import papermill

    calls = []

    def record(src, out, **kwargs):
        calls.append(kwargs["parameters"])
        Path(out).write_text("{}")

    monkeypatch.setattr(papermill, "execute_notebook", record)
    return calls


def _yaml(tmp_path, text):
    path = tmp_path / "my.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("args, message", [
    (["--set", "train.max_steps=ten"], "train.max_steps: expected an integer, got 'ten'"),
    (["--set", "train.learning_rate=2"], "train.learning_rate: must be in (0, 1)"),
    (["--set", "train.wandb=sometimes"], "train.wandb: must be one of"),
    (["--config", "train:\n  max_steps: ten\n"], "train.max_steps: expected an integer, got 'ten'"),
    (["--config", "lora:\n  dropout: 1.5\n"], "lora.dropout: must be in [0, 1)"),
    (["--config", "train:\n  wandb: off\n"], "train.wandb: expected a string, got False (YAML reads off"),
    (["--profile", "cpu", "--set", "train.processes=2"], "train.gradient_accumulation_steps=1 does not divide"),
])
def test_pipeline_cli_rejects_before_any_notebook_runs(tmp_path, pipeline_calls, capsys, args, message):
    from r1helpers import pipeline

    if args[0] == "--config":
        args = ["--config", str(_yaml(tmp_path, args[1]))]
    run_dir = tmp_path / "run"
    assert pipeline.main(["--run-dir", str(run_dir), *args]) == 2
    assert message in capsys.readouterr().err
    assert pipeline_calls == [] and not run_dir.exists()  # no kernel, no run folder, no model


def test_pipeline_cli_yaml_scalars_reach_the_notebooks(tmp_path, pipeline_calls, monkeypatch):
    """1e-2 (text to YAML 1.1) and off (false to YAML) arrive as the fields' types; a relative
    --config is found by the kernels, which run in notebooks/; auto validates as the GPU's profile."""
    from r1helpers import pipeline

    monkeypatch.chdir(tmp_path)
    _yaml(tmp_path, "train:\n  weight_decay: 1e-3\n  wandb: 'off'\n  max_steps: 7\n")
    monkeypatch.setattr("r1helpers.core.recipes.auto_profile", lambda: ("seed", "a GPU"))
    args = ["--run-dir", "run", "--config", "my.yaml", "--stages", "00", "--set", "train.learning_rate=1e-2",
            "--set", "wandb=off", "--set", "max_steps=5", "--set", "train.processes=2"]
    assert pipeline.main(args) == 0
    [params] = pipeline_calls
    assert Path(params["config_file"]).is_absolute() and params["run_dir"] == str(tmp_path / "run")
    monkeypatch.chdir(ROOT / "notebooks")  # where the kernels run
    cfg = load_config(params["profile"], params["overrides"], params["config_file"])
    assert cfg.profile == "seed" and cfg.train.processes == 2  # 4 accumulation steps divide among 2
    assert (cfg.train.learning_rate, cfg.train.wandb, cfg.train.weight_decay, cfg.train.max_steps) == (
        0.01, "off", 0.001, 5)


@pytest.mark.parametrize("params, message", [
    ({"run_dir": 5}, "run_dir: expected a folder path, got 5"),  # -p run_dir 5: papermill passes an int
    ({"profile": "huge"}, "profile: must be one of"),
    ({"overrides": "[30]"}, "overrides: expected a mapping"),
    ({"overrides": '{"train.max_steps": "ten"}'}, "train.max_steps: expected an integer"),  # -p: text
    ({"overrides": {"train.learning_rate": "1e-2", "lora.dropout": 1.5}}, "lora.dropout: must be in [0, 1)"),  # -y
])
def test_notebook_parameters_rejected_by_start(tmp_path, params, message):
    """What papermill's -p and -y hand the parameters cell, refused by the notebooks' first call."""
    import re

    import r1helpers

    kwargs = {"run_dir": str(tmp_path / "run"), "profile": "cpu", **params}
    with pytest.raises(ConfigError, match=re.escape(message)):
        r1helpers.start(**kwargs, secrets=False, quiet=True)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("params, message", [
    (["-p", "overrides", '{"train.max_steps": "ten"}'], "ConfigError: train.max_steps: expected an integer"),
    (["-y", "overrides: {lora.dropout: 1.5}"], "ConfigError: lora.dropout: must be in [0, 1)"),
])
@pytest.mark.slow
def test_papermill_execution_fails_at_start_naming_the_field(tmp_path, params, message):
    """A real papermill run of 00_setup: the first call into r1helpers refuses the value, and no later
    cell (environment, backend, models) runs."""
    import nbformat

    out, run_dir = tmp_path / "00.ipynb", tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "papermill", str(ROOT / "notebooks" / "00_setup.ipynb"), str(out),
         "--cwd", str(ROOT / "notebooks"), "--no-progress-bar", "-p", "run_dir", str(run_dir),
         "-p", "profile", "cpu", *params],
        env={**os.environ, "HF_HUB_OFFLINE": "1", "R1HELPERS_HEADLESS": "1"}, capture_output=True, text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and message in proc.stdout + proc.stderr, proc.stderr[-3000:]
    assert not run_dir.exists()
    cells = [c for c in nbformat.read(out, as_version=4).cells if c.cell_type == "code"]
    failed = next(i for i, c in enumerate(cells) if any(o.get("output_type") == "error" for o in c.outputs))
    assert "r1helpers.start(" in cells[failed].source
    assert all(c.execution_count is None for c in cells[failed + 1:])


def test_seed_recipe_file_is_the_dataclass_defaults():
    """recipes/seed.yaml is what a person reads; the dataclass defaults are what code gets: one recipe."""
    import yaml

    from r1helpers.core.config import Config, from_dict
    from r1helpers.core.recipes import recipe_path

    assert from_dict(yaml.safe_load(recipe_path("seed").read_text())).to_dict() == Config().to_dict()


def test_every_recipe_loads_and_documents_each_field():
    from r1helpers.core.config import FIELDS
    from r1helpers.core.recipes import profiles, recipe_path

    assert {"seed", "cpu"} <= set(profiles())
    for name in profiles():
        cfg = load_config(name)
        assert cfg.profile == name
        text = recipe_path(name).read_text()
        for key in FIELDS:
            if key == "profile":
                continue
            leaf = key.split(".")[-1]
            line = next(ln for ln in text.splitlines() if ln.strip().startswith(leaf + ":"))
            assert "#" in line, f"{name}.yaml: {key} has no comment"


def test_enum_fields_are_literals_checked_when_set():
    from r1helpers.core.config import ConfigError, validate

    with pytest.raises(ConfigError, match="train.batch_plan: must be one of"):
        load_config("cpu", {"train.batch_plan": "fastest"})
    assert load_config("cpu", {"lora.gradient_checkpointing": True}).lora.gradient_checkpointing == "true"
    cfg = load_config("cpu")
    cfg.infer.max_new_tokens = 0  # a notebook cell changes a value in place; the runner re-checks it
    with pytest.raises(ConfigError, match="infer.max_new_tokens"):
        validate(cfg)

"""Issue 25, "Nothing lost, round two": each item reproduced as reported, on real files, and its fix.

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q tests/test_nothing_lost_2.py
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nbformat
import pytest

from r1helpers.core.config import ConfigError, load_config
from r1helpers.core.runs import Run, RunFolderConflict
from r1helpers.data import DataError, Report, select_rows
from r1helpers.data_sources import load_rows, sample_path
from r1helpers.workflow import session

ROOT = Path(__file__).resolve().parents[1]


def _sample_rows(n: int | None = None) -> list[dict]:
    rows = [json.loads(line) for line in sample_path().read_text().splitlines() if line.strip()]
    return rows[:n] if n else rows


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---- 5: numbers and booleans in the text columns are refused in every format ----------------------

@pytest.mark.parametrize("value, shown", [(7, "a number (7)"), (True, "a boolean (true)"), (2.5, "a number (2.5)"),
                                          (["a", "b"], "a list")])
def test_jsonl_numbers_and_booleans_in_a_text_column_are_refused_naming_file_column_row(tmp_path, value, shown):
    rows = _sample_rows(4)
    rows[2]["Response"] = value
    path = _write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(DataError) as e:
        load_rows(str(path))
    msg = str(e.value)
    assert str(path) in msg and "column 'Response', row 2" in msg and shown in msg, msg
    assert "Write the value as text" in msg and "data.response_column" in msg
    # .json (a list of rows) follows the same rule
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"rows\.json: column 'Response', row 2"):
        load_rows(str(tmp_path / "rows.json"))


def test_parquet_and_csv_number_columns_are_refused_too_naming_file_and_column(tmp_path):
    import pandas as pd

    df = pd.DataFrame({"Question": ["q1", "q2", "q3"], "Complex_CoT": ["c1", "c2", "c3"], "Response": [7, 10, 3]})
    for path in (tmp_path / "rows.parquet", tmp_path / "rows.csv"):
        df.to_parquet(path) if path.suffix == ".parquet" else df.to_csv(path, index=False)
        ds, origin = load_rows(str(path))
        with pytest.raises(DataError) as e:
            select_rows(ds, train_rows=2, eval_rows=1, origin=origin)
        assert str(path) in str(e.value) and "column 'Response' holds int64 values (row 0: 7)" in str(e.value)
        assert "astype(str)" in str(e.value)


def test_numbers_outside_the_text_columns_are_still_kept_as_text(tmp_path):
    rows = [{**r, "id": i, "score": 0.5} for i, r in enumerate(_sample_rows(3))]
    ds, _ = load_rows(str(_write_jsonl(tmp_path / "rows.jsonl", rows)))
    assert ds[1]["id"] == "1" and ds[0]["score"] == "0.5"


# ---- 6: data.eval_rows=0 trains without a held-out split ------------------------------------------

@pytest.mark.slow
def test_eval_rows_zero_prepares_reloads_and_trains(tmp_path, tiny_model_dir, capsys):
    from r1helpers import distributed
    from r1helpers.workflow import compare_stage, data_stage

    overrides = {"data.eval_rows": 0, "data.train_rows": 8, "train.max_steps": 2, "train.save_steps": 0,
                 "train.wandb": "off", "model.max_seq_length": 128, "data.overlong": "truncate"}
    cfg, run = session.start(str(tmp_path / "run"), "cpu", overrides, secrets=False, quiet=True)
    prepared = data_stage.prepare(cfg, run)
    assert len(prepared.train) == 8 and len(prepared.eval) == 0
    assert "source_row" in prepared.eval.column_names  # stage 02's cell reads prepared.eval["source_row"]
    again = data_stage.prepare(cfg, run)  # reused from disk: a zero-row split reads back
    assert "reusing" in capsys.readouterr().out
    assert len(again.eval) == 0 and again.eval["source_row"] == [] and again.eval.column_names == again.train.column_names
    assert data_stage.eval_questions(again, 5) == [] and compare_stage.nll_rows(cfg, again) == []
    result = distributed.ensure_trained_anywhere(cfg, run, again)  # stage 03: no held-out loss, no failure
    metrics = json.loads(run.path("train_metrics").read_text())
    assert Path(result.adapter_dir).is_dir() and metrics["final_eval_loss"] is None


# ---- 7: resume only from a complete checkpoint ----------------------------------------------------

@pytest.mark.slow
def test_a_checkpoint_missing_optimizer_pt_is_not_resumed_and_the_run_matches(tmp_path):
    """Killed (SIGKILL) after checkpoint-8; checkpoint-8 then loses optimizer.pt. Resuming from it would restart
    Adam's moments at step 8 and diverge; the rerun says so and resumes from checkpoint-4 instead."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    from r1helpers.training.sft import latest_checkpoint

    worker = (
        "import json, sys, time, trl\n"
        "step = trl.SFTTrainer.training_step\n"
        "def slow(self, *a, **k):\n    time.sleep(float(sys.argv[2]))\n    return step(self, *a, **k)\n"
        "trl.SFTTrainer.training_step = slow\n"
        "import r1helpers\nfrom r1helpers import distributed\nfrom r1helpers.workflow import data_stage\n"
        "cfg, run = r1helpers.start(sys.argv[1], 'cpu', json.loads(sys.argv[3]), quiet=True)\n"
        "distributed.ensure_trained_anywhere(cfg, run, data_stage.prepare(cfg, run))\n")
    overrides = json.dumps({"data.train_rows": 24, "data.eval_rows": 4, "train.max_steps": 12, "train.save_steps": 4,
                            "train.eval_steps": 0, "train.logging_steps": 1, "train.wandb": "off",
                            "model.max_seq_length": 128, "data.overlong": "truncate"})

    def start(run_dir: Path, sleep: float) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", worker, str(run_dir), str(sleep), overrides], cwd=ROOT,
                                env={**os.environ, "HF_HUB_OFFLINE": "1", "R1HELPERS_HEADLESS": "1"},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    straight = start(tmp_path / "straight", 0.0)
    killed = start(tmp_path / "resumed", 0.5)
    ckpts = tmp_path / "resumed" / "train" / "checkpoints"
    deadline = time.monotonic() + 600
    while not (latest_checkpoint(ckpts) or Path()).name == "checkpoint-8":
        assert killed.poll() is None and time.monotonic() < deadline, killed.communicate()[0][-3000:]
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.communicate()
    assert killed.returncode == -signal.SIGKILL and not (tmp_path / "resumed" / "train" / "adapter").exists()
    (ckpts / "checkpoint-8" / "optimizer.pt").unlink()  # lost afterwards (a partial copy, a clean-up)

    rerun = start(tmp_path / "resumed", 0.0)
    out, _ = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, out[-3000:]
    assert "checkpoint-8 (incomplete: no optimizer.pt)" in out and "resuming from checkpoint-4" in out, out[-3000:]
    metrics = json.loads((tmp_path / "resumed" / "train" / "metrics.json").read_text())
    assert metrics["resumed_from"] == "checkpoint-4"
    straight_out, _ = straight.communicate(timeout=600)
    assert straight.returncode == 0, straight_out[-3000:]
    ref = load_file(str(tmp_path / "straight" / "train" / "adapter" / "adapter_model.safetensors"))
    got = load_file(str(tmp_path / "resumed" / "train" / "adapter" / "adapter_model.safetensors"))
    assert max((got[k] - ref[k]).abs().max().item() for k in ref) <= 1e-6


def test_latest_checkpoint_names_what_each_skipped_checkpoint_lacks(tmp_path):
    from r1helpers.training.sft import checkpoint_problem, latest_checkpoint

    def ckpt(step: int, *missing: str) -> Path:
        p = tmp_path / f"checkpoint-{step}"
        p.mkdir()
        for name in {"adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth"} - set(missing):
            (p / name).write_bytes(b"x")
        (p / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        return p

    good = ckpt(4)
    ckpt(8, "optimizer.pt")
    ckpt(12, "scheduler.pt", "rng_state.pth")
    said: list[str] = []
    assert latest_checkpoint(tmp_path, say=said.append) == good
    assert said == ["train: not resuming from checkpoint-12 (incomplete: no scheduler.pt, rng_state.pth); "
                    "checkpoint-8 (incomplete: no optimizer.pt), so resuming from the previous complete checkpoint, "
                    "checkpoint-4, instead"]
    (good / "optimizer.pt").write_bytes(b"")  # an empty file is no optimizer state either
    assert checkpoint_problem(good) == "no optimizer.pt"
    said.clear()
    assert latest_checkpoint(tmp_path, say=said.append) is None and "training starts from step 0" in said[0]


# ---- 8: a refused run leaves config.yaml describing the folder's outputs ----------------------------

def test_config_yaml_keeps_the_settings_of_the_outputs_after_a_refused_run(tmp_path):
    cfg, run = session.start(str(tmp_path / "run"), "cpu", secrets=False, quiet=True)
    run.write_manifest(cfg, "train")  # a finished stage 03 with r=8
    assert "r: 8" in run.config_path.read_text()
    cfg4, run4 = session.start(str(tmp_path / "run"), "cpu", {"lora.r": 4}, secrets=False, quiet=True)
    with pytest.raises(RunFolderConflict, match="lora.r"):
        run4.reuse_or_build(cfg4, "train", lambda: None, lambda: None)
    # Stage 04 first generates the baseline it lacks (no lora settings in it), then is refused at the adapter.
    run4.write_manifest(cfg4, "baseline")
    saved = run.config_path.read_text()
    assert "  r: 8" in saved and "  r: 4" not in saved
    # A stage that succeeds with new settings does record them.
    cfg_t, run_t = session.start(str(tmp_path / "run"), "cpu", {"infer.temperature": 0.3}, secrets=False, quiet=True)
    assert "temperature: 0.6" in run_t.config_path.read_text()
    run_t.write_manifest(cfg_t, "baseline")
    assert "temperature: 0.3" in run_t.config_path.read_text()


# ---- 9: a lost run.json is read back from the outputs' manifests ------------------------------------

def test_a_failed_run_with_another_profile_does_not_rewrite_a_lost_run_json(tmp_path):
    cfg, run = session.start(str(tmp_path / "run"), "cpu", secrets=False, quiet=True)
    run.write_manifest(cfg, "data")
    (run.root / "run.json").unlink()
    with pytest.raises(ConfigError) as e:
        session.start(str(tmp_path / "run"), "seed", secrets=False, quiet=True)
    assert "was made for profile 'cpu' with model 'r1helpers/tiny-llama'" in str(e.value)
    assert not (run.root / "run.json").exists()
    cfg, _ = session.start(str(tmp_path / "run"), "cpu", secrets=False, quiet=True)  # the real profile still opens it
    record = json.loads((run.root / "run.json").read_text())
    assert record["profile"] == "cpu" and record["model"] == "r1helpers/tiny-llama"
    # ... and `auto` opens it as cpu too, whatever the machine looks like
    (run.root / "run.json").unlink()
    assert session.resolve_profile("auto", session.recorded_run(run.root))[0] == "cpu"


# ---- 10: unclear failures become one paragraph naming the file and the fix ---------------------------

def test_a_truncated_adapter_is_named_with_the_way_to_retrain(tmp_path, cpu_cfg):
    import torch
    from safetensors.torch import save_file

    from r1helpers.inference.choose import load_finetuned_for
    from r1helpers.modeling.tokens import ModelError

    adapter = tmp_path / "train" / "adapter"
    adapter.mkdir(parents=True)
    save_file({"lora_A": torch.zeros(64, 64), "lora_B": torch.ones(64, 64)}, str(adapter / "adapter_model.safetensors"))
    (adapter / "adapter_config.json").write_text("{}")
    data = (adapter / "adapter_model.safetensors").read_bytes()
    (adapter / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])  # a copy cut short
    with pytest.raises(ModelError) as e:
        load_finetuned_for(cpu_cfg, adapter)
    msg = str(e.value)
    assert f"{adapter / 'adapter_model.safetensors'} is damaged" in msg and "incomplete metadata" in msg
    assert f"Delete {adapter} and run stage 03 again" in msg


def test_a_broken_manifest_is_named_with_the_fix(tmp_path, cpu_cfg):
    run = Run.open(tmp_path / "run")
    run.manifest_path("data").parent.mkdir(parents=True)
    run.manifest_path("data").write_text('{"stage": "data", ')
    with pytest.raises(RunFolderConflict) as e:
        run.reuse_or_build(cpu_cfg, "data", lambda: None, lambda: None)
    assert f"{run.manifest_path('data')} is not a readable manifest (JSONDecodeError" in str(e.value)
    assert "Delete that file to let the stage rebuild" in str(e.value)


def test_seed_profile_offline_without_the_model_cached_names_config_json_and_the_fix(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from r1helpers.modeling.tokens import ModelError

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))  # nothing cached
    with pytest.raises(ModelError) as e:
        session.start(str(tmp_path / "run"), "seed", secrets=False, quiet=True, stage="01")
    msg = str(e.value)
    assert "model.name='unsloth/DeepSeek-R1-Distill-Llama-8B': its config.json is not in the Hugging Face cache" in msg
    assert "HF_HUB_OFFLINE=1" in msg and "--profile cpu" in msg and "hf download" in msg


def test_a_run_dir_that_is_a_file_is_named(tmp_path, capsys):
    from r1helpers import pipeline

    blocker = tmp_path / "runs"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match=f"run_dir: {blocker} is a file, not a folder"):
        Run.open(blocker / "mine")
    assert pipeline.main(["--run-dir", str(blocker), "--profile", "cpu", "--stages", "02", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{blocker} is a file, not a folder" in err and "Pass --run-dir" in err and "FileExistsError" not in err


@pytest.mark.parametrize("lenient", [False, True])
def test_a_gzip_or_binary_file_is_named_not_reported_as_holding_no_rows(tmp_path, lenient):
    gz = tmp_path / "rows.jsonl"
    gz.write_bytes(gzip.compress(sample_path().read_bytes()))
    with pytest.raises(DataError) as e:
        load_rows(str(gz), lenient=lenient, report=Report())
    assert f"{gz}: a gzip-compressed file" in str(e.value) and "gunzip -k rows.jsonl" in str(e.value)
    binary = tmp_path / "rows.csv"
    binary.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(DataError, match=r"rows\.csv: a binary file \(a NUL byte at byte 0\)"):
        load_rows(str(binary), lenient=lenient, report=Report())


def test_every_row_dropped_shows_the_counts_in_the_message(tmp_path):
    rows = [{**r, "Response": " "} for r in _sample_rows(3)]
    ds, origin = load_rows(str(_write_jsonl(tmp_path / "rows.jsonl", rows)))
    with pytest.raises(DataError) as e:
        select_rows(ds, train_rows=2, eval_rows=1, lenient=True, origin=origin)
    assert "see the counts above" not in str(e.value)
    assert "every row was dropped (dropped 3 rows with an empty field: rows [0, 1, 2])" in str(e.value)


def test_a_missing_local_folder_is_not_reported_as_a_hub_failure(tmp_path, monkeypatch):
    missing = tmp_path / "exports" / "medical"
    with pytest.raises(DataError) as e:
        load_rows(str(missing))
    msg = str(e.value)
    assert "Offline?" not in msg and "Hub" not in msg.split(";")[0]
    assert f"{missing}: no such file or folder ({tmp_path} exists but holds no 'exports')" in msg
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError, match=r"data/rows: no such file or folder \(.*data exists but holds no 'rows'\)"):
        load_rows("data/rows")


# ---- 13: the Kaggle build's secret scan finds a W&B key under any W&B-like name ---------------------

def _kaggle_push():
    import sys

    sys.path.insert(0, str(ROOT / "tools")) if str(ROOT / "tools") not in sys.path else None
    import kaggle_push

    return kaggle_push


KEY = "3f9a1c0be27d4856a9e1f0c2b7d3e8a41c6f5b92"  # a made-up 40-hex W&B key


def _notebook_with(folder: Path, source: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    nbformat.write(nb, folder / "03_lora_training.ipynb")
    return folder


@pytest.mark.parametrize("source", [f'wandb_token = "{KEY}"', f'overrides = {{"wandb": "{KEY}"}}',
                                    f"W_AND_B = None\nwandb_secret: str = '{KEY}'"])
def test_a_wandb_key_under_another_name_is_found_with_no_key_in_the_environment(tmp_path, monkeypatch, source):
    kp = _kaggle_push()
    for name in ("WANDB_API_KEY", "WANDB_KEY", "WANDB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    build = _notebook_with(tmp_path / "build", source)
    home = tmp_path / "home"  # no .netrc, no W&B settings
    assert kp.leaked_secrets(build, environ={}, home=home) == ["03_lora_training.ipynb"]


def test_a_key_kept_in_netrc_or_wandb_settings_is_found_under_any_name(tmp_path, monkeypatch):
    kp = _kaggle_push()
    for name in ("WANDB_API_KEY", "WANDB_KEY", "WANDB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    build = _notebook_with(tmp_path / "build", f'settings = {{"api": "{KEY}"}}')  # no W&B-like name beside it
    home = tmp_path / "home"
    home.mkdir()
    assert kp.leaked_secrets(build, environ={}, home=home) == []
    (home / ".netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {KEY}\n")  # `wandb login`
    assert kp.leaked_secrets(build, environ={}, home=home) == ["03_lora_training.ipynb"]
    (home / ".netrc").unlink()
    (home / ".config" / "wandb").mkdir(parents=True)
    (home / ".config" / "wandb" / "settings").write_text(f"[default]\napi_key = {KEY}\nentity = me\n")
    assert kp.leaked_secrets(build, environ={}, home=home) == ["03_lora_training.ipynb"]


def test_the_wider_wandb_scan_does_not_flag_ordinary_wandb_settings(tmp_path):
    kp = _kaggle_push()
    build = _notebook_with(tmp_path / "build", 'overrides = {"train.wandb": "offline", "wandb_project": '
                           '"r1-medical-reasoning-lora-finetune-on-kaggle-t4"}\nwandb_run_id = "3f9a1c0"')
    assert kp.leaked_secrets(build, environ={}, home=tmp_path / "home") == []


# ---- 14: max_seq_length too small for the data names the setting, the longest row and the fix ------------

def test_a_max_seq_length_that_drops_every_row_says_which_value_keeps_them(tokenizer):
    from r1helpers.workflow.data_stage import build

    cfg = load_config("cpu", {"model.max_seq_length": 64, "data.train_rows": 20, "data.eval_rows": 4})
    with pytest.raises(DataError) as e:
        build(cfg, tokenizer)
    msg = str(e.value)
    assert "no training rows left after the checks" in msg and "20 of the 20 training rows are longer than " \
        "model.max_seq_length=64 tokens" in msg
    longest = int(msg.split("the longest is ")[1].split(" ")[0])
    assert f"Raise model.max_seq_length to {longest} (keeps all 20 rows) or " in msg and "(keeps all but the 2 longest)" in msg
    most = int(msg.split(f"(keeps all 20 rows) or ")[1].split(" ")[0])
    # the values it names keep what it says
    dd, stats = build(load_config("cpu", {"model.max_seq_length": longest, "data.train_rows": 20,
                                          "data.eval_rows": 4}), tokenizer)
    assert stats["counts"]["train"] == 20
    dd, stats = build(load_config("cpu", {"model.max_seq_length": most, "data.train_rows": 20,
                                          "data.eval_rows": 4}), tokenizer)
    assert stats["counts"]["train"] == 18

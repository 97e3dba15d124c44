"""The whole series, headless, as a user runs it; then checks made from outside r1helpers."""

from __future__ import annotations

import json
import ast
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def test_six_notebooks_committed_clean():
    assert [p.name[:2] for p in NOTEBOOKS] == ["00", "01", "02", "03", "04", "05"]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert not any(c.get("outputs") or c.get("execution_count") for c in code), f"{path.name} has outputs"
        tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, f"{path.name}: one cell tagged parameters"
        # The cells are the recipe's calls: no loops or function definitions outside the bootstrap cell (a lambda
        # for `.map` and an `if` guarding the training cells are fine; comments are not code).
        for c in code[2:]:
            source = "\n".join(line for line in c.source.splitlines() if not line.lstrip().startswith(("%", "!")))
            logic = [type(n).__name__ for n in ast.walk(ast.parse(source))
                     if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.For, ast.While))]
            assert not logic, f"{path.name}: {logic} in a cell; logic belongs in r1helpers:\n{c.source}"


# The library calls a learner copies from each notebook's cells (the tutorial's recipe), as issue 23 lists them.
RECIPE_CALLS = {
    "01": ["FastLanguageModel.from_pretrained(", "FastLanguageModel.for_inference(", "model.generate("],
    "02": ["load_dataset(", ".map("],
    "03": ["FastLanguageModel.from_pretrained(", "FastLanguageModel.get_peft_model(", "SFTConfig(", "SFTTrainer(",
           "trainer.train(resume_from_checkpoint="],
    "04": ["FastLanguageModel.from_pretrained(", "PeftModel.from_pretrained(", "model.generate("],
    "05": ["merge_lora(", "write_gguf_files(", "push("],
}


def test_the_cells_are_the_recipe():
    """Each notebook's code cells hold the recipe's own calls with their arguments, not one opaque stage call."""
    for path in NOTEBOOKS:
        code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        missing = [call for call in RECIPE_CALLS.get(path.name[:2], []) if call not in code]
        assert not missing, f"{path.name}: the cells lack {missing}"


def test_notebooks_match_their_builder():
    sys.path.insert(0, str(ROOT / "tools"))
    import build_notebooks

    assert build_notebooks.notebook_names() == [p.name for p in NOTEBOOKS]
    for name in build_notebooks.notebook_names():
        expected = build_notebooks.build(name)
        actual = nbformat.read(ROOT / "notebooks" / name, as_version=4)
        assert [c.source for c in actual.cells] == [c.source for c in expected.cells], f"rebuild {name}"


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("e2e") / "cpu"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, "-m", "r1helpers.pipeline", "--run-dir", str(run_dir), "--profile", "auto"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return run_dir


@pytest.mark.slow
def test_series_runs_and_saves_executed_notebooks(cpu_run):
    for path in NOTEBOOKS:
        executed = cpu_run / "notebooks" / path.name
        nb = nbformat.read(executed, as_version=4)
        assert any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), path.name
    cfg = (cpu_run / "config.yaml").read_text()
    assert "profile: cpu" in cfg
    env = json.loads((cpu_run / "environment.json").read_text())
    assert env["versions"]["transformers"] and env["backend"]["name"] == "transformers"


@pytest.mark.slow
def test_series_benchmark_reads_where_each_stage_spent_its_time(cpu_run):
    """bench_series' per-stage rows, read from the executed notebooks and manifests of a real run."""
    sys.path.insert(0, str(ROOT / "tools"))
    from bench_series import generation_summary, slow_cells, stage_row

    cells = slow_cells(cpu_run, "03", over=0.0)
    assert any("r1helpers.start(" in c["code"] and 'stage="03"' in c["code"] for c in cells)
    assert all(c["seconds"] >= 0 for c in cells)
    row = stage_row(cpu_run, "05", 1.0)
    assert row["cells"] == slow_cells(cpu_run, "05") and "adapter" in row["export.artefacts"]
    assert isinstance(row["export.notes"], list)
    gen = generation_summary(cpu_run)
    assert gen["baseline"]["path"] == "dynamic" and gen["tokens"] > 0


@pytest.mark.slow
def test_prepared_splits_load_and_do_not_overlap(cpu_run):
    import datasets

    dd = datasets.load_from_disk(str(cpu_run / "data" / "dataset"))
    assert len(dd["train"]) > 0 and len(dd["eval"]) > 0
    assert set(dd["train"]["Question"]).isdisjoint(dd["eval"]["Question"])


@pytest.mark.slow
def test_training_loss_fell(cpu_run):
    history = json.loads((cpu_run / "train" / "log_history.json").read_text())
    losses = [r["loss"] for r in history if "loss" in r]
    assert len(losses) >= 3 and losses[-1] < losses[0] * 0.9, losses
    evals = [r["eval_loss"] for r in history if "eval_loss" in r]
    assert evals, "held-out loss was logged during training"


@pytest.mark.slow
def test_wandb_offline_run_written(cpu_run):
    assert list((cpu_run / "train" / "wandb").glob("offline-run-*")), "W&B offline run folder"


@pytest.mark.slow
def test_adapter_reloads_with_plain_peft_in_fresh_process(cpu_run):
    adapter = cpu_run / "train" / "adapter"
    script = f"""
import json, torch
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer
model = AutoPeftModelForCausalLM.from_pretrained({str(adapter)!r})
tok = AutoTokenizer.from_pretrained({str(adapter)!r})
ids = tok("### Question:\\nWhat causes anemia?\\n\\n### Response:\\n<think>", return_tensors="pt")
out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
lora = [n for n, _ in model.named_parameters() if "lora_" in n]
print(json.dumps({{"new": out.shape[1] - ids["input_ids"].shape[1], "lora": len(lora)}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["new"] > 0 and result["lora"] > 0


@pytest.mark.slow
def test_generation_files_hold_one_record_per_question(cpu_run):
    cfg = (cpu_run / "config.yaml").read_text()
    import yaml

    c = yaml.safe_load(cfg)
    expected = len(c["infer"]["example_questions"]) + c["infer"]["num_eval_questions"]
    for stage in ("baseline", "finetuned"):
        lines = (cpu_run / stage / "generations.jsonl").read_text().splitlines()
        records = [json.loads(x) for x in lines]
        assert len(records) == expected
        assert len({r["id"] for r in records}) == expected
        assert all(set(r) >= {"question", "reasoning", "answer", "finished", "new_tokens"} for r in records)


@pytest.mark.slow
def test_export_wrote_checked_adapter_merged_model_and_gguf(cpu_run):
    exported = json.loads((cpu_run / "export" / "exported.json").read_text())
    artefacts = exported["artefacts"]
    assert set(artefacts) >= {"adapter", "merged", "gguf"}
    assert artefacts["merged"]["checks"]["logits_vs_adapter"]["passed"]
    files = artefacts["gguf"]["files"]
    assert {"f16", "q8_0"} <= set(files) and all(f["checks"]["transformers"]["passed"] for f in files.values())
    assert files["f16"]["checks"]["transformers"]["greedy_identical"]
    plan = json.loads((cpu_run / "export" / "hub" / "upload_plan.json").read_text())
    assert not plan["pushed"] and plan["private"] and {r["kind"] for r in plan["repos"]} == set(artefacts)
    headline = json.loads((cpu_run / "compare" / "comparison.json").read_text())["headline"]
    assert headline in (cpu_run / "export" / "merged_16bit" / "README.md").read_text()

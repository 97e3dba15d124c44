"""Write the six numbered notebooks from one description, stripped of outputs.

    python tools/build_notebooks.py      # rewrites notebooks/*.ipynb

Keeping the cells here makes the shared cells (bootstrap, parameters, start)
identical across notebooks; edit this file, then rebuild.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]

BOOTSTRAP = '''\
# Make r1helpers importable: installed, or from this repository's checkout.
import importlib.util, pathlib, sys
if importlib.util.find_spec("r1helpers") is None:
    sys.path.insert(0, str(pathlib.Path.cwd().resolve().parent))
import r1helpers
from r1helpers import show'''

PARAMETERS = '''\
run_dir = "../runs/default"  # run folder shared by all six notebooks
profile = "auto"             # auto | seed (8B recipe on a GPU) | cpu (tiny model, sample data)
config_file = None           # optional YAML of field overrides
overrides = {}               # e.g. {"train.max_steps": 30, "data.train_rows": 200}'''

START = "cfg, run = r1helpers.start(run_dir, profile, overrides, config_file)"

NOTEBOOKS = {
    "00_setup.ipynb": [
        "# 00 · Setup and secrets\n\nChecks the machine, picks the backend (Unsloth or transformers + peft) and "
        "dtype with the reason, finds the Hugging Face token and W&B key without showing them, and records the "
        "resolved config in the run folder.",
        "env = r1helpers.runs.read_json(run.root / 'environment.json')\nshow.environment_table(env)",
        "show.config_table(cfg)",
    ],
    "01_baseline_inference.ipynb": [
        "# 01 · Baseline inference\n\nThe base model answers the recipe's example question and the first "
        "held-out questions with the same prompt the fine-tuned model will get, before any training.",
        "from r1helpers import data, infer\nprepared = data.prepare(cfg, run)",
        "baseline = infer.baseline(cfg, run, prepared)\nshow.generations_table(baseline)",
    ],
    "02_data_preparation.ipynb": [
        "# 02 · Data preparation\n\nLoads the dataset, checks its columns, cuts the training rows and a held-out "
        "split that training never sees, tokenizes every example exactly as the trainer will see it and counts "
        "rows longer than `max_seq_length`.",
        "from r1helpers import data\nprepared = data.prepare(cfg, run)\nshow.lines(prepared.stats['report'])",
        "show.length_table(prepared.stats)",
        "show.length_histogram(prepared.stats);",
        "print(prepared.train[0]['text'])",
    ],
    "03_lora_training.ipynb": [
        "# 03 · LoRA training\n\nSupervised fine-tuning with TRL's SFTTrainer and the recipe's settings; resumes "
        "from the latest checkpoint in the run folder.",
        "from r1helpers import data, train\nprepared = data.prepare(cfg, run)",
        "result = train.ensure_trained(cfg, run, prepared)\nresult.metrics",
        "show.loss_curve(result.log_history);",
    ],
    "04_before_after_comparison.ipynb": [
        "# 04 · Before / after comparison\n\nThe base and the fine-tuned model on the same questions, prompts and "
        "decoding settings.",
        "from r1helpers import compare, data, infer\nprepared = data.prepare(cfg, run)\n"
        "baseline = infer.baseline(cfg, run, prepared)\ntuned = infer.finetuned(cfg, run, prepared)",
        "comparison = compare.compare(cfg, run, prepared, baseline, tuned)\ncompare.summary_table(comparison)",
        "show.side_by_side(baseline, tuned)",
    ],
    "05_export.ipynb": [
        "# 05 · Export\n\nThe adapter, a merged 16-bit model and GGUF files in the run folder, each checked; "
        "pushed to the Hub only with a token and `export.hub_repo`.",
        "from r1helpers import export\nexported = export.export(cfg, run)\nexport.summary_table(exported)",
    ],
}


def build(name: str, cells: list[str]):
    intro, *body = cells
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    params = new_code_cell(PARAMETERS)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [new_markdown_cell(intro), new_code_cell(BOOTSTRAP), params, new_code_cell(START)]
    nb.cells += [new_code_cell(src) for src in body]
    nb.nbformat_minor = 4  # no random cell ids: rebuilding gives the same file
    for c in nb.cells:
        c.pop("id", None)
    return nb


def main() -> None:
    out = ROOT / "notebooks"
    out.mkdir(exist_ok=True)
    for name, cells in NOTEBOOKS.items():
        nbformat.write(build(name, cells), out / name)
        print("wrote", out / name)


if __name__ == "__main__":
    main()

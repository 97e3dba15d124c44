"""Write the six numbered notebooks from one description, stripped of outputs.

    python tools/build_notebooks.py      # rewrites notebooks/*.ipynb

Keeping the cells here makes the shared cells (bootstrap, parameters, start)
identical across notebooks; edit this file, then rebuild.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from r1helpers.kaggle import pins_from_pyproject  # noqa: E402

# The first cell: r1helpers from an install, this checkout, or (on Kaggle) the wheel in the
# attached r1helpers dataset; then `setup`, which installs the pins only inside a Kaggle kernel.
BOOTSTRAP = '''\
# Make r1helpers importable: installed, this repository's checkout, or on Kaggle the attached
# r1helpers dataset's wheel. Then, only inside a Kaggle kernel, install what is missing of these
# pins (written from pyproject.toml by tools/build_notebooks.py); elsewhere nothing is installed.
import importlib.util, pathlib, subprocess, sys
if importlib.util.find_spec("r1helpers") is None:
    checkout = pathlib.Path.cwd().resolve().parent
    wheels = sorted(pathlib.Path("/kaggle/input").glob("**/r1helpers-*.whl"))
    if (checkout / "r1helpers" / "__init__.py").is_file():
        sys.path.insert(0, str(checkout))
    elif wheels:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", str(wheels[-1])], check=True)
        importlib.invalidate_caches()
    else:
        raise ModuleNotFoundError("r1helpers not found: open this notebook from the repository's notebooks/ "
                                  "folder, or on Kaggle add the r1helpers dataset that `make kaggle` builds "
                                  "(Add Input > Your Work), then run this cell again")
import r1helpers
from r1helpers import kaggle
from r1helpers.core import show
kaggle.setup([
{pins}
])'''


def bootstrap_cell(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """The first cell, with the pins as pyproject.toml has them today."""
    pins = pins_from_pyproject(pyproject)
    rows = [pins[i : i + 3] for i in range(0, len(pins), 3)]
    return BOOTSTRAP.format(pins="\n".join("    " + " ".join(json.dumps(p) + "," for p in row) for row in rows))


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
        "env = r1helpers.core.runs.read_json(run.root / 'environment.json')\nshow.environment_table(env)",
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
        "from the latest checkpoint in the run folder. With `overrides={\"train.processes\": 2}` (0: every visible "
        "GPU) it trains under PyTorch DDP instead, one process per GPU started by torchrun, with transformers + peft "
        "and the same effective batch; their output appears here as it comes, and rank 0 writes the run folder.",
        "from r1helpers import data, distributed\nprepared = data.prepare(cfg, run)",
        "result = distributed.ensure_trained_anywhere(cfg, run, prepared)\nresult.metrics",
        "show.loss_curve(result.log_history);",
    ],
    "04_before_after_comparison.ipynb": [
        "# 04 · Before / after comparison\n\nDid fine-tuning help? The base and the fine-tuned model on held-out "
        "questions (never trained on), with the same prompts, decoding settings and seed. Teacher-forced NLL of "
        "the reference reasoning and answer needs no generation; the generations are checked for a closed "
        "reasoning block, EOS, lengths, ROUGE-L and semantic similarity to the reference. Each delta has a 95% "
        "paired bootstrap interval, and a metric is called *better* or *worse* only when it excludes zero. "
        "The run folder gets `compare/comparison.json` and `compare/report.html`, which opens in any browser.",
        "from r1helpers import compare, data, infer\nprepared = data.prepare(cfg, run)\n"
        "baseline = infer.baseline(cfg, run, prepared)\ntuned = infer.finetuned(cfg, run, prepared)",
        "comparison = compare.compare(cfg, run, prepared, baseline, tuned)\n"
        "show.lines([comparison['headline'], *comparison['notes']])",
        "compare.summary_table(comparison)",
        "compare.figures(comparison);",
        "compare.side_by_side(comparison)",
        "print('report:', compare.report_path(run).as_uri())",
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
    nb.cells = [new_markdown_cell(intro), new_code_cell(bootstrap_cell()), params, new_code_cell(START)]
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

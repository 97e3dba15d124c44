"""Write the six numbered notebooks from their sources in tools/notebooks/, stripped of outputs.

    python tools/build_notebooks.py      # rewrites notebooks/*.ipynb  (make notebooks)

Each `tools/notebooks/NN_name.py` holds `CELLS`, a list of ("md", text) and ("code", source)
pairs: the chapter a reader sees. This file adds the three cells every notebook shares:
the first cell (on Kaggle: install r1helpers and what the image lacks; elsewhere nothing),
the papermill `parameters` cell, and the cell that resolves the config and opens the run
folder. Edit a notebook's source, then rebuild; a test keeps notebooks/ equal to the sources.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
SOURCES = Path(__file__).resolve().parent / "notebooks"

# On Kaggle: the attached r1helpers dataset's wheel, then `setup()` installs the pins of
# pyproject.toml that the image lacks (next to its own torch). Elsewhere it installs nothing.
# Its first line says what the notebook expects attached on Kaggle (ATTACH); a pipeline run
# (R1HELPERS_HEADLESS=1) already has r1helpers installed and installs no wheel.
FIRST_CELL = '''\
# {attach}
import glob, importlib.util, os, subprocess, sys  # make r1helpers importable, then set up (installs only on Kaggle)
inputs = os.environ.get("R1HELPERS_KAGGLE_INPUT") or os.path.join(os.environ.get("R1HELPERS_KAGGLE_ROOT") or "/kaggle", "input")
if os.path.isfile("../r1helpers/__init__.py"): sys.path.insert(0, os.path.abspath(".."))  # this repository's checkout
elif os.environ.get("R1HELPERS_HEADLESS") != "1" and (wheels := sorted(glob.glob(f"{{inputs}}/**/r1helpers-*.whl", recursive=True))): subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", wheels[-1]], check=True)
elif importlib.util.find_spec("r1helpers") is None: raise ModuleNotFoundError("r1helpers not found: on Kaggle, add the r1helpers dataset that `make kaggle` builds (Add Input > Your Work); elsewhere, `pip install -e .` in the repository")
import r1helpers
r1helpers.setup()  # on Kaggle: one GPU, caches on /kaggle/tmp, the pinned packages the image lacks; elsewhere nothing'''

ATTACH_FIRST = "On Kaggle, attach the r1helpers dataset (`make kaggle` builds it): this notebook starts the run folder."
ATTACH = ("On Kaggle, attach the r1helpers dataset and the output of notebook {prev} (its kernel: kernel_sources, or "
          "Add Input > Your Work): its run folder is continued here, with its settings, and what is current reused.")


def first_cell(stage: str) -> str:
    attach = ATTACH_FIRST if stage == "00" else ATTACH.format(prev=f"{int(stage) - 1:02d}")
    return FIRST_CELL.format(attach=attach)


PARAMETERS = '''\
run_dir = "../runs/default"  # run folder shared by all six notebooks
profile = "auto"             # auto | seed (the 8B recipe, on a GPU) | cpu (tiny model, sample data) | smollm2 (SmolLM2-135M, sample data, CPU)
config_file = None           # optional YAML of field overrides, e.g. "../recipes/my-run.yaml"
overrides = {}               # e.g. {"train.max_steps": 30, "data.train_rows": 200}
overwrite = False            # True: replace finished work made with other settings (moved aside, never deleted)'''

START = '''\
cfg, run = r1helpers.start(run_dir, profile, overrides, config_file, overwrite=overwrite, stage="{stage}")  # checks every value'''


def load_cells(name: str) -> list[tuple[str, str]]:
    path = SOURCES / (Path(name).stem + ".py")
    spec = importlib.util.spec_from_file_location(f"nbsrc_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.CELLS


def notebook_names() -> list[str]:
    return sorted(p.stem + ".ipynb" for p in SOURCES.glob("[0-9][0-9]_*.py"))


def build(name: str, cells: list[tuple[str, str]] | None = None):
    """The notebook: its title cell, the three shared cells, then the rest of its chapter."""
    cells = load_cells(name) if cells is None else cells
    (kind, intro), *body = cells
    assert kind == "md", f"{name}: the first cell is the chapter's introduction"
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    params = new_code_cell(PARAMETERS)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [new_markdown_cell(intro), new_code_cell(first_cell(name[:2])), params, new_code_cell(START.format(stage=name[:2]))]
    nb.cells += [new_markdown_cell(src) if kind == "md" else new_code_cell(src) for kind, src in body]
    nb.nbformat_minor = 4  # no random cell ids: rebuilding gives the same file
    for c in nb.cells:
        c.pop("id", None)
    return nb


def main() -> None:
    out = ROOT / "notebooks"
    out.mkdir(exist_ok=True)
    for name in notebook_names():
        nbformat.write(build(name), out / name)
        print("wrote", out / name)


if __name__ == "__main__":
    sys.exit(main())

"""Build the Kaggle kernels from a laptop, and push them: `make kaggle`.

    make kaggle                                   # build build/kaggle/; push it when credentials are set
    python tools/kaggle_push.py build --username me
    python tools/kaggle_push.py push --run 03     # push all six, and run 03 on Kaggle

r1helpers reaches Kaggle as a wheel in a private dataset (`<user>/r1helpers`) that
every kernel lists in `dataset_sources`: a utility script holds one file, and the
package is several modules and data files. The wheel carries the six notebooks too
(`r1helpers/notebooks/`), so `python -m r1helpers.pipeline` runs them where it is installed.
Kernels 01-05 each list the previous one in `kernel_sources`: its output (the run
folder) is mounted under /kaggle/input and continued. One more kernel, `r1-medical-series`,
runs all six headless in one session. What is built may be pushed, so the notebooks
are copied without outputs and a build holding a secret is deleted. Every kernel asks
for a T4 (`machine_shape`); `enable_gpu` alone could give a P100. Pushing needs the
kaggle CLI 2.2.5 or newer (`kernels push --no-run`).

This tool needs neither torch nor the project's .venv: `make kaggle` runs it in a small
throwaway venv (pyyaml, packaging, setuptools) and builds the wheel with `pip wheel --no-deps`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

# Run as a script from the checkout: its r1helpers, with no install needed (nor torch: nothing here imports it).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r1helpers.core.kaggle_paths import WORKING_LIMIT_GB  # noqa: E402
from r1helpers.kaggle import Runner  # noqa: E402

DATASET_SLUG = "r1helpers"
PLACEHOLDER_USER = "YOUR_KAGGLE_USERNAME"
# Kaggle's own secrets: like HF_TOKEN and WANDB_API_KEY (r1helpers.core.secrets), never written into build/kaggle/.
KAGGLE_SECRETS = ("KAGGLE_KEY", "KAGGLE_API_TOKEN")
# A Hugging Face token has this shape even where this process does not know its value.
HF_TOKEN_PATTERN = re.compile(rb"hf_[A-Za-z0-9]{30,}")
SECRETS_HELP = {
    "HF_TOKEN": "Hugging Face token: gated or private models, and pushing exports to the Hub",
    "WANDB_API_KEY": "Weights & Biases key: training curves online (without it W&B logs offline)",
}

# kernel-metadata.json's `machine_shape` (what `kaggle kernels push --accelerator` overrides). The kaggle CLI
# 2.2.5 help names NvidiaTeslaT4 for "GPU T4 x2" and lists NvidiaTeslaP100 as retired (its sessions run on a T4).
DEFAULT_ACCELERATOR = "NvidiaTeslaT4"
RETIRED_ACCELERATORS = ("NvidiaTeslaP100",)
# `kernels push --no-run` (save a version without running it) exists from this kaggle CLI on.
MIN_KAGGLE_CLI = (2, 2, 5)


def slugify(title: str) -> str:
    """Kaggle derives a kernel's slug from its title; the id must match it."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


SERIES_FILE = "r1_medical_series.py"


def kernel_title(notebook: str) -> str:
    if notebook == SERIES_FILE:
        return "R1 medical series"
    return "R1 medical " + Path(notebook).stem.replace("_", " ")


def kernel_id(notebook: str, username: str) -> str:
    return f"{username}/{slugify(kernel_title(notebook))}"


def kernel_metadata(notebook: str, username: str, accelerator: str | None = DEFAULT_ACCELERATOR,
                    previous: str | None = None) -> dict[str, Any]:
    """One notebook's kernel-metadata.json: private, a T4 and internet on, the r1helpers dataset attached, and the
    previous notebook's kernel (`previous`) as a kernel source, whose run folder this one continues
    (`accelerator` None or "": no machine_shape, and Kaggle picks the GPU)."""
    title = kernel_title(notebook)
    meta: dict[str, Any] = {
        "id": kernel_id(notebook, username),
        "title": title,
        "code_file": notebook,
        "language": "python",
        "kernel_type": "script" if notebook.endswith(".py") else "notebook",
        "is_private": True,
        "enable_gpu": True,
        "enable_tpu": False,
        "enable_internet": True,  # pip installs the pins; the model and data come from the Hub
        "dataset_sources": [f"{username}/{DATASET_SLUG}"],
        "competition_sources": [],
        "kernel_sources": [kernel_id(previous, username)] if previous else [],
        "model_sources": [],
    }
    if accelerator:
        meta["machine_shape"] = accelerator
    return meta


def dataset_metadata(username: str) -> dict[str, Any]:
    return {
        "title": "r1helpers package for the R1 medical notebooks",
        "id": f"{username}/{DATASET_SLUG}",
        "licenses": [{"name": "apache-2.0"}],
        "subtitle": "The r1helpers wheel that every R1 medical notebook installs",
    }


def build_wheel(repo: Path, dest: Path) -> Path:
    """Build the r1helpers wheel from a clean copy, offline, so the checkout gains no build/ or egg-info. The
    notebooks, without outputs, go into the package (`r1helpers/notebooks/`, package data in pyproject.toml)."""
    from r1helpers.pipeline import NOTEBOOKS

    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(repo / "r1helpers", src / "r1helpers", ignore=shutil.ignore_patterns("__pycache__"))
        (src / "r1helpers" / "notebooks").mkdir(exist_ok=True)
        for notebook in NOTEBOOKS.values():
            clean_notebook_copy(repo / "notebooks" / notebook, src / "r1helpers" / "notebooks" / notebook)
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(repo / name, src / name)
        cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
               "--disable-pip-version-check", "--wheel-dir", str(dest), str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"building the r1helpers wheel failed (needs setuptools>=77 beside {sys.executable}; "
                               f"`make kaggle` installs it in build/.kaggle-venv):\n{proc.stderr[-1500:]}")
    wheels = sorted(dest.glob("r1helpers-*.whl"))
    if not wheels:
        raise RuntimeError(f"no r1helpers wheel in {dest}")
    return wheels[-1]


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def clean_notebook_copy(src: Path, dest: Path) -> None:
    """Copy a notebook without outputs: one saved after a local run must not ship what it printed (plain JSON:
    no nbformat needed)."""
    nb = json.loads(Path(src).read_text(encoding="utf-8"))
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
    Path(dest).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


# The code of the one kernel that runs the whole series: install the attached wheel, set up like a notebook's first
# cell, then run the six notebooks shipped in the wheel with papermill (`python -m r1helpers.pipeline`).
SERIES_SCRIPT = '''"""R1 medical series: notebooks 00-05 in one Kaggle session, headless (papermill), from the r1helpers wheel.

Attach the r1helpers dataset (`make kaggle` builds it). The run folder is /kaggle/working/runs/default; each
executed notebook and its log land in its notebooks/, the adapter, results and report beside them.
"""
import glob, os, subprocess, sys

ARGS = ["--profile", "auto"]  # e.g. add "--set", "train.max_steps=30"; see `python -m r1helpers.pipeline --help`

inputs = os.environ.get("R1HELPERS_KAGGLE_INPUT") or os.path.join(os.environ.get("R1HELPERS_KAGGLE_ROOT") or "/kaggle", "input")
wheels = sorted(glob.glob(os.path.join(inputs, "**", "r1helpers-*.whl"), recursive=True))
if wheels:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", wheels[-1]], check=True)
import r1helpers  # noqa: E402

r1helpers.setup()  # on Kaggle: one GPU, caches on /kaggle/tmp, the pinned packages the image lacks
sys.exit(subprocess.call([sys.executable, "-m", "r1helpers.pipeline", *ARGS, *sys.argv[1:]]))
'''


# A W&B API key's shape, where it is written down as one, whatever this process knows of its value: 40 hex
# characters next to any W&B-like name (`wandb_token = "..."`, `{"wandb": "..."}`, `WANDB_KEY=...`), a newer,
# longer key assigned to a W&B key/token/secret name, or a key passed to wandb.login.
_WANDB_NAME = rb"(?:wandb|w(?:&|and)b)"
_SEP = rb"(?:\W{1,12}|\s*:\s*[\w.\[\]|]{1,24}\s*=\W{1,6})"  # `= "`, `": "`, or a type annotation `: str = "`
WANDB_KEY_PATTERN = re.compile(
    rb"(?i)(?:" + _WANDB_NAME + rb"[\w.-]*|wandb\.login\([^)]{0,40}key)" + _SEP + rb"([0-9a-f]{40})(?![0-9a-z_-])"
    rb"|(?:" + _WANDB_NAME + rb"[\w.-]*(?:key|token|secret)|wandb\.login\([^)]{0,40}key)" + _SEP
    + rb"([A-Za-z0-9_-]{40,120})")


def _netrc_passwords(path: Path) -> list[str]:
    """The passwords (API keys) a .netrc file holds: `wandb login` writes the W&B key there, not to the environment."""
    try:
        words = path.read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        return []
    return [words[i + 1] for i, w in enumerate(words[:-1]) if w == "password"]


def _wandb_settings_values(path: Path) -> list[str]:
    """Values in the W&B settings file (`[default]` key = value lines) long enough to be a key."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    return [v.strip() for line in lines if "=" in line for v in [line.split("=", 1)[1]] if len(v.strip()) >= 32]


def _stored_logins(environ: Mapping[str, str], home: Path | None = None) -> list[str]:
    """Keys a user logged in without the environment keeps on disk: ~/.netrc (or $NETRC) and the W&B settings file
    ($WANDB_CONFIG_DIR/settings, ~/.config/wandb/settings)."""
    home = Path(home or environ.get("HOME") or Path.home())
    netrc = Path(environ.get("NETRC") or home / ".netrc")
    config_dir = Path(environ.get("WANDB_CONFIG_DIR") or home / ".config" / "wandb")
    return _netrc_passwords(netrc) + _wandb_settings_values(config_dir / "settings")


def _secret_values(environ: Mapping[str, str], repo: Path | None = None, home: Path | None = None) -> list[bytes]:
    """The secrets' values in this process, in the `.env` files the notebooks read (from `repo`), and in the logins
    kept on disk (~/.netrc, the W&B settings file)."""
    from r1helpers.core.secrets import SECRETS, _dotenv_values, dotenv_files

    names = [alias for aliases in SECRETS.values() for alias in aliases] + list(KAGGLE_SECRETS)
    dotenv = _dotenv_values(dotenv_files(repo)) if repo is not None else {}
    found = [environ.get(n, "") for n in names] + [dotenv.get(n, "") for n in names] + _stored_logins(environ, home)
    return [v.encode() for v in dict.fromkeys(found) if len(v) >= 8]


def leaked_secrets(folder: Path, environ: Mapping[str, str] = os.environ, repo: Path | None = None,
                   home: Path | None = None) -> list[str]:
    """Files under `folder`, and files inside its wheels, holding a secret: named, the secret never shown.

    A secret is the value of HF_TOKEN, WANDB_API_KEY (and their aliases), KAGGLE_KEY or
    KAGGLE_API_TOKEN in this process or in the `.env` files beside `repo` (what the notebooks
    read), a password in ~/.netrc or a key in the W&B settings file (`wandb login` keeps it there; `home`:
    where to look, default $HOME), anything shaped like a Hugging Face token, or a W&B key's shape next to a
    W&B-like name.
    """
    values = _secret_values(environ, repo, home)
    hits = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = str(path.relative_to(folder))
        blobs = [(rel, path.read_bytes())]
        if path.suffix == ".whl" and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as wheel:
                blobs += [(f"{rel}!{name}", wheel.read(name)) for name in wheel.namelist()]
        hits += [where for where, data in blobs if HF_TOKEN_PATTERN.search(data) or WANDB_KEY_PATTERN.search(data)
                 or any(v in data for v in values)]
    return hits


@dataclass
class Build:
    out: Path
    username: str
    dataset: Path
    kernels: list[Path]


def build(out: Path, username: str | None, repo: Path | None = None,
          accelerator: str | None = DEFAULT_ACCELERATOR) -> Build:
    """Write build/kaggle/: the r1helpers dataset folder, one folder per notebook, and a README.

    Notebooks are copied without outputs, and a folder holding a secret is deleted
    instead of returned (see `leaked_secrets`): whatever is built may be pushed.
    """
    from r1helpers.pipeline import NOTEBOOKS

    repo = repo or Path(__file__).resolve().parents[1]
    user = username or PLACEHOLDER_USER
    if out.exists():
        shutil.rmtree(out)
    dataset = out / "r1helpers-dataset"
    dataset.mkdir(parents=True)
    build_wheel(repo, dataset)
    _write_json(dataset / "dataset-metadata.json", dataset_metadata(user))
    kernels, metas = [], []
    previous = None
    for notebook in NOTEBOOKS.values():
        folder = out / slugify(Path(notebook).stem)
        folder.mkdir()
        clean_notebook_copy(repo / "notebooks" / notebook, folder / notebook)
        metas.append(kernel_metadata(notebook, user, accelerator, previous))
        _write_json(folder / "kernel-metadata.json", metas[-1])
        kernels.append(folder)
        previous = notebook
    folder = out / slugify(kernel_title(SERIES_FILE))
    folder.mkdir()
    (folder / SERIES_FILE).write_text(SERIES_SCRIPT)
    metas.append(kernel_metadata(SERIES_FILE, user, accelerator))
    _write_json(folder / "kernel-metadata.json", metas[-1])
    kernels.append(folder)
    (out / "README.md").write_text(readme(user, kernels, metas))
    leaks = leaked_secrets(out, repo=repo)
    if leaks:  # nothing of it may stay on disk, where a later push or a copy would take it along
        shutil.rmtree(out)
        raise RuntimeError(f"a secret is written in {', '.join(leaks)}: remove it there and build again "
                           f"({out} was deleted, nothing was pushed)")
    return Build(out, user, dataset, kernels)


def readme(username: str, kernels: list[Path], metas: list[dict[str, Any]]) -> str:
    secrets = "\n".join(f"- `{name}`: {why}" for name, why in SECRETS_HELP.items())
    folders = "\n".join(f"- `{k.name}/`: the kernel `{m['id']}` ({m['code_file']})" for k, m in zip(kernels, metas))
    return f"""# The R1 medical notebooks, ready for Kaggle

Built by `make kaggle` (`python tools/kaggle_push.py build|push`); rebuild rather than edit.

- `r1helpers-dataset/`: the r1helpers wheel, as the private dataset `{username}/{DATASET_SLUG}`. Every
  kernel attaches it, and its first cell pip-installs the wheel from `/kaggle/input`.
{folders}

Each kernel is private, with GPU and internet on: the first cell installs the pinned packages with
pip, and the model and data come from the Hugging Face Hub.

## The order to run them

Kernels 01-05 each list the previous kernel in `kernel_sources`: Kaggle mounts its output read-only
under `/kaggle/input/<its slug>/`, and `r1helpers.start()` copies the run folder found there into
`/kaggle/working/runs/default` and continues it: what is current is reused (no retraining), and the
settings recorded there (`config.yaml`) are where this kernel starts, so an override given once holds
downstream. Run 00, 01, ... 05 in that order, each after the previous one's version has finished
("Save Version" > "Save & Run All"). Attached by hand instead (Add Input > Your Work > the previous
notebook), it works the same.

`r1-medical-series/` is one kernel that runs all six headless (papermill) in one session, from the
notebooks inside the wheel: simplest when its 12-hour limit is enough.

## Pushing

`make kaggle` pushes with the official `kaggle` tool when credentials are set (`~/.kaggle/kaggle.json`,
`KAGGLE_USERNAME`/`KAGGLE_KEY` or `KAGGLE_API_TOKEN`): the dataset first, then each kernel saved
without running (`--no-run`), so no GPU time is spent until you open one. Add `ARGS="--run 03"` to
also run stages on Kaggle. Without credentials it only prints these commands.

Without the kaggle CLI: `kagglehub.dataset_upload("{username}/{DATASET_SLUG}", "r1helpers-dataset")`
uploads the dataset, or on kaggle.com: Datasets > New Dataset with the `.whl` file; then for each
kernel, Code > New Notebook > File > Import Notebook with its `.ipynb`, and attach the dataset and the
previous notebook's output (Add Input > Your Work).

## Secrets

In the Kaggle editor, Add-ons > Secrets: add these and switch them on for each notebook (once;
later versions keep them). Both are optional:

{secrets}

The tutorial's `wandb` label for the W&B key is read too. To keep the adapter as a private Kaggle Model
after stage 05, also add `KAGGLE_USERNAME` and `KAGGLE_KEY`.

They go into the process environment only, never into an output or a saved file. The notebooks here
carry no outputs, and `make kaggle` deletes a build that holds a secret (or an `hf_...` token) instead
of pushing it.

## Hardware

Each kernel asks for a T4 (`machine_shape` in its kernel-metadata.json); in the editor, Settings >
Accelerator: "GPU T4 x2" is the one to pick: training uses one T4 in fp16 (no bf16 before compute
capability 8.0), and the first cell hides the second GPU so the batch stays as the recipe says.
Kaggle has retired the P100, and its image's torch and bitsandbytes have no kernels for it, so on
a GPU below compute capability 7.0 the first cell installs no GPU package and says to switch to
T4 x2. Without an accelerator the notebooks run the CPU profile, a pipeline check.

## Paths

The run folder is `/kaggle/working/runs/default`, kept with each saved version ({WORKING_LIMIT_GB} GB at
most). The model cache (`HF_HOME`) and large exports live in `/kaggle/tmp`, which no version keeps.
"""


def credentials(environ: Mapping[str, str] = os.environ, home: Path | None = None) -> tuple[str | None, str | None]:
    """(where Kaggle credentials were found, the username they name) without contacting Kaggle."""
    home = home or Path.home()
    user = environ.get("KAGGLE_USERNAME")
    if environ.get("KAGGLE_USERNAME") and environ.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY", user
    if environ.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN", user
    dirs = [Path(environ["KAGGLE_CONFIG_DIR"])] if environ.get("KAGGLE_CONFIG_DIR") else []
    dirs += [home / ".kaggle", Path(environ.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"]
    for d in dirs:
        for name in ("kaggle.json", "credentials.json"):
            if (d / name).is_file():
                try:
                    data = json.loads((d / name).read_text())
                except (OSError, ValueError):
                    continue
                return str(d / name), user or data.get("username")
        for name in ("access_token", "access_token.txt"):
            if (d / name).is_file():
                return str(d / name), user
    return None, user


def kaggle_cli() -> list[str]:
    beside = Path(sys.executable).with_name("kaggle")
    return [str(beside)] if beside.is_file() else ["kaggle"]


def kaggle_cli_problem(run: Runner | None = None) -> str | None:
    """Why the kaggle CLI that would push cannot (too old, or its version unreadable); None when it can."""
    cli = kaggle_cli()
    try:
        proc = (run or subprocess.run)(cli + ["--version"], capture_output=True, text=True, timeout=60)
        text = f"{proc.stdout or ''} {proc.stderr or ''}"
    except (OSError, subprocess.SubprocessError) as e:
        text = str(e)
    found = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    version = tuple(int(g or 0) for g in found.groups()) if found else None
    if version is not None and version >= MIN_KAGGLE_CLI:
        return None
    need = ".".join(map(str, MIN_KAGGLE_CLI))
    said = f"is {'.'.join(map(str, version))}" if version else "did not say its version"
    return (f"the kaggle CLI ({shlex.join(cli)}) {said}, and `kernels push --no-run` needs {need} or newer: "
            f"upgrade it with `{shlex.quote(sys.executable)} -m pip install 'kaggle>={need}'`, which this command "
            "then uses")


def push_plan(b: Build, run_stages: Sequence[str] = ()) -> list[tuple[str, list[str]]]:
    """(what, command) in order: the dataset first, since every kernel attaches it."""
    from r1helpers.pipeline import NOTEBOOKS

    ds = f"{b.username}/{DATASET_SLUG}"
    plan = [(f"dataset {ds}: new version (created instead if it does not exist yet)",
             ["datasets", "version", "-p", str(b.dataset), "-m", "r1helpers from make kaggle", "--quiet"])]
    for stage, folder in zip([*NOTEBOOKS, "series"], b.kernels):
        runs = stage in run_stages
        cmd = ["kernels", "push", "-p", str(folder)] + ([] if runs else ["--no-run"])
        plan.append((f"kernel {folder.name}: {'save and run on Kaggle' if runs else 'save without running'}", cmd))
    return plan


def _dataset_exists(ds: str, run: Runner) -> bool:
    return run(kaggle_cli() + ["datasets", "status", ds], capture_output=True, text=True).returncode == 0


def _wait_ready(ds: str, run: Runner, timeout_s: float = 600) -> None:
    """A new dataset version is processed before kernels can attach it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        proc = run(kaggle_cli() + ["datasets", "status", ds], capture_output=True, text=True)
        if proc.returncode == 0 and "ready" in proc.stdout.lower():
            return
        time.sleep(10)
    print(f"dataset {ds} not ready after {timeout_s:.0f} s; pushing the kernels anyway")


def push(b: Build, run_stages: Sequence[str] = (), run: Runner = subprocess.run) -> None:
    """Push with the official kaggle CLI: the dataset, then each kernel."""
    ds = f"{b.username}/{DATASET_SLUG}"
    for what, cmd in push_plan(b, run_stages):
        if cmd[:2] == ["datasets", "version"] and not _dataset_exists(ds, run):
            cmd = ["datasets", "create", "-p", str(b.dataset), "--quiet"]
        print(f"{what}\n  $ kaggle {shlex.join(cmd)}", flush=True)
        run(kaggle_cli() + cmd, check=True)
        if cmd[0] == "datasets":
            _wait_ready(ds, run)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("build", "push"), help="build: write the folder; push: build, then push")
    p.add_argument("--out", default="build/kaggle", help="folder to write")
    p.add_argument("--username", default=None, help="Kaggle username (default: from the credentials)")
    p.add_argument("--accelerator", default=DEFAULT_ACCELERATOR,
                   help=f"machine_shape for every kernel (default {DEFAULT_ACCELERATOR}: GPU T4 x2; '' for none)")
    p.add_argument("--run", default="", help="stages to run on Kaggle after pushing, e.g. 00,03, or series (the "
                   "one kernel that runs all six; default: none)")
    args = p.parse_args(argv)
    from r1helpers.pipeline import NOTEBOOKS

    stages = [s for s in args.run.split(",") if s]
    if set(stages) - {*NOTEBOOKS, "series"}:
        print(f"--run: unknown stages {sorted(set(stages) - set(NOTEBOOKS))}; choose from {[*NOTEBOOKS, 'series']}",
              file=sys.stderr)
        return 2
    if args.accelerator in RETIRED_ACCELERATORS:
        print(f"--accelerator {args.accelerator}: Kaggle has retired it (its sessions run on a T4); use "
              f"{DEFAULT_ACCELERATOR}", file=sys.stderr)
        return 2
    source, user = credentials()
    try:
        b = build(Path(args.out), args.username or user, accelerator=args.accelerator)
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    print(f"built {b.out}: dataset {b.dataset.name}/ and {len(b.kernels)} kernels as {b.username}")
    if args.command == "build":
        return 0
    if source is None or b.username == PLACEHOLDER_USER:
        why = "no Kaggle credentials found" if source is None else "credentials name no username (pass --username)"
        print(f"{why} (~/.kaggle/kaggle.json, KAGGLE_USERNAME/KAGGLE_KEY or KAGGLE_API_TOKEN); would push:")
        for what, cmd in push_plan(b, stages):
            print(f"  {what}\n    $ kaggle {shlex.join(cmd)}")
        return 0
    if shutil.which(kaggle_cli()[0]) is None:
        print(f"the kaggle command-line tool is missing: `{shlex.quote(sys.executable)} -m pip install "
              f"'kaggle>={'.'.join(map(str, MIN_KAGGLE_CLI))}'`, or push without it: upload "
              f"{b.dataset} with kagglehub.dataset_upload('{b.username}/{DATASET_SLUG}', ...) and each kernel "
              "folder's notebook on kaggle.com (see its README.md)", file=sys.stderr)
        return 2
    problem = kaggle_cli_problem()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    print(f"pushing as {b.username} (credentials: {source})")
    try:
        push(b, stages)
    except subprocess.CalledProcessError as e:
        print(f"kaggle {shlex.join(e.cmd[1:])} failed (exit {e.returncode}); see its message above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

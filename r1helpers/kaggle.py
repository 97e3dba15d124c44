"""Kaggle as a first-class place to run the notebooks: set up a session, build and push the kernels.

    make kaggle                                   # build build/kaggle/; push it when credentials are set
    python -m r1helpers.kaggle build --username me
    python -m r1helpers.kaggle push --run 03      # push all six, and run 03 on Kaggle

In a session, the first cell of every notebook calls `setup(pins)`. On Kaggle it
pins training to one GPU, keeps caches and large files off /kaggle/working (20 GB,
saved with each version) and installs the pinned packages that are missing, next
to the image's own torch; anywhere else it installs nothing. The pins are written
into that cell from pyproject.toml when the notebooks are built, so a Kaggle user
sees exactly what gets installed and a test checks the two agree.

r1helpers reaches Kaggle as a wheel in a private dataset (`<user>/r1helpers`) that
every kernel lists in `dataset_sources`: a utility script holds one file, and the
package is several modules and data files. What is built may be pushed, so the
notebooks are copied without outputs and a build holding a secret is deleted.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, MutableMapping, Sequence

from .env import GPU, UNSLOTH_MIN_CAPABILITY, pin_first_gpu, smi_gpus

KAGGLE_ROOT = Path("/kaggle")
WORKING_LIMIT_GB = 20  # what Kaggle keeps of /kaggle/working with each saved version
# Extras Kaggle does not need: its image brings Jupyter and widgets, and the dev tools run in CI.
SKIP_EXTRAS = ("notebooks", "dev", "kaggle")
# The image's CUDA build of torch and the packages built against it are never replaced.
KEEP_INSTALLED = ("torch", "torchvision", "torchaudio", "triton", "xformers")
UNSLOTH_PACKAGES = ("unsloth", "unsloth-zoo")
DATASET_SLUG = "r1helpers"
PLACEHOLDER_USER = "YOUR_KAGGLE_USERNAME"
# Kaggle's own secrets: like HF_TOKEN and WANDB_API_KEY (r1helpers.secrets), never written into build/kaggle/.
KAGGLE_SECRETS = ("KAGGLE_KEY", "KAGGLE_API_TOKEN")
# A Hugging Face token has this shape even where this process does not know its value.
HF_TOKEN_PATTERN = re.compile(rb"hf_[A-Za-z0-9]{30,}")
SECRETS_HELP = {
    "HF_TOKEN": "Hugging Face token: gated or private models, and pushing exports to the Hub",
    "WANDB_API_KEY": "Weights & Biases key: training curves online (without it W&B logs offline)",
}

Runner = Callable[..., subprocess.CompletedProcess]


# ---------------------------------------------------------------- where things go on Kaggle


def on_kaggle(environ: Mapping[str, str] = os.environ) -> bool:
    """Kaggle sets KAGGLE_KERNEL_RUN_TYPE in every kernel ("Interactive" or "Batch")."""
    return "KAGGLE_KERNEL_RUN_TYPE" in environ


@dataclass(frozen=True)
class KagglePaths:
    """Kaggle's folders and what each is for; `root` is injectable for tests."""

    root: Path = KAGGLE_ROOT

    @property
    def input(self) -> Path:  # attached datasets and models, read-only
        return self.root / "input"

    @property
    def working(self) -> Path:  # saved with the version, 20 GB at most: small outputs only
        return self.root / "working"

    @property
    def tmp(self) -> Path:  # the session's own disk, not saved: caches and large files
        return self.root / "tmp"

    @property
    def run_dir(self) -> Path:
        return self.working / "runs" / "default"

    @property
    def exports(self) -> Path:  # merged 16-bit model and GGUF files: far over /kaggle/working's limit
        return self.tmp / "r1helpers" / "exports"

    @property
    def hf_home(self) -> Path:
        return self.tmp / "hf"

    @property
    def cache(self) -> Path:
        return self.tmp / "r1helpers-cache"


def paths(root: Path = KAGGLE_ROOT) -> KagglePaths:
    return KagglePaths(Path(root))


def large_output_dir(run_name: str, environ: Mapping[str, str] = os.environ) -> Path | None:
    """Where stage 05 should write files too large for /kaggle/working; None off Kaggle (use the run folder)."""
    return paths().exports / run_name if on_kaggle(environ) else None


def resolve_run_dir(run_dir: str | os.PathLike, environ: Mapping[str, str] = os.environ,
                    root: Path = KAGGLE_ROOT) -> Path:
    """On Kaggle, a run folder outside /kaggle/working or /kaggle/tmp moves to /kaggle/working/runs/<name>.

    The notebooks' default "../runs/default" is right in a checkout, but on Kaggle it
    lands in /kaggle/runs, which no version keeps.
    """
    path = Path(run_dir).expanduser()
    if not on_kaggle(environ):
        return path
    p = paths(root)
    full = path if path.is_absolute() else (Path.cwd() / path)
    full = Path(os.path.normpath(full))
    if any(full == d or d in full.parents for d in (p.working, p.tmp)):
        return full
    return p.working / "runs" / full.name


def cache_env(environ: MutableMapping[str, str], root: Path = KAGGLE_ROOT) -> dict[str, str]:
    """Caches on the session disk: the 8B download (~6 GB) must not count against /kaggle/working."""
    p = paths(root)
    chosen = {"HF_HOME": str(p.hf_home), "R1HELPERS_CACHE": str(p.cache)}
    return {k: environ.setdefault(k, v) for k, v in chosen.items()}


# ---------------------------------------------------------------- pins and installing them


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _req_name(spec: str) -> str:
    return _canon(re.split(r"[\s<>=!~;\[(@]", spec.strip(), maxsplit=1)[0])


def pins_from_pyproject(pyproject: Path) -> list[str]:
    """The requirements a Kaggle session installs: dependencies and extras, minus torch and SKIP_EXTRAS."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    project = tomllib.loads(Path(pyproject).read_text())["project"]
    specs = list(project["dependencies"])
    for extra, reqs in project.get("optional-dependencies", {}).items():
        if extra not in SKIP_EXTRAS:
            specs += reqs
    out: list[str] = []
    for spec in specs:
        spec = spec.strip()
        if _req_name(spec) not in KEEP_INSTALLED and spec not in out:
            out.append(spec)
    return out


def _spec_set(pins: Sequence[str]) -> set[tuple[str, str]]:
    from packaging.requirements import Requirement

    return {(_canon(r.name), str(r.specifier)) for r in map(Requirement, pins)}


def wheel_drift(pins: Sequence[str], requires: Sequence[str] | None) -> str | None:
    """Whether the attached r1helpers wheel was built from another pyproject.toml than this notebook."""
    if requires is None:
        return None
    extra = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")
    keep = [r.split(";")[0] for r in requires
            if _req_name(r) not in KEEP_INSTALLED and not any(e in SKIP_EXTRAS for e in extra.findall(r))]
    if _spec_set(keep) == _spec_set(pins):
        return None
    return ("the attached r1helpers dataset and this notebook were built from different pyproject.toml pins: "
            "rebuild both with `make kaggle`")


def for_hardware(pins: Sequence[str], gpus: Sequence[GPU]) -> tuple[list[str], str | None]:
    """Drop Unsloth where it cannot run (no GPU, or capability below 7.0 like the P100)."""
    if gpus and gpus[0].capability >= UNSLOTH_MIN_CAPABILITY:
        return list(pins), None
    kept = [p for p in pins if _req_name(p) not in UNSLOTH_PACKAGES]
    if not gpus:
        return kept, "Unsloth not installed: no GPU in this session"
    cap = f"{gpus[0].capability[0]}.{gpus[0].capability[1]}"
    return kept, (f"Unsloth not installed: {gpus[0].name} has capability {cap} and Unsloth needs 7.0+; "
                  "transformers + peft + bitsandbytes will train")


def missing(pins: Sequence[str], version_of: Callable[[str], str] = importlib.metadata.version) -> list[str]:
    """The pins not satisfied by what is installed: an image that already has them installs nothing."""
    from packaging.requirements import Requirement

    out = []
    for pin in pins:
        req = Requirement(pin)
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            installed = version_of(req.name)
        except importlib.metadata.PackageNotFoundError:
            out.append(pin)
            continue
        if not req.specifier.contains(installed, prereleases=True):
            out.append(pin)
    return out


def constraints(version_of: Callable[[str], str] = importlib.metadata.version) -> list[str]:
    """`name==installed` for torch and its companions, so pip may not swap the image's CUDA build."""
    out = []
    for name in KEEP_INSTALLED:
        try:
            out.append(f"{name}=={version_of(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def pip_command(pins: Sequence[str], constraint_file: str) -> list[str]:
    return [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
            "--constraint", constraint_file, *pins]


def may_install(environ: Mapping[str, str] = os.environ) -> bool:
    """Only in a Kaggle kernel, never in CI, and not when R1HELPERS_NO_INSTALL=1."""
    return on_kaggle(environ) and not environ.get("CI") and environ.get("R1HELPERS_NO_INSTALL") != "1"


def _pip(pins: Sequence[str], run: Runner) -> subprocess.CompletedProcess:
    fd, cfile = tempfile.mkstemp(prefix="r1helpers-constraints-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(constraints()) + "\n")
    try:
        return run(pip_command(pins, cfile), capture_output=True, text=True)
    finally:
        os.unlink(cfile)


def _tail(proc: subprocess.CompletedProcess, lines: int = 8) -> str:
    return "\n".join(((proc.stderr or "") + (proc.stdout or "")).strip().splitlines()[-lines:])


def install(pins: Sequence[str], run: Runner = subprocess.run) -> list[str]:
    """pip install `pins`; if Unsloth cannot sit next to the image's torch, install the rest without it."""
    proc = _pip(pins, run)
    if proc.returncode == 0:
        return []
    rest = [p for p in pins if _req_name(p) not in UNSLOTH_PACKAGES]
    if len(rest) < len(pins) and _pip(rest, run).returncode == 0:
        return [f"Unsloth could not be installed next to this image's torch ({_tail(proc, 3)}); "
                "transformers + peft + bitsandbytes will train the same recipe, more slowly"]
    raise RuntimeError(
        "pip could not install the pinned packages. Is the internet on (notebook Settings > Internet, "
        f"which needs a phone-verified account)? pip said:\n{_tail(proc)}"
    )


def _stale_imports(before: dict[str, str], imported: set[str]) -> list[str]:
    """Modules the kernel had imported before pip changed their distributions: only a restart reloads them."""
    after = {_canon(d.metadata["Name"] or ""): d.version for d in importlib.metadata.distributions()}
    changed = {n for n, v in after.items() if before.get(n) != v}
    top = importlib.metadata.packages_distributions()
    return sorted({m for m, dists in top.items() if m in imported and changed & {_canon(d) for d in dists}})


# ---------------------------------------------------------------- the first cell of every notebook


@dataclass
class SetupReport:
    lines: list[str] = field(default_factory=list)
    installed: list[str] = field(default_factory=list)
    say: Callable[[str], None] | None = None  # prints each line as it comes: pip can take minutes

    def add(self, *lines: str | None) -> None:
        for line in filter(None, lines):
            self.lines.append(line)
            if self.say:
                self.say(line)


def prepare(pins: Sequence[str], environ: MutableMapping[str, str] = os.environ, run: Runner = subprocess.run,
            gpus: Sequence[GPU] | None = None, root: Path = KAGGLE_ROOT,
            say: Callable[[str], None] | None = None) -> SetupReport:
    """Everything `setup` does, with the machine injectable for tests."""
    report = SetupReport(say=say)
    imported = set(sys.modules)  # before this function imports `packaging` for its own comparisons
    gpus = smi_gpus(run) if gpus is None else list(gpus)
    report.add(pin_first_gpu(list(gpus), environ))
    if not on_kaggle(environ):
        return report
    p = paths(root)
    p.tmp.mkdir(parents=True, exist_ok=True)
    caches = cache_env(environ, root)
    report.add(f"Kaggle: run folder under {p.working}/runs (saved, {WORKING_LIMIT_GB} GB at most); model "
               f"cache {caches['HF_HOME']} and large exports {p.exports} (not saved)")
    if environ.get("KAGGLE_KERNEL_RUN_TYPE") == "Batch":
        environ["R1HELPERS_HEADLESS"] = "1"  # a saved version's log keeps lines, not redrawn bars
    try:
        report.add(wheel_drift(pins, importlib.metadata.requires("r1helpers")))
    except importlib.metadata.PackageNotFoundError:
        pass
    wanted, why = for_hardware(pins, gpus)
    report.add(why)
    todo = missing(wanted)
    if not todo:
        report.add("Kaggle: the pinned packages are already installed")
    elif not may_install(environ):
        report.add(f"Kaggle: not installing {len(todo)} missing packages (R1HELPERS_NO_INSTALL or CI is set)")
    else:
        _install_reporting(todo, run, report, imported)
    return report


def _install_reporting(todo: list[str], run: Runner, report: SetupReport, imported: set[str]) -> None:
    report.add(f"Kaggle: installing {', '.join(todo)} (a few minutes; later runs of this session skip it)")
    before = {_canon(d.metadata["Name"] or ""): d.version for d in importlib.metadata.distributions()}
    t0 = time.perf_counter()
    report.add(*install(todo, run))
    importlib.invalidate_caches()
    report.installed = todo
    report.add(f"Kaggle: installed in {time.perf_counter() - t0:.0f} s")
    stale = _stale_imports(before, imported)
    if stale:
        report.add(f"restart the kernel and run again: {', '.join(stale)} was imported before the update")


def setup(pins: Sequence[str]) -> None:
    """The notebooks' first call: one GPU, Kaggle's folders and the pinned packages (installs only on Kaggle)."""
    prepare(pins, say=lambda line: print(line, flush=True))


# ---------------------------------------------------------------- build/kaggle/ and pushing it


def slugify(title: str) -> str:
    """Kaggle derives a kernel's slug from its title; the id must match it."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def kernel_title(notebook: str) -> str:
    return "R1 medical " + Path(notebook).stem.replace("_", " ")


def kernel_metadata(notebook: str, username: str, accelerator: str | None = None) -> dict[str, Any]:
    """One notebook's kernel-metadata.json: private, GPU and internet on, the r1helpers dataset attached."""
    title = kernel_title(notebook)
    meta: dict[str, Any] = {
        "id": f"{username}/{slugify(title)}",
        "title": title,
        "code_file": notebook,
        "language": "python",
        "kernel_type": "notebook",
        "is_private": True,
        "enable_gpu": True,
        "enable_tpu": False,
        "enable_internet": True,  # pip installs the pins; the model and data come from the Hub
        "dataset_sources": [f"{username}/{DATASET_SLUG}"],
        "competition_sources": [],
        "kernel_sources": [],
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
    """Build the r1helpers wheel from a clean copy, offline, so the checkout gains no build/ or egg-info."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(repo / "r1helpers", src / "r1helpers", ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(repo / name, src / name)
        cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
               "--wheel-dir", str(dest), str(src)]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    wheels = sorted(dest.glob("r1helpers-*.whl"))
    if not wheels:
        raise RuntimeError(f"no r1helpers wheel in {dest}")
    return wheels[-1]


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def clean_notebook_copy(src: Path, dest: Path) -> None:
    """Copy a notebook without outputs: one saved after a local run must not ship what it printed."""
    import nbformat

    nb = nbformat.read(src, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(nb, dest)


def _secret_values(environ: Mapping[str, str]) -> list[bytes]:
    from .secrets import SECRETS

    names = [alias for aliases in SECRETS.values() for alias in aliases] + list(KAGGLE_SECRETS)
    return [v.encode() for v in dict.fromkeys(environ.get(n, "") for n in names) if len(v) >= 8]


def leaked_secrets(folder: Path, environ: Mapping[str, str] = os.environ) -> list[str]:
    """Files under `folder`, and files inside its wheels, holding a secret: named, the secret never shown.

    A secret is the value of HF_TOKEN, WANDB_API_KEY (and their aliases), KAGGLE_KEY or
    KAGGLE_API_TOKEN in this process, or anything shaped like a Hugging Face token.
    """
    values = _secret_values(environ)
    hits = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = str(path.relative_to(folder))
        blobs = [(rel, path.read_bytes())]
        if path.suffix == ".whl" and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as wheel:
                blobs += [(f"{rel}!{name}", wheel.read(name)) for name in wheel.namelist()]
        hits += [where for where, data in blobs if HF_TOKEN_PATTERN.search(data) or any(v in data for v in values)]
    return hits


@dataclass
class Build:
    out: Path
    username: str
    dataset: Path
    kernels: list[Path]


def build(out: Path, username: str | None, repo: Path | None = None, accelerator: str | None = None) -> Build:
    """Write build/kaggle/: the r1helpers dataset folder, one folder per notebook, and a README.

    Notebooks are copied without outputs, and a folder holding a secret is deleted
    instead of returned (see `leaked_secrets`): whatever is built may be pushed.
    """
    from .pipeline import NOTEBOOKS

    repo = repo or Path(__file__).resolve().parents[1]
    user = username or PLACEHOLDER_USER
    if out.exists():
        shutil.rmtree(out)
    dataset = out / "r1helpers-dataset"
    dataset.mkdir(parents=True)
    build_wheel(repo, dataset)
    _write_json(dataset / "dataset-metadata.json", dataset_metadata(user))
    kernels, metas = [], []
    for notebook in NOTEBOOKS.values():
        folder = out / slugify(Path(notebook).stem)
        folder.mkdir()
        clean_notebook_copy(repo / "notebooks" / notebook, folder / notebook)
        metas.append(kernel_metadata(notebook, user, accelerator))
        _write_json(folder / "kernel-metadata.json", metas[-1])
        kernels.append(folder)
    (out / "README.md").write_text(readme(user, kernels, metas))
    leaks = leaked_secrets(out)
    if leaks:  # nothing of it may stay on disk, where a later push or a copy would take it along
        shutil.rmtree(out)
        raise RuntimeError(f"a secret is written in {', '.join(leaks)}: remove it there and build again "
                           f"({out} was deleted, nothing was pushed)")
    return Build(out, user, dataset, kernels)


def readme(username: str, kernels: list[Path], metas: list[dict[str, Any]]) -> str:
    secrets = "\n".join(f"- `{name}`: {why}" for name, why in SECRETS_HELP.items())
    folders = "\n".join(f"- `{k.name}/`: the kernel `{m['id']}` ({m['code_file']})" for k, m in zip(kernels, metas))
    return f"""# The R1 medical notebooks, ready for Kaggle

Built by `make kaggle` (`python -m r1helpers.kaggle build|push`); rebuild rather than edit.

- `r1helpers-dataset/`: the r1helpers wheel, as the private dataset `{username}/{DATASET_SLUG}`. Every
  kernel attaches it, and its first cell pip-installs the wheel from `/kaggle/input`.
{folders}

Each kernel is private, with GPU and internet on: the first cell installs the pinned packages with
pip, and the model and data come from the Hugging Face Hub.

## Pushing

`make kaggle` pushes with the official `kaggle` tool when credentials are set (`~/.kaggle/kaggle.json`,
`KAGGLE_USERNAME`/`KAGGLE_KEY` or `KAGGLE_API_TOKEN`): the dataset first, then each kernel saved
without running (`--no-run`), so no GPU time is spent until you open one. Add `ARGS="--run 03"` to
also run stages on Kaggle. Without credentials it only prints these commands.

## Secrets

In the Kaggle editor, Add-ons > Secrets: add these and switch them on for each notebook (once;
later versions keep them). Both are optional:

{secrets}

They go into the process environment only, never into an output or a saved file. The notebooks here
carry no outputs, and `make kaggle` deletes a build that holds a secret (or an `hf_...` token) instead
of pushing it.

## Hardware

Settings > Accelerator: "GPU T4 x2" is the one to pick: training uses one T4 in fp16 (no bf16 before
compute capability 8.0), and the first cell hides the second GPU so the batch stays as the recipe
says. On a P100, where still offered, Unsloth cannot run: transformers + peft + bitsandbytes train
instead, and the setup notebook says what to do if the image's torch has dropped the P100. Without
an accelerator the notebooks run the CPU profile, a pipeline check.

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


def push_plan(b: Build, run_stages: Sequence[str] = ()) -> list[tuple[str, list[str]]]:
    """(what, command) in order: the dataset first, since every kernel attaches it."""
    from .pipeline import NOTEBOOKS

    ds = f"{b.username}/{DATASET_SLUG}"
    plan = [(f"dataset {ds}: new version (created instead if it does not exist yet)",
             ["datasets", "version", "-p", str(b.dataset), "-m", "r1helpers from make kaggle", "--quiet"])]
    for (stage, _), folder in zip(NOTEBOOKS.items(), b.kernels):
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
    p.add_argument("--accelerator", default=None, help="machine_shape for every kernel, e.g. NvidiaTeslaT4")
    p.add_argument("--run", default="", help="stages to run on Kaggle after pushing, e.g. 00,03 (default: none)")
    args = p.parse_args(argv)
    from .pipeline import NOTEBOOKS

    stages = [s for s in args.run.split(",") if s]
    if set(stages) - set(NOTEBOOKS):
        print(f"--run: unknown stages {sorted(set(stages) - set(NOTEBOOKS))}; choose from {list(NOTEBOOKS)}",
              file=sys.stderr)
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
        print("the kaggle command-line tool is missing: pip install 'r1helpers[kaggle]'", file=sys.stderr)
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

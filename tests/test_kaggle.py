"""Kaggle: the built folder's metadata, the first cell's pins, and a session set up without pip."""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nbformat
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from r1helpers import kaggle
from r1helpers.core.hardware import GPU
from r1helpers.core import kaggle_paths

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))  # the tools are scripts there, not in r1helpers
import kaggle_push  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PINS = kaggle.pins_from_pyproject(ROOT / "pyproject.toml")
T4 = GPU("Tesla T4", (7, 5), 14.7)
P100 = GPU("Tesla P100-PCIE-16GB", (6, 0), 15.9)
H100 = GPU("NVIDIA H100 80GB HBM3", (9, 0), 79.1)
KAGGLE = {"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}


def no_subprocess(*args, **kwargs):
    raise AssertionError(f"nothing may run here: {args}")


class Recorder:
    """A stand-in for subprocess.run that answers with the given return codes, in order."""

    def __init__(self, *codes: int) -> None:
        self.calls: list[list[str]] = []
        self.codes = list(codes)

    def __call__(self, cmd, **kwargs):
        self.calls.append(list(cmd))
        code = self.codes.pop(0) if self.codes else 0
        return subprocess.CompletedProcess(cmd, code, stdout="ready" if code == 0 else "", stderr="boom")


# ---------------------------------------------------------------- the first cell's pins


def setup_calls(path: Path) -> list[ast.Call]:
    source = nbformat.read(path, as_version=4).cells[1].source
    return [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call) and getattr(n.func, "attr", None) == "setup"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_first_cell_sets_up_once_with_the_pins_pyproject_pins(path):
    calls = setup_calls(path)
    assert len(calls) == 1 and not calls[0].args, f"{path.name}: one r1helpers.setup() call in the first code cell"
    assert len(nbformat.read(path, as_version=4).cells[1].source.splitlines()) <= 8
    assert kaggle.default_pins() == PINS


def test_pins_cover_pyproject_but_never_torch_or_notebook_tools():
    names = {kaggle._req_name(p) for p in PINS}
    assert {"transformers", "trl", "peft", "accelerate", "datasets", "unsloth", "unsloth-zoo", "bitsandbytes",
            "wandb"} <= names
    assert not names & {"torch", "torchvision", "ipykernel", "papermill", "pytest", "kaggle"}


def test_pins_satisfy_unsloth_2026_10_9():
    """Unsloth 2026.10.9 requires transformers <= 5.17.0, trl <= 1.15.0 and datasets < 5."""
    pinned = {kaggle._req_name(p): Requirement(p).specifier for p in PINS}
    limits = {"transformers": "<=5.17.0", "trl": "<=1.15.0", "datasets": "<5.0.0", "bitsandbytes": ">=0.45.5"}
    for name, limit in limits.items():
        (version,) = [s.version for s in pinned[name] if s.operator == "=="]
        assert version in SpecifierSet(limit), f"{name}=={version} breaks Unsloth's {limit}"
    assert str(pinned["unsloth"]) == "==2026.10.9" and str(pinned["bitsandbytes"]) == "==0.50.2"


# ---------------------------------------------------------------- a session: no pip off Kaggle


def test_first_cell_installs_nothing_off_kaggle(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, *a, **k: calls.append(cmd) or no_subprocess(cmd))
    monkeypatch.setattr(kaggle, "smi_gpus", lambda run=None: [])  # a GPU machine would get CUDA_VISIBLE_DEVICES
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.chdir(ROOT / "notebooks")
    exec(compile(nbformat.read(NOTEBOOKS[0], as_version=4).cells[1].source, "cell-1", "exec"), {})
    assert not [c for c in calls if "pip" in c], calls


def run_first_cell(monkeypatch, cwd: Path) -> None:
    """The first cell as a fresh kernel without r1helpers installed would run it, in `cwd`."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "r1helpers" else real(name, *a))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(subprocess, "run", no_subprocess)
    monkeypatch.setattr(kaggle, "smi_gpus", lambda run=None: [])
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.chdir(cwd)
    exec(compile(nbformat.read(NOTEBOOKS[0], as_version=4).cells[1].source, "cell-1", "exec"), {})


def test_first_cell_finds_the_checkout_or_says_what_to_attach(monkeypatch, tmp_path):
    run_first_cell(monkeypatch, ROOT / "notebooks")
    assert sys.path[0] == str(ROOT), "the repository's checkout, next to notebooks/"
    (tmp_path / "nb").mkdir()
    if not Path("/kaggle/input").is_dir():
        with pytest.raises(ModuleNotFoundError, match="r1helpers dataset that `make kaggle` builds"):
            run_first_cell(monkeypatch, tmp_path / "nb")


def test_no_pip_off_kaggle_or_in_ci():
    for environ in ({}, {**KAGGLE, "CI": "true"}, {**KAGGLE, "R1HELPERS_NO_INSTALL": "1"}):
        report = kaggle.prepare(["surely-not-installed-pkg==1.0"], environ=dict(environ), run=no_subprocess,
                                gpus=[T4], root=Path("/nonexistent-kaggle-root"))
        assert report.installed == []


def test_on_kaggle_only_missing_pins_are_installed_next_to_torch(tmp_path):
    run = Recorder(0)
    environ = {**KAGGLE, "KAGGLE_KERNEL_RUN_TYPE": "Batch"}
    report = kaggle.prepare(["pyyaml>=6", "surely-not-installed-pkg==1.0"], environ=environ, run=run,
                            gpus=[T4], root=tmp_path)
    (cmd,) = run.calls
    assert cmd[1:4] == ["-m", "pip", "install"] and "--quiet" in cmd and "--constraint" in cmd
    assert cmd[-1:] == ["surely-not-installed-pkg==1.0"], "installed packages are skipped"
    assert report.installed == ["surely-not-installed-pkg==1.0"]
    assert environ["HF_HOME"] == str(tmp_path / "tmp" / "hf") and environ["R1HELPERS_HEADLESS"] == "1"


def test_restart_asked_only_for_modules_imported_before_the_update():
    before = {kaggle._canon(d.metadata["Name"]): d.version for d in kaggle.importlib.metadata.distributions()}
    before["pyyaml"] = "0.0"  # as if pip had just changed PyYAML
    assert kaggle._stale_imports(before, {"yaml", "json"}) == ["yaml"]
    assert kaggle._stale_imports(before, {"json"}) == []


def _installed(versions):
    """importlib.metadata.version over a fixed set of installed packages."""

    def version_of(name):
        if name not in versions:
            raise kaggle.importlib.metadata.PackageNotFoundError(name)
        return versions[name]

    return version_of


def test_constraints_hold_torch_at_the_installed_build():
    version_of = _installed({"torch": "2.9.0+cu126", "triton": "3.5.0"})
    assert kaggle.constraints(version_of) == ["torch==2.9.0+cu126", "triton==3.5.0", "xformers==0.0.33.post1",
                                              "torchao==0.14.1"]
    image_has_them = _installed({"torch": "2.10.0+cu128", "xformers": "0.0.34", "torchao": "0.16.0"})
    assert kaggle.constraints(image_has_them) == ["torch==2.10.0+cu128", "xformers==0.0.34", "torchao==0.16.0"], \
        "the image's own builds are kept, not replaced by the table"
    assert kaggle.constraints(_installed({})) == []


# From the wheels on PyPI: xformers' METADATA `Requires-Dist: torch...`; the torch release torchao's
# __init__.py loads its C++ kernels on (0.17.0: any torch >= 2.11.0). Unsloth 2026.10.9 asks for
# xformers>=0.0.27.post2, unsloth-zoo 2026.10.9 for torchao>=0.13.0.
XFORMERS_REQUIRES = {"0.0.32.post2": "==2.8.0", "0.0.33.post1": "==2.9.0", "0.0.33.post2": "==2.9.1",
                     "0.0.34": "==2.10.0", "0.0.35": ">=2.10"}
TORCHAO_LOADS_ON = {"0.14.0": "==2.8.0", "0.14.1": "==2.9.0", "0.15.0": "==2.9.1", "0.16.0": "==2.10.0",
                    "0.17.0": ">=2.11.0"}


@pytest.mark.parametrize("torch", ["2.8.0+cu128", "2.9.0+cu128", "2.9.1+cu128", "2.10.0+cu128", "2.11.0+cu130"])
def test_xformers_and_torchao_held_to_the_images_torch(torch):
    pinned = dict(c.split("==") for c in kaggle.constraints(_installed({"torch": torch})))
    xformers, torchao = pinned["xformers"], pinned["torchao"]
    assert SpecifierSet(XFORMERS_REQUIRES[xformers]).contains(torch.split("+")[0])
    assert SpecifierSet(TORCHAO_LOADS_ON[torchao]).contains(torch.split("+")[0])
    assert xformers in SpecifierSet(">=0.0.27.post2") and torchao in SpecifierSet(">=0.13.0"), "Unsloth accepts them"
    assert kaggle.companions_note(PINS, _installed({"torch": torch})) is None


def test_a_torch_missing_from_the_table_is_said():
    version_of = _installed({"torch": "2.12.0+cu130"})
    assert kaggle.constraints(version_of) == ["torch==2.12.0+cu130"]
    note = kaggle.companions_note(PINS, version_of)
    assert "torch 2.12.0+cu130" in note and "xformers" in note and "torchao" in note
    assert kaggle.companions_note(["trl==1.14.2"], version_of) is None, "only said when Unsloth is installed"


def test_unsloth_that_cannot_install_falls_back_to_transformers():
    run = Recorder(1, 0)
    notes = kaggle.install(["unsloth==2026.10.9", "trl==1.14.2"], run=run)
    assert "unsloth==2026.10.9" not in run.calls[1] and "trl==1.14.2" in run.calls[1]
    assert "transformers + peft" in notes[0]
    with pytest.raises(RuntimeError, match="internet"):
        kaggle.install(["unsloth==2026.10.9", "trl==1.14.2"], run=Recorder(1, 1))


@pytest.mark.parametrize("gpus, gpu_packages", [([T4, T4], True), ([H100], True), ([P100], False), ([], False)],
                         ids=["T4x2", "H100", "P100", "CPU"])
def test_gpu_packages_installed_only_where_they_run(gpus, gpu_packages):
    wanted, why = kaggle.for_hardware(PINS, gpus)
    names = {kaggle._req_name(p) for p in wanted}
    assert {"unsloth", "unsloth-zoo", "bitsandbytes"} <= names if gpu_packages else not names & {
        "unsloth", "unsloth-zoo", "bitsandbytes"}
    assert (why is None) is gpu_packages
    assert {"transformers", "trl", "peft"} <= names
    if gpus and not gpu_packages:
        assert "6.0" in why and "retired" in why and "sm_60" in why and "Switch to T4 x2" in why


def test_p100_session_installs_nothing_gpu_related(tmp_path):
    run, said = Recorder(0), []
    pins = ["unsloth==2026.10.9", "bitsandbytes==0.50.2", "surely-not-installed-pkg==1.0"]
    kaggle.prepare(pins, environ=dict(KAGGLE), run=run, gpus=[P100], root=tmp_path, say=said.append)
    (cmd,) = run.calls
    assert cmd[-1:] == ["surely-not-installed-pkg==1.0"] and not any("unsloth" in c or "bitsandbytes" in c for c in cmd)
    (why,) = [line for line in said if "retired" in line]
    assert "no GPU package installed" in why and "'GPU T4 x2'" in why
    nothing = kaggle.prepare(pins[:2], environ=dict(KAGGLE), run=no_subprocess, gpus=[P100], root=tmp_path)
    assert nothing.installed == [] and "Kaggle: the pinned packages are already installed" in nothing.lines


def test_setup_says_which_versions_pip_changed(tmp_path):
    """A fake pip upgrades one package and adds two; setup() says each change, before -> after, in one line."""
    state = {"transformers": "5.0.0", "datasets": "4.0.0", "torch": "2.10.0+cu128"}

    def pip(cmd, **kwargs):
        state.update({"transformers": "5.17.0", "trl": "1.14.2", "surely-not-installed-pkg": "1.0"})
        return subprocess.CompletedProcess(cmd, 0, stdout="", stderr="")

    said = []
    report = kaggle.prepare(["surely-not-installed-pkg==1.0"], environ=dict(KAGGLE), run=pip, gpus=[T4],
                            root=tmp_path, say=said.append, installed=lambda: dict(state))
    (line,) = [line for line in said if "pip changed" in line]
    assert line.endswith("pip changed surely-not-installed-pkg - -> 1.0, transformers 5.0.0 -> 5.17.0, trl - -> 1.14.2")
    assert "datasets" not in line and "torch" not in line, "unchanged ones are not listed"
    assert report.installed == ["surely-not-installed-pkg==1.0"]


def test_missing_reads_installed_versions():
    version_of = _installed({"trl": "1.14.2", "pandas": "2.2.0"})
    assert kaggle.missing(["trl==1.14.2", "pandas>=2", "peft==0.21.0", "trl==1.15.0"], version_of) == [
        "peft==0.21.0", "trl==1.15.0"]


# ---------------------------------------------------------------- Kaggle's folders


def test_run_folder_moves_into_kaggle_working(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = Path("/kaggle")
    assert kaggle_paths.resolve_run_dir("../runs/default", {}, root) == Path("../runs/default")
    moved = kaggle_paths.resolve_run_dir("../runs/default", KAGGLE, root)
    assert moved == Path("/kaggle/working/runs/default")
    assert kaggle_paths.resolve_run_dir("/kaggle/working/runs/x", KAGGLE, root) == Path("/kaggle/working/runs/x")
    assert kaggle_paths.resolve_run_dir("/kaggle/tmp/big", KAGGLE, root) == Path("/kaggle/tmp/big")
    assert kaggle_paths.paths().exports.is_relative_to("/kaggle/tmp")
    assert kaggle_paths.large_output_dir("default", {}) is None
    assert kaggle_paths.large_output_dir("default", KAGGLE) == Path("/kaggle/tmp/r1helpers/exports/default")


def test_caches_leave_a_users_choice_alone(tmp_path):
    environ = {"HF_HOME": "/mine"}
    kaggle_paths.cache_env(environ, tmp_path)
    assert environ["HF_HOME"] == "/mine" and environ["R1HELPERS_CACHE"] == str(tmp_path / "tmp" / "r1helpers-cache")


# ---------------------------------------------------------------- build/kaggle/ and pushing it


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return kaggle_push.build(tmp_path_factory.mktemp("kaggle") / "build", "alice")


REQUIRED = {"id", "title", "code_file", "language", "kernel_type", "is_private", "enable_gpu", "enable_internet",
            "dataset_sources", "competition_sources", "kernel_sources"}


def test_kernel_metadata_files(built):
    assert len(built.kernels) == len(NOTEBOOKS) + 1 == 7  # the six notebooks and the one-kernel series
    for folder in built.kernels[:6]:
        meta = json.loads((folder / "kernel-metadata.json").read_text())
        assert REQUIRED <= set(meta)
        assert meta["machine_shape"] == "NvidiaTeslaT4", "enable_gpu alone got users a P100"
        assert (folder / meta["code_file"]).is_file()
        assert meta["language"] == "python" and meta["kernel_type"] == "notebook"
        assert meta["is_private"] is True and meta["enable_gpu"] is True and meta["enable_internet"] is True
        assert meta["dataset_sources"] == ["alice/r1helpers"] and meta["competition_sources"] == []
        owner, slug = meta["id"].split("/")
        assert owner == "alice" and slug == kaggle_push.slugify(meta["title"]) and 5 <= len(meta["title"]) <= 50
        nb = nbformat.read(folder / meta["code_file"], as_version=4)
        assert len(setup_calls(folder / meta["code_file"])) == 1 and not any(
            c.get("outputs") for c in nb.cells if c.cell_type == "code")


def test_kernels_continue_each_other_00_to_05(built):
    """Each kernel 01-05 lists the previous one in kernel_sources (its output, the run folder, is mounted under
    /kaggle/input and continued); each notebook's first line says what to attach."""
    metas = [json.loads((k / "kernel-metadata.json").read_text()) for k in built.kernels]
    assert metas[0]["kernel_sources"] == []
    for prev, meta in zip(metas[:5], metas[1:6]):
        assert meta["kernel_sources"] == [prev["id"]]
    assert [m["code_file"][:2] for m in metas[:6]] == ["00", "01", "02", "03", "04", "05"]
    for k, meta in zip(built.kernels[1:6], metas[1:6]):
        first = nbformat.read(k / meta["code_file"], as_version=4).cells[1].source.splitlines()[0]
        assert first.startswith("# On Kaggle, attach the r1helpers dataset and the output of notebook "
                                f"{int(meta['code_file'][:2]) - 1:02d}")
    series = metas[6]
    assert series["kernel_type"] == "script" and series["code_file"] == "r1_medical_series.py"
    assert series["dataset_sources"] == ["alice/r1helpers"] and series["kernel_sources"] == []
    text = (built.kernels[6] / "r1_medical_series.py").read_text()
    assert '"-m", "r1helpers.pipeline"' in text and "r1helpers.setup()" in text
    ast.parse(text)


def test_machine_shape_default_and_retired_accelerators_refused(tmp_path, capsys):
    assert kaggle_push.kernel_metadata("00_setup.ipynb", "alice")["machine_shape"] == "NvidiaTeslaT4"
    assert "machine_shape" not in kaggle_push.kernel_metadata("00_setup.ipynb", "alice", accelerator="")
    assert kaggle_push.main(["build", "--out", str(tmp_path / "b"), "--accelerator", "NvidiaTeslaP100"]) == 2
    assert "retired" in capsys.readouterr().err and not (tmp_path / "b").exists()
    # the kaggle CLI 2.2.5 (read, not imported: importing it asks for credentials) takes the field under this
    # name and lists the P100, not the T4, as retired
    cli = Path(importlib.util.find_spec("kaggle").submodule_search_locations[0]) / "api" / "kaggle_api_extended.py"
    text = cli.read_text()
    assert 'self.get_or_default(meta_data, "machine_shape", None)' in text
    retired = text[text.index("_RETIRED_ACCELERATORS = {"):].split("}")[0]
    assert '"nvidiateslap100"' in retired and "nvidiateslat4" not in retired


def test_slugs_match_the_kaggle_cli():
    from slugify import slugify  # python-slugify, what the kaggle CLI (dev extra) derives slugs with

    for path in NOTEBOOKS:
        title = kaggle_push.kernel_title(path.name)
        assert kaggle_push.slugify(title) == slugify(title)


def test_dataset_holds_the_wheel_the_first_cell_looks_for(built):
    meta = json.loads((built.dataset / "dataset-metadata.json").read_text())
    assert meta["id"] == "alice/r1helpers" and 6 <= len(meta["title"]) <= 50 and len(meta["licenses"]) == 1
    assert 20 <= len(meta["subtitle"]) <= 80
    (wheel,) = built.dataset.glob("r1helpers-*.whl")
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "r1helpers/kaggle.py" in names and "r1helpers/assets/sample_medical_o1.jsonl" in names
    assert "r1helpers/recipes/seed.yaml" in names and "r1helpers/core/config.py" in names
    # The first cell finds the wheel wherever Kaggle mounts the dataset under /kaggle/input.
    import fnmatch

    first = nbformat.read(NOTEBOOKS[0], as_version=4).cells[1].source
    assert 'glob.glob(f"{inputs}/**/r1helpers-*.whl", recursive=True)' in first
    assert 'os.path.join(os.environ.get("R1HELPERS_KAGGLE_ROOT") or "/kaggle", "input")' in first
    assert fnmatch.fnmatch(f"/kaggle/input/r1helpers/{wheel.name}", "/kaggle/input/*/r1helpers-*.whl")
    # the notebooks travel inside the wheel: `python -m r1helpers.pipeline` finds them where it is installed
    assert {f"r1helpers/notebooks/{p.name}" for p in NOTEBOOKS} <= set(names)


def test_build_readme_documents_secrets(built):
    text = (built.out / "README.md").read_text()
    assert "HF_TOKEN" in text and "WANDB_API_KEY" in text and "Add-ons > Secrets" in text
    readme = (ROOT / "README.md").read_text()
    assert "On Kaggle" in readme and "HF_TOKEN" in readme


def test_credentials_found_without_contacting_kaggle(tmp_path):
    assert kaggle_push.credentials({}, tmp_path) == (None, None)
    (tmp_path / ".kaggle").mkdir()
    (tmp_path / ".kaggle" / "kaggle.json").write_text('{"username": "bob", "key": "k"}')
    source, user = kaggle_push.credentials({}, tmp_path)
    assert source.endswith("kaggle.json") and user == "bob"
    assert kaggle_push.credentials({"KAGGLE_USERNAME": "c", "KAGGLE_KEY": "k"}, tmp_path / "x")[1] == "c"


def test_without_credentials_it_says_what_it_would_push(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(kaggle_push, "credentials", lambda: (None, None))
    monkeypatch.setattr(kaggle_push, "build_wheel", lambda repo, dest: (dest / "r1helpers-0.1.0-py3-none-any.whl").touch())
    monkeypatch.setattr(subprocess, "run", no_subprocess)
    assert kaggle_push.main(["push", "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "would push" in out and "kaggle datasets version -p" in out
    assert out.count("kaggle kernels push -p") == 7 and "YOUR_KAGGLE_USERNAME" in out


def test_push_creates_the_dataset_then_saves_kernels(built, monkeypatch):
    monkeypatch.setattr(kaggle_push, "kaggle_cli", lambda: ["kaggle"])
    run = Recorder(1)  # `datasets status` fails: the dataset does not exist yet
    kaggle_push.push(built, run_stages=["03"], run=run)
    pushed = [c for c in run.calls if c[1] != "datasets" or c[2] != "status"]
    assert pushed[0][:3] == ["kaggle", "datasets", "create"]
    kernels = [c for c in pushed if c[1:3] == ["kernels", "push"]]
    assert len(kernels) == 7
    assert [("--no-run" in c) for c in kernels] == [True, True, True, False, True, True, True]


def version_answer(text: str, code: int = 0):
    """A subprocess.run stand-in: `kaggle --version` prints `text`; any other command fails the test."""

    def run(cmd, **kwargs):
        assert cmd[-1] == "--version", f"only the version may be asked: {cmd}"
        return subprocess.CompletedProcess(cmd, code, stdout=text, stderr="")

    return run


@pytest.mark.parametrize("answer, ok", [("Kaggle CLI 2.2.5", True), ("Kaggle CLI 2.10.0", True),
                                        ("Kaggle CLI 2.2.4", False), ("Kaggle API 1.6.17", False),
                                        ("", False)], ids=["2.2.5", "2.10.0", "2.2.4", "1.6.17", "silent"])
def test_kaggle_cli_version_checked(answer, ok):
    problem = kaggle_push.kaggle_cli_problem(version_answer(answer))
    assert (problem is None) is ok
    if not ok:
        assert "--no-run" in problem and "-m pip install 'kaggle>=2.2.5'" in problem and problem.count(". ") == 0
        assert (answer.split()[-1] if answer else "did not say its version") in problem


def test_push_refused_with_an_old_kaggle_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(kaggle_push, "credentials", lambda: ("KAGGLE_USERNAME/KAGGLE_KEY", "alice"))
    monkeypatch.setattr(kaggle_push, "build_wheel", lambda repo, dest: (dest / "r1helpers-0.1.0-py3-none-any.whl").touch())
    monkeypatch.setattr(kaggle_push, "kaggle_cli", lambda: [sys.executable])  # found on disk; answers as 1.6.17
    monkeypatch.setattr(subprocess, "run", version_answer("Kaggle API 1.6.17"))
    assert kaggle_push.main(["push", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "is 1.6.17" in err and "kaggle>=2.2.5" in err


# ---------------------------------------------------------------- the official kaggle CLI, offline


class FakeKaggle:
    """Kaggle's side of the kaggle CLI's client, answered in this process: what was created, uploaded, saved."""

    def __init__(self) -> None:
        self.datasets: dict[str, str] = {}  # id -> "created" | "versioned"
        self.uploads: list[str] = []
        self.kernels: list[Any] = []  # the CLI's save-kernel requests
        self.log = ""  # what the CLI printed
        self.client = SimpleNamespace(
            datasets=SimpleNamespace(dataset_api_client=SimpleNamespace(
                get_dataset_status=self.status, create_dataset=self.create, create_dataset_version=self.version)),
            kernels=SimpleNamespace(kernels_api_client=SimpleNamespace(save_kernel=self.save_kernel)))

    def status(self, request):
        if f"{request.owner_slug}/{request.dataset_slug}" not in self.datasets:
            import requests

            response = requests.Response()
            response.status_code = 404
            raise requests.HTTPError("404 Not Found", response=response)
        return SimpleNamespace(status=SimpleNamespace(name="READY"))

    def create(self, request):
        self.datasets[f"{request.owner_slug}/{request.slug}"] = "created"
        return SimpleNamespace(status="ok", error="", url="https://example.invalid/d", invalidTags=[])

    def version(self, request):
        self.datasets[f"{request.owner_slug}/{request.dataset_slug}"] = "versioned"
        return SimpleNamespace(status="ok", error="", url="https://example.invalid/d", invalidTags=[])

    def save_kernel(self, request):
        self.kernels.append(request)
        return SimpleNamespace(error="", invalidTags=[], invalidDatasetSources=[], invalidCompetitionSources=[],
                               invalidKernelSources=[], invalidModelSources=[], versionNumber=1,
                               url="https://example.invalid/k")


@pytest.fixture
def kaggle_cli(tmp_path, monkeypatch):
    """(FakeKaggle, a subprocess.run stand-in running the real `kaggle` CLI in this process): no credentials, no network.

    The CLI parses each command, reads and checks the metadata and the files, and
    builds its requests; only its HTTP client (and the blob upload under it) is
    replaced. Any socket use fails the test, so nothing can reach kaggle.com.
    """
    for name in [n for n in os.environ if n.startswith("KAGGLE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))

    def offline(*args, **kwargs):
        raise AssertionError(f"the kaggle CLI tried the network: {args}")

    for owner, name in ((socket, "getaddrinfo"), (socket, "create_connection"), (socket.socket, "connect")):
        monkeypatch.setattr(owner, name, offline)
    cli = importlib.import_module("kaggle.cli")  # `import kaggle` looks for credentials: none here
    server = FakeKaggle()
    monkeypatch.setattr(cli.api, "_authenticated", True)
    monkeypatch.setattr(cli.api, "config_values", {"username": "alice", "key": "not-a-real-key"})
    monkeypatch.setattr(cli.api, "build_kaggle_client", lambda: contextlib.nullcontext(server.client))

    def upload(path, quiet, blob_type, upload_context, content_type=None):
        server.uploads.append(Path(path).name)
        return f"token-{len(server.uploads)}"

    monkeypatch.setattr(cli.api, "_upload_blob", upload)

    def run(cmd, check=False, **kwargs):
        monkeypatch.setattr(sys, "argv", ["kaggle", *cmd[1:]])
        out, code = io.StringIO(), 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                cli.main()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
        if check and code:
            raise subprocess.CalledProcessError(code, cmd, out.getvalue())
        server.log += out.getvalue()
        return subprocess.CompletedProcess(cmd, code, stdout=out.getvalue(), stderr="")

    return server, run


def test_push_goes_through_the_real_kaggle_cli(built, kaggle_cli):
    server, run = kaggle_cli
    kaggle_push.push(built, run_stages=["03"], run=run)
    assert server.datasets == {"alice/r1helpers": "created"}, "a first push creates the dataset"
    assert server.uploads == [next(built.dataset.glob("*.whl")).name], "the wheel alone is uploaded"
    metas = [json.loads((k / "kernel-metadata.json").read_text()) for k in built.kernels]
    assert [r.slug for r in server.kernels] == [m["id"] for m in metas]
    for request, meta in zip(server.kernels, metas):
        assert request.new_title == meta["title"] and request.language == "python"
        assert request.enable_gpu and request.enable_internet and request.is_private and not request.enable_tpu
        assert request.dataset_data_sources == ["alice/r1helpers"]
        assert request.kernel_data_sources == meta["kernel_sources"], "the previous kernel's output is attached"
        if meta["kernel_type"] == "notebook":
            assert not json.loads(request.text)["cells"][1].get("outputs")
    assert {r.machine_shape for r in server.kernels} == {"NvidiaTeslaT4"} and "retired" not in server.log
    quick = [getattr(r.kernel_execution_type, "name", None) == "QUICK_SAVE" for r in server.kernels]
    assert quick == [True, True, True, False, True, True, True], "--no-run except the stages asked to run"
    assert "does not resolve to the specified id" not in server.log, "titles give the ids' slugs"
    kaggle_push.push(built, run=run)
    assert server.datasets == {"alice/r1helpers": "versioned"}, "a later push adds a version"


def test_the_real_kaggle_cli_passes_the_version_check(kaggle_cli):
    _, run = kaggle_cli
    assert kaggle_push.kaggle_cli_problem(run) is None


def test_dataset_status_read_through_the_cli(built, kaggle_cli):
    server, run = kaggle_cli
    assert not kaggle_push._dataset_exists("alice/r1helpers", run)
    server.datasets["alice/r1helpers"] = "created"
    assert kaggle_push._dataset_exists("alice/r1helpers", run)
    kaggle_push._wait_ready("alice/r1helpers", run, timeout_s=1)  # "ready" at once: returns without sleeping


# ---------------------------------------------------------------- no secret in build/kaggle/

TOKEN = "hf_" + "Q" * 34


def fake_repo(tmp_path: Path, monkeypatch, module_text: str = "") -> Path:
    """The six notebooks, one of them saved with an output, and a stand-in wheel holding `module_text`."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "notebooks", repo / "notebooks")
    nb = nbformat.read(repo / "notebooks" / NOTEBOOKS[0].name, as_version=4)
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", text=f"HF_TOKEN={TOKEN}\n")]
    nbformat.write(nb, repo / "notebooks" / NOTEBOOKS[0].name)

    def wheel(repo, dest):
        with zipfile.ZipFile(dest / "r1helpers-0.1.0-py3-none-any.whl", "w") as z:
            z.writestr("r1helpers/mod.py", module_text)

    monkeypatch.setattr(kaggle_push, "build_wheel", wheel)
    return repo


def test_build_drops_saved_outputs(tmp_path, monkeypatch):
    b = kaggle_push.build(tmp_path / "out", "alice", repo=fake_repo(tmp_path, monkeypatch))
    copy = nbformat.read(b.kernels[0] / NOTEBOOKS[0].name, as_version=4)
    assert not any(c.get("outputs") for c in copy.cells if c.cell_type == "code")
    assert kaggle_push.leaked_secrets(b.out) == []


@pytest.mark.parametrize("module_text, environ", [(f"token = '{TOKEN}'", {}),
                                                  ("key = 'w4ndb-key-123'", {"WANDB_API_KEY": "w4ndb-key-123"}),
                                                  ("k = 'kaggle-key-9'", {"KAGGLE_KEY": "kaggle-key-9"})],
                         ids=["hf-shaped", "wandb-from-env", "kaggle-from-env"])
def test_a_secret_stops_the_build_and_is_never_shown(tmp_path, monkeypatch, capsys, module_text, environ):
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    repo, out = fake_repo(tmp_path, monkeypatch, module_text), tmp_path / "out"
    real_build = kaggle_push.build
    monkeypatch.setattr(kaggle_push, "build", lambda out, user, accelerator=None: real_build(out, user, repo=repo))
    monkeypatch.setattr(kaggle_push, "credentials", lambda: (None, None))
    assert kaggle_push.main(["push", "--out", str(out)]) == 1
    err, secret = capsys.readouterr().err, module_text.split("'")[1]
    assert "r1helpers-dataset/r1helpers-0.1.0-py3-none-any.whl!r1helpers/mod.py" in err
    assert "00_setup" not in err, "the notebook's saved output was dropped, not shipped"
    assert secret not in err and not out.exists(), "nothing pushed, nothing left on disk, the secret not shown"


def _parameters_with(repo: Path, line: str) -> None:
    path = repo / "notebooks" / NOTEBOOKS[0].name
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source += "\n" + line
    nbformat.write(nb, path)


def test_a_wandb_key_written_in_a_notebook_is_found_by_its_shape(tmp_path, monkeypatch):
    """WANDB_API_KEY unset here: the planted key is still found, by the shape of a W&B key written down."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    repo = fake_repo(tmp_path, monkeypatch)
    key = "".join("0123456789abcdef"[(7 * i) % 16] for i in range(40))
    _parameters_with(repo, f'overrides = {{"train.wandb": "online", "wandb_api_key": "{key}"}}')
    with pytest.raises(RuntimeError, match="a secret is written in") as e:
        kaggle_push.build(tmp_path / "out", "alice", repo=repo)
    assert key not in str(e.value) and not (tmp_path / "out").exists()


def test_a_key_set_only_in_dotenv_is_found_by_its_value(tmp_path, monkeypatch):
    """The notebooks read .env (r1helpers.core.secrets): so does the build's check."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("R1HELPERS_DOTENV", raising=False)
    repo = fake_repo(tmp_path, monkeypatch)
    (repo / ".env").write_text("WANDB_API_KEY=short-but-secret-42\n")
    _parameters_with(repo, 'note = "short-but-secret-42"')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError, match="a secret is written in"):
        kaggle_push.build(tmp_path / "out", "alice", repo=repo)

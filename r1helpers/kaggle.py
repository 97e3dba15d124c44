"""Inside a Kaggle kernel: the notebooks' first cell calls `setup(pins)`.

On Kaggle it pins training to one GPU, keeps caches and large files off
/kaggle/working (20 GB, saved with each version) and installs the pinned packages
that are missing, next to the image's own torch, then says which versions pip
changed; anywhere else it installs nothing. Below compute capability 7.0 (the
retired P100) it installs no GPU package: nothing there could use one.
The pins are written into that cell from pyproject.toml when the notebooks are built
(tools/build_notebooks.py), so a Kaggle user sees exactly what gets installed and a
test checks the two agree. Building and pushing the kernels from a laptop is
`python tools/kaggle_push.py` (`make kaggle`).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, MutableMapping, Sequence

from r1helpers.core.hardware import BELOW_7_0, GPU, SWITCH_TO_T4, UNSLOTH_MIN_CAPABILITY, pin_first_gpu, smi_gpus
from r1helpers.core.kaggle_paths import WORKING_LIMIT_GB, cache_env, on_kaggle, paths
from r1helpers.core.hardware import HEADLESS_ENV

# Extras Kaggle does not need: its image brings Jupyter and widgets, and the dev tools run in CI.
SKIP_EXTRAS = ("notebooks", "dev", "kaggle")
# The image's CUDA build of torch and the packages built against it are never replaced.
KEEP_INSTALLED = ("torch", "torchvision", "torchaudio", "triton", "xformers", "torchao")
UNSLOTH_PACKAGES = ("unsloth", "unsloth-zoo")
# Useful only on a GPU of capability 7.0+: bitsandbytes' CUDA 12.8 library starts at sm_70 too.
GPU_PACKAGES = (*UNSLOTH_PACKAGES, "bitsandbytes")
# What Unsloth pulls in besides the pins (unsloth: xformers>=0.0.27.post2; unsloth-zoo: torchao>=0.13.0), held
# to builds made for the image's torch release when the image lacks them (Kaggle's has neither). Left alone,
# pip takes the newest: an xformers wheel requires one torch release (METADATA `Requires-Dist: torch==2.10.0`
# for 0.0.34; 0.0.35, built on torch's stable ABI: `torch>=2.10`), and torchao requires no torch at all but
# loads its C++ kernels only on the torch it was built for (the table in torchao/__init__.py; 0.17+: torch
# >= 2.11), skipping them with a log warning elsewhere. Checked in the wheels on PyPI; a torch release not
# listed gets no constraint, and setup() says so.
COMPANIONS = {
    "2.8.0": {"xformers": "0.0.32.post2", "torchao": "0.14.0"},
    "2.9.0": {"xformers": "0.0.33.post1", "torchao": "0.14.1"},
    "2.9.1": {"xformers": "0.0.33.post2", "torchao": "0.15.0"},
    "2.10.0": {"xformers": "0.0.34", "torchao": "0.16.0"},
    "2.11.0": {"xformers": "0.0.35", "torchao": "0.17.0"},
}
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

Runner = Callable[..., subprocess.CompletedProcess]


# ---------------------------------------------------------------- where things go on Kaggle

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
    """Drop the GPU packages where nothing can use them: no GPU, or capability below 7.0 like the P100."""
    if gpus and gpus[0].capability >= UNSLOTH_MIN_CAPABILITY:
        return list(pins), None
    kept = [p for p in pins if _req_name(p) not in GPU_PACKAGES]
    if not gpus:
        return kept, "no GPU in this session: Unsloth and bitsandbytes not installed (the CPU profile needs neither)"
    cap = f"{gpus[0].capability[0]}.{gpus[0].capability[1]}"
    return kept, (f"{gpus[0].name} (capability {cap}): no GPU package installed ({', '.join(GPU_PACKAGES)}): "
                  f"{BELOW_7_0}. Switch to T4 x2: {SWITCH_TO_T4}")


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


def companions(torch_version: str | None) -> dict[str, str] | None:
    """The xformers and torchao versions built for this torch release (local label ignored); None: not known."""
    if not torch_version:
        return None
    from packaging.version import InvalidVersion, Version

    try:
        return COMPANIONS.get(Version(torch_version).public)
    except InvalidVersion:
        return None


def constraints(version_of: Callable[[str], str] = importlib.metadata.version) -> list[str]:
    """`name==installed` for torch and the packages built against it, so pip may not swap the image's CUDA
    build; for those the image lacks, the versions COMPANIONS gives for its torch."""
    out, installed = [], {}
    for name in KEEP_INSTALLED:
        try:
            installed[name] = version_of(name)
            out.append(f"{name}=={installed[name]}")
        except importlib.metadata.PackageNotFoundError:
            pass
    for name, version in (companions(installed.get("torch")) or {}).items():
        if name not in installed:
            out.append(f"{name}=={version}")
    return out


def companions_note(pins: Sequence[str], version_of: Callable[[str], str] = importlib.metadata.version) -> str | None:
    """Said when Unsloth is to be installed next to a torch release the COMPANIONS table does not list."""
    if not any(_req_name(p) in UNSLOTH_PACKAGES for p in pins):
        return None
    try:
        torch_version = version_of("torch")
    except importlib.metadata.PackageNotFoundError:
        return None
    if companions(torch_version) is not None:
        return None
    return (f"torch {torch_version} is not in r1helpers.kaggle.COMPANIONS ({', '.join(COMPANIONS)}): pip picks "
            "xformers and torchao itself; if Unsloth's banner shows no xformers, or torchao warns 'Skipping "
            "import of cpp extensions', they do not match this torch")


def installed_versions() -> dict[str, str]:
    """{canonical name: version} of every installed distribution."""
    return {_canon(d.metadata["Name"] or ""): d.version for d in importlib.metadata.distributions()}


def version_changes(before: Mapping[str, str], after: Mapping[str, str]) -> dict[str, tuple[str | None, str | None]]:
    """{name: (before, after)} for the distributions pip installed, upgraded, downgraded or removed."""
    return {n: (before.get(n), after.get(n)) for n in sorted(set(before) | set(after))
            if before.get(n) != after.get(n)}


def changes_lines(changes: Mapping[str, tuple[str | None, str | None]]) -> list[str]:
    if not changes:
        return ["Kaggle: pip changed no installed version"]
    return [f"Kaggle: pip changed {len(changes)} packages (before -> after):"] + [
        f"  {name}: {old or 'not installed'} -> {new or 'removed'}" for name, (old, new) in changes.items()]


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


def _stale_imports(before: Mapping[str, str], imported: set[str], after: Mapping[str, str] | None = None) -> list[str]:
    """Modules the kernel had imported before pip changed their distributions: only a restart reloads them."""
    after = installed_versions() if after is None else after
    changed = {n for n, v in after.items() if before.get(n) != v}
    top = importlib.metadata.packages_distributions()
    return sorted({m for m, dists in top.items() if m in imported and changed & {_canon(d) for d in dists}})


# ---------------------------------------------------------------- the first cell of every notebook


@dataclass
class SetupReport:
    lines: list[str] = field(default_factory=list)
    installed: list[str] = field(default_factory=list)
    changed: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)  # name: (before, after)
    say: Callable[[str], None] | None = None  # prints each line as it comes: pip can take minutes

    def add(self, *lines: str | None) -> None:
        for line in filter(None, lines):
            self.lines.append(line)
            if self.say:
                self.say(line)


def prepare(pins: Sequence[str], environ: MutableMapping[str, str] = os.environ, run: Runner = subprocess.run,
            gpus: Sequence[GPU] | None = None, root: Path | None = None,
            say: Callable[[str], None] | None = None,
            installed: Callable[[], dict[str, str]] = installed_versions) -> SetupReport:
    """Everything `setup` does, with the machine (GPUs, pip, what is installed) injectable for tests."""
    report = SetupReport(say=say)
    imported = set(sys.modules)  # before this function imports `packaging` for its own comparisons
    gpus = smi_gpus(run) if gpus is None else list(gpus)
    report.add(pin_first_gpu(list(gpus), environ))
    if not on_kaggle(environ):
        return report
    p = paths(root, environ)
    p.tmp.mkdir(parents=True, exist_ok=True)
    caches = cache_env(environ, root)
    report.add(f"Kaggle: run folder under {p.working}/runs (saved, {WORKING_LIMIT_GB} GB at most); model "
               f"cache {caches['HF_HOME']} and large exports {p.exports} (not saved)")
    report.add(_tutorial_wandb_secret(environ))
    if environ.get("KAGGLE_KERNEL_RUN_TYPE") == "Batch":
        environ[HEADLESS_ENV] = "1"  # a saved version's log keeps lines, not redrawn bars
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
        report.add(companions_note(todo))
        _install_reporting(todo, run, report, imported, installed)
    return report


def _tutorial_wandb_secret(environ: MutableMapping[str, str]) -> str | None:
    """The tutorial names its W&B secret `wandb`: read it as WANDB_API_KEY when that is not set (value never shown)."""
    if environ.get("WANDB_API_KEY"):
        return None
    try:
        from kaggle_secrets import UserSecretsClient  # only inside a Kaggle kernel

        value = UserSecretsClient().get_secret("wandb")
    except Exception:  # no such secret, or not switched on for this notebook
        return None
    if not value:
        return None
    environ["WANDB_API_KEY"] = value
    return "Kaggle: the secret labelled `wandb` is used as WANDB_API_KEY"


def _install_reporting(todo: list[str], run: Runner, report: SetupReport, imported: set[str],
                       installed: Callable[[], dict[str, str]]) -> None:
    report.add(f"Kaggle: installing {', '.join(todo)} (a few minutes; later runs of this session skip it)")
    before = installed()
    t0 = time.perf_counter()
    report.add(*install(todo, run))
    importlib.invalidate_caches()
    after = installed()
    report.installed = todo
    report.changed = version_changes(before, after)
    report.add(f"Kaggle: installed in {time.perf_counter() - t0:.0f} s", *changes_lines(report.changed))
    stale = _stale_imports(before, imported, after)
    if stale:
        report.add(f"restart the kernel and run again: {', '.join(stale)} was imported before the update")


def default_pins() -> list[str]:
    """What a session installs: this checkout's pyproject.toml, else the installed r1helpers wheel's
    requirements (written from that pyproject.toml when the wheel was built)."""
    checkout = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if checkout.is_file():
        return pins_from_pyproject(checkout)
    extra = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")
    requires = importlib.metadata.requires("r1helpers") or []
    out = []
    for r in requires:
        spec = r.split(";")[0].strip()
        if _req_name(spec) not in KEEP_INSTALLED and not any(e in SKIP_EXTRAS for e in extra.findall(r)) \
                and spec not in out:
            out.append(spec)
    return out


def setup(pins: Sequence[str] | None = None) -> None:
    """The notebooks' first call: one GPU, Kaggle's folders and the pinned packages (installs only on Kaggle)."""
    prepare(default_pins() if pins is None else pins, say=lambda line: print(line, flush=True))

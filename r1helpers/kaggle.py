"""The notebooks' first cell, `setup(pins)`: one GPU, Kaggle's folders and, on Kaggle only, the pinned
packages its image lacks (from pyproject.toml, written into that cell by tools/build_notebooks.py)."""

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

from r1helpers.core.hardware import (BELOW_7_0, GPU, HEADLESS_ENV, SWITCH_TO_T4, UNSLOTH_MIN_CAPABILITY,
                                     pin_first_gpu, smi_gpus)
from r1helpers.core.kaggle_paths import WORKING_LIMIT_GB, cache_env, on_kaggle, paths

# Extras Kaggle does not need: its image brings Jupyter and widgets, and the dev tools run in CI.
SKIP_EXTRAS = ("notebooks", "dev", "kaggle")
# The image's CUDA build of torch and the packages built against it are never replaced.
KEEP_INSTALLED = ("torch", "torchvision", "torchaudio", "triton", "xformers", "torchao")
UNSLOTH_PACKAGES = ("unsloth", "unsloth-zoo")
# Useful only on a GPU of capability 7.0+: bitsandbytes' CUDA 12.8 library starts at sm_70 too.
GPU_PACKAGES = (*UNSLOTH_PACKAGES, "bitsandbytes")
# The xformers and torchao builds Unsloth pulls in, held to the image's torch release when the image lacks them:
# left alone pip takes the newest, built for another torch (checked in the wheels on PyPI).
COMPANIONS = {
    "2.8.0": {"xformers": "0.0.32.post2", "torchao": "0.14.0"},
    "2.9.0": {"xformers": "0.0.33.post1", "torchao": "0.14.1"},
    "2.9.1": {"xformers": "0.0.33.post2", "torchao": "0.15.0"},
    "2.10.0": {"xformers": "0.0.34", "torchao": "0.16.0"},
    "2.11.0": {"xformers": "0.0.35", "torchao": "0.17.0"},
}

Runner = Callable[..., subprocess.CompletedProcess]


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _req_name(spec: str) -> str:
    return _canon(re.split(r"[\s<>=!~;\[(@]", spec.strip(), maxsplit=1)[0])


def _keep(specs: Sequence[str]) -> list[str]:
    """The specs a Kaggle session installs: without torch's family or repeats."""
    out: list[str] = []
    for spec in specs:
        spec = spec.strip()
        if _req_name(spec) not in KEEP_INSTALLED and spec not in out:
            out.append(spec)
    return out


def pins_from_pyproject(pyproject: Path) -> list[str]:
    """The requirements a Kaggle session installs: dependencies and extras, minus torch and SKIP_EXTRAS."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    project = tomllib.loads(Path(pyproject).read_text())["project"]
    extras = [r for extra, reqs in project.get("optional-dependencies", {}).items() if extra not in SKIP_EXTRAS
              for r in reqs]
    return _keep([*project["dependencies"], *extras])


def default_pins() -> list[str]:
    """This checkout's pyproject.toml, else the installed r1helpers wheel's requirements (written from it)."""
    checkout = Path(__file__).resolve().parents[1] / "pyproject.toml"
    if checkout.is_file():
        return pins_from_pyproject(checkout)
    extra = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")
    requires = importlib.metadata.requires("r1helpers") or []
    return _keep([r.split(";")[0] for r in requires if not any(e in SKIP_EXTRAS for e in extra.findall(r))])


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
            if req.specifier.contains(version_of(req.name), prereleases=True):
                continue
        except importlib.metadata.PackageNotFoundError:
            pass
        out.append(pin)
    return out


def companions(torch_version: str | None) -> dict[str, str] | None:
    """The xformers and torchao versions built for this torch release (local label ignored); None: not known."""
    from packaging.version import InvalidVersion, Version

    try:
        return COMPANIONS.get(Version(torch_version).public) if torch_version else None
    except InvalidVersion:
        return None


def constraints(version_of: Callable[[str], str] = importlib.metadata.version) -> list[str]:
    """`name==installed` for torch and the packages built against it; for those the image lacks, COMPANIONS'."""
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


def may_install(environ: Mapping[str, str] = os.environ) -> bool:
    """Only in a Kaggle kernel, never in CI, and not when R1HELPERS_NO_INSTALL=1."""
    return on_kaggle(environ) and not environ.get("CI") and environ.get("R1HELPERS_NO_INSTALL") != "1"


def _pip(pins: Sequence[str], run: Runner) -> subprocess.CompletedProcess:
    fd, cfile = tempfile.mkstemp(prefix="r1helpers-constraints-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(constraints()) + "\n")
    try:
        return run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
                    "--constraint", cfile, *pins], capture_output=True, text=True)
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
    wanted, why = for_hardware(pins, gpus)
    report.add(why)
    todo = missing(wanted)
    if not todo:
        report.add("Kaggle: the pinned packages are already installed")
    elif not may_install(environ):
        report.add(f"Kaggle: not installing {len(todo)} missing packages (R1HELPERS_NO_INSTALL or CI is set)")
    else:
        report.add(companions_note(todo), f"Kaggle: installing {', '.join(todo)} (a few minutes; later runs of "
                                          "this session skip it)")
        before, t0 = installed(), time.perf_counter()
        report.add(*install(todo, run))
        importlib.invalidate_caches()
        after = installed()
        report.installed = todo
        changed = [f"{n} {before.get(n) or '-'} -> {after.get(n) or '-'}" for n in sorted({*before, *after})
                   if before.get(n) != after.get(n)]
        report.add(f"Kaggle: installed in {time.perf_counter() - t0:.0f} s; pip changed {', '.join(changed) or 'nothing'}")
        stale = _stale_imports(before, imported, after)
        if stale:
            report.add(f"restart the kernel and run again: {', '.join(stale)} was imported before the update")
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


def setup(pins: Sequence[str] | None = None) -> None:
    """The notebooks' first call: one GPU, Kaggle's folders and the pinned packages (installs only on Kaggle)."""
    prepare(default_pins() if pins is None else pins, say=lambda line: print(line, flush=True))

"""Where things go on Kaggle: one answer to "am I on Kaggle?" and its folders.

Kaggle keeps only /kaggle/working (about 19.5 GB usable) with each saved version, so run folders go there and
caches and large exports to /kaggle/tmp. Tests move the folders with R1HELPERS_KAGGLE_ROOT (instead of /kaggle)
or R1HELPERS_KAGGLE_INPUT, _WORKING, _TMP for one folder each.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, MutableMapping

KAGGLE_ROOT = Path("/kaggle")
ROOT_ENV = "R1HELPERS_KAGGLE_ROOT"
FOLDER_ENV = {"input": "R1HELPERS_KAGGLE_INPUT", "working": "R1HELPERS_KAGGLE_WORKING", "tmp": "R1HELPERS_KAGGLE_TMP"}
WORKING_LIMIT_GB = 20  # what Kaggle keeps of /kaggle/working with each saved version
WORKING_USABLE_GB = 19.5  # of which a version's files may take about this much


def on_kaggle(environ: Mapping[str, str] = os.environ) -> bool:
    """Kaggle sets KAGGLE_KERNEL_RUN_TYPE in every kernel ("Interactive" or "Batch")."""
    return "KAGGLE_KERNEL_RUN_TYPE" in environ


@dataclass(frozen=True)
class KagglePaths:
    input: Path  # attached datasets, models and kernels' outputs, read-only
    working: Path  # saved with the version, 20 GB at most: small outputs only
    tmp: Path  # the session's own disk, not saved: caches and large files

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


def paths(root: Path | None = None, environ: Mapping[str, str] = os.environ) -> KagglePaths:
    """Kaggle's folders: under `root` when given (tests), else /kaggle or what the environment says."""
    if root is not None:
        return KagglePaths(*(Path(root) / name for name in FOLDER_ENV))
    base = Path(environ.get(ROOT_ENV) or KAGGLE_ROOT)
    return KagglePaths(*(Path(environ.get(var) or base / name) for name, var in FOLDER_ENV.items()))


def large_output_dir(run_name: str, environ: Mapping[str, str] = os.environ) -> Path | None:
    """Where stage 05 should write files too large for /kaggle/working; None off Kaggle (use the run folder)."""
    return paths(environ=environ).exports / run_name if on_kaggle(environ) else None


def resolve_run_dir(run_dir: str | os.PathLike, environ: Mapping[str, str] = os.environ,
                    root: Path | None = None) -> Path:
    """On Kaggle, a run folder outside /kaggle/working or /kaggle/tmp (the notebooks' "../runs/default" is
    /kaggle/runs, which no version keeps) moves to /kaggle/working/runs/<name>."""
    path = Path(run_dir).expanduser()
    if not on_kaggle(environ):
        return path
    p = paths(root, environ)
    full = path if path.is_absolute() else (Path.cwd() / path)
    full = Path(os.path.normpath(full))
    if any(full == d or d in full.parents for d in (p.working, p.tmp)):
        return full
    return p.working / "runs" / full.name


def cache_env(environ: MutableMapping[str, str], root: Path | None = None) -> dict[str, str]:
    """Caches on the session disk: the 8B download (~6 GB) must not count against /kaggle/working."""
    p = paths(root, environ)
    chosen = {"HF_HOME": str(p.hf_home), "R1HELPERS_CACHE": str(p.cache)}
    return {k: environ.setdefault(k, v) for k, v in chosen.items()}


def attached_runs(environ: Mapping[str, str] = os.environ, root: Path | None = None,
                  depth: int = 6) -> list[Path]:
    """Run folders in what is attached (another kernel's output, mounted read-only under /kaggle/input/<slug>/,
    or a dataset made from one): folders holding run.json and config.yaml, most advanced first (the highest
    results/NN.json, then the most stages finished)."""
    base = paths(root, environ).input
    found: list[Path] = []
    if not base.is_dir():
        return found
    for dirpath, dirnames, filenames in os.walk(base):
        here = Path(dirpath)
        if len(here.relative_to(base).parts) >= depth:
            dirnames[:] = []
        if "run.json" in filenames and "config.yaml" in filenames:
            found.append(here)
            dirnames[:] = []  # a run folder's own subfolders hold no other run
        dirnames[:] = [d for d in dirnames if d not in ("checkpoints", "replaced", "site-packages")]

    def progress(run: Path) -> tuple[str, int]:
        results = sorted(p.stem for p in (run / "results").glob("[0-9][0-9].json"))
        return (results[-1] if results else "", len(list(run.glob("*/manifest.json"))))

    return sorted(found, key=progress, reverse=True)

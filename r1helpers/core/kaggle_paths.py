"""Where things go on Kaggle: one answer to "am I on Kaggle?" and its folders.

Kaggle keeps /kaggle/working (about 19.5 GB usable) with each saved version and
nothing else, so run folders go there and caches and large exports go to
/kaggle/tmp, the session's own disk.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, MutableMapping

KAGGLE_ROOT = Path("/kaggle")
WORKING_LIMIT_GB = 20  # what Kaggle keeps of /kaggle/working with each saved version




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



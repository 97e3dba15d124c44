"""Whether the disks an export goes to can hold it, checked before anything is written: an 8B export is large
(merged 16-bit about 16 GB, q8_0 about 8.5 GB, q4_k_m about 5 GB) and Kaggle's /kaggle/working keeps about 19.5 GB."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Beside the estimate: filesystem slack, tokenizer files, cards, temporary check files; a share of the export, so a
# small export is not refused for a margin larger than itself.
SPACE_MARGIN_BYTES = 64 * 2**20
SPACE_MARGIN_FRACTION = 0.05


class ExportSpaceError(RuntimeError):
    """The export would not fit on the disk it is written to; nothing was written."""


@dataclass
class Planned:
    what: str
    where: Path
    bytes: int


def dir_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def plan_sizes(out: Path, parameters: int, adapter_bytes: int, *, keep_merged: bool, gguf_kinds: list[str],
               merged_dtype: str, download_bytes: int = 0, download_dir: Path | None = None) -> list[Planned]:
    """Every large thing an export writes, its estimated size and folder: the merged model whenever GGUF needs it,
    the unquantized GGUF q4_k_m is made from, the base weights' download (`download_bytes`) into `download_dir`."""
    from r1helpers.export.gguf import BYTES_PER_PARAM, source_kind

    items = [Planned("adapter", out, adapter_bytes)]
    if keep_merged or gguf_kinds:
        items.append(Planned("merged 16-bit" + ("" if keep_merged else " (temporary, for GGUF)"), out, 2 * parameters))
    items += [Planned(f"GGUF {k}", out, int(BYTES_PER_PARAM[k] * parameters)) for k in gguf_kinds]
    if "q4_k_m" in gguf_kinds and source_kind(merged_dtype) not in gguf_kinds:
        items.append(Planned(f"GGUF {source_kind(merged_dtype)} (temporary, quantized to q4_k_m)", out, 2 * parameters))
    if download_bytes:
        items.append(Planned("base model download", Path(download_dir or out), download_bytes))
    return items


def _existing(path: Path) -> Path:
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    """Free bytes on the disk that holds `path` (or its nearest existing parent)."""
    return shutil.disk_usage(_existing(path)).free


def _needed(items: list[Planned]) -> int:
    return int(sum(i.bytes for i in items) * (1 + SPACE_MARGIN_FRACTION)) + SPACE_MARGIN_BYTES


def check_space(items: list[Planned], alternatives: dict[str, list[Planned]] | None = None) -> dict[str, Any]:
    """Refuse before writing when a disk cannot hold what goes onto it (with a margin). `alternatives`: for a
    setting a user could change (e.g. "export.gguf=[]"), the plan with it; the refusal advises those that fit."""
    disk = lambda path: os.stat(_existing(path)).st_dev  # noqa: E731
    by_disk: dict[int, list[Planned]] = {}
    for item in items:
        by_disk.setdefault(disk(item.where), []).append(item)
    report = {}
    for d, group in by_disk.items():
        need, free = _needed(group), free_bytes(group[0].where)
        report[str(group[0].where)] = {"needed_bytes": need, "free_bytes": free}
        if need > free:
            fits = [say for say, alt in (alternatives or {}).items()
                    if _needed([i for i in alt if disk(i.where) == d]) <= free]
            gb = lambda b: f"{b / 1e9:.1f} GB" if b >= 1e8 else f"{b / 1e6:.1f} MB"  # noqa: E731
            raise ExportSpaceError(
                f"export refused: it needs about {gb(need)} in {group[0].where} ("
                + ", ".join(f"{i.what} {gb(i.bytes)}" for i in group) + f", plus margin) but only {gb(free)} is free "
                "there. Nothing was written. Set export.output_dir to a larger disk (on Kaggle "
                "export.output_dir=/kaggle/tmp/export: /kaggle/working keeps only about 19.5 GB) or free space there "
                "(an earlier export stays until the new one is complete)."
                + (f" Or export less: {' or '.join(fits)} would fit." if fits else ""))
    return report

"""Find the 16-bit base checkpoint the adapter is merged into (not training's 4-bit copy): a local folder or a
complete copy in the Hugging Face cache, its parameters counted from the file headers; else its size on the Hub,
so the free-space check runs before the download (`fetch_base`)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

# Files of a Hub checkpoint the merge needs (weights, configs); never the .bin or original/ copies.
BASE_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json"]


@dataclass
class BaseCheckpoint:
    name: str
    folder: Path | None  # None: still on the Hub
    parameters: int
    download_bytes: int


def _complete(folder: Path) -> bool:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text())["weight_map"].values())
        return all((folder / s).is_file() for s in shards)
    return (folder / "model.safetensors").is_file()


def locate_base(name: str, revision: str | None = None) -> BaseCheckpoint:
    """Find the base checkpoint `name` (Hub id or folder) without downloading it; count its parameters."""
    from r1helpers.export.merge import tensor_shapes
    from r1helpers.modeling.local import resolve_model_path

    resolved = resolve_model_path(name)
    folder = Path(resolved) if Path(resolved).is_dir() else _cached_snapshot(resolved, revision)
    if folder is not None and _complete(folder):
        n = sum(math.prod(s) for s in tensor_shapes(folder).values())
        return BaseCheckpoint(name, folder, n, 0)
    return _hub_base(resolved, revision)


def _cached_snapshot(repo: str, revision: str | None) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, revision=revision, allow_patterns=BASE_PATTERNS, local_files_only=True))
    except Exception:
        return None


def _hub_base(repo: str, revision: str | None) -> BaseCheckpoint:
    from huggingface_hub import HfApi

    try:
        meta = HfApi().get_safetensors_metadata(repo, revision=revision)
        info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    except Exception as e:
        raise RuntimeError(f"model.name={repo!r}: the 16-bit base weights are neither local nor reachable on the Hub "
                           f"({type(e).__name__}); the merge needs them") from None
    size = sum(s.size or 0 for s in info.siblings or [] if s.rfilename.endswith(".safetensors"))
    return BaseCheckpoint(repo, None, sum(meta.parameter_count.values()), size)


def fetch_base(base: BaseCheckpoint, revision: str | None = None) -> Path:
    """The local folder of the base weights, downloading them (weights and configs only) when needed."""
    if base.folder is not None:
        return base.folder
    from huggingface_hub import snapshot_download

    print(f"downloading the 16-bit base weights of {base.name} ({base.download_bytes / 1e9:.1f} GB)")
    return Path(snapshot_download(base.name, revision=revision, allow_patterns=BASE_PATTERNS))

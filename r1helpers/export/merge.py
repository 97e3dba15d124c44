"""Merge a LoRA adapter into the base model's 16-bit weights, one shard at a time.

Written here, not peft's `merge_and_unload`, which needs the whole model loaded (16 GB for the 8B, more than a T4
or Kaggle's RAM spares). Each base tensor is read from the 16-bit checkpoint (never training's 4-bit copy),
`W + scale * B @ A` is computed in float32 and rounded once to 16-bit; memory stays at one shard.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PEFT_PREFIX = "base_model.model."
# Numbers per step when a tensor is merged or checked in float32 (16 MB): small temporaries, not one the size of
# the tensor per operation (the 8B's embeddings are 525 M numbers).
CHUNK_NUMBERS = 1 << 22


def row_chunks(rows: int, row_numbers: int, chunk: int | None = None):
    """(start, stop) row ranges of about `chunk` numbers each (default CHUNK_NUMBERS), at least a row each."""
    step = max(1, (chunk or CHUNK_NUMBERS) // max(1, row_numbers))
    for start in range(0, rows, step):
        yield start, min(rows, start + step)


class MergeError(RuntimeError):
    """The adapter does not fit the base model, or uses a feature this merge does not do."""


@dataclass
class LoraPair:
    a: Any  # torch.Tensor (r, in)
    b: Any  # torch.Tensor (out, r)
    scale: float

    def delta(self, start: int | None = None, stop: int | None = None):
        """scale * B @ A in float32, only rows start:stop of it when given. In float64, so a piece of rows rounds
        as the same rows of the whole product (float32 kernels sum in a size-dependent order)."""
        b = self.b if start is None else self.b[start:stop]
        return ((b.double() @ self.a.double()) * self.scale).float()


@dataclass
class MergeReport:
    dtype: str
    merged_tensors: int
    copied_tensors: int
    shards: list[str] = field(default_factory=list)
    parameters: int = 0


def _pattern_value(patterns: dict[str, Any], key: str, default: Any) -> Any:
    """peft's rank_pattern/alpha_pattern: a regex matched against the end of the module name."""
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", key):
            return value
    return default


def read_adapter(adapter_dir: Path) -> dict[str, LoraPair]:
    """Base weight name -> (A, B, scale) for every LoRA layer of a saved peft adapter."""
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise MergeError(f"{adapter_dir}: peft_type {cfg.get('peft_type')!r}; only LoRA adapters merge here")
    for flag in ("use_dora", "fan_in_fan_out", "lora_bias"):
        if cfg.get(flag):
            raise MergeError(f"{adapter_dir}: {flag}=True is not supported by this merge")
    if cfg.get("modules_to_save"):
        raise MergeError(f"{adapter_dir}: modules_to_save={cfg['modules_to_save']} is not supported by this merge")
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    pairs: dict[str, LoraPair] = {}
    for key, a in weights.items():
        if ".lora_A." not in key:
            if ".lora_B." not in key:
                raise MergeError(f"{adapter_dir}: unexpected tensor {key} (only lora_A/lora_B are merged)")
            continue
        module = key.split(".lora_A.")[0].removeprefix(PEFT_PREFIX)
        b = weights[key.replace(".lora_A.", ".lora_B.")]
        r = a.shape[0]
        alpha = _pattern_value(cfg.get("alpha_pattern"), module, cfg["lora_alpha"])
        scale = alpha / (r ** 0.5 if cfg.get("use_rslora") else r)
        pairs[f"{module}.weight"] = LoraPair(a, b, scale)
    if not pairs:
        raise MergeError(f"{adapter_dir}: no LoRA weights found")
    return pairs


def base_dtype(base_dir: Path) -> str:
    config = json.loads((Path(base_dir) / "config.json").read_text())
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")


def resolve_dtype(requested: str, base_dir: Path) -> str:
    """"auto": the checkpoint's own 16-bit type (bfloat16 for R1-distill), else bfloat16, whose range is float32's."""
    if requested != "auto":
        return requested
    own = base_dtype(base_dir)
    return own if own in ("bfloat16", "float16") else "bfloat16"


def weight_files(model_dir: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file, from the shard index or the single file."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        return {k: model_dir / v for k, v in json.loads(index.read_text())["weight_map"].items()}
    single = model_dir / "model.safetensors"
    if not single.is_file():
        raise MergeError(f"{model_dir}: no model.safetensors or index; the merge reads safetensors checkpoints")
    return {k: single for k in tensor_shapes(model_dir, [single])}


def tensor_shapes(model_dir: Path, paths: list[Path] | None = None) -> dict[str, tuple[int, ...]]:
    """Shapes from the safetensors headers, without reading any weights."""
    from safetensors import safe_open

    out: dict[str, tuple[int, ...]] = {}
    for path in paths or sorted(set(weight_files(model_dir).values())):
        with safe_open(str(path), framework="pt") as f:
            out.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
    return out


def merge_lora(base_dir: Path, adapter_dir: Path, out_dir: Path, dtype: str = "auto") -> MergeReport:
    """Write the merged weights and config into `out_dir` (an existing, empty folder)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    base_dir, out_dir = Path(base_dir), Path(out_dir)
    dtype = resolve_dtype(dtype, base_dir)
    torch_dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    pairs = read_adapter(adapter_dir)
    files = weight_files(base_dir)
    shards = sorted(set(files.values()))
    report = MergeReport(dtype=dtype, merged_tensors=0, copied_tensors=0)
    total_bytes = 0
    for shard in shards:
        out: dict[str, Any] = {}
        with safe_open(str(shard), framework="pt") as f:
            for key in f.keys():
                w = f.get_tensor(key)
                if key in pairs:
                    merged = torch.empty(w.shape, dtype=torch_dtype)
                    for i, j in row_chunks(w.shape[0], w[0].numel()):
                        merged[i:j] = (w[i:j].float() + pairs[key].delta(i, j)).to(torch_dtype)
                    w = merged
                    report.merged_tensors += 1
                else:
                    w = w.to(torch_dtype) if w.is_floating_point() else w
                    report.copied_tensors += 1
                out[key] = w.contiguous()
                report.parameters += w.numel()
                total_bytes += w.numel() * w.element_size()
        save_file(out, str(out_dir / shard.name), metadata={"format": "pt"})
        report.shards.append(shard.name)
        del out
    missing = set(pairs) - set(files)
    if missing:
        raise MergeError(f"adapter layers not found in the base model: {sorted(missing)[:4]}; "
                         "was it trained on another model?")
    if (base_dir / "model.safetensors.index.json").is_file():
        index = {"metadata": {"total_size": total_bytes}, "weight_map": {k: p.name for k, p in files.items()}}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    _write_configs(base_dir, out_dir, dtype)
    return report


def _write_configs(base_dir: Path, out_dir: Path, dtype: str) -> None:
    config = json.loads((base_dir / "config.json").read_text())
    config["dtype"] = dtype
    config.pop("torch_dtype", None)
    config.pop("quantization_config", None)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    gen = base_dir / "generation_config.json"
    if gen.is_file():
        shutil.copy2(gen, out_dir / gen.name)


def weight_check(base_dir: Path, adapter_dir: Path, merged_dir: Path) -> dict[str, Any]:
    """Every merged tensor, read back, within one 16-bit rounding of base + scale * B @ A; and the share of the
    weights the adapter changes that came out equal to the base's: a LoRA update under half a rounding step is
    erased by the merge (bfloat16 keeps 8 significant bits, float16 11)."""
    import torch
    from safetensors import safe_open

    pairs = read_adapter(adapter_dir)
    base_files, merged_files = weight_files(base_dir), weight_files(merged_dir)
    if set(base_files) != set(merged_files):
        raise MergeError(f"merged tensors differ from the base's: {sorted(set(base_files) ^ set(merged_files))[:4]}")
    worst, worst_ulps, changed, erased = 0.0, 0.0, 0, 0
    for key in base_files:
        with safe_open(str(base_files[key]), framework="pt") as fb, safe_open(str(merged_files[key]), framework="pt") as fm:
            base_all, merged_all = fb.get_tensor(key), fm.get_tensor(key)
        if base_all.shape != merged_all.shape:
            raise MergeError(f"{key}: merged shape {tuple(merged_all.shape)}, base {tuple(base_all.shape)}")
        base_all = base_all.reshape(base_all.shape[0], -1) if base_all.dim() else base_all.reshape(1, 1)
        merged_all = merged_all.reshape(base_all.shape)
        eps, tiny = torch.finfo(merged_all.dtype).eps, torch.finfo(merged_all.dtype).tiny
        pair = pairs.get(key)
        for i, j in row_chunks(base_all.shape[0], base_all.shape[1]):  # a few rows at a time: see CHUNK_NUMBERS
            base, merged = base_all[i:j], merged_all[i:j]
            delta = pair.delta(i, j) if pair is not None else None
            exact = base.float() + delta if delta is not None else base.float()
            err = merged.float().sub_(exact).abs_()
            worst = max(worst, err.max().item())
            worst_ulps = max(worst_ulps, err.div_(exact.abs_().clamp_min_(tiny).mul_(eps)).max().item())
            if delta is not None:  # weights the adapter moves, and those whose move rounds away in 16-bit
                moved = delta != 0
                changed += int(moved.sum())
                erased += int((moved & (merged == base.to(merged.dtype))).sum())
    if worst_ulps > 1.0 + 1e-6:
        raise MergeError(f"merged weights are off by {worst_ulps:.2f} units of 16-bit rounding (max |err| {worst:.3g})")
    return {"tensors": len(base_files), "lora_layers": len(pairs), "max_abs_error": worst,
            "max_error_in_rounding_units": round(worst_ulps, 3), "weights_changed_by_lora": changed,
            "lora_changes_lost_to_rounding": round(erased / changed, 4) if changed else 0.0}

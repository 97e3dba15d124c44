"""What machine this is, which backend and dtype suit it, and why.

Users' reports show `torch.cuda.is_bf16_supported()` answering True on a T4, where
bf16 is emulated and slow; bf16 is decided here by compute capability >= 8.0.
Unsloth does not support the P100 (capability 6.0) and imports only on a
supported NVIDIA GPU, so the transformers + peft path is the fallback.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from .config import Config

TRACKED_PACKAGES = (
    "r1helpers", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers",
    "bitsandbytes", "unsloth", "unsloth_zoo", "triton", "wandb", "huggingface_hub", "papermill",
    "gguf", "safetensors",
)

# Unsloth's kernels need Triton, which needs compute capability >= 7.0.
UNSLOTH_MIN_CAPABILITY = (7, 0)


@dataclass
class GPU:
    name: str
    capability: tuple[int, int]
    total_memory_gib: float


@dataclass
class Hardware:
    device: str  # "cuda" | "cpu"
    gpus: list[GPU] = field(default_factory=list)

    @property
    def gpu(self) -> GPU | None:
        return self.gpus[0] if self.gpus else None

    @property
    def bf16(self) -> bool:
        """Native bf16 only: compute capability 8.0 (Ampere) or newer."""
        return self.gpu is not None and self.gpu.capability >= (8, 0)

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "bf16": self.bf16, "gpus": [asdict(g) for g in self.gpus]}


def detect_hardware() -> Hardware:
    import torch

    if not torch.cuda.is_available():
        return Hardware(device="cpu")
    gpus = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        gpus.append(GPU(name=p.name, capability=(p.major, p.minor), total_memory_gib=round(p.total_memory / 2**30, 1)))
    return Hardware(device="cuda", gpus=gpus)


def resolve_dtype(requested: str, hw: Hardware) -> str:
    """"auto" gives bf16 on capability >= 8.0, fp16 on older GPUs, fp32 on CPU."""
    if requested != "auto":
        if requested == "bfloat16" and hw.device == "cuda" and not hw.bf16:
            raise ValueError(
                f"model.dtype: bfloat16 requested but {hw.gpu.name} (capability "
                f"{hw.gpu.capability[0]}.{hw.gpu.capability[1]}) has no native bf16; use float16 or auto"
            )
        return requested
    if hw.device == "cpu":
        return "float32"
    return "bfloat16" if hw.bf16 else "float16"


def unsloth_importable() -> tuple[bool, str]:
    """Import Unsloth in this process; it patches transformers, so import it before models."""
    try:
        import unsloth  # noqa: F401
    except Exception as e:  # ImportError, NotImplementedError on unsupported GPUs, ...
        return False, f"unsloth did not import ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})"
    return True, "unsloth imported"


@dataclass
class BackendChoice:
    name: str  # "unsloth" | "transformers"
    reason: str
    dtype: str
    load_in_4bit: bool


def choose_backend(cfg: Config, hw: Hardware | None = None, try_import: bool = True) -> BackendChoice:
    """Pick Unsloth where it imports and the GPU supports it, else transformers + peft."""
    hw = hw or detect_hardware()
    dtype = resolve_dtype(cfg.model.dtype, hw)
    four_bit = cfg.model.load_in_4bit and hw.device == "cuda"
    note = "" if four_bit or not cfg.model.load_in_4bit else "; 4-bit needs CUDA, so full precision"
    requested = cfg.model.backend
    if hw.device != "cuda":
        if requested == "unsloth":
            raise RuntimeError("model.backend=unsloth needs an NVIDIA GPU; this machine has none")
        return BackendChoice("transformers", "no CUDA GPU: transformers + peft on CPU" + note, dtype, four_bit)
    gpu = hw.gpu
    if gpu.capability < UNSLOTH_MIN_CAPABILITY:
        why = (f"{gpu.name} has compute capability {gpu.capability[0]}.{gpu.capability[1]}; Unsloth and Triton "
               f"need {UNSLOTH_MIN_CAPABILITY[0]}.{UNSLOTH_MIN_CAPABILITY[1]}+")
        if requested == "unsloth":
            raise RuntimeError(f"model.backend=unsloth: {why}")
        return BackendChoice("transformers", f"{why}: transformers + peft + bitsandbytes", dtype, four_bit)
    if requested == "transformers":
        return BackendChoice("transformers", "model.backend=transformers requested", dtype, four_bit)
    if try_import:
        ok, why = unsloth_importable()
        if not ok:
            if requested == "unsloth":
                raise RuntimeError(f"model.backend=unsloth: {why}")
            return BackendChoice("transformers", f"{why}: transformers + peft + bitsandbytes", dtype, four_bit)
    return BackendChoice("unsloth", f"{gpu.name} supports Unsloth and it imported", dtype, four_bit)


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    try:
        import torch

        out["torch.cuda"] = torch.version.cuda
    except ImportError:
        pass
    return out


def is_kaggle() -> bool:
    return "KAGGLE_KERNEL_RUN_TYPE" in os.environ or os.path.isdir("/kaggle/working")


def environment_report(cfg: Config, try_import: bool = True) -> dict[str, Any]:
    """Everything the setup notebook shows and the run folder records."""
    hw = detect_hardware()
    choice = choose_backend(cfg, hw, try_import=try_import)
    return {
        "platform": platform.platform(),
        "python_executable": sys.executable,
        "kaggle": is_kaggle(),
        "hardware": hw.to_dict(),
        "backend": asdict(choice),
        "profile": cfg.profile,
        "versions": package_versions(),
    }

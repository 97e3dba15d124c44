"""What machine this is, which backend and dtype suit it, and why.

bf16 is decided by compute capability >= 8.0, never by `torch.cuda.is_bf16_supported()` (True on a T4, where
bf16 is emulated). Every decision takes a `Hardware` value, so tests can inject a T4, P100, H100 or CPU.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, MutableMapping

from r1helpers.core.config import Config
from r1helpers.core.ddp import DDP_BACKEND_NOTE, GPUS_BEFORE_PIN_ENV, world_size
from r1helpers.core.kaggle_paths import on_kaggle

# Set to "1" by papermill runs (r1helpers.pipeline), Kaggle's saved versions (r1helpers.setup) and the DDP launcher.
HEADLESS_ENV = "R1HELPERS_HEADLESS"


def headless(environ: Mapping[str, str] = os.environ) -> bool:
    """A log read line by line, not a person at a screen: no redrawn bars, streamed tokens or prompts."""
    return environ.get(HEADLESS_ENV) == "1"


TRACKED_PACKAGES = (
    "r1helpers", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "tokenizers",
    "bitsandbytes", "unsloth", "unsloth_zoo", "triton", "wandb", "huggingface_hub", "papermill",
    "gguf", "safetensors",
)

# Unsloth's kernels need Triton, which needs compute capability >= 7.0.
UNSLOTH_MIN_CAPABILITY = (7, 0)
# Why nothing GPU-related is installed or advised below capability 7.0 (said by setup() and the notes).
BELOW_7_0 = ("Kaggle has retired the P100 (kaggle CLI 2.2.5 lists NvidiaTeslaP100 as retired; such sessions run "
             "on a T4), Kaggle's torch 2.10.0+cu128 has no sm_60 kernels, and neither has bitsandbytes 0.50.2's "
             "CUDA 12.8 library; Unsloth and Triton need 7.0+")
SWITCH_TO_T4 = "on Kaggle: Settings > Accelerator > 'GPU T4 x2', then run again from the first cell"


@dataclass
class GPU:
    name: str
    capability: tuple[int, int]
    total_memory_gib: float


@dataclass
class Hardware:
    device: str  # "cuda" | "cpu"
    gpus: list[GPU] = field(default_factory=list)  # the GPUs this process uses (GPU 0 first)
    gpus_seen: int = 0  # GPUs on the machine, hidden ones included (0: as many as `gpus`)
    arch_list: list[str] = field(default_factory=list)  # torch.cuda.get_arch_list(); empty: unknown
    torch_version: str | None = None

    @property
    def gpu(self) -> GPU | None:
        return self.gpus[0] if self.gpus else None

    @property
    def gpu_count(self) -> int:
        return max(self.gpus_seen, len(self.gpus))

    @property
    def bf16(self) -> bool:
        """Native bf16 only: compute capability 8.0 (Ampere) or newer."""
        return self.gpu is not None and self.gpu.capability >= (8, 0)

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "bf16": self.bf16, "gpus": [asdict(g) for g in self.gpus],
                "gpus_seen": self.gpu_count, "torch_arch_list": self.arch_list, "torch": self.torch_version}


# Set by pin_first_gpu: how many GPUs the machine has once the others are hidden.
GPUS_SEEN_ENV = "R1HELPERS_GPUS_SEEN"


def detect_hardware() -> Hardware:
    import torch

    if not torch.cuda.is_available():
        return Hardware(device="cpu", torch_version=torch.__version__)
    gpus = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        gpus.append(GPU(name=p.name, capability=(p.major, p.minor), total_memory_gib=round(p.total_memory / 2**30, 1)))
    seen = int(os.environ.get(GPUS_SEEN_ENV) or 0)
    return Hardware(device="cuda", gpus=gpus, gpus_seen=seen, arch_list=list(torch.cuda.get_arch_list()),
                    torch_version=torch.__version__)


def smi_gpus(run=subprocess.run) -> list[GPU]:
    """The machine's GPUs from nvidia-smi, which (unlike torch) does not start CUDA, so that
    CUDA_VISIBLE_DEVICES can still be set before it does."""
    query = ["nvidia-smi", "--query-gpu=name,compute_cap,memory.total", "--format=csv,noheader,nounits"]
    try:
        out = run(query, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    gpus = []
    for line in out.stdout.strip().splitlines():
        try:
            name, cap, mib = (p.strip() for p in line.split(","))
            major, _, minor = cap.partition(".")
            gpus.append(GPU(name, (int(major), int(minor or 0)), round(float(mib) / 1024, 1)))
        except ValueError:
            continue
    return gpus


def distributed_launch(environ: Mapping[str, str] = os.environ) -> bool:
    """True under torchrun / accelerate launch, where each process already owns one GPU."""
    return int(environ.get("WORLD_SIZE") or 1) > 1 or "LOCAL_RANK" in environ


def pin_first_gpu(gpus: list[GPU], environ: MutableMapping[str, str] = os.environ) -> str | None:
    """Show this process only its first GPU when it would see several and no launcher runs it.

    Otherwise the Trainer multiplies the per-device batch by the GPU count. The full list is kept in
    GPUS_BEFORE_PIN_ENV for the DDP launcher (r1helpers.distributed).
    """
    listed = [d for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    visible = listed if "CUDA_VISIBLE_DEVICES" in environ else [str(i) for i in range(len(gpus))]
    if len(visible) < 2 or distributed_launch(environ):
        return None
    environ["CUDA_VISIBLE_DEVICES"] = visible[0].strip()
    environ[GPUS_SEEN_ENV] = str(len(visible))
    environ[GPUS_BEFORE_PIN_ENV] = ",".join(v.strip() for v in visible)
    return (f"{len(visible)} GPUs seen; CUDA_VISIBLE_DEVICES={visible[0].strip()}, so this notebook trains on one "
            f"GPU (train.processes={len(visible)} or 0 trains on all of them, under DDP)")


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


def torch_has_kernels(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether this torch build runs on a GPU of `capability`: a cubin for sm_XY runs on sm_XZ with Z >= Y,
    PTX for compute_XY on any newer GPU; an empty arch list: assume yes."""
    if not arch_list:
        return True
    for arch in arch_list:
        kind, _, num = arch.partition("_")
        digits = re.match(r"\d+", num)
        if not digits or len(digits.group()) < 2:
            continue
        built = (int(digits.group()[:-1]), int(digits.group()[-1]))
        if kind == "sm" and built[0] == capability[0] and built[1] <= capability[1]:
            return True
        if kind == "compute" and built <= capability:
            return True
    return False


def no_kernels_message(hw: Hardware) -> str:
    """What to do when the installed torch has dropped this GPU (PyTorch's CUDA 12.8+ builds skip Pascal).

    It names the local version (`+cu126`): a plain `torch==2.10.0` is satisfied by 2.10.0+cu128 already.
    """
    gpu = hw.gpu
    sm = f"sm_{gpu.capability[0]}{gpu.capability[1]}"
    base = (hw.torch_version or "").split("+")[0] or "<this version>"
    return (
        f"torch {hw.torch_version} has no CUDA kernels for {gpu.name} ({sm}; this build has "
        f"{', '.join(hw.arch_list)}), so every GPU operation would fail with 'no kernel image is available'. "
        f"Switch to T4 x2: {SWITCH_TO_T4} (Kaggle has retired the P100). To stay on this GPU instead, install "
        "PyTorch's CUDA 12.6 build, the only one with Pascal kernels: "
        f"pip install 'torch=={base}+cu126' --index-url https://download.pytorch.org/whl/cu126 "
        "(then pip install bitsandbytes==0.50.2, whose CUDA 12.6 library has sm_60) and restart the kernel."
    )


def choose_backend(cfg: Config, hw: Hardware | None = None, try_import: bool = True,
                   processes: int | None = None) -> BackendChoice:
    """Pick Unsloth where it imports and the GPU supports it, else transformers + peft (always under DDP:
    `processes`, default WORLD_SIZE, above 1)."""
    hw = hw or detect_hardware()
    processes = world_size() if processes is None else processes
    if hw.device == "cuda" and not torch_has_kernels(hw.gpu.capability, hw.arch_list):
        raise RuntimeError(no_kernels_message(hw))
    dtype = resolve_dtype(cfg.model.dtype, hw)
    four_bit = cfg.model.load_in_4bit and hw.device == "cuda"
    requested = cfg.model.backend

    def transformers(why: str, refusal: str | None = None) -> BackendChoice:
        """The fallback, or the error `model.backend=unsloth` gets for the same reason."""
        if requested == "unsloth":
            raise RuntimeError(refusal or f"model.backend=unsloth: {why}")
        return BackendChoice("transformers", why, dtype, four_bit)

    if hw.device != "cuda":
        note = "; 4-bit needs CUDA, so full precision" if cfg.model.load_in_4bit else ""
        return transformers("no CUDA GPU: transformers + peft on CPU" + note,
                            "model.backend=unsloth needs an NVIDIA GPU; this machine has none")
    gpu = hw.gpu
    if gpu.capability < UNSLOTH_MIN_CAPABILITY:
        return transformers(f"{gpu.name} has compute capability {gpu.capability[0]}.{gpu.capability[1]}; Unsloth "
                            f"and Triton need 7.0+: transformers + peft + bitsandbytes")
    if requested == "transformers":
        return transformers("model.backend=transformers requested")
    if processes > 1:
        return transformers(f"DDP over {processes} processes: {DDP_BACKEND_NOTE}",
                            f"model.backend=unsloth with {processes} DDP processes: {DDP_BACKEND_NOTE}; "
                            "set model.backend=auto or transformers, or train in one process")
    if not try_import:
        return BackendChoice("unsloth", f"{gpu.name} supports Unsloth (imported where a model loads through it)",
                             dtype, four_bit)
    ok, why = unsloth_importable()
    if not ok:
        return transformers(f"{why}: transformers + peft + bitsandbytes")
    return BackendChoice("unsloth", f"{gpu.name} supports Unsloth and it imported", dtype, four_bit)


def hardware_notes(cfg: Config, hw: Hardware, kaggle: bool = False) -> list[str]:
    """What a person on this machine should read before anything loads (the machine table shows the rest)."""
    if hw.device != "cuda":
        where = f" ({SWITCH_TO_T4})" if kaggle else ""
        return [f"no CUDA GPU: the seed recipe needs one{where}; the CPU profile (a tiny model) checks the pipeline"]
    gpu = hw.gpu
    cap = f"{gpu.capability[0]}.{gpu.capability[1]}"
    notes = [f"{gpu.name} (capability {cap}): native bf16, training in bf16" if hw.bf16 else
             f"{gpu.name} (capability {cap}): no native bf16 (needs 8.0+), so fp16 weights and fp16 mixed precision"]
    if gpu.capability < UNSLOTH_MIN_CAPABILITY:
        notes.append(f"{BELOW_7_0}; so setup() installs no GPU packages here. Switch to T4 x2: {SWITCH_TO_T4}")
    if hw.gpu_count > 1:
        notes.append(f"{hw.gpu_count} GPUs seen; this notebook trains on GPU 0; train.processes=0 in notebook 03 "
                     f"(or python -m r1helpers.distributed --nproc {hw.gpu_count}) trains on all of them under DDP")
    return notes


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


def environment_report(cfg: Config, try_import: bool = True) -> dict[str, Any]:
    """Everything the setup notebook shows and the run folder records."""
    hw = detect_hardware()
    return {
        "platform": platform.platform(),
        "python_executable": sys.executable,
        "kaggle": on_kaggle(),
        "hardware": hw.to_dict(),
        "backend": asdict(choose_backend(cfg, hw, try_import=try_import)),
        "notes": hardware_notes(cfg, hw, kaggle=on_kaggle()),
        "profile": cfg.profile,
        "versions": package_versions(),
    }


def is_oom(e: BaseException) -> bool:
    """torch.OutOfMemoryError, or the RuntimeError that CUDA libraries raise for the same cause."""
    import torch

    text = str(e)
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in text.lower() or "ALLOC_FAILED" in text


def cpu_threads(workers: int | None = None, most: int = 8) -> int:
    """Threads for CPU work that numpy or hashlib does outside the GIL: `workers` when given, else the CPU count,
    at most `most`; at least 1."""
    return max(1, workers if workers is not None else min(most, os.cpu_count() or 1))


def free_memory() -> None:
    """Collect garbage, then hand CUDA's cached blocks back: after dropping a model, or after an OOM
    exception is gone (its traceback holds the failed batch's tensors)."""
    import gc

    gc.collect()
    torch = sys.modules.get("torch")  # a process that never imported torch has no CUDA memory to free
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()

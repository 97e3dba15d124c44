"""Which way to generate: the fastest path this GPU and the installed stack offer, and why.

Three paths, measured on an H200 in the 8B shape (random weights, 4-bit + LoRA where it applies;
issue 15), in generated tokens per second:

| path | what runs | batch 32 | batch 128 |
|---|---|---|---|
| `static_16bit` | 16-bit base weights + the LoRA adapter (unmerged), static KV cache: transformers compiles the decoding step (CUDA graphs) | 2,520 | 4,678 |
| `unsloth` | 4-bit base + LoRA through Unsloth's inference path (`FastLanguageModel.for_inference`) | 808 | 3,916 |
| `dynamic` | plain `generate` with the dynamic cache (transformers + bitsandbytes 4-bit on a GPU, full precision on a CPU) | 425 | 1,418 |

`static_16bit` needs room for 16-bit weights (~15 GiB for the 8B) beside the cache, so `auto` takes it only
where at least `MIN_ROWS_16BIT` rows of KV cache fit beside them (an H100/H200, an A100 40 GB; not a 16 GB
T4). The adapter stays a separate LoRA module: merging it into bf16 weights rounds each updated weight
to bf16, and a small LoRA update (B @ A is often far below a weight's bf16 spacing) can vanish.
Loading 16-bit weights for generation means loading the base model again in bf16/fp16 (the training
stage keeps its 4-bit weights); the adapter was trained against the 4-bit weights, so its effect on the
16-bit ones is close to, not bit-identical with, what training saw, and both models of the comparison
are generated on the same weights and path (`r1helpers.workflow.compare_stage.check_same_decoding`).

A path that fails (it does not load, Unsloth does not import, compilation fails) falls back to the next
one, `fallback_path`, with the reason kept in `passed_over`; nothing here raises for a failed path.

These are plain functions: hardware facts and sizes in, a `GenerationPath` out; `gpu_memory` is the one
that asks torch, inside itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from r1helpers.core.hardware import BackendChoice

PATHS = ("unsloth", "static_16bit", "dynamic")
GIB = 2**30
# auto takes 16-bit weights only where this many rows of KV cache fit beside them: at equal batch the
# compiled static cache is ~3x Unsloth's path, but Unsloth's 4-bit weights leave room for ~4x the rows.
MIN_ROWS_16BIT = 32
# Unsloth's inference path grows its KV cache 512 tokens at a time (unsloth/models/llama.py KV_CACHE_INCREMENT).
UNSLOTH_KV_INCREMENT = 512
# Caps this process's GPU memory, as `python tools/bench_series.py --gpu-gib 15` does for a T4.
GPU_GIB_ENV = "R1HELPERS_GPU_GIB"
HEADROOM = 0.85  # as r1helpers.inference.plan.plan_generation


@dataclass
class GenerationPath:
    path: str  # "unsloth" | "static_16bit" | "dynamic"
    reason: str
    backend: str  # how the weights load: "unsloth" | "transformers"
    load_in_4bit: bool
    dtype: str  # "bfloat16" | "float16" | "float32"
    passed_over: list[str] = field(default_factory=list)  # "path: why not" for candidates not taken or failed

    @property
    def cache_implementation(self) -> str | None:
        """`generate`'s cache_implementation: "static" for static_16bit, else None (the dynamic cache)."""
        return "static" if self.path == "static_16bit" else None

    @property
    def weights(self) -> str:
        return f"4-bit nf4, {self.dtype} compute" if self.load_in_4bit else self.dtype

    @property
    def kv_slack_tokens(self) -> int:
        return UNSLOTH_KV_INCREMENT if self.path == "unsloth" else 0

    def backend_choice(self) -> BackendChoice:
        """What `load_base` / `load_finetuned` take for this path."""
        return BackendChoice(self.backend, f"generation path {self.path}: {self.reason}", self.dtype, self.load_in_4bit)

    def record(self) -> dict[str, Any]:
        return {"generation_path": self.path, "weights": self.weights, "backend": self.backend,
                "load_in_4bit": self.load_in_4bit, "dtype": self.dtype, "reason": self.reason,
                "passed_over": list(self.passed_over)}

    @classmethod
    def from_record(cls, rec: Mapping[str, Any], reason: str) -> "GenerationPath":
        return cls(rec["generation_path"], reason, rec["backend"], bool(rec["load_in_4bit"]), rec["dtype"])


def choose_generation_path(requested: str = "auto", *, on_gpu: bool, backend: str, dtype: str, load_in_4bit: bool,
                           gpu_gib: float | None = None, used_gib: float = 0.0, weights_16bit_gib: float = 0.0,
                           kv_gib_per_row: float = 0.0, rows: int = MIN_ROWS_16BIT, min_rows: int = MIN_ROWS_16BIT,
                           headroom: float = HEADROOM, passed_over: list[str] | None = None) -> GenerationPath:
    """The generation path for `requested` ("auto" | "unsloth" | "static_16bit" | "dynamic") on this machine.

    `backend`, `dtype`, `load_in_4bit`: what training uses (`choose_backend`; "unsloth" only where it may
    import). `gpu_gib`: the GPU's memory (or the cap), `used_gib`: what is already in use on it (CUDA context,
    other processes), `weights_16bit_gib`: the base weights in 16-bit, `kv_gib_per_row`: one row's KV cache at
    the longest prompt + max_new_tokens, `rows`: the questions to answer.

    auto: no GPU -> dynamic; 16-bit weights + min(min_rows, rows) rows fit in `headroom` of the GPU ->
    static_16bit (measured fastest on the H200, see BENCHMARKS.md); else Unsloth's path where Unsloth is the
    backend (a 16 GB T4); else dynamic (the training backend's weights). A path asked for that cannot run here falls to auto's
    next choice, and the reason says why.

        choose_generation_path(on_gpu=True, backend="transformers", dtype="bfloat16", load_in_4bit=True,
                               gpu_gib=139, weights_16bit_gib=15, kv_gib_per_row=0.17, rows=101).path  # "static_16bit"
    """
    if requested not in ("auto", *PATHS):
        raise ValueError(f"infer.path must be one of {('auto', *PATHS)}, got {requested!r}")
    notes = list(passed_over or [])
    half = dtype if dtype in ("bfloat16", "float16") else "bfloat16"
    if not on_gpu:
        if requested == "static_16bit":
            return GenerationPath("static_16bit", "infer.path=static_16bit on a CPU: full-precision weights with a "
                                  "static KV cache (transformers compiles the decoding step only on a GPU, so it is no "
                                  "faster here)", "transformers", False, dtype, notes)
        if requested == "unsloth":
            notes.append("unsloth: needs an NVIDIA GPU")
        return GenerationPath("dynamic", "no GPU: full-precision weights and the dynamic KV cache (a static cache "
                              "pays only where the decoding step is compiled, on a GPU)", "transformers", False, dtype,
                              notes)
    room = headroom * (gpu_gib or 0.0) - used_gib
    need_rows = max(1, min(min_rows, rows))
    need = weights_16bit_gib + need_rows * kv_gib_per_row
    fits_16bit = need <= room
    sizes = (f"16-bit weights ({weights_16bit_gib:.1f} GiB) + the KV cache of {need_rows} rows "
             f"({need_rows * kv_gib_per_row:.1f} GiB) {'fit' if fits_16bit else 'do not fit'} in {room:.1f} GiB "
             f"({headroom:.0%} of {gpu_gib or 0:.1f} GiB less {used_gib:.1f} in use)")
    if requested == "static_16bit":
        if weights_16bit_gib + kv_gib_per_row <= room:
            return GenerationPath("static_16bit", f"infer.path=static_16bit: {half} weights + the LoRA adapter "
                                  "(unmerged), static KV cache, decoding step compiled", "transformers", False, half,
                                  notes)
        notes.append(f"static_16bit: not even one row fits beside 16-bit weights ({sizes})")
    elif requested == "auto" and fits_16bit:
        return GenerationPath("static_16bit", f"{sizes}: {half} weights + the LoRA adapter (unmerged) with a static KV "
                              "cache, whose decoding step transformers compiles (CUDA graphs); measured on the H200 "
                              "(8B, 51 rows x 600 tokens) at 1,857 decoded tokens/s with Unsloth imported, against "
                              "690 for Unsloth's path", "transformers", False, half, notes)
    elif requested == "auto":
        notes.append(f"static_16bit: {sizes}")
    if requested in ("auto", "unsloth", "static_16bit"):
        if backend == "unsloth":
            return GenerationPath("unsloth", ("infer.path=unsloth: " if requested == "unsloth" else "") +
                                  "Unsloth's inference path (FastLanguageModel.for_inference) on the training "
                                  f"weights ({'4-bit' if load_in_4bit else dtype}) + LoRA", "unsloth", load_in_4bit,
                                  dtype, notes)
        if requested == "unsloth":
            notes.append("unsloth: the backend is transformers (see notebook 00's backend choice)")
    return GenerationPath("dynamic", ("infer.path=dynamic: " if requested == "dynamic" else "") +
                          f"transformers + peft on the training weights ({'4-bit' if load_in_4bit else dtype}) "
                          "with the dynamic KV cache", "transformers", load_in_4bit, dtype, notes)


def fallback_path(failed: GenerationPath, why: str, *, failed_at: str, backend: str, dtype: str,
                  load_in_4bit: bool) -> GenerationPath | None:
    """The path to try after `failed` failed (`failed_at`: "load" or "generate"); None after `dynamic`.

    static_16bit failing to generate keeps its 16-bit weights and drops the static cache (dynamic, no
    reload); failing to load, it goes to unsloth (where that is the backend) or dynamic on the training
    weights. unsloth goes to dynamic on the training weights (transformers + peft).
    """
    if failed_at not in ("load", "generate"):
        raise ValueError(f"failed_at must be 'load' or 'generate', got {failed_at!r}")
    notes = [*failed.passed_over, f"{failed.path} ({failed.weights}) failed to {failed_at}: {why[:300]}"]
    if failed.path == "static_16bit" and failed_at == "generate":
        return GenerationPath("dynamic", "fallback: the same 16-bit weights with the dynamic KV cache",
                              failed.backend, failed.load_in_4bit, failed.dtype, notes)
    if failed.path == "static_16bit" and backend == "unsloth":
        return GenerationPath("unsloth", "fallback: Unsloth's inference path on the training weights",
                              "unsloth", load_in_4bit, dtype, notes)
    if failed.path in ("static_16bit", "unsloth"):
        return GenerationPath("dynamic", "fallback: transformers + peft on the training weights, dynamic KV cache",
                              "transformers", load_in_4bit, dtype, notes)
    return None


def same_weights(a: GenerationPath, b: GenerationPath) -> bool:
    """True when `b` runs on the model already loaded for `a` (no reload)."""
    return (a.backend, a.load_in_4bit, a.dtype) == (b.backend, b.load_in_4bit, b.dtype)


def gpu_cap_gib(environ: Mapping[str, str] = os.environ) -> float | None:
    """The cap R1HELPERS_GPU_GIB sets on this process's GPU memory (None: no cap)."""
    text = environ.get(GPU_GIB_ENV, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{GPU_GIB_ENV}={text!r}: expected a number of GiB, e.g. 15") from None
    if value <= 0:
        raise ValueError(f"{GPU_GIB_ENV}={text!r}: must be above 0")
    return value


def apply_gpu_cap(cap_gib: float | None) -> bool:
    """Make this process's allocator fail past `cap_gib`, as on a GPU of that size; True when a cap was set."""
    import torch

    if cap_gib is None or not torch.cuda.is_available():
        return False
    total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / GIB
    if cap_gib >= total:
        return False
    torch.cuda.set_per_process_memory_fraction(cap_gib / total)
    return True


@dataclass
class GPUMemory:
    total_gib: float  # the GPU's memory, or the cap when one is set
    used_gib: float  # in use now: this process's tensors, the CUDA context, other processes
    capped: bool


def gpu_memory(cap_gib: float | None = None, exclude_own: bool = False) -> GPUMemory | None:
    """This process's GPU: its memory (or `cap_gib`, when smaller) and what is in use now; None without CUDA.

    Blocks torch's caching allocator holds but does not use count as free; `exclude_own` counts this
    process's tensors as free too (a decision made as if nothing were loaded yet, whatever is).
    """
    import torch

    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    own = torch.cuda.memory_reserved() if exclude_own else torch.cuda.memory_reserved() - torch.cuda.memory_allocated()
    used = max(0.0, (total - free - own) / GIB)
    total_gib = total / GIB
    if cap_gib is not None and cap_gib < total_gib:
        return GPUMemory(cap_gib, used, True)
    return GPUMemory(total_gib, used, False)

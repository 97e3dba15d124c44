"""How the generation stages load and run a model, chosen from the config: the generation path (infer.path)
and why, the decoding settings and batch plan, loading, and the set-up both stages apply before generating.

Two paths: `unsloth`, Unsloth's inference path (`FastLanguageModel.for_inference` + `model.generate`) where
Unsloth is the backend (a T4), and `dynamic`, plain transformers `generate` with the dynamic KV cache elsewhere.
Both run on the training weights (4-bit on a GPU), so base and fine-tuned models decode the same way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from r1helpers.core.config import Config, validate
from r1helpers.core.hardware import BackendChoice, choose_backend, unsloth_importable
from r1helpers.inference.generate import gpu_memory, plan_for_model
from r1helpers.inference.plan import GIB, GenerationPlan
from r1helpers.modeling.load import Loaded

# Unsloth's inference path grows its KV cache 512 tokens at a time (unsloth/models/llama.py KV_CACHE_INCREMENT).
UNSLOTH_KV_INCREMENT = 512
# Caps this process's GPU memory, as `python tools/bench_series.py --gpu-gib 15` does for a T4.
GPU_GIB_ENV = "R1HELPERS_GPU_GIB"


@dataclass
class GenerationPath:
    path: str  # "unsloth" | "dynamic"
    reason: str
    load_in_4bit: bool
    dtype: str  # "bfloat16" | "float16" | "float32"
    passed_over: list[str] = field(default_factory=list)  # "path: why not" for a path asked for and not taken

    @property
    def backend(self) -> str:
        """How the weights load: "unsloth" or "transformers"."""
        return "unsloth" if self.path == "unsloth" else "transformers"

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


def generation_path(cfg: Config, run=None, stage: str | None = None) -> GenerationPath:
    """The generation path (infer.path: auto | unsloth | dynamic) and why, decided before any model loads:
    Unsloth's where it is the training backend and imports (unless infer.path=dynamic), else transformers'
    dynamic cache. Both stages take the same path from the same config and machine, whichever `run` and `stage`
    ask. R1HELPERS_GPU_GIB caps this process's GPU memory first (as on a smaller GPU)."""
    from r1helpers.modeling.local import model_dims

    cfg = validate(cfg)
    model_dims(cfg.model.name, cfg.model.revision)  # a model that is not there fails here, in one paragraph
    apply_gpu_cap(gpu_cap_gib())
    choice = choose_backend(cfg, try_import=False)
    requested, notes = cfg.infer.path, []
    weights = "4-bit" if choice.load_in_4bit else choice.dtype
    if choice.name == "unsloth" and requested != "dynamic":
        ok, why = unsloth_importable()  # imports Unsloth, which must come before transformers
        if ok:
            return GenerationPath("unsloth", ("infer.path=unsloth: " if requested == "unsloth" else "") +
                                  "Unsloth's inference path (FastLanguageModel.for_inference) on the training "
                                  f"weights ({weights}) + LoRA", choice.load_in_4bit, choice.dtype)
        notes.append(f"unsloth: {why}")
    elif requested == "unsloth":
        notes.append(f"unsloth: the backend is transformers ({choice.reason})")
    return GenerationPath("dynamic", ("infer.path=dynamic: " if requested == "dynamic" else "") +
                          f"transformers + peft on the training weights ({weights}) with the dynamic KV cache",
                          choice.load_in_4bit, choice.dtype, notes)


def gpu_cap_gib() -> float | None:
    """The cap in GiB that R1HELPERS_GPU_GIB puts on this process's GPU memory (None: no cap)."""
    text = os.environ.get(GPU_GIB_ENV, "").strip()
    return float(text) if text else None


def apply_gpu_cap(cap_gib: float | None) -> bool:
    """Make this process's allocator fail past `cap_gib`, as on a GPU of that size; True when a cap was set."""
    if cap_gib is None:
        return False
    import torch

    if not torch.cuda.is_available() or cap_gib >= torch.cuda.mem_get_info()[1] / GIB:
        return False
    torch.cuda.set_per_process_memory_fraction(cap_gib * GIB / torch.cuda.mem_get_info()[1])
    return True


def load_tokenizer_for(cfg: Config):
    """`modeling.load.load_tokenizer` with cfg.model's name, revision and pad token."""
    from r1helpers.modeling.load import load_tokenizer

    return load_tokenizer(cfg.model.name, revision=cfg.model.revision, pad_token=cfg.model.pad_token)


def model_kwargs(cfg: Config, choice: BackendChoice) -> dict[str, Any]:
    """The keyword arguments of `load_base` / `load_finetuned` for this config and backend choice."""
    return dict(name=cfg.model.name, max_seq_length=cfg.model.max_seq_length, load_in_4bit=choice.load_in_4bit,
                dtype=choice.dtype, backend=choice.name, revision=cfg.model.revision, pad_token=cfg.model.pad_token)


def load_base_for(cfg: Config, choice: BackendChoice | None = None) -> Loaded:
    """`modeling.load.load_base` with cfg.model's values and the backend and dtype `choose_backend` picks."""
    from r1helpers.modeling.load import load_base

    choice = choice or choose_backend(cfg)
    loaded = load_base(**model_kwargs(cfg, choice))
    loaded.backend = choice  # keeps the reason for the choice
    return loaded


def load_finetuned_for(cfg: Config, adapter_dir: Path, choice: BackendChoice | None = None) -> Loaded:
    """`modeling.load.load_finetuned` with cfg.model's values: the base model plus the adapter in `adapter_dir`."""
    from r1helpers.modeling.load import load_finetuned

    choice = choice or choose_backend(cfg)
    loaded = load_finetuned(adapter_dir, **model_kwargs(cfg, choice))
    loaded.backend = choice
    return loaded


def load_for_generation(cfg: Config, path: GenerationPath, adapter_dir: Path | None = None) -> Loaded:
    """The base model (or base + the adapter in `adapter_dir`) loaded for `path` and switched to inference."""
    from r1helpers.modeling.load import for_inference

    choice = path.backend_choice()
    loaded = load_finetuned_for(cfg, adapter_dir, choice) if adapter_dir else load_base_for(cfg, choice)
    return for_inference(loaded)


def matches(loaded: Loaded, path: GenerationPath) -> bool:
    """Whether `loaded` was loaded the way `path` loads (backend, 4-bit, dtype)."""
    b = loaded.backend
    return (b.name, b.load_in_4bit, b.dtype) == (path.backend, path.load_in_4bit, path.dtype)


def generation_kwargs(cfg: Config, plan: GenerationPlan | None = None) -> dict[str, Any]:
    """The decoding settings of `inference.generate.generate` from cfg.infer (the same for base and fine-tuned),
    with the planned batch (`plan`; else infer.batch_size, 0: generate plans it)."""
    i = cfg.infer
    return dict(max_new_tokens=i.max_new_tokens, batch_size=plan.batch_size if plan else i.batch_size,
                do_sample=i.do_sample, temperature=i.temperature, top_p=i.top_p, seed=i.seed, stream=i.stream)


def generation_plan(cfg: Config, loaded: Loaded, path: GenerationPath, questions: list[str]) -> GenerationPlan:
    """The batch: infer.batch_size when set, else planned from the GPU's memory now (weights loaded) and the
    model's KV cache at the longest prompt + infer.max_new_tokens (`inference.generate.plan_for_model`)."""
    mem = gpu_memory(gpu_cap_gib()) if loaded.device.type == "cuda" else None
    plan = plan_for_model(loaded.model, loaded.tokenizer, questions, max_new_tokens=cfg.infer.max_new_tokens,
                          kv_slack_tokens=path.kv_slack_tokens, gpu_gib=mem.total_gib if mem else None,
                          used_gib=mem.used_gib if mem else 0.0)
    if cfg.infer.batch_size > 0:
        plan.batch_size = min(cfg.infer.batch_size, max(1, len(questions)))
        plan.reason = (f"infer.batch_size={cfg.infer.batch_size} as set (0 plans it from memory; the plan: "
                       f"{plan.reason})")
    return plan


def set_up_decoding(cfg: Config, path: GenerationPath) -> dict[str, Any]:
    """What both generation stages switch on right before generating, so that they decode alike; returns it for
    the manifest. On Unsloth's path: its CUDA-graph decoding (`infer.unsloth_decode_graphs`)."""
    from r1helpers.modeling.load import unsloth_decode_graphs

    return {"unsloth_decode_graphs": unsloth_decode_graphs(cfg.infer.unsloth_decode_graphs)
            if path.path == "unsloth" else False}

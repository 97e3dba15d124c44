"""How the generation stages load and run a model, chosen from the config: the generation path (infer.path)
and why, the decoding settings, loading for a path with its fallbacks, and the set-up both stages apply
before generating, so that the base and the fine-tuned model decode the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from r1helpers.core.config import Config, validate
from r1helpers.core.hardware import BackendChoice, choose_backend, free_memory, unsloth_importable
from r1helpers.core.runs import Run
from r1helpers.inference.generate import plan_for_model
from r1helpers.inference.paths import (
    PATHS,
    GenerationPath,
    apply_gpu_cap,
    choose_generation_path,
    fallback_path,
    gpu_cap_gib,
    gpu_memory,
)
from r1helpers.inference.plan import GenerationPlan, kv_cache_bytes_for
from r1helpers.modeling.load import Loaded


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


GENERATION_OTHER = {"baseline": "finetuned", "finetuned": "baseline"}


def generation_path(cfg: Config, run: Run | None = None, stage: str | None = None, *,
                    prompt_tokens: int = 512) -> GenerationPath:
    """The generation path (infer.path; auto: `inference.paths.choose_generation_path` on this GPU) and why,
    decided before any model loads, from the model's config and the GPU's memory.

    Both generation stages must decode alike: with infer.path=auto, `stage` ("baseline" or "finetuned")
    follows the path the other stage recorded when its generations are current in `run`. R1HELPERS_GPU_GIB
    caps this process's GPU memory first (as on a smaller GPU). `prompt_tokens`: the longest prompt, for
    the KV cache a row needs (512 when not known: the medical questions' prompts are ~100-300 tokens).
    """
    from r1helpers.core.hardware import detect_hardware
    from r1helpers.modeling.load import estimated_weights_gib
    from r1helpers.modeling.local import model_dims

    cfg = validate(cfg)
    cap = gpu_cap_gib()
    apply_gpu_cap(cap)
    hw = detect_hardware()
    on_gpu = hw.device == "cuda"
    other = GENERATION_OTHER.get(stage or "")
    if cfg.infer.path == "auto" and run is not None and other and run.is_current(cfg, other):
        rec = (run.read_manifest(other) or {}).get("generation")
        if rec and rec.get("generation_path") in PATHS and (rec.get("device") == "cuda") == on_gpu:
            return GenerationPath.from_record(rec, f"the path {other} took ({rec.get('reason', '')}), so that both "
                                              "models are generated with the same weights and decoding")
    bc = choose_backend(cfg, hw, try_import=False)
    dims = model_dims(cfg.model.name, cfg.model.revision)  # without importing transformers (Unsloth comes first)
    half = bc.dtype if bc.dtype in ("bfloat16", "float16") else "bfloat16"
    mem = gpu_memory(cap, exclude_own=True)  # the same choice before and after this process loads a model
    kw = dict(on_gpu=on_gpu, dtype=bc.dtype, load_in_4bit=bc.load_in_4bit,
              gpu_gib=mem.total_gib if mem else None, used_gib=mem.used_gib if mem else 0.0,
              weights_16bit_gib=estimated_weights_gib(dims, False, half),
              kv_gib_per_row=kv_cache_bytes_for(dims, 2) * (prompt_tokens + cfg.infer.max_new_tokens) / 2**30,
              rows=len(cfg.infer.example_questions) + cfg.infer.num_eval_questions
              + (cfg.compare.mcq_rows if cfg.compare.mcq_generate and cfg.compare.mcq_source else 0))
    path = choose_generation_path(cfg.infer.path, backend=bc.name, **kw)
    if path.path == "unsloth":
        ok, why = unsloth_importable()
        if not ok:
            path = choose_generation_path(cfg.infer.path, backend="transformers", passed_over=[f"unsloth: {why}"], **kw)
    return path


def generation_kwargs(cfg: Config, plan: GenerationPlan | None = None,
                      path: GenerationPath | None = None) -> dict[str, Any]:
    """The decoding settings of `inference.generate.generate` from cfg.infer (the same for base and fine-tuned),
    with the planned batch (`plan`; else infer.batch_size, 0: generate plans it) and the path's KV cache."""
    i = cfg.infer
    kwargs = dict(max_new_tokens=i.max_new_tokens, batch_size=plan.batch_size if plan else i.batch_size,
                  do_sample=i.do_sample, temperature=i.temperature, top_p=i.top_p, seed=i.seed, stream=i.stream)
    if path is not None and path.cache_implementation:
        kwargs["cache_implementation"] = path.cache_implementation
    return kwargs


def generation_plan(cfg: Config, loaded: Loaded, path: GenerationPath, questions: list[str]) -> GenerationPlan:
    """The batch: infer.batch_size when set, else planned from the GPU's memory now (weights loaded) and the
    model's KV cache at the longest prompt + infer.max_new_tokens (`inference.generate.plan_for_model`)."""
    on_gpu = loaded.device.type == "cuda"
    mem = gpu_memory(gpu_cap_gib()) if on_gpu else None
    plan = plan_for_model(loaded.model, loaded.tokenizer, questions, max_new_tokens=cfg.infer.max_new_tokens,
                          path=path.path, kv_slack_tokens=path.kv_slack_tokens,
                          gpu_gib=mem.total_gib if mem else None, used_gib=mem.used_gib if mem else 0.0)
    if cfg.infer.batch_size > 0:
        plan.batch_size = min(cfg.infer.batch_size, max(1, len(questions)))
        plan.reason = (f"infer.batch_size={cfg.infer.batch_size} as set (0 plans it from memory; the plan: "
                       f"{plan.reason})")
    return plan


def _matches(loaded: Loaded, path: GenerationPath) -> bool:
    b = loaded.backend
    return (b.name, b.load_in_4bit, b.dtype) == (path.backend, path.load_in_4bit, path.dtype)


def _failure(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _fallback(cfg: Config, path: GenerationPath, why: str, failed_at: str) -> GenerationPath | None:
    b = choose_backend(cfg, try_import=False)
    return fallback_path(path, why, failed_at=failed_at, backend=b.name, dtype=b.dtype, load_in_4bit=b.load_in_4bit)


def load_for_generation(cfg: Config, path: GenerationPath,
                        adapter_dir: Path | None = None) -> tuple[Loaded, GenerationPath]:
    """The base model (or base + the adapter in `adapter_dir`) loaded for `path` and switched to inference;
    a path whose loading fails falls back (`inference.paths.fallback_path`), the reason kept in the path.
    A model that is not there is missing for every path and raises, except for static_16bit: a cache may
    hold only the 4-bit checkpoint that Unsloth loads."""
    from r1helpers.modeling.load import ModelError, for_inference

    if adapter_dir is not None and not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise ModelError(f"{adapter_dir}: no LoRA adapter there (adapter_config.json missing)")
    while True:
        try:
            if path.path == "unsloth":
                ok, why = unsloth_importable()
                if not ok:
                    raise RuntimeError(why)
            choice = path.backend_choice()
            loaded = load_finetuned_for(cfg, adapter_dir, choice) if adapter_dir else load_base_for(cfg, choice)
            loaded = for_inference(loaded)
            return loaded, path
        except Exception as e:
            if isinstance(e, (ModelError, OSError)) and path.path != "static_16bit":
                raise
            why = _failure(e)
            nxt = _fallback(cfg, path, why, "load")
            if nxt is None:
                raise
        # Out of the except block, so the failed attempt's tensors (held by its traceback) can be freed.
        print(f"generation path {path.path} did not load ({why[:200]}): trying {nxt.path}", flush=True)
        free_memory()
        path = nxt


def set_up_decoding(cfg: Config, loaded: Loaded, path: GenerationPath) -> dict[str, Any]:
    """What both generation stages do to the loaded model right before generating, so that the baseline and the
    fine-tuned model decode the same way however the notebook loaded them; returns what it set, for the manifest.

    - attention (`infer.attention`), for a model loaded with transformers: `grouped_decode` switches it to
      `r1helpers.inference.attention` (each key/value head read once a decoding step), `sdpa` back to
      transformers' own. Unsloth's path keeps its own attention.
    - on the static_16bit path, the LoRA weights in the weights' 16-bit type (`load.adapter_to_dtype`): peft
      holds them in float32, which ran the adapter's matmuls as float32 kernels in every decoding step.
    - on Unsloth's path, its CUDA-graph decoding with the KV cache sized up front (`infer.unsloth_decode_graphs`,
      `load.unsloth_decode_graphs`).
    """
    from r1helpers.inference.attention import NAME, use_grouped_decode
    from r1helpers.modeling.load import adapter_to_dtype, unsloth_decode_graphs

    inner = loaded.model.get_base_model() if hasattr(loaded.model, "get_base_model") else loaded.model
    if path.backend == "transformers":
        if cfg.infer.attention == "grouped_decode":
            use_grouped_decode(loaded.model)
        elif getattr(inner.config, "_attn_implementation", None) == NAME:
            inner.set_attn_implementation("sdpa")
    cast = adapter_to_dtype(loaded.model, path.dtype) if path.path == "static_16bit" else 0
    graphs = unsloth_decode_graphs(cfg.infer.unsloth_decode_graphs) if path.path == "unsloth" else False
    lora = next((p.dtype for n, p in loaded.model.named_parameters() if "lora_" in n), None)
    return {"attention": getattr(inner.config, "_attn_implementation", None),
            "adapter_weights": str(lora).replace("torch.", "") if lora else None, "adapter_tensors_cast": cast,
            "unsloth_decode_graphs": graphs}


def zero_adapter(cfg: Config, loaded: Loaded, path: GenerationPath) -> tuple[Loaded, Any]:
    """On the static_16bit path, the base model wrapped in a LoRA adapter of cfg.lora's shape whose B is zero,
    and a function that takes it off again (the model passed in is restored in place).

    B = 0 makes every adapter's contribution exactly zero, so the outputs are the base model's bit for bit,
    while the decoding step has the same graph as the fine-tuned model's in stage 04: that one's compilation
    then comes from torch's compile cache, and both models run the same kernels. Elsewhere (no compilation)
    and on any failure, the model is returned as it is.
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    if path.path != "static_16bit" or isinstance(loaded.model, PeftModel):
        return loaded, lambda: None
    lc = cfg.lora
    try:
        wrapped = get_peft_model(loaded.model, LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout,
                                                          bias=lc.bias, target_modules=list(lc.target_modules),
                                                          task_type="CAUSAL_LM"))
        wrapped.requires_grad_(False)
        wrapped.eval()
        if any(float(p.abs().max()) != 0.0 for n, p in wrapped.named_parameters() if "lora_B" in n):
            wrapped.unload()
            raise ValueError("lora_B was not initialised to zero")
    except Exception as e:
        print(f"baseline: generating without a zero adapter ({type(e).__name__}: {str(e)[:200]})", flush=True)
        return loaded, lambda: None
    return Loaded(wrapped, loaded.tokenizer, loaded.backend), wrapped.unload

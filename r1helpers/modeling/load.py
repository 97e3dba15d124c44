"""Load the model and tokenizer through one interface over two backends: Unsloth where it imports and the GPU
supports it, else transformers + peft (bitsandbytes 4-bit on CUDA, full precision on CPU)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r1helpers.core.hardware import BackendChoice
from r1helpers.modeling.local import resolve_model_path
# The pad token's helpers live in modeling.tokens; load.* names them as before.
from r1helpers.modeling.tokens import PAD_CANDIDATES, ModelError, choose_pad_token, ensure_pad_token  # noqa: F401


def load_tokenizer(name: str, revision: str | None = None, pad_token: str | None = None):
    """The model's tokenizer, with a pad token distinct from EOS (`pad_token`: model.pad_token; None picks one)
    and left padding (for batched generation).

        tok = load_tokenizer("unsloth/DeepSeek-R1-Distill-Llama-8B")
    """
    from transformers import AutoTokenizer

    path = resolve_model_path(name)
    try:
        tok = AutoTokenizer.from_pretrained(path, revision=revision)
    except OSError as e:
        raise ModelError(f"model.name={name!r}: tokenizer not found locally or on the Hub ({e})") from None
    ensure_pad_token(tok, pad_token)
    tok.padding_side = "left"  # generation pads on the left; the trainer's collator pads itself
    return tok


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    backend: BackendChoice

    @property
    def device(self):
        return next(self.model.parameters()).device


BACKENDS = ("unsloth", "transformers")
DTYPES = ("bfloat16", "float16", "float32")


def load_base(name: str, *, max_seq_length: int, load_in_4bit: bool, dtype: str, backend: str,
              revision: str | None = None, pad_token: str | None = None) -> Loaded:
    """The base model and its tokenizer, ready for LoRA or inference.

    `backend` ("unsloth" | "transformers") and `dtype` ("bfloat16" | "float16" | "float32") are decided values
    (`core.hardware.choose_backend(cfg)`). `load_in_4bit`: nf4 with bitsandbytes (CUDA only). `pad_token`
    (model.pad_token): None picks one that is not EOS. The generation config gets the tokenizer's pad and EOS ids.

        loaded = load_base("unsloth/DeepSeek-R1-Distill-Llama-8B", max_seq_length=2048,
                           load_in_4bit=True, dtype="float16", backend="unsloth")
    """
    if backend not in BACKENDS:
        raise ModelError(f"backend={backend!r}: use one of {BACKENDS} (choose_backend(cfg) decides \"auto\")")
    if dtype not in DTYPES:
        raise ModelError(f"dtype={dtype!r}: use one of {DTYPES} (choose_backend(cfg) decides \"auto\")")
    import torch

    from r1helpers.modeling.fast import language_model

    choice = BackendChoice(backend, f"load_base(backend={backend!r})", dtype, load_in_4bit)
    model, tok = language_model(backend).from_pretrained(
        model_name=resolve_model_path(name), max_seq_length=max_seq_length, dtype=getattr(torch, dtype),
        load_in_4bit=load_in_4bit, revision=revision)
    prepare_tokens(model, tok, pad_token)
    return Loaded(model, tok, choice)


def prepare_tokens(model, tokenizer, pad_token: str | None = None) -> str:
    """A pad token distinct from EOS (`ensure_pad_token`), left padding for batched generation, and the tokenizer's
    pad and EOS ids in the generation config (`keep_special_tokens`); returns the pad token's sentence.

        model, tokenizer = FastLanguageModel.from_pretrained(...)
        print(prepare_tokens(model, tokenizer))   # pad token set to '<|finetune_right_pad_id|>' (was EOS)
    """
    said = ensure_pad_token(tokenizer, pad_token)
    tokenizer.padding_side = "left"
    keep_special_tokens(model, tokenizer)
    return said


def keep_special_tokens(model, tokenizer) -> None:
    """The generation config takes the tokenizer's pad id, and its EOS id (which every training example ends
    with) added to the EOS ids it lists (Llama-3 instruct models stop at either)."""
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    eos = model.generation_config.eos_token_id
    listed = eos if isinstance(eos, list) else ([] if eos is None else [eos])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in listed:
        model.generation_config.eos_token_id = ([*listed, tokenizer.eos_token_id] if listed
                                                else tokenizer.eos_token_id)


def add_lora(model, *, r: int, alpha: int, target_modules: list[str], dropout: float = 0.0, bias: str = "none",
             random_state: int = 3407, gradient_checkpointing: str = "false", backend: str = "transformers",
             load_in_4bit: bool = False, max_seq_length: int = 2048):
    """Wrap a base model with trainable LoRA adapters (W + (alpha / r) * B @ A, B zero at first, so training
    starts from the base model's outputs); returns the peft model, the base's weights frozen.
    `gradient_checkpointing`: "unsloth" (Unsloth's offloaded variant; plain with transformers) | "true" | "false".
    """
    from r1helpers.modeling.fast import language_model

    gc = str(gradient_checkpointing).lower()
    return language_model(backend).get_peft_model(
        model, r=r, lora_alpha=alpha, lora_dropout=dropout, bias=bias, target_modules=list(target_modules),
        random_state=random_state, use_gradient_checkpointing={"unsloth": "unsloth", "true": True, "false": False}[gc],
        use_rslora=False, loftq_config=None, max_seq_length=max_seq_length)


def lora_shapes(model_config) -> dict[str, tuple[int, int]]:
    """(in, out) features of each linear layer of one Llama decoder block, from the model's config."""
    hidden, inter = model_config.hidden_size, model_config.intermediate_size
    heads = model_config.num_attention_heads
    head_dim = getattr(model_config, "head_dim", None) or hidden // heads
    kv = getattr(model_config, "num_key_value_heads", None) or heads
    return {"q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv * head_dim), "v_proj": (hidden, kv * head_dim),
            "o_proj": (heads * head_dim, hidden), "gate_proj": (hidden, inter), "up_proj": (hidden, inter),
            "down_proj": (inter, hidden)}


def expected_lora_parameters(model_config, r: int, target_modules: list[str]) -> int:
    """Trainable numbers add_lora creates: r x (in + out) for each targeted matrix of every block."""
    shapes = lora_shapes(model_config)
    unknown = [m for m in target_modules if m not in shapes]
    if unknown:
        raise ModelError(f"lora.target_modules: {unknown} are not linear layers of a Llama block ({list(shapes)})")
    per_block = sum(r * (shapes[m][0] + shapes[m][1]) for m in target_modules)
    return per_block * model_config.num_hidden_layers


def estimated_weights_gib(model_config, load_in_4bit: bool, dtype: str = "bfloat16") -> float:
    """GPU memory the weights take once loaded, from the model's shapes: the blocks' linear layers in
    4-bit (half a byte a weight, plus ~6% of quantization constants) or in `dtype`, the embeddings and
    output head in 16-bit. A Llama-3.1-8B in 4-bit: ~5.4 GiB (BENCHMARKS.md measured 5.7-6.5 allocated after loading)."""
    shapes = lora_shapes(model_config)
    linear = sum(i * o for i, o in shapes.values()) * model_config.num_hidden_layers
    tied = getattr(model_config, "tie_word_embeddings", False)
    embeddings = model_config.vocab_size * model_config.hidden_size * (1 if tied else 2)
    width = {"float32": 4, "bfloat16": 2, "float16": 2}.get(dtype, 2)
    linear_bytes = linear * 0.5 * 1.06 if load_in_4bit else linear * width
    return (linear_bytes + embeddings * (2 if load_in_4bit else width)) / 2**30


def load_finetuned(adapter_dir: str | Path, *, name: str, max_seq_length: int, load_in_4bit: bool, dtype: str,
                   backend: str, revision: str | None = None, pad_token: str | None = None) -> Loaded:
    """The base model (same keyword arguments as `load_base`) plus a saved LoRA adapter, for inference."""
    from peft import PeftModel

    check_adapter_files(adapter_dir)  # before the base model loads: a cut-off file is named, not a reader's error
    base = load_base(name, max_seq_length=max_seq_length, load_in_4bit=load_in_4bit, dtype=dtype, backend=backend,
                     revision=revision, pad_token=pad_token)
    model = PeftModel.from_pretrained(base.model, str(adapter_dir))
    return Loaded(model, base.tokenizer, base.backend)


def check_adapter_files(adapter_dir: str | Path) -> None:
    """Refuse a saved adapter cut short (a full disk, a copy interrupted) with its path and the way to train it
    again, instead of safetensors' "incomplete metadata"."""
    adapter_dir = Path(adapter_dir)
    retrain = (f"Delete {adapter_dir} and run stage 03 again (it trains the adapter again, resuming from the last "
               "complete checkpoint in train/checkpoints), then this stage.")
    weights = sorted(adapter_dir.glob("adapter_model.*"))
    if not weights or not (adapter_dir / "adapter_config.json").is_file():
        raise ModelError(f"{adapter_dir}: no adapter_model.safetensors or adapter_config.json, so it is not a saved "
                         f"LoRA adapter. {retrain}")
    for file in weights:
        if file.suffix != ".safetensors":
            continue
        try:
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    f.get_slice(key)
        except Exception as e:
            raise ModelError(f"{file} is damaged ({type(e).__name__}: {' '.join(str(e).split())[:160]}): the "
                             f"saved adapter was cut short or altered. {retrain}") from None


def for_inference(loaded: Loaded) -> Loaded:
    """Switch to inference: Unsloth's fast generation path, eval mode and the KV cache."""
    if loaded.backend.name == "unsloth":
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(loaded.model)
    loaded.model.eval()
    loaded.model.config.use_cache = True
    return loaded


# Unsloth's CUDA-graph decoding (unsloth 2026.10), which Unsloth itself turns on only in its RL trainers: each
# decoding step replayed and the KV cache sized once for prompt + max_new_tokens (BENCHMARKS.md: 414 against 327
# decoded tokens/s on a T4's memory).
DECODE_GRAPHS = "unsloth.models._decode_graphs"


def unsloth_decode_graphs(on: bool) -> bool:
    """Switch Unsloth's CUDA-graph decoding on (or back to Unsloth's default) for later generate() calls; returns
    whether it is on. False where Unsloth is not imported or has no such switch."""
    import importlib
    import os
    import sys

    if "unsloth" not in sys.modules:  # importing Unsloth here would patch transformers for the whole process
        return False
    try:
        graphs = importlib.import_module(DECODE_GRAPHS)
    except ImportError:
        return False
    if not (hasattr(graphs, "ENABLED") and hasattr(graphs, "PREALLOC")):
        return False
    graphs.ENABLED = True if on else None  # None: Unsloth's own choice (RL trainers only)
    graphs.PREALLOC = on or os.environ.get("UNSLOTH_DECODE_GRAPH_PREALLOC", "0") == "1"  # the user's own setting
    return on


def release_decode_memory(model) -> dict[str, Any]:
    """Free the KV cache and captured steps Unsloth's generate() leaves on the model's layers; returns Unsloth's
    count of captured and replayed steps ({} for a model that did not generate through Unsloth)."""
    import sys

    graphs = sys.modules.get(DECODE_GRAPHS)
    if graphs is None or not hasattr(graphs, "release_for_training"):
        return {}
    counts = next(filter(None, map(graphs.stats, model.modules())), {}) if hasattr(graphs, "stats") else {}
    graphs.release_for_training(model)
    return {k: counts[k] for k in ("captures", "replays", "eager_steps") if k in counts}


def trainable_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total

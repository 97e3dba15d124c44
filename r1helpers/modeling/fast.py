"""Unsloth's `FastLanguageModel` where it runs, else the same four calls on transformers + peft, so the notebooks'
cells read as Unsloth's tutorials write them on every machine:

    FastLanguageModel = language_model(backend)        # backend: choose_backend(cfg).name
    model, tokenizer = FastLanguageModel.from_pretrained(model_name=..., max_seq_length=2048,
                                                         dtype=torch.bfloat16, load_in_4bit=True)
    model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=16, lora_dropout=0, ...)
    FastLanguageModel.for_inference(model)
"""

from __future__ import annotations

from typing import Any


def language_model(backend: str):
    """`unsloth.FastLanguageModel` for backend "unsloth", else `TransformersLanguageModel` (same calls)."""
    if backend == "unsloth":
        from unsloth import FastLanguageModel

        return FastLanguageModel
    return TransformersLanguageModel


class TransformersLanguageModel:
    """Unsloth's `FastLanguageModel` signatures on transformers + peft (a CPU, a P100, DDP); arguments this
    backend has no use for (`use_rslora`, `loftq_config`, `token`, ...) are accepted and ignored."""

    @staticmethod
    def from_pretrained(model_name: str, max_seq_length: int = 2048, dtype=None, load_in_4bit: bool = False,
                        revision: str | None = None, **_: Any):
        """(model, tokenizer): `AutoModelForCausalLM` in `dtype` (a torch dtype; None: float32), nf4 4-bit with
        bitsandbytes when `load_in_4bit` (CUDA only), on this process's GPU when there is one."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from r1helpers.modeling.tokens import ModelError

        if load_in_4bit and not torch.cuda.is_available():
            raise ModelError("load_in_4bit=True needs a CUDA GPU (bitsandbytes); load in full precision on CPU")
        kwargs: dict[str, Any] = {"dtype": dtype or torch.float32, "revision": revision}
        if load_in_4bit:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=kwargs["dtype"])
        if torch.cuda.is_available():
            from r1helpers.core.ddp import cuda_device

            kwargs["device_map"] = {"": cuda_device()}  # under DDP: this process's GPU (LOCAL_RANK)
        try:
            model = AutoModelForCausalLM.from_pretrained(model_name, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(model_name, revision=revision)
        except OSError as e:
            raise ModelError(f"model.name={model_name!r}: not found locally or on the Hub ({e})") from None
        return model, tokenizer

    @staticmethod
    def get_peft_model(model, r: int = 16, target_modules=None, lora_alpha: int = 16, lora_dropout: float = 0.0,
                       bias: str = "none", use_gradient_checkpointing: bool | str = False, random_state: int = 3407,
                       **_: Any):
        """The peft model: LoRA on `target_modules`, the base frozen, a 4-bit base prepared for k-bit training.
        `use_gradient_checkpointing` "unsloth" means plain, non-reentrant checkpointing here (the reentrant kind
        breaks DDP's gradient hooks)."""
        import torch
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        checkpointing = use_gradient_checkpointing not in (False, None, "false")
        if getattr(model, "is_loaded_in_4bit", False):
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing,
                                                    gradient_checkpointing_kwargs={"use_reentrant": False})
        elif checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        torch.manual_seed(random_state)
        return get_peft_model(model, LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, bias=bias,
                                                target_modules=list(target_modules or []), task_type="CAUSAL_LM"))

    @staticmethod
    def for_inference(model):
        """Evaluation mode with the KV cache on."""
        model.eval()
        model.config.use_cache = True
        return model

    @staticmethod
    def for_training(model):
        model.train()
        return model

"""A tiny Llama-architecture model for the CPU profile (`r1helpers/tiny-llama`), built locally without the Hub:
a byte-level BPE tokenizer trained on the bundled sample with the Llama-3 pre-tokenizer and the R1-distill
special tokens, and a randomly initialised `LlamaForCausalLM`. LoRA, SFT, generation, merge and GGUF run on it
exactly as on the 8B model."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<|finetune_right_pad_id|>"
THINK_TOKENS = ["<think>", "</think>"]
# Llama 3's pre-tokenizer split pattern, so GGUF writers can call it "llama-bpe".
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)
BUILDER_VERSION = "2"
# initializer_range: with the default 0.02 the final RMSNorm caps every logit near 2.5, so a LoRA on
# this random model cannot move the loss much below log(vocab); 0.1 leaves it room to learn.
DEFAULT_DIMS = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, initializer_range=0.1)


def cache_dir() -> Path:
    return Path(os.environ.get("R1HELPERS_CACHE", Path.home() / ".cache" / "r1helpers")).expanduser()


def _corpus() -> list[str]:
    from r1helpers.core import prompts
    from r1helpers.data_sources import load_sample_rows

    texts = []
    for row in load_sample_rows():
        texts.append(prompts.build_prompt(row["Question"]) + prompts.build_completion(row["Complex_CoT"], row["Response"]))
    return texts


def build_tokenizer(texts: list[str], vocab_size: int = 2048):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens(THINK_TOKENS)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, padding_side="left",
        model_max_length=131072, clean_up_tokenization_spaces=False,
    )


def build_tiny_model(out_dir: Path, seed: int = 3407, **dims) -> Path:
    """Write a tokenizer and a random tiny Llama into `out_dir` (replaced atomically)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from r1helpers.core.runs import atomic_dir

    tokenizer = build_tokenizer(_corpus())
    d = {**DEFAULT_DIMS, **dims}
    config = LlamaConfig(
        vocab_size=len(tokenizer), max_position_embeddings=4096, rope_theta=500000.0,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, torch_dtype="float32", **d,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=False,
    )
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out_dir


def ensure_tiny_model() -> Path:
    """The tiny model's folder, built on first use and keyed by the sample data it was trained on."""
    from r1helpers.data_sources import sample_path

    key = hashlib.sha256(sample_path().read_bytes() + BUILDER_VERSION.encode()).hexdigest()[:10]
    out = cache_dir() / f"tiny-llama-{key}"
    if not (out / "config.json").is_file():
        build_tiny_model(out)
    return out


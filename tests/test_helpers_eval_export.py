"""The plain helpers of stages 04 and 05 (docs/helpers-eval-export.md), called with plain arguments.

Each test checks a property a reader relies on, on hand-made data or the tiny local model:

    HF_HUB_OFFLINE=1 PYTHONPATH=$PWD .venv/bin/python -m pytest -q tests/test_helpers_eval_export.py
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from r1helpers import data_sources
from r1helpers.core import prompts
from r1helpers.evaluate import compare, metrics


def words(text: str) -> int:
    return len(text.split())


# ---- metrics: no model ----------------------------------------------------------------------------

def test_bootstrap_ci_of_constant_differences_is_that_constant():
    lo, hi = metrics.bootstrap_ci([0.3] * 12, samples=200, seed=1)
    assert lo == pytest.approx(0.3) and hi == pytest.approx(0.3)
    lo, hi = metrics.bootstrap_ci([-1.0, 1.0] * 20, samples=500, seed=1)
    assert lo < 0 < hi, "a difference that goes both ways gives an interval around zero"
    assert metrics.bootstrap_ci([], samples=100, seed=1) is None


def test_score_generation_reads_think_eos_and_the_limit():
    closed = metrics.score_generation("Reasoning here.\n</think>\nAnswer text.", True, "Answer text.", words)
    assert closed["think_closed"] and closed["eos"] and not closed["cut_at_limit"]
    assert closed["answer_tokens"] == 2 and closed["rouge_l"] == pytest.approx(1.0)
    cut = metrics.score_generation("still thinking and thinking", False, "Answer text.", words, new_tokens=48)
    assert not cut["think_closed"] and cut["cut_at_limit"] and cut["empty_answer"]
    assert cut["reasoning_tokens"] == 48 and cut["rouge_l"] == 0.0
    assert metrics.score_generation("x\n</think>\ny", True, None, words)["rouge_l"] is None


def test_rouge_l_is_word_lcs_f1():
    assert metrics.rouge_l("a b c d", "a c e") == pytest.approx(4 / 7)
    assert metrics.rouge_l("", "a") == 0.0


# ---- build_comparison: hand-made records -------------------------------------------------------------

def _record(qid: str, question: str, ref: str | None, generated: str, finished: bool = True) -> dict:
    p = prompts.split_output(generated)
    return {"id": qid, "question": question, "reference_cot": None, "reference_answer": ref, "generated": generated,
            "reasoning": p.reasoning, "answer": p.answer, "think_closed": p.think_closed, "finished": finished,
            "new_tokens": words(generated) + int(finished)}


def _fit_better_answer_worse(n: int = 8):
    """The fine-tuned side fits the references better (lower NLL) but writes worse answers."""
    qs = [(f"eval-{k}", f"Question {k}?", f"The answer {k} is nitroglycerin.") for k in range(n)]
    base = [_record(q, t, r, f"Think.\n</think>\n{r}") for q, t, r in qs]
    tuned = [_record(q, t, r, "Think about it at length", finished=False) for q, t, r in qs]
    nll = {m: [{"id": q, "cot_nll": 2.0 + d + 0.01 * k, "answer_nll": 3.0 + d, "completion_nll": 2.5 + d + 0.02 * k}
               for k, (q, _, _) in enumerate(qs)] for m, d in (("base", 0.0), ("tuned", -0.3))}
    return nll, base, tuned


def test_build_comparison_verdict_follows_the_primary_metric():
    nll, base, tuned = _fit_better_answer_worse()
    by_nll = compare.build_comparison(nll, base, tuned, words, primary_metric="completion_nll",
                                      bootstrap_samples=300, seed=0, settings={"model": "tiny"})
    by_rouge = compare.build_comparison(nll, base, tuned, words, primary_metric="rouge_l",
                                        bootstrap_samples=300, seed=0, settings={"model": "tiny"})
    # Without a multiple-choice set nothing says whether answers are right: never "helped" or "hurt".
    assert by_nll["verdict"] == by_rouge["verdict"] == "correctness not measured"
    assert by_nll["headline"].startswith("Fits the held-out data better (completion NLL")
    assert by_rouge["headline"].startswith("Answers further from the references (ROUGE-L")
    assert compare.metric(by_rouge, "rouge_l")["verdict"] == "worse"
    assert compare.metric(by_nll, "completion_nll")["delta"] == pytest.approx(-0.3)
    assert compare.metric(by_nll, "think_closed")["before"] == 1.0 and compare.metric(by_nll, "think_closed")["after"] == 0.0
    s = by_nll["settings"]
    assert s["model"] == "tiny" and s["bootstrap_samples"] == 300 and s["held_out_questions_generated"] == 8
    with pytest.raises(ValueError, match="primary_metric"):
        compare.build_comparison(nll, base, tuned, words, primary_metric="answer_tokens")


def test_key_numbers_quote_the_primary_metric_and_the_rates():
    nll, base, tuned = _fit_better_answer_worse()
    result = compare.build_comparison(nll, base, tuned, words, bootstrap_samples=200, seed=0)
    k = compare.key_numbers(result)
    p = compare.metric(result, "completion_nll")
    assert k["verdict"] == "correctness not measured" and k["fit: delta"] == p["delta"]
    assert [k["fit: 95% CI low"], k["fit: 95% CI high"]] == p["ci"] and k["fit: verdict"] == "better"
    assert k["behaviour: closed </think> rate before"] == 1.0 and k["behaviour: closed </think> rate after"] == 0.0
    assert k["behaviour: EOS rate after"] == 0.0 and k["behaviour: n (held-out questions generated)"] == 8
    assert k["correctness: accuracy by likelihood"] == "not measured"


def test_write_outputs_round_trips_the_comparison(tmp_path):
    nll, base, tuned = _fit_better_answer_worse(4)
    result = compare.build_comparison(nll, base, tuned, words, bootstrap_samples=100, seed=0,
                                      settings={"model": "tiny"})
    assert json.loads(compare.write_outputs(result, tmp_path).read_text()) == json.loads(json.dumps(result))


# ---- teacher-forced NLL on the tiny model -----------------------------------------------------------

@pytest.fixture(scope="module")
def rows():
    return [{**r, "source_row": k} for k, r in enumerate(data_sources.load_sample_rows()[:3])]


@pytest.fixture(scope="module")
def tiny(cpu_cfg, tiny_model_dir):
    from r1helpers.inference.choose import load_base_for

    return load_base_for(cpu_cfg)


@pytest.mark.slow
def test_completion_nll_is_the_trainers_loss_on_the_completion(tiny, rows):
    import torch

    scores = compare.completion_nll(tiny.model, tiny.tokenizer, rows, max_len=4096)
    for row, s in zip(rows, scores):
        ids, prompt_len = prompts.encode_example(tiny.tokenizer, row["Question"], row["Complex_CoT"], row["Response"])
        labels = torch.tensor([[-100] * prompt_len + ids[prompt_len:]])
        with torch.no_grad():
            loss = tiny.model(input_ids=torch.tensor([ids]), labels=labels).loss.item()
        assert s["completion_nll"] == pytest.approx(loss, rel=1e-4)
        assert s["id"] == f"eval-{row['source_row']}" and s["cot_tokens"] > 0 and s["answer_tokens"] > 0
    row = rows[0]
    _, prompt_len = prompts.encode_example(tiny.tokenizer, row["Question"], row["Complex_CoT"], row["Response"])
    cut = compare.completion_nll(tiny.model, tiny.tokenizer, [row], max_len=prompt_len + 4)[0]
    assert cut["answer_nll"] is None and cut["answer_tokens"] == 0, "an answer cut away entirely scores None"
    assert cut["cot_nll"] is not None and cut["cot_tokens"] <= 4


@pytest.mark.slow
def test_teacher_forced_with_the_adapter_off_is_the_base_model(cpu_cfg, tiny, rows):
    import torch
    from peft import LoraConfig, get_peft_model

    plain = compare.completion_nll(tiny.model, tiny.tokenizer, rows, 4096)
    peft_model = get_peft_model(tiny.model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    try:
        zero = compare.teacher_forced(peft_model, tiny.tokenizer, rows, 4096)
        assert [r["completion_nll"] for r in zero["tuned"]] == pytest.approx([r["completion_nll"] for r in plain])
        torch.manual_seed(0)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 0.2)
        moved = compare.teacher_forced(peft_model, tiny.tokenizer, rows, 4096)
        assert [r["completion_nll"] for r in moved["base"]] == pytest.approx([r["completion_nll"] for r in plain])
        assert [r["completion_nll"] for r in moved["tuned"]] != pytest.approx([r["completion_nll"] for r in plain])
    finally:
        peft_model.unload()


# ---- export helpers on the tiny model ---------------------------------------------------------------

@pytest.fixture(scope="module")
def base_dir(cpu_cfg, tiny_model_dir):
    from r1helpers.modeling.local import resolve_model_path

    return Path(resolve_model_path(cpu_cfg.model.name))


def _save_adapter(base_dir: Path, folder: Path, std: float) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                                "gate_proj", "up_proj", "down_proj"]))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, std)
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def adapter(base_dir, tmp_path_factory):
    return _save_adapter(base_dir, tmp_path_factory.mktemp("adapter"), 0.05)


@pytest.fixture(scope="module")
def export_tok(tokenizer):
    from r1helpers.export.files import with_chat_template

    return with_chat_template(tokenizer)


@pytest.fixture(scope="module")
def probe_ids(tokenizer):
    return [prompts.encode_prompt(tokenizer, q) for q in ("What is fever?", "Which drug treats angina?")]


@pytest.fixture(scope="module")
def merged(base_dir, adapter, export_tok, tmp_path_factory):
    from r1helpers.export.files import write_merged

    out = tmp_path_factory.mktemp("merged")
    return out, write_merged(base_dir, adapter, out, export_tok, "float16")


@pytest.mark.slow
def test_merge_lora_output_matches_base_plus_adapter_logits(base_dir, adapter, tmp_path, probe_ids):
    from r1helpers.export import checks
    from r1helpers.export.merge import merge_lora

    report = merge_lora(base_dir, adapter, tmp_path, "float16")
    assert report.dtype == "float16" and report.merged_tensors > 0
    probes = checks.adapter_reference(base_dir, adapter, probe_ids, 8)
    result = checks.check_merged(tmp_path, probes)
    assert result["passed"] and result["greedy_identical"] and result["relative_logit_diff"] <= 0.02
    base = checks.reference_probes(checks.load_float32(base_dir), probe_ids, 8)
    assert checks.compare(base, [p.logits for p in probes], [p.greedy for p in probes])["max_abs_logit_diff"] > 0, \
        "the adapter changes the logits, so the check above is not trivial"
    with pytest.raises(checks.ExportCheckError):
        checks.check_merged(base_dir, probes)


def test_write_merged_adds_tokenizer_and_pad_distinct_from_eos(merged, export_tok):
    out, result = merged
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["pad_token_id"] == export_tok.pad_token_id != gen["eos_token_id"]
    assert result["merge"]["dtype"] == "float16" and result["weights"]["max_error_in_rounding_units"] <= 1.0
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out))
    chat = [{"role": "user", "content": "What is fever?"}]
    assert tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) == \
        tok.bos_token + prompts.build_prompt("What is fever?")


@pytest.mark.slow
def test_weight_check_counts_lora_changes_a_bf16_merge_erases(base_dir, tmp_path):
    from r1helpers.export.merge import merge_lora, weight_check

    small = _save_adapter(base_dir, tmp_path / "small", 1e-7)
    (tmp_path / "m").mkdir()
    merge_lora(base_dir, small, tmp_path / "m", "bfloat16")
    w = weight_check(base_dir, small, tmp_path / "m")
    assert w["weights_changed_by_lora"] > 0 and w["lora_changes_lost_to_rounding"] > 0.9
    big = _save_adapter(base_dir, tmp_path / "big", 0.05)
    (tmp_path / "m2").mkdir()
    merge_lora(base_dir, big, tmp_path / "m2", "bfloat16")
    assert weight_check(base_dir, big, tmp_path / "m2")["lora_changes_lost_to_rounding"] < 0.5


def test_write_adapter_loads_with_peft(base_dir, adapter, export_tok, tmp_path, probe_ids):
    import torch
    from peft import PeftModel

    from r1helpers.export import checks
    from r1helpers.export.files import write_adapter

    write_adapter(adapter, tmp_path, export_tok)
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json"} <= {p.name for p in tmp_path.iterdir()}
    model = PeftModel.from_pretrained(checks.load_float32(base_dir), str(tmp_path)).eval()
    ref = checks.adapter_reference(base_dir, adapter, probe_ids[:1], 4)[0]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ref.sequence])).logits[0].numpy()
    assert np.abs(logits - ref.logits).max() < 1e-4


@pytest.mark.slow
def test_write_gguf_reads_back_like_the_merged_model(merged, probe_ids, export_tok, tmp_path, monkeypatch):
    from r1helpers.export import checks, gguf_checks
    from r1helpers.export.gguf import read_metadata, write_gguf

    out, _ = merged
    path = write_gguf(out, tmp_path / "m-F16.gguf", "f16", "m", chat_template=prompts.CHAT_TEMPLATE)
    assert read_metadata(path)["tokenizer.chat_template"] == prompts.CHAT_TEMPLATE
    probes = checks.reference_probes(checks.load_float32(out), probe_ids, 8)
    result = gguf_checks.check_gguf_transformers(path, probes, "f16")
    assert result["passed"] and result["greedy_identical"]
    assert gguf_checks.gguf_metadata_check(path, export_tok, "What is fever?")["tokens"] >= len(export_tok)
    assert gguf_checks.gguf_weight_check(path, out)["tensors"] > 0


def test_dequantize_rows_gives_gguf_pys_numbers():
    """Some rows at once, as the weight check takes them: the same float32 numbers as gguf-py for each type."""
    import gguf

    from r1helpers.export import gguf_checks

    weights = np.random.default_rng(0).standard_normal((20, 32)).astype(np.float32)
    for kind in ("Q8_0", "Q4_0", "BF16", "F16", "F32"):
        qtype = gguf.GGMLQuantizationType[kind]
        stored = gguf.quants.quantize(weights, qtype)
        assert np.array_equal(gguf_checks.dequantize_rows(stored[5:17], qtype),
                              gguf.quants.dequantize(stored, qtype)[5:17]), kind


def test_gguf_weight_check_refuses_weights_that_are_not_the_merged_ones(merged, tiny_model_dir, tmp_path):
    """The merged model's GGUF, checked against the base weights (the adapter's changes missing), is refused,
    naming the first tensor in the file's order, with any number of threads."""
    from r1helpers.export import checks, gguf_checks
    from r1helpers.export.gguf import write_gguf

    out, _ = merged
    path = write_gguf(out, tmp_path / "m-F16.gguf", "f16", "m", chat_template=prompts.CHAT_TEMPLATE)
    said = []
    for workers in (1, 3):
        with pytest.raises(checks.ExportCheckError, match=r"is off by .* RMS") as e:
            gguf_checks.gguf_weight_check(path, Path(tiny_model_dir), workers=workers)
        said.append(str(e.value))
    assert said[0] == said[1]
    one, three = (gguf_checks.gguf_weight_check(path, out, workers=w) for w in (1, 3))
    assert one == three


@pytest.mark.slow
def test_merge_and_checks_in_small_pieces_equal_whole_tensors(base_dir, adapter, merged, tmp_path, monkeypatch):
    """merge_lora, weight_check and gguf_weight_check go a few rows at a time (CHUNK_NUMBERS); with pieces of ~1,000
    numbers (every tiny tensor in many pieces, as the 8B's are) the merged file is the same byte for byte, both
    checks report the same, and a single wrong weight in a middle piece is still found."""
    from safetensors.torch import load_file, save_file

    from r1helpers.export import checks, gguf_checks, merge
    from r1helpers.export.gguf import write_gguf

    assert list(merge.row_chunks(10, 300, 1000)) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert list(merge.row_chunks(2, 5000, 1000)) == [(0, 1), (1, 2)]  # a row is the smallest piece
    out, _ = merged
    whole_check = merge.weight_check(base_dir, adapter, out)
    gguf_path = write_gguf(out, tmp_path / "m-Q8_0.gguf", "q8_0", "m", chat_template=prompts.CHAT_TEMPLATE)
    whole_gguf = gguf_checks.gguf_weight_check(gguf_path, out)
    monkeypatch.setattr(merge, "CHUNK_NUMBERS", 1000)
    (tmp_path / "m").mkdir()
    merge.merge_lora(base_dir, adapter, tmp_path / "m", "float16")
    name = "model.safetensors"
    assert (tmp_path / "m" / name).read_bytes() == (out / name).read_bytes()
    assert merge.weight_check(base_dir, adapter, tmp_path / "m") == whole_check
    pieces = gguf_checks.gguf_weight_check(gguf_path, out, workers=3)
    assert pieces["tensors"] == whole_gguf["tensors"]
    assert pieces["worst_relative_rms_error_by_type"] == pytest.approx(whole_gguf["worst_relative_rms_error_by_type"],
                                                                       rel=1e-4)
    weights = load_file(str(out / name))
    key = "model.layers.1.mlp.down_proj.weight"
    rows = weights[key].shape[0]
    weights[key][rows // 2, 3] += 0.5  # one weight, in a piece in the middle
    save_file(weights, str(tmp_path / "m" / name), metadata={"format": "pt"})
    with pytest.raises(merge.MergeError, match="units of 16-bit rounding"):
        merge.weight_check(base_dir, adapter, tmp_path / "m")
    weights[key][rows // 2] += 0.5  # the whole row: the GGUF (of the right weights) is now off in that piece
    save_file(weights, str(tmp_path / "m" / name), metadata={"format": "pt"})
    with pytest.raises(checks.ExportCheckError, match=r"blk\.1\.ffn_down\.weight \(Q8_0\) is off by"):
        gguf_checks.gguf_weight_check(gguf_path, tmp_path / "m", workers=3)


def test_modelfile_holds_the_training_prompt():
    from r1helpers.export.gguf import modelfile, source_kind

    text = modelfile("m-Q8_0.gguf")
    head, _, tail = prompts.build_prompt("QUESTION").partition("QUESTION")
    assert text.startswith("FROM ./m-Q8_0.gguf\n") and f"{head}{{{{ .Prompt }}}}{tail}" in text
    assert source_kind("bfloat16") == "bf16" and source_kind("float16") == "f16"


# ---- space, base, hub, summary: no model run -------------------------------------------------------------

def test_plan_sizes_and_check_space(tmp_path, monkeypatch):
    from r1helpers.export import space

    items = space.plan_sizes(tmp_path, 1_000_000, 5_000, keep_merged=False, gguf_kinds=["q8_0", "q4_k_m"],
                             merged_dtype="bfloat16")
    sizes = {i.what: i.bytes for i in items}
    assert sizes == {"adapter": 5_000, "merged 16-bit (temporary, for GGUF)": 2_000_000, "GGUF q8_0": 1_062_500,
                     "GGUF q4_k_m": 620_000, "GGUF bf16 (temporary, quantized to q4_k_m)": 2_000_000}
    report = space.check_space(items)
    assert report[str(tmp_path)]["needed_bytes"] > sum(sizes.values())
    monkeypatch.setattr(space, "free_bytes", lambda path: 1_000)
    with pytest.raises(space.ExportSpaceError, match="Nothing was written"):
        space.check_space(items)
    assert space.dir_bytes(tmp_path) == 0


def test_locate_base_counts_the_tiny_models_parameters(base_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from r1helpers.export.base import fetch_base, locate_base

    found = locate_base(str(base_dir))
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    assert found.folder == base_dir and found.download_bytes == 0
    assert found.parameters == model.num_parameters()
    assert fetch_base(found) == base_dir


def test_model_card_quotes_the_comparison_and_warns(tmp_path):
    from r1helpers.export import hub

    (tmp_path / "comparison.json").write_text(json.dumps({
        "headline": "Fine-tuning helped: test.", "verdict": "helped", "primary_metric": "completion_nll",
        "settings": {"held_out_rows_scored": 16, "held_out_questions_generated": 3},
        "metrics": [{"key": "completion_nll", "label": "completion NLL", "n": 16, "before": 2.5, "after": 2.3,
                     "delta": -0.2, "ci": [-0.25, -0.15], "verdict": "better"}]}))
    summary = hub.comparison_summary(tmp_path / "comparison.json")
    card = hub.model_card("gguf", "you/r1-GGUF", [("m-Q8_0.gguf", 2**20)], base_model="org/base",
                          recipe=["- LoRA: r=16"], dataset="org/data", train_rows=10, max_steps=5, comparison=summary)
    assert card.startswith("---\nbase_model: org/base\nlibrary_name: gguf\n") and "- org/data" in card
    assert "Fine-tuning helped: test." in card and "| completion NLL | 16 | 2.5 | 2.3 | -0.2 | [-0.25, -0.15] |" in card
    assert "**Not for clinical decisions.**" in card and "Trained on 10 examples for 5 steps" in card
    assert "- LoRA: r=16" in card and "ollama create" in card
    assert hub.comparison_summary(tmp_path / "missing.json") is None
    no_claim = hub.model_card("adapter", "you/r1-lora", [], base_model="org/base", recipe=[])
    assert "no claim about quality" in no_claim


def test_dry_run_lists_exactly_the_files_and_why_not_push(tmp_path, monkeypatch):
    from r1helpers.export import hub

    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    (folder / "README.md").write_text("card")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert hub.why_not_push([], "a/b") == "export.push is empty"
    assert hub.why_not_push(["adapter"], None) == "no export.hub_repo set"
    assert "token" in hub.why_not_push(["adapter"], "a/b")
    gguf_dir = tmp_path / "gguf"
    (gguf_dir / "sub").mkdir(parents=True)
    for i, name in enumerate(["a.gguf", "b.gguf", "sub/c.bin", ".hidden"]):
        (gguf_dir / name).write_bytes(bytes([i]) * (1000 * (i + 1)))
    plan = hub.dry_run({"adapter": folder, "gguf": gguf_dir}, hub.repo_ids("you/r1"), "no token", tmp_path / "hub")
    assert plan["repos"][0]["repo_id"] == "you/r1-lora" and plan["private"] is True
    files = {f["path"]: f["sha256"] for f in plan["repos"][0]["files"]}
    assert files == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    # files of all folders hashed together on threads: each keeps its own hash, hidden files are left out
    assert {f["path"]: (f["size"], f["sha256"]) for f in plan["repos"][1]["files"]} == {
        n: ((gguf_dir / n).stat().st_size, hashlib.sha256((gguf_dir / n).read_bytes()).hexdigest())
        for n in ["a.gguf", "b.gguf", "sub/c.bin"]}
    assert (tmp_path / "hub" / "adapter" / "README.md").read_text() == "card"
    assert hub.default_repo("org/My_Model", "run1") == "YOUR_HF_USERNAME/My-Model-medical-cot-run1"


def test_push_creates_each_repository_and_uploads_its_folder(tmp_path, monkeypatch):
    import huggingface_hub

    from r1helpers.export import hub

    calls = []

    class FakeApi:
        def __init__(self, token):
            calls.append(("token", token))

        def create_repo(self, repo, **kw):
            calls.append(("create", repo, kw["private"]))
            return f"https://huggingface.co/{repo}"

        def upload_folder(self, **kw):
            calls.append(("upload", kw["repo_id"], kw["folder_path"]))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    pushed = hub.push({"adapter": tmp_path / "adapter"}, hub.repo_ids("you/r1"), True, "hf_x")
    assert calls == [("token", "hf_x"), ("create", "you/r1-lora", True),
                     ("upload", "you/r1-lora", str(tmp_path / "adapter"))]
    assert pushed["pushed"] is True and pushed["private"] is True
    assert pushed["repos"] == [{"kind": "adapter", "repo_id": "you/r1-lora", "url": "https://huggingface.co/you/r1-lora"}]


def test_summary_key_results_from_an_export_record(tmp_path):
    from r1helpers.export import summary

    (tmp_path / "gguf").mkdir()
    (tmp_path / "gguf" / "Modelfile").write_text("FROM ./m.gguf\n")
    passed = {"passed": True, "max_abs_logit_diff": 0.01, "relative_logit_diff": 0.001, "top1_agreement": 1.0,
              "greedy_identical": True, "tolerance": "t"}
    record = {"output_dir": str(tmp_path), "hub": {"message": "Hub push skipped: x"}, "artefacts": {
        "adapter": {"path": str(tmp_path / "adapter"), "bytes": 2**20, "checks": {"loads_with_peft": {"passed": True}}},
        "merged": {"path": str(tmp_path / "merged"), "bytes": 3 * 2**20, "checks": {
            "merge": {"dtype": "float16"}, "logits_vs_adapter": passed,
            "weights": {"tensors": 3, "max_error_in_rounding_units": 0.5, "lora_changes_lost_to_rounding": 0.25}}},
        "gguf": {"path": str(tmp_path / "gguf"), "bytes": 0, "files": {"q8_0": {"file": "m.gguf", "bytes": 2**20,
                 "checks": {"transformers": passed, "llama.cpp": "skipped: not installed"}}}}}}
    k = summary.key_results(record)
    assert k["merged: MiB"] == 3.0 and k["merged: checks"] == "passed: logits_vs_adapter, weights"
    assert k["gguf q8_0: path"] == str(tmp_path / "gguf" / "m.gguf")
    assert k["gguf q8_0: checks"] == "passed: transformers; skipped: llama.cpp (not installed)"
    assert k["adapter: checks"] == "passed: loads_with_peft" and k["hub"] == "Hub push skipped: x"
    assert summary.modelfile_text(record) == "FROM ./m.gguf\n"
    assert "25.0% of LoRA changes lost to rounding" in summary.summary_table(record).loc["merged", "checks"]
    assert summary.summary_table(record).loc["gguf q8_0", "status"] == k["gguf q8_0: checks"]

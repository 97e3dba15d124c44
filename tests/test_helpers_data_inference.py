"""The helpers of notebooks 00-02 (docs/helpers-data-inference.md), called with plain arguments on the tiny model.

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q tests/test_helpers_data_inference.py
"""

from __future__ import annotations

import json

import pytest
import torch

from r1helpers import data, data_sources
from r1helpers.core import prompts
from r1helpers.core.recipes import SAMPLE_DATASET, TINY_MODEL
from r1helpers.inference.generate import generate, summarize
from r1helpers.modeling import load

QUESTIONS = ["Short?", "A much longer question about the kidney and its function in an elderly patient with diabetes?",
             "What causes anemia in a young woman with heavy periods?"]
PLAIN = dict(max_seq_length=1024, load_in_4bit=False, dtype="float32", backend="transformers")


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return load.for_inference(load.load_base(TINY_MODEL, **PLAIN))


@pytest.fixture(scope="module")
def sample_rows():
    rows, origin = data_sources.load_rows(SAMPLE_DATASET)
    return rows, origin


# ---- prompts ---------------------------------------------------------------------------------------

def test_prompt_is_a_token_prefix_of_the_training_text(tokenizer):
    row = data_sources.load_sample_rows()[3]
    ids, n_prompt = prompts.encode_example(tokenizer, row["Question"], row["Complex_CoT"], row["Response"])
    prompt = prompts.build_prompt(row["Question"])
    assert tokenizer(prompt)["input_ids"] == ids[:n_prompt]
    assert prompt.endswith("### Response:\n<think>") and ids[-1] == tokenizer.eos_token_id
    text = prompts.build_training_text(row["Question"], row["Complex_CoT"], row["Response"], tokenizer.eos_token)
    assert tokenizer(text)["input_ids"] == ids


def test_split_output_reads_reasoning_and_answer():
    closed = prompts.split_output("\nweigh the options\n</think>\nThe answer.")
    assert (closed.reasoning, closed.answer, closed.think_closed) == ("weigh the options", "The answer.", True)
    cut = prompts.split_output("thinking until the limit")
    assert (cut.answer, cut.think_closed) == ("", False)


# ---- data --------------------------------------------------------------------------------------------

def test_load_rows_reads_the_sample_and_names_a_misspelled_column(tmp_path, sample_rows):
    rows, origin = sample_rows
    assert origin.endswith("sample_medical_o1.jsonl") and len(rows) == len(data_sources.load_sample_rows())
    assert rows.column_names == list(data.COLUMNS)
    path = tmp_path / "typo.jsonl"
    path.write_text("".join(json.dumps({"Question": "q?", "Complex_COT": "c", "Response": "r"}) + "\n" for _ in range(3)))
    with pytest.raises(data.DataError, match=r"typo\.jsonl: missing column 'Complex_CoT' \(did you mean 'Complex_COT'\?\)"):
        data_sources.load_rows(str(path))
    renamed, _ = data_sources.load_rows(str(path), columns=("Question", "Complex_COT", "Response"))
    assert len(renamed) == 3


def test_column_problems_lists_each_missing_column_with_its_close_spelling():
    have = ["question", "Complex_CoT", "answer"]
    assert data.column_problems(have) == ["'Question' (did you mean 'question'?)", "'Response'"]
    assert data.column_problems(have, ("question", "Complex_CoT", "answer")) == []


def test_select_rows_keeps_held_out_questions_out_of_training():
    items = [{"Question": f"Question {i}?", "Complex_CoT": f"reason {i}", "Response": f"answer {i}"} for i in range(12)]
    items[9] = {**items[2], "Response": "another answer"}  # a training question again, in the held-out range
    import datasets

    report = data.Report()
    train, held = data.select_rows(datasets.Dataset.from_list(items), train_rows=8, eval_rows=4, report=report)
    assert [r["source_row"] for r in train] == list(range(8))
    assert [r["source_row"] for r in held] == [8, 10, 11] and report.eval_dropped_overlap == [9]
    assert data.shared_questions(train, held) == []


def test_tokenize_rows_drops_or_truncates_overlong_rows(tokenizer):
    rows = [{**r, "source_row": i} for i, r in enumerate(data_sources.load_sample_rows()[:4])]
    lengths = data.example_lengths(tokenizer, rows)
    limit = sorted(lengths)[1]  # two rows fit, two are longer
    report = data.Report()
    kept = data.tokenize_rows(rows, tokenizer, max_seq_length=limit, overlong="drop", report=report)
    assert len(kept) == 2 and all(r["input_ids"][-1] == tokenizer.eos_token_id for r in kept)
    assert len(report.overlong["train"]) == 2
    cut = data.tokenize_rows(rows, tokenizer, max_seq_length=limit, overlong="truncate")
    assert len(cut) == 4 and max(len(r["input_ids"]) for r in cut) == limit
    with pytest.raises(data.DataError, match="over model.max_seq_length"):
        data.tokenize_rows(rows, tokenizer, max_seq_length=limit, overlong="error")


def test_show_example_marks_the_boundary_and_ends_with_eos(tokenizer):
    row = {**data_sources.load_sample_rows()[0], "source_row": 0}
    view = data.show_example(tokenizer, row["Question"], row["Complex_CoT"], row["Response"])
    trained = data.tokenize_rows([row], tokenizer, max_seq_length=4096)[0]
    assert view.input_ids == trained["input_ids"] and view.prompt_tokens == trained["prompt_length"]
    assert view.prompt_tokens == len(prompts.encode_prompt(tokenizer, row["Question"]))
    assert view.prompt_tokens + view.completion_tokens == len(view.input_ids)
    before, mark, after = view.text.partition(data.BOUNDARY_MARK.format(n=view.prompt_tokens, m=view.completion_tokens))
    assert mark and before == tokenizer.bos_token + prompts.build_prompt(row["Question"])
    assert after.endswith(data.EOS_MARK.format(token=tokenizer.eos_token, id=tokenizer.eos_token_id))
    assert view.eos_id == tokenizer.eos_token_id and "</think>" in after


def test_summary_counts_what_preparation_did(tokenizer):
    from r1helpers.core.config import load_config
    from r1helpers.workflow.data_stage import build

    cfg = load_config("cpu", {"data.train_rows": 8, "data.eval_rows": 4, "model.max_seq_length": 700})
    dd, stats = build(cfg, tokenizer)
    s = data.summary(stats)
    overlong_train = len(stats["raw"]["overlong"]["train"])
    assert s["rows trained"] == len(dd["train"]) == 8 - overlong_train and s["rows held out"] == len(dd["eval"])
    assert s["max_seq_length"] == 700 and s["max tokens (train)"] == max(stats["all_lengths"]["train"])
    assert s["overlong (train / held out)"].startswith(f"{overlong_train} / ")


# ---- modeling ----------------------------------------------------------------------------------------

def test_load_tokenizer_pads_left_with_a_token_that_is_not_eos(tiny_model_dir):
    tok = load.load_tokenizer(TINY_MODEL)
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id and tok.padding_side == "left"


def test_ensure_pad_token_replaces_a_pad_that_is_eos(tiny_model_dir):
    tok = load.load_tokenizer(TINY_MODEL)
    tok.pad_token = tok.eos_token
    message = load.ensure_pad_token(tok)
    assert "was EOS" in message and tok.pad_token_id != tok.eos_token_id and tok.pad_token in load.PAD_CANDIDATES


def test_load_base_takes_plain_settings(tiny_model_dir):
    base = load.load_base(TINY_MODEL, **PLAIN)
    assert base.backend.name == "transformers" and base.backend.dtype == "float32"
    assert next(base.model.parameters()).dtype == torch.float32
    assert base.model.generation_config.pad_token_id == base.tokenizer.pad_token_id
    with pytest.raises(load.ModelError, match="choose_backend"):
        load.load_base(TINY_MODEL, **{**PLAIN, "backend": "auto"})
    if not torch.cuda.is_available():
        with pytest.raises(load.ModelError, match="needs a CUDA GPU"):
            load.load_base(TINY_MODEL, **{**PLAIN, "load_in_4bit": True})


def test_for_inference_switches_to_eval_with_the_cache(tiny_model_dir):
    base = load.load_base(TINY_MODEL, **PLAIN)
    base.model.train()
    ready = load.for_inference(base)
    assert not ready.model.training and ready.model.config.use_cache


def test_load_finetuned_applies_the_saved_adapter(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(load.load_base(TINY_MODEL, **PLAIN).model,
                                LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    torch.manual_seed(0)
    with torch.no_grad():
        [p.normal_(0.0, 0.5) for n, p in peft_model.named_parameters() if "lora_B" in n]
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    ids = torch.tensor([[1, 50, 60, 70, 80]])
    tuned = load.for_inference(load.load_finetuned(tmp_path / "adapter", name=TINY_MODEL, **PLAIN))
    base = load.for_inference(load.load_base(TINY_MODEL, **PLAIN))
    with torch.no_grad():
        expected, got, plain = (m(ids).logits for m in (peft_model.eval(), tuned.model, base.model))
    assert torch.allclose(got, expected, atol=1e-5) and not torch.allclose(got, plain, atol=1e-3)


# ---- inference ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_generate_returns_one_record_per_question_in_input_order(loaded):
    records = generate(loaded.model, loaded.tokenizer, QUESTIONS, max_new_tokens=12, batch_size=2, progress=False)
    assert [r["question"] for r in records] == QUESTIONS
    again = generate(loaded.model, loaded.tokenizer, QUESTIONS, max_new_tokens=12, batch_size=2, progress=False)
    assert [r["generated"] for r in records] == [r["generated"] for r in again], "greedy is repeatable"
    for r in records:
        assert isinstance(r["finished"], bool) and isinstance(r["think_closed"], bool)
        assert 1 <= r["new_tokens"] <= 12 and (r["finished"] or r["new_tokens"] == 12)
        assert (r["reasoning"], r["answer"], r["think_closed"]) == tuple(vars(prompts.split_output(r["generated"])).values())


def test_generate_reads_a_closed_think_and_eos(loaded, monkeypatch):
    """A scripted model that reasons, closes </think>, answers and stops: every field says so."""
    tok = loaded.tokenizer
    script = tok("\nbecause of iron loss\n</think>\nIron deficiency.", add_special_tokens=False)["input_ids"]
    tail = torch.tensor(script + [tok.eos_token_id, tok.pad_token_id, tok.pad_token_id])

    def scripted(input_ids, **kwargs):
        return torch.cat([input_ids, tail.expand(input_ids.shape[0], -1)], dim=1)

    monkeypatch.setattr(loaded.model, "generate", scripted)
    records = generate(loaded.model, tok, QUESTIONS[:2], max_new_tokens=64, batch_size=2, progress=False)
    for r in records:
        assert r["think_closed"] and r["finished"] and r["new_tokens"] == len(script) + 1
        assert (r["reasoning"], r["answer"]) == ("because of iron loss", "Iron deficiency.")
    s = summarize(records + [{**records[0], "finished": False, "think_closed": False, "new_tokens": 64}])
    assert s["questions generated"] == 3 and s["share that closed </think>"] == round(2 / 3, 3)
    assert s["share that reached EOS"] == round(2 / 3, 3) and s["mean new tokens"] == round((2 * (len(script) + 1) + 64) / 3, 1)


# ---- core.show -----------------------------------------------------------------------------------------

def test_record_results_writes_the_stage_file(tmp_path):
    from r1helpers.core.runs import Run, read_json
    from r1helpers.core.show import record_results

    run = Run.open(tmp_path / "run")
    table = record_results(run, "01", {"questions generated": 4, "share that reached EOS": 0.5})
    assert read_json(run.root / "results" / "01.json") == {"questions generated": 4, "share that reached EOS": 0.5}
    assert table["value"].tolist() == [4, 0.5]

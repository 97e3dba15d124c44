"""The comparison stage: token spans, assembly, the HTML report, and real before/after verdicts.

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q tests/test_compare.py
"""

from __future__ import annotations

import json
import re

import pytest

from r1helpers.evaluate import compare
from r1helpers import data
from r1helpers.evaluate import report
from r1helpers.core.config import apply_overrides
from r1helpers.core.runs import Run
from r1helpers.workflow import steps


def words(text: str) -> int:
    return len(text.split())


@pytest.fixture(scope="module")
def cfg(cpu_cfg):
    return apply_overrides(cpu_cfg, {"train.wandb": "off", "compare.bootstrap_samples": 500})


@pytest.fixture(scope="module")
def prepared_run(cfg, tokenizer, tmp_path_factory):
    run = Run.open(tmp_path_factory.mktemp("cmp") / "run")
    return run, steps.prepare(cfg, run, tokenizer)


# ---- spans ------------------------------------------------------------------------------------

def test_spans_cover_exactly_the_reference_reasoning_and_answer(tokenizer):
    row = data.load_sample_rows()[0]
    sp = compare.completion_spans(tokenizer, row["Question"], row["Complex_CoT"], row["Response"])
    assert sp.prompt_length <= sp.cot.start < sp.cot.stop < sp.answer.start < sp.answer.stop == len(sp.ids)
    assert tokenizer.decode(sp.ids[sp.cot.start : sp.cot.stop]).strip() == row["Complex_CoT"].strip()
    answer = tokenizer.decode(sp.ids[sp.answer.start : sp.answer.stop])
    assert answer.strip() == row["Response"].strip() + tokenizer.eos_token
    between = tokenizer.decode(sp.ids[sp.cot.stop : sp.answer.start])
    assert between.strip() == "</think>"


def test_spans_are_cut_at_max_seq_length_as_in_training(tokenizer):
    row = data.load_sample_rows()[0]
    sp = compare.completion_spans(tokenizer, row["Question"], row["Complex_CoT"], row["Response"])
    cut = sp.clipped(sp.cot.start + 3)
    assert len(cut.ids) == sp.cot.start + 3 and len(cut.cot) == 3 and len(cut.answer) == 0


# ---- assembly and report, with hand-made scores ---------------------------------------------------

def _record(qid, question, ref, generated, finished=True):
    from r1helpers.core.prompts import split_output

    p = split_output(generated)
    return {"id": qid, "question": question, "reference_cot": None if ref is None else "cot", "reference_answer": ref,
            "generated": generated, "reasoning": p.reasoning, "answer": p.answer, "think_closed": p.think_closed,
            "finished": finished, "new_tokens": words(generated) + int(finished)}


def _fake(cfg, nll_delta: float):
    questions = [(f"eval-{k}", f"Question {k}?", f"Answer number {k} is nitroglycerin.") for k in range(6)]
    base = [_record("example-0", "Example <b>question</b>", None, "thinking")]
    base += [_record(q, t, r, "I think and think", finished=False) for q, t, r in questions]
    tuned = [_record("example-0", "Example <b>question</b>", None, "ok\n</think>\n<script>alert(1)</script>")]
    tuned += [_record(q, t, r, f"Short.\n</think>\n{r}") for q, t, r in questions]
    nll = {m: [{"id": q, "cot_nll": 2.0 + d + 0.01 * k, "answer_nll": 3.0 + d, "completion_nll": 2.5 + d + 0.01 * k}
               for k, (q, _, _) in enumerate(questions)]
           for m, d in (("base", 0.0), ("tuned", nll_delta))}
    c = cfg.compare
    return compare.build_comparison(nll, base, tuned, words, primary_metric=c.primary_metric,
                                    bootstrap_samples=c.bootstrap_samples, seed=c.seed,
                                    settings=steps.comparison_settings(cfg), notes=["a note"],
                                    log_history=[{"step": 1, "loss": 3.0}, {"step": 1, "eval_loss": 2.9}])


def _metric(result, key):
    return next(m for m in result["metrics"] if m["key"] == key)


def test_comparison_excludes_example_questions_from_reference_metrics(cfg):
    result = _fake(cfg, -0.2)
    assert [q["id"] for q in result["questions"]] == [f"eval-{k}" for k in range(6)]
    assert [e["id"] for e in result["examples"]] == ["example-0"]
    rouge = _metric(result, "rouge_l")
    assert rouge["n"] == 6 and rouge["before"] == 0.0 and rouge["after"] == pytest.approx(1.0)
    assert rouge["verdict"] == "better" and rouge["win_tie_loss"] == {"wins": 6, "ties": 0, "losses": 0}
    assert _metric(result, "eos")["before"] == 0.0 and _metric(result, "cut_at_limit")["after"] == 0.0
    assert _metric(result, "semantic_similarity")["verdict"] == "no data"


def test_verdict_and_headline_follow_the_primary_metric(cfg):
    helped, hurt, same = _fake(cfg, -0.2), _fake(cfg, 0.3), _fake(cfg, 0.0)
    assert helped["verdict"] == "helped" and helped["headline"].startswith("Fine-tuning helped")
    assert hurt["verdict"] == "hurt" and hurt["headline"].startswith("Fine-tuning hurt")
    assert same["verdict"] == "no significant change" and "6 ties" in same["headline"]
    nll = _metric(helped, "completion_nll")
    assert nll["delta"] == pytest.approx(-0.2) and nll["ci"][1] < 0
    assert nll["perplexity_after"] < nll["perplexity_before"]


def test_generations_with_different_decoding_are_refused(cfg, tmp_path):
    run = Run.open(tmp_path / "run")
    run.write_manifest(cfg, "baseline")
    run.write_manifest(apply_overrides(cfg, {"infer.seed": 1}), "finetuned")
    with pytest.raises(ValueError, match="different infer settings"):
        steps.check_same_decoding(run)
    run.write_manifest(cfg, "finetuned")
    steps.check_same_decoding(run)


def test_mismatched_question_sets_are_refused(cfg):
    base = [_record("eval-1", "Q?", "A", "x")]
    with pytest.raises(ValueError, match="different questions"):
        compare.pair_generations(base, [_record("eval-2", "Q?", "A", "x")])
    with pytest.raises(ValueError, match="different questions"):
        compare.pair_generations(base, [_record("eval-1", "Another Q?", "A", "x")])


def assert_self_contained(page: str) -> None:
    """Opens from disk with no server and no network: no scripts, links, imports or remote resources."""
    lower = page.lower()
    for needle in ("<script", "<link", "<iframe", "<object", "@import", "url(", "http://", "https://"):
        assert needle not in lower, needle
    targets = re.findall(r"\b(src|href)\s*=\s*['\"]?([^'\"\s>]*)", lower)
    assert targets and all(v.startswith("data:image/png;base64,") for _, v in targets), "every src is inline"


def test_report_is_self_contained_and_escapes_model_text(cfg, tmp_path):
    result = _fake(cfg, -0.2)
    json_path, html_path = compare.write_outputs(result, tmp_path)
    assert json.loads(json_path.read_text())["verdict"] == "helped"
    page = html_path.read_text()
    assert "Verdict: helped." in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;question&lt;/b&gt;" in page
    assert_self_contained(page)
    assert page.count("data:image/png;base64,") == 4  # NLL, generations, deltas, loss
    assert "(no answer: the reasoning never closed before max_new_tokens)" in page


def test_tables_for_the_notebook(cfg):
    result = _fake(cfg, -0.2)
    table = compare.summary_table(result)
    assert list(table.columns[:5]) == ["n", "before", "after", "delta", "95% CI"]
    assert len(table) == len(compare.SPECS)
    side = compare.side_by_side(result)
    assert list(side.columns[:4]) == ["question", "reference", "base answer", "fine-tuned answer"]
    assert len(side) == 7


# ---- semantic similarity --------------------------------------------------------------------------

def test_embedder_skips_with_a_note_when_unavailable():
    assert compare.load_embedder(None) == (None, "semantic similarity skipped: compare.embedding_model is not set")
    model, note = compare.load_embedder("no-such-org/no-such-embedding-model")
    assert model is None and note.startswith("semantic similarity skipped")


def test_semantic_similarity_of_identical_disjoint_and_empty_answers(cfg):
    embedder, note = compare.load_embedder(cfg.compare.embedding_model)
    if embedder is None:
        pytest.skip(note)
    ref = "Avoid nitroglycerin in right ventricular infarction."
    sims = compare.semantic_similarity(embedder, [ref, "The capital of France is Paris.", ""], [ref] * 3)
    assert sims[0] == pytest.approx(1.0, abs=1e-4) and sims[1] < 0.3 and sims[2] == 0.0


# ---- real models ----------------------------------------------------------------------------------

def _same_generations(prepared, cfg):
    rows = steps.eval_questions(prepared, cfg.infer.num_eval_questions)
    return [{**r, "generated": "reasoning", "reasoning": "reasoning", "answer": "", "think_closed": False,
             "finished": False, "new_tokens": cfg.infer.max_new_tokens} for r in rows]


def test_zero_step_adapter_shows_no_significant_change(cfg, prepared_run, tmp_path):
    run, prepared = prepared_run
    adapter = tmp_path / "zero-step-adapter"
    steps.with_lora(cfg, steps.load_base_for(cfg)).model.save_pretrained(str(adapter))
    gens = _same_generations(prepared, cfg)
    result = steps.compare(cfg, run, prepared, gens, gens, adapter_dir=adapter)
    for key in ("cot_nll", "answer_nll", "completion_nll"):
        m = _metric(result, key)
        assert m["n"] == len(prepared.eval) and m["delta"] == 0.0 and m["verdict"] == "no significant change"
    assert result["verdict"] == "no significant change"
    assert "Verdict: no significant change." in steps.report_path(run).read_text()
    assert not run.is_current(cfg, "compare"), "a foreign adapter never marks the stage current"


@pytest.fixture(scope="module")
def trained_comparison(cfg, prepared_run):
    run, prepared = prepared_run
    baseline = steps.baseline(cfg, run, prepared)
    model = steps.FinetunedModel(cfg, run, prepared)
    tuned = steps.finetuned(cfg, run, prepared, loaded=model, force=True)
    result = steps.compare(cfg, run, prepared, baseline, tuned, force=True, loaded=model)
    assert model.loads == 1, "generation and teacher-forced NLL share one loaded model"
    return run, result


def test_reused_outputs_load_no_model(cfg, prepared_run, trained_comparison):
    run, prepared = prepared_run
    model = steps.FinetunedModel(cfg, run, prepared)
    tuned = steps.finetuned(cfg, run, prepared, loaded=model)
    steps.compare(cfg, run, prepared, steps.baseline(cfg, run, prepared), tuned, loaded=model)
    assert model.loads == 0
    used = steps.decoding_used(run)
    assert used["baseline"] == used["finetuned"] and used["baseline"]["max_new_tokens"] == cfg.infer.max_new_tokens


def test_trained_tiny_model_improves_held_out_nll_and_the_report_says_so(cfg, trained_comparison):
    run, result = trained_comparison
    for key in ("cot_nll", "answer_nll", "completion_nll"):
        m = _metric(result, key)
        assert m["after"] < m["before"] and m["verdict"] == "better", m
    assert result["verdict"] == "helped" and result["headline"].startswith("Fine-tuning helped")
    saved = json.loads((run.stage_dir("compare") / "comparison.json").read_text())
    assert saved["verdict"] == "helped"
    page = steps.report_path(run).read_text()
    assert "Verdict: helped." in page and page.count("data:image/png;base64,") == 4
    assert_self_contained(page)
    assert any(n.startswith("semantic similarity") for n in result["notes"])
    assert any("eval_loss" in r for r in result["log_history"]), "held-out loss logged during training"
    assert run.is_current(cfg, "compare")
    again = steps.compare(cfg, run, None, [], [])
    assert again["headline"] == result["headline"], "a current comparison is reused"


def test_figures_render_for_the_notebook(trained_comparison):
    import matplotlib.pyplot as plt

    _, result = trained_comparison
    figs = report.figures(result)
    assert set(figs) == {"teacher-forced", "generation", "deltas", "loss"}
    for fig in figs.values():
        plt.close(fig)

"""The comparison stage: token spans, assembly, the notebook's tables, and real before/after verdicts.

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -q tests/test_compare.py
"""

from __future__ import annotations

import json
import pytest

from r1helpers.evaluate import compare
from r1helpers import data_sources
from r1helpers.evaluate import plots, views
from r1helpers.core.config import apply_overrides
from r1helpers.core.runs import read_jsonl, Run
from r1helpers.inference import choose
from r1helpers.workflow import compare_stage, data_stage, generate_stage, train_stage


def words(text: str) -> int:
    return len(text.split())


@pytest.fixture(scope="module")
def cfg(cpu_cfg):
    return apply_overrides(cpu_cfg, {"train.wandb": "off", "compare.bootstrap_samples": 500})


@pytest.fixture(scope="module")
def prepared_run(cfg, tokenizer, tmp_path_factory):
    run = Run.open(tmp_path_factory.mktemp("cmp") / "run")
    return run, data_stage.prepare(cfg, run, tokenizer)


# ---- spans ------------------------------------------------------------------------------------

def test_spans_cover_exactly_the_reference_reasoning_and_answer(tokenizer):
    row = data_sources.load_sample_rows()[0]
    sp = compare.completion_spans(tokenizer, row["Question"], row["Complex_CoT"], row["Response"])
    assert sp.prompt_length <= sp.cot.start < sp.cot.stop < sp.answer.start < sp.answer.stop == len(sp.ids)
    assert tokenizer.decode(sp.ids[sp.cot.start : sp.cot.stop]).strip() == row["Complex_CoT"].strip()
    answer = tokenizer.decode(sp.ids[sp.answer.start : sp.answer.stop])
    assert answer.strip() == row["Response"].strip() + tokenizer.eos_token
    between = tokenizer.decode(sp.ids[sp.cot.stop : sp.answer.start])
    assert between.strip() == "</think>"


def test_spans_are_cut_at_max_seq_length_as_in_training(tokenizer):
    row = data_sources.load_sample_rows()[0]
    sp = compare.completion_spans(tokenizer, row["Question"], row["Complex_CoT"], row["Response"])
    cut = sp.clipped(sp.cot.start + 3)
    assert len(cut.ids) == sp.cot.start + 3 and len(cut.cot) == 3 and len(cut.answer) == 0


# ---- assembly and tables, with hand-made scores ---------------------------------------------------

def _record(qid, question, ref, generated, finished=True):
    from r1helpers.core.prompts import split_output

    p = split_output(generated)
    return {"id": qid, "question": question, "reference_cot": None if ref is None else "cot", "reference_answer": ref,
            "generated": generated, "reasoning": p.reasoning, "answer": p.answer, "think_closed": p.think_closed,
            "finished": finished, "new_tokens": words(generated) + int(finished)}


def _fake(cfg, nll_delta: float, mcq=None):
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
                                    settings=compare_stage.comparison_settings(cfg), notes=["a note"],
                                    log_history=[{"step": 1, "loss": 3.0}, {"step": 1, "eval_loss": 2.9}],
                                    **({} if mcq is None else {"mcq_rows": mcq[0], "mcq_answers": mcq[1]}))


def _mcq(before_right: int, after_right: int, n: int = 24, generated: tuple[str, str] | None = None):
    """Hand-made answers to the bundled sample: the first k questions right (by likelihood), the rest wrong."""
    from r1helpers.evaluate import accuracy as acc

    rows = acc.load_mcq_rows(acc.SAMPLE_MCQ, limit=n)

    def side(k: int, text: str | None):
        out = []
        for i, r in enumerate(rows):
            wrong = next(x for x in r["options"] if x != r["answer_idx"])
            rec = {"id": r["id"], "likelihood_letter": r["answer_idx"] if i < k else wrong}
            if text is not None:
                rec.update(generated=text, think_closed="</think>" in text, finished=True, new_tokens=9)
            out.append(rec)
        return out

    gb, ga = generated or (None, None)
    return rows, {"base": side(before_right, gb), "tuned": side(after_right, ga)}


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


def test_lower_nll_alone_is_never_called_helped(cfg):
    """The issue's case: held-out NLL falls on every question, correctness is not measured or not better."""
    fits, worse_fit, same = _fake(cfg, -0.2), _fake(cfg, 0.3), _fake(cfg, 0.0)
    assert fits["verdict"] == "correctness not measured"
    assert fits["headline"].startswith("Fits the held-out data better (completion NLL")
    assert "correctness not measured" in fits["headline"]
    assert worse_fit["verdict"] == "correctness not measured"
    assert worse_fit["headline"].startswith("Fits the held-out data worse")
    assert same["headline"].startswith("No clear change in fit to the held-out data")
    for r in (fits, worse_fit, same):
        assert "helped" not in r["headline"] and "hurt" not in r["headline"]
    nll = _metric(fits, "completion_nll")
    assert nll["verdict"] == "better", "per-metric verdicts are kept"
    assert nll["delta"] == pytest.approx(-0.2) and nll["ci"][1] < 0
    assert nll["perplexity_after"] < nll["perplexity_before"]
    assert nll["win_tie_loss"] == {"wins": 6, "ties": 0, "losses": 0}

    # Same accuracy before and after (12 of 24 right by likelihood; no letter stated after </think>).
    flat = _fake(cfg, -0.2, _mcq(12, 12, generated=("thinking, never closed", "thinking, never closed")))
    assert flat["verdict"] == "no evidence of better answers"
    assert "helped" not in flat["headline"]
    # No question changed: at n=24 the exact test needs 6 of 24 gained at least (2/2^6 < 0.05): ±25 points.
    assert flat["headline"].startswith("No evidence of better answers (this set could only detect changes of "
                                       "±25.0 points by option likelihood, ±25.0 points by stated letter): "
                                       "by option likelihood, accuracy 50% → 50% of 24 questions (0 gained, 0 lost)")
    assert "; fits the held-out data better (completion NLL" in flat["headline"]
    assert "unparseable 24 → 24" in flat["headline"]
    assert flat["findings"]["fit"]["metrics"]["completion_nll"]["verdict"] == "better"
    assert flat["findings"]["correctness"]["verdict"] == "no evidence of better answers"


def test_better_accuracy_with_an_interval_above_zero_is_helped(cfg):
    # 6 of 24 right before, 20 of 24 after, the same 6 still right: 14 gained, none lost.
    result = _fake(cfg, 0.0, _mcq(6, 20))
    acc_l = result["accuracy"]["scorings"]["likelihood"]
    assert acc_l["before"]["correct"] == 6 and acc_l["after"]["correct"] == 20
    assert acc_l["mcnemar"]["b"] == 0 and acc_l["mcnemar"]["c"] == 14
    assert acc_l["mcnemar"]["p_value"] == pytest.approx(2 / 2**14)  # exact two-sided binomial
    assert acc_l["delta"] == pytest.approx(14 / 24) and acc_l["delta_ci95"][0] > 0
    assert result["accuracy"]["scorings"]["generated"] is None
    assert _metric(result, "accuracy_likelihood")["ci"] == acc_l["delta_ci95"], "one bootstrap, one interval"
    assert _metric(result, "accuracy_generated")["verdict"] == "not measured"
    assert result["verdict"] == "helped"
    assert result["headline"].startswith("Fine-tuning helped: more often right (by option likelihood, "
                                         "accuracy 25% → 83% of 24 questions (14 gained, 0 lost)")
    assert "no clear change in fit" in result["headline"], "the fit is reported beside it, not folded in"
    lost = _fake(cfg, -0.2, _mcq(20, 6))
    assert lost["verdict"] == "hurt" and lost["headline"].startswith("Fine-tuning hurt: less often right")


def test_stated_letters_decide_when_they_improve(cfg):
    rows, answers = _mcq(12, 12, generated=("no answer", "no answer"))
    for k, (b, t) in enumerate(zip(answers["base"], answers["tuned"])):
        b["generated"] = "I am not sure"  # never closes </think>: unparseable, counted wrong
        t["generated"] = f"short reasoning\n</think>\nThe answer is {rows[k]['answer_idx']}."
        t["think_closed"] = True
    result = _fake(cfg, 0.1, (rows, answers))
    gen = result["accuracy"]["scorings"]["generated"]
    assert gen["before"]["unparsed"] == 24 and gen["after"]["unparsed"] == 0 and gen["after"]["correct"] == 24
    assert gen["after"]["think_closed"] == 24 and gen["before"]["think_closed"] == 0
    assert result["verdict"] == "helped"
    assert result["headline"].startswith("Fine-tuning helped: more often right (by stated letter")
    assert "; fits the held-out data worse (completion NLL" in result["headline"]
    # The primary metric can make one scoring the judge: by likelihood nothing changed.
    only_l = compare.build_comparison(result["nll"], *_gens(), words, primary_metric="accuracy_likelihood",
                                      bootstrap_samples=200, seed=0, mcq_rows=rows, mcq_answers=answers)
    assert only_l["verdict"] == "no evidence of better answers"
    assert only_l["findings"]["correctness"]["judged_by"] == ["accuracy_likelihood"]


def _rows_68():
    """68 questions: the bundled 24 three times (ids made unique), cut at 68."""
    from r1helpers.evaluate import accuracy as acc

    rows = acc.load_mcq_rows(acc.SAMPLE_MCQ)
    return [{**r, "id": f"{r['id']}-{k}"} for k in range(3) for r in rows][:68]


def test_four_gained_none_lost_of_68_is_no_evidence(cfg, tmp_path):
    """Issue 26's case: 30 of 68 right before, the same 30 and 4 more after. The exact McNemar p is 2/2^4."""
    rows = _rows_68()
    wrong = {r["id"]: next(x for x in r["options"] if x != r["answer_idx"]) for r in rows}
    answers = {side: [{"id": r["id"], "likelihood_letter": r["answer_idx"] if i < k else wrong[r["id"]]}
                      for i, r in enumerate(rows)] for side, k in (("base", 30), ("tuned", 34))}
    result = _fake(cfg, 0.0, (rows, answers))
    s = result["accuracy"]["scorings"]["likelihood"]
    assert s["mcnemar"]["p_value"] == pytest.approx(0.125) and s["verdict"] == "no clear change"
    assert result["verdict"] == "no evidence of better answers"
    # 6 discordant questions all gained is the least the exact test can call significant: 6/68 = 8.8 points.
    assert result["headline"].startswith(
        "No evidence of better answers (this set could only detect changes of ±8.8 points): by option likelihood, "
        "accuracy 44% → 50% of 68 questions (4 gained, 0 lost), change +5.9 points, 95% CI [-1.2, +5.9], "
        "exact McNemar p=0.12, detectable change ±8.8 points")
    m = _metric(result, "accuracy_likelihood")
    assert m["verdict"] == "no significant change" and m["ci"] == s["delta_ci95"] and m["p_value"] == pytest.approx(0.125)
    saved = json.loads(compare.write_outputs(result, tmp_path).read_text())["accuracy"]["scorings"]["likelihood"]
    assert saved["detectable_change"] == pytest.approx(6 / 68) and saved["power"]["power"] == 0.8
    row = views.accuracy_table(result).loc["likelihood"]
    assert row["detectable change (points, 80% power)"] == "±8.8" and row["exact McNemar p"] == 0.125


def test_closing_think_alone_is_reported_as_a_format_change(cfg):
    rows, answers = _mcq(12, 12, generated=("x", "x"))
    for r, b, t in zip(rows, answers["base"], answers["tuned"]):
        b.update(generated=f"Reasoning... the answer is {r['answer_idx']}. Let me re-check", think_closed=False)
        t.update(generated=f"Reasoning...\n</think>\nThe answer is {r['answer_idx']}.", think_closed=True)
    result = _fake(cfg, 0.0, (rows, answers))
    gen = result["accuracy"]["scorings"]["generated"]
    assert gen["strict_verdict"] == "better" and gen["verdict"] == "format change"
    assert _metric(result, "accuracy_generated")["verdict"] == "format change"
    assert result["verdict"] == "no evidence of better answers" and "helped" not in result["headline"]
    assert result["headline"].startswith("No evidence of better answers, only a format change")
    assert "lenient read (letter anywhere) 100% → 100%" in result["headline"]
    assert "not a change in what the model knows" in result["headline"]


def _gens():
    base = [_record(f"eval-{k}", f"Question {k}?", "Ref.", "thinking", finished=False) for k in range(6)]
    return base, base


def test_generations_with_different_decoding_are_refused(cfg, tmp_path):
    run = Run.open(tmp_path / "run")
    run.write_manifest(cfg, "baseline")
    run.write_manifest(apply_overrides(cfg, {"infer.seed": 1}), "finetuned")
    with pytest.raises(ValueError, match="different infer settings"):
        compare_stage.check_same_decoding(run)
    run.write_manifest(cfg, "finetuned")
    compare_stage.check_same_decoding(run)


def test_mismatched_question_sets_are_refused(cfg):
    base = [_record("eval-1", "Q?", "A", "x")]
    with pytest.raises(ValueError, match="different questions"):
        compare.pair_generations(base, [_record("eval-2", "Q?", "A", "x")])
    with pytest.raises(ValueError, match="different questions"):
        compare.pair_generations(base, [_record("eval-1", "Another Q?", "A", "x")])


def test_comparison_json_holds_what_the_notebook_shows(cfg, tmp_path):
    result = _fake(cfg, -0.2, _mcq(6, 20, generated=("x\n</think>\n<script>B</script>", "y")))
    saved = json.loads(compare.write_outputs(result, tmp_path).read_text())
    assert saved["verdict"] == "helped" and saved["headline"] == result["headline"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["comparison.json"]
    table = views.accuracy_rows(saved["accuracy"])
    assert (table[0]["before"], table[0]["after"]) == ("6/24 = 25.0%", "20/24 = 83.3%")
    assert {"exact McNemar p", "before 95% Wilson", "unparseable before / after"} <= set(table[0])
    assert list(views.findings_table(saved).index) == ["Fits the data?", "Behaves as trained?", "More often right?"]


def test_tables_for_the_notebook(cfg):
    result = _fake(cfg, -0.2, _mcq(6, 9, generated=("r</think>A", "r</think>Vitamin")))
    table = views.summary_table(result)
    assert list(table.columns[:5]) == ["n", "before", "after", "delta", "95% CI"]
    assert len(table) == len(compare.SPECS)
    assert list(views.summary_table(result, "fit").index) == [m.label for m in compare.TEACHER_FORCED]
    assert set(views.summary_table(result, "behaviour")["n"]) == {6}
    acc_table = views.accuracy_table(result)
    assert list(acc_table.index) == ["likelihood", "generated", "generated, lenient read"]
    assert set(acc_table["n"]) == {24}
    assert acc_table.loc["generated", "unparseable before / after"] == "0 / 24"
    assert acc_table.loc["likelihood", "before 95% Wilson"] == "[12.0%, 44.9%]"  # Wilson for 6/24, by hand below
    assert len(views.findings_table(result)) == 3
    mcq = views.mcq_side_by_side(result)
    assert len(mcq) == 24 and mcq["fine-tuned stated"].iloc[0] == "(unparseable)"
    side = views.side_by_side(result)
    assert list(side.columns[:4]) == ["question", "reference", "base answer", "fine-tuned answer"]
    assert len(side) == 7


# ---- real models ----------------------------------------------------------------------------------

def _same_generations(prepared, cfg):
    rows = data_stage.eval_questions(prepared, cfg.infer.num_eval_questions)
    return [{**r, "generated": "reasoning", "reasoning": "reasoning", "answer": "", "think_closed": False,
             "finished": False, "new_tokens": cfg.infer.max_new_tokens} for r in rows]


@pytest.mark.slow
def test_zero_step_adapter_shows_no_significant_change(cfg, prepared_run, tmp_path):
    run, prepared = prepared_run
    adapter = tmp_path / "zero-step-adapter"
    train_stage.with_lora(cfg, choose.load_base_for(cfg)).model.save_pretrained(str(adapter))
    gens = _same_generations(prepared, cfg)
    result = compare_stage.compare(cfg, run, prepared, gens, gens, adapter_dir=adapter)
    for key in ("cot_nll", "answer_nll", "completion_nll"):
        m = _metric(result, key)
        assert m["n"] == len(prepared.eval) and m["delta"] == 0.0 and m["verdict"] == "no significant change"
    for scoring in ("likelihood", "generated"):  # a zero-step adapter is the base model: same picks, same text
        s = result["accuracy"]["scorings"][scoring]
        # one bundled question (sample_mcq-4) shares 74 characters with a bundled training row: left out
        assert s["n"] == 23 and s["delta"] == 0.0 and s["mcnemar"]["discordant"] == 0
    items = result["accuracy"]["items"]
    assert all(it["base"]["generated"] == it["tuned"]["generated"] for it in items)
    assert result["verdict"] == "no evidence of better answers"
    assert json.loads(run.path("comparison").read_text())["verdict"] == "no evidence of better answers"
    assert not run.is_current(cfg, "compare"), "a foreign adapter never marks the stage current"


@pytest.fixture(scope="module")
def trained_comparison(cfg, prepared_run):
    run, prepared = prepared_run
    baseline = generate_stage.baseline(cfg, run, prepared)
    model = generate_stage.FinetunedModel(cfg, run, prepared)
    tuned = generate_stage.finetuned(cfg, run, prepared, loaded=model, force=True)
    result = compare_stage.compare(cfg, run, prepared, baseline, tuned, force=True, loaded=model)
    assert model.loads == 1, "generation and teacher-forced NLL share one loaded model"
    return run, result


@pytest.mark.slow
def test_reused_outputs_load_no_model(cfg, prepared_run, trained_comparison):
    run, prepared = prepared_run
    model = generate_stage.FinetunedModel(cfg, run, prepared)
    tuned = generate_stage.finetuned(cfg, run, prepared, loaded=model)
    compare_stage.compare(cfg, run, prepared, generate_stage.baseline(cfg, run, prepared), tuned, loaded=model)
    assert model.loads == 0
    used = compare_stage.decoding_used(run)
    assert used["baseline"] == used["finetuned"] and used["baseline"]["max_new_tokens"] == cfg.infer.max_new_tokens


@pytest.mark.slow
def test_trained_tiny_model_fits_better_but_is_not_called_helped(cfg, trained_comparison):
    """End to end through compare_stage.compare with the bundled MCQ sample: NLL falls, accuracy does not rise."""
    run, result = trained_comparison
    for key in ("cot_nll", "answer_nll", "completion_nll"):
        m = _metric(result, key)
        assert m["after"] < m["before"] and m["verdict"] == "better", m
    mcq = result["accuracy"]
    assert mcq["n"] == 23 and set(mcq["scorings"]) == {"likelihood", "generated"}  # sample_mcq-4 is contaminated
    for scoring in ("likelihood", "generated"):
        assert _metric(result, f"accuracy_{scoring}")["verdict"] != "better"
    gen = mcq["scorings"]["generated"]
    for side in ("before", "after"):  # an answer whose reasoning never closed is unparseable, and wrong
        assert gen[side]["unparsed"] >= gen["n"] - gen[side]["think_closed"]
    assert all(not it[s]["generated_correct"] for it in mcq["items"] for s in ("base", "tuned")
               if it[s]["generated_unparsed"])
    assert result["verdict"] == "no evidence of better answers"
    assert result["headline"].startswith("No evidence of better answers (this set could only detect changes of ±")
    assert "; fits the held-out data better" in result["headline"] and "helped" not in result["headline"]
    saved = json.loads((run.stage_dir("compare") / "comparison.json").read_text())
    assert saved["verdict"] == "no evidence of better answers" and saved["findings"]["fit"]["answer"]
    assert any(n.startswith("multiple-choice: 23 questions") for n in result["notes"])
    assert mcq["contamination"]["checked"] == 24 and mcq["contamination"]["span"] == 64
    assert [h["id"] for h in mcq["contamination"]["items"]] == ["sample_mcq-4"]
    assert result["protocol"]["n"] == 4 and result["protocol"]["protocol"]["max_new_tokens"] == 32
    assert result["more_sets"] == [], "the CPU profile scores no further set"
    assert any("eval_loss" in r for r in result["log_history"]), "held-out loss logged during training"
    assert run.is_current(cfg, "compare")
    again = compare_stage.compare(cfg, run, None, [], [])
    assert again["headline"] == result["headline"], "a current comparison is reused"


@pytest.mark.slow
def test_comparison_grades_the_letters_generated_in_stages_01_and_04(cfg, prepared_run, trained_comparison,
                                                                     monkeypatch):
    """Stages 01 and 04 answer the multiple-choice questions in their generation batches; the comparison grades
    those answers and generates nothing itself."""
    import r1helpers.inference.generate as gen

    run, prepared = prepared_run
    monkeypatch.setattr(gen, "generate", lambda *a, **k: pytest.fail("the comparison generated again"))
    result = compare_stage.compare(cfg, run, prepared, generate_stage.baseline(cfg, run, prepared),
                           generate_stage.finetuned(cfg, run, prepared), force=True)
    items = result["accuracy"]["items"]
    for side, stage in (("base", "baseline"), ("tuned", "finetuned")):
        made = {r["id"]: r for r in read_jsonl(run.path(f"{stage}_mcq"))}
        assert len(made) == len(items) == 23  # the contaminated question is neither generated nor scored
        assert [it[side]["generated"] for it in items] == [made[it["id"]]["generated"] for it in items]
        assert run.read_manifest(stage)["mcq_questions"] == 23


@pytest.mark.slow
def test_figures_render_for_the_notebook(trained_comparison):
    import matplotlib.pyplot as plt

    _, result = trained_comparison
    figs = plots.figures(result)
    assert set(figs) == {"deltas", "accuracy", "loss"}
    for fig in figs.values():
        plt.close(fig)


# ---- contamination, further sets and the authors' protocol ---------------------------------------

def test_stage_drops_a_planted_training_question(cfg, prepared_run, tmp_path):
    """A multiple-choice question copied from a training row is left out before scoring, by the stage's own call."""
    run, prepared = prepared_run
    planted = prepared.train[3]["Question"]
    rows = [{"id": "planted", "question": "Case: " + planted, "options": {"A": "yes", "B": "no"}, "answer_idx": "A"},
            {"id": "fresh", "question": "A sailor on a long voyage has bleeding gums and perifollicular haemorrhages.",
             "options": {"A": "scurvy", "B": "rickets"}, "answer_idx": "A"}]
    path = tmp_path / "mcq.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    c2 = apply_overrides(cfg, {"compare.mcq_source": str(path), "compare.mcq_rows": 0})
    kept, record = generate_stage.mcq_clean(c2, generate_stage.mcq_rows(c2), prepared)
    assert [r["id"] for r in kept] == ["fresh"] and record["excluded"] == 1 and record["items"][0]["id"] == "planted"
    assert [r["id"] for r in generate_stage.mcq_generation_rows(c2, prepared)] == ["fresh"]
    off = apply_overrides(c2, {"compare.contamination_span": 0})
    assert len(generate_stage.mcq_clean(off, generate_stage.mcq_rows(off), prepared)[0]) == 2


def test_more_sets_skip_what_does_not_load(cfg, tmp_path):
    path = tmp_path / "medmcqa.jsonl"
    path.write_text(json.dumps({"id": "m1", "question": "Scurvy?", "opa": "Vit A", "opb": "Vit C", "opc": "Vit D",
                                "opd": "Vit K", "cop": 1}))
    c2 = apply_overrides(cfg, {"compare.mcq_more": [str(path), str(tmp_path / "missing.jsonl")]})
    more = generate_stage.mcq_more_sets(c2)
    assert [len(m["rows"] or []) for m in more] == [1, 0] and more[1]["rows"] is None
    assert "skipped" in more[1]["note"] and "no such file" in more[1]["note"]


def _extras(result):
    from r1helpers.evaluate import accuracy as acc
    from r1helpers.evaluate.more_sets import more_set_result
    from r1helpers.evaluate.protocol import protocol_comparison

    rows = acc.load_mcq_rows(acc.SAMPLE_MCQ, limit=8)
    base = [{"id": r["id"], "likelihood_letter": r["answer_idx"]} for r in rows]
    tuned = [{"id": r["id"], "likelihood_letter": next(x for x in r["options"] if x != r["answer_idx"])} for r in rows]
    more = [more_set_result("openlifescienceai/medmcqa@validation", rows, {"base": base, "tuned": tuned}),
            more_set_result("qiaojin/PubMedQA", None, None, note="qiaojin/PubMedQA skipped: it did not load")]
    gens = [{"id": r["id"], "generated": f"r</think>The answer is {r['answer_idx']}.", "wrapped_in": "x"} for r in rows]
    protocol = protocol_comparison(rows, gens, [{**g, "generated": "no idea"} for g in gens],
                                   source="GBaker/MedQA-USMLE-4-options")
    result = {**result, "more_sets": more, "protocol": protocol}
    result["accuracy"]["contamination"] = {"span": 64, "against": "the 9 training rows' Question text",
                                           "checked": 25, "excluded": 1, "kept": 24, "items": []}
    return result


def test_tables_and_key_numbers_show_more_sets_protocol_and_contamination(cfg, tmp_path):
    result = _extras(_fake(cfg, -0.2, _mcq(6, 20)))
    compare.write_outputs(result, tmp_path)
    page = views.more_sets_table(result).to_string() + views.protocol_table(result).to_string(max_colwidth=1000)
    for text in ("MedMCQA, validation", "8/8 = 100.0%", "0/8 = 0.0%", "skipped: it did not load",
                 "HuatuoGPT-o1-8B: 72.6%", "about 55.0%", "as reported by MedReason repository", "not reproduced here",
                 "lenient matcher"):
        assert text in page, text
    keys = compare.key_numbers(result)
    assert keys["correctness: questions left out as contaminated"] == "1 of 25"
    assert keys["more sets: MedMCQA, validation by likelihood before"] == 1.0
    assert keys["authors' protocol: lenient accuracy before"] == 1.0
    assert keys["authors' protocol: strict accuracy unparseable before / after"] == "0 / 8"
    assert "not reproduced here" in keys["published: HuatuoGPT-o1-8B on MedQA"]
    assert list(views.protocol_table(result).index)[0].startswith("HuatuoGPT-o1's lenient matcher")
    assert len(views.more_sets_table(result)) == 2
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert saved["protocol"]["n"] == 8 and saved["more_sets"][0]["n"] == 8

"""Metric functions on hand-made cases: no model involved."""

from __future__ import annotations

import math

import pytest

from r1helpers.evaluate import metrics
from r1helpers.evaluate.metrics import MetricSpec, aggregate, bootstrap_ci, rouge_l, score_generation, verdict, win_tie_loss


def words(text: str) -> int:
    return len(text.split())


def test_rouge_l_identical_disjoint_and_empty():
    assert rouge_l("Inferior wall MI; avoid nitrates.", "inferior wall mi avoid NITRATES") == pytest.approx(1.0)
    assert rouge_l("aspirin heparin", "nitroglycerin morphine") == 0.0
    assert rouge_l("", "anything at all") == 0.0
    assert rouge_l("anything at all", "") == 0.0


def test_rouge_l_partial_overlap_is_lcs_f1():
    # LCS of "a b c d" and "a c e" is "a c": P = 2/4, R = 2/3, F1 = 4/7.
    assert rouge_l("a b c d", "a c e") == pytest.approx(4 / 7)


def test_rouge_l_agrees_with_rouge_score_package():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    cases = [
        ("Slipped capital femoral epiphysis in an obese adolescent.", "Slipped capital femoral epiphysis."),
        ("The cystometry shows normal residual volume and no detrusor contractions.",
         "Normal post-void residual volume; no involuntary detrusor contractions."),
        ("C1 esterase inhibitor deficiency", "Hereditary angioedema from C1-INH deficiency"),
    ]
    for pred, ref in cases:
        assert rouge_l(pred, ref) == pytest.approx(scorer.score(ref, pred)["rougeL"].fmeasure)


def test_unclosed_think_is_all_reasoning_and_no_answer():
    s = score_generation("The patient has chest pain and hypotension, so", False, "Avoid nitroglycerin.", words)
    assert s["think_opened"] and not s["think_closed"]
    assert s["empty_answer"] and s["answer_tokens"] == 0 and s["reasoning_tokens"] == 8
    assert s["rouge_l"] == 0.0


def test_empty_answer_after_closed_reasoning():
    s = score_generation("Inferior MI with RV involvement.\n</think>\n", True, "Avoid nitroglycerin.", words)
    assert s["think_closed"] and s["eos"] and not s["cut_at_limit"]
    assert s["empty_answer"] and s["rouge_l"] == 0.0


def test_answer_cut_at_token_limit_is_flagged():
    s = score_generation("RV infarct.\n</think>\nAvoid nitroglycerin because the right", False, "Avoid nitroglycerin.", words)
    assert s["think_closed"] and not s["eos"] and s["cut_at_limit"]
    assert not s["empty_answer"] and s["answer_tokens"] == 5
    assert 0.0 < s["rouge_l"] < 1.0


def test_finished_answer_identical_to_reference_scores_one():
    s = score_generation("Think.\n</think>\nAvoid nitroglycerin.", True, "Avoid nitroglycerin.", words)
    assert s["rouge_l"] == pytest.approx(1.0) and s["eos"] and not s["empty_answer"]


def test_repeated_open_tag_and_empty_generation():
    s = score_generation("<think>\n</think>\nAnswer.", True, None, words)
    assert s["think_opened"] and s["think_closed"] and s["rouge_l"] is None and s["reasoning_tokens"] == 0
    empty = score_generation("", True, "x", words)
    assert not empty["think_opened"] and not empty["think_closed"] and empty["empty_answer"]


def test_bootstrap_interval_of_constant_differences_is_that_constant():
    assert bootstrap_ci([0.0] * 10, 200, 1) == (0.0, 0.0)
    lo, hi = bootstrap_ci([-0.5] * 10, 200, 1)
    assert lo == pytest.approx(-0.5) and hi == pytest.approx(-0.5)
    assert bootstrap_ci([], 200, 1) is None


def test_bootstrap_is_seeded_and_brackets_the_mean():
    diffs = [0.1, -0.3, 0.2, 0.5, -0.1, 0.4, 0.0, 0.3]
    a, b = bootstrap_ci(diffs, 500, 7), bootstrap_ci(diffs, 500, 7)
    assert a == b
    mean = sum(diffs) / len(diffs)
    assert a[0] < mean < a[1]


def test_win_tie_loss_follows_the_direction():
    assert win_tie_loss([2.0, 2.0, 2.0], [1.0, 2.0, 3.0], "lower") == {"wins": 1, "ties": 1, "losses": 1}
    assert win_tie_loss([0.2, 0.5], [0.3, 0.5], "higher") == {"wins": 1, "ties": 1, "losses": 0}
    assert win_tie_loss([1.0], [2.0], None) is None


def test_verdict_needs_the_interval_to_exclude_zero():
    assert verdict((-0.3, -0.1), "lower", 10) == "better"
    assert verdict((-0.3, -0.1), "higher", 10) == "worse"
    assert verdict((-0.1, 0.2), "lower", 10) == "no significant change"
    assert verdict((0.0, 0.0), "higher", 10) == "no significant change"
    assert verdict((0.1, 0.2), None, 10) == "higher"
    assert verdict((0.1, 0.2), "higher", 1) == "too few questions"


def test_aggregate_pairs_only_questions_scored_on_both_sides():
    spec = MetricSpec("x", "x", "lower", "g")
    out = aggregate(spec, [1.0, None, 3.0, 2.0], [0.5, 1.0, None, 1.5], 200, 0)
    assert out["n"] == 2 and out["before"] == pytest.approx(1.5) and out["after"] == pytest.approx(1.0)
    assert out["win_tie_loss"] == {"wins": 2, "ties": 0, "losses": 0}
    same = aggregate(spec, [1.0, 2.0, 3.0], [1.0, 2.0, 3.0], 200, 0)
    assert same["delta"] == 0.0 and same["verdict"] == "no significant change"
    assert aggregate(spec, [None], [None], 200, 0)["verdict"] == "no data"


def test_aggregate_of_booleans_is_a_rate():
    spec = MetricSpec("eos", "EOS", "higher", "g")
    out = aggregate(spec, [False, False, True, False], [True, True, True, True], 200, 0)
    assert out["before"] == 0.25 and out["after"] == 1.0 and out["verdict"] == "better"


def test_perplexity_is_exp_of_nll():
    assert metrics.perplexity(0.0) == 1.0
    assert metrics.perplexity(math.log(50)) == pytest.approx(50)
    assert metrics.perplexity(None) is None
    assert math.isfinite(metrics.perplexity(1e6))


def test_repeated_4gram_share_by_hand():
    # "a b c d a b c d": 4-grams abcd, bcda, cdab, dabc, abcd -> 5 in all, 4 distinct: 1 of 5 repeats.
    assert metrics.repeated_ngram_share("a b c d a b c d") == pytest.approx(1 / 5)
    assert metrics.repeated_ngram_share("one two three four five") == 0.0
    # A loop: "x y" twelve times is 24 words, 21 4-grams, only two distinct ("x y x y", "y x y x").
    assert metrics.repeated_ngram_share("x y " * 12) == pytest.approx(19 / 21)
    assert metrics.repeated_ngram_share("too short here") is None  # fewer than 4 words: no 4-grams
    assert metrics.repeated_ngram_share("A, b. C; d! a b c d") == pytest.approx(1 / 5)  # case and punctuation ignored


def test_score_generation_measures_repetition_without_the_tags():
    looping = score_generation("the dose the dose the dose the dose\n</think>\nthe dose", True, None, words)
    assert looping["repetition"] == pytest.approx(metrics.repeated_ngram_share("the dose " * 5))
    assert looping["repetition"] > 0.5
    varied = score_generation("Check airway, breathing, circulation.\n</think>\nGive epinephrine now.", True, None, words)
    assert varied["repetition"] == 0.0
    assert score_generation("short\n</think>\nyes", True, None, words)["repetition"] is None
